//! Rules R15-R24: push, merge, replace, updaters, NCCL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use kvstore_spec::updater::UpdateError;
use kvstore_spec::{DType, Data, Device, Error, Key, StorageType, Tensor, Value};
use std::sync::{Arc, Mutex};

#[test]
fn r15_repeated_keys_in_one_push_are_summed() {
    let mut kv = store("local");
    kv.init(&[(k(1), full(&[1], 0.0)), (k(2), full(&[1], 0.0))])
        .unwrap();
    let keys = [1, 2, 2, 1, 2];
    let pairs: Vec<(Key, Value)> = keys
        .iter()
        .zip(1..)
        .map(|(&key, v)| (k(key), full(&[1], v as f32)))
        .collect();
    kv.push(&pairs).unwrap();
    assert_eq!(pull1(&mut kv, k(1), &[1]), vec![5.0]);
    assert_eq!(pull1(&mut kv, k(2), &[1]), vec![10.0]);
}

#[test]
fn r15_each_key_is_updated_once_per_push() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = calls.clone();
    let mut kv = store("local");
    kv.init(&[(k(1), full(&[1], 0.0))]).unwrap();
    kv.set_updater(Box::new(
        move |key: &Key, merged: &Value, _: &mut Value| -> Result<(), UpdateError> {
            log.lock().unwrap().push((key.clone(), merged.to_f32()));
            Ok(())
        },
    ));
    kv.push(&[
        (k(1), full(&[1], 1.0)),
        (k(1), full(&[1], 2.0)),
        (k(1), full(&[1], 3.0)),
    ])
    .unwrap();
    assert_eq!(*calls.lock().unwrap(), vec![(k(1), vec![6.0])]);
}

fn order_of_updates(kind_keys: &[Key], push_keys: &[Key]) -> Vec<Key> {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = calls.clone();
    let mut kv = store("local");
    let init: Vec<(Key, Value)> = kind_keys
        .iter()
        .map(|key| (key.clone(), full(&[1], 0.0)))
        .collect();
    kv.init(&init).unwrap();
    kv.set_updater(Box::new(
        move |key: &Key, _: &Value, _: &mut Value| -> Result<(), UpdateError> {
            log.lock().unwrap().push(key.clone());
            Ok(())
        },
    ));
    let push: Vec<(Key, Value)> = push_keys
        .iter()
        .map(|key| (key.clone(), full(&[1], 1.0)))
        .collect();
    kv.push(&push).unwrap();
    let order = calls.lock().unwrap().clone();
    order
}

#[test]
fn r16_int_keys_are_processed_in_ascending_order() {
    assert_eq!(
        order_of_updates(&[k(5), k(7), k(9)], &[k(9), k(5), k(7)]),
        vec![k(5), k(7), k(9)]
    );
}

#[test]
fn r16_string_keys_are_processed_in_init_order() {
    assert_eq!(
        order_of_updates(&[s("b"), s("a")], &[s("a"), s("b")]),
        vec![s("b"), s("a")]
    );
}

#[test]
fn r17_sum_runs_in_list_order_in_f32() {
    let mut kv = store("local");
    kv.init(&[(k(1), full(&[1], 0.0))]).unwrap();
    kv.push(&[
        (k(1), full(&[1], 1e8)),
        (k(1), full(&[1], 1.0)),
        (k(1), full(&[1], -1e8)),
    ])
    .unwrap();
    assert_eq!(pull1(&mut kv, k(1), &[1]), vec![(1e8f32 + 1.0) - 1e8]);
    kv.push(&[
        (k(1), full(&[1], 1e8)),
        (k(1), full(&[1], -1e8)),
        (k(1), full(&[1], 1.0)),
    ])
    .unwrap();
    assert_eq!(pull1(&mut kv, k(1), &[1]), vec![1.0]);
}

#[test]
fn r17_sum_starts_from_the_first_value_and_keeps_negative_zero() {
    let mut kv = store("local");
    kv.init(&[(k(1), full(&[1], 1.0))]).unwrap();
    kv.push(&[(k(1), full(&[1], -0.0)), (k(1), full(&[1], -0.0))])
        .unwrap();
    assert_eq!(pull1(&mut kv, k(1), &[1])[0].to_bits(), (-0.0f32).to_bits());
}

