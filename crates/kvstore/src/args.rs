//! Conversions from idiomatic Rust arguments into [`Values`] and [`RowIds`].
//!
//! Inputs (`init`, `push`) take anything that gives a value: `Tensor`, `RowSparse`, `Value`,
//! `NdArray` (copied), by value or by reference. Outputs (`pull`, ...) take `NdArray` handles.
//! Each comes alone, in a `Vec` or array (one key on several devices, or one per key), or as a
//! `Vec` of `Vec`s (several keys, several devices each).

use crate::array::NdArray;
use crate::normalize::{Item, Values};
use kvstore_spec::{RowSparse, Tensor, Value};

/// Something that gives a value to send: copied when the call is made (R12, R20).
pub trait IntoValue {
    /// The value.
    fn into_value(self) -> Value;
}

macro_rules! into_value {
    ($($t:ty => |$x:ident| $e:expr),* $(,)?) => {$(
        impl IntoValue for $t {
            fn into_value(self) -> Value {
                let $x = self;
                $e
            }
        }
    )*};
}
into_value!(
    Value => |v| v,
    &Value => |v| v.clone(),
    Tensor => |t| Value::Dense(t),
    &Tensor => |t| Value::Dense(t.clone()),
    RowSparse => |r| Value::RowSparse(r),
    &RowSparse => |r| Value::RowSparse(r.clone()),
    NdArray => |a| a.value(),
    &NdArray => |a| a.value(),
);

/// Something usable as an output of a pull: an [`NdArray`] handle.
pub trait IntoOutput {
    /// The handle.
    fn into_output(self) -> NdArray;
}

impl IntoOutput for NdArray {
    fn into_output(self) -> NdArray {
        self
    }
}

impl IntoOutput for &NdArray {
    fn into_output(self) -> NdArray {
        self.clone()
    }
}

/// The values of an `init` or `push`.
pub type Inputs = Values<Value>;
/// The outputs of a `pull`, `row_sparse_pull`, `pushpull` or `broadcast`.
pub type Outputs = Values<NdArray>;

macro_rules! values_from {
    ($target:ty, $bound:ident, $conv:ident) => {
        impl<T: $bound> From<T> for $target {
            fn from(x: T) -> Self {
                Values::One(x.$conv())
            }
        }
        impl<T: $bound> From<Vec<T>> for $target {
            fn from(xs: Vec<T>) -> Self {
                Values::List(xs.into_iter().map(|x| Item::One(x.$conv())).collect())
            }
        }
        impl<T: $bound, const N: usize> From<[T; N]> for $target {
            fn from(xs: [T; N]) -> Self {
                Values::List(xs.into_iter().map(|x| Item::One(x.$conv())).collect())
            }
        }
        impl<T: $bound + Clone> From<&[T]> for $target {
            fn from(xs: &[T]) -> Self {
                Values::List(xs.iter().cloned().map(|x| Item::One(x.$conv())).collect())
            }
        }
        impl<T: $bound> From<Vec<Vec<T>>> for $target {
            fn from(xs: Vec<Vec<T>>) -> Self {
                Values::List(
                    xs.into_iter()
                        .map(|g| Item::Group(g.into_iter().map(|x| x.$conv()).collect()))
                        .collect(),
                )
            }
        }
        impl<T: $bound> From<Vec<Item<T>>> for $target {
            fn from(items: Vec<Item<T>>) -> Self {
                Values::List(
                    items
                        .into_iter()
                        .map(|item| match item {
                            Item::One(x) => Item::One(x.$conv()),
                            Item::Group(g) => {
                                Item::Group(g.into_iter().map(|x| x.$conv()).collect())
                            }
                        })
                        .collect(),
                )
            }
        }
    };
}
values_from!(Inputs, IntoValue, into_value);
values_from!(Outputs, IntoOutput, into_output);

/// The row ids of a `row_sparse_pull`: one list for every output, or one list per output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowIds(pub Vec<Vec<i64>>);

impl From<Vec<i64>> for RowIds {
    fn from(ids: Vec<i64>) -> Self {
        RowIds(vec![ids])
    }
}

impl From<&[i64]> for RowIds {
    fn from(ids: &[i64]) -> Self {
        RowIds(vec![ids.to_vec()])
    }
}

impl<const N: usize> From<[i64; N]> for RowIds {
    fn from(ids: [i64; N]) -> Self {
        RowIds(vec![ids.to_vec()])
    }
}

impl From<Vec<Vec<i64>>> for RowIds {
    fn from(lists: Vec<Vec<i64>>) -> Self {
        RowIds(lists)
    }
}
