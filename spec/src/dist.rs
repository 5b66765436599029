//! The distributed store (`dist_sync`, `dist_async`, any name with `dist`): W workers and one
//! logical server, modelled sequentially (SPEC R48-R58; semantics §2.3, §6.4, §6.5, §7.2).
//!
//! Each method is one worker's call, or for `init` and `broadcast` one collective call carrying
//! every worker's arguments, and takes effect atomically. Where a real worker would wait (a pull
//! of a key whose round it has pushed into is still open) the model returns `Ok(None)` and changes
//! nothing; the caller (a test, a model checker) retries later. Nothing ever hangs: rounds that
//! cannot complete are reported by [`DistStore::check_quiescent`] (R53).
//!
//! Like [`crate::store::LocalStore`], every call runs as a transaction on a copy of the store that
//! is kept only when the whole call succeeds (R7: a failing call changes nothing).

use crate::codec::{Compression, Residual};
use crate::command::ServerCommand;
use crate::error::{Error, Result};
use crate::key::{self, Key, KeyType};
use crate::kind::{Kind, StoreClass};
use crate::optimizer::{Optimizer, OptimizerUpdater, Saved};
use crate::reduce;
use crate::transaction;
use crate::transfer;
use crate::updater::{Updater, UpdaterSlot};
use crate::value::{DType, Device, StorageType, Value};
use std::collections::{BTreeMap, VecDeque};

/// What the server holds for one key.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyState {
    /// Rank 0's init value, then the result of each completed round (sync) or applied push (async).
    pub value: Value,
    /// Per worker (index = rank), the contributions waiting for a round, oldest first (R51).
    /// Always empty in dist_async, where a push is applied on arrival (R54).
    pub queues: Vec<VecDeque<Value>>,
    /// Completed rounds (sync) or applied pushes (async).
    pub rounds: u64,
}

impl KeyState {
    /// Pops the oldest contribution of every worker, in rank order, once every worker has one
    /// (R51: a round takes exactly one contribution per worker).
    fn pop_full_round(&mut self) -> Option<Vec<Value>> {
        if self.queues.iter().any(VecDeque::is_empty) {
            return None;
        }
        Some(
            self.queues
                .iter_mut()
                .filter_map(VecDeque::pop_front)
                .collect(),
        )
    }

    /// The ranks the open round still waits for, when a round is open (R53).
    fn open_round_missing(&self) -> Option<Vec<usize>> {
        if self.queues.iter().all(VecDeque::is_empty) {
            return None;
        }
        Some(
            self.queues
                .iter()
                .enumerate()
                .filter(|(_, q)| q.is_empty())
                .map(|(rank, _)| rank)
                .collect(),
        )
    }
}

/// A compression residual belongs to a worker and a key (R55): each worker quantises its own
/// merged gradient, so each keeps its own error feedback.
pub type ResidualSlot = (usize, Key);

/// The executable specification of a distributed store.
///
/// ```
/// use kvstore_spec::{dist::DistStore, kind::Kind, Key, Tensor, Value};
/// let mut kv = DistStore::new(Kind::parse("dist_sync")?, 2)?;
/// let full = |n: f32| Value::Dense(Tensor::new([2], vec![n, n]).unwrap());
/// kv.init(&[vec![(Key::Int(3), full(0.0))], vec![(Key::Int(3), full(0.0))]])?;
/// kv.push(0, &[(Key::Int(3), full(1.0))])?;
/// // Worker 0 reads its own round: its pull waits until worker 1 has pushed too.
/// assert_eq!(kv.pull(0, &[(Key::Int(3), full(0.0))], true)?, None);
/// kv.push(1, &[(Key::Int(3), full(2.0))])?;
/// let out = kv.pull(0, &[(Key::Int(3), full(0.0))], true)?.unwrap();
/// assert_eq!(out[0].to_f32(), vec![3.0, 3.0]);
/// kv.check_quiescent()?;
/// # Ok::<(), kvstore_spec::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DistStore {
    kind: Kind,
    workers: usize,
    key_type: Option<KeyType>,
    keys: BTreeMap<Key, KeyState>,
    /// The server-side updater (R54, R57); workers keep none.
    updater: Option<UpdaterSlot>,
    compression: Option<Compression>,
    residuals: BTreeMap<ResidualSlot, Residual>,
}

/// Everything a caller can observe of a distributed store, for equality checks in tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Observable {
    /// The fixed key type.
    pub key_type: Option<KeyType>,
    /// Every key's server state: value, queued contributions, round counter.
    pub keys: BTreeMap<Key, KeyState>,
    /// Compression parameters.
    pub compression: Option<Compression>,
    /// Compression residuals, per (worker, key).
    pub residuals: BTreeMap<ResidualSlot, Residual>,
    /// The optimizer and its states, when `set_optimizer` installed one.
    pub optimizer: Option<OptimizerUpdater>,
    /// Whether any updater is set.
    pub has_updater: bool,
}

impl DistStore {
    /// An empty distributed store of `workers` workers (R48).
    pub fn new(kind: Kind, workers: usize) -> Result<DistStore> {
        if kind.class() != StoreClass::Dist {
            return Err(Error::UnsupportedKind {
                kind: kind.name().into(),
                reason: "a single-process kind needs the local store".into(),
            });
        }
        if workers == 0 {
            return Err(Error::UnsupportedKind {
                kind: kind.name().into(),
                reason: "a distributed store needs at least one worker".into(),
            });
        }
        Ok(DistStore {
            kind,
            workers,
            key_type: None,
            keys: BTreeMap::new(),
            updater: None,
            compression: None,
            residuals: BTreeMap::new(),
        })
    }

    /// The store kind.
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// The number of workers W; ranks are `0..W` (R48).
    pub fn num_workers(&self) -> usize {
        self.workers
    }

    /// The value the server stores for a key.
    pub fn value(&self, key: &Key) -> Option<&Value> {
        self.keys.get(key).map(|s| &s.value)
    }

    /// Completed rounds of a key (sync) or applied pushes (async); 0 for unknown keys.
    pub fn completed_rounds(&self, key: &Key) -> u64 {
        self.keys.get(key).map_or(0, |s| s.rounds)
    }

    /// Worker `rank`'s pushes of `key` that wait for a round (R51); 0 for unknown keys or ranks.
    pub fn pending_pushes(&self, rank: usize, key: &Key) -> usize {
        self.keys
            .get(key)
            .and_then(|s| s.queues.get(rank))
            .map_or(0, VecDeque::len)
    }

    /// What a caller can observe, for bit-exact comparisons.
    pub fn observable(&self) -> Observable {
        Observable {
            key_type: self.key_type,
            keys: self.keys.clone(),
            compression: self.compression,
            residuals: self.residuals.clone(),
            optimizer: match &self.updater {
                Some(UpdaterSlot::Optimizer(o)) => Some(o.clone()),
                _ => None,
            },
            has_updater: self.updater.is_some(),
        }
    }

    /// R53: the first key (in key order) with an open round, as `IncompleteRound` naming the
    /// round (numbered from 1) and the workers it waits for. Uneven push counts end up here
    /// instead of hanging.
    pub fn check_quiescent(&self) -> Result<()> {
        for (key, state) in &self.keys {
            if let Some(missing) = state.open_round_missing() {
                return Err(Error::IncompleteRound {
                    key: key.clone(),
                    round: state.rounds.saturating_add(1),
                    missing,
                });
            }
        }
        Ok(())
    }

    /// Runs `op` on a copy and keeps the copy only if `op` succeeds (R7).
    fn transact<T>(&mut self, op: impl FnOnce(&mut DistStore) -> Result<T>) -> Result<T> {
        transaction::transact(self, op)
    }

    /// Runs a read `op` on a copy; an invalid call fails whether or not it would block (a worker
    /// checks its arguments before it waits). A valid call whose outputs name a key that `rank`
    /// has pushed into an open round is blocked (R52): `Ok(None)`, nothing kept.
    fn transact_read<T>(
        &mut self,
        rank: usize,
        outs: &[(Key, Value)],
        op: impl FnOnce(&mut DistStore) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut next = self.clone();
        let out = op(&mut next)?;
        if self.blocked(rank, outs) {
            return Ok(None);
        }
        *self = next;
        Ok(Some(out))
    }

