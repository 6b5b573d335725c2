//! The services' one error type. It says what went wrong in the resource's terms; the HTTP
//! layer names the operation and renders it as Barbican does (`api::ApiError`).

use appliance_store::StoreError;

use crate::hsm::HsmError;

/// Why a service could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    /// The policy denies the caller this action on this target.
    #[error("the policy denies the request")]
    Forbidden,
    /// The entity does not exist, or not for this caller. The text is Barbican's (for
    /// example `Secret not found.`).
    #[error("{0}")]
    NotFound(&'static str),
    /// The request breaks a rule of the resource (400), in Barbican's words.
    #[error("{0}")]
    Invalid(String),
    /// A container reference names no secret the caller may use. Barbican's 404 quotes the
    /// reference as the request gives it, so the HTTP layer words it.
    #[error("a referenced secret does not exist")]
    UnknownSecret {
        /// The reference's name.
        name: Option<String>,
    },
    /// The request conflicts with what is stored (409), in Barbican's words.
    #[error("{0}")]
    Conflict(String),
    /// The project is at its quota for what the request would create.
    #[error("a quota has been reached")]
    QuotaReached,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HSM, or the proxy in front of it, failed.
    #[error(transparent)]
    Hsm(#[from] HsmError),
}

/// Results of the services.
pub(crate) type Result<T, E = ServiceError> = std::result::Result<T, E>;
