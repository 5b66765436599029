//! The dist model's properties (listed in `mod.rs`).

use super::node::{NodeState, Seen, WorkerState};
use super::script::Expect;
use super::{DistConfig, DistModel};
use kvstore_dist::Layout;
use kvstore_spec::value::f32_slices_equal;
use kvstore_spec::Value;
use stateright::actor::ActorModelState;
use stateright::Expectation;

type State = ActorModelState<super::Node, ()>;

pub(super) fn add(model: DistModel) -> DistModel {
    let detector = model.cfg.config.failure_detector;
    let model = model
        .property(Expectation::Always, "results match the spec", |m, s| {
            workers(s).all(|(rank, w)| {
                w.seen.iter().all(|(step, seen)| {
                    let expect = m.cfg.expected.get(rank).and_then(|e| e.get(*step));
                    observed_as_specified(&m.cfg.config, expect, seen)
                })
            })
        })
        .property(Expectation::Always, "workers agree", |m, s| {
            !m.cfg.config.sync || workers_agree(s)
        })
        .property(Expectation::Always, "no deadlock", |_, s| {
            let idle =
                s.network.len() == 0 && s.timers_set.iter().all(|t| t.iter().next().is_none());
            !idle || workers(s).all(|(_, w)| settled(w))
        })
        .property(
            Expectation::Eventually,
            "every operation completes",
            |_, s| workers(s).all(|(_, w)| settled(w)),
        )
        .property(
            Expectation::Sometimes,
            "a request waits at a server",
            |_, s| servers_waiting(s),
        );
    if !detector {
        return model;
    }
    model.property(
        Expectation::Sometimes,
        "a peer failure is reported",
        |_, s| {
            workers(s).any(|(_, w)| {
                w.seen.iter().any(|(_, seen)| {
                    matches!(
                        seen,
                        Seen::Failed {
                            peer_failed: true,
                            ..
                        }
                    )
                })
            })
        },
    )
}

/// The workers' states, with their ranks.
fn workers(s: &State) -> impl Iterator<Item = (usize, &WorkerState)> {
    s.actor_states
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match &**a {
            NodeState::Worker(w) => Some((i, w)),
            NodeState::Server(_) => None,
        })
}

fn servers_waiting(s: &State) -> bool {
    s.actor_states.iter().any(|a| match &**a {
        NodeState::Server(server) => server.server.is_waiting(),
        NodeState::Worker(_) => false,
    })
}

/// A worker that crashed, failed, or ran its whole program with nothing in flight.
fn settled(w: &WorkerState) -> bool {
    w.crashed || w.failed || (w.finished && !w.worker.is_waiting())
}

fn observed_as_specified(config: &DistConfig, expect: Option<&Expect>, seen: &Seen) -> bool {
    match (expect, seen) {
        // The failure detector may fire at any time; then any operation may fail, typed.
        (
            _,
            Seen::Failed {
                peer_failed: true, ..
            },
        ) => config.failure_detector,
        (Some(Expect::Done), Seen::Done) => true,
        (Some(Expect::Values(candidates)), Seen::Values(values)) => {
            if config.sync {
                candidates.contains(values)
            } else {
                each_part_is_a_candidate(config, candidates, values)
            }
        }
        (
            Some(Expect::DuplicateInit),
            Seen::Failed {
                duplicate_init: true,
                ..
            },
        ) => true,
        (
            Some(Expect::CollectiveMismatch),
            Seen::Failed {
                collective_mismatch: true,
                ..
            },
        ) => true,
        _ => false,
    }
}

/// dist_async pulls are atomic per part only (R66): each part of each key must equal that part
/// of some candidate, independently of the other parts.
fn each_part_is_a_candidate(
    config: &DistConfig,
    candidates: &[Vec<Value>],
    values: &[Value],
) -> bool {
    let Ok(layout) = Layout::new(config.servers, config.big_array_bound) else {
        return false;
    };
    values.len() == config.keys.len()
        && config
            .keys
            .iter()
            .zip(values)
            .enumerate()
            .all(|(i, ((key, shape), value))| {
                let numel = shape.iter().product();
                let elements = value.to_f32();
                layout.parts(key, numel, true).iter().all(|part| {
                    candidates.iter().any(|candidate| {
                        candidate.get(i).is_some_and(|c| {
                            let c = c.to_f32();
                            let (a, b) =
                                (c.get(part.range.clone()), elements.get(part.range.clone()));
                            a.is_some() && a.zip(b).is_some_and(|(a, b)| f32_slices_equal(a, b))
                        })
                    })
                })
            })
}

/// In dist_sync, the n-th pull of every worker returns the same values.
fn workers_agree(s: &State) -> bool {
    let pulls = |w: &WorkerState| -> Vec<Vec<Value>> {
        w.seen
            .iter()
            .filter_map(|(_, seen)| match seen {
                Seen::Values(v) => Some(v.clone()),
                _ => None,
            })
            .collect()
    };
    let all: Vec<_> = workers(s).map(|(_, w)| pulls(w)).collect();
    all.iter().all(|a| {
        all.iter()
            .all(|b| a.iter().zip(b.iter()).all(|(x, y)| x == y))
    })
}
