//! `KvStore`: the handle users call.

use crate::args::{Input, Inputs, Outputs, RowIds};
use crate::array::NdArray;
use crate::backend::{CpuBackend, SpecBackend};
use crate::engine_store::EngineStore;
use crate::normalize::{normalize, Keys, Values};
use crate::ops::StoreOps;
use crate::spec_store::SpecStore;
use crate::trace::{Op, Recorder, RowIdsArg, UpdaterSpec};
use kvstore_spec::codec::{Compression, CompressionType};
use kvstore_spec::kind::{Kind, StoreClass};
use kvstore_spec::optimizer::Optimizer;
use kvstore_spec::store::Observable;
use kvstore_spec::updater::Updater;
use kvstore_spec::{Error, Key, Result, Value};
use std::path::Path;
use std::str::FromStr;
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

/// Where a store's work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// The dependency engine with the CPU backend: asynchronous, multi-core (the default).
    #[default]
    Cpu,
    /// The executable specification, one call at a time: the oracle.
    Spec,
    /// The dependency engine with the spec's reference code as its backend: isolates the
    /// engine in the equivalence suites.
    EngineSpec,
    /// The dependency engine with the CUDA backend on GPU 0 (feature `cuda`; without it, or
    /// without a GPU, creating such a store is an [`Error::UnsupportedKind`]).
    Cuda,
}

impl BackendKind {
    /// The name `FromStr` accepts.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Spec => "spec",
            BackendKind::EngineSpec => "engine-spec",
            BackendKind::Cuda => "cuda",
        }
    }
}

impl FromStr for BackendKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(BackendKind::Cpu),
            "spec" => Ok(BackendKind::Spec),
            "engine-spec" => Ok(BackendKind::EngineSpec),
            "cuda" => Ok(BackendKind::Cuda),
            other => Err(Error::UnsupportedKind {
                kind: other.into(),
                reason: "backends are cpu, spec, engine-spec and cuda".into(),
            }),
        }
    }
}

/// How [`create_with`] builds a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Where the work runs.
    pub backend: BackendKind,
    /// Engine worker threads (operations on different keys in flight at once); the CPU
    /// backend's kernels also split large arrays across every core.
    pub workers: usize,
}

impl Default for Options {
    fn default() -> Self {
        // Asked once per process: `available_parallelism` reads cgroup files on Linux, which
        // cost more than creating a small store.
        static WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        Options {
            backend: BackendKind::default(),
            workers: *WORKERS.get_or_init(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get().clamp(2, 8))
                    .unwrap_or(2)
            }),
        }
    }
}

/// Creates a store of the given kind (R1, R2, R6) on the default backend (engine + CPU).
///
/// Single-process kinds (`local`, `device`, `nccl`, and any name without `dist`) are available
/// here. Distributed kinds run in an MPI job, where `kvstore_mpi::job::launch` hands each worker
/// its handle and runs the servers (docs/distributed.md); here they are refused with
/// [`Error::UnsupportedKind`], which says so.
///
/// ```
/// let kv = kvstore::create("Device")?;
/// assert_eq!(kv.kind(), "device");
/// # Ok::<(), kvstore::Error>(())
/// ```
pub fn create(kind: &str) -> Result<KvStore> {
    create_with(kind, Options::default())
}

/// Creates a store of the given kind with explicit [`Options`], e.g. on the specification.
///
/// ```
/// use kvstore::{BackendKind, Options};
/// let kv = kvstore::create_with("local", Options { backend: BackendKind::Spec, ..Options::default() })?;
/// assert_eq!(kv.backend(), BackendKind::Spec);
/// # Ok::<(), kvstore::Error>(())
/// ```
pub fn create_with(kind: &str, options: Options) -> Result<KvStore> {
    let kind = Kind::parse(kind)?;
    if kind.class() == StoreClass::Dist {
        return Err(Error::UnsupportedKind {
            kind: kind.name().into(),
            reason: "a distributed store runs in an MPI job: use kvstore_mpi::job::launch (crate kvstore-mpi, feature mpi) under mpirun; see docs/distributed.md".into(),
        });
    }
    KvStore::new(kind, options)
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
    backend: BackendKind,
    inner: Box<dyn StoreOps>,
    recorder: Mutex<Option<Recorder>>,
}

