//! The body of every fuzz target, as a plain function over the fuzzer's bytes.
//!
//! `fuzz/fuzz_targets/*.rs` only call these functions, and `tests/fuzz_corpus.rs` replays the
//! checked-in corpus through them on the stable toolchain. Each body decodes a structured input
//! from the bytes with [`arbitrary::Unstructured`], runs the code under test and checks its
//! properties with `assert!`: a failed check is a panic, which is what the fuzzer reports.
//!
//! - [`normalize`]: key/value normalisation (SPEC R9-R11) against a recursive reference.
//! - [`store_ops`]: sequences of operations on the specification's `LocalStore`; a failing call
//!   changes nothing (R7), checked on the observable state and, through a shadow store that never
//!   saw the failing calls, on hidden state too.
//! - [`codec`]: the 2-bit and 1-bit gradient codecs (R37-R41).
//! - [`trace`]: the trace parser and writer (docs/trace-format.md): typed, line-numbered errors
//!   and a round trip through the writer.
//! - [`row_ids`]: row ids of every kind through `row_sparse_pull` and row_sparse pushes, on the
//!   engine + CPU store and on the spec's `LocalStore` (R30-R33, R7).
//! - [`state_files`]: damaged and crafted optimizer-state files into `load_optimizer_states`
//!   (R47, R7), on the spec and on engine + CPU.
//! - [`differential`]: the `store_ops` operation sequences on the spec backend and on engine +
//!   CPU through the public API: identical results, outputs, errors and states (R7, R60, R61).
//!
//! Input that runs out early is not an error: [`Unstructured`] then yields zeros and empty
//! lists, so every input, even an empty one, is a valid (if short) test case.

// A fuzz body reports a broken property by panicking: that is its whole purpose, so `panic!`
// (and `assert!`) are the intended way out here. The code never unwraps.
#![allow(clippy::panic)]

use arbitrary::{Arbitrary, Unstructured};
use kvstore::normalize::{Item, Keys, Values};
use kvstore_spec::codec::{bytes_to_words, words_to_bytes, Compression, CompressionType};
use kvstore_spec::kind::Kind;
use kvstore_spec::optimizer::{
    AdaGrad, Adam, Ftrl, LrScheduler, Nag, Optimizer, RmsProp, Sgd, WarmupMode,
};
use kvstore_spec::store::LocalStore;
use kvstore_spec::{numel, DType, Data, Device, Error, Key, RowSparse, Tensor, Value};

mod differential;
mod row_ids;
mod state_files;
mod trace;

pub use differential::differential;
pub use row_ids::row_ids;
pub use state_files::state_files;
pub use trace::trace;

// ---------------------------------------------------------------------------------------------
// normalize
// ---------------------------------------------------------------------------------------------

/// Most items of a value list and most keys of a key list.
const MAX_LIST: u8 = 6;
/// Most values of one group (one key on several devices).
const MAX_GROUP: u8 = 4;

/// Fuzz body of `kvstore::normalize` (SPEC R9-R11).
///
/// Builds arbitrary [`Keys`] and [`Values<u8>`] (every nesting the types allow, empty lists,
/// mixed int and string keys; leaf values are numbered in the order given) and checks that
/// `normalize` never panics, that a success keeps every leaf with its key in the order given
/// under one key type, that a failure is a normalisation error, and that the outcome agrees with
/// [`reference_normalize`], an independent recursive formulation of the rules.
pub fn normalize(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok((keys, values)) = normalize_input(&mut u) else {
        return;
    };
    let expected = reference_normalize(&keys, &values);
    let leaves = leaves(&values);
    match kvstore::normalize(keys.clone(), values.clone()) {
        Ok(pairs) => {
            assert_eq!(
                pairs.len(),
                leaves.len(),
                "one pair per leaf value: {keys:?} {values:?} -> {pairs:?}"
            );
            let got_values: Vec<u8> = pairs.iter().map(|(_, v)| *v).collect();
            assert_eq!(
                got_values, leaves,
                "values keep the order given: {keys:?} {values:?}"
            );
            let got_keys: Vec<&Key> = pairs.iter().map(|(k, _)| k).collect();
            let want_keys = expected_key_sequence(&keys, &values);
            assert_eq!(
                got_keys, want_keys,
                "keys keep the order given: {keys:?} {values:?}"
            );
            if let Some((first, _)) = pairs.first() {
                assert!(
                    pairs.iter().all(|(k, _)| k.key_type() == first.key_type()),
                    "all keys of one type: {pairs:?}"
                );
            }
            match expected {
                Ok(reference) => {
                    assert_eq!(pairs, reference, "reference disagrees: {keys:?} {values:?}")
                }
                Err(errors) => {
                    panic!("normalize({keys:?}, {values:?}) = Ok({pairs:?}), reference: {errors:?}")
                }
            }
        }
        Err(error) => {
            assert!(
                is_normalisation_error(&error),
                "not a normalisation error: {error:?}"
            );
            match expected {
                Ok(reference) => panic!("normalize({keys:?}, {values:?}) = Err({error:?}), reference: Ok({reference:?})"),
                Err(errors) => assert!(
                    errors.contains(&error),
                    "normalize({keys:?}, {values:?}) = Err({error:?}), not among the violations {errors:?}"
                ),
            }
        }
    }
}

/// The error variants normalisation may return (R9, R11).
fn is_normalisation_error(error: &Error) -> bool {
    matches!(
        error,
        Error::MixedKeyTypes { .. }
            | Error::LengthMismatch { .. }
            | Error::ValuesNotAList { .. }
            | Error::NestedValuesForSingleKey { .. }
            | Error::EmptyValueList { .. }
    )
}

/// Which keys one input may use: mostly one type, sometimes both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
enum KeyMix {
    Ints,
    Strings,
    Mixed,
}

fn normalize_key(u: &mut Unstructured<'_>, mix: KeyMix) -> arbitrary::Result<Key> {
    let int = match mix {
        KeyMix::Ints => true,
        KeyMix::Strings => false,
        KeyMix::Mixed => u.arbitrary()?,
    };
    Ok(match (int, u.int_in_range(0u8..=3)?) {
        (true, 3) => Key::Int(u.arbitrary()?),
        (true, i) => Key::Int(i64::from(i)),
        (false, 3) => Key::Str(u.arbitrary::<String>()?.chars().take(8).collect()),
        (false, i) => Key::Str(["a", "b", "w"][usize::from(i)].into()),
    })
}

