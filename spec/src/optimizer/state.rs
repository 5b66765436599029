//! Per-key optimizer states and the updater `set_optimizer` installs (R46, R47, R70).

use super::saved::{self, Saved};
use super::Optimizer;
use crate::error::Result;
use crate::key::Key;
use crate::updater::{UpdateError, Updater};
use crate::value::{Tensor, Value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A key's optimizer state (R70): how many updates the key has had, and the optimizer's state
/// tensors, each shaped like the weight (SGD and NAG: the momentum, when it is not 0; Adam:
/// mean and variance; AdaGrad: the history; RMSProp: `n`, and `g` and `delta` when centered;
/// FTRL: `z` and `n`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Updates applied to the key (Adam's `t`).
    pub updates: u64,
    /// The state tensors, in the order above.
    pub slots: Vec<Tensor>,
}

impl State {
    /// A state holding only a momentum buffer (or nothing), as SGD keeps.
    pub fn momentum(updates: u64, momentum: Option<Tensor>) -> State {
        State {
            updates,
            slots: momentum.into_iter().collect(),
        }
    }
}

/// An optimizer with its per-key states: the updater `set_optimizer` installs.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerUpdater {
    optimizer: Optimizer,
    states: BTreeMap<Key, State>,
}

impl OptimizerUpdater {
    /// A validated optimizer with no states yet.
    pub fn new(optimizer: Optimizer) -> Result<Self> {
        Self::with_states(optimizer, BTreeMap::new())
    }

    /// An optimizer with the given per-key states (what a backend that keeps states beside
    /// its keys reports).
    pub fn with_states(optimizer: Optimizer, states: BTreeMap<Key, State>) -> Result<Self> {
        optimizer.validate()?;
        Ok(OptimizerUpdater { optimizer, states })
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// The per-key states.
    pub fn states(&self) -> &BTreeMap<Key, State> {
        &self.states
    }

    /// The states (each with its update count), and the optimizer too when `dump_optimizer`
    /// (R47).
    pub fn save(&self, dump_optimizer: bool) -> Result<Vec<u8>> {
        saved::write(&Saved {
            states: self.states.clone(),
            optimizer: dump_optimizer.then(|| self.optimizer.clone()),
        })
    }

    /// Replaces the states, and the optimizer when the saved bytes carry one (R47).
    pub fn load(&mut self, bytes: &[u8]) -> Result<()> {
        let loaded = saved::read_saved(bytes)?;
        if let Some(optimizer) = loaded.optimizer {
            self.optimizer = optimizer;
        }
        self.states = loaded.states;
        Ok(())
    }
}

impl Updater for OptimizerUpdater {
    fn update(&mut self, key: &Key, merged: &Value, stored: &mut Value) -> Result<(), UpdateError> {
        let mut state = self.optimizer.state_for(self.states.get(key), stored)?;
        self.optimizer.update(&mut state, merged, stored)?;
        self.states.insert(key.clone(), state);
        Ok(())
    }

    fn box_clone(&self) -> Box<dyn Updater> {
        Box::new(self.clone())
    }
}
