//! R61: asynchronous execution on the engine (semantics §6): calls return once queued, per-key
//! issue order, parallel keys, errors at the next wait, nothing half-applied.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kvstore::{
    create_with, BackendKind, DType, Error, Key, KvStore, NdArray, Options, PullOptions, Tensor,
    UpdateError, Value,
};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

fn t(shape: &[usize], x: f32) -> Tensor {
    Tensor::full(shape.to_vec(), DType::F32, f64::from(x)).unwrap()
}

fn engine(kind: &str, workers: usize) -> KvStore {
    create_with(
        kind,
        Options {
            backend: BackendKind::Cpu,
            workers,
        },
    )
    .unwrap()
}

fn add(merged: &Value, stored: &mut Value) {
    let sum: Vec<f32> = stored
        .to_f32()
        .iter()
        .zip(merged.to_f32())
        .map(|(s, m)| s + m)
        .collect();
    *stored = Value::Dense(Tensor::new(stored.shape().to_vec(), sum).unwrap());
}

/// An updater that adds, after waiting for a go signal (so a test controls when work runs).
fn gated(go: Arc<Mutex<mpsc::Receiver<()>>>) -> impl kvstore::Updater {
    move |_: &Key, merged: &Value, stored: &mut Value| -> Result<(), UpdateError> {
        go.lock()
            .unwrap()
            .recv()
            .map_err(|e| UpdateError(e.to_string()))?;
        add(merged, stored);
        Ok(())
    }
}

#[test]
fn r61_push_returns_once_queued_and_reads_wait_for_it() {
    let kv = engine("local", 2);
    kv.init(3, t(&[2], 1.0)).unwrap();
    let (tx, rx) = mpsc::channel();
    kv.set_updater(gated(Arc::new(Mutex::new(rx))));
    // The updater is blocked until `tx` sends: the push must return anyway.
    kv.push(3, t(&[2], 5.0)).unwrap();
    let out = NdArray::zeros([2], DType::F32).unwrap();
    kv.pull(3, &out).unwrap();
    let reader = std::thread::spawn(move || out.to_f32());
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !reader.is_finished(),
        "a read of the output waits for the pull"
    );
    tx.send(()).unwrap();
    assert_eq!(reader.join().unwrap(), vec![6.0, 6.0]);
    kv.wait_all().unwrap();
}

#[test]
fn r61_per_key_operations_take_effect_in_issue_order_whatever_the_priority() {
    let kv = engine("local", 2);
    kv.init(3, t(&[1], 0.0)).unwrap();
    let outs: Vec<NdArray> = (0..5)
        .map(|_| NdArray::zeros([1], DType::F32).unwrap())
        .collect();
    for (i, out) in outs.iter().enumerate() {
        kv.push_with_priority(3, t(&[1], 2.0 * i as f32), -(i as i32))
            .unwrap();
        kv.pull_with(
            3,
            out,
            PullOptions {
                priority: i as i32,
                ..PullOptions::default()
            },
        )
        .unwrap();
    }
    let seen: Vec<f32> = outs.iter().map(|o| o.to_f32()[0]).collect();
    assert_eq!(seen, vec![0.0, 2.0, 4.0, 6.0, 8.0]);
}

#[test]
fn r61_operations_on_different_keys_run_in_parallel() {
    let kv = engine("local", 2);
    kv.init([1, 2], vec![t(&[1], 0.0), t(&[1], 2.0)]).unwrap();
    let (tx, rx) = mpsc::channel();
    kv.set_updater(gated(Arc::new(Mutex::new(rx))));
    // Key 1's push holds one worker until `tx` sends; key 2's pull goes ahead meanwhile.
    kv.push(1, t(&[1], 1.0)).unwrap();
    let b = NdArray::zeros([1], DType::F32).unwrap();
    kv.pull(2, &b).unwrap();
    assert_eq!(b.to_f32(), vec![2.0]);
    let a = NdArray::zeros([1], DType::F32).unwrap();
    kv.pull(1, &a).unwrap();
    tx.send(()).unwrap();
    assert_eq!(a.to_f32(), vec![1.0]);
}

#[test]
fn r61_pushes_of_different_keys_overlap_without_an_updater() {
    // Two workers, two keys, large values: both merges are in flight at once. The check is
    // that they finish and are each right; overlap itself is shown by the engine's own tests.
    let kv = engine("device", 2);
    let n = 1 << 16;
    kv.init([1, 2], vec![t(&[n], 0.0), t(&[n], 0.0)]).unwrap();
    kv.push(
        [1, 2],
        vec![vec![t(&[n], 1.0), t(&[n], 2.0)], vec![t(&[n], 3.0)]],
    )
    .unwrap();
    kv.wait_all().unwrap();
    assert_eq!(kv.value_of(1).unwrap().to_f32(), vec![3.0; n]);
    assert_eq!(kv.value_of(2).unwrap().to_f32(), vec![3.0; n]);
}

#[test]
fn r61_argument_errors_return_from_the_call_and_queue_nothing() {
    let kv = engine("local", 2);
    kv.init(3, t(&[2], 1.0)).unwrap();
    assert!(matches!(
        kv.push(3, t(&[3], 1.0)),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        kv.push(9, t(&[2], 1.0)),
        Err(Error::NotInitialized { .. })
    ));
    kv.wait_all().unwrap();
    assert_eq!(kv.value_of(3).unwrap().to_f32(), vec![1.0, 1.0]);
}

