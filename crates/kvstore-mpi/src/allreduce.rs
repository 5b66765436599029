//! The allreduce kind (`dist_sync_allreduce`): no servers. Every rank of the `mpirun` job is a
//! worker that holds every key whole; a push sums every worker's contribution with MPI
//! collectives, then every worker runs the same update on its own copy (SPEC R69,
//! docs/distributed.md "The allreduce kind").
//!
//! Results equal the spec's `DistStore` bit for bit (R51), which needs the contributions added
//! in rank order. MPI_Allreduce promises no order, so the sum is built from collectives that
//! only move data, and the additions happen here:
//! - dense f32 contributions: a reduce-scatter (an all-to-all: worker j receives slice j of
//!   every contribution and adds them in rank order), then an all-gather of the summed slices;
//! - compressed pushes (R55): an all-gather of the 2-bit/1-bit words; every worker decodes them
//!   and adds them in rank order;
//! - anything else (other dtypes, row_sparse contributions): an all-gather of the encoded
//!   contributions, summed by the spec's `reduce::sum` in rank order.
//!
//! Every collective call starts with a header exchange (an all-gather of five words: which
//! call, its number, a hash of its arguments' keys and shapes, whether this worker refused its
//! arguments, and a hash of how each key will be summed), so workers whose calls disagree fail
//! on every worker with `CollectiveMismatch` instead of hanging or pairing mismatched MPI
//! collectives.
//!
//! The collectives run on a thread of their own, which owns their buffers; the caller waits
//! for it with the failure detector's timeout (R64). rsmpi has no safe way to walk away from a
//! pending non-blocking collective: dropping its `Request` panics, leaving a `request::scope`
//! with one pending aborts the process, and a `StaticScope` needs `'static` buffers, i.e. a
//! leak per push. So that thread polls each request with `test()` until it completes, however
//! long that takes, while the caller gives up after the timeout with `PeerFailed`; a thread
//! stuck that way keeps its buffers, and the process leaves without MPI_Finalize, as
//! `job::launch` does.

use crate::handle::Handle;
use crate::Options;
use kvstore_dist::{wire, Message, Payload, Request};
use kvstore_spec::codec::Compression;
use kvstore_spec::key::{self, KeyType};
use kvstore_spec::kind::{Kind, StoreClass};
use kvstore_spec::optimizer::{Optimizer, OptimizerUpdater};
use kvstore_spec::updater::UpdaterSlot;
use kvstore_spec::{reduce, sparse, transfer, DType, Data, Device, Error, Key, Result};
use kvstore_spec::{Tensor, Value};
use mpi::datatype::PartitionMut;
use mpi::request::{Request as Pending, Scope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::{Count, Threading};
use std::borrow::Cow;
use std::cell::{RefCell, RefMut};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The most elements one MPI buffer may hold: MPI counts are C `int`s.
const MAX_COUNT: usize = i32::MAX as usize;

/// Spare f32 buffers kept for reuse (the previous stored values and contributions), so a
/// push of a big key writes into pages already mapped instead of faulting in fresh ones.
const SPARE_BUFFERS: usize = 4;

/// Smaller buffers are not worth keeping.
const SPARE_AT_LEAST: usize = 1 << 12;

/// The point-to-point tag of the messages that announce a collective call (names the silent
/// workers when one never comes, R64).
const ANNOUNCE: mpi::Tag = 0x6b76;

/// The tags of the reduce-scatter's and the all-gather's messages.
const SCATTER: mpi::Tag = 0x6b77;
const GATHER: mpi::Tag = 0x6b78;

/// How long the collective thread polls a request back to back before it starts to sleep
/// between polls (non-blocking collectives only progress while they are polled).
const SPIN: Duration = Duration::from_millis(50);

/// The longest sleep between two polls of a request.
const LONGEST_NAP: Duration = Duration::from_micros(500);

/// Runs one MPI job of the allreduce kind: `body` on every rank, each a worker (its result
/// comes back as `Some`). `KVSTORE_NUM_SERVERS` is ignored: there are no servers.
///
/// `kind` must be a synchronous dist kind (`dist_sync_allreduce`); an `_async` name is
/// `UnsupportedKind`, since an allreduce is a collective round by construction.
pub fn launch<T>(
    kind: &Kind,
    options: &Options,
    body: impl FnOnce(&dyn Handle) -> Result<T>,
) -> Result<Option<T>> {
    let refuse = |reason: &str| Error::UnsupportedKind {
        kind: kind.name().into(),
        reason: reason.into(),
    };
    if kind.class() != StoreClass::Dist {
        return Err(refuse("the allreduce layout runs the dist kinds"));
    }
    if !kind.is_sync() {
        return Err(refuse(
            "an allreduce is a collective round, so it has no asynchronous variant (dist_async \
             runs with parameter servers)",
        ));
    }
    let (universe, level) = mpi::initialize_with_threading(Threading::Serialized)
        .ok_or_else(|| refuse("MPI is already initialised in this process"))?;
    // One thread at a time calls MPI: the caller's before and after the job, the collective
    // thread in between.
    if !matches!(level, Threading::Serialized | Threading::Multiple) {
        return Err(refuse(
            "this MPI library does not support MPI_THREAD_SERIALIZED",
        ));
    }
    let world = universe.world();
    let rank = usize::try_from(world.rank()).unwrap_or(0);
    let workers = usize::try_from(world.size()).unwrap_or(1).max(1);
    let outcome = Comm::start(rank, workers, options.timeout).and_then(|comm| {
        let kv = AllreduceKv {
            kind: kind.clone(),
            rank,
            workers,
            big_array_bound: options.big_array_bound.max(1),
            comm,
            state: RefCell::new(State::default()),
        };
        // On failure the collective thread may be stuck in a collective that will never
        // complete: it is left behind, never joined.
        let value = body(&kv)?;
        kv.finish().map(|()| value)
    });
    match outcome {
        Ok(value) => {
            drop(universe);
            Ok(Some(value))
        }
        Err(e) => {
            // MPI_Finalize waits for every process, and a failed job has one that will never
            // come (R64: an error, never a hang); mpirun ends the job.
            std::mem::forget(universe);
            Err(e)
        }
    }
}

/// A worker's handle on an allreduce store: it holds every key's value, its own optimizer
/// states and its own compression residuals, the same on every worker.
///
/// `init`, `push` (and so `pushpull`), `barrier`, `set_optimizer` and
/// `set_gradient_compression` are collective: every worker makes the same calls in the same
/// order, pushing the same keys (R69). `pull` and `row_sparse_pull` read the local copy.
/// After a `PeerFailed` every call returns it.
#[derive(Debug)]
pub struct AllreduceKv {
    kind: Kind,
    rank: usize,
    workers: usize,
    /// Dense keys of at least this many elements are summed alone, straight from their own
    /// buffer; smaller ones are summed together in one reduce-scatter (fewer collectives for
    /// many small keys). `KVSTORE_BIG_ARRAY_BOUND`, as for the servers' slicing (R63).
    big_array_bound: usize,
    comm: Comm,
    state: RefCell<State>,
}

/// What a worker holds.
#[derive(Debug, Default)]
struct State {
    key_type: Option<KeyType>,
    values: BTreeMap<Key, Value>,
    updater: Option<UpdaterSlot>,
    compression: Option<Compression>,
    /// This worker's error feedback per key (R55).
    residuals: BTreeMap<Key, Vec<f32>>,
    /// Collective calls made so far; every worker numbers them alike.
    calls: u64,
    /// Set by a `PeerFailed`: the collectives are out of step for good.
    broken: Option<Error>,
    /// Buffers for reuse, see [`SPARE_BUFFERS`].
    spare: Vec<Vec<f32>>,
}

/// Collective calls, as their headers name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Init = 1,
    Push = 2,
    Barrier = 3,
    SetOptimizer = 4,
    SetCompression = 5,
    LoadStates = 6,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Init => "init",
            Call::Push => "push",
            Call::Barrier => "barrier",
            Call::SetOptimizer => "set_optimizer",
            Call::SetCompression => "set_gradient_compression",
            Call::LoadStates => "load_optimizer_states",
        }
    }

    fn name_of(word: u64) -> String {
        [
            Call::Init,
            Call::Push,
            Call::Barrier,
            Call::SetOptimizer,
            Call::SetCompression,
            Call::LoadStates,
        ]
        .into_iter()
        .find(|c| *c as u64 == word)
        .map_or_else(|| format!("call {word}"), |c| c.name().to_string())
    }
}

