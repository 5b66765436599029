//! The NAG step of `set_optimizer` on `f32` weights (R72), in place.
//!
//! Per element, with `g'` = `rescale_grad * g`, clipped to `[-c, c]` when `clip_gradient` is
//! set:
//!
//! - momentum (`nag_mom_update`): `m1 = momentum * m`, then
//!   `w' = (w - m1) + ((momentum + 1) * (m1 - (lr * (g' + (wd * w)))))` and
//!   `m = m1 - (lr * (g' + (wd * w')))` with the new weight `w'` (MXNet's kernel runs in place,
//!   its output being the weight);
//! - no momentum (`sgd_update`): `w = ((1 - lr * wd) * w) - step`, where `step` is
//!   `(lr * rescale_grad) * g` without clipping and `lr * g'` with it.
//!
//! Every operation is one `f32` operation, in this order, as the specification's `f64`
//! computation rounded after each operation gives. With a momentum, MXNet has no sparse
//! kernel: a row_sparse gradient updates every element, the rows it does not list with a
//! `+0.0` gradient; without, `sgd_update`'s lazy update changes only the listed rows
//! ([`nag_rows`]).

use kvstore_spec::optimizer::{kernel_param, Nag};

use crate::elementwise::{self, bound, clip, Grad, Rule};
use crate::KernelError;

/// NAG parameters, as [`kvstore_spec::optimizer::Nag`] holds them.
///
/// The kernels do not validate them ([`kvstore_spec::optimizer::Optimizer::validate`] does);
/// for parameters it accepts the results are the specification's, and no parameter makes a
/// kernel panic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NagParams {
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

impl NagParams {
    /// The kernel parameters of `p` for an update whose scheduled learning rate is `lr`: each
    /// the `float` MXNet's kernels receive
    /// ([`kernel_param`]).
    pub fn with_lr(p: &Nag, lr: f64) -> Self {
        NagParams {
            learning_rate: kernel_param(lr),
            momentum: kernel_param(p.momentum),
            wd: kernel_param(p.wd),
            rescale_grad: kernel_param(p.rescale_grad),
            clip_gradient: p.clip_gradient.map(kernel_param),
        }
    }
}

impl From<&Nag> for NagParams {
    /// The parameters without a schedule (`p.learning_rate`).
    fn from(p: &Nag) -> Self {
        NagParams::with_lr(p, p.learning_rate)
    }
}

/// One NAG step on a dense `f32` weight with a dense gradient, in place (R72).
///
/// Bit-exact with the specification's NAG step (through
/// [`OptimizerUpdater`](kvstore_spec::optimizer::OptimizerUpdater)) for an `F32` weight and a
/// dense gradient: with `momentum: Some(m)` the momentum formula (pass the key's momentum
/// state, which the specification keeps when the optimizer's momentum is not 0), with `None`
/// the `sgd_update` formula.
///
/// `grad` and the momentum buffer must have `weight.len()` elements; otherwise
/// [`KernelError::LengthMismatch`].
pub fn nag_dense(
    p: &NagParams,
    weight: &mut [f32],
    grad: &[f32],
    momentum: Option<&mut [f32]>,
) -> Result<(), KernelError> {
    step(p, weight, Grad::Dense(grad), momentum)
}

/// One NAG step on a dense `f32` weight with a row_sparse gradient, in place (R72): rows
/// `ids` of the gradient are `grad_rows` (in `ids` order).
///
/// With `momentum: Some(m)` every element of the weight and of the momentum is updated, the
/// rows the gradient does not list with a `+0.0` gradient. With `None` (`sgd_update`, lazy)
/// only the listed rows change; the others are left exactly as they are (the specification
/// rebuilds the whole weight through `f64`, which quiets a signalling NaN even in rows it does
/// not update: the only difference, and only there). Bit-exact with the specification's NAG
/// step for an `F32` weight and a row_sparse gradient on every element it updates.
///
/// Errors: `weight.len()` not a multiple of `row_len`, `grad_rows.len() != ids.len() *
/// row_len` or a momentum buffer not of `weight.len()` elements
/// ([`KernelError::LengthMismatch`]); ids not strictly increasing
/// ([`KernelError::IdsNotIncreasing`]); an id out of range ([`KernelError::RowOutOfRange`];
/// with `row_len == 0` only negative ids are refused).
pub fn nag_rows(
    p: &NagParams,
    weight: &mut [f32],
    row_len: usize,
    ids: &[i64],
    grad_rows: &[f32],
    momentum: Option<&mut [f32]>,
) -> Result<(), KernelError> {
    let grad = Grad::Rows {
        row_len,
        ids,
        rows: grad_rows,
        lazy: momentum.is_none(),
    };
    step(p, weight, grad, momentum)
}

