//! What each worker does in the model, and what the spec says it must observe.

use super::DistConfig;
use kvstore_spec::dist::DistStore;
use kvstore_spec::kind::Kind;
use kvstore_spec::{Error, Key, Result, Tensor, Value};

/// One step of a worker's program.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Collective init of every key.
    Init,
    /// Install the config's optimizer on the servers (worker 0 only), waited for.
    SetOptimizer,
    /// Turn compression on locally.
    Compress,
    /// Push every key's contribution of a round; not waited for (as an asynchronous engine
    /// issues it).
    Push(usize),
    /// Pull every key, waited for.
    Pull,
    /// Pull every key without waiting: the worker's next push goes out while the pull is
    /// pending (as an asynchronous engine lets it when the pull's output is another array).
    PullNoWait,
    /// The global barrier.
    Barrier,
    /// The worker restarts, forgets its keys and inits the first key again: the servers must
    /// refuse (decision 3).
    RogueInit,
    /// After a mismatched init, every worker inits again with the same values: it must
    /// succeed, so the failed init left nothing behind (R49, R7).
    Reinit,
}

impl Step {
    /// Whether the worker waits for this step to complete before the next.
    pub fn waits(&self) -> bool {
        !matches!(self, Step::Push(_) | Step::Compress | Step::PullNoWait)
    }
}

/// What a step must observe.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// Success with no value.
    Done,
    /// A pull: one of these value lists (exactly one in dist_sync; in dist_async every mix of
    /// the other workers' applied pushes).
    Values(Vec<Vec<Value>>),
    /// A failure with `DuplicateInit`.
    DuplicateInit,
    /// A failure with `CollectiveMismatch`.
    CollectiveMismatch,
}

/// The keys' initial values.
pub fn init_values(config: &DistConfig) -> Vec<(Key, Value)> {
    init_values_of(config, 0)
}

/// Worker `rank`'s init values: everyone's, except worker 1's first key when the config
/// mismatches the init (one element more).
pub fn init_values_of(config: &DistConfig, rank: usize) -> Vec<(Key, Value)> {
    config
        .keys
        .iter()
        .enumerate()
        .map(|(k, (key, shape))| {
            let mut shape = shape.clone();
            if config.mismatched_init && rank == 1 && k == 0 {
                if let Some(first) = shape.first_mut() {
                    *first += 1;
                }
            }
            let shape = &shape;
            let n: usize = shape.iter().product();
            let data = vec![0.0_f32; n];
            let value = Tensor::new(shape.clone(), data).map(Value::Dense);
            (
                key.clone(),
                value.unwrap_or_else(|_| Value::Dense(Tensor::default_empty())),
            )
        })
        .collect()
}

/// Worker `rank`'s contribution to key number `k` in round `round`. Without compression every
/// contribution is a distinct power of two per element position, so a sum tells exactly which
/// contributions it holds and f32 adds them exactly in any order.
pub fn contribution(config: &DistConfig, rank: usize, round: usize, k: usize) -> (Key, Value) {
    let (key, shape) = &config.keys[k];
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|j| {
            if config.compression.is_some() {
                // Below and above the threshold, so residuals matter.
                0.25 * (1 + rank + j) as f32 + 0.125 * round as f32
            } else {
                let unit = (2.0_f32).powi((rank + config.workers * round) as i32);
                unit * (j + 1) as f32
            }
        })
        .collect();
    let value = Tensor::new(shape.clone(), data).map(Value::Dense);
    (
        key.clone(),
        value.unwrap_or_else(|_| Value::Dense(Tensor::default_empty())),
    )
}

/// Worker `rank`'s program.
pub fn program(config: &DistConfig, rank: usize) -> Vec<Step> {
    let mut steps = vec![Step::Init];
    if config.mismatched_init {
        // The init fails everywhere; a second, agreed init must then work as if it had not
        // happened.
        steps.push(Step::Reinit);
    }
    if config.optimizer.is_some() {
        if rank == 0 {
            steps.push(Step::SetOptimizer);
        }
        steps.push(Step::Barrier);
    }
    if config.compression.is_some() {
        steps.push(Step::Compress);
    }
    for round in 0..config.rounds {
        steps.push(Step::Push(round));
        if round + 1 == config.rounds {
            steps.push(Step::Pull);
        } else if config.pull_each_round {
            steps.push(if config.overlap_pulls {
                Step::PullNoWait
            } else {
                Step::Pull
            });
        }
    }
    if config.rogue_init && rank == 0 {
        steps.push(Step::RogueInit);
    }
    steps
}

/// Per worker, per step, what the spec says it must observe.
pub fn expectations(config: &DistConfig) -> Result<Vec<Vec<Expect>>> {
    (0..config.workers)
        .map(|rank| {
            let mut pushed = 0;
            program(config, rank)
                .iter()
                .map(|step| match step {
                    Step::Push(_) => {
                        pushed += 1;
                        Ok(Expect::Done)
                    }
                    Step::Pull | Step::PullNoWait => {
                        pulls(config, rank, pushed).map(Expect::Values)
                    }
                    Step::RogueInit => Ok(Expect::DuplicateInit),
                    Step::Init if config.mismatched_init => Ok(Expect::CollectiveMismatch),
                    _ => Ok(Expect::Done),
                })
                .collect()
        })
        .collect()
}

/// The value lists a pull of worker `rank` after its `own` pushes may return, from the spec.
fn pulls(config: &DistConfig, rank: usize, own: usize) -> Result<Vec<Vec<Value>>> {
    if config.sync {
        // Read your own round: exactly the value after round `own` (R51, R52).
        return Ok(vec![spec_after(config, &vec![own; config.workers])?]);
    }
    // dist_async: the own pushes, and any prefix of every other worker's pushes (R54).
    let mut candidates = Vec::new();
    let mut counts = vec![0; config.workers];
    loop {
        counts[rank] = own;
        let value = spec_after(config, &counts)?;
        if !candidates.contains(&value) {
            candidates.push(value);
        }
        // The next combination of the other workers' prefix lengths.
        let mut w = 0;
        loop {
            if w == config.workers {
                return Ok(candidates);
            }
            if w != rank && counts[w] < config.rounds {
                counts[w] += 1;
                break;
            }
            counts[w] = 0;
            w += 1;
        }
    }
}

/// The spec's values of every key once worker w's first `counts[w]` pushes are applied. In
/// dist_sync every count must be equal (whole rounds).
fn spec_after(config: &DistConfig, counts: &[usize]) -> Result<Vec<Value>> {
    let kind = Kind::parse(if config.sync {
        "dist_sync"
    } else {
        "dist_async"
    })?;
    let mut kv = DistStore::new(kind, config.workers)?;
    let init = init_values(config);
    kv.init(&vec![init; config.workers])?;
    if let Some(optimizer) = &config.optimizer {
        kv.set_optimizer(0, optimizer.clone())?;
    }
    if let Some(compression) = config.compression {
        kv.set_gradient_compression(compression)?;
    }
    let rounds = counts.iter().copied().max().unwrap_or(0);
    for round in 0..rounds {
        for (rank, &count) in counts.iter().enumerate() {
            if round < count {
                let pairs: Vec<(Key, Value)> = (0..config.keys.len())
                    .map(|k| contribution(config, rank, round, k))
                    .collect();
                kv.push(rank, &pairs)?;
            }
        }
    }
    config
        .keys
        .iter()
        .map(|(key, _)| {
            kv.value(key)
                .cloned()
                .ok_or_else(|| Error::NotInitialized { key: key.clone() })
        })
        .collect()
}
