//! API errors in Barbican's shape: `{"code": N, "title": "...", "description": "..."}`.
//!
//! Internal details (database, proxy, HSM) never reach the client: they are logged, and the
//! client gets Barbican's generic sentence for the operation.

use appliance_store::StoreError;
use hyper::StatusCode;

use crate::hsm::HsmError;
use crate::service::error::ServiceError;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) description: String,
    /// For 405: the methods the resource does accept.
    pub(crate) allow: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, description: impl Into<String>) -> Self {
        Self { status, description: description.into(), allow: None }
    }

    /// A service's failure of `operation`, in Barbican's words for it.
    pub(crate) fn service(operation: &str, e: ServiceError) -> Self {
        match e {
            ServiceError::Forbidden => Self::forbidden(operation),
            ServiceError::NotFound(description) => Self::not_found(description),
            ServiceError::Invalid(description) => Self::bad_request(description),
            ServiceError::UnknownSecret { name } => Self::not_found(&format!(
                "Secret provided for '{}' doesn't exist.",
                name.as_deref().unwrap_or("None")
            )),
            ServiceError::Conflict(description) => Self::new(StatusCode::CONFLICT, description),
            ServiceError::QuotaReached => Self::issue(
                StatusCode::FORBIDDEN,
                operation,
                "Creation not allowed because a quota has been reached",
            ),
            ServiceError::Store(e) => Self::store(operation, &e),
            ServiceError::Hsm(HsmError::Unavailable(_)) => Self::unavailable(operation, "HSM", &e),
            ServiceError::Hsm(HsmError::Store(s)) => Self::store(operation, &s),
            ServiceError::Hsm(e) => Self::internal(operation, &e),
        }
    }

    /// A database failure of `operation`: 503 when the database cannot be reached, else 500.
    pub(crate) fn store(operation: &str, e: &StoreError) -> Self {
        if e.is_unavailable() {
            Self::unavailable(operation, "database", e)
        } else {
            Self::internal(operation, e)
        }
    }

    pub(crate) fn not_found(description: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, description)
    }

    pub(crate) fn bad_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, description)
    }

    /// `Provided object does not match schema '<schema>': <reason>. Invalid property: '<prop>'`
    pub(crate) fn schema(schema: &str, reason: &str, property: Option<&str>) -> Self {
        Self::bad_request(format!(
            "Provided object does not match schema '{schema}': {reason}. Invalid property: '{}'",
            property.unwrap_or("None")
        ))
    }

    pub(crate) fn malformed_json() -> Self {
        Self::bad_request("Malformed JSON")
    }

    pub(crate) fn forbidden(operation: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            format!("{operation} attempt not allowed - please review your user/project privileges"),
        )
    }

    /// `<operation> issue seen - <message>.` with the given status.
    pub(crate) fn issue(status: StatusCode, operation: &str, message: &str) -> Self {
        Self::new(status, format!("{operation} issue seen - {message}."))
    }

    pub(crate) fn too_large(operation: &str) -> Self {
        Self::issue(
            StatusCode::PAYLOAD_TOO_LARGE,
            operation,
            "Provided information too large to process",
        )
    }

    pub(crate) fn unsupported_media(expected: &[&str]) -> Self {
        let list: Vec<String> = expected.iter().map(|t| format!("'{t}'")).collect();
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Unexpected content type. Expected content types are: [{}]", list.join(", ")),
        )
    }

    pub(crate) fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            description: String::new(),
            allow: Some(allow),
        }
    }

    /// An unexpected failure: logged with its cause, answered with Barbican's generic 500.
    pub(crate) fn internal(operation: &str, cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(operation, error = %cause, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{operation} failure seen - please contact site administrator."),
        )
    }

    /// The HSM (through its proxies) or the database cannot be reached: retry later.
    pub(crate) fn unavailable(operation: &str, what: &str, cause: &dyn std::fmt::Display) -> Self {
        warn_unavailable(operation, what, cause);
        Self::issue(
            StatusCode::SERVICE_UNAVAILABLE,
            operation,
            &format!("the {what} is unavailable, please retry later"),
        )
    }

    /// The JSON body of this error.
    pub(crate) fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "code": self.status.as_u16(),
            "title": title(self.status),
            "description": self.description,
        })
    }
}

/// Logs an unavailability at most once a second, saying how many went unlogged since: while
/// the HSM or the database is away every request fails the same way, and one line each would
/// flood the log. The others are logged at debug.
fn warn_unavailable(operation: &str, what: &str, cause: &dyn std::fmt::Display) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static LAST_SECOND: AtomicU64 = AtomicU64::new(0);
    static UNLOGGED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_SECOND.load(Relaxed);
    if now > last && LAST_SECOND.compare_exchange(last, now, Relaxed, Relaxed).is_ok() {
        let unlogged = UNLOGGED.swap(0, Relaxed);
        tracing::warn!(operation, error = %cause, unlogged, "{what} unavailable");
    } else {
        UNLOGGED.fetch_add(1, Relaxed);
        tracing::debug!(operation, error = %cause, "{what} unavailable");
    }
}

/// The HTTP reason phrase Barbican (webob) uses.
pub(crate) fn title(status: StatusCode) -> &'static str {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "Request Entity Too Large",
        other => other.canonical_reason().unwrap_or(""),
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.description)
    }
}
