//! The synchronisation primitives of the engine: std's, or loom's under `cfg(loom)` so that the
//! loom tests explore every interleaving of the real engine code. Nothing else in the crate names
//! `std::sync` or `std::thread` directly.

#[cfg(loom)]
pub(crate) use loom::{
    sync::{atomic, Arc, Condvar, Mutex, MutexGuard},
    thread,
};
#[cfg(not(loom))]
pub(crate) use std::{
    sync::{atomic, Arc, Condvar, Mutex, MutexGuard},
    thread,
};

use std::sync::PoisonError;

/// Locks `mutex`. Poison is ignored: ops run outside every engine lock and their panics are
/// caught, so a poisoned engine lock can only come from a bug in the engine itself, and the state
/// it guards is still the best information there is.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `condvar`, releasing `guard` meanwhile; poison is ignored as in [`lock`].
pub(crate) fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// A fresh identity for a var, unique in the process. Identities only fix the order in which a
/// push locks several vars, so this counter synchronises nothing and stays a plain std atomic even
/// under loom (where creation order, and so the relative order of ids, is the same in every run).
pub(crate) fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