fn normalize_input(u: &mut Unstructured<'_>) -> arbitrary::Result<(Keys, Values<u8>)> {
    let mut next = 0u8;
    let mut leaf = || {
        next = next.wrapping_add(1);
        next
    };
    let values = if u.ratio(1u8, 4)? {
        Values::One(leaf())
    } else {
        let n = u.int_in_range(0..=MAX_LIST)?;
        let mut items = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            if u.ratio(2u8, 3)? {
                items.push(Item::One(leaf()));
            } else {
                let m = u.int_in_range(0..=MAX_GROUP)?;
                items.push(Item::Group((0..m).map(|_| leaf()).collect()));
            }
        }
        Values::List(items)
    };
    let mix: KeyMix = u.arbitrary()?;
    let keys = if u.ratio(1u8, 4)? {
        Keys::One(normalize_key(u, mix)?)
    } else {
        let n = match &values {
            Values::List(items) if u.ratio(3u8, 4)? => items.len(),
            _ => usize::from(u.int_in_range(0..=MAX_LIST)?),
        };
        Keys::List(
            (0..n)
                .map(|_| normalize_key(u, mix))
                .collect::<arbitrary::Result<_>>()?,
        )
    };
    Ok((keys, values))
}

/// Every leaf value, depth first, in the order given.
fn leaves(values: &Values<u8>) -> Vec<u8> {
    match values {
        Values::One(v) => vec![*v],
        Values::List(items) => items
            .iter()
            .flat_map(|item| match item {
                Item::One(v) => vec![*v],
                Item::Group(vs) => vs.clone(),
            })
            .collect(),
    }
}

/// The key of every leaf, when normalisation succeeds.
fn expected_key_sequence<'a>(keys: &'a Keys, values: &Values<u8>) -> Vec<&'a Key> {
    match (keys, values) {
        (Keys::One(k), values) => vec![k; leaves(values).len()],
        (Keys::List(ks), Values::List(items)) => ks
            .iter()
            .zip(items)
            .flat_map(|(k, item)| {
                let n = match item {
                    Item::One(_) => 1,
                    Item::Group(vs) => vs.len(),
                };
                std::iter::repeat_n(k, n)
            })
            .collect(),
        (Keys::List(_), Values::One(_)) => Vec::new(),
    }
}

/// An independent, recursive statement of R9-R11: the pairs, or **every** rule the input
/// violates (the implementation may report any one of them).
pub fn reference_normalize(keys: &Keys, values: &Values<u8>) -> Result<Vec<(Key, u8)>, Vec<Error>> {
    match (keys, values) {
        (Keys::One(key), Values::One(value)) => Ok(vec![(key.clone(), *value)]),
        (Keys::One(key), Values::List(items)) => {
            let mut errors = Vec::new();
            if items.is_empty() {
                errors.push(Error::EmptyValueList { key: key.clone() });
            }
            if items.iter().any(|item| matches!(item, Item::Group(_))) {
                errors.push(Error::NestedValuesForSingleKey { key: key.clone() });
            }
            if errors.is_empty() {
                Ok(items
                    .iter()
                    .filter_map(|item| leaf_of(item).map(|v| (key.clone(), v)))
                    .collect())
            } else {
                Err(errors)
            }
        }
        (Keys::List(ks), Values::One(_)) => Err(vec![Error::ValuesNotAList { keys: ks.len() }]),
        (Keys::List(ks), Values::List(items)) => {
            let mut errors = Vec::new();
            if ks.len() != items.len() {
                errors.push(Error::LengthMismatch {
                    keys: ks.len(),
                    values: items.len(),
                });
            }
            empty_groups(ks, items, &mut errors);
            if let Some(first) = ks.first() {
                if let Some(other) = ks.iter().find(|k| k.key_type() != first.key_type()) {
                    errors.push(Error::MixedKeyTypes {
                        first: first.key_type(),
                        second: other.key_type(),
                    });
                }
            }
            if errors.is_empty() {
                Ok(flatten(ks, items))
            } else {
                Err(errors)
            }
        }
    }
}

fn leaf_of(item: &Item<u8>) -> Option<u8> {
    match item {
        Item::One(v) => Some(*v),
        Item::Group(_) => None,
    }
}

/// `EmptyValueList` for every key paired with an empty group.
fn empty_groups(ks: &[Key], items: &[Item<u8>], errors: &mut Vec<Error>) {
    if let (Some((k, ks)), Some((item, items))) = (ks.split_first(), items.split_first()) {
        if matches!(item, Item::Group(vs) if vs.is_empty()) {
            errors.push(Error::EmptyValueList { key: k.clone() });
        }
        empty_groups(ks, items, errors);
    }
}

/// The first key with its item's values, then the rest.
fn flatten(ks: &[Key], items: &[Item<u8>]) -> Vec<(Key, u8)> {
    let (Some((k, ks)), Some((item, items))) = (ks.split_first(), items.split_first()) else {
        return Vec::new();
    };
    let mut pairs: Vec<(Key, u8)> = match item {
        Item::One(v) => vec![(k.clone(), *v)],
        Item::Group(vs) => vs.iter().map(|v| (k.clone(), *v)).collect(),
    };
    pairs.extend(flatten(ks, items));
    pairs
}

// ---------------------------------------------------------------------------------------------
// store_ops
// ---------------------------------------------------------------------------------------------

/// Most operations of one sequence.
const MAX_OPS: usize = 32;
/// Most pairs (or outputs) of one call.
const MAX_PAIRS: u8 = 4;
/// Shapes a key is usually given.
const GOOD_SHAPES: [&[usize]; 3] = [&[2], &[3, 2], &[4, 1]];
/// Shapes that are wrong for every key, or for all but one.
const ODD_SHAPES: [&[usize]; 5] = [&[], &[0], &[3], &[2, 2], &[4, 0]];
/// Row ids that are in range, negative, or out of range.
const ROW_IDS: [i64; 8] = [0, 1, 2, 3, -1, 4, i64::MIN, i64::MAX];

/// Fuzz body of the specification's single-process store (SPEC R7).
///
/// Decodes up to 32 operations (init, push, pull, row_sparse_pull, pushpull, broadcast,
/// set_gradient_compression, set_optimizer with SGD, save and load of optimizer states) on a
/// `local`, `device` or `nccl` store, with small keys, shapes that are sometimes wrong, dense and
/// row_sparse values with arbitrary row ids, several dtypes and devices. Operations whose values
/// cannot be constructed are skipped. After each operation that fails, the observable state must
/// be bit-identical to the state before it (R7). A shadow store receives only the operations that
/// succeeded; it must give the same results and the same observable state, so a failing call
/// cannot have changed hidden state (a device set, an init sequence number) either.
pub fn store_ops(data: &[u8]) {
    run_store_ops(data, false);
}

/// What [`store_ops`] ran: every operation it applied, in order, with its outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreOpsReport {
    /// The store kind.
    pub kind: &'static str,
    /// Each applied operation's name and, when it failed, the error variant's name.
    pub ops: Vec<(&'static str, Option<String>)>,
    /// Operations decoded but skipped because a value failed to construct.
    pub skipped: usize,
}

