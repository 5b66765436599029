//! Every kernel against the specification function it must reproduce, bit for bit, on random
//! inputs with special values (±0, NaNs with payloads, signalling NaNs, ±inf, subnormals, huge
//! values), short lengths and a few inputs above the parallel threshold.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kvstore_cpu::par::PARALLEL_THRESHOLD;
use kvstore_cpu::{
    adagrad_dense, adagrad_rows, adam_dense, adam_rows, add_assign, dequantize, ftrl_dense,
    ftrl_rows, gather_rows, gather_sparse_rows, nag_dense, nag_rows, quantize, quantize_sum_into,
    rmsprop_dense, rmsprop_rows, scatter_add, sgd_dense, sgd_rows, sparse_sum_into, sum_into,
    AdaGradParams, AdamParams, Codec, FtrlParams, KernelError, NagParams, RmsPropParams,
    RmsPropState, SgdParams,
};
use kvstore_spec::codec::{Compression, CompressionType};
use kvstore_spec::optimizer::{
    AdaGrad, Adam, Ftrl, LrScheduler, Nag, Optimizer, OptimizerUpdater, RmsProp, Sgd, WarmupMode,
};
use kvstore_spec::updater::Updater;
use kvstore_spec::{reduce, sparse, DType, Data, Key, RowSparse, Tensor, Value};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

// ---------------------------------------------------------------- values

/// Values that stress the bit patterns: zeros of both signs, NaNs with payloads (quiet and
/// signalling, both signs), infinities, subnormals, the extremes.
const SPECIALS: [f32; 26] = [
    0.0,
    -0.0,
    f32::NAN,
    f32::from_bits(0xffc0_0000),
    f32::from_bits(0x7fc0_1234),
    f32::from_bits(0xffc0_0042),
    f32::from_bits(0x7f80_0001),
    f32::from_bits(0xff80_1234),
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::MIN_POSITIVE,
    -f32::MIN_POSITIVE,
    f32::from_bits(1),
    f32::from_bits(0x8000_0001),
    f32::from_bits(0x007f_ffff),
    f32::MAX,
    f32::MIN,
    1e38,
    -1e38,
    1.0,
    -1.0,
    0.5,
    -0.5,
    16_777_216.0,
    1e-30,
    -3e-39,
];

fn special() -> impl Strategy<Value = f32> {
    proptest::sample::select(SPECIALS.to_vec())
}

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -4.0f32..4.0,
        2 => (-16i32..=16).prop_map(|k| k as f32 * 0.25),
        2 => special(),
        1 => any::<u32>().prop_map(f32::from_bits),
    ]
}

fn values(n: usize) -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec(value(), n)
}

/// Finite values only (optimizer parameters must be finite).
fn finite() -> impl Strategy<Value = f32> {
    value().prop_map(|x| if x.is_finite() { x } else { 0.25 })
}

/// A deterministic pseudo-random generator for the large inputs (proptest only picks seeds).
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn value(&mut self) -> f32 {
        let r = self.next();
        match r % 16 {
            0 => SPECIALS[(r >> 8) as usize % SPECIALS.len()],
            1 => f32::from_bits((r >> 32) as u32),
            2..=4 => ((r >> 8) % 33) as f32 * 0.25 - 4.0,
            _ => ((r >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0,
        }
    }

    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.value()).collect()
    }

    /// Sorted ids of the rows below `rows` kept with probability `keep / 8`.
    fn ids(&mut self, rows: usize, keep: u64) -> Vec<i64> {
        (0..rows as i64)
            .filter(|_| self.next() % 8 < keep)
            .collect()
    }
}

// ---------------------------------------------------------------- helpers

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Bit equality, except that any two NaNs are equal (reports the first differing element).
///
/// Which payload and sign an operation returns when *several* of its operands are NaN is not
/// specified by Rust and depends on code generation: the spec's compiled code and a
/// vectorised kernel may pick different operands (`x86-64` returns the first operand of the
/// instruction, and LLVM may commute `fadd`/`fmul`). Whether an element is NaN is
/// deterministic, and so are all other bits; a NaN from a single NaN operand or a copy is
/// compared exactly by the fixed tests below.
fn same_bits(what: &str, actual: &[f32], expected: &[f32]) -> Result<(), TestCaseError> {
    if actual.len() != expected.len() {
        return Err(TestCaseError::fail(format!(
            "{what}: {} elements, expected {}",
            actual.len(),
            expected.len()
        )));
    }
    let differs = |i: usize| {
        actual[i].to_bits() != expected[i].to_bits()
            && !(actual[i].is_nan() && expected[i].is_nan())
    };
    if let Some(i) = (0..actual.len()).find(|&i| differs(i)) {
        return Err(TestCaseError::fail(format!(
            "{what}: element {i} of {}: {:?} ({:#010x}) != spec {:?} ({:#010x})",
            actual.len(),
            actual[i],
            actual[i].to_bits(),
            expected[i],
            expected[i].to_bits()
        )));
    }
    Ok(())
}

fn f32s(data: &Data) -> Vec<f32> {
    match data {
        Data::F32(v) => v.clone(),
        other => panic!("expected f32 data, got {:?}", other.dtype()),
    }
}

fn quiet(x: f32) -> f32 {
    if x.is_nan() {
        f32::from_bits(x.to_bits() | 0x0040_0000)
    } else {
        x
    }
}

fn dense(v: &[f32]) -> Value {
    Value::Dense(Tensor::new([v.len()], v.to_vec()).unwrap())
}

fn dense_rows(rows: usize, row_len: usize, v: &[f32]) -> Value {
    Value::Dense(Tensor::new([rows, row_len], v.to_vec()).unwrap())
}

fn row_sparse(rows: usize, row_len: usize, ids: &[i64], v: &[f32]) -> Value {
    Value::RowSparse(RowSparse::new([rows, row_len], ids.to_vec(), v.to_vec()).unwrap())
}

fn spec_sum(values: &[Value]) -> Value {
    reduce::sum(values, DType::F32).unwrap().unwrap()
}

fn spec_dense_sum(inputs: &[Vec<f32>]) -> Vec<f32> {
    let values: Vec<Value> = inputs.iter().map(|v| dense(v)).collect();
    f32s(spec_sum(&values).to_dense().data())
}

fn compression(codec: Codec) -> Compression {
    // Built directly so that thresholds `Compression::new` refuses are compared too.
    match codec {
        Codec::TwoBit { threshold } => Compression {
            kind: CompressionType::TwoBit,
            threshold,
        },
        Codec::OneBit { threshold } => Compression {
            kind: CompressionType::OneBit,
            threshold,
        },
    }
}

fn threshold() -> impl Strategy<Value = f32> {
    prop_oneof![
        3 => Just(0.5f32),
        3 => 1e-3f32..10.0,
        2 => -10.0f32..10.0,
        1 => Just(0.0f32),
        1 => special(),
        1 => proptest::sample::select(vec![1e-40f32, f32::MIN_POSITIVE, 1e-20, 1e20, 1e30, 3e38]),
    ]
}

