//! Keystone identity: validating `X-Auth-Token` (and `X-Service-Token`) against Keystone v3,
//! as keystonemiddleware does for Barbican, with validated tokens cached in memory.
//!
//! The appliance authenticates as its own service user; each user token is checked once with
//! `GET /v3/auth/tokens` and then served from the cache until it expires or the cache's time
//! to live passes (which bounds how long a revoked token keeps working). When Keystone cannot
//! be reached, cached tokens keep working and new ones get a 503.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lru::LruCache;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Identity, IdentityError, header};
use crate::metrics::KeystoneMetrics;
use crate::timefmt::{now_micros, parse_iso8601};

/// Refresh the service token this long before it expires.
const SERVICE_TOKEN_MARGIN_MICROS: i64 = 60_000_000;

/// How to reach Keystone and who the appliance is there.
#[derive(Clone)]
pub(crate) struct KeystoneSettings {
    /// Keystone v3, e.g. `https://keystone.example.com:5000/v3`.
    pub auth_url: String,
    /// The appliance's service user.
    pub username: String,
    /// Its domain (id).
    pub user_domain_id: String,
    /// The project it authenticates in.
    pub project: String,
    /// That project's domain (id).
    pub project_domain_id: String,
    /// The service user's password.
    pub password: SecretString,
    /// What `WWW-Authenticate: Keystone uri="..."` tells clients.
    pub www_authenticate_uri: String,
    /// Longest time a validated token is trusted without asking Keystone again.
    pub cache_ttl: Duration,
    /// Most tokens cached.
    pub cache_entries: usize,
    /// Limit for one request to Keystone.
    pub timeout: Duration,
}

impl std::fmt::Debug for KeystoneSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeystoneSettings")
            .field("auth_url", &self.auth_url)
            .field("username", &self.username)
            .field("project", &self.project)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

/// Why a token was not accepted.
#[derive(Debug)]
enum TokenError {
    /// Missing, invalid, expired or revoked: 401.
    Invalid,
    /// Keystone cannot be reached or answered oddly: 503.
    Unavailable(String),
}

#[derive(Clone)]
struct Cached {
    identity: Identity,
    valid_until: i64,
}

/// What `GET /v3/auth/tokens` answers (and `POST`, for the service user's own token): the
/// parts of Keystone's token body that make an identity.
#[derive(Debug, Deserialize)]
struct TokenBody {
    token: TokenInfo,
}

#[derive(Debug, Deserialize)]
struct TokenInfo {
    expires_at: String,
    #[serde(default)]
    roles: Vec<Named>,
    project: Option<Named>,
    domain: Option<Named>,
    user: Option<Named>,
}

