//! Store kinds: which class a name selects, with MXNet's substring rules (semantics §1).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// What a store name selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StoreClass {
    /// A single-process store (`local`, `device`, and any name without `dist`/`nccl`).
    Local,
    /// A single-process store that reduces with NCCL: dense only, one fixed device set.
    Nccl,
    /// A distributed store.
    Dist,
}

/// A parsed store kind.
///
/// ```
/// use kvstore_spec::kind::{Kind, StoreClass};
/// let k = Kind::parse("Dist_Device_Sync")?;
/// assert_eq!(k.name(), "dist_device_sync");
/// assert_eq!(k.class(), StoreClass::Dist);
/// assert!(k.is_sync() && k.device_comm() && k.allows_compression());
/// # Ok::<(), kvstore_spec::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Kind {
    name: String,
}

/// Python-registry store names that are not native MXNet stores; kvstore does not provide them.
const NON_NATIVE: [&str; 3] = ["teststore", "horovod", "byteps"];

impl Kind {
    /// Parses a store name: lower-cased, then classified by substring (R1, R2).
    pub fn parse(name: &str) -> Result<Kind> {
        let name = name.to_lowercase();
        if NON_NATIVE.contains(&name.as_str()) {
            return Err(Error::UnsupportedKind {
                kind: name,
                reason: "only MXNet's native store kinds are provided".into(),
            });
        }
        Ok(Kind { name })
    }

    /// The lower-cased name, as `type` reports it (R1).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The class the name selects: `dist` wins over `nccl`, `nccl` over local (R2).
    pub fn class(&self) -> StoreClass {
        if self.name.contains("dist") {
            StoreClass::Dist
        } else if self.name.contains("nccl") {
            StoreClass::Nccl
        } else {
            StoreClass::Local
        }
    }

    /// Whether merging happens on devices (`device` in the name).
    pub fn device_comm(&self) -> bool {
        self.name.contains("device")
    }

    /// Whether a distributed store runs synchronous rounds (no `_async` in the name).
    pub fn is_sync(&self) -> bool {
        self.class() == StoreClass::Dist && !self.name.contains("_async")
    }

    /// Whether gradient compression may be set: names with `device` or `dist`, never NCCL (R3).
    pub fn allows_compression(&self) -> bool {
        self.class() != StoreClass::Nccl && (self.device_comm() || self.class() == StoreClass::Dist)
    }

    /// `is_capable`: only `"optimizer"` is a known capability, and every native kind has it (R4).
    pub fn is_capable(&self, capability: &str) -> Result<bool> {
        match capability {
            "optimizer" => Ok(true),
            other => Err(Error::UnknownCapability { name: other.into() }),
        }
    }
}
