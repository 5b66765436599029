#![no_main]
//! Fuzz target `row_ids`: the body and its checks live in `kvstore_tests::fuzz_bodies::row_ids`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kvstore_tests::fuzz_bodies::row_ids(data));
