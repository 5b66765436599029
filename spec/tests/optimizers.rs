//! Rules R70-R76: NAG, Adam, AdaGrad, RMSProp, FTRL, schedules and per-key states.
//!
//! Each optimizer runs three pushes of `g = [1, 4, -0.2]` (or row 1 alone, `4`, as a row_sparse
//! gradient) into `w = [1, -2, 0.3]` (shape [3, 1]) with `lr 0.1, wd 0.01, rescale_grad 0.5`
//! (and clip 0.75 where noted), and the weights after every push must equal, bit for bit, what
//! MXNet 1.9.1's kvstore produced for the same calls (`mx.kv.create('local')`, `set_optimizer`,
//! `push`, `pull`; the script is in docs/conformance.md, "Optimizer bits").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use kvstore_spec::optimizer::{
    AdaGrad, Adam, Ftrl, LrScheduler, Nag, Optimizer, RmsProp, Sgd, WarmupMode,
};
use kvstore_spec::{DType, Device, Error, Value};

const W0: [f32; 3] = [1.0, -2.0, 0.3];
const G: [f32; 3] = [1.0, 4.0, -0.2];

/// The weights' bits after each of three pushes.
fn trajectory(optimizer: Optimizer, sparse: bool) -> Vec<[u32; 3]> {
    let mut kv = store("local");
    kv.init(&[(k(3), dense(&[3, 1], &W0))]).unwrap();
    kv.set_optimizer(optimizer).unwrap();
    (0..3)
        .map(|_| {
            let grad = if sparse {
                rsp(&[3, 1], &[1], &[G[1]])
            } else {
                dense(&[3, 1], &G)
            };
            kv.push(&[(k(3), grad)]).unwrap();
            let w = pull1(&mut kv, k(3), &[3, 1]);
            [w[0].to_bits(), w[1].to_bits(), w[2].to_bits()]
        })
        .collect()
}

fn assert_bits(name: &str, optimizer: Optimizer, sparse: bool, mxnet: [[u32; 3]; 3]) {
    let ours = trajectory(optimizer, sparse);
    let hex = |t: &[[u32; 3]]| format!("{:08x?}", t);
    assert_eq!(hex(&ours), hex(&mxnet), "{name}: kvstore vs MXNet 1.9.1");
}

#[test]
fn r72_nag_follows_the_kernel_formula() {
    let nag = |momentum, clip_gradient| {
        Optimizer::Nag(Nag {
            learning_rate: 0.1,
            momentum,
            wd: 0.01,
            rescale_grad: 0.5,
            clip_gradient,
            lr_scheduler: None,
        })
    };
    assert_bits(
        "nag momentum 0.9, clip 0.75",
        nag(0.9, Some(0.75)),
        false,
        [
            [0x3f673190, 0xc008e076, 0x3ea30942],
            [0x3f43e10b, 0xc015838d, 0x3eb07833],
            [0x3f172916, 0xc025841f, 0x3ec17ae9],
        ],
    );
    assert_bits(
        "nag without momentum (sgd_update)",
        nag(0.0, None),
        false,
        [
            [0x3f72f1aa, 0xc00cac08, 0x3e9e9100],
            [0x3f65e6ac, 0xc01954d2, 0x3ea38720],
            [0x3f58df04, 0xc025fa5e, 0x3ea87bfb],
        ],
    );
    // A row_sparse gradient updates every row: MXNet densifies it (rescale 1 here).
    let sparse = Optimizer::Nag(Nag {
        learning_rate: 0.1,
        momentum: 0.9,
        wd: 0.01,
        ..Nag::default()
    });
    assert_bits(
        "nag, row_sparse gradient",
        sparse,
        true,
        [
            [0x3f7f837b, 0xc0306595, 0x3e994ee4],
            [0x3f7ed237, 0xc0754b76, 0x3e98e488],
            [0x3f7df1bf, 0xc0a64519, 0x3e985dd9],
        ],
    );
}

