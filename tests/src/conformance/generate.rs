//! Random traces for the differential suite, and the model that keeps them inside the part of
//! MXNet 1.9.1's behaviour that kvstore must reproduce.
//!
//! A trace is built op by op. Every candidate op goes through [`Model::next`], a small model of
//! what both stores hold (key specs, which keys MXNet aliases to a reduction buffer, residual
//! slots, the updater, saved state files). The model admits an op when both implementations
//! must agree on it, and rejects it with the [`Avoid`] reason otherwise; every reason is a row
//! of [`DIVERGENCES`], the one list of what the suite steers clear of. The shrinker runs the
//! same model over every candidate it tries ([`check_trace`]), so a shrunk trace never wanders
//! into an avoided case either.
//!
//! Values are multiples of 0.25 in `[-4, 4]` plus a few general numbers; a key that receives
//! three or more values in one push gets only the exact ones, so every sum is exact whatever
//! order an implementation adds in.

use kvstore::normalize::{normalize, Item, Keys, Values};
use kvstore::trace::{Op, RowIdsArg, UpdaterSpec};
use kvstore::{DType, Data, Device, Error, Key, KeyType, Optimizer, RowSparse, Sgd, Tensor, Value};
use std::collections::{BTreeMap, BTreeSet};

// ---------------------------------------------------------------------------------------------
// What the generator avoids
// ---------------------------------------------------------------------------------------------

/// Why the model refuses an op: each variant is one row of [`DIVERGENCES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Avoid {
    /// Python-only and distributed store kinds.
    StoreKind,
    /// An init that would store part of its keys before failing.
    PartialInit,
    /// Any op on an int key that was never initialised.
    UninitIntKey,
    /// A failing call that would keep part of its effect in MXNet.
    PartialFailure,
    /// A call whose failure would still fix the store's key type in MXNet.
    UnfixedKeyType,
    /// Int keys outside MXNet's 32-bit range.
    WideIntKey,
    /// Argument shapes MXNet rejects differently (or crashes on).
    BadArguments,
    /// A pushed value whose dtype or storage type is not the key's.
    PushTypeChange,
    /// A pushed value whose shape is not the key's.
    PushShape,
    /// Three or more values of one key with non-exact numbers.
    SumOrder,
    /// With an updater set, a push that writes the reduction buffer the stored value aliases.
    UpdaterAliasing,
    /// An updater that fails inside MXNet (errors are swallowed there).
    UpdaterError,
    /// Outputs on GPUs (CPU<->GPU copies need equal dtypes in MXNet).
    GpuDevice,
    /// A pull whose outputs for a key are all row_sparse and skipped.
    AllSkipped,
    /// A dense value pulled into a row_sparse output with `ignore_sparse=false`.
    DenseToRowSparse,
    /// `row_sparse_pull` from a key stored dense.
    RowSparsePullDense,
    /// `row_sparse_pull` from a row_sparse value with no rows.
    NoRows,
    /// A row id outside the key's rows.
    RowIdRange,
    /// One row-id list for several outputs through a key list.
    OneRowIdList,
    /// 1-bit compression, non-finite thresholds.
    CompressionType,
    /// Compressed pushes whose devices do not keep one slot per position.
    ResidualSlots,
    /// Compression of a row_sparse or non-float32 value.
    CompressionValue,
    /// Compression parameters changed while residuals exist.
    ResidualReset,
    /// SGD parameters MXNet does not validate.
    InvalidOptimizer,
    /// Loading a state file the store did not save under the same optimizer.
    StateFiles,
    /// A push with more values than the key's reduction buffers were sized for.
    ReduceBuffers,
    /// More than 16 pairs in one push (MXNet's key sort is no longer stable).
    UnstableSort,
    /// Several outputs of one key with different dtypes or storage types on a `device` store.
    DeviceChain,
    /// A `row_sparse_pull` output whose dtype is not the key's.
    RowSparsePullDtype,
    /// A row_sparse value pulled into a dense output other than float32 from float32.
    RowSparseToDense,
    /// A row_sparse output of the wrong shape that a pull would skip.
    SkippedShape,
    /// `clip_gradient=0` and negative momentum.
    SgdFalsyParams,
    /// SGD on a row_sparse key whose stored value lacks rows.
    SgdSparseRows,
    /// The accumulate updater on a row_sparse key.
    AccumulateRowSparse,
    /// bfloat16 and custom updaters (MXNet's Python API has neither).
    Inexpressible,
}

/// One avoided or re-targeted divergence.
#[derive(Debug, Clone, Copy)]
pub struct Divergence {
    /// The model's reason code.
    pub id: Avoid,
    /// The SPEC rule(s) involved.
    pub rule: &'static str,
    /// Where the case is recorded: SPEC's divergence table, semantics.md, or "unlisted" for
    /// cases this suite found and reported.
    pub source: &'static str,
    /// What MXNet 1.9.1 does.
    pub mxnet: &'static str,
    /// What the generator does instead.
    pub how: &'static str,
}

