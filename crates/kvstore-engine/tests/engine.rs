//! The engine against its rule, with std threads: per-var order checked against the issue order,
//! parallelism, priority, errors and panics, shutdown, and progress under concurrent pushing.
#![cfg(not(loom))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::slice;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use kvstore_engine::{Engine, OpPanicked, Var};
use proptest::prelude::*;

/// Long enough never to fire on a slow CI machine; short enough that a broken engine fails the
/// test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Eq)]
enum TestError {
    Failed(u32),
    Panicked(String),
    TimedOut(&'static str),
}

impl From<OpPanicked> for TestError {
    fn from(panic: OpPanicked) -> Self {
        TestError::Panicked(panic.0)
    }
}

type TestEngine = Engine<TestError>;
type TestVar = Var<TestError>;

// ---------------------------------------------------------------------------------------------
// The order checker shared by the random test and the property test.

/// One op of a plan: the indices of the vars it reads and writes, and its priority.
#[derive(Debug, Clone)]
struct PlannedOp {
    reads: Vec<usize>,
    writes: Vec<usize>,
    priority: i32,
}

impl PlannedOp {
    /// How the op uses var `v`: `None`, `Some(false)` (reads) or `Some(true)` (writes; a var both
    /// read and written is written).
    fn access(&self, v: usize) -> Option<bool> {
        if self.writes.contains(&v) {
            Some(true)
        } else if self.reads.contains(&v) {
            Some(false)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Start(usize),
    End(usize),
}

/// Pushes `plan` in order on an engine with `workers` threads over `vars` vars, each op logging
/// its start and end, and returns the log once every op has completed.
fn run_plan(plan: &[PlannedOp], vars: usize, workers: usize) -> Vec<Event> {
    let engine = TestEngine::new(workers);
    let vars: Vec<TestVar> = (0..vars).map(|_| Var::new()).collect();
    let log = Arc::new(Mutex::new(Vec::new()));
    for (id, op) in plan.iter().enumerate() {
        let reads: Vec<_> = op.reads.iter().map(|&v| vars[v].clone()).collect();
        let writes: Vec<_> = op.writes.iter().map(|&v| vars[v].clone()).collect();
        let log = Arc::clone(&log);
        engine.push(
            move || {
                log.lock().unwrap().push(Event::Start(id));
                // Give conflicting ops a chance to overlap if the engine let them.
                thread::yield_now();
                log.lock().unwrap().push(Event::End(id));
                Ok(())
            },
            &reads,
            &writes,
            op.priority,
        );
    }
    assert_eq!(engine.wait_all(), Ok(()));
    drop(engine);
    let log = log.lock().unwrap().clone();
    log
}

/// Checks the rule on every var: for ops `i < j` (issue order) on the same var where either one
/// writes, `i` ended before `j` started. Also checks every op ran exactly once.
fn check_order(plan: &[PlannedOp], vars: usize, log: &[Event]) -> Result<(), String> {
    let position = |event: Event| log.iter().position(|&e| e == event);
    let mut start = Vec::new();
    let mut end = Vec::new();
    for id in 0..plan.len() {
        let count = log.iter().filter(|&&e| e == Event::Start(id)).count();
        if count != 1 {
            return Err(format!("op {id} started {count} times"));
        }
        start.push(position(Event::Start(id)).unwrap_or(usize::MAX));
        end.push(position(Event::End(id)).unwrap_or(usize::MAX));
    }
    for v in 0..vars {
        for j in 0..plan.len() {
            let Some(j_writes) = plan[j].access(v) else {
                continue;
            };
            for i in 0..j {
                let Some(i_writes) = plan[i].access(v) else {
                    continue;
                };
                if (i_writes || j_writes) && end[i] > start[j] {
                    return Err(format!(
                        "var {v}: op {j} ({}) started before earlier op {i} ({}) ended",
                        if j_writes { "writer" } else { "reader" },
                        if i_writes { "writer" } else { "reader" },
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A small deterministic generator, so the random test needs no seed management.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[test]
fn per_var_order_follows_issue_order_for_random_readers_and_writers() {
    let mut rng = Lcg(7);
    let vars = 3;
    let plan: Vec<PlannedOp> = (0..400)
        .map(|_| {
            let mut op = PlannedOp {
                reads: Vec::new(),
                writes: Vec::new(),
                priority: rng.below(3) as i32,
            };
            for v in 0..vars {
                match rng.below(4) {
                    0 => op.reads.push(v),
                    1 => op.writes.push(v),
                    _ => {}
                }
            }
            op
        })
        .collect();
    let log = run_plan(&plan, vars, 4);
    check_order(&plan, vars, &log).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random op DAGs over 4 vars (reads and writes may overlap and repeat), random priorities,
    /// 1 to 3 workers: the observed order respects the rule on every var.
    #[test]
    fn random_op_dags_respect_the_per_var_rule(
        ops in prop::collection::vec(
            (
                prop::collection::vec(0..4_usize, 0..4),
                prop::collection::vec(0..4_usize, 0..3),
                -2..3_i32,
            ),
            1..24,
        ),
        workers in 1..=3_usize,
    ) {
        let plan: Vec<PlannedOp> = ops
            .into_iter()
            .map(|(reads, writes, priority)| PlannedOp { reads, writes, priority })
            .collect();
        let log = run_plan(&plan, 4, workers);
        prop_assert_eq!(check_order(&plan, 4, &log), Ok(()));
    }
}

// ---------------------------------------------------------------------------------------------
// Parallelism.

/// Pushes two ops on an engine with two workers; each must see the other running at the same
/// time, or it fails with `TimedOut`.
fn assert_run_together(
    engine: &TestEngine,
    first: (&[TestVar], &[TestVar]),
    second: (&[TestVar], &[TestVar]),
) {
    let (to_second, from_first) = mpsc::channel();
    let (to_first, from_second) = mpsc::channel();
    let rendezvous = |to_other: mpsc::Sender<()>, from_other: mpsc::Receiver<()>| {
        move || {
            to_other
                .send(())
                .map_err(|_| TestError::TimedOut("other op gone"))?;
            from_other
                .recv_timeout(PATIENCE)
                .map_err(|_| TestError::TimedOut("the other op never ran alongside"))
        }
    };
    engine.push(rendezvous(to_second, from_second), first.0, first.1, 0);
    engine.push(rendezvous(to_first, from_first), second.0, second.1, 0);
    assert_eq!(engine.wait_all(), Ok(()));
}

#[test]
fn ops_on_different_vars_run_in_parallel() {
    let engine = TestEngine::new(2);
    let (a, b) = (Var::new(), Var::new());
    assert_run_together(&engine, (&[], &[a]), (&[], &[b]));
}

#[test]
fn consecutive_readers_of_one_var_run_in_parallel() {
    let engine = TestEngine::new(2);
    let a: TestVar = Var::new();
    let (ra, rb) = (vec![a.clone()], vec![a.clone()]);
    assert_run_together(&engine, (&ra, &[]), (&rb, &[]));
}

#[test]
fn ops_without_vars_run_in_parallel() {
    let engine = TestEngine::new(2);
    assert_run_together(&engine, (&[], &[]), (&[], &[]));
}

// ---------------------------------------------------------------------------------------------
// Priority.

#[test]
fn higher_priority_runs_first_among_ready_ops_ties_in_issue_order() {
    let engine = TestEngine::new(1);
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    engine.push(
        move || {
            started_tx.send(()).unwrap();
            release_rx
                .recv_timeout(PATIENCE)
                .map_err(|_| TestError::TimedOut("never released"))
        },
        &[],
        &[],
        0,
    );
    // The only worker is now busy, so everything below is ready at the same time.
    started_rx.recv_timeout(PATIENCE).unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    for (name, priority) in [
        ("low", -1),
        ("mid-1", 5),
        ("high", 10),
        ("mid-2", 5),
        ("zero", 0),
    ] {
        let order = Arc::clone(&order);
        engine.push(
            move || {
                order.lock().unwrap().push(name);
                Ok(())
            },
            &[],
            &[],
            priority,
        );
    }
    release_tx.send(()).unwrap();
    assert_eq!(engine.wait_all(), Ok(()));
    assert_eq!(
        *order.lock().unwrap(),
        ["high", "mid-1", "mid-2", "zero", "low"]
    );
}

#[test]
fn priority_never_overtakes_a_dependency() {
    let engine = TestEngine::new(1);
    let var = Var::new();
    let order = Arc::new(Mutex::new(Vec::new()));
    for (name, priority, write) in [("write-low", -5, true), ("read-high", 9, false)] {
        let order = Arc::clone(&order);
        let (reads, writes) = if write {
            (vec![], vec![var.clone()])
        } else {
            (vec![var.clone()], vec![])
        };
        engine.push(
            move || {
                order.lock().unwrap().push(name);
                Ok(())
            },
            &reads,
            &writes,
            priority,
        );
    }
    assert_eq!(var.wait(), Ok(()));
    assert_eq!(*order.lock().unwrap(), ["write-low", "read-high"]);
}

// ---------------------------------------------------------------------------------------------
// Errors and panics.

#[test]
fn failed_op_error_comes_back_once_from_its_written_var_and_the_engine() {
    let engine = TestEngine::new(2);
    let (read, written) = (Var::new(), Var::new());
    engine.push(
        || Err(TestError::Failed(1)),
        slice::from_ref(&read),
        slice::from_ref(&written),
        0,
    );
    assert_eq!(written.wait(), Err(TestError::Failed(1)));
    assert_eq!(written.wait(), Ok(()));
    assert_eq!(
        read.wait(),
        Ok(()),
        "errors are recorded on written vars only"
    );
    assert_eq!(engine.wait_all(), Err(TestError::Failed(1)));
    assert_eq!(engine.wait_all(), Ok(()));
}

#[test]
fn later_errors_stay_for_later_waits_in_issue_order() {
    let engine = TestEngine::new(3);
    let var = Var::new();
    for code in 1..=3 {
        engine.push(
            move || Err(TestError::Failed(code)),
            &[],
            slice::from_ref(&var),
            0,
        );
    }
    engine.push(|| Err(TestError::Failed(4)), &[], &[], 0);
    assert_eq!(var.wait(), Err(TestError::Failed(1)));
    assert_eq!(var.wait(), Err(TestError::Failed(2)));
    assert_eq!(var.wait(), Err(TestError::Failed(3)));
    assert_eq!(var.wait(), Ok(()));
    for code in 1..=4 {
        assert_eq!(engine.wait_all(), Err(TestError::Failed(code)));
    }
    assert_eq!(engine.wait_all(), Ok(()));
}

#[test]
fn an_error_does_not_stop_dependent_ops() {
    let engine = TestEngine::new(1);
    let var = Var::new();
    let ran = Arc::new(AtomicBool::new(false));
    engine.push(|| Err(TestError::Failed(9)), &[], slice::from_ref(&var), 0);
    let flag = Arc::clone(&ran);
    engine.push(
        move || {
            flag.store(true, Ordering::SeqCst);
            Ok(())
        },
        slice::from_ref(&var),
        &[],
        0,
    );
    assert_eq!(var.wait(), Err(TestError::Failed(9)));
    assert!(ran.load(Ordering::SeqCst));
}

#[test]
fn panicking_op_becomes_op_panicked_and_the_worker_survives() {
    let engine = TestEngine::new(1);
    let var = Var::new();
    engine.push(|| panic!("broken op"), &[], slice::from_ref(&var), 0);
    engine.push(
        || std::panic::panic_any(17_u8),
        &[],
        slice::from_ref(&var),
        0,
    );
    assert_eq!(var.wait(), Err(TestError::Panicked("broken op".into())));
    assert!(matches!(var.wait(), Err(TestError::Panicked(_))));
    // The single worker is still alive.
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    engine.push(
        move || {
            flag.store(true, Ordering::SeqCst);
            Ok(())
        },
        slice::from_ref(&var),
        &[],
        0,
    );
    assert_eq!(var.wait(), Ok(()));
    assert!(ran.load(Ordering::SeqCst));
    assert_eq!(
        engine.wait_all(),
        Err(TestError::Panicked("broken op".into()))
    );
}

// ---------------------------------------------------------------------------------------------
// Shutdown, waiting and progress.

#[test]
fn drop_runs_every_pending_op_then_returns() {
    let count = Arc::new(AtomicUsize::new(0));
    let engine = TestEngine::new(2);
    let vars: Vec<TestVar> = (0..3).map(|_| Var::new()).collect();
    for i in 0..1000 {
        let count = Arc::clone(&count);
        let var = vars[i % 3].clone();
        let (reads, writes) = if i % 4 == 0 {
            (vec![var], vec![])
        } else {
            (vec![], vec![var])
        };
        engine.push(
            move || {
                count.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            &reads,
            &writes,
            0,
        );
    }
    engine.push(|| Ok(()), &[], &[], 0);
    drop(engine);
    assert_eq!(count.load(Ordering::SeqCst), 1000);
    assert!(vars.iter().all(|var| var.pending() == 0));
}

#[test]
fn an_engine_dropped_inside_its_own_op_still_runs_the_pending_ops() {
    let engine = Arc::new(TestEngine::new(1));
    let var = Var::new();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let last_handle = Arc::clone(&engine);
    engine.push(
        move || {
            release_rx
                .recv_timeout(PATIENCE)
                .map_err(|_| TestError::TimedOut("never released"))?;
            // The op holds the last handle: the engine is dropped on its only worker.
            drop(last_handle);
            Ok(())
        },
        &[],
        slice::from_ref(&var),
        0,
    );
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    engine.push(
        move || {
            flag.store(true, Ordering::SeqCst);
            Ok(())
        },
        slice::from_ref(&var),
        &[],
        0,
    );
    drop(engine);
    release_tx.send(()).unwrap();
    assert_eq!(var.wait(), Ok(()));
    assert!(ran.load(Ordering::SeqCst));
}

#[test]
fn wait_all_terminates_under_concurrent_pushing() {
    let engine = Arc::new(TestEngine::new(2));
    let var = Var::new();
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = {
        let (engine, var, stop) = (Arc::clone(&engine), var.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            // Keeps the var busy with a bounded backlog: an engine that waited for "no op
            // incomplete" instead of "no op issued before the call incomplete" would never return.
            let mut pushed = 0_u64;
            while !stop.load(Ordering::SeqCst) {
                if var.pending() < 16 {
                    engine.push(|| Ok(()), &[], slice::from_ref(&var), 0);
                    pushed += 1;
                } else {
                    thread::yield_now();
                }
            }
            pushed
        })
    };
    // Let the pusher get going, then wait on the engine and on the var while it keeps pushing.
    thread::sleep(Duration::from_millis(20));
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    engine.push(
        move || {
            flag.store(true, Ordering::SeqCst);
            Ok(())
        },
        &[],
        slice::from_ref(&var),
        0,
    );
    assert_eq!(engine.wait_all(), Ok(()));
    assert!(ran.load(Ordering::SeqCst));
    assert_eq!(var.wait(), Ok(()));
    stop.store(true, Ordering::SeqCst);
    assert!(pusher.join().unwrap() > 0);
}

#[test]
fn var_wait_waits_for_earlier_ops_only() {
    let engine = TestEngine::new(2);
    let var = Var::new();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    engine.push(
        move || {
            release_rx
                .recv_timeout(PATIENCE)
                .map_err(|_| TestError::TimedOut("never released"))?;
            flag.store(true, Ordering::SeqCst);
            Ok(())
        },
        slice::from_ref(&var),
        &[],
        0,
    );
    assert_eq!(var.pending(), 1);
    release_tx.send(()).unwrap();
    assert_eq!(var.wait(), Ok(()));
    assert!(ran.load(Ordering::SeqCst));
    assert_eq!(var.pending(), 0);
}

#[test]
fn an_op_may_read_the_pending_count_of_its_own_var() {
    let engine = TestEngine::new(1);
    let var: TestVar = Var::new();
    let seen = Arc::new(AtomicUsize::new(usize::MAX));
    let (inner, out) = (var.clone(), Arc::clone(&seen));
    engine.push(
        move || {
            out.store(inner.pending(), Ordering::SeqCst);
            Ok(())
        },
        &[],
        slice::from_ref(&var),
        0,
    );
    assert_eq!(var.wait(), Ok(()));
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "the running op itself is pending"
    );
}

#[test]
fn ops_with_no_vars_run() {
    let engine = TestEngine::new(1);
    let count = Arc::new(AtomicUsize::new(0));
    for _ in 0..10 {
        let count = Arc::clone(&count);
        engine.push(
            move || {
                count.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            &[],
            &[],
            0,
        );
    }
    assert_eq!(engine.wait_all(), Ok(()));
    assert_eq!(count.load(Ordering::SeqCst), 10);
}

#[test]
fn a_var_both_read_and_written_and_repeated_counts_as_one_write() {
    let engine = TestEngine::new(2);
    let var = Var::new();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    engine.push(
        move || {
            release_rx
                .recv_timeout(PATIENCE)
                .map_err(|_| TestError::TimedOut("never released"))?;
            Err(TestError::Failed(5))
        },
        &[var.clone(), var.clone()],
        &[var.clone(), var.clone()],
        0,
    );
    assert_eq!(var.pending(), 1, "issued once");
    release_tx.send(()).unwrap();
    assert_eq!(
        var.wait(),
        Err(TestError::Failed(5)),
        "recorded once, as a write"
    );
    assert_eq!(var.wait(), Ok(()));
}

#[test]
fn vars_shared_between_engines_are_ordered_across_them() {
    let (first, second) = (TestEngine::new(1), TestEngine::new(1));
    let var = Var::new();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let entry = Arc::clone(&log);
    first.push(
        move || {
            release_rx
                .recv_timeout(PATIENCE)
                .map_err(|_| TestError::TimedOut("never released"))?;
            entry.lock().unwrap().push("first");
            Ok(())
        },
        &[],
        slice::from_ref(&var),
        0,
    );
    let entry = Arc::clone(&log);
    second.push(
        move || {
            entry.lock().unwrap().push("second");
            Ok(())
        },
        slice::from_ref(&var),
        &[],
        0,
    );
    thread::sleep(Duration::from_millis(20));
    release_tx.send(()).unwrap();
    assert_eq!(second.wait_all(), Ok(()));
    assert_eq!(*log.lock().unwrap(), ["first", "second"]);
}

#[test]
fn var_handles_identity_and_engine_basics() {
    let a: TestVar = Var::new();
    let b = TestVar::default();
    assert!(a.same(&a.clone()));
    assert!(!a.same(&b));
    assert_eq!(a.pending(), 0);
    assert_eq!(a.wait(), Ok(()));
    assert_eq!(TestEngine::new(0).workers(), 1);
    assert_eq!(TestEngine::new(3).workers(), 3);
    assert!(format!("{a:?}").starts_with("Var"));
    assert_eq!(OpPanicked("x".into()).to_string(), "op panicked: x");
}

#[test]
fn workers_are_named() {
    let engine = TestEngine::new(2);
    let name = Arc::new(Mutex::new(None));
    let out = Arc::clone(&name);
    engine.push(
        move || {
            *out.lock().unwrap() = thread::current().name().map(str::to_owned);
            Ok(())
        },
        &[],
        &[],
        0,
    );
    assert_eq!(engine.wait_all(), Ok(()));
    let name = name.lock().unwrap().clone().unwrap();
    assert!(
        name == "kvstore-engine-0" || name == "kvstore-engine-1",
        "{name}"
    );
}

#[test]
fn engine_and_var_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TestEngine>();
    assert_send_sync::<TestVar>();
}
