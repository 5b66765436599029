//! The SGD step of `set_optimizer` on `f32` weights (R46), in place.
//!
//! Per element, with `lr*g'` = `(lr * rescale_grad) * g` without clipping and
//! `lr * clamp(rescale_grad * g, -c, c)` with it:
//!
//! - momentum: `m = ((momentum * m) - ((lr * wd) * w)) - lr*g'`, then `w = w + m`;
//! - no momentum, dense gradient: `w = w + (-((lr * wd) * w) - lr*g')`;
//! - no momentum, row_sparse gradient: `w = ((1 - lr * wd) * w) - lr*g'`.
//!
//! Every operation is one `f32` operation, in this order, as the specification's `f64`
//! computation rounded after each operation gives.

use kvstore_spec::optimizer::{kernel_param, Sgd};
use rayon::prelude::*;

use crate::par;
use crate::{check_in_range, check_increasing, check_len, rows_len, table_rows, KernelError};

/// SGD parameters, as [`kvstore_spec::optimizer::Sgd`] holds them.
///
/// The kernels do not validate them ([`kvstore_spec::optimizer::Optimizer::validate`] does);
/// for parameters it accepts the results are the specification's, and no parameter makes a
/// kernel panic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdParams {
    /// Step size.
    pub learning_rate: f32,
    /// Momentum factor (used only when the kernel is given a momentum buffer).
    pub momentum: f32,
    /// Weight decay.
    pub wd: f32,
    /// Factor applied to the gradient first.
    pub rescale_grad: f32,
    /// Clip of the rescaled gradient to `[-c, c]`; `None` for no clipping.
    pub clip_gradient: Option<f32>,
}

impl SgdParams {
    /// The kernel parameters of `p` for an update whose scheduled learning rate is `lr`: each
    /// the `float` MXNet's kernels receive ([`kernel_param`]).
    pub fn with_lr(p: &Sgd, lr: f64) -> Self {
        SgdParams {
            learning_rate: kernel_param(lr),
            momentum: kernel_param(p.momentum),
            wd: kernel_param(p.wd),
            rescale_grad: kernel_param(p.rescale_grad),
            clip_gradient: p.clip_gradient.map(kernel_param),
        }
    }
}

impl From<&Sgd> for SgdParams {
    /// The parameters without a schedule (`p.learning_rate`).
    fn from(p: &Sgd) -> Self {
        SgdParams::with_lr(p, p.learning_rate)
    }
}

impl From<Sgd> for SgdParams {
    fn from(p: Sgd) -> Self {
        SgdParams::from(&p)
    }
}

/// `x` clamped to `[lo, hi]` exactly as `f64::clamp` does it (`x < lo` gives `lo`, then
/// `x > hi` gives `hi`; a NaN stays), but without its panic when `lo > hi` or a bound is NaN.
#[inline(always)]
fn clamp(x: f32, lo: f32, hi: f32) -> f32 {
    let x = if x < lo { lo } else { x };
    if x > hi {
        hi
    } else {
        x
    }
}

/// What every element's update needs: `lr * wd` and `1 - lr * wd`, each computed once in `f32`
/// (the specification recomputes them per element, with the same result).
#[derive(Clone, Copy)]
struct Factors {
    lr_wd: f32,
    decay: f32,
    mu: f32,
}

impl Factors {
    fn new(p: &SgdParams) -> Factors {
        let lr_wd = p.learning_rate * p.wd;
        Factors {
            lr_wd,
            decay: 1.0 - lr_wd,
            mu: p.momentum,
        }
    }
}

/// A kernel generic over its step `g -> lr*g'`, so that each clipping mode gets its own
/// monomorphised loops with no branch on it.
trait Kernel {
    fn run<S: Fn(f32) -> f32 + Sync>(self, step: S);
}

/// Runs `k` with the step for the parameters' clipping.
fn dispatch(p: &SgdParams, k: impl Kernel) {
    let (lr, rescale) = (p.learning_rate, p.rescale_grad);
    match p.clip_gradient {
        None => {
            let lr_rescale = lr * rescale;
            k.run(move |g: f32| lr_rescale * g)
        }
        Some(c) => k.run(move |g: f32| lr * clamp(rescale * g, -c, c)),
    }
}

