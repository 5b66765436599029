//! Tensors in trace JSON: `{"shape":[..],"data":[..],"dtype":"float32","device":"cpu(0)"}`,
//! row_sparse with `"stype":"row_sparse"` and `"indices"`, placeholders without data.

use kvstore_spec::{numel, DType, Data, Device, RowSparse, Tensor, Value};
use serde_json::{json, Map, Number, Value as Json};

/// The most bytes a dense placeholder (an output without `data`) may take: a trace line must
/// not make the reader allocate without bound (docs/trace-format.md).
pub const MAX_PLACEHOLDER_BYTES: usize = 1 << 30;

/// The zeros of a dense placeholder, refused beyond [`MAX_PLACEHOLDER_BYTES`].
fn placeholder_zeros(dtype: DType, shape: &[usize]) -> Result<Data, String> {
    // `numel`: a shape whose element count overflows is an error, not a panic.
    let n = numel(shape).map_err(|e| e.to_string())?;
    let width = match dtype {
        DType::F16 | DType::BF16 => 2,
        DType::F32 => 4,
        DType::F64 => 8,
    };
    if n.saturating_mul(width) > MAX_PLACEHOLDER_BYTES {
        return Err(format!(
            "a placeholder of shape {shape:?} ({n} {} elements) exceeds the trace limit of \
             {MAX_PLACEHOLDER_BYTES} bytes; give its data or a smaller shape",
            dtype.name()
        ));
    }
    Ok(Data::zeros(dtype, n))
}

/// Reads a tensor object; without `data` it is a placeholder (zeros, or no rows).
pub fn read(json: &Json) -> Result<Value, String> {
    let obj = json.as_object().ok_or("a tensor must be a JSON object")?;
    let shape = read_shape(obj.get("shape").ok_or("a tensor needs a \"shape\"")?)?;
    let dtype = match obj.get("dtype") {
        None => DType::F32,
        Some(d) => d
            .as_str()
            .and_then(DType::from_name)
            .ok_or_else(|| format!("unknown dtype {d}"))?,
    };
    let device = match obj.get("device") {
        None => Device::default(),
        Some(d) => d
            .as_str()
            .and_then(Device::parse)
            .ok_or_else(|| format!("unknown device {d}"))?,
    };
    let data = obj.get("data").map(|d| read_data(d, dtype)).transpose()?;
    let value = match obj.get("stype").map(|s| s.as_str()) {
        None | Some(Some("default")) | Some(Some("dense")) => {
            let data = match data {
                Some(data) => data,
                None => placeholder_zeros(dtype, &shape)?,
            };
            Value::Dense(Tensor::new(shape, data).map_err(|e| e.to_string())?)
        }
        Some(Some("row_sparse")) => {
            let ids = match obj.get("indices") {
                None => Vec::new(),
                Some(ids) => read_ints(ids, "indices")?,
            };
            let data = data.unwrap_or_else(|| Data::zeros(dtype, 0));
            Value::RowSparse(RowSparse::new(shape, ids, data).map_err(|e| e.to_string())?)
        }
        Some(other) => return Err(format!("unknown stype {other:?}")),
    };
    Ok(value.on(device))
}

fn read_shape(json: &Json) -> Result<Vec<usize>, String> {
    let dims = json.as_array().ok_or("\"shape\" must be a list of ints")?;
    dims.iter()
        .map(|d| {
            d.as_u64()
                .and_then(|d| usize::try_from(d).ok())
                .ok_or_else(|| format!("bad dimension {d}"))
        })
        .collect()
}

/// A list of ints (row ids, indices).
pub fn read_ints(json: &Json, what: &str) -> Result<Vec<i64>, String> {
    let items = json
        .as_array()
        .ok_or_else(|| format!("\"{what}\" must be a list of ints"))?;
    items
        .iter()
        .map(|x| {
            x.as_i64()
                .ok_or_else(|| format!("\"{what}\": {x} is not a 64-bit int"))
        })
        .collect()
}

