//! Trace operations: one JSON object per line (docs/trace-format.md).

use super::tensor;
use crate::normalize::{Item, Keys, Values};
use kvstore_spec::optimizer::Optimizer;
use kvstore_spec::{Key, Value};
use serde_json::{json, Map, Value as Json};

/// Row ids of a `row_sparse_pull`: one list for every output, or one list per output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowIdsArg {
    /// `[1, 2]`
    One(Vec<i64>),
    /// `[[1], [2, 3]]`
    PerOutput(Vec<Vec<i64>>),
}

impl RowIdsArg {
    /// The lists, as the store takes them.
    pub fn lists(&self) -> Vec<Vec<i64>> {
        match self {
            RowIdsArg::One(ids) => vec![ids.clone()],
            RowIdsArg::PerOutput(lists) => lists.clone(),
        }
    }
}

/// The updaters a trace can name.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdaterSpec {
    /// `stored = stored + scale * merged`, dense, in float32.
    Accumulate {
        /// The factor applied to the merged gradient.
        scale: f32,
    },
    /// A closure installed with `set_updater`: recorded by name, not replayable.
    Custom,
}

/// One operation of a trace.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Replace the store by a new one of this kind.
    Create { kind: String },
    /// `init`.
    Init { keys: Keys, values: Values<Value> },
    /// `push`.
    Push {
        keys: Keys,
        values: Values<Value>,
        priority: i32,
    },
    /// `pull` into outputs that start as the given tensors (placeholders: zeros / no rows).
    Pull {
        keys: Keys,
        outs: Values<Value>,
        priority: i32,
        ignore_sparse: bool,
    },
    /// `row_sparse_pull`.
    RowSparsePull {
        keys: Keys,
        outs: Values<Value>,
        row_ids: RowIdsArg,
        priority: i32,
    },
    /// `pushpull`; without `outs` the values are updated in place.
    PushPull {
        keys: Keys,
        values: Values<Value>,
        outs: Option<Values<Value>>,
    },
    /// `broadcast`.
    Broadcast {
        keys: Keys,
        values: Values<Value>,
        outs: Values<Value>,
    },
    /// `set_gradient_compression` with MXNet-style text parameters.
    SetGradientCompression { params: Vec<(String, String)> },
    /// `set_optimizer`.
    SetOptimizer { optimizer: Optimizer },
    /// `set_updater` with a named updater.
    SetUpdater { updater: UpdaterSpec },
    /// `save_optimizer_states`.
    SaveOptimizerStates { path: String, dump_optimizer: bool },
    /// `load_optimizer_states`.
    LoadOptimizerStates { path: String },
    /// `wait_all`.
    WaitAll,
}

type Fields = Map<String, Json>;

/// Reads one trace line.
pub fn read(line: &str) -> Result<Op, String> {
    let json: Json = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
    let obj = json
        .as_object()
        .ok_or("an operation must be a JSON object")?;
    let name = obj
        .get("op")
        .and_then(Json::as_str)
        .ok_or("missing \"op\"")?;
    Ok(match name {
        "create" => Op::Create {
            kind: optional_str(obj, "kind")?.unwrap_or("local").to_owned(),
        },
        "init" => Op::Init {
            keys: keys(obj)?,
            values: values(obj, "value")?,
        },
        "push" => Op::Push {
            keys: keys(obj)?,
            values: values(obj, "value")?,
            priority: priority(obj)?,
        },
        "pull" => Op::Pull {
            keys: keys(obj)?,
            outs: values(obj, "out")?,
            priority: priority(obj)?,
            ignore_sparse: optional_bool(obj, "ignore_sparse")?.unwrap_or(true),
        },
        "row_sparse_pull" => Op::RowSparsePull {
            keys: keys(obj)?,
            outs: values(obj, "out")?,
            row_ids: row_ids(field(obj, "row_ids")?)?,
            priority: priority(obj)?,
        },
        "pushpull" => Op::PushPull {
            keys: keys(obj)?,
            values: values(obj, "value")?,
            outs: obj
                .get("out")
                .filter(|o| !o.is_null())
                .map(read_values)
                .transpose()?,
        },
        "broadcast" => Op::Broadcast {
            keys: keys(obj)?,
            values: values(obj, "value")?,
            outs: values(obj, "out")?,
        },
        "set_gradient_compression" => Op::SetGradientCompression {
            params: params(field(obj, "params")?)?,
        },
        "set_optimizer" => Op::SetOptimizer {
            optimizer: optimizer(field(obj, "optimizer")?)?,
        },
        "set_updater" => Op::SetUpdater {
            updater: updater(obj)?,
        },
        "save_optimizer_states" => Op::SaveOptimizerStates {
            path: required_str(obj, "path")?.to_owned(),
            dump_optimizer: optional_bool(obj, "dump_optimizer")?.unwrap_or(false),
        },
        "load_optimizer_states" => Op::LoadOptimizerStates {
            path: required_str(obj, "path")?.to_owned(),
        },
        "wait_all" => Op::WaitAll,
        other => return Err(format!("unknown op {other:?}")),
    })
}

