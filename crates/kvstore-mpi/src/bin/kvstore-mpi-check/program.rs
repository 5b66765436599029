//! The fixed check program: every worker's results against the spec's `DistStore`.

use kvstore_mpi::Handle;
use kvstore_spec::codec::{Compression, CompressionType};
use kvstore_spec::dist::DistStore;
use kvstore_spec::kind::Kind;
use kvstore_spec::optimizer::{Optimizer, Sgd};
use kvstore_spec::value::RowSparse;
use kvstore_spec::{sparse, DType, Error, Key, Result, Tensor, Value};

const ROUNDS: usize = 3;

fn keys() -> Vec<(Key, Vec<usize>)> {
    vec![
        (Key::Int(3), vec![2]),
        (Key::Int(8), vec![5]),
        (Key::Int(-5), vec![2, 2]),
        (Key::Int(12), vec![4, 2]),
    ]
}

/// Key index 3 is stored and pushed row_sparse (never compressed: R43 refuses it).
const SPARSE: usize = 3;

/// The key indices a mode pushes and pulls.
fn used(mode: &str) -> Vec<usize> {
    (0..keys().len())
        .filter(|&k| k != SPARSE || !compressed(mode))
        .collect()
}

/// The row_sparse_pull asked after every round: per key index, its row ids (repeated and out
/// of order on purpose; key 8 is sliced across the servers when the bound is small).
fn row_pulls(mode: &str) -> Vec<(usize, Vec<i64>)> {
    let mut pulls = vec![(2, vec![1]), (1, vec![4, 0, 4])];
    if !compressed(mode) {
        pulls.push((SPARSE, vec![3, 0, 2]));
    }
    pulls
}

/// A row_sparse value of `shape` holding `rows`, row r's elements from `f(r, j)`.
fn rows_value(shape: &[usize], rows: &[i64], f: impl Fn(i64, usize) -> f32) -> Result<Value> {
    let width: usize = shape.iter().skip(1).product();
    let data: Vec<f32> = rows
        .iter()
        .flat_map(|&r| (0..width).map(move |j| (r, j)))
        .map(|(r, j)| f(r, j))
        .collect();
    Ok(Value::RowSparse(RowSparse::new(
        shape.to_vec(),
        rows.to_vec(),
        data,
    )?))
}

fn tensor(shape: &[usize], f: impl Fn(usize) -> f32) -> Result<Value> {
    let n = shape.iter().product();
    Ok(Value::Dense(Tensor::new(
        shape.to_vec(),
        (0..n).map(f).collect::<Vec<f32>>(),
    )?))
}

/// Worker `rank`'s values for key `k` in `round`: distinct powers of two, so a sum tells which
/// contributions it holds and f32 adds them exactly in any order. `dist_device_sync` gives two
/// values (two devices) whose local merge is the same contribution.
fn contribution(
    mode: &str,
    workers: usize,
    rank: usize,
    round: usize,
    k: usize,
) -> Result<Vec<(Key, Value)>> {
    let (key, shape) = keys().swap_remove(k);
    if compressed(mode) {
        // Below and above the threshold, so the residuals carry over between rounds (R55).
        let step = 0.125 * round as f32;
        let value = tensor(&shape, |j| 0.25 * (1 + rank + j) as f32 + step)?;
        return Ok(vec![(key, value)]);
    }
    let unit = 2.0_f32.powi((rank + workers * round) as i32);
    if k == SPARSE {
        // Two rows that move with the rank and the round; the others stay untouched.
        let rows = [(rank % 4) as i64, ((rank + round + 1) % 4) as i64];
        let mut rows = rows.to_vec();
        rows.sort_unstable();
        rows.dedup();
        let value = |scale: f32| {
            rows_value(&shape, &rows, |r, j| {
                scale * unit * (r as usize + j + 1) as f32
            })
        };
        if mode == "dist_device_sync" {
            return Ok(vec![(key.clone(), value(0.75)?), (key, value(0.25)?)]);
        }
        return Ok(vec![(key, value(1.0)?)]);
    }
    let value = |scale: f32| tensor(&shape, |j| scale * unit * (j + 1 + k) as f32);
    if mode == "dist_device_sync" {
        return Ok(vec![(key.clone(), value(0.75)?), (key, value(0.25)?)]);
    }
    Ok(vec![(key, value(1.0)?)])
}

fn contributions(
    mode: &str,
    workers: usize,
    rank: usize,
    round: usize,
) -> Result<Vec<(Key, Value)>> {
    let mut pairs = Vec::new();
    for k in used(mode) {
        pairs.extend(contribution(mode, workers, rank, round, k)?);
    }
    Ok(pairs)
}

