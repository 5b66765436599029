//! The differential conformance suite: kvstore against the real MXNet 1.9.1.
//!
//! - [`generate`]: seeded random traces, kept clear of every deliberate divergence by a model of
//!   both stores ([`generate::DIVERGENCES`] lists them, with rules and reasons);
//! - [`compare`]: line-by-line comparison of the two outputs;
//! - [`shrink`]: greedy delta debugging of a failing trace, re-running both sides;
//! - [`mxnet`]: the Python driver `tests/conformance/mxnet_replay.py`, run once per batch;
//! - [`run_random`] and [`run_files`]: the suite itself, with a printable [`Report`].
//!
//! kvstore runs in-process through [`kvstore::trace::Replayer`]. Each side saves optimizer
//! states into its own folder: traces are written for MXNet with paths under
//! `<work>/mx/...` and replayed on kvstore with the same paths under `<work>/kv/...`.

pub mod compare;
pub mod generate;
pub mod mxnet;
pub mod shrink;

use compare::Verdict;
use generate::{Expect, Stats, DIVERGENCES};
use kvstore::trace::{Op, Replayer};
use mxnet::Mxnet;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The name of an op kind, as the trace format spells it.
pub fn op_kind(op: &Op) -> &'static str {
    match op {
        Op::Create { .. } => "create",
        Op::Init { .. } => "init",
        Op::Push { .. } => "push",
        Op::Pull { .. } => "pull",
        Op::RowSparsePull { .. } => "row_sparse_pull",
        Op::PushPull { .. } => "pushpull",
        Op::Broadcast { .. } => "broadcast",
        Op::SetGradientCompression { .. } => "set_gradient_compression",
        Op::SetOptimizer { .. } => "set_optimizer",
        Op::SetUpdater { .. } => "set_updater",
        Op::SaveOptimizerStates { .. } => "save_optimizer_states",
        Op::LoadOptimizerStates { .. } => "load_optimizer_states",
        Op::WaitAll => "wait_all",
    }
}

/// The same ops with state-file paths under `from` moved under `to`.
pub fn retarget(ops: &[Op], from: &str, to: &str) -> Vec<Op> {
    let swap = |p: &String| match p.strip_prefix(from) {
        Some(rest) => format!("{to}{rest}"),
        None => p.clone(),
    };
    ops.iter()
        .map(|op| match op {
            Op::SaveOptimizerStates {
                path,
                dump_optimizer,
            } => Op::SaveOptimizerStates {
                path: swap(path),
                dump_optimizer: *dump_optimizer,
            },
            Op::LoadOptimizerStates { path } => Op::LoadOptimizerStates { path: swap(path) },
            other => other.clone(),
        })
        .collect()
}

/// kvstore's output lines for `ops` (line `i + 1` for op `i`); a panic becomes an error line
/// named `Panic`, which never matches MXNet.
pub fn replay_kvstore(ops: &[Op]) -> Vec<Json> {
    let run = || {
        let mut replayer = Replayer::new(None);
        ops.iter()
            .enumerate()
            .map(|(i, op)| replayer.run(op).to_json(i + 1))
            .collect::<Vec<_>>()
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| {
        vec![serde_json::json!({"line": 1, "error": "Panic", "message": "kvstore panicked while replaying this trace"})]
    })
}

fn io(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

fn create_dir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| io("cannot create", path, e))
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| io("cannot write", path, e))
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Number of random traces.
    pub traces: usize,
    /// Ops per trace after the setup (at least 30).
    pub ops: usize,
    /// Base seed; trace `i` uses `seed + i`.
    pub seed: u64,
    /// Work folder (traces, state files); created if missing.
    pub work: PathBuf,
    /// How many failing traces to shrink.
    pub shrink: usize,
}

impl Settings {
    /// Settings from the environment: `KVSTORE_CONFORMANCE_TRACES` (300),
    /// `KVSTORE_CONFORMANCE_OPS` (32, at least 30), `KVSTORE_CONFORMANCE_SEED` (20261126),
    /// `KVSTORE_CONFORMANCE_SHRINK` (3).
    pub fn from_env(work: PathBuf) -> Settings {
        let num = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(default)
        };
        Settings {
            traces: num("KVSTORE_CONFORMANCE_TRACES", 300) as usize,
            ops: (num("KVSTORE_CONFORMANCE_OPS", 32) as usize).max(30),
            seed: num("KVSTORE_CONFORMANCE_SEED", 20_261_126),
            work,
            shrink: num("KVSTORE_CONFORMANCE_SHRINK", 3) as usize,
        }
    }
}

