//! Random programs on real processes against the spec (R49-R52, R55-R57, R59, R60, R63): a
//! proptest generates W workers (1-3), S servers (1-2), a big-array bound (small, so dense keys
//! are sliced across the servers, or the default), a store kind (dist_sync, dist_device_sync,
//! or dist_sync with 2-bit compression), a few keys (dense 1-D and 2-D, a row_sparse one when
//! uncompressed, now and then one with no elements) and a program that every worker runs with
//! its own values: init (rank 0's values are stored), push (several values of one key are a
//! device merge; some values have the other storage type than their key's), pull,
//! row_sparse_pull (ids repeated, unsorted or out of range, one list or one per key), pushpull
//! (empty key lists included), barrier, wait_all, set_gradient_compression, set_optimizer, and
//! mistakes (unknown keys, wrong shapes, wrong row id counts, a second init, an invalid
//! optimizer).
//!
//! Each case is one `mpirun` job of `kvstore-mpi-check script`, which prints every worker's
//! result of every op. The expected results come from the spec's `DistStore`: each op's pushes
//! in rank order, then its reads. Every worker makes the same pushes, so a pull (which waits
//! for the round of the worker's own last push, R52) sees exactly the rounds of the pushes
//! before it, which is the spec's value once every worker has pushed. Values are compared with
//! `==` (bit for bit, every NaN equal, R60), errors as typed values. Values are mostly multiples
//! of 0.25, but also arbitrary floats whose sums round: the rank order of the sums makes them
//! reproducible.
//!
//! `PROPTEST_CASES` sets the number of jobs (default 16, about half a second each);
//! `PROPTEST_MAX_SHRINK_ITERS` bounds the jobs spent shrinking a failure (default 64). A failure
//! prints the program up to its first wrong op and a command that reruns it. Needs the `mpi`
//! feature and OpenMPI's `mpirun`, and says SKIPPED without it.
#![cfg(feature = "mpi")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "../src/bin/kvstore-mpi-check/script.rs"]
mod script;

use kvstore_spec::codec::{Compression, CompressionType};
use kvstore_spec::dist::DistStore;
use kvstore_spec::kind::Kind;
use kvstore_spec::optimizer::{Adam, Ftrl, LrScheduler, Nag, Optimizer, RmsProp, Sgd, WarmupMode};
use kvstore_spec::{DType, Device, Error, Key, RowSparse, Tensor, Value};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner};
use script::{Line, Op, RowPull, Script};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

fn mpirun_available() -> bool {
    Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One key of a case: its id, shape and storage type.
#[derive(Debug, Clone, PartialEq)]
struct KeySpec {
    key: Key,
    shape: Vec<usize>,
    sparse: bool,
}

impl KeySpec {
    fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }
}

/// One generated job.
#[derive(Debug, Clone)]
struct Case {
    workers: usize,
    servers: usize,
    /// `KVSTORE_BIG_ARRAY_BOUND`; `None` keeps the default (nothing is sliced).
    bound: Option<usize>,
    /// dist_sync, dist_device_sync or dist_sync_2bit (dist_sync whose first op sets 2-bit
    /// compression).
    mode: &'static str,
    /// The keys the program uses; the last one is never initialised.
    keys: Vec<KeySpec>,
    script: Script,
}

