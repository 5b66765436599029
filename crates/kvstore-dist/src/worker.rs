//! A worker of the parameter-server protocol: it turns a caller's init, push, pull, barrier and
//! set_optimizer into requests to the servers that hold each key's parts, and the servers'
//! replies into completions.
//!
//! Calls check their arguments and return a typed error before anything is sent (R59); a call
//! that fails changes nothing. Sending and waiting are the transport's business: every method
//! returns the requests to send ([`Effects::sends`]) and the operations that completed.

use crate::faults::{Fault, Faults};
use crate::layout::{Layout, Part};
use crate::message::{Payload, Reply, Request, RequestId};
use crate::parts;
use kvstore_spec::codec::Compression;
use kvstore_spec::command::ServerCommand;
use kvstore_spec::dist::init_signature;
use kvstore_spec::key::{self, KeyType};
use kvstore_spec::optimizer::{self, Optimizer, OptimizerUpdater, State};
use kvstore_spec::value::StorageType;
use kvstore_spec::value::Tensor;
use kvstore_spec::{sparse, transfer, DType, Error, Key, Result, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// An operation's id, unique per worker.
pub type OpId = u64;

/// How a worker is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerConfig {
    /// This worker's rank, in `0..workers`.
    pub rank: usize,
    /// The number of workers W.
    pub workers: usize,
    /// Where keys live.
    pub layout: Layout,
    /// Planted bugs (model checking only).
    pub faults: Faults,
}

/// A request and the server it goes to.
#[derive(Debug, Clone, PartialEq)]
pub struct Send {
    /// The server's index.
    pub server: usize,
    /// The request.
    pub request: Request,
}

/// What a completed operation gives back.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// init, push, barrier, set_optimizer.
    Done,
    /// A pull: one value per key, in the order asked, in each key's shape.
    Values(Vec<Value>),
    /// Saved optimizer states (R68).
    Bytes(Vec<u8>),
}

/// An operation that completed.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Which.
    pub op: OpId,
    /// How it ended.
    pub result: Result<Outcome>,
}

/// What a call or a reply makes the worker do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// Requests to send, in order (links are FIFO).
    pub sends: Vec<Send>,
    /// Operations that completed.
    pub completions: Vec<Completion>,
}

/// What the worker knows of an initialised key.
#[derive(Debug, Clone, PartialEq, Hash)]
struct KeyMeta {
    shape: Vec<usize>,
    dtype: DType,
    stype: StorageType,
    parts: Vec<Part>,
}

/// An operation waiting for replies.
#[derive(Debug, Clone, PartialEq)]
struct Progress {
    /// Replies still expected in this phase.
    remaining: usize,
    /// The first failure; the operation fails with it once every reply is in.
    error: Option<Error>,
    /// The phases still to send, each once the one before succeeded (init: its check, the
    /// stores, the barrier).
    phases: VecDeque<Vec<Send>>,
    /// What the operation gives back, gathered as replies arrive.
    expect: Expect,
}

/// What an operation gives back once done.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// Nothing: push, barrier, set_optimizer, load.
    Done,
    /// An init: the keys it registers, and the key type it fixes, once every worker agreed
    /// and the values are stored (a failed init leaves the worker as it was, R7).
    Init(BTreeMap<Key, KeyMeta>, Option<KeyType>),
    /// An init this worker refused: it fails with this error once the workers agreed (or with
    /// the disagreement).
    Fail(Error),
    /// A pull: per key asked, its parts' values as they arrive (possibly no key at all).
    Values(Vec<Pulling>),
    /// A save of optimizer states.
    States(Saving),
}

/// A save of optimizer states in progress (R68).
#[derive(Debug, Clone, PartialEq)]
struct Saving {
    dump_optimizer: bool,
    /// Per server: its optimizer and its parts' states.
    replies: Vec<Option<ServerStates>>,
}

/// What an init registers and stores: the keys' metadata, the key type, and (rank 0) each
/// part's value for its server.
type InitPlan = (
    BTreeMap<Key, KeyMeta>,
    Option<KeyType>,
    Vec<(usize, Key, Value)>,
);

