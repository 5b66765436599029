//! Client programs for the multi-threaded tests: each thread owns a few keys no other thread
//! touches and shares a few keys with every thread. A program is generated from a seed, run on
//! a shared engine store, and replayed on the spec for the thread's owned keys.

use crate::updaters::UpdaterKind;
use kvstore::{
    BackendKind, DType, Data, Device, Key, KvStore, NdArray, Options, RowSparse, Tensor, Value,
};

/// SplitMix64: a deterministic stream for one thread's program.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }
}

/// Keys every thread pushes to: dense f32 `[4]`, updated by addition of small integers.
pub const SHARED: [i64; 2] = [0, 1];
pub const SHARED_SHAPE: [usize; 1] = [4];

/// Every key's starting value on the shared store.
pub fn shared_init() -> Value {
    Value::Dense(Tensor::new(SHARED_SHAPE, vec![1.0f32, 2.0, 3.0, 4.0]).unwrap())
}

/// The keys thread `t` owns, with their shapes and dtypes.
pub fn owned(t: usize) -> Vec<(Key, Vec<usize>, DType)> {
    let base = 100 + 10 * t as i64;
    vec![
        (Key::Int(base), vec![4], DType::F32),
        (Key::Int(base + 1), vec![3, 2], DType::F32),
        (Key::Int(base + 2), vec![5, 3], DType::F16),
    ]
}

fn is_shared(key: &Key) -> bool {
    matches!(key, Key::Int(k) if SHARED.contains(k))
}

/// One call of a client.
#[derive(Debug, Clone)]
pub enum ClientOp {
    /// Per key, the values of its devices.
    Push(Vec<(Key, Vec<Value>)>),
    Pull(Vec<Key>),
    PushPull(Vec<(Key, Vec<Value>)>),
    RowSparsePull(Key, Vec<i64>),
}

/// How a thread reads its outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// Right after the call (`NdArray::value` waits for the write).
    AtOnce,
    /// After the whole program and a `wait_all`.
    AfterWaitAll,
    /// After the whole program, each output after its `NdArray::wait`.
    AfterWait,
}

fn element(rng: &mut Rng) -> f64 {
    match rng.below(10) {
        0 => -0.0,
        1 => [0.1, 1e30, -3.0e38, 1e-40][rng.below(4)],
        _ => (rng.below(2001) as f64 - 1000.0) / 37.0,
    }
}

fn owned_value(rng: &mut Rng, shape: &[usize], dtype: DType) -> Value {
    let device = Device::Cpu(rng.below(3) as u32);
    if rng.percent(20) {
        let ids: Vec<i64> = (0..shape[0] as i64).filter(|_| rng.percent(50)).collect();
        let n = ids.len() * shape[1..].iter().product::<usize>();
        let xs: Vec<f64> = (0..n).map(|_| element(rng)).collect();
        let data = Data::from_f64(dtype, &xs);
        return Value::RowSparse(RowSparse::new(shape, ids, data).unwrap().on(device));
    }
    let xs: Vec<f64> = (0..shape.iter().product()).map(|_| element(rng)).collect();
    Value::Dense(
        Tensor::new(shape, Data::from_f64(dtype, &xs))
            .unwrap()
            .on(device),
    )
}

/// A positive, integer-valued gradient: sums of these are exact in any order.
fn shared_value(rng: &mut Rng) -> Value {
    let xs: Vec<f32> = (0..4).map(|_| (1 + rng.below(4)) as f32).collect();
    let device = Device::Cpu(rng.below(2) as u32);
    Value::Dense(Tensor::new(SHARED_SHAPE, xs).unwrap().on(device))
}

