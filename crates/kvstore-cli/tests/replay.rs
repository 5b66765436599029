//! `kvstore replay`: a trace file or stdin in, one JSON line per operation out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Stdio};

const TRACE: &str = r#"{"op":"create","kind":"device"}
{"op":"init","key":"w","value":{"shape":[2],"data":[0,0]}}

{"op":"push","key":"w","value":[{"shape":[2],"data":[1,2]},{"shape":[2],"data":[0.5,0.25],"device":"cpu(1)"}]}
{"op":"pull","key":"w","out":[{"shape":[2]},{"shape":[2],"dtype":"float16","device":"cpu(1)"}]}
{"op":"pull","key":"v","out":{"shape":[2]}}
"#;

fn kvstore(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvstore"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        out.status.code().unwrap(),
        text(out.stdout),
        text(out.stderr),
    )
}

#[test]
fn replay_prints_one_line_per_operation() {
    let path = std::env::temp_dir().join(format!("kvstore-replay-{}.jsonl", std::process::id()));
    std::fs::write(&path, TRACE).unwrap();
    let (code, out, err) = kvstore(&["replay", path.to_str().unwrap()], "");
    std::fs::remove_file(&path).unwrap();
    assert_eq!((code, err.as_str()), (0, ""));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0], r#"{"line":1,"ok":true}"#);
    assert_eq!(
        lines[2], r#"{"line":4,"ok":true}"#,
        "blank lines count in line numbers"
    );
    assert_eq!(
        lines[3],
        r#"{"line":5,"out":[{"shape":[2],"data":[1.5,2.25],"dtype":"float32","device":"cpu(0)"},{"shape":[2],"data":[1.5,2.25],"dtype":"float16","device":"cpu(1)"}]}"#
    );
    assert!(
        lines[4].starts_with(r#"{"line":6,"error":"NotInitialized","message":"key 'v'"#),
        "{}",
        lines[4]
    );
}

#[test]
fn replay_reads_stdin_and_takes_a_kind_override() {
    let (code, out, _) = kvstore(
        &["replay", "-", "--kind", "local", "--backend", "spec"],
        TRACE,
    );
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 5);
}

#[test]
fn unreadable_input_is_reported_with_its_line_and_nothing_runs() {
    let trace = "{\"op\":\"wait_all\"}\n{\"op\":\"push\",\"key\":1}\n";
    let (code, out, err) = kvstore(&["replay", "-"], trace);
    assert_ne!(code, 0);
    assert_eq!(out, "", "nothing runs before the whole trace is read");
    assert!(err.contains("line 2: missing \"value\""), "{err}");
    let (code, _, err) = kvstore(&["replay", "/nonexistent/trace.jsonl"], "");
    assert_ne!(code, 0);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn every_backend_replays_a_trace_to_the_same_lines() {
    let trace = format!(
        "{TRACE}{}",
        r#"{"op":"set_gradient_compression","params":{"type":"2bit","threshold":0.5}}
{"op":"push","key":"w","value":[{"shape":[2],"data":[0.7,-0.2]},{"shape":[2],"data":[0.1,-0.9],"device":"cpu(1)"}]}
{"op":"pull","key":"w","out":{"shape":[2]}}
"#
    );
    let run = |backend: &str| {
        let (code, out, err) = kvstore(&["replay", "-", "--backend", backend], &trace);
        assert_eq!((code, err.as_str()), (0, ""), "backend {backend}");
        out
    };
    let spec = run("spec");
    assert_eq!(spec.lines().count(), 8);
    assert_eq!(run("cpu"), spec);
    assert_eq!(run("engine-spec"), spec);
}
