//! The engine under loom: every interleaving (up to LOOM_MAX_PREEMPTIONS preemptions) of its
//! workers, its clients and its completion signalling, on models of two or three ops.
//!
//! Run with `.ci/loom.sh`. A loom model has at most 4 threads, the main thread and the engine's
//! workers included, so the models keep to 1 or 2 workers. Ops report a broken rule by returning
//! an error, which the test then asserts on: an op's panic would be a worker's panic.
#![cfg(loom)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kvstore_engine::{Engine, OpPanicked, Var};
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;
use std::slice;

#[derive(Debug, Clone, PartialEq, Eq)]
enum TestError {
    Failed,
    Panicked(String),
    /// An op saw the effect of an op it should have run before, or missed one it should have
    /// run after.
    OutOfOrder(&'static str),
}

impl From<OpPanicked> for TestError {
    fn from(panic: OpPanicked) -> Self {
        TestError::Panicked(panic.0)
    }
}

type TestEngine = Engine<TestError>;
type TestVar = Var<TestError>;

/// A loom model with the preemption bound of LOOM_MAX_PREEMPTIONS (read by loom itself).
fn model(f: impl Fn() + Sync + Send + 'static) {
    loom::model::Builder::new().check(f);
}

/// An op appending `name` to `log`.
fn logs(
    log: &Arc<Mutex<Vec<&'static str>>>,
    name: &'static str,
) -> impl FnOnce() -> Result<(), TestError> + Send + 'static {
    let log = Arc::clone(log);
    move || {
        log.lock().unwrap().push(name);
        Ok(())
    }
}

#[test]
fn writer_reader_writer_on_one_var_run_in_issue_order() {
    model(|| {
        let engine = TestEngine::new(2);
        let var = TestVar::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        engine.push(logs(&log, "write-1"), &[], slice::from_ref(&var), 0);
        engine.push(logs(&log, "read"), slice::from_ref(&var), &[], 0);
        engine.push(logs(&log, "write-2"), &[], slice::from_ref(&var), 0);
        assert_eq!(var.wait(), Ok(()));
        assert_eq!(*log.lock().unwrap(), ["write-1", "read", "write-2"]);
    });
}

#[test]
fn two_readers_then_a_writer_that_sees_both() {
    model(|| {
        let engine = TestEngine::new(2);
        let var = TestVar::new();
        let reads_done = Arc::new(AtomicUsize::new(0));
        let written = Arc::new(AtomicBool::new(false));
        for _ in 0..2 {
            let (reads_done, written) = (Arc::clone(&reads_done), Arc::clone(&written));
            let read = move || {
                if written.load(Ordering::Relaxed) {
                    return Err(TestError::OutOfOrder("reader saw the later writer"));
                }
                reads_done.fetch_add(1, Ordering::Relaxed);
                Ok(())
            };
            engine.push(read, slice::from_ref(&var), &[], 0);
        }
        let write = {
            let (reads_done, written) = (Arc::clone(&reads_done), Arc::clone(&written));
            move || {
                if reads_done.load(Ordering::Relaxed) != 2 {
                    return Err(TestError::OutOfOrder("writer ran before both readers"));
                }
                written.store(true, Ordering::Relaxed);
                Ok(())
            }
        };
        engine.push(write, &[], slice::from_ref(&var), 0);
        assert_eq!(engine.wait_all(), Ok(()));
        assert!(written.load(Ordering::Relaxed));
    });
}

#[test]
fn var_wait_returns_only_after_the_op_ran() {
    model(|| {
        let engine = TestEngine::new(1);
        let var = TestVar::new();
        let ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        let op = move || {
            flag.store(true, Ordering::Relaxed);
            Ok(())
        };
        engine.push(op, slice::from_ref(&var), &[], 0);
        assert_eq!(var.wait(), Ok(()));
        assert!(ran.load(Ordering::Relaxed));
        assert_eq!(var.pending(), 0);
    });
}

#[test]
fn wait_all_returns_only_after_every_earlier_op_ran() {
    model(|| {
        let engine = TestEngine::new(2);
        let var = TestVar::new();
        let ran = Arc::new(AtomicUsize::new(0));
        for writes in [vec![var.clone()], vec![]] {
            let ran = Arc::clone(&ran);
            let op = move || {
                ran.fetch_add(1, Ordering::Relaxed);
                Ok(())
            };
            engine.push(op, &[], &writes, 0);
        }
        assert_eq!(engine.wait_all(), Ok(()));
        assert_eq!(ran.load(Ordering::Relaxed), 2);
    });
}

#[test]
fn failing_op_error_comes_back_from_its_var_once() {
    model(|| {
        let engine = TestEngine::new(1);
        let var = TestVar::new();
        engine.push(|| Err(TestError::Failed), &[], slice::from_ref(&var), 0);
        assert_eq!(var.wait(), Err(TestError::Failed));
        assert_eq!(var.wait(), Ok(()));
        assert_eq!(engine.wait_all(), Err(TestError::Failed));
        assert_eq!(engine.wait_all(), Ok(()));
    });
}

