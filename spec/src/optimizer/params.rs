//! Each optimizer's parameters, with MXNet 1.9.1's defaults (R45, R70).
//!
//! Parameters are `f64`, as Python holds them: the update-count arithmetic (Adam's bias
//! correction, the learning-rate schedules) runs in `f64` on them, and the kernels then take
//! each one rounded to `f32` (MXNet's kernel parameters are `float`), then to the weight's dtype.

use super::number;
use super::schedule::LrScheduler;
use serde::{Deserialize, Serialize};

/// Declares a parameter struct: the fields every optimizer shares, then its own.
macro_rules! params {
    (
        $(#[$doc:meta])* $name:ident, learning_rate = $lr:expr;
        $($(#[$fdoc:meta])* $(@$with:literal)? $field:ident : $ty:ty = $default:expr),* $(,)?
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            /// Step size; the base of the schedule when there is one.
            #[serde(with = "number")]
            pub learning_rate: f64,
            /// Weight decay (default 0).
            #[serde(with = "number")]
            pub wd: f64,
            /// Factor applied to the gradient first (default 1).
            #[serde(with = "number")]
            pub rescale_grad: f64,
            /// Clip of the rescaled gradient to `[-c, c]`; `None` for no clipping. `Some(0)`
            /// clips to 0 (MXNet ignores a zero clip: SPEC divergence 20).
            #[serde(with = "number::option")]
            pub clip_gradient: Option<f64>,
            /// Learning-rate schedule over the update count (R71); `None` keeps the rate.
            pub lr_scheduler: Option<LrScheduler>,
            $($(#[$fdoc])* $(#[serde(with = $with)])? pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    learning_rate: $lr,
                    wd: 0.0,
                    rescale_grad: 1.0,
                    clip_gradient: None,
                    lr_scheduler: None,
                    $($field: $default,)*
                }
            }
        }

        impl $name {
            /// The parameters every optimizer shares.
            pub fn common(&self) -> Common {
                Common {
                    learning_rate: self.learning_rate,
                    wd: self.wd,
                    rescale_grad: self.rescale_grad,
                    clip_gradient: self.clip_gradient,
                }
            }
        }
    };
}

/// The parameters every optimizer has, whatever its kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Common {
    /// Base step size.
    pub learning_rate: f64,
    /// Weight decay.
    pub wd: f64,
    /// Gradient factor.
    pub rescale_grad: f64,
    /// Gradient clip bound.
    pub clip_gradient: Option<f64>,
}

params! {
    /// Stochastic gradient descent, optionally with momentum (R46).
    Sgd, learning_rate = 0.01;
    /// Momentum; 0 keeps no state (default 0).
    @"number" momentum: f64 = 0.0,
}

params! {
    /// Nesterov accelerated gradient (R72): SGD whose step looks ahead along the momentum.
    Nag, learning_rate = 0.01;
    /// Momentum; 0 keeps no state and makes the step plain SGD (default 0).
    @"number" momentum: f64 = 0.0,
}

params! {
    /// Adam with MXNet's bias correction folded into the step size (R73).
    Adam, learning_rate = 0.001;
    /// Decay of the first moment (default 0.9).
    @"number" beta1: f64 = 0.9,
    /// Decay of the second moment (default 0.999).
    @"number" beta2: f64 = 0.999,
    /// Added to the root of the second moment (default 1e-8).
    @"number" epsilon: f64 = 1e-8,
    /// A row_sparse gradient updates only its rows (default true); otherwise every row, the
    /// absent ones with a zero gradient.
    lazy_update: bool = true,
}

params! {
    /// AdaGrad (R74).
    AdaGrad, learning_rate = 0.01;
    /// Added to the history under the root (default 1e-7).
    @"number" eps: f64 = 1e-7,
}

params! {
    /// RMSProp: Tieleman and Hinton's, or Graves's centered version (R75).
    RmsProp, learning_rate = 0.001;
    /// Decay of the squared-gradient average (default 0.9).
    @"number" gamma1: f64 = 0.9,
    /// Momentum of the centered version's step (default 0.9).
    @"number" gamma2: f64 = 0.9,
    /// Added under the root (default 1e-8).
    @"number" epsilon: f64 = 1e-8,
    /// Graves's centered version (default false).
    centered: bool = false,
    /// Clip of the new weight to `[-c, c]`; `None` for no clipping.
    @"number::option" clip_weights: Option<f64> = None,
}

params! {
    /// FTRL-proximal (R76).
    Ftrl, learning_rate = 0.1;
    /// L1 regularisation (default 0.01).
    @"number" lamda1: f64 = 0.01,
    /// Per-coordinate rate offset (default 1).
    @"number" beta: f64 = 1.0,
}
