//! The bytes a transport sends: a message's skeleton (JSON: keys, optimizers and errors are
//! self-describing serde types) followed by its values' raw
//! element bytes (little-endian), so a 16 MB gradient costs one copy, not a serde walk per
//! element.
//!
//! Layout: `u32` skeleton length (LE), the JSON skeleton, then every value's data in the
//! order the skeleton lists them. [`decode`] checks every length and every value against its
//! shape; malformed bytes are a [`Error::Protocol`], never a panic (R65).

use crate::message::{Payload, Reply, Request};
use kvstore_spec::codec::Compression;
use kvstore_spec::optimizer::Optimizer;
use kvstore_spec::value::{Data, RowSparse, Tensor};
use kvstore_spec::{DType, Device, Error, Key, Result, Value};
use serde::{Deserialize, Serialize};

/// A message between a worker and a server.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Worker to server.
    Request(Request),
    /// Server to worker.
    Reply(Reply),
}

/// A value without its elements; `bytes` of them follow the skeleton.
#[derive(Debug, Serialize, Deserialize)]
struct ValueHead {
    shape: Vec<usize>,
    /// `Some` for row_sparse values.
    ids: Option<Vec<i64>>,
    dtype: DType,
    device: Device,
    bytes: usize,
}

#[derive(Debug, Serialize, Deserialize)]
enum PayloadHead {
    Plain(ValueHead),
    Quantized {
        compression: Compression,
        words: usize,
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

/// The message as bytes.
pub fn encode(message: &Message) -> Result<Vec<u8>> {
    encode_after(&[], message)
}

/// `prefix` (a transport's own header) followed by the message's bytes, in one buffer.
pub fn encode_after(prefix: &[u8], message: &Message) -> Result<Vec<u8>> {
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let mut head = |value: &Value| -> ValueHead {
        let (ids, data) = match value {
            Value::Dense(t) => (None, t.data()),
            Value::RowSparse(r) => (Some(r.ids().to_vec()), r.data()),
        };
        let bytes = data_bytes(data);
        let head = ValueHead {
            shape: value.shape().to_vec(),
            ids,
            dtype: value.dtype(),
            device: value.device(),
            bytes: bytes.len(),
        };
        blobs.push(bytes);
        head
    };
    let skeleton = match message {
        Message::Request(Request::Init { id, key, value }) => Skeleton::Init {
            id: *id,
            key: key.clone(),
            value: head(value),
        },
        Message::Request(Request::Push { id, key, payload }) => Skeleton::Push {
            id: *id,
            key: key.clone(),
            payload: match payload {
                Payload::Plain(value) => PayloadHead::Plain(head(value)),
                Payload::Quantized {
                    compression,
                    words,
                    len,
                } => {
                    blobs.push(words.iter().flat_map(|w| w.to_le_bytes()).collect());
                    PayloadHead::Quantized {
                        compression: *compression,
                        words: words.len(),
                        len: *len,
                    }
                }
            },
        },
        Message::Request(Request::Pull { id, key, rows }) => Skeleton::Pull {
            id: *id,
            key: key.clone(),
            rows: rows.clone(),
        },
        Message::Request(Request::Barrier { id }) => Skeleton::Barrier { id: *id },
        Message::Request(Request::SetOptimizer { id, optimizer }) => Skeleton::SetOptimizer {
            id: *id,
            optimizer: optimizer.clone(),
        },
        Message::Reply(Reply::Done { id }) => Skeleton::Done { id: *id },
        Message::Reply(Reply::Value { id, value }) => Skeleton::Value {
            id: *id,
            value: head(value),
        },
        Message::Reply(Reply::Failed { id, error }) => Skeleton::Failed {
            id: *id,
            error: error.clone(),
        },
    };
    let skeleton = serde_json::to_vec(&skeleton).map_err(|e| Error::Protocol {
        reason: format!("cannot encode a message: {e}"),
    })?;
    let length = u32::try_from(skeleton.len()).map_err(|_| Error::Protocol {
        reason: "a message skeleton over 4 GiB".into(),
    })?;
    let total = prefix.len() + 4 + skeleton.len() + blobs.iter().map(Vec::len).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(prefix);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&skeleton);
    for blob in blobs {
        out.extend_from_slice(&blob);
    }
    Ok(out)
}

/// The message in `bytes`, checked: lengths, shapes, ids and dtypes must agree.
pub fn decode(bytes: &[u8]) -> Result<Message> {
    let malformed = |reason: String| Error::Protocol { reason };
    let (length, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| malformed(format!("{} bytes cannot hold a message", bytes.len())))?;
    let length = u32::from_le_bytes(*length) as usize;
    if length > rest.len() {
        return Err(malformed(format!(
            "a skeleton of {length} bytes in a message of {} bytes",
            bytes.len()
        )));
    }
    let (skeleton, mut data) = rest.split_at(length);
    let skeleton: Skeleton = serde_json::from_slice(skeleton)
        .map_err(|e| malformed(format!("unreadable message skeleton: {e}")))?;
    let mut take = |n: usize| -> Result<&[u8]> {
        if n > data.len() {
            return Err(malformed(format!(
                "a value of {n} bytes with {} bytes left",
                data.len()
            )));
        }
        let (blob, rest) = data.split_at(n);
        data = rest;
        Ok(blob)
    };
    let mut value = |head: ValueHead| -> Result<Value> {
        let blob = take(head.bytes)?;
        let data = data_from_bytes(head.dtype, blob)?;
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
                PayloadHead::Quantized {
                    compression,
                    words,
                    len,
                } => {
                    let bytes = words
                        .checked_mul(4)
                        .ok_or_else(|| malformed(format!("{words} quantised words overflow")))?;
                    let blob = take(bytes)?;
                    let words = blob
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
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
        Skeleton::Done { id } => Message::Reply(Reply::Done { id }),
        Skeleton::Value { id, value: v } => Message::Reply(Reply::Value {
            id,
            value: value(v)?,
        }),
        Skeleton::Failed { id, error } => Message::Reply(Reply::Failed { id, error }),
    };
    if !data.is_empty() {
        return Err(malformed(format!("{} bytes after the message", data.len())));
    }
    Ok(message)
}

/// A value's elements as little-endian bytes, written into one buffer sized up front.
fn data_bytes(data: &Data) -> Vec<u8> {
    fn bytes<const W: usize, T: Copy>(xs: &[T], le: impl Fn(T) -> [u8; W]) -> Vec<u8> {
        let mut out = Vec::with_capacity(xs.len() * W);
        for &x in xs {
            out.extend_from_slice(&le(x));
        }
        out
    }
    match data {
        Data::F32(xs) => bytes(xs, f32::to_le_bytes),
        Data::F16(xs) => bytes(xs, half::f16::to_le_bytes),
        Data::BF16(xs) => bytes(xs, half::bf16::to_le_bytes),
        Data::F64(xs) => bytes(xs, f64::to_le_bytes),
    }
}

fn data_from_bytes(dtype: DType, bytes: &[u8]) -> Result<Data> {
    let width = match dtype {
        DType::F32 => 4,
        DType::F16 | DType::BF16 => 2,
        DType::F64 => 8,
    };
    if bytes.len() % width != 0 {
        return Err(Error::Protocol {
            reason: format!("{} bytes are not whole {dtype} elements", bytes.len()),
        });
    }
    let two = |c: &[u8]| [c[0], c[1]];
    let four = |c: &[u8]| [c[0], c[1], c[2], c[3]];
    let eight = |c: &[u8]| [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
    Ok(match dtype {
        DType::F32 => Data::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(four(c)))
                .collect(),
        ),
        DType::F16 => Data::F16(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes(two(c)))
                .collect(),
        ),
        DType::BF16 => Data::BF16(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes(two(c)))
                .collect(),
        ),
        DType::F64 => Data::F64(
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(eight(c)))
                .collect(),
        ),
    })
}
