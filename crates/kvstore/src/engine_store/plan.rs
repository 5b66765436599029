//! Queue-time checks: every argument error a call can have is found here, from the keys'
//! fixed metadata, before anything is queued. The checks follow the spec's order so that a
//! call with several mistakes reports the same one (the equivalence suites compare errors).

use super::key_hash::BuildKeyHasher;
use super::slot::{ResidualId, Slot};
use crate::args::Input;
use crate::array::EngineVar;
use crate::NdArray;
use kvstore_spec::codec::Compression;
use kvstore_spec::key::{self, KeyType};
use kvstore_spec::kind::{Kind, StoreClass};
use kvstore_spec::optimizer::{Optimizer, State};
use kvstore_spec::updater::Updater;
use kvstore_spec::{sparse, transfer, Device, Error, Key, Result, StorageType, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// The updater pushes apply, as it was when they were queued.
#[derive(Debug, Clone)]
pub(crate) enum UpdaterRef {
    /// From `set_optimizer`; states live beside each key.
    Optimizer(Arc<Optimizer>),
    /// From `set_updater`; one instance shared by every key, so calls into it are serialised.
    Custom(Arc<Mutex<Box<dyn Updater>>>),
}

/// What calls are checked against, guarded by the store's front lock.
#[derive(Debug, Clone)]
pub(crate) struct Front {
    pub kind: Kind,
    /// Whether the kind is NCCL's, found once (a name search per value would show in calls
    /// with many keys).
    nccl: bool,
    pub key_type: Option<KeyType>,
    slots: HashMap<Key, Arc<Slot>, BuildKeyHasher>,
    next_seq: i64,
    pub compression: Option<Compression>,
    pub updater: Option<UpdaterRef>,
    /// Loaded optimizer states of keys not initialised yet; a later init adopts them, as the
    /// spec's states map would serve them.
    pub orphan_states: BTreeMap<Key, State>,
    /// NCCL reduces over one device set, fixed by the first multi-device push (R23).
    nccl_devices: Option<Vec<Device>>,
}

/// The part of [`Front`] a call may change, staged until all its checks pass.
#[derive(Debug, Clone)]
pub(crate) struct View {
    key_type: Option<KeyType>,
    nccl_devices: Option<Vec<Device>>,
}

/// Keys to create, checked.
#[derive(Debug)]
pub(crate) struct InitPlan {
    key_type: Option<KeyType>,
    values: Vec<(Key, Value)>,
}

/// One key's values in call order: usually one, which needs no list of its own.
#[derive(Debug)]
pub(crate) enum GroupInputs {
    One(Input),
    Many(Vec<Input>),
}

impl GroupInputs {
    pub fn as_slice(&self) -> &[Input] {
        match self {
            GroupInputs::One(input) => std::slice::from_ref(input),
            GroupInputs::Many(inputs) => inputs,
        }
    }
}

/// One key of a push: its values in call order and their residual slots.
#[derive(Debug)]
pub(crate) struct Group {
    pub slot: Arc<Slot>,
    pub inputs: GroupInputs,
    pub residual_ids: Vec<ResidualId>,
}

/// A checked push: its keys in key order (R16).
#[derive(Debug)]
pub(crate) struct PushPlan {
    pub groups: Vec<Group>,
    pub compression: Option<Compression>,
    pub updater: Option<UpdaterRef>,
}

/// A checked pull.
#[derive(Debug)]
pub(crate) struct PullPlan {
    pub items: Vec<(Arc<Slot>, NdArray)>,
    pub ignore_sparse: bool,
}

/// A checked row_sparse_pull: each output with its sorted, unique ids.
#[derive(Debug)]
pub(crate) struct RowSparsePlan {
    pub items: Vec<(Arc<Slot>, NdArray, Vec<i64>)>,
}

fn array_vars<'a>(inputs: impl Iterator<Item = &'a Input>) -> Vec<EngineVar> {
    inputs
        .filter_map(|input| match input {
            Input::Array(a) => Some(a.var().clone()),
            Input::Value(_) => None,
        })
        .collect()
}

