//! The asynchronous store: every call is checked at once against the keys' fixed metadata,
//! then queued on the dependency engine as one operation that a [`Backend`] executes.
//!
//! - Calls return when their operation is queued (semantics §6). Checks that need only
//!   metadata (key type, key existence, shapes, storage types, row ids, compression rules)
//!   run before queueing, so those errors return at once and nothing is queued (R7).
//! - Per key, operations take effect in issue order: a push writes the key's variable, a pull
//!   reads it and writes its outputs' variables. Different keys run in parallel.
//! - An error found while executing (an updater that fails) is recorded on the variables the
//!   operation writes and in the engine's list; it reaches the caller at the next
//!   [`NdArray::wait`](crate::NdArray::wait) or `wait_all`. The failing operation commits
//!   nothing: a multi-key push stages every key's result before it writes any.

mod exec;
mod key_hash;
mod plan;
mod slot;

use crate::args::Input;
use crate::array::{EngineVar, Failure};
use crate::backend::Backend;
use crate::NdArray;
use exec::Exec;
use kvstore_engine::Engine;
use kvstore_spec::codec::{Compression, Residual};
use kvstore_spec::kind::Kind;
use kvstore_spec::optimizer::{Optimizer, OptimizerUpdater, State};
use kvstore_spec::store::Observable;
use kvstore_spec::updater::Updater;
use kvstore_spec::{Device, Error, Key, Result, Value};
use plan::{Front, Planned, UpdaterRef, View};
use slot::Slot;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A store whose operations run on the dependency engine over backend `B`.
#[derive(Debug)]
pub(crate) struct EngineStore<B: Backend> {
    backend: Arc<B>,
    /// Queue-time state. Its lock also fixes the issue order of concurrent calls.
    front: Mutex<Front>,
    engine: Engine<Failure>,
}

impl<B: Backend> EngineStore<B> {
    pub fn new(kind: Kind, backend: B, workers: usize) -> Result<Self> {
        Ok(EngineStore {
            front: Mutex::new(Front::new(kind)?),
            backend: Arc::new(backend),
            engine: Engine::new(workers.max(1)),
        })
    }

    fn front(&self) -> MutexGuard<'_, Front> {
        // Front is updated only after every check of a call passed, by assignments that do not
        // panic, so a poisoned lock still guards consistent state.
        self.front.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn exec(&self) -> Exec<B> {
        Exec {
            backend: Arc::clone(&self.backend),
        }
    }

