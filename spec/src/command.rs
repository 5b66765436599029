//! Server commands (`send_command_to_servers(head, body)`, SPEC R67; semantics §8.3).
//!
//! MXNet numbers its heads 0-5 and acknowledges and ignores any other head. Here every head
//! either means something or is refused with a typed error, checked by the worker before
//! anything is sent:
//!
//! | head | MXNet name | body here | effect |
//! |---|---|---|---|
//! | 0 | kController | the optimizer as JSON (serde), not a Python pickle | `set_optimizer` (R57) |
//! | 1 | kSetMultiPrecision | — | refused: servers keep each key in its own dtype |
//! | 2 | kStopServer | — | refused: servers stop when every worker's job ends |
//! | 3 | kSyncMode | — | refused: the mode is the kind chosen at launch |
//! | 4 | kSetGradientCompression | `"2bit"` or `"1bit"`, optionally `",<threshold>"` | checked, then acknowledged: each compressed push names its codec, so servers keep no setting |
//! | 5 | kSetProfilerParams | — | refused: no server profiler |
//! | other | — | — | refused |

use crate::codec::Compression;
use crate::error::{Error, Result};
use crate::optimizer::Optimizer;

/// A command servers accept.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerCommand {
    /// Head 0: install a fresh optimizer on every server.
    SetOptimizer(Optimizer),
    /// Head 4: a compression setting, checked; servers need nothing from it.
    GradientCompression(Compression),
}

/// The head of [`ServerCommand::SetOptimizer`].
pub const CONTROLLER: i32 = 0;
/// The head of [`ServerCommand::GradientCompression`].
pub const SET_GRADIENT_COMPRESSION: i32 = 4;

impl ServerCommand {
    /// The command a head and body mean, or why none (R67). `kind` names the store in errors.
    pub fn parse(head: i32, body: &str, kind: &str) -> Result<ServerCommand> {
        let refused = |why: &str| Error::UnsupportedOperation {
            op: format!("send_command_to_servers head {head} ({why})"),
            kind: kind.into(),
        };
        match head {
            CONTROLLER => {
                let optimizer: Optimizer =
                    serde_json::from_str(body).map_err(|e| Error::InvalidOptimizer {
                        reason: format!("head 0 takes an optimizer as JSON: {e}"),
                    })?;
                optimizer.validate()?;
                Ok(ServerCommand::SetOptimizer(optimizer))
            }
            SET_GRADIENT_COMPRESSION => {
                let mut fields = body.splitn(2, ',');
                let kind_text = fields.next().unwrap_or_default().trim();
                let mut params = vec![("type", kind_text)];
                if let Some(threshold) = fields.next() {
                    params.push(("threshold", threshold.trim()));
                }
                Compression::from_params(params).map(ServerCommand::GradientCompression)
            }
            1 => Err(refused(
                "multi-precision: servers keep each key in its own dtype",
            )),
            2 => Err(refused("stop: servers stop when every worker's job ends")),
            3 => Err(refused("sync mode: the mode is the kind chosen at launch")),
            5 => Err(refused("profiler: servers have no profiler")),
            _ => Err(refused("unknown head")),
        }
    }
}
