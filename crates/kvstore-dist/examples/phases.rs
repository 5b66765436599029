//! Times each phase of one push + pull of a 4 Mi f32 key through the state machines, in one
//! process and without a transport: `cargo run --release -p kvstore-dist --example phases`.
#![allow(clippy::unwrap_used)]
use kvstore_dist::wire::{decode, encode, Message};
use kvstore_dist::{Faults, Layout, Server, ServerConfig, Worker, WorkerConfig};
use kvstore_spec::{Key, Tensor, Value};
use std::time::Instant;

fn main() {
    let n = 1 << 22;
    let layout = Layout::new(1, 1_000_000).unwrap();
    let mut server = Server::new(ServerConfig {
        index: 0,
        workers: 1,
        sync: true,
        faults: Faults::NONE,
    });
    let mut worker = Worker::new(WorkerConfig {
        rank: 0,
        workers: 1,
        layout,
        faults: Faults::NONE,
    });
    let value = Value::Dense(Tensor::new([n], vec![0.5_f32; n]).unwrap());
    let key = Key::Int(0);
    let t = Instant::now();
    let (_, fx) = worker.init(&[(key.clone(), value.clone())]).unwrap();
    println!("worker.init {:?}", t.elapsed());
    for s in fx.sends {
        for o in server.handle(0, s.request) {
            let _ = worker.handle(0, o.reply);
        }
    }
    let t = Instant::now();
    let (_, fx) = worker.push(&[(key.clone(), value.clone())]).unwrap();
    println!("worker.push {:?}", t.elapsed());
    for s in fx.sends {
        let t = Instant::now();
        let bytes = encode(&Message::Request(s.request)).unwrap();
        println!("encode {:?}", t.elapsed());
        let t = Instant::now();
        let Message::Request(r) = decode(&bytes).unwrap() else {
            continue;
        };
        println!("decode {:?}", t.elapsed());
        let t = Instant::now();
        let out = server.handle(0, r);
        println!("server.handle push {:?}", t.elapsed());
        for o in out {
            let t = Instant::now();
            let _ = worker.handle(0, o.reply);
            println!("worker.handle ack {:?}", t.elapsed());
        }
    }
    let t = Instant::now();
    let (_, fx) = worker.pull(std::slice::from_ref(&key)).unwrap();
    for s in fx.sends {
        let out = server.handle(0, s.request);
        println!("server.handle pull {:?}", t.elapsed());
        for o in out {
            let t = Instant::now();
            let _ = worker.handle(0, o.reply);
            println!("worker.handle value {:?}", t.elapsed());
        }
    }
}
