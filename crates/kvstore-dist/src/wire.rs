//! The bytes a transport sends. A message becomes a [`Frame`]: a small head (a manifest of its
//! bodies, then the JSON skeleton: keys, optimizers and errors are self-describing serde
//! types) and its values' elements as typed, owned [`Body`] buffers, moved out of the message
//! without a copy. MPI sends each body as its own typed message; [`encode`] and [`decode`] put
//! a whole frame in one byte buffer (bodies little-endian) for byte-stream transports and
//! tests.
//!
//! Head layout: `u32` body count, per body a kind byte and a `u64` element count, then a
//! `u32` skeleton length and the skeleton (all little-endian). [`Frame::into_message`] checks
//! every body against the manifest and every value against its shape; malformed input is an
//! [`Error::Protocol`], never a panic (R65).

use crate::message::{Payload, Reply, Request};
use kvstore_spec::codec::Compression;
use kvstore_spec::dist::InitSignature;
use kvstore_spec::optimizer::{Optimizer, State};
use kvstore_spec::value::{Data, RowSparse, Tensor};
use kvstore_spec::{DType, Device, Error, Key, Result, Value};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A message between a worker and a server.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Worker to server.
    Request(Request),
    /// Server to worker.
    Reply(Reply),
}

/// A value without its elements; they are the next body.
#[derive(Debug, Serialize, Deserialize)]
struct ValueHead {
    shape: Vec<usize>,
    /// `Some` for row_sparse values.
    ids: Option<Vec<i64>>,
    dtype: DType,
    device: Device,
}

/// A value's elements (or a compressed push's words) as a transport carries them.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// float32 elements.
    F32(Vec<f32>),
    /// float64 elements.
    F64(Vec<f64>),
    /// float16 or bfloat16 elements, as their bits.
    U16(Vec<u16>),
    /// A quantised push's packed words.
    U32(Vec<u32>),
    /// The float32 elements of a value others hold too (a server's part, answering several
    /// pulls): sent from the shared buffer, never copied.
    Shared(Arc<Value>),
}

/// What a body holds, as the manifest records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// [`Body::F32`].
    F32 = 0,
    /// [`Body::F64`].
    F64 = 1,
    /// [`Body::U16`].
    U16 = 2,
    /// [`Body::U32`].
    U32 = 3,
}

impl BodyKind {
    fn from_byte(byte: u8) -> Result<BodyKind> {
        Ok(match byte {
            0 => BodyKind::F32,
            1 => BodyKind::F64,
            2 => BodyKind::U16,
            3 => BodyKind::U32,
            other => {
                return Err(Error::Protocol {
                    reason: format!("unknown body kind {other}"),
                })
            }
        })
    }

    /// Bytes per element.
    pub fn width(self) -> usize {
        match self {
            BodyKind::F32 | BodyKind::U32 => 4,
            BodyKind::F64 => 8,
            BodyKind::U16 => 2,
        }
    }
}

impl Body {
    /// Its kind.
    pub fn kind(&self) -> BodyKind {
        match self {
            Body::F32(_) | Body::Shared(_) => BodyKind::F32,
            Body::F64(_) => BodyKind::F64,
            Body::U16(_) => BodyKind::U16,
            Body::U32(_) => BodyKind::U32,
        }
    }

    /// The float32 elements, for [`Body::F32`] and [`Body::Shared`].
    pub fn f32s(&self) -> Option<&[f32]> {
        match self {
            Body::F32(xs) => Some(xs),
            Body::Shared(value) => shared_f32s(value),
            _ => None,
        }
    }