impl Case {
    fn kind(&self) -> &'static str {
        self.mode.trim_end_matches("_2bit")
    }

    fn shape_of(&self, key: &Key) -> Vec<usize> {
        self.keys
            .iter()
            .find(|k| &k.key == key)
            .map_or_else(|| vec![1], |k| k.shape.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// Generation
//
// Proptest generates a flat `Plan` and `build` turns it into a script. Nothing in a plan depends
// on another generated choice, so shrinking works: ops are dropped one by one, key choices go
// to the first key, worker counts to 1 and value seeds to 0 (zeros). Every list that holds one
// entry per worker holds three (the most workers), of which a job uses the first W.
// ---------------------------------------------------------------------------------------------

const MAX_WORKERS: usize = 3;

/// A key an op names: one of the keys that get initialised (by index, modulo their number), or
/// the one that never is.
#[derive(Debug, Clone, Copy)]
enum KeyGen {
    Known(u8),
    Ghost,
}

fn key_gen() -> impl Strategy<Value = KeyGen> {
    prop_oneof![30 => (0u8..8).prop_map(KeyGen::Known), 1 => Just(KeyGen::Ghost)]
}

/// Up to `max` keys, now and then none.
fn key_gens(max: usize) -> impl Strategy<Value = Vec<KeyGen>> {
    prop_oneof![1 => Just(Vec::new()), 12 => prop::collection::vec(key_gen(), 1..=max)]
}

/// A row id: mostly a row of the key (modulo its rows, so repeated and unsorted), sometimes
/// out of range.
#[derive(Debug, Clone, Copy)]
enum IdGen {
    Row(u8),
    Negative,
    Past(u8),
}

fn id_gen() -> impl Strategy<Value = IdGen> {
    prop_oneof![
        40 => (0u8..8).prop_map(IdGen::Row),
        1 => Just(IdGen::Negative),
        1 => (0u8..3).prop_map(IdGen::Past),
    ]
}

/// How many row id lists a row_sparse_pull gives.
#[derive(Debug, Clone, Copy)]
enum Lists {
    /// One list for every key.
    One,
    /// One list per key.
    PerKey,
    /// A count that is neither (a mistake: `RowIdsCountMismatch`).
    Wrong,
}

/// One key of a push, the same for every worker so that every worker's push succeeds or fails
/// alike and rounds stay even; only the values differ between workers.
#[derive(Debug, Clone)]
struct EntryGen {
    key: KeyGen,
    /// One flag per value (two values are a device merge, R17): whether the value has the other
    /// storage type than the key's (a row_sparse push into a dense key or the reverse, R19,
    /// R56).
    flips: Vec<bool>,
    /// Whether the values have a wrong shape (a mistake: `ShapeMismatch`).
    wrong: bool,
    /// Each worker's value seed.
    seeds: Vec<u64>,
}

fn entry_gen() -> impl Strategy<Value = EntryGen> {
    let flip = prop_oneof![4 => Just(false), 1 => Just(true)];
    (
        key_gen(),
        prop::collection::vec(flip, 1..=2),
        prop::bool::weighted(0.04),
        prop::collection::vec(any::<u64>(), MAX_WORKERS),
    )
        .prop_map(|(key, flips, wrong, seeds)| EntryGen {
            key,
            flips,
            wrong,
            seeds,
        })
}

fn entry_gens(max: usize) -> impl Strategy<Value = Vec<EntryGen>> {
    prop_oneof![1 => Just(Vec::new()), 12 => prop::collection::vec(entry_gen(), 1..=max)]
}

/// One worker's row_sparse_pull.
#[derive(Debug, Clone)]
struct RowPullGen {
    keys: Vec<KeyGen>,
    lists: Lists,
    /// The id lists, used in turn.
    ids: Vec<Vec<IdGen>>,
}

fn row_pull_gen() -> impl Strategy<Value = RowPullGen> {
    let lists =
        prop_oneof![6 => Just(Lists::One), 6 => Just(Lists::PerKey), 1 => Just(Lists::Wrong)];
    (
        key_gens(3),
        lists,
        prop::collection::vec(prop::collection::vec(id_gen(), 0..=4), 1..=4),
    )
        .prop_map(|(keys, lists, ids)| RowPullGen { keys, lists, ids })
}

#[derive(Debug, Clone)]
enum OpGen {
    Push(Vec<EntryGen>),
    PushPull(Vec<EntryGen>),
    /// Each worker's keys.
    Pull(Vec<Vec<KeyGen>>),
    /// Each worker's keys and ids.
    RowSparsePull(Vec<RowPullGen>),
    Barrier,
    WaitAll,
    Compression(Compression),
    Optimizer(Optimizer),
    /// A later init of some known keys (the one left out at first, or one already stored:
    /// `DuplicateInit`), `twice` naming the first one again (`DuplicateInit` too).
    Init {
        keys: Vec<u8>,
        twice: bool,
        seeds: Vec<u64>,
    },
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        prop::sample::select(vec![0.25f32, 0.5, 1.0, 2.0]).prop_map(|t| Compression::new(
            CompressionType::TwoBit,
            t
        )
        .unwrap()),
        prop::sample::select(vec![0.0f32, 0.25, -0.5]).prop_map(|t| Compression::new(
            CompressionType::OneBit,
            t
        )
        .unwrap()),
    ]
}

/// An optimizer of any kind with MXNet's knobs (SGD's carried over); a negative clip bound is
/// a mistake (`InvalidOptimizer`).
fn optimizer() -> impl Strategy<Value = Optimizer> {
    (
        prop::sample::select(vec![1.0f64, 0.5, 0.1, 0.01]),
        prop::sample::select(vec![0.0f64, 0.9]),
        prop::sample::select(vec![0.0f64, 0.1]),
        prop::sample::select(vec![1.0f64, 0.5]),
        prop::sample::select(vec![None, Some(1.0f64), Some(0.0), Some(-1.0)]),
        0u8..6,
    )
        .prop_map(
            |(learning_rate, momentum, wd, rescale_grad, clip_gradient, kind)| match kind {
                0 | 1 => Optimizer::Sgd(Sgd {
                    learning_rate,
                    momentum,
                    wd,
                    rescale_grad,
                    clip_gradient,
                    lr_scheduler: None,
                }),
                2 => Optimizer::Adam(Adam {
                    learning_rate,
                    wd,
                    rescale_grad,
                    clip_gradient,
                    ..Adam::default()
                }),
                3 => Optimizer::RmsProp(RmsProp {
                    learning_rate,
                    wd,
                    rescale_grad,
                    clip_gradient,
                    centered: true,
                    ..RmsProp::default()
                }),
                4 => Optimizer::Nag(Nag {
                    learning_rate,
                    momentum,
                    wd,
                    rescale_grad,
                    clip_gradient,
                    lr_scheduler: Some(LrScheduler::Factor {
                        step: 2,
                        factor: 0.5,
                        stop_factor_lr: 1e-8,
                        warmup_steps: 0,
                        warmup_begin_lr: 0.0,
                        warmup_mode: WarmupMode::Linear,
                    }),
                }),
                _ => Optimizer::Ftrl(Ftrl {
                    learning_rate,
                    wd,
                    rescale_grad,
                    clip_gradient,
                    ..Ftrl::default()
                }),
            },
        )
}

fn op_gen() -> impl Strategy<Value = OpGen> {
    let init = (
        prop::collection::vec(0u8..8, 1..=3),
        prop::bool::weighted(0.2),
        prop::collection::vec(any::<u64>(), MAX_WORKERS),
    )
        .prop_map(|(keys, twice, seeds)| OpGen::Init { keys, twice, seeds });
    prop_oneof![
        5 => entry_gens(3).prop_map(OpGen::Push),
        4 => entry_gens(2).prop_map(OpGen::PushPull),
        3 => prop::collection::vec(key_gens(3), MAX_WORKERS).prop_map(OpGen::Pull),
        3 => prop::collection::vec(row_pull_gen(), MAX_WORKERS).prop_map(OpGen::RowSparsePull),
        1 => Just(OpGen::Barrier),
        1 => Just(OpGen::WaitAll),
        1 => compression().prop_map(OpGen::Compression),
        1 => optimizer().prop_map(OpGen::Optimizer),
        1 => init,
    ]
}

/// Everything a job is made of.
#[derive(Debug, Clone)]
struct Plan {
    workers: usize,
    servers: usize,
    bound: Option<usize>,
    mode: &'static str,
    /// Key ids, in the order the keys below take them.
    ids: Vec<i64>,
    /// A dense 1-D key, a dense 2-D key, and (unless compressed) a row_sparse key; now and then
    /// one has no elements at all.
    one_d: usize,
    two_d: (usize, usize),
    sparse: Option<Vec<usize>>,
    /// The first init leaves this key out (a later init may add it).
    left_out: Option<u8>,
    init_seeds: Vec<u64>,
    ops: Vec<OpGen>,
}

fn plan() -> impl Strategy<Value = Plan> {
    let mode = prop::sample::select(vec!["dist_sync", "dist_device_sync", "dist_sync_2bit"]);
    let bound = prop_oneof![1 => Just(None), 3 => (1usize..=6).prop_map(Some)];
    let rows = || prop_oneof![10 => 1usize..=4, 1 => Just(0usize)];
    let sparse = prop::option::weighted(
        0.7,
        prop_oneof![
            3 => (rows(), 1usize..=3).prop_map(|(r, c)| vec![r, c]),
            1 => rows().prop_map(|r| vec![r]),
        ],
    );
    let jobs = (1usize..=MAX_WORKERS, 1usize..=2, bound, mode);
    let keys = (
        Just(vec![3i64, -5, 8, 12, 0, 7]).prop_shuffle(),
        prop_oneof![10 => 1usize..=6, 1 => Just(0usize)],
        (rows(), 1usize..=3),
        sparse,
    );
    let init = (
        prop::option::weighted(0.15, 0u8..8),
        prop::collection::vec(any::<u64>(), MAX_WORKERS),
    );
    let ops = prop::collection::vec(op_gen(), 1..=16);
    (jobs, keys, init, ops).prop_map(
        |(
            (workers, servers, bound, mode),
            (ids, one_d, two_d, sparse),
            (left_out, init_seeds),
            ops,
        )| {
            Plan {
                workers,
                servers,
                bound,
                mode,
                ids,
                one_d,
                two_d,
                sparse,
                left_out,
                init_seeds,
                ops,
            }
        },
    )
}

/// splitmix64: the values of a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, salt: u64) -> Rng {
        Rng(seed ^ salt.wrapping_mul(0xA24B_AED4_963E_E407))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Mostly small multiples of 0.25 (exact in any order), some arbitrary floats (sums that
    /// round, which only rank order makes reproducible), now and then a special value (R60).
    fn element(&mut self) -> f32 {
        const SPECIAL: [f32; 7] = [
            -0.0,
            f32::MIN_POSITIVE,
            1e-45,
            3e38,
            -3e38,
            f32::INFINITY,
            f32::NAN,
        ];
        match self.below(10) {
            0..=5 => (self.below(33) as f32 - 16.0) * 0.25,
            6..=8 => (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2000.0 - 1000.0,
            _ => SPECIAL[self.below(SPECIAL.len() as u64) as usize],
        }
    }
}

/// A value of `shape` from a seed: seed 0 is zeros (dense) or no rows (row_sparse); otherwise
/// random elements, and for row_sparse a random set of rows.
fn value(shape: &[usize], sparse: bool, seed: u64, salt: u64) -> Value {
    let mut rng = Rng::new(seed, salt);
    if sparse {
        let rows = shape.first().copied().unwrap_or(0);
        let row_len: usize = shape.iter().skip(1).product();
        let ids: Vec<i64> = (0..rows as i64)
            .filter(|_| seed != 0 && rng.below(2) == 0)
            .collect();
        let data: Vec<f32> = (0..ids.len() * row_len).map(|_| rng.element()).collect();
        return Value::RowSparse(RowSparse::new(shape.to_vec(), ids, data).unwrap());
    }
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| if seed == 0 { 0.0 } else { rng.element() })
        .collect();
    Value::Dense(Tensor::new(shape.to_vec(), data).unwrap())
}

/// A shape that is not `shape`: one more row.
fn wrong_shape(shape: &[usize]) -> Vec<usize> {
    let mut wrong = shape.to_vec();
    if let Some(rows) = wrong.first_mut() {
        *rows += 1;
    }
    wrong
}

/// The job a plan describes.
fn build(plan: &Plan) -> Case {
    let compressed = plan.mode.ends_with("_2bit");
    let id = |i: usize| Key::Int(plan.ids[i]);
    let mut keys = vec![
        KeySpec {
            key: id(0),
            shape: vec![plan.one_d],
            sparse: false,
        },
        KeySpec {
            key: id(1),
            shape: vec![plan.two_d.0, plan.two_d.1],
            sparse: false,
        },
    ];
    if let (Some(shape), false) = (&plan.sparse, compressed) {
        keys.push(KeySpec {
            key: id(2),
            shape: shape.clone(),
            sparse: true,
        });
    }
    let known = keys.len();
    keys.push(KeySpec {
        key: id(3),
        shape: vec![2],
        sparse: false,
    });
    let w = plan.workers;
    let index = |k: KeyGen| match k {
        KeyGen::Known(i) => usize::from(i) % known,
        KeyGen::Ghost => known,
    };
    let init = |subset: &[usize], seeds: &[u64]| Op::Init {
        per_rank: (0..w)
            .map(|r| {
                subset
                    .iter()
                    .map(|&k| {
                        let spec = &keys[k];
                        let v = value(&spec.shape, spec.sparse, seeds[r], k as u64);
                        (spec.key.clone(), v)
                    })
                    .collect()
            })
            .collect(),
    };
    // With compression on, a row_sparse value is a mistake (R55: dense f32 only), so every value
    // is dense (the row_sparse key's too), except in pushes that fail anyway (a wrong shape, an
    // unknown key), where the generated storage types decide which error comes first (R59).
    let pairs = |entries: &[EntryGen], compressed: bool| -> Vec<Vec<(Key, Value)>> {
        let failing = entries.iter().any(|e| e.wrong || index(e.key) == known);
        (0..w)
            .map(|r| {
                let mut pairs = Vec::new();
                for e in entries {
                    let spec = &keys[index(e.key)];
                    let shape = if e.wrong {
                        wrong_shape(&spec.shape)
                    } else {
                        spec.shape.clone()
                    };
                    // A row_sparse push into a key sliced across servers is refused by design
                    // where the spec accepts it (docs/distributed.md): those keys get dense
                    // values only.
                    let numel: usize = spec.shape.iter().product();
                    let sliced = plan.servers >= 2
                        && numel >= 2
                        && plan.bound.is_some_and(|b| numel >= b)
                        && !spec.sparse;
                    for (d, &flip) in e.flips.iter().enumerate() {
                        let sparse = if (compressed && !failing) || sliced {
                            false
                        } else {
                            spec.sparse != flip
                        };
                        let v = value(&shape, sparse, e.seeds[r], d as u64);
                        pairs.push((spec.key.clone(), v.on(Device::Gpu(d as u32))));
                    }
                }
                pairs
            })
            .collect()
    };
    let names =
        |ks: &[KeyGen]| -> Vec<Key> { ks.iter().map(|&k| keys[index(k)].key.clone()).collect() };
    let mut ops = Vec::new();
    if compressed {
        ops.push(Op::SetGradientCompression {
            compression: Compression::new(CompressionType::TwoBit, 0.5).unwrap(),
        });
    }
    let left_out = plan.left_out.map(|i| usize::from(i) % known);
    let first: Vec<usize> = (0..known)
        .filter(|&k| known == 1 || Some(k) != left_out)
        .collect();
    ops.push(init(&first, &plan.init_seeds));
    let mut compressing = compressed;
    for op in &plan.ops {
        ops.push(match op {
            OpGen::Push(entries) => Op::Push {
                per_rank: pairs(entries, compressing),
            },
            OpGen::PushPull(entries) => Op::PushPull {
                per_rank: pairs(entries, compressing),
            },
            OpGen::Pull(per) => Op::Pull {
                per_rank: per.iter().take(w).map(|ks| names(ks)).collect(),
            },
            OpGen::RowSparsePull(per) => Op::RowSparsePull {
                per_rank: per
                    .iter()
                    .take(w)
                    .map(|g| {
                        let rows: Vec<usize> =
                            g.keys.iter().map(|&k| keys[index(k)].rows()).collect();
                        let fewest = rows.iter().copied().min().unwrap_or(0);
                        let n = g.keys.len();
                        let list_rows: Vec<usize> = match g.lists {
                            Lists::One => vec![fewest],
                            Lists::PerKey => rows.clone(),
                            Lists::Wrong => vec![fewest; if n <= 1 { 2 } else { n + 1 }],
                        };
                        let row_ids = list_rows
                            .iter()
                            .enumerate()
                            .map(|(j, &rows)| {
                                g.ids[j % g.ids.len()]
                                    .iter()
                                    .map(|&id| match id {
                                        IdGen::Row(x) => (usize::from(x) % rows.max(1)) as i64,
                                        IdGen::Negative => -1,
                                        IdGen::Past(x) => (rows + usize::from(x)) as i64,
                                    })
                                    .collect()
                            })
                            .collect();
                        RowPull {
                            keys: names(&g.keys),
                            row_ids,
                        }
                    })
                    .collect(),
            },
            OpGen::Barrier => Op::Barrier,
            OpGen::WaitAll => Op::WaitAll,
            OpGen::Compression(compression) => {
                compressing = true;
                Op::SetGradientCompression {
                    compression: *compression,
                }
            }
            OpGen::Optimizer(optimizer) => Op::SetOptimizer {
                optimizer: optimizer.clone(),
            },
            OpGen::Init {
                keys: ks,
                twice,
                seeds,
            } => {
                let mut subset: Vec<usize> = ks.iter().map(|&k| usize::from(k) % known).collect();
                subset.dedup();
                if *twice {
                    subset.push(subset[0]);
                }
                init(&subset, seeds)
            }
        });
    }
    Case {
        workers: w,
        servers: plan.servers,
        bound: plan.bound,
        mode: plan.mode,
        keys,
        script: Script {
            kind: plan.mode.trim_end_matches("_2bit").into(),
            ops,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The spec's answers
// ---------------------------------------------------------------------------------------------

type Outcome = Result<Vec<Value>, Error>;

fn done(result: Result<(), Error>) -> Outcome {
    result.map(|()| Vec::new())
}

/// Dense outputs for a pull: the spec's `pull` only decides whether the call fails (its outputs
/// take the output's storage type); what a worker's pull returns is each key's stored value, in
/// its own storage type.
fn outputs(case: &Case, keys: &[Key]) -> Vec<(Key, Value)> {
    keys.iter()
        .map(|k| {
            let zeros = Tensor::zeros(case.shape_of(k), DType::F32).unwrap();
            (k.clone(), Value::Dense(zeros))
        })
        .collect()
}

fn stored(spec: &DistStore, keys: &[Key]) -> Vec<Value> {
    keys.iter()
        .map(|k| spec.value(k).cloned().expect("a key the spec pulled"))
        .collect()
}

/// The keys a pushpull pulls: the pushed keys in first-appearance order.
fn pushed_keys(pairs: &[(Key, Value)]) -> Vec<Key> {
    let mut keys: Vec<Key> = Vec::new();
    for (key, _) in pairs {
        if !keys.contains(key) {
            keys.push(key.clone());
        }
    }
    keys
}

/// Every worker's expected result of every op (and of the final `wait_all`), `[op][rank]`.
fn expected(case: &Case) -> Vec<Vec<Outcome>> {
    let w = case.workers;
    let mut spec = DistStore::new(Kind::parse(case.kind()).unwrap(), w).unwrap();
    let mut all = Vec::new();
    for op in &case.script.ops {
        let results: Vec<Outcome> = match op {
            Op::Init { per_rank } => vec![done(spec.init(per_rank)); w],
            Op::Push { per_rank } => (0..w).map(|r| done(spec.push(r, &per_rank[r]))).collect(),
            Op::PushPull { per_rank } => {
                let firsts: Vec<Result<Option<Vec<Value>>, Error>> = (0..w)
                    .map(|r| {
                        let outs = outputs(case, &pushed_keys(&per_rank[r]));
                        spec.pushpull(r, &per_rank[r], &outs)
                    })
                    .collect();
                // Every worker has pushed: the round is complete and every pull sees it.
                (0..w)
                    .map(|r| {
                        firsts[r].clone().map(|_| {
                            let keys = pushed_keys(&per_rank[r]);
                            let again = spec.pull(r, &outputs(case, &keys), true);
                            assert!(
                                matches!(again, Ok(Some(_))),
                                "the generated program left a round open: {again:?}"
                            );
                            stored(&spec, &keys)
                        })
                    })
                    .collect()
            }
            Op::Pull { per_rank } => (0..w)
                .map(|r| {
                    let keys = &per_rank[r];
                    match spec.pull(r, &outputs(case, keys), true) {
                        Ok(Some(_)) => Ok(stored(&spec, keys)),
                        Ok(None) => panic!("the generated program left a round open"),
                        Err(e) => Err(e),
                    }
                })
                .collect(),
            Op::RowSparsePull { per_rank } => (0..w)
                .map(|r| {
                    let RowPull { keys, row_ids } = &per_rank[r];
                    let outs: Vec<(Key, Value)> = keys
                        .iter()
                        .map(|k| {
                            let empty = RowSparse::empty(case.shape_of(k), DType::F32).unwrap();
                            (k.clone(), Value::RowSparse(empty))
                        })
                        .collect();
                    match spec.row_sparse_pull(r, &outs, row_ids) {
                        Ok(Some(values)) => Ok(values),
                        Ok(None) => panic!("the generated program left a round open"),
                        Err(e) => Err(e),
                    }
                })
                .collect(),
            Op::Barrier | Op::WaitAll => vec![Ok(Vec::new()); w],
            Op::SetGradientCompression { compression } => {
                vec![done(spec.set_gradient_compression(*compression)); w]
            }
            Op::SetOptimizer { optimizer } => {
                let mut results = vec![Ok(Vec::new()); w];
                results[0] = done(spec.set_optimizer(0, optimizer.clone()));
                results
            }
        };
        all.push(results);
    }
    spec.check_quiescent()
        .expect("the generated program leaves no round open");
    all.push(vec![Ok(Vec::new()); w]);
    all
}

// ---------------------------------------------------------------------------------------------
// Running a job
// ---------------------------------------------------------------------------------------------

/// A fresh directory under the temp dir for one job: its script and its output.
fn job_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "kvstore-mpi-script-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every file named `stdout` under `dir` (mpirun's `--output-filename` layout,
/// `DIR/1/rank.N/stdout` in Open MPI 4).
fn stdout_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            stdout_files(&path, found);
        } else if path.file_name().is_some_and(|n| n == "stdout") {
            found.push(path);
        }
    }
}

/// Runs the case's job; returns each worker's lines by (op, rank), or why the job failed.
fn run_job(case: &Case, dir: &Path) -> Result<BTreeMap<(usize, usize), Vec<Outcome>>, String> {
    let path = dir.join("script.json");
    std::fs::write(&path, serde_json::to_string(&case.script).unwrap()).unwrap();
    let out_dir = dir.join("out");
    let mut command = Command::new("timeout");
    command
        .args(["120", "mpirun", "--oversubscribe", "-n"])
        .arg((case.workers + case.servers).to_string())
        // Each rank's stdout goes to its own file: lines of different ranks never interleave.
        .arg("--output-filename")
        .arg(&out_dir)
        .arg(env!("CARGO_BIN_EXE_kvstore-mpi-check"))
        .arg("script")
        .arg(&path)
        .arg(case.kind())
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("KVSTORE_NUM_SERVERS", case.servers.to_string())
        .env("KVSTORE_TIMEOUT_MS", "20000");
    match case.bound {
        Some(bound) => command.env("KVSTORE_BIG_ARRAY_BOUND", bound.to_string()),
        None => command.env_remove("KVSTORE_BIG_ARRAY_BOUND"),
    };
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(format!("the job failed ({}):\n{stderr}", output.status));
    }
    let mut files = Vec::new();
    stdout_files(&out_dir, &mut files);
    let mut text = String::new();
    for file in &files {
        text.push_str(&std::fs::read_to_string(file).unwrap());
        text.push('\n');
    }
    if files.is_empty() {
        text = String::from_utf8_lossy(&output.stdout).into_owned();
    }
    let mut lines: BTreeMap<(usize, usize), Vec<Outcome>> = BTreeMap::new();
    for raw in text.lines().filter(|l| l.starts_with('{')) {
        let line: Line = serde_json::from_str(raw)
            .map_err(|e| format!("an unreadable result line ({e}): {raw}"))?;
        lines
            .entry((line.op, line.rank))
            .or_default()
            .push(line.result);
    }
    Ok(lines)
}

