//! `appliance.toml`: the control plane's configuration, every default here.
//!
//! Relative paths are resolved against the directory of the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The HTTP API.
    pub server: ServerConfig,
    /// Where secrets (ciphertext) and wrapped KEKs are kept.
    pub database: DatabaseConfig,
    /// The HSM proxies.
    pub hsm: HsmConfig,
    /// Who callers are.
    pub identity: IdentityConfig,
    /// Authorisation.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Default quotas.
    #[serde(default)]
    pub quotas: QuotasConfig,
    /// The order queue.
    #[serde(default)]
    pub orders: OrdersConfig,
    /// Keystone, for `[identity] source = "keystone"`.
    #[serde(default)]
    pub keystone: Option<KeystoneConfig>,
}

/// `[keystone]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeystoneConfig {
    /// Keystone's v3 URL, e.g. `https://keystone.example.com:5000/v3`.
    pub auth_url: String,
    /// The appliance's service user (it validates tokens; it needs the `service` role for
    /// service-token checks).
    pub username: String,
    /// The service user's domain id.
    #[serde(default = "defaults::default_domain")]
    pub user_domain_id: String,
    /// The project the service user authenticates in.
    #[serde(default = "defaults::service_project")]
    pub project: String,
    /// That project's domain id.
    #[serde(default = "defaults::default_domain")]
    pub project_domain_id: String,
    /// File holding the service user's password.
    pub password_file: PathBuf,
    /// What 401 answers name in `WWW-Authenticate: Keystone uri="..."`; default: `auth_url`
    /// without `/v3`.
    #[serde(default)]
    pub www_authenticate_uri: Option<String>,
    /// Longest time a validated token is trusted without asking Keystone again: also how long
    /// a revoked token may keep working.
    #[serde(default = "defaults::token_cache_ttl_ms")]
    pub cache_ttl_ms: u64,
    /// Most validated tokens kept.
    #[serde(default = "defaults::token_cache_entries")]
    pub cache_entries: usize,
    /// Limit for one request to Keystone.
    #[serde(default = "defaults::keystone_timeout_ms")]
    pub timeout_ms: u64,
}

/// `[quotas]`: defaults for projects without their own (negative: unlimited, 0: disabled).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotasConfig {
    /// Live secrets per project.
    #[serde(default = "defaults::unlimited")]
    pub secrets: i64,
    /// Orders per project.
    #[serde(default = "defaults::unlimited")]
    pub orders: i64,
    /// Containers per project.
    #[serde(default = "defaults::unlimited")]
    pub containers: i64,
    /// Consumers per project (secret and container consumers counted separately).
    #[serde(default = "defaults::unlimited")]
    pub consumers: i64,
    /// Certificate authorities per project (reported only).
    #[serde(default = "defaults::unlimited")]
    pub cas: i64,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        Self { secrets: -1, orders: -1, containers: -1, consumers: -1, cas: -1 }
    }
}

/// `[orders]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrdersConfig {
    /// How long an appliance holds an order it is processing; another appliance takes the
    /// order over once the lease expires (the holder died).
    #[serde(default = "defaults::lease_ms")]
    pub lease_ms: u64,
    /// How often each appliance looks for orders whose lease expired.
    #[serde(default = "defaults::poll_ms")]
    pub poll_ms: u64,
    /// How long `POST /v1/orders` waits for its order to complete before answering 202 (the
    /// order goes on after that). Clients then find it ACTIVE at their first read.
    #[serde(default = "defaults::inline_wait_ms")]
    pub inline_wait_ms: u64,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        Self {
            lease_ms: defaults::lease_ms(),
            poll_ms: defaults::poll_ms(),
            inline_wait_ms: defaults::inline_wait_ms(),
        }
    }
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the Barbican v1 API.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Base URL of every href (`https://kms.example.com:9311`); derived from each request's
    /// Host (and X-Forwarded-*) when unset.
    #[serde(default)]
    pub host_href: Option<String>,
    /// Largest request body, in bytes (Barbican's `max_allowed_request_size_in_bytes`).
    #[serde(default = "defaults::max_request_bytes")]
    pub max_request_bytes: usize,
    /// Largest secret payload, in bytes (Barbican's `max_allowed_secret_in_bytes`).
    #[serde(default = "defaults::max_secret_bytes")]
    pub max_secret_bytes: usize,
}