/// What every worker tells the others at the start of a collective call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    call: u64,
    number: u64,
    refused: bool,
    /// A hash of what must agree: keys, shapes, dtypes, optimizer, compression.
    signature: u64,
    /// init: the length of rank 0's encoded values; push: a hash of how each key is summed.
    extra: u64,
}

const HEADER_WORDS: usize = 5;

impl Header {
    fn words(self) -> [u64; HEADER_WORDS] {
        [
            self.call,
            self.number,
            u64::from(self.refused),
            self.signature,
            self.extra,
        ]
    }

    fn from_words(words: &[u64]) -> Header {
        let word = |i: usize| words.get(i).copied().unwrap_or(0);
        Header {
            call: word(0),
            number: word(1),
            refused: word(2) != 0,
            signature: word(3),
            extra: word(4),
        }
    }
}

/// FNV-1a: a hash that every process of the job computes alike.
#[derive(Debug)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A hash of `parts` (each hashed in turn).
fn fingerprint(parts: impl FnOnce(&mut Fnv)) -> u64 {
    let mut hasher = Fnv::default();
    parts(&mut hasher);
    hasher.finish()
}

/// A dense f32 contribution (the caller's own buffer when it pushed one value), a quantised
/// one, or any other value.
#[derive(Debug)]
enum Part<'a> {
    Dense(Cow<'a, [f32]>),
    Quantized { words: Vec<u32>, len: usize },
    Other(Value),
}

/// One key of a push, checked and merged.
#[derive(Debug)]
struct Contribution<'a> {
    key: Key,
    shape: Vec<usize>,
    dtype: DType,
    part: Part<'a>,
}

/// A push whose arguments passed every check: nothing is committed yet.
#[derive(Debug)]
struct Prepared<'a> {
    key_type: Option<KeyType>,
    contributions: Vec<Contribution<'a>>,
    residuals: Vec<(Key, Vec<f32>)>,
    /// A hash of which keys are dense f32 (the fast path) and which are not.
    paths: u64,
}

