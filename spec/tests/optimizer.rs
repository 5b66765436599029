//! Rules R45-R47: set_optimizer, SGD, optimizer states.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use kvstore_spec::optimizer::{Optimizer, Sgd};
use kvstore_spec::store::LocalStore;
use kvstore_spec::{DType, Error, Key, Value};

fn sgd(p: Sgd) -> Optimizer {
    Optimizer::Sgd(p)
}

fn sgd_store(p: Sgd, init: Value) -> LocalStore {
    let mut kv = store("local");
    kv.init(&[(k(3), init)]).unwrap();
    kv.set_optimizer(sgd(p)).unwrap();
    kv
}

#[test]
fn r45_set_optimizer_docstring_example() {
    let mut kv = sgd_store(Sgd::default(), zeros(&[2, 2], DType::F32));
    kv.push(&[(k(3), full(&[2, 2], 1.0))]).unwrap();
    assert_eq!(pull1(&mut kv, k(3), &[2, 2]), vec![-0.01f32; 4]);
}

#[test]
fn r45_parameters_must_be_finite_and_clip_non_negative() {
    let mut kv = store("local");
    for bad in [
        Sgd {
            learning_rate: f64::NAN,
            ..Sgd::default()
        },
        Sgd {
            momentum: f64::INFINITY,
            ..Sgd::default()
        },
        Sgd {
            clip_gradient: Some(-1.0),
            ..Sgd::default()
        },
    ] {
        assert!(matches!(
            kv.set_optimizer(sgd(bad)),
            Err(Error::InvalidOptimizer { .. })
        ));
    }
    assert!(
        !kv.observable().has_updater,
        "a refused optimizer installs nothing"
    );
}

fn bits(xs: &[f32]) -> Vec<u32> {
    xs.iter().map(|x| x.to_bits()).collect()
}

/// Two SGD steps (lr 0.1, wd 0.01, rescale 0.5, clip 0.75) from w=[1,-2,0.3], g=[1,4,-0.2].
fn two_steps(momentum: f64) -> (Vec<f32>, Vec<f32>) {
    let p = Sgd {
        learning_rate: 0.1,
        wd: 0.01,
        rescale_grad: 0.5,
        clip_gradient: Some(0.75),
        momentum,
        lr_scheduler: None,
    };
    let mut kv = sgd_store(p, dense(&[3], &[1.0, -2.0, 0.3]));
    let mut step = || {
        kv.push(&[(k(3), dense(&[3], &[1.0, 4.0, -0.2]))]).unwrap();
        pull1(&mut kv, k(3), &[3])
    };
    (step(), step())
}

#[test]
fn r46_sgd_with_weight_decay_and_clipping_follows_the_kernels() {
    let clip = |g: f32| (0.5f32 * g).clamp(-0.75, 0.75);
    let g = [1.0f32, 4.0, -0.2];
    // No momentum, dense gradient: MXNet's multi_sgd_update, `w + (-(lr*wd)*w - lr*g')`.
    let plain = |w: &[f32]| -> Vec<f32> {
        w.iter()
            .zip(g)
            .map(|(&w, g)| w + (-(0.1f32 * 0.01) * w - 0.1 * clip(g)))
            .collect()
    };
    let (step1, step2) = two_steps(0.0);
    let expected1 = plain(&[1.0, -2.0, 0.3]);
    assert_eq!(bits(&step1), bits(&expected1));
    assert_eq!(bits(&step2), bits(&plain(&expected1)));
    // Bits MXNet 1.9.1 produced for the same steps (docs/conformance.md, "MXNet behaviours checked").
    assert_eq!(bits(&step1), vec![0x3f72f1aa, 0xc004ac08, 0x3e9e9100]);
    assert_eq!(bits(&step2), vec![0x3f65e6ac, 0xc00956de, 0x3ea38721]);
    let (step1, step2) = two_steps(0.9);
    assert_eq!(bits(&step1), vec![0x3f72f1aa, 0xc004ac08, 0x3e9e9100]);
    assert_eq!(bits(&step2), vec![0x3f5a2692, 0xc00d8b4c, 0x3ea7ff63]);
}

