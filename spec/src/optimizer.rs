//! Optimizers installed by `set_optimizer`, and their saved states (R45-R47).

use crate::error::{Error, Result};
use crate::key::Key;
use crate::updater::{UpdateError, Updater};
use crate::value::{Data, Tensor, Value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An optimizer a store can run as its updater.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Optimizer {
    /// Stochastic gradient descent, optionally with momentum.
    Sgd(Sgd),
}

/// SGD parameters, with MXNet's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sgd {
    /// Step size (default 0.01).
    pub learning_rate: f32,
    /// Momentum; 0 keeps no state (default 0).
    pub momentum: f32,
    /// Weight decay (default 0).
    pub wd: f32,
    /// Factor applied to the gradient first (default 1).
    pub rescale_grad: f32,
    /// Clip of the rescaled gradient to `[-c, c]`; `None` for no clipping.
    pub clip_gradient: Option<f32>,
}

impl Default for Sgd {
    fn default() -> Self {
        Sgd {
            learning_rate: 0.01,
            momentum: 0.0,
            wd: 0.0,
            rescale_grad: 1.0,
            clip_gradient: None,
        }
    }
}

impl Optimizer {
    /// Checks the parameters: every number finite, a clip bound non-negative (R45).
    pub fn validate(&self) -> Result<()> {
        let Optimizer::Sgd(p) = self;
        let numbers = [p.learning_rate, p.momentum, p.wd, p.rescale_grad];
        if let Some(x) = numbers
            .iter()
            .chain(p.clip_gradient.iter())
            .find(|x| !x.is_finite())
        {
            return Err(Error::InvalidOptimizer {
                reason: format!("sgd parameters must be finite, got {x}"),
            });
        }
        match p.clip_gradient {
            Some(c) if c < 0.0 => Err(Error::InvalidOptimizer {
                reason: format!("clip_gradient must be >= 0, got {c}"),
            }),
            _ => Ok(()),
        }
    }
}

/// Per-key optimizer state: the momentum buffer, when the optimizer keeps one.
pub type State = Option<Tensor>;

impl Optimizer {
    /// Whether a key's state fits a weight of `shape`: a state loaded from a file may not.
    pub fn check_state(&self, state: &Option<State>, shape: &[usize]) -> Result<(), UpdateError> {
        match state {
            Some(Some(m)) if m.shape() != shape => Err(UpdateError(format!(
                "momentum state of shape {:?} for a weight of shape {:?}",
                m.shape(),
                shape
            ))),
            _ => Ok(()),
        }
    }

    /// One update of `stored` with the merged gradient (R46). `state` is the key's entry in the
    /// states map: `None` before the key's first update, which creates it. On error nothing
    /// changes.
    pub fn update(
        &self,
        state: &mut Option<State>,
        merged: &Value,
        stored: &mut Value,
    ) -> Result<(), UpdateError> {
        let Optimizer::Sgd(p) = self;
        let weight = stored.to_dense();
        let current = match state {
            Some(state) => state.clone(),
            None => (p.momentum != 0.0)
                .then(|| Tensor::zeros(weight.shape().to_vec(), weight.dtype()))
                .transpose()
                .map_err(|e| UpdateError(e.to_string()))?,
        };
        self.check_state(state, weight.shape())?;
        let (new_weight, new_state) = sgd_step(p, &weight, current.as_ref(), merged);
        *stored = Value::Dense(new_weight.on(stored.device()));
        *state = Some(new_state);
        Ok(())
    }
}

/// An optimizer with its per-key states: the updater `set_optimizer` installs.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerUpdater {
    optimizer: Optimizer,
    states: BTreeMap<Key, State>,
}

/// What `save_optimizer_states` writes.
#[derive(Debug, Serialize, Deserialize)]
struct SavedStates {
    format: String,
    version: u32,
    states: Vec<(Key, State)>,
    optimizer: Option<Optimizer>,
}

const FORMAT: &str = "kvstore-optimizer-states";
const VERSION: u32 = 1;

