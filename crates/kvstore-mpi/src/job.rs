//! An MPI job running kvstore's distributed mode: [`launch`] starts MPI, gives every worker
//! rank a [`DistKv`] handle for the caller's body, and runs the server loop on the server ranks
//! until every worker is done.
//!
//! Each process has two MPI threads besides the caller's: a receiver that only ever probes and
//! receives, and a sender that only ever sends. Since every process always drains what arrives,
//! a blocking send always completes and two processes sending large messages to each other
//! cannot deadlock (MPI's rendezvous protocol would with one thread doing both).

use crate::endpoint::{Packet, ServerEndpoint, WorkerEndpoint, DATA};
use crate::handle::Handle;
use crate::roles::{Role, Roles};
use crate::Options;
use kvstore_dist::wire::{self, Body, BodyKind};
use kvstore_dist::{Faults, Layout, Outcome, Server, ServerConfig, Worker, WorkerConfig};
use kvstore_spec::codec::Compression;
use kvstore_spec::kind::{Kind, StoreClass};
use kvstore_spec::optimizer::Optimizer;
use kvstore_spec::{Error, Key, Result, Value};
use mpi::point_to_point::MatchedReceiveVec;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A worker's handle on the distributed store.
#[derive(Debug)]
pub struct DistKv<'a> {
    endpoint: &'a WorkerEndpoint,
    rank: usize,
    workers: usize,
    /// The store kind's name, for errors.
    kind: String,
}

impl DistKv<'_> {
    fn values(&self, op: kvstore_dist::OpId) -> Result<Vec<Value>> {
        match self.endpoint.wait(op)? {
            Outcome::Values(values) => Ok(values),
            Outcome::Done | Outcome::Bytes(_) => Err(Error::Protocol {
                reason: "a pull completed without values".into(),
            }),
        }
    }
}

impl Handle for DistKv<'_> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn num_workers(&self) -> usize {
        self.workers
    }

    fn init(&self, pairs: &[(Key, Value)]) -> Result<()> {
        let op = self.endpoint.issue(|w| w.init(pairs))?;
        self.endpoint.wait(op).map(drop)
    }

    /// Returns once the requests are sent (a failure is reported by `wait_all`).
    fn push(&self, pairs: &[(Key, Value)]) -> Result<()> {
        self.endpoint.issue(|w| w.push(pairs)).map(drop)
    }

    fn pull(&self, keys: &[Key]) -> Result<Vec<Value>> {
        let op = self.endpoint.issue(|w| w.pull(keys))?;
        self.values(op)
    }

    fn row_sparse_pull(&self, keys: &[Key], row_ids: &[Vec<i64>]) -> Result<Vec<Value>> {
        let op = self.endpoint.issue(|w| w.row_sparse_pull(keys, row_ids))?;
        self.values(op)
    }

    fn barrier(&self) -> Result<()> {
        let op = self.endpoint.issue(|w| Ok(w.barrier()))?;
        self.endpoint.wait(op).map(drop)
    }

    /// Sent to every server by this worker alone (any worker may call it, R57).
    fn set_optimizer(&self, optimizer: &Optimizer) -> Result<()> {
        let op = self.endpoint.issue(|w| w.set_optimizer(optimizer))?;
        self.endpoint.wait(op).map(drop)
    }

    fn send_command_to_servers(&self, head: i32, body: &str) -> Result<()> {
        let op = self
            .endpoint
            .issue(|w| w.send_command(head, body, &self.kind))?;
        self.endpoint.wait(op).map(drop)
    }

    fn save_optimizer_states(&self, dump_optimizer: bool) -> Result<Vec<u8>> {
        let op = self
            .endpoint
            .issue(|w| Ok(w.save_optimizer_states(dump_optimizer)))?;
        match self.endpoint.wait(op)? {
            Outcome::Bytes(bytes) => Ok(bytes),
            Outcome::Done | Outcome::Values(_) => Err(Error::Protocol {
                reason: "a save completed without bytes".into(),
            }),
        }
    }

    fn load_optimizer_states(&self, bytes: &[u8]) -> Result<()> {
        let op = self.endpoint.issue(|w| w.load_optimizer_states(bytes))?;
        self.endpoint.wait(op).map(drop)
    }

    fn set_gradient_compression(&self, compression: Compression) -> Result<()> {
        self.endpoint.issue(|w| {
            w.set_gradient_compression(compression);
            Ok(w.barrier())
        })?;
        // The barrier above only gives the call an operation to return; wait for it so every
        // worker switches before anyone pushes.
        self.endpoint.wait_all()
    }

    fn wait_all(&self) -> Result<()> {
        self.endpoint.wait_all()
    }
}

