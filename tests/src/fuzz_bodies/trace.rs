//! Fuzz target `trace`: the trace parser (docs/trace-format.md) and its writer.

use arbitrary::Unstructured;
use kvstore::trace::{self, op};
use serde_json::{json, Map, Value as Json};

/// Most lines of a generated trace.
const MAX_LINES: u8 = 8;

/// Fuzz body of the trace parser, `kvstore::trace::parse`, and the trace writer,
/// `kvstore::trace::op::write` (docs/trace-format.md).
///
/// The input is either raw text (arbitrary bytes, read as UTF-8 with replacement characters) or
/// a trace built from JSON lines that look like operations: known and unknown op names, known
/// fields holding well-formed or malformed tensors, keys, row ids, parameters and optimizers,
/// numbers beyond every range, blank and broken lines. Then:
///
/// - `parse` never panics;
/// - on `Err`, the error names a non-blank line of the text (1-based) with a message, and the
///   lines before it parse;
/// - on `Ok`, the ops carry strictly increasing numbers of non-blank lines, and a `create` comes
///   only first;
/// - round trip: the ops written back with `op::write`, one per line, parse again to the same
///   ops (values compared bit for bit, NaN equal to NaN, R60), numbered 1, 2, ...
pub fn trace(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let text = match u.int_in_range(0u8..=3) {
        Ok(0) => String::from_utf8_lossy(u.take_rest()).into_owned(),
        Ok(_) => generated_trace(&mut u).unwrap_or_default(),
        Err(_) => return,
    };
    check_text(&text);
}

fn check_text(text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    let blank = |line_no: usize| {
        lines
            .get(line_no.wrapping_sub(1))
            .is_none_or(|l| l.trim().is_empty())
    };
    match trace::parse(text) {
        Err(error) => {
            assert!(
                error.line >= 1 && !blank(error.line),
                "the error names line {} of {} lines, which is blank or missing: {error}\n{text:?}",
                error.line,
                lines.len()
            );
            assert!(!error.message.is_empty(), "an error without a message");
            let before = lines[..error.line - 1].join("\n");
            if let Err(earlier) = trace::parse(&before) {
                panic!("the error is at line {}, but the lines before it fail too: {earlier}\n{text:?}", error.line);
            }
        }
        Ok(ops) => {
            let mut last = 0;
            for (i, (line_no, op)) in ops.iter().enumerate() {
                assert!(
                    *line_no > last && !blank(*line_no),
                    "op {i} has line number {line_no} (previous {last}): {text:?}"
                );
                last = *line_no;
                assert!(
                    i == 0 || !matches!(op, trace::Op::Create { .. }),
                    "a create after the first op was accepted: {text:?}"
                );
            }
            let written: Vec<String> = ops
                .iter()
                .map(|(_, op)| op::write(op).to_string())
                .collect();
            let again = match trace::parse(&written.join("\n")) {
                Ok(again) => again,
                Err(error) => {
                    panic!("round trip: the written trace does not parse: {error}\nread:    {text:?}\nwritten: {written:#?}")
                }
            };
            assert_eq!(again.len(), ops.len(), "round trip: number of ops");
            for (i, ((_, want), (line_no, got))) in ops.iter().zip(&again).enumerate() {
                assert_eq!(*line_no, i + 1, "round trip: line numbers");
                // `Op`'s derived equality compares optimizer parameters with f32 `==`, under
                // which NaN differs from itself; their debug texts do not (R60).
                assert!(
                    want == got || format!("{want:?}") == format!("{got:?}"),
                    "round trip: op {i} changed\nread:    {want:?}\nwritten: {}\nreread:  {got:?}",
                    written[i]
                );
            }
        }
    }
}

const OPS: [&str; 14] = [
    "create",
    "init",
    "push",
    "pull",
    "row_sparse_pull",
    "pushpull",
    "broadcast",
    "set_gradient_compression",
    "set_optimizer",
    "set_updater",
    "save_optimizer_states",
    "load_optimizer_states",
    "wait_all",
    "nope",
];

