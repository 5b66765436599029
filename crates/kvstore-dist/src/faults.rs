//! Planted bugs, for the model checker to find (docs/verification.md).
//!
//! Each [`Fault`] is a realistic protocol bug that the state machines can be told to commit.
//! Without the `fault-injection` feature [`Faults`] holds nothing and [`Faults::has`] is a
//! constant `false`, so release builds carry no switch at all.

/// One planted bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// The server closes a sync round when all but one worker have contributed.
    RoundClosesEarly,
    /// The server counts push requests instead of workers: two pushes of one worker fill a round.
    CountsRequests,
    /// The server answers a pull at once, even while the puller's own push waits in an open
    /// round (no "read your own round").
    StalePull,
    /// The server answers a parked pull only once its worker has no contribution queued at all,
    /// so a push sent after the pull delays it to a later round.
    PullWaitsForLaterPushes,
    /// The server forgets the pulls it parked when their round completes (a lost wake-up).
    ParkedPullsForgotten,
    /// The server accepts a second init of a key and overwrites its value.
    InitAcceptedTwice,
    /// The barrier's arrival count is not reset once it releases.
    BarrierNotReset,
    /// Slice boundaries of big arrays are off by one: neighbouring slices overlap.
    SliceOffByOne,
    /// A worker drops its compression residual instead of carrying it to the next push.
    ResidualDropped,
}

impl Fault {
    /// Every planted bug.
    pub const ALL: [Fault; 9] = [
        Fault::RoundClosesEarly,
        Fault::CountsRequests,
        Fault::StalePull,
        Fault::PullWaitsForLaterPushes,
        Fault::ParkedPullsForgotten,
        Fault::InitAcceptedTwice,
        Fault::BarrierNotReset,
        Fault::SliceOffByOne,
        Fault::ResidualDropped,
    ];

    /// A short kebab-case name, for command lines.
    pub fn name(self) -> &'static str {
        match self {
            Fault::RoundClosesEarly => "round-closes-early",
            Fault::CountsRequests => "counts-requests",
            Fault::StalePull => "stale-pull",
            Fault::PullWaitsForLaterPushes => "pull-waits-for-later-pushes",
            Fault::ParkedPullsForgotten => "parked-pulls-forgotten",
            Fault::InitAcceptedTwice => "init-accepted-twice",
            Fault::BarrierNotReset => "barrier-not-reset",
            Fault::SliceOffByOne => "slice-off-by-one",
            Fault::ResidualDropped => "residual-dropped",
        }
    }

    /// The bug named `name` (see [`Fault::name`]).
    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// The planted bugs a state machine commits: none by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Faults {
    #[cfg(feature = "fault-injection")]
    bits: u16,
}

impl Faults {
    /// No planted bug.
    pub const NONE: Faults = Faults {
        #[cfg(feature = "fault-injection")]
        bits: 0,
    };

    /// These faults plus `fault`. Without the `fault-injection` feature this returns `None`:
    /// the switch does not exist.
    pub fn with(self, fault: Fault) -> Option<Faults> {
        #[cfg(feature = "fault-injection")]
        {
            Some(Faults {
                bits: self.bits | (1 << fault as u16),
            })
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = fault;
            None
        }
    }

    /// Whether `fault` is planted.
    #[inline]
    pub fn has(self, fault: Fault) -> bool {
        #[cfg(feature = "fault-injection")]
        {
            self.bits & (1 << fault as u16) != 0
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = fault;
            false
        }
    }
}
