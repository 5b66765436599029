//! Running traces on MXNet 1.9.1 through `tests/conformance/mxnet_replay.py`.

use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The line printed when MXNet is not available.
pub const SKIPPED: &str =
    "conformance: SKIPPED — MXNet 1.9.1 not installed (run tests/conformance/setup_mxnet.sh)";

/// The repository root (the parent of the `tests` crate).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// A Python interpreter with MXNet 1.9.1, and the replay driver.
#[derive(Debug, Clone)]
pub struct Mxnet {
    /// The interpreter.
    pub python: PathBuf,
    /// `tests/conformance/mxnet_replay.py`.
    pub driver: PathBuf,
}

impl Mxnet {
    /// The interpreter from `KVSTORE_MXNET_PYTHON`, else `<repo>/.venv/bin/python`, checked to
    /// import mxnet 1.9.1; `Err` says why it is not usable.
    pub fn find() -> Result<Mxnet, String> {
        let root = repo_root();
        let python = match std::env::var_os("KVSTORE_MXNET_PYTHON") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                let venv = root.join(".venv/bin/python");
                if !venv.exists() {
                    return Err(format!("{} does not exist", venv.display()));
                }
                venv
            }
        };
        let driver = root.join("tests/conformance/mxnet_replay.py");
        if !driver.exists() {
            return Err(format!("{} does not exist", driver.display()));
        }
        let probe = Command::new(&python)
            .args([
                "-c",
                "import sys, mxnet; sys.exit(0 if mxnet.__version__ == '1.9.1' else 3)",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
        if !probe.success() {
            return Err(format!(
                "{} does not import mxnet 1.9.1 ({probe})",
                python.display()
            ));
        }
        Ok(Mxnet { python, driver })
    }

    /// Runs the driver once over `traces` and returns each trace's output lines.
    pub fn run(&self, traces: &[PathBuf]) -> Result<Vec<Vec<Json>>, String> {
        self.run_with(&[], traces)
    }

    /// [`Mxnet::run`] with driver options before the traces (e.g. `--no-fork`).
    pub fn run_with(&self, options: &[&str], traces: &[PathBuf]) -> Result<Vec<Vec<Json>>, String> {
        if traces.is_empty() {
            return Ok(Vec::new());
        }
        let output = Command::new(&self.python)
            .arg(&self.driver)
            .args(options)
            .args(traces)
            .env("MXNET_STORAGE_FALLBACK_LOG_VERBOSE", "0")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.driver.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "{} failed ({}):\n{}",
                self.driver.display(),
                output.status,
                tail.join("\n")
            ));
        }
        let mut results: Vec<Vec<Json>> = Vec::new();
        if traces.len() == 1 {
            results.push(Vec::new());
        }
        for line in stdout.lines().filter(|l| l.starts_with('{')) {
            let json: Json = serde_json::from_str(line)
                .map_err(|e| format!("driver printed a bad line ({e}): {line}"))?;
            if json.get("trace").is_some() && json.get("line").is_none() {
                let expected = traces.get(results.len()).map(|p| p.display().to_string());
                let got = json["trace"].as_str().map(str::to_owned);
                if traces.len() == 1 || expected != got {
                    return Err(format!(
                        "driver output out of order: expected trace {expected:?}, got {got:?}"
                    ));
                }
                results.push(Vec::new());
            } else if let Some(current) = results.last_mut() {
                current.push(json);
            } else {
                return Err(format!("driver printed a line before any trace: {line}"));
            }
        }
        if results.len() != traces.len() {
            return Err(format!(
                "driver printed {} traces for {}",
                results.len(),
                traces.len()
            ));
        }
        Ok(results)
    }
}
