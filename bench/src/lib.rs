//! hsm-bench's library: operations, cell runners, statistics and reports, used by the
//! `hsm-bench` binary.

#![forbid(unsafe_code)]

pub mod cell;
pub mod http;
pub mod ops;
pub mod pkcs11;
pub mod proxy;
pub mod report;
pub mod stats;
