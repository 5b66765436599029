//! The state machines' own rules, one request at a time: malformed and unexpected messages are
//! refused with a typed error and change nothing (R65); the layout decides who holds what (R63).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kvstore_dist::{
    Faults, Layout, Payload, Reply, Request, Server, ServerConfig, Worker, WorkerConfig,
};
use kvstore_spec::codec::{Compression, CompressionType};
use kvstore_spec::{Error, Key, Tensor, Value};

fn server(index: usize, workers: usize) -> Server {
    Server::new(ServerConfig {
        index,
        workers,
        sync: true,
        faults: Faults::NONE,
    })
}

fn flat(xs: &[f32]) -> Value {
    Value::Dense(Tensor::new([xs.len()], xs.to_vec()).unwrap())
}

fn failed(replies: &[kvstore_dist::Outgoing]) -> &Error {
    match replies {
        [kvstore_dist::Outgoing {
            reply: Reply::Failed { error, .. },
            ..
        }] => error,
        other => panic!("expected one failure, got {other:?}"),
    }
}

#[test]
fn r65_malformed_requests_are_refused_and_change_nothing() {
    let mut s = server(0, 2);
    let key = Key::Int(4);
    s.handle(
        0,
        Request::Init {
            id: 0,
            key: key.clone(),
            value: flat(&[1.0, 2.0]),
        },
    );
    let before = s.clone();

    // Wrong element count, unknown key, unknown worker, a barrier twice, a second init.
    let wrong_size = Request::Push {
        id: 1,
        key: key.clone(),
        payload: Payload::Plain(flat(&[1.0])),
    };
    assert!(matches!(
        failed(&s.handle(0, wrong_size)),
        Error::ShapeMismatch { .. }
    ));
    let unknown = Request::Pull {
        id: 2,
        key: Key::Int(5),
        rows: None,
    };
    assert!(matches!(
        failed(&s.handle(0, unknown)),
        Error::NotInitialized { .. }
    ));
    let stranger = Request::Pull {
        id: 3,
        key: key.clone(),
        rows: None,
    };
    assert!(matches!(
        failed(&s.handle(7, stranger)),
        Error::UnknownWorker { rank: 7, .. }
    ));
    // Row ids a worker would have refused (R65: the server checks again).
    for (id, rows) in [
        (10, vec![2]),
        (11, vec![1, 0]),
        (12, vec![0, 0]),
        (13, vec![-1]),
    ] {
        let bad_rows = Request::Pull {
            id,
            key: key.clone(),
            rows: Some(rows),
        };
        assert!(matches!(
            failed(&s.handle(0, bad_rows)),
            Error::RowIdOutOfRange { .. } | Error::Protocol { .. }
        ));
    }
    let again = Request::Init {
        id: 4,
        key: key.clone(),
        value: flat(&[9.0, 9.0]),
    };
    assert!(matches!(
        failed(&s.handle(1, again)),
        Error::DuplicateInit { .. }
    ));
    // Quantised words that cannot hold the elements they claim.
    let compression = Compression::new(CompressionType::TwoBit, 0.5).unwrap();
    let short = Request::Push {
        id: 5,
        key: key.clone(),
        payload: Payload::Quantized {
            compression,
            words: vec![],
            len: 2,
        },
    };
    assert!(matches!(
        failed(&s.handle(0, short)),
        Error::Protocol { .. }
    ));
    assert_eq!(s, before, "a refused request changed the server");

    assert!(s.handle(0, Request::Barrier { id: 6 }).is_empty());
    let twice = s.handle(0, Request::Barrier { id: 7 });
    assert!(matches!(failed(&twice), Error::Protocol { .. }));
    let mut other = server(1, 2);
    let misdirected = other.handle(0, Request::Barrier { id: 8 });
    assert!(matches!(failed(&misdirected), Error::Protocol { .. }));
}

#[test]
fn r65_a_reply_to_nothing_in_flight_is_refused_and_changes_nothing() {
    let layout = Layout::new(1, 10).unwrap();
    let mut w = Worker::new(WorkerConfig {
        rank: 1,
        workers: 2,
        layout,
        faults: Faults::NONE,
    });
    let before = w.clone();
    for reply in [
        Reply::Done { id: 0 },
        Reply::Value {
            id: 3,
            value: std::sync::Arc::new(flat(&[1.0])),
        },
        Reply::Failed {
            id: 9,
            error: Error::NoOptimizer,
        },
    ] {
        assert!(matches!(w.handle(0, reply), Err(Error::Protocol { .. })));
    }
    assert_eq!(w, before);
    // A value in answer to a barrier is refused too.
    let (_, effects) = w.barrier();
    let id = effects.sends[0].request.id();
    let during = w.clone();
    let reply = Reply::Value {
        id,
        value: std::sync::Arc::new(flat(&[1.0])),
    };
    assert!(matches!(w.handle(0, reply), Err(Error::Protocol { .. })));
    assert_eq!(w, during);
}

