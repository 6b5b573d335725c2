//! What the appliance and hsm-proxy share with their operators: the report their checking
//! commands print (`appliance doctor`, `db check`, `hsm-proxy check-config`), and the set-up
//! of their log lines.

#![forbid(unsafe_code)]

pub mod logging;
pub mod report;

pub use logging::{LogArgs, LogFormat};
pub use report::{Check, Outcome, Report};
