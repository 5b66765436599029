//! Row kernels: gathers for `row_sparse_pull` (R31), the sum of row_sparse values (R17) and
//! scatter-adds of rows into a dense buffer.

use rayon::prelude::*;

use crate::par;
use crate::reduce::{add_in_place, copy_quiet};
use crate::{check_in_range, check_increasing, check_len, rows_len, table_rows, KernelError};

/// Gathers rows `ids` of a dense table of rows of `row_len` elements:
/// `out[k * row_len..][..row_len] = table[ids[k] * row_len..][..row_len]`.
///
/// Bit-exact with [`kvstore_spec::sparse::retain`] of a dense `f32` value (its copy through
/// `f64` quiets a signalling NaN; so does this kernel). The ids are normally sorted and unique
/// (validated by the caller), but any order works: rows come out in `ids` order.
///
/// Errors: `table.len()` not a multiple of `row_len`, or `out.len() != ids.len() * row_len`
/// ([`KernelError::LengthMismatch`]); an id negative or not below the row count
/// ([`KernelError::RowOutOfRange`]). With `row_len == 0` the table must be empty and, its row
/// count being unknown, only negative ids are refused.
pub fn gather_rows(
    table: &[f32],
    row_len: usize,
    ids: &[i64],
    out: &mut [f32],
) -> Result<(), KernelError> {
    let rows = table_rows("table", table.len(), row_len)?;
    check_len("out", rows_len("ids", ids.len(), row_len)?, out.len())?;
    check_in_range(ids, rows)?;
    if row_len == 0 {
        return Ok(());
    }
    match par::rows_per_chunk(ids.len(), row_len) {
        None => gather_serial(table, row_len, ids, out),
        Some(rpc) => out
            .par_chunks_mut(rpc * row_len)
            .zip(ids.par_chunks(rpc))
            .for_each(|(o, ids)| gather_serial(table, row_len, ids, o)),
    }
    Ok(())
}

fn gather_serial(table: &[f32], row_len: usize, ids: &[i64], out: &mut [f32]) {
    for (o, &id) in out.chunks_exact_mut(row_len).zip(ids) {
        let start = id as usize * row_len;
        copy_quiet(o, &table[start..start + row_len]);
    }
}

/// Gathers rows `ids` of a row_sparse table that holds the rows `table_ids` (strictly
/// increasing) with data `table`; a row the table does not hold comes out as `+0.0`s.
///
/// Bit-exact with [`kvstore_spec::sparse::retain`] of a row_sparse `f32` value (held rows are
/// copied with signalling NaNs quieted, as its copy through `f64` does). Rows come out in `ids`
/// order; sorted ids are found by one merge walk, unsorted ones still work.
///
/// Errors: `table.len() != table_ids.len() * row_len` or `out.len() != ids.len() * row_len`
/// ([`KernelError::LengthMismatch`]); `table_ids` not strictly increasing
/// ([`KernelError::IdsNotIncreasing`]). The table's row count is not known here, so an id it
/// does not hold is never an error.
pub fn gather_sparse_rows(
    table_ids: &[i64],
    table: &[f32],
    row_len: usize,
    ids: &[i64],
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_len(
        "table",
        rows_len("table_ids", table_ids.len(), row_len)?,
        table.len(),
    )?;
    check_len("out", rows_len("ids", ids.len(), row_len)?, out.len())?;
    check_increasing("table_ids", table_ids)?;
    if row_len == 0 {
        return Ok(());
    }
    match par::rows_per_chunk(ids.len(), row_len) {
        None => gather_sparse_serial(table_ids, table, row_len, ids, out),
        Some(rpc) => out
            .par_chunks_mut(rpc * row_len)
            .zip(ids.par_chunks(rpc))
            .for_each(|(o, ids)| gather_sparse_serial(table_ids, table, row_len, ids, o)),
    }
    Ok(())
}

fn gather_sparse_serial(
    table_ids: &[i64],
    table: &[f32],
    row_len: usize,
    ids: &[i64],
    out: &mut [f32],
) {
    // Lower bound of the search: ids at or after it are not below the previous id.
    let mut lo = 0;
    let mut prev = i64::MIN;
    for (o, &id) in out.chunks_exact_mut(row_len).zip(ids) {
        if id < prev {
            lo = 0;
        }
        prev = id;
        lo += table_ids[lo..].partition_point(|&t| t < id);
        if table_ids.get(lo) == Some(&id) {
            let start = lo * row_len;
            copy_quiet(o, &table[start..start + row_len]);
        } else {
            o.fill(0.0);
        }
    }
}

