//! Rules R25-R34: pull, row_sparse_pull, pushpull, broadcast.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use kvstore_spec::store::LocalStore;
use kvstore_spec::updater::UpdateError;
use kvstore_spec::{DType, Device, Error, Key, RowSparse, StorageType, Tensor, Value};

fn arange_4x3() -> LocalStore {
    let mut kv = store("local");
    let data: Vec<f32> = (0..12).map(|x| x as f32).collect();
    kv.init(&[(k(1), rsp(&[4, 3], &[0, 1, 2, 3], &data))])
        .unwrap();
    kv
}

fn retained(kv: &mut LocalStore, ids: &[i64]) -> (Vec<i64>, Vec<f32>) {
    let out = kv
        .row_sparse_pull(&[(k(1), rsp_out(&[4, 3]))], &[ids.to_vec()])
        .unwrap()
        .remove(0);
    (ids_of(&out), rows_of(&out))
}

#[test]
fn r25_every_output_gets_a_full_copy_on_its_device() {
    let mut kv = store("device");
    kv.init(&[(k(1), dense(&[2], &[1.0, 2.0]))]).unwrap();
    let outs: Vec<(Key, Value)> = (0..3)
        .map(|d| (k(1), zeros(&[2], DType::F32).on(Device::Gpu(d))))
        .collect();
    let got = kv.pull(&outs, true).unwrap();
    for (d, v) in got.iter().enumerate() {
        assert_eq!(v.to_f32(), vec![1.0, 2.0]);
        assert_eq!(v.device(), Device::Gpu(d as u32));
    }
}

#[test]
fn r26_dense_outputs_get_the_dense_equivalent_cast_to_their_dtype() {
    let mut kv = store("local");
    kv.init(&[(k(1), rsp(&[3, 1], &[1], &[1.5]))]).unwrap();
    let got = kv
        .pull(
            &[
                (k(1), zeros(&[3, 1], DType::F16)),
                (k(1), zeros(&[3, 1], DType::F64)),
            ],
            true,
        )
        .unwrap();
    assert_eq!(
        f16_data(&got[0]),
        [0.0, 1.5, 0.0].map(half::f16::from_f32).to_vec()
    );
    assert_eq!(
        got[1],
        Value::Dense(Tensor::new([3, 1], vec![0.0f64, 1.5, 0.0]).unwrap())
    );
}

