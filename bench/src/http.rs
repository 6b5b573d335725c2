//! Load against a Barbican v1 endpoint, this appliance or Barbican itself: stores, payload and
//! metadata fetches from a pool of secrets made beforehand, and key orders until ACTIVE.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// What each request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// POST /v1/secrets with a 32-byte symmetric key.
    SecretStore,
    /// GET /v1/secrets/{id}/payload (the Nova/Cinder key fetch).
    PayloadGet,
    /// GET /v1/secrets/{id}.
    MetadataGet,
    /// POST /v1/orders (AES-256), then GET the order until it is ACTIVE.
    Order,
}

impl std::str::FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Scenario, String> {
        Ok(match s {
            "secret-store" => Scenario::SecretStore,
            "payload-get" => Scenario::PayloadGet,
            "metadata-get" => Scenario::MetadataGet,
            "order" => Scenario::Order,
            _ => {
                return Err(format!(
                    "{s:?}: one of secret-store, payload-get, metadata-get, order"
                ));
            }
        })
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scenario::SecretStore => "secret-store",
            Scenario::PayloadGet => "payload-get",
            Scenario::MetadataGet => "metadata-get",
            Scenario::Order => "order",
        })
    }
}

/// Who the requests come from.
#[derive(Clone)]
pub enum Identity {
    /// Barbican's no-auth headers.
    NoAuth {
        /// X-Project-Id.
        project: String,
        /// X-Roles.
        roles: String,
        /// X-User-Id.
        user: String,
    },
    /// A Keystone token (X-Auth-Token).
    Token(String),
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::NoAuth { project, roles, user } => {
                write!(f, "NoAuth({project}, {roles}, {user})")
            }
            // A token is a credential: never printed.
            Identity::Token(_) => f.write_str("Token(..)"),
        }
    }
}

impl std::fmt::Debug for Barbican {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Barbican")
            .field("base", &self.base)
            .field("identity", &self.identity)
            .field("pool", &self.pool.len())
            .finish_non_exhaustive()
    }
}

/// A Barbican endpoint and a pool of secrets to fetch.
pub struct Barbican {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    identity: Identity,
    pool: Vec<String>,
    next: AtomicUsize,
}

type Response = (StatusCode, Bytes);

