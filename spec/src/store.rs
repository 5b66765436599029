//! The single-process store (`local`, `device`, `nccl` and every other non-dist name).
//!
//! Every operation takes normalised `(key, value)` pairs and runs as a transaction on a copy of
//! the store that is kept only when the whole call succeeds (R7: a failing call changes nothing).

use crate::codec::{Compression, Residual};
use crate::error::{Error, Result};
use crate::key::{self, Key, KeyType};
use crate::kind::{Kind, StoreClass};
use crate::optimizer::{Optimizer, OptimizerUpdater};
use crate::reduce;
use crate::transaction;
use crate::transfer;
use crate::updater::{Updater, UpdaterSlot};
use crate::value::{DType, Device, StorageType, Value};
use std::collections::BTreeMap;

/// A key's stored value and its place in the key order.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    value: Value,
    /// Position in init order; orders string keys (R16).
    seq: i64,
}

/// A compression residual belongs to a key, a device and that device's occurrence in the
/// pushed list (R42).
pub type ResidualSlot = (Key, Device, usize);

/// The executable specification of a single-process store.
///
/// ```
/// use kvstore_spec::{store::LocalStore, kind::Kind, Key, Tensor, Value};
/// let mut kv = LocalStore::new(Kind::parse("local")?)?;
/// let ones = |n: f32| Value::Dense(Tensor::new([2], vec![n, n]).unwrap());
/// kv.init(&[(Key::Int(3), ones(0.0))])?;
/// kv.push(&[(Key::Int(3), ones(1.0)), (Key::Int(3), ones(2.0))])?;
/// let out = kv.pull(&[(Key::Int(3), ones(0.0))], true)?;
/// assert_eq!(out[0].to_f32(), vec![3.0, 3.0]);
/// # Ok::<(), kvstore_spec::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct LocalStore {
    kind: Kind,
    key_type: Option<KeyType>,
    entries: BTreeMap<Key, Entry>,
    next_seq: i64,
    updater: Option<UpdaterSlot>,
    compression: Option<Compression>,
    residuals: BTreeMap<ResidualSlot, Residual>,
    /// NCCL reduces over one device set, fixed by the first multi-device push (R23).
    nccl_devices: Option<Vec<Device>>,
}

/// Everything a caller can observe of a store, for equality checks in tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Observable {
    /// The fixed key type.
    pub key_type: Option<KeyType>,
    /// Every key's value.
    pub values: BTreeMap<Key, Value>,
    /// Compression parameters.
    pub compression: Option<Compression>,
    /// Compression residuals.
    pub residuals: BTreeMap<ResidualSlot, Residual>,
    /// The optimizer and its states, when `set_optimizer` installed one.
    pub optimizer: Option<OptimizerUpdater>,
    /// Whether any updater is set.
    pub has_updater: bool,
}

impl LocalStore {
    /// An empty store of a single-process kind.
    pub fn new(kind: Kind) -> Result<LocalStore> {
        if kind.class() == StoreClass::Dist {
            return Err(Error::UnsupportedKind {
                kind: kind.name().into(),
                reason: "a distributed kind needs the distributed model".into(),
            });
        }
        Ok(LocalStore {
            kind,
            key_type: None,
            entries: BTreeMap::new(),
            next_seq: 0,
            updater: None,
            compression: None,
            residuals: BTreeMap::new(),
            nccl_devices: None,
        })
    }

    /// The store kind.
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// This process's rank: always 0 for a single-process store (R5).
    pub fn rank(&self) -> usize {
        0
    }

    /// Number of workers: always 1 for a single-process store (R5).
    pub fn num_workers(&self) -> usize {
        1
    }

    /// The value a key holds.
    pub fn value(&self, key: &Key) -> Option<&Value> {
        self.entries.get(key).map(|e| &e.value)
    }

