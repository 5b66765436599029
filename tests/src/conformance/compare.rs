//! Line-by-line comparison of kvstore's and MXNet's output for one trace.
//!
//! - both `ok`: a match;
//! - both errors (any names): a match, counted as error-vs-error;
//! - both outputs: the same nesting, and per tensor the same storage type, shape, dtype,
//!   device and (row_sparse) indices, exactly; data within relative error 1e-6 (absolute 1e-6
//!   near zero), or exactly when the trace uses gradient compression;
//! - MXNet's `Unsupported` and `Skipped` (and `Crash`, `Timeout`): the op is excluded;
//! - anything else is a mismatch.

use serde_json::Value as Json;

/// Relative tolerance of data (and absolute tolerance near zero).
pub const TOLERANCE: f64 = 1e-6;

/// What one line pair amounts to.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Both `ok`.
    Ok,
    /// Both produced outputs, and they agree.
    Out,
    /// Both failed.
    BothError,
    /// MXNet could not run the op (`Unsupported`, `Skipped`, ...): not compared.
    Excluded(String),
    /// They disagree.
    Mismatch(String),
}

impl Verdict {
    /// True for a disagreement.
    pub fn is_mismatch(&self) -> bool {
        matches!(self, Verdict::Mismatch(_))
    }

    /// True when the line was compared (matched or not).
    pub fn compared(&self) -> bool {
        !matches!(self, Verdict::Excluded(_))
    }
}

/// MXNet driver error names that mean "not run", not "failed".
pub const NOT_RUN: &[&str] = &["Unsupported", "Skipped", "Crash", "Timeout"];

/// Compares one output line of kvstore (`kv`) with MXNet's (`mx`).
pub fn compare_line(kv: &Json, mx: &Json, exact: bool) -> Verdict {
    if let Some(name) = mx.get("error").and_then(Json::as_str) {
        if NOT_RUN.contains(&name) {
            let message = mx.get("message").and_then(Json::as_str).unwrap_or("");
            return Verdict::Excluded(format!("{name}: {message}"));
        }
    }
    if kv.get("line") != mx.get("line") {
        return Verdict::Mismatch(format!(
            "line numbers differ: kvstore {} vs MXNet {}",
            kv.get("line").unwrap_or(&Json::Null),
            mx.get("line").unwrap_or(&Json::Null)
        ));
    }
    let kind = |j: &Json| {
        if j.get("error").is_some() {
            "error"
        } else if j.get("out").is_some() {
            "out"
        } else if j.get("ok").is_some() {
            "ok"
        } else {
            "?"
        }
    };
    match (kind(kv), kind(mx)) {
        ("ok", "ok") => Verdict::Ok,
        ("error", "error") => Verdict::BothError,
        ("out", "out") => match same_values(&kv["out"], &mx["out"], exact, "out") {
            Ok(()) => Verdict::Out,
            Err(why) => Verdict::Mismatch(why),
        },
        (a, b) => Verdict::Mismatch(format!("kvstore gives {a}, MXNet gives {b}")),
    }
}

