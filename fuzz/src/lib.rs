//! Fuzz harnesses: each takes the raw bytes a fuzzer produces and drives one decoder of the
//! stack the way its real caller does, checking invariants beyond "no panic" where it can.
//!
//! The `fuzz_targets/` binaries are one-line libFuzzer wrappers around these functions, so the
//! harnesses themselves stay free of unsafe code and can be replayed by plain tests.

#![forbid(unsafe_code)]

pub mod firmware;
pub mod policy_file;
pub mod proto;
#[cfg(feature = "rest")]
pub mod rest;
