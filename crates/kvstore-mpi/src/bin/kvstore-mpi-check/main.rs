//! `kvstore-mpi-check MODE`: run under mpirun.
//!
//! - `dist_sync`, `dist_async`, `dist_sync_2bit`, `dist_device_sync`: every worker runs a fixed
//!   program of init, push, pull, pushpull and row_sparse_pull and checks each result bit for
//!   bit against the spec's `DistStore` run on the same contributions (R51, R52, R54, R55,
//!   R63). Exit code 0 when every check passed.
//! - `bench [ELEMENTS] [ITERATIONS]`: dist_sync push + pull of one dense f32 key per worker
//!   (default 4 Mi elements, 20 iterations); worker 0 prints the median and the fastest
//!   iteration.
#![forbid(unsafe_code)]

mod bench;
mod program;

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
        "bench" => {
            let (elements, iterations) = (number(2, 4 << 20), number(3, 20));
            launch("dist_sync", &Options::from_env(), |kv| {
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
