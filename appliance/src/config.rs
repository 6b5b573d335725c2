//! `appliance.toml`: the control plane's configuration, every default here.
//!
//! Relative paths are resolved against the directory of the file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Barbican's default `max_allowed_request_size_in_bytes`.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 25_000;
/// Barbican's default `max_allowed_secret_in_bytes`.
pub const DEFAULT_MAX_SECRET_BYTES: usize = 20_000;

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
    /// Project KEK rotation and the rewrap job.
    #[serde(default)]
    pub keys: KeysConfig,
    /// The secret-store API.
    #[serde(default)]
    pub secretstore: SecretStoreConfig,
    /// Keystone, for `[identity] source = "keystone"`.
    #[serde(default)]
    pub keystone: Option<KeystoneConfig>,
    /// Log format and the access log.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `/healthcheck`.
    #[serde(default)]
    pub health: HealthConfig,
}

/// `[metrics]`: Prometheus metrics, on a listener of their own.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the plain-HTTP listener serving `GET /metrics`; `"off"` turns metrics off
    /// altogether (nothing is counted).
    #[serde(default = "defaults::metrics_listen")]
    pub listen: Listen,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: defaults::metrics_listen() }
    }
}

/// An address to listen on, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// No listener.
    Off,
    /// This address.
    At(SocketAddr),
}

impl Listen {
    /// The address, unless off.
    pub fn address(self) -> Option<SocketAddr> {
        match self {
            Listen::Off => None,
            Listen::At(addr) => Some(addr),
        }
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.trim() {
            "off" | "none" | "" => Ok(Listen::Off),
            addr => addr.parse().map(Listen::At).map_err(|_| {
                serde::de::Error::custom(format!(
                    "{text:?} is neither an address (host:port) nor \"off\""
                ))
            }),
        }
    }
}

/// `[health]`: `GET /healthcheck` and its readiness check (`?detail`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// While this file exists, `/healthcheck` answers 503 (oslo.middleware's
    /// `disable_by_file_path`): a way to take the appliance out of a load balancer's rotation.
    #[serde(default)]
    pub disable_file: Option<PathBuf>,
    /// Time the readiness check gives the database and each proxy.
    #[serde(default = "defaults::health_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self { disable_file: None, timeout_ms: defaults::health_timeout_ms() }
    }
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

/// `[keys]`: when project KEKs rotate, and how the rewrap job moves data off retired ones.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// A project's KEK is replaced once it is this many days old (fractions allowed); 0: never
    /// by age.
    #[serde(default = "defaults::max_age_days")]
    pub max_age_days: f64,
    /// A project's KEK is replaced once this many encryptions have been charged to it. Each
    /// draws a random 96-bit GCM IV, which NIST SP 800-38D (8.3) allows 2^32 times per key;
    /// the default stays a quarter below.
    #[serde(default = "defaults::max_encryptions")]
    pub max_encryptions: u64,
    /// Encryptions an appliance reserves on a KEK's durable counter at a time: a crash loses
    /// at most this many (the count only ever overstates).
    #[serde(default = "defaults::reserve_block")]
    pub reserve_block: u64,
    /// Longest an appliance keeps writing under a project KEK another appliance has rotated.
    #[serde(default = "defaults::refresh_ms")]
    pub refresh_ms: u64,
    /// A retired KEK is destroyed no sooner than this after its retirement, once nothing is
    /// sealed under it: longer than `refresh_ms`, so that no appliance still writes under it.
    #[serde(default = "defaults::retired_grace_ms")]
    pub retired_grace_ms: u64,
    /// Payloads each appliance's rewrap job moves a second, at most (0: the job is off).
    #[serde(default = "defaults::rewrap_per_second")]
    pub rewrap_per_second: u32,
    /// Payloads moved per transaction.
    #[serde(default = "defaults::rewrap_batch")]
    pub rewrap_batch: u32,
    /// How often each appliance looks for a rewrap job and for KEKs past `max_age_days`; also
    /// how long it holds a job it works on before renewing its lease (a third of the lease).
    #[serde(default = "defaults::rewrap_poll_ms")]
    pub poll_ms: u64,
    /// How long an appliance holds a rewrap job between renewals; another one takes it over
    /// once it expires.
    #[serde(default = "defaults::lease_ms")]
    pub lease_ms: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            max_age_days: defaults::max_age_days(),
            max_encryptions: defaults::max_encryptions(),
            reserve_block: defaults::reserve_block(),
            refresh_ms: defaults::refresh_ms(),
            retired_grace_ms: defaults::retired_grace_ms(),
            rewrap_per_second: defaults::rewrap_per_second(),
            rewrap_batch: defaults::rewrap_batch(),
            poll_ms: defaults::rewrap_poll_ms(),
            lease_ms: defaults::lease_ms(),
        }
    }
}