const FIELDS: [&str; 14] = [
    "kind",
    "key",
    "value",
    "out",
    "priority",
    "ignore_sparse",
    "row_ids",
    "params",
    "optimizer",
    "name",
    "scale",
    "path",
    "dump_optimizer",
    "extra",
];

/// A whole trace: lines that look like operations, sometimes blank, broken or raw.
fn generated_trace(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let n = u.int_in_range(0..=MAX_LINES)?;
    let mut lines = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let line = match u.int_in_range(0u8..=15)? {
            0 => String::new(),
            1 => " \t".to_owned(),
            2 => u.arbitrary::<String>()?,
            3 => {
                // A line cut short.
                let mut line = op_line(u)?.to_string();
                let at = u.choose_index(line.len() + 1)?;
                while !line.is_char_boundary(at.min(line.len())) {
                    line.pop();
                }
                line.truncate(at.min(line.len()));
                line
            }
            _ => op_line(u)?.to_string(),
        };
        lines.push(line);
    }
    let sep = if u.ratio(1u8, 8)? { "\r\n" } else { "\n" };
    Ok(lines.join(sep))
}

/// One operation object: an op name and some fields, mostly the op's own.
fn op_line(u: &mut Unstructured<'_>) -> arbitrary::Result<Json> {
    let name = *u.choose(&OPS)?;
    let mut obj = Map::new();
    if u.ratio(15u8, 16)? {
        obj.insert("op".into(), json!(name));
    }
    let own: &[&str] = match name {
        "create" => &["kind"],
        "init" => &["key", "value"],
        "push" => &["key", "value", "priority"],
        "pull" => &["key", "out", "priority", "ignore_sparse"],
        "row_sparse_pull" => &["key", "out", "row_ids", "priority"],
        "pushpull" => &["key", "value", "out"],
        "broadcast" => &["key", "value", "out"],
        "set_gradient_compression" => &["params"],
        "set_optimizer" => &["optimizer"],
        "set_updater" => &["name", "scale"],
        "save_optimizer_states" => &["path", "dump_optimizer"],
        "load_optimizer_states" => &["path"],
        _ => &[],
    };
    for field in own {
        if u.ratio(7u8, 8)? {
            obj.insert((*field).into(), field_value(u, field)?);
        }
    }
    for _ in 0..u.int_in_range(0u8..=1)? {
        let field = *u.choose(&FIELDS)?;
        obj.insert(field.into(), field_value(u, field)?);
    }
    Ok(Json::Object(obj))
}

fn field_value(u: &mut Unstructured<'_>, field: &str) -> arbitrary::Result<Json> {
    if u.ratio(1u8, 16)? {
        return any_json(u, 2);
    }
    Ok(match field {
        "kind" => json!(*u.choose(&["local", "device", "nccl", "Device", "dist_sync", ""])?),
        "key" => keys(u)?,
        "value" | "out" => values(u)?,
        "priority" | "scale" => number(u)?,
        "ignore_sparse" | "dump_optimizer" => json!(u.arbitrary::<bool>()?),
        "row_ids" => {
            if u.arbitrary()? {
                int_list(u)?
            } else {
                let n = u.int_in_range(0u8..=3)?;
                Json::Array(
                    (0..n)
                        .map(|_| int_list(u))
                        .collect::<arbitrary::Result<_>>()?,
                )
            }
        }
        "params" => {
            let mut params = Map::new();
            for _ in 0..u.int_in_range(0u8..=3)? {
                let name = *u.choose(&["type", "threshold", "other"])?;
                let value = match u.int_in_range(0u8..=3)? {
                    0 => json!(*u.choose(&["2bit", "1bit", "0.5", "x"])?),
                    1 => number(u)?,
                    2 => json!(u.arbitrary::<bool>()?),
                    _ => any_json(u, 1)?,
                };
                params.insert(name.into(), value);
            }
            Json::Object(params)
        }
        "optimizer" => {
            let mut obj = Map::new();
            if u.ratio(7u8, 8)? {
                obj.insert("name".into(), json!(*u.choose(&["sgd", "adam"])?));
            }
            for name in [
                "learning_rate",
                "momentum",
                "wd",
                "rescale_grad",
                "clip_gradient",
            ] {
                if u.arbitrary()? {
                    let value = if u.ratio(1u8, 8)? {
                        Json::Null
                    } else {
                        number(u)?
                    };
                    obj.insert(name.into(), value);
                }
            }
            Json::Object(obj)
        }
        "name" => json!(*u.choose(&["accumulate", "custom", "sgd"])?),
        "path" => json!(*u.choose(&["states.json", "", "/nonexistent/x"])?),
        _ => any_json(u, 2)?,
    })
}

