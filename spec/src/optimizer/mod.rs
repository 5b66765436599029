//! Optimizers installed by `set_optimizer`, their per-key states and saved states (R45-R47,
//! R70-R76).
//!
//! ```
//! use kvstore_spec::optimizer::{Adam, Optimizer};
//! use kvstore_spec::{kind::Kind, store::LocalStore, Key, Tensor, Value};
//! let mut kv = LocalStore::new(Kind::parse("local")?)?;
//! let dense = |x: [f32; 2]| Value::Dense(Tensor::new([2], x.to_vec()).unwrap());
//! kv.init(&[(Key::Int(0), dense([1.0, 1.0]))])?;
//! kv.set_optimizer(Optimizer::Adam(Adam { learning_rate: 0.1, ..Adam::default() }))?;
//! kv.push(&[(Key::Int(0), dense([0.5, -0.5]))])?;
//! // Adam's first step moves every weight by about the learning rate, against the gradient.
//! let w = kv.pull(&[(Key::Int(0), dense([0.0, 0.0]))], true)?[0].to_f32();
//! assert!((w[0] - 0.9).abs() < 1e-6 && (w[1] - 1.1).abs() < 1e-6);
//! # Ok::<(), kvstore_spec::Error>(())
//! ```

mod kernels;
mod number;
mod param;
mod params;
mod saved;
pub mod schedule;
mod state;

pub use param::kernel_param;
pub use params::{AdaGrad, Adam, Common, Ftrl, Nag, RmsProp, Sgd};
pub use saved::{read_saved, Saved};
pub use schedule::{LrScheduler, WarmupMode};
pub use state::{OptimizerUpdater, State};

use crate::error::{Error, Result};
use crate::updater::UpdateError;
use crate::value::{DType, Data, Tensor, Value};
use kernels::{Arith, Step};
use serde::{Deserialize, Serialize};

/// An optimizer a store can run as its updater (R70).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Optimizer {
    /// Stochastic gradient descent, optionally with momentum (R46).
    Sgd(Sgd),
    /// Nesterov accelerated gradient (R72).
    Nag(Nag),
    /// Adam (R73).
    Adam(Adam),
    /// AdaGrad (R74).
    AdaGrad(AdaGrad),
    /// RMSProp, plain or centered (R75).
    RmsProp(RmsProp),
    /// FTRL-proximal (R76).
    Ftrl(Ftrl),
}

