//! The CPU backend: f32 work on vectorised, multi-core kernels (crate `kvstore-cpu`), each
//! bit-exact with the spec; other dtypes and rare mixes go to the spec's reference code.

use super::values::{dense_f32s, sparse_f32s};
use super::{Backend, SpecBackend};
use kvstore_cpu::{
    AdaGradParams, AdamParams, Codec, FtrlParams, NagParams, RmsPropParams, RmsPropState, SgdParams,
};
use kvstore_spec::codec::Compression;
use kvstore_spec::optimizer::{Optimizer, State};
use kvstore_spec::updater::UpdateError;
use kvstore_spec::{DType, Data, Device, Error, Result, RowSparse, Tensor, Value};
use rayon::prelude::*;

/// Fast f32 kernels on every core; the spec's code for everything else.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

/// Below this many elements a copy runs on the calling thread: splitting costs more than it
/// saves.
const PARALLEL_COPY: usize = 1 << 18;

fn kernel(e: kvstore_cpu::KernelError) -> Error {
    Error::OperationPanicked {
        message: format!("a CPU kernel refused its arguments: {e}"),
    }
}

/// Copies `src` into `dst` (same length) on every core for large buffers.
fn copy(dst: &mut [f32], src: &[f32]) {
    if dst.len() < PARALLEL_COPY {
        dst.copy_from_slice(src);
    } else {
        dst.par_chunks_mut(PARALLEL_COPY / 4)
            .zip(src.par_chunks(PARALLEL_COPY / 4))
            .for_each(|(d, s)| d.copy_from_slice(s));
    }
}

/// Copies `src` into every buffer of `dsts` (all of its length), one cache-sized chunk of `src`
/// at a time so it is read from memory once, chunks spread over every core.
fn broadcast(src: &[f32], dsts: &mut [&mut [f32]]) {
    const CHUNK: usize = 1 << 14;
    if src.len() < PARALLEL_COPY {
        for dst in dsts.iter_mut() {
            dst.copy_from_slice(src);
        }
        return;
    }
    // Split every destination into the same chunks, then hand chunk i of all of them to one task.
    let mut columns: Vec<std::slice::ChunksMut<'_, f32>> =
        dsts.iter_mut().map(|d| d.chunks_mut(CHUNK)).collect();
    let mut tasks: Vec<(&[f32], Vec<&mut [f32]>)> = Vec::with_capacity(src.len() / CHUNK + 1);
    for piece in src.chunks(CHUNK) {
        let targets: Vec<&mut [f32]> = columns.iter_mut().filter_map(Iterator::next).collect();
        tasks.push((piece, targets));
    }
    tasks.into_par_iter().for_each(|(piece, targets)| {
        for target in targets {
            target.copy_from_slice(piece);
        }
    });
}

/// `value` as a dense f32 buffer of `shape` on `device`, reusing its storage when it already is
/// one of the right size (the merge buffer of a warm key).
fn dense_f32<'a>(value: &'a mut Value, shape: &[usize], device: Device) -> Result<&'a mut [f32]> {
    let reusable =
        matches!(value, Value::Dense(t) if t.shape() == shape && t.dtype() == DType::F32);
    if !reusable {
        *value = Value::Dense(Tensor::zeros(shape.to_vec(), DType::F32)?);
    }
    value.set_device(device);
    match value {
        Value::Dense(t) => t.f32_mut().ok_or(Error::OperationPanicked {
            message: "a dense f32 buffer lost its dtype".into(),
        }),
        Value::RowSparse(_) => Err(Error::OperationPanicked {
            message: "a dense f32 buffer became row_sparse".into(),
        }),
    }
}

