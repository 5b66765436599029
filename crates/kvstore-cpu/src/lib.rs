//! Fast `f32` CPU kernels for kvstore, bit-exact with the executable specification.
//!
//! Every kernel reproduces one function of [`kvstore_spec`] for `f32` data, bit for bit:
//!
//! | kernel | specification |
//! |---|---|
//! | [`sum_into`] | [`kvstore_spec::reduce::sum`] over dense values (R17) |
//! | [`sparse_sum_into`] | [`kvstore_spec::reduce::sum`] over row_sparse values (R17) |
//! | [`quantize`], [`dequantize`] | [`kvstore_spec::codec::Compression::quantize`] / [`dequantize`](kvstore_spec::codec::Compression::dequantize) (R38-R41) |
//! | [`quantize_sum_into`] | quantise and decode each value, then [`kvstore_spec::reduce::sum`] (R42) |
//! | [`gather_rows`], [`gather_sparse_rows`] | [`kvstore_spec::sparse::retain`] (R31) |
//! | [`sgd_dense`], [`sgd_rows`] | the SGD step of [`kvstore_spec::optimizer::OptimizerUpdater`] (R46) |
//! | [`nag_dense`], [`nag_rows`] | the NAG step of [`kvstore_spec::optimizer::OptimizerUpdater`] (R72) |
//! | [`adam_dense`], [`adam_rows`] | the Adam step of [`kvstore_spec::optimizer::OptimizerUpdater`], lazy or not (R73) |
//! | [`adagrad_dense`], [`adagrad_rows`] | the AdaGrad step of [`kvstore_spec::optimizer::OptimizerUpdater`] (R74) |
//! | [`rmsprop_dense`], [`rmsprop_rows`] | the RMSProp step of [`kvstore_spec::optimizer::OptimizerUpdater`], plain or centered (R75) |
//! | [`ftrl_dense`], [`ftrl_rows`] | the FTRL step of [`kvstore_spec::optimizer::OptimizerUpdater`] (R76) |
//!
//! # Why the results never depend on threads
//!
//! The specification computes `f32` arithmetic in `f64` and rounds every operation back to
//! `f32`; for `+`, `-` and `*` of two `f32` values that equals plain `f32` arithmetic (53 bits
//! are at least `2 * 24 + 2`, so the double rounding is innocuous). Each kernel therefore runs
//! plain `f32` operations in **exactly the specification's order, per element**, and no element's
//! result depends on any other element. Multiply-adds are never contracted into FMAs (Rust does
//! not do that, and this crate never calls `mul_add`). A division or square root of `f32`
//! operands is correctly rounded too, so the same holds for the optimizers that use them.
//!
//! Large inputs are split into chunks that run on the current rayon pool (see [`par`]); since
//! every element goes through the same fixed sequence of operations whichever chunk it lands in,
//! the chunking never changes a result. Packed codec words are never split: a chunk always
//! owns whole words.
//!
//! # NaNs
//!
//! Whether an element is NaN is always the specification's. Its payload and sign are too
//! wherever they are determined: an operation with a single NaN operand returns that NaN
//! quieted (x86-64 and aarch64 hardware), and where the specification *copies* an element (a
//! one-value sum, a row gather) the copy goes through `f64` and back, which quiets a
//! signalling NaN; the copying kernels reproduce that by setting the quiet bit of every NaN
//! they copy. When *two* NaNs meet in one operation, Rust does not specify which payload
//! comes out, and in practice it depends on code generation (LLVM may commute an `fadd`; the
//! specification's scalar `f64` code and a vectorised kernel can pick different operands), so
//! no kernel can promise those bits. [`sgd_rows`] and the other lazy row kernels
//! ([`nag_rows`] without momentum, [`adam_rows`] with `lazy_update`, [`adagrad_rows`]) also
//! leave signalling NaNs of rows they
//! do not update as they are (see their documentation).
//!
//! # Memory
//!
//! Kernels write into caller-provided buffers and do not allocate (the `Vec` outputs of
//! [`sparse_sum_into`] are cleared and refilled, reusing their capacity).
#![forbid(unsafe_code)]

pub mod adagrad;
pub mod adam;
pub mod codec;
mod elementwise;
pub mod ftrl;
pub mod nag;
pub mod par;
pub mod reduce;
pub mod rmsprop;
pub mod rows;
pub mod sgd;