/// [`store_ops`], returning what it ran (for corpus statistics); panics exactly when
/// [`store_ops`] does.
pub fn store_ops_report(data: &[u8]) -> StoreOpsReport {
    run_store_ops(data, true)
}

/// The body of [`store_ops`]. With `name_errors`, the report names each failure's error variant
/// (formatting the error costs more than most operations, so the fuzz target leaves it out; the
/// checks are the same either way).
fn run_store_ops(data: &[u8], name_errors: bool) -> StoreOpsReport {
    let mut report = StoreOpsReport::default();
    let mut u = Unstructured::new(data);
    let Ok(kind) = u.arbitrary::<KindChoice>() else {
        return report;
    };
    report.kind = kind.name();
    let Ok(kind) = Kind::parse(kind.name()) else {
        return report;
    };
    let Ok(mut store) = LocalStore::new(kind) else {
        return report;
    };
    let mut shadow = store.clone();
    let mut saved: Vec<Vec<u8>> = Vec::new();
    // The store's observable state as the last step left it: nothing touches the store between
    // two steps, so it is the next step's state before its operation.
    let mut before = store.observable();
    for step in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = decode_op(&mut u, &saved) else {
            break;
        };
        // `None`: a value failed to construct; the operation is skipped.
        let Some(op) = op else {
            report.skipped += 1;
            continue;
        };
        match apply(&mut store, &op) {
            Err(error) => {
                let after = store.observable();
                assert!(
                    before == after,
                    "R7: step {step}: {op:?} failed with {error:?} but changed the store\nbefore: {before:?}\nafter:  {after:?}"
                );
                let name = if name_errors {
                    variant(&error)
                } else {
                    String::new()
                };
                report.ops.push((op.name(), Some(name)));
            }
            Ok(outcome) => {
                let shadow_outcome = apply(&mut shadow, &op);
                assert!(
                    shadow_outcome.as_ref() == Ok(&outcome),
                    "R7: step {step}: {op:?} gave {outcome:?}, but {shadow_outcome:?} on a store that never saw the failed calls"
                );
                let after = store.observable();
                let shadow_after = shadow.observable();
                assert!(
                    after == shadow_after,
                    "R7: step {step}: after {op:?}, a store that never saw the failed calls differs\nstore:  {after:?}\nshadow: {shadow_after:?}"
                );
                before = after;
                if let Outcome::Bytes(bytes) = outcome {
                    saved.push(bytes);
                }
                report.ops.push((op.name(), None));
            }
        }
    }
    report
}

/// The store kinds of the fuzzer.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum KindChoice {
    Local,
    Device,
    Nccl,
}

impl KindChoice {
    fn name(self) -> &'static str {
        match self {
            KindChoice::Local => "local",
            KindChoice::Device => "device",
            KindChoice::Nccl => "nccl",
        }
    }
}

/// One decoded operation, ready to run on any store.
#[derive(Debug, Clone)]
enum Op {
    Init(Vec<(Key, Value)>),
    Push(Vec<(Key, Value)>),
    Pull(Vec<(Key, Value)>, bool),
    RowSparsePull(Vec<(Key, Value)>, Vec<Vec<i64>>),
    PushPull(Vec<(Key, Value)>, Vec<(Key, Value)>),
    Broadcast(Vec<(Key, Value)>, Vec<(Key, Value)>),
    SetCompression(Compression),
    SetOptimizer(Optimizer),
    Save(bool),
    Load(Vec<u8>),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Init(_) => "init",
            Op::Push(_) => "push",
            Op::Pull(..) => "pull",
            Op::RowSparsePull(..) => "row_sparse_pull",
            Op::PushPull(..) => "pushpull",
            Op::Broadcast(..) => "broadcast",
            Op::SetCompression(_) => "set_gradient_compression",
            Op::SetOptimizer(_) => "set_optimizer",
            Op::Save(_) => "save_optimizer_states",
            Op::Load(_) => "load_optimizer_states",
        }
    }
}

/// What a successful operation returns.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Unit,
    Values(Vec<Value>),
    Bytes(Vec<u8>),
}

fn apply(store: &mut LocalStore, op: &Op) -> kvstore_spec::Result<Outcome> {
    Ok(match op {
        Op::Init(pairs) => store.init(pairs).map(|()| Outcome::Unit)?,
        Op::Push(pairs) => store.push(pairs).map(|()| Outcome::Unit)?,
        Op::Pull(outs, ignore_sparse) => Outcome::Values(store.pull(outs, *ignore_sparse)?),
        Op::RowSparsePull(outs, ids) => Outcome::Values(store.row_sparse_pull(outs, ids)?),
        Op::PushPull(pairs, outs) => Outcome::Values(store.pushpull(pairs, outs)?),
        Op::Broadcast(pairs, outs) => Outcome::Values(store.broadcast(pairs, outs)?),
        Op::SetCompression(c) => store.set_gradient_compression(*c).map(|()| Outcome::Unit)?,
        Op::SetOptimizer(o) => store.set_optimizer(o.clone()).map(|()| Outcome::Unit)?,
        Op::Save(dump) => Outcome::Bytes(store.save_optimizer_states(*dump)?),
        Op::Load(bytes) => store.load_optimizer_states(bytes).map(|()| Outcome::Unit)?,
    })
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum OpKind {
    Init,
    Push,
    Pull,
    RowSparsePull,
    PushPull,
    Broadcast,
    SetCompression,
    SetOptimizer,
    Save,
    Load,
}

/// Decodes one operation; `Ok(None)` when one of its values cannot be constructed.
fn decode_op(u: &mut Unstructured<'_>, saved: &[Vec<u8>]) -> arbitrary::Result<Option<Op>> {
    let kind: OpKind = u.arbitrary()?;
    let mix: KeyMix = if u.ratio(1u8, 16)? {
        KeyMix::Mixed
    } else {
        u.arbitrary()?
    };
    Ok(match kind {
        OpKind::Init => pairs(u, mix, ValueRole::Input)?.map(Op::Init),
        OpKind::Push => pairs(u, mix, ValueRole::Input)?.map(Op::Push),
        OpKind::Pull => {
            let ignore_sparse = u.arbitrary()?;
            pairs(u, mix, ValueRole::Output)?.map(|outs| Op::Pull(outs, ignore_sparse))
        }
        OpKind::RowSparsePull => {
            let outs = pairs(u, mix, ValueRole::Output)?;
            let lists = u.int_in_range(0u8..=3)?;
            let mut ids = Vec::with_capacity(usize::from(lists));
            for _ in 0..lists {
                ids.push(row_id_list(u)?);
            }
            outs.map(|outs| Op::RowSparsePull(outs, ids))
        }
        OpKind::PushPull => {
            let ins = pairs(u, mix, ValueRole::Input)?;
            let outs = pairs(u, mix, ValueRole::Output)?;
            ins.zip(outs).map(|(i, o)| Op::PushPull(i, o))
        }
        OpKind::Broadcast => {
            let ins = pairs(u, mix, ValueRole::Input)?;
            let outs = pairs(u, mix, ValueRole::Output)?;
            ins.zip(outs).map(|(i, o)| Op::Broadcast(i, o))
        }
        OpKind::SetCompression => {
            let kind = if u.arbitrary()? {
                CompressionType::TwoBit
            } else {
                CompressionType::OneBit
            };
            // `Compression::new` rejects bad thresholds; those are the codec target's business.
            Compression::new(kind, threshold(u)?)
                .ok()
                .map(Op::SetCompression)
        }
        OpKind::SetOptimizer => Some(Op::SetOptimizer(optimizer(u)?)),
        OpKind::Save => Some(Op::Save(u.arbitrary()?)),
        OpKind::Load => Some(Op::Load(load_bytes(u, saved)?)),
    })
}

/// Inputs go into the store; outputs receive pulls (row_sparse outputs usually start empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueRole {
    Input,
    Output,
}