/// Every divergence the generator avoids or re-targets, with its rule and reason.
pub const DIVERGENCES: &[Divergence] = &[
    Divergence {
        id: Avoid::StoreKind,
        rule: "R2, R6, R48-R58",
        source: "SPEC table (R6, R49-R58, R2)",
        mxnet: "teststore/horovod/byteps are Python stores; dist kinds need a DMLC cluster",
        how: "only `local` and `device` stores are created",
    },
    Divergence {
        id: Avoid::PartialInit,
        rule: "R7, R13",
        source: "SPEC table (R7, decision 2)",
        mxnet: "init([5,5], ..) and init(k, [v1, v2]) store the first value, then fail",
        how: "an init names each key once with one value; a failing init names only keys that exist",
    },
    Divergence {
        id: Avoid::UninitIntKey,
        rule: "R7, R14",
        source: "SPEC table (R14, decision 3); semantics 2.4",
        mxnet: "a failed lookup poisons an int key (a later init fails); a multi-value push of an unknown int key crashes a local store",
        how: "no op touches an uninitialised int key; unknown-key errors use never-initialised string keys (rejected by the lookup, no side effect)",
    },
    Divergence {
        id: Avoid::PartialFailure,
        rule: "R7, R34",
        source: "SPEC table (R7, decision 2)",
        mxnet: "a failing multi-key call keeps the keys done before the failure; a pushpull whose pull half fails keeps its push",
        how: "failing pushes fail at the lookup before anything runs; pushpull and broadcast outputs are always valid",
    },
    Divergence {
        id: Avoid::UnfixedKeyType,
        rule: "R8",
        source: "SPEC table (R8, decision 16)",
        mxnet: "an empty call, or a failing first call, fixes the store's key type",
        how: "the first keyed call of a trace is a successful init; no empty key lists",
    },
    Divergence {
        id: Avoid::WideIntKey,
        rule: "R9",
        source: "SPEC table (R9, decision 16)",
        mxnet: "int keys outside int32 raise OverflowError",
        how: "int keys within int32 (both extremes included)",
    },
    Divergence {
        id: Avoid::BadArguments,
        rule: "R11",
        source: "SPEC table (R11, decision 2)",
        mxnet: "(k, []) does nothing; a key list with one array iterates its rows (segfault); other shapes are bare assertions",
        how: "only well-formed argument shapes, except int and string keys mixed in one call (both refuse it)",
    },
    Divergence {
        id: Avoid::PushTypeChange,
        rule: "R17, R19",
        source: "SPEC table (R17, R19, decision 17); semantics 13",
        mxnet: "a single value of another dtype changes the key's dtype; mixed dtypes fail asynchronously; dense and row_sparse values of one key in one push are not summed; the reduction buffers' storage type is fixed by the key's first multi-value push",
        how: "every pushed value has the key's dtype; the values of one key in one push share one storage type, the one of the key's first multi-value push when it has several; only float32 keys change storage type",
    },
    Divergence {
        id: Avoid::PushShape,
        rule: "R18",
        source: "SPEC table (R18, decision 13)",
        mxnet: "a single-value push of another shape replaces the value (pulls fail later); a multi-value one fails half-way",
        how: "every pushed value has the key's shape",
    },
    Divergence {
        id: Avoid::SumOrder,
        rule: "R17",
        source: "SPEC table (R17): summation order unspecified in MXNet",
        mxnet: "adds the values of a key in an order of its own",
        how: "a key given three or more values in one push gets only multiples of 0.25 in [-4, 4] (exact sums); two values commute exactly",
    },
    Divergence {
        id: Avoid::UpdaterAliasing,
        rule: "R21",
        source: "SPEC table (R21, decision 1); semantics 13",
        mxnet: "after a push without updater that went through a reduction buffer (two or more values; any row_sparse push on `local`; any compressed push), the stored value IS that buffer, so with an updater the next push that writes the buffer overwrites the weight first",
        how: "the model tracks which keys alias their buffer and, once an updater is set, does not push them through the buffer",
    },
    Divergence {
        id: Avoid::UpdaterError,
        rule: "R22",
        source: "SPEC table (R22, decision 5)",
        mxnet: "updater exceptions are printed and swallowed",
        how: "no updater is given arguments it fails on",
    },
    Divergence {
        id: Avoid::GpuDevice,
        rule: "R26",
        source: "SPEC table (R26, decision 17)",
        mxnet: "CPU<->GPU copies need equal dtypes",
        how: "only cpu(0)..cpu(3)",
    },
    Divergence {
        id: Avoid::AllSkipped,
        rule: "R28",
        source: "SPEC table (R28, decision 19)",
        mxnet: "a pull whose outputs are all skipped by ignore_sparse does not check the key",
        how: "every key of a pull with ignore_sparse=true has a dense output (pushpull/broadcast included)",
    },
    Divergence {
        id: Avoid::DenseToRowSparse,
        rule: "R28",
        source: "SPEC table (R28, decision 19); semantics 13",
        mxnet: "a dense value pulled into a row_sparse output (ignore_sparse=false) lists only non-zero rows, on `device` depending on the order of the outputs",
        how: "row_sparse outputs with ignore_sparse=false only for row_sparse keys",
    },
    Divergence {
        id: Avoid::RowSparsePullDense,
        rule: "R31",
        source: "SPEC table (R31, decision 19)",
        mxnet: "row_sparse_pull from a dense stored value is an error",
        how: "row_sparse_pull only from row_sparse keys",
    },
    Divergence {
        id: Avoid::NoRows,
        rule: "R31",
        source: "SPEC table (R31, decision 19); semantics 13",
        mxnet: "row_sparse_pull from a value with no rows gives no ids, whatever was asked",
        how: "row_sparse_pull only from keys whose stored value has at least one row",
    },
    Divergence {
        id: Avoid::RowIdRange,
        rule: "R32",
        source: "SPEC table (R32, decision 11)",
        mxnet: "out-of-range ids read garbage rows",
        how: "row ids within the key's rows (unsorted, with duplicates)",
    },
    Divergence {
        id: Avoid::OneRowIdList,
        rule: "R33",
        source: "SPEC table (R33)",
        mxnet: "one row-id list with several outputs pulls out[0] only and copies it to the rest (a key list then fails or mixes keys; a dense out[i>0] receives a copy)",
        how: "one list only with a single key (or a one-key list with one output); a dense output in that form comes first",
    },
    Divergence {
        id: Avoid::CompressionType,
        rule: "R37",
        source: "SPEC table (R37, decision 10)",
        mxnet: "only `2bit`; any threshold text that parses is accepted",
        how: "2bit with finite thresholds only (thresholds <= 0 as error cases)",
    },
    Divergence {
        id: Avoid::ResidualSlots,
        rule: "R42",
        source: "SPEC table (R42, decision 9)",
        mxnet: "a residual belongs to the position in the pushed list",
        how: "the compressed pushes of a key always use a prefix of one list of distinct devices, so position, device and occurrence coincide",
    },
    Divergence {
        id: Avoid::CompressionValue,
        rule: "R43",
        source: "SPEC table (R43, decision 9)",
        mxnet: "float16 values fail asynchronously and corrupt the value; row_sparse is unchecked",
        how: "with compression on, only dense float32 keys (initialised and stored dense) are pushed, with dense values",
    },
    Divergence {
        id: Avoid::ResidualReset,
        rule: "R44",
        source: "SPEC table (R44, decision 9)",
        mxnet: "residuals survive a change of parameters",
        how: "compression is set once per trace (again only with the same parameters)",
    },
    Divergence {
        id: Avoid::InvalidOptimizer,
        rule: "R45",
        source: "SPEC table (R45)",
        mxnet: "SGD parameters are not validated",
        how: "finite parameters only",
    },
    Divergence {
        id: Avoid::StateFiles,
        rule: "R47",
        source: "SPEC table (R47)",
        mxnet: "states are a Python pickle; loading states of another optimizer mixes momentum buffers",
        how: "each side saves into its own folder and loads only what it saved earlier in the trace, under the same optimizer (or with dump_optimizer=true); every save has a new path",
    },
    Divergence {
        id: Avoid::ReduceBuffers,
        rule: "R15, R42",
        source: "semantics 13; MXNet segfaults (checked)",
        mxnet: "per-key reduction buffers are sized at the key's first multi-value (or first compressed) push: a later push with more values segfaults; on `device`, a compressed push of a key reduced uncompressed before (no residual buffers) segfaults",
        how: "a key is never pushed more values than its first multi-value push had; on `device` a key pushed with several values before compression is not pushed under compression",
    },
    Divergence {
        id: Avoid::UnstableSort,
        rule: "R15, R42",
        source: "MXNet groups pairs with std::sort (libstdc++ sorts up to 16 elements by insertion, keeping their order)",
        mxnet: "in longer push lists the order of one key's values (its residual positions) may change",
        how: "at most 16 pairs per push",
    },
    Divergence {
        id: Avoid::DeviceChain,
        rule: "R25, R26",
        source: "SPEC divergence table (found by this suite)",
        mxnet: "a `device` store, before its first multi-value push, pulls into outputs[key % n] and copies that output to the others: a float16 output there rounds the float32/float64 outputs, and a dense one there makes the row_sparse outputs list only non-zero rows",
        how: "on `device` stores all outputs of one key in one call share one dtype and one storage type",
    },
    Divergence {
        id: Avoid::RowSparsePullDtype,
        rule: "R31",
        source: "SPEC divergence table (found by this suite)",
        mxnet: "on a `device` store, row_sparse_pull into an output of another dtype fails asynchronously (\"TBlob.get_with_shape: data type do not match\"); `local` casts",
        how: "on `device` stores row_sparse_pull outputs carry the key's dtype",
    },
    Divergence {
        id: Avoid::RowSparseToDense,
        rule: "R26",
        source: "SPEC divergence table (found by this suite)",
        mxnet: "a row_sparse value pulled into a dense output fails asynchronously (\"TBlob.get_with_shape: data type do not match\") when the value is float16/float64, and on `device` after a push when the output's dtype differs",
        how: "dense outputs of row_sparse keys only for float32 keys, in float32 (row_sparse outputs take any dtype)",
    },
    Divergence {
        id: Avoid::SkippedShape,
        rule: "R27, R28",
        source: "MXNet never looks at skipped outputs",
        mxnet: "a row_sparse output skipped by ignore_sparse is not shape-checked",
        how: "skipped outputs have the key's shape",
    },
    Divergence {
        id: Avoid::SgdFalsyParams,
        rule: "R45, R46",
        source: "SPEC divergence table (found by this suite)",
        mxnet: "SGD(clip_gradient=0) does not clip at all and a negative momentum is ignored (Python truthiness: `if self.clip_gradient:`, `if self.momentum > 0:`)",
        how: "clip_gradient is None or > 0; momentum >= 0",
    },
    Divergence {
        id: Avoid::SgdSparseRows,
        rule: "R46",
        source: "SPEC divergence table (found by this suite: MXNet refuses)",
        mxnet: "SGD on a row_sparse weight that lacks rows fails (\"only implemented for RowSparse weights with all rows\")",
        how: "SGD pushes to a row_sparse stored value only row_sparse gradients, and only while it has every row",
    },
    Divergence {
        id: Avoid::AccumulateRowSparse,
        rule: "R21",
        source: "trace updater definition",
        mxnet: "the driver's accumulate keeps a row_sparse weight row_sparse (dropping zero rows); kvstore's makes it dense",
        how: "no push to a key stored row_sparse while the accumulate updater is set",
    },
    Divergence {
        id: Avoid::Inexpressible,
        rule: "R35",
        source: "mxnet_replay.py reports `Unsupported`",
        mxnet: "no bfloat16 in MXNet 1.9.1's Python API; custom updaters cannot be replayed",
        how: "float32, float16 and float64 only; the accumulate updater and SGD",
    },
];

/// The table row of a reason.
pub fn divergence(id: Avoid) -> Option<&'static Divergence> {
    DIVERGENCES.iter().find(|d| d.id == id)
}

// ---------------------------------------------------------------------------------------------
// Random numbers
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, seeded, deterministic on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_F42D_4C95_7F2D)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    /// Shuffles in place.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i + 1);
            xs.swap(i, j);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// What the model expects of an admitted op on both implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Succeeds.
    Ok,
    /// Fails, changing nothing.
    Error,
}

/// Reduction buffers MXNet has allocated for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bufs {
    /// None yet.
    None,
    /// Sized by an uncompressed push of this many values.
    Plain(usize),
    /// Sized (with residuals) by a compressed push of this many values.
    Compressed(usize),
}

