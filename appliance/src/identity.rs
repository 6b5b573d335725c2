//! Who is calling: an identity source turns request headers into an [`Identity`], or says why
//! it cannot ([`IdentityError`]); the HTTP layer turns that into Barbican's answer.
//!
//! `keystone` validates `X-Auth-Token` (and `X-Service-Token`) against Keystone, as
//! keystonemiddleware does for Barbican; `noauth` reads Barbican's unauthenticated-context
//! headers (`X-Project-Id`, `X-Roles`, `X-User-Id`, `X-Domain-Id`).

mod keystone;
mod noauth;

use std::sync::Arc;

use hyper::header::HeaderMap;

pub(crate) use self::keystone::{Keystone, KeystoneSettings};

/// Where identities come from.
#[derive(Clone, Debug)]
pub(crate) enum IdentitySource {
    /// Keystone tokens, validated and cached.
    Keystone(Arc<Keystone>),
    /// Barbican's no-auth headers: whoever sends `X-Project-Id` is in that project. For
    /// development and tests only.
    NoAuth,
}

/// The caller of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The project the caller acts in.
    pub project_id: String,
    /// The user, when known.
    pub user_id: Option<String>,
    /// Lower-case role names.
    pub roles: Vec<String>,
    /// Set when the credentials are domain-scoped (every Barbican rule then denies).
    pub domain_id: Option<String>,
}

impl Identity {
    /// An identity with no project and no roles, which every rule denies.
    pub(crate) fn nobody() -> Identity {
        Identity { project_id: String::new(), user_id: None, roles: Vec::new(), domain_id: None }
    }
}

/// Why a request has no identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IdentityError {
    /// No-auth, and no `X-Project-Id`: Barbican's middleware refuses the request (400).
    #[error("missing X-Project-Id")]
    MissingProject,
    /// No token, or one Keystone does not accept (401); clients authenticate at
    /// `www_authenticate`.
    #[error("the request needs a valid token")]
    Unauthenticated {
        /// The `WWW-Authenticate` header's value.
        www_authenticate: String,
    },
    /// Keystone cannot be reached, so new tokens cannot be checked (503).
    #[error("the authentication service is unavailable")]
    Unavailable,
}

impl IdentitySource {
    /// The caller of a request with these headers.
    pub(crate) async fn identify(&self, headers: &HeaderMap) -> Result<Identity, IdentityError> {
        match self {
            IdentitySource::NoAuth => noauth::identify(headers),
            IdentitySource::Keystone(keystone) => keystone.identify(headers).await,
        }
    }
}

/// A header's value, trimmed; `None` when absent, empty or not text.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}