#[test]
fn r17_half_sums_round_after_each_addition() {
    let mut kv = store("local");
    kv.init(&[(k(1), zeros(&[1], DType::F16))]).unwrap();
    let h = |x: f32| Value::Dense(Tensor::new([1], vec![half::f16::from_f32(x)]).unwrap());
    // 2048 + 1 rounds back to 2048 in f16 (ties to even); a second +1 again; f32 would give 2050.
    kv.push(&[(k(1), h(2048.0)), (k(1), h(1.0)), (k(1), h(1.0))])
        .unwrap();
    assert_eq!(
        f16_data(kv.value(&k(1)).unwrap()),
        vec![half::f16::from_f32(2048.0)]
    );
    kv.push(&[(k(1), h(1.0)), (k(1), h(1.0)), (k(1), h(2048.0))])
        .unwrap();
    assert_eq!(
        f16_data(kv.value(&k(1)).unwrap()),
        vec![half::f16::from_f32(2050.0)]
    );
}

#[test]
fn r17_values_of_another_dtype_are_cast_to_the_key_dtype_first() {
    let mut kv = store("local");
    kv.init(&[(k(1), zeros(&[1], DType::F32))]).unwrap();
    let f64v = Value::Dense(Tensor::new([1], vec![0.1f64]).unwrap());
    kv.push(&[(k(1), f64v.clone()), (k(1), f64v)]).unwrap();
    assert_eq!(kv.value(&k(1)).unwrap().dtype(), DType::F32);
    assert_eq!(pull1(&mut kv, k(1), &[1]), vec![0.1f32 + 0.1f32]);
}

#[test]
fn r17_dense_and_row_sparse_mix_into_a_dense_sum() {
    let mut kv = store("local");
    kv.init(&[(k(1), zeros(&[3, 2], DType::F32))]).unwrap();
    kv.push(&[
        (k(1), rsp(&[3, 2], &[1], &[1.0, 2.0])),
        (k(1), full(&[3, 2], 10.0)),
    ])
    .unwrap();
    assert_eq!(kv.value(&k(1)).unwrap().stype(), StorageType::Dense);
    assert_eq!(
        pull1(&mut kv, k(1), &[3, 2]),
        vec![10.0, 10.0, 11.0, 12.0, 10.0, 10.0]
    );
}

#[test]
fn r17_row_sparse_values_sum_over_the_union_of_rows() {
    let mut kv = store("local");
    kv.init(&[(k(1), zeros(&[4, 1], DType::F32))]).unwrap();
    kv.push(&[
        (k(1), rsp(&[4, 1], &[0, 2], &[1.0, 2.0])),
        (k(1), rsp(&[4, 1], &[2, 3], &[10.0, 20.0])),
    ])
    .unwrap();
    let stored = kv.value(&k(1)).unwrap();
    assert_eq!(ids_of(stored), vec![0, 2, 3]);
    assert_eq!(rows_of(stored), vec![1.0, 12.0, 20.0]);
}

#[test]
fn r18_pushed_values_must_have_the_key_shape() {
    let mut kv = store("local");
    kv.init(&[(k(1), zeros(&[2, 3], DType::F32))]).unwrap();
    let err = Error::ShapeMismatch {
        key: k(1),
        expected: vec![2, 3],
        found: vec![3, 2],
    };
    assert_eq!(kv.push(&[(k(1), full(&[3, 2], 1.0))]), Err(err.clone()));
    assert_eq!(
        kv.push(&[(k(1), full(&[2, 3], 1.0)), (k(1), full(&[3, 2], 1.0))]),
        Err(err)
    );
}

#[test]
fn r19_push_replaces_and_never_accumulates() {
    let mut kv = store("local");
    kv.init(&[(k(3), zeros(&[2, 3], DType::F32))]).unwrap();
    kv.push(&[(k(3), full(&[2, 3], 8.0))]).unwrap();
    assert_eq!(pull1(&mut kv, k(3), &[2, 3]), vec![8.0; 6]);
    let ones: Vec<(Key, Value)> = (0..4)
        .map(|d| (k(3), full(&[2, 3], 1.0).on(Device::Cpu(d))))
        .collect();
    kv.push(&ones).unwrap();
    assert_eq!(pull1(&mut kv, k(3), &[2, 3]), vec![4.0; 6]);
}

