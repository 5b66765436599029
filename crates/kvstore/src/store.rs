//! `KvStore`: the handle users call.

use crate::args::{Inputs, Outputs, RowIds};
use crate::array::NdArray;
use crate::normalize::{normalize, Keys};
use kvstore_spec::codec::Compression;
use kvstore_spec::kind::{Kind, StoreClass};
use kvstore_spec::optimizer::Optimizer;
use kvstore_spec::store::LocalStore;
use kvstore_spec::updater::Updater;
use kvstore_spec::{Error, Key, Result, Value};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Options of a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullOptions {
    /// Scheduling hint; never changes a value (R24).
    pub priority: i32,
    /// Leave row_sparse outputs untouched (default `true`, R28).
    pub ignore_sparse: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            priority: 0,
            ignore_sparse: true,
        }
    }
}

/// Creates a store of the given kind (R1, R2, R6).
///
/// Single-process kinds (`local`, `device`, `nccl`, and any name without `dist`) are available
/// here. Distributed kinds need the distributed runtime and are refused with
/// [`Error::UnsupportedKind`] until it exists.
///
/// ```
/// let kv = kvstore::create("Device")?;
/// assert_eq!(kv.kind(), "device");
/// # Ok::<(), kvstore::Error>(())
/// ```
pub fn create(kind: &str) -> Result<KvStore> {
    let kind = Kind::parse(kind)?;
    if kind.class() == StoreClass::Dist {
        return Err(Error::UnsupportedKind {
            kind: kind.name().into(),
            reason: "distributed stores need the distributed runtime, which this build does not include yet".into(),
        });
    }
    Ok(KvStore {
        inner: Mutex::new(LocalStore::new(kind.clone())?),
        kind,
    })
}

/// A key/value store for parameter synchronisation. `Send + Sync`: share it across threads.
///
/// ```
/// use kvstore::{NdArray, Tensor, DType, Device};
/// let kv = kvstore::create("local")?;
/// kv.init(3, Tensor::full([2, 3], DType::F32, 1.0)?)?;
/// // Two devices push gradients for key 3; the store keeps their sum.
/// let g = |d| Tensor::full([2, 3], DType::F32, 2.0).map(|t| t.on(Device::Cpu(d)));
/// kv.push(3, vec![g(0)?, g(1)?])?;
/// let out = NdArray::zeros([2, 3], DType::F32)?;
/// kv.pull(3, &out)?;
/// assert_eq!(out.to_f32(), vec![4.0; 6]);
/// # Ok::<(), kvstore::Error>(())
/// ```
#[derive(Debug)]
pub struct KvStore {
    kind: Kind,
    inner: Mutex<LocalStore>,
}

impl KvStore {
    fn store(&self) -> MutexGuard<'_, LocalStore> {
        // Every operation commits by replacing the whole store at its end (a transaction), so a
        // panic inside one cannot leave a half-applied state behind the lock.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs an operation that fills outputs: it sees each output's current content and returns
    /// each one's new content, which is written only when the whole call succeeded (R7).
    fn fill(
        &self,
        outs: &[(Key, NdArray)],
        op: impl FnOnce(&mut LocalStore, &[(Key, Value)]) -> Result<Vec<Value>>,
    ) -> Result<()> {
        let current: Vec<(Key, Value)> = outs.iter().map(|(k, a)| (k.clone(), a.value())).collect();
        let values = op(&mut self.store(), &current)?;
        for ((_, array), value) in outs.iter().zip(values) {
            array.set(value);
        }
        Ok(())
    }

    /// The store kind, lower-cased, as MXNet's `type` (R1).
    pub fn kind(&self) -> &str {
        self.kind.name()
    }

    /// This worker's rank: 0 for single-process kinds (R5).
    pub fn rank(&self) -> usize {
        0
    }

    /// Number of workers: 1 for single-process kinds (R5).
    pub fn num_workers(&self) -> usize {
        1
    }

    /// Whether the store has a capability; only `"optimizer"` is known (R4).
    pub fn is_capable(&self, capability: &str) -> Result<bool> {
        self.kind.is_capable(capability)
    }

    /// Stores a copy of each value under its key (R12, R13).
    pub fn init(&self, keys: impl Into<Keys>, values: impl Into<Inputs>) -> Result<()> {
        let pairs = normalize(keys.into(), values.into())?;
        self.store().init(&pairs)
    }

    /// Pushes values: per key, the sum over all values given for it replaces the stored value,
    /// or goes to the updater (R15-R22).
    pub fn push(&self, keys: impl Into<Keys>, values: impl Into<Inputs>) -> Result<()> {
        self.push_with_priority(keys, values, 0)
    }

    /// [`KvStore::push`] with a scheduling priority (R24).
    pub fn push_with_priority(
        &self,
        keys: impl Into<Keys>,
        values: impl Into<Inputs>,
        _priority: i32,
    ) -> Result<()> {
        let pairs = normalize(keys.into(), values.into())?;
        self.store().push(&pairs)
    }

