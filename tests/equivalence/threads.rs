//! Several client threads on one engine store (CPU backend).
//!
//! - Keys a thread owns alone follow its program order exactly: its pulls, and the keys' final
//!   values, equal bit for bit those of the spec running that thread's calls on those keys.
//! - Shared keys (additive updater, small positive integer gradients, so every sum is exact in
//!   any order) end at the initial value plus every push of every thread; each thread's pulls
//!   of a shared key never decrease and include every push that thread issued before the pull.
//! - An updater error of one thread's push reaches exactly one `wait_all` (of whichever thread
//!   calls it) and leaves the key's value as it was.

use crate::clients::{
    of_shared, owned, owned_part, program, run_program, shared_init, store, ClientOp, Pulled,
    Reads, SHARED,
};
use crate::updaters::UpdaterKind;
use kvstore::{BackendKind, DType, Error, Key, KvStore, NdArray, Options, Tensor, Value};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Barrier, Mutex};

/// One run: every thread's program and what its pulls returned, and the store afterwards.
struct Run {
    programs: Vec<Vec<ClientOp>>,
    pulled: Vec<Vec<Pulled>>,
    kv: Arc<KvStore>,
}

fn run(seed: u64, threads: usize, len: usize, reads: Reads) -> Run {
    let kv = Arc::new(store(BackendKind::Cpu, threads, 4));
    let programs: Vec<Vec<ClientOp>> = (0..threads).map(|t| program(seed, t, len)).collect();
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = programs
        .iter()
        .cloned()
        .enumerate()
        .map(|(t, ops)| {
            let (kv, start) = (Arc::clone(&kv), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                run_program(&kv, t, &ops, reads)
            })
        })
        .collect();
    let pulled = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(kv.wait_all(), Ok(()));
    Run {
        programs,
        pulled,
        kv,
    }
}

/// Owned keys: the thread's pulls and the final values equal the spec's on its calls alone.
fn check_owned(run: &Run) {
    let spec = store(BackendKind::Spec, run.programs.len(), 1);
    for (t, program) in run.programs.iter().enumerate() {
        let mut expected: Vec<Pulled> = Vec::new();
        for (i, op) in owned_part(program) {
            let pulled = run_program(&spec, t, std::slice::from_ref(&op), Reads::AtOnce);
            expected.extend(pulled.into_iter().map(|(_, k, v)| (i, k, v)));
        }
        let got: Vec<&Pulled> = run.pulled[t].iter().filter(|p| !of_shared(p)).collect();
        assert_eq!(
            got.len(),
            expected.len(),
            "thread {t}: number of owned pulls"
        );
        for (got, expected) in got.into_iter().zip(&expected) {
            assert_eq!(got, expected, "thread {t}: pull of an owned key");
        }
        for (key, _, _) in owned(t) {
            assert_eq!(
                run.kv.value_of(key.clone()),
                spec.value_of(key.clone()),
                "thread {t}: final value of owned key {key}"
            );
        }
    }
}

/// Per shared key, the sum of the values a call pushes to it.
fn pushed(op: &ClientOp) -> BTreeMap<Key, Vec<f32>> {
    let mut sums: BTreeMap<Key, Vec<f32>> = BTreeMap::new();
    if let ClientOp::Push(pairs) | ClientOp::PushPull(pairs) = op {
        for (key, values) in pairs {
            if SHARED.iter().any(|&k| Key::Int(k) == *key) {
                let sum = sums.entry(key.clone()).or_insert_with(|| vec![0.0; 4]);
                for v in values {
                    add(sum, &v.to_f32());
                }
            }
        }
    }
    sums
}

fn add(sum: &mut [f32], x: &[f32]) {
    for (s, x) in sum.iter_mut().zip(x) {
        *s += x;
    }
}

fn at_least(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| x >= y)
}

/// Init plus every push of every thread, per shared key.
fn totals(run: &Run) -> BTreeMap<Key, Vec<f32>> {
    let mut totals: BTreeMap<Key, Vec<f32>> = SHARED
        .iter()
        .map(|&k| (Key::Int(k), shared_init().to_f32()))
        .collect();
    for op in run.programs.iter().flatten() {
        for (key, sum) in pushed(op) {
            add(totals.get_mut(&key).unwrap(), &sum);
        }
    }
    totals
}

/// Shared keys end at init plus every push.
fn check_shared_totals(run: &Run) {
    for (key, total) in totals(run) {
        let value = run.kv.value_of(key.clone()).unwrap();
        assert_eq!(value.to_f32(), total, "final value of shared key {key}");
    }
}

/// Each thread's pulls of a shared key never decrease, never exceed the final total, and
/// include every push the thread issued before (a pushpull's own push included).
fn check_shared_reads(run: &Run) {
    let totals = totals(run);
    for (t, program) in run.programs.iter().enumerate() {
        let mut own: BTreeMap<Key, Vec<f32>> = totals
            .keys()
            .map(|k| (k.clone(), shared_init().to_f32()))
            .collect();
        let mut last = own.clone();
        let mut pulled = run.pulled[t].iter().filter(|p| of_shared(p)).peekable();
        for (i, op) in program.iter().enumerate() {
            for (key, sum) in pushed(op) {
                add(own.get_mut(&key).unwrap(), &sum);
            }
            while let Some((_, key, value)) = pulled.next_if(|(j, _, _)| *j == i) {
                let v = value.to_f32();
                assert!(
                    at_least(&v, &own[key]),
                    "thread {t}, call {i}: pulled {v:?} from {key} misses its own pushes {:?}",
                    own[key]
                );
                assert!(
                    at_least(&v, &last[key]),
                    "thread {t}, call {i}: pulled {v:?} from {key} after {:?}",
                    last[key]
                );
                assert!(
                    at_least(&totals[key], &v),
                    "thread {t}, call {i}: pulled {v:?} from {key} beyond every push"
                );
                last.insert(key.clone(), v);
            }
        }
        assert!(
            pulled.next().is_none(),
            "thread {t}: pulls out of call order"
        );
    }
}

