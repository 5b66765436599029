//! `KvStore`: the handle users call.

use crate::args::{Inputs, Outputs, RowIds};
use crate::array::NdArray;
use crate::normalize::{normalize, Keys, Values};
use crate::trace::{Op, Recorder, RowIdsArg, UpdaterSpec};
use kvstore_spec::codec::{Compression, CompressionType};
use kvstore_spec::kind::{Kind, StoreClass};
use kvstore_spec::optimizer::Optimizer;
use kvstore_spec::store::LocalStore;
use kvstore_spec::updater::Updater;
use kvstore_spec::{Error, Key, Result, Value};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

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
    KvStore::new(kind)
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
    recorder: Mutex<Option<Recorder>>,
}

/// Runs an operation that fills outputs: it sees each output's current content and returns
/// each one's new content, which is written only when the whole call succeeded (R7).
fn fill(
    store: &mut LocalStore,
    outs: &[(Key, NdArray)],
    op: impl FnOnce(&mut LocalStore, &[(Key, Value)]) -> Result<Vec<Value>>,
) -> Result<()> {
    let current: Vec<(Key, Value)> = outs.iter().map(|(k, a)| (k.clone(), a.value())).collect();
    let values = op(store, &current)?;
    for ((_, array), value) in outs.iter().zip(values) {
        array.set(value);
    }
    Ok(())
}

/// What a trace records of outputs: their current contents.
fn contents(outs: &Outputs) -> Values<Value> {
    outs.as_ref().map(NdArray::value)
}

impl KvStore {
    fn new(kind: Kind) -> Result<KvStore> {
        Ok(KvStore {
            inner: Mutex::new(LocalStore::new(kind.clone())?),
            recorder: Mutex::new(None),
            kind,
        })
    }