fn field<'a>(obj: &'a Fields, name: &str) -> Result<&'a Json, String> {
    obj.get(name).ok_or_else(|| format!("missing \"{name}\""))
}

fn optional_str<'a>(obj: &'a Fields, name: &str) -> Result<Option<&'a str>, String> {
    obj.get(name)
        .map(|v| {
            v.as_str()
                .ok_or_else(|| format!("\"{name}\" must be a string"))
        })
        .transpose()
}

fn required_str<'a>(obj: &'a Fields, name: &str) -> Result<&'a str, String> {
    optional_str(obj, name)?.ok_or_else(|| format!("missing \"{name}\""))
}

fn optional_bool(obj: &Fields, name: &str) -> Result<Option<bool>, String> {
    obj.get(name)
        .map(|v| {
            v.as_bool()
                .ok_or_else(|| format!("\"{name}\" must be true or false"))
        })
        .transpose()
}

/// A parameter: a number (rounded to f32, so a number beyond its range is infinite), or one of
/// the texts `"nan"`, `"inf"`, `"-inf"` that [`f32_json`] writes for non-finite values.
fn optional_f32(obj: &Fields, name: &str) -> Result<Option<f32>, String> {
    match obj.get(name) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => n
            .to_string()
            .parse::<f32>()
            .map(Some)
            .map_err(|_| format!("bad \"{name}\": {n}")),
        Some(Json::String(s)) if s == "nan" => Ok(Some(f32::NAN)),
        Some(Json::String(s)) if s == "inf" => Ok(Some(f32::INFINITY)),
        Some(Json::String(s)) if s == "-inf" => Ok(Some(f32::NEG_INFINITY)),
        Some(other) => Err(format!("\"{name}\" must be a number, got {other}")),
    }
}

/// A parameter as [`optional_f32`] reads it back: a number, or `"nan"`, `"inf"`, `"-inf"` (JSON
/// has no literal for them, and `null` would read back as the parameter's default).
fn f32_json(x: f32) -> Json {
    if x.is_nan() {
        json!("nan")
    } else if x.is_infinite() {
        json!(if x > 0.0 { "inf" } else { "-inf" })
    } else {
        json!(x)
    }
}

fn priority(obj: &Fields) -> Result<i32, String> {
    match obj.get("priority") {
        None => Ok(0),
        Some(p) => p
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| format!("\"priority\" must be a 32-bit int, got {p}")),
    }
}

fn key(json: &Json) -> Result<Key, String> {
    match json {
        Json::String(s) => Ok(Key::Str(s.clone())),
        Json::Number(n) => n
            .as_i64()
            .map(Key::Int)
            .ok_or_else(|| format!("key {n} is not an int in the signed 64-bit range")),
        other => Err(format!("a key must be an int or a string, got {other}")),
    }
}

fn keys(obj: &Fields) -> Result<Keys, String> {
    match field(obj, "key")? {
        Json::Array(items) => items
            .iter()
            .map(key)
            .collect::<Result<_, _>>()
            .map(Keys::List),
        one => key(one).map(Keys::One),
    }
}

fn values(obj: &Fields, name: &str) -> Result<Values<Value>, String> {
    read_values(field(obj, name)?)
}

/// A tensor, a list of tensors, or a list of tensors and lists of tensors.
fn read_values(json: &Json) -> Result<Values<Value>, String> {
    let Json::Array(items) = json else {
        return tensor::read(json).map(Values::One);
    };
    let item = |json: &Json| match json {
        Json::Array(group) => group
            .iter()
            .map(tensor::read)
            .collect::<Result<_, _>>()
            .map(Item::Group),
        one => tensor::read(one).map(Item::One),
    };
    items
        .iter()
        .map(item)
        .collect::<Result<_, _>>()
        .map(Values::List)
}

fn row_ids(json: &Json) -> Result<RowIdsArg, String> {
    let items = json.as_array().ok_or("\"row_ids\" must be a list")?;
    if items.iter().any(Json::is_array) {
        let lists = items
            .iter()
            .map(|l| tensor::read_ints(l, "row_ids"))
            .collect::<Result<_, _>>()?;
        return Ok(RowIdsArg::PerOutput(lists));
    }
    tensor::read_ints(json, "row_ids").map(RowIdsArg::One)
}

fn params(json: &Json) -> Result<Vec<(String, String)>, String> {
    let obj = json.as_object().ok_or("\"params\" must be an object")?;
    obj.iter()
        .map(|(k, v)| match v {
            Json::String(s) => Ok((k.clone(), s.clone())),
            Json::Number(n) => Ok((k.clone(), n.to_string())),
            Json::Bool(b) => Ok((k.clone(), if *b { "True" } else { "False" }.to_owned())),
            other => Err(format!(
                "parameter \"{k}\" must be a string or a number, got {other}"
            )),
        })
        .collect()
}

/// `set_optimizer`'s object: the spec's serde form (R70), every parameter but `name` optional
/// with MXNet's defaults, unknown fields refused.
fn optimizer(json: &Json) -> Result<Optimizer, String> {
    if !json.is_object() {
        return Err("\"optimizer\" must be an object".into());
    }
    serde_json::from_value(json.clone()).map_err(|e| format!("bad \"optimizer\": {e}"))
}

