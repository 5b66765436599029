//! R77: the device-resident store ([`kvstore_cuda::DeviceStore`]: values, merge buffers and
//! residuals on the GPU, one stream per key) against the specification, on random programs of
//! init, push (several devices' gradients, with or without 2-bit/1-bit compression, with no
//! updater, SGD or Adam), pull and row_sparse_pull (ids unsorted, repeated). Every pulled
//! value must equal the spec's bit for bit (R60).
//!
//! R78: the same programs with every buffer the caller hands over (initial values, gradients,
//! pull outputs, row ids) placed at random in a second CUDA context on the same GPU, so each
//! crossing is a peer copy (`cuMemCpyPeerAsync`) with its cross-context ordering: the code path
//! of several GPUs, run on one.
//!
//! R79: the `nccl` kind's device store ([`kvstore_cuda::NcclStore`], feature `nccl`) on a
//! one-rank NCCL group against the spec's `nccl` store, on the same programs without
//! compression and row_sparse_pull (the kind has neither), one device set per program (R23).
//!
//! Needs the `cuda` feature and a GPU; otherwise it prints one `SKIPPED` line naming why
//! (`KVSTORE_REQUIRE_GPU=1` makes that a failure).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[cfg(feature = "cuda")]
mod on_gpu {
    use kvstore::{BackendKind, Compression, CompressionType, Device, NdArray, Options, Tensor};
    use kvstore_cpu::Codec;
    use kvstore_cuda::cudarc::driver::{CudaContext, CudaSlice, CudaStream};
    use kvstore_cuda::{DeviceStore, DeviceUpdater, Gpu};
    use kvstore_spec::optimizer::{Adam, Optimizer, Sgd};
    use proptest::prelude::*;
    use std::sync::{Arc, OnceLock};

    #[derive(Debug, Clone)]
    enum Op {
        Push {
            key: usize,
            seed: u64,
        },
        PushPull {
            key: usize,
            seed: u64,
        },
        Pull {
            key: usize,
        },
        /// A pushpull whose output has the wrong size: refused, and nothing pushed (R7).
        RefusedPushPull {
            key: usize,
            seed: u64,
        },
        RowSparsePull {
            key: usize,
            ids: Vec<i64>,
        },
    }

    #[derive(Debug, Clone)]
    struct Program {
        /// Per key: rows, columns, and the devices it is pushed from (fixed per key: a
        /// `device` store reduces over one device set, R17).
        shapes: Vec<[usize; 3]>,
        updater: u8,
        momentum: bool,
        compression: Option<(bool, f32)>,
        ops: Vec<Op>,
        seed: u64,
        /// Bit i % 64: whether the i-th buffer handed over lives in the other context (R78).
        placement: u64,
    }

    fn program() -> impl Strategy<Value = Program> {
        (
            prop::collection::vec(
                (1usize..12, 1usize..9, 1usize..11).prop_map(|(r, c, d)| [r, c, d]),
                1..4,
            ),
            0u8..3,
            any::<bool>(),
            prop::option::of((any::<bool>(), prop_oneof![Just(0.5f32), 0.05f32..2.0])),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_flat_map(|(shapes, updater, momentum, compression, seed, placement)| {
                let keys = shapes.len();
                let op = prop_oneof![
                    3 => (0..keys, any::<u64>()).prop_map(|(key, seed)| Op::Push { key, seed }),
                    1 => (0..keys, any::<u64>()).prop_map(|(key, seed)| Op::PushPull { key, seed }),
                    1 => (0..keys).prop_map(|key| Op::Pull { key }),
                    1 => (0..keys, any::<u64>())
                        .prop_map(|(key, seed)| Op::RefusedPushPull { key, seed }),
                    1 => (0..keys, prop::collection::vec(0i64..12, 0..20))
                        .prop_map(|(key, ids)| Op::RowSparsePull { key, ids }),
                ];
                prop::collection::vec(op, 1..25).prop_map(move |ops| Program {
                    shapes: shapes.clone(),
                    updater,
                    momentum,
                    compression,
                    ops,
                    seed,
                    placement,
                })
            })
    }

    fn gpu() -> Option<Arc<Gpu>> {
        static GPU: OnceLock<Option<Arc<Gpu>>> = OnceLock::new();
        GPU.get_or_init(|| Gpu::open(0).ok().map(Arc::new)).clone()
    }

    /// Deterministic values with a few specials.
    fn sample(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match x % 97 {
                    0 => -0.0,
                    1 => 1e-40,
                    _ => ((x >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0) as f32,
                }
            })
            .collect()
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
    }

