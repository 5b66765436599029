//! Small constructors shared by the rule tests.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use kvstore_spec::kind::Kind;
use kvstore_spec::store::LocalStore;
use kvstore_spec::{DType, Data, Device, Key, RowSparse, Tensor, Value};

pub fn store(kind: &str) -> LocalStore {
    LocalStore::new(Kind::parse(kind).unwrap()).unwrap()
}

pub fn k(i: i64) -> Key {
    Key::Int(i)
}

pub fn s(name: &str) -> Key {
    Key::Str(name.into())
}

pub fn dense(shape: &[usize], data: &[f32]) -> Value {
    Value::Dense(Tensor::new(shape.to_vec(), data.to_vec()).unwrap())
}

pub fn dense_on(shape: &[usize], data: &[f32], device: Device) -> Value {
    dense(shape, data).on(device)
}

pub fn full(shape: &[usize], x: f32) -> Value {
    Value::Dense(Tensor::full(shape.to_vec(), DType::F32, f64::from(x)).unwrap())
}

pub fn zeros(shape: &[usize], dtype: DType) -> Value {
    Value::Dense(Tensor::zeros(shape.to_vec(), dtype).unwrap())
}

pub fn rsp(shape: &[usize], ids: &[i64], data: &[f32]) -> Value {
    Value::RowSparse(RowSparse::new(shape.to_vec(), ids.to_vec(), data.to_vec()).unwrap())
}

pub fn rsp_out(shape: &[usize]) -> Value {
    Value::RowSparse(RowSparse::empty(shape.to_vec(), DType::F32).unwrap())
}

pub fn ids_of(v: &Value) -> Vec<i64> {
    match v {
        Value::RowSparse(r) => r.ids().to_vec(),
        Value::Dense(_) => panic!("expected a row_sparse value"),
    }
}

pub fn rows_of(v: &Value) -> Vec<f32> {
    match v {
        Value::RowSparse(r) => r.data().to_f32(),
        Value::Dense(_) => panic!("expected a row_sparse value"),
    }
}

pub fn pull1(kv: &mut LocalStore, key: Key, shape: &[usize]) -> Vec<f32> {
    kv.pull(&[(key, zeros(shape, DType::F32))], true)
        .unwrap()
        .remove(0)
        .to_f32()
}

pub fn f16_data(v: &Value) -> Vec<half::f16> {
    match v {
        Value::Dense(t) => match t.data() {
            Data::F16(x) => x.clone(),
            other => panic!("expected f16 data, got {:?}", other.dtype()),
        },
        Value::RowSparse(_) => panic!("expected dense"),
    }
}