/// One server's optimizer and its parts' states.
type ServerStates = (Optimizer, Vec<(Key, State)>);

/// One key of a pull.
#[derive(Debug, Clone, PartialEq, Hash)]
struct Pulling {
    key: Key,
    shape: Vec<usize>,
    /// The parts' values as they arrive.
    parts: Vec<Option<Value>>,
    /// Rows to pick here once the parts are assembled (a row_sparse_pull of a sliced key).
    pick: Option<Vec<i64>>,
}

impl Pulling {
    /// The key's value once every part arrived.
    fn finish(self) -> Result<Value> {
        let key = &self.key;
        let parts: Option<Vec<Value>> = self.parts.into_iter().collect();
        let parts = parts.ok_or_else(|| Error::Protocol {
            reason: format!("key {key}: a part never arrived"),
        })?;
        let whole = parts::assemble(key, &self.shape, parts)?;
        match self.pick {
            None => Ok(whole),
            Some(ids) => Ok(Value::RowSparse(sparse::retain(
                &whole,
                &ids,
                whole.dtype(),
            )?)),
        }
    }
}

/// A worker state machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    config: WorkerConfig,
    keys: BTreeMap<Key, KeyMeta>,
    compression: Option<Compression>,
    /// Int or string keys, fixed by the first call with keys (R8).
    key_type: Option<KeyType>,
    /// Error feedback per (key, part index), carried between pushes (R55).
    residuals: BTreeMap<(Key, usize), Vec<f32>>,
    next_request: RequestId,
    next_op: OpId,
    /// In-flight requests: (op, index of the pulled key, index of the part).
    inflight: BTreeMap<RequestId, (OpId, usize, usize)>,
    ops: BTreeMap<OpId, Progress>,
}

impl std::hash::Hash for Worker {
    /// Hashes everything equality compares (model checkers identify states by their hash).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.config.hash(state);
        self.keys.hash(state);
        self.compression.map(|c| format!("{c:?}")).hash(state);
        self.key_type.hash(state);
        for (slot, residual) in &self.residuals {
            slot.hash(state);
            residual.iter().for_each(|x| x.to_bits().hash(state));
        }
        self.next_request.hash(state);
        self.next_op.hash(state);
        self.inflight.hash(state);
        self.ops.hash(state);
    }
}

impl std::hash::Hash for Progress {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.remaining.hash(state);
        self.error.as_ref().map(ToString::to_string).hash(state);
        for send in self.phases.iter().flatten() {
            send.server.hash(state);
            format!("{:?}", send.request).hash(state);
        }
        match &self.expect {
            Expect::Done => 0.hash(state),
            Expect::Init(metas, key_type) => {
                metas.hash(state);
                key_type.hash(state);
            }
            Expect::Fail(error) => error.to_string().hash(state),
            Expect::Values(pulled) => pulled.hash(state),
            Expect::States(saving) => format!("{saving:?}").hash(state),
        }
    }
}

impl Worker {
    /// A worker that knows no key.
    pub fn new(config: WorkerConfig) -> Worker {
        Worker {
            config,
            keys: BTreeMap::new(),
            compression: None,
            key_type: None,
            residuals: BTreeMap::new(),
            next_request: 0,
            next_op: 0,
            inflight: BTreeMap::new(),
            ops: BTreeMap::new(),
        }
    }

    /// The worker's setup.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Whether some operation waits for replies: the failure detector's timer runs only then.
    pub fn is_waiting(&self) -> bool {
        !self.ops.is_empty()
    }

