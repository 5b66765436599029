//! The protocol against the spec's `DistStore`: W workers and S servers on a simulated network
//! that delivers each link in order and interleaves links as proptest chooses. Every dist_sync
//! pull returns, bit for bit, the spec's value after the round its worker last pushed into
//! (R51, R52, R55, R63), and every call fails exactly when the spec's does, with the same error
//! (R8 key types, R30-R33 row ids, R18 shapes).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kvstore_dist::{Completion, Effects, Faults, Layout, OpId, Outcome, Reply, Request, Server};
use kvstore_dist::{ServerConfig, Worker, WorkerConfig};
use kvstore_spec::codec::{Compression, CompressionType};
use kvstore_spec::dist::DistStore;
use kvstore_spec::kind::Kind;
use kvstore_spec::optimizer::{AdaGrad, Adam, Ftrl, Nag, Optimizer, RmsProp, Sgd};
use kvstore_spec::{sparse, transfer, DType, Key, Tensor, Value};
use proptest::prelude::*;
use std::collections::{BTreeMap, VecDeque};

const KEYS: [(i64, usize); 3] = [(1, 2), (8, 5), (-3, 1)];

#[derive(Debug, Clone)]
enum Op {
    /// Worker pushes (key index, elements; a wrong length is a deliberate mistake).
    Push(usize, Vec<(usize, Vec<f32>)>),
    Pull(usize, Vec<usize>),
    /// row_sparse_pull: keys and row id lists (ids may be out of range or repeat; the list
    /// count may be wrong).
    RowSparsePull(usize, Vec<usize>, Vec<Vec<i64>>),
    /// A key nobody initialised.
    PullUnknown(usize),
    /// A string key where the store's keys are ints (R8), pushed or pulled.
    OtherKeyType(usize, bool),
    /// Saves the optimizer states (R68), with the optimizer or without.
    Save(usize, bool),
    /// Loads the states saved at some earlier save (or damaged bytes when there is none).
    Load(usize, usize),
}

#[derive(Debug, Clone)]
struct Setup {
    workers: usize,
    servers: usize,
    compression: bool,
    /// The optimizer's kind (0..6) and its momentum (or first own parameter).
    optimizer: Option<(u8, f32)>,
    ops: Vec<Op>,
    /// Which link delivers next, cycled.
    schedule: Vec<u8>,
}

fn element() -> impl Strategy<Value = f32> {
    prop_oneof![(-8i32..8).prop_map(|x| x as f32 * 0.25), -2.0f32..2.0]
}

fn op(workers: usize) -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    let pair = (key.clone(), any::<bool>()).prop_flat_map(|(k, wrong)| {
        let n = KEYS[k].1 + usize::from(wrong && k == 0);
        (Just(k), prop::collection::vec(element(), n))
    });
    prop_oneof![
        6 => (0..workers, prop::collection::vec(pair, 1..3)).prop_map(|(w, p)| Op::Push(w, p)),
        4 => (0..workers, prop::collection::vec(key.clone(), 1..3)).prop_map(|(w, k)| Op::Pull(w, k)),
        2 => (
            0..workers,
            prop::collection::vec(key, 1..3),
            prop::collection::vec(prop::collection::vec(-1i64..6, 0..4), 1..3)
        )
            .prop_map(|(w, k, ids)| Op::RowSparsePull(w, k, ids)),
        1 => (0..workers).prop_map(Op::PullUnknown),
        1 => (0..workers, any::<bool>()).prop_map(|(w, push)| Op::OtherKeyType(w, push)),
        1 => (0..workers, any::<bool>()).prop_map(|(w, dump)| Op::Save(w, dump)),
        1 => (0..workers, any::<usize>()).prop_map(|(w, which)| Op::Load(w, which)),
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        1usize..4,
        1usize..4,
        any::<bool>(),
        prop::option::of((0u8..6, 0.0f32..0.9)),
    )
        .prop_flat_map(|(workers, servers, compression, optimizer)| {
            (
                prop::collection::vec(op(workers), 1..40),
                prop::collection::vec(any::<u8>(), 1..64),
            )
                .prop_map(move |(ops, schedule)| Setup {
                    workers,
                    servers,
                    compression,
                    optimizer,
                    ops,
                    schedule,
                })
        })
}

