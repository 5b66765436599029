//! kvstore's GPU benchmarks, one run: each case's median time over CUDA events, as GB/s (bytes
//! read + written, each input read once and each output written once) and as a ratio to a
//! device-to-device memcpy measured in the same run. Every case's result is first checked
//! against the CPU kernels (bit for bit); a mismatch is reported and the process fails.
//!
//! `kvstore-gpu-bench [--out FILE.json] [--n ELEMENTS] [--reps R]`; the defaults are the
//! issue's sizes: N = 64 Mi f32, K = 4, row_sparse_pull of 1 Mi ids x 64 columns from an 8 Mi
//! row table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream};
use kvstore_cpu::{Codec, SgdParams};
use kvstore_cuda::{cudarc, DeviceStore, DeviceUpdater, Gpu, IdScratch};
use kvstore_spec::optimizer::{Adam, Optimizer, Sgd};
use std::sync::Arc;

struct Row {
    case: String,
    ms: f64,
    bytes: f64,
    ok: bool,
    note: String,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// The median of `reps` event-timed runs of `f` on `s`, after three warm-up runs. As
/// `torch_bench.py` times PyTorch: every run is enqueued between its own pair of events with
/// no wait in between, so the GPU runs them back to back and a run's time is the GPU's alone,
/// not the host's launch latency (a run that reads back, as `row_sparse_pull` does, still
/// waits inside `f`).
fn time(s: &Arc<CudaStream>, reps: usize, f: impl FnMut()) -> f64 {
    timed(s, reps, false, f)
}

/// [`time`] with a wait after every run, so each starts on an idle GPU and its time includes
/// the launch latency (how the figures before 2026-11-27 were taken; kept for comparison).
fn time_synced(s: &Arc<CudaStream>, reps: usize, f: impl FnMut()) -> f64 {
    timed(s, reps, true, f)
}

fn timed(s: &Arc<CudaStream>, reps: usize, wait_each: bool, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    s.synchronize().unwrap();
    let mut events = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = s
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap();
        f();
        let end = s
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap();
        if wait_each {
            end.synchronize().unwrap();
        }
        events.push((start, end));
    }
    s.synchronize().unwrap();
    median(
        events
            .iter()
            .map(|(start, end)| f64::from(start.elapsed_ms(end).unwrap()))
            .collect(),
    )
}

fn sample(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    filler::fill(&mut v, seed);
    v
}

/// A fast, seedable fill (no dependency): xorshift per 4 Ki chunk, values in [-2, 2).
mod filler {
    pub fn fill(v: &mut [f32], seed: u64) {
        std::thread::scope(|scope| {
            let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
            let chunk = v.len().div_ceil(threads).max(1);
            for (t, part) in v.chunks_mut(chunk).enumerate() {
                scope.spawn(move || {
                    let mut x = (seed ^ (t as u64).wrapping_mul(0xA24B_AED4_963E_E407))
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        | 1;
                    for e in part.iter_mut() {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        *e = ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0;
                    }
                });
            }
        });
    }
}