#[test]
fn r59_a_push_with_a_bad_value_sends_nothing_and_keeps_the_residuals() {
    let layout = Layout::new(2, 4).unwrap();
    let (a, b) = (Key::Int(1), Key::Int(2));
    let pairs = [(a.clone(), flat(&[0.0; 4])), (b.clone(), flat(&[0.0; 2]))];
    let (mut workers, _) = run_init(layout, 2, &[pairs.to_vec(), pairs.to_vec()]);
    let mut w = workers.swap_remove(1);
    w.set_gradient_compression(Compression::new(CompressionType::TwoBit, 0.5).unwrap());
    let before = w.clone();
    let wrong = w.push(&[(a.clone(), flat(&[0.3; 4])), (b.clone(), flat(&[0.3; 3]))]);
    assert!(matches!(wrong, Err(Error::ShapeMismatch { .. })));
    let unknown = w.push(&[(Key::Int(3), flat(&[0.3]))]);
    assert!(matches!(unknown, Err(Error::NotInitialized { .. })));
    assert_eq!(w, before);
    // A row_sparse push into the sliced key is refused (it cannot be cut into element
    // ranges); without compression, so the refusal is the one that fires.
    let mut uncompressed = {
        let (mut ws, _) = run_init(layout, 2, &[pairs.to_vec(), pairs.to_vec()]);
        ws.swap_remove(1)
    };
    let rows =
        Value::RowSparse(kvstore_spec::value::RowSparse::new([4], vec![1], vec![1.0f32]).unwrap());
    let fresh = uncompressed.clone();
    let refused = uncompressed.push(&[(a.clone(), rows)]);
    assert!(
        matches!(&refused, Err(Error::UnsupportedOperation { op, .. }) if op.contains("sliced")),
        "{refused:?}"
    );
    assert_eq!(uncompressed, fresh);
    // A valid push reaches both servers for the sliced key, one for the small key.
    let (_, effects) = w
        .push(&[(a, flat(&[0.3; 4])), (b, flat(&[0.3; 2]))])
        .unwrap();
    let mut servers: Vec<usize> = effects.sends.iter().map(|s| s.server).collect();
    servers.sort_unstable();
    assert_eq!(servers.len(), 3);
}

#[test]
fn r67_a_server_command_is_checked_before_anything_is_sent() {
    let layout = Layout::new(3, 4).unwrap();
    let mut w = Worker::new(WorkerConfig {
        rank: 0,
        workers: 1,
        layout,
        faults: Faults::NONE,
    });
    let before = w.clone();
    for (head, body) in [(2, ""), (7, ""), (0, "{"), (4, "4bit")] {
        assert!(
            w.send_command(head, body, "dist_sync").is_err(),
            "head {head}"
        );
        assert_eq!(w, before, "head {head}");
    }
    // Head 4: nothing to send, done at once.
    let (op, effects) = w.send_command(4, "2bit,0.5", "dist_sync").unwrap();
    assert!(effects.sends.is_empty());
    assert_eq!(effects.completions.len(), 1);
    assert_eq!(effects.completions[0].op, op);
    assert!(effects.completions[0].result.is_ok());
    // Head 0: the optimizer goes to every server.
    let sgd = kvstore_spec::optimizer::Optimizer::Sgd(kvstore_spec::optimizer::Sgd::default());
    let json = serde_json::to_string(&sgd).unwrap();
    let (_, effects) = w.send_command(0, &json, "dist_sync").unwrap();
    let mut servers: Vec<usize> = effects
        .sends
        .iter()
        .filter(
            |s| matches!(&s.request, Request::SetOptimizer { optimizer, .. } if *optimizer == sgd),
        )
        .map(|s| s.server)
        .collect();
    servers.sort_unstable();
    assert_eq!(servers, vec![0, 1, 2]);
}

/// The servers after an init, and each worker's init result.
type Cluster = (
    Vec<Server>,
    Vec<kvstore_spec::Result<kvstore_dist::Outcome>>,
);

