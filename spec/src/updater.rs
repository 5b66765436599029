//! Updaters: what a push does to the stored value when one is set (R21, R22).

use crate::error::{Error, Result};
use crate::key::Key;
use crate::optimizer::OptimizerUpdater;
use crate::value::Value;
use std::fmt;

/// Why an updater refused an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateError(pub String);

impl fmt::Display for UpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UpdateError {}

impl From<&str> for UpdateError {
    fn from(s: &str) -> Self {
        UpdateError(s.to_owned())
    }
}

impl From<String> for UpdateError {
    fn from(s: String) -> Self {
        UpdateError(s)
    }
}

/// Applies a merged gradient to a key's stored value, in place.
///
/// Called once per distinct key of a push, in key order (R16). The store hands the updater a
/// copy of the stored value and keeps it only when the whole push succeeds; it also clones the
/// updater before the push and restores the clone when the push fails, so an updater's own
/// state rolls back with the store (R22).
///
/// Any `FnMut(&Key, &Value, &mut Value) -> Result<(), UpdateError> + Clone + Send` closure is an
/// updater:
/// ```
/// use kvstore_spec::{updater::{Updater, UpdateError}, Key, Tensor, Value};
/// let mut add = |_: &Key, merged: &Value, stored: &mut Value| -> Result<(), UpdateError> {
///     let sum: Vec<f32> = stored.to_f32().iter().zip(merged.to_f32()).map(|(s, m)| s + m).collect();
///     *stored = Value::Dense(Tensor::new(stored.shape().to_vec(), sum).map_err(|e| UpdateError(e.to_string()))?);
///     Ok(())
/// };
/// let mut stored = Value::Dense(Tensor::new([2], vec![1.0f32, 1.0])?);
/// add.update(&Key::Int(3), &Value::Dense(Tensor::new([2], vec![2.0f32, 3.0])?), &mut stored)?;
/// assert_eq!(stored.to_f32(), vec![3.0, 4.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Updater: Send {
    /// Updates `stored` with `merged`, the device-order sum of the push's values for `key`.
    fn update(&mut self, key: &Key, merged: &Value, stored: &mut Value) -> Result<(), UpdateError>;

    /// A copy of this updater with its state, for rollback.
    fn box_clone(&self) -> Box<dyn Updater>;
}

impl<F> Updater for F
where
    F: FnMut(&Key, &Value, &mut Value) -> Result<(), UpdateError> + Clone + Send + 'static,
{
    fn update(&mut self, key: &Key, merged: &Value, stored: &mut Value) -> Result<(), UpdateError> {
        self(key, merged, stored)
    }

    fn box_clone(&self) -> Box<dyn Updater> {
        Box::new(self.clone())
    }
}

impl Clone for Box<dyn Updater> {
    fn clone(&self) -> Self {
        self.box_clone()
    }
}

impl fmt::Debug for dyn Updater {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<updater>")
    }
}

/// The updater a store applies: an optimizer from `set_optimizer`, or a custom one.
#[derive(Debug, Clone)]
pub enum UpdaterSlot {
    /// Installed by `set_optimizer`; its states can be saved and loaded.
    Optimizer(OptimizerUpdater),
    /// Installed by `set_updater`.
    Custom(Box<dyn Updater>),
}

impl UpdaterSlot {
    /// The stored value after updating a copy of `stored` with `merged` (R21, R22).
    ///
    /// On error the updater's state may have moved; callers run this inside a transaction that
    /// discards the whole store copy, updater included.
    pub fn apply(&mut self, key: &Key, merged: &Value, stored: &Value) -> Result<Value> {
        let updater: &mut dyn Updater = match self {
            UpdaterSlot::Optimizer(o) => o,
            UpdaterSlot::Custom(u) => u.as_mut(),
        };
        let mut next = stored.clone();
        updater
            .update(key, merged, &mut next)
            .map_err(|e| Error::Updater {
                key: key.clone(),
                message: e.0,
            })?;
        if stored.shape() != next.shape() || stored.dtype() != next.dtype() {
            return Err(Error::Updater {
                key: key.clone(),
                message: format!(
                    "the updater changed the stored value from {:?} {} to {:?} {}",
                    stored.shape(),
                    stored.dtype(),
                    next.shape(),
                    next.dtype()
                ),
            });
        }
        Ok(next)
    }
}
