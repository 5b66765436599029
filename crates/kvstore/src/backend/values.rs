//! Views of a list of values as the fast kernels take them.

use kvstore_spec::Value;

/// Every value's f32 elements, when all are dense f32.
pub(super) fn dense_f32s<'a>(values: &[&'a Value]) -> Option<Vec<&'a [f32]>> {
    values
        .iter()
        .map(|v| match v {
            Value::Dense(t) => t.f32s(),
            Value::RowSparse(_) => None,
        })
        .collect()
}

/// Every value's row ids and f32 rows, when all are row_sparse f32.
pub(super) fn sparse_f32s<'a>(values: &[&'a Value]) -> Option<Vec<(&'a [i64], &'a [f32])>> {
    values
        .iter()
        .map(|v| match v {
            Value::RowSparse(r) => r.f32s().map(|d| (r.ids(), d)),
            Value::Dense(_) => None,
        })
        .collect()
}