#[test]
fn r46_momentum_state_example_and_r47_save_load_restores_it() {
    let p = Sgd {
        learning_rate: 1.0,
        momentum: 0.5,
        ..Sgd::default()
    };
    let mut kv = sgd_store(p, zeros(&[1], DType::F32));
    let push = |kv: &mut LocalStore| kv.push(&[(k(3), full(&[1], 1.0))]).unwrap();
    push(&mut kv);
    assert_eq!(pull1(&mut kv, k(3), &[1]), vec![-1.0]);
    let saved = kv.save_optimizer_states(false).unwrap();
    push(&mut kv);
    assert_eq!(pull1(&mut kv, k(3), &[1]), vec![-2.5]);
    kv.load_optimizer_states(&saved).unwrap();
    push(&mut kv);
    assert_eq!(
        pull1(&mut kv, k(3), &[1]),
        vec![-4.0],
        "momentum restored to its post-step-1 value"
    );
}

#[test]
fn r46_a_row_sparse_gradient_updates_only_its_rows() {
    let p = Sgd {
        learning_rate: 0.5,
        wd: 0.1,
        ..Sgd::default()
    };
    let mut kv = sgd_store(p, full(&[3, 1], 1.0));
    kv.push(&[(k(3), rsp(&[3, 1], &[1], &[2.0]))]).unwrap();
    let updated = (1.0 - 0.5f32 * 0.1) * 1.0 - 0.5 * 2.0;
    assert_eq!(pull1(&mut kv, k(3), &[3, 1]), vec![1.0, updated, 1.0]);
}

#[test]
fn r47_dump_optimizer_saves_and_restores_the_optimizer_too() {
    let mut kv = sgd_store(
        Sgd {
            learning_rate: 1.0,
            ..Sgd::default()
        },
        zeros(&[1], DType::F32),
    );
    let with_optimizer = kv.save_optimizer_states(true).unwrap();
    let states_only = kv.save_optimizer_states(false).unwrap();
    kv.set_optimizer(sgd(Sgd {
        learning_rate: 2.0,
        ..Sgd::default()
    }))
    .unwrap();
    kv.load_optimizer_states(&states_only).unwrap();
    kv.push(&[(k(3), full(&[1], 1.0))]).unwrap();
    assert_eq!(
        pull1(&mut kv, k(3), &[1]),
        vec![-2.0],
        "states only: the optimizer stays"
    );
    kv.load_optimizer_states(&with_optimizer).unwrap();
    kv.push(&[(k(3), full(&[1], 1.0))]).unwrap();
    assert_eq!(
        pull1(&mut kv, k(3), &[1]),
        vec![-3.0],
        "the dumped optimizer (lr 1) is back"
    );
}

#[test]
fn r47_states_need_an_optimizer_and_readable_bytes() {
    let mut kv = store("local");
    assert_eq!(kv.save_optimizer_states(false), Err(Error::NoOptimizer));
    assert_eq!(kv.load_optimizer_states(b"{}"), Err(Error::NoOptimizer));
    kv.set_updater(Box::new(|_: &Key, _: &Value, _: &mut Value| Ok(())));
    assert_eq!(
        kv.save_optimizer_states(false),
        Err(Error::NoOptimizer),
        "a custom updater has no states"
    );
    let mut kv = sgd_store(Sgd::default(), zeros(&[1], DType::F32));
    let before = kv.observable();
    for garbage in [
        &b"not json"[..],
        br#"{"format":"other","version":1,"states":[],"optimizer":null}"#,
    ] {
        assert!(matches!(
            kv.load_optimizer_states(garbage),
            Err(Error::InvalidState { .. })
        ));
    }
    assert_eq!(kv.observable(), before);
}

#[test]
fn r47_states_holding_non_finite_values_load_back() {
    let mut kv = sgd_store(
        Sgd {
            learning_rate: 1.0,
            momentum: 0.5,
            ..Sgd::default()
        },
        dense(&[2], &[0.0, 1.0]),
    );
    kv.push(&[(k(3), dense(&[2], &[f32::INFINITY, 1.0]))])
        .unwrap();
    let saved = kv.save_optimizer_states(false).unwrap();
    let before = kv.observable();
    kv.load_optimizer_states(&saved).unwrap();
    assert_eq!(kv.observable(), before);
}
