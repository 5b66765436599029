//! The wire format: every message survives encode and decode bit for bit, and no byte string
//! makes decode panic; malformed bytes are a typed error (R65).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kvstore_dist::wire::{decode, encode, Message};
use kvstore_dist::{Payload, Reply, Request};
use kvstore_spec::codec::{Compression, CompressionType};
use kvstore_spec::optimizer::{Optimizer, Sgd};
use kvstore_spec::value::{Data, RowSparse, Tensor};
use kvstore_spec::{DType, Device, Error, Key, Value};
use proptest::prelude::*;

fn element() -> impl Strategy<Value = f64> {
    prop_oneof![
        -1e6f64..1e6,
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-0.0),
        Just(f64::MIN_POSITIVE)
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let dtype = prop_oneof![
        Just(DType::F32),
        Just(DType::F16),
        Just(DType::BF16),
        Just(DType::F64)
    ];
    let device = prop_oneof![Just(Device::Cpu(0)), (0u32..4).prop_map(Device::Gpu)];
    (dtype, device, 0usize..4, 1usize..4, any::<bool>()).prop_flat_map(
        |(dtype, device, rows, cols, sparse)| {
            prop::collection::vec(element(), rows * cols).prop_map(move |xs| {
                let data = Data::from_f64(dtype, &xs);
                let value = if sparse {
                    let ids: Vec<i64> = (0..rows as i64).map(|i| i * 2).collect();
                    Value::RowSparse(RowSparse::new([rows * 2 + 1, cols], ids, data).unwrap())
                } else {
                    Value::Dense(Tensor::new([rows, cols], data).unwrap())
                };
                value.on(device)
            })
        },
    )
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        any::<i64>().prop_map(Key::Int),
        "[a-zé]{0,6}".prop_map(Key::Str)
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let compression = Compression::new(CompressionType::TwoBit, 0.5).unwrap();
    prop_oneof![
        (any::<u64>(), key(), value())
            .prop_map(|(id, key, value)| Message::Request(Request::Init { id, key, value })),
        (any::<u64>(), key(), value()).prop_map(|(id, key, value)| {
            Message::Request(Request::Push {
                id,
                key,
                payload: Payload::Plain(value),
            })
        }),
        (
            any::<u64>(),
            key(),
            prop::collection::vec(any::<u32>(), 0..5),
            0usize..80
        )
            .prop_map(move |(id, key, words, len)| {
                let payload = Payload::Quantized {
                    compression,
                    words,
                    len,
                };
                Message::Request(Request::Push { id, key, payload })
            }),
        (
            any::<u64>(),
            key(),
            prop::option::of(prop::collection::vec(any::<i64>(), 0..4))
        )
            .prop_map(|(id, key, rows)| Message::Request(Request::Pull { id, key, rows })),
        any::<u64>().prop_map(|id| Message::Request(Request::Barrier { id })),
        any::<u64>().prop_map(|id| {
            let optimizer = Optimizer::Sgd(Sgd {
                momentum: 0.9,
                ..Sgd::default()
            });
            Message::Request(Request::SetOptimizer { id, optimizer })
        }),
        any::<u64>().prop_map(|id| Message::Reply(Reply::Done { id })),
        (any::<u64>(), value()).prop_map(|(id, value)| Message::Reply(Reply::Value {
            id,
            value: std::sync::Arc::new(value)
        })),
        (any::<u64>(), key()).prop_map(|(id, key)| {
            let error = Error::IncompleteRound {
                key,
                round: 3,
                missing: vec![1, 2],
            };
            Message::Reply(Reply::Failed { id, error })
        }),
    ]
}

proptest! {
    #[test]
    fn r65_every_message_survives_the_wire_bit_for_bit(message in message()) {
        let bytes = encode(&message).unwrap();
        prop_assert_eq!(decode(&bytes).unwrap(), message);
    }

    #[test]
    fn r65_damaged_bytes_are_a_typed_error_never_a_panic(
        message in message(),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut bytes = encode(&message).unwrap();
        for (at, bits) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= bits;
        }
        let cut = cut.index(bytes.len() + 1);
        match decode(&bytes[..cut]) {
            Ok(_) | Err(Error::Protocol { .. }) => {}
            // A flipped shape or id can fail the value's own checks: typed too.
            Err(Error::DataLength { .. } | Error::InvalidRowSparse { .. } | Error::InvalidShape { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }
}

#[test]
fn a_big_gradient_is_its_raw_bytes_plus_a_small_skeleton() {
    let n = 1 << 20;
    let value = Value::Dense(Tensor::new([n], vec![0.5_f32; n]).unwrap());
    let message = Message::Request(Request::Push {
        id: 7,
        key: Key::Int(3),
        payload: Payload::Plain(value),
    });
    let bytes = encode(&message).unwrap();
    assert!(bytes.len() < 4 * n + 256, "{} bytes", bytes.len());
    assert_eq!(decode(&bytes).unwrap(), message);
}
