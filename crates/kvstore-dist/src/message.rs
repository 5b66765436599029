//! The messages workers and servers exchange. Every request carries an id chosen by its worker;
//! every reply names the request it answers. Links are FIFO (as TCP and MPI give).

use kvstore_spec::codec::Compression;
use kvstore_spec::dist::InitSignature;
use kvstore_spec::optimizer::{Optimizer, State};
use kvstore_spec::{Error, Key, Value};
use std::sync::Arc;

/// A request's id, unique per worker.
pub type RequestId = u64;

/// What a push carries for one part.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// The part's values as they are (dense flat, or the whole row_sparse value).
    Plain(Value),
    /// The part quantised by its worker (R55): `len` f32 elements packed in `words`.
    Quantized {
        /// The codec, so the server decodes what was encoded.
        compression: Compression,
        /// The packed elements.
        words: Vec<u32>,
        /// How many elements `words` holds.
        len: usize,
    },
}

/// A worker's request to a server, about the part of `key` that server holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Rank 0 stores a key's initial value (R49).
    Init {
        /// The request id.
        id: RequestId,
        /// The key.
        key: Key,
        /// The part's value: flat dense, or a whole row_sparse value.
        value: Value,
    },
    /// A worker's contribution to a key (R51, R54).
    Push {
        /// The request id.
        id: RequestId,
        /// The key.
        key: Key,
        /// The part's data.
        payload: Payload,
    },
    /// A worker reads a key (R52), or only some rows of it (row_sparse_pull, R30-R33).
    Pull {
        /// The request id.
        id: RequestId,
        /// The key.
        key: Key,
        /// `None`: the whole part. `Some(ids)`: only these rows (sorted, distinct, in range,
        /// checked by the worker and again by the server), as a row_sparse value.
        rows: Option<Vec<i64>>,
    },
    /// A worker enters the global barrier; only server 0 coordinates barriers.
    Barrier {
        /// The request id.
        id: RequestId,
    },
    /// Installs a fresh optimizer as the server's updater (R57).
    SetOptimizer {
        /// The request id.
        id: RequestId,
        /// The optimizer.
        optimizer: Optimizer,
    },
    /// A worker's collective init call, as its signature, sent to server 0 before anything is
    /// stored: server 0 answers every worker once all have sent theirs, with `Done` when they
    /// agree and `CollectiveMismatch` when not (R49).
    InitCheck {
        /// The request id.
        id: RequestId,
        /// Per key in call order: shape, dtype, storage type.
        signature: InitSignature,
        /// Whether this worker's own checks refused its arguments (it takes part anyway, so
        /// nobody waits for it; nothing is registered or stored then).
        refused: bool,
    },
    /// Asks for the optimizer states of every part the server holds (R68).
    SaveStates {
        /// The request id.
        id: RequestId,
    },
    /// Replaces the optimizer states of every part the server holds (R68).
    LoadStates {
        /// The request id.
        id: RequestId,
        /// The optimizer to install too, when the saved states carry one.
        optimizer: Option<Optimizer>,
        /// Per key, the state of this server's part (flat); keys absent start afresh.
        states: Vec<(Key, State)>,
    },
}

impl Request {
    /// The request's id.
    pub fn id(&self) -> RequestId {
        match self {
            Request::Init { id, .. }
            | Request::Push { id, .. }
            | Request::Pull { id, .. }
            | Request::Barrier { id }
            | Request::SetOptimizer { id, .. }
            | Request::InitCheck { id, .. }
            | Request::SaveStates { id }
            | Request::LoadStates { id, .. } => *id,
        }
    }
}

/// A server's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The request took effect (an init stored, a push applied, a barrier passed).
    Done {
        /// The request answered.
        id: RequestId,
    },
    /// A pull's part.
    Value {
        /// The request answered.
        id: RequestId,
        /// The part's value, shared: every pull of one round answers with the same buffer,
        /// which a transport sends without copying it.
        value: Arc<Value>,
    },
    /// The optimizer states of a server's parts (R68).
    States {
        /// The request answered.
        id: RequestId,
        /// The server's optimizer.
        optimizer: Optimizer,
        /// Per key with a state, the state of this server's part (flat).
        states: Vec<(Key, State)>,
    },
    /// The request failed and changed nothing on the server.
    Failed {
        /// The request answered.
        id: RequestId,
        /// Why.
        error: Error,
    },
}

impl Reply {
    /// The id of the request this answers.
    pub fn id(&self) -> RequestId {
        match self {
            Reply::Done { id }
            | Reply::Value { id, .. }
            | Reply::States { id, .. }
            | Reply::Failed { id, .. } => *id,
        }
    }
}
