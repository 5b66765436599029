//! Rules R42-R44: gradient compression inside a single-process store.
//! (The codec itself, R37-R41, is tested beside it in `src/codec.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use kvstore_spec::codec::{Compression, CompressionType};
use kvstore_spec::store::LocalStore;
use kvstore_spec::{DType, Device, Error, Key, StorageType, Value};

fn two_bit(t: f32) -> Compression {
    Compression::new(CompressionType::TwoBit, t).unwrap()
}

fn compressed_store() -> LocalStore {
    let mut kv = store("device");
    kv.set_gradient_compression(two_bit(0.5)).unwrap();
    kv
}

#[test]
fn r42_a_single_pushed_value_is_quantised_with_error_feedback() {
    let mut kv = compressed_store();
    kv.init(&[(k(1), zeros(&[8], DType::F32))]).unwrap();
    kv.push(&[(
        k(1),
        dense(&[8], &[1.0, -1.0, 0.3, -0.6, 0.5, -0.5, 0.0, 0.49]),
    )])
    .unwrap();
    assert_eq!(
        pull1(&mut kv, k(1), &[8]),
        vec![0.5, -0.5, 0.0, -0.5, 0.5, -0.5, 0.0, 0.0]
    );
    kv.push(&[(k(1), full(&[8], 0.2))]).unwrap();
    assert_eq!(
        pull1(&mut kv, k(1), &[8]),
        vec![0.5, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5]
    );
}

#[test]
fn r42_each_device_has_its_own_residual() {
    let mut kv = compressed_store();
    kv.init(&[(k(1), zeros(&[1], DType::F32))]).unwrap();
    let push = |kv: &mut LocalStore| {
        kv.push(&[
            (k(1), dense_on(&[1], &[0.3], Device::Cpu(0))),
            (k(1), dense_on(&[1], &[0.3], Device::Cpu(1))),
        ])
        .unwrap()
    };
    push(&mut kv);
    assert_eq!(
        pull1(&mut kv, k(1), &[1]),
        vec![0.0],
        "0.3 stays in each residual"
    );
    push(&mut kv);
    assert_eq!(
        pull1(&mut kv, k(1), &[1]),
        vec![1.0],
        "each residual reached 0.6 and sent 0.5"
    );
    let residuals = kv.observable().residuals;
    assert_eq!(residuals.len(), 2);
    assert_eq!(
        residuals[&(k(1), Device::Cpu(1), 0)],
        vec![(0.3f32 + 0.3) - 0.5]
    );
}

#[test]
fn r42_a_device_listed_twice_has_one_residual_per_occurrence() {
    let mut kv = compressed_store();
    kv.init(&[(k(1), zeros(&[1], DType::F32))]).unwrap();
    kv.push(&[(k(1), dense(&[1], &[0.3])), (k(1), dense(&[1], &[0.4]))])
        .unwrap();
    let residuals = kv.observable().residuals;
    assert_eq!(residuals[&(k(1), Device::Cpu(0), 0)], vec![0.3]);
    assert_eq!(residuals[&(k(1), Device::Cpu(0), 1)], vec![0.4]);
}

#[test]
fn r42_init_and_pull_are_never_compressed() {
    let mut kv = compressed_store();
    kv.init(&[(k(1), dense(&[2], &[0.3, -0.1]))]).unwrap();
    assert_eq!(pull1(&mut kv, k(1), &[2]), vec![0.3, -0.1]);
    assert!(kv.observable().residuals.is_empty());
}

#[test]
fn r42_one_bit_compression_in_a_store() {
    let mut kv = store("device");
    kv.set_gradient_compression(Compression::new(CompressionType::OneBit, 0.0).unwrap())
        .unwrap();
    kv.init(&[(k(1), zeros(&[3], DType::F32))]).unwrap();
    kv.push(&[(k(1), dense(&[3], &[0.2, -0.2, 0.0]))]).unwrap();
    assert_eq!(pull1(&mut kv, k(1), &[3]), vec![1.0, -1.0, -1.0]);
}

#[test]
fn r43_compression_needs_dense_f32() {
    let mut kv = compressed_store();
    kv.init(&[
        (k(1), zeros(&[2, 1], DType::F32)),
        (k(2), zeros(&[2], DType::F16)),
    ])
    .unwrap();
    let err =
        |key: Key, stype, dtype| Err(Error::CompressionUnsupportedValue { key, stype, dtype });
    assert_eq!(
        kv.push(&[(k(1), rsp(&[2, 1], &[0], &[1.0]))]),
        err(k(1), StorageType::RowSparse, DType::F32)
    );
    assert_eq!(
        kv.push(&[(k(1), zeros(&[2, 1], DType::F64))]),
        err(k(1), StorageType::Dense, DType::F64)
    );
    assert_eq!(
        kv.push(&[(k(2), full(&[2], 1.0))]),
        err(k(2), StorageType::Dense, DType::F16)
    );
}

#[test]
fn r44_new_parameters_reset_residuals_and_the_same_keep_them() {
    let mut kv = compressed_store();
    kv.init(&[(k(1), zeros(&[1], DType::F32))]).unwrap();
    kv.push(&[(k(1), dense(&[1], &[0.3]))]).unwrap();
    kv.set_gradient_compression(two_bit(0.5)).unwrap();
    assert_eq!(
        kv.observable().residuals.len(),
        1,
        "same parameters keep the residuals"
    );
    kv.set_gradient_compression(two_bit(0.25)).unwrap();
    assert!(
        kv.observable().residuals.is_empty(),
        "a new threshold resets them"
    );
    kv.push(&[(k(1), dense(&[1], &[0.3]))]).unwrap();
    assert_eq!(pull1(&mut kv, k(1), &[1]), vec![0.25]);
    assert_eq!(
        kv.value(&k(1)),
        Some(&Value::from(
            kvstore_spec::Tensor::new([1], vec![0.25f32]).unwrap()
        ))
    );
}
