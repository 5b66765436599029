//! `kvstore bench`: times five store workloads and compares each with two references measured
//! in the same run: the memory-bandwidth floor (the workload's minimal bytes over the speed of
//! a plain memcpy) and MXNet 1.9.1 running the same workload (tools/mxnet_bench.py), when it is
//! installed.
//!
//! The cases, with the bytes the minimal algorithm reads and writes (N = 4 Mi, f32):
//!
//! - a: dense push + pull of one key from/to 4 devices: `10 N × 4 B`.
//! - b: a with 2-bit compression: gradients read, residuals read and written, the merged sum
//!   written, then the pull: `18 N × 4 B`.
//! - c: row_sparse_pull of 16 Ki random ids from a 256 Ki × 64 table: every unique row read and
//!   written, plus the ids.
//! - d: row_sparse push of 16 Ki distinct rows from each of 4 devices: every pushed row (and id)
//!   read, the union written.
//! - e: 10 000 one-element keys pushed and pulled as lists: reported in key operations per
//!   second, its bytes being negligible.
//!
//! docs/performance.md records a run and explains the columns.

use crate::data::SplitMix64;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kvstore::{
    BackendKind, Compression, CompressionType, DType, Device, KvStore, NdArray, RowSparse, Tensor,
};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The MXNet side of the comparison, run by the Python found for `--mxnet`.
const MXNET_SCRIPT: &str = include_str!("../../../tools/mxnet_bench.py");

/// The MXNet version the targets were set against.
const MXNET_VERSION: &str = "1.9.1";

/// Simulated devices of cases a, b and d.
const DEVICES: u32 = 4;
/// Elements of the dense key of cases a and b.
const DENSE_LEN: usize = 4 * 1024 * 1024;
/// Rows of the table of cases c and d.
const TABLE_ROWS: usize = 256 * 1024;
/// Elements per row of that table.
const ROW_LEN: usize = 64;
/// Row ids pulled (case c) or pushed per device (case d).
const SPARSE_IDS: usize = 16 * 1024;
/// Keys of case e.
const SMALL_KEYS: usize = 10_000;
/// Bytes copied by the memcpy that measures the machine's bandwidth.
const MEMCPY_BYTES: usize = 256 * 1024 * 1024;
/// Timed copies per memcpy variant.
const MEMCPY_RUNS: usize = 7;
/// Untimed iterations before each case's timed ones.
const WARMUP: usize = 3;
/// Seed of every random input.
const SEED: u64 = 42;

/// One workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Case {
    /// Dense push + pull of one key, 4 devices × 4 Mi f32.
    #[value(name = "a")]
    A,
    /// Case a with 2-bit gradient compression, threshold 0.5.
    #[value(name = "b")]
    B,
    /// row_sparse_pull of 16 Ki random ids from a 256 Ki × 64 f32 table.
    #[value(name = "c")]
    C,
    /// row_sparse push from 4 devices, 16 Ki distinct random rows each, into that table.
    #[value(name = "d")]
    D,
    /// 10 000 one-element keys pushed and pulled as lists.
    #[value(name = "e")]
    E,
}

impl Case {
    /// Every case, in table order.
    pub const ALL: [Case; 5] = [Case::A, Case::B, Case::C, Case::D, Case::E];

    /// The one-letter name used on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Case::A => "a",
            Case::B => "b",
            Case::C => "c",
            Case::D => "d",
            Case::E => "e",
        }
    }

    /// Timed iterations when `--iters` is not given.
    pub fn default_iters(self) -> usize {
        match self {
            Case::A | Case::B => 20,
            Case::C | Case::D => 50,
            Case::E => 10,
        }
    }

    /// The target for this case.
    pub fn target(self) -> Target {
        match self {
            Case::A => Target {
                floor: Some(0.85),
                vs_mxnet: 1.4,
            },
            Case::B => Target {
                floor: None,
                vs_mxnet: 20.0,
            },
            Case::C => Target {
                floor: None,
                vs_mxnet: 4.0,
            },
            Case::D => Target {
                floor: None,
                vs_mxnet: 5.0,
            },
            Case::E => Target {
                floor: None,
                vs_mxnet: 10.0,
            },
        }
    }

    fn description(self, sizes: &Sizes) -> String {
        let n = sizes.dense_len;
        match self {
            Case::A => format!("dense push+pull, {DEVICES} dev × {} f32", count(n)),
            Case::B => format!("a + 2bit (t=0.5), {DEVICES} dev × {} f32", count(n)),
            Case::C => format!(
                "row_sparse_pull {} ids of {}×{ROW_LEN}",
                count(sizes.sparse_ids),
                count(sizes.table_rows)
            ),
            Case::D => format!(
                "row_sparse push {DEVICES} dev × {} rows into {}×{ROW_LEN}",
                count(sizes.sparse_ids),
                count(sizes.table_rows)
            ),
            Case::E => format!("push+pull {} keys of 1 f32", sizes.small_keys),
        }
    }
}