/// The sum of row_sparse values, each given as (strictly increasing ids, their rows of
/// `row_len` elements): `out_ids` receives the sorted union of the ids and `out_data` the
/// summed rows, in that order.
///
/// Bit-exact with [`kvstore_spec::reduce::sum`] over row_sparse `f32` values (R17): with two or
/// more inputs every element starts from `+0.0` and adds, in list order, the inputs that hold
/// its row (`f32` additions, running sum on the left), so `-0.0 + -0.0` gives `+0.0` as in
/// MXNet; with exactly one input the result is a copy (`-0.0` kept, signalling NaNs quieted).
///
/// Both vectors are refilled; their capacity is reused, so once it suffices the kernel does
/// not allocate. Every input is read once and every output row written once.
///
/// Errors: no input, or an input whose data is not `ids.len() * row_len` long
/// ([`KernelError::LengthMismatch`]); ids not strictly increasing
/// ([`KernelError::IdsNotIncreasing`]). On error both vectors are left unchanged.
pub fn sparse_sum_into(
    inputs: &[(&[i64], &[f32])],
    row_len: usize,
    out_ids: &mut Vec<i64>,
    out_data: &mut Vec<f32>,
) -> Result<(), KernelError> {
    if inputs.is_empty() {
        return Err(KernelError::LengthMismatch {
            what: "inputs",
            expected: 1,
            found: 0,
        });
    }
    for (ids, data) in inputs {
        check_len(
            "input data",
            rows_len("input ids", ids.len(), row_len)?,
            data.len(),
        )?;
        check_increasing("input ids", ids)?;
    }
    out_ids.clear();
    match inputs {
        [] => {}
        [(a, _)] => out_ids.extend_from_slice(a),
        [(a, _), (b, _)] => merge_union(a, b, out_ids),
        _ => merge_union_many(inputs, out_ids),
    }
    if let [(_, data)] = inputs {
        out_data.clear();
        out_data.resize(data.len(), 0.0);
        copy_quiet(out_data, data);
        return Ok(());
    }
    // Every element is written below, so a warm buffer is only resized, never cleared.
    out_data.resize(out_ids.len() * row_len, 0.0);
    if row_len == 0 {
        return Ok(());
    }
    match par::rows_per_chunk(out_ids.len(), row_len) {
        None => sparse_sum_rows(inputs, row_len, out_ids, out_data),
        Some(rpc) => out_data
            .par_chunks_mut(rpc * row_len)
            .zip(out_ids.par_chunks(rpc))
            .for_each(|(o, ids)| sparse_sum_rows(inputs, row_len, ids, o)),
    }
    Ok(())
}

/// The sorted union of several strictly increasing lists, in one pass over all of them.
fn merge_union_many(inputs: &[(&[i64], &[f32])], out: &mut Vec<i64>) {
    let mut cursors = vec![0usize; inputs.len()];
    loop {
        let next = inputs
            .iter()
            .zip(&cursors)
            .filter_map(|((ids, _), &c)| ids.get(c))
            .min()
            .copied();
        let Some(id) = next else { break };
        out.push(id);
        for ((ids, _), c) in inputs.iter().zip(cursors.iter_mut()) {
            if ids.get(*c) == Some(&id) {
                *c += 1;
            }
        }
    }
}

/// Writes each row of `ids` (a run of the union) once: `+0.0` plus every input's row with that
/// id, in list order; every input is read once.
fn sparse_sum_rows(inputs: &[(&[i64], &[f32])], row_len: usize, ids: &[i64], out: &mut [f32]) {
    let Some(&first) = ids.first() else {
        return;
    };
    let mut cursors: Vec<usize> = inputs
        .iter()
        .map(|(in_ids, _)| in_ids.partition_point(|&x| x < first))
        .collect();
    for (&id, row) in ids.iter().zip(out.chunks_exact_mut(row_len)) {
        let mut written = false;
        for ((in_ids, data), c) in inputs.iter().zip(cursors.iter_mut()) {
            if in_ids.get(*c) != Some(&id) {
                continue;
            }
            let src = &data[*c * row_len..(*c + 1) * row_len];
            if written {
                add_in_place(row, src);
            } else {
                // The sum starts from +0.0 (so -0.0 + -0.0 gives +0.0, as the spec's).
                for (o, &x) in row.iter_mut().zip(src) {
                    *o = 0.0 + x;
                }
                written = true;
            }
            *c += 1;
        }
        if !written {
            row.fill(0.0);
        }
    }
}

/// The sorted union of two strictly increasing lists.
fn merge_union(a: &[i64], b: &[i64], out: &mut Vec<i64>) {
    let (mut i, mut j) = (0, 0);
    while let (Some(&x), Some(&y)) = (a.get(i), b.get(j)) {
        out.push(x.min(y));
        i += usize::from(x <= y);
        j += usize::from(y <= x);
    }
    out.extend_from_slice(&a[i.min(a.len())..]);
    out.extend_from_slice(&b[j.min(b.len())..]);
}

