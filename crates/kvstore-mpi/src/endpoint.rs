//! The protocol state machines behind a transport: bytes in from any rank, bytes out to a
//! rank, and callers that block until their operation completes or the failure detector fires
//! (R64). Nothing here knows MPI, so the endpoints run over channels in tests.

use crate::roles::{Role, Roles};
use kvstore_dist::wire::{Body, Frame, Message};
use kvstore_dist::{Completion, Effects, OpId, Outcome, Server, Worker};
use kvstore_spec::{Error, Result};
use std::collections::BTreeMap;
use std::sync::mpsc::Sender;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// What an endpoint hands its transport: a head for an MPI rank, and the bodies that follow
/// it (the elements of the message's values, sent as typed messages without a copy).
#[derive(Debug)]
pub struct Packet {
    /// The MPI rank.
    pub to: usize,
    /// [`DATA`] and a frame's head, or [`STOP`].
    pub head: Vec<u8>,
    /// The frame's bodies.
    pub bodies: Vec<Body>,
}

/// The first byte of every head: a protocol message, or a worker saying it is done.
pub const DATA: u8 = 0;
/// See [`DATA`].
pub const STOP: u8 = 1;

/// A protocol message as a data packet for rank `to`.
fn data(to: usize, message: Message) -> Result<Packet> {
    let frame = Frame::new(message)?;
    let mut head = Vec::with_capacity(1 + frame.head.len());
    head.push(DATA);
    head.extend_from_slice(&frame.head);
    Ok(Packet {
        to,
        head,
        bodies: frame.bodies,
    })
}

