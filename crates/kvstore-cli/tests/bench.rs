//! `kvstore bench` at a tiny scale: every case has its row, the skipped MXNet comparison says
//! so, and the JSON file holds every case. No timing is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn kvstore(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvstore"))
        .args(args)
        .output()
        .expect("kvstore runs");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8 output");
    (
        out.status.code().expect("an exit code"),
        text(out.stdout),
        text(out.stderr),
    )
}

#[test]
fn bench_prints_every_case_and_the_mxnet_skip_line() {
    let json = std::env::temp_dir().join(format!("kvstore-bench-{}.json", std::process::id()));
    let json_arg = json.to_str().expect("a utf-8 temp path");
    let (code, stdout, stderr) = kvstore(&[
        "bench", "--scale", "0.01", "--iters", "2", "--mxnet", "off", "--json", json_arg,
    ]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for case in ["a", "b", "c", "d", "e"] {
        let prefix = format!("| {case} ");
        assert!(
            stdout.lines().any(|l| l.starts_with(&prefix)),
            "no row for case {case}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("the × MXNet column is skipped"),
        "no skip line:\n{stdout}"
    );
    assert!(!stdout.contains("| MXNet median"), "{stdout}");
    assert!(stdout.contains("memcpy of"), "{stdout}");
    assert!(stdout.contains("key ops/s"), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON file")).unwrap();
    std::fs::remove_file(&json).ok();
    let cases = report["cases"].as_array().expect("a case list");
    let names: Vec<&str> = cases.iter().map(|c| c["case"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
    for case in cases {
        assert!(case["timing"]["median_s"].as_f64().unwrap() > 0.0);
        assert_eq!(case["timing"]["iters"], 2);
        assert!(case["mxnet"].is_null());
    }
    assert!(report["mxnet"]["skipped"].is_string());
}

#[test]
fn bench_runs_a_subset_of_cases() {
    let (code, stdout, stderr) = kvstore(&[
        "bench", "--scale", "0.01", "--iters", "1", "--mxnet", "off", "--cases", "e,c",
    ]);
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| case") && !l.starts_with("| --"))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows[0].starts_with("| e "), "{stdout}");
    assert!(rows[1].starts_with("| c "), "{stdout}");
}

#[test]
fn a_missing_python_is_a_skip_not_a_failure() {
    let (code, stdout, stderr) = kvstore(&[
        "bench",
        "--scale",
        "0.01",
        "--iters",
        "1",
        "--cases",
        "a",
        "--mxnet",
        "/nonexistent/python",
    ]);
    assert_eq!(code, 0, "stderr:\n{stderr}");
    assert!(
        stdout.contains("MXNet 1.9.1 not found (looked for /nonexistent/python (absent))"),
        "{stdout}"
    );
    assert!(stdout.contains("the × MXNet column is skipped"), "{stdout}");
}

#[test]
fn bad_arguments_are_refused() {
    let (code, _, stderr) = kvstore(&["bench", "--cases", "z"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("invalid value"), "{stderr}");
    let (code, _, stderr) = kvstore(&["bench", "--iters", "0", "--mxnet", "off"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--iters must be at least 1"), "{stderr}");
    let (code, _, stderr) = kvstore(&["bench", "--backend", "gpu", "--mxnet", "off"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("gpu"), "{stderr}");
}