#[derive(Debug, Clone)]
struct KeyState {
    shape: Vec<usize>,
    dtype: DType,
    /// Initialised with a row_sparse value.
    init_sparse: bool,
    /// The stored value is row_sparse (as MXNet holds it; it follows the last push, R19).
    sparse: bool,
    /// Storage type of the key's first multi-value push (its reduction buffers).
    multi_sparse: Option<bool>,
    /// Rows of the stored value as MXNet holds it (row_sparse keys).
    rows: BTreeSet<i64>,
    /// The stored value is MXNet's reduction buffer of the key.
    aliased: bool,
    bufs: Bufs,
    /// Devices of the key's first compressed push, in order.
    devs: Vec<Device>,
}

impl KeyState {
    fn all_rows(&self) -> bool {
        self.shape
            .first()
            .is_some_and(|&r| self.rows.len() == r && r > 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpdaterModel {
    None,
    Accumulate,
    /// An SGD optimizer, by identity (each `set_optimizer` is a new one).
    Sgd(u32),
}

/// The model of a store both implementations run: what the generator and the shrinker use to
/// stay clear of [`DIVERGENCES`].
#[derive(Debug, Clone)]
pub struct Model {
    created: bool,
    device: bool,
    exact: bool,
    key_type: Option<KeyType>,
    keys: BTreeMap<Key, KeyState>,
    compression: Option<f32>,
    updater: UpdaterModel,
    next_optimizer: u32,
    /// State files saved (path -> optimizer identity, dump_optimizer).
    saved: BTreeMap<String, (u32, bool)>,
    /// Paths written or touched by a save, successful or not.
    used_paths: BTreeSet<String>,
}

type Pairs = Vec<(Key, Value)>;

/// Normalised pairs, `Ok(None)` for mixed key types (both implementations refuse the call
/// before anything happens).
fn pairs(keys: &Keys, values: &Values<Value>) -> Result<Option<Pairs>, Avoid> {
    match normalize(keys.clone(), values.clone()) {
        Ok(p) if p.is_empty() => Err(Avoid::UnfixedKeyType),
        Ok(p) => {
            for (_, v) in &p {
                check_value_basics(v)?;
            }
            Ok(Some(p))
        }
        Err(Error::MixedKeyTypes { .. }) => Ok(None),
        Err(_) => Err(Avoid::BadArguments),
    }
}

/// Groups pairs by key, keeping list order inside each group.
fn groups(pairs: &[(Key, Value)]) -> BTreeMap<Key, Vec<&Value>> {
    let mut g: BTreeMap<Key, Vec<&Value>> = BTreeMap::new();
    for (k, v) in pairs {
        g.entry(k.clone()).or_default().push(v);
    }
    g
}

/// Every element of a value (dense data, or the listed rows of a row_sparse one).
fn elements(v: &Value) -> Vec<f64> {
    match v {
        Value::Dense(t) => t.data().to_f64(),
        Value::RowSparse(r) => r.data().to_f64(),
    }
}

/// A multiple of 0.25 in [-4, 4]: sums of a few of them are exact in every dtype.
fn is_exact(v: &Value) -> bool {
    elements(v)
        .iter()
        .all(|x| (x * 4.0).fract() == 0.0 && x.abs() <= 4.0)
}

fn check_value_basics(v: &Value) -> Result<(), Avoid> {
    if v.dtype() == DType::BF16 {
        return Err(Avoid::Inexpressible);
    }
    if matches!(v.device(), Device::Gpu(_)) {
        return Err(Avoid::GpuDevice);
    }
    Ok(())
}

fn rows_of(v: &Value) -> BTreeSet<i64> {
    match v {
        Value::RowSparse(r) => r.ids().iter().copied().collect(),
        Value::Dense(_) => BTreeSet::new(),
    }
}

fn wide(k: &Key) -> bool {
    matches!(k, Key::Int(i) if i32::try_from(*i).is_err())
}

impl Model {
    /// A model before `create`. `exact`: the trace is compared exactly (it uses compression);
    pub fn new(exact: bool) -> Model {
        Model {
            created: false,
            device: false,
            exact,
            key_type: None,
            keys: BTreeMap::new(),
            compression: None,
            updater: UpdaterModel::None,
            next_optimizer: 0,
            saved: BTreeMap::new(),
            used_paths: BTreeSet::new(),
        }
    }

    /// Checks one op: what both implementations will do, and the model after it; or why the
    /// op is outside what the suite compares.
    pub fn next(&self, op: &Op) -> Result<(Expect, Model), Avoid> {
        if !self.created && !matches!(op, Op::Create { .. }) {
            return Err(Avoid::StoreKind);
        }
        let mut m = self.clone();
        let expect = match op {
            Op::Create { kind } => {
                let kind = kind.to_lowercase();
                if self.created || !(kind == "local" || kind == "device") {
                    return Err(Avoid::StoreKind);
                }
                m = Model::new(self.exact);
                m.created = true;
                m.device = kind == "device";
                Expect::Ok
            }
            Op::Init { keys, values } => m.init(keys, values)?,
            Op::Push { keys, values, .. } => m.push(keys, values)?,
            Op::Pull {
                keys,
                outs,
                ignore_sparse,
                ..
            } => m.pull(keys, outs, *ignore_sparse)?,
            Op::RowSparsePull {
                keys,
                outs,
                row_ids,
                ..
            } => m.row_sparse_pull(keys, outs, row_ids)?,
            Op::PushPull { keys, values, outs } => {
                let expect = m.push(keys, values)?;
                if expect == Expect::Ok
                    && m.pull(keys, outs.as_ref().unwrap_or(values), true)? != Expect::Ok
                {
                    return Err(Avoid::PartialFailure);
                }
                expect
            }
            Op::Broadcast { keys, values, outs } => {
                let expect = m.init(keys, values)?;
                if expect == Expect::Ok && m.pull(keys, outs, true)? != Expect::Ok {
                    return Err(Avoid::PartialFailure);
                }
                expect
            }
            Op::SetGradientCompression { params } => m.compression(params)?,
            Op::SetOptimizer { optimizer } => {
                // The other optimizers have their own conformance suite (optimizers.rs).
                let Optimizer::Sgd(p) = optimizer else {
                    return Err(Avoid::Inexpressible);
                };
                m.check_sgd(p)?;
                m.updater = UpdaterModel::Sgd(m.next_optimizer);
                m.next_optimizer += 1;
                Expect::Ok
            }
            Op::SetUpdater { updater } => match updater {
                UpdaterSpec::Accumulate { scale } if scale.is_finite() => {
                    m.updater = UpdaterModel::Accumulate;
                    Expect::Ok
                }
                _ => return Err(Avoid::Inexpressible),
            },
            Op::SaveOptimizerStates {
                path,
                dump_optimizer,
            } => {
                if !m.used_paths.insert(path.clone()) {
                    return Err(Avoid::StateFiles);
                }
                match m.updater {
                    UpdaterModel::Sgd(id) => {
                        m.saved.insert(path.clone(), (id, *dump_optimizer));
                        Expect::Ok
                    }
                    _ => Expect::Error,
                }
            }
            Op::LoadOptimizerStates { path } => match (m.updater, m.saved.get(path)) {
                (UpdaterModel::Sgd(current), Some(&(id, dump))) => {
                    if !dump && id != current {
                        return Err(Avoid::StateFiles);
                    }
                    m.updater = UpdaterModel::Sgd(id);
                    Expect::Ok
                }
                (UpdaterModel::Sgd(_), None) => return Err(Avoid::StateFiles),
                _ => Expect::Error,
            },
            Op::WaitAll => Expect::Ok,
        };
        if expect == Expect::Error {
            // A failing call changes nothing, in both implementations.
            return Ok((Expect::Error, self.clone()));
        }
        Ok((expect, m))
    }

    /// The key type check of a call; `Some(Error)` when the call fails on it.
    fn key_type(&mut self, pairs: &Pairs) -> Result<Option<Expect>, Avoid> {
        let Some((first, _)) = pairs.first() else {
            return Err(Avoid::UnfixedKeyType);
        };
        if pairs.iter().any(|(k, _)| wide(k)) {
            return Err(Avoid::WideIntKey);
        }
        match self.key_type {
            Some(t) if t != first.key_type() => Ok(Some(Expect::Error)),
            Some(_) => Ok(None),
            None => Err(Avoid::UnfixedKeyType),
        }
    }

    /// Unknown keys of a call: `Some(Error)` when the lookup refuses it cleanly.
    fn lookup(&self, pairs: &Pairs) -> Result<Option<Expect>, Avoid> {
        let unknown: Vec<&Key> = pairs
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !self.keys.contains_key(*k))
            .collect();
        if unknown.is_empty() {
            Ok(None)
        } else if unknown.iter().all(|k| matches!(k, Key::Str(_))) {
            Ok(Some(Expect::Error))
        } else {
            Err(Avoid::UninitIntKey)
        }
    }

    fn init(&mut self, keys: &Keys, values: &Values<Value>) -> Result<Expect, Avoid> {
        let Some(pairs) = pairs(keys, values)? else {
            return Ok(Expect::Error);
        };
        if pairs.iter().any(|(k, _)| wide(k)) {
            return Err(Avoid::WideIntKey);
        }
        match self.key_type {
            None => self.key_type = pairs.first().map(|(k, _)| k.key_type()),
            Some(t) if pairs.first().is_some_and(|(k, _)| k.key_type() != t) => {
                return Ok(Expect::Error)
            }
            Some(_) => {}
        }
        let distinct: BTreeSet<&Key> = pairs.iter().map(|(k, _)| k).collect();
        if distinct.len() != pairs.len() {
            return Err(Avoid::PartialInit);
        }
        let existing = pairs
            .iter()
            .filter(|(k, _)| self.keys.contains_key(k))
            .count();
        if existing == pairs.len() {
            return Ok(Expect::Error);
        }
        if existing > 0 {
            return Err(Avoid::PartialInit);
        }
        for (k, v) in pairs {
            self.keys.insert(
                k,
                KeyState {
                    shape: v.shape().to_vec(),
                    dtype: v.dtype(),
                    init_sparse: matches!(v, Value::RowSparse(_)),
                    sparse: matches!(v, Value::RowSparse(_)),
                    multi_sparse: None,
                    rows: rows_of(&v),
                    aliased: false,
                    bufs: Bufs::None,
                    devs: Vec::new(),
                },
            );
        }
        Ok(Expect::Ok)
    }

    fn push(&mut self, keys: &Keys, values: &Values<Value>) -> Result<Expect, Avoid> {
        let Some(pairs) = pairs(keys, values)? else {
            return Ok(Expect::Error);
        };
        if let Some(e) = self.key_type(&pairs)? {
            return Ok(e);
        }
        if let Some(e) = self.lookup(&pairs)? {
            return Ok(e);
        }
        if pairs.len() > 16 {
            return Err(Avoid::UnstableSort);
        }
        let device = self.device;
        let compression = self.compression.is_some();
        let updater = self.updater;
        for (key, vals) in groups(&pairs) {
            let Some(st) = self.keys.get_mut(&key) else {
                return Err(Avoid::UninitIntKey);
            };
            let push_sparse = vals.iter().any(|v| matches!(v, Value::RowSparse(_)));
            for v in &vals {
                if v.shape() != st.shape.as_slice() {
                    return Err(Avoid::PushShape);
                }
                if v.dtype() != st.dtype || matches!(v, Value::RowSparse(_)) != push_sparse {
                    return Err(Avoid::PushTypeChange);
                }
            }
            // A push of the other storage type changes what is stored (R19): float32 keys
            // only, so that both storage types can be pulled into dense outputs later.
            if push_sparse != st.sparse && st.dtype != DType::F32 {
                return Err(Avoid::PushTypeChange);
            }
            let n = vals.len();
            if n >= 3 && !vals.iter().all(|v| is_exact(v)) {
                return Err(Avoid::SumOrder);
            }
            if n >= 2 {
                match st.multi_sparse {
                    None => st.multi_sparse = Some(push_sparse),
                    Some(s) if s == push_sparse => {}
                    Some(_) => return Err(Avoid::ReduceBuffers),
                }
            }
            if compression {
                if push_sparse || st.sparse || st.init_sparse || st.dtype != DType::F32 {
                    return Err(Avoid::CompressionValue);
                }
                let devices: Vec<Device> = vals.iter().map(|v| v.device()).collect();
                let distinct: BTreeSet<&Device> = devices.iter().collect();
                if distinct.len() != n {
                    return Err(Avoid::ResidualSlots);
                }
                match st.bufs {
                    Bufs::None => {
                        st.bufs = Bufs::Compressed(n);
                        st.devs = devices;
                    }
                    Bufs::Compressed(c) if n <= c => {
                        if st.devs.get(..n) != Some(devices.as_slice()) {
                            return Err(Avoid::ResidualSlots);
                        }
                    }
                    _ => return Err(Avoid::ReduceBuffers),
                }
            } else if n >= 2 {
                match st.bufs {
                    Bufs::None => st.bufs = Bufs::Plain(n),
                    Bufs::Plain(c) if n <= c => {}
                    _ => return Err(Avoid::ReduceBuffers),
                }
            }
            let uses_buffer = compression || n >= 2 || (!device && push_sparse);
            match updater {
                UpdaterModel::None => {
                    // Same storage type: the slot is re-pointed at the merged array; another
                    // storage type: the slot gets a copy.
                    st.aliased = uses_buffer && push_sparse == st.sparse;
                    st.sparse = push_sparse;
                    st.rows = if push_sparse {
                        vals.iter().flat_map(|v| rows_of(v)).collect()
                    } else {
                        BTreeSet::new()
                    };
                }
                UpdaterModel::Accumulate => {
                    if st.sparse {
                        return Err(Avoid::AccumulateRowSparse);
                    }
                    if st.aliased && uses_buffer {
                        return Err(Avoid::UpdaterAliasing);
                    }
                }
                UpdaterModel::Sgd(_) => {
                    if st.aliased && uses_buffer {
                        return Err(Avoid::UpdaterAliasing);
                    }
                    if st.sparse && !(push_sparse && st.all_rows()) {
                        return Err(Avoid::SgdSparseRows);
                    }
                }
            }
        }
        Ok(Expect::Ok)
    }

    fn pull(
        &mut self,
        keys: &Keys,
        outs: &Values<Value>,
        ignore_sparse: bool,
    ) -> Result<Expect, Avoid> {
        let Some(pairs) = pairs(keys, outs)? else {
            return Ok(Expect::Error);
        };
        if let Some(e) = self.key_type(&pairs)? {
            return Ok(e);
        }
        let unknown = self.lookup(&pairs)?;
        let mut expect = unknown.unwrap_or(Expect::Ok);
        for (key, outs) in groups(&pairs) {
            let st = self.keys.get(&key);
            let active: Vec<&&Value> = outs
                .iter()
                .filter(|o| !ignore_sparse || matches!(o, Value::Dense(_)))
                .collect();
            if active.is_empty() {
                return Err(Avoid::AllSkipped);
            }
            let Some(st) = st else { continue };
            if !ignore_sparse && !st.sparse && outs.iter().any(|o| matches!(o, Value::RowSparse(_)))
            {
                return Err(Avoid::DenseToRowSparse);
            }
            for o in &outs {
                if o.shape() != st.shape.as_slice() {
                    if ignore_sparse && matches!(o, Value::RowSparse(_)) {
                        return Err(Avoid::SkippedShape);
                    }
                    expect = Expect::Error;
                }
            }
            if st.sparse
                && active.iter().any(|o| {
                    matches!(o, Value::Dense(_))
                        && (st.dtype != DType::F32 || o.dtype() != DType::F32)
                })
            {
                return Err(Avoid::RowSparseToDense);
            }
            if self.device {
                let dtypes: BTreeSet<(&str, bool)> = active
                    .iter()
                    .map(|o| (o.dtype().name(), matches!(o, Value::Dense(_))))
                    .collect();
                if dtypes.len() > 1 {
                    return Err(Avoid::DeviceChain);
                }
            }
        }
        Ok(expect)
    }

    fn row_sparse_pull(
        &mut self,
        keys: &Keys,
        outs: &Values<Value>,
        row_ids: &RowIdsArg,
    ) -> Result<Expect, Avoid> {
        let Some(pairs) = pairs(keys, outs)? else {
            return Ok(Expect::Error);
        };
        if let Some(e) = self.key_type(&pairs)? {
            return Ok(e);
        }
        let lists = match row_ids {
            RowIdsArg::One(ids) => {
                let single = match (keys, outs) {
                    (Keys::One(_), _) => true,
                    (Keys::List(ks), Values::List(items)) => {
                        ks.len() == 1 && items.len() == 1 && matches!(items[0], Item::One(_))
                    }
                    _ => false,
                };
                if !single
                    || pairs
                        .iter()
                        .skip(1)
                        .any(|(_, o)| matches!(o, Value::Dense(_)))
                {
                    return Err(Avoid::OneRowIdList);
                }
                vec![ids.clone(); pairs.len()]
            }
            RowIdsArg::PerOutput(lists) => {
                if lists.len() != pairs.len() {
                    return Err(Avoid::BadArguments);
                }
                lists.clone()
            }
        };
        if let Some(e) = self.lookup(&pairs)? {
            return Ok(e);
        }
        let mut expect = Expect::Ok;
        for ((key, out), ids) in pairs.iter().zip(&lists) {
            let Some(st) = self.keys.get(key) else {
                return Err(Avoid::UninitIntKey);
            };
            if !st.sparse {
                return Err(Avoid::RowSparsePullDense);
            }
            if st.rows.is_empty() {
                return Err(Avoid::NoRows);
            }
            if self.device && out.dtype() != st.dtype {
                return Err(Avoid::RowSparsePullDtype);
            }
            if out.shape() != st.shape.as_slice() {
                return Err(Avoid::PushShape);
            }
            let rows = st.shape.first().copied().unwrap_or(0) as i64;
            if ids.iter().any(|&i| i < 0 || i >= rows) {
                return Err(Avoid::RowIdRange);
            }
            if matches!(out, Value::Dense(_)) {
                expect = Expect::Error;
            }
        }
        Ok(expect)
    }

    fn compression(&mut self, params: &[(String, String)]) -> Result<Expect, Avoid> {
        if !self.device {
            return Ok(Expect::Error);
        }
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if get("type") != Some("2bit") {
            return Err(Avoid::CompressionType);
        }
        let threshold: f32 = match get("threshold").map(str::parse::<f32>) {
            Some(Ok(t)) if t.is_finite() => t,
            _ => return Err(Avoid::CompressionType),
        };
        if threshold <= 0.0 {
            return Ok(Expect::Error);
        }
        match self.compression {
            Some(t) if t != threshold => Err(Avoid::ResidualReset),
            _ => {
                self.compression = Some(threshold);
                Ok(Expect::Ok)
            }
        }
    }

    fn check_sgd(&self, p: &Sgd) -> Result<(), Avoid> {
        let numbers = [p.learning_rate, p.momentum, p.wd, p.rescale_grad];
        if numbers
            .iter()
            .chain(p.clip_gradient.iter())
            .any(|x| !x.is_finite())
            || p.clip_gradient.is_some_and(|c| c < 0.0)
        {
            return Err(Avoid::InvalidOptimizer);
        }
        if p.clip_gradient == Some(0.0) || p.momentum < 0.0 {
            return Err(Avoid::SgdFalsyParams);
        }
        Ok(())
    }

    fn is_string_store(&self) -> bool {
        self.key_type == Some(KeyType::Str)
    }
}

/// Runs the model over a whole trace: the expectation of every op, or the first op (index)
/// the suite must not compare and why.
pub fn check_trace(ops: &[Op], exact: bool) -> Result<Vec<Expect>, (usize, Avoid)> {
    let mut model = Model::new(exact);
    let mut expects = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let (e, next) = model.next(op).map_err(|a| (i, a))?;
        expects.push(e);
        model = next;
    }
    Ok(expects)
}

// ---------------------------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------------------------

/// Settings of the generator.
#[derive(Debug, Clone)]
pub struct Config {
    /// Operations after the setup (create and the first inits); at least 30 for the suite.
    pub ops: usize,
    /// Folder prefix of the state files the trace saves and loads (the trace's own folder).
    pub states_dir: String,
}

/// A generated trace.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The seed it came from.
    pub seed: u64,
    /// The operations; the first is `create`.
    pub ops: Vec<Op>,
    /// What the model expects of each op.
    pub expects: Vec<Expect>,
    /// Compared exactly (the trace uses gradient compression).
    pub exact: bool,
}

