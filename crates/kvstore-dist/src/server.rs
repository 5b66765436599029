//! A server of the parameter-server protocol: it holds one part of each key it serves, runs
//! dist_sync rounds or dist_async updates on it, and coordinates barriers (server 0).
//!
//! [`Server::handle`] takes one request and returns the replies it causes; nothing else leaves
//! the state machine. A request that fails changes nothing (R7, R65).

use crate::faults::{Fault, Faults};
use crate::message::{Payload, Reply, Request, RequestId};
use kvstore_spec::dist::InitSignature;
use kvstore_spec::optimizer::{Optimizer, OptimizerUpdater, State};
use kvstore_spec::updater::UpdaterSlot;
use kvstore_spec::value::{Data, Tensor};
use kvstore_spec::{sparse, Device, Error, Key, Result, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// A reply and the worker it goes to.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The worker's rank.
    pub to: usize,
    /// The reply.
    pub reply: Reply,
}

/// How a server is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerConfig {
    /// This server's index.
    pub index: usize,
    /// The number of workers W.
    pub workers: usize,
    /// dist_sync (rounds) or dist_async (apply on arrival).
    pub sync: bool,
    /// Planted bugs (model checking only).
    pub faults: Faults,
}

/// A contribution waiting for its round.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Queued {
    id: RequestId,
    value: Value,
    /// Arrival order on this server, for the [`Fault::CountsRequests`] bug only.
    arrival: u64,
}

/// The server's part of one key.
#[derive(Debug, Clone, PartialEq)]
struct Slot {
    /// Shared with the pull replies still being sent.
    value: Arc<Value>,
    /// Per worker, its contributions waiting for a round, oldest first (R51).
    queues: Vec<VecDeque<Queued>>,
    /// Completed rounds (sync) or applied pushes (async).
    rounds: u64,
    /// Pulls waiting for their worker's open round (R52).
    parked: Vec<Parked>,
    /// The optimizer's states for this part, when an optimizer is set.
    optimizer: Option<OptimizerUpdater>,
}

/// A pull waiting for its worker's open round (R52).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Parked {
    worker: usize,
    id: RequestId,
    /// The round count that completes the last round the worker pushed into before the pull.
    target: u64,
    /// The rows asked for, for a row_sparse_pull.
    rows: Option<Vec<i64>>,
}

/// What a pull of `rows` (all rows when `None`) reads of a stored part.
fn read(value: &Arc<Value>, rows: Option<&[i64]>) -> Result<Arc<Value>> {
    match rows {
        None => Ok(Arc::clone(value)),
        Some(ids) => Ok(Arc::new(Value::RowSparse(sparse::retain(
            value,
            ids,
            value.dtype(),
        )?))),
    }
}

/// The rows of a stored part: its first dimension.
fn row_count(value: &Value) -> usize {
    value.shape().first().copied().unwrap_or(0)
}

/// A server state machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    config: ServerConfig,
    keys: BTreeMap<Key, Slot>,
    optimizer: Option<Optimizer>,
    /// Init signatures of the current collective init (server 0 only): worker ->
    /// (request, signature) (R49).
    init_checks: BTreeMap<usize, (RequestId, InitSignature, bool)>,
    /// Every key a collective init agreed on (server 0 only): a later init of one of them is
    /// `DuplicateInit` at once (R49), even from a worker calling it alone.
    inited: BTreeSet<Key>,
    /// Barrier arrivals of the current generation (server 0 only).
    barrier: BTreeMap<usize, RequestId>,
    /// Arrivals counted since the last release; equals `barrier.len()` unless a fault is planted.
    barrier_count: usize,
    arrivals: u64,
    /// Set once the failure detector fired: every later request fails with this error.
    failed: Option<Error>,
}

impl std::hash::Hash for Server {
    /// Hashes everything equality compares (model checkers identify states by their hash).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.config.hash(state);
        for (key, slot) in &self.keys {
            key.hash(state);
            slot.value.hash(state);
            slot.queues.hash(state);
            slot.rounds.hash(state);
            slot.parked.hash(state);
            // Optimizer states hold floats; their text is a faithful, if slow, digest.
            slot.optimizer
                .as_ref()
                .map(|o| format!("{o:?}"))
                .hash(state);
        }
        self.optimizer
            .as_ref()
            .map(|o| format!("{o:?}"))
            .hash(state);
        self.init_checks.hash(state);
        self.inited.hash(state);
        self.barrier.hash(state);
        self.barrier_count.hash(state);
        self.arrivals.hash(state);
        self.failed.as_ref().map(ToString::to_string).hash(state);
    }
}

