//! The wire protocol between the appliance and `hsm-proxy`.
//!
//! A frame is a fixed 20-byte little-endian [`Header`] followed by a body of at most the
//! configured size. A request body carries a batch of operations, each postcard-encoded behind
//! its [`OpCode`]; the response body carries one [`Status`] (and, on success, the reply) per
//! operation, in the same order. This crate does no I/O except in [`client`] (feature `client`).

#![forbid(unsafe_code)]
// Attacker bytes arrive here: no indexing that can panic, no silent truncation (tests exempt).
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::as_conversions))]

mod bytes;
pub mod frame;
pub mod op;
mod status;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod io;

pub use bytes::SecretBytes;
pub use frame::{FrameError, FrameKind, Header, RequestBatch, ResponseBatch};
pub use op::{Op, OpCode, Reply, Request};
pub use status::Status;

/// One operation's result as carried on the wire: the reply, or why there is none.
pub type Outcome<T = Reply> = Result<T, Status>;