/// Up to four `(key, value)` pairs; `None` when a value cannot be constructed.
fn pairs(
    u: &mut Unstructured<'_>,
    mix: KeyMix,
    role: ValueRole,
) -> arbitrary::Result<Option<Vec<(Key, Value)>>> {
    let n = u.int_in_range(0..=MAX_PAIRS)?;
    let mut pairs = Vec::with_capacity(usize::from(n));
    let mut ok = true;
    for _ in 0..n {
        let key = store_key(u, mix)?;
        match value(u, role)? {
            Some(v) => pairs.push((key, v)),
            None => ok = false,
        }
    }
    Ok(ok.then_some(pairs))
}

/// A few ints or a few strings.
fn store_key(u: &mut Unstructured<'_>, mix: KeyMix) -> arbitrary::Result<Key> {
    let int = match mix {
        KeyMix::Ints => true,
        KeyMix::Strings => false,
        KeyMix::Mixed => u.arbitrary()?,
    };
    let i = u.int_in_range(0u8..=2)?;
    Ok(if int {
        Key::Int(i64::from(i) * 3 - 1)
    } else {
        Key::Str(["w", "b", "emb"][usize::from(i)].into())
    })
}

fn shape(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<usize>> {
    let pick = usize::from(u.int_in_range(0u8..=15)?);
    Ok(match ODD_SHAPES.get(pick.saturating_sub(11)) {
        Some(odd) if pick >= 11 => odd.to_vec(),
        _ => GOOD_SHAPES[pick % GOOD_SHAPES.len()].to_vec(),
    })
}

fn dtype(u: &mut Unstructured<'_>) -> arbitrary::Result<DType> {
    Ok(match u.int_in_range(0u8..=7)? {
        0..=3 => DType::F32,
        4 | 5 => DType::F16,
        6 => DType::F64,
        _ => DType::BF16,
    })
}

fn device(u: &mut Unstructured<'_>) -> arbitrary::Result<Device> {
    Ok(match u.int_in_range(0u8..=4)? {
        4 => Device::Gpu(0),
        i => Device::Cpu(u32::from(i)),
    })
}

/// An element: mostly small exact numbers, sometimes signed zeros, NaN, infinities, overflow
/// for half types, or any f32 bit pattern.
fn element(u: &mut Unstructured<'_>) -> arbitrary::Result<f64> {
    Ok(match u.int_in_range(0u8..=15)? {
        0 => 0.0,
        1 => -0.0,
        2 => 1.0,
        3 => -1.0,
        4 => 0.5,
        5 => -0.5,
        6 => 0.25,
        7 => 3.0,
        8 => 0.1,
        9 => 1.0e5,
        10 => f64::NAN,
        11 => f64::INFINITY,
        12 => f64::NEG_INFINITY,
        13 => 1.0e-8,
        _ => f64::from(f32::from_bits(u.arbitrary()?)),
    })
}

fn elements(u: &mut Unstructured<'_>, dtype: DType, n: usize) -> arbitrary::Result<Data> {
    let xs = (0..n)
        .map(|_| element(u))
        .collect::<arbitrary::Result<Vec<f64>>>()?;
    Ok(Data::from_f64(dtype, &xs))
}

/// Mostly the right length, sometimes one off.
fn length(u: &mut Unstructured<'_>, right: usize) -> arbitrary::Result<usize> {
    Ok(match u.int_in_range(0u8..=15)? {
        0 => right.saturating_sub(1),
        1 => right + 1,
        _ => right,
    })
}

/// A row id list: in-range sorted rows, or anything from [`ROW_IDS`] in any order.
fn row_id_list(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<i64>> {
    let n = u.int_in_range(0u8..=5)?;
    (0..n)
        .map(|_| Ok(ROW_IDS[usize::from(u.int_in_range(0u8..=7)?)]))
        .collect()
}

/// A dense or row_sparse value; `None` when the fallible constructor refuses it.
fn value(u: &mut Unstructured<'_>, role: ValueRole) -> arbitrary::Result<Option<Value>> {
    let shape = shape(u)?;
    let dtype = dtype(u)?;
    let device = device(u)?;
    // Good shapes are tiny, and odd ones are tiny or empty: no allocation can be large.
    let Ok(n) = numel(&shape) else {
        return Ok(None);
    };
    let sparse = u.ratio(1u8, 4)?;
    if !sparse {
        let len = length(u, n)?;
        let data = elements(u, dtype, len)?;
        return Ok(Tensor::new(shape, data)
            .ok()
            .map(|t| Value::Dense(t.on(device))));
    }
    let rows = shape.first().copied().unwrap_or(0);
    let row_len: usize = shape.iter().skip(1).product();
    let ids: Vec<i64> = match u.int_in_range(0u8..=3)? {
        // An empty output, as pulls are usually given.
        0 if role == ValueRole::Output => Vec::new(),
        // Strictly increasing rows in range (valid when `rows` is the shape's).
        0 | 1 => {
            let mut ids = Vec::new();
            for row in 0..rows.min(8) {
                if u.arbitrary()? {
                    ids.push(row as i64);
                }
            }
            ids
        }
        _ => row_id_list(u)?,
    };
    let len = length(u, ids.len() * row_len)?;
    let data = elements(u, dtype, len)?;
    Ok(RowSparse::new(shape, ids, data)
        .ok()
        .map(|r| Value::RowSparse(r.on(device))))
}

fn threshold(u: &mut Unstructured<'_>) -> arbitrary::Result<f32> {
    Ok(match u.int_in_range(0u8..=7)? {
        0..=2 => 0.5,
        3 => 0.25,
        4 => 1.0,
        5 => 0.0,
        6 => -0.5,
        _ => f32::from_bits(u.arbitrary()?),
    })
}

/// SGD parameters, sometimes invalid (not finite, negative clip).
fn sgd(u: &mut Unstructured<'_>) -> arbitrary::Result<Sgd> {
    let mut pick = |choices: &[f64]| -> arbitrary::Result<f64> { Ok(*u.choose(choices)?) };
    let learning_rate = pick(&[0.1, 0.1, 0.01, 1.0, 0.0, -0.5, f64::NAN])?;
    let momentum = pick(&[0.0, 0.0, 0.9, 0.5, f64::INFINITY])?;
    let wd = pick(&[0.0, 0.0, 0.01, 0.5])?;
    let rescale_grad = pick(&[1.0, 1.0, 0.5, 2.0])?;
    let clip = pick(&[-2.0, -2.0, 1.0, 0.0, -1.0, f64::NAN])?;
    Ok(Sgd {
        learning_rate,
        momentum,
        wd,
        rescale_grad,
        clip_gradient: (clip != -2.0).then_some(clip),
        lr_scheduler: None,
    })
}

/// Any optimizer (R70-R76): SGD's parameters carried over to a kind picked by the input, its
/// own parameters from small menus (sometimes invalid), sometimes with a schedule.
fn optimizer(u: &mut Unstructured<'_>) -> arbitrary::Result<Optimizer> {
    let p = sgd(u)?;
    let kind = u.int_in_range(0u8..=7)?;
    let mut pick = |choices: &[f64]| -> arbitrary::Result<f64> { Ok(*u.choose(choices)?) };
    let beta = pick(&[0.9, 0.5, 0.0, 1.0, f64::NAN])?;
    let eps = pick(&[1e-8, 1e-7, 0.0, 1.0])?;
    let flag = pick(&[0.0, 1.0])? != 0.0;
    let lr_scheduler = match u.int_in_range(0u8..=3)? {
        0 => Some(LrScheduler::Factor {
            step: u.int_in_range(0u64..=3)?,
            factor: *u.choose(&[0.5, 1.0, 2.0])?,
            stop_factor_lr: 1e-8,
            warmup_steps: u.int_in_range(0u64..=2)?,
            warmup_begin_lr: 0.0,
            warmup_mode: WarmupMode::Linear,
        }),
        1 => Some(LrScheduler::MultiFactor {
            steps: vec![1, u.int_in_range(0u64..=4)?],
            factor: 0.5,
            warmup_steps: 0,
            warmup_begin_lr: 0.0,
            warmup_mode: WarmupMode::Constant,
        }),
        _ => None,
    };
    let Sgd {
        learning_rate,
        momentum,
        wd,
        rescale_grad,
        clip_gradient,
        ..
    } = p;
    Ok(match kind {
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
            beta1: beta,
            epsilon: eps,
            lazy_update: flag,
            ..Adam::default()
        }),
        5 => Optimizer::AdaGrad(AdaGrad {
            learning_rate,
            wd,
            rescale_grad,
            clip_gradient,
            lr_scheduler,
            eps,
        }),
        6 => Optimizer::RmsProp(RmsProp {
            learning_rate,
            wd,
            rescale_grad,
            clip_gradient,
            lr_scheduler,
            gamma1: beta,
            epsilon: eps,
            centered: flag,
            clip_weights: flag.then_some(1.0),
            ..RmsProp::default()
        }),
        _ => Optimizer::Ftrl(Ftrl {
            learning_rate,
            wd,
            rescale_grad,
            clip_gradient,
            lr_scheduler,
            lamda1: eps,
            beta,
        }),
    })
}

