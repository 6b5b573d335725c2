//! `hsm-proxy`: the one process that talks to an HSM.
//!
//! It holds a fixed pool of PKCS#11 sessions, logged in once, and serves batched operations
//! from appliances over mutual TLS (the wire protocol is `hsm-proxy-proto`). The key hierarchy
//! lives in the token: a non-extractable master key (MKEK) found by label, and project KEKs that
//! leave the token only wrapped under it and are unwrapped into it on first use.

#![forbid(unsafe_code)]

pub mod check;
pub mod config;
mod error;
pub mod hardening;
mod hsm;
mod keys;
pub mod metrics;
mod pool;
mod server;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

pub use crate::config::Config;
pub use crate::error::{Error, Result};
pub use crate::hsm::MkekPolicy;
use crate::hsm::Token;
use crate::keys::KekCache;
use crate::metrics::HttpLimits;
pub use crate::metrics::Metrics;
use crate::pool::{Pool, PoolSettings};
use crate::server::ServerSettings;

/// A started proxy: token open, logged in, workers running; not yet listening.
#[derive(Debug)]
pub struct Proxy {
    pool: Arc<Pool>,
    tls: Arc<rustls::ServerConfig>,
    metrics: Arc<Metrics>,
    settings: ServerSettings,
    metrics_limits: HttpLimits,
    /// The metrics listener's TLS, when it has some.
    metrics_tls: Option<Arc<rustls::ServerConfig>>,
    summary: String,
}

impl Proxy {
    /// Opens the token, resolves the MKEK and starts the session pool.
    pub fn start(config: &Config, mkek: MkekPolicy) -> Result<Proxy> {
        let tls = tls::server_config(&config.tls)?;
        let pin = config.pkcs11.read_pin()?;
        let metrics = Metrics::new();
        let token = Arc::new(Token::open(&config.pkcs11, pin, mkek)?);
        let sessions = session_limit(config, token.summary.max_sessions)?;
        let workers = worker_count(config, sessions);
        // The inline lane is one more session, so only where the budget has room for it.
        let inline_below = if workers < sessions {
            Duration::from_micros(u64::from(config.pool.inline_below_us))
        } else {
            Duration::ZERO
        };
        let keys = Arc::new(KekCache::new(config.keys.kek_cache_capacity, metrics.clone()));
        let summary = format!(
            "token {:?} ({} {}) through {}, {} worker sessions{}, AES-GCM {}",
            token.summary.label,
            token.summary.manufacturer,
            token.summary.model,
            token.summary.library,
            workers,
            if inline_below.is_zero() {
                String::new()
            } else {
                format!(" + 1 inline (frames under {} µs when idle)", inline_below.as_micros())
            },
            if token.caps.message_aead { "message-based (PKCS#11 3.0)" } else { "single-part" }
        );
        let settings = PoolSettings {
            workers,
            inline_below,
            queue_depth: config.pool.queue_depth,
            health_cache: Duration::from_millis(config.health.cache_ms),
            log_error_details: config.logging.log_error_details,
        };
        let pool = Pool::start(token, keys, settings, metrics.clone()).map_err(Error::Network)?;
        let server = &config.server;
        let settings = ServerSettings {
            max_body_bytes: server.max_body_bytes,
            max_batch_ops: server.max_batch_ops,
            max_connections: server.max_connections,
            max_handshakes: server.max_handshakes,
            max_frames_in_flight: server.max_frames_in_flight,
            handshake_timeout: Duration::from_millis(server.handshake_timeout_ms),
            frame_timeout: Duration::from_millis(server.frame_timeout_ms),
            idle_timeout: Duration::from_millis(server.idle_timeout_ms),
            drain_timeout: Duration::from_millis(server.drain_timeout_ms),
            busy_poll: Duration::from_micros(u64::from(server.busy_poll_us)),
            default_deadline: Duration::from_millis(u64::from(config.pool.default_deadline_ms)),
            max_deadline: Duration::from_millis(u64::from(config.pool.max_deadline_ms)),
        };
        let metrics_tls = match (&server.metrics_tls_cert, &server.metrics_tls_key) {
            (Some(cert), Some(key)) => Some(tls::metrics_server_config(cert, key)?),
            _ => None,
        };
        let metrics_limits = HttpLimits {
            ready_timeout: Duration::from_millis(config.health.ready_timeout_ms),
            max_connections: server.metrics_max_connections,
            header_timeout: Duration::from_millis(server.metrics_header_timeout_ms),
            idle_timeout: Duration::from_millis(server.metrics_idle_timeout_ms),
        };
        Ok(Proxy {
            pool: Arc::new(pool),
            tls,
            metrics,
            settings,
            metrics_limits,
            metrics_tls,
            summary,
        })
    }