impl KeysConfig {
    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Config(format!("[keys] {what}")));
        if !(self.max_age_days.is_finite() && self.max_age_days >= 0.0) {
            return bad(format!("max_age_days = {}: must be 0 or more", self.max_age_days));
        }
        if self.max_encryptions == 0 || self.max_encryptions > 1 << 32 {
            return bad(format!(
                "max_encryptions = {}: must be between 1 and 2^32 (NIST SP 800-38D's limit \
                 for random IVs)",
                self.max_encryptions
            ));
        }
        if self.reserve_block == 0 || self.rewrap_batch == 0 {
            return bad("reserve_block and rewrap_batch must be at least 1".into());
        }
        if self.retired_grace_ms <= self.refresh_ms {
            return bad(format!(
                "retired_grace_ms = {} must exceed refresh_ms = {}: an appliance may write \
                 under a retired KEK for refresh_ms",
                self.retired_grace_ms, self.refresh_ms
            ));
        }
        Ok(())
    }
}

/// `[secretstore]`: the secret-store API (`/v1/secret-stores`), named as Barbican's section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretStoreConfig {
    /// True: the routes list the one store (the HSM), as Barbican's do with
    /// `enable_multiple_secret_stores = True`. False: every route answers 404, as in Barbican's
    /// default single-store configuration.
    #[serde(default = "defaults::yes")]
    pub enable_multiple_secret_stores: bool,
}

impl Default for SecretStoreConfig {
    fn default() -> Self {
        Self { enable_multiple_secret_stores: true }
    }
}

/// `[server]`: the HTTP API and its connections.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the Barbican v1 API.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Base URL of every href (`https://kms.example.com:9311`); derived from each request's
    /// Host when unset (and from X-Forwarded-Host / X-Forwarded-Proto when the peer is one of
    /// `trusted_proxies`).
    #[serde(default)]
    pub host_href: Option<String>,
    /// Largest request body, in bytes (Barbican's `max_allowed_request_size_in_bytes`).
    #[serde(default = "defaults::max_request_bytes")]
    pub max_request_bytes: usize,
    /// Largest secret payload, in bytes (Barbican's `max_allowed_secret_in_bytes`).
    #[serde(default = "defaults::max_secret_bytes")]
    pub max_secret_bytes: usize,
    /// Time allowed for a request's head (request line and headers), from the connection's
    /// accept or the first byte of a later request; the connection is closed after it.
    #[serde(default = "defaults::header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Time allowed for a request's body once its head has arrived; a slower body is answered
    /// 408 and the connection closed.
    #[serde(default = "defaults::body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// How long a kept-alive connection may wait for its next request (or a client take to
    /// read an answer) before it is closed.
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Connections served at once; those beyond are answered 503 and closed.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Connections the kernel holds for the API before they are accepted (capped by
    /// `net.core.somaxconn`); a burst past it is dropped and retried by clients a second later.
    #[serde(default = "defaults::listen_backlog")]
    pub listen_backlog: u32,
    /// Peers (CIDRs) whose X-Forwarded-Host / X-Forwarded-Proto are believed: the reverse
    /// proxies or load balancers in front. Empty (the default): never believed.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// PEM: the API's certificate chain, its own certificate first; with `tls_key`, the API
    /// speaks HTTPS (TLS 1.2 and 1.3) only. Read again on SIGHUP.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM: the private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1). Read again on SIGHUP.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// PEM: the CAs whose client certificates are accepted; unset: none is asked for.
    #[serde(default)]
    pub tls_client_ca: Option<PathBuf>,
    /// With `tls_client_ca`: whether every client must present a certificate (`required`, the
    /// default) or only those that do are checked (`optional`).
    #[serde(default)]
    pub tls_client_auth: Option<ClientAuth>,
    /// Must be true to serve plain HTTP on an address other than loopback (behind a proxy
    /// that terminates TLS): tokens and payloads would otherwise cross the network in clear.
    #[serde(default)]
    pub allow_plain_http: bool,
}