/// `[database]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite:///path/appliance.db` or `postgres://user@host:5432/db`.
    pub url: String,
    /// Connections kept in the pool.
    #[serde(default = "defaults::db_connections")]
    pub max_connections: u32,
}

/// `[hsm]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// `host:port` of each proxy, tried in order (failover).
    pub endpoints: Vec<String>,
    /// The name the proxies' certificates carry.
    #[serde(default = "defaults::server_name")]
    pub server_name: String,
    /// PEM: the CA that issued the proxies' certificates.
    pub ca: PathBuf,
    /// PEM: the appliance's client certificate and key.
    pub cert: PathBuf,
    /// PEM: the key of `cert`.
    pub key: PathBuf,
    /// Connections kept open per appliance.
    #[serde(default = "defaults::connections")]
    pub connections: usize,
    /// Time allowed to connect to a proxy.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed for one HSM operation, queueing included.
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Frames of HSM operations unanswered at once; operations of concurrent requests that
    /// arrive while all are out leave together in the next frame.
    #[serde(default = "defaults::frames_in_flight")]
    pub frames_in_flight: usize,
    /// Microseconds a request keeps its thread busy waiting for the proxy's answer before
    /// parking it: at low load on a virtual machine this spares the wake-up of an idle CPU, at
    /// the price of that CPU time. 0 (the default) parks at once.
    #[serde(default)]
    pub busy_poll_us: u32,
}

/// `[identity]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// `keystone`: validate X-Auth-Token with Keystone. `noauth`: trust Barbican's
    /// X-Project-Id / X-Roles / X-User-Id headers. Also accepted as `auth`.
    #[serde(alias = "auth")]
    pub source: IdentitySourceName,
    /// Must be true to start with `source = "noauth"`: anyone who can reach the API can then
    /// claim any project.
    #[serde(default)]
    pub allow_noauth: bool,
}

/// Identity sources.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IdentitySourceName {
    /// Keystone tokens (`X-Auth-Token`), as Castellan, Cinder and Nova send them.
    Keystone,
    /// Barbican's unauthenticated-context headers.
    Noauth,
}

/// `[policy]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// A policy file (YAML or JSON, rule name → check string) overriding Barbican's defaults.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Barbican's secure-RBAC defaults; false ORs in the pre-Wallaby rules (creator, observer,
    /// audit roles).
    #[serde(default = "defaults::yes")]
    pub enforce_new_defaults: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self { file: None, enforce_new_defaults: true }
    }
}

mod defaults {
    use std::net::SocketAddr;

