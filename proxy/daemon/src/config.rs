//! `proxy.toml`: the daemon's configuration, read into typed structs with every default here.
//!
//! Relative paths are resolved against the directory of the configuration file. Secrets (the
//! PIN) are referenced by file or environment variable, never written in the file itself.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener and frame limits.
    pub server: ServerConfig,
    /// Mutual TLS.
    pub tls: TlsConfig,
    /// The PKCS#11 module and token.
    pub pkcs11: Pkcs11Config,
    /// The session pool and its queue.
    #[serde(default)]
    pub pool: PoolConfig,
    /// The key hierarchy.
    #[serde(default)]
    pub keys: KeysConfig,
    /// The `Health` operation.
    #[serde(default)]
    pub health: HealthConfig,
    /// Process hardening.
    #[serde(default)]
    pub hardening: HardeningConfig,
    /// Logging.
    #[serde(default)]
    pub logging: LoggingConfig,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address for appliance connections (mutual TLS).
    pub listen: SocketAddr,
    /// Address of the metrics listener (`/metrics`, `/healthz`, `/readyz`): loopback by
    /// default; `"off"` disables it.
    #[serde(default = "defaults::metrics_listen", deserialize_with = "listen_or_off")]
    pub metrics_listen: Option<SocketAddr>,
    /// PEM file: the metrics listener's certificate chain; with `metrics_tls_key`, the listener
    /// speaks HTTPS (TLS 1.2 and 1.3, no client certificate) instead of plain HTTP.
    #[serde(default)]
    pub metrics_tls_cert: Option<PathBuf>,
    /// PEM file: the key of `metrics_tls_cert`.
    #[serde(default)]
    pub metrics_tls_key: Option<PathBuf>,
    /// Largest frame body accepted, in bytes.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: u32,
    /// Largest number of operations in one frame.
    #[serde(default = "defaults::max_batch_ops")]
    pub max_batch_ops: u32,
    /// Connections past their TLS handshake served at once; a connection accepted beyond it is
    /// closed at once.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Connections in their TLS handshake at once, counted apart from `max_connections` so that
    /// peers that never finish one cannot lock clients out; beyond it, closed at once.
    #[serde(default = "defaults::max_handshakes")]
    pub max_handshakes: usize,
    /// Frames one connection may have in flight before the proxy stops reading from it.
    #[serde(default = "defaults::max_frames_in_flight")]
    pub max_frames_in_flight: usize,
    /// Time allowed for a TLS handshake, from accept.
    #[serde(default = "defaults::handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Time allowed for a whole request frame, header and body, from its first byte.
    #[serde(default = "defaults::frame_timeout_ms")]
    pub frame_timeout_ms: u64,
    /// A connection with no frame in flight that sends nothing for this long is closed; 0 never.
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Time allowed on shutdown for frames in flight to finish.
    #[serde(default = "defaults::drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// After answering a frame, how long a connection's task keeps its thread busy waiting for
    /// the next one instead of parking it, in microseconds. On a virtual machine this saves the
    /// wake-up of an idle CPU on each exchange at low load, at the price of that CPU time. Only
    /// one connection spins at a time, and only while no work is with the workers, so that
    /// under load it takes nothing from them. 0 (the default) parks at once.
    #[serde(default)]
    pub busy_poll_us: u32,
    /// Connections the metrics endpoint serves at once; beyond it, answered 503 and closed.
    #[serde(default = "defaults::metrics_max_connections")]
    pub metrics_max_connections: usize,
    /// Time allowed for a metrics request's header, from its first byte.
    #[serde(default = "defaults::metrics_header_timeout_ms")]
    pub metrics_header_timeout_ms: u64,
    /// A metrics connection that sends nothing for this long between requests is closed.
    #[serde(default = "defaults::metrics_idle_timeout_ms")]
    pub metrics_idle_timeout_ms: u64,
}

/// `[tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file: the CA that issues client certificates (the appliance's CA). Only clients with a
    /// certificate chaining to it are accepted.
    pub client_ca: PathBuf,
    /// PEM file: the proxy's certificate chain.
    pub cert: PathBuf,
    /// PEM file: the proxy's private key.
    pub key: PathBuf,
    /// DNS names (subjectAltName) a client certificate must carry one of.
    pub allowed_clients: Vec<String>,
}

