//! Stateright models of kvstore.
//!
//! - [`local`]: clients issuing push, pull and row_sparse_pull on a few keys through the engine's
//!   scheduling rules (the engine's own admission and ready-queue code).
//! - [`dist`]: workers and servers of the parameter-server protocol (`kvstore-dist`'s state
//!   machines) over FIFO links, in dist_sync and dist_async.
//! - [`linearizable`]: the spec as a `stateright` sequential specification, to check histories
//!   recorded from real multi-threaded runs.
#![forbid(unsafe_code)]

pub mod dist;
pub mod linearizable;
pub mod local;
