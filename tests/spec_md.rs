//! SPEC.md is complete: rules R1..Rn are numbered without gaps, every rule names at least one
//! test, every named test exists, and every test named after a rule names a rule that exists.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Rule number -> test names listed in its row of SPEC.md.
fn rules() -> BTreeMap<u32, Vec<String>> {
    let spec = fs::read_to_string(root().join("spec/SPEC.md")).unwrap();
    let mut rules = BTreeMap::new();
    for line in spec.lines().filter(|l| l.starts_with("| R")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(number) = cells
            .get(1)
            .and_then(|c| c.strip_prefix('R'))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        if cells.len() < 7 {
            continue; // the divergence table has another layout
        }
        let tests = cells[5]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        assert!(
            rules.insert(number, tests).is_none(),
            "R{number} appears twice in the rule table"
        );
    }
    rules
}

/// Every `fn name(` in the workspace's Rust sources.
fn functions() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut dirs = vec![
        root().join("spec"),
        root().join("crates"),
        root().join("tests"),
        root().join("fuzz"),
    ];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() && name != "target" && !name.starts_with('.') {
                dirs.push(path);
            } else if name.ends_with(".rs") {
                let text = fs::read_to_string(&path).unwrap();
                for rest in text.split("fn ").skip(1) {
                    let ident: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    names.insert(ident);
                }
            }
        }
    }
    names
}

#[test]
fn rules_are_numbered_without_gaps_and_each_names_a_test() {
    let rules = rules();
    assert!(rules.len() >= 50, "only {} rules parsed", rules.len());
    let numbers: Vec<u32> = rules.keys().copied().collect();
    assert_eq!(numbers, (1..=numbers.len() as u32).collect::<Vec<_>>());
    for (number, tests) in &rules {
        assert!(!tests.is_empty(), "R{number} names no test");
        for test in tests {
            assert!(
                test.starts_with(&format!("r{number}_")),
                "R{number} lists {test}, named after another rule"
            );
        }
    }
}

#[test]
fn every_test_named_in_spec_md_exists() {
    let functions = functions();
    let missing: Vec<String> = rules()
        .into_values()
        .flatten()
        .filter(|t| !functions.contains(t))
        .collect();
    assert!(
        missing.is_empty(),
        "SPEC.md names tests that do not exist: {missing:?}"
    );
}

#[test]
fn every_rule_test_is_listed_under_an_existing_rule() {
    let rules = rules();
    let listed: BTreeSet<String> = rules.values().flatten().cloned().collect();
    let orphans: Vec<String> = functions()
        .into_iter()
        .filter(|f| {
            let digits: String = f
                .strip_prefix('r')
                .unwrap_or("")
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            !digits.is_empty() && f.as_bytes().get(digits.len() + 1) == Some(&b'_')
        })
        .filter(|f| !listed.contains(f))
        .collect();
    assert!(
        orphans.is_empty(),
        "tests named after a rule but not listed in SPEC.md: {orphans:?}"
    );
}
