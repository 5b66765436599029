//! The Adam step of `set_optimizer` on `f32` weights (R73), in place.
//!
//! The step size `lr` already carries the bias correction of the key's `t`-th update
//! (`lr * sqrt(1 - beta2^t) / (1 - beta1^t)`, computed in `f64` by
//! [`Optimizer::step_lr`](kvstore_spec::optimizer::Optimizer::step_lr), then made the `float`
//! MXNet's kernel receives by [`kernel_param`]).
//! Per element, with `g' = (rescale_grad * g) + (w * wd)` (for a row a row_sparse gradient
//! does not list, updated only when the update is not lazy: `g' = w * wd`), clipped to
//! `[-c, c]` when `clip_gradient` is set:
//!
//! - `mean = (beta1 * mean) + ((1 - beta1) * g')`;
//! - `var = (beta2 * var) + (((1 - beta2) * g') * g')` for a dense gradient and for the lazy
//!   row_sparse update without clipping; MXNet's other row_sparse kernels (lazy with clipping,
//!   and not lazy) square the gradient first: `var = (beta2 * var) + ((1 - beta2) * (g' * g'))`;
//! - `w = w - ((lr * mean) / (sqrt(var) + epsilon))`.
//!
//! Every operation is one `f32` operation, in this order, as the specification's `f64`
//! computation rounded after each operation gives.

use kvstore_spec::optimizer::{kernel_param, Adam};

use crate::elementwise::{self, bound, clip, Grad, Rule};
use crate::KernelError;

/// Adam parameters, as [`kvstore_spec::optimizer::Adam`] holds them, with the bias-corrected
/// step size.
///
/// The kernels do not validate them ([`kvstore_spec::optimizer::Optimizer::validate`] does);
/// for parameters it accepts the results are the specification's, and no parameter makes a
/// kernel panic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamParams {
    /// Step size, bias correction included.
    pub learning_rate: f32,
    /// Decay of the first moment.
    pub beta1: f32,
    /// Decay of the second moment.
    pub beta2: f32,
    /// Added to the root of the second moment.
    pub epsilon: f32,
    /// Weight decay.
    pub wd: f32,
    /// Factor applied to the gradient first.
    pub rescale_grad: f32,
    /// Clip of `g'` to `[-c, c]`; `None` for no clipping.
    pub clip_gradient: Option<f32>,
    /// A row_sparse gradient updates only its rows ([`adam_rows`]).
    pub lazy_update: bool,
}

impl AdamParams {
    /// The kernel parameters of `p` for an update whose step size is `lr` (pass
    /// [`Optimizer::step_lr`](kvstore_spec::optimizer::Optimizer::step_lr) of the key's update
    /// count, which includes the bias correction): each the `float` MXNet's kernels receive
    /// ([`kernel_param`]).
    pub fn with_lr(p: &Adam, lr: f64) -> Self {
        AdamParams {
            learning_rate: kernel_param(lr),
            beta1: kernel_param(p.beta1),
            beta2: kernel_param(p.beta2),
            epsilon: kernel_param(p.epsilon),
            wd: kernel_param(p.wd),
            rescale_grad: kernel_param(p.rescale_grad),
            clip_gradient: p.clip_gradient.map(kernel_param),
            lazy_update: p.lazy_update,
        }
    }
}

/// One Adam step on a dense `f32` weight with a dense gradient, in place (R73).
///
/// Bit-exact with the specification's Adam step (through
/// [`OptimizerUpdater`](kvstore_spec::optimizer::OptimizerUpdater)) for an `F32` weight and a
/// dense gradient, given the key's mean and variance states.
///
/// `grad`, `mean` and `var` must have `weight.len()` elements; otherwise
/// [`KernelError::LengthMismatch`].
pub fn adam_dense(
    p: &AdamParams,
    weight: &mut [f32],
    grad: &[f32],
    mean: &mut [f32],
    var: &mut [f32],
) -> Result<(), KernelError> {
    let rule = Kernel::<false>(Factors::new(p));
    elementwise::run(&rule, weight, Grad::Dense(grad), [mean, var], NAMES)
}