fn codec() -> impl Strategy<Value = Codec> {
    (any::<bool>(), threshold()).prop_map(|(two, threshold)| {
        if two {
            Codec::TwoBit { threshold }
        } else {
            Codec::OneBit { threshold }
        }
    })
}

/// Sorted unique ids: the rows below `rows` that `mask` keeps.
fn ids_of(mask: &[bool]) -> Vec<i64> {
    mask.iter()
        .enumerate()
        .filter(|(_, &keep)| keep)
        .map(|(i, _)| i as i64)
        .collect()
}

/// A row_sparse value of `rows` x `row_len`: sorted unique ids and their data.
fn sparse_value(rows: usize, row_len: usize) -> impl Strategy<Value = (Vec<i64>, Vec<f32>)> {
    proptest::collection::vec(any::<bool>(), rows)
        .prop_map(|mask| ids_of(&mask))
        .prop_flat_map(move |ids| {
            let n = ids.len() * row_len;
            (Just(ids), values(n))
        })
}

fn sgd() -> impl Strategy<Value = Sgd> {
    let lr = prop_oneof![Just(0.01f32), -2.0f32..2.0, finite()];
    let momentum = prop_oneof![3 => Just(0.0f32), 3 => 0.0f32..1.0, 1 => finite()];
    let wd = prop_oneof![Just(0.0f32), 0.0f32..0.1, finite()];
    let rescale = prop_oneof![Just(1.0f32), -4.0f32..4.0, finite()];
    let clip = proptest::option::of(prop_oneof![
        Just(0.0f32),
        Just(-0.0f32),
        0.0f32..5.0,
        finite().prop_map(f32::abs)
    ]);
    (lr, momentum, wd, rescale, clip).prop_map(
        |(learning_rate, momentum, wd, rescale_grad, clip)| Sgd {
            learning_rate: learning_rate.into(),
            momentum: momentum.into(),
            wd: wd.into(),
            rescale_grad: rescale_grad.into(),
            clip_gradient: clip.map(f64::from),
            lr_scheduler: None,
        },
    )
}

// ---------------------------------------------------------------- checks shared by small and large cases

fn check_sum(inputs: &[Vec<f32>]) -> Result<(), TestCaseError> {
    let n = inputs[0].len();
    let mut out = vec![f32::from_bits(0x7fc0_dead); n];
    let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    sum_into(&mut out, &refs).unwrap();
    same_bits("sum_into", &out, &spec_dense_sum(inputs))
}

fn check_quantize(codec: Codec, grad: &[f32], old: &[f32]) -> Result<(), TestCaseError> {
    let c = compression(codec);
    let mut spec_residual = old.to_vec();
    let spec_words = c.quantize(grad, &mut spec_residual).unwrap();
    let mut residual = old.to_vec();
    let mut words = vec![0xdead_beef; codec.compressed_words(grad.len())];
    quantize(codec, grad, &mut residual, &mut words).unwrap();
    prop_assert_eq!(&words, &spec_words);
    same_bits("residual", &residual, &spec_residual)?;

    // Decoding the words, plain and accumulated onto the old residual.
    let spec_values = c.dequantize(&words, grad.len()).unwrap();
    let mut out = vec![f32::NAN; grad.len()];
    dequantize(codec, &words, &mut out, false).unwrap();
    same_bits("dequantize", &out, &spec_values)?;
    let mut acc = old.to_vec();
    dequantize(codec, &words, &mut acc, true).unwrap();
    let expected: Vec<f32> = old.iter().zip(&spec_values).map(|(a, d)| a + d).collect();
    same_bits("dequantize accumulate", &acc, &expected)
}

fn check_quantize_sum(
    codec: Codec,
    grads: &[Vec<f32>],
    olds: &[Vec<f32>],
) -> Result<(), TestCaseError> {
    let c = compression(codec);
    let n = grads[0].len();
    let mut spec_residuals = olds.to_vec();
    let decoded: Vec<Value> = grads
        .iter()
        .zip(&mut spec_residuals)
        .map(|(g, r)| {
            let words = c.quantize(g, r).unwrap();
            dense(&c.dequantize(&words, n).unwrap())
        })
        .collect();
    let expected = f32s(spec_sum(&decoded).to_dense().data());

    let mut residuals = olds.to_vec();
    let mut out = vec![f32::from_bits(0x7fc0_dead); n];
    let grad_refs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
    let mut residual_refs: Vec<&mut [f32]> = residuals.iter_mut().map(Vec::as_mut_slice).collect();
    quantize_sum_into(codec, &mut out, &grad_refs, &mut residual_refs).unwrap();
    same_bits("quantize_sum_into", &out, &expected)?;
    for (r, s) in residuals.iter().zip(&spec_residuals) {
        same_bits("residual", r, s)?;
    }
    Ok(())
}

fn check_gather_dense(
    rows: usize,
    row_len: usize,
    table: &[f32],
    ids: &[i64],
) -> Result<(), TestCaseError> {
    let spec = sparse::retain(&dense_rows(rows, row_len, table), ids, DType::F32).unwrap();
    let mut out = vec![f32::NAN; ids.len() * row_len];
    gather_rows(table, row_len, ids, &mut out).unwrap();
    same_bits("gather_rows", &out, &f32s(spec.data()))
}

fn check_gather_sparse(
    rows: usize,
    row_len: usize,
    table_ids: &[i64],
    table: &[f32],
    ids: &[i64],
) -> Result<(), TestCaseError> {
    let stored = row_sparse(rows, row_len, table_ids, table);
    let spec = sparse::retain(&stored, ids, DType::F32).unwrap();
    let mut out = vec![f32::NAN; ids.len() * row_len];
    gather_sparse_rows(table_ids, table, row_len, ids, &mut out).unwrap();
    same_bits("gather_sparse_rows", &out, &f32s(spec.data()))
}

fn check_sparse_sum(
    rows: usize,
    row_len: usize,
    inputs: &[(Vec<i64>, Vec<f32>)],
) -> Result<(), TestCaseError> {
    let values: Vec<Value> = inputs
        .iter()
        .map(|(ids, data)| row_sparse(rows, row_len, ids, data))
        .collect();
    let Value::RowSparse(spec) = spec_sum(&values) else {
        return Err(TestCaseError::fail(
            "the spec sum of row_sparse values is row_sparse",
        ));
    };
    // Stale contents, to check that both vectors are cleared.
    let mut out_ids = vec![-7i64; 3];
    let mut out_data = vec![f32::NAN; 5];
    let refs: Vec<(&[i64], &[f32])> = inputs
        .iter()
        .map(|(i, d)| (i.as_slice(), d.as_slice()))
        .collect();
    sparse_sum_into(&refs, row_len, &mut out_ids, &mut out_data).unwrap();
    prop_assert_eq!(&out_ids, spec.ids());
    same_bits("sparse_sum_into", &out_data, &f32s(spec.data()))
}

