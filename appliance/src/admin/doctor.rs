//! `appliance doctor`: everything the appliance needs checked from where it runs, with its own
//! configuration: the file, the policy, the certificates, the database and its schema and
//! clock, each proxy with its token and master key, and Keystone.
//!
//! It changes nothing, with one exception: to show that the master key works, each proxy is
//! asked for a new project KEK (`GenerateKek`), which comes back wrapped and is thrown away.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hsm_proxy_proto::client::{Client, ClientConfig, tls_config_from_pem_files};
use hsm_proxy_proto::op::{GenerateKek, Health};
use pki::inspect::Standing;

use super::{Report, db};
use crate::config::{Config, IdentitySourceName};
use crate::timefmt::now_micros;

/// A certificate expiring within this many days is a warning.
const EXPIRY_MARGIN_DAYS: i64 = 30;
/// A database clock this far from this machine's is a warning: the appliances' clocks, which
/// stamp every row, disagree too unless each is within it of the database's.
const SKEW_WARN: Duration = Duration::from_secs(1);

/// Runs every check of the configuration at `path`.
pub async fn run(path: &Path) -> Report {
    let mut report = Report::default();
    let config = match Config::load(path) {
        Ok(config) => {
            report.ok("config", format!("{} is valid", path.display()));
            config
        }
        Err(e) => {
            report.fail("config", e.to_string());
            return report;
        }
    };
    policy(&mut report, &config);
    certificates(&mut report, &config);
    database(&mut report, &config, path).await;
    proxies(&mut report, &config).await;
    keystone(&mut report, &config).await;
    report
}

fn policy(report: &mut Report, config: &Config) {
    let rules = if config.policy.enforce_new_defaults { "secure RBAC" } else { "legacy roles" };
    let mut policy = match policy::Policy::barbican(config.policy.enforce_new_defaults) {
        Ok(p) => p,
        Err(e) => return report.fail("policy", e.to_string()),
    };
    let Some(file) = &config.policy.file else {
        return report.ok("policy", format!("Barbican's defaults ({rules})"));
    };
    let applied = std::fs::read_to_string(file)
        .map_err(|e| e.to_string())
        .and_then(|text| policy.apply_overrides(&text).map_err(|e| e.to_string()));
    match applied {
        Ok(n) => report.ok(
            "policy",
            format!("Barbican's defaults ({rules}), {n} rules overridden by {}", file.display()),
        ),
        Err(e) => report.fail("policy", format!("{}: {e}", file.display())),
    }
}

/// The certificate files the appliance presents or trusts, each with its configuration key.
fn certificate_files(config: &Config) -> Vec<(&'static str, PathBuf)> {
    let server = &config.server;
    let mut files =
        vec![("[hsm] ca", config.hsm.ca.clone()), ("[hsm] cert", config.hsm.cert.clone())];
    files.extend(server.tls_cert.clone().map(|p| ("[server] tls_cert", p)));
    files.extend(server.tls_client_ca.clone().map(|p| ("[server] tls_client_ca", p)));
    files
}

/// The private key files, each with its configuration key.
fn key_files(config: &Config) -> Vec<(&'static str, PathBuf)> {
    let mut files = vec![("[hsm] key", config.hsm.key.clone())];
    files.extend(config.server.tls_key.clone().map(|p| ("[server] tls_key", p)));
    files
}

fn certificates(report: &mut Report, config: &Config) {
    let now = now_micros() / 1_000_000;
    for (key, path) in certificate_files(config) {
        let name = format!("certificate {key}");
        match pki::inspect::standing(&path, now, EXPIRY_MARGIN_DAYS) {
            Standing::Valid(text) => report.ok(name, format!("{}: {text}", path.display())),
            Standing::ExpiresSoon(text) => {
                report.warn(name, format!("{}: {text}; renew it", path.display()))
            }
            Standing::Invalid(text) => report.fail(name, text),
        }
    }
    for (key, path) in key_files(config) {
        let name = key.to_owned();
        match std::fs::metadata(&path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => report.warn(
                name,
                format!(
                    "{} can be read by other users (mode {:04o}): chmod 0600",
                    path.display(),
                    meta.permissions().mode() & 0o7777
                ),
            ),
            Ok(_) => report.ok(name, format!("{} is private to its owner", path.display())),
            Err(e) => report.fail(name, format!("{}: {e}", path.display())),
        }
    }
}