impl Server {
    /// A server with no key.
    pub fn new(config: ServerConfig) -> Server {
        Server {
            config,
            keys: BTreeMap::new(),
            optimizer: None,
            init_checks: BTreeMap::new(),
            inited: BTreeSet::new(),
            barrier: BTreeMap::new(),
            barrier_count: 0,
            arrivals: 0,
            failed: None,
        }
    }

    /// The server's setup.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The part of `key` this server holds.
    pub fn value(&self, key: &Key) -> Option<&Value> {
        self.keys.get(key).map(|s| &*s.value)
    }

    /// Completed rounds (sync) or applied pushes (async) of `key`'s part.
    pub fn rounds(&self, key: &Key) -> u64 {
        self.keys.get(key).map_or(0, |s| s.rounds)
    }

    /// Whether some request waits here for other workers: the failure detector's timer runs
    /// only then (R64).
    pub fn is_waiting(&self) -> bool {
        !self.barrier.is_empty()
            || !self.init_checks.is_empty()
            || self
                .keys
                .values()
                .any(|s| !s.parked.is_empty() || s.queues.iter().any(|q| !q.is_empty()))
    }

    /// Handles one request from worker `from`.
    pub fn handle(&mut self, from: usize, request: Request) -> Vec<Outgoing> {
        let id = request.id();
        let fail = |error: Error| {
            vec![Outgoing {
                to: from,
                reply: Reply::Failed { id, error },
            }]
        };
        if let Some(error) = &self.failed {
            return fail(error.clone());
        }
        if from >= self.config.workers {
            return fail(Error::UnknownWorker {
                rank: from,
                workers: self.config.workers,
            });
        }
        let done = vec![Outgoing {
            to: from,
            reply: Reply::Done { id },
        }];
        let result = match request {
            Request::Init { key, value, .. } => self.init(key, value).map(|()| done),
            Request::Push { key, payload, .. } => self.push(from, id, key, payload),
            Request::Pull { key, rows, .. } => self.pull(from, id, &key, rows),
            Request::Barrier { .. } => self.barrier(from, id),
            Request::InitCheck {
                signature, refused, ..
            } => self.init_check(from, id, signature, refused),
            Request::SetOptimizer { optimizer, .. } => self.set_optimizer(optimizer).map(|()| done),
            Request::SaveStates { .. } => self.save_states().map(|(optimizer, states)| {
                vec![Outgoing {
                    to: from,
                    reply: Reply::States {
                        id,
                        optimizer,
                        states,
                    },
                }]
            }),
            Request::LoadStates {
                optimizer, states, ..
            } => self.load_states(optimizer, states).map(|()| done),
        };
        result.unwrap_or_else(fail)
    }

    /// The failure detector fired (R64): every waiting request fails, naming the workers it
    /// waits for, and the server refuses everything from now on.
    pub fn expire(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let workers = self.config.workers;
        for (key, slot) in &mut self.keys {
            let missing: Vec<usize> = (0..workers)
                .filter(|&w| slot.queues.get(w).is_some_and(VecDeque::is_empty))
                .collect();
            let error = Error::PeerFailed {
                peer: format!("workers {missing:?}"),
                reason: format!("key {key}: round {} never completed", slot.rounds + 1),
            };
            for (w, queue) in slot.queues.iter_mut().enumerate() {
                for queued in queue.drain(..) {
                    out.push(failed(w, queued.id, error.clone()));
                }
            }
            for parked in slot.parked.drain(..) {
                out.push(failed(parked.worker, parked.id, error.clone()));
            }
        }
        let missing: Vec<usize> = (0..workers)
            .filter(|w| !self.barrier.contains_key(w))
            .collect();
        let error = Error::PeerFailed {
            peer: format!("workers {missing:?}"),
            reason: "the barrier was never reached by every worker".into(),
        };
        for (w, id) in std::mem::take(&mut self.barrier) {
            out.push(failed(w, id, error.clone()));
        }
        let missing: Vec<usize> = (0..workers)
            .filter(|w| !self.init_checks.contains_key(w))
            .collect();
        let error = Error::PeerFailed {
            peer: format!("workers {missing:?}"),
            reason: "a collective init was never called by every worker".into(),
        };
        for (w, (id, ..)) in std::mem::take(&mut self.init_checks) {
            out.push(failed(w, id, error.clone()));
        }
        self.barrier_count = 0;
        self.failed = Some(Error::PeerFailed {
            peer: format!("server {}", self.config.index),
            reason: "the store failed after a peer stopped answering".into(),
        });
        out
    }

