//! The differential conformance suite: kvstore against the real MXNet 1.9.1.
//!
//! - `conformance_random_traces_match_mxnet`: `KVSTORE_CONFORMANCE_TRACES` (300) random traces
//!   of `KVSTORE_CONFORMANCE_OPS` (32, at least 30) ops each, from
//!   `kvstore_tests::conformance::generate`, run through MXNet (one Python process for all)
//!   and through kvstore in-process, compared line by line; failures are shrunk.
//! - `conformance_worked_examples_match_mxnet`: every `tests/conformance/examples/*.jsonl`.
//! - `trace_round_trip_of_generated_traces`: generated traces survive write -> parse.
//!
//! MXNet comes from `KVSTORE_MXNET_PYTHON` (default `<repo>/.venv/bin/python`). Without it the
//! two MXNet tests print a SKIPPED line and pass, unless `KVSTORE_REQUIRE_MXNET=1`.
//! See docs/conformance.md, "The differential suite".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kvstore_tests::conformance::generate::{self, Config};
use kvstore_tests::conformance::mxnet::{self, Mxnet};
use kvstore_tests::conformance::{run_files, run_random, temp_work_dir, Settings};
use std::path::PathBuf;

/// MXNet, or `None` after printing why the test is skipped (a panic when it is required).
fn mxnet_or_skip() -> Option<Mxnet> {
    match Mxnet::find() {
        Ok(m) => Some(m),
        Err(why) => {
            if std::env::var("KVSTORE_REQUIRE_MXNET").as_deref() == Ok("1") {
                panic!(
                    "conformance: MXNet 1.9.1 is required (KVSTORE_REQUIRE_MXNET=1) but not usable: \
                     {why} (run tests/conformance/setup_mxnet.sh)"
                );
            }
            println!("{}", mxnet::SKIPPED);
            println!("  ({why})");
            None
        }
    }
}

#[test]
fn conformance_random_traces_match_mxnet() {
    let Some(mx) = mxnet_or_skip() else {
        return;
    };
    let work = temp_work_dir("random");
    let settings = Settings::from_env(work.clone());
    let report = run_random(&mx, &settings).unwrap_or_else(|e| panic!("conformance run: {e}"));
    println!("{report}");
    assert!(
        report.excluded.is_empty(),
        "the generator produced ops MXNet could not run (see the report above)"
    );
    assert!(
        report.passed(),
        "kvstore and MXNet 1.9.1 disagree on {} trace(s): see the report above (work folder {})",
        report.failures.len(),
        work.display()
    );
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn conformance_worked_examples_match_mxnet() {
    let Some(mx) = mxnet_or_skip() else {
        return;
    };
    let dir = mxnet::repo_root().join("tests/conformance/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let work = temp_work_dir("examples");
    let report = run_files(&mx, &files, &work).unwrap_or_else(|e| panic!("conformance run: {e}"));
    println!("{report}");
    if files.is_empty() {
        println!("conformance: no worked examples in {}", dir.display());
    }
    assert!(
        report.passed(),
        "kvstore and MXNet 1.9.1 disagree on {} example(s): see the report above",
        report.failures.len()
    );
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn trace_round_trip_of_generated_traces() {
    let config = Config {
        ops: 40,
        states_dir: "/tmp/kvstore-round-trip".into(),
    };
    let mut ops_seen = 0;
    for seed in 0..200u64 {
        let (trace, _) = generate::generate(seed, &config).expect("generate");
        assert!(trace.ops.len() > config.ops, "seed {seed}: too few ops");
        let text = generate::to_text(&trace.ops);
        let parsed = kvstore::trace::parse(&text).expect("generated traces parse");
        assert_eq!(parsed.len(), trace.ops.len(), "seed {seed}");
        for (i, ((line, back), op)) in parsed.iter().zip(&trace.ops).enumerate() {
            assert_eq!(*line, i + 1, "seed {seed}");
            assert_eq!(
                back,
                op,
                "seed {seed} line {line}: {}",
                kvstore::trace::op::write(op)
            );
            ops_seen += 1;
        }
        // The model admits its own traces, with the expectations it generated them with.
        let expects = generate::check_trace(&trace.ops, trace.exact)
            .unwrap_or_else(|(i, why)| panic!("seed {seed} op {i}: {why:?}"));
        assert_eq!(expects, trace.expects, "seed {seed}");
        // Determinism: the same seed gives the same trace.
        let (again, _) = generate::generate(seed, &config).expect("generate");
        assert_eq!(again.ops, trace.ops, "seed {seed}");
    }
    assert!(ops_seen > 200 * 40);
}
