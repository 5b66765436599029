//! `kvstore-mpi-check [dist_sync|dist_async|dist_sync_2bit]`: run under mpirun; every worker pushes and pulls
//! a fixed program and checks each pull bit for bit against the spec's `DistStore` run on the
//! same contributions (R51, R52, R54, R63). Exit code 0 when every check passed.
//!
//! `kvstore-mpi-check bench [ELEMENTS] [ITERATIONS]`: dist_sync push + pull of one dense f32
//! key per worker (default 4 Mi elements, 20 iterations); worker 0 prints the median and the
//! fastest iteration.
#![forbid(unsafe_code)]

use kvstore_mpi::job::{launch, DistKv};
use kvstore_mpi::Options;
use kvstore_spec::codec::{Compression, CompressionType};
use kvstore_spec::dist::DistStore;
use kvstore_spec::kind::Kind;
use kvstore_spec::optimizer::{Optimizer, Sgd};
use kvstore_spec::{Error, Key, Result, Tensor, Value};
use std::process::ExitCode;

const ROUNDS: usize = 3;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn keys() -> Vec<(Key, Vec<usize>)> {
    vec![
        (Key::Int(3), vec![2]),
        (Key::Int(8), vec![5]),
        (Key::Int(-5), vec![2, 2]),
    ]
}

fn tensor(shape: &[usize], f: impl Fn(usize) -> f32) -> Result<Value> {
    let n = shape.iter().product();
    Ok(Value::Dense(Tensor::new(
        shape.to_vec(),
        (0..n).map(f).collect::<Vec<f32>>(),
    )?))
}

/// Worker `rank`'s contribution to key `k` in `round`: distinct powers of two, so a sum tells
/// which contributions it holds and f32 adds them exactly in any order.
fn contribution(
    kind: &str,
    workers: usize,
    rank: usize,
    round: usize,
    k: usize,
) -> Result<(Key, Value)> {
    let (key, shape) = keys().swap_remove(k);
    if compressed(kind) {
        // Below and above the threshold, so the residuals carry over between rounds (R55).
        let step = 0.125 * round as f32;
        return Ok((
            key,
            tensor(&shape, |j| 0.25 * (1 + rank + j) as f32 + step)?,
        ));
    }
    let unit = 2.0_f32.powi((rank + workers * round) as i32);
    Ok((key, tensor(&shape, |j| unit * (j + 1 + k) as f32)?))
}

/// `dist_sync_2bit`: dist_sync with 2-bit compression at threshold 0.5.
fn compressed(kind: &str) -> bool {
    kind.ends_with("_2bit")
}

fn two_bit() -> Result<Compression> {
    Compression::new(CompressionType::TwoBit, 0.5)
}

/// The store kind of a mode name.
fn store_kind(kind: &str) -> &str {
    kind.trim_end_matches("_2bit")
}

fn init_values() -> Result<Vec<(Key, Value)>> {
    keys()
        .into_iter()
        .map(|(key, shape)| Ok((key, tensor(&shape, |j| 0.5 * j as f32)?)))
        .collect()
}

fn optimizer() -> Optimizer {
    Optimizer::Sgd(Sgd {
        learning_rate: 1.0,
        ..Sgd::default()
    })
}

/// The spec's values after `rounds` full rounds of every worker.
fn spec_after(kind: &str, workers: usize, rounds: usize) -> Result<Vec<Value>> {
    let mut spec = DistStore::new(Kind::parse(store_kind(kind))?, workers)?;
    spec.init(&vec![init_values()?; workers])?;
    if compressed(kind) {
        spec.set_gradient_compression(two_bit()?)?;
    }
    if kind == "dist_async" {
        spec.set_optimizer(0, optimizer())?;
    }
    for round in 0..rounds {
        for rank in 0..workers {
            let pairs = (0..keys().len())
                .map(|k| contribution(kind, workers, rank, round, k))
                .collect::<Result<Vec<_>>>()?;
            spec.push(rank, &pairs)?;
        }
    }
    keys()
        .iter()
        .map(|(key, _)| {
            spec.value(key)
                .cloned()
                .ok_or_else(|| Error::NotInitialized { key: key.clone() })
        })
        .collect()
}

