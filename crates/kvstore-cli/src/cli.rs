//! The clap definitions and the dispatch of subcommands.
//!
//! A new subcommand is one more variant of [`Command`] (with its own `Args` struct), one more
//! arm in [`Command::run`], and, when it can fail in a new way, one more variant of
//! [`CliError`].

use crate::bench::{self, BenchArgs, BenchError};
use crate::check::{self, CheckArgs, CheckError};
use crate::demo::{self, CompressionChoice, DemoConfig, DemoError, OptimizerChoice};
use crate::replay::{self, ReplayArgs, ReplayError};
use clap::{Args, Parser, Subcommand};
use std::io::{IsTerminal, Write};

/// `kvstore`: tools around the kvstore parameter-synchronisation store.
#[derive(Debug, Parser)]
#[command(name = "kvstore", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Data-parallel training of a logistic regression on simulated devices that push their
    /// gradients to the store and pull the updated weights back.
    Demo(DemoArgs),
    /// Runs a trace (docs/trace-format.md) and prints one JSON line per operation.
    Replay(ReplayArgs),
    /// Times five store workloads against the memory-bandwidth floor and MXNet 1.9.1
    /// (docs/performance.md).
    Bench(BenchArgs),
    /// Model-checks the engine's ordering and the distributed protocol with stateright, or
    /// serves a model in stateright's explorer (docs/verification.md).
    Check(CheckArgs),
}

impl Command {
    /// Runs the subcommand, writing its report to `out`.
    pub fn run(self, out: &mut dyn Write) -> Result<(), CliError> {
        match self {
            Command::Demo(args) => {
                let config = args.into_config(std::io::stdout().is_terminal());
                demo::run_demo(&config, out)?;
                Ok(())
            }
            Command::Replay(args) => Ok(replay::run_replay(&args, out)?),
            Command::Bench(args) => {
                bench::run_bench(&args, out)?;
                Ok(())
            }
            Command::Check(args) => {
                check::run_check(&args, out)?;
                Ok(())
            }
        }
    }
}

/// Runs what the command line asks for.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    cli.command.run(out)
}

/// The flags of `kvstore demo`; every default is [`DemoConfig::default`]'s.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Passes over the training set.
    #[arg(long, default_value_t = DemoConfig::default().epochs)]
    pub epochs: usize,
    /// Samples per step over all devices (the global mini-batch); each device takes an equal
    /// share of it.
    #[arg(long, default_value_t = DemoConfig::default().batch_size)]
    pub batch_size: usize,
    /// The optimizer the store runs.
    #[arg(long, value_enum, default_value_t = DemoConfig::default().optimizer)]
    pub optimizer: OptimizerChoice,
    /// Learning rate (the gradient is the mean over the global batch); default: sgd and nag
    /// 0.5, adam 0.05, adagrad 0.5, rmsprop 0.02, ftrl 0.5.
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Momentum of sgd and nag.
    #[arg(long, default_value_t = DemoConfig::default().momentum)]
    pub momentum: f64,
    /// Number of simulated devices, cpu(0), cpu(1), ...
    #[arg(long, default_value_t = DemoConfig::default().devices)]
    pub devices: usize,
    /// Seed of the synthetic data set and of the shuffling.
    #[arg(long, default_value_t = DemoConfig::default().seed)]
    pub seed: u64,
    /// Store kind passed to `kvstore::create` (`local` refuses gradient compression).
    #[arg(long, default_value_t = DemoConfig::default().kind)]
    pub kind: String,
    /// Gradient compression of the pushes.
    #[arg(long, value_enum, default_value_t = DemoConfig::default().compression)]
    pub compression: CompressionChoice,
    /// Compression threshold (2bit: the magnitude sent; 1bit: the sign decision).
    #[arg(long, default_value_t = DemoConfig::default().threshold, allow_negative_numbers = true)]
    pub threshold: f32,
    /// Number of samples generated (train and test together).
    #[arg(long, default_value_t = DemoConfig::default().samples)]
    pub samples: usize,
    /// Number of features per sample.
    #[arg(long, default_value_t = DemoConfig::default().features)]
    pub features: usize,
    /// Never show the progress bar (it is only shown when stdout is a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

impl DemoArgs {
    /// The demo configuration these flags ask for; the progress bar is shown only when
    /// `stdout_is_terminal` and not turned off.
    pub fn into_config(self, stdout_is_terminal: bool) -> DemoConfig {
        DemoConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            optimizer: self.optimizer,
            learning_rate: self.learning_rate,
            momentum: self.momentum,
            devices: self.devices,
            seed: self.seed,
            kind: self.kind,
            compression: self.compression,
            threshold: self.threshold,
            samples: self.samples,
            features: self.features,
            progress: stdout_is_terminal && !self.no_progress,
        }
    }
}

/// Every way a subcommand can fail.
#[derive(Debug)]
#[non_exhaustive]
pub enum CliError {
    /// `kvstore demo` failed.
    Demo(DemoError),
    /// `kvstore replay` failed.
    Replay(ReplayError),
    /// `kvstore bench` failed.
    Bench(BenchError),
    /// `kvstore check` failed.
    Check(CheckError),
    /// Writing the output failed.
    Io(std::io::Error),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Demo(e) => e.fmt(f),
            CliError::Replay(e) => e.fmt(f),
            CliError::Bench(e) => e.fmt(f),
            CliError::Check(e) => e.fmt(f),
            CliError::Io(e) => write!(f, "cannot write the output: {e}"),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Demo(e) => e.source(),
            CliError::Replay(e) => Some(e),
            CliError::Bench(e) => e.source(),
            CliError::Check(e) => Some(e),
            CliError::Io(e) => Some(e),
        }
    }
}

impl From<DemoError> for CliError {
    fn from(e: DemoError) -> Self {
        CliError::Demo(e)
    }
}

impl From<ReplayError> for CliError {
    fn from(e: ReplayError) -> Self {
        CliError::Replay(e)
    }
}

impl From<BenchError> for CliError {
    fn from(e: BenchError) -> Self {
        CliError::Bench(e)
    }
}

impl From<CheckError> for CliError {
    fn from(e: CheckError) -> Self {
        CliError::Check(e)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn demo_args(argv: &[&str]) -> DemoArgs {
        let cli = Cli::try_parse_from(argv).expect("parses");
        match cli.command {
            Command::Demo(args) => args,
            #[allow(unreachable_patterns)]
            other => panic!("expected demo, got {other:?}"),
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn demo_flags_default_to_the_demo_config_defaults() {
        let config = demo_args(&["kvstore", "demo"]).into_config(false);
        assert_eq!(config, DemoConfig::default());
    }

    #[test]
    fn demo_flags_are_parsed() {
        let args = demo_args(&[
            "kvstore",
            "demo",
            "--compression",
            "2bit",
            "--threshold",
            "0.25",
            "--kind",
            "local",
            "--devices",
            "2",
            "--seed",
            "7",
        ]);
        let config = args.into_config(true);
        assert_eq!(config.compression, CompressionChoice::TwoBit);
        assert_eq!(config.threshold, 0.25);
        assert_eq!(config.kind, "local");
        assert_eq!(config.devices, 2);
        assert_eq!(config.seed, 7);
        assert!(config.progress);
    }

    #[test]
    fn an_unknown_compression_is_a_usage_error() {
        assert!(Cli::try_parse_from(["kvstore", "demo", "--compression", "3bit"]).is_err());
    }
}