    fn optimizer(p: &Program) -> Option<Optimizer> {
        match p.updater {
            1 => Some(Optimizer::Sgd(Sgd {
                learning_rate: 0.1,
                momentum: if p.momentum { 0.9 } else { 0.0 },
                wd: 0.01,
                ..Sgd::default()
            })),
            2 => Some(Optimizer::Adam(Adam {
                learning_rate: 0.01,
                wd: 0.001,
                clip_gradient: p.momentum.then_some(1.0),
                ..Adam::default()
            })),
            _ => None,
        }
    }

    /// Where the caller's buffers go: the store's own context, or (with `other`) each one by
    /// the program's placement bits into either context.
    struct Places<'a> {
        home: Arc<CudaStream>,
        other: Option<&'a Arc<CudaStream>>,
        placement: u64,
        next: std::cell::Cell<u32>,
    }

    impl Places<'_> {
        fn pick(&self) -> Arc<CudaStream> {
            let i = self.next.get();
            self.next.set(i.wrapping_add(1));
            match self.other {
                Some(o) if (self.placement >> (i % 64)) & 1 == 1 => Arc::clone(o),
                _ => Arc::clone(&self.home),
            }
        }
    }

    /// A buffer's contents on the host, read on its own stream (cudarc orders the read after
    /// the work that wrote it).
    fn read<T: kvstore_cuda::cudarc::driver::DeviceRepr + Default + Clone>(
        d: &CudaSlice<T>,
    ) -> Vec<T> {
        d.stream().clone_dtoh(d).unwrap()
    }

    fn run(
        gpu: Arc<Gpu>,
        other: Option<&Arc<CudaStream>>,
        p: &Program,
    ) -> Result<(), TestCaseError> {
        let spec = kvstore::create_with(
            "device",
            Options {
                backend: BackendKind::Spec,
                workers: 1,
            },
        )
        .unwrap();
        let mut dev = DeviceStore::new(Arc::clone(&gpu));
        let places = Places {
            home: Arc::clone(gpu.stream()),
            other,
            placement: p.placement,
            next: std::cell::Cell::new(0),
        };
        if let Some(o) = optimizer(p) {
            spec.set_optimizer(o.clone()).unwrap();
            dev.set_updater(DeviceUpdater::Optimizer(o)).unwrap();
        }
        if let Some((two_bit, threshold)) = p.compression {
            let kind = if two_bit {
                CompressionType::TwoBit
            } else {
                CompressionType::OneBit
            };
            let c = Compression::new(kind, threshold).unwrap();
            spec.set_gradient_compression(c).unwrap();
            dev.set_compression(Codec::from(c));
        }
        for (key, shape) in p.shapes.iter().enumerate() {
            let init = sample(shape[0] * shape[1], p.seed ^ key as u64);
            spec.init(
                key as i64,
                Tensor::new(shape[..2].to_vec(), init.clone()).unwrap(),
            )
            .unwrap();
            dev.init(
                key as i64,
                &shape[..2],
                &places.pick().clone_htod(&init).unwrap(),
            )
            .unwrap();
        }
        for op in &p.ops {
            match op {
                Op::Push { key, seed } | Op::PushPull { key, seed } => {
                    let shape = p.shapes[*key];
                    let n = shape[0] * shape[1];
                    let grads: Vec<Vec<f32>> =
                        (0..shape[2]).map(|d| sample(n, seed ^ d as u64)).collect();
                    let arrays: Vec<NdArray> = grads
                        .iter()
                        .enumerate()
                        .map(|(d, g)| {
                            NdArray::new(
                                Tensor::new(shape[..2].to_vec(), g.clone())
                                    .unwrap()
                                    .on(Device::Gpu(d as u32)),
                            )
                        })
                        .collect();
                    let on_device: Vec<CudaSlice<f32>> = grads
                        .iter()
                        .map(|g| places.pick().clone_htod(g).unwrap())
                        .collect();
                    let refs: Vec<&CudaSlice<f32>> = on_device.iter().collect();
                    if matches!(op, Op::Push { .. }) {
                        spec.push(*key as i64, &arrays).unwrap();
                        dev.push(*key as i64, &refs).unwrap();
                    } else {
                        let out = NdArray::zeros(shape[..2].to_vec(), kvstore::DType::F32).unwrap();
                        spec.pushpull(*key as i64, &arrays, &out).unwrap();
                        let mut dout = places.pick().alloc_zeros::<f32>(n).unwrap();
                        dev.pushpull(*key as i64, &refs, &mut dout).unwrap();
                        let got = read(&dout);
                        prop_assert!(
                            same_bits(&got, &out.to_f32()),
                            "pushpull of key {} differs",
                            key
                        );
                    }
                }
                Op::RefusedPushPull { key, seed } => {
                    let shape = p.shapes[*key];
                    let n = shape[0] * shape[1];
                    let grads: Vec<CudaSlice<f32>> = (0..shape[2])
                        .map(|d| {
                            places
                                .pick()
                                .clone_htod(&sample(n, seed ^ d as u64))
                                .unwrap()
                        })
                        .collect();
                    let refs: Vec<&CudaSlice<f32>> = grads.iter().collect();
                    let mut dout = places.pick().alloc_zeros::<f32>(n + 1).unwrap();
                    prop_assert!(
                        dev.pushpull(*key as i64, &refs, &mut dout).is_err(),
                        "a pushpull into {} elements for a key of {} was accepted",
                        n + 1,
                        n
                    );
                }
                Op::Pull { key } => {
                    let shape = p.shapes[*key];
                    let out = NdArray::zeros(shape[..2].to_vec(), kvstore::DType::F32).unwrap();
                    spec.pull(*key as i64, &out).unwrap();
                    let mut dout = places
                        .pick()
                        .alloc_zeros::<f32>(shape[0] * shape[1])
                        .unwrap();
                    dev.pull(*key as i64, &mut dout).unwrap();
                    let got = read(&dout);
                    prop_assert!(
                        same_bits(&got, &out.to_f32()),
                        "pull of key {} differs",
                        key
                    );
                }
                Op::RowSparsePull { key, ids } => {
                    let shape = p.shapes[*key];
                    let ids: Vec<i64> = ids.iter().map(|&i| i % shape[0] as i64).collect();
                    let out =
                        NdArray::row_sparse(shape[..2].to_vec(), kvstore::DType::F32).unwrap();
                    spec.row_sparse_pull(*key as i64, &out, ids.clone())
                        .unwrap();
                    let want = match out.value() {
                        kvstore::Value::RowSparse(r) => {
                            (r.ids().to_vec(), r.f32s().unwrap().to_vec())
                        }
                        other => panic!("row_sparse_pull gave {other:?}"),
                    };
                    let got = if ids.is_empty() {
                        (Vec::new(), Vec::new())
                    } else {
                        let rows = dev
                            .row_sparse_pull(*key as i64, &places.pick().clone_htod(&ids).unwrap())
                            .unwrap();
                        (
                            rows.ids.map(|d| read(&d)).unwrap_or_default(),
                            rows.data.map(|d| read(&d)).unwrap_or_default(),
                        )
                    };
                    prop_assert_eq!(&got.0, &want.0, "row ids of key {}", key);
                    prop_assert!(same_bits(&got.1, &want.1), "rows of key {} differ", key);
                }
            }
        }
        dev.wait_all().unwrap();
        spec.wait_all().unwrap();
        Ok(())
    }

    /// The GPU, or `None` after printing why this test cannot run (`KVSTORE_REQUIRE_GPU=1`
    /// makes a missing GPU a failure).
    fn gpu_or_skip(test: &str) -> Option<Arc<Gpu>> {
        if let Some(gpu) = gpu() {
            return Some(gpu);
        }
        let why = Gpu::open(0).expect_err("no GPU");
        assert!(
            std::env::var_os("KVSTORE_REQUIRE_GPU").is_none(),
            "a GPU is required here: {why}"
        );
        kvstore_cuda::report_skip(test, &why);
        None
    }

    fn runner(default_cases: u32) -> proptest::test_runner::TestRunner {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(default_cases);
        proptest::test_runner::TestRunner::new(ProptestConfig {
            cases,
            ..ProptestConfig::default()
        })
    }

    #[test]
    fn r77_device_store_matches_spec_on_random_programs() {
        let Some(gpu) = gpu_or_skip("r77_device_store_matches_spec_on_random_programs") else {
            return;
        };
        runner(200)
            .run(&program(), |p| run(Arc::clone(&gpu), None, &p))
            .unwrap();
    }

    /// R79: `NcclStore` over one GPU (a one-rank communicator) against the spec's `nccl` kind.
    #[cfg(feature = "nccl")]
    fn run_nccl(
        store: &mut kvstore_cuda::NcclStore,
        first_key: i64,
        p: &Program,
    ) -> Result<(), TestCaseError> {
        let spec = kvstore::create_with(
            "nccl",
            Options {
                backend: BackendKind::Spec,
                workers: 1,
            },
        )
        .unwrap();
        let s = Arc::clone(gpu().unwrap().stream());
        if let Some(o) = optimizer(p) {
            spec.set_optimizer(o.clone()).unwrap();
            store.set_updater(DeviceUpdater::Optimizer(o)).unwrap();
        } else {
            store.set_updater(DeviceUpdater::Assign).unwrap();
        }
        // One device count for every key: the kind reduces over one device set (R23).
        let devices = p.shapes[0][2];
        let key_of = |key: usize| first_key + key as i64;
        for (key, shape) in p.shapes.iter().enumerate() {
            let init = sample(shape[0] * shape[1], p.seed ^ key as u64);
            spec.init(
                key_of(key),
                Tensor::new(shape[..2].to_vec(), init.clone()).unwrap(),
            )
            .unwrap();
            store
                .init(key_of(key), &shape[..2], &s.clone_htod(&init).unwrap())
                .unwrap();
        }
        for op in &p.ops {
            let (key, seed, pull) = match op {
                Op::Push { key, seed } => (*key, *seed, false),
                Op::PushPull { key, seed } => (*key, *seed, true),
                Op::Pull { key } => {
                    let shape = p.shapes[*key];
                    let out = NdArray::zeros(shape[..2].to_vec(), kvstore::DType::F32).unwrap();
                    spec.pull(key_of(*key), &out).unwrap();
                    let mut dout = s.alloc_zeros::<f32>(shape[0] * shape[1]).unwrap();
                    store.pull(key_of(*key), &mut dout).unwrap();
                    prop_assert!(
                        same_bits(&read(&dout), &out.to_f32()),
                        "pull of key {}",
                        key
                    );
                    continue;
                }
                Op::RefusedPushPull { key, seed } => {
                    let shape = p.shapes[*key];
                    let n = shape[0] * shape[1];
                    let g = s.clone_htod(&sample(n, *seed)).unwrap();
                    let mut dout = s.alloc_zeros::<f32>(n + 1).unwrap();
                    prop_assert!(store.pushpull(key_of(*key), &[&g, &g], &mut dout).is_err());
                    continue;
                }
                Op::RowSparsePull { .. } => continue,
            };
            let shape = p.shapes[key];
            let n = shape[0] * shape[1];
            let grads: Vec<Vec<f32>> = (0..devices).map(|d| sample(n, seed ^ d as u64)).collect();
            let arrays: Vec<NdArray> = grads
                .iter()
                .map(|g| {
                    NdArray::new(
                        Tensor::new(shape[..2].to_vec(), g.clone())
                            .unwrap()
                            .on(Device::Gpu(0)),
                    )
                })
                .collect();
            let on_device: Vec<CudaSlice<f32>> =
                grads.iter().map(|g| s.clone_htod(g).unwrap()).collect();
            let refs: Vec<&CudaSlice<f32>> = on_device.iter().collect();
            if pull {
                let out = NdArray::zeros(shape[..2].to_vec(), kvstore::DType::F32).unwrap();
                spec.pushpull(key_of(key), &arrays, &out).unwrap();
                let mut dout = s.alloc_zeros::<f32>(n).unwrap();
                store.pushpull(key_of(key), &refs, &mut dout).unwrap();
                prop_assert!(
                    same_bits(&read(&dout), &out.to_f32()),
                    "pushpull of key {}",
                    key
                );
            } else {
                spec.push(key_of(key), &arrays).unwrap();
                store.push(key_of(key), &refs).unwrap();
            }
        }
        store.wait_all().unwrap();
        Ok(())
    }

    #[cfg(feature = "nccl")]
    #[test]
    fn r79_nccl_store_on_one_gpu_matches_spec() {
        let test = "r79_nccl_store_on_one_gpu_matches_spec";
        let Some(gpu) = gpu_or_skip(test) else {
            return;
        };
        // One store (and communicator: NCCL start-up is slow) per device count, since a store
        // keeps the device set of its first multi-value push (R23); each case uses keys of
        // its own and sets its own updater.
        use std::collections::btree_map::Entry;
        let stores = std::cell::RefCell::new(std::collections::BTreeMap::new());
        let cases = std::cell::Cell::new(0i64);
        runner(200)
            .run(&program(), |p| {
                cases.set(cases.get() + 1);
                let mut stores = stores.borrow_mut();
                let store = match stores.entry(p.shapes[0][2]) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => {
                        match kvstore_cuda::NcclStore::new(vec![Arc::clone(&gpu)]) {
                            Ok(store) => e.insert(store),
                            Err(why) => {
                                assert!(
                                    std::env::var_os("KVSTORE_REQUIRE_NCCL").is_none(),
                                    "NCCL is required here: {why}"
                                );
                                kvstore_cuda::report_skip(test, &why);
                                return Ok(());
                            }
                        }
                    }
                };
                run_nccl(store, cases.get() * 10, &p)
            })
            .unwrap();
    }

    #[test]
    fn r78_device_store_takes_values_from_another_context() {
        let test = "r78_device_store_takes_values_from_another_context";
        let Some(gpu) = gpu_or_skip(test) else {
            return;
        };
        // A second context on the same GPU: buffers there cross contexts exactly as buffers
        // on another GPU do (what one GPU cannot show is the copy over NVLink or PCIe).
        let other = CudaContext::new_non_primary(0, 0)
            .and_then(|c| c.new_stream())
            .unwrap();
        runner(200)
            .run(&program(), |p| run(Arc::clone(&gpu), Some(&other), &p))
            .unwrap();
    }
}