#[test]
fn r19_storage_type_follows_the_last_push() {
    let mut kv = store("local");
    kv.init(&[(k(1), full(&[3, 1], 5.0))]).unwrap();
    kv.push(&[(k(1), rsp(&[3, 1], &[1], &[7.0]))]).unwrap();
    assert_eq!(kv.value(&k(1)).unwrap().stype(), StorageType::RowSparse);
    assert_eq!(
        pull1(&mut kv, k(1), &[3, 1]),
        vec![0.0, 7.0, 0.0],
        "rows not pushed read as zero"
    );
    kv.push(&[(k(1), full(&[3, 1], 2.0))]).unwrap();
    assert_eq!(kv.value(&k(1)).unwrap().stype(), StorageType::Dense);
}

#[test]
fn r19_the_stored_dtype_stays_the_key_dtype() {
    let mut kv = store("local");
    kv.init(&[(k(1), zeros(&[1], DType::F64))]).unwrap();
    kv.push(&[(k(1), full(&[1], 0.5))]).unwrap();
    assert_eq!(kv.value(&k(1)).unwrap().dtype(), DType::F64);
}

#[test]
fn r21_the_updater_sees_key_merged_and_stored_and_its_result_is_kept() {
    let mut kv = store("local");
    kv.init(&[(k(3), full(&[2], 3.0))]).unwrap();
    kv.set_updater(Box::new(
        |_: &Key, merged: &Value, stored: &mut Value| -> Result<(), UpdateError> {
            let sum: Vec<f32> = stored
                .to_f32()
                .iter()
                .zip(merged.to_f32())
                .map(|(s, m)| s + 2.0 * m)
                .collect();
            *stored = Value::Dense(
                Tensor::new(stored.shape().to_vec(), sum)
                    .map_err(|e| UpdateError(e.to_string()))?,
            );
            Ok(())
        },
    ));
    kv.push(&[(k(3), full(&[2], 1.0)), (k(3), full(&[2], 1.0))])
        .unwrap();
    assert_eq!(pull1(&mut kv, k(3), &[2]), vec![7.0, 7.0]);
    // MXNet §13: the next multi-value push must not overwrite the stored value before the update.
    kv.push(&[(k(3), full(&[2], 1.0)), (k(3), full(&[2], 2.0))])
        .unwrap();
    assert_eq!(pull1(&mut kv, k(3), &[2]), vec![13.0, 13.0]);
}

#[test]
fn r22_updater_errors_propagate_and_roll_back_values_and_updater_state() {
    let mut kv = store("local");
    kv.init(&[(k(1), full(&[1], 0.0)), (k(2), full(&[1], 0.0))])
        .unwrap();
    let mut calls = 0.0f32;
    kv.set_updater(Box::new(
        move |key: &Key, _: &Value, stored: &mut Value| -> Result<(), UpdateError> {
            calls += 1.0;
            if *key == Key::Int(2) {
                return Err("key 2 is read-only".into());
            }
            *stored = Value::Dense(
                Tensor::new([1], vec![calls]).map_err(|e| UpdateError(e.to_string()))?,
            );
            Ok(())
        },
    ));
    let err = kv.push(&[(k(1), full(&[1], 1.0)), (k(2), full(&[1], 1.0))]);
    assert_eq!(
        err,
        Err(Error::Updater {
            key: k(2),
            message: "key 2 is read-only".into()
        })
    );
    assert_eq!(
        pull1(&mut kv, k(1), &[1]),
        vec![0.0],
        "key 1's update was rolled back"
    );
    kv.push(&[(k(1), full(&[1], 1.0))]).unwrap();
    assert_eq!(
        pull1(&mut kv, k(1), &[1]),
        vec![1.0],
        "the updater's call counter was rolled back too"
    );
}

