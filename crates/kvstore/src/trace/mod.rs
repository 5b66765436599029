//! Traces: recordings of the calls made on a store, as JSON Lines (docs/trace-format.md).
//!
//! [`parse`] reads a trace, [`Replayer`] runs it and gives one [`Outcome`] per operation, and
//! [`op::write`] writes an operation back; a live store writes its own trace with
//! [`crate::KvStore::record`].
//!
//! ```
//! let trace = r#"{"op":"create","kind":"device"}
//! {"op":"init","key":3,"value":{"shape":[2],"data":[0,0]}}
//! {"op":"push","key":3,"value":[{"shape":[2],"data":[1,2]},{"shape":[2],"data":[3,4],"device":"cpu(1)"}]}
//! {"op":"pull","key":3,"out":{"shape":[2]}}
//! {"op":"pull","key":4,"out":{"shape":[2]}}"#;
//! let lines = kvstore::trace::replay_text(trace, None)?;
//! assert_eq!(lines[3].to_string(), r#"{"line":4,"out":{"shape":[2],"data":[4.0,6.0],"dtype":"float32","device":"cpu(0)"}}"#);
//! assert_eq!(lines[4]["error"], "NotInitialized");
//! # Ok::<(), kvstore::trace::ParseError>(())
//! ```

pub mod op;
mod record;
mod replay;
mod tensor;

pub use op::{Op, RowIdsArg, UpdaterSpec};
pub use record::Recorder;
pub use replay::{
    parse, replay_text, replay_text_with, variant_name, Outcome, ParseError, Replayer,
};
pub use tensor::MAX_PLACEHOLDER_BYTES;