    /// Checks a call under the front lock (so concurrent calls are issued in one order), commits
    /// what it fixes, and queues `run` on the engine with the plan's vars.
    fn issue<P: Planned + Send + 'static>(
        &self,
        plan: impl FnOnce(&mut View, &Front) -> Result<P>,
        run: impl FnOnce(&Exec<B>, &P) -> Result<()> + Send + 'static,
        priority: i32,
    ) -> Result<()> {
        let mut front = self.front();
        let mut view = front.view();
        let planned = plan(&mut view, &front)?;
        front.commit_view(view);
        let (reads, writes) = (planned.reads(), planned.writes());
        let exec = self.exec();
        self.engine.push(
            move || run(&exec, &planned).map_err(Failure),
            &reads,
            &writes,
            priority,
        );
        Ok(())
    }

    pub fn init(&self, pairs: Vec<(Key, Input)>) -> Result<()> {
        let mut front = self.front();
        let init = front.plan_init(&pairs)?;
        front.commit_init(init);
        Ok(())
    }

    pub fn push(&self, pairs: Vec<(Key, Input)>, priority: i32) -> Result<()> {
        self.issue(
            |view, front| view.plan_push(front, pairs),
            |exec, push| exec.push(push),
            priority,
        )
    }
    pub fn pull(
        &self,
        outs: Vec<(Key, NdArray)>,
        ignore_sparse: bool,
        priority: i32,
    ) -> Result<()> {
        self.issue(
            |view, front| view.plan_pull(front, outs, ignore_sparse),
            |exec, pull| exec.pull(pull),
            priority,
        )
    }
    pub fn row_sparse_pull(
        &self,
        outs: Vec<(Key, NdArray)>,
        row_ids: &[Vec<i64>],
        priority: i32,
    ) -> Result<()> {
        self.issue(
            |view, front| view.plan_row_sparse_pull(front, outs, row_ids),
            |exec, pull| exec.row_sparse_pull(pull),
            priority,
        )
    }
    pub fn pushpull(&self, pairs: Vec<(Key, Input)>, outs: Vec<(Key, NdArray)>) -> Result<()> {
        // One operation: when the push fails while it runs, the outputs stay as they were,
        // as the sequential pushpull that fails as a whole (R7, R34).
        self.issue(
            |view, front| {
                Ok((
                    view.plan_push(front, pairs)?,
                    view.plan_pull(front, outs, true)?,
                ))
            },
            |exec, (push, pull)| {
                exec.push(push)?;
                exec.pull(pull)
            },
            0,
        )
    }
    pub fn broadcast(&self, pairs: Vec<(Key, Input)>, outs: Vec<(Key, NdArray)>) -> Result<()> {
        let mut front = self.front();
        let init = front.plan_init(&pairs)?;
        // The pull is checked against the store as the init leaves it, before either commits.
        let mut staged = front.staged_with(&init);
        let mut view = staged.view();
        let pull = view.plan_pull(&staged, outs, true)?;
        staged.commit_view(view);
        *front = staged;
        let (reads, writes) = (pull.reads(), pull.writes());
        let exec = self.exec();
        self.engine.push(
            move || exec.pull(&pull).map_err(Failure),
            &reads,
            &writes,
            0,
        );
        Ok(())
    }

    /// Queues `f` on every key's data, as a writer, in issue order.
    fn on_every_key(&self, front: &Front, f: impl Fn(&mut slot::SlotData) + Send + 'static) {
        let slots: Vec<Arc<Slot>> = front.slots().cloned().collect();
        let writes: Vec<EngineVar> = slots.iter().map(|s| s.var.clone()).collect();
        self.engine.push(
            move || {
                for slot in &slots {
                    f(&mut slot.data());
                }
                Ok(())
            },
            &[],
            &writes,
            0,
        );
    }

    /// Runs `f` over every key's data once every operation issued before has finished on it,
    /// and returns its result.
    fn read_every_key<T: Send + 'static>(
        &self,
        front: &Front,
        f: impl Fn(&Slot, &slot::SlotData, &mut T) + Send + 'static,
        init: T,
    ) -> Result<T> {
        let slots: Vec<Arc<Slot>> = front.slots().cloned().collect();
        let reads: Vec<EngineVar> = slots.iter().map(|s| s.var.clone()).collect();
        let done = EngineVar::new();
        let out = Arc::new(Mutex::new(Some(init)));
        let sink = Arc::clone(&out);
        self.engine.push(
            move || {
                let mut guard = sink.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(acc) = guard.as_mut() {
                    for slot in &slots {
                        f(slot, &slot.data(), acc);
                    }
                }
                Ok(())
            },
            &reads,
            std::slice::from_ref(&done),
            0,
        );
        done.wait().map_err(|f| f.0)?;
        let taken = out.lock().unwrap_or_else(PoisonError::into_inner).take();
        taken.ok_or(Error::OperationPanicked {
            message: "a read of every key lost its result".into(),
        })
    }

    pub fn set_gradient_compression(&self, compression: Compression) -> Result<()> {
        let mut front = self.front();
        if !front.kind.allows_compression() {
            return Err(Error::CompressionNotSupported {
                kind: front.kind.name().into(),
            });
        }
        if front.compression != Some(compression) {
            // New parameters start from fresh residuals (R44), after the pushes already queued.
            self.on_every_key(&front, |data| data.residuals.clear());
        }
        front.compression = Some(compression);
        Ok(())
    }

    pub fn set_optimizer(&self, optimizer: Optimizer) -> Result<()> {
        optimizer.validate()?;
        let mut front = self.front();
        front.updater = Some(UpdaterRef::Optimizer(Arc::new(optimizer)));
        front.orphan_states.clear();
        self.on_every_key(&front, |data| data.state = None);
        Ok(())
    }

    pub fn set_updater(&self, updater: Box<dyn Updater>) {
        let mut front = self.front();
        front.updater = Some(UpdaterRef::Custom(Arc::new(Mutex::new(updater))));
        front.orphan_states.clear();
        self.on_every_key(&front, |data| data.state = None);
    }

    fn optimizer(front: &Front) -> Result<Arc<Optimizer>> {
        match &front.updater {
            Some(UpdaterRef::Optimizer(o)) => Ok(Arc::clone(o)),
            _ => Err(Error::NoOptimizer),
        }
    }

    /// Every key's optimizer state (and the loaded states of keys not initialised).
    fn states(&self, front: &Front) -> Result<BTreeMap<Key, State>> {
        let mut states = self.read_every_key(
            front,
            |slot, data, acc: &mut BTreeMap<Key, State>| {
                if let Some(state) = &data.state {
                    acc.insert(slot.key.clone(), state.clone());
                }
            },
            BTreeMap::new(),
        )?;
        states.extend(
            front
                .orphan_states
                .iter()
                .map(|(k, s)| (k.clone(), s.clone())),
        );
        Ok(states)
    }

    pub fn save_optimizer_states(&self, dump_optimizer: bool) -> Result<Vec<u8>> {
        let front = self.front();
        let optimizer = Self::optimizer(&front)?;
        let states = self.states(&front)?;
        OptimizerUpdater::with_states(Optimizer::clone(&optimizer), states)?.save(dump_optimizer)
    }

    pub fn load_optimizer_states(&self, bytes: &[u8]) -> Result<()> {
        let mut front = self.front();
        let optimizer = Self::optimizer(&front)?;
        let mut loaded =
            OptimizerUpdater::with_states(Optimizer::clone(&optimizer), BTreeMap::new())?;
        loaded.load(bytes)?;
        loaded.optimizer().check_loaded(loaded.states(), |key| {
            front
                .slots()
                .find(|s| &s.key == key)
                .map(|s| (s.shape.clone(), s.dtype))
        })?;
        let mut states = loaded.states().clone();
        front.updater = Some(UpdaterRef::Optimizer(Arc::new(loaded.optimizer().clone())));
        let per_key: BTreeMap<Key, State> = front
            .slots()
            .filter_map(|s| states.remove(&s.key).map(|st| (s.key.clone(), st)))
            .collect();
        front.orphan_states = states;
        let slots: Vec<Arc<Slot>> = front.slots().cloned().collect();
        let writes: Vec<EngineVar> = slots.iter().map(|s| s.var.clone()).collect();
        self.engine.push(
            move || {
                for slot in &slots {
                    slot.data().state = per_key.get(&slot.key).cloned();
                }
                Ok(())
            },
            &[],
            &writes,
            0,
        );
        Ok(())
    }

    pub fn wait_all(&self) -> Result<()> {
        self.engine.wait_all().map_err(|f| f.0)
    }

    /// Waits for the operations issued on `keys`, and reports the earliest error one of them
    /// raised while running (each error once per key).
    pub fn wait_keys(&self, keys: &[Key]) -> Result<()> {
        let vars: Vec<EngineVar> = {
            let front = self.front();
            keys.iter()
                .map(|k| {
                    front
                        .slot(k)
                        .map(|s| s.var.clone())
                        .ok_or_else(|| Error::NotInitialized { key: k.clone() })
                })
                .collect::<Result<_>>()?
        };
        let mut first = Ok(());
        for var in vars {
            if let (Ok(()), Err(f)) = (&first, var.wait()) {
                first = Err(f.0);
            }
        }
        first
    }

    pub fn value_of(&self, key: &Key) -> Option<Value> {
        let front = self.front();
        let slot = front.slot(key)?;
        slot.var.wait_idle();
        let value = slot.data().value.clone();
        Some(value)
    }

    pub fn observable(&self) -> Result<Observable> {
        let front = self.front();
        type Collected = (
            BTreeMap<Key, Value>,
            BTreeMap<(Key, Device, usize), Residual>,
            BTreeMap<Key, State>,
        );
        // One engine trip reads values, residuals and optimizer states together.
        let (values, residuals, mut states) = self.read_every_key(
            &front,
            |slot, data, acc: &mut Collected| {
                acc.0.insert(slot.key.clone(), data.value.clone());
                for ((device, occurrence), r) in &data.residuals {
                    acc.1.insert(
                        (slot.key.clone(), *device, *occurrence),
                        Residual(r.clone()),
                    );
                }
                if let Some(state) = &data.state {
                    acc.2.insert(slot.key.clone(), state.clone());
                }
            },
            (BTreeMap::new(), BTreeMap::new(), BTreeMap::new()),
        )?;
        let optimizer = match &front.updater {
            Some(UpdaterRef::Optimizer(o)) => {
                states.extend(
                    front
                        .orphan_states
                        .iter()
                        .map(|(k, s)| (k.clone(), s.clone())),
                );
                Some(OptimizerUpdater::with_states(Optimizer::clone(o), states)?)
            }
            _ => None,
        };
        Ok(Observable {
            key_type: front.key_type,
            values,
            compression: front.compression,
            residuals,
            optimizer,
            has_updater: front.updater.is_some(),
        })
    }
}

crate::ops::delegate_ops!(EngineStore<B>);