/// `[pkcs11]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (shared library).
    pub module: PathBuf,
    /// Label of the token to use.
    #[serde(default)]
    pub token_label: Option<String>,
    /// Slot id of the token to use (when no label is given).
    #[serde(default)]
    pub slot: Option<u64>,
    /// File holding the user PIN (trailing newline ignored).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN.
    #[serde(default)]
    pub pin_env: Option<String>,
    /// Label of the master key-encryption key.
    #[serde(default = "defaults::mkek_label")]
    pub mkek_label: String,
    /// Use PKCS#11 3.0 message-based AES-GCM when the token offers it (one init per key and
    /// session instead of one per operation); otherwise, or when false, single-part calls.
    #[serde(default = "defaults::yes")]
    pub message_aead: bool,
    /// The token runs in FIPS mode: GCM IVs must be drawn inside it, so the proxy refuses to
    /// start on a token without message-based AES-GCM.
    #[serde(default)]
    pub fips: bool,
}

impl fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only where the PIN comes from is shown, never the PIN.
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("slot", &self.slot)
            .field("pin_file", &self.pin_file)
            .field("pin_env", &self.pin_env)
            .field("mkek_label", &self.mkek_label)
            .field("message_aead", &self.message_aead)
            .field("fips", &self.fips)
            .finish()
    }
}

/// `[pool]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Operations kept outstanding at the HSM, one worker session each; 0 derives it from
    /// `[pool.hsm]`, or takes one per CPU. Capped by `max_sessions` and the token.
    #[serde(default, alias = "sessions")]
    pub pipeline_depth: usize,
    /// The HSM's shape, from which the pipeline depth follows when it is not set.
    #[serde(default)]
    pub hsm: HsmProfile,
    /// Budget: the most sessions this proxy opens on the token, the key-holder included.
    #[serde(default = "defaults::max_sessions")]
    pub max_sessions: usize,
    /// Work queued for the workers (an operation, or one worker's share of a frame) before
    /// clients are slowed down.
    #[serde(default = "defaults::queue_depth")]
    pub queue_depth: usize,
    /// When no work is queued or in service, a frame whose operations the HSM has lately
    /// answered within this many microseconds in all runs on the connection's own thread, on
    /// one more session, sparing the hand-off to a worker and back. 0 turns this off.
    #[serde(default = "defaults::inline_below_us")]
    pub inline_below_us: u32,
    /// Deadline for an operation whose frame asks for none.
    #[serde(default = "defaults::default_deadline_ms")]
    pub default_deadline_ms: u32,
    /// Upper bound on the deadline a frame may ask for.
    #[serde(default = "defaults::max_deadline_ms")]
    pub max_deadline_ms: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            pipeline_depth: 0,
            hsm: HsmProfile::default(),
            max_sessions: defaults::max_sessions(),
            queue_depth: defaults::queue_depth(),
            inline_below_us: defaults::inline_below_us(),
            default_deadline_ms: defaults::default_deadline_ms(),
            max_deadline_ms: defaults::max_deadline_ms(),
        }
    }
}

/// `[pool.hsm]`: what the HSM can do at once, and how long an operation takes there and on the
/// way, so that enough operations are outstanding to keep every engine busy and no more.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmProfile {
    /// Operations the HSM runs in parallel (cores, crypto engines); 0 = unknown.
    #[serde(default)]
    pub engines: usize,
    /// Typical time one operation takes inside the HSM, microseconds.
    #[serde(default)]
    pub service_us: u64,
    /// Round trip between this host and the HSM, microseconds (0 for a local token).
    #[serde(default)]
    pub link_rtt_us: u64,
}

impl HsmProfile {
    /// The pipeline depth that keeps every engine busy (Little's law): each engine needs one
    /// operation in service and enough more in transit to cover the link's round trip, and,
    /// behind a link, a fifth more for the time an operation also spends on this host on its
    /// way (the module, its connection, a worker's wake-up), which the profile does not count.
    /// `None` when the profile does not say.
    pub fn pipeline_depth(&self) -> Option<usize> {
        if self.engines == 0 {
            return None;
        }
        if self.service_us == 0 || self.link_rtt_us == 0 {
            // A local token: more than one operation per engine only queues inside it.
            return Some(self.engines);
        }
        let engines = u64::try_from(self.engines).unwrap_or(u64::MAX);
        let cycle_us = self.service_us.saturating_add(self.link_rtt_us);
        let in_flight = engines
            .saturating_mul(cycle_us)
            .saturating_mul(HOST_SHARE.0)
            .div_ceil(self.service_us.saturating_mul(HOST_SHARE.1));
        Some(usize::try_from(in_flight).unwrap_or(usize::MAX))
    }
}