fn updater(obj: &Fields) -> Result<UpdaterSpec, String> {
    match required_str(obj, "name")? {
        "accumulate" => Ok(UpdaterSpec::Accumulate {
            scale: optional_f32(obj, "scale")?.unwrap_or(1.0),
        }),
        "custom" => Ok(UpdaterSpec::Custom),
        other => Err(format!("unknown updater {other:?}")),
    }
}

/// Writes one trace line; outputs are written as placeholders unless they hold data worth
/// keeping (a row_sparse output with rows, or a dense output that is not all zeros).
pub fn write(op: &Op) -> Json {
    let keys_json = |keys: &Keys| match keys {
        Keys::One(k) => key_json(k),
        Keys::List(ks) => Json::Array(ks.iter().map(key_json).collect()),
    };
    let mut obj = Map::new();
    let mut put = |name: &str, value: Json| {
        obj.insert(name.to_owned(), value);
    };
    match op {
        Op::Create { kind } => {
            put("op", json!("create"));
            put("kind", json!(kind));
        }
        Op::Init { keys, values } => {
            put("op", json!("init"));
            put("key", keys_json(keys));
            put("value", write_values(values, tensor::write));
        }
        Op::Push {
            keys,
            values,
            priority,
        } => {
            put("op", json!("push"));
            put("key", keys_json(keys));
            put("value", write_values(values, tensor::write));
            put("priority", json!(priority));
        }
        Op::Pull {
            keys,
            outs,
            priority,
            ignore_sparse,
        } => {
            put("op", json!("pull"));
            put("key", keys_json(keys));
            put("out", write_values(outs, write_output));
            put("priority", json!(priority));
            put("ignore_sparse", json!(ignore_sparse));
        }
        Op::RowSparsePull {
            keys,
            outs,
            row_ids,
            priority,
        } => {
            put("op", json!("row_sparse_pull"));
            put("key", keys_json(keys));
            put("out", write_values(outs, write_output));
            put(
                "row_ids",
                match row_ids {
                    RowIdsArg::One(ids) => json!(ids),
                    RowIdsArg::PerOutput(lists) => json!(lists),
                },
            );
            put("priority", json!(priority));
        }
        Op::PushPull { keys, values, outs } => {
            put("op", json!("pushpull"));
            put("key", keys_json(keys));
            put("value", write_values(values, tensor::write));
            if let Some(outs) = outs {
                put("out", write_values(outs, write_output));
            }
        }
        Op::Broadcast { keys, values, outs } => {
            put("op", json!("broadcast"));
            put("key", keys_json(keys));
            put("value", write_values(values, tensor::write));
            put("out", write_values(outs, write_output));
        }
        Op::SetGradientCompression { params } => {
            put("op", json!("set_gradient_compression"));
            let params: Map<String, Json> =
                params.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            put("params", Json::Object(params));
        }
        Op::SetOptimizer { optimizer } => {
            put("op", json!("set_optimizer"));
            // Serialising the spec's optimizer cannot fail (non-finite numbers are text).
            let json = serde_json::to_value(optimizer).unwrap_or_else(|e| json!(e.to_string()));
            put("optimizer", json);
        }
        Op::SetUpdater { updater } => {
            put("op", json!("set_updater"));
            match updater {
                UpdaterSpec::Accumulate { scale } => {
                    put("name", json!("accumulate"));
                    put("scale", f32_json(*scale));
                }
                UpdaterSpec::Custom => put("name", json!("custom")),
            }
        }
        Op::SaveOptimizerStates {
            path,
            dump_optimizer,
        } => {
            put("op", json!("save_optimizer_states"));
            put("path", json!(path));
            put("dump_optimizer", json!(dump_optimizer));
        }
        Op::LoadOptimizerStates { path } => {
            put("op", json!("load_optimizer_states"));
            put("path", json!(path));
        }
        Op::WaitAll => put("op", json!("wait_all")),
    }
    Json::Object(obj)
}

fn key_json(key: &Key) -> Json {
    match key {
        Key::Int(k) => json!(k),
        Key::Str(s) => json!(s),
    }
}

/// A placeholder when the output starts empty (zeros, or no rows), else the full tensor.
fn write_output(value: &Value) -> Json {
    let empty = match value {
        Value::Dense(t) => t.data().to_f64().iter().all(|x| x.to_bits() == 0),
        Value::RowSparse(r) => r.ids().is_empty(),
    };
    if empty {
        tensor::write_placeholder(value)
    } else {
        tensor::write(value)
    }
}

/// Values or outputs in their nesting.
pub fn write_values(values: &Values<Value>, leaf: fn(&Value) -> Json) -> Json {
    match values {
        Values::One(v) => leaf(v),
        Values::List(items) => Json::Array(
            items
                .iter()
                .map(|item| match item {
                    Item::One(v) => leaf(v),
                    Item::Group(g) => Json::Array(g.iter().map(leaf).collect()),
                })
                .collect(),
        ),
    }
}
