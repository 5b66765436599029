//! The engine: issuing pushed ops on their vars, and the worker threads that run ready ops.
//!
//! # Lock order
//!
//! Two kinds of locks exist: each var's lock and each engine's scheduler lock. A thread holds
//! several var locks only inside [`Engine::push`], and takes them in increasing var id, so var
//! locks never form a cycle. No scheduler lock is held while a var lock is taken, and no var lock
//! is held while a scheduler lock is taken: push issues the op's seq before locking its vars and
//! hands a ready op to the scheduler after unlocking them; completion releases each var under its
//! lock alone and schedules the ops it granted afterwards. Ops run with no engine lock held.
//!
//! Holding all of an op's var locks at once while issuing it (two-phase locking) is what makes
//! issue order one total order across vars: two ops sharing vars A and B are issued in the same
//! order on both, even when pushed concurrently or through different engines, so no dependency
//! cycle, and no deadlock, can arise between them.

use std::fmt;

use crate::op::{Access, Op, OpPanicked};
use crate::scheduler::Scheduler;
use crate::sync::{thread, Arc};
use crate::var::Var;

/// An asynchronous dependency engine: runs pushed ops on a pool of worker threads, ordering the
/// ops that share a var by the rule of [`Engine::push`].
///
/// Dropping the engine waits for every op pushed to it to complete, then stops its workers.
///
/// [`Var::wait`] and [`Engine::wait_all`] block the calling thread: an op must not call them on
/// its own vars or engine, which would wait for the op itself.
pub struct Engine<E> {
    scheduler: Arc<Scheduler<E>>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl<E: Clone + Send + 'static + From<OpPanicked>> Engine<E> {
    /// An engine with `workers` worker threads (at least 1), named `kvstore-engine-N`.
    ///
    /// # Panics
    ///
    /// If the operating system cannot create a thread, as [`std::thread::spawn`] does.
    pub fn new(workers: usize) -> Self {
        let scheduler = Arc::new(Scheduler::new());
        let workers = (0..workers.max(1))
            .map(|index| {
                let name = format!("kvstore-engine-{index}");
                match thread::Builder::new()
                    .name(name)
                    .spawn(work(Arc::clone(&scheduler)))
                {
                    Ok(handle) => handle,
                    // Out of threads: fail the way std::thread::spawn fails.
                    Err(_) => thread::spawn(work(Arc::clone(&scheduler))),
                }
            })
            .collect();
        Engine { scheduler, workers }
    }

    /// Queues `op` and returns at once.
    ///
    /// Ops are ordered per var, in issue order (the order of push calls; concurrent pushes are
    /// issued one after the other): an op that reads a var waits for every earlier op that writes
    /// it; an op that writes a var waits for every earlier op that reads or writes it; consecutive
    /// readers may run concurrently. A var in both `reads` and `writes` is written; duplicates are
    /// ignored. Ops sharing no var are unordered and run in parallel on the workers; an op with no
    /// var at all is ready at once. Among ops ready at the same time, the higher `priority` runs
    /// first, ties in issue order.
    ///
    /// When `op` returns `Err(e)`, or panics (then `e` is `E::from(OpPanicked(message))`), `e` is
    /// recorded on every var in `writes`, for [`Var::wait`], and in the engine's error list, for
    /// [`Engine::wait_all`].
    pub fn push<F>(&self, op: F, reads: &[Var<E>], writes: &[Var<E>], priority: i32)
    where
        F: FnOnce() -> Result<(), E> + Send + 'static,
    {
        let vars = deduplicate(reads, writes);
        let seq = self.scheduler.issue();
        let mut states: Vec<_> = vars.iter().map(|(var, _)| var.lock()).collect();
        let accesses = vars
            .iter()
            .zip(states.iter_mut())
            .map(|((var, write), state)| Access {
                var: var.clone(),
                write: *write,
                ticket: state.issue(),
            })
            .collect();
        let op = Arc::new(Op::new(
            seq,
            priority,
            Box::new(op),
            accesses,
            Arc::clone(&self.scheduler),
        ));
        let mut granted = 0;
        for (state, (_, write)) in states.iter_mut().zip(&vars) {
            if state.enqueue(&op, *write) {
                granted += 1;
            }
        }
        drop(states);
        // The + 1 is push's own hold on the op (see `Op::unmet`).
        Op::satisfy(op, granted + 1);
    }

    /// Blocks until every op pushed to this engine before the call has completed, then returns
    /// (and removes) the earliest issued error in the engine's error list; later errors stay for
    /// the next call. Ops pushed while it waits are not waited for.
    pub fn wait_all(&self) -> Result<(), E> {
        self.scheduler.wait_all()
    }

    /// The number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }
}

/// The vars of an op in increasing id order (push's lock order), each once, with whether it is
/// written: a var both read and written is written.
fn deduplicate<E: Clone + Send + 'static>(
    reads: &[Var<E>],
    writes: &[Var<E>],
) -> Vec<(Var<E>, bool)> {
    let mut vars: Vec<(Var<E>, bool)> = writes
        .iter()
        .map(|var| (var.clone(), true))
        .chain(reads.iter().map(|var| (var.clone(), false)))
        .collect();
    // Writes sort before reads of the same var, so dedup keeps the write.
    vars.sort_by_key(|(var, write)| (var.id(), !write));
    vars.dedup_by_key(|(var, _)| var.id());
    vars
}

/// A worker thread's loop: run ready ops until the engine shuts down.
fn work<E>(scheduler: Arc<Scheduler<E>>) -> impl FnOnce() + Send + 'static
where
    E: Clone + Send + 'static + From<OpPanicked>,
{
    move || {
        while let Some(op) = scheduler.next() {
            let result = op.run();
            op.complete(result.err());
        }
    }
}

impl<E> Drop for Engine<E> {
    /// Waits for every op pushed to this engine to complete, then stops and joins the workers.
    ///
    /// Dropped inside one of its own ops (the op held the last handle to it), the engine cannot
    /// wait for that op: it returns at once and its workers finish every pending op, then exit.
    fn drop(&mut self) {
        self.scheduler.shut_down();
        let current = thread::current().id();
        if self
            .workers
            .iter()
            .any(|worker| worker.thread().id() == current)
        {
            // Dropping the handles detaches the workers.
            return;
        }
        for worker in self.workers.drain(..) {
            // Returns once every op has completed. Never an error: a worker never panics, since
            // ops' panics are caught in `Op::run`.
            let _ = worker.join();
        }
    }
}

impl<E> fmt::Debug for Engine<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}
