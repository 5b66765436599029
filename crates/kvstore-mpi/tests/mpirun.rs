//! The MPI transport end to end: `mpirun` jobs of 2 workers + 1 server and 3 workers + 2
//! servers run `kvstore-mpi-check`, whose every pull must equal the spec's `DistStore` bit for
//! bit (R51, R52, R54, R63). Needs the `mpi` feature and OpenMPI's `mpirun`; without `mpirun`
//! each test says so and passes nothing off as checked.
#![cfg(feature = "mpi")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

fn mpirun_available() -> bool {
    Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn mpirun(
    processes: usize,
    servers: usize,
    kind: &str,
    extra: &[(&str, &str)],
) -> std::process::Output {
    let mut command = Command::new("timeout");
    command
        .args([
            "120",
            "mpirun",
            "--oversubscribe",
            "-n",
            &processes.to_string(),
        ])
        .arg(env!("CARGO_BIN_EXE_kvstore-mpi-check"))
        .arg(kind)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("KVSTORE_NUM_SERVERS", servers.to_string())
        // Small, so the 5-element key is sliced across the servers (R63).
        .env("KVSTORE_BIG_ARRAY_BOUND", "3")
        .env("KVSTORE_TIMEOUT_MS", "30000");
    for (name, value) in extra {
        command.env(name, value);
    }
    command.output().unwrap()
}

/// Runs the check program in a job of `processes` ranks of which `servers` are servers.
fn job(processes: usize, servers: usize, kind: &str) {
    if !mpirun_available() {
        println!("SKIPPED: mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)");
        return;
    }
    let started = Instant::now();
    let out = mpirun(processes, servers, kind, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{kind} on {processes} ranks failed:\n{stdout}\n{stderr}"
    );
    let workers = processes - servers;
    let ok = stdout.matches("pulls equal the spec").count();
    assert_eq!(ok, workers, "{stdout}\n{stderr}");
    println!(
        "{kind}, {workers} workers + {servers} servers: {:.2?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(120));
}

#[test]
fn r51_dist_sync_two_workers_one_server() {
    job(3, 1, "dist_sync");
}

#[test]
fn r63_dist_sync_three_workers_two_servers_with_a_sliced_key() {
    job(5, 2, "dist_sync");
}

#[test]
fn r17_dist_device_sync_merges_each_workers_devices_before_one_push() {
    job(5, 2, "dist_device_sync");
}

#[test]
fn r54_dist_async_two_workers_one_server() {
    job(3, 1, "dist_async");
}

#[test]
fn r54_dist_async_three_workers_two_servers() {
    job(5, 2, "dist_async");
}

#[test]
fn r55_dist_sync_compressed_three_workers_two_servers() {
    job(5, 2, "dist_sync_2bit");
}

/// A failure drill: a job of `processes` ranks (1 server) where the check program misbehaves as
/// `drill` (an environment variable naming a worker) says, with a 3 s failure-detector timeout.
/// The job must fail, within 30 s; returns its stderr. `None` without mpirun.
fn drill(processes: usize, drill: &str, worker: &str) -> Option<String> {
    if !mpirun_available() {
        println!("SKIPPED: mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)");
        return None;
    }
    let started = Instant::now();
    let env = [(drill, worker), ("KVSTORE_TIMEOUT_MS", "3000")];
    let out = mpirun(processes, 1, "dist_sync", &env);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{drill}: the job succeeded\n{stderr}"
    );
    assert!(
        elapsed < Duration::from_secs(30),
        "{drill}: took {elapsed:.2?}"
    );
    println!("{drill}: the job failed in {elapsed:.2?}");
    Some(stderr)
}

#[test]
fn r64_a_worker_that_stops_answering_makes_the_others_fail_naming_it() {
    let Some(stderr) = drill(4, "KVSTORE_CHECK_HANG_WORKER", "1") else {
        return;
    };
    // The server's detector (half the timeout) names the silent worker to the live ones.
    assert!(stderr.contains("did not answer in time"), "{stderr}");
    assert!(stderr.contains("workers [1]"), "{stderr}");
}

#[test]
fn r64_a_worker_that_dies_ends_the_job_instead_of_hanging_it() {
    drill(3, "KVSTORE_CHECK_KILL_WORKER", "1");
}

#[test]
fn r53_uneven_push_counts_are_diagnosed_with_the_key_and_the_missing_workers() {
    let Some(stderr) = drill(3, "KVSTORE_CHECK_EXTRA_PUSH_WORKER", "0") else {
        return;
    };
    assert!(stderr.contains("round 4 never completed"), "{stderr}");
    assert!(stderr.contains("workers [1]"), "{stderr}");
}

// --- The allreduce kind (no servers): every rank is a worker. `mpirun` sets
// KVSTORE_NUM_SERVERS=1, which the allreduce kind ignores, so these jobs also check that.

/// Runs the check program in an allreduce job of `workers` ranks with `extra` environment;
/// returns its output. `None` without mpirun.
fn allreduce(workers: usize, mode: &str, extra: &[(&str, &str)]) -> Option<std::process::Output> {
    if !mpirun_available() {
        println!("SKIPPED: mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)");
        return None;
    }
    Some(mpirun(workers, 1, mode, extra))
}

/// An allreduce job whose every pull must equal the spec's `DistStore` bit for bit.
fn allreduce_job(workers: usize, mode: &str, extra: &[(&str, &str)]) {
    let started = Instant::now();
    let Some(out) = allreduce(workers, mode, extra) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{mode} on {workers} ranks failed:\n{stdout}\n{stderr}"
    );
    let ok = stdout.matches("pulls equal the spec").count();
    assert_eq!(ok, workers, "{stdout}\n{stderr}");
    println!("{mode}, {workers} workers: {:.2?}", started.elapsed());
}

