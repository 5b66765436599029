//! Keys: an int or a string; a store accepts one kind, fixed by its first call that carries keys.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A key of the store.
///
/// Int keys cover the whole `i64` range (a superset of the 32-bit range MXNet accepts).
/// Ordering is by kind, then by value; a store only ever holds one kind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Key {
    /// An integer key.
    Int(i64),
    /// A string key.
    Str(String),
}

/// The two kinds of key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyType {
    /// Integer keys.
    Int,
    /// String keys.
    Str,
}

impl Key {
    /// Which kind of key this is.
    pub fn key_type(&self) -> KeyType {
        match self {
            Key::Int(_) => KeyType::Int,
            Key::Str(_) => KeyType::Str,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Int(k) => write!(f, "{k}"),
            Key::Str(s) => write!(f, "'{s}'"),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::Int => "int",
            KeyType::Str => "string",
        })
    }
}

/// Fixes a store's key type at the first call that carries keys; later calls must match
/// (R8). A failing call changes nothing, so callers run this inside their transaction.
pub fn fix_key_type<'a>(
    slot: &mut Option<KeyType>,
    keys: impl IntoIterator<Item = &'a Key>,
) -> crate::Result<()> {
    for key in keys {
        let found = key.key_type();
        match *slot {
            None => *slot = Some(found),
            Some(expected) if expected != found => {
                return Err(crate::Error::KeyTypeMismatch {
                    expected,
                    found,
                    key: key.clone(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

impl From<i32> for Key {
    fn from(k: i32) -> Self {
        Key::Int(i64::from(k))
    }
}

impl From<i64> for Key {
    fn from(k: i64) -> Self {
        Key::Int(k)
    }
}

impl From<&str> for Key {
    fn from(k: &str) -> Self {
        Key::Str(k.to_owned())
    }
}

impl From<String> for Key {
    fn from(k: String) -> Self {
        Key::Str(k)
    }
}

impl From<&Key> for Key {
    fn from(k: &Key) -> Self {
        k.clone()
    }
}

/// Wider integers become keys only when they fit in `i64` (R9).
macro_rules! key_try_from {
    ($($t:ty),*) => {$(
        impl TryFrom<$t> for Key {
            type Error = crate::Error;
            fn try_from(k: $t) -> Result<Self, Self::Error> {
                i64::try_from(k).map(Key::Int).map_err(|_| crate::Error::KeyOutOfRange {
                    value: i128::try_from(k).unwrap_or(i128::MAX),
                    min: i64::MIN,
                    max: i64::MAX,
                })
            }
        }
    )*};
}
key_try_from!(u64, usize, i128, u128);