    /// Locks the store, records the call when a recording is on, and runs it. Recording under
    /// the store's lock makes the trace's order the order in which calls took effect.
    fn call<T>(
        &self,
        op: impl FnOnce() -> Op,
        run: impl FnOnce(&mut LocalStore) -> Result<T>,
    ) -> Result<T> {
        // Every operation commits by replacing the whole store at its end (a transaction), so a
        // panic inside one cannot leave a half-applied state behind the lock.
        let mut store = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(recorder) = self
            .recorder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            recorder.record(&op());
        }
        run(&mut store)
    }

    /// Starts writing every call to `sink` as a trace (docs/trace-format.md), beginning with a
    /// `create` line for this store's kind. Replaying the trace on a new store reproduces the
    /// calls' results. Custom updaters are recorded by name only and cannot be replayed.
    ///
    /// ```
    /// use kvstore::{DType, NdArray, Tensor};
    /// use std::sync::{Arc, Mutex};
    /// #[derive(Clone, Default)]
    /// struct Shared(Arc<Mutex<Vec<u8>>>);
    /// impl std::io::Write for Shared {
    ///     fn write(&mut self, b: &[u8]) -> std::io::Result<usize> { self.0.lock().unwrap().write(b) }
    ///     fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
    /// }
    /// let kv = kvstore::create("local")?;
    /// let trace = Shared::default();
    /// kv.record(trace.clone());
    /// kv.init(3, Tensor::full([2], DType::F32, 1.0)?)?;
    /// let out = NdArray::zeros([2], DType::F32)?;
    /// kv.pull(3, &out)?;
    /// kv.stop_recording()?;
    /// let text = String::from_utf8(trace.0.lock().unwrap().clone()).unwrap();
    /// let replayed = kvstore::trace::replay_text(&text, None).unwrap();
    /// assert_eq!(replayed[2]["out"]["data"], serde_json::json!([1.0, 1.0]));
    /// # Ok::<(), kvstore::Error>(())
    /// ```
    pub fn record(&self, sink: impl std::io::Write + Send + 'static) {
        let mut recorder = Recorder::new(sink);
        recorder.record(&Op::Create {
            kind: self.kind.name().to_owned(),
        });
        let _store = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        *self.recorder.lock().unwrap_or_else(PoisonError::into_inner) = Some(recorder);
    }

    /// Stops the recording and reports the first error writing it, if any.
    pub fn stop_recording(&self) -> Result<()> {
        let _store = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let recorder = self
            .recorder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match recorder.map(Recorder::finish) {
            Some(Err(e)) => Err(Error::Io {
                path: "<trace>".into(),
                message: e.to_string(),
            }),
            _ => Ok(()),
        }
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
        let (keys, values) = (keys.into(), values.into());
        let op = || Op::Init {
            keys: keys.clone(),
            values: values.clone(),
        };
        self.call(op, |s| s.init(&normalize(keys.clone(), values.clone())?))
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
        priority: i32,
    ) -> Result<()> {
        let (keys, values) = (keys.into(), values.into());
        let op = || Op::Push {
            keys: keys.clone(),
            values: values.clone(),
            priority,
        };
        self.call(op, |s| s.push(&normalize(keys.clone(), values.clone())?))
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
        let (keys, outs) = (keys.into(), outs.into());
        let op = || Op::Pull {
            keys: keys.clone(),
            outs: contents(&outs),
            priority: options.priority,
            ignore_sparse: options.ignore_sparse,
        };
        self.call(op, |s| {
            let outs = normalize(keys.clone(), outs.clone())?;
            fill(s, &outs, |s, current| {
                s.pull(current, options.ignore_sparse)
            })
        })
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
        priority: i32,
    ) -> Result<()> {
        let (keys, outs, row_ids) = (keys.into(), outs.into(), row_ids.into().0);
        let op = || Op::RowSparsePull {
            keys: keys.clone(),
            outs: contents(&outs),
            row_ids: match row_ids.as_slice() {
                [one] => RowIdsArg::One(one.clone()),
                many => RowIdsArg::PerOutput(many.to_vec()),
            },
            priority,
        };
        self.call(op, |s| {
            let outs = normalize(keys.clone(), outs.clone())?;
            fill(s, &outs, |s, current| s.row_sparse_pull(current, &row_ids))
        })
    }

    /// Pushes `values`, then pulls into `outs`, as one call (R34). Pass the value handles as
    /// `outs` to update them in place.
    pub fn pushpull(
        &self,
        keys: impl Into<Keys>,
        values: impl Into<Inputs>,
        outs: impl Into<Outputs>,
    ) -> Result<()> {
        let (keys, values, outs) = (keys.into(), values.into(), outs.into());
        let op = || Op::PushPull {
            keys: keys.clone(),
            values: values.clone(),
            outs: Some(contents(&outs)),
        };
        self.call(op, |s| {
            let pairs = normalize(keys.clone(), values.clone())?;
            let outs = normalize(keys.clone(), outs.clone())?;
            fill(s, &outs, |s, current| s.pushpull(&pairs, current))
        })
    }

    /// Initialises keys with `values`, then pulls them into `outs`, as one call (R34).
    pub fn broadcast(
        &self,
        keys: impl Into<Keys>,
        values: impl Into<Inputs>,
        outs: impl Into<Outputs>,
    ) -> Result<()> {
        let (keys, values, outs) = (keys.into(), values.into(), outs.into());
        let op = || Op::Broadcast {
            keys: keys.clone(),
            values: values.clone(),
            outs: contents(&outs),
        };
        self.call(op, |s| {
            let pairs = normalize(keys.clone(), values.clone())?;
            let outs = normalize(keys.clone(), outs.clone())?;
            fill(s, &outs, |s, current| s.broadcast(&pairs, current))
        })
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
        let op = || Op::SetGradientCompression {
            params: vec![
                (
                    "type".into(),
                    match compression.kind {
                        CompressionType::OneBit => "1bit".into(),
                        CompressionType::TwoBit => "2bit".into(),
                    },
                ),
                ("threshold".into(), format!("{:?}", compression.threshold)),
            ],
        };
        self.call(op, |s| s.set_gradient_compression(compression))
    }

    /// Runs `optimizer` on every push (R45, R46).
    pub fn set_optimizer(&self, optimizer: Optimizer) -> Result<()> {
        let op = || Op::SetOptimizer {
            optimizer: optimizer.clone(),
        };
        self.call(op, |s| s.set_optimizer(optimizer.clone()))
    }

    /// Runs `updater(key, merged, stored)` on every push (R21, R22).
    pub fn set_updater(&self, updater: impl Updater + 'static) {
        let op = || Op::SetUpdater {
            updater: UpdaterSpec::Custom,
        };
        let _ = self.call(op, |s| {
            s.set_updater(Box::new(updater));
            Ok(())
        });
    }

    /// Installs an updater a trace names (trace replay, tests).
    pub(crate) fn set_traced_updater(&self, spec: UpdaterSpec, updater: impl Updater + 'static) {
        let _ = self.call(
            || Op::SetUpdater {
                updater: spec.clone(),
            },
            |s| {
                s.set_updater(Box::new(updater));
                Ok(())
            },
        );
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
        self.call(|| Op::WaitAll, |_| Ok(()))
    }

    /// Writes the optimizer states (and the optimizer when `dump_optimizer`) to `path` (R47).
    pub fn save_optimizer_states(
        &self,
        path: impl AsRef<Path>,
        dump_optimizer: bool,
    ) -> Result<()> {
        let path = path.as_ref();
        let op = || Op::SaveOptimizerStates {
            path: path.display().to_string(),
            dump_optimizer,
        };
        let bytes = self.call(op, |s| s.save_optimizer_states(dump_optimizer))?;
        std::fs::write(path, bytes).map_err(|e| io_error(path, &e))
    }

    /// Restores optimizer states written by [`KvStore::save_optimizer_states`] (R47).
    pub fn load_optimizer_states(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let op = || Op::LoadOptimizerStates {
            path: path.display().to_string(),
        };
        self.call(op, |s| {
            let bytes = std::fs::read(path).map_err(|e| io_error(path, &e))?;
            s.load_optimizer_states(&bytes)
        })
    }

    /// A copy of what a key holds now, for inspection and tests.
    pub fn value_of(&self, key: impl Into<Key>) -> Option<Value> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .value(&key.into())
            .cloned()
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}
