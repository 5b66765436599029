//! The `nccl` kind's collectives (feature `nccl`): one NCCL communicator rank per GPU, created
//! in one process, and an in-place sum over the ranks' buffers.
//!
//! NCCL chooses its own summation order (rings, trees), so with three or more GPUs the sum is
//! not the list-order sum of R17: the `nccl` kind trades that bit-exactness for bandwidth, as
//! MXNet's does. With one rank the all-reduce is a copy, and with two it is `a + b`, which IEEE
//! addition makes independent of order; both are exact, and the one-rank case is what the GPU
//! checks could run (one GPU).
#![allow(unsafe_code)] // Only the library probe, an `unsafe fn` that tries dlopen.

use crate::{CudaError, Gpu};
use cudarc::driver::CudaSlice;
use cudarc::nccl::safe::{group_end, group_start, Comm, ReduceOp};
use std::sync::Arc;

/// One communicator rank per GPU of this process.
#[derive(Debug)]
pub struct NcclGroup {
    comms: Vec<Comm>,
}

fn nccl_error(e: impl std::fmt::Debug) -> CudaError {
    CudaError::Driver(format!("NCCL: {e:?}"))
}

impl NcclGroup {
    /// A communicator over `gpus` (rank i on `gpus[i]`, each on the GPU's own stream). A
    /// typed error when libnccl is missing.
    pub fn new(gpus: &[Arc<Gpu>]) -> Result<NcclGroup, CudaError> {
        // SAFETY: only tries dlopen on NCCL's usual names.
        if !unsafe { cudarc::nccl::sys::is_culib_present() } {
            return Err(CudaError::MissingLibrary { library: "libnccl" });
        }
        if gpus.is_empty() {
            return Err(CudaError::Invalid("an NCCL group needs a GPU".into()));
        }
        let streams = gpus.iter().map(|g| Arc::clone(g.stream())).collect();
        let comms = std::panic::catch_unwind(|| Comm::from_devices(streams))
            .map_err(|_| CudaError::Driver("NCCL panicked".into()))?
            .map_err(nccl_error)?;
        Ok(NcclGroup { comms })
    }

    /// How many ranks.
    pub fn ranks(&self) -> usize {
        self.comms.len()
    }

    /// The stream rank `rank` communicates on (its GPU's own stream).
    pub fn stream(&self, rank: usize) -> Option<Arc<cudarc::driver::CudaStream>> {
        self.comms.get(rank).map(|c| c.stream())
    }

    /// `root` (on rank 0) becomes the sum of itself and `others` (`others[i]` on rank i + 1),
    /// in NCCL's order: MXNet's reduce to the first device of the `nccl` kind.
    pub fn reduce_to_first(
        &self,
        root: &mut CudaSlice<f32>,
        others: &[&CudaSlice<f32>],
    ) -> Result<(), CudaError> {
        if others.len() + 1 != self.comms.len() {
            return Err(CudaError::Invalid(format!(
                "{} buffers for {} ranks",
                others.len() + 1,
                self.comms.len()
            )));
        }
        let n = root.len();
        if others.iter().any(|b| b.len() != n) {
            return Err(CudaError::Invalid("reduce buffers differ in length".into()));
        }
        if n == 0 {
            return Ok(());
        }
        group_start().map_err(nccl_error)?;
        let mut result = self.comms[0]
            .reduce_in_place(root, &ReduceOp::Sum, 0)
            .map(|_| ())
            .map_err(nccl_error);
        for (comm, buffer) in self.comms[1..].iter().zip(others) {
            if result.is_err() {
                break;
            }
            result = comm
                .reduce(*buffer, None::<&mut CudaSlice<f32>>, &ReduceOp::Sum, 0)
                .map(|_| ())
                .map_err(nccl_error);
        }
        group_end().map_err(nccl_error)?;
        result
    }

    /// Every buffer (one per rank, on its GPU, of one length) becomes the sum of all of them.
    pub fn all_reduce_sum(&self, buffers: &mut [CudaSlice<f32>]) -> Result<(), CudaError> {
        if buffers.len() != self.comms.len() {
            return Err(CudaError::Invalid(format!(
                "{} buffers for {} ranks",
                buffers.len(),
                self.comms.len()
            )));
        }
        let n = buffers.first().map_or(0, CudaSlice::len);
        if buffers.iter().any(|b| b.len() != n) {
            return Err(CudaError::Invalid(
                "all-reduce buffers differ in length".into(),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        group_start().map_err(nccl_error)?;
        let mut result = Ok(());
        for (comm, buffer) in self.comms.iter().zip(buffers.iter_mut()) {
            if let Err(e) = comm.all_reduce_in_place(buffer, &ReduceOp::Sum) {
                result = Err(nccl_error(e));
                break;
            }
        }
        group_end().map_err(nccl_error)?;
        result
    }
}