/// A pull waiting for its round: (worker, op, keys, own round per key, row_sparse_pull's ids).
type Waiting = (usize, OpId, Vec<usize>, Vec<usize>, Option<Vec<Vec<i64>>>);

/// An empty row_sparse f32 output of key `k`'s shape, for the spec's row_sparse_pull.
fn rows_template(k: usize) -> Value {
    let n = KEYS[k].1;
    Value::RowSparse(sparse::retain(&dense(&vec![0.0; n]), &[], DType::F32).unwrap())
}

fn dense(xs: &[f32]) -> Value {
    Value::Dense(Tensor::new([xs.len()], xs.to_vec()).unwrap())
}

fn key(k: usize) -> Key {
    Key::Int(KEYS[k].0)
}

/// Links in flight: (from, to) -> messages, in order. Workers are 0..W, servers W..W+S.
#[derive(Default)]
struct Network {
    links: BTreeMap<(usize, usize), VecDeque<Message>>,
}

enum Message {
    Request(Request),
    Reply(Reply),
}

struct Cluster {
    workers: Vec<Worker>,
    servers: Vec<Server>,
    network: Network,
    schedule: Vec<u8>,
    tick: usize,
    /// Completed operations, per worker.
    done: Vec<BTreeMap<OpId, Result<Outcome, kvstore_spec::Error>>>,
}

impl Cluster {
    fn post(&mut self, rank: usize, effects: Effects) {
        let w = self.workers.len();
        for send in effects.sends {
            let link = self
                .network
                .links
                .entry((rank, w + send.server))
                .or_default();
            link.push_back(Message::Request(send.request));
        }
        for Completion { op, result } in effects.completions {
            self.done[rank].insert(op, result);
        }
    }

    /// Delivers messages, links interleaved by the schedule, until none is in flight.
    fn settle(&mut self) {
        let w = self.workers.len();
        while !self.network.links.is_empty() {
            let choice = self.schedule[self.tick % self.schedule.len()] as usize;
            self.tick += 1;
            let link = *self
                .network
                .links
                .keys()
                .nth(choice % self.network.links.len())
                .unwrap();
            let queue = self.network.links.get_mut(&link).unwrap();
            let message = queue.pop_front().unwrap();
            if queue.is_empty() {
                self.network.links.remove(&link);
            }
            match message {
                Message::Request(request) => {
                    for out in self.servers[link.1 - w].handle(link.0, request) {
                        let back = self.network.links.entry((link.1, out.to)).or_default();
                        back.push_back(Message::Reply(out.reply));
                    }
                }
                Message::Reply(reply) => {
                    let effects = self.workers[link.1].handle(link.0 - w, reply).unwrap();
                    self.post(link.1, effects);
                }
            }
        }
    }
}

