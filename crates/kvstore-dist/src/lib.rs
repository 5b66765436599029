//! kvstore's distributed mode as pure state machines (SPEC R48-R58, R63-R65).
//!
//! A [`Worker`] turns a caller's operations into [`Request`]s for the servers that hold each
//! key's parts ([`Layout`]); a [`Server`] turns requests into [`Reply`]s. Neither does any I/O:
//! a transport (MPI, or the stateright model in `kvstore-models`) carries the messages over
//! FIFO links and fires the failure detector's timers ([`Worker::expire`], [`Server::expire`]).
//! So the model checker explores the very code a deployment runs.
//!
//! ```
//! use kvstore_dist::{Layout, Server, ServerConfig, Worker, WorkerConfig, Faults, Outcome};
//! use kvstore_spec::{Key, Tensor, Value};
//!
//! let layout = Layout::new(1, 1_000_000)?;
//! let mut server = Server::new(ServerConfig { index: 0, workers: 1, sync: true, faults: Faults::NONE });
//! let mut worker = Worker::new(WorkerConfig { rank: 0, workers: 1, layout, faults: Faults::NONE });
//! let value = |x: f32| Value::Dense(Tensor::new([2], vec![x, x]).unwrap());
//!
//! // Deliver every request, and every reply, until the worker has nothing in flight.
//! let mut run = |worker: &mut Worker, mut effects: kvstore_dist::Effects| {
//!     let mut done = effects.completions;
//!     while let Some(send) = effects.sends.pop() {
//!         for out in server.handle(0, send.request) {
//!             let more = worker.handle(send.server, out.reply).unwrap();
//!             effects.sends.extend(more.sends);
//!             done.extend(more.completions);
//!         }
//!     }
//!     done
//! };
//! let (_, effects) = worker.init(&[(Key::Int(3), value(1.0))])?;
//! run(&mut worker, effects);
//! let (_, effects) = worker.push(&[(Key::Int(3), value(5.0))])?;
//! run(&mut worker, effects);
//! let (_, effects) = worker.pull(&[Key::Int(3)])?;
//! let done = run(&mut worker, effects);
//! assert_eq!(done[0].result, Ok(Outcome::Values(vec![value(5.0)])));
//! # Ok::<(), kvstore_spec::Error>(())
//! ```
#![forbid(unsafe_code)]

mod faults;
mod layout;
mod message;
mod parts;
mod server;
pub mod wire;
mod worker;

pub use faults::{Fault, Faults};
pub use layout::{Layout, Part, DEFAULT_BIG_ARRAY_BOUND};
pub use message::{Payload, Reply, Request, RequestId};
pub use server::{Outgoing, Server, ServerConfig};
pub use wire::Message;
pub use worker::{Completion, Effects, OpId, Outcome, Send, Worker, WorkerConfig};
