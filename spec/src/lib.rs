//! The executable sequential specification of kvstore.
//!
//! This crate is the oracle: single-threaded, no `unsafe`, no performance tricks. Every backend of
//! kvstore (the engine with its CPU backend, the CUDA backend, the distributed mode) is tested for
//! bit-exact agreement with it. Each behaviour is a numbered rule in `SPEC.md`; the rule numbers
//! appear in the doc comments and in the names of the tests that check them.
//!
//! - [`store::LocalStore`]: single-process kinds (`local`, `device`, `nccl`, ...).
//! - [`dist::DistStore`]: `dist_sync` / `dist_async` with W workers and one logical server.
//! - [`codec`]: the byte-exact 2-bit and 1-bit gradient codecs.
//! - [`reduce`], [`sparse`], [`optimizer`]: the arithmetic every backend must reproduce.
#![forbid(unsafe_code)]

pub mod codec;
pub mod command;
pub mod dist;
pub mod error;
pub mod key;
pub mod kind;
pub mod optimizer;
pub mod reduce;
pub mod sparse;
pub mod store;
pub mod transaction;
pub mod transfer;
pub mod updater;
pub mod value;

pub use error::{Error, Result};
pub use key::{Key, KeyType};
pub use value::{numel, DType, Data, Device, RowSparse, StorageType, Tensor, Value};
