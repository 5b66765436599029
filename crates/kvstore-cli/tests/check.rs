//! `kvstore check`: the models' verdicts reach the exit code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn kvstore(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvstore"))
        .args(args)
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

#[test]
fn an_unmodified_model_holds_and_says_so() {
    let (code, out, err) = kvstore(&["check", "--model", "dist-sync-pipelined"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("dist-sync-pipelined: 102 unique states"),
        "{out}"
    );
    assert!(
        out.contains("Always results match the spec: holds"),
        "{out}"
    );
    assert!(!out.contains("COUNTEREXAMPLE"), "{out}");
}

#[test]
fn a_planted_bug_is_found_and_an_unknown_one_is_refused() {
    let (code, out, err) = kvstore(&["check", "--fault", "counts-requests"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("results match the spec: COUNTEREXAMPLE"),
        "{out}"
    );

    let (code, _, err) = kvstore(&["check", "--fault", "no-such-bug"]);
    assert_eq!(code, 1);
    assert!(err.contains("no planted bug named 'no-such-bug'"), "{err}");
    let (code, _, err) = kvstore(&["check", "--model", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no model named 'nope'"), "{err}");
}

#[test]
fn list_names_every_model_and_bug() {
    let (code, out, _) = kvstore(&["check", "--list"]);
    assert_eq!(code, 0);
    for name in [
        "dist-sync",
        "dist-async",
        "dist-crashed-server",
        "slice-off-by-one",
    ] {
        assert!(out.contains(name), "{out}");
    }
}

#[test]
fn a_planted_engine_bug_is_found_in_the_local_model() {
    let (code, out, err) = kvstore(&["check", "--fault", "reader-beside-writer"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("COUNTEREXAMPLE"), "{out}");
    let (code, _, err) = kvstore(&["check", "--model", "local", "--fault", "stale-pull"]);
    assert_eq!(code, 1);
    assert!(err.contains("does not exist in model local"), "{err}");
}
