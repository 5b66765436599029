//! Every device operation against the CPU kernels of `kvstore-cpu`, which are themselves
//! proven bit-exact with the specification: the same inputs (random, with NaN, infinities,
//! -0.0 and subnormals mixed in) must give the same bits (R60: every NaN equals every NaN).
//!
//! Needs a GPU. Without one each test prints one `SKIPPED` line naming why and passes;
//! `KVSTORE_REQUIRE_GPU=1` (the GPU check script sets it) turns that into a failure.
#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kvstore_cpu::{AdamParams, Codec, SgdParams};
use kvstore_cuda::cudarc::driver::{CudaSlice, CudaStream};
use kvstore_cuda::module::Tuning;
use kvstore_cuda::{AdamRows, Gpu, IdScratch};
use proptest::prelude::*;
use std::sync::{Arc, OnceLock};

/// The GPU under the default tuning and two others (every launch shape the kernels can be
/// compiled for must give the same bits), or `None` without one.
fn gpus() -> Option<&'static [Gpu]> {
    static GPUS: OnceLock<Option<Vec<Gpu>>> = OnceLock::new();
    GPUS.get_or_init(|| {
        let tunings = [
            Tuning::default(),
            Tuning {
                threads: 128,
                unroll: 2,
                streaming: true,
                blocks_per_sm: None,
            },
            Tuning {
                threads: 512,
                unroll: 4,
                streaming: false,
                blocks_per_sm: Some(1),
            },
        ];
        match tunings
            .iter()
            .map(|&t| Gpu::open_tuned(0, t))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(g) => Some(g),
            Err(e) => {
                assert!(
                    std::env::var_os("KVSTORE_REQUIRE_GPU").is_none(),
                    "a GPU is required here: {e}"
                );
                None
            }
        }
    })
    .as_deref()
}

