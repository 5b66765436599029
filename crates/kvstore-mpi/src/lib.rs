//! kvstore's distributed mode over MPI (docs/distributed.md).
//!
//! One `mpirun` job holds the workers and the servers: of N ranks the last
//! `KVSTORE_NUM_SERVERS` (default 1) are servers ([`roles`]). The workers' and servers' logic is
//! `kvstore-dist`'s state machines, the same code the model checker explores; this crate only
//! moves their messages ([`endpoint`]) and, with the `mpi` feature, runs them in an MPI job
//! (`job::launch`).
//!
//! Kinds whose name contains `allreduce` run without servers (`allreduce::launch`, feature
//! `mpi`): every rank is a worker holding every key, and a push is an MPI allreduce summed in
//! rank order, so the two layouts can be compared on the same program.
#![forbid(unsafe_code)]

#[cfg(feature = "mpi")]
pub mod allreduce;
pub mod endpoint;
pub mod handle;
#[cfg(feature = "mpi")]
pub mod job;
pub mod roles;

pub use handle::Handle;
use std::time::Duration;

/// How a job runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The failure detector's patience: an operation that hears nothing for this long fails
    /// with `PeerFailed` (R64). `KVSTORE_TIMEOUT_MS`, default 60 s.
    pub timeout: Duration,
    /// Dense arrays of at least this many elements are sliced across every server (R63).
    /// `KVSTORE_BIG_ARRAY_BOUND`, default 1,000,000.
    pub big_array_bound: usize,
}

impl Options {
    /// The options from the environment, with defaults.
    pub fn from_env() -> Options {
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse().ok());
        Options {
            timeout: Duration::from_millis(number("KVSTORE_TIMEOUT_MS").unwrap_or(60_000)),
            big_array_bound: number("KVSTORE_BIG_ARRAY_BOUND")
                .map_or(kvstore_dist::DEFAULT_BIG_ARRAY_BOUND, |n: u64| n as usize),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options::from_env()
    }
}