/// A fresh, unique work folder under the system's temp folder.
pub fn temp_work_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "kvstore-conformance-{tag}-{}-{nanos}",
        std::process::id()
    ))
}

/// A trace mismatch, with the minimal trace when it was shrunk.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The trace (file name or seed).
    pub name: String,
    /// Its 1-based line.
    pub line: usize,
    /// The first disagreement.
    pub reason: String,
    /// kvstore's line.
    pub kvstore: Json,
    /// MXNet's line.
    pub mxnet: Json,
    /// The minimal trace, if shrunk.
    pub minimal: Option<Minimal>,
}

/// A shrunk trace and both outputs.
#[derive(Debug, Clone)]
pub struct Minimal {
    /// The trace text (as run on MXNet).
    pub text: String,
    /// kvstore's output.
    pub kvstore: Vec<Json>,
    /// MXNet's output.
    pub mxnet: Vec<Json>,
    /// Shrink rounds and candidates tried.
    pub rounds: usize,
    /// Candidates tried.
    pub tried: usize,
}

/// What a run compared and found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// What was run ("random traces", "worked examples").
    pub title: String,
    /// Traces run.
    pub traces: usize,
    /// Ops compared on both sides.
    pub ops_compared: usize,
    /// Ops compared, by op kind.
    pub per_kind: BTreeMap<&'static str, usize>,
    /// Lines where both said ok.
    pub ok_matches: usize,
    /// Lines where both gave equal outputs.
    pub out_matches: usize,
    /// Lines where both failed.
    pub error_matches: usize,
    /// Traces compared exactly (gradient compression).
    pub exact_traces: usize,
    /// Lines MXNet did not run (`Unsupported`, `Skipped`), with trace and reason.
    pub excluded: Vec<String>,
    /// Lines where both agree but the generator's model expected the other outcome.
    pub mispredictions: Vec<String>,
    /// Mismatches, first per trace.
    pub failures: Vec<Failure>,
    /// Candidate ops the generator dropped, by reason.
    pub generator: Stats,
    /// Time in MXNet (one driver run), kvstore replay, generation, shrinking, all.
    pub timings: BTreeMap<&'static str, Duration>,
    /// Set for traces from files with nothing to compare.
    pub notes: Vec<String>,
}

impl Report {
    /// True when kvstore and MXNet agreed on every compared line.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "conformance ({}) against MXNet 1.9.1:", self.title)?;
        writeln!(
            f,
            "  traces: {} ({} compared exactly: gradient compression)",
            self.traces, self.exact_traces
        )?;
        writeln!(
            f,
            "  ops compared: {} (ok/ok {}, out/out {}, error/error {})",
            self.ops_compared, self.ok_matches, self.out_matches, self.error_matches
        )?;
        let kinds: Vec<String> = self
            .per_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(f, "  per op kind: {}", kinds.join(", "))?;
        writeln!(
            f,
            "  excluded (MXNet could not run them): {}",
            self.excluded.len()
        )?;
        for e in self.excluded.iter().take(10) {
            writeln!(f, "    {e}")?;
        }
        if !self.mispredictions.is_empty() {
            writeln!(
                f,
                "  model mispredictions (both sides agree; the generator's model expected otherwise): {}",
                self.mispredictions.len()
            )?;
            for m in self.mispredictions.iter().take(10) {
                writeln!(f, "    {m}")?;
            }
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        let times: Vec<String> = self
            .timings
            .iter()
            .map(|(k, d)| format!("{k} {:.1}s", d.as_secs_f64()))
            .collect();
        writeln!(f, "  time: {}", times.join(", "))?;
        if !self.generator.rejected.is_empty() || self.title.contains("random") {
            writeln!(
                f,
                "  divergences skipped (candidate ops and push probes the model refused | rule | source | what MXNet does -> what the generator does):"
            )?;
            for d in DIVERGENCES {
                let n = self.generator.rejected.get(&d.id).copied().unwrap_or(0);
                writeln!(
                    f,
                    "    {n:>6} | {} | {} | {} -> {}",
                    d.rule, d.source, d.mxnet, d.how
                )?;
            }
        }
        writeln!(f, "  mismatches: {}", self.failures.len())?;
        for failure in &self.failures {
            writeln!(
                f,
                "\n  MISMATCH in {} line {}: {}",
                failure.name, failure.line, failure.reason
            )?;
            writeln!(f, "    kvstore: {}", failure.kvstore)?;
            writeln!(f, "    MXNet:   {}", failure.mxnet)?;
            if let Some(m) = &failure.minimal {
                writeln!(
                    f,
                    "    minimal trace ({} rounds, {} candidates tried):",
                    m.rounds, m.tried
                )?;
                for line in m.text.lines() {
                    writeln!(f, "      {line}")?;
                }
                writeln!(f, "    kvstore output:")?;
                for line in &m.kvstore {
                    writeln!(f, "      {line}")?;
                }
                writeln!(f, "    MXNet output:")?;
                for line in &m.mxnet {
                    writeln!(f, "      {line}")?;
                }
            }
        }
        Ok(())
    }
}