/// Every worker of a fresh cluster calls init with its own pairs; delivers every message until
/// quiet. Returns the workers, the servers and each worker's init result.
fn run_init(
    layout: Layout,
    workers: usize,
    per_worker: &[Vec<(Key, Value)>],
) -> (Vec<Worker>, Cluster) {
    let mut servers: Vec<Server> = (0..layout.servers()).map(|s| server(s, workers)).collect();
    let mut ws: Vec<Worker> = (0..workers)
        .map(|rank| {
            Worker::new(WorkerConfig {
                rank,
                workers,
                layout,
                faults: Faults::NONE,
            })
        })
        .collect();
    let mut queue: Vec<(usize, kvstore_dist::Send)> = Vec::new();
    for (rank, pairs) in per_worker.iter().enumerate() {
        let (_, effects) = ws[rank].init(pairs).unwrap();
        queue.extend(effects.sends.into_iter().map(|send| (rank, send)));
    }
    let mut done: Vec<Option<_>> = vec![None; workers];
    while let Some((rank, send)) = queue.pop() {
        for out in servers[send.server].handle(rank, send.request) {
            let more = ws[out.to].handle(send.server, out.reply).unwrap();
            queue.extend(more.sends.into_iter().map(|send| (out.to, send)));
            for c in more.completions {
                done[out.to] = Some(c.result);
            }
        }
    }
    let done = done
        .into_iter()
        .map(|d| d.expect("init completes"))
        .collect();
    (ws, (servers, done))
}

#[test]
fn r49_workers_that_init_different_shapes_all_fail_and_nothing_is_stored() {
    let layout = Layout::new(1, 1_000_000).unwrap();
    let key = Key::Int(3);
    let per_worker: Vec<Vec<(Key, Value)>> = [2usize, 3]
        .iter()
        .map(|&n| vec![(key.clone(), flat(&vec![1.0; n]))])
        .collect();
    let (mut workers, (servers, done)) = run_init(layout, 2, &per_worker);
    let s = &servers[0];
    for (rank, result) in done.into_iter().enumerate() {
        assert!(
            matches!(&result, Err(Error::CollectiveMismatch { reason, .. }) if reason.contains("worker 1")),
            "worker {rank}: {result:?}"
        );
    }
    assert!(s.value(&key).is_none(), "nothing was stored");
    assert!(!s.is_waiting());
    // The workers know no key either: a push is refused before anything is sent (R7).
    assert!(matches!(
        workers[0].push(&[(key.clone(), flat(&[1.0, 1.0]))]),
        Err(Error::NotInitialized { .. })
    ));
    // And the same init, agreed this time, succeeds.
    let agreed = vec![per_worker[0].clone(), per_worker[0].clone()];
    let (_, (servers, done)) = run_init(layout, 2, &agreed);
    assert!(done.iter().all(Result::is_ok), "{done:?}");
    assert!(servers[0].value(&key).is_some());
}

#[test]
fn r49_a_worker_that_refuses_its_init_arguments_still_takes_part_and_nobody_waits() {
    let layout = Layout::new(2, 1_000_000).unwrap();
    let (k3, k4) = (Key::Int(3), Key::Int(4));
    let twice = vec![(k3.clone(), flat(&[1.0])), (k3.clone(), flat(&[1.0]))];
    // Both workers give a key twice: each fails with its own DuplicateInit, at once, and the
    // key is not taken for inited.
    let (_, (servers, done)) = run_init(layout, 2, &[twice.clone(), twice.clone()]);
    for result in &done {
        assert!(
            matches!(result, Err(Error::DuplicateInit { key }) if *key == k3),
            "{result:?}"
        );
    }
    assert!(servers.iter().all(|s| !s.is_waiting()));
    // Worker 0 refuses, worker 1 asks for something else: a mismatch for both, not a wait.
    let other = vec![(k3.clone(), flat(&[1.0])), (k4.clone(), flat(&[1.0]))];
    let (_, (servers, done)) = run_init(layout, 2, &[twice, other.clone()]);
    for result in &done {
        assert!(
            matches!(result, Err(Error::CollectiveMismatch { .. })),
            "{result:?}"
        );
    }
    assert!(servers
        .iter()
        .all(|s| !s.is_waiting() && s.value(&k3).is_none()));
    // The refusals left nothing behind: the same keys, agreed and valid, are stored.
    let (_, (servers, done)) = run_init(layout, 2, &[other.clone(), other]);
    assert!(done.iter().all(Result::is_ok), "{done:?}");
    assert!(servers.iter().any(|s| s.value(&k4).is_some()));
}
