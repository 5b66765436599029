//! What the store keeps per key: fixed metadata read at queue time, and the data the engine
//! gives operations exclusive (writes) or shared (reads) access to.

use crate::array::EngineVar;
use kvstore_spec::optimizer::State;
use kvstore_spec::{DType, Device, Key, Tensor, Value};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A compression residual of a key belongs to a device and that device's occurrence in the
/// pushed list (R42).
pub(crate) type ResidualId = (Device, usize);

/// One key. `key`, `shape`, `dtype` and `seq` never change after init; `data` changes only
/// inside engine operations that hold the key's variable.
#[derive(Debug)]
pub(crate) struct Slot {
    pub key: Key,
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// Position in init order; orders string keys (R16).
    pub seq: i64,
    pub var: EngineVar,
    data: Mutex<SlotData>,
}

/// A key's mutable data.
#[derive(Debug)]
pub(crate) struct SlotData {
    /// The stored value.
    pub value: Value,
    /// The merge buffer, reused by every push (after an assign it holds the previous value,
    /// whose storage the next merge reuses).
    pub merge: Value,
    /// Compression residuals, one per (device, occurrence).
    pub residuals: BTreeMap<ResidualId, Vec<f32>>,
    /// The optimizer state: `None` until the key's first optimizer update.
    pub state: Option<State>,
}

/// A tensor with no elements: holds no heap memory, so it is a free placeholder.
pub(crate) fn empty_tensor() -> Tensor {
    Tensor::default_empty()
}

impl Slot {
    pub fn new(key: Key, value: Value, seq: i64, state: Option<State>) -> Slot {
        Slot {
            key,
            shape: value.shape().to_vec(),
            dtype: value.dtype(),
            seq,
            var: EngineVar::new(),
            data: Mutex::new(SlotData {
                merge: Value::Dense(empty_tensor()),
                value,
                residuals: BTreeMap::new(),
                state,
            }),
        }
    }

    /// The key's data. The engine already serialises writers, so the lock is uncontended;
    /// it exists to make that access safe without `unsafe`.
    pub fn data(&self) -> MutexGuard<'_, SlotData> {
        // Operations commit with whole-field assignments after every fallible step, so a
        // poisoned lock (a caught panic) still guards consistent data.
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