    fn init(&mut self, key: Key, value: Value) -> Result<()> {
        if self.keys.contains_key(&key) && !self.config.faults.has(Fault::InitAcceptedTwice) {
            return Err(Error::DuplicateInit { key });
        }
        let optimizer = self
            .optimizer
            .clone()
            .map(OptimizerUpdater::new)
            .transpose()?;
        let slot = Slot {
            value: Arc::new(value.on(Device::Cpu(0))),
            queues: vec![VecDeque::new(); self.config.workers],
            rounds: 0,
            parked: Vec::new(),
            optimizer,
        };
        self.keys.insert(key, slot);
        Ok(())
    }

    fn push(
        &mut self,
        from: usize,
        id: RequestId,
        key: Key,
        payload: Payload,
    ) -> Result<Vec<Outgoing>> {
        let slot = self
            .keys
            .get(&key)
            .ok_or_else(|| Error::NotInitialized { key: key.clone() })?;
        let value = conform(decode(&key, payload)?, slot.value.shape());
        check_fits(&key, &slot.value, &value)?;
        if !self.config.sync {
            return self.apply_on_arrival(from, id, &key, value);
        }
        // Arrival order matters only to the CountsRequests bug; elsewhere it would only split
        // otherwise equal states.
        if self.config.faults.has(Fault::CountsRequests) {
            self.arrivals += 1;
        }
        let arrival = self.arrivals;
        let workers = self.config.workers;
        let slot = self.slot_mut(&key)?;
        let queue = slot.queues.get_mut(from).ok_or(Error::UnknownWorker {
            rank: from,
            workers,
        })?;
        queue.push_back(Queued { id, value, arrival });
        let mut out = Vec::new();
        loop {
            match self.close_round(&key) {
                Ok(Some(acks)) => out.extend(acks),
                Ok(None) => break,
                Err(error) => {
                    // The contribution that would have closed the round is refused; the
                    // others stay queued, as if it had never arrived (R7, R22).
                    let slot = self.slot_mut(&key)?;
                    if let Some(queue) = slot.queues.get_mut(from) {
                        queue.pop_back();
                    }
                    out.push(failed(from, id, error));
                    break;
                }
            }
        }
        Ok(out)
    }

    /// R51: when every worker has a contribution queued, sums the oldest of each in rank order,
    /// applies the sum, acknowledges those pushes and answers the pulls parked behind them.
    fn close_round(&mut self, key: &Key) -> Result<Option<Vec<Outgoing>>> {
        let workers = self.config.workers;
        let faults = self.config.faults;
        let slot = self.slot_mut(key)?;
        let taken = take_round(&slot.queues, workers, faults);
        let Some(taken) = taken else {
            return Ok(None);
        };
        let contributions: Vec<&Value> = taken
            .iter()
            .filter_map(|&(w, i)| slot.queues.get(w).and_then(|q| q.get(i)))
            .map(|q| &q.value)
            .collect();
        let summed_in_place =
            slot.optimizer.is_none() && sum_in_place(&mut slot.value, &contributions);
        let next = if summed_in_place {
            None
        } else {
            let sum = crate::parts::sum(key, &contributions, slot.value.dtype())?.into_owned();
            Some(apply(key, &slot.value, slot.optimizer.as_ref(), sum)?)
        };
        // Commit: nothing below can fail.
        let mut out = Vec::new();
        let mut removed: Vec<(usize, usize)> = taken;
        removed.sort_by_key(|&(_, i)| std::cmp::Reverse(i));
        for (w, i) in removed {
            if let Some(q) = slot.queues.get_mut(w).and_then(|q| q.remove(i)) {
                out.push(Outgoing {
                    to: w,
                    reply: Reply::Done { id: q.id },
                });
            }
        }
        out.sort_by_key(|o| o.to);
        if let Some((next, optimizer)) = next {
            slot.value = Arc::new(next);
            slot.optimizer = optimizer;
        }
        slot.rounds += 1;
        if !faults.has(Fault::ParkedPullsForgotten) {
            let late = faults.has(Fault::PullWaitsForLaterPushes);
            let rounds = slot.rounds;
            let queues = &slot.queues;
            let (ready, still): (Vec<_>, Vec<_>) = std::mem::take(&mut slot.parked)
                .into_iter()
                .partition(|parked| {
                    if late {
                        queues.get(parked.worker).is_none_or(VecDeque::is_empty)
                    } else {
                        rounds >= parked.target
                    }
                });
            slot.parked = still;
            for parked in ready {
                let reply = match read(&slot.value, parked.rows.as_deref()) {
                    Ok(value) => Reply::Value {
                        id: parked.id,
                        value,
                    },
                    Err(error) => Reply::Failed {
                        id: parked.id,
                        error,
                    },
                };
                out.push(Outgoing {
                    to: parked.worker,
                    reply,
                });
            }
        }
        Ok(Some(out))
    }

