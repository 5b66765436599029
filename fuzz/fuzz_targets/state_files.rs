#![no_main]
//! Fuzz target `state_files`: the body and its checks live in `kvstore_tests::fuzz_bodies::state_files`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kvstore_tests::fuzz_bodies::state_files(data));
