//! What a local model checks: the clients' scripts, the number of keys and engine workers, and
//! the planted faults.

use super::fault::Fault;
use super::model::LocalModel;

/// One call of a client's script. Keys are `0..keys`; `out` names an output array (the same
/// array may be the output of several pulls, which then also order on its var).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Step {
    /// `push(key, v)` with a value `v` unique to this step: writes the key's var.
    Push {
        /// The key.
        key: usize,
        /// The engine priority.
        priority: i32,
    },
    /// `pull(key, out)`: reads the key's var, writes the output's var.
    Pull {
        /// The key.
        key: usize,
        /// The output array.
        out: usize,
        /// The engine priority.
        priority: i32,
    },
    /// `row_sparse_pull(key, out, rows)`: reads the key's var, writes the output's var.
    RowSparsePull {
        /// The key.
        key: usize,
        /// The row ids to retain, of the key's 2 rows.
        rows: Vec<i64>,
        /// The output array (row_sparse).
        out: usize,
        /// The engine priority.
        priority: i32,
    },
    /// `wait_all()`: blocks the client until every op issued before it has completed.
    WaitAll,
}

/// The configuration of a [`LocalModel`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// Each client's script, run in order.
    pub clients: Vec<Vec<Step>>,
    /// The number of keys.
    pub keys: usize,
    /// The number of engine workers: at most this many ops run at once.
    pub workers: usize,
    /// The planted bugs (none: the engine as it is).
    pub faults: Vec<Fault>,
}

fn push(key: usize, priority: i32) -> Step {
    Step::Push { key, priority }
}

fn pull(key: usize, out: usize, priority: i32) -> Step {
    Step::Pull { key, out, priority }
}

impl LocalConfig {
    /// The CI configuration: 3 clients, 2 keys, 2 workers, 3 calls each. Every fault of
    /// [`Fault::ALL`] is caught in it: a push waited for by two pulls (lost wake-up), a
    /// high-priority pull behind a waiting push (overtaking), pulls issued while a push holds
    /// the key (readers beside a writer), a wait_all after a push (early wait_all). Clients 1 and
    /// 2 reuse one output for both their pulls, so their pulls also order on an output var.
    pub fn ci() -> Self {
        LocalConfig {
            clients: vec![
                vec![push(0, 0), Step::WaitAll, pull(1, 0, 0)],
                vec![pull(0, 1, 0), push(1, 0), pull(0, 1, 0)],
                vec![
                    pull(0, 2, 1),
                    push(0, 0),
                    Step::RowSparsePull {
                        key: 1,
                        rows: vec![1],
                        out: 2,
                        priority: 2,
                    },
                ],
            ],
            keys: 2,
            workers: 2,
            faults: Vec::new(),
        }
    }

    /// A larger configuration for release runs: 3 clients of 4 calls on 2 keys, 3 workers, with
    /// a row_sparse_pull and two wait_alls.
    pub fn large() -> Self {
        LocalConfig {
            clients: vec![
                vec![push(0, 0), pull(1, 0, 1), Step::WaitAll, pull(0, 0, 0)],
                vec![
                    pull(0, 1, 0),
                    push(1, 0),
                    Step::RowSparsePull {
                        key: 0,
                        rows: vec![1],
                        out: 2,
                        priority: 2,
                    },
                    pull(1, 1, 0),
                ],
                vec![pull(0, 3, 1), push(0, 0), Step::WaitAll, push(1, 1)],
            ],
            keys: 2,
            workers: 3,
            faults: Vec::new(),
        }
    }

    /// The same configuration with `fault` planted too.
    pub fn with_fault(mut self, fault: Fault) -> Self {
        if !self.faults.contains(&fault) {
            self.faults.push(fault);
        }
        self
    }

    /// The model to check.
    pub fn into_model(self) -> LocalModel {
        LocalModel::new(self)
    }
}