impl AllreduceKv {
    /// The state, unless a peer failed earlier.
    fn open(&self) -> Result<RefMut<'_, State>> {
        let state = self.state.try_borrow_mut().map_err(|_| Error::Protocol {
            reason: "a re-entrant call on an allreduce handle".into(),
        })?;
        match &state.broken {
            Some(e) => Err(e.clone()),
            None => Ok(state),
        }
    }

    fn mismatch(&self, call: Call, reason: String) -> Error {
        Error::CollectiveMismatch {
            op: call.name().into(),
            reason,
        }
    }

    /// Runs a job on the collective thread; a timeout breaks the handle for good.
    fn run<T: Send + 'static>(
        &self,
        state: &mut State,
        call: Call,
        job: impl FnOnce(&mut Link) -> T + Send + 'static,
    ) -> Result<T> {
        self.comm
            .run(state.calls, call.name(), job)
            .inspect_err(|e| state.broken = Some(e.clone()))
    }

    /// The header exchange that opens every collective call: every worker learns what every
    /// other is doing, and all of them decide alike whether the call goes on. A worker whose
    /// arguments were refused (`refused`) still takes part, so the others fail at once
    /// instead of waiting for it; it then returns its own error.
    fn exchange(
        &self,
        state: &mut State,
        call: Call,
        signature: u64,
        extra: u64,
        refused: Option<Error>,
    ) -> Result<Vec<Header>> {
        state.calls += 1;
        let mine = Header {
            call: call as u64,
            number: state.calls,
            refused: refused.is_some(),
            signature,
            extra,
        };
        let number = state.calls;
        let words = self.run(state, call, move |link| {
            link.announce(number);
            link.all_gather(&mine.words())
        })?;
        let headers: Vec<Header> = words
            .chunks_exact(HEADER_WORDS)
            .map(Header::from_words)
            .collect();
        if headers.len() != self.workers {
            return Err(Error::Protocol {
                reason: format!("{} headers from {} workers", headers.len(), self.workers),
            });
        }
        self.agree(call, &headers, refused)?;
        Ok(headers)
    }

    /// The checks every worker runs on the same headers, so every worker reaches the same
    /// verdict. init compares the workers' keys before any worker's own errors, as the spec's
    /// collective init does (R49).
    fn agree(&self, call: Call, headers: &[Header], refused: Option<Error>) -> Result<()> {
        let Some(first) = headers.first() else {
            return Ok(());
        };
        for (rank, header) in headers.iter().enumerate() {
            if (header.call, header.number) != (first.call, first.number) {
                return Err(self.mismatch(
                    call,
                    format!(
                        "worker {rank} makes collective call {} ({}) where worker 0 makes call \
                         {} ({}); nothing changed",
                        header.number,
                        Call::name_of(header.call),
                        first.number,
                        Call::name_of(first.call)
                    ),
                ));
            }
        }
        let differs = headers
            .iter()
            .position(|h| h.signature != first.signature)
            .map(|rank| {
                self.mismatch(
                    call,
                    format!(
                        "worker {rank}'s {} has other keys, shapes, dtypes or parameters than \
                         worker 0's; nothing changed",
                        call.name()
                    ),
                )
            });
        if call == Call::Init {
            if let Some(e) = differs {
                return Err(e);
            }
        }
        if let Some(e) = refused {
            return Err(e);
        }
        if let Some(e) = differs {
            return Err(e);
        }
        if let Some(rank) = headers.iter().position(|h| h.refused) {
            return Err(self.mismatch(
                call,
                format!(
                    "worker {rank} refused its {} (an argument error there); nothing changed",
                    call.name()
                ),
            ));
        }
        Ok(())
    }

    /// Checks a push's arguments and merges each key's values, without changing anything
    /// (R59): the key type, then per key in key order its shape, merge and compression.
    fn prepare<'a>(&self, state: &mut State, pairs: &'a [(Key, Value)]) -> Result<Prepared<'a>> {
        let mut key_type = state.key_type;
        key::fix_key_type(&mut key_type, pairs.iter().map(|(k, _)| k))?;
        let mut groups: BTreeMap<&Key, Vec<&'a Value>> = BTreeMap::new();
        for (key, value) in pairs {
            groups.entry(key).or_default().push(value);
        }
        let mut contributions = Vec::with_capacity(groups.len());
        let mut residuals = Vec::new();
        let mut paths = Fnv::default();
        for (key, values) in groups {
            let stored = state
                .values
                .get(key)
                .ok_or_else(|| Error::NotInitialized { key: key.clone() })?;
            let (shape, dtype) = (stored.shape().to_vec(), stored.dtype());
            for value in &values {
                transfer::check_shape(key, &shape, value)?;
            }
            let merged = merge(&mut state.spare, key, &values, dtype)?;
            let part = match (state.compression, merged) {
                (None, merged) => merged,
                (Some(compression), merged) => {
                    for value in &values {
                        transfer::check_compressible(key, dtype, value)?;
                    }
                    let Part::Dense(grad) = merged else {
                        return Err(Error::CompressionUnsupportedValue {
                            key: key.clone(),
                            stype: stored.stype(),
                            dtype,
                        });
                    };
                    let mut residual = state.residuals.get(key).cloned().unwrap_or_default();
                    if residual.is_empty() {
                        residual.resize(grad.len(), 0.0);
                    }
                    let words = compression.quantize(&grad, &mut residual)?;
                    residuals.push((key.clone(), residual));
                    let len = grad.len();
                    if let Cow::Owned(grad) = grad {
                        recycle(&mut state.spare, grad);
                    }
                    Part::Quantized { words, len }
                }
            };
            matches!(part, Part::Other(_)).hash(&mut paths);
            contributions.push(Contribution {
                key: key.clone(),
                shape,
                dtype,
                part,
            });
        }
        self.check_counts(&contributions)?;
        Ok(Prepared {
            key_type,
            contributions,
            residuals,
            paths: paths.finish(),
        })
    }

    /// Every MPI buffer of the push must fit an MPI count; refused before anything is sent.
    fn check_counts(&self, contributions: &[Contribution]) -> Result<()> {
        let too_big = |what: String| Error::UnsupportedOperation {
            op: format!("{what} (an MPI buffer holds at most {MAX_COUNT} elements)"),
            kind: self.kind.name().into(),
        };
        let mut words = 0usize;
        for c in contributions {
            match &c.part {
                Part::Dense(xs) if xs.len() > MAX_COUNT => {
                    return Err(too_big(format!(
                        "a push of key {} with {} elements",
                        c.key,
                        xs.len()
                    )))
                }
                Part::Quantized { words: w, .. } => words = words.saturating_add(w.len()),
                _ => {}
            }
        }
        if words.saturating_mul(self.workers) > MAX_COUNT {
            return Err(too_big(format!(
                "a compressed push of {words} words from each of {} workers",
                self.workers
            )));
        }
        Ok(())
    }

    /// The rank-order sum of every worker's dense f32 contributions, per key.
    fn sum_dense(
        &self,
        state: &mut State,
        dense: Vec<(Key, Vec<usize>, Cow<'_, [f32]>)>,
        sums: &mut BTreeMap<Key, Value>,
    ) -> Result<()> {
        let mut fused: Vec<(Key, Vec<usize>, Cow<'_, [f32]>)> = Vec::new();
        let mut fused_len = 0usize;
        for (key, shape, xs) in dense {
            if xs.len() >= self.big_array_bound {
                let out = take_buffer(&mut state.spare, xs.len());
                let out = self.sum_f32(state, &xs, out)?;
                if let Cow::Owned(xs) = xs {
                    recycle(&mut state.spare, xs);
                }
                sums.insert(key, Value::Dense(Tensor::new(shape, out)?));
                continue;
            }
            if fused_len + xs.len() > MAX_COUNT {
                self.sum_fused(state, std::mem::take(&mut fused), fused_len, sums)?;
                fused_len = 0;
            }
            fused_len += xs.len();
            fused.push((key, shape, xs));
        }
        if !fused.is_empty() {
            self.sum_fused(state, fused, fused_len, sums)?;
        }
        Ok(())
    }

    /// Small keys, summed in one reduce-scatter over their concatenation.
    fn sum_fused(
        &self,
        state: &mut State,
        fused: Vec<(Key, Vec<usize>, Cow<'_, [f32]>)>,
        total: usize,
        sums: &mut BTreeMap<Key, Value>,
    ) -> Result<()> {
        let mut input = Vec::with_capacity(total);
        for (_, _, xs) in &fused {
            input.extend_from_slice(xs);
        }
        let out = self.sum_f32(state, &input, vec![0.0_f32; total])?;
        let mut at = 0;
        for (key, shape, xs) in fused {
            let sum = out.get(at..at + xs.len()).unwrap_or_default().to_vec();
            at += xs.len();
            sums.insert(key, Value::Dense(Tensor::new(shape, sum)?));
        }
        Ok(())
    }

    /// The rank-order sum of every worker's `input` (all of one length) into `out` (of that
    /// length): a reduce-scatter, then an all-gather, both point to point. Worker j receives
    /// slice j of every other worker's input and adds the slices in rank order, its own read
    /// in place (R51); then it sends the sum to every other worker, which receives it in place
    /// in its `out`. Only the slices other workers own are copied, into a buffer the collective
    /// thread can own.
    fn sum_f32(&self, state: &mut State, input: &[f32], mut out: Vec<f32>) -> Result<Vec<f32>> {
        let (workers, rank) = (self.workers, self.rank);
        let bounds = slice_bounds(input.len(), workers);
        let lo = bounds.get(rank).copied().unwrap_or(0);
        let hi = bounds.get(rank + 1).copied().unwrap_or(lo);
        let m = hi - lo;
        if workers == 1 {
            add_in_order(&mut out, &[input]);
            return Ok(out);
        }
        let mut send = take_buffer(&mut state.spare, input.len() - m);
        send.clear();
        send.extend_from_slice(input.get(..lo).unwrap_or_default());
        send.extend_from_slice(input.get(hi..).unwrap_or_default());
        let mut received = take_buffer(&mut state.spare, m * (workers - 1));
        let plan = bounds.clone();
        let (send, received) = self.run(state, Call::Push, move |link| {
            link.scatter(&send, &mut received, &plan)
                .map(|()| (send, received))
        })??;
        let mut slots = received.chunks_exact(m.max(1));
        let parts: Vec<&[f32]> = (0..workers)
            .map(|j| match j == rank {
                true => input.get(lo..hi).unwrap_or_default(),
                false if m == 0 => &[],
                false => slots.next().unwrap_or_default(),
            })
            .collect();
        add_in_order(out.get_mut(lo..hi).unwrap_or_default(), &parts);
        let out = self.run(state, Call::Push, move |link| {
            link.gather(&mut out, &bounds).map(|()| out)
        })??;
        recycle(&mut state.spare, send);
        recycle(&mut state.spare, received);
        Ok(out)
    }

    /// Compressed pushes (R55): every worker's words, decoded and added in rank order.
    fn sum_quantized(
        &self,
        state: &mut State,
        quantized: Vec<(Key, Vec<usize>, Vec<u32>, usize)>,
        sums: &mut BTreeMap<Key, Value>,
    ) -> Result<()> {
        let Some(compression) = state.compression else {
            return Err(Error::Protocol {
                reason: "a quantised push without compression".into(),
            });
        };
        let total: usize = quantized.iter().map(|(_, _, w, _)| w.len()).sum();
        let mut send = Vec::with_capacity(total);
        for (_, _, words, _) in &quantized {
            send.extend_from_slice(words);
        }
        let gathered = self.run(state, Call::Push, move |link| link.all_gather(&send))?;
        let mut at = 0;
        for (key, shape, words, len) in quantized {
            let mut sum: Vec<f32> = Vec::new();
            for rank in 0..self.workers {
                let from = rank * total + at;
                let theirs = gathered.get(from..from + words.len()).unwrap_or_default();
                let decoded = compression.dequantize(theirs, len)?;
                if rank == 0 {
                    sum = decoded;
                } else {
                    add_into(&mut sum, &decoded);
                }
            }
            at += words.len();
            sums.insert(key, Value::Dense(Tensor::new(shape, sum)?));
        }
        Ok(())
    }

    /// Any other contributions: every worker's, encoded, then summed by the spec (R17) in
    /// rank order.
    fn sum_other(
        &self,
        state: &mut State,
        other: Vec<(Key, DType, Value)>,
        sums: &mut BTreeMap<Key, Value>,
    ) -> Result<()> {
        let mut blob = Vec::new();
        let mut keys = Vec::with_capacity(other.len());
        for (key, dtype, value) in other {
            let message = Message::Request(Request::Push {
                id: 0,
                key: key.clone(),
                payload: Payload::Plain(value),
            });
            write_frame(&mut blob, &message)?;
            keys.push((key, dtype));
        }
        let (bytes, lens) =
            self.run(state, Call::Push, move |link| link.all_gather_bytes(&blob))??;
        let mut per_key: Vec<Vec<Value>> = vec![Vec::with_capacity(self.workers); keys.len()];
        let mut at = 0;
        for (rank, len) in lens.into_iter().enumerate() {
            let mut rest = bytes.get(at..at + len).unwrap_or_default();
            at += len;
            for ((key, _), values) in keys.iter().zip(per_key.iter_mut()) {
                let (message, tail) = read_frame(rest)?;
                rest = tail;
                match message {
                    Message::Request(Request::Push {
                        key: theirs,
                        payload: Payload::Plain(value),
                        ..
                    }) if theirs == *key => values.push(value),
                    _ => {
                        return Err(Error::Protocol {
                            reason: format!("worker {rank} sent no contribution for key {key}"),
                        })
                    }
                }
            }
        }
        for ((key, dtype), values) in keys.into_iter().zip(per_key) {
            let sum = reduce::sum(&values, dtype)?
                .ok_or_else(|| Error::EmptyValueList { key: key.clone() })?;
            sums.insert(key, sum.on(Device::Cpu(0)));
        }
        Ok(())
    }

    /// The end of a job that went well: hands the collective thread its last job and joins it.
    fn finish(self) -> Result<()> {
        let state = self.state.into_inner();
        if let Some(e) = state.broken {
            return Err(e);
        }
        self.comm.finish(state.calls)
    }
}

impl Handle for AllreduceKv {
    fn rank(&self) -> usize {
        self.rank
    }

    fn num_workers(&self) -> usize {
        self.workers
    }

    /// Collective (R49): the workers compare their keys, shapes, dtypes and storage types,
    /// then rank 0's values are broadcast and stored on every worker.
    fn init(&self, pairs: &[(Key, Value)]) -> Result<()> {
        let mut guard = self.open()?;
        let state = &mut *guard;
        let signature = fingerprint(|h| {
            for (key, value) in pairs {
                (key, value.shape(), value.dtype(), value.stype()).hash(h);
            }
        });
        let checked = check_init(state, pairs).and_then(|key_type| {
            let mut blob = Vec::new();
            // Rank 0's values go to the others; alone, it has nobody to send them to.
            if self.rank == 0 && self.workers > 1 {
                for (key, value) in pairs {
                    let message = Message::Request(Request::Init {
                        id: 0,
                        key: key.clone(),
                        value: value.clone(),
                    });
                    write_frame(&mut blob, &message)?;
                }
                if blob.len() > MAX_COUNT {
                    return Err(Error::UnsupportedOperation {
                        op: format!("an init of {} encoded bytes", blob.len()),
                        kind: self.kind.name().into(),
                    });
                }
            }
            Ok((key_type, blob))
        });
        let extra = checked.as_ref().map_or(0, |(_, blob)| blob.len() as u64);
        let headers = self.exchange(
            state,
            Call::Init,
            signature,
            extra,
            checked.as_ref().err().cloned(),
        )?;
        let (key_type, blob) = checked?;
        let len = headers.first().map_or(0, |h| h.extra);
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= MAX_COUNT)
            .ok_or_else(|| Error::Protocol {
                reason: format!("rank 0 announced an init of {len} bytes"),
            })?;
        // Rank 0's bytes reach every worker; rank 0 keeps its own values as they are.
        let received = if len == 0 {
            Vec::new()
        } else {
            let mut buffer = if self.rank == 0 {
                blob
            } else {
                vec![0_u8; len]
            };
            self.run(state, Call::Init, move |link| {
                link.broadcast_bytes(&mut buffer);
                buffer
            })?
        };
        let values: Vec<Value> = if self.rank == 0 {
            pairs.iter().map(|(_, v)| v.clone()).collect()
        } else {
            decode_init(&received, pairs)?
        };
        state.key_type = key_type;
        for ((key, _), value) in pairs.iter().zip(values) {
            state.values.insert(key.clone(), value.on(Device::Cpu(0)));
        }
        Ok(())
    }

    /// Collective (R51, R69): every worker pushes the same keys (values per key may differ in
    /// number: each worker merges its own first). Returns once the round is applied here.
    fn push(&self, pairs: &[(Key, Value)]) -> Result<()> {
        let mut guard = self.open()?;
        let state = &mut *guard;
        let signature = fingerprint(|h| {
            let keys: BTreeSet<&Key> = pairs.iter().map(|(k, _)| k).collect();
            keys.hash(h);
            format!("{:?}", state.compression).hash(h);
        });
        let prepared = self.prepare(state, pairs);
        let paths = prepared.as_ref().map_or(0, |p| p.paths);
        let headers = self.exchange(
            state,
            Call::Push,
            signature,
            paths,
            prepared.as_ref().err().cloned(),
        )?;
        let Prepared {
            key_type,
            contributions,
            residuals,
            paths,
        } = prepared?;
        // Where every worker's keys take the same paths, dense f32 keys take the fast one;
        // otherwise every key but the compressed ones is summed by the spec.
        let same_paths = headers.iter().all(|h| h.extra == paths);
        let (mut dense, mut quantized, mut other) = (Vec::new(), Vec::new(), Vec::new());
        for c in contributions {
            match c.part {
                Part::Dense(xs) if same_paths => dense.push((c.key, c.shape, xs)),
                Part::Dense(xs) => other.push((
                    c.key,
                    c.dtype,
                    Value::Dense(Tensor::new(c.shape, xs.into_owned())?),
                )),
                Part::Quantized { words, len } => quantized.push((c.key, c.shape, words, len)),
                Part::Other(value) => other.push((c.key, c.dtype, value)),
            }
        }
        let mut sums = BTreeMap::new();
        if !dense.is_empty() {
            self.sum_dense(state, dense, &mut sums)?;
        }
        if !quantized.is_empty() {
            self.sum_quantized(state, quantized, &mut sums)?;
        }
        if !other.is_empty() {
            self.sum_other(state, other, &mut sums)?;
        }
        // Apply in key order on a copy of the updater: a failure keeps nothing (R7, R22), and
        // it fails alike on every worker.
        let mut updater = state.updater.clone();
        let mut next = Vec::with_capacity(sums.len());
        for (key, sum) in sums {
            let stored = state
                .values
                .get(&key)
                .ok_or_else(|| Error::NotInitialized { key: key.clone() })?;
            let value = match updater.as_mut() {
                None => sum.on(Device::Cpu(0)),
                Some(slot) => slot.apply(&key, &sum, stored)?,
            };
            next.push((key, value));
        }
        for (key, value) in next {
            if let Some(Value::Dense(old)) = state.values.insert(key, value) {
                if let Data::F32(xs) = old.into_data() {
                    recycle(&mut state.spare, xs);
                }
            }
        }
        state.updater = updater;
        state.key_type = key_type;
        state.residuals.extend(residuals);
        Ok(())
    }

    /// Local: each key's value after the last push.
    fn pull(&self, keys: &[Key]) -> Result<Vec<Value>> {
        let state = self.open()?;
        let mut key_type = state.key_type;
        key::fix_key_type(&mut key_type, keys)?;
        keys.iter()
            .map(|key| {
                state
                    .values
                    .get(key)
                    .cloned()
                    .ok_or_else(|| Error::NotInitialized { key: key.clone() })
            })
            .collect()
    }

    /// Local: the rows asked for, as the spec picks them (R30-R33).
    fn row_sparse_pull(&self, keys: &[Key], row_ids: &[Vec<i64>]) -> Result<Vec<Value>> {
        let state = self.open()?;
        if row_ids.len() != 1 && row_ids.len() != keys.len() {
            return Err(Error::RowIdsCountMismatch {
                row_ids: row_ids.len(),
                outputs: keys.len(),
            });
        }
        let mut key_type = state.key_type;
        key::fix_key_type(&mut key_type, keys)?;
        keys.iter()
            .enumerate()
            .map(|(i, key)| {
                let ids = match row_ids {
                    [only] => only,
                    many => many.get(i).map_or(&[][..], Vec::as_slice),
                };
                let stored = state
                    .values
                    .get(key)
                    .ok_or_else(|| Error::NotInitialized { key: key.clone() })?;
                let rows = stored.shape().first().copied().unwrap_or(0);
                let ids = sparse::normalize_row_ids(key, ids, rows)?;
                Ok(Value::RowSparse(sparse::retain(
                    stored,
                    &ids,
                    stored.dtype(),
                )?))
            })
            .collect()
    }

    /// Collective: a header exchange, which no worker leaves before every worker entered it.
    fn barrier(&self) -> Result<()> {
        let mut state = self.open()?;
        self.exchange(&mut state, Call::Barrier, 0, 0, None)
            .map(drop)
    }

    /// Collective (R69): every worker calls it with the same optimizer, and each installs a
    /// fresh copy with no states (R45), so the workers' states stay equal.
    fn set_optimizer(&self, optimizer: &Optimizer) -> Result<()> {
        let mut state = self.open()?;
        let signature = fingerprint(|h| format!("{optimizer:?}").hash(h));
        let fresh = OptimizerUpdater::new(optimizer.clone());
        self.exchange(
            &mut state,
            Call::SetOptimizer,
            signature,
            0,
            fresh.as_ref().err().cloned(),
        )?;
        state.updater = Some(UpdaterSlot::Optimizer(fresh?));
        Ok(())
    }

    /// Collective (R55): every worker calls it with the same parameters; new parameters reset
    /// this worker's residuals, the same ones keep them (R44).
    fn set_gradient_compression(&self, compression: Compression) -> Result<()> {
        let mut state = self.open()?;
        let signature = fingerprint(|h| format!("{compression:?}").hash(h));
        let refused = (!self.kind.allows_compression()).then(|| Error::CompressionNotSupported {
            kind: self.kind.name().into(),
        });
        self.exchange(&mut state, Call::SetCompression, signature, 0, refused)?;
        if state.compression != Some(compression) {
            state.residuals.clear();
        }
        state.compression = Some(compression);
        Ok(())
    }

    /// R68: this worker's optimizer states, which every worker holds alike (each applies the
    /// same updates to the same bits), so any worker may save them; not collective.
    fn save_optimizer_states(&self, dump_optimizer: bool) -> Result<Vec<u8>> {
        let state = self.open()?;
        match &state.updater {
            Some(UpdaterSlot::Optimizer(o)) => o.save(dump_optimizer),
            _ => Err(Error::NoOptimizer),
        }
    }

    /// R68, collective (R69): every worker loads the same bytes, so the states stay equal.
    /// The bytes are checked as the servers' load checks them: readable, every state for an
    /// initialised key and of its shape, an optimizer set; a worker that refuses them makes
    /// every worker fail, and nothing changes.
    fn load_optimizer_states(&self, bytes: &[u8]) -> Result<()> {
        let mut state = self.open()?;
        let signature = fingerprint(|h| bytes.hash(h));
        let next = loaded_states(&state, bytes);
        self.exchange(
            &mut state,
            Call::LoadStates,
            signature,
            0,
            next.as_ref().err().cloned(),
        )?;
        state.updater = Some(UpdaterSlot::Optimizer(next?));
        Ok(())
    }

    /// Every call completes before it returns: only a peer failure is left to report.
    fn wait_all(&self) -> Result<()> {
        self.open().map(drop)
    }
}

/// The updater `bytes` give (R68), checked in the spec's order: readable, fitting the keys,
/// then an optimizer to load into.
fn loaded_states(state: &State, bytes: &[u8]) -> Result<OptimizerUpdater> {
    let kvstore_spec::optimizer::Saved { states, optimizer } =
        kvstore_spec::optimizer::read_saved(bytes)?;
    for (key, saved) in &states {
        let stored = state.values.get(key).ok_or_else(|| Error::InvalidState {
            reason: format!("a state for key {key}, which is not initialised"),
        })?;
        kvstore_spec::dist::check_state_fits(key, saved, stored)?;
    }
    let Some(UpdaterSlot::Optimizer(current)) = &state.updater else {
        return Err(Error::NoOptimizer);
    };
    OptimizerUpdater::with_states(
        optimizer.unwrap_or_else(|| current.optimizer().clone()),
        states,
    )
}

/// init's local checks (R8, R13): the key type and keys already stored or given twice.
fn check_init(state: &State, pairs: &[(Key, Value)]) -> Result<Option<KeyType>> {
    let mut key_type = state.key_type;
    key::fix_key_type(&mut key_type, pairs.iter().map(|(k, _)| k))?;
    let mut seen = BTreeSet::new();
    for (key, _) in pairs {
        if state.values.contains_key(key) || !seen.insert(key) {
            return Err(Error::DuplicateInit { key: key.clone() });
        }
    }
    Ok(key_type)
}

/// Rank 0's init values from its broadcast, checked against this worker's own keys.
fn decode_init(mut bytes: &[u8], pairs: &[(Key, Value)]) -> Result<Vec<Value>> {
    let mut values = Vec::with_capacity(pairs.len());
    for (key, mine) in pairs {
        let (message, rest) = read_frame(bytes)?;
        bytes = rest;
        match message {
            Message::Request(Request::Init {
                key: theirs, value, ..
            }) if theirs == *key
                && value.shape() == mine.shape()
                && (value.dtype(), value.stype()) == (mine.dtype(), mine.stype()) =>
            {
                values.push(value);
            }
            _ => {
                return Err(Error::Protocol {
                    reason: format!("rank 0's init does not carry key {key} as this worker's"),
                })
            }
        }
    }
    if !bytes.is_empty() {
        return Err(Error::Protocol {
            reason: format!("{} bytes after rank 0's init values", bytes.len()),
        });
    }
    Ok(values)
}

/// A worker's own values of one key, summed in list order in the key's dtype (R17): dense f32
/// values with the kernel below, anything else by the spec.
fn merge<'a>(
    spare: &mut Vec<Vec<f32>>,
    key: &Key,
    values: &[&'a Value],
    dtype: DType,
) -> Result<Part<'a>> {
    if dtype == DType::F32 {
        let dense: Option<Vec<&[f32]>> = values
            .iter()
            .map(|v| match v {
                Value::Dense(t) => t.f32s(),
                Value::RowSparse(_) => None,
            })
            .collect();
        if let Some(parts) = dense {
            if let [only] = parts.as_slice() {
                // A one-value sum is the value: no copy (R17).
                return Ok(Part::Dense(Cow::Borrowed(only)));
            }
            let n = parts.first().map_or(0, |p| p.len());
            let mut out = take_buffer(spare, n);
            add_in_order(&mut out, &parts);
            return Ok(Part::Dense(Cow::Owned(out)));
        }
    }
    let owned: Vec<Value> = values.iter().map(|v| (*v).clone()).collect();
    let sum =
        reduce::sum(&owned, dtype)?.ok_or_else(|| Error::EmptyValueList { key: key.clone() })?;
    Ok(match sum {
        Value::Dense(t) if dtype == DType::F32 => {
            let shape = t.shape().to_vec();
            match t.into_data() {
                Data::F32(xs) => Part::Dense(Cow::Owned(xs)),
                data => Part::Other(Value::Dense(Tensor::new(shape, data)?)),
            }
        }
        other => Part::Other(other),
    })
}

