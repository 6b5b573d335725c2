//! libFuzzer entry point; the harness is [`hsm_fuzz::rest`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hsm_fuzz::rest::run(data));