/// Results compared so far (all cases), for the summary.
static COMPARED: AtomicUsize = AtomicUsize::new(0);

/// The last failing job, cut after its first wrong op, with the command that reruns it: when
/// shrinking ends, the last failure is the minimal one.
static LAST_FAILURE: Mutex<Option<(Script, String)>> = Mutex::new(None);

impl Case {
    /// The command that runs `path` as this case's job.
    fn command_line(&self, path: &Path) -> String {
        format!(
            "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 KVSTORE_NUM_SERVERS={} \
             {}mpirun --oversubscribe -n {} target/release/kvstore-mpi-check script {} {}",
            self.servers,
            self.bound
                .map_or_else(String::new, |b| format!("KVSTORE_BIG_ARRAY_BOUND={b} ")),
            self.workers + self.servers,
            path.display(),
            self.kind()
        )
    }

    /// A failure of this case at `op`: the message, with the script cut after `op`.
    fn failure(&self, op: usize, message: String) -> TestCaseError {
        let mut script = self.script.clone();
        script.ops.truncate(op + 1);
        let json = serde_json::to_string(&script).unwrap_or_default();
        let message = format!(
            "{message}\n{} workers + {} servers, {}, KVSTORE_BIG_ARRAY_BOUND={}\n\
             the script up to that op: {json}",
            self.workers,
            self.servers,
            self.mode,
            self.bound
                .map_or_else(|| "default".to_string(), |b| b.to_string()),
        );
        if let Ok(mut last) = LAST_FAILURE.lock() {
            *last = Some((script, self.command_line(Path::new("SCRIPT.json"))));
        }
        TestCaseError::fail(message)
    }
}

