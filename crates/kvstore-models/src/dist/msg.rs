//! The model's message type: the protocol's requests and replies, made hashable and ordered as
//! stateright's actor model needs.

use kvstore_dist::{Payload, Reply, Request};
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

/// A message on a link: a worker's request or a server's reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// Worker to server.
    Request(Request),
    /// Server to worker.
    Reply(Reply),
}

impl Msg {
    /// What tells messages of one link apart cheaply: the direction, the variant and the id.
    fn summary(&self) -> (u8, u8, u64) {
        match self {
            Msg::Request(r) => {
                let variant = match r {
                    Request::Init { .. } => 0,
                    Request::Push { .. } => 1,
                    Request::Pull { .. } => 2,
                    Request::Barrier { .. } => 3,
                    Request::SetOptimizer { .. } => 4,
                    Request::SaveStates { .. } => 5,
                    Request::LoadStates { .. } => 6,
                    Request::InitCheck { .. } => 7,
                };
                (0, variant, r.id())
            }
            Msg::Reply(r) => {
                let variant = match r {
                    Reply::Done { .. } => 0,
                    Reply::Value { .. } => 1,
                    Reply::Failed { .. } => 2,
                    Reply::States { .. } => 3,
                };
                (1, variant, r.id())
            }
        }
    }
}

// The protocol's values compare NaN-insensitively and bit for bit (R60), which is an
// equivalence: `Eq` holds.
impl Eq for Msg {}

impl Hash for Msg {
    /// Hashes the whole message: the checker identifies states by their hash, so two messages
    /// that differ only in content must not collide.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.summary().hash(state);
        match self {
            Msg::Request(Request::Init { key, value, .. }) => {
                key.hash(state);
                value.hash(state);
            }
            Msg::Request(Request::Push { key, payload, .. }) => {
                key.hash(state);
                match payload {
                    Payload::Plain(value) => value.hash(state),
                    Payload::Quantized {
                        compression,
                        words,
                        len,
                    } => {
                        format!("{compression:?}").hash(state);
                        words.hash(state);
                        len.hash(state);
                    }
                }
            }
            Msg::Request(Request::Pull { key, rows, .. }) => {
                key.hash(state);
                rows.hash(state);
            }
            Msg::Request(Request::Barrier { .. }) | Msg::Reply(Reply::Done { .. }) => {}
            Msg::Request(Request::SetOptimizer { optimizer, .. }) => {
                format!("{optimizer:?}").hash(state);
            }
            Msg::Request(Request::SaveStates { .. }) => {}
            Msg::Request(Request::InitCheck {
                signature, refused, ..
            }) => {
                signature.hash(state);
                refused.hash(state);
            }
            // Optimizer states hold floats; their text is a faithful, if slow, digest.
            Msg::Request(Request::LoadStates {
                optimizer, states, ..
            }) => format!("{optimizer:?}{states:?}").hash(state),
            Msg::Reply(Reply::States {
                optimizer, states, ..
            }) => format!("{optimizer:?}{states:?}").hash(state),
            Msg::Reply(Reply::Value { value, .. }) => value.hash(state),
            Msg::Reply(Reply::Failed { error, .. }) => error.to_string().hash(state),
        }
    }
}

impl PartialOrd for Msg {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Msg {
    /// Only orders the checker's actions deterministically. Ids are unique per worker, so the
    /// slow textual tie-break runs only for equal messages.
    fn cmp(&self, other: &Self) -> Ordering {
        self.summary().cmp(&other.summary()).then_with(|| {
            if self == other {
                Ordering::Equal
            } else {
                format!("{self:?}").cmp(&format!("{other:?}"))
            }
        })
    }
}
