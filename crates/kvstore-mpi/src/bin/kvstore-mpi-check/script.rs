//! `script PATH [KIND]`: every worker runs the ops of a JSON script, each with its own
//! per-rank arguments, and prints one JSON [`Line`] per op with its result. Nothing is checked
//! here: `tests/mpirun_script.rs` generates the scripts and compares every line, bit for bit,
//! with the spec's `DistStore` run on the same calls (R49-R52, R55, R57, R59, R63).
//!
//! A script is `{"kind": "dist_sync", "ops": [...]}` (`kind` is optional; the command line's
//! KIND wins). Every op names the arguments of each worker rank (`per_rank[r]`), so workers may
//! push different values or pull different rows; a script must still make every worker push
//! the same keys the same number of times, or rounds never complete (R51, R53).
//!
//! The result of an op is `{"Ok": [values]}` (the values a pull returns, none for the other
//! ops) or `{"Err": error}`. After the last op every worker reports a final `wait_all` as op
//! number `ops.len()`.

use kvstore_mpi::Handle;
use kvstore_spec::codec::Compression;
use kvstore_spec::optimizer::Optimizer;
use kvstore_spec::{Error, Key, Result, Value};
use serde::{Deserialize, Serialize};
use std::io::Write;

/// The ops every worker runs, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Script {
    /// The store kind; the command line's KIND overrides it.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// The program.
    pub ops: Vec<Op>,
}

fn default_kind() -> String {
    "dist_sync".into()
}

/// One step of a script. `per_rank[r]` is worker `r`'s argument; every list must cover every
/// worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Collective init (R49): rank 0's values are stored.
    Init {
        /// Each worker's (key, value) pairs.
        per_rank: Vec<Vec<(Key, Value)>>,
    },
    /// A push; a key given several values is merged on the worker first (R17, R51).
    Push {
        /// Each worker's (key, value) pairs.
        per_rank: Vec<Vec<(Key, Value)>>,
    },
    /// A pull: each key's value after the round of this worker's last push (R52).
    Pull {
        /// Each worker's keys.
        per_rank: Vec<Vec<Key>>,
    },
    /// A row_sparse_pull (R30-R33).
    RowSparsePull {
        /// Each worker's keys and row id lists.
        per_rank: Vec<RowPull>,
    },
    /// A push, then a pull of the pushed keys (R34, R52).
    PushPull {
        /// Each worker's (key, value) pairs.
        per_rank: Vec<Vec<(Key, Value)>>,
    },
    /// The global barrier.
    Barrier,
    /// Waits for every push in flight (R61: a failure not yet reported comes back here).
    WaitAll,
    /// Every worker compresses its later pushes (R55).
    SetGradientCompression {
        /// The parameters.
        compression: Compression,
    },
    /// Every worker waits for its pushes, rank 0 installs the optimizer on the servers, then
    /// every worker meets in a barrier: so each round is applied either wholly before or wholly
    /// after the optimizer arrives, as in the spec (R57).
    SetOptimizer {
        /// The optimizer.
        optimizer: Optimizer,
    },
}

/// One worker's arguments of a row_sparse_pull.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowPull {
    /// The keys.
    pub keys: Vec<Key>,
    /// One list for every key, or one list per key (anything else is `RowIdsCountMismatch`).
    pub row_ids: Vec<Vec<i64>>,
}

/// What a worker prints for one op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// The worker's rank.
    pub rank: usize,
    /// The op's index in the script; `ops.len()` for the final `wait_all`.
    pub op: usize,
    /// The op's result: the values it returned, or its error.
    pub result: std::result::Result<Vec<Value>, Error>,
}

fn bad_script(reason: String) -> Error {
    Error::Protocol {
        reason: format!("script: {reason}"),
    }
}

/// Reads and parses a script file.
pub fn load(path: &str) -> Result<Script> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad_script(format!("cannot read {path}: {e}")))?;
    serde_json::from_str(&text).map_err(|e| bad_script(format!("{path}: {e}")))
}

impl Op {
    /// How many workers the op gives arguments for (`None`: the op takes none).
    fn ranks(&self) -> Option<usize> {
        match self {
            Op::Init { per_rank } | Op::Push { per_rank } | Op::PushPull { per_rank } => {
                Some(per_rank.len())
            }
            Op::Pull { per_rank } => Some(per_rank.len()),
            Op::RowSparsePull { per_rank } => Some(per_rank.len()),
            Op::Barrier
            | Op::WaitAll
            | Op::SetGradientCompression { .. }
            | Op::SetOptimizer { .. } => None,
        }
    }
}

/// Worker `rank`'s argument.
fn mine<T>(per_rank: &[T], rank: usize) -> Result<&T> {
    per_rank
        .get(rank)
        .ok_or_else(|| bad_script(format!("no arguments for worker {rank}")))
}

/// Runs one op on this worker.
fn step(kv: &dyn Handle, op: &Op) -> Result<Vec<Value>> {
    let rank = kv.rank();
    let none = |()| Vec::new();
    match op {
        Op::Init { per_rank } => kv.init(mine(per_rank, rank)?).map(none),
        Op::Push { per_rank } => kv.push(mine(per_rank, rank)?).map(none),
        Op::Pull { per_rank } => kv.pull(mine(per_rank, rank)?),
        Op::RowSparsePull { per_rank } => {
            let args = mine(per_rank, rank)?;
            kv.row_sparse_pull(&args.keys, &args.row_ids)
        }
        Op::PushPull { per_rank } => kv.pushpull(mine(per_rank, rank)?),
        Op::Barrier => kv.barrier().map(none),
        Op::WaitAll => kv.wait_all().map(none),
        Op::SetGradientCompression { compression } => {
            kv.set_gradient_compression(*compression).map(none)
        }
        Op::SetOptimizer { optimizer } => {
            // Every call runs whatever the others return, so no worker is left in the barrier.
            let drained = kv.wait_all();
            let set = if rank == 0 {
                kv.set_optimizer(optimizer)
            } else {
                Ok(())
            };
            let met = kv.barrier();
            drained.and(set).and(met).map(none)
        }
    }
}

/// Runs the script on this worker, printing one JSON line per op (and one for the final
/// `wait_all`) as it goes. Fails only when the script does not cover this job's workers, before
/// any op runs, identically on every worker.
pub fn run(kv: &dyn Handle, script: &Script) -> Result<()> {
    let (rank, workers) = (kv.rank(), kv.num_workers());
    for (index, op) in script.ops.iter().enumerate() {
        if let Some(ranks) = op.ranks().filter(|&ranks| ranks < workers) {
            return Err(bad_script(format!(
                "op {index} gives arguments for {ranks} workers, the job has {workers}"
            )));
        }
    }
    let print = |op: usize, result: Result<Vec<Value>>| -> Result<()> {
        let line = Line { rank, op, result };
        let text = serde_json::to_string(&line).map_err(|e| Error::Protocol {
            reason: format!("cannot write the result of op {op}: {e}"),
        })?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .map_err(|e| Error::Protocol {
                reason: format!("cannot print the result of op {op}: {e}"),
            })
    };
    for (index, op) in script.ops.iter().enumerate() {
        print(index, step(kv, op))?;
    }
    print(script.ops.len(), kv.wait_all().map(|()| Vec::new()))
}