fn keys(u: &mut Unstructured<'_>) -> arbitrary::Result<Json> {
    let key = |u: &mut Unstructured<'_>| -> arbitrary::Result<Json> {
        Ok(match u.int_in_range(0u8..=7)? {
            0..=2 => json!(u.int_in_range(-1i64..=5)?),
            3 => json!(*u.choose(&[i64::MIN, i64::MAX])?),
            4 => json!(u64::MAX),
            5 => json!(1.5),
            6 => json!(*u.choose(&["w", "", "emb"])?),
            _ => any_json(u, 1)?,
        })
    };
    if u.arbitrary()? {
        key(u)
    } else {
        let n = u.int_in_range(0u8..=3)?;
        Ok(Json::Array(
            (0..n).map(|_| key(u)).collect::<arbitrary::Result<_>>()?,
        ))
    }
}

/// A tensor, a list of tensors, or a list of tensors and lists of tensors.
fn values(u: &mut Unstructured<'_>) -> arbitrary::Result<Json> {
    Ok(match u.int_in_range(0u8..=2)? {
        0 => tensor(u)?,
        _ => {
            let n = u.int_in_range(0u8..=3)?;
            let mut items = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                if u.ratio(1u8, 4)? {
                    let m = u.int_in_range(0u8..=2)?;
                    items.push(Json::Array(
                        (0..m)
                            .map(|_| tensor(u))
                            .collect::<arbitrary::Result<_>>()?,
                    ));
                } else {
                    items.push(tensor(u)?);
                }
            }
            Json::Array(items)
        }
    })
}

fn tensor(u: &mut Unstructured<'_>) -> arbitrary::Result<Json> {
    let mut obj = Map::new();
    let shape: Vec<u64> = u
        .choose(&[&[2][..], &[3, 2], &[4, 1], &[], &[0], &[2, 0, 3]])?
        .to_vec();
    let numel: u64 = shape.iter().product();
    let sparse = u.ratio(1u8, 4)?;
    if u.ratio(15u8, 16)? {
        let shape = if u.ratio(1u8, 16)? {
            json!([u64::MAX, 2])
        } else {
            json!(shape)
        };
        obj.insert("shape".into(), shape);
    }
    let rows = shape.first().copied().unwrap_or(0);
    let row_len: u64 = shape.iter().skip(1).product();
    let ids: Vec<i64> = if sparse {
        let mut ids = Vec::new();
        for row in 0..rows.min(4) {
            if u.arbitrary()? {
                ids.push(row as i64);
            }
        }
        if u.ratio(1u8, 8)? {
            ids.push(*u.choose(&[-1, i64::MAX, 0])?);
        }
        ids
    } else {
        Vec::new()
    };
    if sparse {
        obj.insert("stype".into(), json!("row_sparse"));
        if u.ratio(7u8, 8)? {
            obj.insert("indices".into(), json!(ids));
        }
    } else if u.ratio(1u8, 8)? {
        obj.insert(
            "stype".into(),
            json!(*u.choose(&["default", "dense", "csr"])?),
        );
    }
    if u.ratio(3u8, 4)? {
        let mut n = if sparse {
            ids.len() as u64 * row_len
        } else {
            numel
        };
        match u.int_in_range(0u8..=15)? {
            0 => n = n.saturating_sub(1),
            1 => n += 1,
            _ => {}
        }
        let data = (0..n.min(16))
            .map(|_| element(u))
            .collect::<arbitrary::Result<Vec<Json>>>()?;
        obj.insert("data".into(), Json::Array(data));
    }
    if u.arbitrary()? {
        let dtype = *u.choose(&["float32", "float16", "bfloat16", "float64", "int8"])?;
        obj.insert("dtype".into(), json!(dtype));
    }
    if u.arbitrary()? {
        let device = *u.choose(&[
            "cpu(0)",
            "cpu(1)",
            "gpu(0)",
            " cpu( 2 ) ",
            "tpu(0)",
            "cpu(-1)",
        ])?;
        obj.insert("device".into(), json!(device));
    }
    Ok(Json::Object(obj))
}

