//! Fuzz target `row_ids`: row ids of every kind through `row_sparse_pull` and row_sparse pushes,
//! on engine + CPU and on the spec's `LocalStore`.

use super::{
    device, dtype, element, elements, engine_store, observe, public_args, public_outputs, settle,
    variant, KindChoice,
};
use arbitrary::Unstructured;
use kvstore::{KvStore, RowIds};
use kvstore_spec::kind::Kind;
use kvstore_spec::optimizer::{Optimizer, Sgd};
use kvstore_spec::store::{LocalStore, Observable};
use kvstore_spec::{Data, Error, Key, RowSparse, Tensor, Value};

/// Shapes of the keys: the first dimension is the number of rows (none for `[0, 2]`).
const SHAPES: [&[usize]; 5] = [&[4, 2], &[6], &[3, 1, 2], &[1, 3], &[0, 2]];
/// Most operations after the inits.
const MAX_STEPS: usize = 16;
/// An int key that is never initialised.
const UNKNOWN_KEY: i64 = 9;

/// Fuzz body of row ids (SPEC R30-R33, R35, R7).
///
/// A `local`, `device` or `nccl` store (`kvstore::create`, engine + CPU) and the spec's
/// `LocalStore` of the same kind get the same keys (dense or row_sparse values of shapes with
/// 0 to 6 rows), sometimes an SGD optimizer, then up to 16 operations: `row_sparse_pull` with
/// row-id lists that are unsorted, repeated, negative, out of range, `i64::MIN`/`i64::MAX` or
/// empty, one list for every output or one per output (or a wrong count), row_sparse outputs
/// of the right or a wrong shape, dense outputs, unknown keys; row_sparse pushes whose ids are
/// just as arbitrary; dense pushes; pulls with `ignore_sparse = false`. For every operation:
///
/// - `RowSparse::new` accepts exactly strictly increasing in-range ids with matching data, and
///   refuses anything else with a typed error (R35);
/// - both stores give the same result or the same typed error, the same outputs, and the same
///   `observable()` afterwards;
/// - a failing call changes neither store, nor any output array (R7, R32);
/// - a successful `row_sparse_pull` lists exactly the sorted, de-duplicated requested ids, all
///   in range (R31, R32).
pub fn row_ids(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
}

struct Stores {
    spec: LocalStore,
    engine: KvStore,
    /// Each store's `observable()` as the last check left it. Nothing touches the stores between
    /// two operations, so this is their state before the next one: an operation observes each
    /// store once, after it ran (an engine `observable()` is a round trip through its workers).
    /// (`None` until the inits ran.)
    observed: Option<(Observable, Observable)>,
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let kind: KindChoice = u.arbitrary()?;
    let Ok(parsed) = Kind::parse(kind.name()) else {
        return Ok(());
    };
    let (spec, engine) = match (LocalStore::new(parsed), engine_store(kind.name())) {
        (Ok(spec), Ok(engine)) => (spec, engine),
        (spec, engine) => panic!("create({}) failed: {spec:?} {engine:?}", kind.name()),
    };
    let mut stores = Stores {
        spec,
        engine,
        observed: None,
    };
    let n_keys = u.int_in_range(1u8..=3)?;
    let mut shapes: Vec<&'static [usize]> = Vec::new();
    let mut inits = Vec::new();
    for k in 0..n_keys {
        let shape = *u.choose(&SHAPES)?;
        shapes.push(shape);
        if let Some(value) = init_value(u, shape)? {
            inits.push((Key::Int(i64::from(k)), value));
        }
    }
    stores.init(&inits);
    if u.ratio(1u8, 4)? {
        let sgd = Sgd {
            learning_rate: 0.1,
            momentum: *u.choose(&[0.0, 0.9])?,
            wd: *u.choose(&[0.0, 0.01])?,
            ..Sgd::default()
        };
        let optimizer = Optimizer::Sgd(sgd);
        let spec = stores.spec.set_optimizer(optimizer.clone());
        let engine = settle(&stores.engine, stores.engine.set_optimizer(optimizer));
        assert_eq!(spec, engine, "set_optimizer");
        stores.check_same(0, "set_optimizer", false);
    }
    for step in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0u8..=7)? {
            0..=3 => {
                let outs = outputs(u, &shapes)?;
                let lists = id_lists(u, &shapes, &outs)?;
                stores.row_sparse_pull(step, &outs, &lists, &shapes);
            }
            4 | 5 => {
                let Some(pairs) = sparse_pairs(u, &shapes)? else {
                    continue;
                };
                stores.push(step, &pairs);
            }
            6 => {
                let n = u.int_in_range(1u8..=2)?;
                let mut pairs = Vec::new();
                for _ in 0..n {
                    let (key, shape) = key(u, &shapes)?;
                    let numel = shape.iter().product();
                    let dtype = dtype(u)?;
                    if let Ok(t) = Tensor::new(shape.to_vec(), elements(u, dtype, numel)?) {
                        pairs.push((key, Value::Dense(t.on(device(u)?))));
                    }
                }
                stores.push(step, &pairs);
            }
            _ => {
                let outs = outputs(u, &shapes)?;
                stores.pull(step, &outs);
            }
        }
    }
    Ok(())
}

