//! The AdaGrad step of `set_optimizer` on `f32` weights (R74), in place.
//!
//! Per element, with `g' = g * rescale_grad`, clipped to `[-c, c]` when `clip_gradient` is
//! set, and `h` the history:
//!
//! - dense gradient (MXNet's Python NDArray arithmetic): `h = h + (g' * g')`, then
//!   `w = w + (((g' / sqrt(h + eps)) + (w * wd)) * (-lr))`;
//! - row_sparse gradient (MXNet's sparse kernel, lazy, no weight decay): on the listed rows
//!   only, `h = h + (g' * g')`, then `w = w - ((g' / sqrt(h + eps)) * lr)`.
//!
//! Every operation is one `f32` operation, in this order, as the specification's `f64`
//! computation rounded after each operation gives.

use kvstore_spec::optimizer::{kernel_param, AdaGrad};

use crate::elementwise::{self, bound, clip, Grad, Rule};
use crate::KernelError;

/// AdaGrad parameters, as [`kvstore_spec::optimizer::AdaGrad`] holds them.
///
/// The kernels do not validate them ([`kvstore_spec::optimizer::Optimizer::validate`] does);
/// for parameters it accepts the results are the specification's, and no parameter makes a
/// kernel panic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaGradParams {
    /// Step size.
    pub learning_rate: f32,
    /// Added to the history under the root.
    pub eps: f32,
    /// Weight decay (dense gradients only: see [`adagrad_rows`]).
    pub wd: f32,
    /// Factor applied to the gradient first.
    pub rescale_grad: f32,
    /// Clip of the rescaled gradient to `[-c, c]`; `None` for no clipping.
    pub clip_gradient: Option<f32>,
}

impl AdaGradParams {
    /// The parameters of the sparse kernel ([`adagrad_rows`]) of `p` for an update whose
    /// scheduled learning rate is `lr`: each the `float` MXNet's kernel receives
    /// ([`kernel_param`]).
    pub fn with_lr(p: &AdaGrad, lr: f64) -> Self {
        AdaGradParams {
            learning_rate: kernel_param(lr),
            eps: kernel_param(p.eps),
            wd: kernel_param(p.wd),
            rescale_grad: kernel_param(p.rescale_grad),
            clip_gradient: p.clip_gradient.map(kernel_param),
        }
    }

    /// The parameters of the dense path ([`adagrad_dense`]) of `p` for an update whose
    /// scheduled learning rate is `lr`: MXNet's Python runs it as NDArray arithmetic, whose
    /// scalars are cast straight to `f32` (`learning_rate`, `eps`, `wd`, `rescale_grad`), but
    /// whose `clip` bound is a `float` kernel parameter ([`kernel_param`]).
    pub fn dense_with_lr(p: &AdaGrad, lr: f64) -> Self {
        AdaGradParams {
            learning_rate: lr as f32,
            eps: p.eps as f32,
            wd: p.wd as f32,
            rescale_grad: p.rescale_grad as f32,
            clip_gradient: p.clip_gradient.map(kernel_param),
        }
    }
}

/// One AdaGrad step on a dense `f32` weight with a dense gradient, in place (R74).
///
/// Bit-exact with the specification's AdaGrad step (through
/// [`OptimizerUpdater`](kvstore_spec::optimizer::OptimizerUpdater)) for an `F32` weight and a
/// dense gradient, given the key's history state and the parameters of
/// [`AdaGradParams::dense_with_lr`].
///
/// `grad` and `history` must have `weight.len()` elements; otherwise
/// [`KernelError::LengthMismatch`].
pub fn adagrad_dense(
    p: &AdaGradParams,
    weight: &mut [f32],
    grad: &[f32],
    history: &mut [f32],
) -> Result<(), KernelError> {
    let rule = Dense {
        f: Factors::new(p),
        wd: p.wd,
        minus_lr: -p.learning_rate,
    };
    elementwise::run(&rule, weight, Grad::Dense(grad), [history], ["history"])
}

/// The lazy AdaGrad step of a row_sparse gradient, in place (R74): only rows `ids` of the
/// weight and of the history change; `grad_rows` holds the gradient's rows in `ids` order.
///
/// MXNet's sparse kernel has no weight decay: `p.wd` is not used (the specification refuses a
/// row_sparse gradient when `wd != 0`, see
/// [`Optimizer::check_gradient`](kvstore_spec::optimizer::Optimizer::check_gradient)). With
/// `wd == 0` and the parameters of [`AdaGradParams::with_lr`], bit-exact with the
/// specification's AdaGrad step for an `F32` weight and a row_sparse gradient on every row it
/// touches; rows the gradient does not list are left
/// exactly as they are (the specification's rebuild through `f64` quiets their signalling
/// NaNs: the only difference, and only there).
///
/// Errors: `weight.len()` not a multiple of `row_len`, `grad_rows.len() != ids.len() *
/// row_len` or `history` not of `weight.len()` elements ([`KernelError::LengthMismatch`]); ids
/// not strictly increasing ([`KernelError::IdsNotIncreasing`]); an id out of range
/// ([`KernelError::RowOutOfRange`]; with `row_len == 0` only negative ids are refused).
pub fn adagrad_rows(
    p: &AdaGradParams,
    weight: &mut [f32],
    row_len: usize,
    ids: &[i64],
    grad_rows: &[f32],
    history: &mut [f32],
) -> Result<(), KernelError> {
    let grad = Grad::Rows {
        row_len,
        ids,
        rows: grad_rows,
        lazy: true,
    };
    let rule = Sparse {
        f: Factors::new(p),
        lr: p.learning_rate,
    };
    elementwise::run(&rule, weight, grad, [history], ["history"])
}

#[derive(Clone, Copy)]
struct Factors {
    rescale: f32,
    c: f32,
    eps: f32,
}

impl Factors {
    fn new(p: &AdaGradParams) -> Factors {
        Factors {
            rescale: p.rescale_grad,
            c: bound(p.clip_gradient),
            eps: p.eps,
        }
    }

    /// Updates the history from a gradient element; returns `g' / sqrt(h + eps)`.
    #[inline(always)]
    fn history(&self, g: f32, h: &mut f32) -> f32 {
        let gr = clip(g * self.rescale, self.c);
        *h += gr * gr;
        gr / (*h + self.eps).sqrt()
    }
}

/// The dense path: `w = w + ((div + (w * wd)) * (-lr))`.
struct Dense {
    f: Factors,
    wd: f32,
    minus_lr: f32,
}

impl Rule<1> for Dense {
    fn present(&self, w: &mut [f32], g: &[f32], [history]: [&mut [f32]; 1]) {
        for ((w, &g), h) in w.iter_mut().zip(g).zip(history.iter_mut()) {
            let div = self.f.history(g, h);
            *w += (div + *w * self.wd) * self.minus_lr;
        }
    }

    /// Never called: a dense gradient lists every element.
    fn absent(&self, _: &mut [f32], _: [&mut [f32]; 1]) {}
}

/// The sparse kernel: `w = w - (div * lr)` on listed rows.
struct Sparse {
    f: Factors,
    lr: f32,
}

impl Rule<1> for Sparse {
    fn present(&self, w: &mut [f32], g: &[f32], [history]: [&mut [f32]; 1]) {
        for ((w, &g), h) in w.iter_mut().zip(g).zip(history.iter_mut()) {
            let div = self.f.history(g, h);
            *w -= div * self.lr;
        }
    }

    /// Never called: the update is lazy.
    fn absent(&self, _: &mut [f32], _: [&mut [f32]; 1]) {}
}