/// One trace of a run: its ops as MXNet runs them and as kvstore runs them.
struct Case {
    name: String,
    file: PathBuf,
    mx_text: String,
    kv_lines: Vec<Json>,
    exact: bool,
    /// Generated traces: the ops (MXNet paths), the model's expectations, the folder prefixes.
    generated: Option<Generated>,
    /// Op kinds by output position.
    kinds: Vec<&'static str>,
}

struct Generated {
    ops: Vec<Op>,
    expects: Vec<Expect>,
    mx_dir: String,
    kv_dir: String,
}

/// Runs `settings.traces` random traces through both sides.
pub fn run_random(mxnet: &Mxnet, settings: &Settings) -> Result<Report, String> {
    let start = Instant::now();
    let mut report = Report {
        title: "random traces".into(),
        ..Report::default()
    };
    let traces_dir = settings.work.join("traces");
    create_dir(&traces_dir)?;
    let mut cases = Vec::new();
    let t = Instant::now();
    for i in 0..settings.traces {
        let name = format!("t{i:04}");
        let mx_dir = settings.work.join("mx").join(&name);
        let kv_dir = settings.work.join("kv").join(&name);
        create_dir(&mx_dir)?;
        create_dir(&kv_dir)?;
        let (mx_dir, kv_dir) = (mx_dir.display().to_string(), kv_dir.display().to_string());
        let config = generate::Config {
            ops: settings.ops,
            states_dir: mx_dir.clone(),
        };
        let seed = settings.seed.wrapping_add(i as u64);
        let (trace, stats) = generate::generate(seed, &config)
            .map_err(|e| format!("generator failed for seed {seed}: {e}"))?;
        report.generator.merge(&stats);
        let file = traces_dir.join(format!("{name}.jsonl"));
        let mx_text = generate::to_text(&trace.ops);
        write_file(&file, &mx_text)?;
        cases.push(Case {
            name: format!("{name} (seed {seed})"),
            file,
            mx_text,
            kv_lines: Vec::new(),
            exact: trace.exact,
            kinds: trace.ops.iter().map(op_kind).collect(),
            generated: Some(Generated {
                ops: trace.ops,
                expects: trace.expects,
                mx_dir,
                kv_dir,
            }),
        });
    }
    report.timings.insert("generate", t.elapsed());
    let t = Instant::now();
    for case in &mut cases {
        if let Some(g) = &case.generated {
            case.kv_lines = replay_kvstore(&retarget(&g.ops, &g.mx_dir, &g.kv_dir));
        }
    }
    report.timings.insert("kvstore", t.elapsed());
    run_cases(mxnet, cases, settings, &mut report)?;
    report.timings.insert("total", start.elapsed());
    Ok(report)
}

/// Runs trace files (the worked examples) through both sides. State-file paths are moved into
/// a folder per side and file.
pub fn run_files(mxnet: &Mxnet, files: &[PathBuf], work: &Path) -> Result<Report, String> {
    let start = Instant::now();
    let mut report = Report {
        title: "worked examples".into(),
        ..Report::default()
    };
    let dir = work.join("examples");
    create_dir(&dir)?;
    let mut cases = Vec::new();
    let t = Instant::now();
    for (i, file) in files.iter().enumerate() {
        let text = std::fs::read_to_string(file).map_err(|e| io("cannot read", file, e))?;
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("example{i}"));
        let mx_dir = work.join("mx").join(&stem);
        let kv_dir = work.join("kv").join(&stem);
        let mx_text = move_state_paths(&text, &mx_dir)?;
        let kv_text = move_state_paths(&text, &kv_dir)?;
        let ops = kvstore::trace::parse(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let kv_lines = kvstore::trace::replay_text(&kv_text, None)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let exact = ops
            .iter()
            .any(|(_, op)| matches!(op, Op::SetGradientCompression { .. }));
        let out = dir.join(format!("{stem}.jsonl"));
        write_file(&out, &mx_text)?;
        cases.push(Case {
            name: file
                .strip_prefix(mxnet::repo_root())
                .unwrap_or(file)
                .display()
                .to_string(),
            file: out,
            mx_text,
            kv_lines,
            exact,
            generated: None,
            kinds: ops.iter().map(|(_, op)| op_kind(op)).collect(),
        });
    }
    report.timings.insert("kvstore", t.elapsed());
    let settings = Settings {
        traces: files.len(),
        ops: 0,
        seed: 0,
        work: work.to_path_buf(),
        shrink: 0,
    };
    run_cases(mxnet, cases, &settings, &mut report)?;
    report.timings.insert("total", start.elapsed());
    Ok(report)
}

