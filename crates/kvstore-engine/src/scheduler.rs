//! An engine's shared state: the ready queue its workers take ops from, the ops it has issued and
//! not completed, and its error list.

use std::collections::BTreeMap;

use crate::op::Op;
use crate::rules::ReadyQueue;
use crate::sync::{self, Arc, Condvar, Mutex};
use crate::tickets::Tickets;

pub(crate) struct Scheduler<E> {
    state: Mutex<State<E>>,
    /// Notified when an op becomes ready or the engine shuts down; workers wait on it.
    work: Condvar,
    /// Notified when an op completes; `wait_all` and shutdown wait on it.
    completed: Condvar,
}

struct State<E> {
    next_seq: u64,
    /// Ops whose vars are all granted: higher priority first, then lower seq (earlier issue).
    ready: ReadyQueue<Arc<Op<E>>>,
    /// Seqs of issued ops not yet completed.
    incomplete: Tickets,
    /// Errors of failed ops by seq, so the earliest issued is returned first.
    errors: BTreeMap<u64, E>,
    /// Set when the engine is dropped: workers exit once no op is incomplete.
    shutdown: bool,
    /// Threads blocked in `wait_all`; completion signals only when there are some.
    waiters: usize,
}

impl<E> Scheduler<E> {
    pub(crate) fn new() -> Self {
        Scheduler {
            state: Mutex::new(State {
                next_seq: 0,
                ready: ReadyQueue::new(),
                incomplete: Tickets::default(),
                errors: BTreeMap::new(),
                shutdown: false,
                waiters: 0,
            }),
            work: Condvar::new(),
            completed: Condvar::new(),
        }
    }

    /// Issues an op: returns its seq, counted incomplete from now on.
    pub(crate) fn issue(&self) -> u64 {
        let mut state = sync::lock(&self.state);
        let seq = state.next_seq;
        state.next_seq += 1;
        state.incomplete.insert(seq);
        seq
    }

    /// Queues an op whose vars are all granted.
    pub(crate) fn schedule(&self, op: Arc<Op<E>>) {
        let (priority, seq) = (op.priority, op.seq);
        sync::lock(&self.state).ready.push(priority, seq, op);
        self.work.notify_one();
    }

    /// The next ready op, blocking while there is none; `None` once the engine shuts down.
    pub(crate) fn next(&self) -> Option<Arc<Op<E>>> {
        let mut state = sync::lock(&self.state);
        loop {
            if let Some(op) = state.ready.pop() {
                return Some(op);
            }
            if state.shutdown && state.incomplete.is_empty() {
                return None;
            }
            state = sync::wait(&self.work, state);
        }
    }

    /// Marks op `seq` completed, recording its error.
    pub(crate) fn complete(&self, seq: u64, error: Option<E>) {
        let mut state = sync::lock(&self.state);
        if let Some(error) = error {
            state.errors.insert(seq, error);
        }
        state.incomplete.remove(seq);
        let finished = state.shutdown && state.incomplete.is_empty();
        let waiters = state.waiters > 0;
        drop(state);
        if waiters {
            self.completed.notify_all();
        }
        if finished {
            self.work.notify_all();
        }
    }

    /// Blocks until every op issued before the call has completed, then returns (and removes) the
    /// earliest issued error in the list.
    pub(crate) fn wait_all(&self) -> Result<(), E> {
        let mut state = sync::lock(&self.state);
        let issued = state.next_seq;
        while state.incomplete.first().is_some_and(|seq| seq < issued) {
            state.waiters += 1;
            state = sync::wait(&self.completed, state);
            state.waiters -= 1;
        }
        state
            .errors
            .pop_first()
            .map_or(Ok(()), |(_, error)| Err(error))
    }

    /// Tells the workers to exit once every issued op has completed. No op can be issued any
    /// more (the engine is being dropped), but issued ones may still become ready.
    pub(crate) fn shut_down(&self) {
        let mut state = sync::lock(&self.state);
        state.shutdown = true;
        let finished = state.incomplete.is_empty();
        drop(state);
        if finished {
            self.work.notify_all();
        }
    }
}
