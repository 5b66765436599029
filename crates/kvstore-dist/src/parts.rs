//! Cutting a dense value into flat parts and putting the parts back together.

use crate::layout::Part;
use kvstore_spec::value::{Data, Tensor};
use kvstore_spec::{Device, Error, Key, Result, Value};
use std::ops::Range;

/// What each part's server receives of a value of a key held in `parts`: a key held whole
/// keeps its shape and storage type (so the server can pick its rows, R30); a sliced key is
/// cut into flat element ranges (a row_sparse value, which a worker's push refuses for a
/// sliced key, would be made dense first: an init value of a sliced key is dense). On
/// `cpu(0)`, the servers' memory.
pub fn split(key: &Key, value: std::borrow::Cow<'_, Value>, parts: &[Part]) -> Result<Vec<Value>> {
    if let [_] = parts {
        return Ok(vec![value.into_owned().on(Device::Cpu(0))]);
    }
    let dense = match value.as_ref() {
        Value::RowSparse(r) => std::borrow::Cow::Owned(Value::Dense(r.to_dense())),
        Value::Dense(_) => value,
    };
    parts
        .iter()
        .map(|part| slice(key, &dense, part.range.clone()))
        .collect()
}

/// The flat elements `range` of a dense value, as a 1-D tensor on `cpu(0)`.
pub fn slice(key: &Key, value: &Value, range: Range<usize>) -> Result<Value> {
    let Value::Dense(tensor) = value else {
        return Ok(value.clone().on(Device::Cpu(0)));
    };
    if let Some(part) = tensor.f32s().and_then(|xs| xs.get(range.clone())) {
        return Ok(Value::Dense(Tensor::new([range.len()], part.to_vec())?));
    }
    let data = tensor
        .data()
        .get_f64(range.clone())
        .map(|xs| Data::from_f64(tensor.dtype(), &xs))
        .ok_or_else(|| Error::Protocol {
            reason: format!(
                "key {key}: part {range:?} is outside a value of {} elements",
                tensor.data().len()
            ),
        })?;
    Ok(Value::Dense(Tensor::new([range.len()], data)?))
}

/// A value of `shape` from its flat parts in element order. Parts that do not tile the shape
/// exactly are a protocol error.
pub fn assemble(key: &Key, shape: &[usize], parts: Vec<Value>) -> Result<Value> {
    if let [Value::RowSparse(_)] = parts.as_slice() {
        return parts.into_iter().next().ok_or_else(|| Error::Protocol {
            reason: format!("key {key}: no part arrived"),
        });
    }
    if let [Value::Dense(_)] = parts.as_slice() {
        // One part is the whole key, flat: reshape it, moving its elements.
        if let Some(Value::Dense(part)) = parts.into_iter().next() {
            let tensor =
                Tensor::new(shape.to_vec(), part.into_data()).map_err(|e| Error::Protocol {
                    reason: format!("key {key}: the part does not fill shape {shape:?}: {e}"),
                })?;
            return Ok(Value::Dense(tensor));
        }
        return Err(Error::Protocol {
            reason: format!("key {key}: no part arrived"),
        });
    }
    if let Some(f32s) = parts
        .iter()
        .map(|p| match p {
            Value::Dense(t) => t.f32s(),
            Value::RowSparse(_) => None,
        })
        .collect::<Option<Vec<&[f32]>>>()
    {
        // The common case without a round trip through f64.
        let tensor = Tensor::new(shape.to_vec(), f32s.concat()).map_err(|e| Error::Protocol {
            reason: format!("key {key}: parts do not tile shape {shape:?}: {e}"),
        })?;
        return Ok(Value::Dense(tensor));
    }
    let mut elements = Vec::new();
    let mut dtype = None;
    for part in &parts {
        let Value::Dense(tensor) = part else {
            return Err(Error::Protocol {
                reason: format!("key {key}: a row_sparse part among several"),
            });
        };
        if dtype.is_some_and(|d| d != tensor.dtype()) {
            return Err(Error::Protocol {
                reason: format!("key {key}: parts of different dtypes"),
            });
        }
        dtype = Some(tensor.dtype());
        elements.extend(tensor.data().to_f64());
    }
    let dtype = dtype.ok_or_else(|| Error::Protocol {
        reason: format!("key {key}: no part arrived"),
    })?;
    let tensor = Tensor::new(shape.to_vec(), Data::from_f64(dtype, &elements)).map_err(|e| {
        Error::Protocol {
            reason: format!("key {key}: parts do not tile shape {shape:?}: {e}"),
        }
    })?;
    Ok(Value::Dense(tensor))
}

/// The elementwise sum of `values` in list order (R17): the CPU kernel for dense f32 values
/// (bit-exact with the spec, proptested in kvstore-cpu), the spec's own sum otherwise. A single
/// value comes back as it is, without a copy.
pub fn sum<'v>(
    key: &Key,
    values: &[&'v Value],
    dtype: kvstore_spec::DType,
) -> Result<std::borrow::Cow<'v, Value>> {
    use std::borrow::Cow;
    let dense: Option<Vec<&[f32]>> = values
        .iter()
        .map(|v| match v {
            Value::Dense(t) if dtype == kvstore_spec::DType::F32 => t.f32s(),
            _ => None,
        })
        .collect();
    if let (Some(_), [single]) = (&dense, values) {
        // A one-value sum is a copy (only a signalling NaN's payload could differ, and every
        // NaN equals every NaN, R60).
        return Ok(Cow::Borrowed(*single));
    }
    if let (Some(inputs), Some(Value::Dense(first))) = (dense, values.first()) {
        let mut out = vec![0.0_f32; first.data().len()];
        if kvstore_cpu::sum_into(&mut out, &inputs).is_ok() {
            let tensor = Tensor::new(first.shape().to_vec(), out)?.on(first.device());
            return Ok(Cow::Owned(Value::Dense(tensor)));
        }
    }
    let owned: Vec<Value> = values.iter().map(|v| (*v).clone()).collect();
    kvstore_spec::reduce::sum(&owned, dtype)?
        .map(Cow::Owned)
        .ok_or_else(|| Error::EmptyValueList { key: key.clone() })
}