/// A checked call: the vars its operation reads and writes.
pub(crate) trait Planned {
    fn reads(&self) -> Vec<EngineVar>;
    fn writes(&self) -> Vec<EngineVar>;
}

/// pushpull: one operation over both plans' vars.
impl<A: Planned, B: Planned> Planned for (A, B) {
    fn reads(&self) -> Vec<EngineVar> {
        let mut vars = self.0.reads();
        vars.extend(self.1.reads());
        vars
    }

    fn writes(&self) -> Vec<EngineVar> {
        let mut vars = self.0.writes();
        vars.extend(self.1.writes());
        vars
    }
}

impl Planned for PushPlan {
    /// Arrays the push reads.
    fn reads(&self) -> Vec<EngineVar> {
        array_vars(self.groups.iter().flat_map(|g| g.inputs.as_slice().iter()))
    }

    /// Keys the push writes.
    fn writes(&self) -> Vec<EngineVar> {
        self.groups.iter().map(|g| g.slot.var.clone()).collect()
    }
}

impl Planned for PullPlan {
    fn reads(&self) -> Vec<EngineVar> {
        self.items.iter().map(|(s, _)| s.var.clone()).collect()
    }

    fn writes(&self) -> Vec<EngineVar> {
        self.items.iter().map(|(_, a)| a.var().clone()).collect()
    }
}

impl Planned for RowSparsePlan {
    fn reads(&self) -> Vec<EngineVar> {
        self.items.iter().map(|(s, _, _)| s.var.clone()).collect()
    }

    fn writes(&self) -> Vec<EngineVar> {
        self.items.iter().map(|(_, a, _)| a.var().clone()).collect()
    }
}

/// The spec's `normalize_row_ids` (R31, R32): the same error for the first id out of range,
/// then the sorted unique ids from a linear-time kernel instead of a comparison sort.
fn sorted_row_ids(key: &Key, ids: &[i64], rows: usize) -> Result<Vec<i64>> {
    sparse::check_row_ids(key, ids, rows)?;
    kvstore_cpu::sorted_unique_ids(ids, rows).or_else(|_| sparse::normalize_row_ids(key, ids, rows))
}

impl Front {
    pub fn new(kind: Kind) -> Result<Front> {
        if kind.class() == StoreClass::Dist {
            return Err(Error::UnsupportedKind {
                kind: kind.name().into(),
                reason: "a distributed kind needs the distributed runtime".into(),
            });
        }
        Ok(Front {
            nccl: kind.class() == StoreClass::Nccl,
            kind,
            key_type: None,
            slots: HashMap::default(),
            next_seq: 0,
            compression: None,
            updater: None,
            orphan_states: BTreeMap::new(),
            nccl_devices: None,
        })
    }

    pub fn slots(&self) -> impl Iterator<Item = &Arc<Slot>> {
        self.slots.values()
    }

    pub fn slot(&self, key: &Key) -> Option<&Arc<Slot>> {
        self.slots.get(key)
    }

    fn entry(&self, key: &Key) -> Result<&Arc<Slot>> {
        self.slots
            .get(key)
            .ok_or_else(|| Error::NotInitialized { key: key.clone() })
    }

    fn is_nccl(&self) -> bool {
        self.nccl
    }

    fn unsupported(&self, op: &'static str) -> Error {
        Error::UnsupportedOperation {
            op: op.into(),
            kind: self.kind.name().into(),
        }
    }

    /// NCCL stores take dense values only (R23).
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

    pub fn view(&self) -> View {
        View {
            key_type: self.key_type,
            nccl_devices: self.nccl_devices.clone(),
        }
    }

    pub fn commit_view(&mut self, view: View) {
        self.key_type = view.key_type;
        self.nccl_devices = view.nccl_devices;
    }

