//! Vars: the per-var dependency rule ([`Admission`], in `rules`) behind a lock, with the
//! bookkeeping that waits on a var need (tickets of incomplete ops, errors, waiters).

use std::collections::VecDeque;
use std::fmt;

use crate::op::Op;
use crate::rules::Admission;
use crate::sync::{self, Arc, Condvar, Mutex, MutexGuard};
use crate::tickets::Tickets;

/// An engine variable: one per piece of data that ops read or write (a key, an output array).
///
/// Vars belong to no engine: any engine can schedule ops on them, and ops of different engines on
/// the same var are ordered just like ops of one engine. Cloning a `Var` shares the var;
/// [`Var::same`] tells whether two handles are the same var.
pub struct Var<E> {
    inner: Arc<Inner<E>>,
}

struct Inner<E> {
    /// Fixes the order in which a push locks several vars (see `engine.rs`).
    id: u64,
    state: Mutex<State<E>>,
    /// Notified whenever an op on this var completes; [`Var::wait`] waits on it.
    completed: Condvar,
}

/// The bookkeeping of one var, behind its mutex.
pub(crate) struct State<E> {
    /// The ticket the next op issued on this var gets; tickets rise in issue order.
    next_ticket: u64,
    /// Tickets of the ops issued on this var and not yet completed.
    incomplete: Tickets,
    /// Which ops hold the var and which wait for it: the admission rule.
    admission: Admission<Arc<Op<E>>>,
    /// Errors of failed writers, in completion order, which for writers of one var is issue order.
    errors: VecDeque<E>,
    /// Threads blocked in a wait on this var; completion signals only when there are some (a
    /// condvar notification is a system call even with nobody waiting).
    waiters: usize,
}

impl<E: Clone + Send + 'static> Var<E> {
    /// A new var, with no op issued on it.
    pub fn new() -> Self {
        Var {
            inner: Arc::new(Inner {
                id: sync::next_id(),
                state: Mutex::new(State {
                    next_ticket: 0,
                    incomplete: Tickets::default(),
                    admission: Admission::new(),
                    errors: VecDeque::new(),
                    waiters: 0,
                }),
                completed: Condvar::new(),
            }),
        }
    }

    /// Blocks until every op issued so far that reads or writes this var has completed, then
    /// returns (and removes) the earliest error recorded on this var, if any.
    ///
    /// An error is recorded on a var when an op that writes it fails. Errors not returned by this
    /// call stay for the next one: none is lost. Ops issued while this call waits are not waited
    /// for, so it returns even under a steady stream of new ops.
    pub fn wait(&self) -> Result<(), E> {
        let mut state = self.settled();
        state.errors.pop_front().map_or(Ok(()), Err)
    }

    /// Blocks until every op issued so far that reads or writes this var has completed, and
    /// leaves its errors for [`Var::wait`]: what a plain read of the data needs.
    pub fn wait_idle(&self) {
        drop(self.settled());
    }

    /// The var's bookkeeping, locked once every op issued before the call has completed.
    fn settled(&self) -> MutexGuard<'_, State<E>> {
        let mut state = sync::lock(&self.inner.state);
        let issued = state.next_ticket;
        while state
            .incomplete
            .first()
            .is_some_and(|ticket| ticket < issued)
        {
            state.waiters += 1;
            state = sync::wait(&self.inner.completed, state);
            state.waiters -= 1;
        }
        state
    }

    /// The number of ops issued on this var and not yet completed. Never blocks on an op, so an op
    /// may call it, even on its own vars.
    pub fn pending(&self) -> usize {
        sync::lock(&self.inner.state).incomplete.len()
    }

    /// Whether `self` and `other` are handles to the same var.
    pub fn same(&self, other: &Var<E>) -> bool {
        self.inner.id == other.inner.id
    }

    /// The var's identity: push locks vars in increasing id order.
    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    /// Locks the var's bookkeeping; push holds it while it issues an op (see `engine.rs`).
    pub(crate) fn lock(&self) -> MutexGuard<'_, State<E>> {
        sync::lock(&self.inner.state)
    }

    /// Marks the op holding `ticket` completed, records `error` (only writers pass one), wakes
    /// [`Var::wait`] and returns the ops this grants the var to. The caller hands these on to
    /// [`Op::satisfy`] after the var lock is released.
    pub(crate) fn complete(&self, ticket: u64, write: bool, error: Option<E>) -> Vec<Arc<Op<E>>> {
        let mut state = self.lock();
        state.errors.extend(error);
        state.incomplete.remove(ticket);
        let granted = state.admission.release(write);
        let waiters = state.waiters > 0;
        drop(state);
        if waiters {
            self.inner.completed.notify_all();
        }
        granted
    }
}

impl<E> State<E> {
    /// Issues the next op on this var: returns its ticket, counted incomplete from now on.
    pub(crate) fn issue(&mut self) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.incomplete.insert(ticket);
        ticket
    }

    /// Appends `op` to the var's issue order; returns whether the var is granted to it at once.
    pub(crate) fn enqueue(&mut self, op: &Arc<Op<E>>, write: bool) -> bool {
        self.admission.enqueue_with(write, || Arc::clone(op))
    }
}

impl<E: Clone + Send + 'static> Default for Var<E> {
    fn default() -> Self {
        Var::new()
    }
}

impl<E> Clone for Var<E> {
    fn clone(&self) -> Self {
        Var {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<E> fmt::Debug for Var<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Var")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}
