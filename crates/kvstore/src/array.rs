//! `NdArray`: a shared handle to a value, the type pulls write into.
//!
//! Cloning a handle shares the value, as an MXNet NDArray does; what a pull writes is seen
//! through every clone. Reads go through [`NdArray::value`], which is where an asynchronous
//! engine makes the caller wait for pending writes.

use kvstore_spec::{DType, Device, Result, RowSparse, StorageType, Tensor, Value};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A shared, mutable handle to a [`Value`].
///
/// ```
/// use kvstore::{NdArray, Tensor};
/// let a = NdArray::new(Tensor::new([2], vec![1.0f32, 2.0])?);
/// let b = a.clone();
/// b.set(Tensor::new([2], vec![5.0f32, 6.0])?);
/// assert_eq!(a.to_f32(), vec![5.0, 6.0]);
/// # Ok::<(), kvstore::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct NdArray {
    value: Arc<Mutex<Value>>,
}

impl NdArray {
    /// A handle holding `value`.
    pub fn new(value: impl Into<Value>) -> NdArray {
        NdArray {
            value: Arc::new(Mutex::new(value.into())),
        }
    }

    /// A dense float32 array on `cpu(0)`.
    pub fn from_f32(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Result<NdArray> {
        Ok(NdArray::new(Tensor::new(shape, data)?))
    }

    /// A dense array of zeros: the usual pull output.
    pub fn zeros(shape: impl Into<Vec<usize>>, dtype: DType) -> Result<NdArray> {
        Ok(NdArray::new(Tensor::zeros(shape, dtype)?))
    }

    /// An empty row_sparse array: the usual `row_sparse_pull` output.
    pub fn row_sparse(shape: impl Into<Vec<usize>>, dtype: DType) -> Result<NdArray> {
        Ok(NdArray::new(RowSparse::empty(shape, dtype)?))
    }

    /// The same handle's value moved to `device` (a new handle).
    pub fn on(&self, device: Device) -> NdArray {
        NdArray::new(self.value().on(device))
    }

    fn lock(&self) -> MutexGuard<'_, Value> {
        // A panic while holding the lock cannot leave a half-written value: writes replace the
        // whole value in one assignment.
        self.value.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the current value.
    pub fn value(&self) -> Value {
        self.lock().clone()
    }

    /// Replaces the value (what `a[:] = ...` does in MXNet).
    pub fn set(&self, value: impl Into<Value>) {
        *self.lock() = value.into();
    }

    /// Waits until every pending write to this array is done, and reports its error if one
    /// failed. Calls run synchronously for now, so there is never anything to wait for.
    pub fn wait(&self) -> Result<()> {
        Ok(())
    }

    /// The dense equivalent as float32.
    pub fn to_f32(&self) -> Vec<f32> {
        self.lock().to_f32()
    }

    /// The shape.
    pub fn shape(&self) -> Vec<usize> {
        self.lock().shape().to_vec()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.lock().dtype()
    }

    /// Dense or row_sparse.
    pub fn stype(&self) -> StorageType {
        self.lock().stype()
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.lock().device()
    }

    /// Whether two handles share one value.
    pub fn same_array(&self, other: &NdArray) -> bool {
        Arc::ptr_eq(&self.value, &other.value)
    }
}

impl From<Tensor> for NdArray {
    fn from(t: Tensor) -> Self {
        NdArray::new(t)
    }
}

impl From<RowSparse> for NdArray {
    fn from(r: RowSparse) -> Self {
        NdArray::new(r)
    }
}

impl From<Value> for NdArray {
    fn from(v: Value) -> Self {
        NdArray::new(v)
    }
}
