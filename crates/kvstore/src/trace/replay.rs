//! Running a trace on a store and writing one output line per operation.

use super::op::{self, Op, UpdaterSpec};
use super::tensor;
use crate::normalize::Values;
use crate::{create_with, Compression, KvStore, NdArray, Options, PullOptions};
use kvstore_spec::updater::UpdateError;
use kvstore_spec::{Error, Key, Tensor, Value};
use serde_json::{json, Map, Value as Json};

/// A trace line that cannot be read, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Reads a whole trace: `(line number, op)` for each non-blank line. A `create` may only come
/// first.
pub fn parse(text: &str) -> Result<Vec<(usize, Op)>, ParseError> {
    let mut ops = Vec::new();
    for (index, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let line_no = index + 1;
        let op = op::read(line).map_err(|message| ParseError {
            line: line_no,
            message,
        })?;
        if matches!(op, Op::Create { .. }) && !ops.is_empty() {
            return Err(ParseError {
                line: line_no,
                message: "\"create\" must be the first operation".into(),
            });
        }
        ops.push((line_no, op));
    }
    Ok(ops)
}

/// What one operation did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done, no outputs.
    Ok,
    /// The outputs' contents, in the nesting of the op's outputs.
    Out(Values<Value>),
    /// A store error: its variant name and message.
    Error { name: String, message: String },
}

impl Outcome {
    /// The output line for operation `line`.
    pub fn to_json(&self, line: usize) -> Json {
        let mut obj = Map::new();
        obj.insert("line".into(), json!(line));
        match self {
            Outcome::Ok => {
                obj.insert("ok".into(), json!(true));
            }
            Outcome::Out(values) => {
                obj.insert("out".into(), op::write_values(values, tensor::write));
            }
            Outcome::Error { name, message } => {
                obj.insert("error".into(), json!(name));
                obj.insert("message".into(), json!(message));
            }
        }
        Json::Object(obj)
    }
}