    /// R52 "read your own round": a pull waits while this worker has a queued push of a key it reads.
    fn blocked(&self, rank: usize, outs: &[(Key, Value)]) -> bool {
        outs.iter()
            .any(|(key, _)| self.pending_pushes(rank, key) > 0)
    }

    fn check_rank(&self, rank: usize) -> Result<()> {
        if rank >= self.workers {
            return Err(Error::UnknownWorker {
                rank,
                workers: self.workers,
            });
        }
        Ok(())
    }

    fn unsupported(&self, op: &'static str) -> Error {
        Error::UnsupportedOperation {
            op: op.into(),
            kind: self.kind.name().into(),
        }
    }

    /// Fixes the key type at the first call with keys; later calls must match (R8, R9).
    fn fix_key_type<'a>(&mut self, keys: impl IntoIterator<Item = &'a Key>) -> Result<()> {
        key::fix_key_type(&mut self.key_type, keys)
    }

    /// A key's server state; never inited is `NotInitialized`, never "init by push" (R50).
    fn state(&self, key: &Key) -> Result<&KeyState> {
        self.keys
            .get(key)
            .ok_or_else(|| Error::NotInitialized { key: key.clone() })
    }

    fn state_mut(&mut self, key: &Key) -> Result<&mut KeyState> {
        self.keys
            .get_mut(key)
            .ok_or_else(|| Error::NotInitialized { key: key.clone() })
    }

    /// Collective init (R49): every worker gives rank 0's keys in rank 0's order, with values of
    /// the same shape, dtype and storage type; rank 0's values are stored. A key already stored,
    /// or twice in the call, is `DuplicateInit` (R13), never a hang.
    pub fn init(&mut self, per_worker: &[Vec<(Key, Value)>]) -> Result<()> {
        self.transact(|s| s.init_unchecked(per_worker))
    }

    fn init_unchecked(&mut self, per_worker: &[Vec<(Key, Value)>]) -> Result<()> {
        let root = self.check_collective(per_worker)?;
        self.fix_key_type(root.iter().map(|(k, _)| k))?;
        for (key, value) in root {
            if self.keys.contains_key(key) {
                return Err(Error::DuplicateInit { key: key.clone() });
            }
            let state = KeyState {
                value: value.clone().on(Device::Cpu(0)),
                queues: vec![VecDeque::new(); self.workers],
                rounds: 0,
            };
            self.keys.insert(key.clone(), state);
        }
        Ok(())
    }

    /// Checks that every worker agrees with rank 0 and returns rank 0's pairs (R49, R58: string
    /// keys are compared by name, so workers that list names in another order disagree).
    fn check_collective<'a>(
        &self,
        per_worker: &'a [Vec<(Key, Value)>],
    ) -> Result<&'a [(Key, Value)]> {
        let mismatch = |reason: String| Error::CollectiveMismatch {
            op: "init".into(),
            reason,
        };
        if per_worker.len() != self.workers {
            return Err(mismatch(format!(
                "{} workers took part, the store has {}",
                per_worker.len(),
                self.workers
            )));
        }
        let Some(root) = per_worker.first() else {
            return Err(mismatch("no worker took part".into()));
        };
        let signatures: Vec<InitSignature> = per_worker
            .iter()
            .map(|pairs| init_signature(pairs))
            .collect();
        check_init_signatures(&signatures)?;
        Ok(root)
    }

    /// Worker `rank` pushes: per key (key order; string keys by name, R58) its values are merged
    /// and sent as one contribution (R18, R55); dist_sync queues it for a round (R51),
    /// dist_async applies it at once (R54).
    pub fn push(&mut self, rank: usize, pairs: &[(Key, Value)]) -> Result<()> {
        self.check_rank(rank)?;
        self.transact(|s| s.push_unchecked(rank, pairs))
    }

    fn push_unchecked(&mut self, rank: usize, pairs: &[(Key, Value)]) -> Result<()> {
        self.fix_key_type(pairs.iter().map(|(k, _)| k))?;
        let mut groups: BTreeMap<&Key, Vec<Value>> = BTreeMap::new();
        for (key, value) in pairs {
            groups.entry(key).or_default().push(value.clone());
        }
        for (key, values) in groups {
            let contribution = self.contribution(rank, key, &values)?;
            if self.kind.is_sync() {
                self.enqueue(rank, key, contribution)?;
            } else {
                self.apply_on_arrival(key, contribution)?;
            }
        }
        Ok(())
    }

    /// What worker `rank` sends for `key`: its own values summed uncompressed in the key's dtype
    /// (R17), then, with compression, quantised with the (rank, key) residual; the server keeps
    /// the decoded value (R55). The server receives it into its own (cpu) memory.
    fn contribution(&mut self, rank: usize, key: &Key, values: &[Value]) -> Result<Value> {
        let stored = &self.state(key)?.value;
        let (shape, dtype) = (stored.shape().to_vec(), stored.dtype());
        for value in values {
            transfer::check_shape(key, &shape, value)?;
        }
        let merged = reduce::sum(values, dtype)?
            .ok_or_else(|| Error::EmptyValueList { key: key.clone() })?;
        let sent = match self.compression {
            None => merged,
            Some(c) => {
                // The merge would hide a row_sparse or non-f32 value; check each one (R43, §3.7).
                for value in values {
                    check_compressible(key, dtype, value)?;
                }
                let residual = self.residuals.entry((rank, key.clone())).or_default();
                transfer::compress(c, key, dtype, &merged, &mut residual.0)?
            }
        };
        Ok(sent.on(Device::Cpu(0)))
    }

    /// R51: queues the contribution behind the worker's earlier ones, then completes every round
    /// that has one contribution from each worker, summing them in rank order (rank 0 first).
    fn enqueue(&mut self, rank: usize, key: &Key, contribution: Value) -> Result<()> {
        let workers = self.workers;
        let state = self.state_mut(key)?;
        let dtype = state.value.dtype();
        let queue = state
            .queues
            .get_mut(rank)
            .ok_or(Error::UnknownWorker { rank, workers })?;
        queue.push_back(contribution);
        while let Some(contributions) = self.state_mut(key)?.pop_full_round() {
            let sum = reduce::sum(&contributions, dtype)?
                .ok_or_else(|| Error::EmptyValueList { key: key.clone() })?;
            self.apply(key, sum)?;
        }
        Ok(())
    }

    /// R54: dist_async applies each contribution on arrival, and only through an updater.
    fn apply_on_arrival(&mut self, key: &Key, contribution: Value) -> Result<()> {
        if self.updater.is_none() {
            return Err(Error::UpdaterRequired {
                key: key.clone(),
                kind: self.kind.name().into(),
            });
        }
        self.apply(key, contribution)
    }

    /// Replaces the stored value (keeping the update's storage type, R19, R56) or runs the
    /// updater on it (R21, R22), and counts the round.
    fn apply(&mut self, key: &Key, update: Value) -> Result<()> {
        let stored = self.state(key)?.value.clone();
        let next = match &mut self.updater {
            None => update.on(stored.device()),
            Some(slot) => slot.apply(key, &update, &stored)?,
        };
        let state = self.state_mut(key)?;
        state.value = next;
        state.rounds = state.rounds.saturating_add(1);
        Ok(())
    }

    /// Worker `rank` pulls: each output gets the value of the key's last completed round (R25-R28,
    /// R52). `None` when the pull waits for a round this worker pushed into; nothing changes then.
    /// `ignore_sparse=false` is refused (R57), so row_sparse outputs keep their content.
    pub fn pull(
        &mut self,
        rank: usize,
        outs: &[(Key, Value)],
        ignore_sparse: bool,
    ) -> Result<Option<Vec<Value>>> {
        self.check_rank(rank)?;
        if !ignore_sparse {
            return Err(self.unsupported("pull with ignore_sparse=false"));
        }
        self.transact_read(rank, outs, |s| s.pull_unchecked(outs))
    }

    fn pull_unchecked(&mut self, outs: &[(Key, Value)]) -> Result<Vec<Value>> {
        self.fix_key_type(outs.iter().map(|(k, _)| k))?;
        outs.iter()
            .map(|(key, out)| transfer::pull_output(key, &self.state(key)?.value, out, true))
            .collect()
    }

    /// Worker `rank` fills row_sparse outputs with the requested rows, with the local store's
    /// row-id rules (R30-R33) and the pull's blocking rule (R52).
    pub fn row_sparse_pull(
        &mut self,
        rank: usize,
        outs: &[(Key, Value)],
        row_ids: &[Vec<i64>],
    ) -> Result<Option<Vec<Value>>> {
        self.check_rank(rank)?;
        self.transact_read(rank, outs, |s| s.row_sparse_pull_unchecked(outs, row_ids))
    }

    fn row_sparse_pull_unchecked(
        &mut self,
        outs: &[(Key, Value)],
        row_ids: &[Vec<i64>],
    ) -> Result<Vec<Value>> {
        self.fix_key_type(outs.iter().map(|(k, _)| k))?;
        if row_ids.len() != 1 && row_ids.len() != outs.len() {
            return Err(Error::RowIdsCountMismatch {
                row_ids: row_ids.len(),
                outputs: outs.len(),
            });
        }
        // One list serves every output; otherwise output i takes list i (R33).
        let ids_for = |i: usize| match row_ids {
            [only] => Some(only),
            many => many.get(i),
        };
        outs.iter()
            .enumerate()
            .map(|(i, (key, out))| {
                let ids = ids_for(i).map_or(&[][..], |v| v);
                transfer::row_sparse_output(key, &self.state(key)?.value, out, ids)
            })
            .collect()
    }

    /// `push` then `pull` by worker `rank`, as one call (R34). The push is kept whenever the call
    /// is valid; the pull part is `None` while it waits for the round (R52), and the caller then
    /// retries with [`DistStore::pull`].
    pub fn pushpull(
        &mut self,
        rank: usize,
        pairs: &[(Key, Value)],
        outs: &[(Key, Value)],
    ) -> Result<Option<Vec<Value>>> {
        self.check_rank(rank)?;
        self.transact(|s| {
            s.push_unchecked(rank, pairs)?;
            let filled = s.pull_unchecked(outs)?;
            Ok((!s.blocked(rank, outs)).then_some(filled))
        })
    }

    /// Collective `init`, then worker `rank`'s pull into `outs`, as one call (R34, R49).
    ///
    /// Freshly inited keys have no open round, so the pull cannot wait; an output naming another
    /// key that `rank` has pushed into an open round would, and is refused
    /// (`UnsupportedOperation`) rather than answered with a stale value.
    pub fn broadcast(
        &mut self,
        per_worker: &[Vec<(Key, Value)>],
        rank: usize,
        outs: &[(Key, Value)],
    ) -> Result<Vec<Value>> {
        self.check_rank(rank)?;
        self.transact(|s| {
            s.init_unchecked(per_worker)?;
            let filled = s.pull_unchecked(outs)?;
            if s.blocked(rank, outs) {
                return Err(s.unsupported("broadcast into a key with a push in an open round"));
            }
            Ok(filled)
        })
    }

    /// Turns on gradient compression for every worker's pushes; new parameters reset every
    /// residual, the same ones keep them (R3, R44).
    pub fn set_gradient_compression(&mut self, compression: Compression) -> Result<()> {
        if !self.kind.allows_compression() {
            return Err(Error::CompressionNotSupported {
                kind: self.kind.name().into(),
            });
        }
        if self.compression != Some(compression) {
            self.residuals.clear();
        }
        self.compression = Some(compression);
        Ok(())
    }

    /// R57: whichever worker sends it, the server installs the optimizer as a fresh updater,
    /// so its states restart (R45).
    pub fn set_optimizer(&mut self, rank: usize, optimizer: Optimizer) -> Result<()> {
        self.check_rank(rank)?;
        let fresh = OptimizerUpdater::new(optimizer)?;
        self.updater = Some(UpdaterSlot::Optimizer(fresh));
        Ok(())
    }

    /// R67: a server command from worker `rank` ([`ServerCommand::parse`]). Head 0 installs the
    /// optimizer as [`DistStore::set_optimizer`] does; head 4 is checked and changes nothing;
    /// every other head is refused, and nothing changes.
    pub fn send_command_to_servers(&mut self, rank: usize, head: i32, body: &str) -> Result<()> {
        self.check_rank(rank)?;
        match ServerCommand::parse(head, body, self.kind.name())? {
            ServerCommand::SetOptimizer(optimizer) => self.set_optimizer(rank, optimizer),
            ServerCommand::GradientCompression(_) => Ok(()),
        }
    }

    /// Installs a custom server-side updater (R21, R54).
    pub fn set_updater(&mut self, updater: Box<dyn Updater>) {
        self.updater = Some(UpdaterSlot::Custom(updater));
    }

    /// R68: the servers' optimizer states, per key as one logical server holds them, in the
    /// format of R47 (and the optimizer too when `dump_optimizer`). MXNet refuses this ("Cannot
    /// save states for distributed training"). Without an optimizer: `NoOptimizer`.
    pub fn save_optimizer_states(&self, dump_optimizer: bool) -> Result<Vec<u8>> {
        match &self.updater {
            Some(UpdaterSlot::Optimizer(o)) => o.save(dump_optimizer),
            _ => Err(Error::NoOptimizer),
        }
    }

    /// R68: replaces the servers' optimizer states (and the optimizer when the bytes carry
    /// one), as R47 does locally. Stricter than local: every state must belong to an
    /// initialised key and have its shape, else `InvalidState` (the servers hold keys in
    /// parts, so a state that does not fit cannot be cut). A failing call changes nothing.
    /// A worker checks the bytes before it asks the servers, so unreadable or unfitting bytes
    /// are `InvalidState` even where no optimizer is set.
    pub fn load_optimizer_states(&mut self, bytes: &[u8]) -> Result<()> {
        let Saved {
            states, optimizer, ..
        } = crate::optimizer::read_saved(bytes)?;
        for (key, state) in &states {
            let stored = self.keys.get(key).ok_or_else(|| Error::InvalidState {
                reason: format!("a state for key {key}, which is not initialised"),
            })?;
            check_state_fits(key, state, &stored.value)?;
        }
        let Some(UpdaterSlot::Optimizer(o)) = &self.updater else {
            return Err(Error::NoOptimizer);
        };
        let next = OptimizerUpdater::with_states(
            optimizer.unwrap_or_else(|| o.optimizer().clone()),
            states,
        )?;
        self.updater = Some(UpdaterSlot::Optimizer(next));
        Ok(())
    }
}