/// How often each reason made the generator drop a candidate op (or a key it probed for a
/// push).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Candidate ops and push probes refused by the model, by reason.
    pub rejected: BTreeMap<Avoid, usize>,
}

impl Stats {
    /// Adds another trace's counts.
    pub fn merge(&mut self, other: &Stats) {
        for (k, v) in &other.rejected {
            *self.rejected.entry(*k).or_default() += v;
        }
    }
}

/// The trace as JSON Lines (one op per line, `kvstore::trace::op::write`).
pub fn to_text(ops: &[Op]) -> String {
    let mut text = String::new();
    for op in ops {
        text.push_str(&kvstore::trace::op::write(op).to_string());
        text.push('\n');
    }
    text
}

const INT_KEYS: &[i64] = &[
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    9,
    12,
    42,
    99,
    1000,
    -1,
    -7,
    2_147_483_647,
    -2_147_483_648,
];
const STR_KEYS: &[&str] = &[
    "w",
    "b",
    "w0",
    "emb",
    "fc1_weight",
    "fc1_bias",
    "layer.2/gamma",
    "β",
    "key with space",
    "0",
];
const GHOST_KEYS: &[&str] = &["ghost", "missing_weight", "never_inited"];
const GENERAL: &[f64] = &[
    0.1, -0.3, 1.7, 2.9, -1.1, 0.7, 3.3, -2.6, 0.05, 0.001, -0.45,
];
/// Rare values: signed zero, float16 overflow and rounding ties, underflow, non-finite.
const SPECIAL: &[f64] = &[
    -0.0,
    70000.0,
    65504.0,
    2049.0,
    -1e-8,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::NAN,
];
const THRESHOLDS: &[&str] = &["0.5", "0.25", "1", "2", "0.75", "1.5"];