    /// How many elements it holds.
    pub fn len(&self) -> usize {
        match self {
            Body::F32(xs) => xs.len(),
            Body::F64(xs) => xs.len(),
            Body::U16(xs) => xs.len(),
            Body::U32(xs) => xs.len(),
            Body::Shared(value) => shared_f32s(value).map_or(0, <[f32]>::len),
        }
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A value's elements, moved.
    fn from_data(data: Data) -> Body {
        match data {
            Data::F32(xs) => Body::F32(xs),
            Data::F64(xs) => Body::F64(xs),
            Data::F16(xs) => Body::U16(xs.into_iter().map(half::f16::to_bits).collect()),
            Data::BF16(xs) => Body::U16(xs.into_iter().map(half::bf16::to_bits).collect()),
        }
    }

    /// The elements of a value of `dtype`, moved.
    fn into_data(self, dtype: DType) -> Result<Data> {
        Ok(match (dtype, self) {
            (DType::F32, Body::F32(xs)) => Data::F32(xs),
            (DType::F32, Body::Shared(value)) => {
                Data::F32(shared_f32s(&value).unwrap_or_default().to_vec())
            }
            (DType::F64, Body::F64(xs)) => Data::F64(xs),
            (DType::F16, Body::U16(xs)) => {
                Data::F16(xs.into_iter().map(half::f16::from_bits).collect())
            }
            (DType::BF16, Body::U16(xs)) => {
                Data::BF16(xs.into_iter().map(half::bf16::from_bits).collect())
            }
            (dtype, body) => {
                return Err(Error::Protocol {
                    reason: format!("a {:?} body for a {dtype} value", body.kind()),
                })
            }
        })
    }

    fn write_le(&self, out: &mut Vec<u8>) {
        match self {
            Body::F32(xs) => xs
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Body::F64(xs) => xs
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Body::U16(xs) => xs
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Body::U32(xs) => xs
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Body::Shared(value) => shared_f32s(value)
                .unwrap_or_default()
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
    }

    fn read_le(kind: BodyKind, bytes: &[u8]) -> Body {
        let four = |c: &[u8]| [c[0], c[1], c[2], c[3]];
        match kind {
            BodyKind::F32 => Body::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(four(c)))
                    .collect(),
            ),
            BodyKind::U32 => Body::U32(
                bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(four(c)))
                    .collect(),
            ),
            BodyKind::F64 => Body::F64(
                bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            ),
            BodyKind::U16 => Body::U16(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
        }
    }
}

/// A value's float32 elements, dense or row_sparse.
fn shared_f32s(value: &Value) -> Option<&[f32]> {
    match value {
        Value::Dense(t) => t.f32s(),
        Value::RowSparse(r) => r.f32s(),
    }
}

/// A message ready for a transport: its head bytes and its bodies.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The manifest and the skeleton.
    pub head: Vec<u8>,
    /// The values' elements, in the order the skeleton lists the values.
    pub bodies: Vec<Body>,
}

#[derive(Debug, Serialize, Deserialize)]
enum PayloadHead {
    Plain(ValueHead),
    Quantized {
        compression: Compression,
        len: usize,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum Skeleton {
    Init {
        id: u64,
        key: Key,
        value: ValueHead,
    },
    Push {
        id: u64,
        key: Key,
        payload: PayloadHead,
    },
    Pull {
        id: u64,
        key: Key,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<Vec<i64>>,
    },
    Barrier {
        id: u64,
    },
    SetOptimizer {
        id: u64,
        optimizer: Optimizer,
    },
    SaveStates {
        id: u64,
    },
    InitCheck {
        id: u64,
        signature: InitSignature,
        refused: bool,
    },
    /// Optimizer states are rare (checkpoints) and small beside their keys: plain JSON.
    LoadStates {
        id: u64,
        optimizer: Option<Optimizer>,
        states: Vec<(Key, State)>,
    },
    States {
        id: u64,
        optimizer: Optimizer,
        states: Vec<(Key, State)>,
    },
    Done {
        id: u64,
    },
    Value {
        id: u64,
        value: ValueHead,
    },
    Failed {
        id: u64,
        error: Error,
    },
}

/// The message as one byte buffer: the frame's head, then its bodies little-endian.
pub fn encode(message: &Message) -> Result<Vec<u8>> {
    encode_after(&[], message)
}

/// `prefix` (a transport's own header) followed by the message's bytes, in one buffer.
pub fn encode_after(prefix: &[u8], message: &Message) -> Result<Vec<u8>> {
    let frame = Frame::new(message.clone())?;
    let total = prefix.len()
        + frame.head.len()
        + frame
            .bodies
            .iter()
            .map(|b| b.len() * b.kind().width())
            .sum::<usize>();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(prefix);
    out.extend_from_slice(&frame.head);
    for body in &frame.bodies {
        body.write_le(&mut out);
    }
    Ok(out)
}

/// The message in `bytes` (as [`encode`] writes them), checked.
pub fn decode(bytes: &[u8]) -> Result<Message> {
    let (manifest, head_len) = read_manifest(bytes)?;
    let (head, mut data) = bytes.split_at(head_len);
    let mut bodies = Vec::with_capacity(manifest.len());
    for (kind, len) in manifest {
        let n = len
            .checked_mul(kind.width())
            .filter(|&n| n <= data.len())
            .ok_or_else(|| Error::Protocol {
                reason: format!(
                    "a body of {len} {kind:?} elements with {} bytes left",
                    data.len()
                ),
            })?;
        let (blob, rest) = data.split_at(n);
        bodies.push(Body::read_le(kind, blob));
        data = rest;
    }
    if !data.is_empty() {
        return Err(Error::Protocol {
            reason: format!("{} bytes after the message", data.len()),
        });
    }
    Frame {
        head: head.to_vec(),
        bodies,
    }
    .into_message()
}

/// The bodies a frame's head announces, and the head's length in bytes: a transport reads
/// this to receive the bodies that follow the head.
pub fn manifest(head: &[u8]) -> Result<Vec<(BodyKind, usize)>> {
    read_manifest(head).map(|(manifest, _)| manifest)
}

fn read_manifest(bytes: &[u8]) -> Result<(Vec<(BodyKind, usize)>, usize)> {
    let malformed = |reason: String| Error::Protocol { reason };
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let end = at
            .checked_add(n)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                malformed(format!("{} bytes cannot hold a message head", bytes.len()))
            })?;
        let slice = bytes.get(at..end).unwrap_or_default();
        at = end;
        Ok(slice)
    };
    let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let count = u32_at(take(4)?);
    let mut manifest = Vec::new();
    for _ in 0..count {
        let entry = take(9)?;
        let kind = BodyKind::from_byte(entry[0])?;
        let mut len = [0u8; 8];
        len.copy_from_slice(&entry[1..9]);
        let len = usize::try_from(u64::from_le_bytes(len))
            .map_err(|_| malformed("a body longer than memory".into()))?;
        manifest.push((kind, len));
    }
    let skeleton = u32_at(take(4)?);
    take(skeleton)?;
    Ok((manifest, at))
}

