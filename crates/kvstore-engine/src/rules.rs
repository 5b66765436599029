//! The engine's scheduling rules as plain data structures, with no locks, no `Arc` and no
//! threads: the per-var admission rule ([`Admission`]) and the order of the ready queue
//! ([`ReadyQueue`]).
//!
//! The engine wraps them in its locks (`var.rs`, `scheduler.rs`); the model checker of
//! `kvstore-models` drives the very same code step by step, so what it verifies is what runs.

mod admission;
mod ready;

pub use admission::Admission;
pub use ready::ReadyQueue;