/// A tensor element: a number (exact, rounded by half types, huge, tiny, negative zero), a
/// non-finite value as text, or something that is not an element.
fn element(u: &mut Unstructured<'_>) -> arbitrary::Result<Json> {
    Ok(match u.int_in_range(0u8..=11)? {
        0 => json!(1),
        1 => json!(-0.0),
        2 => json!(0.1),
        3 => json!(*u.choose(&["nan", "inf", "-inf"])?),
        4 => json!(65520.0),
        5 => json!(1e-8),
        6 => json!(u.arbitrary::<i64>()?),
        7 => json!(*u.choose(&["NaN", "x", ""])?),
        8 => json!(f64::from(f32::from_bits(u.arbitrary()?))),
        _ => number(u)?,
    })
}

/// A JSON number, or (rarely) a value that is not one.
fn number(u: &mut Unstructured<'_>) -> arbitrary::Result<Json> {
    Ok(match u.int_in_range(0u8..=11)? {
        0 => json!(0.1),
        1 => json!(0),
        2 => json!(-2),
        3 => json!(1e39),
        4 => json!(-1e300),
        5 => json!(u.arbitrary::<i64>()?),
        6 => json!(u.arbitrary::<u64>()?),
        7 => json!(f64::from_bits(u.arbitrary()?)),
        8 => json!(f64::from(f32::from_bits(u.arbitrary()?))),
        9 => json!(i64::from(i32::MAX) + 1),
        10 => json!("0.5"),
        _ => json!(0.9),
    })
}

fn int_list(u: &mut Unstructured<'_>) -> arbitrary::Result<Json> {
    let n = u.int_in_range(0u8..=4)?;
    let ids = (0..n)
        .map(|_| {
            Ok(match u.int_in_range(0u8..=7)? {
                0..=3 => json!(u.int_in_range(-1i64..=4)?),
                4 => json!(*u.choose(&[i64::MIN, i64::MAX])?),
                5 => json!(u64::MAX),
                6 => json!(1.0),
                _ => json!("1"),
            })
        })
        .collect::<arbitrary::Result<Vec<Json>>>()?;
    Ok(Json::Array(ids))
}

/// Any JSON value, nested up to `depth`.
fn any_json(u: &mut Unstructured<'_>, depth: u8) -> arbitrary::Result<Json> {
    Ok(match u.int_in_range(0u8..=6)? {
        0 => Json::Null,
        1 => json!(u.arbitrary::<bool>()?),
        2 => number(u)?,
        3 => json!(u.arbitrary::<String>()?),
        4 if depth > 0 => {
            let n = u.int_in_range(0u8..=3)?;
            Json::Array(
                (0..n)
                    .map(|_| any_json(u, depth - 1))
                    .collect::<arbitrary::Result<_>>()?,
            )
        }
        5 if depth > 0 => {
            let mut obj = Map::new();
            for _ in 0..u.int_in_range(0u8..=3)? {
                let field = *u.choose(&FIELDS)?;
                obj.insert(field.into(), any_json(u, depth - 1)?);
            }
            Json::Object(obj)
        }
        _ => json!(u.arbitrary::<i64>()?),
    })
}