/// What a case must reach: a share of the memory-bandwidth floor's speed and a speed-up over
/// MXNet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// Least floor ratio (floor time / measured time), if the case has one.
    pub floor: Option<f64>,
    /// Least MXNet median / our median.
    pub vs_mxnet: f64,
}

impl Target {
    fn text(self, case: Case) -> String {
        let unit = if case == Case::E { " ops/s" } else { "" };
        match self.floor {
            Some(f) => format!("floor ≥ {f}, ≥ {}× MXNet{unit}", self.vs_mxnet),
            None => format!("≥ {}× MXNet{unit}", self.vs_mxnet),
        }
    }
}

/// Where the MXNet comparison comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxnetChoice {
    /// `.venv/bin/python` of the current directory or a parent, or of this source tree.
    Auto,
    /// No comparison.
    Off,
    /// This Python interpreter.
    Python(PathBuf),
}

fn parse_mxnet(s: &str) -> Result<MxnetChoice, String> {
    match s {
        "auto" => Ok(MxnetChoice::Auto),
        "off" => Ok(MxnetChoice::Off),
        "" => Err("expected auto, off or the path of a Python interpreter".into()),
        path => Ok(MxnetChoice::Python(PathBuf::from(path))),
    }
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    s.parse::<BackendKind>().map_err(|e| e.to_string())
}

/// The flags of `kvstore bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Cases to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "a,b,c,d,e")]
    pub cases: Vec<Case>,
    /// Timed iterations per case (default: 20 for a and b, 50 for c and d, 10 for e).
    #[arg(long)]
    pub iters: Option<usize>,
    /// Where the store's work runs: cpu, spec (very slow) or engine-spec.
    #[arg(long, default_value = "cpu", value_parser = parse_backend)]
    pub backend: BackendKind,
    /// MXNet to compare with: auto (.venv/bin/python if it imports mxnet 1.9.1), off, or the
    /// path of a Python interpreter.
    #[arg(long, default_value = "auto", value_parser = parse_mxnet)]
    pub mxnet: MxnetChoice,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Shrinks every size (elements, rows, ids, keys, the memcpy buffer) by this factor.
    #[arg(long, hide = true, default_value_t = 1.0)]
    pub scale: f64,
    /// Never show the progress bar (it is drawn on stderr only when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

/// Why a benchmark could not run.
#[derive(Debug)]
#[non_exhaustive]
pub enum BenchError {
    /// The store refused an operation.
    Store(kvstore::Error),
    /// Writing the report (or the JSON file) failed.
    Io(std::io::Error),
    /// The flags cannot be run.
    InvalidArgs(String),
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchError::Store(e) => write!(f, "kvstore: {e}"),
            BenchError::Io(e) => write!(f, "cannot write the output: {e}"),
            BenchError::InvalidArgs(reason) => write!(f, "invalid bench arguments: {reason}"),
        }
    }
}

impl std::error::Error for BenchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BenchError::Store(e) => Some(e),
            BenchError::Io(e) => Some(e),
            BenchError::InvalidArgs(_) => None,
        }
    }
}

impl From<kvstore::Error> for BenchError {
    fn from(e: kvstore::Error) -> Self {
        BenchError::Store(e)
    }
}

impl From<std::io::Error> for BenchError {
    fn from(e: std::io::Error) -> Self {
        BenchError::Io(e)
    }
}

/// The sizes of every case, shrunk by `--scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Elements of the dense key (a, b).
    pub dense_len: usize,
    /// Rows of the table (c, d).
    pub table_rows: usize,
    /// Ids pulled (c) or pushed per device (d).
    pub sparse_ids: usize,
    /// Keys (e).
    pub small_keys: usize,
    /// Bytes of the memcpy buffer.
    pub memcpy_bytes: usize,
}

/// `base × scale`, truncated, at least 1 (tools/mxnet_bench.py rounds the same way).
fn scaled(base: usize, scale: f64) -> usize {
    ((base as f64 * scale) as usize).max(1)
}

impl Sizes {
    /// The sizes times `scale`.
    pub fn scaled(scale: f64) -> Sizes {
        let table_rows = scaled(TABLE_ROWS, scale);
        Sizes {
            dense_len: scaled(DENSE_LEN, scale),
            table_rows,
            sparse_ids: scaled(SPARSE_IDS, scale).min(table_rows),
            small_keys: scaled(SMALL_KEYS, scale),
            memcpy_bytes: scaled(MEMCPY_BYTES, scale).max(1 << 22),
        }
    }
}