/// The share of an operation's cycle, over the profile's, that a networked HSM's operations
/// take when the time spent on this host is counted too: 6/5. Measured on `network-hsm` (30
/// engines, 1 ms + 1 ms): one operation took 2.34 ms rather than 2, and depth 60 kept 87-89 %
/// of the engines busy where 72 kept 94-99 % (90 only queued inside the HSM).
const HOST_SHARE: (u64, u64) = (6, 5);

/// `[keys]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// The most unwrapped project KEKs kept in the HSM (least recently used go first); fewer
    /// where the token runs out of room for objects, which the cache learns as it goes.
    #[serde(default = "defaults::kek_cache_capacity")]
    pub kek_cache_capacity: usize,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self { kek_cache_capacity: defaults::kek_cache_capacity() }
    }
}

/// `[health]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// How long a `Health` answer is reused before the HSM is asked again.
    #[serde(default = "defaults::health_cache_ms")]
    pub cache_ms: u64,
    /// Time `/readyz` gives a worker session to run `Health` (when no answer is cached).
    #[serde(default = "defaults::ready_timeout_ms")]
    pub ready_timeout_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            cache_ms: defaults::health_cache_ms(),
            ready_timeout_ms: defaults::ready_timeout_ms(),
        }
    }
}

/// An address, or `"off"` (also `"none"`) for none.
fn listen_or_off<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    match text.trim() {
        "off" | "none" | "" => Ok(None),
        addr => addr.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "{text:?} is neither an address (host:port) nor \"off\""
            ))
        }),
    }
}

/// Whether memory is locked against swapping.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LockMemory {
    /// Refuse to start if memory cannot be locked.
    #[default]
    Required,
    /// Lock if possible, warn otherwise.
    Preferred,
    /// Do not lock (development only).
    Off,
}

/// `[hardening]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardeningConfig {
    /// Lock all memory against swapping (`mlockall`).
    #[serde(default)]
    pub lock_memory: LockMemory,
    /// Disable core dumps and ptrace attachment by other users.
    #[serde(default = "defaults::yes")]
    pub disable_core_dumps: bool,
}

impl Default for HardeningConfig {
    fn default() -> Self {
        Self { lock_memory: LockMemory::Required, disable_core_dumps: true }
    }
}

/// `[logging]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// Log PKCS#11 details (functions, return values, KEK ids) of failed operations at warn
    /// level. Off by default: they can tell an observer which keys are in use.
    #[serde(default)]
    pub log_error_details: bool,
    /// How log lines are written; `--log-format` overrides.
    #[serde(default)]
    pub format: LogFormat,
}

/// `[logging] format`
pub use ops::LogFormat;

