//! The appliance: the control plane in front of one or more `hsm-proxy` daemons.
//!
//! For now this crate holds the appliance's own PKI ([`pki`]), which issues the certificates
//! the appliance and its proxies authenticate each other with.

#![forbid(unsafe_code)]

pub mod pki;
