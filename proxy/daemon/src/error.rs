//! The daemon's error type, for start-up and configuration failures.
//!
//! Failures of single operations never become an `Error`: they are answered to the client as a
//! wire [`Status`](hsm_proxy_proto::Status) (see `hsm::failure`).

use std::path::PathBuf;

/// Why the daemon (or one of its commands) could not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A PKCS#11 call failed.
    #[error("PKCS#11: {0}")]
    Pkcs11(#[from] cryptoki::error::Error),
    /// The token is not in the state the proxy needs (missing MKEK, wrong attributes, ...).
    #[error("token: {0}")]
    Token(String),
    /// The TLS configuration could not be built.
    #[error("TLS: {0}")]
    Tls(String),
    /// Process hardening could not be applied.
    #[error("hardening: {0}")]
    Hardening(String),
    /// A listener could not be bound or served.
    #[error("network: {0}")]
    Network(#[source] std::io::Error),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