/// R68: every tensor of a loaded state must have its key's shape.
pub fn check_state_fits(key: &Key, state: &crate::optimizer::State, stored: &Value) -> Result<()> {
    match state.slots.iter().find(|t| t.shape() != stored.shape()) {
        Some(t) => Err(Error::InvalidState {
            reason: format!(
                "key {key}: a state of shape {:?} for a value of shape {:?}",
                t.shape(),
                stored.shape()
            ),
        }),
        None => Ok(()),
    }
}

/// What must agree across workers in a collective init (R49): per key in call order, the
/// value's shape, dtype and storage type. Workers send this, not their values.
pub type InitSignature = Vec<(Key, Vec<usize>, DType, StorageType)>;

/// The signature of one worker's init call.
pub fn init_signature(pairs: &[(Key, Value)]) -> InitSignature {
    pairs
        .iter()
        .map(|(key, value)| {
            (
                key.clone(),
                value.shape().to_vec(),
                value.dtype(),
                value.stype(),
            )
        })
        .collect()
}

/// R49: every worker's init signature must equal worker 0's; the first difference is a
/// `CollectiveMismatch` naming the worker and the key.
pub fn check_init_signatures(per_worker: &[InitSignature]) -> Result<()> {
    let mismatch = |reason: String| Error::CollectiveMismatch {
        op: "init".into(),
        reason,
    };
    let Some(root) = per_worker.first() else {
        return Err(mismatch("no worker took part".into()));
    };
    for (rank, pairs) in per_worker.iter().enumerate().skip(1) {
        if pairs.len() != root.len() {
            return Err(mismatch(format!(
                "worker {rank} gives {} keys, worker 0 gives {}",
                pairs.len(),
                root.len()
            )));
        }
        for (entry, root_entry) in pairs.iter().zip(root) {
            let (key, root_key) = (&entry.0, &root_entry.0);
            if key != root_key {
                return Err(mismatch(format!(
                    "worker {rank} gives key {key} where worker 0 gives key {root_key}"
                )));
            }
            if entry != root_entry {
                return Err(mismatch(format!(
                    "key {key}: worker {rank} gives a {} value, worker 0 gives a {} value",
                    describe(entry),
                    describe(root_entry)
                )));
            }
        }
    }
    Ok(())
}

