//! The properties the local model checks (SPEC R61, R62), by name.

use stateright::{Model, Property};

use super::model::LocalModel;
use super::reference;
use super::state::{LocalState, Phase};

/// Per var, conflicting ops (one of them writes) take effect in issue order: per key, pushes
/// and pulls act in issue order whatever their priorities (R61, R62).
pub const EFFECT_ORDER: &str = "effects on each var follow issue order";
/// Every completed pull read the value of the last push on its key issued before it: the
/// sequential reference, in the model's own terms (R61).
pub const PULL_VALUE: &str = "pulls read the last push issued before them";
/// A finished run equals the executable spec (`kvstore_spec`'s `LocalStore`) run on the calls in
/// issue order: every pull's output and every key's final value (R61, R62).
pub const SPEC: &str = "finished runs equal the spec replayed in issue order";
/// A running op that writes a var runs with no other op on that var (R61).
pub const WRITER_ALONE: &str = "a running writer has its var alone";
/// A wait_all returns only once every op issued before it has completed (R61).
pub const WAIT_ALL: &str = "wait_all returns after every earlier op completed";
/// Every state is the end of a run or has a next step.
pub const NO_DEADLOCK: &str = "no deadlock";
/// Every run ends with every client finished and every op completed.
pub const FINISHES: &str = "every run finishes";
/// Sanity (an example is expected): two ops run at once.
pub const PARALLEL: &str = "two ops run at once";
/// Sanity (an example is expected): two readers of one key run at once.
pub const READERS_SHARE: &str = "two readers of a key run at once";
/// Sanity (an example is expected): a free worker is about to take a ready op ahead of an
/// earlier-issued ready op, by priority.
pub const PRIORITY_ACTS: &str = "priority reorders ready ops";

/// Every property, in the order above.
pub(crate) fn all() -> Vec<Property<LocalModel>> {
    vec![
        Property::always(EFFECT_ORDER, effect_order),
        Property::always(PULL_VALUE, pull_value),
        Property::always(SPEC, |model, state| {
            !model.is_final(state) || reference::agrees(model, state)
        }),
        Property::always(WRITER_ALONE, writer_alone),
        Property::always(WAIT_ALL, wait_all),
        Property::always(NO_DEADLOCK, |model, state| {
            let mut actions = Vec::new();
            model.actions(state, &mut actions);
            model.is_final(state) || !actions.is_empty()
        }),
        Property::eventually(FINISHES, |model, state| model.is_final(state)),
        Property::sometimes(PARALLEL, |_, state: &LocalState| state.running() >= 2),
        Property::sometimes(READERS_SHARE, readers_share),
        Property::sometimes(PRIORITY_ACTS, priority_acts),
    ]
}

fn effect_order(model: &LocalModel, state: &LocalState) -> bool {
    state.effects.iter().enumerate().all(|(var, log)| {
        log.iter().enumerate().all(|(i, &earlier)| {
            log[i + 1..].iter().all(|&later| {
                let conflict = model.op(earlier).writes(var) || model.op(later).writes(var);
                !conflict || state.op(earlier).seq < state.op(later).seq
            })
        })
    })
}

fn pull_value(model: &LocalModel, state: &LocalState) -> bool {
    (0..)
        .zip(&state.ops)
        .filter(|&(id, op)| op.phase == Phase::Done && model.op(id).is_pull())
        .all(|(_, op)| op.read == op.expected)
}

fn writer_alone(model: &LocalModel, state: &LocalState) -> bool {
    let running: Vec<_> = state.in_phase(Phase::Running).collect();
    running.iter().all(|&writer| {
        model.op(writer).vars.iter().all(|&(var, write)| {
            !write
                || running.iter().all(|&other| {
                    other == writer || !model.op(other).vars.iter().any(|&(v, _)| v == var)
                })
        })
    })
}

fn wait_all(model: &LocalModel, state: &LocalState) -> bool {
    (0..).zip(&state.ops).all(|(id, wait)| {
        !model.op(id).is_wait_all()
            || wait.phase != Phase::Done
            || (0..).zip(&state.ops).all(|(other, op)| {
                model.op(other).is_wait_all()
                    || op.phase == Phase::Unissued
                    || op.seq >= wait.seq
                    || op.phase == Phase::Done
            })
    })
}

fn readers_share(model: &LocalModel, state: &LocalState) -> bool {
    let running: Vec<_> = state.in_phase(Phase::Running).collect();
    running.iter().enumerate().any(|(i, &a)| {
        running[i + 1..].iter().any(|&b| {
            let (a, b) = (model.op(a), model.op(b));
            a.is_pull() && b.is_pull() && a.key() == b.key()
        })
    })
}

fn priority_acts(model: &LocalModel, state: &LocalState) -> bool {
    let seq = |id| state.op(id).seq;
    let earliest = state.ready.iter().map(|&id| seq(id)).min();
    model.worker_free(state) && state.ready.peek().map(|&id| seq(id)) > earliest
}