#[test]
fn r22_an_updater_may_not_change_shape_or_dtype() {
    let mut kv = store("local");
    kv.init(&[(k(1), full(&[2], 0.0))]).unwrap();
    kv.set_updater(Box::new(
        |_: &Key, _: &Value, stored: &mut Value| -> Result<(), UpdateError> {
            *stored = Value::Dense(
                Tensor::new([3], vec![1.0f32; 3]).map_err(|e| UpdateError(e.to_string()))?,
            );
            Ok(())
        },
    ));
    assert!(matches!(
        kv.push(&[(k(1), full(&[2], 1.0))]),
        Err(Error::Updater { .. })
    ));
    assert_eq!(pull1(&mut kv, k(1), &[2]), vec![0.0, 0.0]);
}

#[test]
fn r23_nccl_holds_dense_values_only() {
    let mut kv = store("nccl");
    assert!(matches!(
        kv.init(&[(k(1), rsp(&[2, 1], &[0], &[1.0]))]),
        Err(Error::StorageTypeMismatch { .. })
    ));
    kv.init(&[(k(1), zeros(&[2, 1], DType::F32))]).unwrap();
    assert!(matches!(
        kv.push(&[(k(1), rsp(&[2, 1], &[0], &[1.0]))]),
        Err(Error::StorageTypeMismatch { .. })
    ));
    assert!(matches!(
        kv.row_sparse_pull(&[(k(1), rsp_out(&[2, 1]))], &[vec![0]]),
        Err(Error::UnsupportedOperation { .. })
    ));
    assert!(matches!(
        kv.pull(&[(k(1), rsp_out(&[2, 1]))], false),
        Err(Error::UnsupportedOperation { .. })
    ));
}

#[test]
fn r23_nccl_reduces_over_one_fixed_device_set() {
    let mut kv = store("nccl");
    kv.init(&[(k(1), zeros(&[1], DType::F32))]).unwrap();
    let on = |d: u32| (k(1), full(&[1], 1.0).on(Device::Gpu(d)));
    kv.push(&[on(0), on(1)]).unwrap();
    kv.push(&[on(1), on(0)]).unwrap();
    kv.push(&[on(3)]).unwrap();
    assert_eq!(
        kv.push(&[on(0), on(2)]),
        Err(Error::DeviceSetChanged {
            key: k(1),
            expected: vec![Device::Gpu(0), Device::Gpu(1)],
            found: vec![Device::Gpu(0), Device::Gpu(2)],
        })
    );
}

#[test]
fn r17_sum_bits_do_not_depend_on_devices() {
    let mut a = store("local");
    let mut b = store("device");
    for kv in [&mut a, &mut b] {
        kv.init(&[(k(1), zeros(&[2], DType::F32))]).unwrap();
        kv.push(&[
            (k(1), dense_on(&[2], &[0.1, 0.7], Device::Gpu(1))),
            (k(1), dense_on(&[2], &[0.2, 0.3], Device::Cpu(0))),
        ])
        .unwrap();
    }
    assert_eq!(a.value(&k(1)), b.value(&k(1)));
    assert_eq!(
        a.value(&k(1)).unwrap().to_f32(),
        vec![0.1f32 + 0.2, 0.7f32 + 0.3]
    );
    assert!(matches!(a.value(&k(1)).unwrap(), Value::Dense(t) if matches!(t.data(), Data::F32(_))));
}

#[test]
fn r21_semantics_13_multi_value_push_does_not_clobber_the_stored_value() {
    // Semantics §13: init 0, push [1, 1], then updater `stored += 2 * merged`, push [1, 2].
    // MXNet 1.9.1 gives 9 (the stored value aliases the merge buffer, which the second push
    // overwrites with 3 before the updater adds 6); the answer is 2 + 2 * 3 = 8.
    let mut kv = store("local");
    kv.init(&[(k(0), full(&[1], 0.0))]).unwrap();
    kv.push(&[(k(0), full(&[1], 1.0)), (k(0), full(&[1], 1.0))])
        .unwrap();
    kv.set_updater(Box::new(
        |_: &Key, merged: &Value, stored: &mut Value| -> Result<(), UpdateError> {
            let next = stored.to_f32()[0] + 2.0 * merged.to_f32()[0];
            *stored =
                Value::Dense(Tensor::new([1], vec![next]).map_err(|e| UpdateError(e.to_string()))?);
            Ok(())
        },
    ));
    kv.push(&[(k(0), full(&[1], 1.0)), (k(0), full(&[1], 2.0))])
        .unwrap();
    assert_eq!(pull1(&mut kv, k(0), &[1]), vec![8.0]);
}

