//! Values: dense tensors and row_sparse tensors, each with a dtype and a device.
//!
//! Equality of data is **bitwise** (`-0.0 != 0.0`, a NaN equals the same NaN): that is the
//! equality the equivalence suites use, so `==` means "bit-exact".

use crate::error::{Error, Result};
use half::{bf16, f16};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Element types a value can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE binary64.
    F64,
}

impl DType {
    /// Rounds an exact value to this dtype and back, the way the value would be stored.
    ///
    /// Half types round through f32 first, as MXNet's CPU kernels compute half arithmetic in
    /// float and round the result (R36). For sums and products of two values of the dtype
    /// this double rounding equals a single correct rounding.
    pub fn round(self, x: f64) -> f64 {
        match self {
            DType::F64 => x,
            DType::F32 => f64::from(x as f32),
            DType::F16 => f64::from(f16::from_f32(x as f32)),
            DType::BF16 => f64::from(bf16::from_f32(x as f32)),
        }
    }

    /// The MXNet name of the dtype.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F64 => "float64",
        }
    }

    /// Parses an MXNet dtype name.
    pub fn from_name(name: &str) -> Option<DType> {
        [DType::F32, DType::F16, DType::BF16, DType::F64]
            .into_iter()
            .find(|d| d.name() == name)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a value lives. In the specification a device is only a label: it decides residual
/// slots and reduction order, never numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Device {
    /// Host memory, with an index as MXNet's `cpu(i)`.
    Cpu(u32),
    /// A GPU.
    Gpu(u32),
}

impl Default for Device {
    fn default() -> Self {
        Device::Cpu(0)
    }
}

impl Device {
    /// Parses `cpu(3)` or `gpu(0)`.
    pub fn parse(s: &str) -> Option<Device> {
        let (kind, rest) = s.trim().split_once('(')?;
        let index: u32 = rest.strip_suffix(')')?.trim().parse().ok()?;
        match kind.trim() {
            "cpu" => Some(Device::Cpu(index)),
            "gpu" => Some(Device::Gpu(index)),
            _ => None,
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu(i) => write!(f, "cpu({i})"),
            Device::Gpu(i) => write!(f, "gpu({i})"),
        }
    }
}

/// Dense or row_sparse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StorageType {
    /// Every element stored.
    Dense,
    /// Only listed rows stored; the others read as zero.
    RowSparse,
}

impl fmt::Display for StorageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageType::Dense => "dense",
            StorageType::RowSparse => "row_sparse",
        })
    }
}

