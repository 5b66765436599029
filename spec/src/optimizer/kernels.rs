//! The per-element arithmetic of each optimizer, following MXNet 1.9.1's kernels operation by
//! operation (R46, R72-R76).
//!
//! Every value is held in `f64` and every operation's result is rounded to the weight's dtype,
//! which for `f32` and `f64` weights is exactly the kernel's own arithmetic (a correctly rounded
//! `f64` result of one `+ - * /` or `sqrt` of `f32` operands, rounded to `f32`, is the `f32`
//! operation's result). Kernel parameters are `float` in MXNet: each is rounded to `f32`, then
//! to the dtype.

use super::param::kernel_param;
use super::params::{AdaGrad, Adam, Ftrl, Nag, RmsProp, Sgd};
use crate::value::DType;

/// The weight's arithmetic.
#[derive(Clone, Copy)]
pub(super) struct Arith(pub DType);

impl Arith {
    /// One operation's result, rounded to the dtype.
    fn r(self, x: f64) -> f64 {
        self.0.round(x)
    }

    /// A kernel parameter: Python's `f64`, passed as text and parsed as `float` the way MXNet
    /// does ([`kernel_param`]), cast to the dtype.
    fn p(self, x: f64) -> f64 {
        self.r(f64::from(kernel_param(x)))
    }

    fn sqrt(self, x: f64) -> f64 {
        self.r(x.sqrt())
    }
}

/// MXNet's `clip::Map(x, c)`: `c` above, `-c` below, a NaN kept.
fn clip(x: f64, c: f64) -> f64 {
    if x > c {
        c
    } else if x < -c {
        -c
    } else {
        x
    }
}

/// MXNet's `sign::Map`: 1, -1 or 0 (NaN gives 0).
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// What one update reads and writes: the weight, the gradient (dense; a row_sparse gradient's
/// absent rows are zeros), the optimizer's state slots, all element-aligned, and the elements
/// the update touches.
pub(super) struct Step<'a> {
    pub a: Arith,
    pub w: &'a mut [f64],
    pub g: &'a [f64],
    pub slots: &'a mut [Vec<f64>],
    /// Elements of the rows a row_sparse gradient lists (for lazy updates), or every element.
    pub touched: &'a [usize],
    /// For each element, whether its row is in a row_sparse gradient (always true for dense).
    pub present: &'a dyn Fn(usize) -> bool,
    pub sparse: bool,
    /// The scheduled learning rate, in `f64`.
    pub lr: f64,
}

/// SGD (R46). Only the rows of a row_sparse gradient are touched (MXNet's lazy update).
pub(super) fn sgd(p: &Sgd, s: Step<'_>) {
    let a = s.a;
    let r = |x| a.r(x);
    let (lr, wd, rescale, mu) = (a.p(s.lr), a.p(p.wd), a.p(p.rescale_grad), a.p(p.momentum));
    // `lr * g'`: the kernels multiply `(lr * rescale) * g` without clipping, `lr * clip(rescale * g)` with it.
    let step = |g: f64| match p.clip_gradient {
        None => r(r(lr * rescale) * g),
        Some(c) => r(lr * clip(r(rescale * g), a.p(c))),
    };
    let decay = r(1.0 - r(lr * wd));
    let (w, g) = (s.w, s.g);
    let mut m = s.slots.first_mut();
    for &i in s.touched {
        let lr_g = step(g[i]);
        match m.as_mut() {
            // MXNet's row_sparse kernel decays the weight first.
            None if s.sparse => w[i] = r(r(decay * w[i]) - lr_g),
            // Its dense kernel (multi_sgd_update) is the momentum step from a zero momentum.
            None => w[i] = r(w[i] + r(-r(r(lr * wd) * w[i]) - lr_g)),
            Some(m) => {
                m[i] = r(r(r(mu * m[i]) - r(r(lr * wd) * w[i])) - lr_g);
                w[i] = r(w[i] + m[i]);
            }
        }
    }
}

/// The rescaled, optionally clipped gradient of the kernels that clip before adding decay.
fn rescaled(a: Arith, rescale: f64, clip_gradient: Option<f64>, g: f64) -> f64 {
    let x = a.r(g * rescale);
    match clip_gradient {
        Some(c) => clip(x, a.p(c)),
        None => x,
    }
}