/// A key (mostly initialised, sometimes the unknown one) and its shape.
fn key(
    u: &mut Unstructured<'_>,
    shapes: &[&'static [usize]],
) -> arbitrary::Result<(Key, &'static [usize])> {
    if u.ratio(1u8, 16)? {
        return Ok((Key::Int(UNKNOWN_KEY), &[4, 2][..]));
    }
    let i = u.choose_index(shapes.len())?;
    Ok((Key::Int(i as i64), shapes[i]))
}

fn rows(shape: &[usize]) -> usize {
    shape.first().copied().unwrap_or(0)
}

/// A dense value, or a row_sparse one with valid ids; `None` when it cannot be built.
fn init_value(u: &mut Unstructured<'_>, shape: &[usize]) -> arbitrary::Result<Option<Value>> {
    let dtype = dtype(u)?;
    let numel: usize = shape.iter().product();
    if u.ratio(1u8, 2)? {
        let data = elements(u, dtype, numel)?;
        return Ok(Tensor::new(shape.to_vec(), data).ok().map(Value::Dense));
    }
    let mut ids = Vec::new();
    for row in 0..rows(shape) {
        if u.arbitrary()? {
            ids.push(row as i64);
        }
    }
    let row_len: usize = shape.iter().skip(1).product();
    let data = elements(u, dtype, ids.len() * row_len)?;
    Ok(RowSparse::new(shape.to_vec(), ids, data)
        .ok()
        .map(Value::RowSparse))
}

/// One row id: in range, just past the end, negative, extreme, a repeat of the last one.
fn id(u: &mut Unstructured<'_>, rows: usize, last: Option<i64>) -> arbitrary::Result<i64> {
    Ok(match u.int_in_range(0u8..=9)? {
        0..=3 if rows > 0 => u.int_in_range(0..=rows as i64 - 1)?,
        4 => rows as i64,
        5 => -1,
        6 => *u.choose(&[i64::MIN, i64::MAX, i64::MIN + 1, i64::MAX - 1])?,
        7 => last.unwrap_or(0),
        8 => u.arbitrary()?,
        _ => u.int_in_range(0..=rows as i64 + 1)?,
    })
}

/// A list of ids; sometimes sorted and de-duplicated, as a valid request would be.
fn ids(u: &mut Unstructured<'_>, rows: usize) -> arbitrary::Result<Vec<i64>> {
    let n = u.int_in_range(0u8..=6)?;
    let mut ids: Vec<i64> = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let next = id(u, rows, ids.last().copied())?;
        ids.push(next);
    }
    if u.ratio(1u8, 3)? {
        ids.sort_unstable();
        ids.dedup();
    }
    Ok(ids)
}

