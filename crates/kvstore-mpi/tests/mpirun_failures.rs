//! Failures struck from outside (R64): a running job of 2 workers + 1 server (`kvstore-mpi-check
//! soak`) has one of its processes killed (SIGKILL, as the OOM killer would) or frozen
//! (SIGSTOP: alive, silent). Every other process must then fail with an error within the
//! failure detector's timeout, never hang. Needs the `mpi` feature and OpenMPI's `mpirun`;
//! without `mpirun` each test says so.
#![cfg(feature = "mpi")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The failure detector's timeout in these jobs.
const TIMEOUT: Duration = Duration::from_secs(3);
/// How long the job may take to end after the strike: the timeout plus mpirun's teardown.
const DEADLINE: Duration = Duration::from_secs(20);

fn mpirun_available() -> bool {
    Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The pid of the job's process of MPI rank `rank`: the one whose environment carries both
/// this job's tag and that rank (other tests' jobs run at the same time).
fn pid_of(tag: &str, rank: usize) -> Option<u32> {
    let want_tag = format!("KVSTORE_CHECK_TAG={tag}");
    let want_rank = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
        let has = |want: &str| vars.contains(&want.as_bytes());
        (has(&want_tag) && has(&want_rank)).then_some(pid)
    })
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status();
}

/// Starts a soak job, waits until its workers loop, strikes rank `rank` with `signal_name`,
/// and returns how long the job took to end after the strike, and its stderr. `None` without
/// mpirun.
fn strike(rank: usize, signal_name: &str) -> Option<(Duration, String)> {
    if !mpirun_available() {
        println!("SKIPPED: mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)");
        return None;
    }
    let tag = format!("{}-{rank}-{signal_name}", std::process::id());
    let mut job: Child = Command::new("timeout")
        .args(["120", "mpirun", "--oversubscribe", "-n", "3"])
        .arg(env!("CARGO_BIN_EXE_kvstore-mpi-check"))
        .args(["soak", "60"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("KVSTORE_NUM_SERVERS", "1")
        .env("KVSTORE_TIMEOUT_MS", TIMEOUT.as_millis().to_string())
        .env("KVSTORE_CHECK_TAG", &tag)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = job.stdout.take().unwrap();
    let (soaking, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("soaking") {
                let _ = soaking.send(());
            }
        }
    });
    let mut stderr = job.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    lines
        .recv_timeout(Duration::from_secs(60))
        .expect("the workers never started their loop");
    let pid = pid_of(&tag, rank).expect("no process of that rank");
    signal(pid, signal_name);
    let struck = Instant::now();
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        if struck.elapsed() > DEADLINE + Duration::from_secs(30) {
            signal(pid, "KILL");
            let _ = job.kill();
            panic!("the job still runs {:?} after the strike", struck.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = struck.elapsed();
    // A frozen process must not outlive its test.
    signal(pid, "KILL");
    let stderr = errors.join().unwrap();
    assert!(
        !status.success(),
        "the job succeeded after the strike\n{stderr}"
    );
    assert!(
        elapsed < DEADLINE,
        "the job took {elapsed:.2?} to fail after the strike\n{stderr}"
    );
    println!("rank {rank}, SIG{signal_name}: the job failed {elapsed:.2?} after the strike");
    Some((elapsed, stderr))
}

#[test]
fn r64_a_killed_server_ends_the_job_within_the_timeout() {
    strike(2, "KILL");
}

#[test]
fn r64_a_frozen_server_makes_every_worker_fail_with_peer_failed() {
    let Some((_, stderr)) = strike(2, "STOP") else {
        return;
    };
    // Each worker's own detector fires: no reply for the timeout.
    assert!(stderr.contains("waited too long for replies"), "{stderr}");
}

#[test]
fn r64_a_killed_worker_ends_the_job_within_the_timeout() {
    strike(1, "KILL");
}

#[test]
fn r64_a_frozen_worker_is_named_by_the_server_to_the_live_worker() {
    let Some((_, stderr)) = strike(1, "STOP") else {
        return;
    };
    assert!(stderr.contains("workers [1]"), "{stderr}");
}