    pub(super) fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9311))
    }
    pub(super) fn max_request_bytes() -> usize {
        crate::api::DEFAULT_MAX_REQUEST_BYTES
    }
    pub(super) fn max_secret_bytes() -> usize {
        crate::api::DEFAULT_MAX_SECRET_BYTES
    }
    pub(super) fn db_connections() -> u32 {
        16
    }
    pub(super) fn server_name() -> String {
        "hsm-proxy".into()
    }
    pub(super) fn connections() -> usize {
        2
    }
    /// Enough frames of up to 32 operations to keep a pipeline of 60 or more busy; more only
    /// make frames smaller (measured on SoftHSM2: 15,249 payload fetches/s at 4, 13,143 at 16).
    pub(super) fn frames_in_flight() -> usize {
        4
    }
    pub(super) fn connect_timeout_ms() -> u64 {
        3_000
    }
    pub(super) fn request_timeout_ms() -> u64 {
        10_000
    }
    pub(super) fn yes() -> bool {
        true
    }
    pub(super) fn default_domain() -> String {
        "default".into()
    }
    pub(super) fn service_project() -> String {
        "service".into()
    }
    pub(super) fn token_cache_ttl_ms() -> u64 {
        300_000
    }
    pub(super) fn token_cache_entries() -> usize {
        10_000
    }
    pub(super) fn keystone_timeout_ms() -> u64 {
        5_000
    }
    pub(super) fn unlimited() -> i64 {
        -1
    }
    pub(super) fn lease_ms() -> u64 {
        30_000
    }
    pub(super) fn poll_ms() -> u64 {
        1_000
    }
    pub(super) fn inline_wait_ms() -> u64 {
        1_000
    }
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::Io { path: path.to_owned(), source })?;
        let mut config: Config =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut config.hsm.ca, &mut config.hsm.cert, &mut config.hsm.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = config.policy.file.as_mut()
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        if let Some(p) = config.keystone.as_mut().map(|k| &mut k.password_file)
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        config.validate()?;
        Ok(config)
    }

    /// Refuses settings that cannot work or that need an explicit opt-in.
    pub fn validate(&self) -> Result<()> {
        if self.hsm.endpoints.is_empty() {
            return Err(Error::Config("[hsm] endpoints must list at least one proxy".into()));
        }
        if self.identity.source == IdentitySourceName::Noauth && !self.identity.allow_noauth {
            return Err(Error::Config(
                "[identity] source = \"noauth\" lets any caller claim any project; set \
                 allow_noauth = true to accept that (development and tests only)"
                    .into(),
            ));
        }
        if self.identity.source == IdentitySourceName::Keystone && self.keystone.is_none() {
            return Err(Error::Config(
                "[identity] source = \"keystone\" needs a [keystone] section".into(),
            ));
        }
        if self.server.max_secret_bytes == 0 || self.server.max_request_bytes == 0 {
            return Err(Error::Config("[server] size limits must be positive".into()));
        }
        if self.hsm.frames_in_flight == 0 {
            return Err(Error::Config("[hsm] frames_in_flight must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_valid_and_lists_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance.example.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.server.listen, defaults::listen());
        assert_eq!(c.server.max_request_bytes, 25_000);
        assert_eq!(c.server.max_secret_bytes, 20_000);
        assert_eq!(c.database.max_connections, defaults::db_connections());
        assert_eq!(c.hsm.connections, defaults::connections());
        assert_eq!(c.hsm.request_timeout_ms, defaults::request_timeout_ms());
        assert_eq!(c.hsm.connect_timeout_ms, defaults::connect_timeout_ms());
        assert!(c.policy.enforce_new_defaults);
        assert!(c.hsm.ca.is_absolute());
    }

    #[test]
    fn noauth_needs_an_explicit_opt_in() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance.example.toml");
        let text = std::fs::read_to_string(path).unwrap().replace("allow_noauth = true", "");
        let c: Config = toml::from_str(&text).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("allow_noauth"));
    }

    #[test]
    fn the_commented_keystone_example_is_valid_and_needed() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance.example.toml");
        let text = std::fs::read_to_string(path)
            .unwrap()
            .replace("source = \"noauth\"", "source = \"keystone\"");
        let c: Config = toml::from_str(&text).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("needs a [keystone] section"));
        // Uncomment the example's [keystone] section: every line from its header to [policy].
        let (head, rest) = text.split_once("# [keystone]").unwrap();
        let (section, tail) = rest.split_once("[policy]").unwrap();
        let section: String = section
            .lines()
            .map(|l| l.strip_prefix("# ").filter(|l| l.contains(" = ")).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let c: Config =
            toml::from_str(&format!("{head}[keystone]\n{section}\n[policy]{tail}")).unwrap();
        c.validate().unwrap();
        let k = c.keystone.unwrap();
        assert_eq!(k.auth_url, "https://keystone.example.com:5000/v3");
        assert_eq!(k.username, "barbican");
        assert_eq!(k.cache_ttl_ms, defaults::token_cache_ttl_ms());
        assert_eq!(k.cache_entries, defaults::token_cache_entries());
        assert_eq!(k.timeout_ms, defaults::keystone_timeout_ms());
    }
}
