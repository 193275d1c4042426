#![no_main]
//! Fuzz target `parse_head`: see `weir_fuzz::check_parse_head` for the input format and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::check_parse_head(data));