/// Runs one case and compares every worker's every result with the spec's.
fn check(case: &Case) -> Result<(), TestCaseError> {
    let expected = expected(case);
    let dir = job_dir();
    let job = run_job(case, &dir);
    std::fs::remove_dir_all(&dir).ok();
    let mut got = job.map_err(|e| case.failure(case.script.ops.len(), e))?;
    for (op, per_rank) in expected.iter().enumerate() {
        for (rank, want) in per_rank.iter().enumerate() {
            let what = case
                .script
                .ops
                .get(op)
                .map_or_else(|| "the final wait_all".to_string(), |o| format!("{o:?}"));
            let results = got.remove(&(op, rank)).unwrap_or_default();
            let [result] = results.as_slice() else {
                let message = format!(
                    "worker {rank} reported op {op} {} times\nop: {what}",
                    results.len()
                );
                return Err(case.failure(op, message));
            };
            if result != want {
                let message = format!(
                    "worker {rank}, op {op}: got {result:?}\nthe spec says {want:?}\nop: {what}"
                );
                return Err(case.failure(op, message));
            }
        }
    }
    if let Some(((op, rank), _)) = got.first_key_value() {
        let message = format!("worker {rank} reported op {op}, which the script does not have");
        return Err(case.failure(case.script.ops.len(), message));
    }
    let compared: usize = expected.iter().map(Vec::len).sum();
    COMPARED.fetch_add(compared, Ordering::Relaxed);
    Ok(())
}