/// Whether clients of the API must present a certificate.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// The handshake fails without a certificate issued by `tls_client_ca`.
    #[default]
    Required,
    /// A certificate is asked for; one that is presented must be issued by `tls_client_ca`.
    Optional,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: defaults::listen(),
            host_href: None,
            max_request_bytes: defaults::max_request_bytes(),
            max_secret_bytes: defaults::max_secret_bytes(),
            header_timeout_ms: defaults::header_timeout_ms(),
            body_timeout_ms: defaults::body_timeout_ms(),
            idle_timeout_ms: defaults::idle_timeout_ms(),
            max_connections: defaults::max_connections(),
            listen_backlog: defaults::listen_backlog(),
            trusted_proxies: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_client_auth: None,
            allow_plain_http: false,
        }
    }
}

impl ServerConfig {
    /// Refuses settings that cannot work.
    pub fn validate(&self) -> Result<()> {
        if self.max_secret_bytes == 0 || self.max_request_bytes == 0 {
            return Err(Error::Config("[server] size limits must be positive".into()));
        }
        let timeouts = [self.header_timeout_ms, self.body_timeout_ms, self.idle_timeout_ms];
        if timeouts.contains(&0) {
            return Err(Error::Config("[server] timeouts must be positive".into()));
        }
        if self.max_connections == 0 || self.listen_backlog == 0 {
            return Err(Error::Config(
                "[server] max_connections and listen_backlog must be at least 1".into(),
            ));
        }
        self.validate_tls()
    }

