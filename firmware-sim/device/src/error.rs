//! The device runtime's one error type.

use std::path::PathBuf;

/// A failure of the runtime itself (configuration, state file, transport), as opposed to a
/// command's `CKR_*` answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration or profile file is wrong.
    #[error("{0}")]
    Config(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state file exists but cannot be decrypted or parsed.
    #[error("state file {0} cannot be read: wrong device key, corrupt or from another version")]
    State(PathBuf),
    /// The transport failed.
    #[error("transport: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent a frame that is not a valid message.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The firmware refused a command.
    #[error("firmware: {0}")]
    Firmware(#[from] firmware_sim_core::Error),
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn file_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::File { path: path.to_owned(), source }
}
