//! A state of the local model: the clients' progress, the engine's vars and ready queue, the
//! keys' values, and the history the properties judge (seqs, values read, effect logs).

use kvstore_engine::rules::{Admission, ReadyQueue};

/// An op: its index in the model's op table ([`LocalModel::ops`](super::LocalModel::ops)).
pub type OpId = u8;

/// Where an op is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Its client has not called it yet.
    Unissued,
    /// Issued, some var not yet granted; a wait_all: its client is blocked in it.
    Waiting,
    /// Every var granted, in the ready queue.
    Ready,
    /// Taken by a worker.
    Running,
    /// Completed; a wait_all: returned to its client.
    Done,
}

/// The history of one op.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OpState {
    /// Where it is.
    pub phase: Phase,
    /// Its issue seq; for a wait_all, the engine's next seq at the call: it waits for the ops
    /// issued below it.
    pub seq: u8,
    /// Its vars not yet granted.
    pub unmet: u8,
    /// A pull: the value id it read (0 is the keys' initial value, see [`value_of`]).
    ///
    /// [`value_of`]: super::value_of
    pub read: u8,
    /// A pull: the value id the sequential reference says it reads: the last push on its key
    /// issued before it.
    pub expected: u8,
}

/// A state of the model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalState {
    /// Per client: how many of its calls it has made.
    pub pc: Vec<u8>,
    /// Per op of the model's table.
    pub ops: Vec<OpState>,
    /// Per var (keys first, then outputs): the engine's admission rule.
    pub vars: Vec<Admission<OpId>>,
    /// The engine's ready queue.
    pub ready: ReadyQueue<OpId>,
    /// The engine's next issue seq.
    pub next_seq: u8,
    /// Per key: the id of the value it holds.
    pub stored: Vec<u8>,
    /// Per key: the id of the last push issued on it (the sequential reference's store).
    pub last_issued: Vec<u8>,
    /// Per var: the ops that touched it, in the order they took effect (completed).
    pub effects: Vec<Vec<OpId>>,
}

impl LocalState {
    /// The ops in `phase`.
    pub fn in_phase(&self, phase: Phase) -> impl Iterator<Item = OpId> + '_ {
        (0..)
            .zip(&self.ops)
            .filter_map(move |(id, op)| (op.phase == phase).then_some(id))
    }

    /// The number of ops running.
    pub fn running(&self) -> usize {
        self.in_phase(Phase::Running).count()
    }

    /// The op `id`'s history (ids come from the model's own table).
    pub(crate) fn op(&self, id: OpId) -> &OpState {
        &self.ops[usize::from(id)]
    }

    pub(crate) fn op_mut(&mut self, id: OpId) -> &mut OpState {
        &mut self.ops[usize::from(id)]
    }
}