#[derive(Debug, Clone)]
struct Plan {
    key: Key,
    shape: Vec<usize>,
    dtype: DType,
    sparse: bool,
}

type Made<T> = Result<T, Error>;

struct Gen {
    rng: Rng,
    model: Model,
    ops: Vec<Op>,
    expects: Vec<Expect>,
    plans: Vec<Plan>,
    string_keys: bool,
    states_dir: String,
    saves: usize,
    stats: Stats,
}

/// Generates the trace of `seed`.
pub fn generate(seed: u64, config: &Config) -> Made<(Trace, Stats)> {
    let mut rng = Rng::new(seed);
    let device = rng.chance(0.5);
    let compression = device && rng.chance(0.55);
    let string_keys = rng.chance(0.4);
    let mut g = Gen {
        rng,
        model: Model::new(compression),
        ops: Vec::new(),
        expects: Vec::new(),
        plans: Vec::new(),
        string_keys,
        states_dir: config.states_dir.trim_end_matches('/').to_owned(),
        saves: 0,
        stats: Stats::default(),
    };
    let kind = if device { "device" } else { "local" };
    g.emit(Op::Create { kind: kind.into() });
    g.plan_keys();
    g.setup_inits()?;
    let compression_at = if !compression {
        usize::MAX
    } else if g.rng.chance(0.6) {
        0
    } else {
        g.rng.below(config.ops / 2 + 1)
    };
    let threshold = *g.rng.pick(THRESHOLDS);
    let mut done = 0;
    while done < config.ops {
        if done == compression_at {
            let op = compression_op(threshold);
            if g.emit(op) {
                done += 1;
                continue;
            }
        }
        if g.step(done)? {
            done += 1;
        }
    }
    let trace = Trace {
        seed,
        ops: g.ops,
        expects: g.expects,
        exact: compression,
    };
    Ok((trace, g.stats))
}

fn compression_op(threshold: &str) -> Op {
    Op::SetGradientCompression {
        params: vec![
            ("type".into(), "2bit".into()),
            ("threshold".into(), threshold.into()),
        ],
    }
}

fn keys_arg(keys: Vec<Key>, single: bool) -> Keys {
    match (single, keys.len()) {
        (true, 1) => keys
            .into_iter()
            .next()
            .map_or(Keys::List(Vec::new()), Keys::One),
        _ => Keys::List(keys),
    }
}

impl Gen {
    /// Admits `op` through the model; false (and counted) when the model refuses it.
    fn emit(&mut self, op: Op) -> bool {
        match self.model.next(&op) {
            Ok((expect, next)) => {
                self.model = next;
                self.ops.push(op);
                self.expects.push(expect);
                true
            }
            Err(reason) => {
                *self.stats.rejected.entry(reason).or_default() += 1;
                false
            }
        }
    }

    fn plan_keys(&mut self) {
        let n = self.rng.range(4, 7);
        let mut picks: Vec<Key> = if self.string_keys {
            STR_KEYS.iter().map(|s| Key::Str((*s).to_owned())).collect()
        } else {
            INT_KEYS.iter().map(|&i| Key::Int(i)).collect()
        };
        self.rng.shuffle(&mut picks);
        for key in picks.into_iter().take(n) {
            let sparse = self.rng.chance(0.35);
            let shape = if sparse {
                if self.rng.chance(0.2) {
                    vec![self.rng.range(2, 6)]
                } else {
                    vec![self.rng.range(2, 5), self.rng.range(1, 3)]
                }
            } else if self.rng.chance(0.5) {
                vec![self.rng.range(1, 6)]
            } else {
                vec![self.rng.range(1, 4), self.rng.range(1, 3)]
            };
            let dtype = match self.rng.below(10) {
                0 | 1 => DType::F16,
                2 | 3 => DType::F64,
                _ => DType::F32,
            };
            self.plans.push(Plan {
                key,
                shape,
                dtype,
                sparse,
            });
        }
    }