    /// What a caller can observe, for bit-exact comparisons.
    pub fn observable(&self) -> Observable {
        Observable {
            key_type: self.key_type,
            values: self
                .entries
                .iter()
                .map(|(k, e)| (k.clone(), e.value.clone()))
                .collect(),
            compression: self.compression,
            residuals: self.residuals.clone(),
            optimizer: match &self.updater {
                Some(UpdaterSlot::Optimizer(o)) => Some(o.clone()),
                _ => None,
            },
            has_updater: self.updater.is_some(),
        }
    }

    /// Runs `op` on a copy and keeps the copy only if `op` succeeds (R7).
    fn transact<T>(&mut self, op: impl FnOnce(&mut LocalStore) -> Result<T>) -> Result<T> {
        transaction::transact(self, op)
    }

    fn is_nccl(&self) -> bool {
        self.kind.class() == StoreClass::Nccl
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

    fn entry(&self, key: &Key) -> Result<&Entry> {
        self.entries
            .get(key)
            .ok_or_else(|| Error::NotInitialized { key: key.clone() })
    }

    fn check_shape(&self, key: &Key, value: &Value) -> Result<()> {
        transfer::check_shape(key, self.entry(key)?.value.shape(), value)
    }

    fn check_dense_only(&self, key: &Key, value: &Value) -> Result<()> {
        if self.is_nccl() && value.stype() == StorageType::RowSparse {
            return Err(Error::StorageTypeMismatch {
                key: key.clone(),
                expected: StorageType::Dense,
                found: StorageType::RowSparse,
            });
        }
        Ok(())
    }

    /// Stores a copy of each value; every key must be new, also within the call (R12, R13).
    pub fn init(&mut self, pairs: &[(Key, Value)]) -> Result<()> {
        self.transact(|s| s.init_unchecked(pairs))
    }

    fn init_unchecked(&mut self, pairs: &[(Key, Value)]) -> Result<()> {
        self.fix_key_type(pairs.iter().map(|(k, _)| k))?;
        for (key, value) in pairs {
            if self.entries.contains_key(key) {
                return Err(Error::DuplicateInit { key: key.clone() });
            }
            self.check_dense_only(key, value)?;
            let entry = Entry {
                value: value.clone().on(Device::Cpu(0)),
                seq: self.next_seq,
            };
            self.next_seq += 1;
            self.entries.insert(key.clone(), entry);
        }
        Ok(())
    }

    /// Groups values by key in key order, each group's values in call order (R15, R16).
    fn group<'a>(&self, pairs: &'a [(Key, Value)]) -> Result<Vec<(Key, Vec<&'a Value>)>> {
        let mut groups: BTreeMap<&Key, Vec<&Value>> = BTreeMap::new();
        for (key, value) in pairs {
            groups.entry(key).or_default().push(value);
        }
        let mut ordered = Vec::with_capacity(groups.len());
        for (key, values) in groups {
            let order = match key {
                Key::Int(k) => *k,
                Key::Str(_) => self.entry(key)?.seq,
            };
            ordered.push((order, key.clone(), values));
        }
        ordered.sort_by_key(|(order, _, _)| *order);
        Ok(ordered.into_iter().map(|(_, k, v)| (k, v)).collect())
    }

    /// Merges each key's values and stores the sum, or hands it to the updater (R15-R22).
    pub fn push(&mut self, pairs: &[(Key, Value)]) -> Result<()> {
        // Arguments that pass their checks fix the NCCL device set even when the work then
        // fails (R23): the set is part of the arguments, checked when a call is issued.
        self.transact(|s| s.check_push(pairs))?;
        self.transact(|s| s.push_unchecked(pairs))
    }

    /// The argument checks of a push, for every key (R59).
    fn check_push(&mut self, pairs: &[(Key, Value)]) -> Result<()> {
        self.fix_key_type(pairs.iter().map(|(k, _)| k))?;
        for (key, values) in self.group(pairs)? {
            self.check_group(&key, &values)?;
        }
        Ok(())
    }