    /// Checks an init: every key new, also within the call (R12, R13).
    pub fn plan_init(&self, pairs: &[(Key, Input)]) -> Result<InitPlan> {
        let mut key_type = self.key_type;
        key::fix_key_type(&mut key_type, pairs.iter().map(|(k, _)| k))?;
        let mut values: Vec<(Key, Value)> = Vec::with_capacity(pairs.len());
        let mut seen: HashSet<&Key> = HashSet::with_capacity(pairs.len());
        for (key, input) in pairs {
            if self.slots.contains_key(key) || !seen.insert(key) {
                return Err(Error::DuplicateInit { key: key.clone() });
            }
            // init is synchronous: it reads an array input once its pending writes are done.
            let value = input.to_value();
            self.check_dense_only(key, &value)?;
            values.push((key.clone(), value.on(Device::Cpu(0))));
        }
        Ok(InitPlan { key_type, values })
    }

    pub fn commit_init(&mut self, plan: InitPlan) {
        self.key_type = plan.key_type;
        for (key, value) in plan.values {
            let state = self.orphan_states.remove(&key);
            let slot = Slot::new(key.clone(), value, self.next_seq, state);
            self.next_seq += 1;
            self.slots.insert(key, Arc::new(slot));
        }
    }

    /// A copy of this front with `plan` committed (for calls that init then pull).
    pub fn staged_with(&self, plan: &InitPlan) -> Front {
        let mut staged = self.clone();
        staged.commit_init(InitPlan {
            key_type: plan.key_type,
            values: plan.values.clone(),
        });
        staged
    }
}

