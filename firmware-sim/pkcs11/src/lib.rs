//! The PKCS#11 v2.40 module of `firmware-sim`, the simulated network HSM.
//!
//! Load `libfirmware_sim_pkcs11.so` as any PKCS#11 module, with `FWSIM_PKCS11_CONF` naming
//! a small TOML file:
//!
//! ```toml
//! # a running `fwsim serve`
//! device = "unix:/run/fwsim/fwsim.sock"
//! ```
//!
//! or, to run the device inside the calling process:
//!
//! ```toml
//! [in_process]
//! profile = "ideal"            # or softhsm-like, network-hsm, usb-token, or a profile file
//! state_file = "/var/lib/fwsim/state"
//! ```
//!
//! One slot, holding one token. Functions outside what a PKCS#11 consumer of a key manager
//! needs (digests, derivation, recover, operation state) answer `CKR_FUNCTION_NOT_SUPPORTED`.
//!
//! This is the workspace's only crate with `unsafe` code, all of it in the `ffi` module.

// The C ABI cannot be written without unsafe code; the workspace denies it everywhere else.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod api;
mod backend;
pub mod ffi;