/// Steps a spec updater and the kernel with the same dense gradients, comparing weight and
/// momentum after each step.
fn check_sgd_dense(p: Sgd, weight: &[f32], grads: &[Vec<f32>]) -> Result<(), TestCaseError> {
    let n = weight.len();
    let key = Key::Int(3);
    let mut updater = OptimizerUpdater::new(Optimizer::Sgd(p.clone())).unwrap();
    let mut stored = dense(weight);
    let params = SgdParams::from(&p);
    let mut w = weight.to_vec();
    let mut m = (p.momentum != 0.0).then(|| vec![0.0f32; n]);
    for g in grads {
        updater.update(&key, &dense(g), &mut stored).unwrap();
        sgd_dense(&params, &mut w, g, m.as_deref_mut()).unwrap();
        same_bits("weight", &w, &f32s(stored.to_dense().data()))?;
        let state = updater
            .states()
            .get(&key)
            .and_then(|s| s.slots.first().cloned());
        match (&m, state) {
            (Some(m), Some(s)) => same_bits("momentum", m, &f32s(s.data()))?,
            (None, None) => {}
            (m, s) => {
                return Err(TestCaseError::fail(format!(
                    "momentum state {} but spec state {}",
                    m.is_some(),
                    s.is_some()
                )))
            }
        }
    }
    Ok(())
}