/// `out = parts[0] + parts[1] + ...`, element by element, added in the order given and each
/// addition rounded to f32: the spec's dense f32 sum (R17), bit for bit.
fn add_in_order(out: &mut [f32], parts: &[&[f32]]) {
    match parts {
        [] => out.iter_mut().for_each(|o| *o = 0.0),
        [only] => out.iter_mut().zip(*only).for_each(|(o, x)| *o = *x),
        [a, b, rest @ ..] => {
            for ((o, x), y) in out.iter_mut().zip(*a).zip(*b) {
                *o = x + y;
            }
            for part in rest {
                add_into(out, part);
            }
        }
    }
}

/// `out += part`, element by element.
fn add_into(out: &mut [f32], part: &[f32]) {
    for (o, x) in out.iter_mut().zip(part) {
        *o += x;
    }
}

/// A buffer of `n` elements (contents unspecified): a spare one of that length, or a new one.
fn take_buffer(spare: &mut Vec<Vec<f32>>, n: usize) -> Vec<f32> {
    match spare.iter().position(|b| b.len() == n) {
        Some(i) => spare.swap_remove(i),
        None => vec![0.0; n],
    }
}

/// Keeps `buffer` for [`take_buffer`], up to [`SPARE_BUFFERS`] of them.
fn recycle(spare: &mut Vec<Vec<f32>>, buffer: Vec<f32>) {
    if spare.len() < SPARE_BUFFERS && buffer.len() >= SPARE_AT_LEAST {
        spare.push(buffer);
    }
}

