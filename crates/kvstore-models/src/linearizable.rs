//! The executable spec as a `stateright` sequential specification, so that histories recorded
//! from real multi-threaded runs of a store can be checked for linearizability.
//!
//! [`SpecObject`] wraps `kvstore_spec`'s [`LocalStore`]: every op invoked on it runs the spec's
//! own push or pull, so the reference is the spec itself, not a register re-implemented here.
//! Record a history with [`stateright::semantics::LinearizabilityTester`]: `on_invoke` just
//! before a call, `on_return` once its result is observed (for a pull: after its output is
//! read, which waits for the pull).
//!
//! ```
//! use kvstore_models::linearizable::{SpecObject, StoreOp, StoreRet};
//! use stateright::semantics::{ConsistencyTester, LinearizabilityTester};
//!
//! let spec = SpecObject::new("local", &[(0, vec![0.0])])?;
//! let mut history = LinearizabilityTester::new(spec);
//! history.on_invoke(0, StoreOp::Push { key: 0, value: vec![1.0] }).unwrap();
//! history.on_invoke(1, StoreOp::Pull { key: 0 }).unwrap();
//! history.on_return(0, StoreRet::Pushed(Ok(()))).unwrap();
//! // Concurrent with the push: reading the old value is fine.
//! history.on_return(1, StoreRet::Pulled(Ok(vec![0.0]))).unwrap();
//! assert!(history.serialized_history().is_some());
//! // After the push returned, the old value is stale.
//! history.on_invoke(1, StoreOp::Pull { key: 0 }).unwrap();
//! history.on_return(1, StoreRet::Pulled(Ok(vec![0.0]))).unwrap();
//! assert!(history.serialized_history().is_none());
//! # Ok::<(), kvstore_spec::Error>(())
//! ```

use kvstore_spec::kind::Kind;
use kvstore_spec::store::LocalStore;
use kvstore_spec::{DType, Error, Key, Result, Tensor, Value};
use stateright::semantics::SequentialSpec;

/// An operation on the store: one key, dense f32 values.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    /// `push(key, value)`: without an updater, the key then holds `value`.
    Push {
        /// The key.
        key: i64,
        /// The elements pushed, in the key's shape.
        value: Vec<f32>,
    },
    /// `pull(key)` into a dense f32 output of the key's shape.
    Pull {
        /// The key.
        key: i64,
    },
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreRet {
    /// A push's result.
    Pushed(std::result::Result<(), Error>),
    /// A pull's result: the output's elements.
    Pulled(std::result::Result<Vec<f32>, Error>),
}

/// The spec's single-process store as a sequential reference object.
#[derive(Debug, Clone)]
pub struct SpecObject {
    store: LocalStore,
}

impl SpecObject {
    /// A spec store of `kind` (e.g. `"local"`) with each key initialised to a 1-d value.
    pub fn new(kind: &str, keys: &[(i64, Vec<f32>)]) -> Result<Self> {
        let mut store = LocalStore::new(Kind::parse(kind)?)?;
        let pairs = keys
            .iter()
            .map(|(key, value)| Ok((Key::Int(*key), dense(value.clone())?)))
            .collect::<Result<Vec<_>>>()?;
        store.init(&pairs)?;
        Ok(SpecObject { store })
    }

    /// The spec store in its current state.
    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    fn push(&mut self, key: i64, value: &[f32]) -> Result<()> {
        self.store.push(&[(Key::Int(key), dense(value.to_vec())?)])
    }

    fn pull(&mut self, key: i64) -> Result<Vec<f32>> {
        let key = Key::Int(key);
        // An output of the key's shape; an unknown key gets an empty one and the spec's error.
        let shape = self
            .store
            .value(&key)
            .map_or(vec![0], |v| v.shape().to_vec());
        let out = Value::Dense(Tensor::zeros(shape, DType::F32)?);
        let pulled = self.store.pull(&[(key, out)], true)?;
        Ok(pulled.iter().flat_map(Value::to_f32).collect())
    }
}

/// A 1-d dense f32 value.
fn dense(value: Vec<f32>) -> Result<Value> {
    Ok(Value::Dense(Tensor::new([value.len()], value)?))
}

impl SequentialSpec for SpecObject {
    type Op = StoreOp;
    type Ret = StoreRet;

    fn invoke(&mut self, op: &StoreOp) -> StoreRet {
        match op {
            StoreOp::Push { key, value } => StoreRet::Pushed(self.push(*key, value)),
            StoreOp::Pull { key } => StoreRet::Pulled(self.pull(*key)),
        }
    }
}
