//! The backend interface: the data work of a store (merge, compress, copy out, update), one
//! implementation per place the data lives.
//!
//! The engine-driven store (`engine_store`, private) decides *when* each piece of work runs and
//! checks every argument before queueing it; a backend only does the arithmetic, in place, on
//! values the store has already validated. [`SpecBackend`] does it with the specification's
//! reference code, [`CpuBackend`] with vectorised, multi-core kernels. Both give the same bits:
//! the equivalence suites drive the store over each backend and compare with the spec.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod reference;
mod values;

pub use cpu::CpuBackend;
#[cfg(feature = "cuda")]
pub use cuda::CudaBackend;
pub use reference::SpecBackend;

use kvstore_spec::codec::Compression;
use kvstore_spec::optimizer::{Optimizer, State};
use kvstore_spec::updater::UpdateError;
use kvstore_spec::{DType, Result, Value};
use std::fmt::Debug;

/// The data work of a store. Every method writes its result into a buffer the caller owns and
/// reuses, so a warm store does not allocate on the hot path.
///
/// Arguments are validated by the caller (shapes agree with the key, row ids are sorted,
/// unique and in range, compressed values are dense f32); a backend may still return an error
/// for anything it cannot do, and must then leave its outputs as they were.
pub trait Backend: Send + Sync + Debug + 'static {
    /// A short name for reports (`"spec"`, `"cpu"`).
    fn name(&self) -> &'static str;

    /// `merged` becomes the sum of `values` (at least one, all of the key's shape) in `dtype`,
    /// in list order, on the first value's device (R17). `merged`'s buffers may be reused.
    fn reduce(&self, values: &[&Value], dtype: DType, merged: &mut Value) -> Result<()>;

    /// Quantises each value with its residual (same order), then sums what the receiver
    /// decodes into `merged` (R42, R43). Values are dense f32; a residual that is empty is a
    /// fresh slot and starts at zeros.
    fn compress_reduce(
        &self,
        compression: Compression,
        values: &[&Value],
        residuals: &mut [&mut Vec<f32>],
        merged: &mut Value,
    ) -> Result<()>;

    /// Writes a key's value into a pull output of the key's shape, keeping the output's dtype,
    /// storage type and device (R25-R28).
    fn pull_into(&self, stored: &Value, out: &mut Value, ignore_sparse: bool) -> Result<()>;

    /// Writes a key's value into several pull outputs at once (a key pulled to every device):
    /// the same result as [`Backend::pull_into`] on each, which is what this default does; a
    /// backend can read the value once for all of them.
    fn pull_into_many(
        &self,
        stored: &Value,
        outs: &mut [&mut Value],
        ignore_sparse: bool,
    ) -> Result<()> {
        for out in outs.iter_mut() {
            self.pull_into(stored, out, ignore_sparse)?;
        }
        Ok(())
    }

    /// Writes rows `ids` (sorted, unique, in range) of a key's value into a row_sparse output
    /// (R30-R32).
    fn row_sparse_into(&self, stored: &Value, ids: &[i64], out: &mut Value) -> Result<()>;

    /// One optimizer step on `stored` with the merged gradient (R45, R46); `state` is the key's
    /// optimizer state, `None` before its first update. On error nothing changes.
    fn optimize(
        &self,
        optimizer: &Optimizer,
        state: &mut Option<State>,
        merged: &Value,
        stored: &mut Value,
    ) -> std::result::Result<(), UpdateError>;
}
