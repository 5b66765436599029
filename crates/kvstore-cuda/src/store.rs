//! A store whose values live on one GPU: init, push (with 2-bit or 1-bit compression and SGD or
//! Adam fused into the merge), pull and row_sparse_pull, with no host round trip.
//!
//! Each key has its own stream, so work on different keys overlaps while each key's work runs
//! in program order; cudarc's event tracking orders a buffer's use on another stream (a pull
//! into a caller's buffer, a gradient written elsewhere) after the work that wrote it. The
//! rules are the specification's for a `device` store with one f32 dense value per key (R17,
//! R25, R30-R32, R38-R42, R45, R46, R73), which `tests/` checks bit for bit.
//!
//! Values may live on other GPUs (R78): a gradient from another context is peer-copied into a
//! staging buffer on the store's GPU and merged there in list order, so the sum is the same;
//! a pull into another GPU's buffer is a peer copy out.

use crate::gpu::{reuse, Gpu, IdScratch, MAX_FUSED_INPUTS};
use crate::peer::{self, is_foreign};
use crate::CudaError;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use kvstore_cpu::{AdamParams, Codec, SgdParams};
use kvstore_spec::optimizer::Optimizer;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What a push does with the merged gradient.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceUpdater {
    /// The key's value becomes the merged sum (no updater, R25).
    Assign,
    /// An optimizer step (SGD or Adam) with the merged gradient.
    Optimizer(Optimizer),
}

/// Rows of a key, as `row_sparse_pull` returns them: sorted distinct ids and their rows
/// (`None` when no row was asked for: CUDA has no empty allocations).
#[derive(Debug)]
pub struct DeviceRows {
    /// The row ids, increasing.
    pub ids: Option<CudaSlice<i64>>,
    /// `ids.len() * row_len` values, row after row (`None` also for rows of no columns).
    pub data: Option<CudaSlice<f32>>,
}

#[derive(Debug)]
struct Key {
    stream: Arc<CudaStream>,
    shape: Vec<usize>,
    value: CudaSlice<f32>,
    merge: Option<CudaSlice<f32>>,
    residuals: Vec<CudaSlice<f32>>,
    packed: Option<CudaSlice<u8>>,
    slots: Vec<CudaSlice<f32>>,
    /// Per device: where a gradient from another GPU lands before the merge.
    staging: Vec<Option<CudaSlice<f32>>>,
    updates: u64,
}

impl Key {
    fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }
}

/// A single-GPU store of f32 dense values.
#[derive(Debug)]
pub struct DeviceStore {
    gpu: Arc<Gpu>,
    keys: BTreeMap<i64, Key>,
    updater: DeviceUpdater,
    compression: Option<Codec>,
    scratch: IdScratch,
    /// Other contexts values came from, with peer access already asked for.
    peers: Mutex<Vec<Arc<CudaContext>>>,
}

fn invalid(message: String) -> CudaError {
    CudaError::Invalid(message)
}

impl DeviceStore {
    /// An empty store on `gpu`.
    pub fn new(gpu: Arc<Gpu>) -> DeviceStore {
        DeviceStore {
            gpu,
            keys: BTreeMap::new(),
            updater: DeviceUpdater::Assign,
            compression: None,
            scratch: IdScratch::default(),
            peers: Mutex::new(Vec::new()),
        }
    }

    /// The GPU the values live on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Sets the updater: SGD and Adam run on the device; other optimizers are refused.
    pub fn set_updater(&mut self, updater: DeviceUpdater) -> Result<(), CudaError> {
        if let DeviceUpdater::Optimizer(o) = &updater {
            if !matches!(o, Optimizer::Sgd(_) | Optimizer::Adam(_)) {
                return Err(invalid(format!(
                    "the device store runs SGD and Adam, not {}",
                    o.name()
                )));
            }
            o.validate().map_err(|e| invalid(e.to_string()))?;
        }
        self.updater = updater;
        Ok(())
    }

    /// Sets gradient compression (R36): every later push is quantised with error feedback.
    pub fn set_compression(&mut self, codec: Codec) {
        self.compression = Some(codec);
    }

    /// The stream of `key`'s work (for callers that enqueue their own work after it).
    pub fn stream(&self, key: i64) -> Option<&Arc<CudaStream>> {
        self.keys.get(&key).map(|k| &k.stream)
    }

