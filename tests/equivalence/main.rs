//! Equivalence of the asynchronous engine stores with the executable specification.
//!
//! - [`machine`]: random op sequences (proptest-state-machine) run on a store over
//!   `BackendKind::Spec` (the oracle) and on one over `BackendKind::Cpu` or
//!   `BackendKind::EngineSpec`; after every op both must return the same result (an engine may
//!   report an error of a queued op at the `wait_all` right after), every pulled output must
//!   agree bit for bit, and every few ops so must `observable()`.
//! - [`threads`]: several client threads share one engine store; keys owned by one thread follow
//!   that thread's program order exactly (checked against the spec), shared keys with an
//!   additive updater end at the exact sum and read monotonically.
//! - [`regressions`]: minimised mismatches found by the suites, one named test each.
//!
//! Case counts: every proptest here honours `PROPTEST_CASES`; the defaults keep
//! `cargo test -p kvstore-tests --test equivalence` within a minute or so. For a long run:
//!
//! ```text
//! PROPTEST_CASES=10000 cargo test -p kvstore-tests --test equivalence --release
//! ```
//!
//! runs 100 times the default number of state-machine cases (the thread proptest scales the
//! same way, from a smaller base).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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

/// `PROPTEST_CASES` scaled for a suite whose default is `default` out of the usual 100: the
/// thread proptest runs fewer, slower cases.
pub fn scaled_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .map_or(default, |n| (n.saturating_mul(default) / 100).max(1))
}