/// The id and data vectors of a row_sparse buffer (ids emptied, data as it was), so they can
/// be refilled without allocating.
fn take_sparse_parts(value: &mut Value) -> Result<(Vec<i64>, Vec<f32>)> {
    // An empty tensor holds no heap memory: the placeholder costs nothing.
    let placeholder = Value::Dense(Tensor::zeros(vec![0], DType::F32)?);
    let (ids, data) = match std::mem::replace(value, placeholder) {
        Value::RowSparse(r) => {
            let (_, ids, data, _) = r.into_parts();
            (ids, data)
        }
        Value::Dense(t) => (Vec::new(), t.into_parts().1),
    };
    let data = match data {
        Data::F32(xs) => xs,
        _ => Vec::new(),
    };
    let mut ids = ids;
    ids.clear();
    // The data keeps its length: callers resize it and overwrite every element, so a warm
    // buffer is never zero-filled first.
    Ok((ids, data))
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn reduce(&self, values: &[&Value], dtype: DType, merged: &mut Value) -> Result<()> {
        let Some(first) = values.first() else {
            return SpecBackend.reduce(values, dtype, merged);
        };
        if dtype != DType::F32 {
            return SpecBackend.reduce(values, dtype, merged);
        }
        if let [Value::Dense(only)] = values {
            if let Some(src) = only.f32s() {
                let out = dense_f32(merged, only.shape(), only.device())?;
                return kvstore_cpu::sum_into(out, &[src]).map_err(kernel);
            }
        }
        if let Some(inputs) = dense_f32s(values) {
            let out = dense_f32(merged, first.shape(), first.device())?;
            return kvstore_cpu::sum_into(out, &inputs).map_err(kernel);
        }
        if let Some(inputs) = sparse_f32s(values) {
            let shape = first.shape().to_vec();
            let row_len = shape.iter().skip(1).product();
            let (mut ids, mut data) = take_sparse_parts(merged)?;
            kvstore_cpu::sparse_sum_into(&inputs, row_len, &mut ids, &mut data).map_err(kernel)?;
            *merged = Value::RowSparse(RowSparse::new(shape, ids, data)?.on(first.device()));
            return Ok(());
        }
        SpecBackend.reduce(values, dtype, merged)
    }

    fn compress_reduce(
        &self,
        compression: Compression,
        values: &[&Value],
        residuals: &mut [&mut Vec<f32>],
        merged: &mut Value,
    ) -> Result<()> {
        let (Some(first), Some(grads)) = (values.first(), dense_f32s(values)) else {
            return SpecBackend.compress_reduce(compression, values, residuals, merged);
        };
        for (residual, grad) in residuals.iter_mut().zip(&grads) {
            if residual.is_empty() {
                residual.resize(grad.len(), 0.0);
            }
        }
        let out = dense_f32(merged, first.shape(), first.device())?;
        let mut slots: Vec<&mut [f32]> = residuals.iter_mut().map(|r| r.as_mut_slice()).collect();
        kvstore_cpu::quantize_sum_into(Codec::from(compression), out, &grads, &mut slots)
            .map_err(kernel)
    }

    fn pull_into(&self, stored: &Value, out: &mut Value, ignore_sparse: bool) -> Result<()> {
        match (stored, &mut *out) {
            (Value::Dense(s), Value::Dense(o)) => match (s.f32s(), o.f32_mut()) {
                (Some(src), Some(dst)) if src.len() == dst.len() => {
                    copy(dst, src);
                    Ok(())
                }
                _ => SpecBackend.pull_into(stored, out, ignore_sparse),
            },
            (Value::RowSparse(s), Value::Dense(o)) => match (s.f32s(), o.f32_mut()) {
                (Some(rows), Some(dst)) if dst.len() == s.rows() * s.row_len() => {
                    let row_len = s.row_len();
                    dst.fill(0.0);
                    for (k, &id) in s.ids().iter().enumerate() {
                        let at = id as usize * row_len;
                        copy(
                            &mut dst[at..at + row_len],
                            &rows[k * row_len..(k + 1) * row_len],
                        );
                    }
                    Ok(())
                }
                _ => SpecBackend.pull_into(stored, out, ignore_sparse),
            },
            (_, Value::RowSparse(_)) if ignore_sparse => Ok(()),
            _ => SpecBackend.pull_into(stored, out, ignore_sparse),
        }
    }

    fn pull_into_many(
        &self,
        stored: &Value,
        outs: &mut [&mut Value],
        ignore_sparse: bool,
    ) -> Result<()> {
        let src = match stored {
            Value::Dense(t) => t.f32s(),
            Value::RowSparse(_) => None,
        };
        let dsts: Option<Vec<&mut [f32]>> = outs
            .iter_mut()
            .map(|o| match &mut **o {
                Value::Dense(t) => t.f32_mut(),
                Value::RowSparse(_) => None,
            })
            .collect();
        match (src, dsts) {
            (Some(src), Some(mut dsts)) if dsts.iter().all(|d| d.len() == src.len()) => {
                broadcast(src, &mut dsts);
                Ok(())
            }
            _ => {
                for out in outs.iter_mut() {
                    self.pull_into(stored, out, ignore_sparse)?;
                }
                Ok(())
            }
        }
    }

    fn row_sparse_into(&self, stored: &Value, ids: &[i64], out: &mut Value) -> Result<()> {
        let row_len: usize = stored.shape().iter().skip(1).product();
        let fast = out.dtype() == DType::F32 && stored.dtype() == DType::F32;
        if !fast || !matches!(out, Value::RowSparse(_)) {
            return SpecBackend.row_sparse_into(stored, ids, out);
        }
        let (shape, device) = (out.shape().to_vec(), out.device());
        let (mut out_ids, mut data) = take_sparse_parts(out)?;
        out_ids.extend_from_slice(ids);
        data.resize(ids.len() * row_len, 0.0);
        let gathered = match stored {
            Value::Dense(t) => t
                .f32s()
                .map(|table| kvstore_cpu::gather_rows(table, row_len, ids, &mut data)),
            Value::RowSparse(r) => r.f32s().map(|table| {
                kvstore_cpu::gather_sparse_rows(r.ids(), table, row_len, ids, &mut data)
            }),
        };
        let rebuilt =
            RowSparse::new(shape.clone(), out_ids, data).map(|r| Value::RowSparse(r.on(device)));
        let failure = match (gathered, rebuilt) {
            (Some(Ok(())), Ok(value)) => {
                *out = value;
                return Ok(());
            }
            (Some(Err(e)), _) => kernel(e),
            (_, Err(e)) => e,
            (None, _) => Error::OperationPanicked {
                message: "row_sparse_pull lost its f32 data".into(),
            },
        };
        // Unreachable with checked ids; even so the output keeps its shape, dtype and device,
        // which later calls were checked against.
        *out = Value::RowSparse(RowSparse::empty(shape, DType::F32)?.on(device));
        Err(failure)
    }

    fn optimize(
        &self,
        optimizer: &Optimizer,
        state: &mut Option<State>,
        merged: &Value,
        stored: &mut Value,
    ) -> std::result::Result<(), UpdateError> {
        // Every optimizer on f32 weights has parallel kernels; other dtypes, row_sparse
        // weights and arguments the spec refuses go to the spec's arithmetic.
        let Value::Dense(weight) = &*stored else {
            return SpecBackend.optimize(optimizer, state, merged, stored);
        };
        if weight.dtype() != DType::F32 || merged.dtype() != DType::F32 {
            return SpecBackend.optimize(optimizer, state, merged, stored);
        }
        let sparse = matches!(merged, Value::RowSparse(_));
        let fits = merged.shape() == weight.shape()
            && optimizer.check_gradient(sparse).is_ok()
            && state.as_ref().is_none_or(|current| {
                optimizer
                    .check_state(current, weight.shape(), DType::F32)
                    .is_ok()
            });
        if !fits {
            // The spec reports the problem without changing anything.
            return SpecBackend.optimize(optimizer, state, merged, stored);
        }
        let device = weight.device();
        // The key's first update starts from zero state buffers; later ones update the state
        // in place (no copy of the buffers).
        let previous = state.as_ref().map(|s| s.updates);
        let mut next = match state.take() {
            Some(current) => current,
            None => optimizer.state_for(None, stored)?,
        };
        if let Some(updates) = previous {
            next.updates = updates.saturating_add(1);
        }
        let lr = optimizer.step_lr(next.updates);
        if let Err(e) = step(optimizer, lr, &mut next.slots, merged, stored) {
            // The kernels check lengths before writing anything: put the state back as it was.
            if let Some(updates) = previous {
                next.updates = updates;
                *state = Some(next);
            }
            return Err(UpdateError(e));
        }
        // States follow their weight's device, as the spec's do.
        next.slots = next.slots.into_iter().map(|t| t.on(device)).collect();
        *state = Some(next);
        Ok(())
    }
}

