//! `kvstore replay TRACE`: runs a trace (docs/trace-format.md) and prints one output line per
//! operation.

use clap::{Args, ValueEnum};
use std::io::{Read, Write};
use std::path::PathBuf;

/// What executes the trace's operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The executable specification, one call at a time.
    Spec,
    /// The dependency engine with the CPU backend (the library's default).
    Cpu,
    /// The dependency engine with the spec's reference code as its backend.
    EngineSpec,
    /// The dependency engine with the CUDA backend on GPU 0 (built with feature `cuda`).
    Cuda,
}

impl From<Backend> for kvstore::BackendKind {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Spec => kvstore::BackendKind::Spec,
            Backend::Cpu => kvstore::BackendKind::Cpu,
            Backend::EngineSpec => kvstore::BackendKind::EngineSpec,
            Backend::Cuda => kvstore::BackendKind::Cuda,
        }
    }
}

/// The flags of `kvstore replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The trace file; `-` reads standard input.
    pub trace: PathBuf,
    /// What executes the operations.
    #[arg(long, value_enum, default_value_t = Backend::Spec)]
    pub backend: Backend,
    /// Store kind to use instead of the trace's `create` (or `local`).
    #[arg(long)]
    pub kind: Option<String>,
}

/// Why a replay could not run.
#[derive(Debug)]
pub enum ReplayError {
    /// The trace could not be read from its file or stdin.
    Read(PathBuf, std::io::Error),
    /// A line of the trace is not a valid operation (nothing was run).
    Parse(kvstore::trace::ParseError),
    /// Writing the output failed.
    Write(std::io::Error),
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Read(path, e) => write!(f, "cannot read {}: {e}", path.display()),
            ReplayError::Parse(e) => e.fmt(f),
            ReplayError::Write(e) => write!(f, "cannot write the output: {e}"),
        }
    }
}

impl std::error::Error for ReplayError {}

/// Reads the trace, runs it, and writes the output lines.
pub fn run_replay(args: &ReplayArgs, out: &mut dyn Write) -> Result<(), ReplayError> {
    let text = read_trace(&args.trace)?;
    let options = kvstore::Options {
        backend: args.backend.into(),
        ..kvstore::Options::default()
    };
    let lines = kvstore::trace::replay_text_with(&text, args.kind.clone(), options)
        .map_err(ReplayError::Parse)?;
    for line in lines {
        writeln!(out, "{line}").map_err(ReplayError::Write)?;
    }
    Ok(())
}

fn read_trace(path: &PathBuf) -> Result<String, ReplayError> {
    let mut text = String::new();
    let result = if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    result.map_err(|e| ReplayError::Read(path.clone(), e))?;
    Ok(text)
}