impl Frame {
    /// Splits a message into its head and its bodies; the values' elements move, uncopied.
    pub fn new(message: Message) -> Result<Frame> {
        let mut bodies: Vec<Body> = Vec::new();
        let mut head = |value: Value| -> ValueHead {
            let (shape, dtype, device) = (value.shape().to_vec(), value.dtype(), value.device());
            let (ids, data) = match value {
                Value::Dense(t) => (None, t.into_data()),
                Value::RowSparse(r) => {
                    let (_, ids, data, _) = r.into_parts();
                    (Some(ids), data)
                }
            };
            bodies.push(Body::from_data(data));
            ValueHead {
                shape,
                ids,
                dtype,
                device,
            }
        };
        let skeleton = match message {
            Message::Request(Request::Init { id, key, value }) => Skeleton::Init {
                id,
                key,
                value: head(value),
            },
            Message::Request(Request::Push { id, key, payload }) => Skeleton::Push {
                id,
                key,
                payload: match payload {
                    Payload::Plain(value) => PayloadHead::Plain(head(value)),
                    Payload::Quantized {
                        compression,
                        words,
                        len,
                    } => {
                        bodies.push(Body::U32(words));
                        PayloadHead::Quantized { compression, len }
                    }
                },
            },
            Message::Request(Request::Pull { id, key, rows }) => Skeleton::Pull { id, key, rows },
            Message::Request(Request::Barrier { id }) => Skeleton::Barrier { id },
            Message::Request(Request::SetOptimizer { id, optimizer }) => {
                Skeleton::SetOptimizer { id, optimizer }
            }
            Message::Request(Request::SaveStates { id }) => Skeleton::SaveStates { id },
            Message::Request(Request::InitCheck {
                id,
                signature,
                refused,
            }) => Skeleton::InitCheck {
                id,
                signature,
                refused,
            },
            Message::Request(Request::LoadStates {
                id,
                optimizer,
                states,
            }) => Skeleton::LoadStates {
                id,
                optimizer,
                states,
            },
            Message::Reply(Reply::States {
                id,
                optimizer,
                states,
            }) => Skeleton::States {
                id,
                optimizer,
                states,
            },
            Message::Reply(Reply::Done { id }) => Skeleton::Done { id },
            Message::Reply(Reply::Value { id, value }) => {
                let value = match Arc::try_unwrap(value) {
                    Ok(owned) => head(owned),
                    Err(shared) if shared_f32s(&shared).is_some() => {
                        let head = ValueHead {
                            shape: shared.shape().to_vec(),
                            ids: match &*shared {
                                Value::Dense(_) => None,
                                Value::RowSparse(r) => Some(r.ids().to_vec()),
                            },
                            dtype: shared.dtype(),
                            device: shared.device(),
                        };
                        bodies.push(Body::Shared(shared));
                        head
                    }
                    Err(shared) => head((*shared).clone()),
                };
                Skeleton::Value { id, value }
            }
            Message::Reply(Reply::Failed { id, error }) => Skeleton::Failed { id, error },
        };
        let skeleton = serde_json::to_vec(&skeleton).map_err(|e| Error::Protocol {
            reason: format!("cannot encode a message: {e}"),
        })?;
        let too_big = || Error::Protocol {
            reason: "a message head over 4 GiB".into(),
        };
        let count = u32::try_from(bodies.len()).map_err(|_| too_big())?;
        let length = u32::try_from(skeleton.len()).map_err(|_| too_big())?;
        let mut out = Vec::with_capacity(8 + 9 * bodies.len() + skeleton.len());
        out.extend_from_slice(&count.to_le_bytes());
        for body in &bodies {
            out.push(body.kind() as u8);
            out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        }
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&skeleton);
        Ok(Frame { head: out, bodies })
    }

    /// The message back, checked: the bodies must be those the manifest announces, and every
    /// value must fit its shape.
    pub fn into_message(self) -> Result<Message> {
        let malformed = |reason: String| Error::Protocol { reason };
        let (manifest, head_len) = read_manifest(&self.head)?;
        if head_len != self.head.len() {
            return Err(malformed(format!(
                "{} bytes after the message head",
                self.head.len() - head_len
            )));
        }
        let announced: Vec<(BodyKind, usize)> =
            self.bodies.iter().map(|b| (b.kind(), b.len())).collect();
        if announced != manifest {
            return Err(malformed(format!(
                "bodies {announced:?} where the head announces {manifest:?}"
            )));
        }
        let skeleton_at = 4 + 9 * manifest.len() + 4;
        let skeleton: Skeleton =
            serde_json::from_slice(self.head.get(skeleton_at..).unwrap_or_default())
                .map_err(|e| malformed(format!("unreadable message skeleton: {e}")))?;
        let mut bodies = self.bodies.into_iter();
        let mut next = move || {
            bodies
                .next()
                .ok_or_else(|| malformed("a value without its body".into()))
        };
        let mut value = |head: ValueHead| -> Result<Value> {
            let data = next()?.into_data(head.dtype)?;
            let value = match head.ids {
                None => Value::Dense(Tensor::new(head.shape, data)?),
                Some(ids) => Value::RowSparse(RowSparse::new(head.shape, ids, data)?),
            };
            Ok(value.on(head.device))
        };
        let message = match skeleton {
            Skeleton::Init { id, key, value: v } => Message::Request(Request::Init {
                id,
                key,
                value: value(v)?,
            }),
            Skeleton::Push { id, key, payload } => {
                let payload = match payload {
                    PayloadHead::Plain(v) => Payload::Plain(value(v)?),
                    PayloadHead::Quantized { compression, len } => {
                        let Body::U32(words) = next()? else {
                            return Err(malformed("quantised words of the wrong kind".into()));
                        };
                        Payload::Quantized {
                            compression,
                            words,
                            len,
                        }
                    }
                };
                Message::Request(Request::Push { id, key, payload })
            }
            Skeleton::Pull { id, key, rows } => Message::Request(Request::Pull { id, key, rows }),
            Skeleton::Barrier { id } => Message::Request(Request::Barrier { id }),
            Skeleton::SetOptimizer { id, optimizer } => {
                Message::Request(Request::SetOptimizer { id, optimizer })
            }
            Skeleton::SaveStates { id } => Message::Request(Request::SaveStates { id }),
            Skeleton::InitCheck {
                id,
                signature,
                refused,
            } => Message::Request(Request::InitCheck {
                id,
                signature,
                refused,
            }),
            Skeleton::LoadStates {
                id,
                optimizer,
                states,
            } => Message::Request(Request::LoadStates {
                id,
                optimizer,
                states,
            }),
            Skeleton::States {
                id,
                optimizer,
                states,
            } => Message::Reply(Reply::States {
                id,
                optimizer,
                states,
            }),
            Skeleton::Done { id } => Message::Reply(Reply::Done { id }),
            Skeleton::Value { id, value: v } => Message::Reply(Reply::Value {
                id,
                value: Arc::new(value(v)?),
            }),
            Skeleton::Failed { id, error } => Message::Reply(Reply::Failed { id, error }),
        };
        if next().is_ok() {
            return Err(malformed("a body no value claims".into()));
        }
        Ok(message)
    }
}
