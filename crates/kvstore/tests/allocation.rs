//! A warm store does not allocate element buffers on the hot path: merge buffers, residuals and
//! outputs are reused (the engine's per-call bookkeeping still allocates a few small objects).
//! Counted with a global allocator over every thread, engine workers and rayon included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, unsafe_code)]

use kvstore::{Compression, CompressionType, DType, Device, NdArray, RowSparse, Tensor};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts the bytes asked for.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(new_size, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated while `f` runs `times` times, after three warm-up runs.
fn allocated(times: usize, mut f: impl FnMut()) -> usize {
    for _ in 0..3 {
        f();
    }
    let before = BYTES.load(Ordering::Relaxed);
    for _ in 0..times {
        f();
    }
    BYTES.load(Ordering::Relaxed) - before
}

const N: usize = 1 << 20;

fn on(d: u32, x: f32) -> NdArray {
    NdArray::new(
        Tensor::full([N], DType::F32, f64::from(x))
            .unwrap()
            .on(Device::Cpu(d)),
    )
}

// One test function: the counter is global, so the cases must not run in parallel.
#[test]
fn warm_pushes_and_pulls_allocate_no_element_buffers() {
    let one_value = N * 4;

    let kv = kvstore::create("device").unwrap();
    kv.init(0, Tensor::zeros([N], DType::F32).unwrap()).unwrap();
    let grads: Vec<NdArray> = (0..4).map(|d| on(d, 1.0)).collect();
    let outs: Vec<NdArray> = (0..4).map(|d| on(d, 0.0)).collect();
    let dense = allocated(5, || {
        kv.push(0, &grads).unwrap();
        kv.pull(0, &outs).unwrap();
        kv.wait_all().unwrap();
    });
    assert!(
        dense < one_value / 4,
        "dense push + pull allocated {dense} bytes in 5 rounds"
    );

    kv.set_gradient_compression(Compression::new(CompressionType::TwoBit, 0.5).unwrap())
        .unwrap();
    let compressed = allocated(5, || {
        kv.push(0, &grads).unwrap();
        kv.pull(0, &outs).unwrap();
        kv.wait_all().unwrap();
    });
    assert!(
        compressed < one_value / 4,
        "compressed push + pull allocated {compressed} bytes in 5 rounds"
    );

    // Compression takes dense values only: row_sparse work runs on a store without it.
    let kv = kvstore::create("device").unwrap();
    let rows = 4096;
    kv.init(1, Tensor::zeros([rows, 64], DType::F32).unwrap())
        .unwrap();
    let sparse: Vec<NdArray> = (0..4u32)
        .map(|d| {
            let ids: Vec<i64> = (0..rows as i64).filter(|i| i % 4 != i64::from(d)).collect();
            let data = vec![1.0f32; ids.len() * 64];
            NdArray::new(
                RowSparse::new([rows, 64], ids, data)
                    .unwrap()
                    .on(Device::Cpu(d)),
            )
        })
        .collect();
    let out = NdArray::row_sparse([rows, 64], DType::F32).unwrap();
    let ids: Vec<i64> = (0..rows as i64).step_by(3).collect();
    let table = rows * 64 * 4;
    let row_sparse = allocated(5, || {
        kv.push(1, &sparse).unwrap();
        kv.row_sparse_pull(1, &out, ids.clone()).unwrap();
        kv.wait_all().unwrap();
    });
    println!(
        "bytes allocated in 5 warm rounds: dense {dense}, 2-bit {compressed}, row_sparse {row_sparse} \
         (one dense value is {one_value}, the table {table})"
    );
    // The row id lists (a few KiB per call) are the caller's and the checked copy's.
    assert!(
        row_sparse < table / 4,
        "row_sparse push + pull allocated {row_sparse} bytes in 5 rounds"
    );
}