/// Steps a spec updater and the kernel with the same row_sparse gradients. Touched rows must
/// match bit for bit; untouched rows keep their bits in the kernel (the spec's rebuild through
/// `f64` quiets their signalling NaNs, the only allowed difference).
fn check_sgd_rows(
    p: Sgd,
    rows: usize,
    row_len: usize,
    weight: &[f32],
    grads: &[(Vec<i64>, Vec<f32>)],
) -> Result<(), TestCaseError> {
    let key = Key::Str("w".into());
    let mut updater = OptimizerUpdater::new(Optimizer::Sgd(p.clone())).unwrap();
    let mut stored = dense_rows(rows, row_len, weight);
    let params = SgdParams::from(&p);
    let mut w = weight.to_vec();
    let mut m = (p.momentum != 0.0).then(|| vec![0.0f32; weight.len()]);
    for (ids, g) in grads {
        let before = w.clone();
        updater
            .update(&key, &row_sparse(rows, row_len, ids, g), &mut stored)
            .unwrap();
        sgd_rows(&params, &mut w, row_len, ids, g, m.as_deref_mut()).unwrap();
        let spec_w = f32s(stored.to_dense().data());
        let quieted: Vec<f32> = w.iter().map(|&x| quiet(x)).collect();
        same_bits("weight (signalling NaNs quieted)", &quieted, &spec_w)?;
        for r in (0..rows as i64).filter(|r| ids.binary_search(r).is_err()) {
            let span = r as usize * row_len..(r as usize + 1) * row_len;
            same_bits("untouched row", &w[span.clone()], &before[span])?;
        }
        for &r in ids {
            let span = r as usize * row_len..(r as usize + 1) * row_len;
            same_bits("touched row", &w[span.clone()], &spec_w[span])?;
        }
        let state = updater
            .states()
            .get(&key)
            .and_then(|s| s.slots.first().cloned());
        match (&m, state) {
            (Some(m), Some(s)) => same_bits("momentum", m, &f32s(s.data()))?,
            (None, None) => {}
            _ => return Err(TestCaseError::fail("momentum state presence differs")),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- strategies of whole cases

fn dense_inputs(max_k: usize) -> impl Strategy<Value = Vec<Vec<f32>>> {
    (0usize..300, 1..=max_k).prop_flat_map(|(n, k)| proptest::collection::vec(values(n), k))
}

fn grads_and_residuals(max_k: usize) -> impl Strategy<Value = (Vec<Vec<f32>>, Vec<Vec<f32>>)> {
    (0usize..300, 1..=max_k).prop_flat_map(|(n, k)| {
        (
            proptest::collection::vec(values(n), k),
            proptest::collection::vec(values(n), k),
        )
    })
}

fn table_and_ids() -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<i64>)> {
    (0usize..40, 0usize..7).prop_flat_map(|(rows, row_len)| {
        (
            Just(rows),
            Just(row_len),
            values(rows * row_len),
            proptest::collection::vec(any::<bool>(), rows).prop_map(|m| ids_of(&m)),
        )
    })
}

type SparseCase = (usize, usize, Vec<(Vec<i64>, Vec<f32>)>);

fn sparse_inputs(max_k: usize) -> impl Strategy<Value = SparseCase> {
    (0usize..40, 0usize..7, 1..=max_k).prop_flat_map(|(rows, row_len, k)| {
        (
            Just(rows),
            Just(row_len),
            proptest::collection::vec(sparse_value(rows, row_len), k),
        )
    })
}

// ---------------------------------------------------------------- small cases

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn sum_into_matches_spec_reduce_in_list_order(inputs in dense_inputs(5)) {
        check_sum(&inputs)?;
    }

    #[test]
    fn quantize_and_dequantize_match_spec_codec_with_error_feedback(
        codec in codec(),
        (grad, old) in (0usize..300).prop_flat_map(|n| (values(n), values(n))),
    ) {
        check_quantize(codec, &grad, &old)?;
    }

    #[test]
    fn dequantize_decodes_any_words_like_spec_including_code_01(
        codec in codec(),
        words in proptest::collection::vec(any::<u32>(), 0..20),
        drop in 0usize..32,
        extra in 0usize..3,
    ) {
        let c = compression(codec);
        let n = (words.len() * codec.per_word()).saturating_sub(drop);
        let spec = c.dequantize(&words, n).unwrap();
        let mut out = vec![f32::NAN; n];
        dequantize(codec, &words, &mut out, false).unwrap();
        same_bits("dequantize", &out, &spec)?;
        // More words than needed are ignored, as in the spec.
        let mut longer = words.clone();
        longer.extend(std::iter::repeat_n(u32::MAX, extra));
        dequantize(codec, &longer, &mut out, false).unwrap();
        same_bits("dequantize with extra words", &out, &spec)?;
    }

    #[test]
    fn quantize_sum_into_equals_spec_quantize_dequantize_then_sum(
        codec in codec(),
        (grads, olds) in grads_and_residuals(4),
    ) {
        check_quantize_sum(codec, &grads, &olds)?;
    }

    #[test]
    fn gather_rows_matches_spec_retain_of_a_dense_table(
        (rows, row_len, table, ids) in table_and_ids(),
    ) {
        check_gather_dense(rows, row_len, &table, &ids)?;
    }

    #[test]
    fn gather_sparse_rows_matches_spec_retain_and_zero_fills_missing_rows(
        (rows, row_len, tables) in sparse_inputs(1),
        mask in proptest::collection::vec(any::<bool>(), 40),
    ) {
        let ids = ids_of(&mask[..rows]);
        let (table_ids, table) = &tables[0];
        check_gather_sparse(rows, row_len, table_ids, table, &ids)?;
    }

    #[test]
    fn sparse_sum_into_matches_spec_sum_of_row_sparse_values_from_positive_zero(
        (rows, row_len, inputs) in sparse_inputs(3),
    ) {
        check_sparse_sum(rows, row_len, &inputs)?;
    }

    #[test]
    fn scatter_add_after_a_dense_first_value_matches_spec_mixed_sum(
        (rows, row_len, sparse) in sparse_inputs(2),
        seed in any::<u64>(),
        dense_between in any::<bool>(),
    ) {
        let mut mix = Mix(seed);
        let first = mix.values(rows * row_len);
        let middle = mix.values(rows * row_len);
        // List: dense, sparse_0, [dense], [sparse_1].
        let mut list = vec![dense_rows(rows, row_len, &first)];
        let mut acc = vec![0.0; first.len()];
        sum_into(&mut acc, &[&first]).unwrap();
        let (ids, data) = &sparse[0];
        list.push(row_sparse(rows, row_len, ids, data));
        scatter_add(&mut acc, row_len, ids, data).unwrap();
        if dense_between {
            list.push(dense_rows(rows, row_len, &middle));
            add_assign(&mut acc, &middle).unwrap();
        }
        if let Some((ids, data)) = sparse.get(1) {
            list.push(row_sparse(rows, row_len, ids, data));
            scatter_add(&mut acc, row_len, ids, data).unwrap();
        }
        same_bits("mixed sum", &acc, &f32s(spec_sum(&list).to_dense().data()))?;
    }

    #[test]
    fn sgd_dense_matches_spec_optimizer_updater_with_and_without_momentum(
        p in sgd(),
        (weight, grads) in (0usize..300, 1usize..4)
            .prop_flat_map(|(n, steps)| (values(n), proptest::collection::vec(values(n), steps))),
    ) {
        check_sgd_dense(p.clone(), &weight, &grads)?;
    }

    #[test]
    fn sgd_rows_matches_spec_lazy_row_sparse_update_on_touched_rows_only(
        p in sgd(),
        (rows, row_len, weight, grads) in (0usize..40, 0usize..7, 1usize..4)
            .prop_flat_map(|(rows, row_len, steps)| (
                Just(rows),
                Just(row_len),
                values(rows * row_len),
                proptest::collection::vec(sparse_value(rows, row_len), steps),
            )),
    ) {
        check_sgd_rows(p, rows, row_len, &weight, &grads)?;
    }
}

// ---------------------------------------------------------------- large cases (parallel path)

const BIG: usize = 200_003;

proptest! {
    #![proptest_config(ProptestConfig { cases: 3, ..ProptestConfig::default() })]

    #[test]
    fn sum_into_above_parallel_threshold_matches_spec(seed in any::<u64>(), k in 1usize..4) {
        let mut mix = Mix(seed);
        let inputs: Vec<Vec<f32>> = (0..k).map(|_| mix.values(BIG)).collect();
        check_sum(&inputs)?;
    }

    #[test]
    fn codec_above_parallel_threshold_matches_spec_on_whole_words(
        seed in any::<u64>(),
        codec in codec(),
        n in prop_oneof![Just(BIG), Just(200_000usize), Just(PARALLEL_THRESHOLD + 17)],
    ) {
        let mut mix = Mix(seed);
        check_quantize(codec, &mix.values(n), &mix.values(n))?;
    }

    #[test]
    fn quantize_sum_into_above_parallel_threshold_matches_spec(
        seed in any::<u64>(),
        codec in codec(),
        k in 1usize..4,
    ) {
        let mut mix = Mix(seed);
        let grads: Vec<Vec<f32>> = (0..k).map(|_| mix.values(BIG)).collect();
        let olds: Vec<Vec<f32>> = (0..k).map(|_| mix.values(BIG)).collect();
        check_quantize_sum(codec, &grads, &olds)?;
    }

    #[test]
    fn row_kernels_above_parallel_threshold_match_spec(seed in any::<u64>()) {
        let mut mix = Mix(seed);
        let (rows, row_len) = (5000, 31);
        let table = mix.values(rows * row_len);
        let ids = mix.ids(rows, 6);
        check_gather_dense(rows, row_len, &table, &ids)?;
        let table_ids = mix.ids(rows, 5);
        let sparse_table = mix.values(table_ids.len() * row_len);
        check_gather_sparse(rows, row_len, &table_ids, &sparse_table, &ids)?;
        let inputs: Vec<(Vec<i64>, Vec<f32>)> = (0..3)
            .map(|_| {
                let ids = mix.ids(rows, 5);
                let data = mix.values(ids.len() * row_len);
                (ids, data)
            })
            .collect();
        check_sparse_sum(rows, row_len, &inputs[..1])?;
        check_sparse_sum(rows, row_len, &inputs[..2])?;
        check_sparse_sum(rows, row_len, &inputs)?;
        // Dense first, then a large row_sparse value (scatter_add's split path).
        let mut acc = table.clone();
        scatter_add(&mut acc, row_len, &inputs[0].0, &inputs[0].1).unwrap();
        let list = [
            dense_rows(rows, row_len, &table),
            row_sparse(rows, row_len, &inputs[0].0, &inputs[0].1),
        ];
        let quieted: Vec<f32> = acc.iter().map(|&x| quiet(x)).collect();
        same_bits("scatter_add", &quieted, &f32s(spec_sum(&list).to_dense().data()))?;
    }

    #[test]
    fn sgd_above_parallel_threshold_matches_spec(seed in any::<u64>(), p in sgd()) {
        let mut mix = Mix(seed);
        let weight = mix.values(BIG);
        let grads: Vec<Vec<f32>> = (0..2).map(|_| mix.values(BIG)).collect();
        check_sgd_dense(p.clone(), &weight, &grads)?;
        let (rows, row_len) = (4000, 40);
        let weight = mix.values(rows * row_len);
        let grads: Vec<(Vec<i64>, Vec<f32>)> = (0..2)
            .map(|_| {
                let ids = mix.ids(rows, 6);
                let data = mix.values(ids.len() * row_len);
                (ids, data)
            })
            .collect();
        check_sgd_rows(p, rows, row_len, &weight, &grads)?;
    }
}

#[test]
fn quantize_sum_into_with_more_inputs_than_fused_splits_matches_spec() {
    let mut mix = Mix(42);
    let n = PARALLEL_THRESHOLD + 1001;
    for codec in [
        Codec::TwoBit { threshold: 0.5 },
        Codec::OneBit { threshold: 0.25 },
    ] {
        let grads: Vec<Vec<f32>> = (0..17).map(|_| mix.values(n)).collect();
        let olds: Vec<Vec<f32>> = (0..17).map(|_| mix.values(n)).collect();
        check_quantize_sum(codec, &grads, &olds).unwrap();
    }
}

// ---------------------------------------------------------------- fixed examples and errors

#[test]
fn single_value_copies_keep_negative_zero_and_quiet_signalling_nans_like_spec() {
    let x = [
        -0.0f32,
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xff80_1234),
        f32::from_bits(0x7fc0_1234),
    ];
    let mut out = [0.0f32; 4];
    sum_into(&mut out, &[&x]).unwrap();
    assert_eq!(bits(&out), bits(&spec_dense_sum(&[x.to_vec()])));
    assert_eq!(
        bits(&out),
        [0x8000_0000, 0x7fc0_0001, 0xffc0_1234, 0x7fc0_1234]
    );
    let mut rows = [0.0f32; 4];
    gather_rows(&x, 2, &[0, 1], &mut rows).unwrap();
    assert_eq!(bits(&rows), bits(&out));
}