    fn push_unchecked(&mut self, pairs: &[(Key, Value)]) -> Result<()> {
        self.fix_key_type(pairs.iter().map(|(k, _)| k))?;
        let groups = self.group(pairs)?;
        // Every argument of every key is checked before any key is merged (R59).
        for (key, values) in &groups {
            self.check_group(key, values)?;
        }
        for (key, values) in groups {
            let merged = self.merge(&key, &values)?;
            self.apply(&key, merged)?;
        }
        Ok(())
    }

    /// The checks of one key's pushed values (R18, R23, R42).
    fn check_group(&mut self, key: &Key, values: &[&Value]) -> Result<()> {
        let dtype = self.entry(key)?.value.dtype();
        for value in values {
            self.check_shape(key, value)?;
            self.check_dense_only(key, value)?;
        }
        self.check_nccl_devices(key, values)?;
        if self.compression.is_some() {
            for value in values {
                transfer::check_compressible(key, dtype, value)?;
            }
        }
        Ok(())
    }

    /// The sum of one key's pushed values in the key's dtype, compressed first when set (R17, R42).
    fn merge(&mut self, key: &Key, values: &[&Value]) -> Result<Value> {
        let dtype = self.entry(key)?.value.dtype();
        let values: Vec<Value> = match self.compression {
            Some(c) => self.compress_all(c, key, dtype, values)?,
            None => values.iter().map(|v| (*v).clone()).collect(),
        };
        reduce::sum(&values, dtype)?.ok_or_else(|| Error::EmptyValueList { key: key.clone() })
    }

    fn check_nccl_devices(&mut self, key: &Key, values: &[&Value]) -> Result<()> {
        if !self.is_nccl() || values.len() < 2 {
            return Ok(());
        }
        transfer::fix_device_set(
            &mut self.nccl_devices,
            key,
            values.iter().map(|v| v.device()),
        )
    }

    /// Quantises each value with its residual slot and returns what the receiver decodes (R42, R43).
    fn compress_all(
        &mut self,
        c: Compression,
        key: &Key,
        dtype: DType,
        values: &[&Value],
    ) -> Result<Vec<Value>> {
        let mut seen: BTreeMap<Device, usize> = BTreeMap::new();
        let mut decoded = Vec::with_capacity(values.len());
        for value in values {
            let occurrence = seen.entry(value.device()).or_insert(0);
            let slot = (key.clone(), value.device(), *occurrence);
            *occurrence += 1;
            let residual = self.residuals.entry(slot).or_default();
            decoded.push(transfer::compress(c, key, dtype, value, &mut residual.0)?);
        }
        Ok(decoded)
    }

    /// Replaces the stored value with the merged one, or runs the updater on it (R19, R21, R22).
    fn apply(&mut self, key: &Key, merged: Value) -> Result<()> {
        let stored = self.entry(key)?.value.clone();
        let next = match &mut self.updater {
            None => merged.on(stored.device()),
            Some(slot) => slot.apply(key, &merged, &stored)?,
        };
        if let Some(entry) = self.entries.get_mut(key) {
            entry.value = next;
        }
        Ok(())
    }

    /// Copies each key's value into its outputs (R25-R28).
    ///
    /// `outs` holds each output's current content; the result is each output's new content, in
    /// the same order.
    pub fn pull(&mut self, outs: &[(Key, Value)], ignore_sparse: bool) -> Result<Vec<Value>> {
        self.transact(|s| s.pull_unchecked(outs, ignore_sparse))
    }

    fn pull_unchecked(&mut self, outs: &[(Key, Value)], ignore_sparse: bool) -> Result<Vec<Value>> {
        if self.is_nccl() && !ignore_sparse {
            return Err(self.unsupported("pull with ignore_sparse=false"));
        }
        self.fix_key_type(outs.iter().map(|(k, _)| k))?;
        outs.iter()
            .map(|(key, out)| self.pull_one(key, out, ignore_sparse))
            .collect()
    }

    fn pull_one(&self, key: &Key, out: &Value, ignore_sparse: bool) -> Result<Value> {
        transfer::pull_output(key, &self.entry(key)?.value, out, ignore_sparse)
    }