/// The trace text with each `save/load_optimizer_states` path moved under `dir` (line numbers
/// kept).
fn move_state_paths(text: &str, dir: &Path) -> Result<String, String> {
    let mut out = String::new();
    for line in text.lines() {
        let moved = match kvstore::trace::op::read(line) {
            Ok(op @ (Op::SaveOptimizerStates { .. } | Op::LoadOptimizerStates { .. })) => {
                let path = match &op {
                    Op::SaveOptimizerStates { path, .. } | Op::LoadOptimizerStates { path } => {
                        path.clone()
                    }
                    _ => String::new(),
                };
                let target = dir.join(path.trim_start_matches('/'));
                if let Some(parent) = target.parent() {
                    create_dir(parent)?;
                }
                let target = target.display().to_string();
                let op = retarget(&[op], &path, &target);
                op.first()
                    .map(|o| kvstore::trace::op::write(o).to_string())
                    .unwrap_or_default()
            }
            _ => line.to_owned(),
        };
        out.push_str(&moved);
        out.push('\n');
    }
    Ok(out)
}

/// Runs MXNet once over every case, compares, shrinks failures.
fn run_cases(
    mxnet: &Mxnet,
    cases: Vec<Case>,
    settings: &Settings,
    report: &mut Report,
) -> Result<(), String> {
    let t = Instant::now();
    let files: Vec<PathBuf> = cases.iter().map(|c| c.file.clone()).collect();
    let mx_outputs = mxnet.run(&files)?;
    report.timings.insert("mxnet", t.elapsed());
    let shrink_start = Instant::now();
    let mut shrunk = 0;
    for (case, mx_lines) in cases.iter().zip(&mx_outputs) {
        report.traces += 1;
        report.exact_traces += usize::from(case.exact);
        if mx_lines.is_empty() && case.kv_lines.is_empty() {
            report.notes.push(format!("{}: no operations", case.name));
        }
        let verdicts = compare::compare_trace(&case.kv_lines, mx_lines, case.exact);
        let mut first_failure = None;
        for (i, verdict) in verdicts.iter().enumerate() {
            let kind = case.kinds.get(i).copied().unwrap_or("?");
            let line_no = case.kv_lines.get(i).and_then(|l| l["line"].as_u64());
            match verdict {
                Verdict::Excluded(why) => {
                    report.excluded.push(format!(
                        "{} line {}: {why}",
                        case.name,
                        line_no.unwrap_or(0)
                    ));
                    continue;
                }
                Verdict::Ok => report.ok_matches += 1,
                Verdict::Out => report.out_matches += 1,
                Verdict::BothError => report.error_matches += 1,
                Verdict::Mismatch(reason) => {
                    if first_failure.is_none() {
                        first_failure = Some((i, reason.clone()));
                    }
                }
            }
            report.ops_compared += 1;
            *report.per_kind.entry(kind).or_default() += 1;
            if let (Some(g), false) = (&case.generated, verdict.is_mismatch()) {
                let both_failed = *verdict == Verdict::BothError;
                let expected_fail = g.expects.get(i) == Some(&Expect::Error);
                if both_failed != expected_fail {
                    report.mispredictions.push(format!(
                        "{} line {} ({kind}): model expected {}, both sides {}",
                        case.name,
                        i + 1,
                        if expected_fail { "an error" } else { "success" },
                        if both_failed { "failed" } else { "succeeded" }
                    ));
                }
            }
        }
        let Some((index, reason)) = first_failure else {
            continue;
        };
        let mut failure = Failure {
            name: case.name.clone(),
            line: index + 1,
            reason,
            kvstore: case.kv_lines.get(index).cloned().unwrap_or(Json::Null),
            mxnet: mx_lines.get(index).cloned().unwrap_or(Json::Null),
            minimal: None,
        };
        if let Some(g) = &case.generated {
            if shrunk < settings.shrink {
                shrunk += 1;
                failure.minimal = Some(shrink_case(mxnet, case, g, index, settings)?);
            }
        } else {
            failure.minimal = Some(Minimal {
                text: case.mx_text.clone(),
                kvstore: case.kv_lines.clone(),
                mxnet: mx_lines.clone(),
                rounds: 0,
                tried: 0,
            });
        }
        report.failures.push(failure);
    }
    if shrunk > 0 {
        report.timings.insert("shrink", shrink_start.elapsed());
    }
    Ok(())
}

