//! The RMSProp step of `set_optimizer` on `f32` weights (R75), in place.
//!
//! Per element, with `g' = (rescale_grad * g) + (wd * w)`, clipped to `[-c, c]` when
//! `clip_gradient` is set:
//!
//! - plain (`rmsprop_update`): `n = ((1 - gamma1) * (g' * g')) + (gamma1 * n)`, then
//!   `w = w - (lr * (g' / sqrt(n + epsilon)))`;
//! - centered (`rmspropalex_update`): `n = (((1 - gamma1) * g') * g') + (gamma1 * n)`,
//!   `gs = ((1 - gamma1) * g') + (gamma1 * gs)`,
//!   `delta = (gamma2 * delta) - ((lr * g') / sqrt((n - (gs * gs)) + epsilon))`, then
//!   `w = w + delta`;
//!
//! and with `clip_weights` the new weight clipped to `[-c, c]`. Every operation is one `f32`
//! operation, in this order, as the specification's `f64` computation rounded after each
//! operation gives. MXNet has no sparse RMSProp kernel: a row_sparse gradient updates every
//! element, the rows it does not list with a `+0.0` gradient ([`rmsprop_rows`]).

use kvstore_spec::optimizer::{kernel_param, RmsProp};

use crate::elementwise::{self, bound, clip, Grad, Rule};
use crate::KernelError;

/// RMSProp parameters, as [`kvstore_spec::optimizer::RmsProp`] holds them.
///
/// The kernels do not validate them ([`kvstore_spec::optimizer::Optimizer::validate`] does);
/// for parameters it accepts the results are the specification's, and no parameter makes a
/// kernel panic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsPropParams {
    /// Step size.
    pub learning_rate: f32,
    /// Decay of the squared-gradient average.
    pub gamma1: f32,
    /// Momentum of the centered version's step.
    pub gamma2: f32,
    /// Added under the root.
    pub epsilon: f32,
    /// Weight decay.
    pub wd: f32,
    /// Factor applied to the gradient first.
    pub rescale_grad: f32,
    /// Clip of `g'` to `[-c, c]`; `None` for no clipping.
    pub clip_gradient: Option<f32>,
    /// Clip of the new weight to `[-c, c]`; `None` for no clipping.
    pub clip_weights: Option<f32>,
}

impl RmsPropParams {
    /// The kernel parameters of `p` for an update whose scheduled learning rate is `lr`: each
    /// the `float` MXNet's kernels receive
    /// ([`kernel_param`]).
    pub fn with_lr(p: &RmsProp, lr: f64) -> Self {
        RmsPropParams {
            learning_rate: kernel_param(lr),
            gamma1: kernel_param(p.gamma1),
            gamma2: kernel_param(p.gamma2),
            epsilon: kernel_param(p.epsilon),
            wd: kernel_param(p.wd),
            rescale_grad: kernel_param(p.rescale_grad),
            clip_gradient: p.clip_gradient.map(kernel_param),
            clip_weights: p.clip_weights.map(kernel_param),
        }
    }
}

impl From<&RmsProp> for RmsPropParams {
    /// The parameters without a schedule (`p.learning_rate`).
    fn from(p: &RmsProp) -> Self {
        RmsPropParams::with_lr(p, p.learning_rate)
    }
}

/// The state buffers of a key: `n` for plain RMSProp, `n`, `g` and `delta` for the centered
/// version (the specification's state slots, in its order).
#[derive(Debug)]
pub enum RmsPropState<'a> {
    /// Tieleman and Hinton's RMSProp.
    Plain {
        /// The squared-gradient average.
        n: &'a mut [f32],
    },
    /// Graves's centered RMSProp.
    Centered {
        /// The squared-gradient average.
        n: &'a mut [f32],
        /// The gradient average.
        g: &'a mut [f32],
        /// The step momentum.
        delta: &'a mut [f32],
    },
}

/// One RMSProp step on a dense `f32` weight with a dense gradient, in place (R75): plain or
/// centered as `state` is.
///
/// Bit-exact with the specification's RMSProp step (through
/// [`OptimizerUpdater`](kvstore_spec::optimizer::OptimizerUpdater)) for an `F32` weight and a
/// dense gradient, given the key's state buffers.
///
/// `grad` and every state buffer must have `weight.len()` elements; otherwise
/// [`KernelError::LengthMismatch`].
pub fn rmsprop_dense(
    p: &RmsPropParams,
    weight: &mut [f32],
    grad: &[f32],
    state: RmsPropState<'_>,
) -> Result<(), KernelError> {
    step(p, weight, Grad::Dense(grad), state)
}

