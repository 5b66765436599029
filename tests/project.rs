//! The README's two set-up commands exist and CI runs the README's test command.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::Path;

fn read(path: &str) -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)).unwrap()
}

/// The commands of the README's "Set up" block.
fn setup_commands() -> Vec<String> {
    let readme = read("README.md");
    let section = readme.split("## Set up").nth(1).expect("a Set up section");
    let block = section
        .split("```bash")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a bash block");
    block
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn readme_has_exactly_two_setup_commands_main_job_then_tests() {
    let commands = setup_commands();
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert!(commands[0].contains("-- demo"), "{}", commands[0]);
    assert!(commands[1].starts_with("cargo test"), "{}", commands[1]);
}

#[test]
fn ci_runs_the_readme_test_command() {
    let test_command = setup_commands().remove(1);
    let ci = read(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == test_command),
        "`.ci/run` does not run `{test_command}`"
    );
}