mod defaults {
    pub(super) fn max_body_bytes() -> u32 {
        hsm_proxy_proto::frame::DEFAULT_MAX_BODY_BYTES
    }
    pub(super) fn max_batch_ops() -> u32 {
        hsm_proxy_proto::frame::DEFAULT_MAX_BATCH_OPS
    }
    pub(super) fn max_connections() -> usize {
        256
    }
    pub(super) fn max_frames_in_flight() -> usize {
        64
    }
    /// Enough for a burst of appliances reconnecting at once; each costs a task and a socket.
    pub(super) fn max_handshakes() -> usize {
        1024
    }
    pub(super) fn handshake_timeout_ms() -> u64 {
        5_000
    }
    /// A frame is at most `max_body_bytes` (1 MiB): 10 s is 100 KiB/s, far below any link
    /// between an appliance and its proxy.
    pub(super) fn frame_timeout_ms() -> u64 {
        10_000
    }
    /// Long enough that the appliance's kept connections are seldom closed under it (it
    /// reconnects on its own when they are); short enough that abandoned ones do not pile up.
    pub(super) fn idle_timeout_ms() -> u64 {
        600_000
    }
    /// A Prometheus server or two, and an operator's curl.
    pub(super) fn metrics_max_connections() -> usize {
        16
    }
    pub(super) fn metrics_header_timeout_ms() -> u64 {
        5_000
    }
    /// Longer than the usual scrape interval (15-60 s), so a scraper keeps its connection.
    pub(super) fn metrics_idle_timeout_ms() -> u64 {
        120_000
    }
    pub(super) fn drain_timeout_ms() -> u64 {
        10_000
    }
    pub(super) fn mkek_label() -> String {
        "hsm-proxy-mkek".into()
    }
    pub(super) fn max_sessions() -> usize {
        128
    }
    pub(super) fn queue_depth() -> usize {
        4096
    }
    /// Short enough that the connection's thread is not held up noticeably, long enough for a
    /// local token's symmetric operations.
    pub(super) fn inline_below_us() -> u32 {
        50
    }
    pub(super) fn default_deadline_ms() -> u32 {
        5_000
    }
    pub(super) fn max_deadline_ms() -> u32 {
        60_000
    }
    /// Every project of a large cloud, where the token has the room: a miss costs an unwrap
    /// in the HSM, a held KEK one object.
    pub(super) fn kek_cache_capacity() -> usize {
        16_384
    }
    pub(super) fn health_cache_ms() -> u64 {
        1_000
    }
    /// Below a load balancer's or kubelet's usual probe timeout.
    pub(super) fn ready_timeout_ms() -> u64 {
        2_000
    }
    /// Loopback: metrics tell an observer about the traffic.
    pub(super) fn metrics_listen() -> Option<std::net::SocketAddr> {
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9464)))
    }
    pub(super) fn yes() -> bool {
        true
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
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.tls.client_ca,
            &mut self.tls.cert,
            &mut self.tls.key,
            &mut self.pkcs11.module,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for p in [
            self.pkcs11.pin_file.as_mut(),
            self.server.metrics_tls_cert.as_mut(),
            self.server.metrics_tls_key.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Rejects combinations that cannot work, with the key to fix in the message.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: &str| Err(Error::Config(msg.to_owned()));
        match (&self.pkcs11.pin_file, &self.pkcs11.pin_env) {
            (Some(_), Some(_)) => return bad("[pkcs11] set only one of pin_file and pin_env"),
            (None, None) => return bad("[pkcs11] set pin_file or pin_env"),
            _ => {}
        }
        if self.pkcs11.token_label.is_some() && self.pkcs11.slot.is_some() {
            return bad("[pkcs11] set only one of token_label and slot");
        }
        if self.tls.allowed_clients.is_empty() {
            return bad("[tls] allowed_clients must name at least one client certificate name");
        }
        if self.pool.max_sessions < 2 {
            return bad("[pool] max_sessions must be at least 2 (one key-holder, one worker)");
        }
        if self.pool.pipeline_depth >= self.pool.max_sessions {
            return bad("[pool] pipeline_depth must be below max_sessions (one is the key-holder)");
        }
        if self.pool.hsm.engines == 0
            && (self.pool.hsm.service_us > 0 || self.pool.hsm.link_rtt_us > 0)
        {
            return bad("[pool.hsm] set engines as well as service_us and link_rtt_us");
        }
        if self.pool.queue_depth == 0 || self.keys.kek_cache_capacity == 0 {
            return bad("[pool] queue_depth and [keys] kek_cache_capacity must be positive");
        }
        if self.server.max_body_bytes < 64 || self.server.max_batch_ops == 0 {
            return bad("[server] max_body_bytes must be at least 64 and max_batch_ops positive");
        }
        if self.server.max_connections == 0 || self.server.max_frames_in_flight == 0 {
            return bad("[server] max_connections and max_frames_in_flight must be positive");
        }
        if self.server.max_handshakes == 0 || self.server.metrics_max_connections == 0 {
            return bad("[server] max_handshakes and metrics_max_connections must be positive");
        }
        if self.server.metrics_tls_cert.is_some() != self.server.metrics_tls_key.is_some() {
            return bad("[server] set both metrics_tls_cert and metrics_tls_key, or neither");
        }
        if self.health.ready_timeout_ms == 0 {
            return bad("[health] ready_timeout_ms must be positive");
        }
        if self.server.handshake_timeout_ms == 0
            || self.server.frame_timeout_ms == 0
            || self.server.metrics_header_timeout_ms == 0
            || self.server.metrics_idle_timeout_ms == 0
        {
            return bad(
                "[server] handshake_timeout_ms, frame_timeout_ms, metrics_header_timeout_ms and \
                 metrics_idle_timeout_ms must be positive",
            );
        }
        Ok(())
    }
}

