//! Keystone identity: validating `X-Auth-Token` (and `X-Service-Token`) against Keystone v3,
//! as keystonemiddleware does for Barbican, with validated tokens cached in memory.
//!
//! The appliance authenticates as its own service user; each user token is checked once with
//! `GET /v3/auth/tokens` and then served from the cache until it expires or the cache's time
//! to live passes (which bounds how long a revoked token keeps working). When Keystone cannot
//! be reached, cached tokens keep working and new ones get a 503.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::auth::Identity;
use crate::timefmt::{now_micros, parse_iso8601};

/// Refresh the service token this long before it expires.
const SERVICE_TOKEN_MARGIN_MICROS: i64 = 60_000_000;

/// How to reach Keystone and who the appliance is there.
#[derive(Clone)]
pub struct KeystoneSettings {
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
pub enum TokenError {
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

/// A Keystone client with a token cache.
pub struct Keystone {
    settings: KeystoneSettings,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    service_token: tokio::sync::Mutex<Option<(SecretString, i64)>>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for Keystone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keystone").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Keystone {
    /// A client; nothing is sent until the first token arrives.
    pub fn new(settings: KeystoneSettings) -> std::io::Result<Keystone> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Keystone {
            settings,
            http,
            service_token: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// The `WWW-Authenticate` value for 401 answers.
    pub fn www_authenticate(&self) -> String {
        format!("Keystone uri=\"{}\"", self.settings.www_authenticate_uri)
    }

    /// Cache hits and misses since start.
    pub fn cache_counts(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    /// The identity behind a token: project, user, roles and scope.
    pub async fn validate(&self, token: &str) -> Result<Identity, TokenError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = now_micros();
        if let Some(hit) = self.lock_cache().get(&key).filter(|c| c.valid_until > now).cloned() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit.identity);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let body = match self.check(token).await? {
            Some(body) => body,
            None => {
                self.lock_cache().remove(&key);
                return Err(TokenError::Invalid);
            }
        };
        let t = &body["token"];
        let expires =
            t["expires_at"].as_str().and_then(parse_iso8601).ok_or(TokenError::Invalid)?;
        if expires <= now {
            return Err(TokenError::Invalid);
        }
        let roles: Vec<String> = t["roles"]
            .as_array()
            .map(|r| {
                r.iter().filter_map(|x| x["name"].as_str()).map(str::to_ascii_lowercase).collect()
            })
            .unwrap_or_default();
        let project_id = t["project"]["id"].as_str().map(str::to_owned);
        // Domain- and system-scoped tokens reach no project: every Barbican rule refuses them.
        let domain_id = match (&project_id, t["domain"]["id"].as_str()) {
            (Some(_), _) => None,
            (None, Some(d)) => Some(d.to_owned()),
            (None, None) => Some("(unscoped)".to_owned()),
        };
        let identity = Identity {
            project_id: project_id.unwrap_or_default(),
            user_id: t["user"]["id"].as_str().map(str::to_owned),
            roles,
            domain_id,
        };
        let ttl = i64::try_from(self.settings.cache_ttl.as_micros()).unwrap_or(i64::MAX);
        let entry = Cached { identity: identity.clone(), valid_until: expires.min(now + ttl) };
        let mut cache = self.lock_cache();
        if cache.len() >= self.settings.cache_entries {
            // Full: drop what is stale, then (still full) the entry closest to expiry.
            cache.retain(|_, c| c.valid_until > now);
            if cache.len() >= self.settings.cache_entries
                && let Some(oldest) =
                    cache.iter().min_by_key(|(_, c)| c.valid_until).map(|(k, _)| *k)
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(key, entry);
        Ok(identity)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `GET /v3/auth/tokens`: the token's body, or `None` when Keystone does not know it.
    async fn check(&self, token: &str) -> Result<Option<Value>, TokenError> {
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
        let expires = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["token"]["expires_at"].as_str().and_then(parse_iso8601))
            .unwrap_or_else(|| now_micros() + 600_000_000);
        *current = Some((token.clone(), expires));
        Ok(token)
    }

    /// One request to Keystone, within the configured time limit.
    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), TokenError> {
        let response = tokio::time::timeout(self.settings.timeout, self.http.request(request))
            .await
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
