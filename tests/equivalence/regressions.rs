//! Minimised mismatches between an engine store and the spec, one named test each.
//!
//! A mismatch not fixed yet is `#[ignore = "mismatch: ..."]` (run those with
//! `cargo test -p kvstore-tests --test equivalence -- --ignored`); once fixed, the test stays
//! here, not ignored, so the case keeps being checked.

use crate::ops::Op;
use crate::pair::Pair;
use crate::updaters::UpdaterKind;
use kvstore::{BackendKind, DType, Device, Item, Key, Keys, Tensor, Value, Values};

fn dense(xs: &[f32], device: u32) -> Value {
    Value::Dense(
        Tensor::new([xs.len()], xs.to_vec())
            .unwrap()
            .on(Device::Cpu(device)),
    )
}

/// R23 (and R7): the first multi-device push whose arguments pass their checks fixes the NCCL
/// device set, even when its updater then fails. Found by the state machine as a mismatch: the
/// engine fixed the set when the push was queued, while the spec rolled it back with the failed
/// push (R7). R23 now decides for the engine's behaviour (it cannot undo a queued call's
/// arguments without waiting for the push); this checks that engine and spec agree. The name
/// is the one SPEC.md lists.
#[test]
fn r23_a_push_failing_in_its_updater_fixes_the_nccl_device_set_on_every_backend() {
    for backend in [BackendKind::Cpu, BackendKind::EngineSpec] {
        let mut pair = Pair::new("nccl", backend, 2, false);
        let key = Key::from("w");
        let push = |big: f32, devices: [u32; 2]| Op::Push {
            keys: Keys::One(key.clone()),
            values: Values::List(
                devices
                    .iter()
                    .map(|&d| Item::One(dense(&[big, 1.0], d)))
                    .collect(),
            ),
            priority: 0,
            from_arrays: false,
        };
        pair.apply(&Op::Init {
            keys: Keys::One(key.clone()),
            values: Values::One(Value::Dense(Tensor::zeros([2], DType::F32).unwrap())),
        });
        pair.apply(&Op::SetUpdater(UpdaterKind::FailAbove(10.0)));
        // Refused by the updater (at the engine's next wait), but the device set is now fixed.
        pair.apply(&push(100.0, [0, 1]));
        // DeviceSetChanged on both: expected [cpu(0), cpu(1)].
        pair.apply(&push(1.0, [0, 2]));
        pair.apply(&push(1.0, [1, 0]));
        pair.finish();
    }
}