/// kvstore's lines, MXNet's lines and the trace text of one shrink candidate.
type RunResult = (Vec<Json>, Vec<Json>, String);

/// Shrinks a failing generated trace; every candidate must pass the generator's model, and
/// its first mismatch must be at the original failing op.
fn shrink_case(
    mxnet: &Mxnet,
    case: &Case,
    g: &Generated,
    target: usize,
    settings: &Settings,
) -> Result<Minimal, String> {
    let dir = settings.work.join("shrink").join(
        case.file
            .file_stem()
            .map_or_else(|| "trace".to_owned(), |s| s.to_string_lossy().into_owned()),
    );
    let mut round = 0usize;
    let mut last: Option<RunResult> = None;
    let mut run_batch =
        |batch: &[shrink::Candidate], keep: bool| -> Result<Vec<Option<RunResult>>, String> {
            round += 1;
            let mut files = Vec::new();
            let mut prepared = Vec::new();
            for (c, kept) in batch.iter().enumerate() {
                let ops: Vec<Op> = kept.iter().map(|&i| g.ops[i].clone()).collect();
                if generate::check_trace(&ops, case.exact).is_err() {
                    prepared.push(None);
                    continue;
                }
                let base = dir.join(format!("r{round}c{c}"));
                let mx_dir = base.join("mx").display().to_string();
                let kv_dir = base.join("kv").display().to_string();
                create_dir(&base.join("mx"))?;
                create_dir(&base.join("kv"))?;
                let mx_ops = retarget(&ops, &g.mx_dir, &mx_dir);
                let kv_ops = retarget(&ops, &g.mx_dir, &kv_dir);
                let file = base.join("trace.jsonl");
                let text = generate::to_text(&mx_ops);
                write_file(&file, &text)?;
                files.push(file);
                prepared.push(Some((replay_kvstore(&kv_ops), text)));
            }
            let mut mx = mxnet.run(&files)?.into_iter();
            let mut results = Vec::new();
            for p in prepared {
                results.push(match p {
                    None => None,
                    Some((kv, text)) => mx.next().map(|m| (kv, m, text)),
                });
            }
            if !keep {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Ok(results)
        };
    let still_fails = |kept: &shrink::Candidate, result: &Option<RunResult>| {
        let Some((kv, mx, _)) = result else {
            return false;
        };
        let Some(pos) = kept.iter().position(|&i| i == target) else {
            return false;
        };
        let verdicts = compare::compare_trace(kv, mx, case.exact);
        verdicts.iter().position(Verdict::is_mismatch) == Some(pos)
    };
    let shrunk = shrink::shrink(g.ops.len(), target, |batch| {
        let results = run_batch(batch, false)?;
        let found = batch
            .iter()
            .zip(&results)
            .position(|(kept, r)| still_fails(kept, r));
        if let Some(i) = found {
            last = results.into_iter().nth(i).flatten();
        }
        Ok(found)
    })?;
    // Outputs of the minimal trace (also when no deletion worked: the truncated trace).
    if last.is_none() {
        let results = run_batch(std::slice::from_ref(&shrunk.kept), false)?;
        last = results.into_iter().next().flatten();
    }
    let (kvstore, mxnet_lines, text) = last.unwrap_or_else(|| {
        (
            Vec::new(),
            Vec::new(),
            generate::to_text(
                &shrunk
                    .kept
                    .iter()
                    .map(|&i| g.ops[i].clone())
                    .collect::<Vec<_>>(),
            ),
        )
    });
    Ok(Minimal {
        text,
        kvstore,
        mxnet: mxnet_lines,
        rounds: shrunk.rounds,
        tried: shrunk.tried,
    })
}