impl OptimizerUpdater {
    /// A validated optimizer with no states yet.
    pub fn new(optimizer: Optimizer) -> Result<Self> {
        optimizer.validate()?;
        Ok(OptimizerUpdater {
            optimizer,
            states: BTreeMap::new(),
        })
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// The per-key states.
    pub fn states(&self) -> &BTreeMap<Key, State> {
        &self.states
    }

    /// An optimizer with the given per-key states (what a backend that keeps states beside its
    /// keys reports).
    pub fn with_states(optimizer: Optimizer, states: BTreeMap<Key, State>) -> Result<Self> {
        optimizer.validate()?;
        Ok(OptimizerUpdater { optimizer, states })
    }

    /// The states, and the optimizer too when `dump_optimizer` (R47).
    pub fn save(&self, dump_optimizer: bool) -> Result<Vec<u8>> {
        let saved = SavedStates {
            format: FORMAT.into(),
            version: VERSION,
            states: self
                .states
                .iter()
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect(),
            optimizer: dump_optimizer.then(|| self.optimizer.clone()),
        };
        serde_json::to_vec(&saved).map_err(|e| Error::InvalidState {
            reason: e.to_string(),
        })
    }

    /// Replaces the states, and the optimizer when the saved bytes carry one (R47).
    pub fn load(&mut self, bytes: &[u8]) -> Result<()> {
        let (states, optimizer) = read_saved(bytes)?;
        if let Some(optimizer) = optimizer {
            self.optimizer = optimizer;
        }
        self.states = states;
        Ok(())
    }
}

/// What saved states hold (R47): the per-key states, and the optimizer (validated) when they
/// were saved with `dump_optimizer`. Unreadable bytes are `InvalidState`.
pub fn read_saved(bytes: &[u8]) -> Result<(BTreeMap<Key, State>, Option<Optimizer>)> {
    let saved: SavedStates = serde_json::from_slice(bytes).map_err(|e| Error::InvalidState {
        reason: e.to_string(),
    })?;
    if saved.format != FORMAT || saved.version != VERSION {
        return Err(Error::InvalidState {
            reason: format!(
                "expected {FORMAT} version {VERSION}, found {} version {}",
                saved.format, saved.version
            ),
        });
    }
    if let Some(optimizer) = &saved.optimizer {
        optimizer.validate()?;
    }
    Ok((saved.states.into_iter().collect(), saved.optimizer))
}

impl Updater for OptimizerUpdater {
    fn update(&mut self, key: &Key, merged: &Value, stored: &mut Value) -> Result<(), UpdateError> {
        let mut state = self.states.get(key).cloned();
        self.optimizer.update(&mut state, merged, stored)?;
        self.states.insert(key.clone(), state.flatten());
        Ok(())
    }

    fn box_clone(&self) -> Box<dyn Updater> {
        Box::new(self.clone())
    }
}

/// One SGD step (R46), following MXNet 1.9.1's kernels operation by operation, in the weight's
/// dtype; only the rows a row_sparse gradient lists are touched (MXNet's default lazy update).
fn sgd_step(
    p: &Sgd,
    weight: &Tensor,
    momentum: Option<&Tensor>,
    grad: &Value,
) -> (Tensor, Option<Tensor>) {
    let dtype = weight.dtype();
    // Every operation, and every parameter, is rounded to the weight's dtype: MXNet's kernels
    // run in the weight's type (half types compute each operation in float and round it).
    let r = |x: f64| dtype.round(x);
    let param = |x: f32| r(f64::from(x));
    let (lr, wd, rescale, mu) = (
        param(p.learning_rate),
        param(p.wd),
        param(p.rescale_grad),
        param(p.momentum),
    );
    // `lr * g'`: the kernels multiply `(lr * rescale) * g` without clipping, `lr * clip(rescale * g)` with it.
    let step = |g: f64| match p.clip_gradient {
        None => r(r(lr * rescale) * g),
        Some(c) => r(lr * r(rescale * g).clamp(-param(c), param(c))),
    };
    let decay = r(1.0 - r(lr * wd));
    let mut w = weight.data().to_f64();
    let mut m = momentum.map(|t| t.data().to_f64());
    let g = grad.to_dense().data().to_f64();
    let sparse = matches!(grad, Value::RowSparse(_));
    for i in touched(grad) {
        let lr_g = step(g[i]);
        match m.as_mut() {
            // MXNet's row_sparse kernel decays the weight first.
            None if sparse => w[i] = r(r(decay * w[i]) - lr_g),
            // Its dense kernel (multi_sgd_update) is the momentum step from a zero momentum.
            None => w[i] = r(w[i] + r(-r(r(lr * wd) * w[i]) - lr_g)),
            Some(m) => {
                m[i] = r(r(r(mu * m[i]) - r(r(lr * wd) * w[i])) - lr_g);
                w[i] = r(w[i] + m[i]);
            }
        }
    }
    let rebuild = |xs: &[f64]| tensor_like(weight, Data::from_f64(dtype, xs));
    (rebuild(&w), m.as_deref().map(rebuild))
}

/// Element indices a gradient updates: all for dense, the listed rows for row_sparse.
fn touched(grad: &Value) -> Vec<usize> {
    match grad {
        Value::Dense(t) => (0..t.data().len()).collect(),
        Value::RowSparse(rs) => {
            let row_len = rs.row_len();
            rs.ids()
                .iter()
                .flat_map(|&id| id as usize * row_len..(id as usize + 1) * row_len)
                .collect()
        }
    }
}

fn tensor_like(like: &Tensor, data: Data) -> Tensor {
    // Same shape and element count by construction, so `new` cannot fail; keep the original
    // rather than panic if it ever did.
    Tensor::new(like.shape().to_vec(), data).unwrap_or_else(|_| like.clone())
}