/// Runs one MPI job: `body` on every worker rank (its result comes back as `Some`), the server
/// loop on server ranks (`None`). `kind` is `dist_sync` or `dist_async`.
pub fn launch<T>(
    kind: &str,
    options: &Options,
    body: impl FnOnce(&dyn Handle) -> Result<T>,
) -> Result<Option<T>> {
    let kind = Kind::parse(kind)?;
    if kind.name().contains("allreduce") {
        return crate::allreduce::launch(&kind, options, body);
    }
    if kind.class() != StoreClass::Dist {
        return Err(Error::UnsupportedKind {
            kind: kind.name().into(),
            reason: "an MPI job runs the dist kinds".into(),
        });
    }
    let unavailable = |reason: &str| Error::UnsupportedKind {
        kind: kind.name().into(),
        reason: reason.into(),
    };
    let (universe, level) = mpi::initialize_with_threading(Threading::Multiple)
        .ok_or_else(|| unavailable("MPI is already initialised in this process"))?;
    if level != Threading::Multiple {
        return Err(unavailable(
            "this MPI library does not support MPI_THREAD_MULTIPLE",
        ));
    }
    let world = universe.world();
    let rank = usize::try_from(world.rank()).unwrap_or(0);
    let size = usize::try_from(world.size()).unwrap_or(0);
    let roles = Roles::from_env(size)?;
    let layout = Layout::new(roles.servers(), options.big_array_bound)?;
    let (outbox, packets) = mpsc::channel::<Packet>();
    let running = AtomicBool::new(true);
    let role = roles.role(rank);
    let worker = match role {
        Role::Worker(w) => Some(WorkerEndpoint::new(
            roles,
            Worker::new(WorkerConfig {
                rank: w,
                workers: roles.workers(),
                layout,
                faults: Faults::NONE,
            }),
            options.timeout,
            outbox.clone(),
        )),
        Role::Server(_) => None,
    };
    let result = std::thread::scope(|scope| {
        scope.spawn(move || send_loop(packets));
        match (role, &worker) {
            (Role::Worker(w), Some(endpoint)) => {
                drop(outbox);
                let running = &running;
                scope.spawn(move || {
                    receive_loop(|packet| {
                        if let Some((from, head, bodies)) = packet {
                            if let Err(e) = endpoint.on_packet(from, head, bodies) {
                                eprintln!(
                                    "kvstore worker {w}: refused a packet from rank {from}: {e}"
                                );
                            }
                        }
                        running.load(Ordering::Acquire)
                    })
                });
                let kv = DistKv {
                    endpoint,
                    rank: w,
                    workers: roles.workers(),
                    kind: kind.name().to_string(),
                };
                let result = body(&kv);
                // Always stop, so the servers exit and the sender (whose last outbox `stop`
                // drops) drains and ends, even when the body failed.
                let finished = endpoint.wait_all();
                let stopped = endpoint.stop();
                running.store(false, Ordering::Release);
                let value = result?;
                finished?;
                stopped.map(|()| Some(value))
            }
            (role, _) => {
                let index = match role {
                    Role::Server(s) => s,
                    Role::Worker(w) => w,
                };
                let server = Server::new(ServerConfig {
                    index,
                    workers: roles.workers(),
                    sync: kind.is_sync(),
                    faults: Faults::NONE,
                });
                let mut endpoint = ServerEndpoint::new(roles, server, outbox);
                serve(&mut endpoint, options.timeout, index);
                // Dropping the endpoint drops the last outbox: the sender drains and ends.
                drop(endpoint);
                Ok(None)
            }
        }
    });
    if result.is_ok() {
        drop(universe);
    } else {
        // MPI_Finalize waits for every process, and a failed job has one that will never
        // come. Leaving without it hands the caller its error at once; mpirun then ends the
        // job (R64: an error, never a hang).
        std::mem::forget(universe);
    }
    result
}

/// Heads travel with this tag, bodies with [`BODY`]: a receiver probing for heads never
/// takes a body for one.
const HEAD: i32 = 0;
const BODY: i32 = 1;