/// Appends `message` as a frame: its length (u64 LE), then its wire bytes.
fn write_frame(out: &mut Vec<u8>, message: &Message) -> Result<()> {
    let bytes = wire::encode(message)?;
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&bytes);
    Ok(())
}

/// The first frame of `bytes`, and what follows it.
fn read_frame(bytes: &[u8]) -> Result<(Message, &[u8])> {
    let malformed = || Error::Protocol {
        reason: format!("{} bytes cannot hold a frame", bytes.len()),
    };
    let (len, rest) = bytes.split_first_chunk::<8>().ok_or_else(malformed)?;
    let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| malformed())?;
    if len > rest.len() {
        return Err(malformed());
    }
    let (frame, rest) = rest.split_at(len);
    Ok((wire::decode(frame)?, rest))
}

/// Slice `i` of `n` elements among `workers`: `[n·i/W, n·(i+1)/W)`; the bounds of every slice.
fn slice_bounds(n: usize, workers: usize) -> Vec<usize> {
    let (n, w) = (n as u128, workers.max(1) as u128);
    (0..=w).map(|i| (n * i / w) as usize).collect()
}

/// An MPI count for a length already checked against [`MAX_COUNT`].
fn count(n: usize) -> Count {
    Count::try_from(n).unwrap_or(Count::MAX)
}

