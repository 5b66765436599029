//! The distributed protocol model: W workers and S servers running `kvstore-dist`'s state
//! machines over FIFO links (stateright's ordered network: per link in order, across links in
//! any order), in dist_sync or dist_async, optionally with compression, an optimizer, a crashed
//! process and the failure detector.
//!
//! Properties (names as the checker reports them):
//! - `results match the spec`: every operation that succeeds observes what
//!   `kvstore_spec::dist::DistStore` says: a dist_sync pull after a worker's r-th push returns
//!   exactly the spec's value after round r (so no contribution is lost, counted twice or
//!   taken twice from one worker); in a dist_async pull each part of each key equals that part
//!   of the spec's value after the puller's own pushes and some prefix of every other worker's
//!   (so every push is applied exactly once; R66: async pulls are atomic per part only).
//!   Without a failure detector nothing fails at all.
//! - `workers agree`: pulls after the same round return identical values on every worker.
//! - `no deadlock`: when no message is in flight and no timer is set, every live worker has
//!   finished or failed.
//! - `every operation completes`: eventually every live worker finishes its program or fails
//!   with a typed error.
//! - `a request waits at a server`, and with a failure detector `a peer failure is reported`
//!   (sometimes): the model is not vacuous.

mod msg;
mod node;
mod properties;
mod script;

pub use msg::Msg;
pub use node::{Node, NodeState, Seen, ServerState, WorkerState};
pub use script::{Expect, Step};

use kvstore_dist::{Fault, Faults, Layout};
use kvstore_spec::codec::{Compression, CompressionType};
use kvstore_spec::optimizer::{Optimizer, Sgd};
use kvstore_spec::{Error, Key, Result};
use stateright::actor::{ActorModel, Network};
use std::sync::Arc;

/// The model's setup.
#[derive(Debug, Clone, PartialEq)]
pub struct DistConfig {
    /// Workers W.
    pub workers: usize,
    /// Servers S.
    pub servers: usize,
    /// dist_sync (rounds) or dist_async (apply on arrival).
    pub sync: bool,
    /// The keys and their shapes.
    pub keys: Vec<(Key, Vec<usize>)>,
    /// Dense keys with at least this many elements are sliced across every server.
    pub big_array_bound: usize,
    /// Pushes of every key per worker.
    pub rounds: usize,
    /// Pull after every round (else only after the last).
    pub pull_each_round: bool,
    /// Pulls before the last round are issued without waiting for them.
    pub overlap_pulls: bool,
    /// 2-bit (or 1-bit) compression of pushes.
    pub compression: Option<Compression>,
    /// The servers' optimizer (set by worker 0, then a barrier). Required by dist_async.
    pub optimizer: Option<Optimizer>,
    /// Worker 0 restarts at the end and inits a key again.
    pub rogue_init: bool,
    /// Worker 1 inits the first key with one element more than the others: every worker's
    /// init must fail with `CollectiveMismatch` and nothing be stored (R49).
    pub mismatched_init: bool,
    /// Fail-stop a worker before one step of its program: (rank, step).
    pub crash_worker: Option<(usize, usize)>,
    /// Fail-stop the first server after it handled this many requests.
    pub crash_server_after: Option<usize>,
    /// Arm the failure detector's timers (R64). They may fire at any moment, as a timeout can
    /// in an asynchronous system; safety must hold all the same.
    pub failure_detector: bool,
    /// Planted bugs.
    pub faults: Faults,
}

/// The model's setup and, per worker and step, what the spec says it must observe.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The setup.
    pub config: DistConfig,
    /// Per worker, per step of its program.
    pub expected: Vec<Vec<Expect>>,
}

/// The stateright model of the protocol.
pub type DistModel = ActorModel<Node, Arc<Setup>, ()>;

impl DistConfig {
    /// dist_sync, 2 workers, 2 servers, a small key on one server and a key sliced across both,
    /// 2 rounds with a pull after each: the CI size.
    pub fn sync_ci() -> DistConfig {
        DistConfig {
            workers: 2,
            servers: 2,
            sync: true,
            keys: vec![(Key::Int(1), vec![2]), (Key::Int(8), vec![3])],
            big_array_bound: 3,
            rounds: 2,
            pull_each_round: true,
            overlap_pulls: false,
            compression: None,
            optimizer: None,
            rogue_init: false,
            mismatched_init: false,
            crash_worker: None,
            crash_server_after: None,
            failure_detector: false,
            faults: Faults::NONE,
        }
    }

    /// The CI size with one sliced key and a restarted worker that inits again.
    pub fn sync_rogue_init() -> DistConfig {
        DistConfig {
            keys: vec![(Key::Int(8), vec![3])],
            rounds: 1,
            rogue_init: true,
            ..DistConfig::sync_ci()
        }
    }