/// NAG (R72): `nag_mom_update` with a momentum, which has no sparse kernel, so a row_sparse
/// gradient updates every element (MXNet densifies it); `sgd_update` without, lazily.
pub(super) fn nag(p: &Nag, s: Step<'_>) {
    let a = s.a;
    let r = |x| a.r(x);
    let (lr, wd, rescale) = (a.p(s.lr), a.p(p.wd), a.p(p.rescale_grad));
    let (w, g) = (s.w, s.g);
    let cg = |g: f64| match p.clip_gradient {
        Some(c) => clip(r(rescale * g), a.p(c)),
        None => r(rescale * g),
    };
    match s.slots.first_mut() {
        Some(m) => {
            let mu = a.p(p.momentum);
            let mu1 = r(mu + 1.0);
            for i in 0..w.len() {
                let m1 = r(mu * m[i]);
                let inner = r(lr * r(cg(g[i]) + r(wd * w[i])));
                w[i] = r(r(w[i] - m1) + r(mu1 * r(m1 - inner)));
                // The kernel runs in place (`out` is the weight), so the momentum's decay term
                // reads the weight it has just written.
                m[i] = r(m1 - r(lr * r(cg(g[i]) + r(wd * w[i]))));
            }
        }
        None => {
            // `sgd_update` (its `lazy_update` defaults to true): a row_sparse gradient updates
            // only its rows.
            let decay = r(1.0 - r(lr * wd));
            for &i in s.touched {
                let step = match p.clip_gradient {
                    Some(_) => r(lr * cg(g[i])),
                    None => r(r(lr * rescale) * g[i]),
                };
                w[i] = r(r(decay * w[i]) - step);
            }
        }
    }
}

/// Adam (R73): `lr` already carries the bias correction. A row_sparse gradient with
/// `lazy_update` touches only its rows; without, every row, an absent row's gradient being
/// `wd * w`.
pub(super) fn adam(p: &Adam, s: Step<'_>) {
    let a = s.a;
    let r = |x| a.r(x);
    let (lr, wd, rescale) = (a.p(s.lr), a.p(p.wd), a.p(p.rescale_grad));
    let (b1, b2, eps) = (a.p(p.beta1), a.p(p.beta2), a.p(p.epsilon));
    let (one_b1, one_b2) = (r(1.0 - b1), r(1.0 - b2));
    let clip_c = p.clip_gradient.map(|c| a.p(c));
    let lazy = s.sparse && p.lazy_update;
    // MXNet's row_sparse kernels square the gradient before scaling it, except the lazy one
    // without clipping: `(1-beta2)*(g*g)` there, `((1-beta2)*g)*g` in the dense kernel.
    let square_first = s.sparse && (!lazy || clip_c.is_some());
    let (w, g) = (s.w, s.g);
    let [mean, var] = s.slots else {
        return;
    };
    let all: Vec<usize>;
    let elements: &[usize] = if lazy {
        s.touched
    } else {
        all = (0..w.len()).collect();
        &all
    };
    for &i in elements {
        let decayed = r(w[i] * wd);
        let gr = if (s.present)(i) {
            r(r(g[i] * rescale) + decayed)
        } else {
            decayed
        };
        let gr = clip_c.map_or(gr, |c| clip(gr, c));
        mean[i] = r(r(b1 * mean[i]) + r(one_b1 * gr));
        var[i] = if square_first {
            r(r(b2 * var[i]) + r(one_b2 * r(gr * gr)))
        } else {
            r(r(b2 * var[i]) + r(r(one_b2 * gr) * gr))
        };
        w[i] = r(w[i] - r(r(lr * mean[i]) / r(a.sqrt(var[i]) + eps)));
    }
}

/// Why AdaGrad refuses a row_sparse gradient: MXNet's sparse kernel has no weight decay.
pub(super) const ADAGRAD_SPARSE_WD: &str =
    "AdaGrad with a row_sparse gradient does not support weight decay (wd must be 0)";