/// What the caller's thread and the collective thread share: when a collective step last
/// completed (or a job started), and the last call each worker announced.
#[derive(Debug)]
struct Progress {
    epoch: Instant,
    last: AtomicU64,
    seen: Vec<AtomicU64>,
}

impl Progress {
    fn new(workers: usize) -> Progress {
        Progress {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            seen: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last.store(self.now(), Ordering::Release);
    }

    fn idle(&self) -> Duration {
        Duration::from_micros(self.now().saturating_sub(self.last.load(Ordering::Acquire)))
    }

    fn seen(&self, rank: usize) -> u64 {
        self.seen.get(rank).map_or(0, |s| s.load(Ordering::Acquire))
    }
}

type Job = Box<dyn FnOnce(&mut Link) + Send>;

/// The caller's side of the collective thread.
struct Comm {
    jobs: mpsc::Sender<Job>,
    thread: std::thread::JoinHandle<()>,
    progress: Arc<Progress>,
    rank: usize,
    workers: usize,
    timeout: Duration,
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Comm")
            .field("rank", &self.rank)
            .field("workers", &self.workers)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Comm {
    fn start(rank: usize, workers: usize, timeout: Duration) -> Result<Comm> {
        let progress = Arc::new(Progress::new(workers));
        let (jobs, queue) = mpsc::channel::<Job>();
        let shared = Arc::clone(&progress);
        let thread = std::thread::Builder::new()
            .name("kvstore-allreduce".into())
            .spawn(move || {
                let mut link = Link {
                    world: SimpleCommunicator::world(),
                    rank,
                    workers,
                    progress: shared,
                };
                for job in queue {
                    job(&mut link);
                }
            })
            .map_err(|e| Error::UnsupportedKind {
                kind: "dist_sync_allreduce".into(),
                reason: format!("cannot start the collective thread: {e}"),
            })?;
        Ok(Comm {
            jobs,
            thread,
            progress,
            rank,
            workers,
            timeout,
        })
    }

    /// Runs `job` on the collective thread and waits for its result, until no collective step
    /// has completed for the timeout (R64).
    fn run<T: Send + 'static>(
        &self,
        call: u64,
        what: &str,
        job: impl FnOnce(&mut Link) -> T + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.progress.touch();
        self.jobs
            .send(Box::new(move |link: &mut Link| {
                // The caller may have given up on this job; then nobody reads its result.
                let _ = reply.send(job(link));
            }))
            .map_err(|_| stopped())?;
        loop {
            let idle = self.progress.idle();
            if idle >= self.timeout {
                return Err(self.silent(call, what));
            }
            match answer.recv_timeout(self.timeout - idle) {
                Ok(value) => return Ok(value),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(stopped()),
            }
        }
    }