/// Elements of one dtype, row-major.
///
/// Serialised as `{"F32": [...]}` with non-finite elements as the strings `"nan"`, `"inf"`,
/// `"-inf"` (JSON has no number for them), so every value survives a round trip.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Data {
    /// float32 elements.
    F32(#[serde(with = "elements")] Vec<f32>),
    /// float16 elements.
    F16(#[serde(with = "elements")] Vec<f16>),
    /// bfloat16 elements.
    BF16(#[serde(with = "elements")] Vec<bf16>),
    /// float64 elements.
    F64(#[serde(with = "elements")] Vec<f64>),
}

/// Serde for element lists: finite values as numbers, the others as text.
mod elements {
    use half::{bf16, f16};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// An element as written.
    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Element {
        Number(f64),
        Text(String),
    }

    /// The element types, converted exactly through f64.
    pub trait Float: Copy {
        fn to_f64(self) -> f64;
        fn from_f64(x: f64) -> Self;
    }

    macro_rules! float {
        ($($t:ty: $to:expr, $from:expr;)*) => {$(
            impl Float for $t {
                fn to_f64(self) -> f64 { $to(self) }
                fn from_f64(x: f64) -> Self { $from(x) }
            }
        )*};
    }
    float! {
        f32: f64::from, |x| x as f32;
        f64: |x| x, |x| x;
        f16: f64::from, f16::from_f64;
        bf16: f64::from, bf16::from_f64;
    }

    pub fn serialize<T: Float, S: Serializer>(xs: &[T], s: S) -> Result<S::Ok, S::Error> {
        let element = |x: f64| match x {
            x if x.is_nan() => Element::Text("nan".into()),
            x if x == f64::INFINITY => Element::Text("inf".into()),
            x if x == f64::NEG_INFINITY => Element::Text("-inf".into()),
            x => Element::Number(x),
        };
        s.collect_seq(xs.iter().map(|x| element(x.to_f64())))
    }

    pub fn deserialize<'de, T: Float, D: Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        let elements = Vec::<Element>::deserialize(d)?;
        elements
            .into_iter()
            .map(|e| match e {
                Element::Number(x) => Ok(T::from_f64(x)),
                Element::Text(t) => match t.as_str() {
                    "nan" => Ok(T::from_f64(f64::NAN)),
                    "inf" => Ok(T::from_f64(f64::INFINITY)),
                    "-inf" => Ok(T::from_f64(f64::NEG_INFINITY)),
                    other => Err(serde::de::Error::custom(format!(
                        "{other:?} is not a number"
                    ))),
                },
            })
            .collect()
    }
}

/// Equal bits, except that any two NaNs are equal: which NaN payload (and sign) an operation
/// with NaN operands returns is unspecified by IEEE 754 and by Rust, and differs between
/// scalar and vectorised code, so no backend can promise it (R60).
fn same_element<T: Copy + PartialOrd>(a: T, b: T, bits: impl Fn(T) -> u64) -> bool {
    // Only NaN is unordered with itself.
    let nan = |x: T| x.partial_cmp(&x).is_none();
    (nan(a) && nan(b)) || bits(a) == bits(b)
}

impl PartialEq for Data {
    /// Bitwise equality, with every NaN equal to every NaN (R60).
    fn eq(&self, other: &Self) -> bool {
        fn all<T: Copy + PartialOrd>(a: &[T], b: &[T], bits: impl Fn(T) -> u64 + Copy) -> bool {
            a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| same_element(x, y, bits))
        }
        match (self, other) {
            (Data::F32(a), Data::F32(b)) => all(a, b, |x| u64::from(x.to_bits())),
            (Data::F16(a), Data::F16(b)) => all(a, b, |x| u64::from(x.to_bits())),
            (Data::BF16(a), Data::BF16(b)) => all(a, b, |x| u64::from(x.to_bits())),
            (Data::F64(a), Data::F64(b)) => all(a, b, |x| x.to_bits()),
            _ => false,
        }
    }
}

impl Eq for Data {}

impl std::hash::Hash for Data {
    /// Hashes what equality compares: the dtype, the length and each element's bits, with every
    /// NaN hashed alike (R60), so model checkers can keep values in their state.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        fn all<T: Copy + PartialOrd, H: std::hash::Hasher>(
            xs: &[T],
            bits: impl Fn(T) -> u64,
            state: &mut H,
        ) {
            state.write_usize(xs.len());
            for &x in xs {
                let nan = x.partial_cmp(&x).is_none();
                state.write_u64(if nan { u64::MAX } else { bits(x) });
            }
        }
        self.dtype().hash(state);
        match self {
            Data::F32(xs) => all(xs, |x| u64::from(x.to_bits()), state),
            Data::F16(xs) => all(xs, |x| u64::from(x.to_bits()), state),
            Data::BF16(xs) => all(xs, |x| u64::from(x.to_bits()), state),
            Data::F64(xs) => all(xs, |x| x.to_bits(), state),
        }
    }
}

/// [`Data`]'s equality for raw f32 buffers (residuals, kernel outputs): bitwise, any NaN
/// equal to any NaN (R60).
pub fn f32_slices_equal(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(&x, &y)| same_element(x, y, |v| u64::from(v.to_bits())))
}

impl Data {
    /// `n` zeros of the dtype.
    pub fn zeros(dtype: DType, n: usize) -> Data {
        Data::from_f64(dtype, &vec![0.0; n])
    }

    /// Rounds each exact value to the dtype.
    pub fn from_f64(dtype: DType, xs: &[f64]) -> Data {
        match dtype {
            DType::F32 => Data::F32(xs.iter().map(|&x| x as f32).collect()),
            DType::F16 => Data::F16(xs.iter().map(|&x| f16::from_f32(x as f32)).collect()),
            DType::BF16 => Data::BF16(xs.iter().map(|&x| bf16::from_f32(x as f32)).collect()),
            DType::F64 => Data::F64(xs.to_vec()),
        }
    }

