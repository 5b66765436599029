//! Properties of the specification over random inputs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use kvstore_spec::codec::{Compression, CompressionType};
use kvstore_spec::optimizer::{Optimizer, Sgd};
use kvstore_spec::store::LocalStore;
use kvstore_spec::{DType, Data, Device, Key, RowSparse, Tensor, Value};
use proptest::prelude::*;

const SHAPES: [&[usize]; 3] = [&[2], &[3, 2], &[4, 1]];

fn small_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(0.0f32),
        Just(-0.0f32),
        -4.0f32..4.0,
        (-8i32..8).prop_map(|x| x as f32 * 0.25)
    ]
}

/// A value that is sometimes of the wrong shape, dtype or storage type.
fn value() -> impl Strategy<Value = Value> {
    let shape = prop::sample::select(SHAPES.to_vec());
    let dtype = prop::sample::select(vec![DType::F32, DType::F32, DType::F16, DType::F64]);
    let device = prop_oneof![(0u32..3).prop_map(Device::Cpu), Just(Device::Gpu(0))];
    (
        shape,
        dtype,
        device,
        any::<bool>(),
        prop::collection::vec(small_f32(), 8),
        prop::collection::btree_set(0i64..4, 0..4),
    )
        .prop_map(|(shape, dtype, device, sparse, xs, ids)| {
            let row_len: usize = shape.iter().skip(1).product();
            let rows = shape[0] as i64;
            let ids: Vec<i64> = ids.into_iter().filter(|&i| i < rows).collect();
            let as_f64 = |n: usize| {
                xs.iter()
                    .cycle()
                    .take(n)
                    .map(|&x| f64::from(x))
                    .collect::<Vec<_>>()
            };
            if sparse {
                let data = Data::from_f64(dtype, &as_f64(ids.len() * row_len));
                Value::RowSparse(
                    RowSparse::new(shape.to_vec(), ids, data)
                        .unwrap()
                        .on(device),
                )
            } else {
                let n = shape.iter().product();
                Value::Dense(
                    Tensor::new(shape.to_vec(), Data::from_f64(dtype, &as_f64(n)))
                        .unwrap()
                        .on(device),
                )
            }
        })
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![4 => (0i64..4).prop_map(Key::Int), 1 => prop::sample::select(vec!["a", "b"]).prop_map(Key::from)]
}

fn pairs() -> impl Strategy<Value = Vec<(Key, Value)>> {
    prop::collection::vec((key(), value()), 0..4)
}

#[derive(Debug, Clone)]
enum Op {
    Init(Vec<(Key, Value)>),
    Push(Vec<(Key, Value)>),
    Pull(Vec<(Key, Value)>, bool),
    RowSparsePull(Vec<(Key, Value)>, Vec<Vec<i64>>),
    PushPull(Vec<(Key, Value)>, Vec<(Key, Value)>),
    Broadcast(Vec<(Key, Value)>, Vec<(Key, Value)>),
    Compression(f32),
    Optimizer(f32, f32),
    FailingUpdater,
    LoadStates(bool),
}

fn op() -> impl Strategy<Value = Op> {
    let ids = prop::collection::vec(prop::collection::vec(-1i64..5, 0..4), 0..3);
    prop_oneof![
        3 => pairs().prop_map(Op::Init),
        4 => pairs().prop_map(Op::Push),
        2 => (pairs(), any::<bool>()).prop_map(|(p, i)| Op::Pull(p, i)),
        2 => (pairs(), ids).prop_map(|(p, ids)| Op::RowSparsePull(p, ids)),
        1 => (pairs(), pairs()).prop_map(|(a, b)| Op::PushPull(a, b)),
        1 => (pairs(), pairs()).prop_map(|(a, b)| Op::Broadcast(a, b)),
        1 => prop_oneof![Just(0.5f32), Just(0.25), Just(-1.0)].prop_map(Op::Compression),
        1 => (prop_oneof![Just(0.1f32), Just(f32::NAN)], prop_oneof![Just(0.0f32), Just(0.9)]).prop_map(|(lr, m)| Op::Optimizer(lr, m)),
        1 => Just(Op::FailingUpdater),
        1 => any::<bool>().prop_map(Op::LoadStates),
    ]
}

