//! kvstore: parameter synchronisation with MXNet KVStore semantics, checked against an
//! executable specification.
//!
//! - [`create`] a store by kind (`"local"`, `"device"`, ...), then `init`, `push`, `pull`,
//!   `row_sparse_pull`, `pushpull`, `broadcast` on its [`KvStore`] handle.
//! - Keys are ints or strings ([`Key`]); values are [`Tensor`]s and [`RowSparse`] tensors;
//!   outputs are [`NdArray`] handles.
//! - Every argument shape MXNet accepts (one key and one value, one key on several devices,
//!   lists of keys with per-key values or lists) goes through [`normalize()`] (SPEC R10).
//! - Every failure is an [`Error`] and leaves the store unchanged (SPEC R7).
//!
//! ```
//! use kvstore::{NdArray, Tensor, DType, Sgd, Optimizer};
//! let kv = kvstore::create("local")?;
//! kv.init(["w", "b"], vec![Tensor::zeros([2, 2], DType::F32)?, Tensor::zeros([2], DType::F32)?])?;
//! kv.set_optimizer(Optimizer::Sgd(Sgd { learning_rate: 0.1, ..Sgd::default() }))?;
//! kv.push("w", Tensor::full([2, 2], DType::F32, 1.0)?)?;
//! let w = NdArray::zeros([2, 2], DType::F32)?;
//! kv.pull("w", &w)?;
//! assert_eq!(w.to_f32(), vec![-0.1; 4]);
//! # Ok::<(), kvstore::Error>(())
//! ```
#![forbid(unsafe_code)]

mod args;
mod array;
pub mod backend;
mod engine_store;
pub mod normalize;
mod ops;
mod spec_store;
mod store;
pub mod trace;

pub use args::{Input, Inputs, IntoInput, IntoOutput, Outputs, RowIds};
pub use array::NdArray;
pub use kvstore_spec::codec::{Compression, CompressionType};
pub use kvstore_spec::optimizer::{
    AdaGrad, Adam, Ftrl, LrScheduler, Nag, Optimizer, RmsProp, Sgd, WarmupMode,
};
pub use kvstore_spec::updater::{UpdateError, Updater};
pub use kvstore_spec::{
    DType, Data, Device, Error, Key, KeyType, Result, RowSparse, StorageType, Tensor, Value,
};
pub use normalize::{normalize, IntoKey, Item, Keys, Values};
pub use store::{create, create_with, BackendKind, KvStore, Options, PullOptions};

/// The executable specification this crate is checked against.
pub use kvstore_spec as spec;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