    /// R54: dist_async applies each push at once, and only through an optimizer.
    fn apply_on_arrival(
        &mut self,
        from: usize,
        id: RequestId,
        key: &Key,
        value: Value,
    ) -> Result<Vec<Outgoing>> {
        let slot = self.slot_mut(key)?;
        if slot.optimizer.is_none() {
            return Err(Error::UpdaterRequired {
                key: key.clone(),
                kind: "dist_async".into(),
            });
        }
        let (next, optimizer) = apply(key, &slot.value, slot.optimizer.as_ref(), value)?;
        slot.value = Arc::new(next);
        slot.optimizer = optimizer;
        slot.rounds += 1;
        Ok(vec![Outgoing {
            to: from,
            reply: Reply::Done { id },
        }])
    }

    /// R52: the value of the last completed round, once the puller's own pushes are in one.
    fn pull(
        &mut self,
        from: usize,
        id: RequestId,
        key: &Key,
        rows: Option<Vec<i64>>,
    ) -> Result<Vec<Outgoing>> {
        let stale_ok = self.config.faults.has(Fault::StalePull);
        let slot = self.slot_mut(key)?;
        if let Some(ids) = &rows {
            // A worker checks the ids first; a server trusts no one (R65).
            let normalized = sparse::normalize_row_ids(key, ids, row_count(&slot.value))?;
            if &normalized != ids {
                return Err(Error::Protocol {
                    reason: format!("key {key}: row ids {ids:?} are not sorted and distinct"),
                });
            }
        }
        // The pull reads the round of the worker's last push before it, which completes when
        // every contribution the worker has queued now is in a completed round; pushes the
        // worker sends after the pull belong to later rounds and must not delay it.
        let queued = slot.queues.get(from).map_or(0, VecDeque::len) as u64;
        if queued > 0 && !stale_ok {
            slot.parked.push(Parked {
                worker: from,
                id,
                target: slot.rounds + queued,
                rows,
            });
            return Ok(Vec::new());
        }
        Ok(vec![Outgoing {
            to: from,
            reply: Reply::Value {
                id,
                value: read(&slot.value, rows.as_deref())?,
            },
        }])
    }

    /// R49: server 0 compares every worker's init signature once all arrived, and answers all
    /// of them alike: `Done`, or the mismatch. When some worker refused its own arguments,
    /// nothing is registered: it gets `Done` and fails with its own error, and any worker that
    /// did not refuse gets a mismatch naming it, so nobody waits for a store that never comes.
    fn init_check(
        &mut self,
        from: usize,
        id: RequestId,
        signature: InitSignature,
        refused: bool,
    ) -> Result<Vec<Outgoing>> {
        self.check_coordinator("an init check", from, self.init_checks.contains_key(&from))?;
        if !self.config.faults.has(Fault::InitAcceptedTwice) {
            if let Some((key, ..)) = signature.iter().find(|(k, ..)| self.inited.contains(k)) {
                return Err(Error::DuplicateInit { key: key.clone() });
            }
        }
        self.init_checks.insert(from, (id, signature, refused));
        if self.init_checks.len() < self.config.workers {
            return Ok(Vec::new());
        }
        let arrived = std::mem::take(&mut self.init_checks);
        let signatures: Vec<InitSignature> = arrived.values().map(|(_, s, _)| s.clone()).collect();
        let verdict = kvstore_spec::dist::check_init_signatures(&signatures);
        let refusers: Vec<usize> = arrived
            .iter()
            .filter(|(_, (_, _, refused))| *refused)
            .map(|(w, _)| *w)
            .collect();
        if verdict.is_ok() && refusers.is_empty() {
            let keys = signatures.first().into_iter().flatten();
            self.inited.extend(keys.map(|(key, ..)| key.clone()));
        }
        Ok(arrived
            .into_iter()
            .map(|(to, (id, _, refused))| Outgoing {
                to,
                reply: match (&verdict, refused || refusers.is_empty()) {
                    (Ok(()), true) => Reply::Done { id },
                    (Ok(()), false) => Reply::Failed {
                        id,
                        error: Error::CollectiveMismatch {
                            op: "init".into(),
                            reason: format!("workers {refusers:?} refused their init arguments"),
                        },
                    },
                    (Err(error), _) => Reply::Failed {
                        id,
                        error: error.clone(),
                    },
                },
            })
            .collect())
    }