#[test]
fn r61_updater_errors_reach_the_next_wait_and_commit_nothing() {
    let kv = engine("local", 2);
    kv.init([1, 2], vec![t(&[2], 0.0), t(&[2], 0.0)]).unwrap();
    kv.set_updater(|key: &Key, merged: &Value, stored: &mut Value| {
        if *key == Key::Int(2) {
            return Err(UpdateError("key 2 refuses".into()));
        }
        add(merged, stored);
        Ok(())
    });
    // Key 1 would succeed, key 2 fails: the push is all or nothing.
    kv.push([1, 2], vec![t(&[2], 1.0), t(&[2], 1.0)]).unwrap();
    let err = kv.wait_all().unwrap_err();
    assert!(matches!(err, Error::Updater { .. }), "{err:?}");
    assert_eq!(kv.value_of(1).unwrap().to_f32(), vec![0.0, 0.0]);
    assert_eq!(kv.value_of(2).unwrap().to_f32(), vec![0.0, 0.0]);
    // Reported once; the store goes on.
    kv.wait_all().unwrap();
    kv.push(1, t(&[2], 4.0)).unwrap();
    kv.wait_all().unwrap();
    assert_eq!(kv.value_of(1).unwrap().to_f32(), vec![4.0, 4.0]);
}

#[test]
fn r61_a_failed_pushpull_leaves_its_outputs_and_reports_at_the_output() {
    let kv = engine("local", 2);
    kv.init(1, t(&[2], 7.0)).unwrap();
    kv.set_updater(|_: &Key, _: &Value, _: &mut Value| Err(UpdateError("no".into())));
    let out = NdArray::zeros([2], DType::F32).unwrap();
    kv.pushpull(1, t(&[2], 1.0), &out).unwrap();
    assert!(matches!(out.wait(), Err(Error::Updater { .. })));
    assert_eq!(out.to_f32(), vec![0.0, 0.0]);
    out.wait().unwrap();
}

#[test]
fn r61_an_array_pushed_then_overwritten_gives_the_value_at_the_call() {
    let kv = engine("local", 2);
    kv.init(1, t(&[2], 0.0)).unwrap();
    let (tx, rx) = mpsc::channel();
    kv.set_updater(gated(Arc::new(Mutex::new(rx))));
    let grad = NdArray::new(t(&[2], 3.0));
    kv.push(1, &grad).unwrap();
    // The push has not read `grad` yet; `set` waits for it, so the store sees 3, not 100.
    let writer = {
        let grad = grad.clone();
        std::thread::spawn(move || grad.set(t(&[2], 100.0)))
    };
    std::thread::sleep(Duration::from_millis(20));
    tx.send(()).unwrap();
    writer.join().unwrap();
    kv.wait_all().unwrap();
    assert_eq!(kv.value_of(1).unwrap().to_f32(), vec![3.0, 3.0]);
    assert_eq!(grad.to_f32(), vec![100.0, 100.0]);
}

#[test]
fn r61_dropping_a_store_with_pending_operations_finishes_them() {
    let out = NdArray::zeros([4], DType::F32).unwrap();
    {
        let kv = engine("device", 1);
        kv.init(1, t(&[4], 0.0)).unwrap();
        for i in 0..100 {
            kv.push(1, t(&[4], i as f32)).unwrap();
        }
        kv.pull(1, &out).unwrap();
    }
    assert_eq!(out.to_f32(), vec![99.0; 4]);
}

#[test]
fn r61_waiting_on_a_key_reports_its_updater_error() {
    let kv = engine("local", 2);
    kv.init([1, 2], vec![t(&[1], 0.0), t(&[1], 0.0)]).unwrap();
    kv.set_updater(|key: &Key, merged: &Value, stored: &mut Value| {
        if *key == Key::Int(2) {
            return Err(UpdateError("key 2 refuses".into()));
        }
        add(merged, stored);
        Ok(())
    });
    kv.push(1, t(&[1], 1.0)).unwrap();
    kv.push(2, t(&[1], 1.0)).unwrap();
    kv.wait(1).unwrap();
    assert!(matches!(kv.wait(2), Err(Error::Updater { .. })));
    kv.wait(2).unwrap();
    assert!(matches!(kv.wait(7), Err(Error::NotInitialized { .. })));
}

#[test]
fn r61_a_key_pulled_to_several_devices_fills_every_output() {
    let kv = engine("device", 2);
    let n = 1 << 19;
    let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
    kv.init(1, Tensor::new([n], data.clone()).unwrap()).unwrap();
    let outs: Vec<NdArray> = (0..4)
        .map(|d| {
            NdArray::zeros([n], DType::F32)
                .unwrap()
                .on(kvstore::Device::Cpu(d))
        })
        .collect();
    kv.pull(1, &outs).unwrap();
    for (d, out) in outs.iter().enumerate() {
        assert_eq!(out.to_f32(), data, "output {d}");
        assert_eq!(out.device(), kvstore::Device::Cpu(d as u32));
    }
    // The same array twice takes the one-at-a-time path.
    let twice = vec![outs[0].clone(), outs[0].clone()];
    kv.pull(1, &twice).unwrap();
    assert_eq!(outs[0].to_f32(), data);
}