/// One RMSProp step on a dense `f32` weight with a row_sparse gradient, in place (R75): rows
/// `ids` of the gradient are `grad_rows` (in `ids` order), every other row is `+0.0`, and
/// every element of the weight and state is updated, as the specification does.
///
/// Errors: `weight.len()` not a multiple of `row_len`, `grad_rows.len() != ids.len() *
/// row_len` or a state buffer not of `weight.len()` elements
/// ([`KernelError::LengthMismatch`]); ids not strictly increasing
/// ([`KernelError::IdsNotIncreasing`]); an id out of range ([`KernelError::RowOutOfRange`];
/// with `row_len == 0` only negative ids are refused).
pub fn rmsprop_rows(
    p: &RmsPropParams,
    weight: &mut [f32],
    row_len: usize,
    ids: &[i64],
    grad_rows: &[f32],
    state: RmsPropState<'_>,
) -> Result<(), KernelError> {
    let grad = Grad::Rows {
        row_len,
        ids,
        rows: grad_rows,
        lazy: false,
    };
    step(p, weight, grad, state)
}

fn step(
    p: &RmsPropParams,
    weight: &mut [f32],
    grad: Grad<'_>,
    state: RmsPropState<'_>,
) -> Result<(), KernelError> {
    let f = Factors {
        lr: p.learning_rate,
        wd: p.wd,
        rescale: p.rescale_grad,
        c: bound(p.clip_gradient),
        cw: bound(p.clip_weights),
        g1: p.gamma1,
        one_g1: 1.0 - p.gamma1,
        g2: p.gamma2,
        eps: p.epsilon,
    };
    match state {
        RmsPropState::Plain { n } => elementwise::run(&Plain(f), weight, grad, [n], ["n"]),
        RmsPropState::Centered { n, g, delta } => elementwise::run(
            &Centered(f),
            weight,
            grad,
            [n, g, delta],
            ["n", "g", "delta"],
        ),
    }
}

#[derive(Clone, Copy)]
struct Factors {
    lr: f32,
    wd: f32,
    rescale: f32,
    c: f32,
    cw: f32,
    g1: f32,
    one_g1: f32,
    g2: f32,
    eps: f32,
}

impl Factors {
    /// `g'`, clipped.
    #[inline(always)]
    fn grad(&self, w: f32, g: f32) -> f32 {
        clip(self.rescale * g + self.wd * w, self.c)
    }

    #[inline(always)]
    fn plain(&self, w: &mut f32, g: f32, n: &mut f32) {
        let gr = self.grad(*w, g);
        *n = self.one_g1 * (gr * gr) + self.g1 * *n;
        *w = clip(*w - self.lr * (gr / (*n + self.eps).sqrt()), self.cw);
    }

    #[inline(always)]
    fn centered(&self, w: &mut f32, g: f32, n: &mut f32, gs: &mut f32, delta: &mut f32) {
        let gr = self.grad(*w, g);
        *n = (self.one_g1 * gr) * gr + self.g1 * *n;
        *gs = self.one_g1 * gr + self.g1 * *gs;
        let root = ((*n - *gs * *gs) + self.eps).sqrt();
        *delta = self.g2 * *delta - (self.lr * gr) / root;
        *w = clip(*w + *delta, self.cw);
    }
}

struct Plain(Factors);

impl Rule<1> for Plain {
    fn present(&self, w: &mut [f32], g: &[f32], [n]: [&mut [f32]; 1]) {
        for ((w, &g), n) in w.iter_mut().zip(g).zip(n.iter_mut()) {
            self.0.plain(w, g, n);
        }
    }

    fn absent(&self, w: &mut [f32], [n]: [&mut [f32]; 1]) {
        for (w, n) in w.iter_mut().zip(n.iter_mut()) {
            self.0.plain(w, 0.0, n);
        }
    }
}

struct Centered(Factors);

impl Rule<3> for Centered {
    fn present(&self, w: &mut [f32], g: &[f32], [n, gs, delta]: [&mut [f32]; 3]) {
        let states = n.iter_mut().zip(gs.iter_mut()).zip(delta.iter_mut());
        for ((w, &g), ((n, gs), d)) in w.iter_mut().zip(g).zip(states) {
            self.0.centered(w, g, n, gs, d);
        }
    }

    fn absent(&self, w: &mut [f32], [n, gs, delta]: [&mut [f32]; 3]) {
        let states = n.iter_mut().zip(gs.iter_mut()).zip(delta.iter_mut());
        for (w, ((n, gs), d)) in w.iter_mut().zip(states) {
            self.0.centered(w, 0.0, n, gs, d);
        }
    }
}
