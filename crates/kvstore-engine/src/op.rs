//! One pushed op: its vars, its count of vars not yet granted, running its body with panics
//! turned into errors, and releasing its vars when it completes.

use std::any::Any;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};

use crate::scheduler::Scheduler;
use crate::sync::{self, atomic::AtomicUsize, atomic::Ordering, Arc, Mutex};
use crate::var::Var;

/// A panic inside an op, turned into a value: a panicking op never unwinds a worker thread, it
/// fails with `E::from(OpPanicked(message))` instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpPanicked(pub String);

impl fmt::Display for OpPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op panicked: {}", self.0)
    }
}

impl std::error::Error for OpPanicked {}

/// The work of an op.
pub(crate) type Body<E> = Box<dyn FnOnce() -> Result<(), E> + Send>;

/// One var of an op, deduplicated: a var both read and written is written.
pub(crate) struct Access<E> {
    pub(crate) var: Var<E>,
    pub(crate) write: bool,
    /// The op's ticket on `var` (see `var.rs`).
    pub(crate) ticket: u64,
}

pub(crate) struct Op<E> {
    /// Issue order in the op's engine: ties between ready ops of equal priority go to the lower.
    pub(crate) seq: u64,
    pub(crate) priority: i32,
    accesses: Vec<Access<E>>,
    /// The engine the op was pushed to: the op runs on its workers.
    scheduler: Arc<Scheduler<E>>,
    /// Taken by the worker that runs the op.
    body: Mutex<Option<Body<E>>>,
    /// Vars not yet granted, plus one held by push until it has issued the op on every var, so
    /// that the op cannot become ready halfway through its push.
    unmet: AtomicUsize,
}

impl<E: Clone + Send + 'static> Op<E> {
    pub(crate) fn new(
        seq: u64,
        priority: i32,
        body: Body<E>,
        accesses: Vec<Access<E>>,
        scheduler: Arc<Scheduler<E>>,
    ) -> Self {
        let unmet = AtomicUsize::new(accesses.len() + 1);
        Op {
            seq,
            priority,
            accesses,
            scheduler,
            body: Mutex::new(Some(body)),
            unmet,
        }
    }

    /// Counts `granted` more dependencies as met; the call that meets the last one hands the op
    /// to its engine's ready queue. Must not be called with a var lock held (see `engine.rs`).
    pub(crate) fn satisfy(this: Arc<Self>, granted: usize) {
        if this.unmet.fetch_sub(granted, Ordering::AcqRel) == granted {
            let scheduler = Arc::clone(&this.scheduler);
            scheduler.schedule(this);
        }
    }

    /// Runs the body; a panic becomes `E::from(OpPanicked(message))`.
    pub(crate) fn run(&self) -> Result<(), E>
    where
        E: From<OpPanicked>,
    {
        let Some(body) = sync::lock(&self.body).take() else {
            return Ok(());
        };
        // Under loom, a panic inside a loom primitive is how loom itself reports a failed model,
        // so it must reach loom instead of becoming an op error.
        if cfg!(loom) {
            return body();
        }
        panic::catch_unwind(AssertUnwindSafe(body))
            .unwrap_or_else(|payload| Err(E::from(OpPanicked(panic_message(payload.as_ref())))))
    }

    /// Completes the op: records `error` on every var it writes, releases its vars (handing each
    /// var on to the next ops in its issue order), then tells its engine.
    pub(crate) fn complete(&self, error: Option<E>) {
        for access in &self.accesses {
            let recorded = if access.write { error.clone() } else { None };
            let granted = access.var.complete(access.ticket, access.write, recorded);
            for op in granted {
                Op::satisfy(op, 1);
            }
        }
        self.scheduler.complete(self.seq, error);
    }
}

/// The message of a panic payload: `panic!` produces a `&str` or a `String`.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "op panicked with a non-string payload".to_owned()
    }
}
