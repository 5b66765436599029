//! The five workloads of `kvstore bench` (docs/performance.md), as divan benches, plus the
//! phases and kernels they are made of, to tell where a case's time goes.
//!
//! ```text
//! cargo bench -p kvstore --bench store                 # everything (a few minutes)
//! cargo bench -p kvstore --bench store -- case_a       # one case, its phases and sizes
//! cargo bench -p kvstore --bench store -- kernel       # the bare kernels and memcpy
//! cargo bench -p kvstore --bench store -- optimizer    # one push through each optimizer
//! ```
//!
//! Each case comes at its full size (the `kvstore bench` one) and at a small one; the phases
//! (`push` alone, `pull` alone, the call that queues) and the kernels (`kvstore_cpu`, called
//! directly on the same data) are what the full-size case spends its time in.
// A bench whose setup fails has nothing to measure: it stops there, as a test does.
#![allow(clippy::expect_used)]

use divan::Bencher;
use kvstore::backend::{Backend, CpuBackend, SpecBackend};
use kvstore::spec::optimizer::State;
use kvstore::{
    AdaGrad, Adam, BackendKind, Compression, CompressionType, DType, Device, Ftrl, KvStore, Nag,
    NdArray, Optimizer, Options, RmsProp, RowSparse, Sgd, Tensor, Value,
};

fn main() {
    divan::main();
}

const DEVICES: u32 = 4;
const ROW_LEN: usize = 64;
/// Elements of the dense key of cases a and b: full size and small.
const DENSE: [usize; 2] = [4 << 20, 64 << 10];
/// (table rows, ids) of cases c and d: full size and small.
const SPARSE: [(usize, usize); 2] = [(256 << 10, 16 << 10), (16 << 10, 1 << 10)];
/// Keys of case e: full size and small.
const KEYS: [usize; 2] = [10_000, 100];

/// splitmix64, as the CLI's bench uses.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32)
            .collect()
    }

    /// `k` distinct ids below `rows`, sorted.
    fn distinct_ids(&mut self, rows: usize, k: usize) -> Vec<i64> {
        let mut all: Vec<i64> = (0..rows as i64).collect();
        for i in 0..k {
            let j = i + self.below(rows - i);
            all.swap(i, j);
        }
        all.truncate(k);
        all.sort_unstable();
        all
    }
}

fn device_store() -> KvStore {
    kvstore::create("device").expect("a device store")
}

/// Cases a and b: a store holding key 0 of `n` zeros, 4 gradients and 4 outputs.
struct Dense {
    kv: KvStore,
    grads: Vec<NdArray>,
    outs: Vec<NdArray>,
}

impl Dense {
    fn new(n: usize, compressed: bool) -> Dense {
        let kv = device_store();
        if compressed {
            let c = Compression::new(CompressionType::TwoBit, 0.5).expect("2bit");
            kv.set_gradient_compression(c).expect("compression");
        }
        kv.init(0, Tensor::zeros([n], DType::F32).expect("zeros"))
            .expect("init");
        let mut rng = Rng(42);
        let on = |t: Tensor, d| NdArray::new(t.on(Device::Cpu(d)));
        let grads = (0..DEVICES)
            .map(|d| on(Tensor::new([n], rng.f32s(n)).expect("grad"), d))
            .collect();
        let outs = (0..DEVICES)
            .map(|d| on(Tensor::zeros([n], DType::F32).expect("out"), d))
            .collect();
        let dense = Dense { kv, grads, outs };
        // The first push turns the key's storage into the merge buffer: warm it.
        dense.push();
        dense.pull();
        dense
    }

    fn push(&self) {
        self.kv.push(0, &self.grads[..]).expect("push");
        self.kv.wait_all().expect("push ran");
    }

    fn pull(&self) {
        self.kv.pull(0, &self.outs[..]).expect("pull");
        self.kv.wait_all().expect("pull ran");
    }
}

/// Case a: dense push + pull of one key from and to 4 devices.
#[divan::bench(args = DENSE, sample_count = 20, sample_size = 1)]
fn case_a_push_pull(bencher: Bencher, n: usize) {
    let d = Dense::new(n, false);
    bencher.bench_local(|| {
        d.kv.push(0, &d.grads[..]).expect("push");
        d.kv.pull(0, &d.outs[..]).expect("pull");
        d.kv.wait_all().expect("ran");
    });
}

