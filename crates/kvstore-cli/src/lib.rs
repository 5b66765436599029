//! The `kvstore` command line, as a library so that tests can call every subcommand directly.
//!
//! - [`bench`](mod@bench): `kvstore bench`, timings against the memory-bandwidth floor and MXNet.
//! - [`check`]: `kvstore check`, the stateright models of docs/verification.md.
//! - [`cli`]: the clap definitions ([`Cli`], [`Command`]) and dispatch ([`run`]).
//! - [`demo`]: `kvstore demo`, data-parallel training of a logistic regression on simulated
//!   devices that push gradients to and pull weights from a store.
//! - [`cluster`]: the simulated devices and their store traffic.
//! - [`data`]: the deterministic synthetic data set.
//! - [`model`]: the model math (logistic regression).
//! - [`replay`]: `kvstore replay`, running a trace file.
//!
//! ```
//! use kvstore_cli::demo::{run_demo, DemoConfig};
//! let config = DemoConfig { epochs: 1, ..DemoConfig::default() };
//! let mut out = Vec::new();
//! let report = run_demo(&config, &mut out)?;
//! assert_eq!(report.epochs.len(), 1);
//! # Ok::<(), kvstore_cli::demo::DemoError>(())
//! ```
#![forbid(unsafe_code)]

pub mod bench;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod data;
pub mod demo;
pub mod model;
pub mod replay;

pub use cli::{run, Cli, CliError, Command};