/// `dist_sync_2bit`: dist_sync with 2-bit compression at threshold 0.5.
fn compressed(mode: &str) -> bool {
    mode.ends_with("_2bit")
}

fn two_bit() -> Result<Compression> {
    Compression::new(CompressionType::TwoBit, 0.5)
}

/// The store kind of a mode name.
pub fn store_kind(mode: &str) -> &str {
    mode.trim_end_matches("_2bit")
}

fn init_values() -> Result<Vec<(Key, Value)>> {
    keys()
        .into_iter()
        .enumerate()
        .map(|(k, (key, shape))| {
            let value = if k == SPARSE {
                rows_value(&shape, &[1, 2], |r, j| 0.5 * (r as usize * 2 + j) as f32)?
            } else {
                tensor(&shape, |j| 0.5 * j as f32)?
            };
            Ok((key, value))
        })
        .collect()
}

fn optimizer() -> Optimizer {
    Optimizer::Sgd(Sgd {
        learning_rate: 1.0,
        ..Sgd::default()
    })
}

/// The spec after `rounds` full rounds of every worker.
fn spec_after(mode: &str, workers: usize, rounds: usize) -> Result<DistStore> {
    let mut spec = DistStore::new(Kind::parse(store_kind(mode))?, workers)?;
    spec.init(&vec![init_values()?; workers])?;
    if compressed(mode) {
        spec.set_gradient_compression(two_bit()?)?;
    }
    if mode == "dist_async" {
        spec.set_optimizer(0, optimizer())?;
    }
    for round in 0..rounds {
        for rank in 0..workers {
            spec.push(rank, &contributions(mode, workers, rank, round)?)?;
        }
    }
    Ok(spec)
}

/// Every key's value in the spec after `rounds` rounds.
fn values_after(mode: &str, workers: usize, rounds: usize) -> Result<Vec<Value>> {
    let spec = spec_after(mode, workers, rounds)?;
    names(mode)
        .iter()
        .map(|key| {
            spec.value(key)
                .cloned()
                .ok_or_else(|| Error::NotInitialized { key: key.clone() })
        })
        .collect()
}

/// The spec's answer to [`row_pulls`] after `rounds` rounds.
fn rows_after(mode: &str, workers: usize, rounds: usize) -> Result<Vec<Value>> {
    let mut spec = spec_after(mode, workers, rounds)?;
    let mut out = Vec::new();
    for (k, ids) in row_pulls(mode) {
        let (key, shape) = keys().swap_remove(k);
        let zeros = tensor(&shape, |_| 0.0)?;
        let template = Value::RowSparse(sparse::retain(&zeros, &[], DType::F32)?);
        let pulled = spec
            .row_sparse_pull(0, &[(key.clone(), template)], &[ids])?
            .ok_or_else(|| Error::Protocol {
                reason: format!("the spec's row_sparse_pull of key {key} waits"),
            })?;
        out.extend(pulled);
    }
    Ok(out)
}

fn check(what: &str, got: &[Value], expected: &[Value]) -> Result<()> {
    if got == expected {
        return Ok(());
    }
    Err(Error::Protocol {
        reason: format!("{what}: got {got:?}, the spec says {expected:?}"),
    })
}

/// The keys a mode pulls, in key-index order.
fn names(mode: &str) -> Vec<Key> {
    used(mode)
        .into_iter()
        .map(|k| keys().swap_remove(k).0)
        .collect()
}

/// This worker's row_sparse_pull of [`row_pulls`].
fn pull_rows(kv: &dyn Handle, mode: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (k, ids) in row_pulls(mode) {
        let (key, _) = keys().swap_remove(k);
        out.extend(kv.row_sparse_pull(&[key], &[ids])?);
    }
    Ok(out)
}