    fn plan(&self, key: &Key) -> Option<&Plan> {
        self.plans.iter().find(|p| &p.key == key)
    }

    /// The plan of a key with the storage type it has now (it follows the last push, R19).
    fn current(&self, key: &Key) -> Option<Plan> {
        let mut plan = self.plan(key)?.clone();
        if let Some(st) = self.model.keys.get(key) {
            plan.sparse = st.sparse;
        }
        Some(plan)
    }

    fn inited(&self) -> Vec<Key> {
        self.model.keys.keys().cloned().collect()
    }

    fn reserve(&self) -> Vec<Key> {
        self.plans
            .iter()
            .filter(|p| !self.model.keys.contains_key(&p.key))
            .map(|p| p.key.clone())
            .collect()
    }

    // -- values

    fn element(&mut self, exact_only: bool) -> f64 {
        if !exact_only && self.rng.chance(0.01) {
            *self.rng.pick(SPECIAL)
        } else if !exact_only && self.rng.chance(0.15) {
            *self.rng.pick(GENERAL)
        } else {
            (self.rng.below(33) as f64 - 16.0) / 4.0
        }
    }

    fn device(&mut self) -> Device {
        Device::Cpu(self.rng.below(4) as u32)
    }

    fn dense(&mut self, shape: &[usize], dtype: DType, dev: Device, exact: bool) -> Made<Value> {
        let n: usize = shape.iter().product();
        let xs: Vec<f64> = (0..n).map(|_| self.element(exact)).collect();
        Ok(Value::Dense(
            Tensor::new(shape.to_vec(), Data::from_f64(dtype, &xs))?.on(dev),
        ))
    }

    fn random_rows(&mut self, rows: usize, all: f64) -> Vec<i64> {
        if self.rng.chance(all) {
            return (0..rows as i64).collect();
        }
        (0..rows as i64).filter(|_| self.rng.chance(0.5)).collect()
    }

    fn sparse(
        &mut self,
        shape: &[usize],
        dtype: DType,
        dev: Device,
        ids: Vec<i64>,
        exact: bool,
    ) -> Made<Value> {
        let row: usize = shape.iter().skip(1).product();
        let xs: Vec<f64> = (0..ids.len() * row).map(|_| self.element(exact)).collect();
        Ok(Value::RowSparse(
            RowSparse::new(shape.to_vec(), ids, Data::from_f64(dtype, &xs))?.on(dev),
        ))
    }

    /// A value for `plan` (init or push) on `dev`.
    fn value(&mut self, plan: &Plan, dev: Device, exact: bool, all_rows: f64) -> Made<Value> {
        if plan.sparse {
            let rows = plan.shape.first().copied().unwrap_or(0);
            let ids = self.random_rows(rows, all_rows);
            self.sparse(&plan.shape, plan.dtype, dev, ids, exact)
        } else {
            self.dense(&plan.shape, plan.dtype, dev, exact)
        }
    }

    fn dense_out(&mut self, shape: &[usize], dtype: DType, dev: Device) -> Made<Value> {
        Ok(Value::Dense(Tensor::zeros(shape.to_vec(), dtype)?.on(dev)))
    }

    fn sparse_out(&mut self, plan: &Plan, dtype: DType, dev: Device, filled: bool) -> Made<Value> {
        if filled {
            let rows = plan.shape.first().copied().unwrap_or(0);
            let ids = self.random_rows(rows, 0.2);
            return self.sparse(&plan.shape, dtype, dev, ids, true);
        }
        Ok(Value::RowSparse(
            RowSparse::empty(plan.shape.clone(), dtype)?.on(dev),
        ))
    }

    fn out_dtype(&mut self, plan: &Plan) -> DType {
        match self.rng.below(6) {
            0 => DType::F16,
            1 => DType::F64,
            2 => DType::F32,
            _ => plan.dtype,
        }
    }

    /// Outputs for one key of a pull (or pushpull / broadcast).
    fn outs_for(&mut self, plan: &Plan, ignore_sparse: bool) -> Made<Vec<Value>> {
        let m = self.rng.range(1, 3);
        // Dense outputs of a row_sparse key only in float32 from float32 (RowSparseToDense).
        let dense_ok = !plan.sparse || plan.dtype == DType::F32;
        let same = if plan.sparse && dense_ok {
            DType::F32
        } else {
            self.out_dtype(plan)
        };
        // On `device` all outputs of the key share one storage type too (DeviceChain).
        let all_sparse = plan.sparse && !ignore_sparse && (!dense_ok || self.rng.chance(0.5));
        let mut outs = Vec::new();
        for _ in 0..m {
            let sparse_out = if self.model.device {
                all_sparse
            } else {
                plan.sparse && !ignore_sparse && (!dense_ok || self.rng.chance(0.5))
            };
            let dtype = if self.model.device || (plan.sparse && !sparse_out) {
                same
            } else {
                self.out_dtype(plan)
            };
            let dev = self.device();
            if sparse_out {
                outs.push(self.sparse_out(plan, dtype, dev, false)?);
            } else {
                outs.push(self.dense_out(&plan.shape, dtype, dev)?);
            }
        }
        if ignore_sparse && self.rng.chance(0.25) {
            let dtype = self.out_dtype(plan);
            let dev = self.device();
            let filled = self.rng.chance(0.5);
            let o = self.sparse_out(plan, dtype, dev, filled)?;
            let at = self.rng.below(outs.len() + 1);
            outs.insert(at, o);
        }
        Ok(outs)
    }

    /// The argument `(keys, values)` for per-key value lists, in one of the accepted shapes.
    fn arrange(&mut self, per_key: Vec<(Key, Vec<Value>)>) -> (Keys, Values<Value>) {
        if per_key.len() == 1 && self.rng.chance(0.6) {
            if let Some((key, mut vals)) = per_key.into_iter().next() {
                let values = if vals.len() == 1 && self.rng.chance(0.6) {
                    Values::One(vals.remove(0))
                } else {
                    Values::List(vals.into_iter().map(Item::One).collect())
                };
                return (Keys::One(key), values);
            }
            return (Keys::List(Vec::new()), Values::List(Vec::new()));
        }
        let mut keys = Vec::new();
        let mut items = Vec::new();
        for (key, mut vals) in per_key {
            // Sometimes a key is listed twice: its values split over two entries, in order.
            if vals.len() >= 2 && self.rng.chance(0.2) {
                let mut rest = vals.split_off(self.rng.range(1, vals.len() - 1));
                keys.push(key.clone());
                items.push(Item::Group(vals));
                keys.push(key);
                items.push(if rest.len() == 1 && self.rng.chance(0.5) {
                    Item::One(rest.remove(0))
                } else {
                    Item::Group(rest)
                });
                continue;
            }
            keys.push(key);
            items.push(if vals.len() == 1 && self.rng.chance(0.7) {
                Item::One(vals.remove(0))
            } else {
                Item::Group(vals)
            });
        }
        (Keys::List(keys), Values::List(items))
    }

    // -- setup

    fn setup_inits(&mut self) -> Made<()> {
        let mut keys: Vec<Key> = self.plans.iter().map(|p| p.key.clone()).collect();
        let reserve = self.rng.range(1, 2).min(keys.len().saturating_sub(2));
        keys.truncate(keys.len() - reserve);
        while !keys.is_empty() {
            let take = self.rng.range(1, keys.len().min(3));
            let chunk: Vec<Key> = keys.drain(..take).collect();
            if self.rng.chance(0.15) && !self.ops.iter().any(|o| matches!(o, Op::Init { .. })) {
                // The first keyed call must succeed: a broadcast works too.
                let op = self.broadcast_op(&chunk)?;
                if self.emit(op) {
                    continue;
                }
            }
            let op = self.init_op(&chunk)?;
            self.emit(op);
        }
        Ok(())
    }

    fn init_op(&mut self, keys: &[Key]) -> Made<Op> {
        let mut per_key = Vec::new();
        for k in keys {
            let Some(plan) = self.plan(k).cloned() else {
                continue;
            };
            let dev = self.device();
            per_key.push((k.clone(), vec![self.value(&plan, dev, false, 0.6)?]));
        }
        let (keys, values) = self.arrange(per_key);
        Ok(Op::Init { keys, values })
    }

