//! The per-var admission rule: in issue order, a writer gets the var alone and a run of
//! consecutive readers shares it.

use std::collections::VecDeque;

/// Which of the ops issued on one var hold it, and which wait for it, in issue order.
///
/// An op is *granted* the var when it may touch the data: the engine runs an op once every var of
/// it is granted. A writer is granted only when nobody holds the var, a reader only when no writer
/// holds it, and never ahead of an op issued earlier on the same var: grants follow issue order,
/// whatever the ops' priorities.
///
/// ```
/// use kvstore_engine::rules::Admission;
///
/// let mut var = Admission::new();
/// assert!(var.enqueue("write-1", true)); // alone: granted at once
/// assert!(!var.enqueue("read-1", false)); // waits for the writer
/// assert!(!var.enqueue("read-2", false));
/// assert!(!var.enqueue("write-2", true));
/// assert_eq!(var.release(true), vec!["read-1", "read-2"]); // both readers at once
/// assert_eq!(var.release(false), Vec::<&str>::new()); // write-2 waits for read-2 too
/// assert_eq!(var.release(false), vec!["write-2"]);
/// assert_eq!(var.release(true), Vec::<&str>::new());
/// assert!(var.is_idle());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Admission<T> {
    /// Ops issued and not yet granted, in issue order, with whether they write.
    waiting: VecDeque<(T, bool)>,
    /// Granted readers not yet released (granted includes ready but not yet running).
    readers: usize,
    /// Whether a granted writer has not yet released the var.
    writer: bool,
}

impl<T> Admission<T> {
    /// A var nobody holds or waits for.
    pub fn new() -> Self {
        Admission {
            waiting: VecDeque::new(),
            readers: 0,
            writer: false,
        }
    }

    /// Appends an op to the var's issue order; returns whether the var is granted to it at once.
    /// A granted op is not kept: only waiting ops are.
    pub fn enqueue(&mut self, op: T, write: bool) -> bool {
        self.enqueue_with(write, || op)
    }

    /// [`Admission::enqueue`], making the op only when it has to wait (the engine's ops are
    /// `Arc`s: this spares a reference count round trip on the common, granted path).
    pub fn enqueue_with(&mut self, write: bool, op: impl FnOnce() -> T) -> bool {
        if self.waiting.is_empty() && self.admits(write) {
            self.hold(write);
            true
        } else {
            self.waiting.push_back((op(), write));
            false
        }
    }

    /// An op that held the var completes (`write`: whether it was a writer). Returns the ops this
    /// grants the var to, in issue order: the next writer alone, or every reader up to the next
    /// writer.
    pub fn release(&mut self, write: bool) -> Vec<T> {
        if write {
            self.writer = false;
        } else {
            self.readers = self.readers.saturating_sub(1);
        }
        let mut granted = Vec::new();
        while let Some(&(_, write)) = self.waiting.front() {
            if !self.admits(write) {
                break;
            }
            self.hold(write);
            granted.extend(self.waiting.pop_front().map(|(op, _)| op));
            if write {
                break;
            }
        }
        granted
    }

    /// The rule against the current holders alone: a writer excludes everyone, readers exclude
    /// only writers. Ops waiting are not considered ([`Admission::enqueue`] queues behind them).
    pub fn admits(&self, write: bool) -> bool {
        !self.writer && (!write || self.readers == 0)
    }

    /// Counts one more holder, without looking at the rule or the waiting ops. `enqueue` and
    /// `release` are built on `admits` and `hold`; they are public so that a model can state a
    /// variant of the rule (a planted bug) in terms of the real one.
    pub fn hold(&mut self, write: bool) {
        if write {
            self.writer = true;
        } else {
            self.readers += 1;
        }
    }

    /// Whether nobody holds the var and no op waits for it.
    pub fn is_idle(&self) -> bool {
        !self.writer && self.readers == 0 && self.waiting.is_empty()
    }

    /// The number of ops waiting for the var.
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// The ops waiting for the var, in issue order, with whether they write.
    pub fn waiting(&self) -> impl Iterator<Item = (&T, bool)> {
        self.waiting.iter().map(|(op, write)| (op, *write))
    }

    /// The number of readers holding the var.
    pub fn readers(&self) -> usize {
        self.readers
    }

    /// Whether a writer holds the var.
    pub fn has_writer(&self) -> bool {
        self.writer
    }
}

impl<T> Default for Admission<T> {
    fn default() -> Self {
        Admission::new()
    }
}