/// Case a's push alone (4 gradients summed into the key).
#[divan::bench(args = DENSE, sample_count = 20, sample_size = 1)]
fn case_a_push(bencher: Bencher, n: usize) {
    let d = Dense::new(n, false);
    bencher.bench_local(|| d.push());
}

/// Case a's pull alone (the key copied to 4 outputs).
#[divan::bench(args = DENSE, sample_count = 20, sample_size = 1)]
fn case_a_pull(bencher: Bencher, n: usize) {
    let d = Dense::new(n, false);
    bencher.bench_local(|| d.pull());
}

/// Case b: case a with 2-bit compression (threshold 0.5).
#[divan::bench(args = DENSE, sample_count = 20, sample_size = 1)]
fn case_b_push_pull(bencher: Bencher, n: usize) {
    let d = Dense::new(n, true);
    bencher.bench_local(|| {
        d.kv.push(0, &d.grads[..]).expect("push");
        d.kv.pull(0, &d.outs[..]).expect("pull");
        d.kv.wait_all().expect("ran");
    });
}

/// Case b's push alone (quantise with residuals, sum).
#[divan::bench(args = DENSE, sample_count = 20, sample_size = 1)]
fn case_b_push(bencher: Bencher, n: usize) {
    let d = Dense::new(n, true);
    bencher.bench_local(|| d.push());
}

fn table_store(rows: usize, rng: &mut Rng) -> KvStore {
    let kv = device_store();
    let table = Tensor::new([rows, ROW_LEN], rng.f32s(rows * ROW_LEN)).expect("table");
    kv.init(1, table).expect("init");
    kv
}

/// Case c: row_sparse_pull of random ids (duplicates possible) from a dense table.
#[divan::bench(args = SPARSE, sample_count = 50, sample_size = 1)]
fn case_c_row_sparse_pull(bencher: Bencher, (rows, k): (usize, usize)) {
    let mut rng = Rng(42);
    let kv = table_store(rows, &mut rng);
    let ids: Vec<i64> = (0..k).map(|_| rng.below(rows) as i64).collect();
    let out = NdArray::row_sparse([rows, ROW_LEN], DType::F32).expect("out");
    bencher.bench_local(|| {
        kv.row_sparse_pull(1, &out, ids.clone())
            .expect("row_sparse_pull");
        out.wait().expect("ran");
    });
}

/// Case d's 4 row_sparse values of `k` distinct rows each.
fn sparse_values(rows: usize, k: usize, rng: &mut Rng) -> Vec<NdArray> {
    (0..DEVICES)
        .map(|d| {
            let ids = rng.distinct_ids(rows, k);
            let data = rng.f32s(k * ROW_LEN);
            let value = RowSparse::new([rows, ROW_LEN], ids, data).expect("row_sparse");
            NdArray::new(value.on(Device::Cpu(d)))
        })
        .collect()
}

/// Case d: row_sparse push from 4 devices into the table.
#[divan::bench(args = SPARSE, sample_count = 50, sample_size = 1)]
fn case_d_row_sparse_push(bencher: Bencher, (rows, k): (usize, usize)) {
    let mut rng = Rng(42);
    let kv = table_store(rows, &mut rng);
    let values = sparse_values(rows, k, &mut rng);
    bencher.bench_local(|| {
        kv.push(1, &values[..]).expect("push");
        kv.wait_all().expect("ran");
    });
}

/// Case d's queue-time work alone: the `push` call (checks, planning, queueing), the
/// operation itself running untimed before the next sample.
#[divan::bench(args = SPARSE, sample_count = 50, sample_size = 1)]
fn case_d_push_call(bencher: Bencher, (rows, k): (usize, usize)) {
    let mut rng = Rng(42);
    let kv = table_store(rows, &mut rng);
    let values = sparse_values(rows, k, &mut rng);
    bencher
        .with_inputs(|| kv.wait_all().expect("ran"))
        .bench_local_values(|()| kv.push(1, &values[..]).expect("push"));
}

/// Case e: many one-element keys.
struct ManyKeys {
    kv: KvStore,
    keys: Vec<i64>,
    values: Vec<NdArray>,
    outs: Vec<NdArray>,
}