#[test]
fn a_single_nan_operand_propagates_its_quieted_payload_like_spec() {
    let nans = [
        f32::from_bits(0x7fc0_1234),
        f32::from_bits(0xffc0_0042),
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xff80_1234),
    ];
    for n in [1usize, 7, 64, PARALLEL_THRESHOLD + 3] {
        for nan in nans {
            let x: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { nan } else { 1.5 }).collect();
            let y: Vec<f32> = (0..n)
                .map(|i| if i % 3 == 1 { nan } else { -0.25 })
                .collect();
            let z: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let inputs = [x.clone(), y.clone(), z.clone()];
            let mut out = vec![0.0f32; n];
            sum_into(&mut out, &[&x, &y, &z]).unwrap();
            assert_eq!(bits(&out), bits(&spec_dense_sum(&inputs)), "{n} {nan:?}");
            assert!(out
                .iter()
                .step_by(3)
                .all(|o| o.to_bits() == quiet(nan).to_bits()));
        }
    }
}

#[test]
fn sparse_sum_of_two_negative_zeros_is_positive_zero_but_one_keeps_its_sign() {
    let (ids, data) = (vec![1i64], vec![-0.0f32]);
    let (mut out_ids, mut out_data) = (Vec::new(), Vec::new());
    sparse_sum_into(&[(&ids, &data)], 1, &mut out_ids, &mut out_data).unwrap();
    assert_eq!(
        (out_ids.clone(), bits(&out_data)),
        (vec![1], vec![0x8000_0000])
    );
    sparse_sum_into(
        &[(&ids, &data), (&ids, &data)],
        1,
        &mut out_ids,
        &mut out_data,
    )
    .unwrap();
    assert_eq!((out_ids, bits(&out_data)), (vec![1], vec![0]));
}

#[test]
fn sum_into_refuses_no_inputs_and_mismatched_lengths() {
    let mut out = [0.0f32; 3];
    assert_eq!(
        sum_into(&mut out, &[]),
        Err(KernelError::LengthMismatch {
            what: "inputs",
            expected: 1,
            found: 0
        })
    );
    assert!(matches!(
        sum_into(&mut out, &[&[1.0, 2.0, 3.0], &[1.0]]),
        Err(KernelError::LengthMismatch {
            expected: 3,
            found: 1,
            ..
        })
    ));
}

#[test]
fn codec_kernels_refuse_wrong_buffer_lengths() {
    let codec = Codec::TwoBit { threshold: 0.5 };
    let mut residual = [0.0f32; 17];
    assert!(quantize(codec, &[0.0; 17], &mut residual, &mut [0u32; 1]).is_err());
    assert!(quantize(codec, &[0.0; 17], &mut residual[..16], &mut [0u32; 2]).is_err());
    assert!(dequantize(codec, &[0u32; 1], &mut [0.0; 17], false).is_err());
    let mut r: [&mut [f32]; 1] = [&mut residual];
    assert!(quantize_sum_into(codec, &mut [0.0; 17], &[], &mut r).is_err());
    assert!(quantize_sum_into(codec, &mut [0.0; 16], &[&[0.0; 17]], &mut r).is_err());
}

#[test]
fn codec_from_spec_compression_keeps_kind_and_threshold() {
    let c = Compression::new(CompressionType::OneBit, -0.25).unwrap();
    assert_eq!(Codec::from(c), Codec::OneBit { threshold: -0.25 });
    let c = Compression::new(CompressionType::TwoBit, 2.0).unwrap();
    assert_eq!(Codec::from(c), Codec::TwoBit { threshold: 2.0 });
    assert_eq!(Codec::from(c).compressed_words(33), 3);
}

#[test]
fn row_kernels_refuse_out_of_range_or_unsorted_ids_without_panicking() {
    let table = [1.0f32; 6];
    let mut out = [0.0f32; 4];
    assert_eq!(
        gather_rows(&table, 2, &[0, 3], &mut out),
        Err(KernelError::RowOutOfRange { id: 3, rows: 3 })
    );
    assert_eq!(
        gather_rows(&table, 2, &[-1, 0], &mut out),
        Err(KernelError::RowOutOfRange { id: -1, rows: 3 })
    );
    assert!(gather_rows(&table[..5], 2, &[0, 1], &mut out).is_err());
    assert!(gather_rows(&table, 2, &[0], &mut out).is_err());
    assert_eq!(
        gather_sparse_rows(&[2, 1], &[0.0; 4], 2, &[1, 2], &mut out),
        Err(KernelError::IdsNotIncreasing {
            what: "table_ids",
            index: 1
        })
    );
    let (mut ids, mut data) = (vec![9i64], vec![9.0f32]);
    let unsorted: (&[i64], &[f32]) = (&[1, 1], &[0.0, 0.0]);
    assert!(sparse_sum_into(&[unsorted], 1, &mut ids, &mut data).is_err());
    assert_eq!((ids, data), (vec![9], vec![9.0]), "untouched on error");
    let mut dense = [0.0f32; 6];
    assert!(scatter_add(&mut dense, 2, &[5], &[1.0, 1.0]).is_err());
    assert_eq!(dense, [0.0; 6]);
}

#[test]
fn scatter_add_applies_repeated_ids_in_input_order() {
    let mut dense = [1.0f32, 2.0];
    scatter_add(&mut dense, 1, &[1, 0, 1], &[10.0, 20.0, 100.0]).unwrap();
    assert_eq!(dense, [21.0, 112.0]);
}

#[test]
fn sgd_kernels_refuse_bad_shapes_and_never_panic_on_odd_clip() {
    let p = SgdParams {
        learning_rate: 0.1,
        momentum: 0.0,
        wd: 0.0,
        rescale_grad: 1.0,
        clip_gradient: Some(f32::NAN),
    };
    let mut w = [1.0f32; 4];
    assert!(sgd_dense(&p, &mut w, &[1.0; 3], None).is_err());
    assert!(sgd_dense(&p, &mut w, &[1.0; 4], Some(&mut [0.0; 3])).is_err());
    assert!(sgd_rows(&p, &mut w, 2, &[1, 0], &[0.0; 4], None).is_err());
    assert!(sgd_rows(&p, &mut w, 2, &[2], &[0.0; 2], None).is_err());
    assert_eq!(w, [1.0; 4], "untouched on error");
    // A NaN or negative bound cannot panic (f32::clamp would).
    sgd_dense(&p, &mut w, &[1.0; 4], None).unwrap();
    let p = SgdParams {
        clip_gradient: Some(-1.0),
        ..p
    };
    sgd_rows(&p, &mut w, 2, &[1], &[5.0, -5.0], None).unwrap();
}

