//! Key/value normalisation: every argument shape of semantics §9 becomes a flat list of
//! `(key, value)` pairs, or a typed error (R9-R11). Total: it never panics.

use kvstore_spec::{Error, Key, Result};

/// The keys of a call: one key, or a list of keys.
#[derive(Debug, Clone, PartialEq)]
pub enum Keys {
    /// A single key.
    One(Key),
    /// A list of keys (possibly empty).
    List(Vec<Key>),
}

/// The values (or outputs) of a call: one value, or a list whose items are values or lists.
#[derive(Debug, Clone, PartialEq)]
pub enum Values<T> {
    /// A single value.
    One(T),
    /// A list of items.
    List(Vec<Item<T>>),
}

impl<T> Values<T> {
    /// The same nesting with every leaf mapped through `f`.
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> Values<U> {
        match self {
            Values::One(x) => Values::One(f(x)),
            Values::List(items) => Values::List(
                items
                    .into_iter()
                    .map(|item| match item {
                        Item::One(x) => Item::One(f(x)),
                        Item::Group(g) => Item::Group(g.into_iter().map(&mut f).collect()),
                    })
                    .collect(),
            ),
        }
    }

    /// The same nesting with every leaf borrowed.
    pub fn as_ref(&self) -> Values<&T> {
        match self {
            Values::One(x) => Values::One(x),
            Values::List(items) => Values::List(
                items
                    .iter()
                    .map(|item| match item {
                        Item::One(x) => Item::One(x),
                        Item::Group(g) => Item::Group(g.iter().collect()),
                    })
                    .collect(),
            ),
        }
    }
}

/// One item of a value list: a value, or a list of values (one per device).
#[derive(Debug, Clone, PartialEq)]
pub enum Item<T> {
    /// A single value.
    One(T),
    /// A list of values.
    Group(Vec<T>),
}

/// Something usable as a key: `i32`, `i64`, `&str`, `String`, [`Key`].
pub trait IntoKey {
    /// The key.
    fn into_key(self) -> Key;
}

macro_rules! into_key {
    ($($t:ty),*) => {$(
        impl IntoKey for $t {
            fn into_key(self) -> Key {
                Key::from(self)
            }
        }
    )*};
}
into_key!(i32, i64, &str, String, Key, &Key);

impl IntoKey for &String {
    fn into_key(self) -> Key {
        Key::Str(self.clone())
    }
}

impl<K: IntoKey> From<K> for Keys {
    fn from(k: K) -> Self {
        Keys::One(k.into_key())
    }
}

impl<K: IntoKey> From<Vec<K>> for Keys {
    fn from(ks: Vec<K>) -> Self {
        Keys::List(ks.into_iter().map(IntoKey::into_key).collect())
    }
}

impl<K: IntoKey, const N: usize> From<[K; N]> for Keys {
    fn from(ks: [K; N]) -> Self {
        Keys::List(ks.into_iter().map(IntoKey::into_key).collect())
    }
}

impl<K: IntoKey + Clone> From<&[K]> for Keys {
    fn from(ks: &[K]) -> Self {
        Keys::List(ks.iter().cloned().map(IntoKey::into_key).collect())
    }
}

/// Flattens `(keys, values)` into pairs in the order given (R10), checking every shape of the
/// arguments (R9, R11).
///
/// ```
/// use kvstore::normalize::{normalize, Item, Keys, Values};
/// use kvstore::Key;
/// let pairs = normalize(
///     Keys::List(vec![Key::Int(1), Key::Int(2)]),
///     Values::List(vec![Item::One('a'), Item::Group(vec!['b', 'c'])]),
/// )?;
/// assert_eq!(pairs, vec![(Key::Int(1), 'a'), (Key::Int(2), 'b'), (Key::Int(2), 'c')]);
/// # Ok::<(), kvstore::Error>(())
/// ```
pub fn normalize<T>(keys: Keys, values: Values<T>) -> Result<Vec<(Key, T)>> {
    let pairs = match (keys, values) {
        (Keys::One(key), Values::One(value)) => vec![(key, value)],
        (Keys::One(key), Values::List(items)) => repeat_key(key, items)?,
        (Keys::List(keys), Values::One(_)) => {
            return Err(Error::ValuesNotAList { keys: keys.len() })
        }
        (Keys::List(keys), Values::List(items)) => zip_lists(keys, items)?,
    };
    check_one_key_type(&pairs)?;
    Ok(pairs)
}

/// `(k, [v1, v2, ...])`: the key once per value (several devices).
fn repeat_key<T>(key: Key, items: Vec<Item<T>>) -> Result<Vec<(Key, T)>> {
    if items.is_empty() {
        return Err(Error::EmptyValueList { key });
    }
    items
        .into_iter()
        .map(|item| match item {
            Item::One(value) => Ok((key.clone(), value)),
            Item::Group(_) => Err(Error::NestedValuesForSingleKey { key: key.clone() }),
        })
        .collect()
}

/// `([k1, k2], [v1, [v21, v22]])`: each key with its item, items flattened.
fn zip_lists<T>(keys: Vec<Key>, items: Vec<Item<T>>) -> Result<Vec<(Key, T)>> {
    if keys.len() != items.len() {
        return Err(Error::LengthMismatch {
            keys: keys.len(),
            values: items.len(),
        });
    }
    let mut pairs = Vec::with_capacity(keys.len());
    for (key, item) in keys.into_iter().zip(items) {
        match item {
            Item::One(value) => pairs.push((key, value)),
            Item::Group(values) if values.is_empty() => return Err(Error::EmptyValueList { key }),
            Item::Group(values) => pairs.extend(values.into_iter().map(|v| (key.clone(), v))),
        }
    }
    Ok(pairs)
}

/// All keys of one call must be of one kind (R9).
fn check_one_key_type<T>(pairs: &[(Key, T)]) -> Result<()> {
    let Some((first, _)) = pairs.first() else {
        return Ok(());
    };
    match pairs.iter().find(|(k, _)| k.key_type() != first.key_type()) {
        Some((other, _)) => Err(Error::MixedKeyTypes {
            first: first.key_type(),
            second: other.key_type(),
        }),
        None => Ok(()),
    }
}
