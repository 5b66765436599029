//! The ops the reference state machine generates from what it knows of the store: mostly
//! valid ones (known keys, their shapes and dtypes), with every kind of mistake mixed in.

use crate::model::Model;
use crate::ops::{self, LeafFn, Metas, Op, SlotMeta};
use crate::updaters::UpdaterKind;
use kvstore::{Compression, CompressionType, Key, KeyType, Keys, Tensor, Value, Values};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::Union;
use std::sync::Arc;

/// Slot ops use the most recent slots only.
const RECENT_SLOTS: usize = 8;

const INT_KEYS: &[i64] = &[3, 0, 1, -7, 12, i64::MAX];
const STR_KEYS: &[&str] = &["w", "b", "emb", "a", "zz", "é"];

fn pool(kind: KeyType) -> Vec<Key> {
    match kind {
        KeyType::Int => INT_KEYS.iter().map(|&k| Key::Int(k)).collect(),
        KeyType::Str => STR_KEYS.iter().map(|&k| Key::from(k)).collect(),
    }
}

fn other(kind: KeyType) -> KeyType {
    match kind {
        KeyType::Int => KeyType::Str,
        KeyType::Str => KeyType::Int,
    }
}

impl Model {
    fn main_kind(&self) -> KeyType {
        self.fixed.unwrap_or(self.key_kind)
    }

    fn dense_only(&self) -> bool {
        self.kind == "nccl" || self.compression
    }

    /// The next op: weights favour pushes and pulls once keys exist.
    pub fn next_op(&self) -> BoxedStrategy<Op> {
        let have_keys = !self.keys.is_empty();
        let mut choices: Vec<(u32, BoxedStrategy<Op>)> = vec![
            (if have_keys { 3 } else { 12 }, self.init_op()),
            (1, self.broadcast_op()),
            (1, compression_op()),
            (2, ops::optimizer().prop_map(Op::SetOptimizer).boxed()),
            (2, self.updater_op()),
            (if self.updater { 4 } else { 1 }, self.state_file_ops()),
            (2, Just(Op::WaitAll).boxed()),
        ];
        if have_keys {
            choices.extend([
                (12, self.push_op()),
                (8, self.pull_op()),
                (4, self.row_sparse_pull_op()),
                (4, self.pushpull_op()),
                (1, self.pick().prop_map(Op::ValueOf).boxed()),
            ]);
            if !self.slots.is_empty() {
                choices.push((8, self.slot_ops()));
            }
        }
        Union::new_weighted(choices).boxed()
    }

    /// A key for an op on existing keys: mostly a known one, sometimes one never initialised or
    /// of the other key type.
    fn pick(&self) -> BoxedStrategy<Key> {
        let known: Vec<Key> = self.keys.keys().cloned().collect();
        let mut choices = vec![
            (3, select(pool(self.main_kind())).boxed()),
            (1, select(pool(other(self.main_kind()))).boxed()),
        ];
        if !known.is_empty() {
            choices.push((40, select(known).boxed()));
        }
        Union::new_weighted(choices).boxed()
    }

    /// A key for an init: mostly a new one.
    fn pick_new(&self) -> BoxedStrategy<Key> {
        let fresh: Vec<Key> = pool(self.main_kind())
            .into_iter()
            .filter(|k| !self.keys.contains_key(k))
            .collect();
        let mut choices = vec![(2, self.pick())];
        if !fresh.is_empty() {
            choices.push((12, select(fresh).boxed()));
        }
        Union::new_weighted(choices).boxed()
    }

    fn picks(pick: BoxedStrategy<Key>) -> BoxedStrategy<Vec<Key>> {
        prop_oneof![
            3 => proptest::collection::vec(pick.clone(), 1),
            2 => proptest::collection::vec(pick, 2..=3),
        ]
        .boxed()
    }

    fn leaf(&self, sparse: u32) -> LeafFn {
        let metas: Metas = Arc::new(self.keys.clone());
        Arc::new(move |k: &Key| ops::value_for(metas.get(k), sparse))
    }

    fn value_leaf(&self) -> LeafFn {
        self.leaf(if self.dense_only() { 3 } else { 20 })
    }

