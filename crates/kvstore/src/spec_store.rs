//! The specification as a store implementation: every call runs to completion, in order, on
//! the spec's `LocalStore`. Selected with [`crate::BackendKind::Spec`].

use crate::args::Input;
use crate::ops::StoreOps;
use crate::NdArray;
use kvstore_spec::codec::Compression;
use kvstore_spec::kind::Kind;
use kvstore_spec::optimizer::Optimizer;
use kvstore_spec::store::{LocalStore, Observable};
use kvstore_spec::updater::Updater;
use kvstore_spec::{Key, Result, Value};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The spec's store behind a lock.
#[derive(Debug)]
pub(crate) struct SpecStore {
    inner: Mutex<LocalStore>,
}

fn values(pairs: Vec<(Key, Input)>) -> Vec<(Key, Value)> {
    pairs.into_iter().map(|(k, v)| (k, v.to_value())).collect()
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

impl SpecStore {
    pub fn new(kind: Kind) -> Result<SpecStore> {
        Ok(SpecStore {
            inner: Mutex::new(LocalStore::new(kind)?),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LocalStore> {
        // Every spec operation commits by replacing the whole store at its end (a
        // transaction), so a panic inside one cannot leave a half-applied state behind.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StoreOps for SpecStore {
    fn init(&self, pairs: Vec<(Key, Input)>) -> Result<()> {
        self.lock().init(&values(pairs))
    }

    fn push(&self, pairs: Vec<(Key, Input)>, _priority: i32) -> Result<()> {
        self.lock().push(&values(pairs))
    }

    fn pull(&self, outs: Vec<(Key, NdArray)>, ignore_sparse: bool, _priority: i32) -> Result<()> {
        fill(&mut self.lock(), &outs, |s, current| {
            s.pull(current, ignore_sparse)
        })
    }

    fn row_sparse_pull(
        &self,
        outs: Vec<(Key, NdArray)>,
        row_ids: &[Vec<i64>],
        _priority: i32,
    ) -> Result<()> {
        fill(&mut self.lock(), &outs, |s, current| {
            s.row_sparse_pull(current, row_ids)
        })
    }

    fn pushpull(&self, pairs: Vec<(Key, Input)>, outs: Vec<(Key, NdArray)>) -> Result<()> {
        let pairs = values(pairs);
        fill(&mut self.lock(), &outs, |s, current| {
            s.pushpull(&pairs, current)
        })
    }

    fn broadcast(&self, pairs: Vec<(Key, Input)>, outs: Vec<(Key, NdArray)>) -> Result<()> {
        let pairs = values(pairs);
        fill(&mut self.lock(), &outs, |s, current| {
            s.broadcast(&pairs, current)
        })
    }

    fn set_gradient_compression(&self, compression: Compression) -> Result<()> {
        self.lock().set_gradient_compression(compression)
    }

    fn set_optimizer(&self, optimizer: Optimizer) -> Result<()> {
        self.lock().set_optimizer(optimizer)
    }

    fn set_updater(&self, updater: Box<dyn Updater>) {
        self.lock().set_updater(updater)
    }

    fn save_optimizer_states(&self, dump_optimizer: bool) -> Result<Vec<u8>> {
        self.lock().save_optimizer_states(dump_optimizer)
    }

    fn load_optimizer_states(&self, bytes: &[u8]) -> Result<()> {
        self.lock().load_optimizer_states(bytes)
    }

    fn wait_all(&self) -> Result<()> {
        Ok(())
    }

    fn wait_keys(&self, keys: &[Key]) -> Result<()> {
        let store = self.lock();
        match keys.iter().find(|k| store.value(k).is_none()) {
            Some(key) => Err(kvstore_spec::Error::NotInitialized { key: key.clone() }),
            None => Ok(()),
        }
    }

    fn value_of(&self, key: &Key) -> Option<Value> {
        self.lock().value(key).cloned()
    }

    fn observable(&self) -> Result<Observable> {
        Ok(self.lock().observable())
    }
}
