//! Every failure kvstore can report, as one enum.
//!
//! Each message names what the caller needs to find the mistake: the key, the shapes or the ids.
//! A call that returns one of these changed nothing (SPEC R2).

use crate::key::{Key, KeyType};
use crate::value::{DType, Device, StorageType};

/// The error type of every kvstore operation.
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Error {
    // --- store kinds and capabilities ---
    /// The name selects a store kind kvstore does not provide.
    #[error("unsupported store kind '{kind}': {reason}")]
    UnsupportedKind { kind: String, reason: String },
    /// The operation is not available on this store kind.
    #[error("{op} is not supported by a '{kind}' store")]
    UnsupportedOperation { op: String, kind: String },
    /// A capability name that kvstore does not know.
    #[error("unknown capability '{name}'")]
    UnknownCapability { name: String },

    // --- key/value normalisation ---
    /// Int and string keys mixed within one call.
    #[error("inconsistent key types in one call: {first} and {second}")]
    MixedKeyTypes { first: KeyType, second: KeyType },
    /// The store's key type was fixed by an earlier call.
    #[error("this store uses {expected} keys (fixed by its first call), but {found} key {key} was given")]
    KeyTypeMismatch {
        expected: KeyType,
        found: KeyType,
        key: Key,
    },
    /// A list of keys and a list of values of different lengths.
    #[error("{keys} keys but {values} values")]
    LengthMismatch { keys: usize, values: usize },
    /// A list of keys with a single value that is not a list.
    #[error("{keys} keys were given with a single value; give one value (or one list of values) per key")]
    ValuesNotAList { keys: usize },
    /// A single key given a list whose items are themselves lists.
    #[error(
        "key {key} was given a nested list of values; a single key takes one value or a flat list"
    )]
    NestedValuesForSingleKey { key: Key },
    /// A key given an empty list of values.
    #[error("key {key} was given an empty list of values")]
    EmptyValueList { key: Key },
    /// An int key outside the range kvstore accepts.
    #[error("key {value} is outside the accepted int key range [{min}, {max}]")]
    KeyOutOfRange { value: i128, min: i64, max: i64 },

    // --- values ---
    /// A shape whose element count does not fit in memory indices.
    #[error("invalid shape {shape:?}: {reason}")]
    InvalidShape { shape: Vec<usize>, reason: String },
    /// Data length does not match the shape.
    #[error("shape {shape:?} needs {expected} elements but {found} were given")]
    DataLength {
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    /// A row_sparse value whose row ids are malformed.
    #[error("invalid row_sparse value of shape {shape:?}: {reason}")]
    InvalidRowSparse { shape: Vec<usize>, reason: String },
    /// The same key given different storage types in a way the operation does not allow.
    #[error("key {key}: expected a {expected} value, got {found}")]
    StorageTypeMismatch {
        key: Key,
        expected: StorageType,
        found: StorageType,
    },

    // --- store state ---
    /// `init` (or `broadcast`) of a key that already holds a value.
    #[error("key {key} is already initialised")]
    DuplicateInit { key: Key },
    /// Push or pull of a key that was never initialised.
    #[error("key {key} has not been initialised")]
    NotInitialized { key: Key },
    /// A value whose shape differs from the key's shape (shape is part of a key's identity).
    #[error("key {key} has shape {expected:?}, but a value of shape {found:?} was given")]
    ShapeMismatch {
        key: Key,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    // --- row_sparse_pull ---
    /// A row id that is negative or not below the number of rows.
    #[error("key {key}: row id {id} is out of range for {rows} rows")]
    RowIdOutOfRange { key: Key, id: i64, rows: usize },
    /// Number of row-id lists does not match the number of outputs.
    #[error("{row_ids} row_ids lists for {outputs} outputs")]
    RowIdsCountMismatch { row_ids: usize, outputs: usize },

    // --- gradient compression ---
    /// Compression requested on a store kind that does not allow it.
    #[error("gradient compression is not supported by a '{kind}' store")]
    CompressionNotSupported { kind: String },
    /// Compression parameters that cannot be used.
    #[error("invalid gradient compression parameters: {reason}")]
    InvalidCompression { reason: String },
    /// Compression of a value that is not dense float32.
    #[error("key {key}: gradient compression needs dense float32 values, got {stype} {dtype}")]
    CompressionUnsupportedValue {
        key: Key,
        stype: StorageType,
        dtype: DType,
    },

    // --- updaters and optimizers ---
    /// The updater refused the update; the stored value and updater state are unchanged.
    #[error("updater failed on key {key}: {message}")]
    Updater { key: Key, message: String },
    /// A server-side update is required (dist_async) but none was set.
    #[error("key {key}: a '{kind}' store needs an optimizer or updater before the first push")]
    UpdaterRequired { key: Key, kind: String },
    /// Optimizer state save/load without an optimizer installed by `set_optimizer`.
    #[error("no optimizer is set on this store: call set_optimizer first")]
    NoOptimizer,
    /// Optimizer parameters that cannot be used.
    #[error("invalid optimizer: {reason}")]
    InvalidOptimizer { reason: String },
    /// A saved optimizer state that cannot be read.
    #[error("invalid optimizer state: {reason}")]
    InvalidState { reason: String },
    /// File access for optimizer states failed.
    #[error("cannot access '{path}': {message}")]
    Io { path: String, message: String },

    // --- execution ---
    /// An operation panicked while it ran on an engine thread; the panic was caught and
    /// nothing it touched was committed.
    #[error("an operation panicked while it ran: {message}")]
    OperationPanicked { message: String },

    // --- devices ---
    /// A multi-device push on a store that allows only one fixed set of devices.
    #[error("key {key}: this store reduces over one fixed device set {expected:?}, got {found:?}")]
    DeviceSetChanged {
        key: Key,
        expected: Vec<Device>,
        found: Vec<Device>,
    },

    // --- distributed ---
    /// A worker rank outside `[0, num_workers)`.
    #[error("worker rank {rank} is out of range for {workers} workers")]
    UnknownWorker { rank: usize, workers: usize },
    /// Workers disagree on a collective call.
    #[error("workers disagree in a collective {op}: {reason}")]
    CollectiveMismatch { op: String, reason: String },
    /// Rounds that cannot complete because some workers pushed fewer times than others.
    #[error("key {key}: round {round} is waiting for workers {missing:?}")]
    IncompleteRound {
        key: Key,
        round: u64,
        missing: Vec<usize>,
    },
    /// A process of a distributed store stopped answering within the failure detector's timeout
    /// (R64): the operation fails instead of waiting forever.
    #[error("{peer} did not answer in time: {reason}")]
    PeerFailed { peer: String, reason: String },
    /// A message of the distributed protocol that the receiver cannot accept (R65); the
    /// receiver's state is unchanged.
    #[error("protocol error: {reason}")]
    Protocol { reason: String },
}

/// Shorthand for results of kvstore operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