    /// Copies each key's value into its outputs (R25-R29).
    pub fn pull(&self, keys: impl Into<Keys>, outs: impl Into<Outputs>) -> Result<()> {
        self.pull_with(keys, outs, PullOptions::default())
    }

    /// [`KvStore::pull`] with options.
    pub fn pull_with(
        &self,
        keys: impl Into<Keys>,
        outs: impl Into<Outputs>,
        options: PullOptions,
    ) -> Result<()> {
        let outs = normalize(keys.into(), outs.into())?;
        self.fill(&outs, |s, current| s.pull(current, options.ignore_sparse))
    }

    /// Pulls only the rows `row_ids` into row_sparse outputs (R30-R33).
    pub fn row_sparse_pull(
        &self,
        keys: impl Into<Keys>,
        outs: impl Into<Outputs>,
        row_ids: impl Into<RowIds>,
    ) -> Result<()> {
        self.row_sparse_pull_with_priority(keys, outs, row_ids, 0)
    }

    /// [`KvStore::row_sparse_pull`] with a scheduling priority (R24).
    pub fn row_sparse_pull_with_priority(
        &self,
        keys: impl Into<Keys>,
        outs: impl Into<Outputs>,
        row_ids: impl Into<RowIds>,
        _priority: i32,
    ) -> Result<()> {
        let outs = normalize(keys.into(), outs.into())?;
        let row_ids = row_ids.into().0;
        self.fill(&outs, |s, current| s.row_sparse_pull(current, &row_ids))
    }

    /// Pushes `values`, then pulls into `outs`, as one call (R34). Pass the value handles as
    /// `outs` to update them in place.
    pub fn pushpull(
        &self,
        keys: impl Into<Keys>,
        values: impl Into<Inputs>,
        outs: impl Into<Outputs>,
    ) -> Result<()> {
        let keys = keys.into();
        let pairs = normalize(keys.clone(), values.into())?;
        let outs = normalize(keys, outs.into())?;
        self.fill(&outs, |s, current| s.pushpull(&pairs, current))
    }

    /// Initialises keys with `values`, then pulls them into `outs`, as one call (R34).
    pub fn broadcast(
        &self,
        keys: impl Into<Keys>,
        values: impl Into<Inputs>,
        outs: impl Into<Outputs>,
    ) -> Result<()> {
        let keys = keys.into();
        let pairs = normalize(keys.clone(), values.into())?;
        let outs = normalize(keys, outs.into())?;
        self.fill(&outs, |s, current| s.broadcast(&pairs, current))
    }

    /// Turns on 2-bit or 1-bit gradient compression (R3, R37-R44).
    ///
    /// ```
    /// use kvstore::{Compression, CompressionType};
    /// let kv = kvstore::create("device")?;
    /// kv.set_gradient_compression(Compression::new(CompressionType::TwoBit, 0.5)?)?;
    /// assert!(kvstore::create("local")?
    ///     .set_gradient_compression(Compression::from_params([("type", "2bit")])?)
    ///     .is_err());
    /// # Ok::<(), kvstore::Error>(())
    /// ```
    pub fn set_gradient_compression(&self, compression: Compression) -> Result<()> {
        self.store().set_gradient_compression(compression)
    }

    /// Runs `optimizer` on every push (R45, R46).
    pub fn set_optimizer(&self, optimizer: Optimizer) -> Result<()> {
        self.store().set_optimizer(optimizer)
    }

    /// Runs `updater(key, merged, stored)` on every push (R21, R22).
    pub fn set_updater(&self, updater: impl Updater + 'static) {
        self.store().set_updater(Box::new(updater));
    }

    /// Waits for every worker; nothing to wait for in a single process (R5).
    pub fn barrier(&self) -> Result<()> {
        Ok(())
    }

    /// Sends a command to the servers; single-process stores have none (R5).
    pub fn send_command_to_servers(&self, _head: i32, _body: &str) -> Result<()> {
        Ok(())
    }

    /// Waits for every pending operation; calls run synchronously for now.
    pub fn wait_all(&self) -> Result<()> {
        Ok(())
    }

    /// Writes the optimizer states (and the optimizer when `dump_optimizer`) to `path` (R47).
    pub fn save_optimizer_states(
        &self,
        path: impl AsRef<Path>,
        dump_optimizer: bool,
    ) -> Result<()> {
        let bytes = self.store().save_optimizer_states(dump_optimizer)?;
        std::fs::write(path.as_ref(), bytes).map_err(|e| io_error(path.as_ref(), &e))
    }

    /// Restores optimizer states written by [`KvStore::save_optimizer_states`] (R47).
    pub fn load_optimizer_states(&self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = std::fs::read(path.as_ref()).map_err(|e| io_error(path.as_ref(), &e))?;
        self.store().load_optimizer_states(&bytes)
    }

    /// A copy of what a key holds now, for inspection and tests.
    pub fn value_of(&self, key: impl Into<Key>) -> Option<Value> {
        self.store().value(&key.into()).cloned()
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}
