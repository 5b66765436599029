//! The operations every store implementation offers, on normalised arguments. [`crate::KvStore`]
//! normalises, records traces, and dispatches to one of them: the sequential spec, or the
//! engine over a backend.

use crate::args::Input;
use crate::NdArray;
use kvstore_spec::codec::Compression;
use kvstore_spec::optimizer::Optimizer;
use kvstore_spec::store::Observable;
use kvstore_spec::updater::Updater;
use kvstore_spec::{Key, Result, Value};
use std::fmt::Debug;

/// A store implementation behind [`crate::KvStore`].
pub(crate) trait StoreOps: Send + Sync + Debug {
    fn init(&self, pairs: Vec<(Key, Input)>) -> Result<()>;
    fn push(&self, pairs: Vec<(Key, Input)>, priority: i32) -> Result<()>;
    fn pull(&self, outs: Vec<(Key, NdArray)>, ignore_sparse: bool, priority: i32) -> Result<()>;
    fn row_sparse_pull(
        &self,
        outs: Vec<(Key, NdArray)>,
        row_ids: &[Vec<i64>],
        priority: i32,
    ) -> Result<()>;
    fn pushpull(&self, pairs: Vec<(Key, Input)>, outs: Vec<(Key, NdArray)>) -> Result<()>;
    fn broadcast(&self, pairs: Vec<(Key, Input)>, outs: Vec<(Key, NdArray)>) -> Result<()>;
    fn set_gradient_compression(&self, compression: Compression) -> Result<()>;
    fn set_optimizer(&self, optimizer: Optimizer) -> Result<()>;
    fn set_updater(&self, updater: Box<dyn Updater>);
    fn save_optimizer_states(&self, dump_optimizer: bool) -> Result<Vec<u8>>;
    fn load_optimizer_states(&self, bytes: &[u8]) -> Result<()>;
    fn wait_all(&self) -> Result<()>;
    fn wait_keys(&self, keys: &[Key]) -> Result<()>;
    fn value_of(&self, key: &Key) -> Option<Value>;
    fn observable(&self) -> Result<Observable>;
}

macro_rules! delegate_ops {
    ($ty:ty) => {
        impl<B: crate::backend::Backend> crate::ops::StoreOps for $ty {
            fn init(&self, pairs: Vec<(Key, Input)>) -> Result<()> {
                Self::init(self, pairs)
            }
            fn push(&self, pairs: Vec<(Key, Input)>, priority: i32) -> Result<()> {
                Self::push(self, pairs, priority)
            }
            fn pull(
                &self,
                outs: Vec<(Key, NdArray)>,
                ignore_sparse: bool,
                priority: i32,
            ) -> Result<()> {
                Self::pull(self, outs, ignore_sparse, priority)
            }
            fn row_sparse_pull(
                &self,
                outs: Vec<(Key, NdArray)>,
                row_ids: &[Vec<i64>],
                priority: i32,
            ) -> Result<()> {
                Self::row_sparse_pull(self, outs, row_ids, priority)
            }
            fn pushpull(&self, pairs: Vec<(Key, Input)>, outs: Vec<(Key, NdArray)>) -> Result<()> {
                Self::pushpull(self, pairs, outs)
            }
            fn broadcast(&self, pairs: Vec<(Key, Input)>, outs: Vec<(Key, NdArray)>) -> Result<()> {
                Self::broadcast(self, pairs, outs)
            }
            fn set_gradient_compression(&self, compression: Compression) -> Result<()> {
                Self::set_gradient_compression(self, compression)
            }
            fn set_optimizer(&self, optimizer: Optimizer) -> Result<()> {
                Self::set_optimizer(self, optimizer)
            }
            fn set_updater(&self, updater: Box<dyn Updater>) {
                Self::set_updater(self, updater)
            }
            fn save_optimizer_states(&self, dump_optimizer: bool) -> Result<Vec<u8>> {
                Self::save_optimizer_states(self, dump_optimizer)
            }
            fn load_optimizer_states(&self, bytes: &[u8]) -> Result<()> {
                Self::load_optimizer_states(self, bytes)
            }
            fn wait_all(&self) -> Result<()> {
                Self::wait_all(self)
            }
            fn wait_keys(&self, keys: &[Key]) -> Result<()> {
                Self::wait_keys(self, keys)
            }
            fn value_of(&self, key: &Key) -> Option<Value> {
                Self::value_of(self, key)
            }
            fn observable(&self) -> Result<Observable> {
                Self::observable(self)
            }
        }
    };
}
pub(crate) use delegate_ops;
