//! The trace format (docs/trace-format.md): round trips, unreadable input, number printing,
//! recording and replaying.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use half::f16;
use kvstore::trace::{self, op, Op, RowIdsArg, UpdaterSpec};
use kvstore::{
    DType, Data, Device, Item, Key, Keys, NdArray, Optimizer, RowSparse, Sgd, Tensor, Value, Values,
};
use proptest::prelude::*;
use std::sync::{Arc, Mutex};

fn element() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(-0.0),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        -1e6f64..1e6,
        any::<f32>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(f64::from),
    ]
}

fn tensor() -> impl Strategy<Value = Value> {
    let dtype = prop::sample::select(vec![DType::F32, DType::F16, DType::BF16, DType::F64]);
    let device = prop_oneof![
        (0u32..4).prop_map(Device::Cpu),
        (0u32..2).prop_map(Device::Gpu)
    ];
    let shape = prop::collection::vec(0usize..4, 0..3);
    (
        shape,
        dtype,
        device,
        any::<bool>(),
        prop::collection::vec(element(), 16),
        prop::collection::btree_set(0i64..4, 0..4),
    )
        .prop_map(|(shape, dtype, device, sparse, xs, ids)| {
            let xs = |n: usize| {
                Data::from_f64(
                    dtype,
                    &xs.iter().cycle().take(n).copied().collect::<Vec<_>>(),
                )
            };
            if sparse && !shape.is_empty() {
                let ids: Vec<i64> = ids
                    .into_iter()
                    .filter(|&i| (i as usize) < shape[0])
                    .collect();
                let row_len: usize = shape[1..].iter().product();
                Value::RowSparse(
                    RowSparse::new(shape, ids.clone(), xs(ids.len() * row_len))
                        .unwrap()
                        .on(device),
                )
            } else {
                let n = shape.iter().product();
                Value::Dense(Tensor::new(shape, xs(n)).unwrap().on(device))
            }
        })
}

fn values() -> impl Strategy<Value = Values<Value>> {
    let item = prop_oneof![
        tensor().prop_map(Item::One),
        prop::collection::vec(tensor(), 0..3).prop_map(Item::Group)
    ];
    prop_oneof![
        tensor().prop_map(Values::One),
        prop::collection::vec(item, 0..3).prop_map(Values::List)
    ]
}

fn keys() -> impl Strategy<Value = Keys> {
    let key = prop_oneof![
        any::<i64>().prop_map(Key::Int),
        "[a-z\"\\\\ é]{0,4}".prop_map(Key::Str)
    ];
    prop_oneof![
        key.clone().prop_map(Keys::One),
        prop::collection::vec(key, 0..3).prop_map(Keys::List)
    ]
}

fn small_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(0.0f32),
        Just(0.1),
        Just(-2.5),
        any::<f32>().prop_filter("finite", |x| x.is_finite())
    ]
}

