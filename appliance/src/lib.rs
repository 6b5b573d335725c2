//! The appliance: the control plane in front of one or more `hsm-proxy` daemons.
//!
//! It serves the Barbican v1 API ([`api`]), keeps secrets as ciphertext in SQLite or
//! PostgreSQL ([`store`]), has every key operation done in the HSM through the proxies
//! ([`hsm`]), decides access with Barbican's policy, and issues its own mTLS PKI ([`pki`]).

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod config;
pub mod dev;
mod error;
pub mod hsm;
pub mod orders;
pub mod pki;
pub mod server;
pub mod store;
pub mod timefmt;

use std::sync::Arc;
use std::time::Duration;

use hsm_proxy_proto::client::{Client, ClientConfig, tls_config_from_pem_files};

use crate::api::ApiSettings;
pub use crate::api::App;
use crate::auth::IdentitySource;
use crate::config::{Config, IdentitySourceName};
pub use crate::error::{Error, Result};
use crate::hsm::Hsm;
use crate::store::Store;

/// Builds the API from a configuration: opens (and migrates) the database, reads the policy,
/// configures the proxy client.
pub async fn build(config: &Config) -> Result<Arc<App>> {
    let store = Store::open(&config.database.url, config.database.max_connections).await?;
    let mut policy = policy::Policy::barbican(config.policy.enforce_new_defaults)?;
    if let Some(file) = &config.policy.file {
        let text = std::fs::read_to_string(file)
            .map_err(|source| Error::Io { path: file.clone(), source })?;
        let n = policy.apply_overrides(&text)?;
        tracing::info!(file = %file.display(), rules = n, "policy overrides loaded");
    }
    let tls = tls_config_from_pem_files(&config.hsm.ca, &config.hsm.cert, &config.hsm.key)?;
    let mut client_config =
        ClientConfig::new(config.hsm.endpoints.clone(), &config.hsm.server_name, tls)?;
    client_config.connections = config.hsm.connections.max(1);
    client_config.connect_timeout = Duration::from_millis(config.hsm.connect_timeout_ms);
    client_config.request_timeout = Duration::from_millis(config.hsm.request_timeout_ms);
    let hsm = Hsm::new(Client::new(client_config)?);
    let identity = match config.identity.source {
        IdentitySourceName::Noauth => {
            tracing::warn!(
                "IDENTITY IS NOT AUTHENTICATED: [identity] source = \"noauth\" trusts the \
                 X-Project-Id/X-Roles headers of every caller; use it for development only"
            );
            IdentitySource::NoAuth
        }
    };
    let q = &config.quotas;
    let settings = ApiSettings {
        host_href: config.server.host_href.clone(),
        max_request_bytes: config.server.max_request_bytes,
        max_secret_bytes: config.server.max_secret_bytes,
        identity,
        quota_defaults: [q.secrets, q.orders, q.containers, q.consumers, q.cas],
        started: crate::timefmt::now_micros(),
    };
    let (queue, submitted) = crate::orders::OrderQueue::new(
        Duration::from_millis(config.orders.lease_ms),
        Duration::from_millis(config.orders.poll_ms),
    );
    let app = Arc::new(App::new(store, hsm, policy, settings, queue));
    // The worker holds only a weak reference: it stops when the API is dropped.
    tokio::spawn(crate::orders::run(Arc::downgrade(&app), submitted));
    Ok(app)
}