    /// True when the API speaks HTTPS.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// Refuses TLS settings that do not go together, and plain HTTP beyond loopback unless
    /// `allow_plain_http` says it is meant.
    fn validate_tls(&self) -> Result<()> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Error::Config(
                "[server] tls_cert and tls_key go together: set both for HTTPS, or neither".into(),
            ));
        }
        if self.tls_client_ca.is_some() && !self.tls() {
            return Err(Error::Config(
                "[server] tls_client_ca needs tls_cert and tls_key: client certificates are \
                 asked for in the TLS handshake"
                    .into(),
            ));
        }
        if self.tls_client_auth.is_some() && self.tls_client_ca.is_none() {
            return Err(Error::Config(
                "[server] tls_client_auth needs tls_client_ca, the CAs that issue the clients' \
                 certificates"
                    .into(),
            ));
        }
        if !self.tls() && !self.listen.ip().to_canonical().is_loopback() && !self.allow_plain_http {
            return Err(Error::Config(format!(
                "[server] listen = \"{}\" is not a loopback address, and without tls_cert and \
                 tls_key the API would speak plain HTTP there: tokens and secrets would cross \
                 the network in clear. Set tls_cert and tls_key, or allow_plain_http = true \
                 when a proxy in front terminates TLS",
                self.listen
            )));
        }
        Ok(())
    }
}

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`); a bare address is a network of
/// one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// True when `ip` is inside the network; an IPv4 peer seen on an IPv6 socket
    /// (`::ffff:10.1.2.3`) is compared as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && masked(ip, self.prefix) == self.network
    }
}

/// `ip` with the bits past its first `prefix` cleared.
fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    let keep = |bits: u32| bits.saturating_sub(u32::from(prefix));
    match ip {
        IpAddr::V4(a) => {
            IpAddr::V4((u32::from(a) & u32::MAX.checked_shl(keep(32)).unwrap_or(0)).into())
        }
        IpAddr::V6(a) => {
            IpAddr::V6((u128::from(a) & u128::MAX.checked_shl(keep(128)).unwrap_or(0)).into())
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a CIDR: {address:?} is not an IP address"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix =
            match prefix {
                None => bits,
                Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= bits).ok_or_else(|| {
                    format!("{text:?} is not a CIDR: the prefix must be 0 to {bits}")
                })?,
            };
        // Bits past the prefix are a typo: 10.0.0.1/8 meant as /32 would trust a whole /8.
        if masked(network, prefix) != network {
            return Err(format!(
                "{text:?} is not a CIDR: the address has bits set beyond its /{prefix} prefix"
            ));
        }
        Ok(Cidr { network, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
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
    /// Whether `serve` applies pending migrations at start.
    #[serde(default)]
    pub migrate: Migrate,
}

/// `[database] migrate`: who applies the schema's migrations.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Migrate {
    /// `serve` applies pending migrations at start.
    #[default]
    Auto,
    /// Only `appliance db upgrade` does; `serve` refuses a database that is not current.
    Never,
}

/// `[logging]`
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// How log lines are written; `--log-format` overrides.
    #[serde(default)]
    pub format: LogFormat,
    /// The level of the per-request access log line, or `off`.
    #[serde(default)]
    pub access_log: AccessLogLevel,
    /// Log one request in this many (answers 5xx are always logged); 1 logs every request.
    #[serde(default = "defaults::access_log_sample")]
    pub access_log_sample: u64,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            access_log: AccessLogLevel::default(),
            access_log_sample: defaults::access_log_sample(),
        }
    }
}

/// `[logging] format`
pub use ops::LogFormat;

/// `[logging] access_log`
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogLevel {
    /// At INFO: shown by the default filter.
    #[default]
    Info,
    /// At DEBUG: shown only when the filter lets the appliance's debug lines through.
    Debug,
    /// Not logged at all.
    Off,
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
    /// Operations waiting for a frame; one more fails at once, and the API answers 503.
    #[serde(default = "defaults::max_queued_operations")]
    pub max_queued_operations: usize,
    /// Wait before a proxy that refused a connection is tried again, from 50 ms doubling up to
    /// this; calls meanwhile fail at once.
    #[serde(default = "defaults::reconnect_backoff_max_ms")]
    pub reconnect_backoff_max_ms: u64,
    /// Microseconds a request keeps its thread busy waiting for the proxy's answer before
    /// parking it: at low load on a virtual machine this spares the wake-up of an idle CPU, at
    /// the price of that CPU time. 0 (the default) parks at once.
    #[serde(default)]
    pub busy_poll_us: u32,
    /// The HSM runs in FIPS mode: orders ask it only for approved algorithms and sizes (AES
    /// keys of 128, 192 or 256 bits, or 256 and 512 for XTS; HMAC keys of 112 bits or more;
    /// RSA of 2048 bits or more; EC P-256 and P-384). Any other fails as Barbican fails an
    /// algorithm its backend lacks.
    #[serde(default)]
    pub fips: bool,
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

    /// Loopback: metrics tell an observer about the traffic, and a scraper on the host (or a
    /// reverse proxy with TLS) reaches them there.
    pub(super) fn metrics_listen() -> super::Listen {
        super::Listen::At(SocketAddr::from(([127, 0, 0, 1], 9465)))
    }
    /// Below a load balancer's usual check interval and timeout (5 s).
    pub(super) fn health_timeout_ms() -> u64 {
        2_000
    }

    pub(super) fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9311))
    }
    pub(super) fn max_request_bytes() -> usize {
        super::DEFAULT_MAX_REQUEST_BYTES
    }
    pub(super) fn max_secret_bytes() -> usize {
        super::DEFAULT_MAX_SECRET_BYTES
    }
    pub(super) fn header_timeout_ms() -> u64 {
        10_000
    }
    pub(super) fn body_timeout_ms() -> u64 {
        20_000
    }
    pub(super) fn idle_timeout_ms() -> u64 {
        60_000
    }
    pub(super) fn max_connections() -> usize {
        4_096
    }
    pub(super) fn listen_backlog() -> u32 {
        1_024
    }
    pub(super) fn db_connections() -> u32 {
        16
    }
    pub(super) fn access_log_sample() -> u64 {
        1
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
    /// Far more than the frames in flight carry (4 × 32), a fraction of a second of the fastest
    /// token's load; each holds at most one secret.
    pub(super) fn max_queued_operations() -> usize {
        4096
    }
    /// A restarted proxy is found within a second.
    pub(super) fn reconnect_backoff_max_ms() -> u64 {
        1_000
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
    pub(super) fn max_age_days() -> f64 {
        90.0
    }
    /// 3 × 2^30: a quarter below SP 800-38D's 2^32 for random 96-bit IVs.
    pub(super) fn max_encryptions() -> u64 {
        3 << 30
    }
    pub(super) fn reserve_block() -> u64 {
        1_024
    }
    pub(super) fn refresh_ms() -> u64 {
        1_000
    }
    pub(super) fn retired_grace_ms() -> u64 {
        60_000
    }
    /// A small fraction of what one proxy does (tens of thousands of operations a second;
    /// each payload moved is two), so that the job never crowds out the traffic: 1.8 million
    /// payloads an hour per appliance.
    pub(super) fn rewrap_per_second() -> u32 {
        500
    }
    pub(super) fn rewrap_batch() -> u32 {
        100
    }
    pub(super) fn rewrap_poll_ms() -> u64 {
        5_000
    }
}

impl Config {
    /// The configuration of a development appliance: no-auth identity, the database at
    /// `database_url`, one proxy at `proxy` reached with the certificates of `pki`, busy
    /// polling as the proxy does it, every other setting at its default.
    pub fn development(
        listen: SocketAddr,
        database_url: String,
        proxy: String,
        pki: &pki::Bundle,
        busy_poll_us: u32,
    ) -> Config {
        Config {
            server: ServerConfig { listen, ..ServerConfig::default() },
            database: DatabaseConfig {
                url: database_url,
                max_connections: 8,
                migrate: Migrate::Auto,
            },
            hsm: HsmConfig {
                endpoints: vec![proxy],
                server_name: "hsm-proxy".into(),
                ca: pki.ca_cert.clone(),
                cert: pki.client_cert.clone(),
                key: pki.client_key.clone(),
                connections: 2,
                connect_timeout_ms: 3_000,
                request_timeout_ms: 10_000,
                frames_in_flight: 4,
                max_queued_operations: 4096,
                reconnect_backoff_max_ms: 1_000,
                busy_poll_us,
                fips: false,
            },
            identity: IdentityConfig { source: IdentitySourceName::Noauth, allow_noauth: true },
            policy: PolicyConfig::default(),
            quotas: QuotasConfig::default(),
            orders: OrdersConfig::default(),
            keys: KeysConfig::default(),
            secretstore: SecretStoreConfig::default(),
            keystone: None,
            logging: LoggingConfig::default(),
            metrics: MetricsConfig { listen: Listen::At(SocketAddr::from(([127, 0, 0, 1], 0))) },
            health: HealthConfig::default(),
        }
    }

    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let bad = |e: toml::de::Error| Error::Config(format!("{}: {e}", path.display()));
        let mut config: Config = toml::from_str(&text).map_err(bad)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut config.hsm.ca, &mut config.hsm.cert, &mut config.hsm.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let server = &mut config.server;
        for p in [&mut server.tls_cert, &mut server.tls_key, &mut server.tls_client_ca] {
            if let Some(p) = p.as_mut()
                && p.is_relative()
            {
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
        if let Some(p) = config.health.disable_file.as_mut()
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
        self.server.validate()?;
        if self.hsm.frames_in_flight == 0 {
            return Err(Error::Config("[hsm] frames_in_flight must be at least 1".into()));
        }
        if self.hsm.max_queued_operations == 0 {
            return Err(Error::Config("[hsm] max_queued_operations must be at least 1".into()));
        }
        if self.logging.access_log_sample == 0 {
            return Err(Error::Config(
                "[logging] access_log_sample must be at least 1 (1 logs every request)".into(),
            ));
        }
        if self.health.timeout_ms == 0 {
            return Err(Error::Config("[health] timeout_ms must be positive".into()));
        }
        self.keys.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_valid_and_lists_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance.example.toml");
        let c = Config::load(&path).unwrap();
        let l = &c.server;
        assert_eq!(c.server.listen, defaults::listen());
        assert_eq!(l.header_timeout_ms, defaults::header_timeout_ms());
        assert_eq!(l.body_timeout_ms, defaults::body_timeout_ms());
        assert_eq!(l.idle_timeout_ms, defaults::idle_timeout_ms());
        assert_eq!(l.max_connections, defaults::max_connections());
        assert_eq!(l.listen_backlog, defaults::listen_backlog());
        assert!(l.trusted_proxies.is_empty());
        assert!(l.tls_cert.is_none() && l.tls_key.is_none() && l.tls_client_ca.is_none());
        assert!(!l.allow_plain_http);
        assert_eq!(c.server.max_request_bytes, 25_000);
        assert_eq!(c.server.max_secret_bytes, 20_000);
        assert_eq!(c.database.max_connections, defaults::db_connections());
        assert_eq!(c.database.migrate, Migrate::Auto);
        assert_eq!(c.logging, LoggingConfig::default());
        assert_eq!(c.hsm.connections, defaults::connections());
        assert_eq!(c.hsm.request_timeout_ms, defaults::request_timeout_ms());
        assert_eq!(c.hsm.connect_timeout_ms, defaults::connect_timeout_ms());
        assert!(c.policy.enforce_new_defaults);
        assert!(c.secretstore.enable_multiple_secret_stores);
        assert!(c.hsm.ca.is_absolute());
        assert_eq!(c.metrics.listen, defaults::metrics_listen());
        assert_eq!(c.health.timeout_ms, defaults::health_timeout_ms());
        assert_eq!(c.health.disable_file, None);
        let k = &c.keys;
        assert_eq!(k.max_age_days, defaults::max_age_days());
        assert_eq!(k.max_encryptions, defaults::max_encryptions());
        assert_eq!(k.reserve_block, defaults::reserve_block());
        assert_eq!(k.refresh_ms, defaults::refresh_ms());
        assert_eq!(k.retired_grace_ms, defaults::retired_grace_ms());
        assert_eq!(k.rewrap_per_second, defaults::rewrap_per_second());
        assert_eq!(k.rewrap_batch, defaults::rewrap_batch());
        assert_eq!(k.poll_ms, defaults::rewrap_poll_ms());
        assert_eq!(k.lease_ms, defaults::lease_ms());
    }

    #[test]
    fn key_rotation_settings_that_cannot_work_are_refused() {
        for (text, says) in [
            ("max_encryptions = 0", "max_encryptions"),
            ("max_encryptions = 4294967297", "2^32"),
            ("max_age_days = -1.0", "max_age_days"),
            ("refresh_ms = 5000\nretired_grace_ms = 5000", "must exceed refresh_ms"),
            ("rewrap_batch = 0", "rewrap_batch"),
        ] {
            let keys: KeysConfig = toml::from_str(text).unwrap();
            let e = keys.validate().unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
        let keys: KeysConfig = toml::from_str("max_age_days = 0.5").unwrap();
        keys.validate().unwrap();
    }

    #[test]
    fn metrics_listen_on_loopback_by_default_and_can_be_turned_off() {
        let c: MetricsConfig = toml::from_str("").unwrap();
        let addr = c.listen.address().unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
        for off in ["off", "none"] {
            let c: MetricsConfig = toml::from_str(&format!("listen = \"{off}\"")).unwrap();
            assert_eq!(c.listen, Listen::Off);
        }
        let c: MetricsConfig = toml::from_str("listen = \"10.0.0.1:9100\"").unwrap();
        assert_eq!(c.listen, Listen::At("10.0.0.1:9100".parse().unwrap()));
        let e = toml::from_str::<MetricsConfig>("listen = \"everywhere\"").unwrap_err();
        assert!(e.to_string().contains("neither an address"), "{e}");
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

    /// The example file with `lines` added to its `[server]` section, loaded.
    fn load_with_server_lines(lines: &str) -> Result<Config> {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance.example.toml");
        let text = std::fs::read_to_string(example).unwrap();
        // The example's own line for each key set here goes.
        let set: Vec<&str> =
            lines.lines().filter_map(|l| l.split_once(" = ")).map(|(k, _)| k).collect();
        let text: String = text
            .lines()
            .filter(|l| l.split_once(" = ").is_none_or(|(k, _)| !set.contains(&k)))
            .map(|l| format!("{l}\n"))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("appliance.toml");
        std::fs::write(&path, text.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1))
            .unwrap();
        Config::load(&path)
    }

    #[test]
    fn listener_keys_are_read_from_the_server_section() {
        let c = load_with_server_lines(
            "header_timeout_ms = 1500\nbody_timeout_ms = 2500\nidle_timeout_ms = 3500\n\
             max_connections = 7\nlisten_backlog = 64\n\
             trusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]",
        )
        .unwrap();
        let l = &c.server;
        assert_eq!(c.server.max_request_bytes, 25_000);
        assert_eq!(
            (l.header_timeout_ms, l.body_timeout_ms, l.idle_timeout_ms, l.max_connections),
            (1500, 2500, 3500, 7)
        );
        assert_eq!(l.listen_backlog, 64);
        let shown: Vec<String> = l.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]);
    }

    #[test]
    fn bad_server_keys_are_clear_errors_at_start() {
        let e = load_with_server_lines("trusted_proxies = [\"10.0.0.1/8\"]").unwrap_err();
        let e = e.to_string();
        assert!(e.contains("trusted_proxies") && e.contains("bits set beyond its /8"), "{e}");
        let e = load_with_server_lines("trusted_proxies = [\"10.0.0.0/33\"]").unwrap_err();
        assert!(e.to_string().contains("the prefix must be 0 to 32"), "{e}");
        let e = load_with_server_lines("trusted_proxies = [\"proxy.example.com\"]").unwrap_err();
        assert!(e.to_string().contains("is not an IP address"), "{e}");
        let e = load_with_server_lines("header_timeout = 5").unwrap_err();
        assert!(e.to_string().contains("unknown field `header_timeout`"), "{e}");
        let e = load_with_server_lines("idle_timeout_ms = 0").unwrap_err();
        assert!(e.to_string().contains("timeouts must be positive"), "{e}");
        let e = load_with_server_lines("max_connections = 0").unwrap_err();
        assert!(e.to_string().contains("max_connections"), "{e}");
    }

    /// The example file with `edits` (old, new) applied, loaded.
    fn load_edited(edits: &[(&str, &str)]) -> Result<Config> {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance.example.toml");
        let mut text = std::fs::read_to_string(example).unwrap();
        for (old, new) in edits {
            assert!(text.contains(old), "{old}");
            text = text.replace(old, new);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("appliance.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    #[test]
    fn migrations_and_logging_are_read_from_their_sections() {
        let c = load_edited(&[
            ("migrate = \"auto\"", "migrate = \"never\""),
            ("format = \"text\"", "format = \"json\""),
            ("access_log = \"info\"", "access_log = \"debug\""),
            ("access_log_sample = 1", "access_log_sample = 100"),
        ])
        .unwrap();
        assert_eq!(c.database.migrate, Migrate::Never);
        assert_eq!(
            c.logging,
            LoggingConfig {
                format: LogFormat::Json,
                access_log: AccessLogLevel::Debug,
                access_log_sample: 100
            }
        );
        let c = load_edited(&[("access_log = \"info\"", "access_log = \"off\"")]).unwrap();
        assert_eq!(c.logging.access_log, AccessLogLevel::Off);
        let e = load_edited(&[("migrate = \"auto\"", "migrate = \"sometimes\"")]).unwrap_err();
        assert!(e.to_string().contains("unknown variant `sometimes`"), "{e}");
        let e = load_edited(&[("access_log_sample = 1", "access_log_sample = 0")]).unwrap_err();
        assert!(e.to_string().contains("access_log_sample must be at least 1"), "{e}");
        let e = load_edited(&[("format = \"text\"", "format = \"xml\"")]).unwrap_err();
        assert!(e.to_string().contains("unknown variant `xml`"), "{e}");
    }

    #[test]
    fn the_commented_https_example_is_valid() {
        // The example's TLS lines, uncommented.
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance.example.toml");
        let text = std::fs::read_to_string(example).unwrap();
        let lines: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# tls_")).collect::<Vec<_>>();
        assert_eq!(lines.len(), 4, "{lines:?}");
        let lines: String = lines.iter().map(|l| format!("tls_{l}\n")).collect();
        let c = load_with_server_lines(lines.trim_end()).unwrap();
        let s = &c.server;
        assert!(s.tls());
        for p in [&s.tls_cert, &s.tls_key, &s.tls_client_ca] {
            let p = p.as_ref().unwrap();
            assert!(p.is_absolute() && p.starts_with(std::env::temp_dir()), "{}", p.display());
        }
        assert!(s.tls_cert.as_ref().unwrap().ends_with("tls/api.pem"));
        assert_eq!(s.tls_client_auth, Some(ClientAuth::Required));
        let c = load_with_server_lines(
            "tls_cert = \"/etc/a.pem\"\ntls_key = \"/etc/k.pem\"\n\
             tls_client_ca = \"/etc/c.pem\"\ntls_client_auth = \"optional\"",
        )
        .unwrap();
        assert_eq!(c.server.tls_cert.as_deref(), Some(Path::new("/etc/a.pem")));
        assert_eq!(c.server.tls_client_auth, Some(ClientAuth::Optional));
    }

    #[test]
    fn plain_http_beyond_loopback_needs_an_explicit_opt_in() {
        for listen in ["0.0.0.0:9311", "[::]:9311", "192.0.2.1:9311", "[2001:db8::1]:9311"] {
            let e = load_with_server_lines(&format!("listen = \"{listen}\"")).unwrap_err();
            let e = e.to_string();
            assert!(
                e.contains(&format!("listen = \"{listen}\" is not a loopback address"))
                    && e.contains("allow_plain_http = true")
                    && e.contains("tls_cert"),
                "{e}"
            );
            load_with_server_lines(&format!("listen = \"{listen}\"\nallow_plain_http = true"))
                .unwrap();
            load_with_server_lines(&format!(
                "listen = \"{listen}\"\ntls_cert = \"api.pem\"\ntls_key = \"api-key.pem\""
            ))
            .unwrap();
        }
        for listen in ["127.0.0.1:9311", "127.1.2.3:0", "[::1]:9311", "[::ffff:127.0.0.1]:9311"] {
            load_with_server_lines(&format!("listen = \"{listen}\"")).unwrap();
        }
        // As `appliance dev` and the in-process tests build it.
        let dev = ServerConfig { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
        dev.validate().unwrap();
    }

    #[test]
    fn tls_settings_that_do_not_go_together_are_refused() {
        let e = load_with_server_lines("tls_cert = \"api.pem\"").unwrap_err().to_string();
        assert!(e.contains("tls_cert and tls_key go together"), "{e}");
        let e = load_with_server_lines("tls_key = \"api-key.pem\"").unwrap_err().to_string();
        assert!(e.contains("tls_cert and tls_key go together"), "{e}");
        let e = load_with_server_lines("tls_client_ca = \"ca.pem\"").unwrap_err().to_string();
        assert!(e.contains("tls_client_ca needs tls_cert and tls_key"), "{e}");
        let e = load_with_server_lines(
            "tls_cert = \"a.pem\"\ntls_key = \"k.pem\"\ntls_client_auth = \"required\"",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tls_client_auth needs tls_client_ca"), "{e}");
        let e = load_with_server_lines(
            "tls_cert = \"a.pem\"\ntls_key = \"k.pem\"\ntls_client_ca = \"c.pem\"\n\
             tls_client_auth = \"sometimes\"",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown variant `sometimes`"), "{e}");
    }

    #[test]
    fn cidrs_hold_their_networks_only() {
        let cidr = |s: &str| s.parse::<Cidr>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let lan = cidr("10.0.0.0/8");
        assert!(lan.contains(ip("10.0.0.0")) && lan.contains(ip("10.255.255.255")));
        assert!(!lan.contains(ip("11.0.0.0")) && !lan.contains(ip("9.255.255.255")));
        // An IPv4 peer on a dual-stack socket.
        assert!(lan.contains(ip("::ffff:10.1.2.3")));
        assert!(!lan.contains(ip("::a01:203")));
        let one = cidr("192.0.2.7");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.6")));
        let all = cidr("0.0.0.0/0");
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("2001:db8::1")));
        let v6 = cidr("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(cidr("::1/128").contains(ip("::1")) && !cidr("::1/128").contains(ip("::2")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "::1/129", "10.0.0.0/", "/8", "10.0.0.0/-1", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} was taken");
        }
    }
}
