//! The appliance: the control plane in front of one or more `hsm-proxy` daemons.
//!
//! Three layers, each depending only on the ones below it:
//! - HTTP ([`api`], and [`server`] for the listener): routing, parsing, Barbican's error bodies;
//! - services (`service`): the resources' rules, policy decisions, quotas, the order worker;
//! - storage (the `appliance-store` crate) and the HSM client (`hsm`), through which every key
//!   operation is done in the HSM by the proxies.
//!
//! Identity (no-auth or Keystone, `identity`) is asked by the HTTP layer who calls. The
//! operator's commands ([`admin`]: `db check`, `db upgrade`, `doctor`) sit beside the HTTP
//! layer, over the same parts; [`logging`] sets up the log output and the access log. Every
//! layer records into `metrics`, which `scrape` renders for the metrics listener that
//! [`server::start_metrics`] runs.

#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod config;
mod error;
mod hsm;
mod identity;
pub mod logging;
mod metrics;
mod scrape;
pub mod server;
mod service;
mod timefmt;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use hsm_proxy_proto::client::{Client, ClientConfig, tls_config_from_pem_files};

use crate::config::{Config, DatabaseConfig, IdentitySourceName, KeystoneConfig, Listen, Migrate};
pub use crate::error::{Error, Result};
use crate::hsm::Hsm;
use crate::identity::IdentitySource;
use crate::metrics::Metrics;
pub use crate::service::App;
use crate::service::Settings;
use appliance_store::Store;

/// Reads a secret (a password) from a file, trailing newline dropped, into a secret type.
fn read_secret(path: &std::path::Path) -> Result<secrecy::SecretString> {
    let raw = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(Error::io(path))?);
    Ok(secrecy::SecretString::from(raw.trim_end_matches(['\r', '\n']).to_owned()))
}

/// The Keystone client's settings from `[keystone]`, its password read from its file.
fn keystone_settings(k: &KeystoneConfig) -> Result<crate::identity::KeystoneSettings> {
    let password = read_secret(&k.password_file)?;
    let www = k
        .www_authenticate_uri
        .clone()
        .unwrap_or_else(|| k.auth_url.trim_end_matches('/').trim_end_matches("/v3").to_owned());
    Ok(crate::identity::KeystoneSettings {
        auth_url: k.auth_url.trim_end_matches('/').to_owned(),
        username: k.username.clone(),
        user_domain_id: k.user_domain_id.clone(),
        project: k.project.clone(),
        project_domain_id: k.project_domain_id.clone(),
        password,
        www_authenticate_uri: www,
        cache_ttl: Duration::from_millis(k.cache_ttl_ms),
        cache_entries: k.cache_entries.max(1),
        timeout: Duration::from_millis(k.timeout_ms),
    })
}

/// Opens the database as `[database] migrate` says: applying pending migrations, or refusing a
/// schema that is not current.
async fn open_store(
    config: &DatabaseConfig,
    statements: Option<Arc<dyn appliance_store::Observer>>,
) -> Result<Store> {
    let store = Store::connect_observed(&config.url, config.max_connections, statements).await?;
    if config.migrate == Migrate::Auto
        && let Err(e) = store.migrate().await
    {
        store.close().await;
        return Err(e.into());
    }
    let status = store.schema().await?;
    if status.is_current() {
        return Ok(store);
    }
    let problems = admin::db::problems(&status);
    if config.migrate == Migrate::Never {
        store.close().await;
        return Err(Error::Schema(format!(
            "the database is not current ({problems}); [database] migrate = \"never\": apply \
             the migrations with `appliance db upgrade --config FILE` first"
        )));
    }
    // Migrated, yet not this build's schema: say so, and serve as before.
    tracing::warn!(
        problems,
        "the database schema is not this build's; `appliance db check` tells more"
    );
    Ok(store)
}

