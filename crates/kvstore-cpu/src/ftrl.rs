//! The FTRL step of `set_optimizer` on `f32` weights (R76), in place.
//!
//! Per element (`ftrl_update`), with `g' = g * rescale_grad`, clipped to `[-c, c]` when
//! `clip_gradient` is set:
//!
//! - `z = z + (g' - (((sqrt(n + (g' * g')) - sqrt(n)) * w) / lr))`;
//! - `n = n + (g' * g')`;
//! - `w = (((sign(z) * lamda1) - z) / (((beta + sqrt(n)) / lr) + wd)) * (|z| > lamda1)`, where
//!   `sign` is 1, -1 or 0 (a NaN gives 0) and the comparison is 1 or 0.
//!
//! Every operation is one `f32` operation, in this order, as the specification's `f64`
//! computation rounded after each operation gives. MXNet's sparse FTRL kernel needs a
//! row_sparse weight: with kvstore's dense weights a row_sparse gradient updates every
//! element, the rows it does not list with a `+0.0` gradient ([`ftrl_rows`]).

use kvstore_spec::optimizer::{kernel_param, Ftrl};

use crate::elementwise::{self, bound, clip, Grad, Rule};
use crate::KernelError;

/// FTRL parameters, as [`kvstore_spec::optimizer::Ftrl`] holds them.
///
/// The kernels do not validate them ([`kvstore_spec::optimizer::Optimizer::validate`] does);
/// for parameters it accepts the results are the specification's, and no parameter makes a
/// kernel panic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FtrlParams {
    /// Step size.
    pub learning_rate: f32,
    /// L1 regularisation.
    pub lamda1: f32,
    /// Per-coordinate rate offset.
    pub beta: f32,
    /// Weight decay.
    pub wd: f32,
    /// Factor applied to the gradient first.
    pub rescale_grad: f32,
    /// Clip of the rescaled gradient to `[-c, c]`; `None` for no clipping.
    pub clip_gradient: Option<f32>,
}

impl FtrlParams {
    /// The kernel parameters of `p` for an update whose scheduled learning rate is `lr`: each
    /// the `float` MXNet's kernels receive
    /// ([`kernel_param`]).
    pub fn with_lr(p: &Ftrl, lr: f64) -> Self {
        FtrlParams {
            learning_rate: kernel_param(lr),
            lamda1: kernel_param(p.lamda1),
            beta: kernel_param(p.beta),
            wd: kernel_param(p.wd),
            rescale_grad: kernel_param(p.rescale_grad),
            clip_gradient: p.clip_gradient.map(kernel_param),
        }
    }
}

impl From<&Ftrl> for FtrlParams {
    /// The parameters without a schedule (`p.learning_rate`).
    fn from(p: &Ftrl) -> Self {
        FtrlParams::with_lr(p, p.learning_rate)
    }
}

/// One FTRL step on a dense `f32` weight with a dense gradient, in place (R76).
///
/// Bit-exact with the specification's FTRL step (through
/// [`OptimizerUpdater`](kvstore_spec::optimizer::OptimizerUpdater)) for an `F32` weight and a
/// dense gradient, given the key's `z` and `n` states.
///
/// `grad`, `z` and `n` must have `weight.len()` elements; otherwise
/// [`KernelError::LengthMismatch`].
pub fn ftrl_dense(
    p: &FtrlParams,
    weight: &mut [f32],
    grad: &[f32],
    z: &mut [f32],
    n: &mut [f32],
) -> Result<(), KernelError> {
    elementwise::run(&rule(p), weight, Grad::Dense(grad), [z, n], NAMES)
}

/// One FTRL step on a dense `f32` weight with a row_sparse gradient, in place (R76): rows
/// `ids` of the gradient are `grad_rows` (in `ids` order), every other row is `+0.0`, and
/// every element of the weight and states is updated, as the specification does.
///
/// Errors: `weight.len()` not a multiple of `row_len`, `grad_rows.len() != ids.len() *
/// row_len` or `z` or `n` not of `weight.len()` elements ([`KernelError::LengthMismatch`]);
/// ids not strictly increasing ([`KernelError::IdsNotIncreasing`]); an id out of range
/// ([`KernelError::RowOutOfRange`]; with `row_len == 0` only negative ids are refused).
pub fn ftrl_rows(
    p: &FtrlParams,
    weight: &mut [f32],
    row_len: usize,
    ids: &[i64],
    grad_rows: &[f32],
    z: &mut [f32],
    n: &mut [f32],
) -> Result<(), KernelError> {
    let grad = Grad::Rows {
        row_len,
        ids,
        rows: grad_rows,
        lazy: false,
    };
    elementwise::run(&rule(p), weight, grad, [z, n], NAMES)
}

const NAMES: [&str; 2] = ["z", "n"];

fn rule(p: &FtrlParams) -> FtrlRule {
    FtrlRule {
        lr: p.learning_rate,
        l1: p.lamda1,
        beta: p.beta,
        wd: p.wd,
        rescale: p.rescale_grad,
        c: bound(p.clip_gradient),
    }
}

/// MXNet's `sign::Map`: 1, -1 or 0 (a NaN gives 0).
#[inline(always)]
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

struct FtrlRule {
    lr: f32,
    l1: f32,
    beta: f32,
    wd: f32,
    rescale: f32,
    c: f32,
}

impl FtrlRule {
    #[inline(always)]
    fn element(&self, w: &mut f32, g: f32, z: &mut f32, n: &mut f32) {
        let gr = clip(g * self.rescale, self.c);
        let grown = (*n + gr * gr).sqrt() - n.sqrt();
        *z += gr - (grown * *w) / self.lr;
        *n += gr * gr;
        let shrunk = sign(*z) * self.l1 - *z;
        let scale = (self.beta + n.sqrt()) / self.lr + self.wd;
        let active = if z.abs() > self.l1 { 1.0 } else { 0.0 };
        *w = (shrunk / scale) * active;
    }
}

impl Rule<2> for FtrlRule {
    fn present(&self, w: &mut [f32], g: &[f32], [z, n]: [&mut [f32]; 2]) {
        for ((w, &g), (z, n)) in w.iter_mut().zip(g).zip(z.iter_mut().zip(n.iter_mut())) {
            self.element(w, g, z, n);
        }
    }

    fn absent(&self, w: &mut [f32], [z, n]: [&mut [f32]; 2]) {
        for (w, (z, n)) in w.iter_mut().zip(z.iter_mut().zip(n.iter_mut())) {
            self.element(w, 0.0, z, n);
        }
    }
}
