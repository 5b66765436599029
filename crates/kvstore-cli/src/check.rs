//! `kvstore check`: runs the stateright models of docs/verification.md, or serves one in
//! stateright's web explorer.

use clap::Args;
use kvstore_dist::Fault;
use kvstore_models::dist::DistConfig;
use kvstore_models::local::{Fault as LocalFault, LocalConfig};
use stateright::{Checker, Expectation, HasDiscoveries, Model};
use std::fmt::Debug;
use std::hash::Hash;
use std::io::Write;
use std::time::{Duration, Instant};

/// The flags of `kvstore check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Which model: one of `kvstore check --list`, or `ci` for every CI-size model.
    #[arg(long, default_value = "ci")]
    pub model: String,
    /// Plants a bug (see `--list`); the check then succeeds only if a property fails.
    #[arg(long)]
    pub fault: Option<String>,
    /// Checker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Serves the model in stateright's web explorer at this address (e.g. localhost:3000)
    /// instead of checking it.
    #[arg(long)]
    pub explore: Option<String>,
    /// Lists the models and the planted bugs.
    #[arg(long)]
    pub list: bool,
}

/// Why `kvstore check` failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No model or bug of that name.
    #[error("{0}")]
    Unknown(String),
    /// The model could not be built.
    #[error("cannot build model {model}: {source}")]
    Model {
        /// The model.
        model: String,
        /// Why.
        source: kvstore_spec::Error,
    },
    /// A property failed on an unmodified model, or a planted bug went unnoticed.
    #[error("{0}")]
    Failed(String),
    /// Writing the report failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A model the command can check.
#[derive(Debug, Clone)]
pub enum Setup {
    /// The engine's per-key ordering (`kvstore_models::local`).
    Local(LocalConfig),
    /// The distributed protocol (`kvstore_models::dist`).
    Dist(DistConfig),
}

/// A planted bug of either model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// An engine bug.
    Local(LocalFault),
    /// A protocol bug.
    Dist(Fault),
}

impl PlantedBug {
    /// Every planted bug.
    pub fn all() -> Vec<PlantedBug> {
        let local = LocalFault::ALL.into_iter().map(PlantedBug::Local);
        local
            .chain(Fault::ALL.into_iter().map(PlantedBug::Dist))
            .collect()
    }

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::Local(f) => f.name(),
            PlantedBug::Dist(f) => f.name(),
        }
    }

    /// The model it is checked in.
    pub fn model(self) -> (&'static str, Setup) {
        match self {
            PlantedBug::Local(_) => ("local", Setup::Local(LocalConfig::ci())),
            PlantedBug::Dist(fault) => {
                let config = DistConfig::exposing(fault);
                let name = models()
                    .into_iter()
                    .find(|(_, s)| matches!(s, Setup::Dist(c) if *c == config))
                    .map_or("dist-sync", |(name, _)| name);
                (name, Setup::Dist(config))
            }
        }
    }
}

/// Every model by name; names ending in `-large` are the release-size runs.
pub fn models() -> Vec<(&'static str, Setup)> {
    vec![
        ("local", Setup::Local(LocalConfig::ci())),
        ("local-large", Setup::Local(LocalConfig::large())),
        ("dist-sync", Setup::Dist(DistConfig::sync_ci())),
        (
            "dist-sync-pipelined",
            Setup::Dist(DistConfig::sync_pipelined()),
        ),
        (
            "dist-sync-overlapped",
            Setup::Dist(DistConfig::sync_overlapped()),
        ),
        (
            "dist-sync-compressed",
            Setup::Dist(DistConfig::sync_compressed()),
        ),
        ("dist-async", Setup::Dist(DistConfig::async_ci())),
        (
            "dist-rogue-init",
            Setup::Dist(DistConfig::sync_rogue_init()),
        ),
        (
            "dist-init-mismatch",
            Setup::Dist(DistConfig::sync_mismatched_init()),
        ),
        (
            "dist-crashed-worker",
            Setup::Dist(DistConfig::crashed_worker()),
        ),
        (
            "dist-crashed-server",
            Setup::Dist(DistConfig::crashed_server()),
        ),
        ("dist-sync-large", Setup::Dist(DistConfig::sync_large())),
    ]
}

/// What one check found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The model's name.
    pub model: String,
    /// Distinct states explored.
    pub unique_states: usize,
    /// States generated, duplicates included.
    pub states: usize,
    /// The longest path explored.
    pub depth: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Per property: its name, its kind, and the length of the path that falsified it (or,
    /// for `sometimes`, that exhibited it).
    pub properties: Vec<(String, Expectation, Option<usize>)>,
}

impl CheckReport {
    /// The properties that failed.
    pub fn failures(&self) -> Vec<&str> {
        self.properties
            .iter()
            .filter(|(_, expectation, found)| match expectation {
                Expectation::Sometimes => found.is_none(),
                _ => found.is_some(),
            })
            .map(|(name, _, _)| name.as_str())
            .collect()
    }
}