/// Outputs of a `row_sparse_pull`: mostly empty row_sparse arrays of the key's shape.
fn outputs(
    u: &mut Unstructured<'_>,
    shapes: &[&'static [usize]],
) -> arbitrary::Result<Vec<(Key, Value)>> {
    let n = u.int_in_range(0u8..=3)?;
    let mut outs = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let (key, mut shape) = key(u, shapes)?;
        if u.ratio(1u8, 16)? {
            shape = *u.choose(&SHAPES)?;
        }
        let dtype = dtype(u)?;
        let value = if u.ratio(1u8, 8)? {
            Tensor::new(shape.to_vec(), Data::zeros(dtype, shape.iter().product()))
                .ok()
                .map(Value::Dense)
        } else {
            RowSparse::new(shape.to_vec(), Vec::new(), Data::zeros(dtype, 0))
                .ok()
                .map(Value::RowSparse)
        };
        if let Some(value) = value {
            outs.push((key, value.on(device(u)?)));
        }
    }
    Ok(outs)
}

/// The row-id lists of a `row_sparse_pull`: one for every output, one per output, or a wrong
/// number; each drawn against the rows of an output's key.
fn id_lists(
    u: &mut Unstructured<'_>,
    shapes: &[&'static [usize]],
    outs: &[(Key, Value)],
) -> arbitrary::Result<Vec<Vec<i64>>> {
    let count = match u.int_in_range(0u8..=7)? {
        0..=3 => 1,
        4 | 5 => outs.len(),
        6 => 0,
        _ => outs.len() + 1,
    };
    let mut lists = Vec::with_capacity(count);
    for i in 0..count {
        let rows = match outs.get(i) {
            Some((Key::Int(k), _)) => shapes.get(*k as usize).map_or(4, |s| rows(s)),
            _ => rows(shapes[0]),
        };
        lists.push(ids(u, rows)?);
    }
    Ok(lists)
}

/// Row_sparse values with arbitrary ids; `None` when one of them cannot be built, after
/// checking that the constructor refused it for a reason (R35).
fn sparse_pairs(
    u: &mut Unstructured<'_>,
    shapes: &[&'static [usize]],
) -> arbitrary::Result<Option<Vec<(Key, Value)>>> {
    let n = u.int_in_range(1u8..=3)?;
    let mut pairs = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let (key, shape) = key(u, shapes)?;
        let ids = ids(u, rows(shape))?;
        let row_len: usize = shape.iter().skip(1).product();
        let right = ids.len() * row_len;
        let len = match u.int_in_range(0u8..=15)? {
            0 => right.saturating_sub(1),
            1 => right + 1,
            _ => right,
        };
        let dtype = dtype(u)?;
        let xs = (0..len)
            .map(|_| element(u))
            .collect::<arbitrary::Result<Vec<f64>>>()?;
        let valid_ids = ids.windows(2).all(|w| w[0] < w[1])
            && ids
                .iter()
                .all(|&i| i >= 0 && (i as u64) < rows(shape) as u64);
        match RowSparse::new(shape.to_vec(), ids.clone(), Data::from_f64(dtype, &xs)) {
            Ok(r) => {
                assert!(
                    valid_ids && len == right,
                    "R35: RowSparse::new({shape:?}, {ids:?}, {len} elements) accepted"
                );
                pairs.push((key, Value::RowSparse(r.on(device(u)?))));
            }
            Err(error) => {
                assert!(
                    !(valid_ids && len == right),
                    "R35: RowSparse::new({shape:?}, {ids:?}, {len} elements) refused: {error:?}"
                );
                assert!(
                    matches!(
                        error,
                        Error::InvalidRowSparse { .. } | Error::DataLength { .. }
                    ),
                    "R35: RowSparse::new({shape:?}, {ids:?}, {len} elements): {error:?}"
                );
                return Ok(None);
            }
        }
    }
    Ok(Some(pairs))
}

impl Stores {
    fn init(&mut self, pairs: &[(Key, Value)]) {
        let spec = self.spec.init(pairs);
        let (keys, values) = public_args(pairs);
        let engine = settle(&self.engine, self.engine.init(keys, values));
        assert_eq!(spec, engine, "init of {pairs:?}");
        self.check_same(0, "init", false);
    }

    fn push(&mut self, step: usize, pairs: &[(Key, Value)]) {
        let spec = self.spec.push(pairs);
        let (keys, values) = public_args(pairs);
        let engine = settle(&self.engine, self.engine.push(keys, values));
        assert_eq!(spec, engine, "step {step}: push of {pairs:?}");
        self.check_same(step, "push", spec.is_err());
    }

    fn pull(&mut self, step: usize, outs: &[(Key, Value)]) {
        let spec = self.spec.pull(outs, false);
        let (keys, _) = public_args(outs);
        let (arrays, outputs) = public_outputs(outs);
        let engine = settle(
            &self.engine,
            self.engine.pull_with(
                keys,
                outputs,
                kvstore::PullOptions {
                    priority: 0,
                    ignore_sparse: false,
                },
            ),
        );
        compare_outputs(step, "pull", outs, spec, engine, &arrays);
        self.check_same(step, "pull", false);
    }

    fn row_sparse_pull(
        &mut self,
        step: usize,
        outs: &[(Key, Value)],
        lists: &[Vec<i64>],
        shapes: &[&[usize]],
    ) {
        let spec = self.spec.row_sparse_pull(outs, lists);
        let (keys, _) = public_args(outs);
        let (arrays, outputs) = public_outputs(outs);
        let engine = settle(
            &self.engine,
            self.engine
                .row_sparse_pull(keys, outputs, RowIds(lists.to_vec())),
        );
        let what = format!("row_sparse_pull of {outs:?} rows {lists:?}");
        if let Ok(values) = &spec {
            for (i, ((key, _), value)) in outs.iter().zip(values).enumerate() {
                let list = if lists.len() == 1 {
                    &lists[0]
                } else {
                    &lists[i]
                };
                let mut want = list.clone();
                want.sort_unstable();
                want.dedup();
                let Value::RowSparse(r) = value else {
                    panic!("R30: step {step}: {what}: output {i} is not row_sparse: {value:?}");
                };
                assert_eq!(r.ids(), &want[..], "R31: step {step}: {what}: output {i}");
                let rows = match key {
                    Key::Int(k) => shapes.get(*k as usize).map_or(0, |s| rows(s)),
                    Key::Str(_) => 0,
                };
                assert!(
                    want.iter().all(|&id| id >= 0 && (id as u64) < rows as u64),
                    "R32: step {step}: {what}: ids out of range were served"
                );
            }
        }
        let failed = spec.is_err();
        compare_outputs(step, &what, outs, spec, engine, &arrays);
        self.check_same(step, &what, failed);
    }

    /// Both stores' state after an operation: the same on both and, when the operation
    /// `failed`, what each held before it (R7).
    fn check_same(&mut self, step: usize, what: &str, failed: bool) {
        let (spec, engine) = (self.spec.observable(), observe(&self.engine));
        if failed {
            let Some((spec_before, engine_before)) = &self.observed else {
                panic!("{what} failed before the stores were initialised");
            };
            assert!(
                spec == *spec_before,
                "R7: step {step}: a failing {what} changed the spec store"
            );
            assert!(
                engine == *engine_before,
                "R7: step {step}: a failing {what} changed the engine store"
            );
        }
        assert!(
            spec == engine,
            "after {what} the stores differ\nspec:   {spec:?}\nengine: {engine:?}"
        );
        self.observed = Some((spec, engine));
    }
}

/// The same result on both stores; on success the engine's arrays hold the spec's values, on
/// failure they hold what they held before (R7, R32).
fn compare_outputs(
    step: usize,
    what: &str,
    outs: &[(Key, Value)],
    spec: kvstore::Result<Vec<Value>>,
    engine: kvstore::Result<()>,
    arrays: &[kvstore::NdArray],
) {
    match (spec, engine) {
        (Ok(values), Ok(())) => {
            for (i, (array, value)) in arrays.iter().zip(&values).enumerate() {
                assert!(
                    array.value() == *value,
                    "step {step}: {what}: output {i}\nspec:   {value:?}\nengine: {:?}",
                    array.value()
                );
            }
        }
        (Err(s), Err(e)) => {
            assert_eq!(s, e, "step {step}: {what}: different errors");
            for (i, (array, (_, before))) in arrays.iter().zip(outs).enumerate() {
                assert!(
                    array.value() == *before,
                    "R7: step {step}: {what} failed with {} but wrote output {i}",
                    variant(&s)
                );
            }
        }
        (spec, engine) => panic!("step {step}: {what}\nspec:   {spec:?}\nengine: {engine:?}"),
    }
}
