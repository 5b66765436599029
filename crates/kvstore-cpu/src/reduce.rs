//! The dense sum of a key's values in list order (R17).

use rayon::prelude::*;

use crate::par::{self, BLOCK_ELEMENTS};
use crate::{check_len, quiet, KernelError};

/// `out[i] = ((inputs[0][i] + inputs[1][i]) + inputs[2][i]) + ...`, in list order.
///
/// Bit-exact with [`kvstore_spec::reduce::sum`] for dense `f32` values: each element starts from
/// the first value and adds the others in list order, each addition an `f32` addition with the
/// running sum as its left operand. A single input is a copy (`-0.0` kept; a signalling NaN is
/// quieted, as the specification's copy through `f64` does).
///
/// Every input must have `out.len()` elements, and there must be at least one input; otherwise
/// [`KernelError::LengthMismatch`] (with `what: "inputs"` for an empty list).
pub fn sum_into(out: &mut [f32], inputs: &[&[f32]]) -> Result<(), KernelError> {
    if inputs.is_empty() {
        return Err(KernelError::LengthMismatch {
            what: "inputs",
            expected: 1,
            found: 0,
        });
    }
    for x in inputs {
        check_len("input", out.len(), x.len())?;
    }
    match par::chunk_len(out.len(), 1) {
        None => sum_serial(out, inputs, 0),
        Some(c) => out
            .par_chunks_mut(c)
            .enumerate()
            .for_each(|(k, o)| sum_serial(o, inputs, k * c)),
    }
    Ok(())
}

/// `acc[i] = acc[i] + x[i]` (an `f32` addition with `acc[i]` on the left).
///
/// The in-place step of a list-order sum: starting from a copy of the first value, adding the
/// later values one by one with this kernel gives the bits of [`sum_into`] (except that the
/// copy is the caller's: [`sum_into`] quiets a signalling NaN of a one-value sum).
/// `x` must have `acc.len()` elements; otherwise [`KernelError::LengthMismatch`].
pub fn add_assign(acc: &mut [f32], x: &[f32]) -> Result<(), KernelError> {
    check_len("x", acc.len(), x.len())?;
    match par::chunk_len(acc.len(), 1) {
        None => add_in_place(acc, x),
        Some(c) => acc
            .par_chunks_mut(c)
            .zip(x.par_chunks(c))
            .for_each(|(a, x)| add_in_place(a, x)),
    }
    Ok(())
}

/// [`sum_into`] for the elements `offset..offset + out.len()` of the inputs, block by block so
/// that each block of `out` stays in cache while every input is added to it.
fn sum_serial(out: &mut [f32], inputs: &[&[f32]], offset: usize) {
    for (b, o) in out.chunks_mut(BLOCK_ELEMENTS).enumerate() {
        let start = offset + b * BLOCK_ELEMENTS;
        let range = start..start + o.len();
        match inputs {
            [] => {}
            [a] => copy_quiet(o, &a[range]),
            [a, b, rest @ ..] => {
                add2(o, &a[range.clone()], &b[range.clone()]);
                for x in rest {
                    add_in_place(o, &x[range.clone()]);
                }
            }
        }
    }
}

/// `out[i] = x[i]`, quieting signalling NaNs (the specification's copy through `f64`).
#[inline]
pub(crate) fn copy_quiet(out: &mut [f32], x: &[f32]) {
    for (o, &x) in out.iter_mut().zip(x) {
        *o = quiet(x);
    }
}

/// `out[i] = a[i] + b[i]`.
#[inline]
pub(crate) fn add2(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = a + b;
    }
}

/// `out[i] = out[i] + x[i]` (the running sum on the left).
#[inline]
pub(crate) fn add_in_place(out: &mut [f32], x: &[f32]) {
    for (o, &x) in out.iter_mut().zip(x) {
        *o += x;
    }
}
