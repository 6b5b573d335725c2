//! The appliance's error type for start-up, configuration and commands.
//!
//! Request failures are not `Error`s: they are answered in Barbican's error shape
//! (`api::ApiError`).

use std::path::{Path, PathBuf};

/// Why the appliance (or one of its commands) could not do what it was asked.
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
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] appliance_store::StoreError),
    /// The database's schema is not the one this build needs.
    #[error("database schema: {0}")]
    Schema(String),
    /// The policy or its file is invalid.
    #[error("policy: {0}")]
    Policy(#[from] policy::Error),
    /// The HSM proxy client could not be configured.
    #[error("HSM proxy client: {0}")]
    Hsm(#[from] hsm_proxy_proto::client::Error),
    /// An operation on keys through the proxies failed.
    #[error("HSM: {0}")]
    KeyOperation(String),
    /// The metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A listener could not be bound.
    #[error("network: {0}")]
    Network(#[source] std::io::Error),
}

impl Error {
    /// What a failed read or write of `path` becomes: `.map_err(Error::io(path))`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