    /// Fills row_sparse outputs with the requested rows (R30-R33).
    ///
    /// One `row_ids` list serves every output; otherwise there is one list per output.
    pub fn row_sparse_pull(
        &mut self,
        outs: &[(Key, Value)],
        row_ids: &[Vec<i64>],
    ) -> Result<Vec<Value>> {
        self.transact(|s| s.row_sparse_pull_unchecked(outs, row_ids))
    }

    fn row_sparse_pull_unchecked(
        &mut self,
        outs: &[(Key, Value)],
        row_ids: &[Vec<i64>],
    ) -> Result<Vec<Value>> {
        if self.is_nccl() {
            return Err(self.unsupported("row_sparse_pull"));
        }
        self.fix_key_type(outs.iter().map(|(k, _)| k))?;
        let ids_for = |i: usize| match row_ids {
            [only] => Some(only),
            many => many.get(i),
        };
        if row_ids.len() != 1 && row_ids.len() != outs.len() {
            return Err(Error::RowIdsCountMismatch {
                row_ids: row_ids.len(),
                outputs: outs.len(),
            });
        }
        outs.iter()
            .enumerate()
            .map(|(i, (key, out))| self.retain_one(key, out, ids_for(i).map_or(&[][..], |v| v)))
            .collect()
    }

    fn retain_one(&self, key: &Key, out: &Value, ids: &[i64]) -> Result<Value> {
        transfer::row_sparse_output(key, &self.entry(key)?.value, out, ids)
    }

    /// `push` then `pull` into `outs`, as one call (R34).
    pub fn pushpull(
        &mut self,
        pairs: &[(Key, Value)],
        outs: &[(Key, Value)],
    ) -> Result<Vec<Value>> {
        // The pull's arguments are checked before the push runs (R59), on a copy that has the
        // push's checks applied but none of its work; passing checks fix the device set (R23).
        self.transact(|s| {
            s.check_push(pairs)?;
            s.clone().pull_unchecked(outs, true).map(|_| ())
        })?;
        self.transact(|s| {
            s.push_unchecked(pairs)?;
            s.pull_unchecked(outs, true)
        })
    }

    /// `init` then `pull` into `outs`, as one call (R34).
    pub fn broadcast(
        &mut self,
        pairs: &[(Key, Value)],
        outs: &[(Key, Value)],
    ) -> Result<Vec<Value>> {
        self.transact(|s| {
            s.init_unchecked(pairs)?;
            s.pull_unchecked(outs, true)
        })
    }

    /// Turns on gradient compression; new parameters reset the residuals (R3, R44).
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

    /// Installs an optimizer as the updater, with fresh states (R45).
    pub fn set_optimizer(&mut self, optimizer: Optimizer) -> Result<()> {
        self.updater = Some(UpdaterSlot::Optimizer(OptimizerUpdater::new(optimizer)?));
        Ok(())
    }

    /// Installs a custom updater (R21).
    pub fn set_updater(&mut self, updater: Box<dyn Updater>) {
        self.updater = Some(UpdaterSlot::Custom(updater));
    }

    /// The optimizer states (and the optimizer when `dump_optimizer`) as bytes (R47).
    pub fn save_optimizer_states(&self, dump_optimizer: bool) -> Result<Vec<u8>> {
        match &self.updater {
            Some(UpdaterSlot::Optimizer(o)) => o.save(dump_optimizer),
            _ => Err(Error::NoOptimizer),
        }
    }

    /// Restores states saved by [`LocalStore::save_optimizer_states`] (R47); a state that does
    /// not fit its initialised key is `InvalidState`, and nothing changes.
    pub fn load_optimizer_states(&mut self, bytes: &[u8]) -> Result<()> {
        match &mut self.updater {
            Some(UpdaterSlot::Optimizer(o)) => {
                let mut next = o.clone();
                next.load(bytes)?;
                next.optimizer().check_loaded(next.states(), |key| {
                    self.entries
                        .get(key)
                        .map(|e| (e.value.shape().to_vec(), e.value.dtype()))
                })?;
                *o = next;
                Ok(())
            }
            _ => Err(Error::NoOptimizer),
        }
    }
}