    /// Initialises `key` with `value` (of `shape`), copied on the key's stream. A key is
    /// initialised once (R9).
    pub fn init(
        &mut self,
        key: i64,
        shape: &[usize],
        value: &CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        if self.keys.contains_key(&key) {
            return Err(invalid(format!("key {key} is already initialised")));
        }
        let n: usize = shape.iter().product();
        if value.len() != n {
            return Err(invalid(format!(
                "shape {shape:?} needs {n} values, {} given",
                value.len()
            )));
        }
        self.meet([value.context()].into_iter());
        let stream = self.gpu.new_stream()?;
        let copy = peer::clone_in(&stream, value)?;
        self.keys.insert(
            key,
            Key {
                stream,
                shape: shape.to_vec(),
                value: copy,
                merge: None,
                residuals: Vec::new(),
                packed: None,
                slots: Vec::new(),
                staging: Vec::new(),
                updates: 0,
            },
        );
        Ok(())
    }

    /// Pushes one gradient per device (list order is the sum's order, R17) into `key`.
    /// Gradients on other GPUs are peer-copied to the key's GPU first (R78). Arguments are
    /// checked before any work is enqueued: a refused push changes nothing.
    pub fn push(&mut self, key: i64, grads: &[&CudaSlice<f32>]) -> Result<(), CudaError> {
        self.check_push(key, grads)?;
        let compression = self.compression;
        let updater = self.updater.clone();
        self.with_staged(key, grads, |gpu, k, staged| {
            Self::merge(gpu, compression, &updater, k, staged)
        })
    }

    /// Runs `work` on `key` with `grads` as the key's GPU sees them: those from another
    /// context peer-copied into the key's staging buffers first (R78).
    fn with_staged(
        &mut self,
        key: i64,
        grads: &[&CudaSlice<f32>],
        work: impl FnOnce(&Gpu, &mut Key, &[&CudaSlice<f32>]) -> Result<(), CudaError>,
    ) -> Result<(), CudaError> {
        self.meet(grads.iter().map(|g| g.context()));
        let gpu = Arc::clone(&self.gpu);
        let k = self
            .keys
            .get_mut(&key)
            .ok_or_else(|| invalid(format!("key {key} is not initialised")))?;
        // The staging buffers leave the key while the staged gradients borrow them.
        let mut staging = std::mem::take(&mut k.staging);
        let result =
            stage(&k.stream, &mut staging, grads).and_then(|staged| work(&gpu, k, &staged));
        k.staging = staging;
        result
    }

    /// The push of `grads` (all on the key's GPU) into `k`.
    fn merge(
        gpu: &Gpu,
        compression: Option<Codec>,
        updater: &DeviceUpdater,
        k: &mut Key,
        grads: &[&CudaSlice<f32>],
    ) -> Result<(), CudaError> {
        let n = k.value.len();
        let stream = Arc::clone(&k.stream);
        if let Some(codec) = compression {
            Self::compressed_merge(gpu, &stream, codec, k, grads)?;
        }
        match (updater, compression) {
            (DeviceUpdater::Assign, None) => gpu.reduce(&stream, &mut k.value, grads),
            (DeviceUpdater::Assign, Some(_)) => {
                let merge = k
                    .merge
                    .as_ref()
                    .ok_or_else(|| invalid("lost the merge buffer".into()))?;
                stream.memcpy_dtod(merge, &mut k.value)?;
                Ok(())
            }
            (DeviceUpdater::Optimizer(o), _) => {
                if k.slots.len() != o.slot_count() {
                    k.slots = (0..o.slot_count())
                        .map(|_| stream.alloc_zeros::<f32>(n))
                        .collect::<Result<_, _>>()?;
                }
                k.updates = k.updates.saturating_add(1);
                let lr = o.step_lr(k.updates);
                let fused = compression.is_none() && grads.len() <= MAX_FUSED_INPUTS;
                if !fused && compression.is_none() {
                    let merge = reuse(&stream, &mut k.merge, n)?;
                    gpu.reduce(&stream, merge, grads)?;
                }
                let result = Self::step(gpu, &stream, o, lr, k, fused.then_some(grads));
                if result.is_err() {
                    k.updates -= 1;
                }
                result
            }
        }
    }