pub use adagrad::{adagrad_dense, adagrad_rows, AdaGradParams};
pub use adam::{adam_dense, adam_rows, AdamParams};
pub use codec::{dequantize, quantize, quantize_sum_into, Codec};
pub use ftrl::{ftrl_dense, ftrl_rows, FtrlParams};
pub use nag::{nag_dense, nag_rows, NagParams};
pub use reduce::{add_assign, sum_into};
pub use rmsprop::{rmsprop_dense, rmsprop_rows, RmsPropParams, RmsPropState};
pub use rows::{gather_rows, gather_sparse_rows, scatter_add, sorted_unique_ids, sparse_sum_into};
pub use sgd::{sgd_dense, sgd_rows, SgdParams};

/// Why a kernel refused its arguments. A kernel that returns an error has written nothing.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// A buffer or list does not have the length the others imply.
    #[error("{what} has length {found}, expected {expected}")]
    LengthMismatch {
        /// Which argument.
        what: &'static str,
        /// The length the other arguments imply (for an empty input list: 1, the minimum).
        expected: usize,
        /// Its actual length.
        found: usize,
    },
    /// A row id is negative or not below the table's row count.
    #[error("row id {id} is out of range for {rows} rows")]
    RowOutOfRange {
        /// The offending id.
        id: i64,
        /// The table's row count.
        rows: usize,
    },
    /// A list of row ids that must be strictly increasing is not.
    #[error(
        "{what} must be strictly increasing, but entry {index} is not greater than the one before"
    )]
    IdsNotIncreasing {
        /// Which argument.
        what: &'static str,
        /// Index of the first entry not greater than its predecessor.
        index: usize,
    },
}

/// Sets the quiet bit of a NaN, keeping its sign and payload; other values are unchanged.
///
/// This is what the specification's round trip through `f64` does to a copied element.
#[inline(always)]
pub(crate) fn quiet(x: f32) -> f32 {
    if x.is_nan() {
        f32::from_bits(x.to_bits() | 0x0040_0000)
    } else {
        x
    }
}

/// Checks that `found == expected`.
pub(crate) fn check_len(
    what: &'static str,
    expected: usize,
    found: usize,
) -> Result<(), KernelError> {
    if expected == found {
        Ok(())
    } else {
        Err(KernelError::LengthMismatch {
            what,
            expected,
            found,
        })
    }
}

/// Checks that `ids` is strictly increasing.
pub(crate) fn check_increasing(what: &'static str, ids: &[i64]) -> Result<(), KernelError> {
    match ids.windows(2).position(|w| w[0] >= w[1]) {
        Some(p) => Err(KernelError::IdsNotIncreasing { what, index: p + 1 }),
        None => Ok(()),
    }
}

/// The number of rows of a table of `len` elements in rows of `row_len` (`None` for
/// `row_len == 0`, when the table must be empty and the row count is unknown).
pub(crate) fn table_rows(
    what: &'static str,
    len: usize,
    row_len: usize,
) -> Result<Option<usize>, KernelError> {
    if row_len == 0 {
        check_len(what, 0, len)?;
        return Ok(None);
    }
    if len % row_len != 0 {
        return Err(KernelError::LengthMismatch {
            what,
            expected: len / row_len * row_len,
            found: len,
        });
    }
    Ok(Some(len / row_len))
}

/// Checks every id against the row count (`None`: unknown, only negative ids are refused).
pub(crate) fn check_in_range(ids: &[i64], rows: Option<usize>) -> Result<(), KernelError> {
    let limit = rows.map_or(u64::MAX, |r| r as u64);
    match ids.iter().find(|&&id| id < 0 || id as u64 >= limit) {
        Some(&id) => Err(KernelError::RowOutOfRange {
            id,
            rows: rows.unwrap_or(0),
        }),
        None => Ok(()),
    }
}

/// `ids.len() * row_len`, or a length error when it overflows.
pub(crate) fn rows_len(
    what: &'static str,
    ids: usize,
    row_len: usize,
) -> Result<usize, KernelError> {
    ids.checked_mul(row_len).ok_or(KernelError::LengthMismatch {
        what,
        expected: usize::MAX,
        found: ids,
    })
}