/// One Adam step on a dense `f32` weight with a row_sparse gradient, in place (R73): rows
/// `ids` of the gradient are `grad_rows` (in `ids` order).
///
/// With `p.lazy_update` only the listed rows of the weight, mean and variance change; rows
/// the gradient does not list are left exactly as they are (the specification rebuilds the
/// whole weight and states through `f64`, which quiets a signalling NaN even in rows it does
/// not update: the only difference, and only there). Without `p.lazy_update` every row is
/// updated, an unlisted row's `g'` being `w * wd`. The variance adds `(1 - beta2) * (g' * g')`
/// except in the lazy update without clipping (`((1 - beta2) * g') * g'`), as MXNet's
/// row_sparse kernels do. Bit-exact with the specification's Adam step for an `F32` weight
/// and a row_sparse gradient on every row it updates.
///
/// Errors: `weight.len()` not a multiple of `row_len`, `grad_rows.len() != ids.len() *
/// row_len` or `mean` or `var` not of `weight.len()` elements
/// ([`KernelError::LengthMismatch`]); ids not strictly increasing
/// ([`KernelError::IdsNotIncreasing`]); an id out of range ([`KernelError::RowOutOfRange`];
/// with `row_len == 0` only negative ids are refused).
pub fn adam_rows(
    p: &AdamParams,
    weight: &mut [f32],
    row_len: usize,
    ids: &[i64],
    grad_rows: &[f32],
    mean: &mut [f32],
    var: &mut [f32],
) -> Result<(), KernelError> {
    let grad = Grad::Rows {
        row_len,
        ids,
        rows: grad_rows,
        lazy: p.lazy_update,
    };
    let f = Factors::new(p);
    if p.lazy_update && p.clip_gradient.is_none() {
        elementwise::run(&Kernel::<false>(f), weight, grad, [mean, var], NAMES)
    } else {
        elementwise::run(&Kernel::<true>(f), weight, grad, [mean, var], NAMES)
    }
}

const NAMES: [&str; 2] = ["mean", "var"];

#[derive(Clone, Copy)]
struct Factors {
    lr: f32,
    wd: f32,
    rescale: f32,
    c: f32,
    b1: f32,
    b2: f32,
    one_b1: f32,
    one_b2: f32,
    eps: f32,
}

impl Factors {
    fn new(p: &AdamParams) -> Factors {
        Factors {
            lr: p.learning_rate,
            wd: p.wd,
            rescale: p.rescale_grad,
            c: bound(p.clip_gradient),
            b1: p.beta1,
            b2: p.beta2,
            one_b1: 1.0 - p.beta1,
            one_b2: 1.0 - p.beta2,
            eps: p.epsilon,
        }
    }

    /// `g'` before clipping, for a given gradient element.
    #[inline(always)]
    fn present(&self, w: f32, g: f32) -> f32 {
        g * self.rescale + w * self.wd
    }

    /// The update from `g'` before clipping.
    #[inline(always)]
    fn update<const SQUARE_FIRST: bool>(
        &self,
        w: &mut f32,
        gr: f32,
        mean: &mut f32,
        var: &mut f32,
    ) {
        let gr = clip(gr, self.c);
        *mean = self.b1 * *mean + self.one_b1 * gr;
        *var = if SQUARE_FIRST {
            self.b2 * *var + self.one_b2 * (gr * gr)
        } else {
            self.b2 * *var + (self.one_b2 * gr) * gr
        };
        *w -= (self.lr * *mean) / (var.sqrt() + self.eps);
    }
}

/// The kernels: `((1 - beta2) * g') * g'` (the dense kernel, also the lazy row_sparse one
/// without clipping) when `SQUARE_FIRST` is false, `(1 - beta2) * (g' * g')` (the other
/// row_sparse kernels) when it is true.
struct Kernel<const SQUARE_FIRST: bool>(Factors);

impl<const SQUARE_FIRST: bool> Rule<2> for Kernel<SQUARE_FIRST> {
    fn present(&self, w: &mut [f32], g: &[f32], [mean, var]: [&mut [f32]; 2]) {
        let f = &self.0;
        for ((w, &g), (m, v)) in w.iter_mut().zip(g).zip(mean.iter_mut().zip(var.iter_mut())) {
            f.update::<SQUARE_FIRST>(w, f.present(*w, g), m, v);
        }
    }

    fn absent(&self, w: &mut [f32], [mean, var]: [&mut [f32]; 2]) {
        let f = &self.0;
        for (w, (m, v)) in w.iter_mut().zip(mean.iter_mut().zip(var.iter_mut())) {
            f.update::<SQUARE_FIRST>(w, *w * f.wd, m, v);
        }
    }
}
