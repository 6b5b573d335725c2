//! Who is calling: the identity source turns request headers into an [`Identity`].
//!
//! `keystone` validates `X-Auth-Token` (and `X-Service-Token`) against Keystone; `noauth` reads
//! Barbican's unauthenticated-context headers (`X-Project-Id`, `X-Roles`, `X-User-Id`,
//! `X-Domain-Id`).

use std::sync::Arc;

use hyper::StatusCode;
use hyper::header::HeaderMap;

use crate::api::Response;
use crate::keystone::{Keystone, TokenError};

/// Where identities come from.
#[derive(Clone, Debug)]
pub enum IdentitySource {
    /// Keystone tokens, validated and cached.
    Keystone(Arc<Keystone>),
    /// Barbican's no-auth headers: whoever sends `X-Project-Id` is in that project. For
    /// development and tests only.
    NoAuth,
}

/// The caller of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
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

impl IdentitySource {
    /// The caller, or the response to send instead (missing or invalid credentials).
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Identity, Box<Response>> {
        match self {
            IdentitySource::NoAuth => no_auth(headers),
            IdentitySource::Keystone(keystone) => by_token(keystone, headers).await,
        }
    }
}

/// keystonemiddleware's checks: a valid user token, and a valid service token (carrying the
/// `service` role) when one is sent.
async fn by_token(keystone: &Keystone, headers: &HeaderMap) -> Result<Identity, Box<Response>> {
    let refuse = |e: TokenError| match e {
        TokenError::Invalid => Box::new(unauthorized(keystone)),
        TokenError::Unavailable(why) => {
            tracing::warn!(reason = %why, "keystone unavailable: new tokens cannot be validated");
            Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Authentication service unavailable, please retry later.",
            ))
        }
    };
    let Some(token) = header(headers, "x-auth-token") else {
        return Err(Box::new(unauthorized(keystone)));
    };
    let identity = keystone.validate(token).await.map_err(refuse)?;
    if let Some(service) = header(headers, "x-service-token") {
        let service = keystone.validate(service).await.map_err(refuse)?;
        if !service.roles.iter().any(|r| r == "service") {
            tracing::info!("a service token without the service role was refused");
            return Err(Box::new(unauthorized(keystone)));
        }
    }
    Ok(identity)
}

/// 401 in Barbican's error shape (barbicanclient cannot parse keystonemiddleware's), with the
/// header that tells clients where to authenticate.
fn unauthorized(keystone: &Keystone) -> Response {
    let mut r =
        error(StatusCode::UNAUTHORIZED, "The request you have made requires authentication.");
    if let Ok(v) = keystone.www_authenticate().parse() {
        r.headers.insert(hyper::header::WWW_AUTHENTICATE, v);
    }
    r
}

fn error(status: StatusCode, description: &str) -> Response {
    let e = crate::api::ApiError::new(status, description);
    crate::api::json_response(status, &e.body())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

fn no_auth(headers: &HeaderMap) -> Result<Identity, Box<Response>> {
    let Some(project_id) = header(headers, "x-project-id") else {
        return Err(Box::new(missing_project(headers)));
    };
    let explicit: Vec<String> = match headers.get("x-roles").and_then(|v| v.to_str().ok()) {
        // Without X-Roles the caller is `admin`, as in Barbican's unauthenticated context.
        None => vec!["admin".to_owned()],
        Some(list) => list
            .split(',')
            .map(|r| r.trim().to_ascii_lowercase())
            .filter(|r| !r.is_empty())
            .collect(),
    };
    Ok(Identity {
        project_id: project_id.to_owned(),
        user_id: header(headers, "x-user-id").map(str::to_owned),
        roles: with_implied_roles(explicit),
        domain_id: header(headers, "x-domain-id").map(str::to_owned),
    })
}

/// Keystone's default role inference (admin implies member, member implies reader), which a
/// token carries and Barbican's no-auth context lacks. Without it the official clients, which
/// send no X-Roles in no-auth mode, are refused every create and list.
fn with_implied_roles(mut roles: Vec<String>) -> Vec<String> {
    for (role, implied) in [("admin", "member"), ("member", "reader")] {
        if roles.iter().any(|r| r == role) && !roles.iter().any(|r| r == implied) {
            roles.push(implied.to_owned());
        }
    }
    roles
}

/// The error page Barbican's middleware (webob) answers when `X-Project-Id` is missing: plain
/// text, or webob's JSON form when the client accepts JSON.
fn missing_project(headers: &HeaderMap) -> Response {
    const EXPLANATION: &str = "The server could not comply with the request since it is either malformed or otherwise incorrect.";
    let wants_json = header(headers, "accept").is_some_and(|a| a.contains("application/json"));
    let (body, content_type) = if wants_json {
        let value = serde_json::json!({
            "message": format!("{EXPLANATION}<br /><br />\nMissing X-Project-Id\n\n"),
            "code": "400 Bad Request",
            "title": "Bad Request",
        });
        (serde_json::to_vec(&value).unwrap_or_default(), "application/json")
    } else {
        (
            format!("400 Bad Request\n\n{EXPLANATION}\n\n Missing X-Project-Id  ").into_bytes(),
            "text/plain; charset=UTF-8",
        )
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = content_type.parse() {
        headers.insert(hyper::header::CONTENT_TYPE, v);
    }
    Response { status: StatusCode::BAD_REQUEST, headers, body: body.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[tokio::test]
    async fn no_auth_headers() {
        let id = IdentitySource::NoAuth
            .identify(&headers(&[
                ("x-project-id", "p1"),
                ("x-roles", " Member, ,reader"),
                ("x-user-id", "u"),
            ]))
            .await
            .unwrap();
        assert_eq!(id.project_id, "p1");
        assert_eq!(id.roles, vec!["member", "reader"]);
        assert_eq!(id.user_id.as_deref(), Some("u"));

        let id =
            IdentitySource::NoAuth.identify(&headers(&[("x-project-id", "p1")])).await.unwrap();
        assert_eq!(id.roles, vec!["admin", "member", "reader"]);
        let id = IdentitySource::NoAuth
            .identify(&headers(&[("x-project-id", "p1"), ("x-roles", "member")]))
            .await
            .unwrap();
        assert_eq!(id.roles, vec!["member", "reader"]);

        let r = IdentitySource::NoAuth.identify(&headers(&[])).await.unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(String::from_utf8_lossy(&r.body).ends_with("Missing X-Project-Id  "));
        let r = IdentitySource::NoAuth
            .identify(&headers(&[("accept", "application/json")]))
            .await
            .unwrap_err();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["code"], "400 Bad Request");
    }
}
