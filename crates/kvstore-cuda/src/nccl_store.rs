//! The `nccl` kind with its values on the GPU (feature `nccl`): MXNet's NCCL store.
//!
//! The values live on the group's first GPU (MXNet's root), in a [`DeviceStore`]. A push of
//! several values sums, on each GPU, the values that live there (list order, R17), then
//! reduces those per-GPU sums to the first GPU with `ncclReduce`, and hands that one merged
//! gradient to the device store's push (assign or optimizer step). A pull is the device
//! store's: a copy, or a peer copy to another GPU (R78).
//!
//! The bits (R79): the sum is list order within each GPU and NCCL's order across GPUs. With one
//! GPU (a one-rank communicator copies) it is the spec's; with two GPUs and MXNet's usage, one
//! value per GPU, it is `a + b`, the spec's again; beyond that NCCL chooses. A GPU that holds
//! none of a push's values takes part with -0.0, the identity of IEEE addition (+0.0 would turn
//! a -0.0 sum into +0.0).

use crate::gpu::reuse;
use crate::nccl::NcclGroup;
use crate::peer::is_foreign;
use crate::{CudaError, DeviceStore, DeviceUpdater, Gpu};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Per key and GPU: the GPU's partial sum, and a buffer of -0.0 for pushes it has no part in.
#[derive(Debug)]
struct Partials {
    sums: Vec<Option<CudaSlice<f32>>>,
    negative_zeros: Vec<Option<CudaSlice<f32>>>,
}

/// The `nccl` kind's store over the GPUs of one process, one NCCL rank per GPU.
#[derive(Debug)]
pub struct NcclStore {
    gpus: Vec<Arc<Gpu>>,
    group: NcclGroup,
    store: DeviceStore,
    partials: BTreeMap<i64, Partials>,
    /// The GPU (rank) of each value of the first multi-value push: every later one must match
    /// (R23).
    device_set: Option<Vec<usize>>,
}

fn invalid(message: String) -> CudaError {
    CudaError::Invalid(message)
}

impl NcclStore {
    /// A store over `gpus` (rank i on `gpus[i]`; values on `gpus[0]`). A typed error when
    /// libnccl is missing or the GPUs cannot form a communicator (the same GPU twice).
    pub fn new(gpus: Vec<Arc<Gpu>>) -> Result<NcclStore, CudaError> {
        let group = NcclGroup::new(&gpus)?;
        let first = gpus
            .first()
            .ok_or_else(|| invalid("an NCCL store needs a GPU".into()))?;
        Ok(NcclStore {
            store: DeviceStore::new(Arc::clone(first)),
            group,
            gpus,
            partials: BTreeMap::new(),
            device_set: None,
        })
    }

    /// How many GPUs (ranks).
    pub fn ranks(&self) -> usize {
        self.gpus.len()
    }

    /// Sets the updater (SGD or Adam, on the first GPU). The `nccl` kind has no gradient
    /// compression: MXNet refuses it.
    pub fn set_updater(&mut self, updater: DeviceUpdater) -> Result<(), CudaError> {
        self.store.set_updater(updater)
    }

    /// Initialises `key` with `value` (of `shape`, on any GPU). A key is initialised once.
    pub fn init(
        &mut self,
        key: i64,
        shape: &[usize],
        value: &CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        self.store.init(key, shape, value)?;
        let ranks = self.ranks();
        self.partials.insert(
            key,
            Partials {
                sums: (0..ranks).map(|_| None).collect(),
                negative_zeros: (0..ranks).map(|_| None).collect(),
            },
        );
        Ok(())
    }

    /// The rank whose GPU holds a buffer of `ctx`.
    fn rank_of(&self, ctx: &CudaContext) -> Result<usize, CudaError> {
        self.gpus
            .iter()
            .position(|g| !is_foreign(g.context(), ctx))
            .ok_or_else(|| invalid("a value on a GPU outside the NCCL group".into()))
    }