/// An allreduce job that must fail, within `limit`; returns its stderr.
fn allreduce_failure(
    workers: usize,
    mode: &str,
    extra: &[(&str, &str)],
    limit: Duration,
) -> Option<String> {
    let started = Instant::now();
    let out = allreduce(workers, mode, extra)?;
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{extra:?}: the job succeeded\n{stderr}"
    );
    assert!(elapsed < limit, "{extra:?}: took {elapsed:.2?}\n{stderr}");
    println!("{extra:?}: the job failed in {elapsed:.2?}");
    Some(stderr)
}

#[test]
fn r51_dist_sync_allreduce_two_workers_sum_in_rank_order() {
    // The default big-array bound: every key is summed in one fused reduce-scatter.
    allreduce_job(
        2,
        "dist_sync_allreduce",
        &[("KVSTORE_BIG_ARRAY_BOUND", "1000000")],
    );
}

#[test]
fn r51_dist_sync_allreduce_three_workers_fused_and_lone_keys() {
    // mpirun's bound of 3: the 5- and 8-element keys are summed alone, the others fused.
    allreduce_job(3, "dist_sync_allreduce", &[]);
}

#[test]
fn r55_dist_sync_allreduce_compressed_three_workers() {
    allreduce_job(3, "dist_sync_allreduce_2bit", &[]);
}

#[test]
fn r64_allreduce_a_worker_that_stops_answering_makes_the_others_fail_naming_it() {
    let env = [
        ("KVSTORE_CHECK_HANG_WORKER", "1"),
        ("KVSTORE_TIMEOUT_MS", "3000"),
    ];
    let limit = Duration::from_secs(30);
    let Some(stderr) = allreduce_failure(3, "dist_sync_allreduce", &env, limit) else {
        return;
    };
    assert!(stderr.contains("did not answer in time"), "{stderr}");
    assert!(stderr.contains("workers [1]"), "{stderr}");
}

#[test]
fn r64_allreduce_a_worker_that_dies_ends_the_job_instead_of_hanging_it() {
    let env = [
        ("KVSTORE_CHECK_KILL_WORKER", "1"),
        ("KVSTORE_TIMEOUT_MS", "3000"),
    ];
    allreduce_failure(3, "dist_sync_allreduce", &env, Duration::from_secs(30));
}

#[test]
fn r69_allreduce_workers_that_push_different_keys_all_fail_at_once() {
    // No timeout is involved: the header exchange finds the disagreement.
    let env = [
        ("KVSTORE_CHECK_MISMATCH_WORKER", "1"),
        ("KVSTORE_TIMEOUT_MS", "60000"),
    ];
    let limit = Duration::from_secs(20);
    let Some(stderr) = allreduce_failure(2, "dist_sync_allreduce", &env, limit) else {
        return;
    };
    assert!(
        stderr.contains("workers disagree in a collective push"),
        "{stderr}"
    );
}

#[test]
fn r69_an_async_allreduce_kind_is_refused() {
    let limit = Duration::from_secs(20);
    let Some(stderr) = allreduce_failure(1, "dist_async_allreduce", &[], limit) else {
        return;
    };
    assert!(
        stderr.contains("unsupported store kind 'dist_async_allreduce'"),
        "{stderr}"
    );
}