fn run(setup: &Setup) -> Result<(), TestCaseError> {
    let (workers, servers) = (setup.workers, setup.servers);
    let layout = Layout::new(servers, 3).unwrap();
    let mut spec = DistStore::new(Kind::parse("dist_sync").unwrap(), workers).unwrap();
    let mut cluster = Cluster {
        workers: (0..workers)
            .map(|rank| {
                Worker::new(WorkerConfig {
                    rank,
                    workers,
                    layout,
                    faults: Faults::NONE,
                })
            })
            .collect(),
        servers: (0..servers)
            .map(|index| {
                Server::new(ServerConfig {
                    index,
                    workers,
                    sync: true,
                    faults: Faults::NONE,
                })
            })
            .collect(),
        network: Network::default(),
        schedule: setup.schedule.clone(),
        tick: 0,
        done: vec![BTreeMap::new(); workers],
    };
    let init: Vec<(Key, Value)> = KEYS
        .iter()
        .enumerate()
        .map(|(k, &(_, n))| (key(k), dense(&vec![0.5; n])))
        .collect();
    spec.init(&vec![init.clone(); workers]).unwrap();
    for rank in 0..workers {
        let (_, effects) = cluster.workers[rank].init(&init).unwrap();
        cluster.post(rank, effects);
    }
    let compression = Compression::new(CompressionType::TwoBit, 0.5).unwrap();
    let optimizer = setup.optimizer.map(|(kind, x)| {
        let x = f64::from(x);
        match kind {
            0 => Optimizer::Sgd(Sgd {
                learning_rate: 0.5,
                momentum: x,
                ..Sgd::default()
            }),
            1 => Optimizer::Nag(Nag {
                learning_rate: 0.5,
                momentum: x,
                wd: 0.01,
                ..Nag::default()
            }),
            2 => Optimizer::Adam(Adam {
                learning_rate: 0.1,
                beta1: x,
                ..Adam::default()
            }),
            3 => Optimizer::AdaGrad(AdaGrad::default()),
            4 => Optimizer::RmsProp(RmsProp {
                gamma1: x,
                centered: true,
                ..RmsProp::default()
            }),
            _ => Optimizer::Ftrl(Ftrl {
                lamda1: x * 0.1,
                ..Ftrl::default()
            }),
        }
    });
    if setup.compression {
        spec.set_gradient_compression(compression).unwrap();
        cluster
            .workers
            .iter_mut()
            .for_each(|w| w.set_gradient_compression(compression));
    }
    cluster.settle();
    if let Some(optimizer) = &optimizer {
        spec.set_optimizer(0, optimizer.clone()).unwrap();
        let (_, effects) = cluster.workers[0].set_optimizer(optimizer).unwrap();
        cluster.post(0, effects);
        cluster.settle();
    }
    // Per key, the spec's value after each completed round (index = rounds).
    let mut history: Vec<Vec<Value>> = (0..KEYS.len())
        .map(|k| vec![spec.value(&key(k)).unwrap().clone()])
        .collect();
    // Per worker and key, its pushes so far (its own round count).
    let mut pushed = vec![vec![0usize; KEYS.len()]; workers];
    // Pulls waiting for their round: (worker, op, keys, own round per key, row ids).
    let mut waiting: Vec<Waiting> = Vec::new();
    // Every successful save's bytes.
    let mut saved: Vec<Vec<u8>> = Vec::new();

    for op in &setup.ops {
        match op {
            Op::Push(rank, pairs) => {
                let pairs: Vec<(Key, Value)> =
                    pairs.iter().map(|(k, xs)| (key(*k), dense(xs))).collect();
                let expected = spec.push(*rank, &pairs);
                let got = cluster.workers[*rank].push(&pairs);
                prop_assert_eq!(
                    expected.clone().err(),
                    got.clone().err(),
                    "push {:?}",
                    pairs
                );
                if let Ok((_, effects)) = got {
                    cluster.post(*rank, effects);
                    let mut keys: Vec<usize> = pairs
                        .iter()
                        .map(|(k, _)| KEYS.iter().position(|&(i, _)| Key::Int(i) == *k).unwrap())
                        .collect();
                    keys.sort_unstable();
                    keys.dedup();
                    for k in keys {
                        pushed[*rank][k] += 1;
                        let rounds = spec.completed_rounds(&key(k)) as usize;
                        while history[k].len() <= rounds {
                            history[k].push(spec.value(&key(k)).unwrap().clone());
                        }
                    }
                }
            }
            Op::Pull(rank, keys) => {
                let names: Vec<Key> = keys.iter().map(|&k| key(k)).collect();
                let (id, effects) = cluster.workers[*rank].pull(&names).unwrap();
                cluster.post(*rank, effects);
                let own = keys.iter().map(|&k| pushed[*rank][k]).collect();
                waiting.push((*rank, id, keys.clone(), own, None));
            }
            Op::RowSparsePull(rank, keys, ids) => {
                let names: Vec<Key> = keys.iter().map(|&k| key(k)).collect();
                let outs: Vec<(Key, Value)> =
                    keys.iter().map(|&k| (key(k), rows_template(k))).collect();
                // The spec validates before it decides whether the pull waits.
                let expected = spec.clone().row_sparse_pull(*rank, &outs, ids).err();
                let got = cluster.workers[*rank].row_sparse_pull(&names, ids);
                prop_assert_eq!(&expected, &got.clone().err(), "row_sparse_pull {:?}", ids);
                if let Ok((id, effects)) = got {
                    cluster.post(*rank, effects);
                    let own = keys.iter().map(|&k| pushed[*rank][k]).collect();
                    waiting.push((*rank, id, keys.clone(), own, Some(ids.clone())));
                }
            }
            Op::OtherKeyType(rank, push) => {
                let named = Key::from("w");
                let pairs = [(named.clone(), dense(&[0.0]))];
                let (expected, got) = if *push {
                    (
                        spec.push(*rank, &pairs).err(),
                        cluster.workers[*rank].push(&pairs).err(),
                    )
                } else {
                    (
                        spec.pull(*rank, &pairs, true).err(),
                        cluster.workers[*rank].pull(&[named]).err(),
                    )
                };
                prop_assert!(expected.is_some());
                prop_assert_eq!(expected, got);
            }
            Op::Save(rank, dump) => {
                let expected = spec.save_optimizer_states(*dump);
                let (op, effects) = cluster.workers[*rank].save_optimizer_states(*dump);
                cluster.post(*rank, effects);
                cluster.settle();
                let got = cluster.done[*rank].remove(&op).expect("a save completes");
                prop_assert_eq!(&expected.clone().map(Outcome::Bytes), &got);
                if let Ok(bytes) = expected {
                    saved.push(bytes);
                }
            }
            Op::Load(rank, which) => {
                let bytes = if saved.is_empty() {
                    b"{\"format\": 1}".to_vec()
                } else {
                    saved[which % saved.len()].clone()
                };
                let expected = spec.load_optimizer_states(&bytes);
                match cluster.workers[*rank].load_optimizer_states(&bytes) {
                    Err(error) => prop_assert_eq!(expected, Err(error)),
                    Ok((op, effects)) => {
                        cluster.post(*rank, effects);
                        cluster.settle();
                        let got = cluster.done[*rank].remove(&op).expect("a load completes");
                        prop_assert_eq!(expected.map(|()| Outcome::Done), got);
                    }
                }
            }
            Op::PullUnknown(rank) => {
                let unknown = Key::Int(99);
                let out = [(unknown.clone(), dense(&[0.0]))];
                let expected = spec.pull(*rank, &out, true).err();
                let got = cluster.workers[*rank].pull(&[unknown]).err();
                prop_assert_eq!(expected, got);
            }
        }
        cluster.settle();
        // Every pull whose rounds are complete in the spec has completed, with those values.
        let mut still = Vec::new();
        for (rank, id, keys, own, rows) in waiting {
            let ready = keys.iter().zip(&own).all(|(&k, &r)| r < history[k].len());
            match cluster.done[rank].remove(&id) {
                None => {
                    prop_assert!(
                        !ready,
                        "a pull of worker {} waits for complete rounds",
                        rank
                    );
                    still.push((rank, id, keys, own, rows));
                }
                Some(result) => {
                    prop_assert!(ready, "a pull of worker {} returned before its round", rank);
                    let expected: Vec<Value> = keys
                        .iter()
                        .zip(&own)
                        .map(|(&k, &r)| history[k][r].clone())
                        .collect();
                    let expected: Vec<Value> = expected
                        .into_iter()
                        .zip(keys.iter())
                        .enumerate()
                        .map(|(i, (v, &k))| {
                            let n = KEYS[k].1;
                            let whole = Value::Dense(Tensor::new([n], v.to_f32()).unwrap());
                            match &rows {
                                None => whole,
                                Some(lists) => {
                                    let ids = if lists.len() == 1 {
                                        &lists[0]
                                    } else {
                                        &lists[i]
                                    };
                                    transfer::row_sparse_output(
                                        &key(k),
                                        &whole,
                                        &rows_template(k),
                                        ids,
                                    )
                                    .unwrap()
                                }
                            }
                        })
                        .collect();
                    prop_assert_eq!(result, Ok(Outcome::Values(expected)));
                }
            }
        }
        waiting = still;
    }
    // A pull still waiting waits for a round the spec also has open.
    for (rank, _, keys, _, _) in &waiting {
        let open = keys
            .iter()
            .any(|&k| spec.pending_pushes(*rank, &key(k)) > 0);
        prop_assert!(open, "worker {} waits for no open round", rank);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
    ))]

    #[test]
    fn r52_protocol_matches_the_spec_dist_store_on_random_interleavings(setup in setup()) {
        run(&setup)?;
    }
}