    /// Every element, exactly, as f64.
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Data::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Data::F16(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Data::BF16(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Data::F64(v) => v.clone(),
        }
    }

    /// Elements `range`, exactly, as f64; `None` when the range is out of bounds.
    pub fn get_f64(&self, range: std::ops::Range<usize>) -> Option<Vec<f64>> {
        Some(match self {
            Data::F32(v) => v.get(range)?.iter().map(|&x| f64::from(x)).collect(),
            Data::F16(v) => v.get(range)?.iter().map(|&x| f64::from(x)).collect(),
            Data::BF16(v) => v.get(range)?.iter().map(|&x| f64::from(x)).collect(),
            Data::F64(v) => v.get(range)?.to_vec(),
        })
    }

    /// Every element converted to f32 (exact for f32, f16 and bf16; rounded for f64).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Data::F32(v) => v.clone(),
            other => other.to_f64().into_iter().map(|x| x as f32).collect(),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
            Data::F64(_) => DType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F16(v) => v.len(),
            Data::BF16(v) => v.len(),
            Data::F64(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same elements converted to `dtype` with MXNet's CPU casting rule (R36).
    pub fn cast(&self, dtype: DType) -> Data {
        if self.dtype() == dtype {
            return self.clone();
        }
        Data::from_f64(dtype, &self.to_f64())
    }
}

impl From<Vec<f32>> for Data {
    fn from(v: Vec<f32>) -> Self {
        Data::F32(v)
    }
}
impl From<Vec<f64>> for Data {
    fn from(v: Vec<f64>) -> Self {
        Data::F64(v)
    }
}
impl From<Vec<f16>> for Data {
    fn from(v: Vec<f16>) -> Self {
        Data::F16(v)
    }
}
impl From<Vec<bf16>> for Data {
    fn from(v: Vec<bf16>) -> Self {
        Data::BF16(v)
    }
}

/// Number of elements of a shape, or a typed error when it overflows.
///
/// The count must also fit a buffer of 8-byte elements, so that no later allocation of the
/// value (or of its dense form) can overflow.
pub fn numel(shape: &[usize]) -> Result<usize> {
    const MAX_ELEMENTS: usize = isize::MAX as usize / 8;
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| Error::InvalidShape {
            shape: shape.to_vec(),
            reason: format!("more than {MAX_ELEMENTS} elements"),
        })
}

/// A dense tensor: a shape, row-major data and a device.
///
/// Deserialisation validates like [`Tensor::new`], so no invalid tensor can be built.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawTensor")]
pub struct Tensor {
    shape: Vec<usize>,
    data: Data,
    device: Device,
}

impl Tensor {
    /// A tensor on `cpu(0)`; the data length must equal the shape's element count.
    ///
    /// ```
    /// use kvstore_spec::Tensor;
    /// let t = Tensor::new([2, 2], vec![1.0f32, 2.0, 3.0, 4.0])?;
    /// assert_eq!(t.shape(), &[2, 2]);
    /// # Ok::<(), kvstore_spec::Error>(())
    /// ```
    pub fn new(shape: impl Into<Vec<usize>>, data: impl Into<Data>) -> Result<Tensor> {
        let shape = shape.into();
        let data = data.into();
        let expected = numel(&shape)?;
        if data.len() != expected {
            return Err(Error::DataLength {
                shape,
                expected,
                found: data.len(),
            });
        }
        Ok(Tensor {
            shape,
            data,
            device: Device::default(),
        })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Vec<usize>>, dtype: DType) -> Result<Tensor> {
        Tensor::full(shape, dtype, 0.0)
    }

    /// A tensor with every element `value` (rounded to `dtype`).
    pub fn full(shape: impl Into<Vec<usize>>, dtype: DType, value: f64) -> Result<Tensor> {
        let shape = shape.into();
        let n = numel(&shape)?;
        Tensor::new(shape, Data::from_f64(dtype, &vec![value; n]))
    }