/// The gradient as the kernels take it.
enum Grad<'a> {
    Dense(&'a [f32]),
    Rows {
        row_len: usize,
        ids: &'a [i64],
        rows: &'a [f32],
    },
}

/// The f32 buffers of exactly `K` state tensors.
fn f32_slots<const K: usize>(slots: &mut [Tensor]) -> Option<[&mut [f32]; K]> {
    let slots: &mut [Tensor; K] = slots.try_into().ok()?;
    let buffers = slots.each_mut().map(Tensor::f32_mut);
    if buffers.iter().any(Option::is_none) {
        return None;
    }
    Some(buffers.map(Option::unwrap_or_default))
}

/// The momentum buffer, if the state keeps one.
fn momentum(slots: &mut [Tensor]) -> Option<Option<&mut [f32]>> {
    if slots.is_empty() {
        return Some(None);
    }
    f32_slots::<1>(slots).map(|[m]| Some(m))
}

/// One update of the f32 dense weight `stored` by the optimizer's kernel, with step size `lr`.
fn step(
    optimizer: &Optimizer,
    lr: f64,
    slots: &mut [Tensor],
    merged: &Value,
    stored: &mut Value,
) -> std::result::Result<(), String> {
    let lost = || "an f32 dense weight, gradient or state lost its type".to_string();
    let Value::Dense(weight) = stored else {
        return Err(lost());
    };
    let w = weight.f32_mut().ok_or_else(lost)?;
    let grad = match merged {
        Value::Dense(g) => Grad::Dense(g.f32s().ok_or_else(lost)?),
        Value::RowSparse(g) => Grad::Rows {
            row_len: g.row_len(),
            ids: g.ids(),
            rows: g.f32s().ok_or_else(lost)?,
        },
    };
    let stepped = match optimizer {
        Optimizer::Sgd(p) => {
            let p = SgdParams::with_lr(p, lr);
            let m = momentum(slots).ok_or_else(lost)?;
            match grad {
                Grad::Dense(g) => kvstore_cpu::sgd_dense(&p, w, g, m),
                Grad::Rows { row_len, ids, rows } => {
                    kvstore_cpu::sgd_rows(&p, w, row_len, ids, rows, m)
                }
            }
        }
        Optimizer::Nag(p) => {
            let p = NagParams::with_lr(p, lr);
            let m = momentum(slots).ok_or_else(lost)?;
            match grad {
                Grad::Dense(g) => kvstore_cpu::nag_dense(&p, w, g, m),
                Grad::Rows { row_len, ids, rows } => {
                    kvstore_cpu::nag_rows(&p, w, row_len, ids, rows, m)
                }
            }
        }
        Optimizer::Adam(p) => {
            let p = AdamParams::with_lr(p, lr);
            let [mean, var] = f32_slots(slots).ok_or_else(lost)?;
            match grad {
                Grad::Dense(g) => kvstore_cpu::adam_dense(&p, w, g, mean, var),
                Grad::Rows { row_len, ids, rows } => {
                    kvstore_cpu::adam_rows(&p, w, row_len, ids, rows, mean, var)
                }
            }
        }
        Optimizer::AdaGrad(p) => {
            let [history] = f32_slots(slots).ok_or_else(lost)?;
            match grad {
                Grad::Dense(g) => {
                    let p = AdaGradParams::dense_with_lr(p, lr);
                    kvstore_cpu::adagrad_dense(&p, w, g, history)
                }
                Grad::Rows { row_len, ids, rows } => {
                    let p = AdaGradParams::with_lr(p, lr);
                    kvstore_cpu::adagrad_rows(&p, w, row_len, ids, rows, history)
                }
            }
        }
        Optimizer::RmsProp(p) => {
            let p = RmsPropParams::with_lr(p, lr);
            // The spec picks the centered formula by the state's three tensors, as here.
            let state = match slots.len() {
                1 => f32_slots(slots).map(|[n]| RmsPropState::Plain { n }),
                _ => f32_slots(slots).map(|[n, g, delta]| RmsPropState::Centered { n, g, delta }),
            }
            .ok_or_else(lost)?;
            match grad {
                Grad::Dense(g) => kvstore_cpu::rmsprop_dense(&p, w, g, state),
                Grad::Rows { row_len, ids, rows } => {
                    kvstore_cpu::rmsprop_rows(&p, w, row_len, ids, rows, state)
                }
            }
        }
        Optimizer::Ftrl(p) => {
            let p = FtrlParams::with_lr(p, lr);
            let [z, n] = f32_slots(slots).ok_or_else(lost)?;
            match grad {
                Grad::Dense(g) => kvstore_cpu::ftrl_dense(&p, w, g, z, n),
                Grad::Rows { row_len, ids, rows } => {
                    kvstore_cpu::ftrl_rows(&p, w, row_len, ids, rows, z, n)
                }
            }
        }
    };
    stepped.map_err(|e| e.to_string())
}