#[test]
fn r73_adam_bias_correction_and_lazy_rows() {
    let adam = |lazy_update, clip_gradient| {
        Optimizer::Adam(Adam {
            learning_rate: 0.1,
            wd: 0.01,
            rescale_grad: 0.5,
            clip_gradient,
            lazy_update,
            ..Adam::default()
        })
    };
    assert_bits(
        "adam, clip 0.75",
        adam(true, Some(0.75)),
        false,
        [
            [0x3f66665c, 0xc0066669, 0x3eccccd8],
            [0x3f4ccd0f, 0xc00cccd2, 0x3efffc62],
            [0x3f333452, 0xc013333b, 0x3f1992d8],
        ],
    );
    assert_bits(
        "adam lazy, row_sparse gradient, clip 0.75",
        adam(true, Some(0.75)),
        true,
        [
            [0x3f800000, 0xc0066669, 0x3e99999a],
            [0x3f800000, 0xc00cccd2, 0x3e99999a],
            [0x3f800000, 0xc013333b, 0x3e99999a],
        ],
    );
    assert_bits(
        "adam not lazy, row_sparse gradient",
        adam(false, None),
        true,
        [
            [0x3f666690, 0xc0066669, 0x3e4ccf64],
            [0x3f4ce816, 0xc00ccccd, 0x3dd2e837],
            [0x3f339b84, 0xc0133327, 0x3c5a16b0],
        ],
    );
}

#[test]
fn r74_adagrad_dense_and_sparse() {
    assert_bits(
        "adagrad, clip 0.75",
        Optimizer::AdaGrad(AdaGrad {
            learning_rate: 0.1,
            wd: 0.01,
            rescale_grad: 0.5,
            clip_gradient: Some(0.75),
            ..AdaGrad::default()
        }),
        false,
        [
            [0x3f6624dd, 0xc00645a2, 0x3ecca56a],
            [0x3f53cfda, 0xc00aa9c8, 0x3ef0a531],
            [0x3f44d1e8, 0xc00e3837, 0x3f06fb82],
        ],
    );
    let sparse = |wd| {
        Optimizer::AdaGrad(AdaGrad {
            learning_rate: 0.1,
            rescale_grad: 0.5,
            wd,
            ..AdaGrad::default()
        })
    };
    assert_bits(
        "adagrad, row_sparse gradient (lazy)",
        sparse(0.0),
        true,
        [
            [0x3f800000, 0xc0066666, 0x3e99999a],
            [0x3f800000, 0xc00aecec, 0x3e99999a],
            [0x3f800000, 0xc00e9eda, 0x3e99999a],
        ],
    );
    // MXNet refuses weight decay with a row_sparse gradient (and prints and swallows the
    // error); kvstore reports it and changes nothing (R22).
    let mut kv = store("local");
    kv.init(&[(k(3), dense(&[3, 1], &W0))]).unwrap();
    kv.set_optimizer(sparse(0.01)).unwrap();
    let before = kv.observable();
    let err = kv.push(&[(k(3), rsp(&[3, 1], &[1], &[4.0]))]);
    assert!(matches!(err, Err(Error::Updater { .. })), "{err:?}");
    assert_eq!(kv.observable(), before);
    kv.push(&[(k(3), dense(&[3, 1], &G))]).unwrap();
}

#[test]
fn r75_rmsprop_plain_and_centered() {
    assert_bits(
        "rmsprop",
        Optimizer::RmsProp(RmsProp {
            learning_rate: 0.1,
            wd: 0.01,
            rescale_grad: 0.5,
            ..RmsProp::default()
        }),
        false,
        [
            [0x3f2f0bb4, 0xc0143d13, 0x3f1dc0fe],
            [0x3ee8fa2f, 0xc022e8f9, 0x3f578dae],
            [0x3e8716d3, 0xc02f3071, 0x3f83bcec],
        ],
    );
    assert_bits(
        "rmsprop centered, clip_weights 1.5",
        Optimizer::RmsProp(RmsProp {
            learning_rate: 0.1,
            wd: 0.01,
            rescale_grad: 0.5,
            centered: true,
            clip_weights: Some(1.5),
            ..RmsProp::default()
        }),
        false,
        [
            [0x3f2aaaac, 0xbfc00000, 0x3f222201],
            [0x3de682c0, 0xbfc00000, 0x3f978c12],
            [0xbf1bef8e, 0xbfc00000, 0x3fc00000],
        ],
    );
    assert_bits(
        "rmsprop, row_sparse gradient (every row)",
        Optimizer::RmsProp(RmsProp {
            learning_rate: 0.1,
            wd: 0.01,
            ..RmsProp::default()
        }),
        true,
        [
            [0x3f2f160e, 0xc0143d13, 0xbc6d5420],
            [0x3eff85da, 0xc022ea68, 0x3ac360e0],
            [0x3ebd2062, 0xc02f33cb, 0xb97cd678],
        ],
    );
}