impl ManyKeys {
    fn new(n: usize) -> ManyKeys {
        let kv = device_store();
        let keys: Vec<i64> = (0..n as i64).collect();
        let zeros: Vec<Tensor> = (0..n)
            .map(|_| Tensor::zeros([1], DType::F32).expect("zeros"))
            .collect();
        kv.init(&keys[..], zeros).expect("init");
        let mut rng = Rng(42);
        let values = (0..n)
            .map(|_| NdArray::from_f32([1], rng.f32s(1)).expect("value"))
            .collect();
        let outs = (0..n)
            .map(|_| NdArray::zeros([1], DType::F32).expect("out"))
            .collect();
        ManyKeys {
            kv,
            keys,
            values,
            outs,
        }
    }
}

/// Case e: `n` one-element keys pushed and pulled as lists (2n key operations).
#[divan::bench(args = KEYS, sample_count = 20, sample_size = 1)]
fn case_e_push_pull(bencher: Bencher, n: usize) {
    let m = ManyKeys::new(n);
    bencher
        .counter(divan::counter::ItemsCount::new(2 * n))
        .bench_local(|| {
            m.kv.push(&m.keys[..], &m.values[..]).expect("push");
            m.kv.pull(&m.keys[..], &m.outs[..]).expect("pull");
            m.kv.wait_all().expect("ran");
        });
}

/// Case e's `push` call alone (checks, planning, queueing), run untimed before the next sample.
#[divan::bench(args = KEYS, sample_count = 20, sample_size = 1)]
fn case_e_push_call(bencher: Bencher, n: usize) {
    let m = ManyKeys::new(n);
    bencher
        .with_inputs(|| m.kv.wait_all().expect("ran"))
        .bench_local_values(|()| m.kv.push(&m.keys[..], &m.values[..]).expect("push"));
}

/// Case e's `pull` call alone.
#[divan::bench(args = KEYS, sample_count = 20, sample_size = 1)]
fn case_e_pull_call(bencher: Bencher, n: usize) {
    let m = ManyKeys::new(n);
    bencher
        .with_inputs(|| m.kv.wait_all().expect("ran"))
        .bench_local_values(|()| m.kv.pull(&m.keys[..], &m.outs[..]).expect("pull"));
}

/// Case e's push, queued and run.
#[divan::bench(args = KEYS, sample_count = 20, sample_size = 1)]
fn case_e_push(bencher: Bencher, n: usize) {
    let m = ManyKeys::new(n);
    bencher.bench_local(|| {
        m.kv.push(&m.keys[..], &m.values[..]).expect("push");
        m.kv.wait_all().expect("ran");
    });
}

/// Elements of the key the optimizer benches push.
const OPTIMIZER_KEY: usize = 4 << 20;

/// Every optimizer of `set_optimizer`, SGD and NAG with momentum, RMSProp plain and centered.
const OPTIMIZERS: [&str; 7] = [
    "sgd",
    "nag",
    "adam",
    "adagrad",
    "rmsprop",
    "rmsprop_centered",
    "ftrl",
];

fn optimizer(name: &str) -> Optimizer {
    match name {
        "sgd" => Optimizer::Sgd(Sgd {
            momentum: 0.9,
            wd: 1e-4,
            ..Sgd::default()
        }),
        "nag" => Optimizer::Nag(Nag {
            momentum: 0.9,
            wd: 1e-4,
            ..Nag::default()
        }),
        "adam" => Optimizer::Adam(Adam {
            wd: 1e-4,
            ..Adam::default()
        }),
        "adagrad" => Optimizer::AdaGrad(AdaGrad {
            wd: 1e-4,
            ..AdaGrad::default()
        }),
        "rmsprop" => Optimizer::RmsProp(RmsProp::default()),
        "rmsprop_centered" => Optimizer::RmsProp(RmsProp {
            centered: true,
            ..RmsProp::default()
        }),
        _ => Optimizer::Ftrl(Ftrl::default()),
    }
}

