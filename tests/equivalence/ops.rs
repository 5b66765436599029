//! The operations the state machine issues, and the strategies for their arguments.
//!
//! Arguments are kept as data (`Keys`, `Values<Value>`): each store builds its own arrays from
//! them, so the spec and the engine start every call from identical inputs and outputs.
//! Elements are mostly small multiples of 0.25, with arbitrary floats, `-0.0`, subnormals,
//! huge values (whose sums overflow), infinities and NaN mixed in.

use crate::updaters::UpdaterKind;
use kvstore::{
    AdaGrad, Adam, Compression, DType, Data, Device, Ftrl, Item, Key, Keys, LrScheduler, Nag,
    Optimizer, RmsProp, RowSparse, Sgd, Tensor, Value, Values, WarmupMode,
};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What an array an earlier op pulled into holds.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotMeta {
    pub shape: Vec<usize>,
}

/// What a key holds fixed: its init value's shape and dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyMeta {
    pub shape: Vec<usize>,
    pub dtype: DType,
}

/// One call on both stores.
#[derive(Debug, Clone)]
pub enum Op {
    Init {
        keys: Keys,
        values: Values<Value>,
    },
    /// With `from_arrays`, the values are passed as `NdArray`s that are overwritten right after
    /// the call (a push copies, R20).
    Push {
        keys: Keys,
        values: Values<Value>,
        priority: i32,
        from_arrays: bool,
    },
    Pull {
        keys: Keys,
        outs: Values<Value>,
        ignore_sparse: bool,
        priority: i32,
    },
    RowSparsePull {
        keys: Keys,
        outs: Values<Value>,
        row_ids: Vec<Vec<i64>>,
        priority: i32,
    },
    /// `outs: None` pulls into the pushed arrays themselves (in place, R34).
    PushPull {
        keys: Keys,
        values: Values<Value>,
        outs: Option<Values<Value>>,
    },
    Broadcast {
        keys: Keys,
        values: Values<Value>,
        outs: Values<Value>,
    },
    /// Pushes arrays earlier ops pulled into (indices into the slots, see
    /// [`crate::model::Model::slots`]); the engine reads them in engine order.
    PushSlots {
        keys: Keys,
        slots: Values<usize>,
        priority: i32,
    },
    /// Pulls into arrays earlier ops pulled into.
    PullSlots {
        keys: Keys,
        slots: Values<usize>,
        ignore_sparse: bool,
    },
    SetCompression(Compression),
    SetOptimizer(Optimizer),
    SetUpdater(UpdaterKind),
    SaveStates {
        file: u8,
        dump_optimizer: bool,
    },
    LoadStates {
        file: u8,
    },
    /// Writes a state file by hand: one key's momentum, possibly of a shape no key has.
    WriteStates {
        file: u8,
        key: Key,
        momentum: Option<Vec<usize>>,
        optimizer: Option<Sgd>,
    },
    /// Writes bytes that are no state file.
    CorruptStates {
        file: u8,
    },
    /// `value_of` a key.
    ValueOf(Key),
    WaitAll,
}

/// Shapes keys are created with.
pub const SHAPES: &[&[usize]] = &[&[4], &[3, 2], &[5, 3], &[1]];

pub fn shape() -> BoxedStrategy<Vec<usize>> {
    select(SHAPES).prop_map(<[usize]>::to_vec).boxed()
}

pub fn dtype() -> BoxedStrategy<DType> {
    prop_oneof![
        12 => Just(DType::F32),
        2 => Just(DType::F16),
        2 => Just(DType::F64),
        1 => Just(DType::BF16),
    ]
    .boxed()
}

pub fn device() -> BoxedStrategy<Device> {
    prop_oneof![
        4 => Just(Device::Cpu(0)),
        3 => Just(Device::Cpu(1)),
        2 => Just(Device::Cpu(2)),
        1 => Just(Device::Gpu(0)),
    ]
    .boxed()
}

pub fn element() -> BoxedStrategy<f64> {
    prop_oneof![
        10 => (-16i32..=16).prop_map(|i| f64::from(i) * 0.25),
        5 => -100.0f64..100.0,
        1 => Just(-0.0),
        1 => select(vec![1e30, -1e30, 3.0e38, -3.0e38, 1e-40, 65504.0, 70000.0, 0.1]),
        1 => select(vec![f64::INFINITY, f64::NEG_INFINITY, f64::NAN]),
    ]
    .boxed()
}

