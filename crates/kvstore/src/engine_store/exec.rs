//! What a queued operation does when the engine runs it: the data work, through the backend,
//! on keys and arrays the engine has given it.

use super::plan::{Group, PullPlan, PushPlan, RowSparsePlan, UpdaterRef};
use super::slot::{empty_tensor, ResidualId, SlotData};
use crate::args::Input;
use crate::backend::Backend;
use kvstore_spec::codec::Compression;
use kvstore_spec::optimizer::Optimizer;
use kvstore_spec::updater::{Updater, UpdaterSlot};
use kvstore_spec::{Error, Key, Result, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Runs checked plans on a backend.
#[derive(Debug)]
pub(crate) struct Exec<B> {
    pub backend: Arc<B>,
}

/// Each value's residual, in the order of the values, taken from a key's residual map
/// (created at zero-length on first use: the backend sizes a fresh residual).
fn residuals_for<'a>(
    residuals: &'a mut BTreeMap<ResidualId, Vec<f32>>,
    ids: &[ResidualId],
) -> Vec<&'a mut Vec<f32>> {
    if ids.is_empty() {
        return Vec::new();
    }
    for id in ids {
        residuals.entry(*id).or_default();
    }
    let mut picked: Vec<Option<&mut Vec<f32>>> = ids.iter().map(|_| None).collect();
    for (id, residual) in residuals.iter_mut() {
        if let Some(at) = ids.iter().position(|x| x == id) {
            picked[at] = Some(residual);
        }
    }
    picked.into_iter().flatten().collect()
}

fn updater_error(key: &Key, message: String) -> Error {
    Error::Updater {
        key: key.clone(),
        message,
    }
}

impl<B: Backend> Exec<B> {
    /// Merges one key's values into `merged`, through its residuals when compression is on.
    fn merge(
        &self,
        group: &Group,
        compression: Option<Compression>,
        residuals: &mut [&mut Vec<f32>],
        merged: &mut Value,
    ) -> Result<()> {
        let dtype = group.slot.dtype;
        let run = |values: &[&Value], residuals: &mut [&mut Vec<f32>], merged: &mut Value| {
            match compression {
                Some(c) => self.backend.compress_reduce(c, values, residuals, merged),
                None => self.backend.reduce(values, dtype, merged),
            }
        };
        // One value (the common case of many small keys) needs no list.
        if let [only] = group.inputs.as_slice() {
            let snapshot = only.snapshot();
            return run(&[snapshot.as_ref()], residuals, merged);
        }
        let snapshots: Vec<Arc<Value>> = group
            .inputs
            .as_slice()
            .iter()
            .map(Input::snapshot)
            .collect();
        let values: Vec<&Value> = snapshots.iter().map(|v| v.as_ref()).collect();
        run(&values, residuals, merged)
    }

    pub fn push(&self, plan: &PushPlan) -> Result<()> {
        match &plan.updater {
            Some(UpdaterRef::Custom(updater)) => self.push_custom(plan, updater),
            Some(UpdaterRef::Optimizer(optimizer)) => {
                // Nothing below fails once every key's state fits its weight and the optimizer
                // takes the merged gradient's storage type, so a multi-key push is all or
                // nothing.
                for group in &plan.groups {
                    let data = group.slot.data();
                    let sparse = group
                        .inputs
                        .as_slice()
                        .iter()
                        .all(|input| matches!(*input.snapshot(), Value::RowSparse(_)));
                    let fits = match &data.state {
                        Some(state) => {
                            optimizer.check_state(state, &group.slot.shape, data.value.dtype())
                        }
                        None => Ok(()),
                    };
                    fits.and_then(|()| optimizer.check_gradient(sparse))
                        .map_err(|e| updater_error(&group.slot.key, e.0))?;
                }
                for group in &plan.groups {
                    self.push_in_place(group, plan.compression, Some(optimizer))?;
                }
                Ok(())
            }
            None => {
                for group in &plan.groups {
                    self.push_in_place(group, plan.compression, None)?;
                }
                Ok(())
            }
        }
    }