/// The message of a data packet's head (without its [`DATA`] byte) and bodies.
fn message(head: &[u8], bodies: Vec<Body>) -> Result<Message> {
    Frame {
        head: head.to_vec(),
        bodies,
    }
    .into_message()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A worker's side: its state machine, the operations that completed, and a clock of the last
/// reply heard.
#[derive(Debug)]
pub struct WorkerEndpoint {
    roles: Roles,
    timeout: Duration,
    /// `None` once the worker stopped: the channel closes and the transport's sender ends.
    outbox: Mutex<Option<Sender<Packet>>>,
    core: Mutex<WorkerCore>,
    changed: Condvar,
}

#[derive(Debug)]
struct WorkerCore {
    worker: Worker,
    done: BTreeMap<OpId, Result<Outcome>>,
    last_heard: Instant,
}

impl WorkerEndpoint {
    /// A worker endpoint; `timeout` is the failure detector's patience (R64).
    pub fn new(roles: Roles, worker: Worker, timeout: Duration, outbox: Sender<Packet>) -> Self {
        WorkerEndpoint {
            roles,
            timeout,
            outbox: Mutex::new(Some(outbox)),
            core: Mutex::new(WorkerCore {
                worker,
                done: BTreeMap::new(),
                last_heard: Instant::now(),
            }),
            changed: Condvar::new(),
        }
    }

    /// Issues an operation and returns its id without waiting.
    pub fn issue(&self, call: impl FnOnce(&mut Worker) -> Result<(OpId, Effects)>) -> Result<OpId> {
        let mut core = lock(&self.core);
        let (op, effects) = call(&mut core.worker)?;
        if !core.worker.is_waiting() {
            core.last_heard = Instant::now();
        }
        self.apply(&mut core, effects)?;
        Ok(op)
    }

    /// Blocks until `op` completes; fails every operation in flight with `PeerFailed` when no
    /// reply arrives for the timeout.
    pub fn wait(&self, op: OpId) -> Result<Outcome> {
        self.wait_until(|core| {
            let unknown = || Error::Protocol {
                reason: format!("operation {op} is not in flight (or was already waited for)"),
            };
            // With nothing in flight the op can never complete: an error, not a hang.
            match core.done.remove(&op) {
                Some(result) => Some(result),
                None if !core.worker.is_waiting() => Some(Err(unknown())),
                None => None,
            }
        })?
    }

    /// Blocks until no operation is in flight; returns the first failure among the operations
    /// nobody waited for (pushes), in issue order.
    pub fn wait_all(&self) -> Result<()> {
        self.wait_until(|core| {
            if core.worker.is_waiting() {
                return None;
            }
            let done = std::mem::take(&mut core.done);
            Some(done.into_values().find_map(Result::err).map_or(Ok(()), Err))
        })?
    }

    /// Blocks until `ready` gives a value, running the failure detector (R64) meanwhile: after
    /// the timeout without a reply, every operation in flight fails, which completes them.
    fn wait_until<R>(&self, mut ready: impl FnMut(&mut WorkerCore) -> Option<R>) -> Result<R> {
        let mut core = lock(&self.core);
        loop {
            if let Some(value) = ready(&mut core) {
                return Ok(value);
            }
            let quiet = core.last_heard.elapsed();
            if quiet >= self.timeout {
                let effects = core.worker.expire();
                self.apply(&mut core, effects)?;
                continue;
            }
            let (next, _) = self
                .changed
                .wait_timeout(core, self.timeout - quiet)
                .unwrap_or_else(PoisonError::into_inner);
            core = next;
        }
    }

    /// A packet from MPI rank `from`: its head and its bodies.
    pub fn on_packet(&self, from: usize, head: &[u8], bodies: Vec<Body>) -> Result<()> {
        let Some((&DATA, head)) = head.split_first() else {
            return Err(Error::Protocol {
                reason: format!("worker got a non-data packet from rank {from}"),
            });
        };
        let Role::Server(server) = self.roles.role(from) else {
            return Err(Error::Protocol {
                reason: format!("worker got a packet from worker rank {from}"),
            });
        };
        let Message::Reply(reply) = message(head, bodies)? else {
            return Err(Error::Protocol {
                reason: format!("worker got a request from server {server}"),
            });
        };
        let mut core = lock(&self.core);
        core.last_heard = Instant::now();
        let effects = core.worker.handle(server, reply)?;
        self.apply(&mut core, effects)
    }

    /// Sends the requests, records the completions and wakes the waiters.
    fn apply(&self, core: &mut WorkerCore, effects: Effects) -> Result<()> {
        for send in effects.sends {
            let to = self.roles.server_rank(send.server);
            self.post(data(to, Message::Request(send.request))?)?;
        }
        if !effects.completions.is_empty() {
            for Completion { op, result } in effects.completions {
                core.done.insert(op, result);
            }
            self.changed.notify_all();
        }
        Ok(())
    }

    /// Tells every server this worker is done (the servers exit once all workers are), then
    /// closes the outbox; later calls fail.
    pub fn stop(&self) -> Result<()> {
        let result = (0..self.roles.servers()).try_for_each(|s| {
            self.post(Packet {
                to: self.roles.server_rank(s),
                head: vec![STOP],
                bodies: Vec::new(),
            })
        });
        lock(&self.outbox).take();
        result
    }

    fn post(&self, packet: Packet) -> Result<()> {
        let closed = || Error::PeerFailed {
            peer: "the transport".into(),
            reason: "this worker has stopped".into(),
        };
        lock(&self.outbox)
            .as_ref()
            .ok_or_else(closed)?
            .send(packet)
            .map_err(|_| closed())
    }
}

/// A server's side: its state machine and the count of workers that said they are done.
#[derive(Debug)]
pub struct ServerEndpoint {
    roles: Roles,
    server: Server,
    outbox: Sender<Packet>,
    stopped: usize,
}

impl ServerEndpoint {
    /// A server endpoint.
    pub fn new(roles: Roles, server: Server, outbox: Sender<Packet>) -> Self {
        ServerEndpoint {
            roles,
            server,
            outbox,
            stopped: 0,
        }
    }

    /// Whether every worker said it is done.
    pub fn finished(&self) -> bool {
        self.stopped >= self.roles.workers()
    }

    /// Whether a request waits for other workers (the failure detector's timer runs).
    pub fn is_waiting(&self) -> bool {
        self.server.is_waiting()
    }

    /// A packet from MPI rank `from`; malformed packets are refused (R65) and change nothing.
    pub fn on_packet(&mut self, from: usize, head: &[u8], bodies: Vec<Body>) -> Result<()> {
        let Role::Worker(worker) = self.roles.role(from) else {
            return Err(Error::Protocol {
                reason: format!("server got a packet from server rank {from}"),
            });
        };
        match head.split_first() {
            Some((&STOP, _)) => {
                self.stopped += 1;
                Ok(())
            }
            Some((&DATA, head)) => {
                let Message::Request(request) = message(head, bodies)? else {
                    return Err(Error::Protocol {
                        reason: format!("server got a reply from worker {worker}"),
                    });
                };
                let replies = self.server.handle(worker, request);
                self.send(replies)
            }
            _ => Err(Error::Protocol {
                reason: format!("server got an empty or unknown packet from rank {from}"),
            }),
        }
    }

    /// The failure detector fired (R64).
    pub fn expire(&mut self) -> Result<()> {
        let replies = self.server.expire();
        self.send(replies)
    }

    fn send(&self, replies: Vec<kvstore_dist::Outgoing>) -> Result<()> {
        for out in replies {
            self.outbox
                .send(data(out.to, Message::Reply(out.reply))?)
                .map_err(|_| Error::PeerFailed {
                    peer: "the transport".into(),
                    reason: "its sending thread has stopped".into(),
                })?;
        }
        Ok(())
    }
}