#[cfg(not(feature = "cuda"))]
fn skip_without_feature(test: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: built without the `cuda` feature"
    );
}

#[cfg(not(feature = "cuda"))]
#[test]
fn r77_device_store_matches_spec_on_random_programs() {
    skip_without_feature("r77_device_store_matches_spec_on_random_programs");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn r78_device_store_takes_values_from_another_context() {
    skip_without_feature("r78_device_store_takes_values_from_another_context");
}

#[cfg(not(feature = "nccl"))]
#[test]
fn r79_nccl_store_on_one_gpu_matches_spec() {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED r79_nccl_store_on_one_gpu_matches_spec: built without the `nccl` feature"
    );
}

/// A CUDA store where there is no GPU (or no `cuda` feature) is an `UnsupportedKind` error
/// that says why, not a panic.
#[test]
fn r77_a_cuda_store_without_a_gpu_is_a_typed_error() {
    let options = kvstore::Options {
        backend: kvstore::BackendKind::Cuda,
        workers: 1,
    };
    let gpu_here = cfg!(feature = "cuda") && std::env::var_os("KVSTORE_REQUIRE_GPU").is_some();
    match kvstore::create_with("local", options) {
        Ok(_) => assert!(gpu_here, "a CUDA store opened without a GPU"),
        Err(kvstore::Error::UnsupportedKind { kind, reason }) => {
            assert_eq!(kind, "cuda");
            assert!(!reason.is_empty());
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}