#[test]
fn r17_a_sum_of_row_sparse_values_starts_from_positive_zero() {
    let mut kv = store("local");
    kv.init(&[(k(0), rsp(&[2, 1], &[0, 1], &[1.0, 1.0]))])
        .unwrap();
    kv.push(&[
        (k(0), rsp(&[2, 1], &[0], &[-0.0])),
        (k(0), rsp(&[2, 1], &[1], &[3.0]).on(Device::Cpu(1))),
    ])
    .unwrap();
    assert_eq!(
        rows_of(kv.value(&k(0)).unwrap())[0].to_bits(),
        0.0f32.to_bits(),
        "MXNet: 0 + (-0) = +0"
    );
    kv.push(&[(k(0), rsp(&[2, 1], &[0], &[-0.0]))]).unwrap();
    assert_eq!(
        rows_of(kv.value(&k(0)).unwrap())[0].to_bits(),
        (-0.0f32).to_bits(),
        "a single value is copied"
    );
}

/// An updater that fails on key 1 and adds elsewhere.
fn failing_on_key_1(key: &Key, merged: &Value, stored: &mut Value) -> Result<(), UpdateError> {
    if *key == Key::Int(1) {
        return Err(UpdateError("key 1 refuses updates".into()));
    }
    let sum: Vec<f32> = stored
        .to_f32()
        .iter()
        .zip(merged.to_f32())
        .map(|(s, m)| s + m)
        .collect();
    *stored = Value::Dense(Tensor::new(stored.shape().to_vec(), sum).unwrap());
    Ok(())
}

#[test]
fn r59_argument_errors_of_every_key_come_before_any_update() {
    let mut kv = store("local");
    kv.init(&[(k(1), full(&[2], 0.0)), (k(2), full(&[2], 0.0))])
        .unwrap();
    kv.set_updater(Box::new(failing_on_key_1));
    // Key 1's updater would fail, but key 2's value has the wrong shape: the argument error
    // is found first, before any key is merged.
    let err = kv
        .push(&[(k(1), full(&[2], 1.0)), (k(2), full(&[3], 1.0))])
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
    // With valid arguments the updater's error is what comes back.
    let err = kv
        .push(&[(k(1), full(&[2], 1.0)), (k(2), full(&[2], 1.0))])
        .unwrap_err();
    assert!(matches!(err, Error::Updater { .. }), "{err:?}");
    assert_eq!(pull1(&mut kv, k(2), &[2]), vec![0.0, 0.0]);
}

#[test]
fn r59_pushpull_checks_its_outputs_before_pushing() {
    let mut kv = store("local");
    kv.init(&[(k(1), full(&[2], 0.0))]).unwrap();
    kv.set_updater(Box::new(failing_on_key_1));
    let err = kv
        .pushpull(&[(k(1), full(&[2], 1.0))], &[(k(1), full(&[5], 0.0))])
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
}

#[test]
fn r23_a_push_that_fails_in_its_updater_still_fixes_the_device_set() {
    let mut kv = store("nccl");
    kv.init(&[(k(1), zeros(&[1], DType::F32))]).unwrap();
    kv.set_updater(Box::new(failing_on_key_1));
    let on = |d: u32| (k(1), full(&[1], 1.0).on(Device::Gpu(d)));
    assert!(matches!(
        kv.push(&[on(0), on(1)]),
        Err(Error::Updater { .. })
    ));
    // The arguments were valid, so {gpu(0), gpu(1)} is the store's device set from now on.
    assert!(matches!(
        kv.push(&[on(0), on(2)]),
        Err(Error::DeviceSetChanged { .. })
    ));
    assert_eq!(pull1(&mut kv, k(1), &[1]), vec![0.0]);
}