    /// Merge and assign (or optimise) in the key's own buffers: no allocation once warm.
    fn push_in_place(
        &self,
        group: &Group,
        compression: Option<Compression>,
        optimizer: Option<&Optimizer>,
    ) -> Result<()> {
        let mut guard = group.slot.data();
        let SlotData {
            value,
            merge,
            residuals,
            state,
        } = &mut *guard;
        let mut picked = residuals_for(residuals, &group.residual_ids);
        self.merge(group, compression, &mut picked, merge)?;
        match optimizer {
            None => {
                // The merged value becomes the stored one; the old value's storage becomes
                // the next merge buffer.
                let device = value.device();
                std::mem::swap(value, merge);
                value.set_device(device);
                Ok(())
            }
            Some(optimizer) => self
                .backend
                .optimize(optimizer, state, merge, value)
                .map_err(|e| updater_error(&group.slot.key, e.0)),
        }
    }

    /// A custom updater may fail on any key: every key's result is staged, and committed only
    /// when all succeeded. The updater is held for the whole push, so its own state sees one
    /// push at a time; a clone runs, and replaces it only on success (R22).
    fn push_custom(&self, plan: &PushPlan, updater: &Mutex<Box<dyn Updater>>) -> Result<()> {
        let mut shared = updater.lock().unwrap_or_else(PoisonError::into_inner);
        let mut slot = UpdaterSlot::Custom(shared.box_clone());
        let mut staged = Vec::with_capacity(plan.groups.len());
        for group in &plan.groups {
            let data = group.slot.data();
            let mut residuals: Vec<Vec<f32>> = group
                .residual_ids
                .iter()
                .map(|id| data.residuals.get(id).cloned().unwrap_or_default())
                .collect();
            let mut refs: Vec<&mut Vec<f32>> = residuals.iter_mut().collect();
            let mut merged = Value::Dense(empty_tensor());
            self.merge(group, plan.compression, &mut refs, &mut merged)?;
            let next = slot.apply(&group.slot.key, &merged, &data.value)?;
            staged.push((next, residuals));
        }
        for (group, (next, residuals)) in plan.groups.iter().zip(staged) {
            let mut data = group.slot.data();
            data.value = next;
            for (id, residual) in group.residual_ids.iter().zip(residuals) {
                data.residuals.insert(*id, residual);
            }
        }
        if let UpdaterSlot::Custom(next) = slot {
            *shared = next;
        }
        Ok(())
    }

    pub fn pull(&self, plan: &PullPlan) -> Result<()> {
        let items = &plan.items;
        let mut at = 0;
        while let Some((slot, first)) = items.get(at) {
            let run = items[at..]
                .iter()
                .take_while(|(s, _)| Arc::ptr_eq(s, slot))
                .count();
            let data = slot.data();
            if run == 1 {
                first.with_mut(|o| self.backend.pull_into(&data.value, o, plan.ignore_sparse))?;
                at += 1;
                continue;
            }
            // A run of outputs of one key (a key pulled to every device) is filled from one
            // read of the value, when the outputs are distinct arrays.
            let outs: Vec<&crate::NdArray> = items[at..at + run].iter().map(|(_, o)| o).collect();
            let distinct = outs
                .iter()
                .enumerate()
                .all(|(i, a)| outs[..i].iter().all(|b| !a.same_array(b)));
            if distinct {
                let mut guards: Vec<_> = outs.iter().map(|o| o.lock_for_write()).collect();
                let mut values: Vec<&mut Value> =
                    guards.iter_mut().map(|g| Arc::make_mut(&mut **g)).collect();
                self.backend
                    .pull_into_many(&data.value, &mut values, plan.ignore_sparse)?;
            } else {
                for out in outs {
                    out.with_mut(|o| self.backend.pull_into(&data.value, o, plan.ignore_sparse))?;
                }
            }
            at += run;
        }
        Ok(())
    }

    pub fn row_sparse_pull(&self, plan: &RowSparsePlan) -> Result<()> {
        for (slot, out, ids) in &plan.items {
            let data = slot.data();
            out.with_mut(|o| self.backend.row_sparse_into(&data.value, ids, o))?;
        }
        Ok(())
    }
}