/// Adds rows into a dense buffer: `dense[ids[k] * row_len + j] += rows[k * row_len + j]`, for
/// each `k` in input order (`f32` additions with the dense element on the left; a repeated id
/// adds again).
///
/// This is the row_sparse step of a list-order sum that mixes dense and row_sparse values
/// (R17): an accumulator that starts as a copy of the list's first value — a dense one — and
/// then takes every later value in list order ([`add_assign`](crate::add_assign) for a dense
/// one, this kernel for a row_sparse one) holds the bits of [`kvstore_spec::reduce::sum`]. When
/// row_sparse values come *before* the first dense value, `reduce::sum` starts their rows from
/// the first of them instead, which this order does not reproduce in general.
///
/// Strictly increasing ids of a large input are split across threads; other orders run
/// serially.
///
/// Errors: `dense.len()` not a multiple of `row_len`, or `rows.len() != ids.len() * row_len`
/// ([`KernelError::LengthMismatch`]); an id out of range ([`KernelError::RowOutOfRange`]; with
/// `row_len == 0` only negative ids are refused).
pub fn scatter_add(
    dense: &mut [f32],
    row_len: usize,
    ids: &[i64],
    rows: &[f32],
) -> Result<(), KernelError> {
    let table = table_rows("dense", dense.len(), row_len)?;
    check_len("rows", rows_len("ids", ids.len(), row_len)?, rows.len())?;
    check_in_range(ids, table)?;
    if row_len == 0 {
        return Ok(());
    }
    match par::rows_per_chunk(ids.len(), row_len) {
        Some(rpc) if check_increasing("ids", ids).is_ok() => {
            scatter_split(dense, 0, row_len, ids, rows, rpc)
        }
        _ => scatter_serial(dense, 0, row_len, ids, rows),
    }
    Ok(())
}

/// Splits strictly increasing `ids` (and `dense`, which starts at row `first_row`, between
/// the two halves' rows) until a piece has at most `rpc` rows.
fn scatter_split(
    dense: &mut [f32],
    first_row: usize,
    row_len: usize,
    ids: &[i64],
    rows: &[f32],
    rpc: usize,
) {
    if ids.len() <= rpc {
        return scatter_serial(dense, first_row, row_len, ids, rows);
    }
    let mid = ids.len() / 2;
    let cut = ids[mid] as usize;
    let (dense_l, dense_r) = dense.split_at_mut((cut - first_row) * row_len);
    let (rows_l, rows_r) = rows.split_at(mid * row_len);
    let (ids_l, ids_r) = ids.split_at(mid);
    rayon::join(
        || scatter_split(dense_l, first_row, row_len, ids_l, rows_l, rpc),
        || scatter_split(dense_r, cut, row_len, ids_r, rows_r, rpc),
    );
}

fn scatter_serial(dense: &mut [f32], first_row: usize, row_len: usize, ids: &[i64], rows: &[f32]) {
    for (&id, row) in ids.iter().zip(rows.chunks_exact(row_len)) {
        let start = (id as usize - first_row) * row_len;
        add_in_place(&mut dense[start..start + row_len], row);
    }
}

/// The ids of a `row_sparse_pull`, sorted and without duplicates, given that every id is
/// already known to be in `0..rows`: the result of [`kvstore_spec::sparse::normalize_row_ids`]
/// for valid ids.
///
/// When the table is not much larger than the list (`rows <= 64 * 64 * ids.len()`), the ids are
/// marked in a bitmap of `rows` bits and read back in order: linear time, where a comparison
/// sort of 16 Ki ids costs about half a millisecond. Otherwise it sorts.
///
/// Errors: an id outside `0..rows` ([`KernelError::RowOutOfRange`]).
pub fn sorted_unique_ids(ids: &[i64], rows: usize) -> Result<Vec<i64>, KernelError> {
    check_in_range(ids, Some(rows))?;
    let words = rows.div_ceil(64);
    if words > 64 * ids.len().max(1) {
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        return Ok(sorted);
    }
    let mut bits = vec![0u64; words];
    for &id in ids {
        // In range, so the index fits.
        let id = id as usize;
        if let Some(word) = bits.get_mut(id / 64) {
            *word |= 1 << (id % 64);
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    for (w, &word) in bits.iter().enumerate() {
        let mut word = word;
        while word != 0 {
            let bit = word.trailing_zeros() as usize;
            out.push((w * 64 + bit) as i64);
            word &= word - 1;
        }
    }
    Ok(out)
}
