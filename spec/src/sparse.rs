//! Row retention for `row_sparse_pull` (R31-R32).

use crate::error::{Error, Result};
use crate::key::Key;
use crate::value::{DType, Data, RowSparse, Value};

/// Every requested id must be a row of the key: the first one that is not, in list order, is
/// the error (R32).
pub fn check_row_ids(key: &Key, ids: &[i64], rows: usize) -> Result<()> {
    match ids.iter().find(|&&id| id < 0 || id as u64 >= rows as u64) {
        Some(&id) => Err(Error::RowIdOutOfRange {
            key: key.clone(),
            id,
            rows,
        }),
        None => Ok(()),
    }
}

/// Checks every requested id against the key's row count and returns them sorted, without
/// duplicates (R31, R32).
pub fn normalize_row_ids(key: &Key, ids: &[i64], rows: usize) -> Result<Vec<i64>> {
    check_row_ids(key, ids, rows)?;
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The rows `ids` (sorted, unique, in range) of `stored`, as a row_sparse value in `dtype` that
/// lists exactly `ids`; rows the stored value does not hold are zeros (R31).
pub fn retain(stored: &Value, ids: &[i64], dtype: DType) -> Result<RowSparse> {
    let row_len: usize = stored.shape().iter().skip(1).product();
    let data: Vec<f64> = ids
        .iter()
        .flat_map(|&id| stored_row(stored, id, row_len))
        .collect();
    RowSparse::new(
        stored.shape().to_vec(),
        ids.to_vec(),
        Data::from_f64(dtype, &data),
    )
}

/// Row `id` of a value, exactly; zeros where a row_sparse value does not list it.
fn stored_row(stored: &Value, id: i64, row_len: usize) -> Vec<f64> {
    let (data, position) = match stored {
        Value::Dense(t) => (t.data(), Some(id as usize)),
        Value::RowSparse(r) => (r.data(), r.ids().binary_search(&id).ok()),
    };
    position
        .and_then(|k| data.get_f64(k * row_len..(k + 1) * row_len))
        .unwrap_or_else(|| vec![0.0; row_len])
}