    fn init_op(&self) -> BoxedStrategy<Op> {
        let leaf = self.value_leaf();
        Self::picks(self.pick_new())
            .prop_flat_map(ops::keys_of)
            .prop_flat_map(move |keys| {
                ops::malformed(ops::values_for(&keys, &leaf)).prop_map(move |values| Op::Init {
                    keys: keys.clone(),
                    values,
                })
            })
            .boxed()
    }

    fn broadcast_op(&self) -> BoxedStrategy<Op> {
        let leaf = self.value_leaf();
        Self::picks(self.pick_new())
            .prop_flat_map(ops::keys_of)
            .prop_flat_map(move |keys| {
                ops::values_for(&keys, &leaf).prop_map(move |values| {
                    // Outputs like the values, zeroed: the usual `broadcast(k, v, out=...)`.
                    let outs = values.clone().map(|v| {
                        Value::Dense(Tensor::zeros(v.shape().to_vec(), v.dtype()).unwrap())
                            .on(v.device())
                    });
                    Op::Broadcast {
                        keys: keys.clone(),
                        values,
                        outs,
                    }
                })
            })
            .boxed()
    }

    fn push_op(&self) -> BoxedStrategy<Op> {
        let leaf = self.value_leaf();
        Self::picks(self.pick())
            .prop_flat_map(ops::keys_of)
            .prop_flat_map(move |keys| {
                (
                    ops::malformed(ops::values_for(&keys, &leaf)),
                    select(vec![0, 0, 0, 5, -3]),
                    prop::bool::weighted(0.3),
                )
                    .prop_map(move |(values, priority, from_arrays)| Op::Push {
                        keys: keys.clone(),
                        values,
                        priority,
                        from_arrays,
                    })
            })
            .boxed()
    }

    fn pull_op(&self) -> BoxedStrategy<Op> {
        let leaf = self.leaf(15);
        Self::picks(self.pick())
            .prop_flat_map(ops::keys_of)
            .prop_flat_map(move |keys| {
                (
                    ops::malformed(ops::values_for(&keys, &leaf)),
                    prop::bool::weighted(0.7),
                    select(vec![0, 0, 2]),
                )
                    .prop_map(move |(outs, ignore_sparse, priority)| Op::Pull {
                        keys: keys.clone(),
                        outs,
                        ignore_sparse,
                        priority,
                    })
            })
            .boxed()
    }

    fn row_sparse_pull_op(&self) -> BoxedStrategy<Op> {
        let leaf = self.leaf(90);
        let metas: Metas = Arc::new(self.keys.clone());
        Self::picks(self.pick())
            .prop_flat_map(ops::keys_of)
            .prop_flat_map(move |keys| {
                let leaf = Arc::clone(&leaf);
                // Ids up to the fewest rows of the keys pulled, so most calls are valid.
                let rows = ops::leaves(&keys_as_values(&keys))
                    .into_iter()
                    .filter_map(|k| metas.get(k).map(|m| m.shape[0]))
                    .min()
                    .unwrap_or(5);
                ops::values_for(&keys, &leaf).prop_flat_map(move |outs| {
                    let keys = keys.clone();
                    let count = ops::leaves(&outs).len();
                    (ops::row_ids(count, rows), select(vec![0, 0, -1])).prop_map(
                        move |(row_ids, priority)| Op::RowSparsePull {
                            keys: keys.clone(),
                            outs: outs.clone(),
                            row_ids,
                            priority,
                        },
                    )
                })
            })
            .boxed()
    }

    fn pushpull_op(&self) -> BoxedStrategy<Op> {
        let leaf = self.value_leaf();
        let out_leaf = self.leaf(10);
        Self::picks(self.pick())
            .prop_flat_map(ops::keys_of)
            .prop_flat_map(move |keys| {
                let outs = prop_oneof![
                    2 => ops::values_for(&keys, &out_leaf).prop_map(Some),
                    1 => Just(None),
                ];
                (ops::values_for(&keys, &leaf), outs).prop_map(move |(values, outs)| Op::PushPull {
                    keys: keys.clone(),
                    values,
                    outs,
                })
            })
            .boxed()
    }