/// One SGD step on a dense `f32` weight with a dense gradient, in place (R46).
///
/// Bit-exact with the specification's `sgd_step` (through
/// [`OptimizerUpdater`](kvstore_spec::optimizer::OptimizerUpdater)) for an `F32` weight and a
/// dense gradient: with `momentum: Some(m)` the momentum formula (pass the key's momentum
/// state, which the specification keeps when the optimizer's momentum is not 0), with `None`
/// the dense no-momentum formula `w + (-((lr * wd) * w) - lr*g')`.
///
/// `grad` and the momentum buffer must have `weight.len()` elements; otherwise
/// [`KernelError::LengthMismatch`].
pub fn sgd_dense(
    p: &SgdParams,
    weight: &mut [f32],
    grad: &[f32],
    momentum: Option<&mut [f32]>,
) -> Result<(), KernelError> {
    check_len("grad", weight.len(), grad.len())?;
    if let Some(m) = &momentum {
        check_len("momentum", weight.len(), m.len())?;
    }
    dispatch(
        p,
        Dense {
            f: Factors::new(p),
            weight,
            grad,
            momentum,
        },
    );
    Ok(())
}

struct Dense<'a> {
    f: Factors,
    weight: &'a mut [f32],
    grad: &'a [f32],
    momentum: Option<&'a mut [f32]>,
}

impl Kernel for Dense<'_> {
    fn run<S: Fn(f32) -> f32 + Sync>(self, step: S) {
        let Dense {
            f,
            weight,
            grad,
            momentum,
        } = self;
        let chunk = par::chunk_len(weight.len(), 1);
        match (momentum, chunk) {
            (None, None) => dense_plain(f, weight, grad, &step),
            (None, Some(c)) => weight
                .par_chunks_mut(c)
                .zip(grad.par_chunks(c))
                .for_each(|(w, g)| dense_plain(f, w, g, &step)),
            (Some(m), None) => with_momentum(f, weight, grad, m, &step),
            (Some(m), Some(c)) => weight
                .par_chunks_mut(c)
                .zip(grad.par_chunks(c))
                .zip(m.par_chunks_mut(c))
                .for_each(|((w, g), m)| with_momentum(f, w, g, m, &step)),
        }
    }
}

/// Dense gradient, no momentum: `w = w + (-((lr * wd) * w) - lr*g')`.
#[inline(always)]
fn dense_plain(f: Factors, weight: &mut [f32], grad: &[f32], step: &impl Fn(f32) -> f32) {
    for (w, &g) in weight.iter_mut().zip(grad) {
        let lr_g = step(g);
        *w += -(f.lr_wd * *w) - lr_g;
    }
}

/// Row_sparse gradient, no momentum: `w = ((1 - lr * wd) * w) - lr*g'`.
#[inline(always)]
fn sparse_plain(f: Factors, weight: &mut [f32], grad: &[f32], step: &impl Fn(f32) -> f32) {
    for (w, &g) in weight.iter_mut().zip(grad) {
        let lr_g = step(g);
        *w = f.decay * *w - lr_g;
    }
}

/// Momentum: `m = ((mu * m) - ((lr * wd) * w)) - lr*g'`, then `w = w + m`.
#[inline(always)]
fn with_momentum(
    f: Factors,
    weight: &mut [f32],
    grad: &[f32],
    momentum: &mut [f32],
    step: &impl Fn(f32) -> f32,
) {
    for ((w, &g), m) in weight.iter_mut().zip(grad).zip(momentum.iter_mut()) {
        let lr_g = step(g);
        *m = f.mu * *m - f.lr_wd * *w - lr_g;
        *w += *m;
    }
}