    /// `PeerFailed`, naming the workers that never announced call `call`.
    fn silent(&self, call: u64, what: &str) -> Error {
        let missing: Vec<usize> = (0..self.workers)
            .filter(|&p| p != self.rank && self.progress.seen(p) < call)
            .collect();
        let (peer, why) = if missing.is_empty() {
            (
                "the other workers".to_string(),
                "every worker started this call, but its collective did not complete",
            )
        } else {
            (
                format!("workers {missing:?}"),
                "they never started this call",
            )
        };
        Error::PeerFailed {
            peer,
            reason: format!(
                "worker {} waited {:?} in {what} (collective call {call}): {why}",
                self.rank, self.timeout
            ),
        }
    }

    /// Receives the last announcements, stops the collective thread and joins it.
    fn finish(self, calls: u64) -> Result<()> {
        let patience = self.timeout / 2;
        self.run(calls, "the end of the job", move |link| {
            link.settle(calls, patience);
        })?;
        drop(self.jobs);
        self.thread.join().map_err(|_| Error::Protocol {
            reason: "the collective thread panicked".into(),
        })
    }
}

fn stopped() -> Error {
    Error::Protocol {
        reason: "the collective thread stopped".into(),
    }
}

/// The collective thread's side of the communicator.
struct Link {
    world: SimpleCommunicator,
    rank: usize,
    workers: usize,
    progress: Arc<Progress>,
}

impl Link {
    /// Tells every other worker that this one started collective call `call` (a small eager
    /// send), so a worker that times out can name the ones that never came.
    fn announce(&self, call: u64) {
        for peer in (0..self.workers).filter(|&p| p != self.rank) {
            if let Ok(peer) = i32::try_from(peer) {
                self.world
                    .process_at_rank(peer)
                    .send_with_tag(&call, ANNOUNCE);
            }
        }
        if let Some(seen) = self.progress.seen.get(self.rank) {
            seen.store(call, Ordering::Release);
        }
    }

    /// Receives the announcements that arrived.
    fn drain(&self) {
        while let Some((message, status)) = self
            .world
            .any_process()
            .immediate_matched_probe_with_tag(ANNOUNCE)
        {
            let (call, _) = message.matched_receive::<u64>();
            let from = usize::try_from(status.source_rank()).unwrap_or(usize::MAX);
            if let Some(seen) = self.progress.seen.get(from) {
                seen.fetch_max(call, Ordering::AcqRel);
            }
        }
    }