    /// The CI size where worker 1 first inits the small key with another shape (every worker
    /// must fail), then every worker inits again alike, pushes one round and pulls it.
    pub fn sync_mismatched_init() -> DistConfig {
        DistConfig {
            mismatched_init: true,
            rounds: 1,
            ..DistConfig::sync_ci()
        }
    }

    /// dist_sync with 2-bit compression (threshold 0.5), one sliced key, 2 rounds.
    pub fn sync_compressed() -> DistConfig {
        DistConfig {
            keys: vec![(Key::Int(8), vec![3])],
            compression: Compression::new(CompressionType::TwoBit, 0.5).ok(),
            ..DistConfig::sync_ci()
        }
    }

    /// dist_sync with the pushes of every round before a single pull, and a barrier-free
    /// program: a worker's second push reaches the server before the round of its first closes.
    pub fn sync_pipelined() -> DistConfig {
        DistConfig {
            keys: vec![(Key::Int(1), vec![2])],
            servers: 1,
            pull_each_round: false,
            ..DistConfig::sync_ci()
        }
    }

    /// dist_sync where a worker's pull of round 1 is still pending when it pushes round 2:
    /// one server, one key, 2 rounds.
    pub fn sync_overlapped() -> DistConfig {
        DistConfig {
            keys: vec![(Key::Int(1), vec![2])],
            servers: 1,
            overlap_pulls: true,
            ..DistConfig::sync_ci()
        }
    }

    /// dist_async with SGD (learning rate 1) on the servers, 2 workers, 2 servers, a key sliced
    /// across both, 2 rounds.
    pub fn async_ci() -> DistConfig {
        DistConfig {
            sync: false,
            keys: vec![(Key::Int(8), vec![3])],
            optimizer: Some(Optimizer::Sgd(Sgd {
                learning_rate: 1.0,
                ..Sgd::default()
            })),
            ..DistConfig::sync_ci()
        }
    }

    /// dist_sync, one server, one key, one round, a crashed worker (before its push) and the
    /// failure detector: the others must get an error, never wait forever.
    pub fn crashed_worker() -> DistConfig {
        DistConfig {
            servers: 1,
            keys: vec![(Key::Int(1), vec![1])],
            rounds: 1,
            crash_worker: Some((1, 1)),
            failure_detector: true,
            ..DistConfig::sync_ci()
        }
    }

    /// As [`DistConfig::crashed_worker`], with the server crashing after 3 requests instead.
    pub fn crashed_server() -> DistConfig {
        DistConfig {
            crash_worker: None,
            crash_server_after: Some(3),
            ..DistConfig::crashed_worker()
        }
    }

    /// The release-size run of docs/verification.md: 3 workers, 2 servers, 2 keys (one
    /// sliced), 2 rounds.
    pub fn sync_large() -> DistConfig {
        DistConfig {
            workers: 3,
            ..DistConfig::sync_ci()
        }
    }

    /// The same setup committing `fault`.
    pub fn with_fault(mut self, fault: Fault) -> Result<DistConfig> {
        self.faults = self.faults.with(fault).ok_or_else(|| Error::Protocol {
            reason: "kvstore-dist was built without its fault-injection feature".into(),
        })?;
        Ok(self)
    }

    /// The setup where `fault` shows: the configuration its planted-bug test checks.
    pub fn exposing(fault: Fault) -> DistConfig {
        match fault {
            Fault::InitAcceptedTwice => DistConfig::sync_rogue_init(),
            Fault::ResidualDropped => DistConfig::sync_compressed(),
            Fault::CountsRequests => DistConfig::sync_pipelined(),
            Fault::PullWaitsForLaterPushes => DistConfig::sync_overlapped(),
            Fault::BarrierNotReset => DistConfig::async_ci(),
            _ => DistConfig::sync_ci(),
        }
    }

    /// Each worker's program.
    pub fn programs(&self) -> Vec<Vec<Step>> {
        (0..self.workers)
            .map(|w| script::program(self, w))
            .collect()
    }

    /// The stateright model, with every property above.
    pub fn into_model(self) -> Result<DistModel> {
        let layout = Layout::new(self.servers, self.big_array_bound)?.with_faults(self.faults);
        if self.workers == 0 {
            return Err(Error::UnsupportedKind {
                kind: "dist".into(),
                reason: "the model needs at least one worker".into(),
            });
        }
        let setup = Setup {
            expected: script::expectations(&self)?,
            config: self.clone(),
        };
        let config = Arc::new(self);
        let mut model = ActorModel::new(Arc::new(setup), ());
        for rank in 0..config.workers {
            model = model.actor(Node::Worker {
                config: Arc::clone(&config),
                layout,
                program: Arc::new(script::program(&config, rank)),
            });
        }
        for _ in 0..config.servers {
            model = model.actor(Node::Server {
                config: Arc::clone(&config),
            });
        }
        let model = model.init_network(Network::new_ordered([]));
        Ok(properties::add(model))
    }
}
