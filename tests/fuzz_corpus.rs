//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz target bodies
//! of `kvstore_tests::fuzz_bodies`, on the stable toolchain: every input the fuzzer kept is a
//! regression test. `cargo fuzz` itself lives in `fuzz/` (see docs/fuzzing.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kvstore_tests::fuzz_bodies;
use std::collections::BTreeMap;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Every file of `fuzz/corpus/<target>/`, sorted by name.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries =
        fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    files
        .into_iter()
        .map(|path| {
            let bytes =
                fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            (path, bytes)
        })
        .collect()
}

/// Runs `body` on every input of the target's corpus; names every input that panicked.
fn replay(target: &str, mut body: impl FnMut(&[u8])) -> usize {
    let inputs = corpus(target);
    let failed: Vec<String> = inputs
        .iter()
        .filter(|(_, bytes)| catch_unwind(AssertUnwindSafe(|| body(bytes))).is_err())
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs failed: {failed:#?}",
        failed.len(),
        inputs.len()
    );
    println!("{target}: replayed {} inputs", inputs.len());
    inputs.len()
}

#[test]
fn r11_normalize_corpus_replays() {
    replay("normalize", fuzz_bodies::normalize);
}

#[test]
fn r7_store_ops_corpus_replays() {
    let mut ops: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut skipped = 0;
    replay("store_ops", |bytes| {
        let report = fuzz_bodies::store_ops_report(bytes);
        skipped += report.skipped;
        for (op, error) in report.ops {
            let counts = ops.entry(op).or_default();
            match error {
                None => counts.0 += 1,
                Some(variant) => {
                    counts.1 += 1;
                    *errors.entry(variant).or_default() += 1;
                }
            }
        }
    });
    println!(
        "store_ops: operations (ok, err): {ops:?}; skipped (value not constructible): {skipped}"
    );
    println!("store_ops: errors by variant: {errors:?}");
    let succeeded = ops.values().map(|(ok, _)| ok).sum::<usize>();
    let failed = ops.values().map(|(_, err)| err).sum::<usize>();
    assert!(
        succeeded > 0 && failed > 0,
        "the corpus should exercise both successes and failures"
    );
}

#[test]
fn r38_codec_corpus_replays() {
    replay("codec", fuzz_bodies::codec);
}

/// The trace parser reads values through the validating constructors (R35) and reports
/// unreadable lines with their number (docs/trace-format.md); written ops read back the same.
#[test]
fn r35_trace_corpus_replays() {
    replay("trace", fuzz_bodies::trace);
}

#[test]
fn r30_row_ids_corpus_replays() {
    replay("row_ids", fuzz_bodies::row_ids);
}

#[test]
fn r47_state_files_corpus_replays() {
    replay("state_files", fuzz_bodies::state_files);
}

/// The first finding of the `state_files` target (fuzz/findings/state_files/): after a load
/// and a push, the engine kept the loaded momentum on the device its file named while the spec
/// rebuilt it on the weight's. Decided (R70): a key's states follow its weight's device, as
/// MXNet moves loaded states to the weight's context on first use; spec and engine now agree.
#[test]
fn r70_loaded_states_move_to_the_weights_device_on_update() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/findings/state_files");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for path in files {
        fuzz_bodies::state_files(&fs::read(&path).unwrap());
    }
}

#[test]
fn r61_differential_corpus_replays() {
    replay("differential", fuzz_bodies::differential);
}
