#![no_main]
//! Fuzz target `responses_stream`: see `weir_fuzz::check_responses_stream` for the input format and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::check_responses_stream(data));