/// A role, project, domain or user: Keystone names each by id and name.
#[derive(Debug, Deserialize)]
struct Named {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

impl TokenInfo {
    /// The caller the token stands for.
    fn identity(self) -> Identity {
        let project_id = self.project.and_then(|p| p.id);
        // Domain- and system-scoped tokens reach no project: every Barbican rule refuses them.
        let domain_id = match (&project_id, self.domain.and_then(|d| d.id)) {
            (Some(_), _) => None,
            (None, Some(d)) => Some(d),
            (None, None) => Some("(unscoped)".to_owned()),
        };
        Identity {
            project_id: project_id.unwrap_or_default(),
            user_id: self.user.and_then(|u| u.id),
            roles: self
                .roles
                .into_iter()
                .filter_map(|r| r.name)
                .map(|r| r.to_ascii_lowercase())
                .collect(),
            domain_id,
        }
    }
}

/// A Keystone client with a token cache.
pub(crate) struct Keystone {
    settings: KeystoneSettings,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    service_token: tokio::sync::Mutex<Option<(SecretString, i64)>>,
    /// Validated tokens by their SHA-256, least recently used dropped first when full.
    cache: Mutex<LruCache<[u8; 32], Cached>>,
    /// Validations, cache hits and misses, and requests to Keystone.
    metrics: KeystoneMetrics,
}

impl std::fmt::Debug for Keystone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keystone").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Keystone {
    /// A client; nothing is sent until the first token arrives.
    pub(crate) fn new(
        settings: KeystoneSettings,
        metrics: KeystoneMetrics,
    ) -> std::io::Result<Keystone> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Keystone {
            http,
            service_token: tokio::sync::Mutex::new(None),
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(settings.cache_entries).unwrap_or(NonZeroUsize::MIN),
            )),
            metrics,
            settings,
        })
    }

    /// keystonemiddleware's checks: a valid user token, and a valid service token (carrying
    /// the `service` role) when one is sent.
    pub(super) async fn identify(&self, headers: &HeaderMap) -> Result<Identity, IdentityError> {
        let refuse = |e: TokenError| match e {
            TokenError::Invalid => self.unauthenticated(),
            TokenError::Unavailable(why) => {
                tracing::warn!(reason = %why, "keystone unavailable: new tokens cannot be validated");
                IdentityError::Unavailable
            }
        };
        let token = header(headers, "x-auth-token").ok_or_else(|| self.unauthenticated())?;
        let identity = self.validate(token).await.map_err(refuse)?;
        if let Some(service) = header(headers, "x-service-token") {
            let service = self.validate(service).await.map_err(refuse)?;
            if !service.roles.iter().any(|r| r == "service") {
                tracing::info!("a service token without the service role was refused");
                return Err(self.unauthenticated());
            }
        }
        Ok(identity)
    }

    fn unauthenticated(&self) -> IdentityError {
        IdentityError::Unauthenticated { www_authenticate: self.www_authenticate() }
    }

    /// The `WWW-Authenticate` value for 401 answers.
    pub(crate) fn www_authenticate(&self) -> String {
        format!("Keystone uri=\"{}\"", self.settings.www_authenticate_uri)
    }

    /// Authenticates the service user afresh (`appliance doctor`): whether Keystone answers
    /// and accepts it; why not, in words, never with the password.
    pub(crate) async fn authenticate(&self) -> Result<(), String> {
        match self.service_token(true).await {
            Ok(_) => Ok(()),
            Err(TokenError::Unavailable(why)) => Err(why),
            Err(TokenError::Invalid) => Err("the request could not be built".into()),
        }
    }

    /// Cache hits and misses since start.
    pub(crate) fn cache_counts(&self) -> (u64, u64) {
        (self.metrics.cache_hits.get(), self.metrics.cache_misses.get())
    }

    /// The identity behind a token: project, user, roles and scope.
    async fn validate(&self, token: &str) -> Result<Identity, TokenError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = now_micros();
        let hit = self.lock_cache().get(&key).filter(|c| c.valid_until > now).cloned();
        if let Some(hit) = hit {
            self.metrics.cache_hits.inc();
            return Ok(hit.identity);
        }
        self.metrics.cache_misses.inc();
        let validated = self.validate_with_keystone(token, &key, now).await;
        match &validated {
            Ok(_) => self.metrics.valid.inc(),
            Err(TokenError::Invalid) => self.metrics.invalid.inc(),
            Err(TokenError::Unavailable(_)) => self.metrics.unavailable.inc(),
        }
        validated
    }

    /// Asks Keystone about a token not in the cache, and caches it when valid.
    async fn validate_with_keystone(
        &self,
        token: &str,
        key: &[u8; 32],
        now: i64,
    ) -> Result<Identity, TokenError> {
        let body = match self.check(token).await? {
            Some(body) => body,
            None => {
                self.lock_cache().pop(key);
                return Err(TokenError::Invalid);
            }
        };
        let expires = parse_iso8601(&body.token.expires_at).ok_or(TokenError::Invalid)?;
        if expires <= now {
            return Err(TokenError::Invalid);
        }
        let identity = body.token.identity();
        let ttl = i64::try_from(self.settings.cache_ttl.as_micros()).unwrap_or(i64::MAX);
        let entry = Cached { identity: identity.clone(), valid_until: expires.min(now + ttl) };
        // Full, the least recently used token goes: an expired one is not used again, so it
        // goes before any token in use, without a scan under the lock every request takes.
        self.lock_cache().put(*key, entry);
        Ok(identity)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, LruCache<[u8; 32], Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `GET /v3/auth/tokens`: the token's body, or `None` when Keystone does not know it.
    async fn check(&self, token: &str) -> Result<Option<TokenBody>, TokenError> {
        for attempt in 0..2 {
            let service = self.service_token(attempt > 0).await?;
            let request = Request::builder()
                .method(Method::GET)
                .uri(format!("{}/auth/tokens", self.settings.auth_url))
                .header("x-auth-token", service.expose_secret())
                .header("x-subject-token", token)
                .body(Full::new(Bytes::new()))
                .map_err(|_| TokenError::Invalid)?;
            let (status, _, body) = self.send(request).await?;
            match status {
                StatusCode::OK => {
                    return serde_json::from_slice(&body)
                        .map(Some)
                        .map_err(|e| TokenError::Unavailable(format!("keystone answer: {e}")));
                }
                StatusCode::NOT_FOUND => return Ok(None),
                // Our own token expired or was revoked: get a new one and ask again.
                StatusCode::UNAUTHORIZED if attempt == 0 => continue,
                other => return Err(TokenError::Unavailable(format!("keystone answered {other}"))),
            }
        }
        Err(TokenError::Unavailable("the service user cannot validate tokens".into()))
    }

    async fn service_token(&self, renew: bool) -> Result<SecretString, TokenError> {
        let mut current = self.service_token.lock().await;
        if let Some((token, expires)) = current.as_ref()
            && !renew
            && *expires - SERVICE_TOKEN_MARGIN_MICROS > now_micros()
        {
            return Ok(token.clone());
        }
        let s = &self.settings;
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": s.username,
                "domain": {"id": s.user_domain_id},
                "password": s.password.expose_secret(),
            }}},
            "scope": {"project": {"name": s.project, "domain": {"id": s.project_domain_id}}},
        }});
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/auth/tokens", s.auth_url))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|_| TokenError::Invalid)?;
        let (status, headers, body) = self.send(request).await?;
        let token = headers
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(|t| SecretString::from(t.to_owned()));
        let (Some(token), true) = (token, status == StatusCode::CREATED) else {
            tracing::error!(%status, user = %s.username, "keystone refused the appliance's service user");
            return Err(TokenError::Unavailable(format!("service user login failed: {status}")));
        };
        let expires = serde_json::from_slice::<TokenBody>(&body)
            .ok()
            .and_then(|v| parse_iso8601(&v.token.expires_at))
            .unwrap_or_else(|| now_micros() + 600_000_000);
        *current = Some((token.clone(), expires));
        Ok(token)
    }

    /// One request to Keystone, within the configured time limit.
    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), TokenError> {
        let started = std::time::Instant::now();
        let answered =
            tokio::time::timeout(self.settings.timeout, self.http.request(request)).await;
        self.metrics.request_duration.observe(started.elapsed().as_secs_f64());
        if !matches!(answered, Ok(Ok(_))) {
            self.metrics.request_failures.inc();
        }
        let response = answered
            .map_err(|_| TokenError::Unavailable("keystone timed out".into()))?
            .map_err(|e| TokenError::Unavailable(format!("keystone: {e}")))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| TokenError::Unavailable(e.to_string()))?;
        Ok((parts.status, parts.headers, body))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests report failures by panicking

    use super::*;

    fn identity_of(body: serde_json::Value) -> Identity {
        serde_json::from_value::<TokenBody>(body).unwrap().token.identity()
    }

    #[test]
    fn a_project_token_names_its_project_user_and_lower_case_roles() {
        let id = identity_of(json!({"token": {
            "expires_at": "2030-01-01T00:00:00.000000Z",
            "roles": [{"id": "r1", "name": "Member"}, {"id": "r2", "name": "reader"}],
            "project": {"id": "p1", "name": "demo", "domain": {"id": "default"}},
            "user": {"id": "u1", "name": "alice"},
            "methods": ["password"],
        }}));
        assert_eq!(id.project_id, "p1");
        assert_eq!(id.user_id.as_deref(), Some("u1"));
        assert_eq!(id.roles, vec!["member", "reader"]);
        assert_eq!(id.domain_id, None);
    }

    #[test]
    fn domain_scoped_and_unscoped_tokens_reach_no_project() {
        let id = identity_of(json!({"token": {
            "expires_at": "2030-01-01T00:00:00Z", "domain": {"id": "d1"}, "roles": [],
        }}));
        assert_eq!((id.project_id.as_str(), id.domain_id.as_deref()), ("", Some("d1")));
        let id = identity_of(json!({"token": {"expires_at": "2030-01-01T00:00:00Z"}}));
        assert_eq!(id.domain_id.as_deref(), Some("(unscoped)"));
        assert!(id.roles.is_empty());
    }

    #[test]
    fn a_token_without_an_expiry_is_not_a_token() {
        assert!(serde_json::from_value::<TokenBody>(json!({"token": {"roles": []}})).is_err());
    }
}