/// A signature entry in words, for error messages.
fn describe((_, shape, dtype, stype): &(Key, Vec<usize>, DType, StorageType)) -> String {
    format!("{stype} {dtype} of shape {shape:?}")
}

/// Compression needs dense float32 values for a float32 key (R43; row_sparse with compression is
/// refused, semantics §3.7). Reports the same dtype as [`transfer::compress`] does.
fn check_compressible(key: &Key, key_dtype: DType, value: &Value) -> Result<()> {
    if value.stype() == StorageType::Dense && value.dtype() == DType::F32 && key_dtype == DType::F32
    {
        return Ok(());
    }
    Err(Error::CompressionUnsupportedValue {
        key: key.clone(),
        stype: value.stype(),
        dtype: if value.dtype() == DType::F32 {
            key_dtype
        } else {
            value.dtype()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::CompressionType;
    use crate::optimizer::{Sgd, State};
    use crate::updater::UpdateError;
    use crate::value::{RowSparse, Tensor};
    use std::sync::{Arc, Mutex};

    fn store(kind: &str, workers: usize) -> DistStore {
        DistStore::new(Kind::parse(kind).unwrap(), workers).unwrap()
    }

    fn dense(data: &[f32]) -> Value {
        Value::Dense(Tensor::new([data.len()], data.to_vec()).unwrap())
    }

    fn full(x: f32) -> Value {
        dense(&[x, x])
    }

    fn k(i: i64) -> Key {
        Key::Int(i)
    }

    /// Every worker inits `key` with `value`.
    fn init_all(kv: &mut DistStore, key: &Key, value: &Value) {
        let per_worker = vec![vec![(key.clone(), value.clone())]; kv.num_workers()];
        kv.init(&per_worker).unwrap();
    }

    /// Worker `rank`'s pull of a 2-element key, `None` while blocked.
    fn pull2(kv: &mut DistStore, rank: usize, key: &Key) -> Option<Vec<f32>> {
        let out = kv.pull(rank, &[(key.clone(), full(-1.0))], true).unwrap();
        out.map(|vals| vals[0].to_f32())
    }

    fn stored(kv: &DistStore, key: &Key) -> Vec<f32> {
        kv.value(key).unwrap().to_f32()
    }

    fn add_into(merged: &Value, stored: &mut Value) -> Result<(), UpdateError> {
        let sum: Vec<f32> = stored
            .to_f32()
            .iter()
            .zip(merged.to_f32())
            .map(|(s, m)| s + m)
            .collect();
        *stored = Value::Dense(
            Tensor::new(stored.shape().to_vec(), sum).map_err(|e| UpdateError(e.to_string()))?,
        );
        Ok(())
    }

    /// `w += g`.
    fn accumulate() -> Box<dyn Updater> {
        Box::new(|_: &Key, merged: &Value, stored: &mut Value| add_into(merged, stored))
    }

    /// `w += g`, but refuses key 2.
    fn refuse_key_2() -> Box<dyn Updater> {
        Box::new(|key: &Key, merged: &Value, stored: &mut Value| {
            if *key == Key::Int(2) {
                return Err(UpdateError::from("key 2 is refused"));
            }
            add_into(merged, stored)
        })
    }

    fn two_bit(threshold: f32) -> Compression {
        Compression::new(CompressionType::TwoBit, threshold).unwrap()
    }

    #[test]
    fn r48_num_workers_and_unknown_worker() {
        let mut kv = store("dist_sync", 3);
        assert_eq!(kv.num_workers(), 3);
        assert_eq!(kv.kind().name(), "dist_sync");
        init_all(&mut kv, &k(1), &full(0.0));
        let before = kv.observable();
        let unknown = Error::UnknownWorker {
            rank: 3,
            workers: 3,
        };
        assert_eq!(kv.push(3, &[(k(1), full(1.0))]), Err(unknown.clone()));
        assert_eq!(kv.pull(3, &[(k(1), full(1.0))], true), Err(unknown.clone()));
        assert_eq!(kv.row_sparse_pull(3, &[], &[vec![]]), Err(unknown.clone()));
        assert_eq!(kv.pushpull(3, &[], &[]), Err(unknown.clone()));
        assert_eq!(
            kv.broadcast(&[vec![], vec![], vec![]], 3, &[]),
            Err(unknown.clone())
        );
        assert_eq!(
            kv.set_optimizer(3, Optimizer::Sgd(Sgd::default())),
            Err(unknown)
        );
        assert_eq!(kv.observable(), before);
        assert_eq!(kv.pending_pushes(7, &k(1)), 0);
    }

    #[test]
    fn r48_new_needs_a_dist_kind_and_a_worker() {
        assert!(matches!(
            DistStore::new(Kind::parse("local").unwrap(), 2),
            Err(Error::UnsupportedKind { .. })
        ));
        assert!(matches!(
            DistStore::new(Kind::parse("dist_sync").unwrap(), 0),
            Err(Error::UnsupportedKind { .. })
        ));
        assert_eq!(store("Dist_Async", 1).num_workers(), 1);
    }

    #[test]
    fn r49_init_stores_rank_0_values() {
        let mut kv = store("dist_sync", 2);
        let rank0 = full(1.0).on(Device::Gpu(1));
        kv.init(&[vec![(k(3), rank0)], vec![(k(3), full(2.0))]])
            .unwrap();
        assert_eq!(
            kv.value(&k(3)),
            Some(&full(1.0)),
            "rank 0's value, copied to cpu(0)"
        );
        assert_eq!(pull2(&mut kv, 0, &k(3)), Some(vec![1.0, 1.0]));
        assert_eq!(pull2(&mut kv, 1, &k(3)), Some(vec![1.0, 1.0]));
        assert_eq!(kv.completed_rounds(&k(3)), 0);
        kv.check_quiescent().unwrap();
    }

    #[test]
    fn r49_workers_that_disagree_are_rejected_and_nothing_is_stored() {
        let mut kv = store("dist_sync", 2);
        let before = kv.observable();
        let half = Value::Dense(Tensor::full([2], DType::F16, 0.0).unwrap());
        let sparse = Value::RowSparse(RowSparse::new([2], vec![0, 1], vec![0.0f32, 0.0]).unwrap());
        let cases: Vec<Vec<Vec<(Key, Value)>>> = vec![
            // another key
            vec![
                vec![(k(1), full(0.0)), (k(2), full(0.0))],
                vec![(k(1), full(0.0)), (k(3), full(0.0))],
            ],
            // the same keys in another order
            vec![
                vec![(k(1), full(0.0)), (k(2), full(0.0))],
                vec![(k(2), full(0.0)), (k(1), full(0.0))],
            ],
            // fewer keys
            vec![
                vec![(k(1), full(0.0)), (k(2), full(0.0))],
                vec![(k(1), full(0.0))],
            ],
            // another shape on the second key
            vec![
                vec![(k(1), full(0.0)), (k(2), full(0.0))],
                vec![(k(1), full(0.0)), (k(2), dense(&[0.0; 3]))],
            ],
            // another dtype
            vec![vec![(k(1), full(0.0))], vec![(k(1), half)]],
            // another storage type
            vec![vec![(k(1), full(0.0))], vec![(k(1), sparse)]],
            // one worker missing
            vec![vec![(k(1), full(0.0))]],
        ];
        for per_worker in cases {
            let err = kv.init(&per_worker).unwrap_err();
            assert!(
                matches!(&err, Error::CollectiveMismatch { op, .. } if op == "init"),
                "{err}"
            );
            assert_eq!(kv.observable(), before);
        }
        let err = kv
            .init(&[vec![(k(1), full(0.0))], vec![(k(1), dense(&[0.0; 3]))]])
            .unwrap_err();
        assert!(
            err.to_string().contains("key 1: worker 1"),
            "names the key and the worker: {err}"
        );
    }

    #[test]
    fn r49_reinit_is_duplicate_init_not_a_hang() {
        let mut kv = store("dist_sync", 2);
        init_all(&mut kv, &k(3), &full(1.0));
        let before = kv.observable();
        let again = vec![vec![(k(4), full(0.0)), (k(3), full(0.0))]; 2];
        assert_eq!(kv.init(&again), Err(Error::DuplicateInit { key: k(3) }));
        let twice = vec![vec![(k(5), full(0.0)), (k(5), full(0.0))]; 2];
        assert_eq!(kv.init(&twice), Err(Error::DuplicateInit { key: k(5) }));
        assert_eq!(kv.observable(), before, "key 4 and 5 are not stored");
        kv.check_quiescent().unwrap();
    }

    #[test]
    fn r49_broadcast_is_collective_init_then_pull() {
        let mut kv = store("dist_sync", 2);
        let per_worker = vec![vec![(k(1), full(4.0))], vec![(k(1), full(5.0))]];
        let out = kv.broadcast(&per_worker, 1, &[(k(1), full(0.0))]).unwrap();
        assert_eq!(out[0].to_f32(), vec![4.0, 4.0]);
        assert_eq!(
            kv.broadcast(&per_worker, 0, &[(k(1), full(0.0))]),
            Err(Error::DuplicateInit { key: k(1) })
        );
        // Rank 0 waits for a round of key 1, so a broadcast of key 2 that also reads key 1 is refused.
        kv.push(0, &[(k(1), full(1.0))]).unwrap();
        let before = kv.observable();
        let per_worker = vec![vec![(k(2), full(0.0))]; 2];
        let outs = [(k(2), full(0.0)), (k(1), full(0.0))];
        assert!(matches!(
            kv.broadcast(&per_worker, 0, &outs),
            Err(Error::UnsupportedOperation { .. })
        ));
        assert_eq!(kv.observable(), before);
        assert_eq!(
            kv.broadcast(&per_worker, 1, &outs).unwrap()[1].to_f32(),
            vec![4.0, 4.0]
        );
    }

    #[test]
    fn r50_unknown_key_push_and_pull_are_not_initialized() {
        let mut kv = store("dist_sync", 2);
        let before = kv.observable();
        let unknown = Error::NotInitialized { key: k(50) };
        assert_eq!(
            kv.push(0, &[(k(50), full(9.0))]),
            Err(unknown.clone()),
            "never init by push"
        );
        assert_eq!(
            kv.pull(0, &[(k(50), full(0.0))], true),
            Err(unknown.clone())
        );
        let rsp = Value::RowSparse(RowSparse::empty([2], DType::F32).unwrap());
        assert_eq!(
            kv.row_sparse_pull(1, &[(k(50), rsp)], &[vec![0]]),
            Err(unknown.clone())
        );
        assert_eq!(
            kv.pushpull(1, &[(k(50), full(9.0))], &[(k(50), full(0.0))]),
            Err(unknown)
        );
        assert_eq!(kv.observable(), before, "not even the key type is fixed");
        init_all(&mut kv, &k(50), &full(1.0));
        assert_eq!(
            pull2(&mut kv, 1, &k(50)),
            Some(vec![1.0, 1.0]),
            "no poisoning"
        );
    }

    #[test]
    fn r51_round_completes_when_every_worker_pushed() {
        let mut kv = store("dist_sync", 2);
        init_all(&mut kv, &k(3), &full(0.0));
        for round in 1..=2 {
            kv.push(0, &[(k(3), full(1.0))]).unwrap();
            assert_eq!(kv.completed_rounds(&k(3)), round - 1);
            kv.push(1, &[(k(3), full(2.0))]).unwrap();
            assert_eq!(kv.completed_rounds(&k(3)), round);
            assert_eq!(
                stored(&kv, &k(3)),
                vec![3.0, 3.0],
                "replace, never accumulate"
            );
        }
        kv.check_quiescent().unwrap();
    }

    #[test]
    fn r51_second_push_of_a_worker_waits_for_the_next_round() {
        let mut kv = store("dist_sync", 2);
        init_all(&mut kv, &k(3), &full(0.0));
        kv.push(0, &[(k(3), full(1.0))]).unwrap();
        kv.push(0, &[(k(3), full(10.0))]).unwrap();
        assert_eq!(kv.pending_pushes(0, &k(3)), 2);
        assert_eq!(
            kv.completed_rounds(&k(3)),
            0,
            "rounds count workers, not requests"
        );
        kv.push(1, &[(k(3), full(2.0))]).unwrap();
        assert_eq!(stored(&kv, &k(3)), vec![3.0, 3.0]);
        assert_eq!(kv.pending_pushes(0, &k(3)), 1, "rank 0's 10 stays queued");
        assert_eq!(kv.pending_pushes(1, &k(3)), 0);
        kv.push(1, &[(k(3), full(20.0))]).unwrap();
        assert_eq!(stored(&kv, &k(3)), vec![30.0, 30.0]);
        assert_eq!(kv.completed_rounds(&k(3)), 2);
        kv.check_quiescent().unwrap();
    }

    #[test]
    fn r51_contributions_are_summed_in_rank_order() {
        let mut kv = store("dist_sync", 3);
        init_all(&mut kv, &k(1), &dense(&[0.0]));
        let x = [1e8f32, 1.0, -1e8];
        // Arrival order 0, 2, 1 would give (1e8 + -1e8) + 1 = 1; rank order gives 0.
        for rank in [0, 2, 1] {
            kv.push(rank, &[(k(1), dense(&[x[rank]]))]).unwrap();
        }
        let rank_order = (x[0] + x[1]) + x[2];
        let arrival_order = (x[0] + x[2]) + x[1];
        assert_ne!(rank_order.to_bits(), arrival_order.to_bits());
        assert_eq!(stored(&kv, &k(1))[0].to_bits(), rank_order.to_bits());
    }

    #[test]
    fn r51_worker_merges_its_own_values_first() {
        let mut kv = store("dist_sync", 2);
        init_all(&mut kv, &k(1), &full(0.0));
        kv.push(
            0,
            &[(k(1), full(1.0)), (k(1), full(2.0).on(Device::Gpu(0)))],
        )
        .unwrap();
        assert_eq!(
            kv.pending_pushes(0, &k(1)),
            1,
            "one contribution per push and key"
        );
        kv.push(1, &[(k(1), full(4.0))]).unwrap();
        assert_eq!(stored(&kv, &k(1)), vec![7.0, 7.0]);
    }

    #[test]
    fn r51_updater_sees_the_round_sum_once_per_round() {
        let mut kv = store("dist_sync", 2);
        init_all(&mut kv, &k(1), &full(1.0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        kv.set_updater(Box::new(
            move |_: &Key, merged: &Value, stored: &mut Value| {
                log.lock()
                    .map_err(|e| UpdateError(e.to_string()))?
                    .push(merged.to_f32());
                add_into(merged, stored)
            },
        ));
        kv.push(0, &[(k(1), full(1.0))]).unwrap();
        kv.push(1, &[(k(1), full(2.0))]).unwrap();
        kv.push(1, &[(k(1), full(2.0))]).unwrap();
        kv.push(0, &[(k(1), full(1.0))]).unwrap();
        assert_eq!(stored(&kv, &k(1)), vec![7.0, 7.0]);
        assert_eq!(*seen.lock().unwrap(), vec![vec![3.0, 3.0], vec![3.0, 3.0]]);
    }

    #[test]
    fn r52_mid_round_pull_returns_the_last_completed_round() {
        let mut kv = store("dist_sync", 2);
        init_all(&mut kv, &k(1), &full(0.0));
        kv.push(0, &[(k(1), full(5.0))]).unwrap();
        assert_eq!(
            pull2(&mut kv, 1, &k(1)),
            Some(vec![0.0, 0.0]),
            "rank 1 has not pushed: old value"
        );
        let before = kv.observable();
        assert_eq!(pull2(&mut kv, 0, &k(1)), None, "rank 0 reads its own round");
        assert_eq!(kv.observable(), before);
        kv.push(1, &[(k(1), full(7.0))]).unwrap();
        assert_eq!(pull2(&mut kv, 0, &k(1)), Some(vec![12.0, 12.0]));
        assert_eq!(pull2(&mut kv, 1, &k(1)), Some(vec![12.0, 12.0]));
    }

    #[test]
    fn r52_blocked_reads_change_nothing_and_invalid_reads_fail() {
        let mut kv = store("dist_sync", 2);
        kv.init(&vec![
            vec![
                (k(1), dense(&[1.0, 2.0, 3.0])),
                (k(2), full(0.0))
            ];
            2
        ])
        .unwrap();
        kv.push(0, &[(k(1), dense(&[1.0, 1.0, 1.0]))]).unwrap();
        let before = kv.observable();
        let rsp = Value::RowSparse(RowSparse::empty([3], DType::F32).unwrap());
        assert_eq!(
            kv.row_sparse_pull(0, &[(k(1), rsp.clone())], &[vec![2, 0]]),
            Ok(None)
        );
        // A pull naming a free key together with the blocked one waits as a whole.
        assert_eq!(
            kv.pull(0, &[(k(2), full(0.0)), (k(1), dense(&[0.0; 3]))], true),
            Ok(None)
        );
        // Invalid arguments fail whether or not the call would wait.
        assert!(matches!(
            kv.pull(0, &[(k(1), full(0.0))], true),
            Err(Error::ShapeMismatch { .. })
        ));
        let s = Key::from("s");
        let wrong_type = Error::KeyTypeMismatch {
            expected: KeyType::Int,
            found: KeyType::Str,
            key: s.clone(),
        };
        assert_eq!(
            kv.pull(0, &[(k(1), dense(&[0.0; 3])), (s, full(0.0))], true),
            Err(wrong_type)
        );
        assert_eq!(kv.observable(), before);
        // Rank 1 has not pushed: it reads rows 0 and 2 of the init value.
        let out = kv
            .row_sparse_pull(1, &[(k(1), rsp)], &[vec![2, 0]])
            .unwrap()
            .unwrap();
        assert_eq!(
            out[0],
            Value::RowSparse(RowSparse::new([3], vec![0, 2], vec![1.0f32, 3.0]).unwrap())
        );
        assert_eq!(
            kv.row_sparse_pull(1, &[], &[vec![0], vec![1]]),
            Err(Error::RowIdsCountMismatch {
                row_ids: 2,
                outputs: 0
            })
        );
    }

    #[test]
    fn r52_pushpull_pushes_and_returns_the_round_once_it_is_complete() {
        let mut kv = store("dist_sync", 2);
        init_all(&mut kv, &k(1), &full(0.0));
        assert_eq!(
            kv.pushpull(0, &[(k(1), full(1.0))], &[(k(1), full(0.0))]),
            Ok(None)
        );
        assert_eq!(
            kv.pending_pushes(0, &k(1)),
            1,
            "the push is kept while its pull waits"
        );
        let out = kv
            .pushpull(1, &[(k(1), full(2.0))], &[(k(1), full(0.0))])
            .unwrap()
            .unwrap();
        assert_eq!(
            out[0].to_f32(),
            vec![3.0, 3.0],
            "the last worker completes the round and reads it"
        );
        assert_eq!(pull2(&mut kv, 0, &k(1)), Some(vec![3.0, 3.0]));
    }

    #[test]
    fn r53_incomplete_round_names_the_missing_workers() {
        let mut kv = store("dist_sync", 3);
        kv.init(&vec![vec![(k(1), full(0.0)), (k(2), full(0.0))]; 3])
            .unwrap();
        kv.push(1, &[(k(2), full(1.0))]).unwrap();
        kv.push(0, &[(k(2), full(1.0))]).unwrap();
        assert_eq!(
            kv.check_quiescent(),
            Err(Error::IncompleteRound {
                key: k(2),
                round: 1,
                missing: vec![2]
            })
        );
        kv.push(2, &[(k(1), full(1.0))]).unwrap();
        assert_eq!(
            kv.check_quiescent(),
            Err(Error::IncompleteRound {
                key: k(1),
                round: 1,
                missing: vec![0, 1]
            }),
            "the first key in key order"
        );
        kv.push(2, &[(k(2), full(1.0))]).unwrap();
        kv.push(0, &[(k(1), full(1.0))]).unwrap();
        kv.push(1, &[(k(1), full(1.0))]).unwrap();
        kv.check_quiescent().unwrap();
        // Uneven push counts: rank 0 pushes key 2 twice more, the others once.
        for rank in [0, 0, 1, 2] {
            kv.push(rank, &[(k(2), full(1.0))]).unwrap();
        }
        assert_eq!(
            kv.check_quiescent(),
            Err(Error::IncompleteRound {
                key: k(2),
                round: 3,
                missing: vec![1, 2]
            })
        );
    }

    #[test]
    fn r54_async_applies_each_push_on_arrival() {
        let mut kv = store("dist_async", 2);
        init_all(&mut kv, &k(1), &full(0.0));
        kv.set_updater(accumulate());
        let mut seen = Vec::new();
        for _ in 0..3 {
            for (rank, g) in [(0, 1.0), (1, 2.0)] {
                kv.push(rank, &[(k(1), full(g))]).unwrap();
                assert_eq!(kv.pending_pushes(rank, &k(1)), 0);
                seen.push(pull2(&mut kv, rank, &k(1)).unwrap()[0]);
            }
        }
        assert_eq!(seen, vec![1.0, 3.0, 4.0, 6.0, 7.0, 9.0]);
        assert_eq!(kv.completed_rounds(&k(1)), 6);
        kv.check_quiescent().unwrap();
    }

    #[test]
    fn r54_async_push_without_updater_is_updater_required() {
        let mut kv = store("dist_async", 2);
        init_all(&mut kv, &k(1), &full(0.0));
        let before = kv.observable();
        let err = kv.push(1, &[(k(1), full(1.0))]);
        assert_eq!(
            err,
            Err(Error::UpdaterRequired {
                key: k(1),
                kind: "dist_async".into()
            })
        );
        assert_eq!(kv.observable(), before);
        kv.push(1, &[]).unwrap();
    }

    #[test]
    fn r55_semantics_dist_example() {
        let mut kv = store("dist_sync", 2);
        let key = k(1);
        kv.set_gradient_compression(two_bit(0.5)).unwrap();
        init_all(&mut kv, &key, &dense(&[1.0; 4]));
        assert_eq!(
            kv.pull(1, &[(key.clone(), dense(&[0.0; 4]))], true)
                .unwrap()
                .unwrap()[0]
                .to_f32(),
            vec![1.0; 4]
        );
        let steps: [([f32; 4], [f32; 4]); 3] = [
            ([0.6, 0.4, -0.6, 0.0], [1.0, 0.0, -1.0, 0.0]),
            ([0.0, 0.2, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]),
            ([0.0; 4], [0.0; 4]),
        ];
        for (grad, expected) in steps {
            kv.push(0, &[(key.clone(), dense(&grad))]).unwrap();
            kv.push(1, &[(key.clone(), dense(&grad))]).unwrap();
            assert_eq!(stored(&kv, &key), expected);
        }
        // Each worker kept its own error feedback: 0.6 - 0.5, 0.4 + 0.2 - 0.5, -0.6 + 0.5, 0 (f32).
        let residual = Residual(vec![0.6f32 - 0.5, (0.4f32 + 0.2) - 0.5, -0.6f32 + 0.5, 0.0]);
        let residuals = kv.observable().residuals;
        assert_eq!(residuals.get(&(0, key.clone())), Some(&residual));
        assert_eq!(residuals.get(&(1, key)), Some(&residual));
    }

    #[test]
    fn r55_each_worker_has_its_own_residual() {
        let mut kv = store("dist_sync", 2);
        kv.set_gradient_compression(two_bit(0.5)).unwrap();
        init_all(&mut kv, &k(1), &dense(&[0.0]));
        kv.push(0, &[(k(1), dense(&[0.3]))]).unwrap();
        kv.push(1, &[(k(1), dense(&[0.3]))]).unwrap();
        assert_eq!(stored(&kv, &k(1)), vec![0.0]);
        // Rank 0's residual reaches 0.6 and sends 0.5; rank 1's stays at 0.3 and sends 0.
        // One residual shared by both workers would have reached 0.9 at rank 1's second push.
        kv.push(0, &[(k(1), dense(&[0.3]))]).unwrap();
        kv.push(1, &[(k(1), dense(&[0.0]))]).unwrap();
        assert_eq!(stored(&kv, &k(1)), vec![0.5]);
    }

    #[test]
    fn r55_worker_merges_uncompressed_then_quantises_once() {
        let mut kv = store("dist_sync", 1);
        kv.set_gradient_compression(two_bit(0.5)).unwrap();
        init_all(&mut kv, &k(1), &dense(&[0.0]));
        // Quantising each value would send 0 + 0; the worker's merge 0.6 sends 0.5.
        kv.push(
            0,
            &[
                (k(1), dense(&[0.3])),
                (k(1), dense(&[0.3]).on(Device::Gpu(1))),
            ],
        )
        .unwrap();
        assert_eq!(stored(&kv, &k(1)), vec![0.5]);
        assert_eq!(
            kv.observable().residuals.len(),
            1,
            "one residual per (worker, key)"
        );
    }

    #[test]
    fn r55_compression_needs_dense_f32_and_new_parameters_reset_residuals() {
        let mut kv = store("dist_sync", 1);
        kv.set_gradient_compression(two_bit(0.5)).unwrap();
        init_all(&mut kv, &k(1), &dense(&[0.0, 0.0]));
        let before = kv.observable();
        let sparse = Value::RowSparse(RowSparse::new([2], vec![0], vec![1.0f32]).unwrap());
        let err = kv
            .push(0, &[(k(1), full(1.0)), (k(1), sparse)])
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::CompressionUnsupportedValue {
                    stype: StorageType::RowSparse,
                    ..
                }
            ),
            "{err}"
        );
        let half = Value::Dense(Tensor::full([2], DType::F16, 1.0).unwrap());
        let err = kv.push(0, &[(k(1), half)]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::CompressionUnsupportedValue {
                    dtype: DType::F16,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(kv.observable(), before);
        kv.push(0, &[(k(1), full(0.3))]).unwrap();
        assert_eq!(kv.observable().residuals.len(), 1);
        kv.set_gradient_compression(two_bit(0.5)).unwrap();
        assert_eq!(
            kv.observable().residuals.len(),
            1,
            "the same parameters keep the residuals"
        );
        kv.set_gradient_compression(two_bit(0.25)).unwrap();
        assert!(
            kv.observable().residuals.is_empty(),
            "new parameters reset them"
        );
    }

    #[test]
    fn r56_row_sparse_round_stores_the_union_of_rows_summed() {
        let mut kv = store("dist_sync", 2);
        init_all(
            &mut kv,
            &k(1),
            &Value::Dense(Tensor::full([3, 2], DType::F32, 9.0).unwrap()),
        );
        let a = RowSparse::new([3, 2], vec![0], vec![1.0f32, 2.0]).unwrap();
        let b = RowSparse::new([3, 2], vec![0, 2], vec![10.0f32, 20.0, 30.0, 40.0]).unwrap();
        kv.push(0, &[(k(1), Value::RowSparse(a))]).unwrap();
        kv.push(1, &[(k(1), Value::RowSparse(b))]).unwrap();
        let expected = RowSparse::new([3, 2], vec![0, 2], vec![11.0f32, 22.0, 30.0, 40.0]).unwrap();
        assert_eq!(
            kv.value(&k(1)),
            Some(&Value::RowSparse(expected)),
            "row 1 is dropped, as in a local store"
        );
    }

    #[test]
    fn r57_pull_with_ignore_sparse_false_is_refused() {
        let mut kv = store("dist_sync", 2);
        init_all(&mut kv, &k(1), &full(0.0));
        let err = kv.pull(0, &[(k(1), full(0.0))], false);
        assert!(matches!(err, Err(Error::UnsupportedOperation { .. })));
        // With ignore_sparse a row_sparse output keeps its content.
        let rsp = Value::RowSparse(RowSparse::new([2], vec![1], vec![5.0f32]).unwrap());
        assert_eq!(
            kv.pull(0, &[(k(1), rsp.clone())], true),
            Ok(Some(vec![rsp]))
        );
    }

    #[test]
    fn r68_optimizer_states_are_saved_and_loaded_from_the_servers() {
        let mut kv = store("dist_sync", 2);
        assert!(matches!(
            kv.save_optimizer_states(true),
            Err(Error::NoOptimizer)
        ));
        assert!(matches!(
            kv.load_optimizer_states(b"{}"),
            Err(Error::InvalidState { .. })
        ));
        init_all(&mut kv, &k(1), &full(0.0));
        let empty = OptimizerUpdater::new(Optimizer::Sgd(Sgd::default()))
            .unwrap()
            .save(false)
            .unwrap();
        assert!(matches!(
            kv.load_optimizer_states(&empty),
            Err(Error::NoOptimizer)
        ));
        let sgd = Optimizer::Sgd(Sgd {
            learning_rate: 1.0,
            momentum: 0.5,
            ..Sgd::default()
        });
        kv.set_optimizer(0, sgd).unwrap();
        let round = |kv: &mut DistStore| {
            kv.push(0, &[(k(1), full(0.5))]).unwrap();
            kv.push(1, &[(k(1), full(0.5))]).unwrap();
        };
        // MXNet's local example (semantics §8.2), here across two workers: w = -1, save,
        // w = -2.5, load, w = -4 (the momentum restored to its value after step 1).
        round(&mut kv);
        assert_eq!(stored(&kv, &k(1)), vec![-1.0, -1.0]);
        let saved = kv.save_optimizer_states(false).unwrap();
        round(&mut kv);
        assert_eq!(stored(&kv, &k(1)), vec![-2.5, -2.5]);
        kv.load_optimizer_states(&saved).unwrap();
        round(&mut kv);
        assert_eq!(stored(&kv, &k(1)), vec![-4.0, -4.0]);
        // A state that does not fit, or for an unknown key, is refused and changes nothing.
        let before = kv.observable();
        let file = |key: Key, state: crate::optimizer::State| {
            let states = BTreeMap::from([(key, state)]);
            let sgd = Optimizer::Sgd(Sgd::default());
            OptimizerUpdater::with_states(sgd, states)
                .unwrap()
                .save(false)
                .unwrap()
        };
        let misfit = file(
            k(1),
            State::momentum(1, Some(Tensor::zeros([3], DType::F32).unwrap())),
        );
        let error = kv.load_optimizer_states(&misfit).unwrap_err();
        assert!(
            matches!(&error, Error::InvalidState { reason } if reason.contains("shape")),
            "{error:?}"
        );
        let unknown = file(k(9), State::momentum(0, None));
        let error = kv.load_optimizer_states(&unknown).unwrap_err();
        assert!(
            matches!(&error, Error::InvalidState { reason } if reason.contains("not initialised")),
            "{error:?}"
        );
        assert!(matches!(
            kv.load_optimizer_states(b"{}"),
            Err(Error::InvalidState { .. })
        ));
        assert_eq!(kv.observable(), before);
    }

    #[test]
    fn r57_set_optimizer_from_any_worker_resets_the_states() {
        let mut kv = store("dist_sync", 2);
        init_all(&mut kv, &k(1), &full(0.0));
        let sgd = Optimizer::Sgd(Sgd {
            learning_rate: 0.1,
            momentum: 0.9,
            ..Sgd::default()
        });
        kv.set_optimizer(0, sgd.clone()).unwrap();
        let round = |kv: &mut DistStore| {
            kv.push(0, &[(k(1), full(1.0))]).unwrap();
            kv.push(1, &[(k(1), full(2.0))]).unwrap();
        };
        round(&mut kv);
        let step = 0.1f32 * 3.0;
        assert_eq!(stored(&kv, &k(1)), vec![-step, -step]);
        assert_eq!(kv.observable().optimizer.map(|o| o.states().len()), Some(1));
        kv.set_optimizer(1, sgd).unwrap();
        assert_eq!(
            kv.observable().optimizer.map(|o| o.states().len()),
            Some(0),
            "fresh states"
        );
        round(&mut kv);
        // A fresh momentum buffer: m = -step, w = -step + m (with the old one, m = 0.9 * -step - step).
        assert_eq!(stored(&kv, &k(1)), vec![-step + -step, -step + -step]);
    }

    #[test]
    fn r67_server_commands_install_optimizers_check_compression_and_refuse_the_rest() {
        let mut kv = store("dist_sync", 2);
        init_all(&mut kv, &k(1), &full(0.0));
        let sgd = Optimizer::Sgd(Sgd {
            learning_rate: 0.5,
            ..Sgd::default()
        });
        let json = serde_json::to_string(&sgd).unwrap();
        let before = kv.observable();
        // Refused heads, unreadable bodies and bad compression settings change nothing.
        for (head, body) in [
            (1, ""),
            (2, ""),
            (3, ""),
            (5, "0"),
            (6, ""),
            (-1, ""),
            (0, "not json"),
            (0, "{\"Sgd\": {\"learning_rate\": -1.0}}"),
            (4, "3bit"),
            (4, "2bit,x"),
        ] {
            let error = kv.send_command_to_servers(0, head, body).unwrap_err();
            assert!(
                matches!(
                    error,
                    Error::UnsupportedOperation { .. }
                        | Error::InvalidOptimizer { .. }
                        | Error::InvalidCompression { .. }
                ),
                "head {head}, body {body:?}: {error:?}"
            );
            assert_eq!(kv.observable(), before, "head {head}, body {body:?}");
        }
        assert!(matches!(
            kv.send_command_to_servers(2, 0, &json),
            Err(Error::UnknownWorker { rank: 2, .. })
        ));
        // Head 4: checked, acknowledged, nothing to keep.
        kv.send_command_to_servers(1, 4, "2bit,0.25").unwrap();
        kv.send_command_to_servers(1, 4, "1bit").unwrap();
        assert_eq!(kv.observable(), before);
        // Head 0 is set_optimizer.
        let mut twin = kv.clone();
        kv.send_command_to_servers(1, 0, &json).unwrap();
        twin.set_optimizer(1, sgd).unwrap();
        assert_eq!(kv.observable(), twin.observable());
        kv.push(0, &[(k(1), full(1.0))]).unwrap();
        kv.push(1, &[(k(1), full(1.0))]).unwrap();
        assert_eq!(stored(&kv, &k(1)), vec![-1.0, -1.0]);
    }

    #[test]
    fn r58_string_keys_are_compared_by_name() {
        let mut kv = store("dist_sync", 2);
        let sa = Key::from("sa");
        let sb = Key::from("sb");
        let swapped = [
            vec![(sa.clone(), full(100.0)), (sb.clone(), full(200.0))],
            vec![(sb.clone(), full(100.0)), (sa.clone(), full(200.0))],
        ];
        assert!(
            matches!(kv.init(&swapped), Err(Error::CollectiveMismatch { .. })),
            "names, not per-process numbers"
        );
        kv.init(&vec![
            vec![
                (sa.clone(), full(100.0)),
                (sb.clone(), full(200.0))
            ];
            2
        ])
        .unwrap();
        assert_eq!(pull2(&mut kv, 1, &sa), Some(vec![100.0, 100.0]));
        kv.push(0, &[(sa.clone(), full(1.0))]).unwrap();
        kv.push(1, &[(sa.clone(), full(2.0))]).unwrap();
        assert_eq!(stored(&kv, &sa), vec![3.0, 3.0]);
        assert_eq!(stored(&kv, &sb), vec![200.0, 200.0]);
    }

    #[test]
    fn r58_push_processes_string_keys_by_name() {
        let mut kv = store("dist_async", 1);
        let (a, b) = (Key::from("a"), Key::from("b"));
        kv.init(&[vec![(b.clone(), full(0.0)), (a.clone(), full(0.0))]])
            .unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&order);
        kv.set_updater(Box::new(
            move |key: &Key, merged: &Value, stored: &mut Value| {
                log.lock()
                    .map_err(|e| UpdateError(e.to_string()))?
                    .push(key.clone());
                add_into(merged, stored)
            },
        ));
        kv.push(0, &[(b.clone(), full(1.0)), (a.clone(), full(1.0))])
            .unwrap();
        assert_eq!(
            *order.lock().unwrap(),
            vec![a, b],
            "by name, not by init order"
        );
    }

    #[test]
    fn r8_key_type_is_fixed_store_wide() {
        let mut kv = store("dist_sync", 2);
        kv.push(0, &[]).unwrap();
        assert_eq!(
            kv.observable().key_type,
            None,
            "an empty call fixes nothing"
        );
        init_all(&mut kv, &k(1), &full(0.0));
        let err = kv.init(&vec![vec![(Key::from("s"), full(0.0))]; 2]);
        assert_eq!(
            err,
            Err(Error::KeyTypeMismatch {
                expected: KeyType::Int,
                found: KeyType::Str,
                key: Key::from("s")
            })
        );
    }

    #[test]
    fn r7_failing_multi_key_push_changes_nothing() {
        let mut kv = store("dist_sync", 2);
        kv.set_gradient_compression(two_bit(0.5)).unwrap();
        kv.init(&vec![vec![(k(1), full(0.0)), (k(2), full(0.0))]; 2])
            .unwrap();
        kv.push(1, &[(k(1), full(0.7)), (k(2), full(0.7))]).unwrap();
        kv.push(0, &[(k(1), full(0.7))]).unwrap();
        kv.push(0, &[(k(1), full(0.7))]).unwrap();
        let before = kv.observable();
        assert!(!before.residuals.is_empty() && kv.pending_pushes(0, &k(1)) == 1);
        // Key 1 is valid (it would queue and touch rank 0's residual); key 2 has the wrong shape.
        let err = kv.push(0, &[(k(1), full(0.7)), (k(2), dense(&[0.7; 3]))]);
        assert!(matches!(err, Err(Error::ShapeMismatch { .. })));
        assert_eq!(kv.observable(), before);
        let err = kv.pushpull(1, &[(k(1), full(0.7))], &[(k(2), dense(&[0.7; 3]))]);
        assert!(
            matches!(err, Err(Error::ShapeMismatch { .. })),
            "an invalid pull part undoes the push"
        );
        assert_eq!(kv.observable(), before);
    }

    #[test]
    fn r7_updater_error_changes_nothing_in_sync_rounds() {
        let mut kv = store("dist_sync", 2);
        kv.init(&vec![vec![(k(1), full(0.0)), (k(2), full(0.0))]; 2])
            .unwrap();
        kv.set_updater(refuse_key_2());
        kv.push(0, &[(k(1), full(1.0)), (k(2), full(1.0))]).unwrap();
        let before = kv.observable();
        // Key 1's round completes and applies before key 2's updater fails: all of it is undone.
        let err = kv.push(1, &[(k(1), full(2.0)), (k(2), full(2.0))]);
        assert_eq!(
            err,
            Err(Error::Updater {
                key: k(2),
                message: "key 2 is refused".into()
            })
        );
        assert_eq!(kv.observable(), before);
        assert_eq!(kv.completed_rounds(&k(1)), 0);
        assert_eq!(kv.pending_pushes(0, &k(1)), 1);
        kv.push(1, &[(k(1), full(2.0))]).unwrap();
        assert_eq!(stored(&kv, &k(1)), vec![3.0, 3.0]);
    }

    #[test]
    fn r7_updater_error_changes_nothing_in_async() {
        let mut kv = store("dist_async", 2);
        kv.init(&vec![vec![(k(1), full(0.0)), (k(2), full(0.0))]; 2])
            .unwrap();
        kv.set_updater(refuse_key_2());
        let before = kv.observable();
        assert!(matches!(
            kv.push(1, &[(k(2), full(2.0)), (k(1), full(2.0))]),
            Err(Error::Updater { .. })
        ));
        assert_eq!(kv.observable(), before);
        kv.push(1, &[(k(1), full(2.0))]).unwrap();
        assert_eq!(stored(&kv, &k(1)), vec![2.0, 2.0]);
    }
}