/// Sends every packet, in order, until every sender of the channel is gone: its head, then
/// each body as a typed message straight from the value's own buffer.
fn send_loop(packets: mpsc::Receiver<Packet>) {
    let world = SimpleCommunicator::world();
    for packet in packets {
        let Ok(to) = i32::try_from(packet.to) else {
            continue;
        };
        let process = world.process_at_rank(to);
        process.send_with_tag(&packet.head[..], HEAD);
        for body in &packet.bodies {
            match body {
                Body::F32(_) | Body::Shared(_) => {
                    process.send_with_tag(body.f32s().unwrap_or_default(), BODY);
                }
                Body::F64(xs) => process.send_with_tag(&xs[..], BODY),
                Body::U16(xs) => process.send_with_tag(&xs[..], BODY),
                Body::U32(xs) => process.send_with_tag(&xs[..], BODY),
            }
        }
    }
}

/// Receives the bodies a data head announces, from the rank that sent the head (MPI keeps
/// one sender's messages of one tag in order).
fn receive_bodies(from: i32, head: &[u8]) -> Result<Vec<Body>> {
    let manifest = match head.split_first() {
        Some((&DATA, head)) => wire::manifest(head)?,
        _ => return Ok(Vec::new()),
    };
    let world = SimpleCommunicator::world();
    let process = world.process_at_rank(from);
    let mut bodies = Vec::with_capacity(manifest.len());
    for (kind, len) in manifest {
        let probed = process.matched_probe_with_tag(BODY);
        let body = match kind {
            BodyKind::F32 => Body::F32(probed.matched_receive_vec().0),
            BodyKind::F64 => Body::F64(probed.matched_receive_vec().0),
            BodyKind::U16 => Body::U16(probed.matched_receive_vec().0),
            BodyKind::U32 => Body::U32(probed.matched_receive_vec().0),
        };
        if body.len() != len {
            return Err(Error::Protocol {
                reason: format!(
                    "rank {from} announced {len} {kind:?} elements and sent {}",
                    body.len()
                ),
            });
        }
        bodies.push(body);
    }
    Ok(bodies)
}

/// Probes and receives until `step` says stop: `step` gets each packet as `Some((from, head,
/// bodies))`, and `None` whenever nothing has arrived (before a short backoff sleep), and
/// returns whether to go on.
fn receive_loop(mut step: impl FnMut(Option<(usize, &[u8], Vec<Body>)>) -> bool) {
    let world = SimpleCommunicator::world();
    let mut idle = Duration::from_micros(1);
    loop {
        let go_on = match world.any_process().immediate_matched_probe_with_tag(HEAD) {
            Some(probed) => {
                let (head, status) = probed.matched_receive_vec::<u8>();
                let source = status.source_rank();
                let from = usize::try_from(source).unwrap_or(usize::MAX);
                idle = Duration::from_micros(1);
                match receive_bodies(source, &head) {
                    Ok(bodies) => step(Some((from, &head, bodies))),
                    Err(e) => {
                        eprintln!("kvstore: refused a packet from rank {from}: {e}");
                        step(None)
                    }
                }
            }
            None => {
                let go_on = step(None);
                std::thread::sleep(idle);
                idle = (idle * 2).min(Duration::from_micros(200));
                go_on
            }
        };
        if !go_on {
            return;
        }
    }
}

/// The server loop: until every worker said it is done. The failure detector fires when a
/// request has waited half the timeout with nothing arriving (R64): servers know which workers
/// a round waits for, so their diagnosis should reach the live workers before the workers' own
/// detectors (the full timeout) give the vaguer "no reply".
fn serve(endpoint: &mut ServerEndpoint, timeout: Duration, index: usize) {
    let timeout = timeout / 2;
    let mut last_heard = Instant::now();
    receive_loop(|packet| {
        match packet {
            Some((from, head, bodies)) => {
                if let Err(e) = endpoint.on_packet(from, head, bodies) {
                    eprintln!("kvstore server {index}: refused a packet from rank {from}: {e}");
                }
                last_heard = Instant::now();
            }
            None if endpoint.is_waiting() && last_heard.elapsed() >= timeout => {
                if let Err(e) = endpoint.expire() {
                    eprintln!("kvstore server {index}: {e}");
                }
                last_heard = Instant::now();
            }
            None => {}
        }
        !endpoint.finished()
    });
}