    /// One line saying which token and how many sessions, for the start-up log.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// The metrics registry.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Whether the metrics listener speaks HTTPS.
    pub fn metrics_tls(&self) -> bool {
        self.metrics_tls.is_some()
    }

    /// Number of worker sessions.
    pub fn workers(&self) -> usize {
        self.pool.workers()
    }

    /// Serves until `shutdown` completes, then drains and logs out.
    pub async fn serve(
        self,
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        if let Some(listener) = metrics_listener {
            let served = metrics::Listener {
                metrics: self.metrics.clone(),
                pool: self.pool.clone(),
                tls: self.metrics_tls.clone().map(TlsAcceptor::from),
                limits: self.metrics_limits,
            };
            tokio::spawn(metrics::serve(listener, served, stop_rx.clone()));
        }
        let acceptor = TlsAcceptor::from(self.tls.clone());
        let server = server::serve(
            listener,
            acceptor,
            self.pool.clone(),
            self.settings,
            self.metrics.clone(),
            stop_rx,
        );
        tokio::pin!(server);
        tokio::select! {
            () = &mut server => {}
            () = shutdown => {
                tracing::info!("shutting down: draining connections");
                let _ = stop_tx.send(true);
                server.await;
            }
        }
        let pool = self.pool.clone();
        // Joining worker threads blocks: keep it off the async runtime.
        let _ = tokio::task::spawn_blocking(move || pool.shutdown()).await;
        tracing::info!("stopped; sessions closed and logged out");
        Ok(())
    }
}

/// Creates the MKEK if the token has none; true when it was created.
pub fn init_token(config: &Config) -> Result<bool> {
    let pin = config.pkcs11.read_pin()?;
    let token = Token::open(&config.pkcs11, pin, MkekPolicy::Create)?;
    let created = token.created_mkek;
    token.shutdown();
    Ok(created)
}

/// Opens the token, which must hold a master key, runs `f` on it and closes it.
fn with_token<T>(config: &Config, f: impl FnOnce(&Token) -> Result<T>) -> Result<T> {
    let pin = config.pkcs11.read_pin()?;
    let token = Token::open(&config.pkcs11, pin, MkekPolicy::Require)?;
    let result = f(&token);
    token.shutdown();
    result
}

/// Generates the next master key generation, which wraps new KEKs from now on; its number.
pub fn mkek_rotate(config: &Config) -> Result<u64> {
    with_token(config, Token::rotate_mkek)
}

/// Destroys an older master key generation (never the newest).
pub fn mkek_destroy(config: &Config, generation: u64) -> Result<()> {
    with_token(config, |token| token.destroy_mkek(generation))
}

/// The master key generations in the token, oldest first; the last wraps new KEKs.
pub fn mkek_generations(config: &Config) -> Result<Vec<u64>> {
    with_token(config, Token::mkek_generations)
}

/// Sessions for workers and the inline lane: the session budget and the token's
/// `ulMaxSessionCount`, less the key-holder's.
fn session_limit(config: &Config, token_max: Option<u64>) -> Result<usize> {
    let token_max = token_max.and_then(|n| usize::try_from(n).ok()).unwrap_or(usize::MAX);
    let limit = config.pool.max_sessions.min(token_max).saturating_sub(1);
    if limit == 0 {
        return Err(Error::Config(format!(
            "the token allows {token_max} sessions: no room for a worker beside the key-holder"
        )));
    }
    Ok(limit)
}

/// Worker sessions, which is the pipeline depth: as configured, else as the HSM profile implies,
/// else one per CPU; within `limit`.
fn worker_count(config: &Config, limit: usize) -> usize {
    let wanted = match (config.pool.pipeline_depth, config.pool.hsm.pipeline_depth()) {
        (0, Some(depth)) => depth,
        (0, None) => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        (n, _) => n,
    };
    if wanted > limit {
        tracing::warn!(wanted, limit, "session budget or token limit caps the worker count");
    }
    wanted.min(limit)
}

/// Addresses written to the ready file once the proxy listens.
#[derive(Debug, serde::Serialize)]
pub struct ReadyInfo {
    /// The mutual-TLS listener.
    pub listen: SocketAddr,
    /// The metrics listener, if any.
    pub metrics: Option<SocketAddr>,
    /// The daemon's process id.
    pub pid: u32,
}