    /// Only server 0 coordinates (barriers, init checks), and a worker takes part once per
    /// round of it (R65).
    fn check_coordinator(&self, what: &str, from: usize, again: bool) -> Result<()> {
        if self.config.index != 0 {
            return Err(Error::Protocol {
                reason: format!(
                    "{what} sent to server {}, only server 0 coordinates",
                    self.config.index
                ),
            });
        }
        if again {
            return Err(Error::Protocol {
                reason: format!("worker {from} sent {what} twice"),
            });
        }
        Ok(())
    }

    /// Server 0 releases a barrier once every worker arrived.
    fn barrier(&mut self, from: usize, id: RequestId) -> Result<Vec<Outgoing>> {
        self.check_coordinator("a barrier", from, self.barrier.contains_key(&from))?;
        self.barrier.insert(from, id);
        self.barrier_count += 1;
        if self.barrier_count < self.config.workers {
            return Ok(Vec::new());
        }
        if !self.config.faults.has(Fault::BarrierNotReset) {
            self.barrier_count = 0;
        }
        Ok(std::mem::take(&mut self.barrier)
            .into_iter()
            .map(|(to, id)| Outgoing {
                to,
                reply: Reply::Done { id },
            })
            .collect())
    }

    /// R57: a fresh optimizer for every key, with fresh states.
    fn set_optimizer(&mut self, optimizer: Optimizer) -> Result<()> {
        let fresh = OptimizerUpdater::new(optimizer.clone())?;
        for slot in self.keys.values_mut() {
            slot.optimizer = Some(fresh.clone());
        }
        self.optimizer = Some(optimizer);
        Ok(())
    }

    /// R68: the optimizer and the state of every part that has one.
    fn save_states(&self) -> Result<(Optimizer, Vec<(Key, State)>)> {
        let optimizer = self.optimizer.clone().ok_or(Error::NoOptimizer)?;
        let states = self
            .keys
            .iter()
            .filter_map(|(key, slot)| {
                let state = slot.optimizer.as_ref()?.states().get(key)?;
                Some((key.clone(), state.clone()))
            })
            .collect();
        Ok((optimizer, states))
    }

    /// R68: every part's state replaced (absent keys start afresh), the optimizer too when
    /// given. Checked whole before anything changes.
    fn load_states(
        &mut self,
        optimizer: Option<Optimizer>,
        states: Vec<(Key, State)>,
    ) -> Result<()> {
        let current = self.optimizer.clone().ok_or(Error::NoOptimizer)?;
        let optimizer = optimizer.unwrap_or(current);
        optimizer.validate()?;
        let mut states: BTreeMap<Key, State> = states.into_iter().collect();
        for (key, state) in &states {
            let slot = self.keys.get(key).ok_or_else(|| Error::Protocol {
                reason: format!("a state for key {key}, which this server does not hold"),
            })?;
            kvstore_spec::dist::check_state_fits(key, state, &slot.value)?;
        }
        for (key, slot) in &mut self.keys {
            let state: BTreeMap<Key, State> = states.remove_entry(key).into_iter().collect();
            slot.optimizer = Some(OptimizerUpdater::with_states(optimizer.clone(), state)?);
        }
        self.optimizer = Some(optimizer);
        Ok(())
    }

    fn slot_mut(&mut self, key: &Key) -> Result<&mut Slot> {
        self.keys
            .get_mut(key)
            .ok_or_else(|| Error::NotInitialized { key: key.clone() })
    }
}

/// The (worker, queue index) contributions of the next round, or `None` while it is not full.
fn take_round(
    queues: &[VecDeque<Queued>],
    workers: usize,
    faults: Faults,
) -> Option<Vec<(usize, usize)>> {
    if faults.has(Fault::CountsRequests) {
        // Counts requests: the `workers` oldest arrivals, whoever sent them.
        let mut all: Vec<(u64, usize, usize)> = queues
            .iter()
            .enumerate()
            .flat_map(|(w, q)| q.iter().enumerate().map(move |(i, x)| (x.arrival, w, i)))
            .collect();
        if all.len() < workers {
            return None;
        }
        all.sort_unstable();
        let mut taken: Vec<(usize, usize)> = all
            .into_iter()
            .take(workers)
            .map(|(_, w, i)| (w, i))
            .collect();
        taken.sort_unstable();
        return Some(taken);
    }
    let needed = if faults.has(Fault::RoundClosesEarly) {
        workers.saturating_sub(1).max(1)
    } else {
        workers
    };
    let ready: Vec<(usize, usize)> = queues
        .iter()
        .enumerate()
        .filter(|(_, q)| !q.is_empty())
        .map(|(w, _)| (w, 0))
        .collect();
    (ready.len() >= needed).then_some(ready)
}