    /// Collective init (R49): every worker calls it with the same keys. Rank 0 stores its values
    /// and waits for every server to acknowledge; then all workers meet in a barrier, so no
    /// worker reads a key before it is stored.
    pub fn init(&mut self, pairs: &[(Key, Value)]) -> Result<(OpId, Effects)> {
        // The workers agree first (R49), even when this worker's own checks fail: a collective
        // call that one worker left would keep the others waiting until their timeout. Its own
        // error comes after the agreement, as the spec orders them.
        let op = self.next_op();
        let signature = init_signature(pairs);
        let plan = self.init_plan(pairs);
        let refused = plan.is_err();
        let check = self.request(op, 0, 0, 0, |id| Request::InitCheck {
            id,
            signature,
            refused,
        });
        let (metas, key_type, stores) = match plan {
            Ok(plan) => plan,
            Err(error) => return Ok(self.start(op, vec![vec![check]], Expect::Fail(error))),
        };
        let mut sends = Vec::new();
        for (server, key, value) in stores {
            sends.push(self.request(op, 0, 0, server, |id| Request::Init { id, key, value }));
        }
        let barrier = self.request(op, 0, 0, 0, |id| Request::Barrier { id });
        let phases = vec![vec![check], sends, vec![barrier]];
        Ok(self.start(op, phases, Expect::Init(metas, key_type)))
    }

    /// An init's local checks (R8, R13) and what it registers and stores: the keys' metadata,
    /// the key type, and (rank 0) each part's value for its server.
    fn init_plan(&self, pairs: &[(Key, Value)]) -> Result<InitPlan> {
        let key_type = self.key_type_with(pairs.iter().map(|(k, _)| k))?;
        let mut metas = BTreeMap::new();
        for (key, value) in pairs {
            if self.keys.contains_key(key) || metas.contains_key(key) {
                return Err(Error::DuplicateInit { key: key.clone() });
            }
            let numel = value.shape().iter().product::<usize>();
            let dense = value.stype() == StorageType::Dense;
            let meta = KeyMeta {
                shape: value.shape().to_vec(),
                dtype: value.dtype(),
                stype: value.stype(),
                parts: self.config.layout.parts(key, numel, dense),
            };
            metas.insert(key.clone(), meta);
        }
        let mut stores = Vec::new();
        if self.config.rank == 0 {
            for (key, value) in pairs {
                let parts = metas.get(key).map(|m| m.parts.clone()).unwrap_or_default();
                let values = parts::split(key, std::borrow::Cow::Borrowed(value), &parts)?;
                for (part, value) in parts.iter().zip(values) {
                    stores.push((part.server, key.clone(), value));
                }
            }
        }
        Ok((metas, key_type, stores))
    }

    /// Pushes (R51, R54, R55): per key (key order), the worker's own values are summed in the
    /// key's dtype, quantised when compression is on, and sent part by part.
    pub fn push(&mut self, pairs: &[(Key, Value)]) -> Result<(OpId, Effects)> {
        let key_type = self.key_type_with(pairs.iter().map(|(k, _)| k))?;
        let mut groups: BTreeMap<&Key, Vec<&Value>> = BTreeMap::new();
        for (key, value) in pairs {
            groups.entry(key).or_default().push(value);
        }
        // Every argument is checked before any residual moves (R59), in the spec's order: key
        // by key, every value's shape, then whether compression takes each value.
        for (key, values) in &groups {
            let meta = self.meta(key)?;
            for value in values {
                transfer::check_shape(key, &meta.shape, value)?;
            }
            if self.compression.is_some() {
                for value in values {
                    transfer::check_compressible(key, meta.dtype, value)?;
                }
            }
            // A sliced key's parts are flat element ranges: a row_sparse value cannot be cut
            // into them and keep its meaning (absent rows, lazy optimizer updates), so it is
            // refused rather than summed differently from the spec (docs/distributed.md).
            if meta.parts.len() > 1 && values.iter().any(|v| v.stype() == StorageType::RowSparse) {
                return Err(Error::UnsupportedOperation {
                    op: format!(
                        "a row_sparse push into key {key}, which is sliced across {} servers",
                        meta.parts.len()
                    ),
                    kind: "dist".into(),
                });
            }
        }
        let mut residuals = self.residuals.clone();
        let mut payloads = Vec::new();
        for (key, values) in &groups {
            let meta = self.meta(key)?;
            let merged = parts::sum(key, values, meta.dtype)?;
            let plains = parts::split(key, merged, &meta.parts)?;
            for (index, (part, plain)) in meta.parts.iter().zip(plains).enumerate() {
                let payload = match self.compression {
                    None => Payload::Plain(plain),
                    Some(compression) => {
                        let grad = plain.to_f32();
                        let slot = ((*key).clone(), index);
                        let residual = residuals
                            .entry(slot)
                            .or_insert_with(|| vec![0.0; grad.len()]);
                        let words = compression.quantize(&grad, residual)?;
                        if self.config.faults.has(Fault::ResidualDropped) {
                            residual.iter_mut().for_each(|r| *r = 0.0);
                        }
                        Payload::Quantized {
                            compression,
                            words,
                            len: grad.len(),
                        }
                    }
                };
                payloads.push((part.server, (*key).clone(), payload));
            }
        }
        self.residuals = residuals;
        self.key_type = key_type;
        let op = self.next_op();
        let sends = payloads
            .into_iter()
            .map(|(server, key, payload)| {
                self.request(op, 0, 0, server, |id| Request::Push { id, key, payload })
            })
            .collect();
        Ok(self.start(op, vec![sends], Expect::Done))
    }

