//! The actors: each worker runs its program through a `kvstore_dist::Worker`, each server is a
//! `kvstore_dist::Server`. The actors only carry messages and fire timers; all protocol logic is
//! the state machines'.

use super::msg::Msg;
use super::script::Step;
use super::DistConfig;
use kvstore_dist::{
    Completion, Effects, Layout, OpId, Outcome, Server, ServerConfig, Worker, WorkerConfig,
};
use kvstore_spec::{Error, Value};
use stateright::actor::{Actor, Id, Out};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a worker observed at one step of its program.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seen {
    /// Success.
    Done,
    /// A pull's values.
    Values(Vec<Value>),
    /// Saved optimizer states (the model's programs save none; kept for completeness).
    Bytes(Vec<u8>),
    /// A failure: the error's variant and message.
    Failed {
        /// Whether the failure detector raised it (R64).
        peer_failed: bool,
        /// Whether it is `DuplicateInit`.
        duplicate_init: bool,
        /// Whether it is `CollectiveMismatch`.
        collective_mismatch: bool,
        /// The message.
        message: String,
    },
}

impl Seen {
    fn of(result: Result<Outcome, Error>) -> Seen {
        match result {
            Ok(Outcome::Done) => Seen::Done,
            Ok(Outcome::Values(values)) => Seen::Values(values),
            Ok(Outcome::Bytes(bytes)) => Seen::Bytes(bytes),
            Err(error) => Seen::Failed {
                peer_failed: matches!(error, Error::PeerFailed { .. }),
                duplicate_init: matches!(error, Error::DuplicateInit { .. }),
                collective_mismatch: matches!(error, Error::CollectiveMismatch { .. }),
                message: error.to_string(),
            },
        }
    }
}

/// A worker actor's state.
#[derive(Debug, Clone, PartialEq, Hash)]
pub struct WorkerState {
    /// The protocol state machine.
    pub worker: Worker,
    /// The next step of the program.
    pub pc: usize,
    /// The operation the program waits for.
    pub blocked_on: Option<OpId>,
    /// Operations in flight, by the step that issued them.
    pub steps: BTreeMap<OpId, usize>,
    /// What each completed step observed: (step, observation).
    pub seen: Vec<(usize, Seen)>,
    /// Set once every step of the program was issued.
    pub finished: bool,
    /// Set when an operation failed unexpectedly: the process gives up (as a real one would).
    pub failed: bool,
    /// Set when the model crashed this worker (fail-stop).
    pub crashed: bool,
}

/// A server actor's state.
#[derive(Debug, Clone, PartialEq, Hash)]
pub struct ServerState {
    /// The protocol state machine.
    pub server: Server,
    /// Requests handled so far.
    pub handled: usize,
    /// Set when the model crashed this server (fail-stop).
    pub crashed: bool,
}

/// An actor's state.
#[derive(Debug, Clone, PartialEq, Hash)]
pub enum NodeState {
    /// A worker.
    Worker(WorkerState),
    /// A server.
    Server(ServerState),
}

/// The failure detector's only timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Deadline;

/// An actor of the model.
#[derive(Debug, Clone)]
pub enum Node {
    /// Worker `rank`, running `program`; it crashes before step `crash_at`, if set.
    Worker {
        /// The model's setup.
        config: Arc<DistConfig>,
        /// Where keys live (validated when the model was built).
        layout: Layout,
        /// Its program.
        program: Arc<Vec<Step>>,
    },
    /// Server `index`.
    Server {
        /// The model's setup.
        config: Arc<DistConfig>,
    },
}

impl Node {
    fn config(&self) -> &DistConfig {
        match self {
            Node::Worker { config, .. } | Node::Server { config } => config,
        }
    }
}

impl Actor for Node {
    type Msg = Msg;
    type State = NodeState;
    type Timer = Deadline;
    type Random = ();
    type Storage = ();

    fn on_start(&self, id: Id, _storage: &Option<()>, o: &mut Out<Self>) -> NodeState {
        let config = self.config();
        let index = usize::from(id);
        match self {
            Node::Worker {
                program, layout, ..
            } => {
                let worker = Worker::new(WorkerConfig {
                    rank: index,
                    workers: config.workers,
                    layout: *layout,
                    faults: config.faults,
                });
                let mut state = WorkerState {
                    worker,
                    pc: 0,
                    blocked_on: None,
                    steps: BTreeMap::new(),
                    seen: Vec::new(),
                    finished: false,
                    failed: false,
                    crashed: false,
                };
                advance(config, program, &mut state, o);
                NodeState::Worker(state)
            }
            Node::Server { .. } => NodeState::Server(ServerState {
                server: Server::new(ServerConfig {
                    index: index - config.workers,
                    workers: config.workers,
                    sync: config.sync,
                    faults: config.faults,
                }),
                handled: 0,
                crashed: false,
            }),
        }
    }

    fn on_msg(&self, _id: Id, state: &mut Cow<NodeState>, src: Id, msg: Msg, o: &mut Out<Self>) {
        let config = self.config();
        match (self, state.to_mut(), msg) {
            (Node::Worker { program, .. }, NodeState::Worker(w), Msg::Reply(reply)) => {
                if w.crashed || w.failed {
                    return;
                }
                let server = usize::from(src).saturating_sub(config.workers);
                match w.worker.handle(server, reply) {
                    Ok(effects) => apply(config, program, w, effects, o),
                    // A reply to nothing in flight: recorded as the process failing.
                    Err(error) => fail(w, Seen::of(Err(error)), o),
                }
            }
            (Node::Server { .. }, NodeState::Server(s), Msg::Request(request)) => {
                if s.crashed {
                    return;
                }
                if config.crash_server_after == Some(s.handled) {
                    s.crashed = true;
                    o.cancel_timer(Deadline);
                    return;
                }
                s.handled += 1;
                for out in s.server.handle(usize::from(src), request) {
                    o.send(Id::from(out.to), Msg::Reply(out.reply));
                }
                arm(config, s.server.is_waiting(), o);
            }
            // Misdirected messages are ignored; the protocol never sends them.
            _ => {}
        }
    }

