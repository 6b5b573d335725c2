//! Prometheus metrics, and the plain-HTTP `/metrics` endpoint that serves them.

use std::convert::Infallible;
use std::sync::Arc;

use hsm_proxy_proto::OpCode;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Latency buckets from 10 µs (a local token) to 5 s (a stalled network HSM).
const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Every metric the proxy exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Operations answered, by operation and status.
    pub(crate) operations: IntCounterVec,
    /// Time from a frame's arrival to a worker picking the operation up, per operation.
    pub(crate) queue_wait: Vec<Histogram>,
    /// Time a worker spent on the operation (PKCS#11 calls and retries), per operation.
    pub(crate) service_time: Vec<Histogram>,
    /// Operations per frame.
    pub(crate) batch_size: Histogram,
    /// Operations waiting in the queue.
    pub(crate) queue_depth: IntGauge,
    /// Worker sessions open.
    pub(crate) sessions_open: IntGauge,
    /// Worker sessions running an operation.
    pub(crate) sessions_busy: IntGauge,
    /// Sessions closed after a failure and replaced.
    pub(crate) sessions_replaced: IntCounter,
    /// PKCS#11 library re-initialisations.
    pub(crate) reinitializations: IntCounter,
    /// Operations retried once after a session, device or stale-handle failure.
    pub(crate) retries: IntCounter,
    /// Operations run on the connection's own thread, the pool being idle.
    pub(crate) inline_operations: IntCounter,
    pub(crate) kek_cache_hits: IntCounter,
    pub(crate) kek_cache_misses: IntCounter,
    pub(crate) kek_cache_evictions: IntCounter,
    pub(crate) kek_cache_entries: IntGauge,
    /// Failed PKCS#11 calls, by function and CKR_* value.
    pub(crate) pkcs11_errors: IntCounterVec,
    /// Open client connections.
    pub(crate) connections: IntGauge,
    /// Failed TLS handshakes, by reason.
    pub(crate) handshake_failures: IntCounterVec,
    /// Frames refused as a whole, by status.
    pub(crate) frames_refused: IntCounterVec,
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new_custom(Some("hsm_proxy".into()), None)
            .unwrap_or_else(|_| Registry::new());
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| {
                unreachable!("metric {name}: {e}") // static, valid names
            });
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("{name}: {e}"));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("{name}: {e}"));
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        let per_op = |name: &str, help: &str| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                &["op"],
            )
            .unwrap_or_else(|e| unreachable!("{name}: {e}"));
            let _ = registry.register(Box::new(h.clone()));
            // Resolved once so that the hot path does no label lookup.
            OpCode::ALL.iter().map(|op| h.with_label_values(&[op.name()])).collect::<Vec<_>>()
        };
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("batch_size", "Operations per request frame")
                .buckets(BATCH_BUCKETS.to_vec()),
        )
        .unwrap_or_else(|e| unreachable!("batch_size: {e}"));
        let _ = registry.register(Box::new(batch_size.clone()));
        Arc::new(Metrics {
            operations: counter_vec(
                "operations_total",
                "Operations answered, by operation and status",
                &["op", "status"],
            ),
            queue_wait: per_op("queue_wait_seconds", "Time operations waited for a worker"),
            service_time: per_op(
                "hsm_service_seconds",
                "Time a worker spent on an operation in the HSM",
            ),
            batch_size,
            queue_depth: gauge(
                "queue_depth",
                "Work items (operations or shares of a frame) waiting for a worker",
            ),
            sessions_open: gauge("sessions_open", "Worker sessions open on the token"),
            sessions_busy: gauge("sessions_busy", "Worker sessions running an operation"),
            sessions_replaced: counter(
                "sessions_replaced_total",
                "Sessions closed after a failure and replaced",
            ),
            reinitializations: counter(
                "reinitializations_total",
                "PKCS#11 library re-initialisations after device-class errors",
            ),
            retries: counter(
                "retries_total",
                "Operations retried once after a recoverable failure",
            ),
            inline_operations: counter(
                "inline_operations_total",
                "Operations run on the connection's thread because the pool was idle",
            ),
            kek_cache_hits: counter("kek_cache_hits_total", "Project KEK lookups served by handle"),
            kek_cache_misses: counter(
                "kek_cache_misses_total",
                "Project KEK lookups that unwrapped the KEK into the HSM",
            ),
            kek_cache_evictions: counter(
                "kek_cache_evictions_total",
                "Unwrapped project KEKs evicted to make room",
            ),
            kek_cache_entries: gauge("kek_cache_entries", "Unwrapped project KEKs in the HSM"),
            pkcs11_errors: counter_vec(
                "pkcs11_errors_total",
                "Failed PKCS#11 calls, by function and return value",
                &["function", "rv"],
            ),
            connections: gauge("connections", "Open client connections"),
            handshake_failures: counter_vec(
                "tls_handshake_failures_total",
                "Refused or failed TLS handshakes",
                &["reason"],
            ),
            frames_refused: counter_vec(
                "frames_refused_total",
                "Request frames refused as a whole, by status",
                &["status"],
            ),
            registry,
        })
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves `GET /metrics` until `shutdown` fires.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| respond(req, metrics.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
            }
        });
    }
}

async fn respond(
    req: Request<Incoming>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            (StatusCode::OK, "text/plain; version=0.0.4", metrics.render())
        }
        (_, "/metrics") => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".into()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    Ok(response)
}