/// Compares two `out` values (a tensor, or lists of tensors and lists).
fn same_values(kv: &Json, mx: &Json, exact: bool, at: &str) -> Result<(), String> {
    match (kv, mx) {
        (Json::Array(a), Json::Array(b)) => {
            if a.len() != b.len() {
                return Err(format!(
                    "{at}: {} items in kvstore, {} in MXNet",
                    a.len(),
                    b.len()
                ));
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                same_values(x, y, exact, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        (Json::Object(_), Json::Object(_)) => same_tensor(kv, mx, exact, at),
        _ => Err(format!("{at}: different nesting")),
    }
}

fn stype(t: &Json) -> &str {
    t.get("stype").and_then(Json::as_str).unwrap_or("default")
}

fn same_tensor(kv: &Json, mx: &Json, exact: bool, at: &str) -> Result<(), String> {
    let (ks, ms) = (stype(kv), stype(mx));
    let ks = if ks == "dense" { "default" } else { ks };
    let ms = if ms == "dense" { "default" } else { ms };
    if ks != ms {
        return Err(format!("{at}: storage type {ks} (kvstore) vs {ms} (MXNet)"));
    }
    for field in ["shape", "dtype", "device"] {
        if kv.get(field) != mx.get(field) {
            return Err(format!(
                "{at}: {field} {} (kvstore) vs {} (MXNet)",
                kv.get(field).unwrap_or(&Json::Null),
                mx.get(field).unwrap_or(&Json::Null)
            ));
        }
    }
    if ks == "row_sparse" && kv.get("indices") != mx.get("indices") {
        return Err(format!(
            "{at}: indices {} (kvstore) vs {} (MXNet)",
            kv.get("indices").unwrap_or(&Json::Null),
            mx.get("indices").unwrap_or(&Json::Null)
        ));
    }
    let empty = Vec::new();
    let a = kv.get("data").and_then(Json::as_array).unwrap_or(&empty);
    let b = mx.get("data").and_then(Json::as_array).unwrap_or(&empty);
    if a.len() != b.len() {
        return Err(format!(
            "{at}: {} elements (kvstore) vs {} (MXNet)",
            a.len(),
            b.len()
        ));
    }
    let dtype = kv.get("dtype").and_then(Json::as_str).unwrap_or("float32");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let (Some(x), Some(y)) = (number(x, dtype), number(y, dtype)) else {
            return Err(format!("{at}: element {i} is not a number: {x} / {y}"));
        };
        if !close(x, y, exact) {
            return Err(format!(
                "{at}: element {i}: {x:?} (kvstore) vs {y:?} (MXNet){}",
                if exact { ", compared exactly" } else { "" }
            ));
        }
    }
    Ok(())
}

/// An element (a JSON number or "nan" / "inf" / "-inf") as the value of `dtype` it denotes:
/// both sides print the shortest decimal that reads back to the value, but two shortest
/// decimals may differ (3.3007812 and 3.3007813 are the same float32).
fn number(x: &Json, dtype: &str) -> Option<f64> {
    let x = match x {
        Json::Number(n) => n.as_f64()?,
        Json::String(s) if s == "nan" => return Some(f64::NAN),
        Json::String(s) if s == "inf" => return Some(f64::INFINITY),
        Json::String(s) if s == "-inf" => return Some(f64::NEG_INFINITY),
        _ => return None,
    };
    let text = x.to_string();
    Some(match dtype {
        "float32" => f64::from(text.parse::<f32>().ok()?),
        "float16" => f64::from(half_round(text.parse::<f32>().ok()?)),
        _ => x,
    })
}

/// f32 to the nearest float16 (ties to even) and back.
fn half_round(x: f32) -> f32 {
    kvstore::DType::F16.round(f64::from(x)) as f32
}

/// Equal within [`TOLERANCE`] (or exactly); NaN equals NaN; a zero equals only a zero of the
/// same sign.
pub fn close(x: f64, y: f64, exact: bool) -> bool {
    if x.is_nan() || y.is_nan() {
        return x.is_nan() && y.is_nan();
    }
    if x == 0.0 && y == 0.0 {
        return x.is_sign_negative() == y.is_sign_negative();
    }
    if x == y {
        return true;
    }
    if exact || x.is_infinite() || y.is_infinite() {
        return false;
    }
    let diff = (x - y).abs();
    diff <= TOLERANCE || diff <= TOLERANCE * x.abs().max(y.abs())
}

/// The verdicts of a whole trace. Missing lines on either side are mismatches.
pub fn compare_trace(kv: &[Json], mx: &[Json], exact: bool) -> Vec<Verdict> {
    let n = kv.len().max(mx.len());
    (0..n)
        .map(|i| match (kv.get(i), mx.get(i)) {
            (Some(a), Some(b)) => compare_line(a, b, exact),
            (Some(_), None) => Verdict::Mismatch("MXNet printed no line for this op".into()),
            (None, Some(_)) => Verdict::Mismatch("kvstore printed no line for this op".into()),
            (None, None) => Verdict::Ok,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tolerance_is_relative_with_an_absolute_floor() {
        assert!(close(1.0, 1.0 + 1e-7, false));
        assert!(!close(1.0, 1.0 + 1e-5, false));
        assert!(close(0.0, 5e-7, false));
        assert!(!close(1.0, 1.0 + 1e-7, true));
        assert!(close(f64::NAN, f64::NAN, true));
        assert!(!close(-0.0, 0.0, true));
        assert!(close(-0.0, -0.0, false));
    }

    #[test]
    fn lines_compare_by_kind_and_tensors_field_by_field() {
        let t = |data: f64| json!({"line": 2, "out": [{"shape": [1], "data": [data], "dtype": "float32", "device": "cpu(0)"}]});
        assert_eq!(compare_line(&t(1.0), &t(1.0), false), Verdict::Out);
        assert!(compare_line(&t(1.0), &t(2.0), false).is_mismatch());
        let e = json!({"line": 2, "error": "X", "message": ""});
        assert_eq!(compare_line(&e, &e, false), Verdict::BothError);
        assert!(compare_line(&t(1.0), &e, false).is_mismatch());
        let skipped = json!({"line": 2, "error": "Skipped", "message": "crash"});
        assert!(!compare_line(&t(1.0), &skipped, false).compared());
        let a = json!({"line": 1, "out": {"shape": [1], "data": [3.3007812], "dtype": "float32", "device": "cpu(0)"}});
        let b = json!({"line": 1, "out": {"shape": [1], "data": [3.3007813], "dtype": "float32", "device": "cpu(0)"}});
        assert_eq!(compare_line(&a, &b, true), Verdict::Out);
        let rs = |ids: Vec<i64>| json!({"line": 2, "out": {"stype": "row_sparse", "shape": [4, 1], "indices": ids, "data": [1.0], "dtype": "float32", "device": "cpu(0)"}});
        assert!(compare_line(&rs(vec![1]), &rs(vec![2]), false).is_mismatch());
    }
}