    /// A one-dimensional f32 tensor with no elements; it holds no heap memory, so it serves
    /// as a free placeholder.
    pub fn default_empty() -> Tensor {
        Tensor {
            shape: vec![0],
            data: Data::F32(Vec::new()),
            device: Device::default(),
        }
    }

    /// The same tensor placed on `device`.
    pub fn on(mut self, device: Device) -> Tensor {
        self.device = device;
        self
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements, row-major.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The elements as f32 (see [`Data::to_f32`]).
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.to_f32()
    }

    /// The elements, moved out (a transport sends them without a copy).
    pub fn into_data(self) -> Data {
        self.data
    }

    /// The float32 elements for writing in place, when the dtype is f32. The length is fixed,
    /// so the tensor stays valid.
    pub fn f32_mut(&mut self) -> Option<&mut [f32]> {
        match &mut self.data {
            Data::F32(xs) => Some(xs),
            _ => None,
        }
    }

    /// The float32 elements, when the dtype is f32.
    pub fn f32s(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(xs) => Some(xs),
            _ => None,
        }
    }

    /// Moves the tensor to `device` in place.
    pub fn set_device(&mut self, device: Device) {
        self.device = device;
    }

    /// Takes the tensor apart, so its buffers can be reused.
    pub fn into_parts(self) -> (Vec<usize>, Data, Device) {
        (self.shape, self.data, self.device)
    }

    /// The same values in another dtype (R36).
    pub fn cast(&self, dtype: DType) -> Tensor {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.cast(dtype),
            device: self.device,
        }
    }
}

/// A row_sparse tensor: listed rows (ids strictly increasing, each below `shape[0]`) and their data.
///
/// Deserialisation validates like [`RowSparse::new`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawRowSparse")]
pub struct RowSparse {
    shape: Vec<usize>,
    ids: Vec<i64>,
    data: Data,
    device: Device,
}

impl RowSparse {
    /// A row_sparse tensor on `cpu(0)`.
    ///
    /// ```
    /// use kvstore_spec::RowSparse;
    /// let r = RowSparse::new([4, 2], vec![1, 3], vec![1.0f32, 1.0, 3.0, 3.0])?;
    /// assert_eq!(r.ids(), &[1, 3]);
    /// # Ok::<(), kvstore_spec::Error>(())
    /// ```
    pub fn new(
        shape: impl Into<Vec<usize>>,
        ids: Vec<i64>,
        data: impl Into<Data>,
    ) -> Result<RowSparse> {
        let shape = shape.into();
        let data = data.into();
        let invalid = |reason: String| Error::InvalidRowSparse {
            shape: shape.clone(),
            reason,
        };
        let Some((&rows, row_shape)) = shape.split_first() else {
            return Err(invalid(
                "a row_sparse value needs at least one dimension".into(),
            ));
        };
        numel(&shape)?;
        if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
            return Err(invalid(format!(
                "row ids must be strictly increasing, found {} then {}",
                w[0], w[1]
            )));
        }
        if let Some(&id) = ids.iter().find(|&&id| id < 0 || id as u64 >= rows as u64) {
            return Err(invalid(format!(
                "row id {id} is out of range for {rows} rows"
            )));
        }
        let expected = ids.len() * numel(row_shape)?;
        if data.len() != expected {
            return Err(invalid(format!(
                "{} rows of {} elements need {expected} elements, got {}",
                ids.len(),
                numel(row_shape)?,
                data.len()
            )));
        }
        Ok(RowSparse {
            shape,
            ids,
            data,
            device: Device::default(),
        })
    }

    /// A row_sparse tensor with no rows: an empty output placeholder.
    pub fn empty(shape: impl Into<Vec<usize>>, dtype: DType) -> Result<RowSparse> {
        RowSparse::new(shape, Vec::new(), Data::zeros(dtype, 0))
    }

    /// The same tensor placed on `device`.
    pub fn on(mut self, device: Device) -> RowSparse {
        self.device = device;
        self
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The listed row ids, strictly increasing.
    pub fn ids(&self) -> &[i64] {
        &self.ids
    }

    /// The listed rows' elements, row after row.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// Number of rows of the full tensor (`shape[0]`).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Number of elements in one row.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// The dense equivalent: listed rows in place, zeros elsewhere.
    pub fn to_dense(&self) -> Tensor {
        let row_len = self.row_len();
        let mut out = vec![0.0; self.rows() * row_len];
        let rows = self.data.to_f64();
        for (k, &id) in self.ids.iter().enumerate() {
            let dst = id as usize * row_len;
            out[dst..dst + row_len].copy_from_slice(&rows[k * row_len..(k + 1) * row_len]);
        }
        Tensor {
            shape: self.shape.clone(),
            data: Data::from_f64(self.dtype(), &out),
            device: self.device,
        }
    }

    /// The float32 rows, when the dtype is f32.
    pub fn f32s(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(xs) => Some(xs),
            _ => None,
        }
    }

    /// Moves the tensor to `device` in place.
    pub fn set_device(&mut self, device: Device) {
        self.device = device;
    }

    /// Takes the tensor apart, so its buffers can be reused.
    pub fn into_parts(self) -> (Vec<usize>, Vec<i64>, Data, Device) {
        (self.shape, self.ids, self.data, self.device)
    }

    /// The same values in another dtype (R36).
    pub fn cast(&self, dtype: DType) -> RowSparse {
        RowSparse {
            data: self.data.cast(dtype),
            ..self.clone()
        }
    }
}

