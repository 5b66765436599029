//! kvstore's CUDA backend.
//!
//! With the `cuda` feature, `Gpu` opens a device, compiles the kernels with NVRTC at first use
//! (a cubin for the device's architecture, `--fmad=false`, cached per process) and runs a
//! store's device work on streams the caller picks: the K-way reduce in list order, 2-bit and
//! 1-bit quantisation with residuals, dequantise(-accumulate), row gathers and scatters, the id
//! sort and dedup of `row_sparse_pull`, and SGD and Adam, also fused into the merge.
//! `DeviceStore` keeps a store's values, merge buffers and residuals on the device, one stream
//! per key. Every result is bit-exact with the specification (`tests/` checks it on a GPU).
//!
//! Without the feature, or on a machine without CUDA, [`probe`] and `Gpu::open` return a
//! [`CudaError`]; nothing panics.
//!
//! ```
//! match kvstore_cuda::probe() {
//!     Ok(info) => println!("GPU: {}", info.name),
//!     Err(e) => println!("skipping the GPU: {e}"),
//! }
//! ```

mod error;
mod probe;

pub use error::CudaError;
pub use probe::{probe, DeviceInfo};

#[cfg(feature = "cuda")]
mod gpu;
#[cfg(feature = "cuda")]
pub mod module;
#[cfg(feature = "nccl")]
pub mod nccl;
#[cfg(feature = "nccl")]
mod nccl_store;
#[cfg(feature = "cuda")]
mod peer;
#[cfg(feature = "cuda")]
mod store;

#[cfg(feature = "cuda")]
pub use cudarc;
#[cfg(feature = "cuda")]
pub use gpu::{AdamRows, Gpu, IdScratch, MAX_FUSED_INPUTS};
#[cfg(feature = "nccl")]
pub use nccl_store::NcclStore;
#[cfg(feature = "cuda")]
pub use store::{DeviceRows, DeviceStore, DeviceUpdater};

/// The line a GPU test or benchmark prints when it cannot run here, naming why.
pub fn skip_line(what: &str, why: &CudaError) -> String {
    format!("SKIPPED {what}: no usable GPU ({why})")
}

/// Prints [`skip_line`] to the process's standard error directly, so the test harness's output
/// capture does not hide it.
pub fn report_skip(what: &str, why: &CudaError) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{}", skip_line(what, why));
}