    /// Waits until every other worker's announcements up to `calls` arrived (or `patience`
    /// passed), so none is left unreceived at MPI_Finalize.
    fn settle(&self, calls: u64, patience: Duration) {
        let started = Instant::now();
        while started.elapsed() < patience
            && (0..self.workers).any(|p| p != self.rank && self.progress.seen(p) < calls)
        {
            self.drain();
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Polls `request` until it completes.
    fn wait<'a, D: ?Sized, S: Scope<'a>>(&self, request: Pending<'a, D, S>) {
        self.wait_all(vec![request]);
    }

    /// Polls `requests` until every one completes: back to back at first, then with short
    /// naps. Never gives up: see the module's documentation.
    fn wait_all<'a, D: ?Sized, S: Scope<'a>>(&self, requests: Vec<Pending<'a, D, S>>) {
        let started = Instant::now();
        let mut nap = Duration::from_micros(10);
        let mut pending = requests;
        loop {
            pending = pending
                .into_iter()
                .filter_map(|request| request.test().err())
                .collect();
            if pending.is_empty() {
                break;
            }
            self.drain();
            if started.elapsed() < SPIN {
                std::thread::yield_now();
            } else {
                std::thread::sleep(nap);
                nap = (nap * 2).min(LONGEST_NAP);
            }
        }
        self.progress.touch();
    }

    /// Every worker's `mine` (all of one length), in rank order.
    fn all_gather<T: mpi::datatype::Equivalence + Copy + Default>(&self, mine: &[T]) -> Vec<T> {
        let mut all = vec![T::default(); mine.len() * self.workers];
        mpi::request::scope(|scope| {
            let request = self
                .world
                .immediate_all_gather_into(scope, mine, &mut all[..]);
            self.wait(request);
        });
        all
    }

    /// Every worker's `mine` (of any length) concatenated in rank order, and each one's length.
    /// The same error on every worker when they do not fit one MPI buffer.
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<(Vec<u8>, Vec<usize>)> {
        let lens: Vec<usize> = self
            .all_gather(&[mine.len() as u64])
            .into_iter()
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .collect();
        let total = lens.iter().fold(0_usize, |a, &n| a.saturating_add(n));
        if total > MAX_COUNT {
            return Err(Error::UnsupportedOperation {
                op: format!("a push of {total} encoded bytes from every worker together"),
                kind: "dist_sync_allreduce".into(),
            });
        }
        let counts: Vec<Count> = lens.iter().map(|&n| count(n)).collect();
        let displs: Vec<Count> = lens
            .iter()
            .scan(0, |at, &n| {
                let here = *at;
                *at += n;
                Some(count(here))
            })
            .collect();
        let mut all = vec![0_u8; total];
        {
            let mut recv = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            mpi::request::scope(|scope| {
                let request = self
                    .world
                    .immediate_all_gather_varcount_into(scope, mine, &mut recv);
                self.wait(request);
            });
        }
        Ok((all, lens))
    }

    /// Rank 0's `buffer` into every worker's (all of one length).
    fn broadcast_bytes(&self, buffer: &mut [u8]) {
        let root = self.world.process_at_rank(0);
        mpi::request::scope(|scope| {
            let request = root.immediate_broadcast_into(scope, buffer);
            self.wait(request);
        });
    }

    /// The reduce-scatter's exchange: `send` holds this worker's slices for every other
    /// worker (`bounds` cut the input; this worker's own slice is not in it), `received` gets
    /// every other worker's slice for this one, in rank order.
    fn scatter(&self, send: &[f32], received: &mut [f32], bounds: &[usize]) -> Result<()> {
        let mine = self.slice_len(bounds, self.rank);
        let mut sends = Vec::with_capacity(self.workers);
        let mut recvs = Vec::with_capacity(self.workers);
        let (mut at, mut rest) = (0, received);
        for peer in (0..self.workers).filter(|&p| p != self.rank) {
            let len = self.slice_len(bounds, peer);
            sends.push((
                peer,
                send.get(at..at + len).ok_or_else(|| bad_plan(bounds))?,
            ));
            at += len;
            let (slot, tail) = std::mem::take(&mut rest)
                .split_at_mut_checked(mine)
                .ok_or_else(|| bad_plan(bounds))?;
            recvs.push((peer, slot));
            rest = tail;
        }
        self.trade(SCATTER, &sends, recvs);
        Ok(())
    }

    /// The all-gather's exchange: this worker's slice of `out` (by `bounds`) goes to every
    /// other worker, whose slices arrive in place.
    fn gather(&self, out: &mut [f32], bounds: &[usize]) -> Result<()> {
        let mut regions = Vec::with_capacity(self.workers);
        let mut rest = out;
        for j in 0..self.workers {
            let (region, tail) = std::mem::take(&mut rest)
                .split_at_mut_checked(self.slice_len(bounds, j))
                .ok_or_else(|| bad_plan(bounds))?;
            regions.push(region);
            rest = tail;
        }
        let mut mine: &[f32] = &[];
        let mut recvs = Vec::with_capacity(self.workers);
        for (j, region) in regions.into_iter().enumerate() {
            if j == self.rank {
                mine = region;
            } else {
                recvs.push((j, region));
            }
        }
        let sends: Vec<(usize, &[f32])> = recvs.iter().map(|&(j, _)| (j, mine)).collect();
        self.trade(GATHER, &sends, recvs);
        Ok(())
    }

    fn slice_len(&self, bounds: &[usize], j: usize) -> usize {
        match (bounds.get(j), bounds.get(j + 1)) {
            (Some(lo), Some(hi)) => hi.saturating_sub(*lo),
            _ => 0,
        }
    }

    /// Posts every receive, then every send, and waits for all of them.
    fn trade(&self, tag: mpi::Tag, sends: &[(usize, &[f32])], recvs: Vec<(usize, &mut [f32])>) {
        mpi::request::scope(|scope| {
            let mut pending = Vec::with_capacity(sends.len() + recvs.len());
            for (peer, buffer) in recvs {
                if let Ok(peer) = i32::try_from(peer) {
                    let process = self.world.process_at_rank(peer);
                    pending.push(process.immediate_receive_into_with_tag(scope, buffer, tag));
                }
            }
            for &(peer, buffer) in sends {
                if let Ok(peer) = i32::try_from(peer) {
                    let process = self.world.process_at_rank(peer);
                    pending.push(process.immediate_send_with_tag(scope, buffer, tag));
                }
            }
            self.wait_all(pending);
        });
    }
}

/// A plan whose slices do not fit their buffers (a bug, never bad input).
fn bad_plan(bounds: &[usize]) -> Error {
    Error::Protocol {
        reason: format!("slices {bounds:?} do not fit their buffers"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn r51_slices_cover_every_element_once_in_rank_order() {
        for n in [0, 1, 5, 16, 1000, (1 << 22) + 3] {
            for w in 1..=7 {
                let b = slice_bounds(n, w);
                assert_eq!(b.len(), w + 1);
                assert_eq!((b[0], b[w]), (0, n));
                assert!(b
                    .windows(2)
                    .all(|p| p[0] <= p[1] && p[1] - p[0] <= n / w + 1));
            }
        }
    }

    #[test]
    fn r51_the_rank_order_sum_is_the_specs_dense_sum() {
        // Values whose sums depend on the order of the additions, -0.0 and NaN included.
        let columns: Vec<Vec<f32>> = vec![
            vec![1e8, -0.0, 0.1, f32::NAN, 3.0, -1e-30],
            vec![-1e8, -0.0, 0.2, 1.0, 1e30, 1e-30],
            vec![1.0, -0.0, 0.3, 2.0, -1e30, 7.5],
            vec![0.5, 0.0, 1e-7, -2.0, 1.0, -7.5],
        ];
        for w in 1..=columns.len() {
            let parts: Vec<&[f32]> = columns[..w].iter().map(Vec::as_slice).collect();
            let mut out = vec![9.0; 6];
            add_in_order(&mut out, &parts);
            let values: Vec<Value> = columns[..w]
                .iter()
                .map(|c| Value::Dense(Tensor::new([6], c.clone()).unwrap()))
                .collect();
            let spec = reduce::sum(&values, DType::F32).unwrap().unwrap();
            assert_eq!(
                Value::Dense(Tensor::new([6], out).unwrap()),
                spec,
                "{w} workers"
            );
        }
    }

    #[test]
    fn r69_headers_and_frames_round_trip() {
        let header = Header {
            call: Call::Push as u64,
            number: 7,
            refused: true,
            signature: u64::MAX,
            extra: 3,
        };
        assert_eq!(Header::from_words(&header.words()), header);
        assert_eq!(Call::name_of(Call::SetOptimizer as u64), "set_optimizer");
        let value = Value::Dense(Tensor::new([2], vec![1.5_f32, -0.0]).unwrap());
        let message = Message::Request(Request::Push {
            id: 0,
            key: Key::from("w"),
            payload: Payload::Plain(value),
        });
        let mut blob = Vec::new();
        write_frame(&mut blob, &message).unwrap();
        write_frame(&mut blob, &message).unwrap();
        let (first, rest) = read_frame(&blob).unwrap();
        let (second, rest) = read_frame(rest).unwrap();
        assert_eq!((first, second, rest.len()), (message.clone(), message, 0));
        assert!(read_frame(&blob[..5]).is_err());
        assert!(read_frame(&blob[..12]).is_err());
    }
}
