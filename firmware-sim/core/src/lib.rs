//! The firmware of `firmware-sim`, the simulated network HSM.
//!
//! Written the way device firmware is: no `std`, a fixed-capacity object table and session
//! list (`heapless`), commands and responses as `postcard` frames ([`command`]), and errors
//! that are PKCS#11 `CKR_*` values ([`Error`]). The device runtime (`firmware-sim`) feeds it
//! commands; the PKCS#11 module (`firmware-sim-pkcs11`) turns C calls into those commands.
//!
//! The heap is used for key material and message buffers only: RSA arithmetic needs it.
//!
//! **This is a simulator.** Keys are protected by nothing but the host's process isolation;
//! it exists to test and benchmark PKCS#11 consumers, never to hold production keys.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod attribute;
pub mod command;
pub mod error;
pub mod firmware;
pub mod mechanism;
pub mod object;
pub mod session;

pub use command::{Command, Response};
pub use error::{Error, Result};
pub use firmware::{Firmware, Limits, Policy, TokenImage};

/// Encodes a command or response as a postcard frame body.
pub fn encode<T: serde::Serialize>(value: &T) -> Result<alloc::vec::Vec<u8>> {
    postcard::to_allocvec(value).map_err(|_| Error::GeneralError)
}

/// Decodes a frame body; malformed input is `CKR_ARGUMENTS_BAD`, never a panic.
pub fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|_| Error::ArgumentsBad)
}