/// Median and minimum of a case's timed iterations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Median seconds per iteration.
    pub median_s: f64,
    /// Fastest iteration, in seconds.
    pub min_s: f64,
    /// Timed iterations.
    pub iters: usize,
}

impl Timing {
    fn of(mut samples: Vec<f64>) -> Timing {
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median_s = match n {
            0 => 0.0,
            _ if n % 2 == 1 => samples[n / 2],
            _ => (samples[n / 2 - 1] + samples[n / 2]) / 2.0,
        };
        Timing {
            median_s,
            min_s: samples.first().copied().unwrap_or(0.0),
            iters: n,
        }
    }
}

/// The memcpy bandwidth of this run: bytes read + written per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memcpy {
    /// One `copy_from_slice` of the whole buffer.
    pub single_bps: f64,
    /// The buffer split across `threads` scoped threads.
    pub threaded_bps: f64,
    /// Threads of the split copy.
    pub threads: usize,
}

impl Memcpy {
    /// The faster of the two: the ceiling every floor is computed from.
    pub fn ceiling_bps(&self) -> f64 {
        self.single_bps.max(self.threaded_bps)
    }

    fn ceiling_name(&self) -> String {
        if self.threaded_bps > self.single_bps {
            format!("{} threads", self.threads)
        } else {
            "1 thread".into()
        }
    }
}

/// Times a copy of `bytes` bytes, on one thread and split across every core.
pub fn measure_memcpy(bytes: usize) -> Memcpy {
    let src: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    // Written once before timing, so that page faults are not timed.
    let mut dst = vec![1u8; bytes];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let time = |f: &mut dyn FnMut()| {
        f();
        let samples = (0..MEMCPY_RUNS)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64()
            })
            .collect();
        Timing::of(samples).median_s
    };
    let single = time(&mut || dst.copy_from_slice(&src));
    let chunk = bytes.div_ceil(threads).max(1);
    let threaded = time(&mut || {
        std::thread::scope(|s| {
            for (d, src) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                s.spawn(move || d.copy_from_slice(src));
            }
        });
    });
    let bps = |t: f64| if t > 0.0 { 2.0 * bytes as f64 / t } else { 0.0 };
    Memcpy {
        single_bps: bps(single),
        threaded_bps: bps(threaded),
        threads,
    }
}

/// A case ready to time: its store and inputs live in `step`.
struct Prepared {
    step: Box<dyn FnMut() -> kvstore::Result<()>>,
    /// Bytes the minimal algorithm reads and writes per iteration (none for e).
    minimal_bytes: Option<f64>,
    /// Key operations per iteration (e only).
    key_ops: Option<f64>,
}

fn random_f32(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
        .collect()
}

/// `k` distinct ids below `rows`, sorted.
fn distinct_sorted_ids(rng: &mut SplitMix64, rows: usize, k: usize) -> Vec<i64> {
    let mut all: Vec<i64> = (0..rows as i64).collect();
    let k = k.min(rows);
    for i in 0..k {
        let j = i + rng.below(rows - i);
        all.swap(i, j);
    }
    all.truncate(k);
    all.sort_unstable();
    all
}

fn distinct(ids: impl IntoIterator<Item = i64>) -> usize {
    let mut ids: Vec<i64> = ids.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len()
}

fn store(backend: BackendKind) -> kvstore::Result<KvStore> {
    kvstore::create_with(
        "device",
        kvstore::Options {
            backend,
            ..kvstore::Options::default()
        },
    )
}

