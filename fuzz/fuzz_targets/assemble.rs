#![no_main]
//! Fuzz target `assemble`: see `weir_fuzz::check_assemble` for the input format and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::check_assemble(data));