/// The streaming kernels under every tuning: which launch shape is fastest on this GPU.
fn sweep(n: usize, reps: usize, hosts: &[Vec<f32>], cpu_sum: &[f32]) {
    use kvstore_cuda::module::Tuning;
    let k = hosts.len();
    let bytes_f = (n * 4) as f64;
    println!("sweep: GB/s of the streaming kernels per tuning");
    let mut tunings = Vec::new();
    for threads in [128, 256] {
        for unroll in [1, 2] {
            for streaming in [false, true] {
                tunings.push(Tuning {
                    threads,
                    unroll,
                    streaming,
                    blocks_per_sm: None,
                });
            }
        }
    }
    tunings.push(Tuning {
        threads: 256,
        unroll: 1,
        streaming: false,
        blocks_per_sm: Some(16),
    });
    for tuning in tunings {
        let gpu = Gpu::open_tuned(0, tuning).unwrap();
        let s = Arc::clone(gpu.stream());
        let grads: Vec<CudaSlice<f32>> = hosts.iter().map(|h| s.clone_htod(h).unwrap()).collect();
        let refs: Vec<&CudaSlice<f32>> = grads.iter().collect();
        let mut out = s.alloc_zeros::<f32>(n).unwrap();
        let mut pulled = s.alloc_zeros::<f32>(n).unwrap();
        let gbps = |bytes: f64, ms: f64| bytes / (ms / 1e3) / 1e9;
        let reduce = time(&s, reps, || gpu.reduce(&s, &mut out, &refs).unwrap());
        let ok = same_bits(&s.clone_dtoh(&out).unwrap(), cpu_sum);
        let pushpull = time(&s, reps, || {
            gpu.reduce_pull(&s, &mut out, &mut pulled, &refs).unwrap()
        });
        let codec = Codec::TwoBit { threshold: 0.5 };
        let nbytes = Gpu::compressed_bytes(codec, n);
        let mut residual = s.alloc_zeros::<f32>(n).unwrap();
        let mut packed = s.alloc_zeros::<u8>(nbytes).unwrap();
        let quantize = time(&s, reps, || {
            gpu.quantize(&s, codec, &grads[0], &mut residual, &mut packed)
                .unwrap()
        });
        let dequantize = time(&s, reps, || {
            gpu.dequantize(&s, codec, &packed, &mut out, true).unwrap()
        });
        println!(
            "sweep  threads {} unroll {} streaming {} cap {:?}:  reduce {:.0}  pushpull {:.0}  quantize_2bit {:.0}  dequantize_acc_2bit {:.0}  {}",
            tuning.threads,
            tuning.unroll,
            tuning.streaming,
            tuning.blocks_per_sm,
            gbps((k + 1) as f64 * bytes_f, reduce),
            gbps((k + 2) as f64 * bytes_f, pushpull),
            gbps(3.0 * bytes_f + nbytes as f64, quantize),
            gbps(2.0 * bytes_f + nbytes as f64, dequantize),
            if ok { "ok" } else { "MISMATCH" }
        );
    }
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let gpu = match Gpu::open(0) {
        Ok(g) => Arc::new(g),
        Err(e) => {
            println!("{}", kvstore_cuda::skip_line("kvstore-gpu-bench", &e));
            return;
        }
    };
    let n = arg("--n", 64 << 20);
    let reps = arg("--reps", 20);
    let k = 4usize;
    let s = Arc::clone(gpu.stream());
    println!(
        "device: {}  N = {n} f32, K = {k}, {reps} timed runs per case",
        gpu.name().unwrap()
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut push = |case: &str, ms: f64, bytes: f64, ok: bool, note: String| {
        let gbps = bytes / (ms / 1e3) / 1e9;
        println!(
            "kvstore  {case:<26} {ms:>9.3} ms  {gbps:>8.1} GB/s  {}",
            if ok { "ok" } else { "MISMATCH" }
        );
        rows.push(Row {
            case: case.into(),
            ms,
            bytes,
            ok,
            note,
        });
    };

    // Ceiling: a 1 GiB device-to-device copy.
    {
        let len = (1usize << 30) / 4;
        let src = s.clone_htod(&sample(len, 1)).unwrap();
        let mut dst = s.alloc_zeros::<f32>(len).unwrap();
        let ms = time(&s, reps, || s.memcpy_dtod(&src, &mut dst).unwrap());
        let ok = same_bits(&s.clone_dtoh(&dst).unwrap(), &s.clone_dtoh(&src).unwrap());
        push("memcpy", ms, 2.0 * (len * 4) as f64, ok, "1 GiB".into());
    }

    let hosts: Vec<Vec<f32>> = (0..k).map(|i| sample(n, 10 + i as u64)).collect();
    let grads: Vec<CudaSlice<f32>> = hosts.iter().map(|h| s.clone_htod(h).unwrap()).collect();
    let refs: Vec<&CudaSlice<f32>> = grads.iter().collect();
    let bytes_f = (n * 4) as f64;

    // Reduce of K values.
    let mut cpu_sum = vec![0.0f32; n];
    {
        let slices: Vec<&[f32]> = hosts.iter().map(|h| h.as_slice()).collect();
        kvstore_cpu::sum_into(&mut cpu_sum, &slices).unwrap();
        let mut out = s.alloc_zeros::<f32>(n).unwrap();
        let ms = time(&s, reps, || gpu.reduce(&s, &mut out, &refs).unwrap());
        let ok = same_bits(&s.clone_dtoh(&out).unwrap(), &cpu_sum);
        push(
            "reduce",
            ms,
            (k + 1) as f64 * bytes_f,
            ok,
            format!("K = {k}"),
        );
        let ms = time_synced(&s, reps, || gpu.reduce(&s, &mut out, &refs).unwrap());
        push(
            "reduce_synced",
            ms,
            (k + 1) as f64 * bytes_f,
            ok,
            "timed with a wait after each run (the earlier method)".into(),
        );
    }

    // Quantise with residual, and dequantise-accumulate, for both codecs.
    for codec in [
        Codec::TwoBit { threshold: 0.5 },
        Codec::OneBit { threshold: 0.0 },
    ] {
        let name = if matches!(codec, Codec::TwoBit { .. }) {
            "2bit"
        } else {
            "1bit"
        };
        let residual0 = sample(n, 99);
        let mut residual = s.clone_htod(&residual0).unwrap();
        let nbytes = Gpu::compressed_bytes(codec, n);
        let mut packed = s.alloc_zeros::<u8>(nbytes).unwrap();
        // Check one step first (the timed runs keep updating the residual).
        gpu.quantize(&s, codec, &grads[0], &mut residual, &mut packed)
            .unwrap();
        let mut cpu_r = residual0.clone();
        let mut cpu_words = vec![0u32; codec.compressed_words(n)];
        kvstore_cpu::quantize(codec, &hosts[0], &mut cpu_r, &mut cpu_words).unwrap();
        let words: Vec<u32> = s
            .clone_dtoh(&packed)
            .unwrap()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let ok = words == cpu_words && same_bits(&s.clone_dtoh(&residual).unwrap(), &cpu_r);
        let ms = time(&s, reps, || {
            gpu.quantize(&s, codec, &grads[0], &mut residual, &mut packed)
                .unwrap()
        });
        push(
            &format!("quantize_{name}"),
            ms,
            3.0 * bytes_f + nbytes as f64,
            ok,
            "with residual".into(),
        );

        let mut out = s.clone_htod(&hosts[1]).unwrap();
        let packed = s
            .clone_htod(
                &cpu_words
                    .iter()
                    .flat_map(|w| w.to_le_bytes())
                    .collect::<Vec<u8>>(),
            )
            .unwrap();
        gpu.dequantize(&s, codec, &packed, &mut out, true).unwrap();
        let mut cpu_out = hosts[1].clone();
        kvstore_cpu::dequantize(codec, &cpu_words, &mut cpu_out, true).unwrap();
        let ok = same_bits(&s.clone_dtoh(&out).unwrap(), &cpu_out);
        let ms = time(&s, reps, || {
            gpu.dequantize(&s, codec, &packed, &mut out, true).unwrap()
        });
        push(
            &format!("dequantize_acc_{name}"),
            ms,
            nbytes as f64 + 2.0 * bytes_f,
            ok,
            String::new(),
        );
    }

    // row_sparse_pull: 1 Mi random ids (repeats, unsorted) from 8 Mi rows x 64 columns.
    {
        let (table_rows, cols, nids) = (arg("--rows", 8 << 20), 64usize, arg("--ids", 1 << 20));
        let table_host = sample(table_rows * cols, 7);
        let table = s.clone_htod(&table_host).unwrap();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let ids_host: Vec<i64> = (0..nids)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % table_rows as u64) as i64
            })
            .collect();
        let ids = s.clone_htod(&ids_host).unwrap();
        let mut scratch = IdScratch::default();
        let pull = |scratch: &mut IdScratch| {
            let unique = gpu
                .unique_ids(&s, &ids, table_rows, scratch)
                .unwrap()
                .unwrap();
            // SAFETY: the gather writes every element.
            #[allow(unsafe_code)]
            let mut out = unsafe { s.alloc::<f32>(unique.len() * cols) }.unwrap();
            gpu.gather_rows(&s, &table, cols, &unique, &mut out)
                .unwrap();
            (unique, out)
        };
        let (unique, out) = pull(&mut scratch);
        let cpu_ids = kvstore_cpu::sorted_unique_ids(&ids_host, table_rows).unwrap();
        let mut cpu_rows = vec![0.0f32; cpu_ids.len() * cols];
        kvstore_cpu::gather_rows(&table_host, cols, &cpu_ids, &mut cpu_rows).unwrap();
        let ok = s.clone_dtoh(&unique).unwrap() == cpu_ids
            && same_bits(&s.clone_dtoh(&out).unwrap(), &cpu_rows);
        let u = cpu_ids.len();
        let bytes = (nids * 8 + u * 8 + 2 * u * cols * 4) as f64;
        let ms = time(&s, reps, || {
            let _ = pull(&mut scratch);
        });
        push(
            "row_sparse_pull",
            ms,
            bytes,
            ok,
            format!("{u} unique of {nids} ids"),
        );
        let ms = time(&s, reps, || {
            let _ = gpu.unique_ids(&s, &ids, table_rows, &mut scratch).unwrap();
        });
        push(
            "unique_ids",
            ms,
            (nids * 8 + u * 8) as f64,
            ok,
            "sort + dedup alone".into(),
        );
        let mut out2 = s.alloc_zeros::<f32>(u * cols).unwrap();
        let ms = time(&s, reps, || {
            gpu.gather_rows(&s, &table, cols, &unique, &mut out2)
                .unwrap()
        });
        push(
            "gather_rows",
            ms,
            (u * 8 + 2 * u * cols * 4) as f64,
            ok,
            "gather alone".into(),
        );
    }

    // End to end: push K values into a device store, then pull (no updater: value = sum).
    let updaters: [(&str, Option<Optimizer>, Option<Codec>); 4] = [
        ("push_pull", None, None),
        (
            "push_pull_sgd",
            Some(Optimizer::Sgd(Sgd {
                learning_rate: 0.1,
                wd: 1e-4,
                ..Sgd::default()
            })),
            None,
        ),
        (
            "push_pull_adam",
            Some(Optimizer::Adam(Adam {
                learning_rate: 0.01,
                ..Adam::default()
            })),
            None,
        ),
        (
            "push_pull_2bit",
            None,
            Some(Codec::TwoBit { threshold: 0.5 }),
        ),
    ];
    for (case, optimizer, codec) in updaters {
        let mut store = DeviceStore::new(Arc::clone(&gpu));
        let init = sample(n, 5);
        store.init(0, &[n], &s.clone_htod(&init).unwrap()).unwrap();
        if let Some(o) = &optimizer {
            store
                .set_updater(DeviceUpdater::Optimizer(o.clone()))
                .unwrap();
        }
        if let Some(c) = codec {
            store.set_compression(c);
        }
        let mut out = s.alloc_zeros::<f32>(n).unwrap();
        store.push(0, &refs).unwrap();
        store.pull(0, &mut out).unwrap();
        let got = s.clone_dtoh(&out).unwrap();
        let ok = match (&optimizer, codec) {
            (None, None) => same_bits(&got, &cpu_sum),
            (Some(Optimizer::Sgd(p)), None) => {
                let mut w = init.clone();
                kvstore_cpu::sgd_dense(
                    &SgdParams::with_lr(p, p.learning_rate),
                    &mut w,
                    &cpu_sum,
                    None,
                )
                .unwrap();
                same_bits(&got, &w)
            }
            (Some(Optimizer::Adam(p)), None) => {
                let o = optimizer.clone().unwrap();
                let mut w = init.clone();
                let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
                let params = kvstore_cpu::AdamParams::with_lr(p, o.step_lr(1));
                kvstore_cpu::adam_dense(&params, &mut w, &cpu_sum, &mut m, &mut v).unwrap();
                same_bits(&got, &w)
            }
            (None, Some(c)) => {
                let mut merged = vec![0.0f32; n];
                let slices: Vec<&[f32]> = hosts.iter().map(|h| h.as_slice()).collect();
                let mut res: Vec<Vec<f32>> = vec![vec![0.0; n]; k];
                let mut res_refs: Vec<&mut [f32]> =
                    res.iter_mut().map(|r| r.as_mut_slice()).collect();
                kvstore_cpu::quantize_sum_into(c, &mut merged, &slices, &mut res_refs).unwrap();
                same_bits(&got, &merged)
            }
            _ => false,
        };
        let ks = Arc::clone(store.stream(0).unwrap());
        let ms = time(&ks, reps, || {
            store.push(0, &refs).unwrap();
            store.pull(0, &mut out).unwrap();
        });
        // Bytes the implementation must move: the K values read once, the state read and
        // written once (fused), the pull's copy; compressed: per value g and r read, r written,
        // then the decoded sum accumulated, copied into the value and pulled (codes ignored).
        let elements = match (&optimizer, codec) {
            (Some(Optimizer::Sgd(_)), _) => k + 2 + 2,
            (Some(Optimizer::Adam(_)), _) => k + 6 + 2,
            (None, Some(_)) => 3 * k + 1 + 2 * (k - 1) + 2 + 2,
            _ => k + 1 + 2,
        };
        let bytes = elements as f64 * bytes_f;
        push(case, ms, bytes, ok, "K values pushed, then pulled".into());
    }

    // pushpull: the same push and pull fused into one pass (no updater).
    {
        let mut store = DeviceStore::new(Arc::clone(&gpu));
        store
            .init(0, &[n], &s.clone_htod(&sample(n, 5)).unwrap())
            .unwrap();
        let mut out = s.alloc_zeros::<f32>(n).unwrap();
        store.pushpull(0, &refs, &mut out).unwrap();
        let ok = same_bits(&s.clone_dtoh(&out).unwrap(), &cpu_sum)
            && same_bits(&store.value_to_host(0).unwrap(), &cpu_sum);
        let ks = Arc::clone(store.stream(0).unwrap());
        let ms = time(&ks, reps, || store.pushpull(0, &refs, &mut out).unwrap());
        push(
            "pushpull",
            ms,
            (k + 2) as f64 * bytes_f,
            ok,
            "one pass: K read, value and pull written".into(),
        );
        let ms = time_synced(&ks, reps, || store.pushpull(0, &refs, &mut out).unwrap());
        push(
            "pushpull_synced",
            ms,
            (k + 2) as f64 * bytes_f,
            ok,
            "timed with a wait after each run (the earlier method)".into(),
        );
    }

    if std::env::args().any(|a| a == "--sweep") {
        sweep(n, reps, &hosts, &cpu_sum);
    }

    let memcpy = rows.first().map(|r| r.bytes / r.ms).unwrap_or(1.0);
    if let Some(path) = std::env::args().skip_while(|a| a != "--out").nth(1) {
        let json: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"case\": \"{}\", \"ms\": {:.6}, \"bytes\": {}, \"gbps\": {:.3}, \"of_memcpy\": {:.4}, \"ok\": {}, \"note\": \"{}\"}}",
                    r.case,
                    r.ms,
                    r.bytes,
                    r.bytes / (r.ms / 1e3) / 1e9,
                    (r.bytes / r.ms) / memcpy,
                    r.ok,
                    r.note
                )
            })
            .collect();
        std::fs::write(&path, format!("[\n{}\n]\n", json.join(",\n"))).unwrap();
    }
    if rows.iter().any(|r| !r.ok) {
        eprintln!("a GPU result differs from the CPU kernels");
        std::process::exit(1);
    }
}
