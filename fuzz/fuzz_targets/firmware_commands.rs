//! libFuzzer entry point; the harness is [`hsm_fuzz::firmware`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hsm_fuzz::firmware::run(data));
