//! Linearizability of real multi-threaded runs of the engine-backed store against the spec
//! (SPEC R62): threads push unique values to and pull two shared keys; every history, recorded
//! with invocation before each call and return once its result is observed, must have a
//! sequential order the spec ([`SpecObject`]) agrees with. A stale reader must be rejected.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kvstore::{DType, KvStore, NdArray, Tensor};
use kvstore_models::linearizable::{SpecObject, StoreOp, StoreRet};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester};
use std::collections::BTreeMap;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

const THREADS: usize = 3;
const OPS: usize = 10;
const KEYS: [i64; 2] = [0, 1];
/// Elements per value: a torn read would mix two values.
const LEN: usize = 4;

type History = LinearizabilityTester<usize, SpecObject>;

/// The value op `op` of thread `thread` pushes: unique to it, so a pull names its push.
fn unique(thread: usize, op: usize) -> Vec<f32> {
    let base = (thread * OPS + op + 1) as f32;
    (0..LEN).map(|i| base + i as f32 / 8.0).collect()
}

fn initial() -> Vec<f32> {
    vec![0.0; LEN]
}

/// A store as a history's threads call it.
trait Client: Send + Sync + 'static {
    fn push(&self, key: i64, value: &[f32]) -> kvstore::Result<()>;
    /// Pulls `key` and reads the output (which waits for the pull).
    fn pull(&self, thread: usize, key: i64) -> kvstore::Result<Vec<f32>>;
}

/// The engine-backed store itself.
struct Real(KvStore);

impl Real {
    fn new() -> Self {
        let kv = kvstore::create("local").unwrap();
        let values: Vec<Tensor> = KEYS.iter().map(|_| tensor(&initial())).collect();
        kv.init(KEYS.to_vec(), values).unwrap();
        Real(kv)
    }
}

fn tensor(value: &[f32]) -> Tensor {
    Tensor::new([value.len()], value.to_vec()).unwrap()
}

impl Client for Real {
    fn push(&self, key: i64, value: &[f32]) -> kvstore::Result<()> {
        self.0.push(key, tensor(value))
    }

    fn pull(&self, _: usize, key: i64) -> kvstore::Result<Vec<f32>> {
        let out = NdArray::zeros([LEN], DType::F32)?;
        self.0.pull(key, &out)?;
        Ok(out.to_f32())
    }
}

/// A planted bug: a read cache that serves each thread's pulls of a key from its first pull of
/// that key.
struct Stale {
    real: Real,
    cache: Mutex<BTreeMap<(usize, i64), Vec<f32>>>,
}

impl Client for Stale {
    fn push(&self, key: i64, value: &[f32]) -> kvstore::Result<()> {
        self.real.push(key, value)
    }

    fn pull(&self, thread: usize, key: i64) -> kvstore::Result<Vec<f32>> {
        if let Some(cached) = self.cache.lock().unwrap().get(&(thread, key)) {
            return Ok(cached.clone());
        }
        let value = self.real.pull(thread, key)?;
        self.cache
            .lock()
            .unwrap()
            .insert((thread, key), value.clone());
        Ok(value)
    }
}

/// A small deterministic generator (splitmix64), so a failing run can be replayed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Thread `thread`'s ops in run `seed`: random pushes and pulls on random keys.
fn random_script(seed: u64, thread: usize) -> Vec<StoreOp> {
    let mut rng = Rng(seed * 1_000 + thread as u64);
    (0..OPS)
        .map(|op| {
            let key = KEYS[(rng.next() % KEYS.len() as u64) as usize];
            if rng.next() % 2 == 0 {
                StoreOp::Push {
                    key,
                    value: unique(thread, op),
                }
            } else {
                StoreOp::Pull { key }
            }
        })
        .collect()
}

/// A history being recorded, and how many invocations overlapped another thread's op.
struct Recording {
    history: History,
    in_flight: usize,
    overlaps: usize,
}