    fn broadcast_op(&mut self, keys: &[Key]) -> Made<Op> {
        let mut per_key = Vec::new();
        let mut per_out = Vec::new();
        for k in keys {
            let Some(plan) = self.plan(k).cloned() else {
                continue;
            };
            let dev = self.device();
            per_key.push((k.clone(), vec![self.value(&plan, dev, false, 0.6)?]));
            per_out.push((k.clone(), self.outs_for(&plan, true)?));
        }
        let single = per_key.len() == 1 && self.rng.chance(0.5);
        let values = flat_items(per_key, single);
        let outs = flat_items(per_out, single);
        Ok(Op::Broadcast {
            keys: keys_arg(keys.to_vec(), single),
            values,
            outs,
        })
    }

    // -- the main loop

    /// Emits one op of a random kind; false when every attempt was refused.
    fn step(&mut self, index: usize) -> Made<bool> {
        for _ in 0..40 {
            let choice = self.rng.below(100);
            let op = match choice {
                0..=21 => self.push_op(false)?,
                22..=38 => self.pull_op()?,
                39..=48 => self.row_sparse_pull_op()?,
                49..=56 => self.push_op(true)?,
                57..=59 => {
                    let reserve = self.reserve();
                    if reserve.is_empty() {
                        None
                    } else {
                        let k = self.rng.pick(&reserve).clone();
                        if self.rng.chance(0.5) {
                            Some(self.broadcast_op(&[k])?)
                        } else {
                            Some(self.init_op(&[k])?)
                        }
                    }
                }
                60..=73 => self.error_op()?,
                74..=76 if index >= 6 => Some(Op::SetUpdater {
                    updater: UpdaterSpec::Accumulate {
                        scale: *self.rng.pick(&[1.0, 0.5, 2.0, -1.0, 0.25, 0.3]),
                    },
                }),
                77..=80 if index >= 6 => Some(self.optimizer_op()),
                81..=88 => self.states_op(),
                89..=91 => Some(Op::WaitAll),
                // The same compression parameters again keep the residuals (R44).
                92 => self
                    .model
                    .compression
                    .map(|t| compression_op(&t.to_string())),
                _ => None,
            };
            if let Some(op) = op {
                if self.emit(op) {
                    return Ok(true);
                }
            }
        }
        Ok(self.emit(Op::WaitAll))
    }

    fn optimizer_op(&mut self) -> Op {
        let sgd = Sgd {
            learning_rate: *self.rng.pick(&[0.1, 0.5, 0.25, 1.0, 0.01]),
            momentum: *self.rng.pick(&[0.0, 0.0, 0.5, 0.9]),
            wd: *self.rng.pick(&[0.0, 0.0, 0.01, 0.1]),
            rescale_grad: *self.rng.pick(&[1.0, 1.0, 0.5, 2.0, 0.3]),
            clip_gradient: if self.rng.chance(0.3) {
                Some(*self.rng.pick(&[0.5, 1.0, 2.5]))
            } else {
                None
            },
            lr_scheduler: None,
        };
        Op::SetOptimizer {
            optimizer: Optimizer::Sgd(sgd),
        }
    }

    fn new_state_path(&mut self) -> String {
        self.saves += 1;
        format!("{}/s{}.states", self.states_dir, self.saves)
    }

    fn states_op(&mut self) -> Option<Op> {
        if !matches!(self.model.updater, UpdaterModel::Sgd(_)) {
            return None;
        }
        if self.rng.chance(0.5) || self.model.saved.is_empty() {
            let path = self.new_state_path();
            return Some(Op::SaveOptimizerStates {
                path,
                dump_optimizer: self.rng.chance(0.4),
            });
        }
        let paths: Vec<String> = self.model.saved.keys().cloned().collect();
        Some(Op::LoadOptimizerStates {
            path: self.rng.pick(&paths).clone(),
        })
    }

    /// Keys a push of `n` values could go to now (the model decides).
    fn pushable(&mut self, n: usize) -> Made<Vec<Key>> {
        let mut ok = Vec::new();
        for key in self.inited() {
            let Some(plan) = self.current(&key) else {
                continue;
            };
            let devs = self.push_devices(&key, n);
            let mut vals = Vec::new();
            for d in devs {
                vals.push(self.value(&plan, d, true, 0.5)?);
            }
            let op = Op::Push {
                keys: Keys::One(key.clone()),
                values: Values::List(vals.into_iter().map(Item::One).collect()),
                priority: 0,
            };
            match self.model.next(&op) {
                Ok(_) => ok.push(key),
                Err(reason) => *self.stats.rejected.entry(reason).or_default() += 1,
            }
        }
        Ok(ok)
    }

    /// Devices for `n` values of `key`: under compression a prefix of the key's device list.
    fn push_devices(&mut self, key: &Key, n: usize) -> Vec<Device> {
        if self.model.compression.is_some() {
            if let Some(st) = self.model.keys.get(key) {
                if !st.devs.is_empty() {
                    return st.devs.iter().take(n).copied().collect();
                }
            }
            let mut all: Vec<Device> = (0..4).map(Device::Cpu).collect();
            self.rng.shuffle(&mut all);
            return all.into_iter().take(n).collect();
        }
        (0..n).map(|_| self.device()).collect()
    }

    fn value_count(&mut self, key: &Key) -> usize {
        let cap = match self.model.keys.get(key).map(|s| s.bufs) {
            Some(Bufs::Plain(c)) | Some(Bufs::Compressed(c)) => c,
            _ => 4,
        };
        let n = if self.rng.chance(0.45) {
            1
        } else {
            self.rng.range(2, 4)
        };
        n.min(cap).max(1)
    }

    fn push_op(&mut self, pushpull: bool) -> Made<Option<Op>> {
        let mut candidates = self.pushable(1)?;
        if pushpull {
            // pushpull pulls with ignore_sparse=true: it needs a dense output for every key.
            candidates.retain(|k| {
                self.current(k)
                    .is_some_and(|p| !p.sparse || p.dtype == DType::F32)
            });
        }
        if candidates.is_empty() {
            return Ok(None);
        }
        let nk = self.rng.range(1, 3).min(candidates.len());
        let mut chosen = candidates;
        self.rng.shuffle(&mut chosen);
        chosen.truncate(nk);
        let mut per_key = Vec::new();
        let mut per_out = Vec::new();
        let mut all_dense = true;
        for key in &chosen {
            let Some(plan) = self.current(key) else {
                continue;
            };
            let n = self.value_count(key);
            let exact = n >= 3 || self.rng.chance(0.5);
            let devs = self.push_devices(key, n);
            // Sometimes the other storage type (R19: the stored value follows the last push).
            let mut push_plan = plan.clone();
            if plan.dtype == DType::F32 && self.model.compression.is_none() && self.rng.chance(0.15)
            {
                push_plan.sparse = !plan.sparse;
            }
            all_dense &= !push_plan.sparse && !plan.sparse;
            let mut vals = Vec::new();
            for d in devs {
                vals.push(self.value(&push_plan, d, exact, 0.5)?);
            }
            per_key.push((key.clone(), vals));
            if pushpull {
                // Outputs for what the key stores after the push.
                let after = if self.model.updater == UpdaterModel::None {
                    push_plan
                } else {
                    plan
                };
                per_out.push((key.clone(), self.outs_for(&after, true)?));
            }
        }
        let priority = self.rng.range(0, 4) as i32 - 2;
        if !pushpull {
            let (keys, values) = self.arrange(per_key);
            return Ok(Some(Op::Push {
                keys,
                values,
                priority,
            }));
        }
        // pushpull: the same key argument serves the values and the outputs, so keep one entry
        // per key (no split) and mirror the nesting.
        let single = per_key.len() == 1 && self.rng.chance(0.5);
        let keys = keys_arg(chosen.clone(), single);
        let values = flat_items(per_key, single);
        let outs = if all_dense && self.rng.chance(0.3) {
            None
        } else {
            Some(flat_items(per_out, single))
        };
        Ok(Some(Op::PushPull { keys, values, outs }))
    }

    fn pull_op(&mut self) -> Made<Option<Op>> {
        let inited = self.inited();
        if inited.is_empty() {
            return Ok(None);
        }
        let nk = self.rng.range(1, 3);
        let mut plans = Vec::new();
        for _ in 0..nk {
            let key = self.rng.pick(&inited).clone();
            if let Some(plan) = self.current(&key) {
                plans.push(plan);
            }
        }
        // A row_sparse key that is not float32 has no dense output: only ignore_sparse=false.
        let ignore_sparse =
            self.rng.chance(0.8) && !plans.iter().any(|p| p.sparse && p.dtype != DType::F32);
        let mut per_key = Vec::new();
        for plan in plans {
            let outs = self.outs_for(&plan, ignore_sparse)?;
            per_key.push((plan.key, outs));
        }
        let (keys, outs) = self.arrange(per_key);
        Ok(Some(Op::Pull {
            keys,
            outs,
            priority: self.rng.range(0, 4) as i32 - 2,
            ignore_sparse,
        }))
    }