/// Without an optimizer a round's sum replaces the stored part, so when nothing else holds
/// the stored buffer (no reply still being sent) and every value is dense f32 of its length,
/// the sum is written over it: no new 16 MB buffer, no page faults. The kernel is the one
/// `parts::sum` uses, so the bits are the same. Returns whether it did; it fails never, and
/// does nothing unless it can do it all.
fn sum_in_place(stored: &mut Arc<Value>, contributions: &[&Value]) -> bool {
    let Some(Value::Dense(tensor)) = Arc::get_mut(stored) else {
        return false;
    };
    let Some(out) = tensor.f32_mut() else {
        return false;
    };
    let inputs: Option<Vec<&[f32]>> = contributions
        .iter()
        .map(|v| match v {
            Value::Dense(t) => t.f32s().filter(|xs| xs.len() == out.len()),
            Value::RowSparse(_) => None,
        })
        .collect();
    match inputs {
        Some(inputs) if !inputs.is_empty() => kvstore_cpu::sum_into(out, &inputs).is_ok(),
        _ => false,
    }
}

/// The stored value after `update`: replaced (keeping the update's storage type, R19) or run
/// through the optimizer, whose new states come back with it.
fn apply(
    key: &Key,
    stored: &Value,
    optimizer: Option<&OptimizerUpdater>,
    update: Value,
) -> Result<(Value, Option<OptimizerUpdater>)> {
    match optimizer {
        None => Ok((update.on(stored.device()), None)),
        Some(o) => {
            let mut slot = UpdaterSlot::Optimizer(o.clone());
            let next = slot.apply(key, &update, stored)?;
            let UpdaterSlot::Optimizer(o) = slot else {
                return Err(Error::Protocol {
                    reason: "optimizer slot changed kind".into(),
                });
            };
            Ok((next, Some(o)))
        }
    }
}

/// The pushed part as a value: quantised payloads are decoded here (R55).
fn decode(key: &Key, payload: Payload) -> Result<Value> {
    match payload {
        Payload::Plain(value) => Ok(value.on(Device::Cpu(0))),
        Payload::Quantized {
            compression,
            words,
            len,
        } => {
            if words.len() != compression.compressed_words(len) {
                return Err(Error::Protocol {
                    reason: format!(
                        "key {key}: {} words cannot hold {len} quantised elements",
                        words.len()
                    ),
                });
            }
            let data = compression.dequantize(&words, len)?;
            Ok(Value::Dense(Tensor::new([len], Data::F32(data))?))
        }
    }
}

/// A pushed part must have the stored part's element count and dtype (R65).
/// A dense value of the part's element count in the part's shape (a quantised push arrives
/// flat): every value of a part then has one shape, as its sums and reads expect.
fn conform(value: Value, shape: &[usize]) -> Value {
    match value {
        Value::Dense(t)
            if t.shape() != shape
                && t.shape().iter().product::<usize>() == shape.iter().product::<usize>() =>
        {
            let device = t.device();
            match Tensor::new(shape.to_vec(), t.into_data()) {
                Ok(reshaped) => Value::Dense(reshaped.on(device)),
                // Unreachable (the counts agree); `check_fits` refuses anything else.
                Err(_) => Value::Dense(Tensor::default_empty()),
            }
        }
        other => other,
    }
}

fn check_fits(key: &Key, stored: &Value, pushed: &Value) -> Result<()> {
    let numel = |v: &Value| v.shape().iter().product::<usize>();
    if numel(stored) != numel(pushed) || stored.dtype() != pushed.dtype() {
        return Err(Error::ShapeMismatch {
            key: key.clone(),
            expected: stored.shape().to_vec(),
            found: pushed.shape().to_vec(),
        });
    }
    Ok(())
}

fn failed(to: usize, id: RequestId, error: Error) -> Outgoing {
    Outgoing {
        to,
        reply: Reply::Failed { id, error },
    }
}