    /// Pushes `grads` (one or more, each on a GPU of the group) into `key`. Every argument is
    /// checked before any work: a refused push changes nothing.
    pub fn push(&mut self, key: i64, grads: &[&CudaSlice<f32>]) -> Result<(), CudaError> {
        let n = self.store.check_push(key, grads)?;
        let ranks = grads
            .iter()
            .map(|g| self.rank_of(g.context()))
            .collect::<Result<Vec<_>, _>>()?;
        if grads.len() >= 2 {
            match &self.device_set {
                Some(set) if *set != ranks => {
                    return Err(invalid(format!(
                        "the NCCL store reduces over one device set: {set:?}, not {ranks:?}"
                    )))
                }
                Some(_) => {}
                None => self.device_set = Some(ranks.clone()),
            }
        } else {
            // One value is the merged value itself (MXNet: no reduce).
            return self.store.push(key, grads);
        }
        let p = self
            .partials
            .get_mut(&key)
            .ok_or_else(|| invalid(format!("key {key} is not initialised")))?;
        for (rank, gpu) in self.gpus.iter().enumerate() {
            let stream = self
                .group
                .stream(rank)
                .ok_or_else(|| invalid("lost an NCCL rank".into()))?;
            let mine: Vec<&CudaSlice<f32>> = grads
                .iter()
                .zip(&ranks)
                .filter(|(_, r)| **r == rank)
                .map(|(g, _)| *g)
                .collect();
            if !mine.is_empty() {
                gpu.reduce(&stream, reuse(&stream, &mut p.sums[rank], n)?, &mine)?;
            } else {
                let zeros = negative_zeros(&stream, &mut p.negative_zeros[rank], n)?;
                if rank == 0 {
                    stream.memcpy_dtod(zeros, reuse(&stream, &mut p.sums[0], n)?)?;
                }
            }
        }
        let (first, rest) = p.sums.split_at_mut(1);
        let others = rest
            .iter()
            .zip(&p.negative_zeros[1..])
            .enumerate()
            .map(|(i, (sum, zeros))| {
                let has_part = ranks.contains(&(i + 1));
                if has_part { sum } else { zeros }
                    .as_ref()
                    .ok_or_else(|| invalid("lost a partial sum".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let merged = first[0]
            .as_mut()
            .ok_or_else(|| invalid("lost the first GPU's sum".into()))?;
        self.group.reduce_to_first(merged, &others)?;
        self.store.push(key, &[&*merged])
    }

    /// A push, then a pull into `out` (on any GPU of the group). The output is checked before
    /// the push, so a refused pushpull changes nothing.
    pub fn pushpull(
        &mut self,
        key: i64,
        grads: &[&CudaSlice<f32>],
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let n = self.store.check_push(key, grads)?;
        if out.len() != n {
            return Err(invalid(format!(
                "a pull output of {} elements for a key of {n}",
                out.len()
            )));
        }
        self.rank_of(out.context())?;
        self.push(key, grads)?;
        self.store.pull(key, out)
    }

    /// Copies `key`'s value into `out` (on any GPU: a peer copy from the first one).
    pub fn pull(&self, key: i64, out: &mut CudaSlice<f32>) -> Result<(), CudaError> {
        self.store.pull(key, out)
    }

    /// The stream of `key`'s work on the first GPU.
    pub fn stream(&self, key: i64) -> Option<&Arc<CudaStream>> {
        self.store.stream(key)
    }

    /// Waits for every key's work.
    pub fn wait_all(&self) -> Result<(), CudaError> {
        for gpu in &self.gpus {
            gpu.stream().synchronize()?;
        }
        self.store.wait_all()
    }

    /// `key`'s value copied to the host.
    pub fn value_to_host(&self, key: i64) -> Result<Vec<f32>, CudaError> {
        self.store.value_to_host(key)
    }
}

/// A buffer of `n` × -0.0 on `stream`, made once per key and GPU.
fn negative_zeros<'a>(
    stream: &Arc<CudaStream>,
    slot: &'a mut Option<CudaSlice<f32>>,
    n: usize,
) -> Result<&'a CudaSlice<f32>, CudaError> {
    if slot.as_ref().is_none_or(|s| s.len() != n) {
        *slot = Some(stream.clone_htod(&vec![-0.0f32; n])?);
    }
    slot.as_ref()
        .ok_or_else(|| CudaError::Driver("lost a buffer".into()))
}