#[test]
fn r27_outputs_must_have_the_key_shape() {
    let mut kv = store("local");
    kv.init(&[(k(1), zeros(&[2, 3], DType::F32))]).unwrap();
    assert_eq!(
        kv.pull(&[(k(1), zeros(&[3, 3], DType::F32))], true),
        Err(Error::ShapeMismatch {
            key: k(1),
            expected: vec![2, 3],
            found: vec![3, 3]
        })
    );
    assert!(matches!(
        kv.pull(&[(k(1), zeros(&[6], DType::F32))], true),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn r28_ignore_sparse_leaves_row_sparse_outputs_untouched() {
    let mut kv = store("local");
    kv.init(&[(k(1), full(&[2, 1], 3.0))]).unwrap();
    let before = rsp(&[2, 1], &[1], &[9.0]);
    let got = kv
        .pull(
            &[(k(1), before.clone()), (k(1), zeros(&[2, 1], DType::F32))],
            true,
        )
        .unwrap();
    assert_eq!(got[0], before);
    assert_eq!(got[1].to_f32(), vec![3.0, 3.0]);
    assert_eq!(
        kv.pull(&[(k(7), before)], true),
        Err(Error::NotInitialized { key: k(7) }),
        "the key is checked even when every output is skipped"
    );
}

#[test]
fn r28_without_ignore_sparse_row_sparse_outputs_get_every_row() {
    let mut kv = store("local");
    kv.init(&[
        (k(1), dense(&[2, 1], &[0.0, 3.0])),
        (k(2), rsp(&[3, 1], &[2], &[4.0])),
    ])
    .unwrap();
    let got = kv
        .pull(&[(k(1), rsp_out(&[2, 1])), (k(2), rsp_out(&[3, 1]))], false)
        .unwrap();
    assert_eq!(
        (ids_of(&got[0]), rows_of(&got[0])),
        (vec![0, 1], vec![0.0, 3.0]),
        "zero rows are listed too"
    );
    assert_eq!((ids_of(&got[1]), rows_of(&got[1])), (vec![2], vec![4.0]));
}

#[test]
fn r29_pull_right_after_init_returns_the_init_value() {
    let mut kv = store("device");
    kv.init(&[(s("w"), dense(&[3], &[1.0, 2.0, 3.0]))]).unwrap();
    assert_eq!(pull1(&mut kv, s("w"), &[3]), vec![1.0, 2.0, 3.0]);
}

#[test]
fn r30_row_sparse_pull_needs_row_sparse_outputs() {
    let mut kv = arange_4x3();
    assert_eq!(
        kv.row_sparse_pull(&[(k(1), zeros(&[4, 3], DType::F32))], &[vec![0]]),
        Err(Error::StorageTypeMismatch {
            key: k(1),
            expected: StorageType::RowSparse,
            found: StorageType::Dense
        })
    );
}

#[test]
fn r31_semantics_examples_on_a_4x3_arange() {
    let mut kv = arange_4x3();
    assert_eq!(
        retained(&mut kv, &[0, 2]),
        (vec![0, 2], vec![0.0, 1.0, 2.0, 6.0, 7.0, 8.0])
    );
    assert_eq!(retained(&mut kv, &[2, 2]), (vec![2], vec![6.0, 7.0, 8.0]));
    assert_eq!(
        retained(&mut kv, &[1, 0]),
        (vec![0, 1], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    );
    assert_eq!(
        retained(&mut kv, &[3, 1, 3, 1]),
        (vec![1, 3], vec![3.0, 4.0, 5.0, 9.0, 10.0, 11.0])
    );
    assert_eq!(retained(&mut kv, &[]), (vec![], vec![]));
    assert_eq!(
        retained(&mut kv, &[3, 0, 0, 3]),
        (vec![0, 3], vec![0.0, 1.0, 2.0, 9.0, 10.0, 11.0])
    );
}

#[test]
fn r31_missing_rows_are_listed_as_zeros() {
    let mut kv = store("local");
    kv.init(&[
        (k(1), rsp(&[4, 1], &[2], &[5.0])),
        (k(2), RowSparse::empty([4, 1], DType::F32).unwrap().into()),
    ])
    .unwrap();
    let got = kv
        .row_sparse_pull(
            &[(k(1), rsp_out(&[4, 1])), (k(2), rsp_out(&[4, 1]))],
            &[vec![3, 2, 0]],
        )
        .unwrap();
    assert_eq!(
        (ids_of(&got[0]), rows_of(&got[0])),
        (vec![0, 2, 3], vec![0.0, 5.0, 0.0])
    );
    assert_eq!(
        (ids_of(&got[1]), rows_of(&got[1])),
        (vec![0, 2, 3], vec![0.0, 0.0, 0.0]),
        "MXNet lists no ids when the value has no rows (decision 19)"
    );
}

#[test]
fn r31_a_dense_value_serves_its_rows() {
    let mut kv = store("local");
    kv.init(&[(k(1), dense(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))])
        .unwrap();
    let got = kv
        .row_sparse_pull(&[(k(1), rsp_out(&[3, 2]))], &[vec![2]])
        .unwrap();
    assert_eq!(
        (ids_of(&got[0]), rows_of(&got[0])),
        (vec![2], vec![5.0, 6.0])
    );
}

#[test]
fn r31_outputs_keep_their_dtype_and_device() {
    let mut kv = arange_4x3();
    let out = Value::RowSparse(
        RowSparse::empty([4, 3], DType::F64)
            .unwrap()
            .on(Device::Gpu(2)),
    );
    let got = kv
        .row_sparse_pull(&[(k(1), out)], &[vec![1]])
        .unwrap()
        .remove(0);
    assert_eq!((got.dtype(), got.device()), (DType::F64, Device::Gpu(2)));
}

#[test]
fn r32_out_of_range_and_negative_ids_are_errors() {
    let mut kv = arange_4x3();
    for (id, ids) in [
        (4, vec![0, 4]),
        (-1, vec![-1, 2]),
        (i64::MIN, vec![i64::MIN]),
    ] {
        assert_eq!(
            kv.row_sparse_pull(&[(k(1), rsp_out(&[4, 3]))], &[ids]),
            Err(Error::RowIdOutOfRange {
                key: k(1),
                id,
                rows: 4
            })
        );
    }
}

#[test]
fn r33_one_row_id_list_serves_every_output() {
    let mut kv = arange_4x3();
    let outs = vec![
        (k(1), rsp_out(&[4, 3])),
        (k(1), rsp_out(&[4, 3]).on(Device::Cpu(1))),
    ];
    let got = kv.row_sparse_pull(&outs, &[vec![3]]).unwrap();
    assert!(got
        .iter()
        .all(|v| ids_of(v) == vec![3] && rows_of(v) == vec![9.0, 10.0, 11.0]));
    let got = kv.row_sparse_pull(&outs, &[vec![0], vec![1]]).unwrap();
    assert_eq!((ids_of(&got[0]), ids_of(&got[1])), (vec![0], vec![1]));
    assert_eq!(
        kv.row_sparse_pull(&[(k(1), rsp_out(&[4, 3]))], &[vec![0], vec![1]]),
        Err(Error::RowIdsCountMismatch {
            row_ids: 2,
            outputs: 1
        })
    );
    assert_eq!(
        kv.row_sparse_pull(&outs, &[]),
        Err(Error::RowIdsCountMismatch {
            row_ids: 0,
            outputs: 2
        })
    );
}

#[test]
fn r34_pushpull_is_push_then_pull() {
    let mut kv = store("local");
    kv.init(&[(k(3), full(&[2], 3.0))]).unwrap();
    let ones: Vec<(Key, Value)> = (0..3).map(|_| (k(3), full(&[2], 1.0))).collect();
    let outs: Vec<(Key, Value)> = (0..3).map(|_| (k(3), zeros(&[2], DType::F32))).collect();
    let got = kv.pushpull(&ones, &outs).unwrap();
    assert!(got.iter().all(|v| v.to_f32() == vec![3.0, 3.0]));
    kv.set_updater(Box::new(
        |_: &Key, merged: &Value, stored: &mut Value| -> Result<(), UpdateError> {
            let sum: Vec<f32> = stored
                .to_f32()
                .iter()
                .zip(merged.to_f32())
                .map(|(s, m)| s + m)
                .collect();
            *stored = Value::Dense(Tensor::new([2], sum).map_err(|e| UpdateError(e.to_string()))?);
            Ok(())
        },
    ));
    let got = kv
        .pushpull(
            &[(k(3), full(&[2], 1.0))],
            &[(k(3), zeros(&[2], DType::F32))],
        )
        .unwrap();
    assert_eq!(got[0].to_f32(), vec![4.0, 4.0]);
}

#[test]
fn r34_broadcast_is_init_then_pull() {
    let mut kv = store("local");
    let got = kv
        .broadcast(
            &[(k(1), full(&[2], 5.0))],
            &[
                (k(1), zeros(&[2], DType::F32)),
                (k(1), zeros(&[2], DType::F16)),
            ],
        )
        .unwrap();
    assert_eq!(got[1].to_f32(), vec![5.0, 5.0]);
    assert_eq!(
        kv.broadcast(
            &[(k(1), full(&[2], 6.0))],
            &[(k(1), zeros(&[2], DType::F32))]
        ),
        Err(Error::DuplicateInit { key: k(1) })
    );
    assert_eq!(pull1(&mut kv, k(1), &[2]), vec![5.0, 5.0]);
}

#[test]
fn r31_a_huge_sparse_table_is_served_without_densifying() {
    // 2^40 rows of 4 elements: any dense copy would need terabytes.
    let rows = 1usize << 40;
    let mut kv = store("local");
    kv.init(&[(
        k(1),
        RowSparse::empty([rows, 4], DType::F32).unwrap().into(),
    )])
    .unwrap();
    let big = (rows - 1) as i64;
    kv.push(&[
        (
            k(1),
            rsp(
                &[rows, 4],
                &[7, big],
                &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            ),
        ),
        (k(1), rsp(&[rows, 4], &[7], &[1.0, 1.0, 1.0, 1.0])),
    ])
    .unwrap();
    let out = Value::RowSparse(RowSparse::empty([rows, 4], DType::F32).unwrap());
    let got = kv
        .row_sparse_pull(&[(k(1), out)], &[vec![big, 3, 7]])
        .unwrap();
    assert_eq!(ids_of(&got[0]), vec![3, 7, big]);
    assert_eq!(
        rows_of(&got[0]),
        vec![0.0, 0.0, 0.0, 0.0, 2.0, 3.0, 4.0, 5.0, 5.0, 6.0, 7.0, 8.0]
    );
}