    fn on_timeout(
        &self,
        _id: Id,
        state: &mut Cow<NodeState>,
        _timer: &Deadline,
        o: &mut Out<Self>,
    ) {
        let config = self.config();
        match (self, state.to_mut()) {
            (Node::Worker { program, .. }, NodeState::Worker(w)) => {
                if w.crashed || w.failed {
                    return;
                }
                let effects = w.worker.expire();
                apply(config, program, w, effects, o);
            }
            (Node::Server { .. }, NodeState::Server(s)) => {
                if s.crashed {
                    return;
                }
                for out in s.server.expire() {
                    o.send(Id::from(out.to), Msg::Reply(out.reply));
                }
            }
            _ => {}
        }
    }
}

/// Arms the failure detector while something waits, when the model has one (R64).
fn arm(config: &DistConfig, waiting: bool, o: &mut Out<Node>) {
    if !config.failure_detector {
        return;
    }
    if waiting {
        o.set_timer(Deadline, stateright::actor::model_timeout());
    } else {
        o.cancel_timer(Deadline);
    }
}

/// Sends the requests, records completions, and runs the program on.
fn apply(
    config: &DistConfig,
    program: &[Step],
    w: &mut WorkerState,
    effects: Effects,
    o: &mut Out<Node>,
) {
    send(config, effects.sends, o);
    record(program, w, effects.completions);
    advance(config, program, w, o);
}

/// Records what completed operations observed and unblocks the program; a failure the step
/// does not expect makes the process give up.
fn record(program: &[Step], w: &mut WorkerState, completions: Vec<Completion>) {
    for Completion { op, result } in completions {
        let step = w.steps.remove(&op);
        let unexpected_failure = match (&result, step.and_then(|s| program.get(s))) {
            (Err(Error::DuplicateInit { .. }), Some(Step::RogueInit)) => false,
            // Checked against the expectation like any result (R49).
            (Err(Error::CollectiveMismatch { .. }), Some(Step::Init)) => false,
            (Err(_), _) => true,
            _ => false,
        };
        if let Some(step) = step {
            w.seen.push((step, Seen::of(result)));
        }
        if w.blocked_on == Some(op) {
            w.blocked_on = None;
        }
        w.failed |= unexpected_failure;
    }
}

/// Runs the program until it must wait for a reply, ends, fails or crashes.
fn advance(config: &DistConfig, program: &[Step], w: &mut WorkerState, o: &mut Out<Node>) {
    while !w.failed && !w.crashed && w.blocked_on.is_none() {
        let Some(step) = program.get(w.pc) else {
            w.finished = true;
            break;
        };
        if config.crash_worker == Some((w.worker.config().rank, w.pc)) {
            w.crashed = true;
            o.cancel_timer(Deadline);
            return;
        }
        let issued = match step {
            Step::Init => {
                let rank = w.worker.config().rank;
                w.worker.init(&super::script::init_values_of(config, rank))
            }
            Step::Reinit => w.worker.init(&super::script::init_values(config)),
            Step::SetOptimizer => match &config.optimizer {
                Some(optimizer) => w.worker.set_optimizer(optimizer),
                None => Ok(w.worker.barrier()),
            },
            Step::Compress => {
                if let Some(c) = config.compression {
                    w.worker.set_gradient_compression(c);
                }
                w.pc += 1;
                continue;
            }
            Step::Push(round) => {
                let rank = w.worker.config().rank;
                let pairs: Vec<_> = (0..config.keys.len())
                    .map(|k| super::script::contribution(config, rank, *round, k))
                    .collect();
                w.worker.push(&pairs)
            }
            Step::Pull | Step::PullNoWait => {
                let keys: Vec<_> = config.keys.iter().map(|(k, _)| k.clone()).collect();
                w.worker.pull(&keys)
            }
            Step::Barrier => Ok(w.worker.barrier()),
            Step::RogueInit => {
                // A restarted process: the same rank, no memory of its keys.
                w.worker = Worker::new(*w.worker.config());
                let first = super::script::init_values(config)
                    .into_iter()
                    .take(1)
                    .collect::<Vec<_>>();
                w.worker.init(&first)
            }
        };
        let pc = w.pc;
        w.pc += 1;
        match issued {
            Ok((op, effects)) => {
                w.steps.insert(op, pc);
                if step.waits() {
                    w.blocked_on = Some(op);
                }
                // Completions in `effects` (ops with nothing to wait for) unblock at once.
                send(config, effects.sends, o);
                record(program, w, effects.completions);
            }
            Err(error) => fail(w, Seen::of(Err(error)), o),
        }
    }
    arm(config, w.worker.is_waiting() && !w.failed && !w.crashed, o);
}

fn fail(w: &mut WorkerState, seen: Seen, o: &mut Out<Node>) {
    w.seen.push((w.pc, seen));
    w.failed = true;
    o.cancel_timer(Deadline);
}

fn send(config: &DistConfig, sends: Vec<kvstore_dist::Send>, o: &mut Out<Node>) {
    for s in sends {
        o.send(Id::from(config.workers + s.server), Msg::Request(s.request));
    }
}