fn step(
    p: &NagParams,
    weight: &mut [f32],
    grad: Grad<'_>,
    momentum: Option<&mut [f32]>,
) -> Result<(), KernelError> {
    let (lr, wd, rescale) = (p.learning_rate, p.wd, p.rescale_grad);
    match momentum {
        Some(m) => {
            let rule = Momentum {
                lr,
                wd,
                rescale,
                c: bound(p.clip_gradient),
                mu: p.momentum,
                mu1: p.momentum + 1.0,
            };
            elementwise::run(&rule, weight, grad, [m], ["momentum"])
        }
        None => {
            let decay = 1.0 - lr * wd;
            match p.clip_gradient {
                None => {
                    let rule = Plain {
                        decay,
                        step: Unclipped(lr * rescale),
                    };
                    elementwise::run(&rule, weight, grad, [], [])
                }
                Some(c) => {
                    let rule = Plain {
                        decay,
                        step: Clipped { lr, rescale, c },
                    };
                    elementwise::run(&rule, weight, grad, [], [])
                }
            }
        }
    }
}

/// `nag_mom_update`.
struct Momentum {
    lr: f32,
    wd: f32,
    rescale: f32,
    c: f32,
    mu: f32,
    mu1: f32,
}

impl Momentum {
    #[inline(always)]
    fn element(&self, w: &mut f32, g: f32, m: &mut f32) {
        let cg = clip(self.rescale * g, self.c);
        let m1 = self.mu * *m;
        let inner = self.lr * (cg + self.wd * *w);
        *w = (*w - m1) + self.mu1 * (m1 - inner);
        // MXNet's kernel runs in place: the momentum's decay term reads the new weight.
        *m = m1 - self.lr * (cg + self.wd * *w);
    }
}

impl Rule<1> for Momentum {
    fn present(&self, w: &mut [f32], g: &[f32], [m]: [&mut [f32]; 1]) {
        for ((w, &g), m) in w.iter_mut().zip(g).zip(m.iter_mut()) {
            self.element(w, g, m);
        }
    }

    fn absent(&self, w: &mut [f32], [m]: [&mut [f32]; 1]) {
        for (w, m) in w.iter_mut().zip(m.iter_mut()) {
            self.element(w, 0.0, m);
        }
    }
}

/// `g -> step` of `sgd_update`.
trait StepOf: Sync {
    fn step(&self, g: f32) -> f32;
}

/// `(lr * rescale_grad) * g`.
struct Unclipped(f32);

impl StepOf for Unclipped {
    #[inline(always)]
    fn step(&self, g: f32) -> f32 {
        self.0 * g
    }
}

/// `lr * clip(rescale_grad * g, c)`.
struct Clipped {
    lr: f32,
    rescale: f32,
    c: f32,
}

impl StepOf for Clipped {
    #[inline(always)]
    fn step(&self, g: f32) -> f32 {
        self.lr * clip(self.rescale * g, self.c)
    }
}

/// `sgd_update`: `w = ((1 - lr * wd) * w) - step`.
struct Plain<S> {
    decay: f32,
    step: S,
}

impl<S: StepOf> Rule<0> for Plain<S> {
    fn present(&self, w: &mut [f32], g: &[f32], _: [&mut [f32]; 0]) {
        for (w, &g) in w.iter_mut().zip(g) {
            *w = self.decay * *w - self.step.step(g);
        }
    }

    /// Never called: `sgd_update` is lazy.
    fn absent(&self, _: &mut [f32], _: [&mut [f32]; 0]) {}
}