impl View {
    fn fix_key_type<'a>(&mut self, keys: impl IntoIterator<Item = &'a Key>) -> Result<()> {
        key::fix_key_type(&mut self.key_type, keys)
    }

    /// Checks a push (R15-R23, R42): groups values by key in key order and checks every value
    /// of every group before anything runs (R59).
    pub fn plan_push(&mut self, front: &Front, pairs: Vec<(Key, Input)>) -> Result<PushPlan> {
        self.fix_key_type(pairs.iter().map(|(k, _)| k))?;
        // Key order: int keys by value, string keys by init order (R16); a string key that
        // was never initialised has no order, and the first of those by name is the error, as
        // in the spec, which groups by key before it orders.
        let mut missing: Option<&Key> = None;
        let mut ordered: Vec<(i64, usize, Option<&Arc<Slot>>)> = Vec::with_capacity(pairs.len());
        for (index, (key, _)) in pairs.iter().enumerate() {
            let slot = front.slot(key);
            let order = match (key, slot) {
                (Key::Int(k), _) => *k,
                (Key::Str(_), Some(slot)) => slot.seq,
                (Key::Str(_), None) => {
                    if missing.is_none_or(|m| key < m) {
                        missing = Some(key);
                    }
                    continue;
                }
            };
            ordered.push((order, index, slot));
        }
        if let Some(key) = missing {
            return Err(Error::NotInitialized { key: key.clone() });
        }
        // Equal orders are one key; the index keeps its values in call order.
        ordered.sort_unstable_by_key(|&(order, index, _)| (order, index));
        let mut inputs: Vec<Option<(Key, Input)>> = pairs.into_iter().map(Some).collect();
        let mut groups: Vec<Group> = Vec::new();
        let mut at = 0;
        while let Some(&(order, _, slot)) = ordered.get(at) {
            let run = ordered[at..]
                .iter()
                .take_while(|(o, _, _)| *o == order)
                .count();
            let mut key = None;
            let mut take = |index: usize| {
                inputs
                    .get_mut(index)
                    .and_then(Option::take)
                    .map(|(k, input)| {
                        key = Some(k);
                        input
                    })
            };
            let values = if run == 1 {
                take(ordered[at].1).map(GroupInputs::One)
            } else {
                let many: Vec<Input> = ordered[at..at + run]
                    .iter()
                    .filter_map(|&(_, index, _)| take(index))
                    .collect();
                Some(GroupInputs::Many(many))
            };
            if let (Some(key), Some(values)) = (key, values) {
                groups.push(self.plan_group(front, key, slot, values)?);
            }
            at += run;
        }
        Ok(PushPlan {
            groups,
            compression: front.compression,
            updater: front.updater.clone(),
        })
    }

    fn plan_group(
        &mut self,
        front: &Front,
        key: Key,
        slot: Option<&Arc<Slot>>,
        inputs: GroupInputs,
    ) -> Result<Group> {
        let slot = slot.ok_or_else(|| Error::NotInitialized { key: key.clone() })?;
        for input in inputs.as_slice() {
            let value = input.snapshot();
            transfer::check_shape(&key, &slot.shape, &value)?;
            front.check_dense_only(&key, &value)?;
        }
        if front.is_nccl() && inputs.as_slice().len() >= 2 {
            let devices = inputs.as_slice().iter().map(|i| i.snapshot().device());
            transfer::fix_device_set(&mut self.nccl_devices, &key, devices)?;
        }
        let mut residual_ids = Vec::new();
        if front.compression.is_some() {
            let mut seen: BTreeMap<Device, usize> = BTreeMap::new();
            for input in inputs.as_slice() {
                let value = input.snapshot();
                transfer::check_compressible(&key, slot.dtype, &value)?;
                let occurrence = seen.entry(value.device()).or_insert(0);
                residual_ids.push((value.device(), *occurrence));
                *occurrence += 1;
            }
        }
        Ok(Group {
            slot: Arc::clone(slot),
            inputs,
            residual_ids,
        })
    }

    /// Checks a pull (R25-R29).
    pub fn plan_pull(
        &mut self,
        front: &Front,
        outs: Vec<(Key, NdArray)>,
        ignore_sparse: bool,
    ) -> Result<PullPlan> {
        if front.is_nccl() && !ignore_sparse {
            return Err(front.unsupported("pull with ignore_sparse=false"));
        }
        self.fix_key_type(outs.iter().map(|(k, _)| k))?;
        let mut items = Vec::with_capacity(outs.len());
        for (key, out) in outs {
            let slot = front.entry(&key)?;
            transfer::check_shape(&key, &slot.shape, &out.snapshot())?;
            items.push((Arc::clone(slot), out));
        }
        Ok(PullPlan {
            items,
            ignore_sparse,
        })
    }

    /// Checks a row_sparse_pull (R30-R33).
    pub fn plan_row_sparse_pull(
        &mut self,
        front: &Front,
        outs: Vec<(Key, NdArray)>,
        row_ids: &[Vec<i64>],
    ) -> Result<RowSparsePlan> {
        if front.is_nccl() {
            return Err(front.unsupported("row_sparse_pull"));
        }
        self.fix_key_type(outs.iter().map(|(k, _)| k))?;
        if row_ids.len() != 1 && row_ids.len() != outs.len() {
            return Err(Error::RowIdsCountMismatch {
                row_ids: row_ids.len(),
                outputs: outs.len(),
            });
        }
        let mut items = Vec::with_capacity(outs.len());
        for (i, (key, out)) in outs.into_iter().enumerate() {
            let ids = match row_ids {
                [only] => only,
                many => many.get(i).map_or(&[][..], |v| v),
            };
            let slot = front.entry(&key)?;
            let current = out.snapshot();
            if current.stype() != StorageType::RowSparse {
                return Err(Error::StorageTypeMismatch {
                    key: key.clone(),
                    expected: StorageType::RowSparse,
                    found: current.stype(),
                });
            }
            transfer::check_shape(&key, &slot.shape, &current)?;
            let rows = slot.shape.first().copied().unwrap_or(0);
            let ids = sorted_row_ids(&key, ids, rows)?;
            items.push((Arc::clone(slot), out, ids));
        }
        Ok(RowSparsePlan { items })
    }
}