/// What a trace records of outputs: their current contents.
fn contents(outs: &Outputs) -> Values<Value> {
    outs.as_ref().map(NdArray::value)
}

/// An engine store over the CUDA backend on GPU 0.
#[cfg(feature = "cuda")]
fn cuda_store(kind: &Kind, workers: usize) -> Result<Box<dyn StoreOps>> {
    let backend = crate::backend::CudaBackend::open(0)?;
    Ok(Box::new(EngineStore::new(kind.clone(), backend, workers)?))
}

/// Without the `cuda` feature there is no CUDA backend: a typed error.
#[cfg(not(feature = "cuda"))]
fn cuda_store(_kind: &Kind, _workers: usize) -> Result<Box<dyn StoreOps>> {
    Err(Error::UnsupportedKind {
        kind: "cuda".into(),
        reason: "kvstore was built without the `cuda` feature".into(),
    })
}

/// What a trace records of inputs: their values.
fn input_values(values: &Inputs) -> Values<Value> {
    values.as_ref().map(Input::to_value)
}

impl KvStore {
    fn new(kind: Kind, options: Options) -> Result<KvStore> {
        let inner: Box<dyn StoreOps> = match options.backend {
            BackendKind::Spec => Box::new(SpecStore::new(kind.clone())?),
            BackendKind::Cpu => {
                Box::new(EngineStore::new(kind.clone(), CpuBackend, options.workers)?)
            }
            BackendKind::EngineSpec => Box::new(EngineStore::new(
                kind.clone(),
                SpecBackend,
                options.workers,
            )?),
            BackendKind::Cuda => cuda_store(&kind, options.workers)?,
        };
        Ok(KvStore {
            inner,
            recorder: Mutex::new(None),
            kind,
            backend: options.backend,
        })
    }

    /// Where this store's work runs.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Records the call when a recording is on, and runs it. The recorder's lock is held
    /// across the call, so a trace's order is the order in which calls were issued.
    fn call<T>(
        &self,
        op: impl FnOnce() -> Op,
        run: impl FnOnce(&dyn StoreOps) -> Result<T>,
    ) -> Result<T> {
        let mut recorder = self.recorder.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(recorder) = recorder.as_mut() {
            recorder.record(&op());
        }
        run(self.inner.as_ref())
    }

    /// [`KvStore::call`] for calls whose arguments both the trace and the store use: the
    /// trace borrows them, the store then takes them (no copy unless recording).
    fn call_with<A, T>(
        &self,
        args: A,
        op: impl FnOnce(&A) -> Op,
        run: impl FnOnce(&dyn StoreOps, A) -> Result<T>,
    ) -> Result<T> {
        let mut recorder = self.recorder.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(recorder) = recorder.as_mut() {
            recorder.record(&op(&args));
        }
        run(self.inner.as_ref(), args)
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
        *self.recorder.lock().unwrap_or_else(PoisonError::into_inner) = Some(recorder);
    }

    /// Stops the recording and reports the first error writing it, if any.
    pub fn stop_recording(&self) -> Result<()> {
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

    /// Stores a copy of each value under its key (R12, R13). Synchronous: when it returns,
    /// the keys exist.
    pub fn init(&self, keys: impl Into<Keys>, values: impl Into<Inputs>) -> Result<()> {
        let (keys, values) = (keys.into(), values.into());
        self.call_with(
            (keys, values),
            |(keys, values)| Op::Init {
                keys: keys.clone(),
                values: input_values(values),
            },
            |s, (keys, values)| s.init(normalize(keys, values)?),
        )
    }

    /// Pushes values: per key, the sum over all values given for it replaces the stored value,
    /// or goes to the updater (R15-R22). Returns once the push is queued; argument errors
    /// return at once, an updater's error at the next [`KvStore::wait_all`].
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
        self.call_with(
            (keys, values),
            |(keys, values)| Op::Push {
                keys: keys.clone(),
                values: input_values(values),
                priority,
            },
            |s, (keys, values)| s.push(normalize(keys, values)?, priority),
        )
    }