pub fn elements(n: usize) -> BoxedStrategy<Vec<f64>> {
    proptest::collection::vec(element(), n).boxed()
}

pub fn dense(shape: Vec<usize>, dtype: DType) -> BoxedStrategy<Value> {
    let n = shape.iter().product();
    elements(n)
        .prop_map(move |xs| {
            Value::Dense(Tensor::new(shape.clone(), Data::from_f64(dtype, &xs)).unwrap())
        })
        .boxed()
}

pub fn row_sparse(shape: Vec<usize>, dtype: DType) -> BoxedStrategy<Value> {
    let rows = shape[0];
    let row_len: usize = shape[1..].iter().product();
    let all: Vec<i64> = (0..rows as i64).collect();
    subsequence(all, 0..=rows)
        .prop_flat_map(move |ids| {
            let shape = shape.clone();
            elements(ids.len() * row_len).prop_map(move |xs| {
                let data = Data::from_f64(dtype, &xs);
                Value::RowSparse(RowSparse::new(shape.clone(), ids.clone(), data).unwrap())
            })
        })
        .boxed()
}

/// A value (or output) for a key: mostly of the key's shape and dtype; `sparse` of 100 are
/// row_sparse. An unknown key gets any shape and dtype.
pub fn value_for(meta: Option<&KeyMeta>, sparse: u32) -> BoxedStrategy<Value> {
    let shape = match meta {
        Some(m) => prop_oneof![20 => Just(m.shape.clone()), 1 => shape()].boxed(),
        None => shape(),
    };
    let dtype = match meta {
        Some(m) => prop_oneof![10 => Just(m.dtype), 1 => dtype()].boxed(),
        None => dtype(),
    };
    (shape, dtype, 0u32..100, device())
        .prop_flat_map(move |(shape, dtype, roll, device)| {
            let value = if roll < sparse {
                row_sparse(shape, dtype)
            } else {
                dense(shape, dtype)
            };
            value.prop_map(move |v| v.on(device))
        })
        .boxed()
}

/// The keys of a call: one key alone, or a list (duplicates allowed).
pub fn keys_of(picks: Vec<Key>) -> BoxedStrategy<Keys> {
    if picks.len() == 1 {
        let key = picks[0].clone();
        prop_oneof![3 => Just(Keys::One(key.clone())), 2 => Just(Keys::List(vec![key]))].boxed()
    } else {
        Just(Keys::List(picks)).boxed()
    }
}

/// Builds a leaf strategy for a key.
pub type LeafFn<T = Value> = Arc<dyn Fn(&Key) -> BoxedStrategy<T> + Send + Sync>;

/// Values (or outputs) shaped like `keys`: one key takes one value or a list of them (several
/// devices); a key list takes per key a value or a group of values.
pub fn values_for<T: Clone + std::fmt::Debug + 'static>(
    keys: &Keys,
    leaf: &LeafFn<T>,
) -> BoxedStrategy<Values<T>> {
    match keys {
        Keys::One(k) => prop_oneof![
            3 => leaf(k).prop_map(Values::One),
            2 => proptest::collection::vec(leaf(k), 1..=3)
                .prop_map(|vs| Values::List(vs.into_iter().map(Item::One).collect())),
        ]
        .boxed(),
        Keys::List(ks) => {
            let items: Vec<BoxedStrategy<Item<T>>> = ks
                .iter()
                .map(|k| {
                    prop_oneof![
                        3 => leaf(k).prop_map(Item::One),
                        1 => proptest::collection::vec(leaf(k), 1..=3).prop_map(Item::Group),
                    ]
                    .boxed()
                })
                .collect();
            items.prop_map(Values::List).boxed()
        }
    }
}

/// Rarely breaks the argument shape (R11): a missing item, a single value for a key list, an
/// empty group.
pub fn malformed<T: Clone + std::fmt::Debug + 'static>(
    values: BoxedStrategy<Values<T>>,
) -> BoxedStrategy<Values<T>> {
    (values, 0u32..100)
        .prop_map(|(values, roll)| match (values, roll) {
            (Values::List(mut items), 0) if !items.is_empty() => {
                items.pop();
                Values::List(items)
            }
            (Values::List(mut items), 1) if !items.is_empty() => match items.swap_remove(0) {
                Item::One(v) => Values::One(v),
                Item::Group(mut g) => Values::One(g.swap_remove(0)),
            },
            (Values::List(mut items), 2) if !items.is_empty() => {
                items[0] = Item::Group(Vec::new());
                Values::List(items)
            }
            (values, _) => values,
        })
        .boxed()
}