#[test]
fn r76_ftrl_follows_the_kernel_formula() {
    assert_bits(
        "ftrl",
        Optimizer::Ftrl(Ftrl {
            learning_rate: 0.1,
            wd: 0.01,
            rescale_grad: 0.5,
            ..Ftrl::default()
        }),
        false,
        [
            [0x3e992814, 0xbfb318ff, 0x3d111705],
            [0x3e8a2b50, 0xbfb9c860, 0x3d34f18f],
            [0x3e78ea44, 0xbfbf841d, 0x3d57d3a6],
        ],
    );
    assert_bits(
        "ftrl, row_sparse gradient (every row)",
        Optimizer::Ftrl(Ftrl {
            learning_rate: 0.1,
            wd: 0.01,
            ..Ftrl::default()
        }),
        true,
        [
            [0x00000000, 0xbfd6f8ae, 0x00000000],
            [0x00000000, 0xbfdea95c, 0x00000000],
            [0x00000000, 0xbfe51e65, 0x00000000],
        ],
    );
}

#[test]
fn r70_a_fresh_key_state_holds_zeros_and_counts_updates() {
    let mut kv = store("local");
    kv.init(&[
        (k(3), dense(&[3, 1], &W0)),
        (k(4), dense(&[2], &[1.0, 1.0])),
    ])
    .unwrap();
    kv.set_optimizer(Optimizer::RmsProp(RmsProp {
        centered: true,
        ..RmsProp::default()
    }))
    .unwrap();
    kv.push(&[(k(3), dense(&[3, 1], &G))]).unwrap();
    kv.push(&[(k(3), dense(&[3, 1], &G)), (k(4), dense(&[2], &[1.0, 2.0]))])
        .unwrap();
    let observed = kv.observable();
    let states = observed.optimizer.as_ref().unwrap().states();
    assert_eq!(states[&k(3)].updates, 2);
    assert_eq!(states[&k(4)].updates, 1);
    for state in states.values() {
        assert_eq!(
            state.slots.len(),
            3,
            "centered RMSProp keeps n, g and delta"
        );
    }
    assert_eq!(states[&k(4)].slots[0].shape(), &[2]);
    // States that do not fit (another optimizer's) are refused by the load (R47), which
    // changes nothing.
    let saved = kv.save_optimizer_states(false).unwrap();
    kv.set_optimizer(Optimizer::Adam(Adam::default())).unwrap();
    let before = kv.observable();
    let err = kv.load_optimizer_states(&saved);
    assert!(
        matches!(&err, Err(Error::InvalidState { reason }) if reason.contains("key 3")),
        "{err:?}"
    );
    assert_eq!(kv.observable(), before);
    // A state for a key the store does not hold is kept, and checked at that key's first
    // update: it fails (`Updater`) and changes nothing.
    let mut other = store("local");
    other.init(&[(k(9), dense(&[2], &[1.0, 1.0]))]).unwrap();
    other
        .set_optimizer(Optimizer::Adam(Adam::default()))
        .unwrap();
    other.load_optimizer_states(&saved).unwrap();
    other
        .init(&[(k(4), dense(&[3], &[1.0, 1.0, 1.0]))])
        .unwrap();
    let before = other.observable();
    let err = other.push(&[(k(4), dense(&[3], &[1.0, 2.0, 3.0]))]);
    assert!(matches!(err, Err(Error::Updater { .. })), "{err:?}");
    assert_eq!(other.observable(), before);
}