    /// A slot for a key: mostly a recent one of the key's shape.
    fn slot_leaf(&self) -> LeafFn<usize> {
        let metas: Metas = Arc::new(self.keys.clone());
        let first = self.slots.len().saturating_sub(RECENT_SLOTS);
        let recent: Vec<(usize, SlotMeta)> =
            self.slots.iter().cloned().enumerate().skip(first).collect();
        Arc::new(move |k: &Key| {
            let fitting: Vec<usize> = recent
                .iter()
                .filter(|(_, s)| metas.get(k).is_some_and(|m| m.shape == s.shape))
                .map(|(i, _)| *i)
                .collect();
            let any: Vec<usize> = recent.iter().map(|(i, _)| *i).collect();
            if fitting.is_empty() {
                select(any).boxed()
            } else {
                prop_oneof![10 => select(fitting), 1 => select(any)].boxed()
            }
        })
    }

    fn slot_ops(&self) -> BoxedStrategy<Op> {
        let leaf = self.slot_leaf();
        Self::picks(self.pick())
            .prop_flat_map(ops::keys_of)
            .prop_flat_map(move |keys| {
                let push = (ops::values_for(&keys, &leaf), select(vec![0, 0, 3])).prop_map({
                    let keys = keys.clone();
                    move |(slots, priority)| Op::PushSlots {
                        keys: keys.clone(),
                        slots,
                        priority,
                    }
                });
                let pull = (ops::values_for(&keys, &leaf), prop::bool::weighted(0.8)).prop_map(
                    move |(slots, ignore_sparse)| Op::PullSlots {
                        keys: keys.clone(),
                        slots,
                        ignore_sparse,
                    },
                );
                prop_oneof![push, pull]
            })
            .boxed()
    }

    fn updater_op(&self) -> BoxedStrategy<Op> {
        let factor = select(vec![1.0f32, 2.0, -0.5]);
        prop_oneof![
            2 => factor.clone().prop_map(UpdaterKind::AddF32),
            3 => factor.prop_map(UpdaterKind::AddKeepDtype),
            2 => self.pick().prop_map(UpdaterKind::FailOnKey),
            2 => select(vec![10.0f32, 50.0]).prop_map(UpdaterKind::FailAbove),
        ]
        .prop_map(Op::SetUpdater)
        .boxed()
    }

    fn state_file_ops(&self) -> BoxedStrategy<Op> {
        let file = 0u8..3;
        let written: Vec<u8> = self.files.iter().copied().collect();
        let load_from = if written.is_empty() {
            file.clone().boxed()
        } else {
            prop_oneof![5 => select(written), 1 => file.clone()].boxed()
        };
        prop_oneof![
            3 => (file.clone(), any::<bool>())
                .prop_map(|(file, dump_optimizer)| Op::SaveStates { file, dump_optimizer }),
            3 => load_from.prop_map(|file| Op::LoadStates { file }),
            2 => (
                file.clone(),
                self.pick(),
                proptest::option::of(ops::shape()),
                proptest::option::weighted(0.3, ops::sgd()),
            )
                .prop_map(|(file, key, momentum, optimizer)| Op::WriteStates {
                    file,
                    key,
                    momentum,
                    optimizer,
                }),
            1 => file.prop_map(|file| Op::CorruptStates { file }),
        ]
        .boxed()
    }
}

/// The keys of a call as a values list, to walk them with [`ops::leaves`].
fn keys_as_values(keys: &Keys) -> Values<Key> {
    match keys {
        Keys::One(k) => Values::One(k.clone()),
        Keys::List(ks) => Values::List(ks.iter().cloned().map(kvstore::Item::One).collect()),
    }
}

fn compression_op() -> BoxedStrategy<Op> {
    prop_oneof![
        (
            Just(CompressionType::TwoBit),
            select(vec![0.5f32, 1.0, 2.0])
        ),
        (
            Just(CompressionType::OneBit),
            select(vec![0.5f32, 1.0, 2.0, 0.0, -0.5])
        ),
    ]
    .prop_map(|(kind, threshold)| Op::SetCompression(Compression::new(kind, threshold).unwrap()))
    .boxed()
}
