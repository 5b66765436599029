//! The CUDA backend (feature `cuda`): the engine's data work on a GPU, with the kernels of
//! `kvstore-cuda`, bit-exact with the spec.
//!
//! The engine's values are host [`Value`]s, so each operation here copies its inputs to the
//! device, runs the kernels and copies the results back: this backend exists so that the
//! engine's equivalence suite drives the GPU kernels through every store operation. The
//! device-resident path, with no host round trip, is [`kvstore_cuda::DeviceStore`].
//!
//! On the GPU: f32 reduces (dense, and row_sparse sums through the device's id dedup and
//! scatter-add), compressed reduces, `row_sparse_pull` gathers, SGD and Adam. Everything else
//! (other dtypes, other optimizers, plain copies, empty arrays) goes to the [`CpuBackend`].

use super::values::{dense_f32s, sparse_f32s};
use super::{Backend, CpuBackend};
use kvstore_cpu::{AdamParams, Codec, SgdParams};
use kvstore_cuda::cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use kvstore_cuda::{AdamRows, CudaError, Gpu, IdScratch};
use kvstore_spec::codec::Compression;
use kvstore_spec::optimizer::{Optimizer, State};
use kvstore_spec::updater::UpdateError;
use kvstore_spec::{DType, Error, Result, RowSparse, Tensor, Value};
use std::sync::Arc;

/// The engine's backend on one GPU.
#[derive(Debug, Clone)]
pub struct CudaBackend {
    gpu: Arc<Gpu>,
}

fn gpu_error(e: CudaError) -> Error {
    Error::OperationPanicked {
        message: format!("the GPU failed: {e}"),
    }
}

thread_local! {
    /// Each engine worker enqueues on its own stream, so keys in flight overlap on the GPU.
    static STREAM: std::cell::RefCell<Option<Arc<CudaStream>>> = const { std::cell::RefCell::new(None) };
}

impl CudaBackend {
    /// The backend on GPU `ordinal`; a typed error when there is none (or no CUDA at all).
    pub fn open(ordinal: usize) -> Result<CudaBackend> {
        let gpu = Gpu::open(ordinal).map_err(|e| Error::UnsupportedKind {
            kind: "cuda".into(),
            reason: e.to_string(),
        })?;
        Ok(CudaBackend { gpu: Arc::new(gpu) })
    }

    fn stream(&self) -> std::result::Result<Arc<CudaStream>, CudaError> {
        STREAM.with(|slot| {
            let mut slot = slot.borrow_mut();
            if let Some(s) = slot.as_ref() {
                return Ok(Arc::clone(s));
            }
            let s = self.gpu.new_stream()?;
            *slot = Some(Arc::clone(&s));
            Ok(s)
        })
    }

    /// `merged` = the sum of dense f32 `inputs` (all non-empty, of one length).
    fn reduce_dense(&self, inputs: &[&[f32]]) -> std::result::Result<Vec<f32>, CudaError> {
        let s = self.stream()?;
        let dev = inputs
            .iter()
            .map(|x| up(&s, x))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let refs: Vec<&CudaSlice<f32>> = dev.iter().collect();
        let mut out = s.alloc_zeros::<f32>(inputs[0].len())?;
        self.gpu.reduce(&s, &mut out, &refs)?;
        Ok(s.clone_dtoh(&out)?)
    }

    /// The sum of row_sparse f32 values: their ids' union deduplicated on the device, then
    /// `+0.0` plus each value's rows scattered in list order (one value: a copy).
    fn reduce_sparse(
        &self,
        inputs: &[(&[i64], &[f32])],
        rows: usize,
        row_len: usize,
    ) -> std::result::Result<(Vec<i64>, Vec<f32>), CudaError> {
        let s = self.stream()?;
        let all: Vec<i64> = inputs
            .iter()
            .flat_map(|(ids, _)| ids.iter().copied())
            .collect();
        let union = self
            .gpu
            .unique_ids(&s, &up(&s, &all)?, rows, &mut IdScratch::default())?;
        let Some(union) = union else {
            return Ok((Vec::new(), Vec::new()));
        };
        let ids = s.clone_dtoh(&union)?;
        let mut out = s.alloc_zeros::<f32>(ids.len() * row_len)?;
        let single = inputs.len() == 1;
        for (value_ids, data) in inputs {
            if value_ids.is_empty() {
                continue;
            }
            let want = up(&s, value_ids)?;
            let mut pos = s.alloc_zeros::<i64>(value_ids.len())?;
            self.gpu.locate_rows(&s, &union, &want, &mut pos)?;
            self.gpu
                .scatter_rows(&s, &mut out, row_len, &pos, &up(&s, data)?, !single)?;
        }
        Ok((ids, s.clone_dtoh(&out)?))
    }