impl Pkcs11Config {
    /// Reads the user PIN from its file or environment variable into a secret.
    pub fn read_pin(&self) -> Result<SecretString> {
        let raw: Zeroizing<Vec<u8>> = if let Some(path) = &self.pin_file {
            Zeroizing::new(
                std::fs::read(path).map_err(|source| Error::Io { path: path.clone(), source })?,
            )
        } else if let Some(var) = &self.pin_env {
            let value = std::env::var_os(var)
                .ok_or_else(|| Error::Config(format!("PIN variable {var} is not set")))?;
            Zeroizing::new(value.into_encoded_bytes())
        } else {
            return Err(Error::Config("[pkcs11] set pin_file or pin_env".into()));
        };
        let text = std::str::from_utf8(&raw)
            .map_err(|_| Error::Config("the PIN is not valid UTF-8".into()))?;
        let pin = text.trim_end_matches(['\r', '\n']);
        if pin.is_empty() {
            return Err(Error::Config("the PIN is empty".into()));
        }
        Ok(SecretString::from(pin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [server]
        listen = "127.0.0.1:0"
        [tls]
        client_ca = "ca.pem"
        cert = "proxy.pem"
        key = "proxy.key"
        allowed_clients = ["appliance"]
        [pkcs11]
        module = "/usr/lib/softhsm/libsofthsm2.so"
        token_label = "t"
        pin_env = "PIN_FOR_CONFIG_TEST"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c: Config = toml::from_str(MINIMAL).unwrap();
        c.validate().unwrap();
        assert_eq!(c.pool.queue_depth, 4096);
        assert_eq!(c.hardening.lock_memory, LockMemory::Required);
        assert_eq!(c.pkcs11.mkek_label, "hsm-proxy-mkek");
        assert!(!c.logging.log_error_details);
    }

    #[test]
    fn the_pipeline_depth_follows_the_hsm_profile() {
        let depth = |engines, service_us, link_rtt_us| {
            HsmProfile { engines, service_us, link_rtt_us }.pipeline_depth()
        };
        assert_eq!(depth(0, 0, 0), None);
        // A local token: one operation per engine.
        assert_eq!(depth(4, 7, 0), Some(4));
        assert_eq!(depth(4, 0, 0), Some(4));
        // 30 engines of 1 ms behind a 1 ms round trip: two per engine, and a fifth more for
        // the host's share.
        assert_eq!(depth(30, 1000, 1000), Some(72));
        // A part of an operation in flight still needs its own: 8 × 450 × 6/5 / 250 = 17.28.
        assert_eq!(depth(8, 250, 200), Some(18));

        let with = |extra: &str| toml::from_str::<Config>(&format!("{MINIMAL}\n{extra}")).unwrap();
        let c = with("[pool]\nsessions = 3");
        assert_eq!(c.pool.pipeline_depth, 3, "`sessions` is still read");
        let c = with("[pool.hsm]\nservice_us = 1000");
        assert!(c.validate().unwrap_err().to_string().contains("engines"));
        let c = with("[pool]\npipeline_depth = 128");
        assert!(c.validate().unwrap_err().to_string().contains("max_sessions"));
    }

    #[test]
    fn the_example_file_lists_valid_keys_with_their_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.example.toml");
        let c = Config::load(&path).unwrap();
        let defaults: Config = toml::from_str(MINIMAL).unwrap();
        assert_eq!(c.server.max_body_bytes, defaults.server.max_body_bytes);
        assert_eq!(c.server.max_batch_ops, defaults.server.max_batch_ops);
        assert_eq!(c.server.max_connections, defaults.server.max_connections);
        assert_eq!(c.server.max_frames_in_flight, defaults.server.max_frames_in_flight);
        assert_eq!(c.server.max_handshakes, defaults.server.max_handshakes);
        assert_eq!(c.server.handshake_timeout_ms, defaults.server.handshake_timeout_ms);
        assert_eq!(c.server.frame_timeout_ms, defaults.server.frame_timeout_ms);
        assert_eq!(c.server.idle_timeout_ms, defaults.server.idle_timeout_ms);
        assert_eq!(c.server.metrics_listen, Some(([127, 0, 0, 1], 9464).into()));
        assert_eq!(c.server.metrics_max_connections, defaults.server.metrics_max_connections);
        assert_eq!(c.server.metrics_header_timeout_ms, defaults.server.metrics_header_timeout_ms);
        assert_eq!(c.server.metrics_idle_timeout_ms, defaults.server.metrics_idle_timeout_ms);
        assert_eq!(c.server.drain_timeout_ms, defaults.server.drain_timeout_ms);
        assert_eq!(c.pool.pipeline_depth, defaults.pool.pipeline_depth);
        assert_eq!(c.pkcs11.message_aead, defaults.pkcs11.message_aead);
        assert_eq!(c.pkcs11.fips, defaults.pkcs11.fips);
        assert_eq!(c.pool.hsm.pipeline_depth(), defaults.pool.hsm.pipeline_depth());
        assert_eq!(c.pool.max_sessions, defaults.pool.max_sessions);
        assert_eq!(c.pool.queue_depth, defaults.pool.queue_depth);
        assert_eq!(c.pool.default_deadline_ms, defaults.pool.default_deadline_ms);
        assert_eq!(c.pool.max_deadline_ms, defaults.pool.max_deadline_ms);
        assert_eq!(c.keys.kek_cache_capacity, defaults.keys.kek_cache_capacity);
        assert_eq!(c.health.cache_ms, defaults.health.cache_ms);
        assert_eq!(c.health.ready_timeout_ms, defaults.health.ready_timeout_ms);
        assert_eq!(c.hardening.lock_memory, defaults.hardening.lock_memory);
        assert_eq!(c.hardening.disable_core_dumps, defaults.hardening.disable_core_dumps);
        assert_eq!(c.pkcs11.mkek_label, defaults.pkcs11.mkek_label);
        assert_eq!(c.logging.log_error_details, defaults.logging.log_error_details);
        assert_eq!(c.logging.format, defaults.logging.format);
        // Relative paths are taken from the file's directory.
        assert!(c.tls.client_ca.starts_with(env!("CARGO_MANIFEST_DIR")));
    }

    #[test]
    fn listener_limits_have_defaults_and_must_be_positive() {
        let c: Config = toml::from_str(MINIMAL).unwrap();
        assert_eq!(c.server.max_handshakes, 1024);
        assert_eq!(c.server.frame_timeout_ms, 10_000);
        assert_eq!(c.server.idle_timeout_ms, 600_000);
        assert_eq!(
            c.server.metrics_listen,
            Some(([127, 0, 0, 1], 9464).into()),
            "the metrics listener is on loopback unless told otherwise"
        );
        assert_eq!(c.server.metrics_tls_cert, None);
        assert_eq!(c.server.metrics_max_connections, 16);
        let with = |line: &str| {
            let text = MINIMAL.replace("[server]\n", &format!("[server]\n{line}\n"));
            toml::from_str::<Config>(&text).unwrap()
        };
        with("idle_timeout_ms = 0").validate().unwrap();
        for zero in [
            "max_handshakes = 0",
            "handshake_timeout_ms = 0",
            "frame_timeout_ms = 0",
            "metrics_max_connections = 0",
            "metrics_header_timeout_ms = 0",
            "metrics_idle_timeout_ms = 0",
        ] {
            let err = with(zero).validate().unwrap_err().to_string();
            let key = zero.split(' ').next().unwrap();
            assert!(err.contains(key), "{zero}: {err}");
        }
    }

    #[test]
    fn the_metrics_listener_can_be_turned_off_and_needs_both_tls_files() {
        let with = |line: &str| {
            let text = MINIMAL.replace("[server]\n", &format!("[server]\n{line}\n"));
            toml::from_str::<Config>(&text)
        };
        assert_eq!(with("metrics_listen = \"off\"").unwrap().server.metrics_listen, None);
        let e = with("metrics_listen = \"localhost\"").unwrap_err().to_string();
        assert!(e.contains("neither an address"), "{e}");
        let c = with("metrics_tls_cert = \"m.pem\"").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("metrics_tls_key"), "{e}");
        with("metrics_tls_cert = \"m.pem\"\nmetrics_tls_key = \"m.key\"")
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = format!("{MINIMAL}\n[keys]\nkek_cache = 3\n");
        let err = toml::from_str::<Config>(&text).unwrap_err().to_string();
        assert!(err.contains("kek_cache"), "{err}");
    }

    #[test]
    fn pin_sources_are_exclusive_and_debug_hides_pin() {
        let mut c: Config = toml::from_str(MINIMAL).unwrap();
        c.pkcs11.pin_file = Some("pin".into());
        assert!(c.validate().unwrap_err().to_string().contains("only one of pin_file"));

        let dir = tempfile::tempdir().unwrap();
        let pin_path = dir.path().join("pin");
        std::fs::write(&pin_path, "s3cret-pin\n").unwrap();
        c.pkcs11.pin_env = None;
        c.pkcs11.pin_file = Some(pin_path);
        let pin = c.pkcs11.read_pin().unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(&pin), "s3cret-pin");
        assert!(!format!("{pin:?}").contains("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
