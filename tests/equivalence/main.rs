//! Equivalence of the asynchronous engine stores with the executable specification.
//!
//! - [`machine`]: random op sequences (proptest-state-machine) run on a store over
//!   `BackendKind::Spec` (the oracle) and on one over `BackendKind::Cpu` or
//!   `BackendKind::EngineSpec`; after every op both must return the same result (an engine may
//!   report an error of a queued op at a later `wait_all`), every pulled output must agree bit
//!   for bit, and every few ops so must `observable()`. [`model`] is the reference state machine
//!   (bookkeeping only), [`generate`] its op strategies, [`ops`] the ops and their arguments,
//!   [`pair`] runs an op on both stores and compares, [`updaters`] the custom updaters.
//! - [`threads`]: several client threads share one engine store; keys owned by one thread follow
//!   that thread's program order exactly (checked against the spec), shared keys with an
//!   additive updater end at the exact sum and read monotonically. [`clients`] generates and
//!   runs the threads' programs.
//! - [`regressions`]: minimised mismatches found by the suites, one named test each.
//!
//! Case counts: by default each state machine runs 1000 cases of 1 to 100 ops (half of them
//! pipelined: the engine is waited for only at checks) and the thread proptest 64 programs;
//! `cargo test -p kvstore-tests --test equivalence` then runs in about 20 seconds once built.
//! Every proptest here honours `PROPTEST_CASES`. 100 times the default (about 30 minutes on 2
//! cores; 10 000 cases take about three):
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test -p kvstore-tests --test equivalence --release
//! ```
//!
//! sets the state machines' case count (the thread proptest scales the same way, from its
//! smaller base). `EQUIVALENCE_STATS=1` prints each state-machine op's outcome
//! (see `pair.rs`), to check that the generated ops stay mostly valid.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod clients;
mod generate;
mod machine;
mod model;
mod ops;
mod pair;
mod regressions;
mod threads;
mod updaters;

/// The number of cases a proptest runs: `PROPTEST_CASES` when set, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `PROPTEST_CASES` scaled for a suite whose default is `default` where the state machines'
/// is [`MACHINE_CASES`]: the thread proptest runs fewer, slower cases.
pub fn scaled_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .map_or(default, |n| {
            (n.saturating_mul(default) / MACHINE_CASES).max(1)
        })
}

/// The state machines' default case count.
pub const MACHINE_CASES: u32 = 1000;
