//! Conversions from idiomatic Rust arguments into [`Values`] and [`RowIds`].
//!
//! Inputs (`init`, `push`) take anything that gives a value: `Tensor`, `RowSparse`, `Value`
//! (moved or copied), `NdArray` (read in engine order), by value or by reference. Outputs (`pull`, ...) take `NdArray` handles.
//! Each comes alone, in a `Vec` or array (one key on several devices, or one per key), or as a
//! `Vec` of `Vec`s (several keys, several devices each).

use crate::array::NdArray;
use crate::normalize::{Item, Values};
use kvstore_spec::{RowSparse, Tensor, Value};
use std::sync::Arc;

/// A value given to `init`, `push`, `pushpull` or `broadcast`.
///
/// An owned value is moved into the store. An [`NdArray`] is read when the operation runs, in
/// engine order: a later write to the array waits until the push has read it, so the store
/// never sees a change made after the call (R12, R20) and no copy is made.
#[derive(Debug, Clone)]
pub enum Input {
    /// A value owned by the call.
    Value(Arc<Value>),
    /// An array read when the operation runs.
    Array(NdArray),
}

impl Input {
    /// The value now, without waiting (inside an engine operation, or for metadata).
    pub(crate) fn snapshot(&self) -> Arc<Value> {
        match self {
            Input::Value(v) => Arc::clone(v),
            Input::Array(a) => a.snapshot(),
        }
    }

    /// A copy of the value once pending writes to it are done.
    pub fn to_value(&self) -> Value {
        match self {
            Input::Value(v) => Value::clone(v),
            Input::Array(a) => a.value(),
        }
    }
}

/// Something that gives a value to send (R12, R20).
pub trait IntoInput {
    /// The input.
    fn into_input(self) -> Input;
}

macro_rules! into_input {
    ($($t:ty => |$x:ident| $e:expr),* $(,)?) => {$(
        impl IntoInput for $t {
            fn into_input(self) -> Input {
                let $x = self;
                $e
            }
        }
    )*};
}
into_input!(
    Value => |v| Input::Value(Arc::new(v)),
    &Value => |v| Input::Value(Arc::new(v.clone())),
    Tensor => |t| Input::Value(Arc::new(Value::Dense(t))),
    &Tensor => |t| Input::Value(Arc::new(Value::Dense(t.clone()))),
    RowSparse => |r| Input::Value(Arc::new(Value::RowSparse(r))),
    &RowSparse => |r| Input::Value(Arc::new(Value::RowSparse(r.clone()))),
    NdArray => |a| Input::Array(a),
    &NdArray => |a| Input::Array(a.clone()),
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
pub type Inputs = Values<Input>;
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
        impl<T: $bound + Clone> From<&Vec<T>> for $target {
            fn from(xs: &Vec<T>) -> Self {
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
values_from!(Inputs, IntoInput, into_input);

impl From<Values<Value>> for Inputs {
    fn from(values: Values<Value>) -> Self {
        values.map(IntoInput::into_input)
    }
}
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