/// Runs each thread's script on `client` at once; returns the history and how many of its
/// invocations came while another thread's op was in flight (0: the threads never overlapped).
fn record(client: Arc<impl Client>, scripts: Vec<Vec<StoreOp>>) -> (History, usize) {
    let spec = SpecObject::new("local", &KEYS.map(|key| (key, initial()))).unwrap();
    let recording = Arc::new(Mutex::new(Recording {
        history: History::new(spec),
        in_flight: 0,
        overlaps: 0,
    }));
    let start = Arc::new(Barrier::new(scripts.len()));
    let threads: Vec<_> = scripts
        .into_iter()
        .enumerate()
        .map(|(thread, script)| {
            let (client, recording, start) = (
                Arc::clone(&client),
                Arc::clone(&recording),
                Arc::clone(&start),
            );
            thread::spawn(move || {
                start.wait();
                for op in script {
                    {
                        let mut recording = recording.lock().unwrap();
                        recording.history.on_invoke(thread, op.clone()).unwrap();
                        recording.overlaps += usize::from(recording.in_flight > 0);
                        recording.in_flight += 1;
                    }
                    let ret = match op {
                        StoreOp::Push { key, value } => StoreRet::Pushed(client.push(key, &value)),
                        StoreOp::Pull { key } => StoreRet::Pulled(client.pull(thread, key)),
                    };
                    let mut recording = recording.lock().unwrap();
                    recording.history.on_return(thread, ret).unwrap();
                    recording.in_flight -= 1;
                }
            })
        })
        .collect();
    for handle in threads {
        handle.join().unwrap();
    }
    let recording = Arc::into_inner(recording).unwrap().into_inner().unwrap();
    (recording.history, recording.overlaps)
}

#[test]
fn r62_threads_sharing_a_local_store_give_linearizable_histories() {
    let mut overlaps = 0;
    for seed in 0..200 {
        let scripts = (0..THREADS).map(|t| random_script(seed, t)).collect();
        let (history, overlapping) = record(Arc::new(Real::new()), scripts);
        overlaps += overlapping;
        assert_eq!(history.len(), THREADS * OPS);
        assert!(
            history.serialized_history().is_some(),
            "run {seed} is not linearizable: {history:?}"
        );
    }
    eprintln!(
        "overlapping invocations: {overlaps} of {}",
        200 * THREADS * OPS
    );
    // Not vacuous: the threads' calls did run concurrently.
    assert!(overlaps > 0, "no call ever overlapped another thread's");
}

#[test]
fn a_stale_reader_over_the_real_store_is_rejected() {
    // Each thread pulls a key, pushes to it, then pulls it again: the cache serves the second
    // pull the value from before the thread's own push, which no order explains.
    for seed in 0..20 {
        let scripts: Vec<Vec<StoreOp>> = (0..THREADS)
            .map(|thread| {
                let key = KEYS[(seed as usize + thread) % KEYS.len()];
                vec![
                    StoreOp::Pull { key },
                    StoreOp::Push {
                        key,
                        value: unique(thread, 0),
                    },
                    StoreOp::Pull { key },
                ]
            })
            .collect();
        let (control, _) = record(Arc::new(Real::new()), scripts.clone());
        assert!(
            control.serialized_history().is_some(),
            "run {seed}: the real store failed the scripts the stale reader fails"
        );
        let stale = Stale {
            real: Real::new(),
            cache: Mutex::new(BTreeMap::new()),
        };
        let (history, _) = record(Arc::new(stale), scripts);
        assert!(
            history.serialized_history().is_none(),
            "run {seed}: a stale history passed: {history:?}"
        );
    }
}

#[test]
fn the_tester_rejects_a_read_of_a_value_overwritten_before_the_read_began() {
    let spec = SpecObject::new("local", &[(0, initial())]).unwrap();
    let mut history = History::new(spec);
    let (first, second) = (unique(0, 0), unique(0, 1));
    history
        .on_invoke(
            0,
            StoreOp::Push {
                key: 0,
                value: first.clone(),
            },
        )
        .unwrap()
        .on_return(0, StoreRet::Pushed(Ok(())))
        .unwrap()
        .on_invoke(
            0,
            StoreOp::Push {
                key: 0,
                value: second.clone(),
            },
        )
        .unwrap()
        .on_return(0, StoreRet::Pushed(Ok(())))
        .unwrap();
    let mut fresh = history.clone();
    fresh
        .on_invoke(1, StoreOp::Pull { key: 0 })
        .unwrap()
        .on_return(1, StoreRet::Pulled(Ok(second)))
        .unwrap();
    assert!(fresh.serialized_history().is_some());
    history
        .on_invoke(1, StoreOp::Pull { key: 0 })
        .unwrap()
        .on_return(1, StoreRet::Pulled(Ok(first)))
        .unwrap();
    assert!(history.serialized_history().is_none());
}

#[test]
fn the_spec_object_reports_the_specs_errors() {
    let mut spec = SpecObject::new("local", &[(0, initial())]).unwrap();
    use stateright::semantics::SequentialSpec;
    assert!(matches!(
        spec.invoke(&StoreOp::Pull { key: 7 }),
        StoreRet::Pulled(Err(kvstore::Error::NotInitialized { .. }))
    ));
    assert!(matches!(
        spec.invoke(&StoreOp::Push {
            key: 0,
            value: vec![1.0]
        }),
        StoreRet::Pushed(Err(kvstore::Error::ShapeMismatch { .. }))
    ));
}