fn env_number(name: &str) -> Option<u32> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn r51_r52_real_processes_match_the_spec_on_random_programs() {
    if !mpirun_available() {
        println!("SKIPPED: mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)");
        return;
    }
    // Each case is an mpirun job of a second or two: a few by default, more on request.
    let config = Config {
        cases: env_number("PROPTEST_CASES").unwrap_or(16),
        // Each shrinking step is a job too: a minute at most by default.
        max_shrink_iters: env_number("PROPTEST_MAX_SHRINK_ITERS").unwrap_or(64),
        source_file: Some(file!()),
        // tests/mpirun_script.proptest-regressions, replayed first on the next run.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    };
    let cases = config.cases;
    let started = Instant::now();
    let mut runner = TestRunner::new(config);
    match runner.run(&plan(), |plan| check(&build(&plan))) {
        Ok(()) => println!(
            "{cases} random programs matched the spec ({} results) in {:.2?}",
            COMPARED.load(Ordering::Relaxed),
            started.elapsed()
        ),
        Err(TestError::Fail(reason, _)) => {
            // The minimal failing script, kept for a rerun by hand.
            let rerun = LAST_FAILURE.lock().ok().and_then(|mut last| last.take());
            let rerun = rerun.map_or_else(String::new, |(script, command)| {
                let path = std::env::temp_dir().join(format!(
                    "kvstore-mpi-script-{}-failing.json",
                    std::process::id()
                ));
                let json = serde_json::to_string_pretty(&script).unwrap_or_default();
                std::fs::write(&path, json).ok();
                let path = path.display().to_string();
                format!("\nrerun it: {}", command.replace("SCRIPT.json", &path))
            });
            panic!("{reason}{rerun}")
        }
        Err(e) => panic!("{e}"),
    }
}