/// Runs one op; returns whether it failed.
fn run(kv: &mut LocalStore, op: &Op) -> bool {
    match op {
        Op::Init(p) => kv.init(p).is_err(),
        Op::Push(p) => kv.push(p).is_err(),
        Op::Pull(p, ignore) => kv.pull(p, *ignore).is_err(),
        Op::RowSparsePull(p, ids) => kv.row_sparse_pull(p, ids).is_err(),
        Op::PushPull(a, b) => kv.pushpull(a, b).is_err(),
        Op::Broadcast(a, b) => kv.broadcast(a, b).is_err(),
        Op::Compression(t) => match Compression::new(CompressionType::TwoBit, *t) {
            Ok(c) => kv.set_gradient_compression(c).is_err(),
            Err(_) => true,
        },
        Op::Optimizer(lr, m) => kv
            .set_optimizer(Optimizer::Sgd(Sgd {
                learning_rate: f64::from(*lr),
                momentum: f64::from(*m),
                ..Sgd::default()
            }))
            .is_err(),
        Op::FailingUpdater => {
            kv.set_updater(Box::new(|key: &Key, _: &Value, _: &mut Value| match key {
                Key::Int(3) => Err("key 3 refuses updates".into()),
                _ => Ok(()),
            }));
            false
        }
        Op::LoadStates(whole) => match kv.save_optimizer_states(true) {
            Ok(bytes) if *whole => kv.load_optimizer_states(&bytes).is_err(),
            Ok(bytes) => kv.load_optimizer_states(&bytes[..bytes.len() / 2]).is_err(),
            Err(_) => true,
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// R7: any failing op leaves the observable state bit-identical.
    #[test]
    fn r7_prop_failing_ops_leave_the_state_bit_identical(
        kind in prop::sample::select(vec!["local", "device", "nccl"]),
        ops in prop::collection::vec(op(), 1..24),
    ) {
        let mut kv = store(kind);
        let mut failures = 0;
        for op in &ops {
            let before = kv.observable();
            if run(&mut kv, op) {
                failures += 1;
                prop_assert_eq!(&kv.observable(), &before, "failed op changed the store: {:?}", op);
            }
        }
        prop_assert!(failures <= ops.len());
    }

    /// R15, R17, R19: with no updater and no compression, a pull after a multi-device push returns
    /// the device-order sum, computed independently in the key's dtype.
    #[test]
    fn r17_prop_pull_after_push_equals_the_device_order_sum(
        grads in prop::collection::vec(prop::collection::vec(small_f32(), 6), 1..6),
        dtype in prop::sample::select(vec![DType::F32, DType::F16, DType::F64]),
    ) {
        let mut kv = store("device");
        kv.init(&[(k(0), zeros(&[3, 2], dtype))]).unwrap();
        let pairs: Vec<(Key, Value)> = grads
            .iter()
            .enumerate()
            .map(|(d, g)| (k(0), dense_on(&[3, 2], g, Device::Cpu(d as u32))))
            .collect();
        kv.push(&pairs).unwrap();
        let expected: Vec<f64> = (0..6)
            .map(|i| {
                let column = grads.iter().map(|g| dtype.round(f64::from(g[i])));
                column.reduce(|a, b| dtype.round(a + b)).unwrap()
            })
            .collect();
        let out = kv.pull(&[(k(0), zeros(&[3, 2], dtype))], true).unwrap().remove(0);
        prop_assert_eq!(out, Value::Dense(Tensor::new([3, 2], Data::from_f64(dtype, &expected)).unwrap()));
    }

    /// R31: row_sparse_pull lists exactly sort(dedup(ids)), with the stored rows or zeros.
    #[test]
    fn r31_prop_row_sparse_pull_lists_sorted_unique_ids(
        stored_ids in prop::collection::btree_set(0i64..16, 0..16),
        requested in prop::collection::vec(0i64..16, 0..40),
    ) {
        let mut kv = store("local");
        let stored_ids: Vec<i64> = stored_ids.into_iter().collect();
        let data: Vec<f32> = stored_ids.iter().map(|&i| i as f32 + 100.0).collect();
        kv.init(&[(k(0), rsp(&[16, 1], &stored_ids, &data))]).unwrap();
        let out = kv.row_sparse_pull(&[(k(0), rsp_out(&[16, 1]))], std::slice::from_ref(&requested)).unwrap().remove(0);
        let mut expected = requested;
        expected.sort_unstable();
        expected.dedup();
        prop_assert_eq!(ids_of(&out), expected.clone());
        let rows: Vec<f32> = expected.iter().map(|i| if stored_ids.contains(i) { *i as f32 + 100.0 } else { 0.0 }).collect();
        prop_assert_eq!(rows_of(&out), rows);
    }
}

/// The random ops above must exercise both outcomes of every op kind, or R7's property would
/// be vacuous.
#[test]
fn r7_random_ops_both_succeed_and_fail() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeMap;
    let mut runner = TestRunner::deterministic();
    let mut outcomes: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for _ in 0..300 {
        let ops = prop::collection::vec(op(), 1..24)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut kv = store("device");
        for op in &ops {
            let name = format!("{op:?}")
                .split(['(', ' '])
                .next()
                .unwrap_or_default()
                .to_string();
            let entry = outcomes.entry(name).or_default();
            if run(&mut kv, op) {
                entry.1 += 1;
            } else {
                entry.0 += 1;
            }
        }
    }
    println!("op: (succeeded, failed) = {outcomes:?}");
    for (name, (ok, failed)) in &outcomes {
        if name != "FailingUpdater" {
            assert!(
                *ok > 0 && *failed > 0,
                "{name}: {ok} succeeded, {failed} failed"
            );
        }
    }
    assert_eq!(outcomes.len(), 10);
}
