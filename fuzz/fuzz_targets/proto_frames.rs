//! libFuzzer entry point; the harness is [`hsm_fuzz::proto`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hsm_fuzz::proto::run(data));