/// The bytes of a `load_optimizer_states`: something saved earlier, saved bytes with one byte
/// changed or cut short, a crafted state file, or raw bytes.
fn load_bytes(u: &mut Unstructured<'_>, saved: &[Vec<u8>]) -> arbitrary::Result<Vec<u8>> {
    let choice = u.int_in_range(0u8..=5)?;
    if let (0..=2, Some(last)) = (choice, saved.len().checked_sub(1)) {
        let mut bytes = saved[usize::from(u.int_in_range(0u8..=7)?).min(last)].clone();
        if choice == 1 && !bytes.is_empty() {
            let at = u.choose_index(bytes.len())?;
            bytes[at] = u.arbitrary()?;
        }
        if choice == 2 {
            bytes.truncate(u.choose_index(bytes.len() + 1)?);
        }
        return Ok(bytes);
    }
    if choice <= 4 {
        return crafted_states(u);
    }
    let n = u.int_in_range(0u8..=64)?;
    (0..n).map(|_| u.arbitrary::<u8>()).collect()
}

/// Appends `value` as compact JSON, or `null` when it does not serialise (as
/// `serde_json::to_value(value).unwrap_or_default()` would give). A macro, as this crate does not
/// name serde's `Serialize` trait.
macro_rules! write_json {
    ($out:expr, $value:expr) => {{
        let out: &mut Vec<u8> = $out;
        let start = out.len();
        if serde_json::to_writer(&mut *out, $value).is_err() {
            out.truncate(start);
            out.extend_from_slice(b"null");
        }
    }};
}

/// A state file in the saved format, with states that may not fit their keys: another shape,
/// data of another length, another dtype; sometimes a bad header or an invalid optimizer.
///
/// The document is `{"format":…,"version":…,"states":[[key,tensor],…],"optimizer":…}`, written
/// piece by piece with `serde_json::to_writer`: the same bytes as building a `serde_json::Value`
/// and serialising it (the unit test `crafted_states_writes_what_a_json_value_writes` checks
/// that), without the maps of a `Value` (an `IndexMap` with SipHash per object), which cost more
/// than the load they feed.
fn crafted_states(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let n = u.int_in_range(0u8..=3)?;
    let mut states = vec![b'['];
    for i in 0..n {
        let mix = if u.arbitrary()? {
            KeyMix::Ints
        } else {
            KeyMix::Strings
        };
        let key = store_key(u, mix)?;
        if i > 0 {
            states.push(b',');
        }
        states.push(b'[');
        write_json!(&mut states, &key);
        states.push(b',');
        if u.ratio(1u8, 4)? {
            states.extend_from_slice(b"null");
        } else {
            crafted_tensor(u, &mut states)?;
        }
        states.push(b']');
    }
    states.push(b']');
    let mut optimizer_json = Vec::new();
    if u.arbitrary()? {
        write_json!(&mut optimizer_json, &optimizer(u)?);
    } else {
        optimizer_json.extend_from_slice(b"null");
    }
    let format = if u.ratio(1u8, 16)? {
        "kvstore-states"
    } else {
        "kvstore-optimizer-states"
    };
    let version = if u.ratio(1u8, 16)? { 2 } else { 1 };
    let mut file = Vec::with_capacity(64 + states.len() + optimizer_json.len());
    file.extend_from_slice(b"{\"format\":");
    write_json!(&mut file, format);
    file.extend_from_slice(format!(",\"version\":{version},\"states\":").as_bytes());
    file.extend_from_slice(&states);
    file.extend_from_slice(b",\"optimizer\":");
    file.extend_from_slice(&optimizer_json);
    file.push(b'}');
    Ok(file)
}