#[test]
fn r70_states_follow_the_weights_device() {
    let mut kv = store("local");
    kv.init(&[(k(3), dense(&[2], &[1.0, 1.0]))]).unwrap();
    kv.set_optimizer(Optimizer::Adam(Adam::default())).unwrap();
    kv.push(&[(k(3), dense(&[2], &[1.0, 2.0]))]).unwrap();
    let weight_device = kv.observable().optimizer.unwrap().states()[&k(3)].slots[0].device();
    // A state file whose tensors name another device (a file written elsewhere): once loaded,
    // the key's next update leaves them on the weight's device, as MXNet moves loaded states
    // to the weight's context on first use.
    let mut file: serde_json::Value =
        serde_json::from_slice(&kv.save_optimizer_states(false).unwrap()).unwrap();
    let elsewhere = serde_json::to_value(Device::Cpu(5)).unwrap();
    for slot in file["states"][0][1]["slots"].as_array_mut().unwrap() {
        slot["device"] = elsewhere.clone();
    }
    kv.load_optimizer_states(&serde_json::to_vec(&file).unwrap())
        .unwrap();
    let loaded = kv.observable().optimizer.unwrap().states()[&k(3)].clone();
    assert!(loaded.slots.iter().all(|t| t.device() == Device::Cpu(5)));
    kv.push(&[(k(3), dense(&[2], &[1.0, 2.0]))]).unwrap();
    let state = kv.observable().optimizer.unwrap().states()[&k(3)].clone();
    assert!(state.slots.iter().all(|t| t.device() == weight_device));
    assert_eq!(state.updates, 2, "the count came with the state");
}

#[test]
fn r71_schedules_drive_every_optimizer_by_the_keys_own_count() {
    let schedule = Some(LrScheduler::Factor {
        step: 1,
        factor: 0.5,
        stop_factor_lr: 1e-8,
        warmup_steps: 0,
        warmup_begin_lr: 0.0,
        warmup_mode: WarmupMode::Linear,
    });
    // SGD without momentum: each push moves w by -lr * g, and lr halves after every update.
    let mut kv = store("local");
    kv.init(&[(k(3), dense(&[1], &[0.0])), (k(4), dense(&[1], &[0.0]))])
        .unwrap();
    kv.set_optimizer(Optimizer::Sgd(Sgd {
        learning_rate: 1.0,
        lr_scheduler: schedule.clone(),
        ..Sgd::default()
    }))
    .unwrap();
    for _ in 0..3 {
        kv.push(&[(k(3), dense(&[1], &[1.0]))]).unwrap();
    }
    kv.push(&[(k(4), dense(&[1], &[1.0]))]).unwrap();
    assert_eq!(pull1(&mut kv, k(3), &[1]), vec![-(1.0 + 0.5 + 0.25)]);
    assert_eq!(
        pull1(&mut kv, k(4), &[1]),
        vec![-1.0],
        "key 4's first update runs at the base rate"
    );
    // Every optimizer accepts a schedule; a bad one is refused.
    for optimizer in [
        Optimizer::Nag(Nag {
            lr_scheduler: schedule.clone(),
            ..Nag::default()
        }),
        Optimizer::Adam(Adam {
            lr_scheduler: schedule.clone(),
            ..Adam::default()
        }),
        Optimizer::AdaGrad(AdaGrad {
            lr_scheduler: schedule.clone(),
            ..AdaGrad::default()
        }),
        Optimizer::RmsProp(RmsProp {
            lr_scheduler: schedule.clone(),
            ..RmsProp::default()
        }),
        Optimizer::Ftrl(Ftrl {
            lr_scheduler: schedule.clone(),
            ..Ftrl::default()
        }),
    ] {
        assert!(optimizer.validate().is_ok());
    }
    let bad = Optimizer::Adam(Adam {
        lr_scheduler: Some(LrScheduler::MultiFactor {
            steps: vec![3, 2],
            factor: 0.5,
            warmup_steps: 0,
            warmup_begin_lr: 0.0,
            warmup_mode: WarmupMode::Linear,
        }),
        ..Adam::default()
    });
    assert!(matches!(
        kv.set_optimizer(bad),
        Err(Error::InvalidOptimizer { .. })
    ));
}

