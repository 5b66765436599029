//! Merging the values of one key: an elementwise sum in list order (R17).
//!
//! Each element's sum starts from the first value that holds it and adds the others in list
//! order, each addition rounded to the key's dtype; only a sum of two or more row_sparse values
//! starts from `+0.0`, as MXNet's sparse sum does (the one place where `-0.0` becomes `+0.0`).
//! That fixes the one bit pattern every backend must reproduce. A row_sparse value holds only
//! its listed rows; absent rows contribute nothing.
//! Work and memory follow the rows present, so a huge, sparsely filled table stays cheap.

use crate::value::{DType, Data, RowSparse, Tensor, Value};
use crate::Result;
use std::collections::BTreeMap;

/// Per row, the running sum of each element (`None` until a value holds the element).
type Rows = BTreeMap<usize, Vec<Option<f64>>>;

/// The elementwise sum of `values` (all of one shape) in `dtype`, on the first value's device.
///
/// The result is dense when any value is dense; otherwise row_sparse over the union of rows.
/// Returns `Ok(None)` for an empty list.
pub fn sum(values: &[Value], dtype: DType) -> Result<Option<Value>> {
    let Some(first) = values.first() else {
        return Ok(None);
    };
    let shape = first.shape().to_vec();
    let row_len = shape.iter().skip(1).product::<usize>();
    // MXNet sums two or more row_sparse values row by row from +0 (so -0 + -0 gives +0); a
    // dense sum, or a single value, starts from the first value and keeps -0.
    let all_sparse = values.iter().all(|v| matches!(v, Value::RowSparse(_)));
    let start = (all_sparse && values.len() >= 2).then_some(0.0);
    let mut rows = Rows::new();
    for value in values {
        for (row, data) in rows_of(value, row_len) {
            let acc = rows.entry(row).or_insert_with(|| vec![start; row_len]);
            for (a, x) in acc.iter_mut().zip(data) {
                let x = dtype.round(x);
                *a = Some(a.map_or(x, |a| dtype.round(a + x)));
            }
        }
    }
    let flat =
        |rows: &Rows| -> Vec<f64> { rows.values().flatten().map(|a| a.unwrap_or(0.0)).collect() };
    let merged = if !all_sparse {
        Value::Dense(Tensor::new(shape, Data::from_f64(dtype, &flat(&rows)))?)
    } else {
        let ids = rows.keys().map(|&r| r as i64).collect();
        Value::RowSparse(RowSparse::new(
            shape,
            ids,
            Data::from_f64(dtype, &flat(&rows)),
        )?)
    };
    Ok(Some(merged.on(first.device())))
}

/// The rows a value holds, as (row index, exact elements). A dense value holds every row; a
/// scalar is one row of one element.
fn rows_of(value: &Value, row_len: usize) -> Vec<(usize, Vec<f64>)> {
    match value {
        Value::Dense(t) => {
            let data = t.data().to_f64();
            if t.shape().is_empty() {
                return vec![(0, data)];
            }
            let rows = t.shape().first().copied().unwrap_or(0);
            (0..rows)
                .map(|r| {
                    (
                        r,
                        data.get(r * row_len..(r + 1) * row_len)
                            .unwrap_or_default()
                            .to_vec(),
                    )
                })
                .collect()
        }
        Value::RowSparse(r) => {
            let data = r.data().to_f64();
            let row = |k: usize| {
                data.get(k * row_len..(k + 1) * row_len)
                    .unwrap_or_default()
                    .to_vec()
            };
            r.ids()
                .iter()
                .enumerate()
                .map(|(k, &id)| (id as usize, row(k)))
                .collect()
        }
    }
}
