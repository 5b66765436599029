//! Merging the values of one key: an elementwise sum in list order (R17).
//!
//! Each element's sum starts from the first value that holds it and adds the others in list
//! order, each addition rounded to the key's dtype. Starting from the first contributor rather
//! than from zero keeps `-0.0` intact, so the result is the one bit pattern every backend must
//! reproduce. A row_sparse value holds only its listed rows; absent rows contribute nothing.

use crate::value::{numel, DType, Data, RowSparse, Tensor, Value};
use crate::Result;

/// The elementwise sum of `values` (all of one shape) in `dtype`, on the first value's device.
///
/// The result is dense when any value is dense; otherwise row_sparse over the union of rows.
/// Returns `Ok(None)` for an empty list.
pub fn sum(values: &[Value], dtype: DType) -> Result<Option<Value>> {
    let Some(first) = values.first() else {
        return Ok(None);
    };
    let shape = first.shape().to_vec();
    let mut acc: Vec<Option<f64>> = vec![None; numel(&shape)?];
    for value in values {
        for (index, x) in elements(value) {
            let x = dtype.round(x);
            acc[index] = Some(match acc[index] {
                None => x,
                Some(a) => dtype.round(a + x),
            });
        }
    }
    let device = first.device();
    let merged = if values.iter().any(|v| matches!(v, Value::Dense(_))) {
        let data: Vec<f64> = acc.iter().map(|a| a.unwrap_or(0.0)).collect();
        Value::Dense(Tensor::new(shape, Data::from_f64(dtype, &data))?)
    } else {
        Value::RowSparse(rows_of(&shape, &acc, dtype)?)
    };
    Ok(Some(merged.on(device)))
}

/// Every stored element of a value as (row-major index, exact value).
fn elements(value: &Value) -> Vec<(usize, f64)> {
    match value {
        Value::Dense(t) => t.data().to_f64().into_iter().enumerate().collect(),
        Value::RowSparse(r) => {
            let row_len = r.row_len();
            let data = r.data().to_f64();
            r.ids()
                .iter()
                .enumerate()
                .flat_map(|(k, &id)| {
                    (0..row_len).map(move |j| (id as usize * row_len + j, k * row_len + j))
                })
                .map(|(index, at)| (index, data[at]))
                .collect()
        }
    }
}

/// The row_sparse value holding exactly the rows that received a contribution.
fn rows_of(shape: &[usize], acc: &[Option<f64>], dtype: DType) -> Result<RowSparse> {
    let row_len: usize = shape.iter().skip(1).product();
    let mut ids = Vec::new();
    let mut data = Vec::new();
    for (row, chunk) in acc
        .chunks(row_len.max(1))
        .enumerate()
        .filter(|_| row_len > 0)
    {
        if chunk.iter().any(Option::is_some) {
            ids.push(row as i64);
            data.extend(chunk.iter().map(|a| a.unwrap_or(0.0)));
        }
    }
    RowSparse::new(shape.to_vec(), ids, Data::from_f64(dtype, &data))
}