/// Runs `body` on the GPU under each tuning, or prints why it cannot.
fn on_gpu(test: &str, body: impl Fn(&'static Gpu, &Arc<CudaStream>)) {
    match gpus() {
        Some(gpus) => {
            for g in gpus {
                body(g, g.stream());
            }
        }
        None => {
            // Once per test, not once per generated case.
            static REPORTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
            let mut reported = REPORTED.lock().unwrap();
            if !reported.iter().any(|t| t == test) {
                reported.push(test.to_string());
                kvstore_cuda::report_skip(test, &Gpu::open(0).expect_err("no GPU"));
            }
        }
    }
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

fn assert_same(what: &str, gpu: &[f32], cpu: &[f32]) {
    if !same_bits(gpu, cpu) {
        let at = gpu
            .iter()
            .zip(cpu)
            .position(|(x, y)| !same_bits(&[*x], &[*y]));
        panic!(
            "{what}: GPU and CPU differ (lengths {} and {}), first at {at:?}: {:?} vs {:?}",
            gpu.len(),
            cpu.len(),
            at.map(|i| gpu[i]),
            at.map(|i| cpu[i])
        );
    }
}

fn up(s: &Arc<CudaStream>, x: &[f32]) -> CudaSlice<f32> {
    s.clone_htod(x).unwrap()
}

fn down<T: kvstore_cuda::cudarc::driver::DeviceRepr + Default + Clone>(
    s: &Arc<CudaStream>,
    x: &CudaSlice<T>,
) -> Vec<T> {
    s.clone_dtoh(x).unwrap()
}

fn words_of(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// 48 cases per test by default (`PROPTEST_CASES` overrides; the GPU script runs more).
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(48);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn r17_gpu_reduce_matches_cpu((n, k) in (0usize..700, 1usize..12), seed in any::<u64>()) {
        on_gpu("r17_gpu_reduce_matches_cpu", |g, s| {
            let inputs: Vec<Vec<f32>> = (0..k).map(|i| sample(n, seed ^ i as u64)).collect();
            let dev: Vec<CudaSlice<f32>> = inputs.iter().map(|x| up(s, x)).collect();
            let refs: Vec<&CudaSlice<f32>> = dev.iter().collect();
            let mut out = up(s, &vec![7.0; n]);
            g.reduce(s, &mut out, &refs).unwrap();
            let mut cpu = vec![0.0; n];
            let slices: Vec<&[f32]> = inputs.iter().map(|x| x.as_slice()).collect();
            kvstore_cpu::sum_into(&mut cpu, &slices).unwrap();
            assert_same("reduce", &down(s, &out), &cpu);
        });
    }

    #[test]
    fn r38_r41_gpu_quantize_and_dequantize_match_cpu(
        n in 1usize..600, seed in any::<u64>(), two_bit in any::<bool>(),
        threshold in prop_oneof![0.01f32..2.0, Just(0.5f32), Just(1e-30f32)],
        accumulate in any::<bool>(),
    ) {
        on_gpu("r38_r41_gpu_quantize_and_dequantize_match_cpu", |g, s| {
            let codec = if two_bit { Codec::TwoBit { threshold } } else { Codec::OneBit { threshold } };
            let grad = sample(n, seed);
            let residual = sample(n, seed.wrapping_add(1));
            let (dg, mut dr) = (up(s, &grad), up(s, &residual));
            let mut packed = s.clone_htod(&vec![0xA5u8; Gpu::compressed_bytes(codec, n)]).unwrap();
            g.quantize(s, codec, &dg, &mut dr, &mut packed).unwrap();
            let mut cpu_r = residual.clone();
            let mut cpu_words = vec![0u32; codec.compressed_words(n)];
            kvstore_cpu::quantize(codec, &grad, &mut cpu_r, &mut cpu_words).unwrap();
            assert_same("residual", &down(s, &dr), &cpu_r);
            assert_eq!(words_of(&down(s, &packed)), cpu_words, "packed words");
            let start = sample(n, seed.wrapping_add(2));
            let mut out = up(s, &start);
            g.dequantize(s, codec, &packed, &mut out, accumulate).unwrap();
            let mut cpu_out = start.clone();
            kvstore_cpu::dequantize(codec, &cpu_words, &mut cpu_out, accumulate).unwrap();
            assert_same("dequantize", &down(s, &out), &cpu_out);
        });
    }

    #[test]
    fn r31_gpu_gathers_rows_of_dense_and_row_sparse_values(
        (rows, row_len) in (1usize..40, 1usize..9), seed in any::<u64>(),
        want in prop::collection::btree_set(0i64..40, 1..20),
        have in prop::collection::btree_set(0i64..40, 1..20),
    ) {
        on_gpu("r31_gpu_gathers_rows_of_dense_and_row_sparse_values", |g, s| {
            let want: Vec<i64> = want.iter().copied().filter(|&i| (i as usize) < rows).collect();
            if want.is_empty() { return; }
            let table = sample(rows * row_len, seed);
            let dw = s.clone_htod(&want).unwrap();
            let mut out = up(s, &vec![9.0; want.len() * row_len]);
            g.gather_rows(s, &up(s, &table), row_len, &dw, &mut out).unwrap();
            let mut cpu = vec![0.0; want.len() * row_len];
            kvstore_cpu::gather_rows(&table, row_len, &want, &mut cpu).unwrap();
            assert_same("dense gather", &down(s, &out), &cpu);
            // A row_sparse value holds only `have`: locate, then gather (absent rows read 0).
            let have: Vec<i64> = have.iter().copied().filter(|&i| (i as usize) < rows).collect();
            if have.is_empty() { return; }
            let held = sample(have.len() * row_len, seed ^ 5);
            let mut pos = s.clone_htod(&vec![-7i64; want.len()]).unwrap();
            g.locate_rows(s, &s.clone_htod(&have).unwrap(), &dw, &mut pos).unwrap();
            let mut out = up(s, &vec![9.0; want.len() * row_len]);
            g.gather_rows(s, &up(s, &held), row_len, &pos, &mut out).unwrap();
            let mut cpu = vec![0.0; want.len() * row_len];
            kvstore_cpu::gather_sparse_rows(&have, &held, row_len, &want, &mut cpu).unwrap();
            assert_same("sparse gather", &down(s, &out), &cpu);
        });
    }

    #[test]
    fn r17_gpu_scatter_sums_row_sparse_values_like_cpu(
        row_len in 1usize..7, seed in any::<u64>(),
        inputs in prop::collection::vec(prop::collection::btree_set(0i64..30, 1..12), 2..5),
    ) {
        on_gpu("r17_gpu_scatter_sums_row_sparse_values_like_cpu", |g, s| {
            let inputs: Vec<(Vec<i64>, Vec<f32>)> = inputs.iter().cloned().enumerate()
                .map(|(i, ids)| { let ids: Vec<i64> = ids.into_iter().collect();
                    let data = sample(ids.len() * row_len, seed ^ i as u64); (ids, data) })
                .collect();
            let refs: Vec<(&[i64], &[f32])> = inputs.iter().map(|(i, d)| (i.as_slice(), d.as_slice())).collect();
            let (mut cpu_ids, mut cpu_data) = (Vec::new(), Vec::new());
            kvstore_cpu::sparse_sum_into(&refs, row_len, &mut cpu_ids, &mut cpu_data).unwrap();
            // The union on the device (ids of every input, deduplicated), then +0.0 plus each
            // input's rows in list order.
            let all: Vec<i64> = inputs.iter().flat_map(|(i, _)| i.iter().copied()).collect();
            let union = g.unique_ids(s, &s.clone_htod(&all).unwrap(), 30, &mut IdScratch::default())
                .unwrap().unwrap();
            assert_eq!(down(s, &union), cpu_ids);
            let mut out = s.alloc_zeros::<f32>(cpu_ids.len() * row_len).unwrap();
            for (ids, data) in &inputs {
                let mut pos = s.clone_htod(&vec![0i64; ids.len()]).unwrap();
                g.locate_rows(s, &union, &s.clone_htod(ids).unwrap(), &mut pos).unwrap();
                g.scatter_rows(s, &mut out, row_len, &pos, &up(s, data), true).unwrap();
            }
            assert_same("sparse sum", &down(s, &out), &cpu_data);
        });
    }

    #[test]
    fn r31_gpu_sorts_and_dedups_ids(
        rows in 1usize..5000, ids in prop::collection::vec(any::<i64>(), 1..300), bad in any::<bool>(),
    ) {
        on_gpu("r31_gpu_sorts_and_dedups_ids", |g, s| {
            let mut ids: Vec<i64> = ids.iter().map(|i| i.rem_euclid(rows as i64)).collect();
            if bad { ids.push(rows as i64); }
            let got = g.unique_ids(s, &s.clone_htod(&ids).unwrap(), rows, &mut IdScratch::default());
            match kvstore_cpu::sorted_unique_ids(&ids, rows) {
                Ok(cpu) => assert_eq!(got.unwrap().map(|d| down(s, &d)).unwrap_or_default(), cpu),
                Err(_) => assert!(matches!(got, Err(kvstore_cuda::CudaError::Invalid(_)))),
            }
        });
    }

    #[test]
    fn r46_gpu_sgd_matches_cpu(
        (rows, row_len) in (1usize..30, 1usize..9), seed in any::<u64>(),
        lr in 0.0f64..2.0, wd in prop_oneof![Just(0.0), 0.0f64..0.1], momentum in prop_oneof![Just(0.0), 0.0f64..0.99],
        rescale in 0.1f64..2.0, clip in prop::option::of(0.0f64..3.0),
        rows_of in prop::option::of(prop::collection::btree_set(0i64..30, 1..30)), k in 1usize..4,
    ) {
        on_gpu("r46_gpu_sgd_matches_cpu", |g, s| {
            let p = SgdParams::with_lr(&sgd(momentum, wd, rescale, clip), lr);
            let n = rows * row_len;
            let w0 = sample(n, seed);
            let m0 = (momentum != 0.0).then(|| sample(n, seed ^ 1));
            let (mut w, mut m) = (up(s, &w0), m0.as_ref().map(|m| up(s, m)));
            let (mut cw, mut cm) = (w0.clone(), m0.clone());
            match &rows_of {
                None => {
                    let grads: Vec<Vec<f32>> = (0..k).map(|i| sample(n, seed ^ (9 + i as u64))).collect();
                    let dg: Vec<CudaSlice<f32>> = grads.iter().map(|x| up(s, x)).collect();
                    let refs: Vec<&CudaSlice<f32>> = dg.iter().collect();
                    g.reduce_sgd(s, &p, &mut w, m.as_mut(), &refs).unwrap();
                    let mut sum = vec![0.0; n];
                    let slices: Vec<&[f32]> = grads.iter().map(|x| x.as_slice()).collect();
                    kvstore_cpu::sum_into(&mut sum, &slices).unwrap();
                    kvstore_cpu::sgd_dense(&p, &mut cw, &sum, cm.as_deref_mut()).unwrap();
                    // And unfused: the same bits.
                    let (mut w2, mut m2) = (up(s, &w0), m0.as_ref().map(|m| up(s, m)));
                    g.sgd_dense(s, &p, &mut w2, &up(s, &sum), m2.as_mut()).unwrap();
                    assert_same("unfused sgd", &down(s, &w2), &cw);
                }
                Some(ids) => {
                    let ids: Vec<i64> = ids.iter().copied().filter(|&i| (i as usize) < rows).collect();
                    if ids.is_empty() { return; }
                    let grad = sample(ids.len() * row_len, seed ^ 3);
                    g.sgd_rows(s, &p, &mut w, row_len, &s.clone_htod(&ids).unwrap(), &up(s, &grad), m.as_mut()).unwrap();
                    kvstore_cpu::sgd_rows(&p, &mut cw, row_len, &ids, &grad, cm.as_deref_mut()).unwrap();
                }
            }
            assert_same("sgd weight", &down(s, &w), &cw);
            if let (Some(m), Some(cm)) = (m, cm) {
                assert_same("sgd momentum", &down(s, &m), &cm);
            }
        });
    }

    #[test]
    fn r73_gpu_adam_matches_cpu(
        (rows, row_len) in (1usize..30, 1usize..9), seed in any::<u64>(),
        lr in 0.0f64..0.5, wd in prop_oneof![Just(0.0), 0.0f64..0.1],
        beta1 in 0.0f64..0.99, beta2 in 0.5f64..0.9999, rescale in 0.1f64..2.0,
        clip in prop::option::of(0.0f64..3.0), lazy in any::<bool>(),
        rows_of in prop::option::of(prop::collection::btree_set(0i64..30, 1..30)), k in 1usize..4,
    ) {
        on_gpu("r73_gpu_adam_matches_cpu", |g, s| {
            let adam = kvstore_spec::optimizer::Adam {
                beta1, beta2, lazy_update: lazy, wd, rescale_grad: rescale, clip_gradient: clip,
                ..Default::default()
            };
            let p = AdamParams::with_lr(&adam, lr);
            let n = rows * row_len;
            let (w0, m0, v0) = (sample(n, seed), sample(n, seed ^ 1), sample(n, seed ^ 2).iter().map(|x| x.abs()).collect::<Vec<_>>());
            let (mut w, mut m, mut v) = (up(s, &w0), up(s, &m0), up(s, &v0));
            let (mut cw, mut cm, mut cv) = (w0.clone(), m0.clone(), v0.clone());
            match &rows_of {
                None => {
                    let grads: Vec<Vec<f32>> = (0..k).map(|i| sample(n, seed ^ (9 + i as u64))).collect();
                    let dg: Vec<CudaSlice<f32>> = grads.iter().map(|x| up(s, x)).collect();
                    let refs: Vec<&CudaSlice<f32>> = dg.iter().collect();
                    g.reduce_adam(s, &p, &mut w, &mut m, &mut v, &refs).unwrap();
                    let mut sum = vec![0.0; n];
                    let slices: Vec<&[f32]> = grads.iter().map(|x| x.as_slice()).collect();
                    kvstore_cpu::sum_into(&mut sum, &slices).unwrap();
                    kvstore_cpu::adam_dense(&p, &mut cw, &sum, &mut cm, &mut cv).unwrap();
                }
                Some(ids) => {
                    let ids: Vec<i64> = ids.iter().copied().filter(|&i| (i as usize) < rows).collect();
                    if ids.is_empty() { return; }
                    let grad = sample(ids.len() * row_len, seed ^ 3);
                    let pos: Vec<i64> = (0..rows as i64)
                        .map(|r| ids.iter().position(|&i| i == r).map_or(-1, |k| k as i64)).collect();
                    let dpos = s.clone_htod(&pos).unwrap();
                    let needs_pos = AdamRows::of(&p) == AdamRows::All;
                    g.adam_rows(s, &p, &mut w, row_len, &s.clone_htod(&ids).unwrap(),
                        needs_pos.then_some(&dpos), &up(s, &grad), &mut m, &mut v).unwrap();
                    kvstore_cpu::adam_rows(&p, &mut cw, row_len, &ids, &grad, &mut cm, &mut cv).unwrap();
                }
            }
            assert_same("adam weight", &down(s, &w), &cw);
            assert_same("adam mean", &down(s, &m), &cm);
            assert_same("adam variance", &down(s, &v), &cv);
        });
    }
}

fn sgd(momentum: f64, wd: f64, rescale: f64, clip: Option<f64>) -> kvstore_spec::optimizer::Sgd {
    kvstore_spec::optimizer::Sgd {
        momentum,
        wd,
        rescale_grad: rescale,
        clip_gradient: clip,
        ..Default::default()
    }
}

/// Deterministic pseudo-random values with specials mixed in (cheaper than a strategy for
/// long vectors; the seed comes from proptest, so failures shrink on it and reproduce).
fn sample(n: usize, seed: u64) -> Vec<f32> {
    let specials = [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e-40,
        -1e-40,
        0.5,
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 29 == 0 {
                specials[(x >> 8) as usize % specials.len()]
            } else {
                ((x >> 11) as f64 / (1u64 << 53) as f64 * 8.0 - 4.0) as f32
            }
        })
        .collect()
}

/// The `nccl` kind on one GPU: a one-rank all-reduce leaves every bit as it was (R77). Without
/// libnccl it says so and passes (`KVSTORE_REQUIRE_NCCL=1` makes that a failure).
#[cfg(feature = "nccl")]
#[test]
fn r77_one_rank_nccl_all_reduce_is_exact() {
    on_gpu("r77_one_rank_nccl_all_reduce_is_exact", |_, _| {
        let gpu = Arc::new(Gpu::open(0).unwrap());
        let group = match kvstore_cuda::nccl::NcclGroup::new(std::slice::from_ref(&gpu)) {
            Ok(g) => g,
            Err(e) => {
                assert!(
                    std::env::var_os("KVSTORE_REQUIRE_NCCL").is_none(),
                    "NCCL is required: {e}"
                );
                kvstore_cuda::report_skip("r77_one_rank_nccl_all_reduce_is_exact", &e);
                return;
            }
        };
        assert_eq!(group.ranks(), 1);
        let s = gpu.stream();
        let host = sample(1 << 20, 42);
        let mut buffers = vec![up(s, &host)];
        group.all_reduce_sum(&mut buffers).unwrap();
        assert_same("one-rank all-reduce", &down(s, &buffers[0]), &host);
    });
}