/// A serialised tensor whose shape and data length need not agree, appended to `out`.
///
/// `Tensor::new` would refuse such a tensor, but a state file is read with serde; this is how a
/// damaged or hand-written file looks, and loading it must fail cleanly (R47, R7).
fn crafted_tensor(u: &mut Unstructured<'_>, out: &mut Vec<u8>) -> arbitrary::Result<()> {
    let real_shape = shape(u)?;
    let dtype = dtype(u)?;
    let n = numel(&real_shape).unwrap_or(0);
    let data = elements(u, dtype, n)?;
    let Ok(tensor) = Tensor::new(real_shape, data) else {
        out.extend_from_slice(b"null");
        return Ok(());
    };
    let mut json = Vec::new();
    write_json!(&mut json, &tensor);
    if u.ratio(1u8, 4)? {
        // Claim another shape for the same data.
        let claimed = shape(u)?;
        match json_shape_span(&json) {
            Some(span) => {
                let mut shape_json = Vec::new();
                write_json!(&mut shape_json, &claimed);
                json.splice(span, shape_json);
            }
            // Not the layout `json_shape_span` knows: edit the document as a `Value`.
            None => {
                let mut value = serde_json::to_value(&tensor).unwrap_or_default();
                value["shape"] = serde_json::to_value(claimed).unwrap_or_default();
                json = serde_json::to_vec(&value).unwrap_or_default();
            }
        }
    }
    out.extend_from_slice(&json);
    Ok(())
}

/// Where the shape array sits in a serialised tensor that starts `{"shape":[`: the shape is a
/// flat list of numbers, so it ends at the first `]`.
fn json_shape_span(json: &[u8]) -> Option<std::ops::Range<usize>> {
    const PREFIX: &[u8] = b"{\"shape\":";
    if !json.starts_with(PREFIX) || json.get(PREFIX.len()) != Some(&b'[') {
        return None;
    }
    let end = json[PREFIX.len()..].iter().position(|&b| b == b']')?;
    Some(PREFIX.len()..PREFIX.len() + end + 1)
}

// ---------------------------------------------------------------------------------------------
// codec
// ---------------------------------------------------------------------------------------------

/// Most gradient elements of one codec input.
const MAX_ELEMENTS: u8 = 80;

/// Fuzz body of the gradient codecs (SPEC R37-R41).
///
/// - `Compression::new` accepts exactly the finite thresholds (and only positive ones for 2bit).
/// - With valid parameters, `quantize` + `dequantize` keeps the error-feedback identity
///   `residual_new == (residual_old + g) - decoded` bit for bit for finite inputs; decoded
///   values are `±t`/`0` (2bit) or `±1` (1bit); the packing has `ceil(n/per_word)` words, the
///   codes sit where R39/R41 put them, unused bits are zero and 2bit never emits code `01`.
/// - A gradient and residual of different lengths is an error that leaves the residual alone.
/// - `dequantize` on arbitrary words and length never panics: it fails exactly when there are
///   too few words. `bytes_to_words` / `words_to_bytes` round-trip.
/// - `Compression::from_params` on arbitrary strings never panics.
pub fn codec(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = codec_round_trip(&mut u);
    let _ = codec_arbitrary_words(&mut u);
    let _ = codec_params(&mut u);
}

fn codec_value(u: &mut Unstructured<'_>) -> arbitrary::Result<f32> {
    Ok(match u.int_in_range(0u8..=11)? {
        0 => 0.0,
        1 => -0.0,
        2 => 0.5,
        3 => -0.5,
        4 => 1.0,
        5 => -1.0,
        6 => 0.2,
        7 => -0.3,
        8 => f32::INFINITY,
        9 => f32::NAN,
        _ => f32::from_bits(u.arbitrary()?),
    })
}

fn per_word(kind: CompressionType) -> usize {
    match kind {
        CompressionType::TwoBit => 16,
        CompressionType::OneBit => 32,
    }
}

/// Where element `i` sits (word, shift, code mask), straight from R39 and R41.
fn code_position(kind: CompressionType, i: usize) -> (usize, u32, u32) {
    match kind {
        CompressionType::TwoBit => {
            let j = (i % 16) as u32;
            (i / 16, 8 * (j / 4) + 6 - 2 * (j % 4), 0b11)
        }
        CompressionType::OneBit => {
            let j = (i % 32) as u32;
            (i / 32, 8 * (j / 8) + 7 - (j % 8), 0b1)
        }
    }
}

/// The value R38/R40 decode from a code.
fn decoded_value(kind: CompressionType, code: u32, t: f32) -> f32 {
    match (kind, code) {
        (CompressionType::TwoBit, 0b11) => t,
        (CompressionType::TwoBit, 0b10) => -t,
        (CompressionType::TwoBit, _) => 0.0,
        (CompressionType::OneBit, 1) => 1.0,
        (CompressionType::OneBit, _) => -1.0,
    }
}

