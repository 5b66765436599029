//! The reference state machine: the bookkeeping needed to generate mostly valid ops (which
//! keys exist with which shape and dtype, the key type, whether compression or an updater is
//! on). It decides nothing about results: the spec store inside the test does.

use crate::ops::{self, KeyMeta, Op, SlotMeta};
use kvstore::spec::key::fix_key_type;
use kvstore::{normalize, Key, KeyType, Keys, StorageType, Value, Values};
use proptest::prelude::*;
use proptest_state_machine::ReferenceStateMachine;
use std::collections::{BTreeMap, BTreeSet};

/// What the generator knows of the store.
#[derive(Debug, Clone)]
pub struct Model {
    /// Store kind: `local`, `device` or `nccl`.
    pub kind: &'static str,
    /// Engine worker threads.
    pub workers: usize,
    /// Whether the engine store waits only at `WaitAll` ops, observable checks and errors
    /// (else after every op).
    pub pipelined: bool,
    /// The key type this case mostly uses.
    pub key_kind: KeyType,
    /// The store's key type, once a call fixed it.
    pub fixed: Option<KeyType>,
    /// Keys initialised so far.
    pub keys: BTreeMap<Key, KeyMeta>,
    pub compression: bool,
    pub updater: bool,
    /// Whether the updater is an optimizer (whose states can be saved).
    pub optimizer: bool,
    /// State files written so far.
    pub files: BTreeSet<u8>,
    /// Every output array of the ops so far (whether or not the op succeeded), in argument
    /// order: later ops push from them and pull into them again.
    pub slots: Vec<SlotMeta>,
}

impl Model {
    fn allows_compression(&self) -> bool {
        self.kind.contains("device") && !self.kind.contains("nccl")
    }

    /// Records the output arrays `op` adds to the slots.
    fn add_slots(&mut self, op: &Op) {
        let outs = match op {
            Op::Pull { outs, .. }
            | Op::RowSparsePull { outs, .. }
            | Op::PushPull {
                outs: Some(outs), ..
            }
            | Op::Broadcast { outs, .. } => outs,
            Op::PushPull {
                values, outs: None, ..
            } => values,
            _ => return,
        };
        self.slots
            .extend(ops::leaves(outs).into_iter().map(|v| SlotMeta {
                shape: v.shape().to_vec(),
            }));
    }

    /// Records the keys an init (or a broadcast, which also pulls into `outs`) creates when the
    /// call succeeds; a failing call creates none (R7, R13, R34).
    fn init(&mut self, keys: &Keys, values: &Values<Value>, outs: Option<&Values<Value>>) {
        let Ok(pairs) = normalize(keys.clone(), values.clone()) else {
            return;
        };
        let mut fixed = self.fixed;
        if fix_key_type(&mut fixed, pairs.iter().map(|(k, _)| k)).is_err() {
            return;
        }
        let mut created: BTreeMap<Key, KeyMeta> = BTreeMap::new();
        for (key, value) in &pairs {
            let sparse_on_nccl = self.kind == "nccl" && value.stype() == StorageType::RowSparse;
            if self.keys.contains_key(key) || created.contains_key(key) || sparse_on_nccl {
                return;
            }
            let meta = KeyMeta {
                shape: value.shape().to_vec(),
                dtype: value.dtype(),
            };
            created.insert(key.clone(), meta);
        }
        if let Some(outs) = outs {
            let Ok(outs) = normalize(keys.clone(), outs.clone()) else {
                return;
            };
            let fits = |(key, out): &(Key, Value)| {
                created
                    .get(key)
                    .is_some_and(|m| m.shape.as_slice() == out.shape())
            };
            if !outs.iter().all(fits) {
                return;
            }
        }
        self.fixed = fixed;
        self.keys.extend(created);
    }
}

impl ReferenceStateMachine for Model {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        (
            prop_oneof![5 => Just("local"), 4 => Just("device"), 1 => Just("nccl")],
            1usize..=4,
            any::<bool>(),
            prop_oneof![Just(KeyType::Int), Just(KeyType::Str)],
        )
            .prop_map(|(kind, workers, pipelined, key_kind)| Model {
                kind,
                workers,
                pipelined,
                key_kind,
                fixed: None,
                keys: BTreeMap::new(),
                compression: false,
                updater: false,
                optimizer: false,
                files: BTreeSet::new(),
                slots: Vec::new(),
            })
            .boxed()
    }

    fn transitions(m: &Model) -> BoxedStrategy<Op> {
        m.next_op()
    }

    fn preconditions(m: &Model, op: &Op) -> bool {
        let slots_exist = match op {
            Op::PushSlots { slots, .. } | Op::PullSlots { slots, .. } => {
                ops::leaves(slots).into_iter().all(|&i| i < m.slots.len())
            }
            _ => true,
        };
        slots_exist
    }

    fn apply(mut m: Model, op: &Op) -> Model {
        m.add_slots(op);
        match op {
            Op::Init { keys, values } => m.init(keys, values, None),
            Op::Broadcast { keys, values, outs } => m.init(keys, values, Some(outs)),
            Op::SetCompression(_) if m.allows_compression() => m.compression = true,
            Op::SetOptimizer(optimizer) if optimizer.validate().is_ok() => {
                m.updater = true;
                m.optimizer = true;
            }
            Op::SetUpdater(_) => {
                m.updater = true;
                m.optimizer = false;
            }
            Op::SaveStates { file, .. } if m.optimizer => {
                m.files.insert(*file);
            }
            Op::WriteStates { file, .. } | Op::CorruptStates { file } => {
                m.files.insert(*file);
            }
            _ => {}
        }
        m
    }
}
