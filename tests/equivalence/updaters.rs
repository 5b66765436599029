//! Custom updaters the suites install with `set_updater`.
//!
//! An engine store shares one updater across keys and may call it for pushes on different keys
//! in any order, so every updater here is a pure function of `(key, merged, stored)`: the spec
//! and the engine then see the same results whatever order the calls come in.

use kvstore::{Data, Key, Tensor, UpdateError, Updater, Value};

/// Which updater, as data: a transition names one and each store builds its own instance.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdaterKind {
    /// `stored + factor * merged` in f32, returned as a dense f32 tensor: a key of another
    /// dtype gets an `Updater` error (an updater may not change the dtype, R22).
    AddF32(f32),
    /// `stored + factor * merged` in f32, rounded back to the stored dtype.
    AddKeepDtype(f32),
    /// `stored + merged`, but refuses every push to one key.
    FailOnKey(Key),
    /// `stored + merged`, but refuses a merged gradient with an element above `bound` in
    /// magnitude (NaN included).
    FailAbove(f32),
}

impl UpdaterKind {
    /// A fresh updater of this kind.
    pub fn build(&self) -> impl Updater + 'static {
        let kind = self.clone();
        move |key: &Key, merged: &Value, stored: &mut Value| kind.update(key, merged, stored)
    }

    fn update(&self, key: &Key, merged: &Value, stored: &mut Value) -> Result<(), UpdateError> {
        let (factor, keep_dtype) = match self {
            UpdaterKind::AddF32(f) => (*f, false),
            UpdaterKind::AddKeepDtype(f) => (*f, true),
            UpdaterKind::FailOnKey(bad) if bad == key => {
                return Err(UpdateError(format!("key {key} is refused")))
            }
            UpdaterKind::FailOnKey(_) => (1.0, true),
            UpdaterKind::FailAbove(bound) => {
                if let Some(x) = merged
                    .to_f32()
                    .into_iter()
                    .find(|x| x.is_nan() || x.abs() > *bound)
                {
                    return Err(UpdateError(format!("gradient element {x} above {bound}")));
                }
                (1.0, true)
            }
        };
        let sum: Vec<f32> = stored
            .to_f32()
            .iter()
            .zip(merged.to_f32())
            .map(|(s, m)| s + factor * m)
            .collect();
        let tensor = if keep_dtype {
            let wide: Vec<f64> = sum.iter().map(|&x| f64::from(x)).collect();
            Tensor::new(
                stored.shape().to_vec(),
                Data::from_f64(stored.dtype(), &wide),
            )
        } else {
            Tensor::new(stored.shape().to_vec(), sum)
        }
        .map_err(|e| UpdateError(e.to_string()))?;
        *stored = Value::Dense(tensor.on(stored.device()));
        Ok(())
    }
}