async fn database(report: &mut Report, config: &Config, path: &Path) {
    if let Some(file) = appliance_store::sqlite_path(&config.database.url)
        && !file.exists()
    {
        return report.fail(
            "database",
            format!(
                "no SQLite file at {}; `appliance db upgrade --config {}` creates it",
                file.display(),
                path.display()
            ),
        );
    }
    let Some(store) = db::connect(report, config).await else { return };
    match store.schema().await {
        Ok(status) => db::schema_checks(report, &status, path),
        Err(e) => report.fail("schema", format!("reading the applied migrations: {e}")),
    }
    let before = now_micros();
    let server = store.server_time_micros().await;
    let after = now_micros();
    match server {
        Ok(None) => report.ok("database clock", "SQLite runs on this machine's clock"),
        Ok(Some(server)) => {
            // The server read its clock somewhere within the round trip: compare with the
            // middle of it, give or take half of it.
            let middle = before + (after - before) / 2;
            let skew = server - middle;
            let within = (after - before) / 2;
            let text = format!(
                "the database's clock is {} {} this machine's (± {})",
                millis(skew.unsigned_abs()),
                if skew >= 0 { "ahead of" } else { "behind" },
                millis(within.unsigned_abs())
            );
            let fail_at = Duration::from_millis(config.orders.lease_ms / 2);
            let skew = Duration::from_micros(skew.unsigned_abs());
            if skew >= fail_at {
                report.fail(
                    "database clock",
                    format!(
                        "{text}: order leases ([orders] lease_ms) and expirations go wrong \
                         between appliances this far apart; synchronise the clocks (NTP)"
                    ),
                );
            } else if skew >= SKEW_WARN {
                report.warn("database clock", format!("{text}; synchronise the clocks (NTP)"));
            } else {
                report.ok("database clock", text);
            }
        }
        Err(e) => report.fail("database clock", format!("reading the server's time: {e}")),
    }
    store.close().await;
}

fn millis(micros: u64) -> String {
    if micros >= 10_000_000 {
        format!("{} s", micros / 1_000_000)
    } else {
        format!("{} ms", micros / 1_000)
    }
}

async fn proxies(report: &mut Report, config: &Config) {
    let hsm = &config.hsm;
    let tls = match tls_config_from_pem_files(&hsm.ca, &hsm.cert, &hsm.key) {
        Ok(tls) => {
            report.ok("client TLS", "[hsm] ca, cert and key load");
            tls
        }
        Err(e) => {
            report.fail("client TLS", format!("{e}; the proxies cannot be checked"));
            return;
        }
    };
    for endpoint in &hsm.endpoints {
        let name = format!("proxy {endpoint}");
        // One endpoint per client, so that a dead proxy is not hidden by failover.
        let client = ClientConfig::new(vec![endpoint.clone()], &hsm.server_name, tls.clone())
            .and_then(|mut c| {
                c.connections = 1;
                c.connect_timeout = Duration::from_millis(hsm.connect_timeout_ms);
                c.request_timeout = Duration::from_millis(hsm.request_timeout_ms);
                Client::new(c)
            });
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                report.fail(name, e.to_string());
                continue;
            }
        };
        let health = match client.call(Health).await {
            Ok(h) => h,
            Err(e) => {
                report.fail(name, format!("{e}"));
                continue;
            }
        };
        let mut detail = format!(
            "token {:?} ({} {}), {} session{}, {} of {} KEKs cached",
            health.token_label,
            health.manufacturer,
            health.model,
            health.sessions,
            if health.sessions == 1 { "" } else { "s" },
            health.kek_cache_entries,
            health.kek_cache_capacity
        );
        if health.reinitializations > 0 {
            detail.push_str(&format!(
                ", PKCS#11 library re-initialised {} times since start",
                health.reinitializations
            ));
        }
        if health.sessions == 0 {
            report.fail(name, format!("{detail}: no session can do an operation"));
        } else {
            report.ok(name, detail);
        }
        match client.call(GenerateKek).await {
            Ok(kek) => report.ok(
                format!("master key {endpoint}"),
                format!("a new KEK came back wrapped under it ({} bytes)", kek.wrapped.len()),
            ),
            Err(e) => report.fail(
                format!("master key {endpoint}"),
                format!("wrapping a new KEK under it failed: {e}"),
            ),
        }
    }
}

async fn keystone(report: &mut Report, config: &Config) {
    let Some(k) = &config.keystone else {
        if config.identity.source == IdentitySourceName::Noauth {
            report.warn(
                "identity",
                "noauth: any caller can claim any project (development and tests only)",
            );
        }
        return;
    };
    if config.identity.source != IdentitySourceName::Keystone {
        report.warn("keystone", "[keystone] is set but [identity] source is not \"keystone\"");
    }
    let checked = match crate::keystone_settings(k) {
        Ok(settings) => match crate::metrics::KeystoneMetrics::new() {
            // Counted nowhere: the doctor serves no metrics.
            Ok(metrics) => match crate::identity::Keystone::new(settings, metrics) {
                Ok(keystone) => keystone.authenticate().await,
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    match checked {
        Ok(()) => report
            .ok("keystone", format!("{} accepted the service user {:?}", k.auth_url, k.username)),
        Err(e) => report.fail("keystone", format!("{}: {e}", k.auth_url)),
    }
}