/// Runs the program; returns the line the worker reports.
pub fn run(kv: &dyn Handle, mode: &str) -> Result<String> {
    let (rank, workers) = (kv.rank(), kv.num_workers());
    let names = names(mode);
    kv.init(&init_values()?)?;
    // Failure drills (R64): one worker stops answering, or dies, right after init.
    let drill = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            == Some(rank)
    };
    if drill("KVSTORE_CHECK_HANG_WORKER") {
        eprintln!("worker {rank}: hanging on purpose");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    if drill("KVSTORE_CHECK_KILL_WORKER") {
        eprintln!("worker {rank}: dying on purpose");
        std::process::exit(3);
    }
    if compressed(mode) {
        kv.set_gradient_compression(two_bit()?)?;
    }
    if mode == "dist_async" {
        if rank == 0 {
            kv.set_optimizer(&optimizer())?;
        }
        kv.barrier()?;
    }
    let sync = Kind::parse(store_kind(mode))?.is_sync();
    let mut checks = 0;
    for round in 0..ROUNDS {
        let mut pairs = contributions(mode, workers, rank, round)?;
        if round == 0 && drill("KVSTORE_CHECK_MISMATCH_WORKER") {
            // A push the others disagree with: this worker leaves out a key (allreduce: every
            // worker fails with CollectiveMismatch, R69).
            pairs.retain(|(key, _)| Some(key) != names.first());
        }
        // Odd rounds go through pushpull, even rounds through push then pull.
        let pulled = if round % 2 == 1 {
            kv.pushpull(&pairs)?
        } else {
            kv.push(&pairs)?;
            kv.pull(&names)?
        };
        if sync {
            let what = format!("worker {rank}, round {round}");
            check(&what, &pulled, &values_after(mode, workers, round + 1)?)?;
            let rows = pull_rows(kv, mode)?;
            check(&what, &rows, &rows_after(mode, workers, round + 1)?)?;
            checks += 2;
        }
    }
    if drill("KVSTORE_CHECK_EXTRA_PUSH_WORKER") {
        // Uneven push counts (R53): this worker's extra round can never complete.
        kv.push(&contributions(mode, workers, rank, ROUNDS)?)?;
    }
    kv.wait_all()?;
    kv.barrier()?;
    let what = format!("worker {rank}, the end");
    check(
        &what,
        &kv.pull(&names)?,
        &values_after(mode, workers, ROUNDS)?,
    )?;
    check(
        &what,
        &pull_rows(kv, mode)?,
        &rows_after(mode, workers, ROUNDS)?,
    )?;
    if sync {
        save_and_load(kv, mode)?;
        checks += 2;
    }
    Ok(format!(
        "worker {rank}: {} pulls equal the spec ({mode})",
        checks + 2
    ))
}

/// The optimizer with momentum that [`save_and_load`] installs.
fn momentum() -> Optimizer {
    Optimizer::Sgd(Sgd {
        learning_rate: 0.5,
        momentum: 0.5,
        ..Sgd::default()
    })
}

/// R68 after the main program: momentum SGD, a round, a save, a round, a load of the saved
/// states (the momentum restored), a round; the saved bytes and the last pull must equal the
/// spec's. With servers, rank 0 alone sets the optimizer, saves and loads; with allreduce those
/// calls are collective (R69), so every worker makes them, each with its own (equal) bytes.
fn save_and_load(kv: &dyn Handle, mode: &str) -> Result<()> {
    let (rank, workers) = (kv.rank(), kv.num_workers());
    let names = names(mode);
    let everyone = mode.contains("allreduce");
    let acts = rank == 0 || everyone;
    let round = |n: usize| -> Result<()> {
        kv.push(&contributions(mode, workers, rank, ROUNDS + n)?)?;
        kv.wait_all()?;
        kv.barrier()
    };
    if acts {
        kv.set_optimizer(&momentum())?;
    }
    kv.barrier()?;
    round(0)?;
    let saved = if acts {
        Some(kv.save_optimizer_states(true)?)
    } else {
        None
    };
    kv.barrier()?;
    round(1)?;
    if let Some(bytes) = &saved {
        kv.load_optimizer_states(bytes)?;
    }
    kv.barrier()?;
    kv.push(&contributions(mode, workers, rank, ROUNDS + 2)?)?;
    let pulled = kv.pull(&names)?;
    // The spec, the same way.
    let mut spec = spec_after(mode, workers, ROUNDS)?;
    spec.set_optimizer(0, momentum())?;
    let spec_round = |spec: &mut DistStore, n: usize| -> Result<()> {
        for r in 0..workers {
            spec.push(r, &contributions(mode, workers, r, ROUNDS + n)?)?;
        }
        Ok(())
    };
    spec_round(&mut spec, 0)?;
    let expected_bytes = spec.save_optimizer_states(true)?;
    spec_round(&mut spec, 1)?;
    spec.load_optimizer_states(&expected_bytes)?;
    spec_round(&mut spec, 2)?;
    if let Some(bytes) = saved {
        if bytes != expected_bytes {
            return Err(Error::Protocol {
                reason: format!(
                    "worker {rank}: saved states {} differ from the spec's {}",
                    String::from_utf8_lossy(&bytes),
                    String::from_utf8_lossy(&expected_bytes)
                ),
            });
        }
    }
    let expected: Vec<Value> = names
        .iter()
        .map(|key| {
            spec.value(key)
                .cloned()
                .ok_or_else(|| Error::NotInitialized { key: key.clone() })
        })
        .collect::<Result<_>>()?;
    check(
        &format!("worker {rank}, after the load"),
        &pulled,
        &expected,
    )
}