/// The name of an error's variant, as trace outputs print it.
pub fn variant_name(error: &Error) -> String {
    let debug = format!("{error:?}");
    debug
        .split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Runs trace operations on stores of the API, in order.
#[derive(Debug)]
pub struct Replayer {
    kind_override: Option<String>,
    options: Options,
    store: Option<KvStore>,
}

impl Replayer {
    /// A replayer; `kind_override` replaces the kind of the trace's `create` (or `local`).
    pub fn new(kind_override: Option<String>) -> Replayer {
        Replayer::with_options(kind_override, Options::default())
    }

    /// A replayer whose stores are built with `options` (e.g. on the spec backend).
    pub fn with_options(kind_override: Option<String>, options: Options) -> Replayer {
        Replayer {
            kind_override,
            options,
            store: None,
        }
    }

    /// The current store; a trace without `create` runs on a `local` store.
    fn store(&mut self) -> Result<&KvStore, Error> {
        let kv = match self.store.take() {
            Some(kv) => kv,
            None => create_with(
                self.kind_override.as_deref().unwrap_or("local"),
                self.options,
            )?,
        };
        Ok(self.store.insert(kv))
    }

    /// Runs one operation.
    pub fn run(&mut self, op: &Op) -> Outcome {
        match self.execute(op) {
            Ok(None) => Outcome::Ok,
            Ok(Some(values)) => Outcome::Out(values),
            Err(e) => Outcome::Error {
                name: variant_name(&e),
                message: e.to_string(),
            },
        }
    }

    fn execute(&mut self, op: &Op) -> Result<Option<Values<Value>>, Error> {
        if let Op::Create { kind } = op {
            let kind = self.kind_override.clone().unwrap_or_else(|| kind.clone());
            self.store = Some(create_with(&kind, self.options)?);
            return Ok(None);
        }
        let outcome = self.issue(op)?;
        // A trace line's outcome includes what happened while the operation ran, so each
        // operation is waited for (an asynchronous store reports updater errors at the wait).
        self.store()?.wait_all()?;
        Ok(outcome)
    }

    fn issue(&mut self, op: &Op) -> Result<Option<Values<Value>>, Error> {
        let kv = self.store()?;
        match op {
            Op::Create { .. } | Op::WaitAll => kv.wait_all().map(|()| None),
            Op::Init { keys, values } => kv.init(keys.clone(), values.clone()).map(|()| None),
            Op::Push {
                keys,
                values,
                priority,
            } => kv
                .push_with_priority(keys.clone(), values.clone(), *priority)
                .map(|()| None),
            Op::Pull {
                keys,
                outs,
                priority,
                ignore_sparse,
            } => {
                let options = PullOptions {
                    priority: *priority,
                    ignore_sparse: *ignore_sparse,
                };
                with_outputs(outs, |o| kv.pull_with(keys.clone(), o, options))
            }
            Op::RowSparsePull {
                keys,
                outs,
                row_ids,
                priority,
            } => with_outputs(outs, |o| {
                kv.row_sparse_pull_with_priority(keys.clone(), o, row_ids.lists(), *priority)
            }),
            Op::PushPull { keys, values, outs } => {
                let outs = outs.as_ref().unwrap_or(values);
                with_outputs(outs, |o| kv.pushpull(keys.clone(), values.clone(), o))
            }
            Op::Broadcast { keys, values, outs } => {
                with_outputs(outs, |o| kv.broadcast(keys.clone(), values.clone(), o))
            }
            Op::SetGradientCompression { params } => {
                let pairs = params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                kv.set_gradient_compression(Compression::from_params(pairs)?)
                    .map(|()| None)
            }
            Op::SetOptimizer { optimizer } => kv.set_optimizer(optimizer.clone()).map(|()| None),
            Op::SetUpdater {
                updater: UpdaterSpec::Accumulate { scale },
            } => {
                kv.set_traced_updater(
                    UpdaterSpec::Accumulate { scale: *scale },
                    accumulate(*scale),
                );
                Ok(None)
            }
            Op::SetUpdater {
                updater: UpdaterSpec::Custom,
            } => Err(Error::UnsupportedOperation {
                op: "replaying a custom updater".into(),
                kind: kv.kind().to_owned(),
            }),
            Op::SaveOptimizerStates {
                path,
                dump_optimizer,
            } => kv
                .save_optimizer_states(path, *dump_optimizer)
                .map(|()| None),
            Op::LoadOptimizerStates { path } => kv.load_optimizer_states(path).map(|()| None),
        }
    }
}

/// Runs `call` on fresh output arrays holding `outs`, then reads them back in the same nesting.
fn with_outputs(
    outs: &Values<Value>,
    call: impl FnOnce(Values<NdArray>) -> crate::Result<()>,
) -> Result<Option<Values<Value>>, Error> {
    let arrays = outs.clone().map(NdArray::new);
    call(arrays.clone())?;
    Ok(Some(arrays.map(|a| a.value())))
}

/// The trace updater `accumulate`: `stored = stored + scale * merged`, dense, in float32.
fn accumulate(scale: f32) -> impl crate::Updater + Clone {
    move |_: &Key, merged: &Value, stored: &mut Value| -> Result<(), UpdateError> {
        let sum: Vec<f32> = stored
            .to_f32()
            .iter()
            .zip(merged.to_f32())
            .map(|(s, m)| s + scale * m)
            .collect();
        let dense =
            Tensor::new(stored.shape().to_vec(), sum).map_err(|e| UpdateError(e.to_string()))?;
        *stored = Value::Dense(dense.cast(stored.dtype()).on(stored.device()));
        Ok(())
    }
}

/// Replays a whole trace text: one output line per operation, or the first unreadable line.
pub fn replay_text(text: &str, kind_override: Option<String>) -> Result<Vec<Json>, ParseError> {
    replay_text_with(text, kind_override, Options::default())
}

/// [`replay_text`] on stores built with `options`.
pub fn replay_text_with(
    text: &str,
    kind_override: Option<String>,
    options: Options,
) -> Result<Vec<Json>, ParseError> {
    let ops = parse(text)?;
    let mut replayer = Replayer::with_options(kind_override, options);
    Ok(ops
        .iter()
        .map(|(line, op)| replayer.run(op).to_json(*line))
        .collect())
}