/// Checks every state of `model` (breadth first) and reports each property. With
/// `stop_at_failure` the search ends at the first counterexample: a model with a planted bug can
/// have a far larger (even unbounded) state space than the correct one.
pub fn check<M>(name: &str, model: M, threads: usize, stop_at_failure: bool) -> CheckReport
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + Debug + Hash + PartialEq + Send + Sync + 'static,
    M::Action: Clone + Debug + PartialEq + Send + Sync + 'static,
{
    let properties: Vec<(&'static str, Expectation)> = model
        .properties()
        .iter()
        .map(|p| (p.name, p.expectation.clone()))
        .collect();
    let started = Instant::now();
    let mut builder = model.checker().threads(threads.max(1));
    if stop_at_failure {
        builder = builder.finish_when(HasDiscoveries::AnyFailures);
    }
    let checker = builder.spawn_bfs().join();
    let elapsed = started.elapsed();
    let properties = properties
        .into_iter()
        .map(|(property, expectation)| {
            let found = checker
                .discovery(property)
                .map(|path| path.into_actions().len());
            (property.to_owned(), expectation, found)
        })
        .collect();
    CheckReport {
        model: name.to_owned(),
        unique_states: checker.unique_state_count(),
        states: checker.state_count(),
        depth: checker.max_depth(),
        elapsed,
        properties,
    }
}

/// Runs `kvstore check`.
pub fn run_check(args: &CheckArgs, out: &mut dyn Write) -> Result<Vec<CheckReport>, CheckError> {
    if args.list {
        writeln!(out, "models (--model; `ci` runs all but the -large ones):")?;
        for (name, _) in models() {
            writeln!(out, "  {name}")?;
        }
        writeln!(out, "planted bugs (--fault):")?;
        for bug in PlantedBug::all() {
            writeln!(out, "  {} (model {})", bug.name(), bug.model().0)?;
        }
        return Ok(Vec::new());
    }
    let bug = match &args.fault {
        None => None,
        Some(name) => Some(
            PlantedBug::all()
                .into_iter()
                .find(|b| b.name() == name)
                .ok_or_else(|| CheckError::Unknown(format!("no planted bug named '{name}'")))?,
        ),
    };
    let chosen: Vec<(&'static str, Setup)> = match (args.model.as_str(), bug) {
        ("ci", Some(bug)) => vec![bug.model()],
        ("ci", None) => models()
            .into_iter()
            .filter(|(name, _)| !name.ends_with("-large"))
            .collect(),
        (wanted, _) => models()
            .into_iter()
            .filter(|(name, _)| *name == wanted)
            .collect(),
    };
    if chosen.is_empty() {
        return Err(CheckError::Unknown(format!(
            "no model named '{}' (see kvstore check --list)",
            args.model
        )));
    }
    let mut reports = Vec::new();
    for (name, setup) in chosen {
        let failed = |source| CheckError::Model {
            model: name.to_owned(),
            source,
        };
        let report = match (setup, bug) {
            (Setup::Local(config), bug) => {
                let config = match bug {
                    Some(PlantedBug::Local(fault)) => config.with_fault(fault),
                    Some(PlantedBug::Dist(_)) => return Err(wrong_family(name)),
                    None => config,
                };
                run_one(name, config.into_model(), args, out)?
            }
            (Setup::Dist(config), bug) => {
                let config = match bug {
                    Some(PlantedBug::Dist(fault)) => config.with_fault(fault).map_err(failed)?,
                    Some(PlantedBug::Local(_)) => return Err(wrong_family(name)),
                    None => config,
                };
                run_one(name, config.into_model().map_err(failed)?, args, out)?
            }
        };
        let Some(report) = report else {
            return Ok(reports);
        };
        print_report(&report, out)?;
        reports.push(report);
    }
    let failures: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.failures()
                .into_iter()
                .map(move |p| format!("{}: {p}", r.model))
        })
        .collect();
    match (bug, failures.is_empty()) {
        (None, false) => Err(CheckError::Failed(format!(
            "properties failed: {}",
            failures.join("; ")
        ))),
        (Some(bug), true) => Err(CheckError::Failed(format!(
            "planted bug {} was not found",
            bug.name()
        ))),
        _ => Ok(reports),
    }
}

fn wrong_family(model: &str) -> CheckError {
    CheckError::Unknown(format!("that planted bug does not exist in model {model}"))
}

/// Checks `model`, or serves it when `--explore` is given (then `None`).
fn run_one<M>(
    name: &str,
    model: M,
    args: &CheckArgs,
    out: &mut dyn Write,
) -> Result<Option<CheckReport>, CheckError>
where
    M: Model + Send + Sync + 'static,
    M::State: Clone + Debug + Hash + PartialEq + Send + Sync + 'static,
    M::Action: Clone + Debug + PartialEq + Send + Sync + 'static,
{
    if let Some(address) = &args.explore {
        writeln!(out, "serving {name} at http://{address}")?;
        out.flush()?;
        model
            .checker()
            .threads(args.threads.max(1))
            .serve(address.as_str());
        return Ok(None);
    }
    Ok(Some(check(name, model, args.threads, args.fault.is_some())))
}

fn print_report(report: &CheckReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{}: {} unique states ({} generated, depth {}) in {:.2?}",
        report.model, report.unique_states, report.states, report.depth, report.elapsed
    )?;
    for (name, expectation, found) in &report.properties {
        let verdict = match (expectation, found) {
            (Expectation::Sometimes, Some(n)) => format!("example found ({n} steps)"),
            (Expectation::Sometimes, None) => "NO EXAMPLE".to_owned(),
            (_, None) => "holds".to_owned(),
            (_, Some(n)) => format!("COUNTEREXAMPLE ({n} steps)"),
        };
        writeln!(out, "  {expectation:?} {name}: {verdict}")?;
    }
    Ok(())
}