/// AdaGrad (R74): Python's NDArray arithmetic for a dense gradient, the sparse kernel (lazy,
/// no weight decay) for a row_sparse one.
pub(super) fn adagrad(p: &AdaGrad, s: Step<'_>) {
    let a = s.a;
    let r = |x| a.r(x);
    let (lr, rescale, eps) = (a.p(s.lr), a.p(p.rescale_grad), a.p(p.eps));
    let (w, g) = (s.w, s.g);
    let [history] = s.slots else {
        return;
    };
    if s.sparse {
        for &i in s.touched {
            let gr = rescaled(a, rescale, p.clip_gradient, g[i]);
            history[i] = r(history[i] + r(gr * gr));
            let div = r(gr / a.sqrt(r(history[i] + eps)));
            w[i] = r(w[i] - r(div * lr));
        }
    } else {
        // NDArray-scalar operations cast their `f64` scalar straight to the dtype (no `float`
        // parameter on the way); `clip` bounds are `float`.
        let (rescale, eps, wd, minus_lr) = (r(p.rescale_grad), r(p.eps), r(p.wd), r(-s.lr));
        for i in 0..w.len() {
            let gr = rescaled(a, rescale, p.clip_gradient, g[i]);
            history[i] = r(history[i] + r(gr * gr));
            let div = r(gr / a.sqrt(r(history[i] + eps)));
            w[i] = r(w[i] + r(r(div + r(w[i] * wd)) * minus_lr));
        }
    }
}

/// RMSProp (R75): `rmsprop_update`, or `rmspropalex_update` when centered; no sparse kernel,
/// so a row_sparse gradient updates every element.
pub(super) fn rmsprop(p: &RmsProp, s: Step<'_>) {
    let a = s.a;
    let r = |x| a.r(x);
    let (lr, wd, rescale) = (a.p(s.lr), a.p(p.wd), a.p(p.rescale_grad));
    let (g1, g2, eps) = (a.p(p.gamma1), a.p(p.gamma2), a.p(p.epsilon));
    let one_g1 = r(1.0 - g1);
    let clip_w = |x: f64| p.clip_weights.map_or(x, |c| clip(x, a.p(c)));
    let (w, g) = (s.w, s.g);
    for i in 0..w.len() {
        let mut gr = r(r(rescale * g[i]) + r(wd * w[i]));
        if let Some(c) = p.clip_gradient {
            gr = clip(gr, a.p(c));
        }
        match &mut *s.slots {
            [n] => {
                n[i] = r(r(one_g1 * r(gr * gr)) + r(g1 * n[i]));
                w[i] = clip_w(r(w[i] - r(lr * r(gr / a.sqrt(r(n[i] + eps))))));
            }
            [n, gs, delta] => {
                n[i] = r(r(r(one_g1 * gr) * gr) + r(g1 * n[i]));
                gs[i] = r(r(one_g1 * gr) + r(g1 * gs[i]));
                let root = a.sqrt(r(r(n[i] - r(gs[i] * gs[i])) + eps));
                delta[i] = r(r(g2 * delta[i]) - r(r(lr * gr) / root));
                w[i] = clip_w(r(w[i] + delta[i]));
            }
            _ => return,
        }
    }
}

/// FTRL (R76): `ftrl_update`; its sparse kernel needs a row_sparse weight, so with kvstore's
/// dense weights a row_sparse gradient updates every element.
pub(super) fn ftrl(p: &Ftrl, s: Step<'_>) {
    let a = s.a;
    let r = |x| a.r(x);
    let (lr, wd, rescale) = (a.p(s.lr), a.p(p.wd), a.p(p.rescale_grad));
    let (l1, beta) = (a.p(p.lamda1), a.p(p.beta));
    let (w, g) = (s.w, s.g);
    let [z, n] = s.slots else {
        return;
    };
    for i in 0..w.len() {
        let gr = rescaled(a, rescale, p.clip_gradient, g[i]);
        let grown = r(a.sqrt(r(n[i] + r(gr * gr))) - a.sqrt(n[i]));
        z[i] = r(z[i] + r(gr - r(r(grown * w[i]) / lr)));
        n[i] = r(n[i] + r(gr * gr));
        let shrunk = r(r(sign(z[i]) * l1) - z[i]);
        let scale = r(r(r(beta + a.sqrt(n[i])) / lr) + wd);
        let active = if z[i].abs() > l1 { 1.0 } else { 0.0 };
        w[i] = r(r(shrunk / scale) * active);
    }
}
