#![no_main]
//! Fuzz target `messages_stream`: see `weir_fuzz::check_messages_stream` for the input format and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::check_messages_stream(data));