fn codec_round_trip(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let kind = if u.arbitrary()? {
        CompressionType::TwoBit
    } else {
        CompressionType::OneBit
    };
    let threshold = match u.int_in_range(0u8..=3)? {
        0 => 0.5,
        1 => f32::from_bits(u.arbitrary()?),
        _ => codec_value(u)?,
    };
    let n = usize::from(u.int_in_range(0..=MAX_ELEMENTS)?);
    let grad = (0..n)
        .map(|_| codec_value(u))
        .collect::<arbitrary::Result<Vec<f32>>>()?;
    let residual_len = length(u, n)?;
    let residual_old = (0..residual_len)
        .map(|_| {
            if u.ratio(1u8, 2)? {
                Ok(0.0)
            } else {
                codec_value(u)
            }
        })
        .collect::<arbitrary::Result<Vec<f32>>>()?;

    let valid = threshold.is_finite() && (kind == CompressionType::OneBit || threshold > 0.0);
    let c = match Compression::new(kind, threshold) {
        Ok(c) => {
            assert!(
                valid,
                "R37: Compression::new({kind:?}, {threshold:?}) accepted an invalid threshold"
            );
            assert_eq!((c.kind, c.threshold.to_bits()), (kind, threshold.to_bits()));
            c
        }
        Err(error) => {
            assert!(!valid, "R37: Compression::new({kind:?}, {threshold:?}) refused a valid threshold: {error:?}");
            assert!(
                matches!(error, Error::InvalidCompression { .. }),
                "R37: {error:?}"
            );
            return Ok(());
        }
    };

    let mut residual = residual_old.clone();
    let words = match c.quantize(&grad, &mut residual) {
        Ok(words) => {
            assert_eq!(
                residual_len, n,
                "quantize accepted a residual of another length"
            );
            words
        }
        Err(error) => {
            assert_ne!(residual_len, n, "quantize failed: {error:?}");
            assert!(
                matches!(error, Error::InvalidCompression { .. }),
                "{error:?}"
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&residual),
                bits(&residual_old),
                "a failed quantize changed the residual"
            );
            return Ok(());
        }
    };
    let per_word = per_word(kind);
    assert_eq!(
        words.len(),
        n.div_ceil(per_word),
        "R39/R41: word count for {n} elements"
    );
    assert_eq!(c.compressed_words(n), words.len());

    let decoded = match c.dequantize(&words, n) {
        Ok(decoded) => decoded,
        Err(error) => panic!("dequantize of quantize's own words failed: {error:?}"),
    };
    assert_eq!(decoded.len(), n);
    let mut used = vec![0u32; words.len()];
    for i in 0..n {
        let (word, shift, mask) = code_position(kind, i);
        let code = (words[word] >> shift) & mask;
        used[word] |= mask << shift;
        if kind == CompressionType::TwoBit {
            assert_ne!(code, 0b01, "R38: code 01 is never produced (element {i})");
        }
        let want = decoded_value(kind, code, threshold);
        assert_eq!(
            decoded[i].to_bits(),
            want.to_bits(),
            "R38/R40: element {i} decodes code {code:b}"
        );
        let (g, r_old, r_new) = (grad[i], residual_old[i], residual[i]);
        if g.is_finite() && r_old.is_finite() {
            let expected = (r_old + g) - decoded[i];
            assert_eq!(
                r_new.to_bits(),
                expected.to_bits(),
                "R38/R40: element {i}: residual {r_old:?} + grad {g:?} - decoded {:?} should be {expected:?}, got {r_new:?} (t = {threshold:?})",
                decoded[i]
            );
        }
    }
    for (w, (&word, &mask)) in words.iter().zip(&used).enumerate() {
        assert_eq!(
            word & !mask,
            0,
            "R39/R41: unused bits of word {w} must be 0: {word:#x}"
        );
    }
    let bytes = words_to_bytes(&words);
    assert_eq!(bytes.len(), 4 * words.len());
    assert_eq!(
        bytes_to_words(&bytes).ok().as_ref(),
        Some(&words),
        "little-endian round trip"
    );
    Ok(())
}

fn codec_arbitrary_words(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let kind = if u.arbitrary()? {
        CompressionType::TwoBit
    } else {
        CompressionType::OneBit
    };
    let Ok(c) = Compression::new(kind, 0.5) else {
        return Ok(());
    };
    let count = u.int_in_range(0u8..=8)?;
    let words = (0..count)
        .map(|_| u.arbitrary::<u32>())
        .collect::<arbitrary::Result<Vec<u32>>>()?;
    let n: usize = match u.int_in_range(0u8..=3)? {
        0 => u.arbitrary()?,
        1 => usize::MAX - usize::from(u.arbitrary::<u8>()?),
        _ => usize::from(u.int_in_range(0u16..=300)?),
    };
    let enough = words.len() >= n.div_ceil(per_word(kind));
    match c.dequantize(&words, n) {
        Ok(values) => {
            assert!(
                enough,
                "dequantize of {n} elements from {} words succeeded",
                words.len()
            );
            assert_eq!(values.len(), n);
            for (i, v) in values.iter().enumerate() {
                let (word, shift, mask) = code_position(kind, i);
                let want = decoded_value(kind, (words[word] >> shift) & mask, 0.5);
                assert_eq!(v.to_bits(), want.to_bits(), "element {i} of {words:x?}");
            }
        }
        Err(error) => {
            assert!(
                !enough,
                "dequantize of {n} elements from {} words failed: {error:?}",
                words.len()
            );
        }
    }
    let raw: Vec<u8> = {
        let len = u.int_in_range(0u8..=17)?;
        (0..len)
            .map(|_| u.arbitrary::<u8>())
            .collect::<arbitrary::Result<_>>()?
    };
    match bytes_to_words(&raw) {
        Ok(words) => {
            assert_eq!(raw.len() % 4, 0);
            assert_eq!(words_to_bytes(&words), raw);
        }
        Err(_) => assert_ne!(raw.len() % 4, 0),
    }
    Ok(())
}