/// A value a key can hold or a call can carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    /// A dense tensor.
    Dense(Tensor),
    /// A row_sparse tensor.
    RowSparse(RowSparse),
}

impl Value {
    /// Moves the value to `device` in place.
    pub fn set_device(&mut self, device: Device) {
        match self {
            Value::Dense(t) => t.set_device(device),
            Value::RowSparse(r) => r.set_device(device),
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Value::Dense(t) => t.shape(),
            Value::RowSparse(r) => r.shape(),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Value::Dense(t) => t.dtype(),
            Value::RowSparse(r) => r.dtype(),
        }
    }

    /// The device.
    pub fn device(&self) -> Device {
        match self {
            Value::Dense(t) => t.device(),
            Value::RowSparse(r) => r.device(),
        }
    }

    /// Dense or row_sparse.
    pub fn stype(&self) -> StorageType {
        match self {
            Value::Dense(_) => StorageType::Dense,
            Value::RowSparse(_) => StorageType::RowSparse,
        }
    }

    /// The same value placed on `device`.
    pub fn on(self, device: Device) -> Value {
        match self {
            Value::Dense(t) => Value::Dense(t.on(device)),
            Value::RowSparse(r) => Value::RowSparse(r.on(device)),
        }
    }

    /// The same values in another dtype (R36).
    pub fn cast(&self, dtype: DType) -> Value {
        match self {
            Value::Dense(t) => Value::Dense(t.cast(dtype)),
            Value::RowSparse(r) => Value::RowSparse(r.cast(dtype)),
        }
    }

    /// The dense equivalent.
    pub fn to_dense(&self) -> Tensor {
        match self {
            Value::Dense(t) => t.clone(),
            Value::RowSparse(r) => r.to_dense(),
        }
    }

    /// Every element of the dense equivalent as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        self.to_dense().to_f32()
    }
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Self {
        Value::Dense(t)
    }
}

impl From<RowSparse> for Value {
    fn from(r: RowSparse) -> Self {
        Value::RowSparse(r)
    }
}

/// A tensor as read, before validation.
#[derive(Deserialize)]
struct RawTensor {
    shape: Vec<usize>,
    data: Data,
    device: Device,
}

impl TryFrom<RawTensor> for Tensor {
    type Error = Error;
    fn try_from(raw: RawTensor) -> Result<Tensor> {
        Ok(Tensor::new(raw.shape, raw.data)?.on(raw.device))
    }
}

/// A row_sparse tensor as read, before validation.
#[derive(Deserialize)]
struct RawRowSparse {
    shape: Vec<usize>,
    ids: Vec<i64>,
    data: Data,
    device: Device,
}

impl TryFrom<RawRowSparse> for RowSparse {
    type Error = Error;
    fn try_from(raw: RawRowSparse) -> Result<RowSparse> {
        Ok(RowSparse::new(raw.shape, raw.ids, raw.data)?.on(raw.device))
    }
}
