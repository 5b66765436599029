//! The order of the ready queue: among ops whose vars are all granted, the highest priority
//! runs first, ties in issue order.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::hash::{Hash, Hasher};

/// Ops ready to run, taken highest priority first, then lowest seq (earliest issued).
///
/// Priority only orders ready ops: an op enters the queue once its vars are granted, which
/// [`Admission`](super::Admission) does in issue order per var, so priority never reorders two
/// ops that share a var.
///
/// ```
/// use kvstore_engine::rules::ReadyQueue;
///
/// let mut ready = ReadyQueue::new();
/// ready.push(0, 1, "a");
/// ready.push(5, 2, "b");
/// ready.push(0, 0, "c");
/// assert_eq!(ready.pop(), Some("b"));
/// assert_eq!(ready.pop(), Some("c"));
/// assert_eq!(ready.pop(), Some("a"));
/// assert_eq!(ready.pop(), None);
/// ```
///
/// Equality and hashing see the queue as the set of its entries, whatever the heap's layout, so
/// a model's states that differ only in push order are one state.
#[derive(Debug, Clone)]
pub struct ReadyQueue<T> {
    heap: BinaryHeap<Entry<T>>,
}

/// One queued op with its place in the order.
#[derive(Debug, Clone)]
struct Entry<T> {
    priority: i32,
    seq: u64,
    op: T,
}

impl<T> ReadyQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        ReadyQueue {
            heap: BinaryHeap::new(),
        }
    }

    /// Queues `op`, issued as `seq` with `priority`.
    pub fn push(&mut self, priority: i32, seq: u64, op: T) {
        self.heap.push(Entry { priority, seq, op });
    }

    /// Takes the op to run next: highest priority, then lowest seq.
    pub fn pop(&mut self) -> Option<T> {
        self.heap.pop().map(|entry| entry.op)
    }

    /// The op [`ReadyQueue::pop`] would take.
    pub fn peek(&self) -> Option<&T> {
        self.heap.peek().map(|entry| &entry.op)
    }

    /// The number of queued ops.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no op is queued.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The queued ops, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|entry| &entry.op)
    }

    /// The entries in pop order, ops breaking the (never seen in the engine) ties of equal seqs.
    fn sorted(&self) -> Vec<(i32, u64, &T)>
    where
        T: Ord,
    {
        let mut entries: Vec<_> = self
            .heap
            .iter()
            .map(|entry| (entry.priority, entry.seq, &entry.op))
            .collect();
        entries.sort_by(|a, b| (Reverse(a.0), a.1, a.2).cmp(&(Reverse(b.0), b.1, b.2)));
        entries
    }
}

impl<T> Default for ReadyQueue<T> {
    fn default() -> Self {
        ReadyQueue::new()
    }
}

impl<T: Ord> PartialEq for ReadyQueue<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.sorted() == other.sorted()
    }
}

impl<T: Ord> Eq for ReadyQueue<T> {}

impl<T: Ord + Hash> Hash for ReadyQueue<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.sorted().hash(state);
    }
}

impl<T> Entry<T> {
    /// The heap's order: greater pops first.
    fn key(&self) -> (i32, Reverse<u64>) {
        (self.priority, Reverse(self.seq))
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}
