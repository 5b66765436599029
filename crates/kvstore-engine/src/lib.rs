//! The asynchronous dependency engine of kvstore, in the style of MXNet's `ThreadedVar` engine.
//!
//! Every piece of data that operations touch (a key's stored value, an output array) has a
//! [`Var`]. An op is pushed to an [`Engine`] with the vars it reads and the vars it writes, and
//! returns at once; the engine runs it on a worker thread as soon as every earlier op it conflicts
//! with has completed. Per var, in issue order, a reader waits for earlier writers and a writer
//! waits for everything earlier; consecutive readers run concurrently, and ops that share no var
//! run in parallel. Errors (and panics, as [`OpPanicked`]) of an op are recorded on the vars it
//! writes and on the engine, and come back from [`Var::wait`] and [`Engine::wait_all`].
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use kvstore_engine::{Engine, OpPanicked, Var};
//!
//! #[derive(Debug, Clone, PartialEq)]
//! struct Error(String);
//!
//! impl From<OpPanicked> for Error {
//!     fn from(panic: OpPanicked) -> Self {
//!         Error(panic.0)
//!     }
//! }
//!
//! let engine = Engine::<Error>::new(2);
//! let weight = Var::new();
//! let stored = Arc::new(Mutex::new(0.0_f32));
//!
//! // A writer, then a reader of the same var: the reader runs after the write.
//! let target = Arc::clone(&stored);
//! let write = move || {
//!     *target.lock().unwrap() += 1.5;
//!     Ok(())
//! };
//! engine.push(write, &[], &[weight.clone()], 0);
//! let source = Arc::clone(&stored);
//! let read = move || {
//!     let seen = *source.lock().unwrap();
//!     if seen == 1.5 { Ok(()) } else { Err(Error(format!("read {seen} before the write"))) }
//! };
//! engine.push(read, &[weight.clone()], &[], 0);
//! assert_eq!(engine.wait_all(), Ok(()));
//!
//! // A failing writer: the error comes back once from the var and once from the engine.
//! engine.push(|| Err(Error("disk full".into())), &[], &[weight.clone()], 0);
//! assert_eq!(weight.wait(), Err(Error("disk full".into())));
//! assert_eq!(weight.wait(), Ok(()));
//! assert_eq!(engine.wait_all(), Err(Error("disk full".into())));
//! assert_eq!(engine.wait_all(), Ok(()));
//! ```
#![forbid(unsafe_code)]

mod engine;
mod op;
pub mod rules;
mod scheduler;
mod sync;
mod tickets;
mod var;

pub use engine::Engine;
pub use op::OpPanicked;
pub use var::Var;