    /// Copies each key's value into its outputs (R25-R29). Returns once queued; reading an
    /// output waits for it.
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
        self.call_with(
            (keys, outs),
            |(keys, outs)| Op::Pull {
                keys: keys.clone(),
                outs: contents(outs),
                priority: options.priority,
                ignore_sparse: options.ignore_sparse,
            },
            |s, (keys, outs)| {
                s.pull(
                    normalize(keys, outs)?,
                    options.ignore_sparse,
                    options.priority,
                )
            },
        )
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
        self.call_with(
            (keys, outs, row_ids),
            |(keys, outs, row_ids)| Op::RowSparsePull {
                keys: keys.clone(),
                outs: contents(outs),
                row_ids: match row_ids.as_slice() {
                    [one] => RowIdsArg::One(one.clone()),
                    many => RowIdsArg::PerOutput(many.to_vec()),
                },
                priority,
            },
            |s, (keys, outs, row_ids)| {
                s.row_sparse_pull(normalize(keys, outs)?, &row_ids, priority)
            },
        )
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
        self.call_with(
            (keys, values, outs),
            |(keys, values, outs)| Op::PushPull {
                keys: keys.clone(),
                values: input_values(values),
                outs: Some(contents(outs)),
            },
            |s, (keys, values, outs)| {
                let pairs = normalize(keys.clone(), values)?;
                s.pushpull(pairs, normalize(keys, outs)?)
            },
        )
    }

    /// Initialises keys with `values`, then pulls them into `outs`, as one call (R34).
    pub fn broadcast(
        &self,
        keys: impl Into<Keys>,
        values: impl Into<Inputs>,
        outs: impl Into<Outputs>,
    ) -> Result<()> {
        let (keys, values, outs) = (keys.into(), values.into(), outs.into());
        self.call_with(
            (keys, values, outs),
            |(keys, values, outs)| Op::Broadcast {
                keys: keys.clone(),
                values: input_values(values),
                outs: contents(outs),
            },
            |s, (keys, values, outs)| {
                let pairs = normalize(keys.clone(), values)?;
                s.broadcast(pairs, normalize(keys, outs)?)
            },
        )
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
        self.set_traced_updater(UpdaterSpec::Custom, updater)
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

    /// Waits until every operation issued before the call has finished, and reports the
    /// earliest error one of them raised while running (once; later ones stay for the next
    /// call).
    pub fn wait_all(&self) -> Result<()> {
        self.call(|| Op::WaitAll, |s| s.wait_all())
    }

    /// Waits until every operation issued on `keys` before the call has finished, and reports
    /// the earliest error one of them raised while running (R61). Unknown keys are
    /// `NotInitialized`.
    ///
    /// ```
    /// use kvstore::{DType, Tensor};
    /// let kv = kvstore::create("local")?;
    /// kv.init(3, Tensor::zeros([2], DType::F32)?)?;
    /// kv.push(3, Tensor::full([2], DType::F32, 1.0)?)?;
    /// kv.wait(3)?;
    /// assert_eq!(kv.value_of(3).unwrap().to_f32(), vec![1.0, 1.0]);
    /// # Ok::<(), kvstore::Error>(())
    /// ```
    pub fn wait(&self, keys: impl Into<Keys>) -> Result<()> {
        let keys = match keys.into() {
            Keys::One(k) => vec![k],
            Keys::List(ks) => ks,
        };
        self.inner.wait_keys(&keys)
    }

    /// Writes the optimizer states (and the optimizer when `dump_optimizer`) to `path` (R47),
    /// after every push issued before the call. The file is written whole or not at all: the
    /// bytes go to a temporary file beside `path`, which is synced and then renamed over it.
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
        write_atomically(path, &bytes).map_err(|e| io_error(path, &e))
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

    /// A copy of what a key holds once every operation issued on it before has finished.
    pub fn value_of(&self, key: impl Into<Key>) -> Option<Value> {
        self.inner.value_of(&key.into())
    }

    /// Everything a caller can observe (values, residuals, optimizer states), after every
    /// operation issued before: what the equivalence suites compare with the spec.
    pub fn observable(&self) -> Result<Observable> {
        self.inner.observable()
    }
}

/// Writes `bytes` to a temporary file in `path`'s directory, syncs it and renames it to `path`,
/// so readers see the old file or the new one, never a part; the temporary file is removed on
/// any failure.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map_or_else(
        || "optimizer-states".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let temporary = path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

fn io_error(path: &Path, e: &std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}
