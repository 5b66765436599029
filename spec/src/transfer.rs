//! Moving values between a key and the caller: shape checks, pulls, row retention and the
//! compression round trip. Shared by the local store and the distributed model.

use crate::codec::Compression;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::sparse;
use crate::value::{DType, Device, RowSparse, StorageType, Tensor, Value};

/// An NCCL store reduces over one device set, fixed by its first multi-device push (R23):
/// fixes `set` from `devices` when it is open, otherwise they must be the same set.
pub fn fix_device_set(
    set: &mut Option<Vec<Device>>,
    key: &Key,
    devices: impl IntoIterator<Item = Device>,
) -> Result<()> {
    let mut devices: Vec<Device> = devices.into_iter().collect();
    devices.sort();
    match set {
        None => *set = Some(devices),
        Some(expected) if *expected != devices => {
            return Err(Error::DeviceSetChanged {
                key: key.clone(),
                expected: expected.clone(),
                found: devices,
            })
        }
        Some(_) => {}
    }
    Ok(())
}

/// A value must have its key's shape (R18, R27).
pub fn check_shape(key: &Key, expected: &[usize], value: &Value) -> Result<()> {
    if expected != value.shape() {
        return Err(Error::ShapeMismatch {
            key: key.clone(),
            expected: expected.to_vec(),
            found: value.shape().to_vec(),
        });
    }
    Ok(())
}

/// The new content of one pull output (R25-R28).
pub fn pull_output(key: &Key, stored: &Value, out: &Value, ignore_sparse: bool) -> Result<Value> {
    check_shape(key, stored.shape(), out)?;
    let filled = match out {
        Value::Dense(_) => Value::Dense(stored.to_dense().cast(out.dtype())),
        Value::RowSparse(_) if ignore_sparse => return Ok(out.clone()),
        Value::RowSparse(_) => Value::RowSparse(all_rows(stored)?.cast(out.dtype())),
    };
    Ok(filled.on(out.device()))
}

/// The new content of one `row_sparse_pull` output (R30-R32).
pub fn row_sparse_output(key: &Key, stored: &Value, out: &Value, ids: &[i64]) -> Result<Value> {
    if out.stype() != StorageType::RowSparse {
        return Err(Error::StorageTypeMismatch {
            key: key.clone(),
            expected: StorageType::RowSparse,
            found: out.stype(),
        });
    }
    check_shape(key, stored.shape(), out)?;
    let rows = stored.shape().first().copied().unwrap_or(0);
    let ids = sparse::normalize_row_ids(key, ids, rows)?;
    Ok(Value::RowSparse(
        sparse::retain(stored, &ids, out.dtype())?.on(out.device()),
    ))
}

/// Only dense f32 values of f32 keys can be compressed (R42, decision 9).
pub fn check_compressible(key: &Key, key_dtype: DType, value: &Value) -> Result<()> {
    match value {
        Value::Dense(t) if t.dtype() == DType::F32 && key_dtype == DType::F32 => Ok(()),
        other => Err(Error::CompressionUnsupportedValue {
            key: key.clone(),
            stype: other.stype(),
            dtype: if other.dtype() == DType::F32 {
                key_dtype
            } else {
                other.dtype()
            },
        }),
    }
}

/// Quantises one pushed value with its residual and returns what the receiver decodes (R42, R43).
///
/// An empty `residual` is a fresh slot and starts at zeros.
pub fn compress(
    c: Compression,
    key: &Key,
    key_dtype: DType,
    value: &Value,
    residual: &mut Vec<f32>,
) -> Result<Value> {
    check_compressible(key, key_dtype, value)?;
    let grad = value.to_f32();
    if residual.is_empty() {
        residual.resize(grad.len(), 0.0);
    }
    let words = c.quantize(&grad, residual)?;
    let decoded = Tensor::new(value.shape().to_vec(), c.dequantize(&words, grad.len())?)?;
    Ok(Value::Dense(decoded.on(value.device())))
}

/// A value as row_sparse listing every row (R28, decision 19).
fn all_rows(stored: &Value) -> Result<RowSparse> {
    match stored {
        Value::RowSparse(r) => Ok(r.clone()),
        Value::Dense(t) => {
            let rows = t.shape().first().copied().unwrap_or(0);
            let ids: Vec<i64> = (0..rows as i64).collect();
            RowSparse::new(t.shape().to_vec(), ids, t.data().clone())
        }
    }
}
