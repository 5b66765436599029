//! The engine's local ordering as a stateright model: a few clients run fixed scripts of push,
//! pull, row_sparse_pull and wait_all on a few keys; the engine admits their ops to the keys'
//! vars and orders ready ops with its own rules ([`kvstore_engine::rules`]), on a bounded pool of
//! workers, and completes running ops in any order.
//!
//! The checker explores every interleaving of issuing, starting and completing, and checks the
//! properties of SPEC R61/R62 (see [`properties`]). [`Fault`]s plant realistic engine bugs
//! around the real rules, to show that each property catches what it is meant to.
//!
//! ```no_run
//! use kvstore_models::local::LocalConfig;
//! use stateright::{Checker, Model};
//!
//! let checker = LocalConfig::ci().into_model().checker().spawn_bfs().join();
//! checker.assert_properties();
//! ```

mod config;
mod fault;
mod model;
pub mod properties;
mod reference;
mod state;

pub use config::{LocalConfig, Step};
pub use fault::Fault;
pub use model::{LocalAction, LocalModel, OpInfo};
pub use reference::value_of;
pub use state::{LocalState, OpId, OpState, Phase};