    fn compress(
        &self,
        codec: Codec,
        grads: &[&[f32]],
        residuals: &mut [&mut Vec<f32>],
    ) -> std::result::Result<Vec<f32>, CudaError> {
        let s = self.stream()?;
        let n = grads[0].len();
        let mut merged = s.alloc_zeros::<f32>(n)?;
        let mut packed = s.alloc_zeros::<u8>(Gpu::compressed_bytes(codec, n))?;
        let mut dev_residuals = Vec::with_capacity(grads.len());
        for (i, (g, r)) in grads.iter().zip(residuals.iter()).enumerate() {
            let mut dr = if r.is_empty() {
                s.alloc_zeros::<f32>(n)?
            } else {
                up(&s, r)?
            };
            self.gpu
                .quantize(&s, codec, &up(&s, g)?, &mut dr, &mut packed)?;
            self.gpu
                .dequantize(&s, codec, &packed, &mut merged, i > 0)?;
            dev_residuals.push(dr);
        }
        let merged = s.clone_dtoh(&merged)?;
        // Residuals change only once every kernel has succeeded.
        let host: Vec<Vec<f32>> = dev_residuals
            .iter()
            .map(|d| s.clone_dtoh(d))
            .collect::<std::result::Result<_, _>>()?;
        for (r, h) in residuals.iter_mut().zip(host) {
            **r = h;
        }
        Ok(merged)
    }

    fn gather(
        &self,
        stored: &Value,
        ids: &[i64],
        row_len: usize,
    ) -> std::result::Result<Option<Vec<f32>>, CudaError> {
        let s = self.stream()?;
        let want = up(&s, ids)?;
        let mut out = s.alloc_zeros::<f32>(ids.len() * row_len)?;
        match stored {
            Value::Dense(t) => {
                let Some(table) = t.f32s() else {
                    return Ok(None);
                };
                self.gpu
                    .gather_rows(&s, &up(&s, table)?, row_len, &want, &mut out)?;
            }
            Value::RowSparse(r) => {
                let Some(held) = r.f32s() else {
                    return Ok(None);
                };
                if r.ids().is_empty() {
                    return Ok(Some(vec![0.0; ids.len() * row_len]));
                }
                let mut pos = s.alloc_zeros::<i64>(ids.len())?;
                self.gpu
                    .locate_rows(&s, &up(&s, r.ids())?, &want, &mut pos)?;
                self.gpu
                    .gather_rows(&s, &up(&s, held)?, row_len, &pos, &mut out)?;
            }
        }
        Ok(Some(s.clone_dtoh(&out)?))
    }
}