/// A local store on `backend` holding key 0 of 4 Mi f32 elements with the optimizer set and
/// one push done (the key's state exists), and a gradient to push.
fn optimizer_store(name: &str, backend: BackendKind) -> (KvStore, NdArray) {
    let options = Options {
        backend,
        ..Options::default()
    };
    let kv = kvstore::create_with("local", options).expect("a local store");
    let mut rng = Rng(42);
    let weight = Tensor::new([OPTIMIZER_KEY], rng.f32s(OPTIMIZER_KEY)).expect("weight");
    kv.init(0, weight).expect("init");
    kv.set_optimizer(optimizer(name)).expect("set_optimizer");
    let grad = NdArray::from_f32([OPTIMIZER_KEY], rng.f32s(OPTIMIZER_KEY)).expect("grad");
    kv.push(0, &grad).expect("push");
    kv.wait_all().expect("first push ran");
    (kv, grad)
}

/// One push of a 4 Mi-element f32 gradient through the optimizer on `kvstore::create("local")`
/// (the CPU backend's kernels).
#[divan::bench(args = OPTIMIZERS, sample_count = 20, sample_size = 1)]
fn optimizer_push(bencher: Bencher, name: &str) {
    let (kv, grad) = optimizer_store(name, BackendKind::Cpu);
    bencher.bench_local(|| {
        kv.push(0, &grad).expect("push");
        kv.wait_all().expect("ran");
    });
}

/// The same push on the engine with the spec's arithmetic as its backend: what the CPU
/// backend fell back to before it had the optimizers' kernels.
#[divan::bench(args = OPTIMIZERS, sample_count = 3, sample_size = 1)]
fn optimizer_push_spec_fallback(bencher: Bencher, name: &str) {
    let (kv, grad) = optimizer_store(name, BackendKind::EngineSpec);
    bencher.bench_local(|| {
        kv.push(0, &grad).expect("push");
        kv.wait_all().expect("ran");
    });
}

/// One `Backend::optimize` call (the update alone, no engine) on a warm 4 Mi-element f32 key.
fn bench_optimize(bencher: Bencher, name: &str, backend: &dyn Backend) {
    let opt = optimizer(name);
    let mut rng = Rng(42);
    let mut stored =
        Value::Dense(Tensor::new([OPTIMIZER_KEY], rng.f32s(OPTIMIZER_KEY)).expect("weight"));
    let merged = Value::Dense(Tensor::new([OPTIMIZER_KEY], rng.f32s(OPTIMIZER_KEY)).expect("grad"));
    let mut state: Option<State> = None;
    backend
        .optimize(&opt, &mut state, &merged, &mut stored)
        .expect("first update");
    bencher.bench_local(|| {
        backend
            .optimize(&opt, &mut state, &merged, &mut stored)
            .expect("update")
    });
}

/// The update alone on the CPU backend (its kernels).
#[divan::bench(args = OPTIMIZERS, sample_count = 20, sample_size = 1)]
fn optimizer_update_cpu(bencher: Bencher, name: &str) {
    bench_optimize(bencher, name, &CpuBackend);
}

/// The update alone with the spec's arithmetic (the CPU backend's fallback before it had the
/// kernels).
#[divan::bench(args = OPTIMIZERS, sample_count = 3, sample_size = 1)]
fn optimizer_update_spec(bencher: Bencher, name: &str) {
    bench_optimize(bencher, name, &SpecBackend);
}

/// The kernels the cases run, called directly on data of the full-size cases.
mod kernel {
    use super::{Rng, DEVICES, ROW_LEN};
    use divan::{black_box, Bencher};
    use rayon::prelude::*;

    const N: usize = 4 << 20;

    fn grads(rng: &mut Rng) -> Vec<Vec<f32>> {
        (0..DEVICES).map(|_| rng.f32s(N)).collect()
    }

    /// Case a's push: the sum of 4 gradients.
    #[divan::bench(sample_count = 20, sample_size = 1)]
    fn sum_into_4(bencher: Bencher) {
        let g = grads(&mut Rng(42));
        let inputs: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
        let mut out = vec![0.0f32; N];
        bencher.bench_local(|| kvstore_cpu::sum_into(black_box(&mut out), &inputs));
    }