/// Every leaf of a values list, in order.
pub fn leaves<T>(values: &Values<T>) -> Vec<&T> {
    match values {
        Values::One(x) => vec![x],
        Values::List(items) => items
            .iter()
            .flat_map(|item| match item {
                Item::One(x) => vec![x],
                Item::Group(g) => g.iter().collect(),
            })
            .collect(),
    }
}

/// Row ids for a `row_sparse_pull` of `outputs` outputs of keys with up to `rows` rows:
/// unsorted, repeated, sometimes negative or out of range; one list, one per output, or
/// (rarely) a wrong number of lists.
pub fn row_ids(outputs: usize, rows: usize) -> BoxedStrategy<Vec<Vec<i64>>> {
    let rows = rows as i64;
    let id = prop_oneof![
        30 => 0..rows.max(1),
        1 => Just(-1i64),
        1 => Just(rows),
    ];
    let list = proptest::collection::vec(id, 0..=6).boxed();
    prop_oneof![
        6 => list.clone().prop_map(|l| vec![l]),
        3 => proptest::collection::vec(list.clone(), outputs),
        1 => proptest::collection::vec(list, 0..=3),
    ]
    .boxed()
}

/// SGD parameters, rarely invalid (R45).
pub fn sgd() -> BoxedStrategy<Sgd> {
    (
        prop_oneof![select(vec![0.1f64, 0.5, 1.0, 0.01]), 0.0f64..2.0],
        select(vec![0.0f64, 0.0, 0.9]),
        select(vec![0.0f64, 0.0, 0.01, 0.5]),
        select(vec![1.0f64, 1.0, 0.5, 2.0]),
        prop_oneof![
            3 => Just(None),
            2 => select(vec![0.5f64, 1.0, 10.0, 0.0]).prop_map(Some),
            1 => select(vec![-1.0f64, f64::NAN]).prop_map(Some),
        ],
    )
        .prop_map(
            |(learning_rate, momentum, wd, rescale_grad, clip_gradient)| Sgd {
                learning_rate,
                momentum,
                wd,
                rescale_grad,
                clip_gradient,
                lr_scheduler: None,
            },
        )
        .boxed()
}

/// Any optimizer (R70-R76), SGD's parameters carried over to the kind, sometimes with a
/// schedule.
pub fn optimizer() -> BoxedStrategy<Optimizer> {
    let schedule = prop_oneof![
        3 => Just(None),
        1 => (1u64..4, select(vec![0.5f64, 0.9])).prop_map(|(step, factor)| {
            Some(LrScheduler::Factor {
                step,
                factor,
                stop_factor_lr: 1e-8,
                warmup_steps: 1,
                warmup_begin_lr: 0.0,
                warmup_mode: WarmupMode::Linear,
            })
        }),
    ];
    (sgd(), 0u8..8, any::<bool>(), schedule)
        .prop_map(|(p, kind, flag, lr_scheduler)| {
            let Sgd {
                learning_rate,
                momentum,
                wd,
                rescale_grad,
                clip_gradient,
                ..
            } = p;
            match kind {
                0..=2 => Optimizer::Sgd(Sgd { lr_scheduler, ..p }),
                3 => Optimizer::Nag(Nag {
                    learning_rate,
                    momentum,
                    wd,
                    rescale_grad,
                    clip_gradient,
                    lr_scheduler,
                }),
                4 => Optimizer::Adam(Adam {
                    learning_rate,
                    wd,
                    rescale_grad,
                    clip_gradient,
                    lr_scheduler,
                    lazy_update: flag,
                    ..Adam::default()
                }),
                5 => Optimizer::AdaGrad(AdaGrad {
                    learning_rate,
                    wd,
                    rescale_grad,
                    clip_gradient,
                    lr_scheduler,
                    ..AdaGrad::default()
                }),
                6 => Optimizer::RmsProp(RmsProp {
                    learning_rate,
                    wd,
                    rescale_grad,
                    clip_gradient,
                    lr_scheduler,
                    centered: flag,
                    clip_weights: flag.then_some(2.0),
                    ..RmsProp::default()
                }),
                _ => Optimizer::Ftrl(Ftrl {
                    learning_rate,
                    wd,
                    rescale_grad,
                    clip_gradient,
                    lr_scheduler,
                    ..Ftrl::default()
                }),
            }
        })
        .boxed()
}

/// Metadata lookups for leaf builders.
pub type Metas = Arc<BTreeMap<Key, KeyMeta>>;