    /// Asks once per context for direct access between the store's GPU and each of
    /// `contexts` that is another (best effort: peer copies are right without it).
    fn meet<'a>(&self, contexts: impl Iterator<Item = &'a Arc<CudaContext>>) {
        let home = self.gpu.context();
        for ctx in contexts.filter(|c| is_foreign(home, c)) {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            if !peers.iter().any(|p| !is_foreign(p, ctx)) {
                peer::enable_access(home, ctx);
                peers.push(Arc::clone(ctx));
            }
        }
    }

    /// `k.merge` = the sum of what the receiver decodes from each quantised gradient (R42).
    fn compressed_merge(
        gpu: &Gpu,
        stream: &Arc<CudaStream>,
        codec: Codec,
        k: &mut Key,
        grads: &[&CudaSlice<f32>],
    ) -> Result<(), CudaError> {
        let n = k.value.len();
        while k.residuals.len() < grads.len() {
            k.residuals.push(stream.alloc_zeros::<f32>(n)?);
        }
        let bytes = Gpu::compressed_bytes(codec, n);
        let packed = reuse(stream, &mut k.packed, bytes)?;
        let merge = reuse(stream, &mut k.merge, n)?;
        for (i, (g, r)) in grads.iter().zip(k.residuals.iter_mut()).enumerate() {
            if bytes == 0 {
                break;
            }
            gpu.quantize(stream, codec, g, r, packed)?;
            gpu.dequantize(stream, codec, packed, merge, i > 0)?;
        }
        Ok(())
    }

    /// One optimizer step on `k.value`: fused with the merge of `grads`, or with `k.merge`.
    fn step(
        gpu: &Gpu,
        stream: &Arc<CudaStream>,
        o: &Optimizer,
        lr: f64,
        k: &mut Key,
        grads: Option<&[&CudaSlice<f32>]>,
    ) -> Result<(), CudaError> {
        let merge = &k.merge;
        let grad = || {
            merge
                .as_ref()
                .ok_or_else(|| invalid("lost the merge buffer".into()))
        };
        match o {
            Optimizer::Sgd(p) => {
                let p = SgdParams::with_lr(p, lr);
                let m = k.slots.first_mut();
                match grads {
                    Some(grads) => gpu.reduce_sgd(stream, &p, &mut k.value, m, grads),
                    None => gpu.sgd_dense(stream, &p, &mut k.value, grad()?, m),
                }
            }
            Optimizer::Adam(p) => {
                let p = AdamParams::with_lr(p, lr);
                let [mean, var] = k.slots.as_mut_slice() else {
                    return Err(invalid("Adam keeps two state tensors".into()));
                };
                match grads {
                    Some(grads) => gpu.reduce_adam(stream, &p, &mut k.value, mean, var, grads),
                    None => gpu.adam_dense(stream, &p, &mut k.value, grad()?, mean, var),
                }
            }
            other => Err(invalid(format!(
                "{} does not run on the device",
                other.name()
            ))),
        }
    }

    /// A push followed by a pull into `out` (MXNet's `pushpull`). With no updater and no
    /// compression the two run as one pass: the sum is written to the value and to `out`.
    /// Every argument is checked before the push, so a refused pushpull changes nothing.
    pub fn pushpull(
        &mut self,
        key: i64,
        grads: &[&CudaSlice<f32>],
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let n = self.check_push(key, grads)?;
        check_pull_len(out.len(), n)?;
        let fused = self.updater == DeviceUpdater::Assign
            && self.compression.is_none()
            && grads.len() <= MAX_FUSED_INPUTS
            && !is_foreign(self.gpu.context(), out.context());
        if !fused {
            self.push(key, grads)?;
            return self.pull(key, out);
        }
        self.with_staged(key, grads, |gpu, k, staged| {
            gpu.reduce_pull(&k.stream, &mut k.value, out, staged)
        })
    }

    /// `key`'s state, or the error for a key never initialised.
    fn key(&self, key: i64) -> Result<&Key, CudaError> {
        self.keys
            .get(&key)
            .ok_or_else(|| invalid(format!("key {key} is not initialised")))
    }

    /// The checks a push makes before any work: the key's element count.
    pub(crate) fn check_push(
        &self,
        key: i64,
        grads: &[&CudaSlice<f32>],
    ) -> Result<usize, CudaError> {
        let n = self.key(key)?.value.len();
        if grads.is_empty() {
            return Err(invalid("a push needs at least one value".into()));
        }
        if let Some(g) = grads.iter().find(|g| g.len() != n) {
            return Err(invalid(format!(
                "a pushed value has {} elements, the key {n}",
                g.len()
            )));
        }
        Ok(n)
    }

    /// Copies `key`'s value into `out` (of the key's size, on any GPU) after the key's work
    /// so far (R25). Into another GPU it is a peer copy on `out`'s stream (R78).
    pub fn pull(&self, key: i64, out: &mut CudaSlice<f32>) -> Result<(), CudaError> {
        let k = self.key(key)?;
        check_pull_len(out.len(), k.value.len())?;
        self.meet([out.context()].into_iter());
        if is_foreign(self.gpu.context(), out.context()) {
            peer::copy_out(&k.stream, &k.value, out)
        } else {
            Ok(k.stream.memcpy_dtod(&k.value, out)?)
        }
    }

    /// The rows `ids` of `key` (any order, repeats allowed; R30-R32): sorted and made
    /// distinct on the device, then gathered. An id outside the key's rows is refused.
    pub fn row_sparse_pull(
        &mut self,
        key: i64,
        ids: &CudaSlice<i64>,
    ) -> Result<DeviceRows, CudaError> {
        let k = self
            .keys
            .get(&key)
            .ok_or_else(|| invalid(format!("key {key} is not initialised")))?;
        let rows = k.shape.first().copied().unwrap_or(1);
        let row_len = k.row_len();
        // Ids from another GPU are copied over first (there are no empty allocations to copy).
        let staged = if !ids.is_empty() && is_foreign(self.gpu.context(), ids.context()) {
            Some(peer::clone_in(&k.stream, ids)?)
        } else {
            None
        };
        let Some(unique) = self.gpu.unique_ids(
            &k.stream,
            staged.as_ref().unwrap_or(ids),
            rows,
            &mut self.scratch,
        )?
        else {
            return Ok(DeviceRows {
                ids: None,
                data: None,
            });
        };
        if row_len == 0 {
            return Ok(DeviceRows {
                ids: Some(unique),
                data: None,
            });
        }
        // SAFETY: `gather_rows` writes every element before anything reads it.
        #[allow(unsafe_code)]
        let mut data = unsafe { k.stream.alloc::<f32>(unique.len() * row_len) }?;
        self.gpu
            .gather_rows(&k.stream, &k.value, row_len, &unique, &mut data)?;
        Ok(DeviceRows {
            ids: Some(unique),
            data: Some(data),
        })
    }

    /// Waits for every key's work.
    pub fn wait_all(&self) -> Result<(), CudaError> {
        for k in self.keys.values() {
            k.stream.synchronize()?;
        }
        Ok(())
    }

    /// `key`'s value copied to the host (waits for its stream).
    pub fn value_to_host(&self, key: i64) -> Result<Vec<f32>, CudaError> {
        let k = self.key(key)?;
        Ok(k.stream.clone_dtoh(&k.value)?)
    }
}