/// The lazy SGD step of a row_sparse gradient, in place (R46): only rows `ids` of the weight
/// (and of the momentum) change; `grad_rows` holds the gradient's rows in `ids` order.
///
/// Bit-exact with the specification's `sgd_step` for an `F32` weight and a row_sparse gradient
/// on every row it touches: with `momentum: Some(m)` the momentum formula, with `None` the
/// row_sparse no-momentum formula `((1 - lr * wd) * w) - lr*g'`.
///
/// Rows the gradient does not list are left exactly as they are. (The specification rebuilds
/// the whole weight and momentum through `f64`, which quiets a signalling NaN even in rows it
/// does not update; this kernel does not touch those rows, so it differs from the
/// specification only there and only for signalling NaNs.)
///
/// Errors: `weight.len()` not a multiple of `row_len`, `grad_rows.len() != ids.len() *
/// row_len` or a momentum buffer not of `weight.len()` elements
/// ([`KernelError::LengthMismatch`]); ids not strictly increasing
/// ([`KernelError::IdsNotIncreasing`]); an id out of range ([`KernelError::RowOutOfRange`];
/// with `row_len == 0` only negative ids are refused).
pub fn sgd_rows(
    p: &SgdParams,
    weight: &mut [f32],
    row_len: usize,
    ids: &[i64],
    grad_rows: &[f32],
    momentum: Option<&mut [f32]>,
) -> Result<(), KernelError> {
    let rows = table_rows("weight", weight.len(), row_len)?;
    check_len(
        "grad_rows",
        rows_len("ids", ids.len(), row_len)?,
        grad_rows.len(),
    )?;
    if let Some(m) = &momentum {
        check_len("momentum", weight.len(), m.len())?;
    }
    check_increasing("ids", ids)?;
    check_in_range(ids, rows)?;
    if row_len == 0 {
        return Ok(());
    }
    dispatch(
        p,
        Rows {
            f: Factors::new(p),
            weight,
            row_len,
            ids,
            grad_rows,
            momentum,
        },
    );
    Ok(())
}

struct Rows<'a> {
    f: Factors,
    weight: &'a mut [f32],
    row_len: usize,
    ids: &'a [i64],
    grad_rows: &'a [f32],
    momentum: Option<&'a mut [f32]>,
}

impl Kernel for Rows<'_> {
    fn run<S: Fn(f32) -> f32 + Sync>(self, step: S) {
        let rpc = par::rows_per_chunk(self.ids.len(), self.row_len).unwrap_or(usize::MAX);
        rows_split(self, 0, rpc, &step);
    }
}

/// Splits the strictly increasing ids (and the weight and momentum, which start at row
/// `first_row`, between the halves' rows) until a piece has at most `rpc` rows.
fn rows_split<S: Fn(f32) -> f32 + Sync>(k: Rows<'_>, first_row: usize, rpc: usize, step: &S) {
    if k.ids.len() <= rpc {
        return rows_serial(k, first_row, step);
    }
    let mid = k.ids.len() / 2;
    let cut = k.ids[mid] as usize;
    let at = (cut - first_row) * k.row_len;
    let (w_l, w_r) = k.weight.split_at_mut(at);
    let (m_l, m_r) = match k.momentum {
        Some(m) => {
            let (l, r) = m.split_at_mut(at);
            (Some(l), Some(r))
        }
        None => (None, None),
    };
    let (ids_l, ids_r) = k.ids.split_at(mid);
    let (g_l, g_r) = k.grad_rows.split_at(mid * k.row_len);
    let left = Rows {
        f: k.f,
        weight: w_l,
        row_len: k.row_len,
        ids: ids_l,
        grad_rows: g_l,
        momentum: m_l,
    };
    let right = Rows {
        f: k.f,
        weight: w_r,
        row_len: k.row_len,
        ids: ids_r,
        grad_rows: g_r,
        momentum: m_r,
    };
    rayon::join(
        || rows_split(left, first_row, rpc, step),
        || rows_split(right, cut, rpc, step),
    );
}

fn rows_serial<S: Fn(f32) -> f32>(k: Rows<'_>, first_row: usize, step: &S) {
    let Rows {
        f,
        weight,
        row_len,
        ids,
        grad_rows,
        momentum,
    } = k;
    let range = |id: i64| {
        let start = (id as usize - first_row) * row_len;
        start..start + row_len
    };
    match momentum {
        None => {
            for (&id, g) in ids.iter().zip(grad_rows.chunks_exact(row_len)) {
                sparse_plain(f, &mut weight[range(id)], g, step);
            }
        }
        Some(m) => {
            for (&id, g) in ids.iter().zip(grad_rows.chunks_exact(row_len)) {
                let r = range(id);
                with_momentum(f, &mut weight[r.clone()], g, &mut m[r], step);
            }
        }
    }
}