fn check_all(run: &Run) {
    check_owned(run);
    check_shared_totals(run);
    check_shared_reads(run);
}

#[test]
fn r62_owned_keys_follow_program_order_under_threads() {
    for seed in [1, 2, 3] {
        check_owned(&run(seed, 3, 400, Reads::AtOnce));
    }
}

#[test]
fn r62_shared_keys_end_at_the_sum_of_every_push() {
    for seed in [4, 5] {
        check_shared_totals(&run(seed, 4, 400, Reads::AtOnce));
    }
}

#[test]
fn r62_shared_key_pulls_never_decrease_and_include_the_threads_own_pushes() {
    for seed in [6, 7] {
        check_shared_reads(&run(seed, 4, 400, Reads::AtOnce));
    }
}

#[test]
fn outputs_read_only_after_wait_all_hold_what_each_pull_returned() {
    check_all(&run(8, 3, 400, Reads::AfterWaitAll));
}

#[test]
fn outputs_read_only_after_their_wait_hold_what_each_pull_returned() {
    check_all(&run(9, 3, 400, Reads::AfterWait));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: crate::scaled_cases(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_client_programs_keep_every_guarantee_under_threads(
        seed in any::<u64>(),
        threads in 2usize..=4,
        len in 10usize..200,
        reads in prop_oneof![Just(Reads::AtOnce), Just(Reads::AfterWaitAll), Just(Reads::AfterWait)],
    ) {
        check_all(&run(seed, threads, len, reads));
    }
}

#[test]
fn updater_error_reaches_exactly_one_wait_all_and_keeps_the_keys_value() {
    let kv = Arc::new(
        kvstore::create_with(
            "local",
            Options {
                backend: BackendKind::Cpu,
                workers: 4,
            },
        )
        .unwrap(),
    );
    let (good, bad) = (Key::Int(0), Key::Int(13));
    kv.init(
        vec![good.clone(), bad.clone()],
        vec![shared_init(), shared_init()],
    )
    .unwrap();
    kv.set_updater(UpdaterKind::FailOnKey(bad.clone()).build());
    let one = || Value::Dense(Tensor::full([4], DType::F32, 1.0).unwrap());
    let errors: Arc<Mutex<Vec<Error>>> = Arc::default();
    let start = Arc::new(Barrier::new(2));
    let failing = {
        let (kv, errors, start) = (Arc::clone(&kv), Arc::clone(&errors), Arc::clone(&start));
        let (good, bad) = (good.clone(), bad.clone());
        std::thread::spawn(move || {
            start.wait();
            let mut seen = Vec::new();
            for i in 0..20 {
                // Calls 0 and 1 of every 4 fail as a whole (R7): 10 failures in all.
                let result = match i % 4 {
                    0 => kv.push(vec![good.clone(), bad.clone()], vec![one(), one()]),
                    1 => kv.push(bad.clone(), one()),
                    _ => kv.push(good.clone(), one()),
                };
                assert_eq!(
                    result,
                    Ok(()),
                    "a failing updater fails at the wait, not the call"
                );
                let out = NdArray::zeros([4], DType::F32).unwrap();
                kv.pull(bad.clone(), &out).unwrap();
                seen.push(out.value());
            }
            if let Err(e) = kv.wait_all() {
                errors.lock().unwrap().push(e);
            }
            seen
        })
    };
    let other = {
        let (kv, errors, start) = (Arc::clone(&kv), Arc::clone(&errors), Arc::clone(&start));
        std::thread::spawn(move || {
            start.wait();
            for _ in 0..20 {
                kv.push(good.clone(), one()).unwrap();
                let out = NdArray::zeros([4], DType::F32).unwrap();
                kv.pull(good.clone(), &out).unwrap();
                if let Err(e) = kv.wait_all() {
                    errors.lock().unwrap().push(e);
                }
            }
        })
    };
    let seen = failing.join().unwrap();
    other.join().unwrap();
    let mut errors = errors.lock().unwrap().clone();
    while let Err(e) = kv.wait_all() {
        errors.push(e);
        assert!(
            errors.len() <= 10,
            "more errors than failed pushes: {errors:?}"
        );
    }
    let refused = Error::Updater {
        key: bad.clone(),
        message: "key 13 is refused".into(),
    };
    assert_eq!(
        errors,
        vec![refused; 10],
        "each failed push's error comes back once"
    );
    assert!(
        seen.iter().all(|v| *v == shared_init()),
        "pulls of the refused key"
    );
    assert_eq!(kv.value_of(bad), Some(shared_init()), "the refused key");
    let expected: Vec<f32> = shared_init().to_f32().iter().map(|x| x + 30.0).collect();
    assert_eq!(
        kv.value_of(Key::Int(0)).unwrap().to_f32(),
        expected,
        "10 + 20 pushes of one"
    );
}