fn prepare(case: Case, sizes: &Sizes, backend: BackendKind) -> kvstore::Result<Prepared> {
    let mut rng = SplitMix64::new(SEED);
    const F32: f64 = 4.0;
    match case {
        Case::A | Case::B => {
            let n = sizes.dense_len;
            let kv = store(backend)?;
            if case == Case::B {
                kv.set_gradient_compression(Compression::new(CompressionType::TwoBit, 0.5)?)?;
            }
            kv.init(0, Tensor::zeros([n], DType::F32)?)?;
            let grads = (0..DEVICES)
                .map(|d| {
                    Ok(NdArray::new(
                        Tensor::new([n], random_f32(&mut rng, n))?.on(Device::Cpu(d)),
                    ))
                })
                .collect::<kvstore::Result<Vec<_>>>()?;
            let outs = (0..DEVICES)
                .map(|d| {
                    Ok(NdArray::new(
                        Tensor::zeros([n], DType::F32)?.on(Device::Cpu(d)),
                    ))
                })
                .collect::<kvstore::Result<Vec<_>>>()?;
            let per_n = if case == Case::A { 10.0 } else { 18.0 };
            Ok(Prepared {
                step: Box::new(move || {
                    kv.push(0, &grads[..])?;
                    kv.pull(0, &outs[..])?;
                    kv.wait_all()
                }),
                minimal_bytes: Some(per_n * n as f64 * F32),
                key_ops: None,
            })
        }
        Case::C => {
            let (rows, k) = (sizes.table_rows, sizes.sparse_ids);
            let kv = store(backend)?;
            kv.init(
                1,
                Tensor::new([rows, ROW_LEN], random_f32(&mut rng, rows * ROW_LEN))?,
            )?;
            let ids: Vec<i64> = (0..k).map(|_| rng.below(rows) as i64).collect();
            let unique = distinct(ids.iter().copied());
            let out = NdArray::row_sparse([rows, ROW_LEN], DType::F32)?;
            Ok(Prepared {
                step: Box::new(move || {
                    kv.row_sparse_pull(1, &out, ids.clone())?;
                    out.wait()
                }),
                minimal_bytes: Some((2 * unique * ROW_LEN) as f64 * F32 + (k * 8) as f64),
                key_ops: None,
            })
        }
        Case::D => {
            let (rows, k) = (sizes.table_rows, sizes.sparse_ids);
            let kv = store(backend)?;
            kv.init(
                1,
                Tensor::new([rows, ROW_LEN], random_f32(&mut rng, rows * ROW_LEN))?,
            )?;
            let mut all_ids = Vec::new();
            let values = (0..DEVICES)
                .map(|d| {
                    let ids = distinct_sorted_ids(&mut rng, rows, k);
                    all_ids.extend_from_slice(&ids);
                    let data = random_f32(&mut rng, ids.len() * ROW_LEN);
                    Ok(NdArray::new(
                        RowSparse::new([rows, ROW_LEN], ids, data)?.on(Device::Cpu(d)),
                    ))
                })
                .collect::<kvstore::Result<Vec<_>>>()?;
            let pushed = all_ids.len();
            let union = distinct(all_ids);
            let read = (pushed * ROW_LEN) as f64 * F32 + (pushed * 8) as f64;
            let written = (union * ROW_LEN) as f64 * F32 + (union * 8) as f64;
            Ok(Prepared {
                step: Box::new(move || {
                    kv.push(1, &values[..])?;
                    kv.wait_all()
                }),
                minimal_bytes: Some(read + written),
                key_ops: None,
            })
        }
        Case::E => {
            let n = sizes.small_keys;
            let kv = store(backend)?;
            let keys: Vec<i64> = (0..n as i64).collect();
            let zeros = (0..n)
                .map(|_| Tensor::zeros([1], DType::F32))
                .collect::<kvstore::Result<Vec<_>>>()?;
            kv.init(&keys[..], zeros)?;
            let values = (0..n)
                .map(|_| NdArray::from_f32([1], random_f32(&mut rng, 1)))
                .collect::<kvstore::Result<Vec<_>>>()?;
            let outs = (0..n)
                .map(|_| NdArray::zeros([1], DType::F32))
                .collect::<kvstore::Result<Vec<_>>>()?;
            Ok(Prepared {
                step: Box::new(move || {
                    kv.push(&keys[..], &values[..])?;
                    kv.pull(&keys[..], &outs[..])?;
                    kv.wait_all()
                }),
                minimal_bytes: None,
                key_ops: Some(2.0 * n as f64),
            })
        }
    }
}

/// The measured result of one case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    /// Which case.
    pub case: Case,
    /// Its description, sizes included.
    pub description: String,
    /// Our timing.
    pub timing: Timing,
    /// Minimal bytes per iteration (none for e).
    pub minimal_bytes: Option<f64>,
    /// Key operations per iteration (e only).
    pub key_ops: Option<f64>,
    /// MXNet's timing of the same case in this run, if measured.
    pub mxnet: Option<Timing>,
}

impl CaseResult {
    /// Bytes per second over the minimal bytes.
    pub fn bytes_per_s(&self) -> Option<f64> {
        self.minimal_bytes
            .filter(|_| self.timing.median_s > 0.0)
            .map(|b| b / self.timing.median_s)
    }

    /// Floor time over our median: 1.0 is the memory-bandwidth floor.
    pub fn floor_ratio(&self, memcpy: &Memcpy) -> Option<f64> {
        let bps = memcpy.ceiling_bps();
        self.minimal_bytes
            .filter(|_| bps > 0.0 && self.timing.median_s > 0.0)
            .map(|b| (b / bps) / self.timing.median_s)
    }