impl Barbican {
    /// A client for `base` (`http://host:port`).
    pub fn new(base: &str, identity: Identity, connections: usize) -> Arc<Barbican> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(connections.max(1))
            .build(connector);
        Arc::new(Barbican {
            client,
            base: base.trim_end_matches('/').to_owned(),
            identity,
            pool: Vec::new(),
            next: AtomicUsize::new(0),
        })
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        accept: &str,
        body: Option<String>,
    ) -> anyhow::Result<Response> {
        let mut request = Request::builder().method(method).uri(url).header("Accept", accept);
        request = match &self.identity {
            Identity::NoAuth { project, roles, user } => request
                .header("X-Project-Id", project)
                .header("X-Roles", roles)
                .header("X-User-Id", user),
            Identity::Token(token) => request.header("X-Auth-Token", token),
        };
        if body.is_some() {
            request = request.header("Content-Type", "application/json");
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = self.client.request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// Stores one 32-byte key; its reference.
    async fn store(&self) -> Result<String, String> {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let body = serde_json::json!({
            "payload": base64::engine::general_purpose::STANDARD.encode(key),
            "payload_content_type": "application/octet-stream",
            "payload_content_encoding": "base64",
            "secret_type": "symmetric",
            "algorithm": "aes",
            "bit_length": 256,
            "mode": "xts",
        });
        let url = format!("{}/v1/secrets", self.base);
        let (status, body) = self
            .send(Method::POST, &url, "application/json", Some(body.to_string()))
            .await
            .map_err(transport)?;
        if status != StatusCode::CREATED {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        reference(&body, "secret_ref")
    }

    /// Makes the pool of secrets the fetch scenarios read.
    pub async fn fill_pool(this: &mut Arc<Barbican>, size: usize) -> anyhow::Result<()> {
        let mut pool = Vec::with_capacity(size);
        for _ in 0..size {
            pool.push(
                this.store()
                    .await
                    .map_err(anyhow::Error::msg)
                    .context("storing the pool of secrets")?,
            );
        }
        Arc::get_mut(this).context("the pool is filled before the run")?.pool = pool;
        Ok(())
    }

    fn pick(&self) -> Result<&str, String> {
        if self.pool.is_empty() {
            return Err("no secrets in the pool".into());
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        Ok(&self.pool[i])
    }

    /// Runs one request of `scenario`.
    pub async fn run(&self, scenario: Scenario) -> Result<u64, String> {
        match scenario {
            Scenario::SecretStore => self.store().await.map(|_| 1),
            Scenario::PayloadGet => {
                let url = format!("{}/payload", self.pick()?);
                let (status, body) = self
                    .send(Method::GET, &url, "application/octet-stream", None)
                    .await
                    .map_err(transport)?;
                match (status, body.len()) {
                    (StatusCode::OK, 32) => Ok(1),
                    (StatusCode::OK, n) => Err(format!("payload of {n} bytes")),
                    (s, _) => Err(format!("HTTP {}", s.as_u16())),
                }
            }
            Scenario::MetadataGet => {
                let url = self.pick()?.to_owned();
                let (status, _) = self
                    .send(Method::GET, &url, "application/json", None)
                    .await
                    .map_err(transport)?;
                if status == StatusCode::OK {
                    Ok(1)
                } else {
                    Err(format!("HTTP {}", status.as_u16()))
                }
            }
            Scenario::Order => self.order().await,
        }
    }

    async fn order(&self) -> Result<u64, String> {
        let body = serde_json::json!({
            "type": "key",
            "meta": {"algorithm": "aes", "bit_length": 256, "mode": "cbc",
                     "payload_content_type": "application/octet-stream"},
        });
        let url = format!("{}/v1/orders", self.base);
        let (status, body) = self
            .send(Method::POST, &url, "application/json", Some(body.to_string()))
            .await
            .map_err(transport)?;
        if status != StatusCode::ACCEPTED {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        let order = reference(&body, "order_ref")?;
        for _ in 0..6000 {
            let (status, body) = self
                .send(Method::GET, &order, "application/json", None)
                .await
                .map_err(transport)?;
            if status != StatusCode::OK {
                return Err(format!("HTTP {} polling the order", status.as_u16()));
            }
            let value: serde_json::Value =
                serde_json::from_slice(&body).map_err(|_| "order is not JSON".to_owned())?;
            match value["status"].as_str() {
                Some("ACTIVE") => return Ok(1),
                Some("ERROR") => return Err("order ERROR".into()),
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        Err("order not ACTIVE after 30 s".into())
    }

    /// Checks the endpoint answers as Barbican does.
    pub async fn check(&self) -> anyhow::Result<()> {
        let (status, _) = self
            .send(
                Method::GET,
                &format!("{}/v1/secrets?limit=1", self.base),
                "application/json",
                None,
            )
            .await?;
        if status != StatusCode::OK {
            bail!("GET {}/v1/secrets answered {status}; check the URL and the identity", self.base);
        }
        Ok(())
    }
}

fn transport(e: anyhow::Error) -> String {
    format!("transport: {}", e.root_cause())
}

fn reference(body: &[u8], field: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "answer is not JSON".to_owned())?;
    value[field].as_str().map(str::to_owned).ok_or_else(|| format!("no {field} in the answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_parse() {
        for s in ["secret-store", "payload-get", "metadata-get", "order"] {
            assert_eq!(s.parse::<Scenario>().unwrap().to_string(), s);
        }
        assert!("payload".parse::<Scenario>().unwrap_err().contains("payload-get"));
        assert_eq!(
            reference(br#"{"secret_ref": "http://x/v1/secrets/1"}"#, "secret_ref").unwrap(),
            "http://x/v1/secrets/1"
        );
        assert!(reference(b"nope", "secret_ref").is_err());
    }
}
