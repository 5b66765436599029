#![no_main]
//! Fuzz target `store_ops`: the body and its checks live in `kvstore_tests::fuzz_bodies::store_ops`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kvstore_tests::fuzz_bodies::store_ops(data));