#[test]
fn dropping_the_engine_runs_every_pending_op() {
    model(|| {
        let engine = TestEngine::new(2);
        let var = TestVar::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let (reads, writes) = (vec![var.clone()], vec![var.clone()]);
        for (reads, writes) in [
            (&[][..], &writes[..]),
            (&reads[..], &[][..]),
            (&[][..], &[][..]),
        ] {
            let ran = Arc::clone(&ran);
            let op = move || {
                ran.fetch_add(1, Ordering::Relaxed);
                Ok(())
            };
            engine.push(op, reads, writes, 0);
        }
        drop(engine);
        assert_eq!(ran.load(Ordering::Relaxed), 3);
    });
}

#[test]
fn writers_pushed_concurrently_from_two_threads_run_one_at_a_time() {
    model(|| {
        // Main thread, one client thread and two workers: loom's limit of 4 threads.
        let engine = Arc::new(TestEngine::new(2));
        let var = TestVar::new();
        let busy = Arc::new(AtomicBool::new(false));
        let ran = Arc::new(AtomicUsize::new(0));
        let exclusive_op = || {
            let (busy, ran) = (Arc::clone(&busy), Arc::clone(&ran));
            move || {
                if busy.swap(true, Ordering::Relaxed) {
                    return Err(TestError::OutOfOrder("two writers at once"));
                }
                ran.fetch_add(1, Ordering::Relaxed);
                busy.store(false, Ordering::Relaxed);
                Ok(())
            }
        };
        let client = {
            let (engine, var, op) = (Arc::clone(&engine), var.clone(), exclusive_op());
            thread::spawn(move || engine.push(op, &[], &[var], 0))
        };
        engine.push(exclusive_op(), &[], slice::from_ref(&var), 0);
        client.join().unwrap();
        assert_eq!(var.wait(), Ok(()));
        assert_eq!(ran.load(Ordering::Relaxed), 2);
        assert_eq!(engine.wait_all(), Ok(()));
    });
}

#[test]
fn ops_on_two_vars_pushed_from_two_threads_in_opposite_order_both_complete() {
    model(|| {
        // Each op reads one var and writes the other, listed in opposite orders: push locks the
        // vars of an op in one global order, so neither push nor the ops can deadlock.
        let engine = Arc::new(TestEngine::new(1));
        let (a, b) = (TestVar::new(), TestVar::new());
        let ran = Arc::new(AtomicUsize::new(0));
        let counts = || {
            let ran = Arc::clone(&ran);
            move || {
                ran.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        };
        let client = {
            let (engine, a, b, op) = (Arc::clone(&engine), a.clone(), b.clone(), counts());
            thread::spawn(move || engine.push(op, &[b], &[a], 0))
        };
        engine.push(counts(), slice::from_ref(&a), slice::from_ref(&b), 0);
        client.join().unwrap();
        assert_eq!(engine.wait_all(), Ok(()));
        assert_eq!(ran.load(Ordering::Relaxed), 2);
        assert_eq!((a.pending(), b.pending()), (0, 0));
    });
}

#[test]
fn a_var_shared_by_two_engines_orders_their_ops() {
    model(|| {
        let (first, second) = (TestEngine::new(1), TestEngine::new(1));
        let var = TestVar::new();
        let written = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&written);
        let write = move || {
            flag.store(true, Ordering::Relaxed);
            Ok(())
        };
        first.push(write, &[], slice::from_ref(&var), 0);
        let flag = Arc::clone(&written);
        let read = move || {
            if flag.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err(TestError::OutOfOrder(
                    "reader on one engine ran before the writer on the other",
                ))
            }
        };
        second.push(read, slice::from_ref(&var), &[], 0);
        assert_eq!(second.wait_all(), Ok(()));
        drop(second);
        drop(first);
        assert_eq!(var.pending(), 0);
    });
}

#[test]
fn an_engine_dropped_inside_its_own_op_still_runs_every_op() {
    model(|| {
        // Whether the main thread or the op drops the last handle depends on the interleaving;
        // dropped on its own worker, the engine must neither wait for itself nor lose an op.
        let engine = Arc::new(TestEngine::new(1));
        let var = TestVar::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let (handle, count) = (Arc::clone(&engine), Arc::clone(&ran));
        let drops_engine = move || {
            drop(handle);
            count.fetch_add(1, Ordering::Relaxed);
            Ok(())
        };
        engine.push(drops_engine, &[], slice::from_ref(&var), 0);
        let count = Arc::clone(&ran);
        let reads = move || {
            count.fetch_add(1, Ordering::Relaxed);
            Ok(())
        };
        engine.push(reads, slice::from_ref(&var), &[], 0);
        drop(engine);
        assert_eq!(var.wait(), Ok(()));
        assert_eq!(ran.load(Ordering::Relaxed), 2);
    });
}
