#![no_main]
//! Fuzz target `differential`: the body and its checks live in `kvstore_tests::fuzz_bodies::differential`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kvstore_tests::fuzz_bodies::differential(data));