fn up<T: DeviceRepr>(
    s: &Arc<CudaStream>,
    host: &[T],
) -> std::result::Result<CudaSlice<T>, CudaError> {
    Ok(s.clone_htod(host)?)
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn reduce(&self, values: &[&Value], dtype: DType, merged: &mut Value) -> Result<()> {
        let Some(first) = values.first() else {
            return CpuBackend.reduce(values, dtype, merged);
        };
        let (shape, device) = (first.shape().to_vec(), first.device());
        if dtype != DType::F32 || first.shape().iter().product::<usize>() == 0 {
            return CpuBackend.reduce(values, dtype, merged);
        }
        if let Some(inputs) = dense_f32s(values) {
            let sum = self.reduce_dense(&inputs).map_err(gpu_error)?;
            *merged = Value::Dense(Tensor::new(shape, sum)?.on(device));
            return Ok(());
        }
        if let Some(inputs) = sparse_f32s(values) {
            let rows = shape.first().copied().unwrap_or(1);
            let row_len: usize = shape.iter().skip(1).product();
            let (ids, data) = self
                .reduce_sparse(&inputs, rows, row_len)
                .map_err(gpu_error)?;
            *merged = Value::RowSparse(RowSparse::new(shape, ids, data)?.on(device));
            return Ok(());
        }
        CpuBackend.reduce(values, dtype, merged)
    }

    fn compress_reduce(
        &self,
        compression: Compression,
        values: &[&Value],
        residuals: &mut [&mut Vec<f32>],
        merged: &mut Value,
    ) -> Result<()> {
        let (Some(first), Some(grads)) = (values.first(), dense_f32s(values)) else {
            return CpuBackend.compress_reduce(compression, values, residuals, merged);
        };
        let n = grads[0].len();
        let fits = n > 0
            && grads.len() == residuals.len()
            && residuals.iter().all(|r| r.is_empty() || r.len() == n);
        if !fits {
            return CpuBackend.compress_reduce(compression, values, residuals, merged);
        }
        let sum = self
            .compress(Codec::from(compression), &grads, residuals)
            .map_err(gpu_error)?;
        *merged = Value::Dense(Tensor::new(first.shape().to_vec(), sum)?.on(first.device()));
        Ok(())
    }

    fn pull_into(&self, stored: &Value, out: &mut Value, ignore_sparse: bool) -> Result<()> {
        // A host-to-host copy: a trip through the GPU would only add two transfers.
        CpuBackend.pull_into(stored, out, ignore_sparse)
    }

    fn pull_into_many(
        &self,
        stored: &Value,
        outs: &mut [&mut Value],
        ignore_sparse: bool,
    ) -> Result<()> {
        CpuBackend.pull_into_many(stored, outs, ignore_sparse)
    }

    fn row_sparse_into(&self, stored: &Value, ids: &[i64], out: &mut Value) -> Result<()> {
        let row_len: usize = stored.shape().iter().skip(1).product();
        let fast = out.dtype() == DType::F32
            && stored.dtype() == DType::F32
            && matches!(out, Value::RowSparse(_))
            && !ids.is_empty()
            && row_len > 0;
        if !fast {
            return CpuBackend.row_sparse_into(stored, ids, out);
        }
        let Some(data) = self.gather(stored, ids, row_len).map_err(gpu_error)? else {
            return CpuBackend.row_sparse_into(stored, ids, out);
        };
        let (shape, device) = (out.shape().to_vec(), out.device());
        *out = Value::RowSparse(RowSparse::new(shape, ids.to_vec(), data)?.on(device));
        Ok(())
    }

    fn optimize(
        &self,
        optimizer: &Optimizer,
        state: &mut Option<State>,
        merged: &Value,
        stored: &mut Value,
    ) -> std::result::Result<(), UpdateError> {
        let on_gpu = matches!(optimizer, Optimizer::Sgd(_) | Optimizer::Adam(_))
            && matches!(&*stored, Value::Dense(w) if w.dtype() == DType::F32 && !w.shape().contains(&0))
            && merged.dtype() == DType::F32
            && merged.shape() == stored.shape()
            && optimizer
                .check_gradient(matches!(merged, Value::RowSparse(_)))
                .is_ok()
            && state
                .as_ref()
                .is_none_or(|s| optimizer.check_state(s, stored.shape(), DType::F32).is_ok());
        if !on_gpu {
            return CpuBackend.optimize(optimizer, state, merged, stored);
        }
        let next = optimizer.state_for(state.as_ref(), stored)?;
        let lr = optimizer.step_lr(next.updates);
        let (weight, slots) = self
            .step(optimizer, lr, &next.slots, merged, stored)
            .map_err(|e| UpdateError(format!("the GPU failed: {e}")))?;
        let device = stored.device();
        let shape = stored.shape().to_vec();
        let rebuilt: std::result::Result<Vec<Tensor>, Error> = slots
            .into_iter()
            .map(|s| Tensor::new(shape.clone(), s).map(|t| t.on(device)))
            .collect();
        let slots = rebuilt.map_err(|e| UpdateError(e.to_string()))?;
        *stored = Value::Dense(
            Tensor::new(shape, weight)
                .map_err(|e| UpdateError(e.to_string()))?
                .on(device),
        );
        *state = Some(State {
            updates: next.updates,
            slots,
        });
        Ok(())
    }
}

