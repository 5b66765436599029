//! Shared test harness code of kvstore.
//!
//! - [`fuzz_bodies`]: the body of every fuzz target in `fuzz/` as a plain function over bytes, so
//!   that `cargo test` on the stable toolchain replays the checked-in corpus
//!   (`tests/fuzz_corpus.rs`) and `cargo fuzz` explores new inputs with the same checks.
//! - [`conformance`]: the differential suite against MXNet 1.9.1 (random trace generator,
//!   comparator, shrinker), run by `tests/conformance/conformance.rs`.
#![forbid(unsafe_code)]

pub mod conformance;
pub mod fuzz_bodies;