    /// MXNet's median over ours: how many times faster we are.
    pub fn vs_mxnet(&self) -> Option<f64> {
        self.mxnet
            .filter(|_| self.timing.median_s > 0.0)
            .map(|m| m.median_s / self.timing.median_s)
    }

    /// Key operations per second (e only).
    pub fn ops_per_s(&self) -> Option<f64> {
        self.key_ops
            .filter(|_| self.timing.median_s > 0.0)
            .map(|ops| ops / self.timing.median_s)
    }

    /// "yes", "no (...)" or what could not be judged.
    pub fn verdict(&self, memcpy: &Memcpy) -> String {
        let target = self.case.target();
        let floor_ok = target
            .floor
            .map(|least| self.floor_ratio(memcpy).is_some_and(|r| r >= least));
        let mxnet_ok = self.vs_mxnet().map(|r| r >= target.vs_mxnet);
        match (floor_ok, mxnet_ok) {
            (Some(true) | None, Some(true)) => "yes".into(),
            (Some(false), Some(false)) => "MISSED (floor, MXNet)".into(),
            (Some(false), _) => "MISSED (floor)".into(),
            (_, Some(false)) => "MISSED (MXNet)".into(),
            (Some(true), None) => "floor yes, MXNet n/a".into(),
            (None, None) => "n/a (no MXNet)".into(),
        }
    }
}

/// What the MXNet comparison found.
#[derive(Debug, Clone, PartialEq)]
pub enum MxnetStatus {
    /// Measured with this interpreter.
    Measured {
        /// The interpreter.
        python: PathBuf,
        /// Per case.
        timings: BTreeMap<Case, Timing>,
    },
    /// Not measured, and why (a whole sentence).
    Skipped(String),
}

/// `dir/.venv/bin/python` for the current directory and its parents, then for this source tree.
fn python_candidates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::current_dir()
        .map(|d| d.ancestors().map(Path::to_path_buf).collect())
        .unwrap_or_default();
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    let mut candidates: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        let python = dir.join(".venv/bin/python");
        let canonical = python.canonicalize().unwrap_or_else(|_| python.clone());
        if !candidates
            .iter()
            .any(|c| c.canonicalize().unwrap_or_else(|_| c.clone()) == canonical)
        {
            candidates.push(python);
        }
    }
    candidates
}