fn codec_params(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let n = u.int_in_range(0u8..=3)?;
    let mut params: Vec<(String, String)> = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let key = match u.int_in_range(0u8..=3)? {
            0 => "type".to_owned(),
            1 => "threshold".to_owned(),
            _ => u.arbitrary::<String>()?,
        };
        let value = match u.int_in_range(0u8..=4)? {
            0 => "2bit".to_owned(),
            1 => "1bit".to_owned(),
            2 => format!("{}", f32::from_bits(u.arbitrary()?)),
            _ => u.arbitrary::<String>()?,
        };
        params.push((key, value));
    }
    let result = Compression::from_params(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    match result {
        Ok(c) => {
            assert!(c.threshold.is_finite(), "R37: {params:?} gave {c:?}");
            assert!(
                c.kind == CompressionType::OneBit || c.threshold > 0.0,
                "R37: {params:?} gave {c:?}"
            );
        }
        Err(error) => assert!(
            matches!(error, Error::InvalidCompression { .. }),
            "R37: {error:?}"
        ),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// shared by the targets that drive a public `KvStore`
// ---------------------------------------------------------------------------------------------

/// The keys and values of `(key, value)` pairs, as a list call of the public API takes them
/// (each key with one value: normalisation gives back exactly these pairs).
fn public_args(pairs: &[(Key, Value)]) -> (kvstore::Keys, Values<Value>) {
    let keys = kvstore::Keys::List(pairs.iter().map(|(k, _)| k.clone()).collect());
    let values = Values::List(pairs.iter().map(|(_, v)| Item::One(v.clone())).collect());
    (keys, values)
}

/// Output arrays starting as the given values, and the `Outputs` that name them.
fn public_outputs(pairs: &[(Key, Value)]) -> (Vec<kvstore::NdArray>, kvstore::Outputs) {
    let arrays: Vec<kvstore::NdArray> = pairs
        .iter()
        .map(|(_, v)| kvstore::NdArray::new(v.clone()))
        .collect();
    let outs = Values::List(arrays.iter().cloned().map(Item::One).collect());
    (arrays, outs)
}

/// A call's result once everything it queued has run: an engine store reports an error raised
/// while running (an updater's) at the next `wait_all` (R61).
fn settle(store: &kvstore::KvStore, result: kvstore::Result<()>) -> kvstore::Result<()> {
    result.and_then(|()| store.wait_all())
}

/// What a store observes, or a panic naming the store (`observable` only fails on a backend
/// fault).
fn observe(store: &kvstore::KvStore) -> kvstore_spec::store::Observable {
    match store.observable() {
        Ok(observable) => observable,
        Err(error) => panic!(
            "observable() of the {:?} store failed: {error:?}",
            store.backend()
        ),
    }
}

/// An engine + CPU store of `kind`: what `kvstore::create(kind)` builds.
///
/// `kvstore::create` is `create_with(kind, Options::default())`, and `Options::default()` sizes
/// the worker pool from `std::thread::available_parallelism()`, which reads the cgroup CPU quota
/// (three files under `/proc` and `/sys`) on every call. The options are the same for the whole
/// process, so they are computed once.
fn engine_store(kind: &str) -> kvstore::Result<kvstore::KvStore> {
    kvstore::create_with(kind, default_options())
}

/// `kvstore::Options::default()`, computed once per process.
fn default_options() -> kvstore::Options {
    static OPTIONS: std::sync::OnceLock<kvstore::Options> = std::sync::OnceLock::new();
    *OPTIONS.get_or_init(kvstore::Options::default)
}

/// Where [`TempFile`]s go: `$KVSTORE_FUZZ_TMPDIR` when set, else `/dev/shm` when it takes a
/// file, else the temporary directory.
///
/// Saving optimizer states writes a temporary file, `fsync`s it and renames it over the target
/// (`KvStore::save_optimizer_states`); on a disk file system that `fsync` (and the rename and
/// unlink) cost milliseconds per input, which made the targets that save and load through files
/// spend most of their time waiting for the disk. On a memory file system (tmpfs) the same calls
/// take microseconds; the store runs exactly the same code.
fn scratch_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("KVSTORE_FUZZ_TMPDIR") {
            return dir.into();
        }
        let shm = std::path::Path::new("/dev/shm");
        let probe = shm.join(format!("kvstore-fuzz-{}-probe", std::process::id()));
        if std::fs::write(&probe, b"").is_ok() {
            let _ = std::fs::remove_file(&probe);
            return shm.to_path_buf();
        }
        std::env::temp_dir()
    })
}

/// A file in [`scratch_dir`], unique to this call, removed on drop.
#[derive(Debug)]
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(what: &str) -> TempFile {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TempFile(scratch_dir().join(format!(
            "kvstore-fuzz-{}-{n}-{what}.json",
            std::process::id()
        )))
    }

    fn write(&self, bytes: &[u8]) {
        if let Err(error) = std::fs::write(&self.0, bytes) {
            panic!("cannot write {}: {error}", self.0.display());
        }
    }

    fn read(&self) -> Vec<u8> {
        match std::fs::read(&self.0) {
            Ok(bytes) => bytes,
            Err(error) => panic!("cannot read {}: {error}", self.0.display()),
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The name of an error's variant.
fn variant(error: &Error) -> String {
    format!("{error:?}")
        .split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`crafted_states`] as first written: through `serde_json::Value`.
    fn crafted_states_via_value(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
        let n = u.int_in_range(0u8..=3)?;
        let mut states = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let mix = if u.arbitrary()? {
                KeyMix::Ints
            } else {
                KeyMix::Strings
            };
            let key = store_key(u, mix)?;
            let state = if u.ratio(1u8, 4)? {
                serde_json::Value::Null
            } else {
                let real_shape = shape(u)?;
                let dtype = dtype(u)?;
                let n = numel(&real_shape).unwrap_or(0);
                let data = elements(u, dtype, n)?;
                match Tensor::new(real_shape, data) {
                    Err(_) => serde_json::Value::Null,
                    Ok(tensor) => {
                        let mut json = serde_json::to_value(&tensor).unwrap_or_default();
                        if u.ratio(1u8, 4)? {
                            json["shape"] = serde_json::to_value(shape(u)?).unwrap_or_default();
                        }
                        json
                    }
                }
            };
            states.push(serde_json::json!([
                serde_json::to_value(&key).unwrap_or_default(),
                state
            ]));
        }
        let optimizer = if u.arbitrary()? {
            serde_json::to_value(optimizer(u)?).unwrap_or_default()
        } else {
            serde_json::Value::Null
        };
        let format = if u.ratio(1u8, 16)? {
            "kvstore-states"
        } else {
            "kvstore-optimizer-states"
        };
        let version = if u.ratio(1u8, 16)? { 2 } else { 1 };
        let file = serde_json::json!({
            "format": format,
            "version": version,
            "states": states,
            "optimizer": optimizer,
        });
        Ok(serde_json::to_vec(&file).unwrap_or_default())
    }

    /// The fuzz inputs' `crafted_states` bytes do not depend on how the document is written:
    /// piece by piece gives the bytes of the `serde_json::Value` it replaced, and consumes the
    /// same input.
    #[test]
    fn crafted_states_writes_what_a_json_value_writes() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut crafted = 0;
        for len in 0..4000usize {
            let bytes: Vec<u8> = (0..len % 400)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed.to_le_bytes()[3]
                })
                .collect();
            let (mut a, mut b) = (Unstructured::new(&bytes), Unstructured::new(&bytes));
            let (direct, via_value) = (crafted_states(&mut a), crafted_states_via_value(&mut b));
            let text = |r: &arbitrary::Result<Vec<u8>>| {
                r.as_ref()
                    .ok()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            assert_eq!(text(&direct), text(&via_value), "input {bytes:?}");
            assert_eq!(direct.is_ok(), via_value.is_ok());
            assert_eq!(a.len(), b.len(), "both consume the same bytes: {bytes:?}");
            if direct.is_ok_and(|d| d.len() > 100) {
                crafted += 1;
            }
        }
        assert!(crafted > 1000, "only {crafted} documents with states");
    }

    /// The shape array of a serialised tensor is found where `crafted_tensor` splices it.
    #[test]
    fn the_shape_of_a_serialised_tensor_is_found() {
        let Ok(tensor) = Tensor::new([3, 2], vec![1.0f32; 6]) else {
            panic!("a 3x2 tensor");
        };
        let json = serde_json::to_vec(&tensor).unwrap_or_default();
        let Some(span) = json_shape_span(&json) else {
            panic!("no shape in {}", String::from_utf8_lossy(&json));
        };
        assert_eq!(&json[span], b"[3,2]");
    }
}
