//! Optimizer parameters in JSON: a number, or the text `"nan"`, `"inf"` or `"-inf"` for the
//! values JSON cannot hold, so that a refused (non-finite) optimizer still round-trips through
//! traces and state files and is refused again when it is read back (R45).

use serde::{Deserialize, Deserializer, Serializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    Value(f64),
    Text(String),
}

fn text(x: f64) -> &'static str {
    if x.is_nan() {
        "nan"
    } else if x > 0.0 {
        "inf"
    } else {
        "-inf"
    }
}

fn from_number<E: serde::de::Error>(n: Number) -> Result<f64, E> {
    match n {
        Number::Value(x) => Ok(x),
        Number::Text(t) => match t.as_str() {
            "nan" => Ok(f64::NAN),
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            other => Err(E::custom(format!(
                "expected a number, \"nan\", \"inf\" or \"-inf\", found {other:?}"
            ))),
        },
    }
}

/// Writes a finite value as a JSON number and a non-finite one as its text.
pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    if x.is_finite() {
        s.serialize_f64(*x)
    } else {
        s.serialize_str(text(*x))
    }
}

/// Reads a JSON number or one of the texts.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    from_number(Number::deserialize(d)?)
}

/// The same for an optional parameter (`null` is `None`).
pub mod option {
    use super::*;

    /// Writes `None` as `null`.
    pub fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match x {
            Some(x) => super::serialize(x, s),
            None => s.serialize_none(),
        }
    }

    /// Reads `null` as `None`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<Number>::deserialize(d)?
            .map(from_number)
            .transpose()
    }
}
