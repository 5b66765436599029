//! `kvstore-mpi-check MODE`: run under mpirun.
//!
//! - `dist_sync`, `dist_async`, `dist_sync_2bit`, `dist_device_sync`: every worker runs a fixed
//!   program of init, push, pull, pushpull and row_sparse_pull and checks each result bit for
//!   bit against the spec's `DistStore` run on the same contributions (R51, R52, R54, R55,
//!   R63). Exit code 0 when every check passed.
//!   `dist_sync_allreduce` (and `dist_sync_allreduce_2bit`) run the same program on the
//!   allreduce kind: every rank is a worker, `KVSTORE_NUM_SERVERS` is ignored.
//! - `script PATH [KIND]`: every worker runs the ops of a JSON script with its own per-rank
//!   arguments and prints one JSON line per op with its result (`script.rs`); the proptest in
//!   `tests/mpirun_script.rs` compares them with the spec's `DistStore`.
//! - `soak [SECONDS]`: workers push and pull in a loop, for the tests that stop or kill a
//!   process from outside (`tests/mpirun_failures.rs`).
//! - `memcpy [ELEMENTS] [ITERATIONS]` (no mpirun): the copy ceiling, for `tools/dist-bench`.
//! - `bench [ELEMENTS] [ITERATIONS]`: dist_sync push + pull of one dense f32 key per worker
//!   (default 4 Mi elements, 20 iterations); worker 0 prints the median and the fastest
//!   iteration.
//! - `bench-allreduce [ELEMENTS] [ITERATIONS]`: the same on `dist_sync_allreduce`, for
//!   comparing the two layouts.
#![forbid(unsafe_code)]

mod bench;
mod program;
mod script;
mod soak;

use kvstore_mpi::job::launch;
use kvstore_mpi::Options;
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mode = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "dist_sync".into());
    let number = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let result: kvstore_spec::Result<Vec<String>> = match mode.as_str() {
        "soak" => launch("dist_sync", &Options::from_env(), |kv| {
            soak::run(kv, number(2, 60) as u64)
        })
        .map(|report| report.into_iter().collect()),
        // No MPI: the copy ceiling for the benchmark's ratios.
        "memcpy" => Ok(vec![bench::memcpy(number(2, 4 << 20), number(3, 20))]),
        "bench" => {
            let (elements, iterations) = (number(2, 4 << 20), number(3, 20));
            launch("dist_sync", &Options::from_env(), |kv| {
                bench::run(kv, elements, iterations)
            })
            .map(|report| report.flatten().into_iter().collect())
        }
        "script" => std::env::args()
            .nth(2)
            .ok_or_else(|| kvstore_spec::Error::Protocol {
                reason: "usage: kvstore-mpi-check script PATH [KIND]".into(),
            })
            .and_then(|path| script::load(&path))
            .and_then(|script| {
                let kind = std::env::args()
                    .nth(3)
                    .unwrap_or_else(|| script.kind.clone());
                launch(&kind, &Options::from_env(), |kv| script::run(kv, &script))
            })
            .map(|_| Vec::new()),
        "bench-allreduce" => {
            let (elements, iterations) = (number(2, 4 << 20), number(3, 20));
            launch("dist_sync_allreduce", &Options::from_env(), |kv| {
                bench::run(kv, elements, iterations)
            })
            .map(|report| report.flatten().into_iter().collect())
        }
        _ => launch(program::store_kind(&mode), &Options::from_env(), |kv| {
            program::run(kv, &mode)
        })
        .map(|report| report.into_iter().collect()),
    };
    match result {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