    fn row_ids(&mut self, rows: usize) -> Vec<i64> {
        let n = self.rng.range(0, 5);
        (0..n).map(|_| self.rng.below(rows) as i64).collect()
    }

    fn row_sparse_pull_op(&mut self) -> Made<Option<Op>> {
        let keys: Vec<Key> = self
            .model
            .keys
            .iter()
            .filter(|(_, s)| s.sparse && !s.rows.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return Ok(None);
        }
        let single = self.rng.chance(0.6);
        let nk = if single { 1 } else { self.rng.range(1, 2) };
        let mut plans = Vec::new();
        for _ in 0..nk {
            let key = self.rng.pick(&keys).clone();
            if let Some(plan) = self.current(&key) {
                plans.push(plan);
            }
        }
        let mut per_key = Vec::new();
        let mut lists = Vec::new();
        for plan in plans {
            // Each list serves one output of this key (one list for several outputs only in
            // the single-key form), so ids range over this key's rows.
            let rows = plan.shape.first().copied().unwrap_or(1);
            let m = self.rng.range(1, 3);
            let mut outs = Vec::new();
            for _ in 0..m {
                let dev = self.device();
                outs.push(self.sparse_out(&plan, plan.dtype, dev, false)?);
                lists.push(self.row_ids(rows));
            }
            per_key.push((plan.key, outs));
        }
        let priority = self.rng.range(0, 4) as i32 - 2;
        if single {
            let Some((key, mut outs)) = per_key.into_iter().next() else {
                return Ok(None);
            };
            let row_ids = if self.rng.chance(0.5) {
                RowIdsArg::One(lists.swap_remove(0))
            } else {
                RowIdsArg::PerOutput(lists)
            };
            let outs = if outs.len() == 1 && self.rng.chance(0.5) {
                Values::One(outs.remove(0))
            } else {
                Values::List(outs.into_iter().map(Item::One).collect())
            };
            return Ok(Some(Op::RowSparsePull {
                keys: Keys::One(key),
                outs,
                row_ids,
                priority,
            }));
        }
        let keys: Vec<Key> = per_key.iter().map(|(k, _)| k.clone()).collect();
        let one_list = keys.len() == 1 && per_key[0].1.len() == 1 && self.rng.chance(0.5);
        let outs = flat_items(per_key, false);
        let row_ids = if one_list {
            RowIdsArg::One(lists.swap_remove(0))
        } else {
            RowIdsArg::PerOutput(lists)
        };
        Ok(Some(Op::RowSparsePull {
            keys: Keys::List(keys),
            outs,
            row_ids,
            priority,
        }))
    }

    /// A call both implementations refuse without side effects.
    fn error_op(&mut self) -> Made<Option<Op>> {
        let inited = self.inited();
        if inited.is_empty() {
            return Ok(None);
        }
        let key = self.rng.pick(&inited).clone();
        let Some(plan) = self.current(&key) else {
            return Ok(None);
        };
        let dev = self.device();
        let other_key = if self.model.is_string_store() {
            Key::Int(7)
        } else {
            Key::Str("oops".into())
        };
        Ok(Some(match self.rng.below(11) {
            // duplicate init of one key
            0 => Op::Init {
                keys: Keys::One(key),
                values: Values::One(self.value(&plan, dev, false, 0.5)?),
            },
            // a never-initialised string key
            1 | 2 if self.model.is_string_store() => {
                let ghost = Key::Str((*self.rng.pick(GHOST_KEYS)).to_owned());
                let v = self.dense(&plan.shape, plan.dtype, dev, false)?;
                match self.rng.below(4) {
                    0 => Op::Pull {
                        keys: Keys::One(ghost),
                        outs: Values::One(v),
                        priority: 0,
                        ignore_sparse: true,
                    },
                    1 => Op::Push {
                        keys: Keys::List(vec![key, ghost]),
                        values: Values::List(vec![
                            Item::One(self.value(&plan, dev, true, 0.5)?),
                            Item::One(v),
                        ]),
                        priority: 0,
                    },
                    2 => Op::PushPull {
                        keys: Keys::One(ghost),
                        values: Values::One(v),
                        outs: None,
                    },
                    _ => Op::RowSparsePull {
                        keys: Keys::One(ghost),
                        outs: Values::One(self.sparse_out(&plan, plan.dtype, dev, false)?),
                        row_ids: RowIdsArg::One(vec![0]),
                        priority: 0,
                    },
                }
            }
            // a key of the other type
            1..=3 => {
                let v = self.dense(&plan.shape, plan.dtype, dev, false)?;
                match self.rng.below(3) {
                    0 => Op::Pull {
                        keys: Keys::One(other_key),
                        outs: Values::One(v),
                        priority: 0,
                        ignore_sparse: true,
                    },
                    1 => Op::Init {
                        keys: Keys::One(other_key),
                        values: Values::One(v),
                    },
                    _ => Op::Push {
                        keys: Keys::One(other_key),
                        values: Values::One(v),
                        priority: 0,
                    },
                }
            }
            // int and string keys in one call
            4 => {
                let v = self.dense_out(&plan.shape, plan.dtype, dev)?;
                let w = self.dense_out(&plan.shape, plan.dtype, dev)?;
                Op::Pull {
                    keys: Keys::List(vec![key, other_key]),
                    outs: Values::List(vec![Item::One(v), Item::One(w)]),
                    priority: 0,
                    ignore_sparse: true,
                }
            }
            // row_sparse_pull into a dense output
            5 => {
                let sparse: Vec<Key> = self
                    .model
                    .keys
                    .iter()
                    .filter(|(_, s)| s.sparse && !s.rows.is_empty())
                    .map(|(k, _)| k.clone())
                    .collect();
                if sparse.is_empty() {
                    return Ok(None);
                }
                let key = self.rng.pick(&sparse).clone();
                let Some(plan) = self.current(&key) else {
                    return Ok(None);
                };
                let ids = self.row_ids(plan.shape[0]);
                Op::RowSparsePull {
                    keys: Keys::One(key),
                    outs: Values::One(self.dense_out(&plan.shape, plan.dtype, dev)?),
                    row_ids: RowIdsArg::One(ids),
                    priority: 0,
                }
            }
            // compression on a local store, or a threshold <= 0
            6 => Op::SetGradientCompression {
                params: vec![
                    ("type".into(), "2bit".into()),
                    (
                        "threshold".into(),
                        if self.model.device {
                            (*self.rng.pick(&["0", "-0.5", "-2"])).into()
                        } else {
                            "0.5".into()
                        },
                    ),
                ],
            },
            // broadcast of an existing key
            7 => self.broadcast_op(&[key])?,
            // an output of the wrong shape
            8 | 9 => {
                let mut shape = plan.shape.clone();
                let last = shape.len() - 1;
                shape[last] += 1;
                let bad = self.dense_out(&shape, plan.dtype, dev)?;
                let mut outs = vec![bad];
                if self.rng.chance(0.5) {
                    let good = self.dense_out(&plan.shape, plan.dtype, dev)?;
                    outs.insert(self.rng.below(2), good);
                }
                Op::Pull {
                    keys: Keys::One(key),
                    outs: Values::List(outs.into_iter().map(Item::One).collect()),
                    priority: 0,
                    ignore_sparse: true,
                }
            }
            // optimizer states without an optimizer
            _ => {
                if matches!(self.model.updater, UpdaterModel::Sgd(_)) {
                    return Ok(None);
                }
                if self.rng.chance(0.5) || self.model.saved.is_empty() {
                    let path = self.new_state_path();
                    Op::SaveOptimizerStates {
                        path,
                        dump_optimizer: false,
                    }
                } else {
                    let paths: Vec<String> = self.model.saved.keys().cloned().collect();
                    Op::LoadOptimizerStates {
                        path: self.rng.pick(&paths).clone(),
                    }
                }
            }
        }))
    }
}

/// `Values` with one item per key (a value, or a group when there are several); with `single`,
/// the single key's values without the outer list.
fn flat_items(per_key: Vec<(Key, Vec<Value>)>, single: bool) -> Values<Value> {
    if single && per_key.len() == 1 {
        if let Some((_, mut vals)) = per_key.into_iter().next() {
            if vals.len() == 1 {
                return Values::One(vals.remove(0));
            }
            return Values::List(vals.into_iter().map(Item::One).collect());
        }
        return Values::List(Vec::new());
    }
    Values::List(
        per_key
            .into_iter()
            .map(|(_, mut vals)| {
                if vals.len() == 1 {
                    Item::One(vals.remove(0))
                } else {
                    Item::Group(vals)
                }
            })
            .collect(),
    )
}