fn read_data(json: &Json, dtype: DType) -> Result<Data, String> {
    let items = json
        .as_array()
        .ok_or("\"data\" must be a list of numbers")?;
    let xs: Vec<f64> = items.iter().map(element).collect::<Result<_, _>>()?;
    // Decimal to f64, then rounded to the dtype (through f32 for half types, SPEC R36).
    Ok(Data::from_f64(dtype, &xs))
}

/// One element: a JSON number, or `"nan"`, `"inf"`, `"-inf"`.
fn element(json: &Json) -> Result<f64, String> {
    match json {
        Json::Number(n) => n.as_f64().ok_or_else(|| format!("bad number {n}")),
        Json::String(s) if s == "nan" => Ok(f64::NAN),
        Json::String(s) if s == "inf" => Ok(f64::INFINITY),
        Json::String(s) if s == "-inf" => Ok(f64::NEG_INFINITY),
        other => Err(format!("{other} is not a number")),
    }
}

/// Writes a tensor with its data (and indices for row_sparse).
pub fn write(value: &Value) -> Json {
    let mut obj = Map::new();
    if let Value::RowSparse(r) = value {
        obj.insert("stype".into(), json!("row_sparse"));
        obj.insert("shape".into(), json!(r.shape()));
        obj.insert("indices".into(), json!(r.ids()));
    } else {
        obj.insert("shape".into(), json!(value.shape()));
    }
    let data = match value {
        Value::Dense(t) => t.data(),
        Value::RowSparse(r) => r.data(),
    };
    obj.insert("data".into(), write_data(data));
    obj.insert("dtype".into(), json!(value.dtype().name()));
    obj.insert("device".into(), json!(value.device().to_string()));
    Json::Object(obj)
}

/// Writes a placeholder: the tensor's shape, dtype, device and storage type, no data.
pub fn write_placeholder(value: &Value) -> Json {
    let mut obj = Map::new();
    if matches!(value, Value::RowSparse(_)) {
        obj.insert("stype".into(), json!("row_sparse"));
    }
    obj.insert("shape".into(), json!(value.shape()));
    obj.insert("dtype".into(), json!(value.dtype().name()));
    obj.insert("device".into(), json!(value.device().to_string()));
    Json::Object(obj)
}

fn write_data(data: &Data) -> Json {
    let texts: Vec<Json> = match data {
        Data::F32(v) => v
            .iter()
            .map(|&x| number(f64::from(x), format!("{x:?}")))
            .collect(),
        Data::F64(v) => v.iter().map(|&x| number(x, format!("{x:?}"))).collect(),
        Data::F16(v) => v
            .iter()
            .map(|&x| number(f64::from(x), shortest_half(f64::from(x), DType::F16)))
            .collect(),
        Data::BF16(v) => v
            .iter()
            .map(|&x| number(f64::from(x), shortest_half(f64::from(x), DType::BF16)))
            .collect(),
    };
    Json::Array(texts)
}

/// A finite value as the JSON number whose shortest decimal is `text` (the shortest decimal of
/// the value in its own dtype); non-finite values as strings.
fn number(x: f64, text: String) -> Json {
    if x.is_nan() {
        return json!("nan");
    }
    if x.is_infinite() {
        return json!(if x > 0.0 { "inf" } else { "-inf" });
    }
    // The f64 nearest to `text` prints back as `text` (it has at most 17 digits).
    let nearest = text.parse::<f64>().unwrap_or(x);
    Number::from_f64(nearest).map_or_else(|| json!(text), Json::Number)
}

/// The shortest decimal that reads back (through f32, as [`read`] does) to the same half value.
fn shortest_half(x: f64, dtype: DType) -> String {
    if !x.is_finite() || x == 0.0 {
        return format!("{x:?}");
    }
    (1..=17)
        .map(|digits| format!("{x:.prec$e}", prec = digits - 1))
        .find(|text| {
            text.parse::<f32>()
                .is_ok_and(|y| dtype.round(f64::from(y)) == x)
        })
        .and_then(|text| text.parse::<f64>().ok())
        .map_or_else(|| format!("{x:?}"), |y| format!("{y:?}"))
}
