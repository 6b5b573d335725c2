//! The device runtime of `firmware-sim`, the simulated network HSM.
//!
//! [`Device`] runs the firmware (`firmware-sim-core`) behind N crypto engines with a latency
//! model ([`profile`]), injected faults ([`fault`]) and an encrypted state file ([`state`]).
//! [`transport`] serves it over a Unix socket or TCP; the `fwsim` binary is the daemon and
//! its operator commands. The PKCS#11 module (`firmware-sim-pkcs11`) uses a device either
//! through [`transport`] or in its own process.

#![forbid(unsafe_code)]

pub mod config;
pub mod device;
pub mod error;
pub mod fault;
pub mod profile;
pub mod state;
pub mod transport;

pub use device::{Admin, Device, DeviceOptions, Status};
pub use error::{Error, Result};
pub use profile::Profile;