proptest! {
    #[test]
    fn sorted_unique_ids_match_spec_normalize_row_ids(
        rows in prop_oneof![1usize..70, 1usize..5000, 100_000usize..3_000_000],
        raw in prop::collection::vec(any::<u64>(), 0..300),
    ) {
        let ids: Vec<i64> = raw.iter().map(|&x| (x % rows as u64) as i64).collect();
        let key = Key::Int(0);
        let expected = sparse::normalize_row_ids(&key, &ids, rows).unwrap();
        prop_assert_eq!(kvstore_cpu::sorted_unique_ids(&ids, rows).unwrap(), expected);
    }

    #[test]
    fn sorted_unique_ids_refuse_what_spec_refuses(
        rows in 1usize..100,
        ids in prop::collection::vec(-5i64..120, 0..40),
    ) {
        let spec = sparse::normalize_row_ids(&Key::Int(0), &ids, rows);
        let kernel = kvstore_cpu::sorted_unique_ids(&ids, rows);
        prop_assert_eq!(spec.is_ok(), kernel.is_ok());
    }
}

// ---------------------------------------------------------------- the other optimizers (R72-R76)

/// A gradient of one step: dense, or the listed rows of a row_sparse one.
#[derive(Debug, Clone)]
enum Grad {
    Dense(Vec<f32>),
    Rows(Vec<i64>, Vec<f32>),
}

/// One kernel update: step size (the spec's `step_lr` of the update), weight, row length,
/// gradient, state buffers in the spec's slot order.
type KernelStep<'a> = &'a dyn Fn(f64, &mut [f32], usize, &Grad, &mut [Vec<f32>]) -> KernelResult;
type KernelResult = Result<(), KernelError>;

/// Steps a spec updater and a kernel with the same gradients, comparing the weight and every
/// state buffer after each step (R60: NaNs equal NaNs). A lazy row_sparse update must leave
/// the rows it does not list bit for bit as they were (the spec's rebuild through `f64`
/// quiets their signalling NaNs, which the NaN-tolerant comparison allows).
fn check_optimizer(
    opt: &Optimizer,
    rows: usize,
    row_len: usize,
    weight: &[f32],
    grads: &[Grad],
    kernel: KernelStep<'_>,
) -> Result<(), TestCaseError> {
    let lazy = match opt {
        Optimizer::Nag(p) => p.momentum == 0.0,
        Optimizer::Adam(p) => p.lazy_update,
        Optimizer::AdaGrad(_) => true,
        _ => false,
    };
    let key = Key::Int(7);
    let mut updater = OptimizerUpdater::new(opt.clone()).unwrap();
    let mut stored = dense_rows(rows, row_len, weight);
    let mut w = weight.to_vec();
    let mut slots = vec![vec![0.0f32; w.len()]; opt.slot_count()];
    for (t, grad) in grads.iter().enumerate() {
        let (before, before_slots) = (w.clone(), slots.clone());
        let merged = match grad {
            Grad::Dense(g) => dense_rows(rows, row_len, g),
            Grad::Rows(ids, g) => row_sparse(rows, row_len, ids, g),
        };
        updater.update(&key, &merged, &mut stored).unwrap();
        let updates = t as u64 + 1;
        kernel(opt.step_lr(updates), &mut w, row_len, grad, &mut slots).unwrap();
        same_bits(
            &format!("weight after step {updates}"),
            &w,
            &f32s(stored.to_dense().data()),
        )?;
        let state = updater.states().get(&key).unwrap();
        prop_assert_eq!(state.updates, updates);
        prop_assert_eq!(state.slots.len(), slots.len());
        for (i, (mine, spec)) in slots.iter().zip(&state.slots).enumerate() {
            same_bits(
                &format!("state {i} after step {updates}"),
                mine,
                &f32s(spec.data()),
            )?;
        }
        if let (true, Grad::Rows(ids, _)) = (lazy, grad) {
            for r in (0..rows as i64).filter(|r| ids.binary_search(r).is_err()) {
                let span = r as usize * row_len..(r as usize + 1) * row_len;
                prop_assert_eq!(bits(&w[span.clone()]), bits(&before[span.clone()]));
                for (s, b) in slots.iter().zip(&before_slots) {
                    prop_assert_eq!(bits(&s[span.clone()]), bits(&b[span.clone()]));
                }
            }
        }
    }
    Ok(())
}

fn one_slot(slots: &mut [Vec<f32>]) -> Option<&mut [f32]> {
    slots.first_mut().map(Vec::as_mut_slice)
}

fn two_slots(slots: &mut [Vec<f32>]) -> (&mut [f32], &mut [f32]) {
    match slots {
        [a, b] => (a, b),
        _ => panic!("{} state buffers, expected 2", slots.len()),
    }
}

fn nag_kernel(
    p: &Nag,
) -> impl Fn(f64, &mut [f32], usize, &Grad, &mut [Vec<f32>]) -> KernelResult + '_ {
    move |lr, w, row_len, grad, slots| {
        let params = NagParams::with_lr(p, lr);
        let m = one_slot(slots);
        match grad {
            Grad::Dense(g) => nag_dense(&params, w, g, m),
            Grad::Rows(ids, g) => nag_rows(&params, w, row_len, ids, g, m),
        }
    }
}

fn adam_kernel(
    p: &Adam,
) -> impl Fn(f64, &mut [f32], usize, &Grad, &mut [Vec<f32>]) -> KernelResult + '_ {
    move |lr, w, row_len, grad, slots| {
        let params = AdamParams::with_lr(p, lr);
        let (mean, var) = two_slots(slots);
        match grad {
            Grad::Dense(g) => adam_dense(&params, w, g, mean, var),
            Grad::Rows(ids, g) => adam_rows(&params, w, row_len, ids, g, mean, var),
        }
    }
}

fn adagrad_kernel(
    p: &AdaGrad,
) -> impl Fn(f64, &mut [f32], usize, &Grad, &mut [Vec<f32>]) -> KernelResult + '_ {
    move |lr, w, row_len, grad, slots| {
        let h = one_slot(slots).unwrap();
        match grad {
            Grad::Dense(g) => adagrad_dense(&AdaGradParams::dense_with_lr(p, lr), w, g, h),
            Grad::Rows(ids, g) => {
                adagrad_rows(&AdaGradParams::with_lr(p, lr), w, row_len, ids, g, h)
            }
        }
    }
}