fn check(what: &str, got: &[Value], expected: &[Value]) -> Result<()> {
    if got == expected {
        return Ok(());
    }
    Err(Error::Protocol {
        reason: format!("{what}: pulled {got:?}, the spec says {expected:?}"),
    })
}

fn program(kv: &DistKv<'_>, kind: &str) -> Result<usize> {
    let (rank, workers) = (kv.rank(), kv.num_workers());
    let names: Vec<Key> = keys().into_iter().map(|(k, _)| k).collect();
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
    if compressed(kind) {
        kv.set_gradient_compression(two_bit()?)?;
    }
    if kind == "dist_async" {
        if rank == 0 {
            kv.set_optimizer(&optimizer())?;
        }
        kv.barrier()?;
    }
    let mut checks = 0;
    for round in 0..ROUNDS {
        let pairs = (0..names.len())
            .map(|k| contribution(kind, workers, rank, round, k))
            .collect::<Result<Vec<_>>>()?;
        // Odd rounds go through pushpull, even rounds through push then pull.
        let pulled = if round % 2 == 1 {
            kv.pushpull(&pairs)?
        } else {
            kv.push(&pairs)?;
            kv.pull(&names)?
        };
        if store_kind(kind) == "dist_sync" {
            check(
                &format!("worker {rank}, round {round}"),
                &pulled,
                &spec_after(kind, workers, round + 1)?,
            )?;
            checks += 1;
        }
    }
    if drill("KVSTORE_CHECK_EXTRA_PUSH_WORKER") {
        // Uneven push counts (R53): this worker's extra round can never complete.
        let pairs = (0..names.len())
            .map(|k| contribution(kind, workers, rank, ROUNDS, k))
            .collect::<Result<Vec<_>>>()?;
        kv.push(&pairs)?;
    }
    kv.wait_all()?;
    kv.barrier()?;
    let last = kv.pull(&names)?;
    check(
        &format!("worker {rank}, the end"),
        &last,
        &spec_after(kind, workers, ROUNDS)?,
    )?;
    Ok(checks + 1)
}

/// Times push + pull of one key; returns (median, fastest) seconds per iteration.
fn bench(kv: &DistKv<'_>, elements: usize, iterations: usize) -> Result<(f64, f64)> {
    let key = Key::Int(0);
    kv.init(&[(key.clone(), tensor(&[elements], |_| 0.0)?)])?;
    let grad = tensor(&[elements], |j| (j % 7) as f32 * 0.25)?;
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations.max(1) {
        kv.barrier()?;
        let started = std::time::Instant::now();
        kv.push(&[(key.clone(), grad.clone())])?;
        let pulled = kv.pull(std::slice::from_ref(&key))?;
        times.push(started.elapsed().as_secs_f64());
        drop(pulled);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0]))
}

fn main() -> ExitCode {
    let kind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "dist_sync".into());
    if kind == "bench" {
        let number = |i: usize, default: usize| {
            std::env::args()
                .nth(i)
                .and_then(|a| a.parse().ok())
                .unwrap_or(default)
        };
        let (elements, iterations) = (number(2, 4 << 20), number(3, 20));
        return match launch("dist_sync", &Options::from_env(), |kv| {
            bench(kv, elements, iterations).map(|t| (kv.rank(), kv.num_workers(), t))
        }) {
            Ok(Some((0, workers, (median, fastest)))) => {
                println!(
                    "push+pull of {elements} f32, {workers} workers: median {:.2} ms, fastest {:.2} ms",
                    median * 1e3,
                    fastest * 1e3
                );
                ExitCode::SUCCESS
            }
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match launch(store_kind(&kind), &Options::from_env(), |kv| {
        program(kv, &kind).map(|checks| (kv.rank(), checks))
    }) {
        Ok(Some((rank, checks))) => {
            println!("worker {rank}: {checks} pulls equal the spec ({kind})");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