fn ops() -> impl Strategy<Value = Op> {
    let row_ids = prop_oneof![
        prop::collection::vec(any::<i64>(), 0..4).prop_map(RowIdsArg::One),
        prop::collection::vec(prop::collection::vec(any::<i64>(), 0..3), 2..4)
            .prop_map(RowIdsArg::PerOutput),
    ];
    let small = || small_f32().prop_map(f64::from);
    let sgd = (
        small(),
        small(),
        small(),
        small(),
        prop::option::of(small()),
    )
        .prop_map(
            |(learning_rate, momentum, wd, rescale_grad, clip_gradient)| {
                Optimizer::Sgd(Sgd {
                    learning_rate,
                    momentum,
                    wd,
                    rescale_grad,
                    clip_gradient,
                    lr_scheduler: None,
                })
            },
        );
    prop_oneof![
        "[a-z_]{0,12}".prop_map(|kind| Op::Create { kind }),
        (keys(), values()).prop_map(|(keys, values)| Op::Init { keys, values }),
        (keys(), values(), any::<i32>()).prop_map(|(keys, values, priority)| Op::Push {
            keys,
            values,
            priority
        }),
        (keys(), values(), any::<i32>(), any::<bool>()).prop_map(
            |(keys, outs, priority, ignore_sparse)| Op::Pull {
                keys,
                outs,
                priority,
                ignore_sparse
            }
        ),
        (keys(), values(), row_ids, any::<i32>()).prop_map(|(keys, outs, row_ids, priority)| {
            Op::RowSparsePull {
                keys,
                outs,
                row_ids,
                priority,
            }
        }),
        (keys(), values(), prop::option::of(values()))
            .prop_map(|(keys, values, outs)| Op::PushPull { keys, values, outs }),
        (keys(), values(), values()).prop_map(|(keys, values, outs)| Op::Broadcast {
            keys,
            values,
            outs
        }),
        prop::collection::vec(("[a-z]{1,8}", "[0-9a-z.]{0,6}"), 0..3).prop_map(|mut params| {
            params.sort();
            params.dedup_by(|a, b| a.0 == b.0);
            Op::SetGradientCompression { params }
        }),
        sgd.prop_map(|optimizer| Op::SetOptimizer { optimizer }),
        prop_oneof![
            small_f32().prop_map(|scale| UpdaterSpec::Accumulate { scale }),
            Just(UpdaterSpec::Custom)
        ]
        .prop_map(|updater| Op::SetUpdater { updater }),
        ("[a-z/._]{1,10}", any::<bool>()).prop_map(|(path, dump_optimizer)| {
            Op::SaveOptimizerStates {
                path,
                dump_optimizer,
            }
        }),
        "[a-z/._]{1,10}".prop_map(|path| Op::LoadOptimizerStates { path }),
        Just(Op::WaitAll),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Every op round-trips: write -> text -> parse gives the same op (data compared bitwise).
    #[test]
    fn trace_ops_round_trip_through_the_format(op in ops()) {
        let text = op::write(&op).to_string();
        prop_assert!(!text.contains('\n'));
        prop_assert_eq!(op::read(&text), Ok(op));
    }

    /// Any text gives ops or a `line N` error, never a panic.
    #[test]
    fn unreadable_text_is_an_error_not_a_panic(text in "[\\[\\]{}\",:0-9a-z_ \\n.-]{0,80}") {
        if let Err(e) = trace::parse(&text) {
            prop_assert!(e.line >= 1 && e.line <= text.lines().count());
        }
    }
}

#[test]
fn unreadable_lines_name_their_line_and_reason() {
    let cases = [
        ("{\"op\":\"wait_all\"}\n\nnot json", 3, "bad JSON"),
        ("{\"op\":\"fly\"}", 1, "unknown op"),
        ("{\"op\":\"push\",\"key\":1}", 1, "missing \"value\""),
        (
            "{\"op\":\"wait_all\"}\n{\"op\":\"create\"}",
            2,
            "first operation",
        ),
        (
            "{\"op\":\"init\",\"key\":1,\"value\":{\"shape\":[1],\"dtype\":\"int8\"}}",
            1,
            "unknown dtype",
        ),
        (
            "{\"op\":\"init\",\"key\":1.5,\"value\":{\"shape\":[1]}}",
            1,
            "key",
        ),
        (
            "{\"op\":\"init\",\"key\":18446744073709551615,\"value\":{\"shape\":[1]}}",
            1,
            "signed 64-bit",
        ),
        (
            "{\"op\":\"init\",\"key\":1,\"value\":{\"shape\":[2],\"data\":[1]}}",
            1,
            "elements",
        ),
        (
            "{\"op\":\"set_updater\",\"name\":\"teleport\"}",
            1,
            "unknown updater",
        ),
    ];
    for (text, line, reason) in cases {
        let e = trace::parse(text).unwrap_err();
        assert_eq!(e.line, line, "{text}");
        assert!(e.message.contains(reason), "{text}: {}", e.message);
        assert!(e.to_string().starts_with(&format!("line {line}: ")));
    }
}

#[test]
fn numbers_are_printed_in_their_shortest_form() {
    let t = |data: Data| {
        op::write_values(
            &Values::One(Value::Dense(Tensor::new([data.len()], data).unwrap())),
            |v| {
                kvstore::trace::op::write(&Op::Init {
                    keys: Keys::One(Key::Int(0)),
                    values: Values::One(v.clone()),
                })["value"]["data"]
                    .clone()
            },
        )
    };
    assert_eq!(
        t(Data::F32(vec![
            0.1,
            -0.0,
            1e20,
            f32::NAN,
            f32::NEG_INFINITY
        ]))
        .to_string(),
        r#"[0.1,-0.0,1e+20,"nan","-inf"]"#
    );
    assert_eq!(
        t(Data::F16(vec![f16::from_f32(0.1), f16::from_f32(65504.0)])).to_string(),
        "[0.1,65500.0]"
    );
    assert_eq!(
        t(Data::F64(vec![0.1, 1.0 / 3.0])).to_string(),
        "[0.1,0.3333333333333333]"
    );
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_recorded_trace_replays_to_the_same_results() {
    let kv = kvstore::create("device").unwrap();
    let sink = Sink::default();
    kv.record(sink.clone());
    let t = |x: f32, d: u32| {
        Tensor::full([2], DType::F32, f64::from(x))
            .unwrap()
            .on(Device::Cpu(d))
    };
    kv.init(vec!["a", "b"], vec![t(0.0, 0), t(1.0, 0)]).unwrap();
    kv.set_gradient_compression(
        kvstore::Compression::new(kvstore::CompressionType::TwoBit, 0.5).unwrap(),
    )
    .unwrap();
    kv.push("a", vec![t(0.3, 0), t(0.7, 1)]).unwrap();
    kv.push("a", vec![t(0.3, 0), t(0.7, 1)]).unwrap();
    let outs = [
        NdArray::zeros([2], DType::F32).unwrap(),
        NdArray::zeros([2], DType::F16).unwrap().on(Device::Cpu(1)),
    ];
    kv.pull("a", &outs[..]).unwrap();
    assert!(kv.pull("zzz", &outs[0]).is_err(), "errors are recorded too");
    kv.set_optimizer(Optimizer::Sgd(Sgd {
        momentum: 0.5,
        ..Sgd::default()
    }))
    .unwrap();
    kv.pushpull("b", t(2.0, 0), &outs[0]).unwrap();
    kv.stop_recording().unwrap();

    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.lines().count(), 9, "{text}");
    assert!(text.starts_with(r#"{"op":"create","kind":"device"}"#));
    let lines = trace::replay_text(&text, None).unwrap();
    let a = Tensor::full([2], DType::F32, 1.0).unwrap();
    assert_eq!(
        lines[5]["out"][0]["data"],
        serde_json::json!([1.0, 1.0]),
        "{text}"
    );
    assert_eq!(outs[0].to_f32(), kv.value_of("b").unwrap().to_f32());
    assert_eq!(lines[6]["error"], "NotInitialized");
    let replayed: Vec<f32> = lines[8]["out"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(
        replayed,
        outs[0].to_f32(),
        "the replayed pushpull equals the live one"
    );
    assert_eq!(kv.value_of("a"), Some(Value::Dense(a)));
}

#[test]
fn a_custom_updater_is_recorded_but_not_replayable() {
    let kv = kvstore::create("local").unwrap();
    let sink = Sink::default();
    kv.record(sink.clone());
    kv.set_updater(|_: &Key, _: &Value, _: &mut Value| Ok(()));
    kv.stop_recording().unwrap();
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let lines = trace::replay_text(&text, None).unwrap();
    assert_eq!(lines[1]["error"], "UnsupportedOperation");
}

#[test]
fn replay_follows_the_kind_override_and_reports_errors_as_lines() {
    let text = "{\"op\":\"create\",\"kind\":\"device\"}\n{\"op\":\"set_gradient_compression\",\"params\":{\"type\":\"2bit\"}}";
    let lines = trace::replay_text(text, Some("local".into())).unwrap();
    assert_eq!(lines[1]["error"], "CompressionNotSupported");
    let lines = trace::replay_text(text, None).unwrap();
    assert_eq!(lines[1], serde_json::json!({"line": 2, "ok": true}));
}

/// Found by the `trace` fuzz target: non-finite SGD parameters were written as `null`, which
/// reads back as the parameter's default, so a recorded `set_optimizer` that failed with
/// `InvalidOptimizer` (R45) replayed as a valid optimizer. They are written as `"nan"`, `"inf"`,
/// `"-inf"` now, like tensor elements. A number beyond the f32 range reads as itself, and is
/// refused like an infinite one (the kernels take `f32` parameters).
#[test]
fn r45_non_finite_optimizer_parameters_survive_the_trace_format() {
    let line = r#"{"op":"set_optimizer","optimizer":{"name":"sgd","learning_rate":1e39}}"#;
    let op = op::read(line).unwrap();
    let Op::SetOptimizer {
        optimizer: Optimizer::Sgd(sgd),
    } = &op
    else {
        panic!("{op:?}");
    };
    assert_eq!(sgd.learning_rate, 1e39);
    assert!(Optimizer::Sgd(sgd.clone()).validate().is_err());
    assert_eq!(op::read(&op::write(&op).to_string()), Ok(op));
    for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let op = Op::SetOptimizer {
            optimizer: Optimizer::Sgd(Sgd {
                momentum: x,
                clip_gradient: Some(x),
                ..Sgd::default()
            }),
        };
        let Ok(Op::SetOptimizer {
            optimizer: Optimizer::Sgd(back),
        }) = op::read(&op::write(&op).to_string())
        else {
            panic!("{x} does not read back");
        };
        assert_eq!(back.momentum.to_bits(), x.to_bits());
        assert_eq!(back.clip_gradient.map(f64::to_bits), Some(x.to_bits()));
        let updater = Op::SetUpdater {
            updater: UpdaterSpec::Accumulate { scale: x as f32 },
        };
        let back = op::read(&op::write(&updater).to_string()).unwrap();
        let Op::SetUpdater {
            updater: UpdaterSpec::Accumulate { scale },
        } = back
        else {
            panic!("{back:?}");
        };
        assert_eq!(scale.to_bits(), (x as f32).to_bits());
    }
    // A replay of the recorded call fails as the call did.
    let kv = kvstore::create("local").unwrap();
    let sink = Sink::default();
    kv.record(sink.clone());
    let bad = Sgd {
        learning_rate: f64::INFINITY,
        ..Sgd::default()
    };
    let live = kv.set_optimizer(Optimizer::Sgd(bad)).unwrap_err();
    kv.stop_recording().unwrap();
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let lines = trace::replay_text(&text, None).unwrap();
    assert_eq!(lines[1]["error"], "InvalidOptimizer", "{text}");
    assert_eq!(trace::variant_name(&live), "InvalidOptimizer");
}

/// A placeholder may take at most 1 GiB (`MAX_PLACEHOLDER_BYTES`): a trace line must not make
/// the reader allocate without bound (R35, docs/trace-format.md).
#[test]
fn r35_a_trace_placeholder_beyond_the_size_limit_is_an_error() {
    // A valid but huge shape used to be allocated in full (and abort on the failed allocation).
    let line = r#"{"op":"pull","key":1,"out":{"shape":[1000000000000]}}"#;
    let error = trace::parse(line).unwrap_err();
    assert_eq!(error.line, 1);
    assert!(error.message.contains("exceeds the trace limit"), "{error}");
    // The limit counts bytes: one element past 2^28 float32 (or 2^27 float64) elements is
    // refused; 2^28 float16 elements take half the limit and are read.
    let at = |shape: &str, dtype: &str| {
        trace::parse(&format!(
            r#"{{"op":"pull","key":1,"out":{{"shape":{shape},"dtype":"{dtype}"}}}}"#
        ))
    };
    assert!(at("[268435457]", "float32").is_err());
    assert!(at("[134217729]", "float64").is_err());
    assert!(at("[4, 1024]", "float64").is_ok());
    assert!(at("[268435456]", "float16").is_ok());
}

/// Found by the `trace` fuzz target: a placeholder (no `data`) whose shape's element count
/// overflows panicked while computing its zeros; it is an unreadable line now (R35).
#[test]
fn r35_a_trace_placeholder_whose_shape_overflows_is_an_error() {
    let line = r#"{"op":"pull","key":1,"out":{"shape":[18446744073709551615,2]}}"#;
    let error = trace::parse(line).unwrap_err();
    assert_eq!(error.line, 1);
    assert!(error.message.contains("elements"), "{error}");
}