impl Optimizer {
    /// The optimizer's name, as `set_optimizer`'s JSON spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd(_) => "sgd",
            Optimizer::Nag(_) => "nag",
            Optimizer::Adam(_) => "adam",
            Optimizer::AdaGrad(_) => "adagrad",
            Optimizer::RmsProp(_) => "rmsprop",
            Optimizer::Ftrl(_) => "ftrl",
        }
    }

    /// The parameters every optimizer has.
    pub fn common(&self) -> Common {
        match self {
            Optimizer::Sgd(p) => p.common(),
            Optimizer::Nag(p) => p.common(),
            Optimizer::Adam(p) => p.common(),
            Optimizer::AdaGrad(p) => p.common(),
            Optimizer::RmsProp(p) => p.common(),
            Optimizer::Ftrl(p) => p.common(),
        }
    }

    /// The learning-rate schedule, if any.
    pub fn lr_scheduler(&self) -> Option<&LrScheduler> {
        match self {
            Optimizer::Sgd(p) => p.lr_scheduler.as_ref(),
            Optimizer::Nag(p) => p.lr_scheduler.as_ref(),
            Optimizer::Adam(p) => p.lr_scheduler.as_ref(),
            Optimizer::AdaGrad(p) => p.lr_scheduler.as_ref(),
            Optimizer::RmsProp(p) => p.lr_scheduler.as_ref(),
            Optimizer::Ftrl(p) => p.lr_scheduler.as_ref(),
        }
    }

    /// The optimizer's own numeric parameters, by name, for validation.
    fn own_numbers(&self) -> Vec<(&'static str, f64)> {
        match self {
            Optimizer::Sgd(p) => vec![("momentum", p.momentum)],
            Optimizer::Nag(p) => vec![("momentum", p.momentum)],
            Optimizer::Adam(p) => vec![
                ("beta1", p.beta1),
                ("beta2", p.beta2),
                ("epsilon", p.epsilon),
            ],
            Optimizer::AdaGrad(p) => vec![("eps", p.eps)],
            Optimizer::RmsProp(p) => {
                let mut v = vec![
                    ("gamma1", p.gamma1),
                    ("gamma2", p.gamma2),
                    ("epsilon", p.epsilon),
                ];
                v.extend(p.clip_weights.map(|c| ("clip_weights", c)));
                v
            }
            Optimizer::Ftrl(p) => vec![("lamda1", p.lamda1), ("beta", p.beta)],
        }
    }

    /// Checks the parameters (R45): every number finite, the clip bounds non-negative, the
    /// schedule one MXNet accepts.
    pub fn validate(&self) -> Result<()> {
        let c = self.common();
        let name = self.name();
        let invalid = |reason: String| Err(Error::InvalidOptimizer { reason });
        let shared = [
            ("learning_rate", c.learning_rate),
            ("wd", c.wd),
            ("rescale_grad", c.rescale_grad),
        ];
        let clip = c.clip_gradient.map(|x| ("clip_gradient", x));
        for (field, x) in shared.into_iter().chain(clip).chain(self.own_numbers()) {
            // The kernels take `f32` parameters: one beyond its range is infinite there.
            if !x.is_finite() || !(x as f32).is_finite() {
                return invalid(format!(
                    "{name} parameters must be finite as f32, got {field} = {x}"
                ));
            }
            if field.starts_with("clip") && x < 0.0 {
                return invalid(format!("{field} must be >= 0, got {x}"));
            }
        }
        match self.lr_scheduler().and_then(|s| s.problem(c.learning_rate)) {
            Some(reason) => invalid(reason),
            None => Ok(()),
        }
    }

    /// How many state tensors a key's state holds, each shaped like the weight (R70).
    pub fn slot_count(&self) -> usize {
        match self {
            Optimizer::Sgd(p) => usize::from(p.momentum != 0.0),
            Optimizer::Nag(p) => usize::from(p.momentum != 0.0),
            Optimizer::Adam(_) | Optimizer::Ftrl(_) => 2,
            Optimizer::AdaGrad(_) => 1,
            Optimizer::RmsProp(p) => {
                if p.centered {
                    3
                } else {
                    1
                }
            }
        }
    }

    /// The state of a key before its first update: no updates, zero slots on the weight's
    /// device.
    pub fn fresh_state(&self, weight: &Value) -> Result<State, UpdateError> {
        let zeros = Tensor::zeros(weight.shape().to_vec(), weight.dtype())
            .map_err(|e| UpdateError(e.to_string()))?
            .on(weight.device());
        Ok(State {
            updates: 0,
            slots: vec![zeros; self.slot_count()],
        })
    }

    /// Whether a key's state fits a weight of `shape` and `dtype`: a state loaded from a file
    /// may not.
    pub fn check_state(
        &self,
        state: &State,
        shape: &[usize],
        dtype: DType,
    ) -> Result<(), UpdateError> {
        if state.slots.len() != self.slot_count() {
            return Err(UpdateError(format!(
                "{} keeps {} state tensors per key, the state has {}",
                self.name(),
                self.slot_count(),
                state.slots.len()
            )));
        }
        match state
            .slots
            .iter()
            .find(|t| t.shape() != shape || t.dtype() != dtype)
        {
            Some(t) => Err(UpdateError(format!(
                "a state tensor of shape {:?} {} for a weight of shape {:?} {}",
                t.shape(),
                t.dtype(),
                shape,
                dtype
            ))),
            None => Ok(()),
        }
    }

    /// Whether the optimizer takes a gradient of this storage type: AdaGrad refuses a
    /// row_sparse one when it has weight decay, as MXNet's sparse kernel does (R74).
    pub fn check_gradient(&self, row_sparse: bool) -> Result<(), UpdateError> {
        match self {
            Optimizer::AdaGrad(p) if row_sparse && p.wd != 0.0 => {
                Err(UpdateError(kernels::ADAGRAD_SPARSE_WD.into()))
            }
            _ => Ok(()),
        }
    }

    /// R47: every loaded state of a key the store holds must fit that key's weight (tensor
    /// count, shape, dtype), else `InvalidState` naming the key; states of keys not initialised
    /// are kept and checked at their first update.
    pub fn check_loaded<'a>(
        &self,
        states: impl IntoIterator<Item = (&'a crate::key::Key, &'a State)>,
        weight_of: impl Fn(&crate::key::Key) -> Option<(Vec<usize>, DType)>,
    ) -> crate::error::Result<()> {
        for (key, state) in states {
            if let Some((shape, dtype)) = weight_of(key) {
                self.check_state(state, &shape, dtype)
                    .map_err(|e| Error::InvalidState {
                        reason: format!("key {key}: {}", e.0),
                    })?;
            }
        }
        Ok(())
    }

    /// The learning rate of a key's `updates`-th update (counted from 1), in `f64` (R71),
    /// before any optimizer-specific correction.
    pub fn scheduled_lr(&self, updates: u64) -> f64 {
        let base = self.common().learning_rate;
        self.lr_scheduler().map_or(base, |s| s.rate(base, updates))
    }

    /// The step size the kernels get for a key's `updates`-th update (counted from 1): the
    /// scheduled rate, with Adam's bias correction `sqrt(1 - beta2^t) / (1 - beta1^t)` folded
    /// in as MXNet's Python does (R73).
    pub fn step_lr(&self, updates: u64) -> f64 {
        let lr = self.scheduled_lr(updates);
        match self {
            Optimizer::Adam(p) => {
                let t = updates as f64;
                let coef1 = 1.0 - p.beta1.powf(t);
                let coef2 = 1.0 - p.beta2.powf(t);
                lr * (coef2.sqrt() / coef1)
            }
            _ => lr,
        }
    }

    /// The state a key's next update starts from (R70): its current one, or a fresh one
    /// before its first update, with the update counted.
    pub fn state_for(&self, current: Option<&State>, weight: &Value) -> Result<State, UpdateError> {
        let mut state = match current {
            Some(state) => state.clone(),
            None => self.fresh_state(weight)?,
        };
        state.updates = state.updates.saturating_add(1);
        Ok(state)
    }

    /// One update of `weight` with the merged gradient; `state` comes from
    /// [`Optimizer::state_for`], so it already counts this update. On error nothing changes.
    pub fn update(
        &self,
        state: &mut State,
        merged: &Value,
        weight: &mut Value,
    ) -> Result<(), UpdateError> {
        self.check_state(state, weight.shape(), weight.dtype())?;
        if merged.shape() != weight.shape() {
            return Err(UpdateError(format!(
                "a gradient of shape {:?} for a weight of shape {:?}",
                merged.shape(),
                weight.shape()
            )));
        }
        let sparse = matches!(merged, Value::RowSparse(_));
        self.check_gradient(sparse)?;
        let dtype = weight.dtype();
        let dense = weight.to_dense();
        let mut w = dense.data().to_f64();
        let g = merged.to_dense().data().to_f64();
        let mut slots: Vec<Vec<f64>> = state.slots.iter().map(|t| t.data().to_f64()).collect();
        let (touched, rows) = touched(merged, w.len());
        let row_len = match merged {
            Value::RowSparse(rs) => rs.row_len().max(1),
            Value::Dense(_) => 1,
        };
        let present = |i: usize| !sparse || rows.binary_search(&(i / row_len)).is_ok();
        let step = Step {
            a: Arith(dtype),
            w: &mut w,
            g: &g,
            slots: &mut slots,
            touched: &touched,
            present: &present,
            sparse,
            lr: self.step_lr(state.updates),
        };
        match self {
            Optimizer::Sgd(p) => kernels::sgd(p, step),
            Optimizer::Nag(p) => kernels::nag(p, step),
            Optimizer::Adam(p) => kernels::adam(p, step),
            Optimizer::AdaGrad(p) => kernels::adagrad(p, step),
            Optimizer::RmsProp(p) => kernels::rmsprop(p, step),
            Optimizer::Ftrl(p) => kernels::ftrl(p, step),
        }
        let device = weight.device();
        let rebuild = |xs: &[f64]| tensor_like(&dense, Data::from_f64(dtype, xs)).on(device);
        // States follow their weight's device (MXNet moves loaded states there on first use).
        state.slots = slots.iter().map(|s| rebuild(s)).collect();
        *weight = Value::Dense(rebuild(&w));
        Ok(())
    }
}

/// Element indices a gradient updates lazily (all for dense, the listed rows' for
/// row_sparse), and the listed row ids (sorted, as row_sparse ids are).
fn touched(grad: &Value, len: usize) -> (Vec<usize>, Vec<usize>) {
    match grad {
        Value::Dense(_) => ((0..len).collect(), Vec::new()),
        Value::RowSparse(rs) => {
            let row_len = rs.row_len();
            let rows: Vec<usize> = rs.ids().iter().map(|&id| id as usize).collect();
            let elements = rows
                .iter()
                .flat_map(|&id| id * row_len..(id + 1) * row_len)
                .collect();
            (elements, rows)
        }
    }
}

fn tensor_like(like: &Tensor, data: Data) -> Tensor {
    // Same shape and element count by construction, so `new` cannot fail; keep the original
    // rather than panic if it ever did.
    Tensor::new(like.shape().to_vec(), data).unwrap_or_else(|_| like.clone())
}
