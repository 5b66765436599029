//! `NdArray`: a shared handle to a value, the type pulls write into and pushes can read from.
//!
//! Cloning a handle shares the value, as an MXNet NDArray does; what a pull writes is seen
//! through every clone. Each array owns an engine variable: a pull into it is a write, a push
//! from it a read, so the engine orders them with every other operation on the array, and
//! reads by the caller ([`NdArray::value`], [`NdArray::to_f32`]) wait for pending writes.

use kvstore_engine::{OpPanicked, Var};
use kvstore_spec::{DType, Device, Error, Result, RowSparse, StorageType, Tensor, Value};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// An error raised while an operation ran on the engine, carried to the next wait.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure(pub Error);

impl From<OpPanicked> for Failure {
    fn from(p: OpPanicked) -> Self {
        Failure(Error::OperationPanicked { message: p.0 })
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(e)
    }
}

/// An engine variable whose errors are store errors.
pub(crate) type EngineVar = Var<Failure>;

#[derive(Debug)]
struct Shared {
    /// The value behind an `Arc`: an operation that reads the array takes a snapshot (a
    /// pointer copy); a write updates in place when no snapshot is alive.
    value: Mutex<Arc<Value>>,
    var: EngineVar,
}

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
    shared: Arc<Shared>,
}

impl NdArray {
    /// A handle holding `value`.
    pub fn new(value: impl Into<Value>) -> NdArray {
        NdArray {
            shared: Arc::new(Shared {
                value: Mutex::new(Arc::new(value.into())),
                var: EngineVar::new(),
            }),
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

    fn lock(&self) -> MutexGuard<'_, Arc<Value>> {
        // Writes replace or update the value while holding the lock and never panic half-way
        // through a value's invariants, so a poisoned lock still holds a valid value.
        self.shared
            .value
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The value now, without waiting for pending operations (their metadata never changes
    /// what shape, dtype, storage type or device the array has).
    pub(crate) fn snapshot(&self) -> Arc<Value> {
        Arc::clone(&self.lock())
    }

    /// Runs `f` on the value for writing; used by engine operations, which the engine has
    /// already given exclusive access to the array.
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(&mut Value) -> R) -> R {
        let mut guard = self.lock();
        f(Arc::make_mut(&mut guard))
    }

    /// The value's lock, for an engine operation that writes several arrays at once.
    pub(crate) fn lock_for_write(&self) -> MutexGuard<'_, Arc<Value>> {
        self.lock()
    }

    pub(crate) fn var(&self) -> &EngineVar {
        &self.shared.var
    }

    /// A copy of the value, once every pending write to the array is done.
    pub fn value(&self) -> Value {
        self.shared.var.wait_idle();
        Value::clone(&self.snapshot())
    }

    /// Replaces the value (what `a[:] = ...` does in MXNet), after every pending operation on
    /// the array is done.
    pub fn set(&self, value: impl Into<Value>) {
        self.shared.var.wait_idle();
        *self.lock() = Arc::new(value.into());
    }

    /// Waits until every pending operation on this array is done, and reports the earliest
    /// error one of them raised (once; later errors stay for the next wait).
    pub fn wait(&self) -> Result<()> {
        self.shared.var.wait().map_err(|f| f.0)
    }

    /// The dense equivalent as float32, once pending writes are done.
    pub fn to_f32(&self) -> Vec<f32> {
        self.shared.var.wait_idle();
        self.snapshot().to_f32()
    }

    /// The shape.
    pub fn shape(&self) -> Vec<usize> {
        self.snapshot().shape().to_vec()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.snapshot().dtype()
    }

    /// Dense or row_sparse.
    pub fn stype(&self) -> StorageType {
        self.snapshot().stype()
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.snapshot().device()
    }

    /// Whether two handles share one value.
    pub fn same_array(&self, other: &NdArray) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
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
