//! What a worker's body sees of a distributed store, whichever layout carries it: the
//! parameter servers (`job::DistKv`) or the allreduce kind (no servers). One check program and
//! one benchmark drive both.

use kvstore_spec::codec::Compression;
use kvstore_spec::optimizer::Optimizer;
use kvstore_spec::{Key, Result, Value};

/// A worker's handle on a distributed store (SPEC R48-R58).
pub trait Handle {
    /// This worker's rank, in `0..num_workers()`.
    fn rank(&self) -> usize;

    /// The number of workers.
    fn num_workers(&self) -> usize;

    /// Collective init (R49): every worker calls it with the same keys; rank 0's values are
    /// stored.
    fn init(&self, pairs: &[(Key, Value)]) -> Result<()>;

    /// Pushes this worker's values; several values of one key (one per device) are merged here
    /// first and sent once (dist_device_sync, R18). May return before the push took effect; a
    /// failure is then reported by [`Handle::wait_all`].
    fn push(&self, pairs: &[(Key, Value)]) -> Result<()>;

    /// Each key's value in its own shape, after the round of this worker's last push (R52).
    fn pull(&self, keys: &[Key]) -> Result<Vec<Value>>;

    /// The rows `row_ids[i]` (or `row_ids[0]` for every key) of each key, as row_sparse
    /// values with sorted, distinct row ids (R30-R33, R52).
    fn row_sparse_pull(&self, keys: &[Key], row_ids: &[Vec<i64>]) -> Result<Vec<Value>>;

    /// Pushes, then pulls the pushed keys (in first-appearance order): the values of the round
    /// this push belongs to (R34, R52).
    fn pushpull(&self, pairs: &[(Key, Value)]) -> Result<Vec<Value>> {
        self.push(pairs)?;
        let mut keys: Vec<Key> = Vec::new();
        for (key, _) in pairs {
            if !keys.contains(key) {
                keys.push(key.clone());
            }
        }
        self.pull(&keys)
    }

    /// The global barrier across workers.
    fn barrier(&self) -> Result<()>;

    /// Installs a fresh optimizer as the updater (R57).
    fn set_optimizer(&self, optimizer: &Optimizer) -> Result<()>;

    /// A server command (R67, `kvstore_spec::command`): head 0 installs an optimizer given as
    /// JSON, head 4 checks a compression setting; other heads are refused. A layout without
    /// servers refuses every head.
    fn send_command_to_servers(&self, head: i32, body: &str) -> Result<()> {
        let _ = body;
        Err(kvstore_spec::Error::UnsupportedOperation {
            op: format!("send_command_to_servers head {head} (this layout has no servers)"),
            kind: "dist".into(),
        })
    }

    /// The optimizer states (and the optimizer when `dump_optimizer`), in the format of R47
    /// (R68). Any worker may call it.
    fn save_optimizer_states(&self, dump_optimizer: bool) -> Result<Vec<u8>> {
        let _ = dump_optimizer;
        Err(kvstore_spec::Error::UnsupportedOperation {
            op: "save_optimizer_states".into(),
            kind: "dist".into(),
        })
    }

    /// Replaces the optimizer states (and the optimizer when the bytes carry one) (R68).
    fn load_optimizer_states(&self, bytes: &[u8]) -> Result<()> {
        let _ = bytes;
        Err(kvstore_spec::Error::UnsupportedOperation {
            op: "load_optimizer_states".into(),
            kind: "dist".into(),
        })
    }

    /// Compresses this worker's later pushes (R55). Collective: every worker calls it.
    fn set_gradient_compression(&self, compression: Compression) -> Result<()>;

    /// Waits until nothing is in flight; the first failure of a push not yet reported.
    fn wait_all(&self) -> Result<()>;
}
