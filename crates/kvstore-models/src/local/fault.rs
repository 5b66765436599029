//! Planted bugs: realistic mistakes in an engine, each stated as a change around the real rules,
//! so tests can show that the checker finds them.

use super::properties;

/// An engine bug the model can plant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// Priority overtaking within a key: an op whose priority beats every op waiting on a var is
    /// granted at once when the var's holders admit it, ahead of earlier-issued waiting ops.
    PriorityOvertaking,
    /// Lost wake-up: when a completion grants a var to several waiting ops (a run of readers),
    /// only the first is made ready; the others hold the var but never run.
    LostWakeup,
    /// Readers beside a writer: a reader finding no op waiting on a var is granted it at once,
    /// the fast path forgetting to check for a writer holding it.
    ReaderBesideWriter,
    /// Early wait_all: wait_all returns once every op issued before it has started, ignoring the
    /// ops still running.
    EarlyWaitAll,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 4] = [
        Fault::PriorityOvertaking,
        Fault::LostWakeup,
        Fault::ReaderBesideWriter,
        Fault::EarlyWaitAll,
    ];

    /// A short name, for the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::PriorityOvertaking => "priority-overtaking",
            Fault::LostWakeup => "lost-wakeup",
            Fault::ReaderBesideWriter => "reader-beside-writer",
            Fault::EarlyWaitAll => "early-wait-all",
        }
    }

    /// The fault of a [`Fault::name`].
    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|fault| fault.name() == name)
    }

    /// The property the checker finds a counterexample to when this fault is planted in the
    /// [`LocalConfig::ci`](super::LocalConfig::ci) scripts.
    pub fn breaks(self) -> &'static str {
        match self {
            Fault::PriorityOvertaking => properties::EFFECT_ORDER,
            Fault::LostWakeup => properties::NO_DEADLOCK,
            Fault::ReaderBesideWriter => properties::WRITER_ALONE,
            Fault::EarlyWaitAll => properties::WAIT_ALL,
        }
    }
}
