//! Copies between CUDA contexts: a value on another GPU (or in another context on the same one)
//! reaches a store's GPU through a peer copy, and a pull reaches another GPU the same way.
//!
//! cudarc's `memcpy_dtod` takes the peer path (`cuMemcpyPeerAsync`) whenever source and
//! destination belong to different contexts, and orders the copy after the source's stream.
//! What it leaves open is the other direction: the event it records for the copy's read or
//! write is recorded on the buffer's own stream before the copy has run, so work enqueued there
//! later could overtake the copy. [`copy_in`] and [`copy_out`] close that by making the other
//! context's stream wait for the copy (a stream may wait on another context's event).
#![allow(unsafe_code)] // Two driver calls that take raw context and device handles.

use crate::CudaError;
use cudarc::driver::{sys, CudaContext, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use std::sync::Arc;

/// Whether `ctx` is another context than `home` (another GPU, or a second context on it).
pub(crate) fn is_foreign(home: &CudaContext, ctx: &CudaContext) -> bool {
    home.cu_ctx() != ctx.cu_ctx()
}

/// Copies `src` (in any context) into `dst` on `stream` (`dst`'s context). A source from
/// another context is a peer copy, and the source's stream waits for it, so the caller can
/// overwrite the source right after (in stream order) without racing the copy.
pub(crate) fn copy_in<T: DeviceRepr>(
    stream: &Arc<CudaStream>,
    src: &CudaSlice<T>,
    dst: &mut CudaSlice<T>,
) -> Result<(), CudaError> {
    stream.memcpy_dtod(src, dst)?;
    if is_foreign(stream.context(), src.context()) {
        src.stream().wait(&stream.record_event(None)?)?;
    }
    Ok(())
}

/// [`copy_in`] into a new buffer on `stream`.
pub(crate) fn clone_in<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    src: &CudaSlice<T>,
) -> Result<CudaSlice<T>, CudaError> {
    let mut dst = stream.alloc_zeros::<T>(src.len())?;
    copy_in(stream, src, &mut dst)?;
    Ok(dst)
}

/// Copies `src` (written on `home`, its stream) into `dst` in another context, on `dst`'s
/// stream; then `home` waits for the copy, so later writes to `src` come after it.
pub(crate) fn copy_out<T: DeviceRepr>(
    home: &Arc<CudaStream>,
    src: &CudaSlice<T>,
    dst: &mut CudaSlice<T>,
) -> Result<(), CudaError> {
    let theirs = Arc::clone(dst.stream());
    theirs.memcpy_dtod(src, dst)?;
    home.wait(&theirs.record_event(None)?)?;
    Ok(())
}

/// Turns on direct access between the GPUs of `home` and `other`, both ways, where the
/// hardware allows it (NVLink or PCIe peer-to-peer). Best effort: without it the driver stages
/// peer copies through host memory, which is slower but gives the same bytes, so a refusal is
/// not an error. Contexts on the same GPU need nothing.
pub(crate) fn enable_access(home: &CudaContext, other: &CudaContext) {
    if home.ordinal() == other.ordinal() {
        return;
    }
    for (from, to) in [(home, other), (other, home)] {
        let mut can = 0;
        // SAFETY: both handles come from live contexts; `can` is a valid out-pointer.
        let ok = unsafe { sys::cuDeviceCanAccessPeer(&mut can, from.cu_device(), to.cu_device()) };
        if ok != sys::CUresult::CUDA_SUCCESS || can == 0 || from.bind_to_thread().is_err() {
            continue;
        }
        // SAFETY: `from` is current on this thread and `to` is a live context. "Already
        // enabled" and any refusal leave copies correct (staged), so the result is not needed.
        let _ = unsafe { sys::cuCtxEnablePeerAccess(to.cu_ctx(), 0) };
    }
}