/// `grads` as the key's GPU sees them: each one from another context peer-copied into its
/// device's staging buffer (kept between pushes), the others as they are.
fn stage<'a>(
    stream: &Arc<CudaStream>,
    staging: &'a mut Vec<Option<CudaSlice<f32>>>,
    grads: &[&'a CudaSlice<f32>],
) -> Result<Vec<&'a CudaSlice<f32>>, CudaError> {
    if staging.len() < grads.len() {
        staging.resize_with(grads.len(), || None);
    }
    for (g, slot) in grads.iter().zip(staging.iter_mut()) {
        if is_foreign(stream.context(), g.context()) {
            peer::copy_in(stream, g, reuse(stream, slot, g.len())?)?;
        }
    }
    grads
        .iter()
        .zip(staging.iter())
        .map(|(g, slot)| {
            if !is_foreign(stream.context(), g.context()) {
                return Ok(*g);
            }
            slot.as_ref()
                .ok_or_else(|| invalid("lost a staging buffer".into()))
        })
        .collect()
}

/// A pull output must have the key's element count.
fn check_pull_len(got: usize, n: usize) -> Result<(), CudaError> {
    if got == n {
        Ok(())
    } else {
        Err(invalid(format!(
            "a pull output of {got} elements for a key of {n}"
        )))
    }
}