    /// Pulls (R52): each key's value, assembled from its parts, in the key's shape.
    pub fn pull(&mut self, keys: &[Key]) -> Result<(OpId, Effects)> {
        let reads = keys.iter().map(|key| (key.clone(), None)).collect();
        self.read(reads)
    }

    /// Pulls some rows of each key (R30-R33, R52): `row_ids` holds one list per key, or one
    /// list for every key. Each key comes back as a row_sparse value holding exactly the rows
    /// asked for, sorted and distinct. The ids are checked before anything is sent (R59).
    pub fn row_sparse_pull(
        &mut self,
        keys: &[Key],
        row_ids: &[Vec<i64>],
    ) -> Result<(OpId, Effects)> {
        self.key_type_with(keys)?;
        if row_ids.len() != 1 && row_ids.len() != keys.len() {
            return Err(Error::RowIdsCountMismatch {
                row_ids: row_ids.len(),
                outputs: keys.len(),
            });
        }
        let mut reads = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let ids = match row_ids {
                [only] => only,
                many => many.get(i).map_or(&[][..], Vec::as_slice),
            };
            let rows = self.meta(key)?.shape.first().copied().unwrap_or(0);
            reads.push((
                key.clone(),
                Some(sparse::normalize_row_ids(key, ids, rows)?),
            ));
        }
        self.read(reads)
    }

    /// One pull request per part of each key. A key held whole by one server (in its shape)
    /// has its rows picked there, so only those rows travel. A sliced key's parts are flat
    /// element ranges that cut across rows, so they come whole and the rows are picked here.
    fn read(&mut self, reads: Vec<(Key, Option<Vec<i64>>)>) -> Result<(OpId, Effects)> {
        let key_type = self.key_type_with(reads.iter().map(|(k, _)| k))?;
        let mut plan = Vec::new();
        for (key, rows) in reads {
            let meta = self.meta(&key)?;
            let remote = meta.parts.len() == 1;
            plan.push((key, rows, meta.shape.clone(), meta.parts.clone(), remote));
        }
        self.key_type = key_type;
        let op = self.next_op();
        let mut sends = Vec::new();
        let mut pulled = Vec::new();
        for (index, (key, rows, shape, key_parts, remote)) in plan.into_iter().enumerate() {
            for (part_index, part) in key_parts.iter().enumerate() {
                let (key, rows) = (key.clone(), rows.clone().filter(|_| remote));
                sends.push(
                    self.request(op, index, part_index, part.server, |id| Request::Pull {
                        id,
                        key,
                        rows,
                    }),
                );
            }
            pulled.push(Pulling {
                key,
                shape,
                parts: vec![None; key_parts.len()],
                pick: rows.filter(|_| !remote),
            });
        }
        Ok(self.start(op, vec![sends], Expect::Values(pulled)))
    }

    /// The global barrier across workers (server 0 coordinates it).
    pub fn barrier(&mut self) -> (OpId, Effects) {
        let op = self.next_op();
        let send = self.request(op, 0, 0, 0, |id| Request::Barrier { id });
        self.start(op, vec![vec![send]], Expect::Done)
    }

    /// Installs a fresh optimizer on every server (R57).
    pub fn set_optimizer(&mut self, optimizer: &Optimizer) -> Result<(OpId, Effects)> {
        optimizer.validate()?;
        let op = self.next_op();
        let sends = (0..self.config.layout.servers())
            .map(|server| {
                let optimizer = optimizer.clone();
                self.request(op, 0, 0, server, |id| Request::SetOptimizer {
                    id,
                    optimizer,
                })
            })
            .collect();
        Ok(self.start(op, vec![sends], Expect::Done))
    }

    /// A server command (R67): head 0 is `set_optimizer` with the optimizer as JSON; head 4 is
    /// checked and completes at once (servers keep no compression setting); every other head
    /// is refused before anything is sent. `kind` names the store in errors.
    pub fn send_command(&mut self, head: i32, body: &str, kind: &str) -> Result<(OpId, Effects)> {
        match ServerCommand::parse(head, body, kind)? {
            ServerCommand::SetOptimizer(optimizer) => self.set_optimizer(&optimizer),
            ServerCommand::GradientCompression(_) => {
                let op = self.next_op();
                Ok(self.start(op, Vec::new(), Expect::Done))
            }
        }
    }

    /// Saves the servers' optimizer states (R68): every server sends the states of its parts;
    /// the worker joins each sliced key's parts, so the bytes are those one server holding
    /// every key whole would save (R47's format).
    pub fn save_optimizer_states(&mut self, dump_optimizer: bool) -> (OpId, Effects) {
        let op = self.next_op();
        let servers = self.config.layout.servers();
        let sends = (0..servers)
            .map(|server| self.request(op, server, 0, server, |id| Request::SaveStates { id }))
            .collect();
        let saving = Saving {
            dump_optimizer,
            replies: vec![None; servers],
        };
        self.start(op, vec![sends], Expect::States(saving))
    }

    /// Loads optimizer states (R68): the bytes are checked here (every state must belong to a
    /// key this worker knows and have its shape), then each server gets its parts' states.
    pub fn load_optimizer_states(&mut self, bytes: &[u8]) -> Result<(OpId, Effects)> {
        let optimizer::Saved { states, optimizer } = optimizer::read_saved(bytes)?;
        let mut per_server: Vec<Vec<(Key, State)>> = vec![Vec::new(); self.config.layout.servers()];
        for (key, state) in &states {
            let meta = self.keys.get(key).ok_or_else(|| Error::InvalidState {
                reason: format!("a state for key {key}, which is not initialised"),
            })?;
            let shape_only = Value::Dense(Tensor::zeros(meta.shape.clone(), meta.dtype)?);
            kvstore_spec::dist::check_state_fits(key, state, &shape_only)?;
            for part in &meta.parts {
                // A server holds a key whole in its shape, or a sliced key's flat part.
                let slots = if meta.parts.len() == 1 {
                    state.slots.clone()
                } else {
                    state
                        .slots
                        .iter()
                        .map(|t| parts::slice(key, &Value::Dense(t.clone()), part.range.clone()))
                        .filter_map(|part| match part {
                            Ok(Value::Dense(flat)) => Some(Ok(flat)),
                            Ok(Value::RowSparse(_)) => None,
                            Err(e) => Some(Err(e)),
                        })
                        .collect::<Result<Vec<Tensor>>>()?
                };
                let part_state = State {
                    updates: state.updates,
                    slots,
                };
                if let Some(list) = per_server.get_mut(part.server) {
                    list.push((key.clone(), part_state));
                }
            }
        }
        let op = self.next_op();
        let sends = per_server
            .into_iter()
            .enumerate()
            .map(|(server, states)| {
                let optimizer = optimizer.clone();
                self.request(op, 0, 0, server, |id| Request::LoadStates {
                    id,
                    optimizer,
                    states,
                })
            })
            .collect();
        Ok(self.start(op, vec![sends], Expect::Done))
    }

    /// The saved bytes from every server's reply: each key's parts joined in element order; a
    /// part without a state yet, beside parts with one, is zeros (what its first update would
    /// create).
    fn assemble_states(&self, saving: Saving) -> Result<Vec<u8>> {
        let missing = || Error::Protocol {
            reason: "a server's states never arrived".into(),
        };
        let replies: Vec<(Optimizer, BTreeMap<Key, State>)> = saving
            .replies
            .into_iter()
            .map(|r| {
                r.map(|(o, states)| (o, states.into_iter().collect()))
                    .ok_or_else(missing)
            })
            .collect::<Result<_>>()?;
        let optimizer = replies
            .first()
            .map(|(o, _)| o.clone())
            .ok_or_else(missing)?;
        let mut states = BTreeMap::new();
        for (key, meta) in &self.keys {
            let found: Vec<Option<&State>> = meta
                .parts
                .iter()
                .map(|part| replies.get(part.server).and_then(|(_, s)| s.get(key)))
                .collect();
            if found.iter().all(Option::is_none) {
                continue;
            }
            // Parts are updated together, so their counts agree; one without a state yet
            // (possible only before any update reached it) counts as zeros.
            let updates = found.iter().flatten().map(|s| s.updates).max().unwrap_or(0);
            let slot_count = found
                .iter()
                .flatten()
                .map(|s| s.slots.len())
                .max()
                .unwrap_or(0);
            let mut slots = Vec::with_capacity(slot_count);
            for j in 0..slot_count {
                let tensors: Vec<Option<&Tensor>> = found
                    .iter()
                    .map(|s| s.and_then(|s| s.slots.get(j)))
                    .collect();
                let Some(dtype) = tensors.iter().flatten().map(|t| t.dtype()).next() else {
                    continue;
                };
                let values = meta
                    .parts
                    .iter()
                    .zip(&tensors)
                    .map(|(part, t)| match t {
                        Some(t) => Ok(Value::Dense((*t).clone())),
                        None => Ok(Value::Dense(Tensor::zeros([part.range.len()], dtype)?)),
                    })
                    .collect::<Result<Vec<Value>>>()?;
                match parts::assemble(key, &meta.shape, values)? {
                    Value::Dense(whole) => slots.push(whole),
                    Value::RowSparse(_) => {
                        return Err(Error::Protocol {
                            reason: format!("key {key}: a row_sparse optimizer state"),
                        })
                    }
                }
            }
            states.insert(key.clone(), State { updates, slots });
        }
        OptimizerUpdater::with_states(optimizer, states)?.save(saving.dump_optimizer)
    }

    /// Turns compression on for later pushes; new parameters reset the residuals (decision 9).
    pub fn set_gradient_compression(&mut self, compression: Compression) {
        if self.compression != Some(compression) {
            self.residuals.clear();
        }
        self.compression = Some(compression);
    }

    /// A server's reply. A reply to no request in flight is a protocol error and changes
    /// nothing (R65).
    pub fn handle(&mut self, server: usize, reply: Reply) -> Result<Effects> {
        let id = reply.id();
        let Some(&(op, key_index, part_index)) = self.inflight.get(&id) else {
            return Err(Error::Protocol {
                reason: format!("server {server} answered request {id}, which is not in flight"),
            });
        };
        let Some(progress) = self.ops.get_mut(&op) else {
            return Err(Error::Protocol {
                reason: format!("request {id} belongs to no operation"),
            });
        };
        match reply {
            Reply::Done { .. } => {}
            Reply::Value { value, .. } => {
                let slot = match &mut progress.expect {
                    Expect::Values(pulled) => pulled
                        .get_mut(key_index)
                        .and_then(|pulling| pulling.parts.get_mut(part_index)),
                    _ => None,
                };
                match slot {
                    // The only holder once a transport decoded it: moved, not copied.
                    Some(slot) => {
                        *slot = Some(Arc::try_unwrap(value).unwrap_or_else(|v| (*v).clone()))
                    }
                    None => {
                        return Err(Error::Protocol {
                            reason: format!(
                            "server {server} sent a value for request {id}, which pulls nothing"
                        ),
                        })
                    }
                }
            }
            Reply::States {
                optimizer, states, ..
            } => {
                let slot = match &mut progress.expect {
                    Expect::States(saving) => saving.replies.get_mut(key_index),
                    _ => None,
                };
                match slot {
                    Some(slot) => *slot = Some((optimizer, states)),
                    None => {
                        return Err(Error::Protocol {
                            reason: format!(
                                "server {server} sent states for request {id}, which saves none"
                            ),
                        })
                    }
                }
            }
            Reply::Failed { error, .. } => {
                progress.error.get_or_insert(error);
            }
        }
        self.inflight.remove(&id);
        progress.remaining = progress.remaining.saturating_sub(1);
        if progress.remaining > 0 {
            return Ok(Effects::default());
        }
        Ok(self.finish_phase(op))
    }

    /// The failure detector fired (R64): every operation in flight fails.
    pub fn expire(&mut self) -> Effects {
        let completions = std::mem::take(&mut self.ops)
            .into_keys()
            .map(|op| Completion {
                op,
                result: Err(Error::PeerFailed {
                    peer: "servers".into(),
                    reason: format!("worker {} waited too long for replies", self.config.rank),
                }),
            })
            .collect();
        self.inflight.clear();
        Effects {
            sends: Vec::new(),
            completions,
        }
    }

    /// The key type after a call with `keys` (R8): fixed by the first call that carries keys;
    /// later calls must match. The caller stores it once the call cannot fail any more.
    fn key_type_with<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a Key>,
    ) -> Result<Option<KeyType>> {
        let mut key_type = self.key_type;
        key::fix_key_type(&mut key_type, keys)?;
        Ok(key_type)
    }

    fn meta(&self, key: &Key) -> Result<&KeyMeta> {
        self.keys
            .get(key)
            .ok_or_else(|| Error::NotInitialized { key: key.clone() })
    }

    fn next_op(&mut self) -> OpId {
        let op = self.next_op;
        self.next_op += 1;
        op
    }

    /// A request with a fresh id, recorded as in flight for `op`.
    fn request(
        &mut self,
        op: OpId,
        key_index: usize,
        part_index: usize,
        server: usize,
        make: impl FnOnce(RequestId) -> Request,
    ) -> Send {
        let id = self.next_request;
        self.next_request += 1;
        self.inflight.insert(id, (op, key_index, part_index));
        Send {
            server,
            request: make(id),
        }
    }

    /// Registers `op` with its phases and sends the first that has requests; an op with
    /// nothing to wait for completes at once.
    fn start(&mut self, op: OpId, phases: Vec<Vec<Send>>, expect: Expect) -> (OpId, Effects) {
        let progress = Progress {
            remaining: 0,
            error: None,
            phases: phases.into(),
            expect,
        };
        self.ops.insert(op, progress);
        (op, self.finish_phase(op))
    }

    /// Every reply of `op`'s phase is in: send the next phase, or complete the op.
    fn finish_phase(&mut self, op: OpId) -> Effects {
        let Some(mut progress) = self.ops.remove(&op) else {
            return Effects::default();
        };
        if progress.error.is_none() {
            while let Some(sends) = progress.phases.pop_front() {
                if sends.is_empty() {
                    continue;
                }
                progress.remaining = sends.len();
                self.ops.insert(op, progress);
                return Effects {
                    sends,
                    completions: Vec::new(),
                };
            }
        }
        // Later phases' requests were never sent.
        for send in progress.phases.iter().flatten() {
            self.inflight.remove(&send.request.id());
        }
        let result = match (progress.error, progress.expect) {
            (Some(error), _) => Err(error),
            (None, Expect::Done) => Ok(Outcome::Done),
            (None, Expect::Fail(error)) => Err(error),
            (None, Expect::Init(metas, key_type)) => {
                self.keys.extend(metas);
                self.key_type = key_type;
                Ok(Outcome::Done)
            }
            (None, Expect::Values(pulled)) => pulled
                .into_iter()
                .map(Pulling::finish)
                .collect::<Result<Vec<Value>>>()
                .map(Outcome::Values),
            (None, Expect::States(saving)) => self.assemble_states(saving).map(Outcome::Bytes),
        };
        Effects {
            sends: Vec::new(),
            completions: vec![Completion { op, result }],
        }
    }
}