fn rmsprop_kernel(
    p: &RmsProp,
) -> impl Fn(f64, &mut [f32], usize, &Grad, &mut [Vec<f32>]) -> KernelResult + '_ {
    move |lr, w, row_len, grad, slots| {
        let params = RmsPropParams::with_lr(p, lr);
        let state = match slots {
            [n] => RmsPropState::Plain { n },
            [n, g, delta] => RmsPropState::Centered { n, g, delta },
            _ => panic!("{} RMSProp state buffers", slots.len()),
        };
        match grad {
            Grad::Dense(g) => rmsprop_dense(&params, w, g, state),
            Grad::Rows(ids, g) => rmsprop_rows(&params, w, row_len, ids, g, state),
        }
    }
}

fn ftrl_kernel(
    p: &Ftrl,
) -> impl Fn(f64, &mut [f32], usize, &Grad, &mut [Vec<f32>]) -> KernelResult + '_ {
    move |lr, w, row_len, grad, slots| {
        let params = FtrlParams::with_lr(p, lr);
        let (z, n) = two_slots(slots);
        match grad {
            Grad::Dense(g) => ftrl_dense(&params, w, g, z, n),
            Grad::Rows(ids, g) => ftrl_rows(&params, w, row_len, ids, g, z, n),
        }
    }
}

/// Runs the optimizer's kernel against the spec.
fn check_any(
    opt: &Optimizer,
    rows: usize,
    row_len: usize,
    weight: &[f32],
    grads: &[Grad],
) -> Result<(), TestCaseError> {
    match opt {
        Optimizer::Sgd(_) => Err(TestCaseError::fail("SGD has its own checks")),
        Optimizer::Nag(p) => check_optimizer(opt, rows, row_len, weight, grads, &nag_kernel(p)),
        Optimizer::Adam(p) => check_optimizer(opt, rows, row_len, weight, grads, &adam_kernel(p)),
        Optimizer::AdaGrad(p) => {
            check_optimizer(opt, rows, row_len, weight, grads, &adagrad_kernel(p))
        }
        Optimizer::RmsProp(p) => {
            check_optimizer(opt, rows, row_len, weight, grads, &rmsprop_kernel(p))
        }
        Optimizer::Ftrl(p) => check_optimizer(opt, rows, row_len, weight, grads, &ftrl_kernel(p)),
    }
}

/// The parameters every optimizer has: (learning_rate, wd, rescale_grad, clip_gradient,
/// lr_scheduler).
type CommonParams = (f64, f64, f64, Option<f64>, Option<LrScheduler>);

fn common(default_lr: f32) -> impl Strategy<Value = CommonParams> {
    let lr = prop_oneof![Just(default_lr), -2.0f32..2.0, finite()];
    let wd = prop_oneof![Just(0.0f32), 0.0f32..0.1, finite()];
    let rescale = prop_oneof![Just(1.0f32), -4.0f32..4.0, finite()];
    let clip = proptest::option::of(prop_oneof![
        Just(0.0f32),
        Just(-0.0f32),
        0.0f32..5.0,
        finite().prop_map(f32::abs)
    ]);
    let schedule = proptest::option::of((1u64..3, 0.1f64..1.0, 0u64..3));
    (lr, wd, rescale, clip, schedule).prop_map(|(lr, wd, rescale, clip, schedule)| {
        let lr = f64::from(lr);
        let schedule = schedule.map(|(step, factor, warmup_steps)| LrScheduler::Factor {
            step,
            factor,
            stop_factor_lr: 1e-8,
            warmup_steps,
            warmup_begin_lr: lr.min(0.0),
            warmup_mode: WarmupMode::Linear,
        });
        (lr, wd.into(), rescale.into(), clip.map(f64::from), schedule)
    })
}

/// A factor in `[0, 1)` most of the time, its default often, any finite value sometimes.
fn factor(default: f32) -> impl Strategy<Value = f64> {
    prop_oneof![3 => Just(default), 3 => 0.0f32..1.0, 1 => finite()].prop_map(f64::from)
}

/// A small positive constant (an epsilon) most of the time, any finite value sometimes.
fn epsilon(default: f32) -> impl Strategy<Value = f64> {
    prop_oneof![3 => Just(default), 2 => 0.0f32..1e-3, 1 => finite()].prop_map(f64::from)
}

fn nag() -> impl Strategy<Value = Optimizer> {
    let momentum = prop_oneof![3 => Just(0.0f32), 3 => 0.0f32..1.0, 1 => finite()];
    (common(0.01), momentum).prop_map(|((learning_rate, wd, rescale_grad, clip, s), m)| {
        Optimizer::Nag(Nag {
            learning_rate,
            wd,
            rescale_grad,
            clip_gradient: clip,
            lr_scheduler: s,
            momentum: m.into(),
        })
    })
}

fn adam() -> impl Strategy<Value = Optimizer> {
    (
        common(0.001),
        factor(0.9),
        factor(0.999),
        epsilon(1e-8),
        any::<bool>(),
    )
        .prop_map(
            |((learning_rate, wd, rescale_grad, clip, s), beta1, beta2, epsilon, lazy)| {
                Optimizer::Adam(Adam {
                    learning_rate,
                    wd,
                    rescale_grad,
                    clip_gradient: clip,
                    lr_scheduler: s,
                    beta1,
                    beta2,
                    epsilon,
                    lazy_update: lazy,
                })
            },
        )
}

/// AdaGrad; `wd` is 0 when `sparse` (the spec refuses a row_sparse gradient otherwise).
fn adagrad(sparse: bool) -> impl Strategy<Value = Optimizer> {
    (common(0.01), epsilon(1e-7)).prop_map(
        move |((learning_rate, wd, rescale_grad, clip, s), eps)| {
            Optimizer::AdaGrad(AdaGrad {
                learning_rate,
                wd: if sparse { 0.0 } else { wd },
                rescale_grad,
                clip_gradient: clip,
                lr_scheduler: s,
                eps,
            })
        },
    )
}

fn rmsprop() -> impl Strategy<Value = Optimizer> {
    let clip_weights = proptest::option::of(prop_oneof![
        Just(0.0f32),
        0.0f32..5.0,
        finite().prop_map(f32::abs)
    ]);
    (
        common(0.001),
        factor(0.9),
        factor(0.9),
        epsilon(1e-8),
        any::<bool>(),
        clip_weights,
    )
        .prop_map(
            |(
                (learning_rate, wd, rescale_grad, clip, s),
                gamma1,
                gamma2,
                epsilon,
                centered,
                cw,
            )| {
                Optimizer::RmsProp(RmsProp {
                    learning_rate,
                    wd,
                    rescale_grad,
                    clip_gradient: clip,
                    lr_scheduler: s,
                    gamma1,
                    gamma2,
                    epsilon,
                    centered,
                    clip_weights: cw.map(f64::from),
                })
            },
        )
}

fn ftrl() -> impl Strategy<Value = Optimizer> {
    let lamda1 = prop_oneof![3 => Just(0.01f32), 2 => 0.0f32..1.0, 1 => finite()];
    let beta = prop_oneof![3 => Just(1.0f32), 2 => 0.0f32..2.0, 1 => finite()];
    (common(0.1), lamda1, beta).prop_map(|((learning_rate, wd, rescale_grad, clip, s), l1, b)| {
        Optimizer::Ftrl(Ftrl {
            learning_rate,
            wd,
            rescale_grad,
            clip_gradient: clip,
            lr_scheduler: s,
            lamda1: l1.into(),
            beta: b.into(),
        })
    })
}

