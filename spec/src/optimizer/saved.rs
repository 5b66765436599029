//! The bytes `save_optimizer_states` writes and `load_optimizer_states` reads (R47): JSON,
//! versioned. Version 2 holds each key's update count and state tensors, and the optimizer
//! when saved with `dump_optimizer`; version 1 (SGD momentum buffers only, before the optimizer
//! set grew) is still read, its keys counted as never updated.

use super::state::State;
use super::Optimizer;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::value::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const FORMAT: &str = "kvstore-optimizer-states";
const VERSION: u32 = 2;

/// What saved states hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    /// Per-key states.
    pub states: BTreeMap<Key, State>,
    /// The optimizer, when saved with `dump_optimizer` (validated on reading).
    pub optimizer: Option<Optimizer>,
}

#[derive(Serialize)]
struct FileV2<'a> {
    format: &'static str,
    version: u32,
    states: Vec<(&'a Key, &'a State)>,
    optimizer: Option<&'a Optimizer>,
}

/// Just the header, to pick the version before reading the rest.
#[derive(Deserialize)]
struct Header {
    format: String,
    version: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadV2 {
    #[allow(dead_code)]
    format: String,
    #[allow(dead_code)]
    version: u32,
    states: Vec<(Key, State)>,
    optimizer: Option<Optimizer>,
}

#[derive(Deserialize)]
struct ReadV1 {
    states: Vec<(Key, Option<Tensor>)>,
    optimizer: Option<Optimizer>,
}

fn invalid(reason: impl ToString) -> Error {
    Error::InvalidState {
        reason: reason.to_string(),
    }
}

/// The current version's bytes.
pub fn write(saved: &Saved) -> Result<Vec<u8>> {
    let file = FileV2 {
        format: FORMAT,
        version: VERSION,
        states: saved.states.iter().collect(),
        optimizer: saved.optimizer.as_ref(),
    };
    serde_json::to_vec(&file).map_err(invalid)
}

/// What saved states hold (R47). Unreadable bytes, another format or version, a key listed
/// twice are `InvalidState`; an optimizer that `validate` refuses is `InvalidOptimizer`.
pub fn read_saved(bytes: &[u8]) -> Result<Saved> {
    let header: Header = serde_json::from_slice(bytes).map_err(invalid)?;
    if header.format != FORMAT || !(1..=VERSION).contains(&header.version) {
        return Err(invalid(format!(
            "expected {FORMAT} version 1 to {VERSION}, found {} version {}",
            header.format, header.version
        )));
    }
    let (pairs, optimizer) = if header.version == 1 {
        let v1: ReadV1 = serde_json::from_slice(bytes).map_err(invalid)?;
        let pairs: Vec<(Key, State)> = v1
            .states
            .into_iter()
            .map(|(key, momentum)| (key, State::momentum(0, momentum)))
            .collect();
        (pairs, v1.optimizer)
    } else {
        let v2: ReadV2 = serde_json::from_slice(bytes).map_err(invalid)?;
        (v2.states, v2.optimizer)
    };
    if let Some(optimizer) = &optimizer {
        optimizer.validate()?;
    }
    let count = pairs.len();
    let states: BTreeMap<Key, State> = pairs.into_iter().collect();
    if states.len() != count {
        return Err(invalid("a key is listed twice"));
    }
    Ok(Saved { states, optimizer })
}
