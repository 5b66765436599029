//! Rules R35-R36: values and casts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use half::{bf16, f16};
use kvstore_spec::{DType, Data, Device, Error, RowSparse, Tensor, Value};

#[test]
fn r35_data_must_match_the_shape() {
    assert_eq!(
        Tensor::new([2, 3], vec![1.0f32; 5]),
        Err(Error::DataLength {
            shape: vec![2, 3],
            expected: 6,
            found: 5
        })
    );
    assert!(
        Tensor::new(Vec::<usize>::new(), vec![1.0f32]).is_ok(),
        "a scalar has one element"
    );
    assert!(matches!(
        Tensor::zeros([usize::MAX, 2], DType::F32),
        Err(Error::InvalidShape { .. })
    ));
}

#[test]
fn r35_row_sparse_ids_must_be_increasing_and_in_range() {
    let bad =
        |shape: Vec<usize>, ids: Vec<i64>, n: usize| RowSparse::new(shape, ids, vec![0.0f32; n]);
    assert!(bad(vec![4, 2], vec![1, 3], 4).is_ok());
    assert!(matches!(
        bad(vec![4, 2], vec![3, 1], 4),
        Err(Error::InvalidRowSparse { .. })
    ));
    assert!(matches!(
        bad(vec![4, 2], vec![1, 1], 4),
        Err(Error::InvalidRowSparse { .. })
    ));
    assert!(matches!(
        bad(vec![4, 2], vec![4], 2),
        Err(Error::InvalidRowSparse { .. })
    ));
    assert!(matches!(
        bad(vec![4, 2], vec![-1], 2),
        Err(Error::InvalidRowSparse { .. })
    ));
    assert!(matches!(
        bad(vec![4, 2], vec![1], 3),
        Err(Error::InvalidRowSparse { .. })
    ));
    assert!(matches!(
        bad(vec![], vec![], 0),
        Err(Error::InvalidRowSparse { .. })
    ));
}

#[test]
fn r35_devices_parse_and_print() {
    assert_eq!(Device::parse("cpu(3)"), Some(Device::Cpu(3)));
    assert_eq!(Device::parse("gpu(0)"), Some(Device::Gpu(0)));
    assert_eq!(Device::parse("tpu(0)"), None);
    assert_eq!(Device::Gpu(1).to_string(), "gpu(1)");
    assert_eq!(Device::default(), Device::Cpu(0));
}

#[test]
fn r35_data_equality_is_bitwise() {
    assert_ne!(Data::F32(vec![0.0]), Data::F32(vec![-0.0]));
    assert_eq!(Data::F32(vec![f32::NAN]), Data::F32(vec![f32::NAN]));
    assert_ne!(Data::F32(vec![1.0]), Data::F64(vec![1.0]));
}

#[test]
fn r36_casts_round_to_nearest_even() {
    let t = Tensor::new([3], vec![1.5f32, 0.1, 65520.0]).unwrap();
    let Data::F16(h) = t.cast(DType::F16).data().clone() else {
        panic!()
    };
    assert_eq!(
        h,
        vec![f16::from_f32(1.5), f16::from_f32(0.1), f16::INFINITY]
    );
    let Data::BF16(b) = t.cast(DType::BF16).data().clone() else {
        panic!()
    };
    assert_eq!(
        b,
        vec![
            bf16::from_f32(1.5),
            bf16::from_f32(0.1),
            bf16::from_f32(65520.0)
        ]
    );
}

#[test]
fn r36_f64_to_half_rounds_through_f32() {
    // 1 + 2^-11 + 2^-40 is just above the midpoint of two f16 values; rounding it to f32 first
    // lands exactly on the midpoint, which then rounds to even (1.0), as MXNet's CPU cast does.
    let x = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
    let t = Tensor::new([1], vec![x]).unwrap();
    let Data::F16(h) = t.cast(DType::F16).data().clone() else {
        panic!()
    };
    assert_eq!(h, vec![f16::from_f32(1.0)]);
    let correctly_rounded = f16::from_f32(1.0 + 2f32.powi(-10));
    assert_ne!(
        h[0], correctly_rounded,
        "a single rounding of x would give 1 + 2^-10"
    );
}

#[test]
fn r35_deserialisation_validates_values() {
    let ok = r#"{"shape":[2],"ids":[1],"data":{"F32":[1.0]},"device":{"Cpu":0}}"#;
    assert!(serde_json::from_str::<RowSparse>(ok).is_ok());
    let bad_ids = r#"{"shape":[2],"ids":[5],"data":{"F32":[1.0]},"device":{"Cpu":0}}"#;
    assert!(serde_json::from_str::<RowSparse>(bad_ids).is_err());
    let bad_len = r#"{"shape":[2,2],"data":{"F32":[1.0]},"device":{"Gpu":1}}"#;
    assert!(serde_json::from_str::<Tensor>(bad_len).is_err());
    let t = Tensor::new([1], vec![2.5f32]).unwrap().on(Device::Gpu(1));
    let back: Tensor = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
    assert_eq!(back, t);
}

#[test]
fn r35_shapes_beyond_any_buffer_are_invalid_not_a_panic() {
    assert!(matches!(
        Tensor::zeros([usize::MAX / 2], DType::F32),
        Err(Error::InvalidShape { .. })
    ));
    assert!(matches!(
        RowSparse::empty([usize::MAX / 4, 2], DType::F32),
        Err(Error::InvalidShape { .. })
    ));
    assert!(
        RowSparse::empty([1 << 40, 1024], DType::F32).is_ok(),
        "a large sparse table is fine"
    );
}

#[test]
fn r35_non_finite_elements_survive_serialisation() {
    let t = Tensor::new([4], vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0]).unwrap();
    let text = serde_json::to_string(&t).unwrap();
    assert!(text.contains(r#"["nan","inf","-inf",-0.0]"#), "{text}");
    let back: Tensor = serde_json::from_str(&text).unwrap();
    assert_eq!(back, t);
    let h = Tensor::new([2], vec![f16::INFINITY, f16::from_f32(0.1)]).unwrap();
    assert_eq!(
        serde_json::from_str::<Tensor>(&serde_json::to_string(&h).unwrap()).unwrap(),
        h
    );
}

#[test]
fn r60_values_compare_bitwise_with_every_nan_equal() {
    let quiet = f32::from_bits(0x7fc0_0000);
    let payload = f32::from_bits(0xffc0_1234);
    let a = Value::Dense(Tensor::new([3], vec![quiet, -0.0, 1.0]).unwrap());
    let b = Value::Dense(Tensor::new([3], vec![payload, -0.0, 1.0]).unwrap());
    assert_eq!(a, b, "NaN payloads and signs are not compared");
    let c = Value::Dense(Tensor::new([3], vec![quiet, 0.0, 1.0]).unwrap());
    assert_ne!(a, c, "-0 and +0 differ");
    let d = Value::Dense(Tensor::new([3], vec![1.0, -0.0, 1.0]).unwrap());
    assert_ne!(a, d, "a NaN never equals a number");
}
