//! The CPU backend: f32 work on vectorised, multi-core kernels (crate `kvstore-cpu`), each
//! bit-exact with the spec; other dtypes and rare mixes go to the spec's reference code.

use super::{Backend, SpecBackend};
use kvstore_cpu::{Codec, SgdParams};
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

fn dense_f32_values<'a>(values: &[&'a Value]) -> Option<Vec<&'a [f32]>> {
    values
        .iter()
        .map(|v| match v {
            Value::Dense(t) => t.f32s(),
            Value::RowSparse(_) => None,
        })
        .collect()
}

fn sparse_f32_values<'a>(values: &[&'a Value]) -> Option<Vec<(&'a [i64], &'a [f32])>> {
    values
        .iter()
        .map(|v| match v {
            Value::RowSparse(r) => r.f32s().map(|d| (r.ids(), d)),
            Value::Dense(_) => None,
        })
        .collect()
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
        if let Some(inputs) = dense_f32_values(values) {
            let out = dense_f32(merged, first.shape(), first.device())?;
            return kvstore_cpu::sum_into(out, &inputs).map_err(kernel);
        }
        if let Some(inputs) = sparse_f32_values(values) {
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
        let (Some(first), Some(grads)) = (values.first(), dense_f32_values(values)) else {
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
        let Optimizer::Sgd(sgd) = optimizer;
        let params = SgdParams::from(sgd);
        let Value::Dense(weight) = &mut *stored else {
            return SpecBackend.optimize(optimizer, state, merged, stored);
        };
        if weight.dtype() != DType::F32 || merged.dtype() != DType::F32 {
            return SpecBackend.optimize(optimizer, state, merged, stored);
        }
        let shape = weight.shape().to_vec();
        if let Some(Some(m)) = state.as_ref() {
            if m.shape() != shape.as_slice() || m.dtype() != DType::F32 {
                // The spec reports the mismatch (or handles the odd dtype) without changing anything.
                return SpecBackend.optimize(optimizer, state, merged, stored);
            }
        }
        // The key's first update creates its state: a zero momentum buffer when it has one.
        if state.is_none() {
            let momentum = (sgd.momentum != 0.0)
                .then(|| Tensor::zeros(shape.clone(), DType::F32))
                .transpose()
                .map_err(|e| UpdateError(e.to_string()))?;
            *state = Some(momentum);
        }
        let momentum = match state {
            Some(Some(m)) => m.f32_mut(),
            _ => None,
        };
        let Some(w) = weight.f32_mut() else {
            return Err(UpdateError("an f32 weight lost its dtype".into()));
        };
        let stepped = match merged {
            Value::Dense(g) => match g.f32s() {
                Some(g) => kvstore_cpu::sgd_dense(&params, w, g, momentum),
                None => return Err(UpdateError("an f32 gradient lost its dtype".into())),
            },
            Value::RowSparse(g) => match g.f32s() {
                Some(rows) => {
                    kvstore_cpu::sgd_rows(&params, w, g.row_len(), g.ids(), rows, momentum)
                }
                None => return Err(UpdateError("an f32 gradient lost its dtype".into())),
            },
        };
        stepped.map_err(|e| UpdateError(e.to_string()))
    }
}