/// Thread `t`'s program of `len` calls.
pub fn program(seed: u64, t: usize, len: usize) -> Vec<ClientOp> {
    let mut rng = Rng::new(seed ^ (t as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mine = owned(t);
    let pick = |rng: &mut Rng| -> (Key, Vec<usize>, DType) {
        if rng.percent(45) {
            let k = SHARED[rng.below(SHARED.len())];
            (Key::Int(k), SHARED_SHAPE.to_vec(), DType::F32)
        } else {
            mine[rng.below(mine.len())].clone()
        }
    };
    let pairs = |rng: &mut Rng| -> Vec<(Key, Vec<Value>)> {
        (0..1 + rng.below(2))
            .map(|_| {
                let (key, shape, dtype) = pick(rng);
                let devices = 1 + rng.below(2);
                let values = (0..devices)
                    .map(|_| {
                        if is_shared(&key) {
                            shared_value(rng)
                        } else {
                            owned_value(rng, &shape, dtype)
                        }
                    })
                    .collect();
                (key, values)
            })
            .collect()
    };
    (0..len)
        .map(|_| match rng.below(10) {
            0..=3 => ClientOp::Push(pairs(&mut rng)),
            4..=6 => ClientOp::Pull((0..1 + rng.below(2)).map(|_| pick(&mut rng).0).collect()),
            7..=8 => ClientOp::PushPull(pairs(&mut rng)),
            _ => {
                let (key, shape, _) = mine[rng.below(mine.len())].clone();
                let ids = (0..rng.below(4))
                    .map(|_| rng.below(shape[0]) as i64)
                    .collect();
                ClientOp::RowSparsePull(key, ids)
            }
        })
        .collect()
}

/// The shape and dtype of a key of thread `t`'s program.
fn meta(t: usize, key: &Key) -> (Vec<usize>, DType) {
    if is_shared(key) {
        return (SHARED_SHAPE.to_vec(), DType::F32);
    }
    owned(t)
        .into_iter()
        .find(|(k, _, _)| k == key)
        .map(|(_, s, d)| (s, d))
        .unwrap()
}

/// What one pull returned: the call's index in the program, the key, the value.
pub type Pulled = (usize, Key, Value);

/// Issues `program` as thread `t` and returns what its pulls returned.
pub fn run_program(kv: &KvStore, t: usize, program: &[ClientOp], reads: Reads) -> Vec<Pulled> {
    let mut pending: Vec<(usize, Key, NdArray)> = Vec::new();
    let mut pulled = Vec::new();
    let out_for = |key: &Key| {
        let (shape, dtype) = meta(t, key);
        NdArray::zeros(shape, dtype).unwrap()
    };
    for (i, op) in program.iter().enumerate() {
        let mut outs: Vec<(Key, NdArray)> = Vec::new();
        let result = match op {
            ClientOp::Push(pairs) => {
                let (keys, values): (Vec<Key>, Vec<Vec<Value>>) = pairs.iter().cloned().unzip();
                kv.push(keys, values)
            }
            ClientOp::Pull(keys) => {
                outs = keys.iter().map(|k| (k.clone(), out_for(k))).collect();
                let arrays: Vec<NdArray> = outs.iter().map(|(_, a)| a.clone()).collect();
                kv.pull(keys.clone(), arrays)
            }
            ClientOp::PushPull(pairs) => {
                let (keys, values): (Vec<Key>, Vec<Vec<Value>>) = pairs.iter().cloned().unzip();
                outs = keys.iter().map(|k| (k.clone(), out_for(k))).collect();
                let arrays: Vec<NdArray> = outs.iter().map(|(_, a)| a.clone()).collect();
                kv.pushpull(keys, values, arrays)
            }
            ClientOp::RowSparsePull(key, ids) => {
                let (shape, dtype) = meta(t, key);
                let out = NdArray::row_sparse(shape, dtype).unwrap();
                outs.push((key.clone(), out.clone()));
                kv.row_sparse_pull(key.clone(), out, ids.clone())
            }
        };
        assert_eq!(result, Ok(()), "thread {t}, call {i}: {op:?}");
        for (key, out) in outs {
            match reads {
                Reads::AtOnce => pulled.push((i, key, out.value())),
                Reads::AfterWaitAll | Reads::AfterWait => pending.push((i, key, out)),
            }
        }
    }
    if reads == Reads::AfterWaitAll {
        assert_eq!(kv.wait_all(), Ok(()), "thread {t}: wait_all");
    }
    for (i, key, out) in pending {
        if reads == Reads::AfterWait {
            assert_eq!(out.wait(), Ok(()), "thread {t}: wait on call {i}'s output");
        }
        pulled.push((i, key, out.value()));
    }
    pulled
}

/// A store of `backend` with every key of threads `0..threads` initialised, and the additive
/// updater.
pub fn store(backend: BackendKind, threads: usize, workers: usize) -> KvStore {
    let kv = kvstore::create_with("local", Options { backend, workers }).unwrap();
    for k in SHARED {
        kv.init(k, shared_init()).unwrap();
    }
    for t in 0..threads {
        for (key, shape, dtype) in owned(t) {
            kv.init(key, Tensor::full(shape, dtype, 0.5).unwrap())
                .unwrap();
        }
    }
    kv.set_updater(UpdaterKind::AddKeepDtype(1.0).build());
    kv
}

/// `program` restricted to the keys its thread owns (calls left empty dropped), with each
/// call's index in the program.
pub fn owned_part(program: &[ClientOp]) -> Vec<(usize, ClientOp)> {
    let keep = |k: &Key| !is_shared(k);
    program
        .iter()
        .enumerate()
        .filter_map(|(i, op)| {
            let op = match op {
                ClientOp::Push(pairs) => {
                    ClientOp::Push(pairs.iter().filter(|(k, _)| keep(k)).cloned().collect())
                }
                ClientOp::PushPull(pairs) => {
                    ClientOp::PushPull(pairs.iter().filter(|(k, _)| keep(k)).cloned().collect())
                }
                ClientOp::Pull(keys) => {
                    ClientOp::Pull(keys.iter().filter(|k| keep(k)).cloned().collect())
                }
                ClientOp::RowSparsePull(..) => op.clone(),
            };
            let empty = match &op {
                ClientOp::Push(p) | ClientOp::PushPull(p) => p.is_empty(),
                ClientOp::Pull(k) => k.is_empty(),
                ClientOp::RowSparsePull(..) => false,
            };
            (!empty).then_some((i, op))
        })
        .collect()
}

/// Whether a pulled entry is of a shared key.
pub fn of_shared(pulled: &Pulled) -> bool {
    is_shared(&pulled.1)
}
