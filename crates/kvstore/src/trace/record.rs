//! Recording a live store's calls as a trace.

use super::op::{self, Op};
use std::fmt;
use std::io::Write;

/// Writes operations as trace lines to a sink. The first write error stops the recording and
/// is kept for [`Recorder::finish`]; the store's own calls are never failed by it.
pub struct Recorder {
    sink: Box<dyn Write + Send>,
    error: Option<std::io::Error>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder writing to `sink`.
    pub fn new(sink: impl Write + Send + 'static) -> Recorder {
        Recorder {
            sink: Box::new(sink),
            error: None,
        }
    }

    /// Writes one operation.
    pub fn record(&mut self, op: &Op) {
        if self.error.is_none() {
            if let Err(e) = writeln!(self.sink, "{}", op::write(op)) {
                self.error = Some(e);
            }
        }
    }

    /// Flushes the sink and reports the first write error, if any.
    pub fn finish(mut self) -> std::io::Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => self.sink.flush(),
        }
    }
}