    /// Case a's pull: one value copied to 4 outputs, each copy split across the cores as
    /// the CPU backend does.
    #[divan::bench(sample_count = 20, sample_size = 1)]
    fn copy_to_4(bencher: Bencher) {
        let src = Rng(42).f32s(N);
        let mut outs: Vec<Vec<f32>> = (0..DEVICES).map(|_| vec![0.0f32; N]).collect();
        bencher.bench_local(|| {
            for out in &mut outs {
                out.par_chunks_mut(1 << 16)
                    .zip(src.par_chunks(1 << 16))
                    .for_each(|(d, s)| d.copy_from_slice(s));
            }
        });
    }

    /// Case a's pull as one pass: each chunk of the value read once and written to all 4
    /// outputs while it is in cache.
    #[divan::bench(sample_count = 20, sample_size = 1)]
    fn copy_to_4_fused(bencher: Bencher) {
        let src = Rng(42).f32s(N);
        let mut outs: Vec<Vec<f32>> = (0..DEVICES).map(|_| vec![0.0f32; N]).collect();
        const CHUNK: usize = 1 << 14;
        bencher.bench_local(|| {
            let [a, b, c, d] = &mut outs[..] else { return };
            a.par_chunks_mut(CHUNK)
                .zip(b.par_chunks_mut(CHUNK))
                .zip(c.par_chunks_mut(CHUNK))
                .zip(d.par_chunks_mut(CHUNK))
                .zip(src.par_chunks(CHUNK))
                .for_each(|((((a, b), c), d), s)| {
                    a.copy_from_slice(s);
                    b.copy_from_slice(s);
                    c.copy_from_slice(s);
                    d.copy_from_slice(s);
                });
        });
    }

    /// Case b's push: quantise 4 gradients with their residuals and sum what they decode to.
    #[divan::bench(sample_count = 20, sample_size = 1)]
    fn quantize_sum_into_4(bencher: Bencher) {
        let g = grads(&mut Rng(42));
        let inputs: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
        let mut residuals: Vec<Vec<f32>> = (0..DEVICES).map(|_| vec![0.0f32; N]).collect();
        let mut out = vec![0.0f32; N];
        let codec = kvstore_cpu::Codec::TwoBit { threshold: 0.5 };
        bencher.bench_local(|| {
            let mut slots: Vec<&mut [f32]> = residuals.iter_mut().map(Vec::as_mut_slice).collect();
            kvstore_cpu::quantize_sum_into(codec, black_box(&mut out), &inputs, &mut slots)
        });
    }

    /// Case c's gather: 16 Ki sorted unique rows of a 256 Ki × 64 table.
    #[divan::bench(sample_count = 50, sample_size = 1)]
    fn gather_rows(bencher: Bencher) {
        let mut rng = Rng(42);
        let rows = 256 << 10;
        let table = rng.f32s(rows * ROW_LEN);
        let ids = rng.distinct_ids(rows, 16 << 10);
        let mut out = vec![0.0f32; ids.len() * ROW_LEN];
        bencher
            .bench_local(|| kvstore_cpu::gather_rows(&table, ROW_LEN, &ids, black_box(&mut out)));
    }

    /// Case d's merge: the union of 4 × 16 Ki distinct rows, summed.
    #[divan::bench(sample_count = 50, sample_size = 1)]
    fn sparse_sum_into_4(bencher: Bencher) {
        let mut rng = Rng(42);
        let rows = 256 << 10;
        let k = 16 << 10;
        let parts: Vec<(Vec<i64>, Vec<f32>)> = (0..DEVICES)
            .map(|_| (rng.distinct_ids(rows, k), rng.f32s(k * ROW_LEN)))
            .collect();
        let inputs: Vec<(&[i64], &[f32])> = parts
            .iter()
            .map(|(i, d)| (i.as_slice(), d.as_slice()))
            .collect();
        let (mut ids, mut data) = (Vec::new(), Vec::new());
        bencher.bench_local(|| {
            kvstore_cpu::sparse_sum_into(&inputs, ROW_LEN, black_box(&mut ids), &mut data)
        });
    }

    /// The memory-bandwidth reference: one 256 MiB `copy_from_slice`.
    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn memcpy_256mib(bencher: Bencher) {
        let src = vec![1u8; 256 << 20];
        let mut dst = vec![0u8; 256 << 20];
        bencher
            .counter(divan::counter::BytesCount::new(2usize * (256 << 20)))
            .bench_local(|| black_box(&mut dst).copy_from_slice(&src));
    }
}