/// A weight of `rows` x `row_len` and 1 to 4 steps' gradients, each dense or row_sparse
/// (row_sparse only when `sparse`).
type OptimizerCase = (usize, usize, Vec<f32>, Vec<Grad>);

fn optimizer_case(sparse: bool) -> impl Strategy<Value = OptimizerCase> {
    (0usize..40, 0usize..7, 1usize..5).prop_flat_map(move |(rows, row_len, steps)| {
        let n = rows * row_len;
        let dense = values(n).prop_map(Grad::Dense);
        let rows_grad = sparse_value(rows, row_len).prop_map(|(ids, g)| Grad::Rows(ids, g));
        let grad = if sparse {
            prop_oneof![dense, rows_grad].boxed()
        } else {
            dense.boxed()
        };
        (
            Just(rows),
            Just(row_len),
            values(n),
            proptest::collection::vec(grad, steps),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn r72_nag_kernels_match_the_spec(
        opt in nag(),
        (rows, row_len, weight, grads) in optimizer_case(true),
    ) {
        check_any(&opt, rows, row_len, &weight, &grads)?;
    }

    #[test]
    fn r73_adam_kernels_match_the_spec(
        opt in adam(),
        (rows, row_len, weight, grads) in optimizer_case(true),
    ) {
        check_any(&opt, rows, row_len, &weight, &grads)?;
    }

    #[test]
    fn r74_adagrad_kernels_match_the_spec(
        (opt, (rows, row_len, weight, grads)) in any::<bool>()
            .prop_flat_map(|sparse| (adagrad(sparse), optimizer_case(sparse))),
    ) {
        check_any(&opt, rows, row_len, &weight, &grads)?;
    }

    #[test]
    fn r75_rmsprop_kernels_match_the_spec(
        opt in rmsprop(),
        (rows, row_len, weight, grads) in optimizer_case(true),
    ) {
        check_any(&opt, rows, row_len, &weight, &grads)?;
    }

    #[test]
    fn r76_ftrl_kernels_match_the_spec(
        opt in ftrl(),
        (rows, row_len, weight, grads) in optimizer_case(true),
    ) {
        check_any(&opt, rows, row_len, &weight, &grads)?;
    }
}

/// A large dense case (one row per element) and a large row_sparse one, two steps each.
fn check_large(opt: &Optimizer, seed: u64) -> Result<(), TestCaseError> {
    let mut mix = Mix(seed);
    let weight = mix.values(BIG);
    let grads: Vec<Grad> = (0..2).map(|_| Grad::Dense(mix.values(BIG))).collect();
    check_any(opt, BIG, 1, &weight, &grads)?;
    if matches!(opt, Optimizer::AdaGrad(p) if p.wd != 0.0) {
        return Ok(());
    }
    let (rows, row_len) = (4000, 40);
    let weight = mix.values(rows * row_len);
    let grads: Vec<Grad> = (0..2)
        .map(|_| {
            let ids = mix.ids(rows, 6);
            let data = mix.values(ids.len() * row_len);
            Grad::Rows(ids, data)
        })
        .collect();
    check_any(opt, rows, row_len, &weight, &grads)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3, ..ProptestConfig::default() })]

    #[test]
    fn optimizer_kernels_above_parallel_threshold_match_the_spec(
        seed in any::<u64>(),
        opts in (nag(), adam(), adagrad(false), adagrad(true), rmsprop(), ftrl()),
    ) {
        let (a, b, c, d, e, f) = opts;
        for opt in [a, b, c, d, e, f] {
            check_large(&opt, seed)?;
        }
    }
}

#[test]
fn optimizer_kernels_refuse_bad_lengths_and_write_nothing() {
    let w0 = [1.0f32; 4];
    let mut w = w0;
    let (mut a, mut b, mut c) = ([0.5f32; 4], [0.5f32; 4], [0.5f32; 4]);
    let nag = NagParams::from(&Nag::default());
    let adam = AdamParams::with_lr(&Adam::default(), 0.1);
    let adagrad = AdaGradParams::with_lr(&AdaGrad::default(), 0.01);
    let rmsprop = RmsPropParams::from(&RmsProp::default());
    let ftrl = FtrlParams::from(&Ftrl::default());
    // A short gradient, a short state, a ragged table, unsorted and out-of-range ids.
    assert!(nag_dense(&nag, &mut w, &[1.0; 3], None).is_err());
    assert!(nag_dense(&nag, &mut w, &[1.0; 4], Some(&mut a[..3])).is_err());
    assert!(nag_rows(&nag, &mut w, 3, &[0], &[1.0; 3], None).is_err());
    assert!(adam_dense(&adam, &mut w, &[1.0; 4], &mut a, &mut b[..3]).is_err());
    assert!(adam_rows(&adam, &mut w, 2, &[1, 0], &[1.0; 4], &mut a, &mut b).is_err());
    assert_eq!(
        adagrad_rows(&adagrad, &mut w, 2, &[2], &[1.0; 2], &mut a),
        Err(KernelError::RowOutOfRange { id: 2, rows: 2 })
    );
    assert!(adagrad_dense(&adagrad, &mut w, &[1.0; 5], &mut a).is_err());
    assert_eq!(
        rmsprop_dense(
            &rmsprop,
            &mut w,
            &[1.0; 4],
            RmsPropState::Centered {
                n: &mut a,
                g: &mut b,
                delta: &mut c[..2]
            }
        ),
        Err(KernelError::LengthMismatch {
            what: "delta",
            expected: 4,
            found: 2
        })
    );
    assert!(rmsprop_rows(
        &rmsprop,
        &mut w,
        2,
        &[0],
        &[1.0; 3],
        RmsPropState::Plain { n: &mut a }
    )
    .is_err());
    assert!(ftrl_dense(&ftrl, &mut w, &[1.0; 4], &mut a[..1], &mut b).is_err());
    assert!(ftrl_rows(&ftrl, &mut w, 2, &[-1], &[1.0; 2], &mut a, &mut b).is_err());
    assert_eq!(w, w0, "the weight is untouched on error");
    assert_eq!(
        (a, b, c),
        ([0.5; 4], [0.5; 4], [0.5; 4]),
        "states untouched"
    );
    // A NaN or negative clip cannot panic.
    let odd = NagParams {
        clip_gradient: Some(f32::NAN),
        ..nag
    };
    nag_rows(&odd, &mut w, 2, &[1], &[5.0, -5.0], None).unwrap();
    let odd = AdamParams {
        clip_gradient: Some(-1.0),
        ..adam
    };
    adam_rows(&odd, &mut w, 2, &[0], &[5.0, -5.0], &mut a, &mut b).unwrap();
}