/// The MXNet version `python` imports, or why it cannot.
fn mxnet_version(python: &Path) -> Result<String, String> {
    let output = Command::new(python)
        .args(["-c", "import mxnet; print(mxnet.__version__)"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !output.status.success() {
        return Err(format!("{}: `import mxnet` failed", python.display()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The interpreter to run MXNet with, or the skip line.
fn find_mxnet(choice: &MxnetChoice) -> Result<PathBuf, String> {
    let candidates = match choice {
        MxnetChoice::Off => {
            return Err(
                "MXNet comparison turned off (--mxnet off): the × MXNet column is skipped".into(),
            )
        }
        MxnetChoice::Auto => python_candidates(),
        MxnetChoice::Python(p) => vec![p.clone()],
    };
    let mut tried = Vec::new();
    for python in &candidates {
        if !python.exists() {
            tried.push(format!("{} (absent)", python.display()));
            continue;
        }
        match mxnet_version(python) {
            Ok(v) if v == MXNET_VERSION => return Ok(python.clone()),
            Ok(v) => tried.push(format!("{} (mxnet {v})", python.display())),
            Err(e) => tried.push(e),
        }
    }
    Err(format!(
        "MXNet {MXNET_VERSION} not found (looked for {}): the × MXNet column is skipped",
        tried.join(", ")
    ))
}

fn timing_from_json(v: &Json) -> Option<Timing> {
    Some(Timing {
        median_s: v.get("median_s")?.as_f64()?,
        min_s: v.get("min_s")?.as_f64()?,
        iters: v
            .get("iters")?
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())?,
    })
}

/// Runs tools/mxnet_bench.py (embedded) with `python` on `cases`.
fn run_mxnet(
    python: &Path,
    cases: &[Case],
    iters: Option<usize>,
    scale: f64,
) -> Result<BTreeMap<Case, Timing>, String> {
    let names: Vec<&str> = cases.iter().map(|c| c.name()).collect();
    let mut command = Command::new(python);
    command
        .args([
            "-",
            "--cases",
            &names.join(","),
            "--scale",
            &scale.to_string(),
        ])
        .env_remove("MXNET_ENGINE_TYPE")
        .env_remove("OMP_NUM_THREADS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(n) = iters {
        command.args(["--iters", &n.to_string()]);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", python.display()))?;
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(MXNET_SCRIPT.as_bytes()),
        None => Ok(()),
    };
    let output = child
        .wait_with_output()
        .map_err(|e| format!("{} failed: {e}", python.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if let Err(e) = written {
        return Err(format!(
            "cannot send the script to {}: {e}",
            python.display()
        ));
    }
    if !output.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(format!(
            "tools/mxnet_bench.py failed ({}): {}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let parsed: Json = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .ok_or_else(|| format!("tools/mxnet_bench.py printed no JSON: {stdout}"))?;
    let mut timings = BTreeMap::new();
    for &case in cases {
        let timing = parsed
            .get(case.name())
            .and_then(timing_from_json)
            .ok_or_else(|| {
                format!(
                    "tools/mxnet_bench.py gave no timing for case {}",
                    case.name()
                )
            })?;
        timings.insert(case, timing);
    }
    Ok(timings)
}

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// The memcpy ceiling.
    pub memcpy: Memcpy,
    /// One per case, in the order asked.
    pub cases: Vec<CaseResult>,
    /// The MXNet comparison.
    pub mxnet: MxnetStatus,
}

fn progress(args: &BenchArgs, len: u64) -> ProgressBar {
    if args.no_progress || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} iterations")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

fn time_case(prepared: &mut Prepared, iters: usize, bar: &ProgressBar) -> kvstore::Result<Timing> {
    for _ in 0..WARMUP {
        (prepared.step)()?;
        bar.inc(1);
    }
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        (prepared.step)()?;
        samples.push(start.elapsed().as_secs_f64());
        bar.inc(1);
    }
    Ok(Timing::of(samples))
}

/// Runs the cases, then MXNet, and writes the table (and the JSON file) to `out`.
pub fn run_bench(args: &BenchArgs, out: &mut dyn Write) -> Result<BenchReport, BenchError> {
    if !(args.scale.is_finite() && args.scale > 0.0) {
        return Err(BenchError::InvalidArgs(format!(
            "--scale must be a positive number, got {}",
            args.scale
        )));
    }
    if args.iters == Some(0) {
        return Err(BenchError::InvalidArgs("--iters must be at least 1".into()));
    }
    let mut cases: Vec<Case> = Vec::new();
    for &c in &args.cases {
        if !cases.contains(&c) {
            cases.push(c);
        }
    }
    let sizes = Sizes::scaled(args.scale);
    let workers = kvstore::Options::default().workers;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    writeln!(
        out,
        "kvstore bench: backend {}, {} engine workers, {cpus} CPUs ({}), scale {}",
        args.backend.name(),
        workers,
        cpu_model(),
        args.scale
    )?;
    if args.backend != BackendKind::Cpu {
        let warning = format!(
            "warning: the {} backend runs the specification's reference code: expect it to be \
             orders of magnitude slower than cpu",
            args.backend.name()
        );
        eprintln!("{warning}");
        writeln!(out, "{warning}")?;
    }

    let memcpy = measure_memcpy(sizes.memcpy_bytes);
    writeln!(
        out,
        "memcpy of {}: 1 thread {}, {} threads {} (bytes read + written): the floor uses {} ({})",
        bytes_label(sizes.memcpy_bytes as f64),
        gbps(memcpy.single_bps),
        memcpy.threads,
        gbps(memcpy.threaded_bps),
        gbps(memcpy.ceiling_bps()),
        memcpy.ceiling_name()
    )?;

    let iters_of = |c: Case| args.iters.unwrap_or(c.default_iters());
    let total: usize = cases.iter().map(|&c| WARMUP + iters_of(c)).sum();
    let bar = progress(args, total as u64);
    let mut results = Vec::with_capacity(cases.len());
    for &case in &cases {
        bar.set_message(format!("case {}", case.name()));
        let mut prepared = prepare(case, &sizes, args.backend)?;
        let timing = time_case(&mut prepared, iters_of(case), &bar)?;
        results.push(CaseResult {
            case,
            description: case.description(&sizes),
            timing,
            minimal_bytes: prepared.minimal_bytes,
            key_ops: prepared.key_ops,
            mxnet: None,
        });
    }
    bar.finish_and_clear();

    let mxnet = match find_mxnet(&args.mxnet) {
        Err(line) => MxnetStatus::Skipped(line),
        Ok(python) => {
            let spinner = progress(args, 1);
            spinner.set_message("MXNet 1.9.1 (tools/mxnet_bench.py)");
            let run = run_mxnet(&python, &cases, args.iters, args.scale);
            spinner.finish_and_clear();
            match run {
                Ok(timings) => MxnetStatus::Measured { python, timings },
                Err(e) => MxnetStatus::Skipped(format!(
                    "MXNet {MXNET_VERSION} run with {} failed ({e}): the × MXNet column is skipped",
                    python.display()
                )),
            }
        }
    };
    if let MxnetStatus::Measured { timings, .. } = &mxnet {
        for r in &mut results {
            r.mxnet = timings.get(&r.case).copied();
        }
    }

    let report = BenchReport {
        memcpy,
        cases: results,
        mxnet,
    };
    write_table(&report, out)?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report_json(&report, args, &sizes))
            .map_err(|e| BenchError::Io(std::io::Error::other(e)))?;
        std::fs::write(path, text + "\n")?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(report)
}

/// The CPU model from /proc/cpuinfo, or "unknown CPU".
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn count(n: usize) -> String {
    const KI: usize = 1024;
    if n >= KI * KI && n % (KI * KI) == 0 {
        format!("{} Mi", n / (KI * KI))
    } else if n >= KI && n % KI == 0 {
        format!("{} Ki", n / KI)
    } else {
        n.to_string()
    }
}

fn bytes_label(bytes: f64) -> String {
    let mib = bytes / (1024.0 * 1024.0);
    if mib >= 1.0 {
        format!("{mib:.0} MiB")
    } else {
        format!("{:.0} KiB", bytes / 1024.0)
    }
}

fn gbps(bps: f64) -> String {
    format!("{:.1} GB/s", bps / 1e9)
}

/// Seconds with three significant digits in a readable unit.
pub fn duration_label(secs: f64) -> String {
    let d = Duration::from_secs_f64(secs.max(0.0));
    let (value, unit) = if d >= Duration::from_secs(1) {
        (secs, "s")
    } else if d >= Duration::from_millis(1) {
        (secs * 1e3, "ms")
    } else {
        (secs * 1e6, "µs")
    };
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.decimals$} {unit}")
}

/// A ratio with enough digits that one shown at a target's value has met it (0.849 does not
/// read as 0.85).
fn ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.2}")
    } else {
        format!("{r:.3}")
    }
}

fn write_table(report: &BenchReport, out: &mut dyn Write) -> std::io::Result<()> {
    let with_mxnet = matches!(report.mxnet, MxnetStatus::Measured { .. });
    let mut header = vec![
        "case",
        "description",
        "median",
        "min",
        "GB/s",
        "floor ratio",
    ];
    if with_mxnet {
        header.extend(["MXNet median", "× MXNet"]);
    }
    header.extend(["target", "met?"]);
    let mut rows: Vec<Vec<String>> = Vec::new();
    for r in &report.cases {
        let mut row = vec![
            r.case.name().to_owned(),
            r.description.clone(),
            duration_label(r.timing.median_s),
            duration_label(r.timing.min_s),
            r.bytes_per_s()
                .map_or("-".into(), |b| format!("{:.1}", b / 1e9)),
            r.floor_ratio(&report.memcpy).map_or("-".into(), ratio),
        ];
        if with_mxnet {
            row.push(r.mxnet.map_or("-".into(), |m| duration_label(m.median_s)));
            row.push(
                r.vs_mxnet()
                    .map_or("-".into(), |x| format!("{}×", ratio(x))),
            );
        }
        row.push(r.case.target().text(r.case));
        row.push(r.verdict(&report.memcpy));
        rows.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, &w)| format!("{c}{}", " ".repeat(w.saturating_sub(c.chars().count()))))
            .collect();
        format!("| {} |", padded.join(" | "))
    };
    writeln!(out)?;
    writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_string()).collect())
    )?;
    writeln!(
        out,
        "{}",
        line(widths.iter().map(|&w| "-".repeat(w)).collect())
    )?;
    for row in rows {
        writeln!(out, "{}", line(row))?;
    }
    writeln!(out)?;
    for r in &report.cases {
        if let Some(ops) = r.ops_per_s() {
            let theirs = r
                .mxnet
                .filter(|m| m.median_s > 0.0)
                .and_then(|m| r.key_ops.map(|k| k / m.median_s));
            match theirs {
                Some(t) => writeln!(
                    out,
                    "{}: {:.0} key ops/s (MXNet {:.0} key ops/s); GB/s and floor ratio are '-': \
                     its bytes are negligible",
                    r.case.name(),
                    ops,
                    t
                )?,
                None => writeln!(
                    out,
                    "{}: {:.0} key ops/s; GB/s and floor ratio are '-': its bytes are negligible",
                    r.case.name(),
                    ops
                )?,
            }
        }
    }
    match &report.mxnet {
        MxnetStatus::Measured { python, .. } => writeln!(
            out,
            "MXNet {MXNET_VERSION}: tools/mxnet_bench.py run with {} in this run",
            python.display()
        )?,
        MxnetStatus::Skipped(line) => writeln!(out, "{line}")?,
    }
    writeln!(
        out,
        "floor ratio = (minimal bytes / memcpy bandwidth) / median (1.0 = at the memory-bandwidth \
         floor); × MXNet = MXNet median / our median"
    )
}

