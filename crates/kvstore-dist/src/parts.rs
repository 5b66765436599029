//! Cutting a dense value into flat parts and putting the parts back together.

use kvstore_spec::value::{Data, Tensor};
use kvstore_spec::{Device, Error, Key, Result, Value};
use std::ops::Range;

/// The flat elements `range` of a dense value, as a 1-D tensor on `cpu(0)`.
pub fn slice(key: &Key, value: &Value, range: Range<usize>) -> Result<Value> {
    let Value::Dense(tensor) = value else {
        return Ok(value.clone().on(Device::Cpu(0)));
    };
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