#[test]
fn r45_optimizers_read_their_json_with_mxnets_defaults() {
    let read = |text: &str| serde_json::from_str::<Optimizer>(text);
    assert_eq!(
        read(r#"{"name":"adam"}"#).unwrap(),
        Optimizer::Adam(Adam::default())
    );
    let Optimizer::Ftrl(f) = read(r#"{"name":"ftrl","lamda1":0.5,"clip_gradient":null}"#).unwrap()
    else {
        panic!()
    };
    assert_eq!((f.learning_rate, f.lamda1, f.beta), (0.1, 0.5, 1.0));
    assert!(
        read(r#"{"name":"adam","lambda1":0.5}"#).is_err(),
        "unknown field"
    );
    assert!(read(r#"{"name":"lamb"}"#).is_err(), "unknown optimizer");
    let Optimizer::RmsProp(r) = read(r#"{"name":"rmsprop","epsilon":"nan"}"#).unwrap() else {
        panic!()
    };
    assert!(r.epsilon.is_nan());
    assert!(Optimizer::RmsProp(r).validate().is_err());
    let every = [
        Optimizer::Sgd(Sgd::default()),
        Optimizer::Nag(Nag::default()),
        Optimizer::Adam(Adam::default()),
        Optimizer::AdaGrad(AdaGrad::default()),
        Optimizer::RmsProp(RmsProp::default()),
        Optimizer::Ftrl(Ftrl::default()),
    ];
    for optimizer in every {
        let text = serde_json::to_string(&optimizer).unwrap();
        assert_eq!(read(&text).unwrap(), optimizer, "{text}");
    }
    // f64 weights run the same formulas in f64 (parameters still pass through f32).
    let mut kv = store("local");
    kv.init(&[(k(3), zeros(&[2], DType::F64))]).unwrap();
    kv.set_optimizer(Optimizer::Adam(Adam::default())).unwrap();
    kv.push(&[(k(3), zeros(&[2], DType::F64))]).unwrap();
    let w = kv.pull(&[(k(3), zeros(&[2], DType::F64))], true).unwrap();
    assert!(matches!(&w[0], Value::Dense(t) if t.dtype() == DType::F64));
}

#[test]
fn r47_damaged_state_files_are_typed_errors_and_change_nothing() {
    for optimizer in [
        Optimizer::Sgd(Sgd {
            momentum: 0.9,
            ..Sgd::default()
        }),
        Optimizer::Adam(Adam::default()),
        Optimizer::RmsProp(RmsProp {
            centered: true,
            ..RmsProp::default()
        }),
        Optimizer::Ftrl(Ftrl::default()),
    ] {
        let mut kv = store("local");
        kv.init(&[(k(3), dense(&[3, 1], &W0))]).unwrap();
        kv.set_optimizer(optimizer.clone()).unwrap();
        kv.push(&[(k(3), dense(&[3, 1], &G))]).unwrap();
        let good = kv.save_optimizer_states(true).unwrap();
        let text = String::from_utf8(good.clone()).unwrap();
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x5a;
        let mut json: serde_json::Value = serde_json::from_slice(&good).unwrap();
        json["states"][0][1]["slots"][0]["shape"] = serde_json::json!([4, 1]);
        let wrong_shape = serde_json::to_vec(&json).unwrap();
        let damaged = [
            ("truncated", good[..good.len() / 2].to_vec()),
            ("corrupted", flipped),
            (
                "wrong version",
                text.replace("\"version\":2", "\"version\":3").into_bytes(),
            ),
            (
                "wrong format",
                text.replace("kvstore-optimizer-states", "pickle")
                    .into_bytes(),
            ),
            ("wrong shape", wrong_shape),
            ("empty", Vec::new()),
        ];
        kv.push(&[(k(3), dense(&[3, 1], &G))]).unwrap();
        let before = kv.observable();
        for (what, bytes) in damaged {
            let err = kv.load_optimizer_states(&bytes);
            assert!(
                matches!(err, Err(Error::InvalidState { .. })),
                "{} {what}: {err:?}",
                optimizer.name()
            );
            assert_eq!(kv.observable(), before, "{} {what}", optimizer.name());
        }
        kv.load_optimizer_states(&good).unwrap();
    }
    // A version-1 file (SGD momentum only) still loads, its keys counted as never updated.
    let mut kv = store("local");
    kv.init(&[(k(3), dense(&[2], &[0.0, 0.0]))]).unwrap();
    kv.set_optimizer(Optimizer::Sgd(Sgd {
        learning_rate: 1.0,
        momentum: 0.5,
        ..Sgd::default()
    }))
    .unwrap();
    let v1 = br#"{"format":"kvstore-optimizer-states","version":1,"states":[[3,{"shape":[2],"data":{"F32":[-1.0,-1.0]},"device":{"Cpu":0}}]],"optimizer":null}"#;
    kv.load_optimizer_states(v1).unwrap();
    let state = kv.observable().optimizer.unwrap().states()[&k(3)].clone();
    assert_eq!((state.updates, state.slots.len()), (0, 1));
}
