//! All-or-nothing calls (R7): a call works on a copy of the store and the copy replaces the
//! store only when the whole call succeeded. Simple, and true by construction for every part
//! of the state, updater and optimizer states included.

use crate::error::Result;

/// Runs `op` on a copy of `state` and keeps the copy only if `op` succeeds.
pub fn transact<S: Clone, T>(state: &mut S, op: impl FnOnce(&mut S) -> Result<T>) -> Result<T> {
    let mut next = state.clone();
    let out = op(&mut next)?;
    *state = next;
    Ok(out)
}
