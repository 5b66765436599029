//! The specification's reference code as a backend: the oracle the engine runs on in the
//! equivalence suites, and the fallback for what the fast backends do not specialise.

use super::Backend;
use kvstore_spec::codec::Compression;
use kvstore_spec::optimizer::{Optimizer, State};
use kvstore_spec::updater::UpdateError;
use kvstore_spec::{reduce, sparse, transfer, DType, Error, Key, Result, Value};

/// The spec's functions, unchanged. Slow (it computes through f64 and allocates), exact.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpecBackend;

/// The spec's functions name a key in their errors; a backend is below keys.
fn anonymous() -> Key {
    Key::Int(0)
}

impl Backend for SpecBackend {
    fn name(&self) -> &'static str {
        "spec"
    }

    fn reduce(&self, values: &[&Value], dtype: DType, merged: &mut Value) -> Result<()> {
        let owned: Vec<Value> = values.iter().map(|v| (*v).clone()).collect();
        *merged = reduce::sum(&owned, dtype)?.ok_or(Error::EmptyValueList { key: anonymous() })?;
        Ok(())
    }

    fn compress_reduce(
        &self,
        compression: Compression,
        values: &[&Value],
        residuals: &mut [&mut Vec<f32>],
        merged: &mut Value,
    ) -> Result<()> {
        let mut staged: Vec<Vec<f32>> = residuals.iter().map(|r| r.to_vec()).collect();
        let mut decoded = Vec::with_capacity(values.len());
        for (value, residual) in values.iter().zip(staged.iter_mut()) {
            decoded.push(transfer::compress(
                compression,
                &anonymous(),
                DType::F32,
                value,
                residual,
            )?);
        }
        let sum =
            reduce::sum(&decoded, DType::F32)?.ok_or(Error::EmptyValueList { key: anonymous() })?;
        for (residual, next) in residuals.iter_mut().zip(staged) {
            **residual = next;
        }
        *merged = sum;
        Ok(())
    }

    fn pull_into(&self, stored: &Value, out: &mut Value, ignore_sparse: bool) -> Result<()> {
        *out = transfer::pull_output(&anonymous(), stored, out, ignore_sparse)?;
        Ok(())
    }

    fn row_sparse_into(&self, stored: &Value, ids: &[i64], out: &mut Value) -> Result<()> {
        let rows = sparse::retain(stored, ids, out.dtype())?;
        *out = Value::RowSparse(rows.on(out.device()));
        Ok(())
    }

    fn optimize(
        &self,
        optimizer: &Optimizer,
        state: &mut Option<State>,
        merged: &Value,
        stored: &mut Value,
    ) -> std::result::Result<(), UpdateError> {
        let mut next = optimizer.state_for(state.as_ref(), stored)?;
        optimizer.update(&mut next, merged, stored)?;
        *state = Some(next);
        Ok(())
    }
}
