#![no_main]
//! Fuzz target `sse_filter`: see `weir_fuzz::check_sse_filter` for the input format and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::check_sse_filter(data));