/// The client of the proxies `[hsm]` names, with the KEK policy of `[keys]`; it records into
/// `metrics` when given. Must be called inside the tokio runtime.
pub(crate) fn connect_hsm(config: &Config, metrics: Option<&Metrics>) -> Result<Hsm> {
    let tls = tls_config_from_pem_files(&config.hsm.ca, &config.hsm.cert, &config.hsm.key)?;
    let mut client_config =
        ClientConfig::new(config.hsm.endpoints.clone(), &config.hsm.server_name, tls.clone())?;
    client_config.connections = config.hsm.connections.max(1);
    client_config.connect_timeout = Duration::from_millis(config.hsm.connect_timeout_ms);
    client_config.request_timeout = Duration::from_millis(config.hsm.request_timeout_ms);
    client_config.busy_poll = Duration::from_micros(u64::from(config.hsm.busy_poll_us));
    client_config.reconnect_backoff_max =
        Duration::from_millis(config.hsm.reconnect_backoff_max_ms);
    // The readiness check asks each proxy on a connection of its own, not counted as traffic.
    let health_timeout = Duration::from_millis(config.health.timeout_ms);
    let mut probes = Vec::with_capacity(config.hsm.endpoints.len());
    for endpoint in &config.hsm.endpoints {
        let mut probe =
            ClientConfig::new(vec![endpoint.clone()], &config.hsm.server_name, tls.clone())?;
        probe.connections = 1;
        probe.max_calls = 16;
        probe.connect_timeout = client_config.connect_timeout.min(health_timeout);
        probe.request_timeout = health_timeout;
        probe.reconnect_backoff_max = client_config.reconnect_backoff_max;
        probes.push((endpoint.clone(), Client::new(probe)?));
    }
    client_config.observer =
        metrics.map(|m| m.hsm.clone() as Arc<dyn hsm_proxy_proto::client::Observer>);
    if config.hsm.busy_poll_us > 0 {
        tracing::info!(
            busy_poll_us = config.hsm.busy_poll_us,
            "busy polling: a request spins this long for the proxy's answer before parking"
        );
    }
    let keks = crate::hsm::Keks::new(
        crate::hsm::KekPolicy::from_config(&config.keys),
        metrics.map(|m| m.keks.clone()),
    );
    Ok(Hsm::new(Client::new(client_config)?, probes, &config.hsm, keks))
}

/// Builds the API from a configuration: opens the database (applying pending migrations
/// unless `[database] migrate = "never"`), reads the policy, configures the proxy client.
pub async fn build(config: &Config) -> Result<Arc<App>> {
    // Exported with no-auth too (as zeros), so that a dashboard finds every series.
    let keystone_metrics = crate::metrics::KeystoneMetrics::new()?;
    let metrics = match config.metrics.listen {
        Listen::Off => None,
        Listen::At(_) => Some(Arc::new(Metrics::new(
            api::ROUTES,
            &config.hsm.endpoints,
            Some(&keystone_metrics),
        )?)),
    };
    let statements = metrics.as_ref().map(|m| m.db.clone() as Arc<dyn appliance_store::Observer>);
    let store = open_store(&config.database, statements).await?;
    let mut policy = policy::Policy::barbican(config.policy.enforce_new_defaults)?;
    if let Some(file) = &config.policy.file {
        let text = std::fs::read_to_string(file).map_err(Error::io(file))?;
        let n = policy.apply_overrides(&text)?;
        tracing::info!(file = %file.display(), rules = n, "policy overrides loaded");
    }
    let hsm = connect_hsm(config, metrics.as_deref())?;
    let identity = match config.identity.source {
        IdentitySourceName::Keystone => {
            let k = config.keystone.as_ref().ok_or_else(|| {
                Error::Config("[identity] source = \"keystone\" needs a [keystone] section".into())
            })?;
            let settings = keystone_settings(k)?;
            tracing::info!(auth_url = %settings.auth_url, user = %settings.username, "Keystone identity");
            IdentitySource::Keystone(Arc::new(
                crate::identity::Keystone::new(settings, keystone_metrics.clone())
                    .map_err(Error::Network)?,
            ))
        }
        IdentitySourceName::Noauth => {
            tracing::warn!(
                "IDENTITY IS NOT AUTHENTICATED: [identity] source = \"noauth\" trusts the \
                 X-Project-Id/X-Roles headers of every caller; use it for development only"
            );
            IdentitySource::NoAuth
        }
    };
    let q = &config.quotas;
    let settings = Settings {
        host_href: config.server.host_href.clone(),
        max_request_bytes: config.server.max_request_bytes,
        max_secret_bytes: config.server.max_secret_bytes,
        identity,
        quota_defaults: service::quotas::Quotas([
            Some(q.secrets),
            Some(q.orders),
            Some(q.containers),
            Some(q.consumers),
            Some(q.cas),
        ]),
        secret_stores: config.secretstore.enable_multiple_secret_stores,
        started: crate::timefmt::now_micros(),
        access_log: crate::logging::AccessLog::new(&config.logging),
        health: service::health::HealthSettings {
            disable_file: config.health.disable_file.clone(),
            timeout: Duration::from_millis(config.health.timeout_ms),
        },
        fips: config.hsm.fips,
    };
    let (queue, submitted) = crate::service::orders::OrderQueue::new(
        Duration::from_millis(config.orders.lease_ms),
        Duration::from_millis(config.orders.poll_ms),
        Duration::from_millis(config.orders.inline_wait_ms),
    );
    let app = Arc::new(App::new(store, hsm, policy, settings, queue, metrics));
    // The worker holds only a weak reference: it stops when the API is dropped.
    tokio::spawn(crate::service::orders::run(Arc::downgrade(&app), submitted));
    let jobs = crate::service::keks::KekJobs::from_config(&config.keys);
    tokio::spawn(crate::service::keks::run(Arc::downgrade(&app), jobs));
    Ok(app)
}
