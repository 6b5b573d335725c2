//! libFuzzer entry point; the harness is [`hsm_fuzz::policy_file`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hsm_fuzz::policy_file::run(data));