impl CudaBackend {
    /// One SGD or Adam step on the device: the new weight and state tensors.
    fn step(
        &self,
        optimizer: &Optimizer,
        lr: f64,
        slots: &[Tensor],
        merged: &Value,
        stored: &Value,
    ) -> std::result::Result<(Vec<f32>, Vec<Vec<f32>>), CudaError> {
        let lost = || CudaError::Invalid("an f32 weight, gradient or state lost its type".into());
        let s = self.stream()?;
        let w_host = match stored {
            Value::Dense(t) => t.f32s().ok_or_else(lost)?,
            Value::RowSparse(_) => return Err(lost()),
        };
        let mut w = up(&s, w_host)?;
        let mut dev_slots = slots
            .iter()
            .map(|t| t.f32s().ok_or_else(lost).and_then(|x| up(&s, x)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let row_len: usize = stored.shape().iter().skip(1).product();
        match (optimizer, merged) {
            (Optimizer::Sgd(p), Value::Dense(g)) => {
                let p = SgdParams::with_lr(p, lr);
                let g = up(&s, g.f32s().ok_or_else(lost)?)?;
                self.gpu
                    .sgd_dense(&s, &p, &mut w, &g, dev_slots.first_mut())?;
            }
            (Optimizer::Sgd(p), Value::RowSparse(g)) => {
                let p = SgdParams::with_lr(p, lr);
                if !g.ids().is_empty() {
                    let (ids, rows) = (up(&s, g.ids())?, up(&s, g.f32s().ok_or_else(lost)?)?);
                    self.gpu.sgd_rows(
                        &s,
                        &p,
                        &mut w,
                        row_len,
                        &ids,
                        &rows,
                        dev_slots.first_mut(),
                    )?;
                }
            }
            (Optimizer::Adam(p), merged) => {
                let p = AdamParams::with_lr(p, lr);
                let [mean, var] = dev_slots.as_mut_slice() else {
                    return Err(lost());
                };
                match merged {
                    Value::Dense(g) => {
                        let g = up(&s, g.f32s().ok_or_else(lost)?)?;
                        self.gpu.adam_dense(&s, &p, &mut w, &g, mean, var)?;
                    }
                    Value::RowSparse(g) if AdamRows::of(&p) != AdamRows::All => {
                        // Lazy: only the gradient's rows.
                        if !g.ids().is_empty() && row_len > 0 {
                            let (ids, rows) =
                                (up(&s, g.ids())?, up(&s, g.f32s().ok_or_else(lost)?)?);
                            self.gpu
                                .adam_rows(&s, &p, &mut w, row_len, &ids, None, &rows, mean, var)?;
                        }
                    }
                    Value::RowSparse(g) => {
                        // Every row: each one's place in the gradient, or -1 (decay alone).
                        let mut pos = vec![-1i64; stored.shape().first().copied().unwrap_or(1)];
                        for (k, &id) in g.ids().iter().enumerate() {
                            pos[id as usize] = k as i64;
                        }
                        let (ids, rows) = if g.ids().is_empty() {
                            // No row present: one stand-in row, never read (every position -1).
                            (up(&s, &[0i64])?, up(&s, &vec![0.0f32; row_len])?)
                        } else {
                            (up(&s, g.ids())?, up(&s, g.f32s().ok_or_else(lost)?)?)
                        };
                        let dpos = up(&s, &pos)?;
                        self.gpu.adam_rows(
                            &s,
                            &p,
                            &mut w,
                            row_len,
                            &ids,
                            Some(&dpos),
                            &rows,
                            mean,
                            var,
                        )?;
                    }
                }
            }
            _ => return Err(lost()),
        }
        let weight = s.clone_dtoh(&w)?;
        let slots = dev_slots
            .iter()
            .map(|d| s.clone_dtoh(d))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok((weight, slots))
    }
}