fn timing_json(t: &Timing) -> Json {
    json!({"median_s": t.median_s, "min_s": t.min_s, "iters": t.iters})
}

fn report_json(report: &BenchReport, args: &BenchArgs, sizes: &Sizes) -> Json {
    let memcpy = &report.memcpy;
    let cases: Vec<Json> = report
        .cases
        .iter()
        .map(|r| {
            json!({
                "case": r.case.name(),
                "description": r.description,
                "timing": timing_json(&r.timing),
                "minimal_bytes": r.minimal_bytes,
                "gb_per_s": r.bytes_per_s().map(|b| b / 1e9),
                "floor_ratio": r.floor_ratio(memcpy),
                "key_ops_per_s": r.ops_per_s(),
                "mxnet": r.mxnet.as_ref().map(timing_json),
                "vs_mxnet": r.vs_mxnet(),
                "target": r.case.target().text(r.case),
                "met": r.verdict(memcpy),
            })
        })
        .collect();
    let (mxnet_python, mxnet_skipped) = match &report.mxnet {
        MxnetStatus::Measured { python, .. } => (Some(python.display().to_string()), None),
        MxnetStatus::Skipped(line) => (None, Some(line.clone())),
    };
    json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "backend": args.backend.name(),
        "scale": args.scale,
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu_model": cpu_model(),
        "sizes": {
            "dense_len": sizes.dense_len,
            "table_rows": sizes.table_rows,
            "row_len": ROW_LEN,
            "sparse_ids": sizes.sparse_ids,
            "small_keys": sizes.small_keys,
            "memcpy_bytes": sizes.memcpy_bytes,
        },
        "memcpy": {
            "single_bytes_per_s": memcpy.single_bps,
            "threaded_bytes_per_s": memcpy.threaded_bps,
            "threads": memcpy.threads,
            "ceiling_bytes_per_s": memcpy.ceiling_bps(),
        },
        "mxnet": {"python": mxnet_python, "skipped": mxnet_skipped},
        "cases": cases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(Timing::of(vec![3.0, 1.0, 2.0]).median_s, 2.0);
        assert_eq!(Timing::of(vec![4.0, 1.0, 2.0, 3.0]).median_s, 2.5);
        assert_eq!(Timing::of(vec![4.0, 1.0]).min_s, 1.0);
    }

    #[test]
    fn sizes_shrink_but_stay_positive() {
        let s = Sizes::scaled(1e-9);
        assert_eq!(
            (s.dense_len, s.table_rows, s.sparse_ids, s.small_keys),
            (1, 1, 1, 1)
        );
        let full = Sizes::scaled(1.0);
        assert_eq!(full.dense_len, DENSE_LEN);
        assert_eq!(full.sparse_ids, SPARSE_IDS);
    }

    #[test]
    fn distinct_ids_are_sorted_and_unique() {
        let mut rng = SplitMix64::new(1);
        let ids = distinct_sorted_ids(&mut rng, 100, 40);
        assert_eq!(ids.len(), 40);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|&i| (0..100).contains(&i)));
    }

    #[test]
    fn verdicts() {
        let memcpy = Memcpy {
            single_bps: 10e9,
            threaded_bps: 20e9,
            threads: 2,
        };
        let mut r = CaseResult {
            case: Case::A,
            description: String::new(),
            timing: Timing {
                median_s: 1.0,
                min_s: 1.0,
                iters: 1,
            },
            minimal_bytes: Some(20e9),
            key_ops: None,
            mxnet: None,
        };
        assert_eq!(r.floor_ratio(&memcpy), Some(1.0));
        assert_eq!(r.verdict(&memcpy), "floor yes, MXNet n/a");
        r.mxnet = Some(Timing {
            median_s: 1.0,
            min_s: 1.0,
            iters: 1,
        });
        assert_eq!(r.verdict(&memcpy), "MISSED (MXNet)");
        r.mxnet = Some(Timing {
            median_s: 2.0,
            min_s: 2.0,
            iters: 1,
        });
        assert_eq!(r.verdict(&memcpy), "yes");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration_label(0.0068), "6.80 ms");
        assert_eq!(duration_label(0.17), "170 ms");
        assert_eq!(duration_label(1.5), "1.50 s");
        assert_eq!(duration_label(0.000_05), "50.0 µs");
    }
}
