//! Prometheus metrics, and the listener that serves them (`/metrics`) with liveness
//! (`/healthz`: the process serves) and readiness (`/readyz`: a worker session can run an
//! operation on the token now), in plain HTTP or, configured so, HTTPS; with its own
//! connection limit and header and idle timeouts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hsm_proxy_proto::op::Health;
use hsm_proxy_proto::{OpCode, Reply, Request as Operation};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::pool::Pool;
use crate::server::RefusalLog;

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
    /// Misses unwrapped together, ahead of their share's operations.
    pub(crate) kek_cache_prefetched: IntCounter,
    pub(crate) kek_cache_evictions: IntCounter,
    pub(crate) kek_cache_entries: IntGauge,
    pub(crate) kek_cache_capacity: IntGauge,
    /// Failed PKCS#11 calls, by function and CKR_* value.
    pub(crate) pkcs11_errors: IntCounterVec,
    /// Open client connections.
    pub(crate) connections: IntGauge,
    /// Failed TLS handshakes, by reason.
    pub(crate) handshake_failures: IntCounterVec,
    /// Frames refused as a whole, by status.
    pub(crate) frames_refused: IntCounterVec,
    /// Connections closed at once on accept, by listener and the limit that was reached.
    pub(crate) connections_refused: IntCounterVec,
    /// Connections closed for taking too long, by listener and what they were slow at.
    pub(crate) connections_timed_out: IntCounterVec,
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
                "Attempts of an operation retried after a transient failure",
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
            kek_cache_prefetched: counter(
                "kek_cache_prefetched_total",
                "Project KEKs unwrapped together, under one hold of the key-holder session, \
                 before the operations of their share ran",
            ),
            kek_cache_evictions: counter(
                "kek_cache_evictions_total",
                "Unwrapped project KEKs evicted to make room",
            ),
            kek_cache_entries: gauge("kek_cache_entries", "Unwrapped project KEKs in the HSM"),
            kek_cache_capacity: gauge(
                "kek_cache_capacity",
                "Most unwrapped project KEKs kept: [keys] kek_cache_capacity, or less where the \
                 token ran out of object room",
            ),
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
            connections_refused: counter_vec(
                "connections_refused_total",
                "Connections closed on accept because a limit was reached",
                &["listener", "limit"],
            ),
            connections_timed_out: counter_vec(
                "connections_timed_out_total",
                "Connections closed for a stalled frame or header, or for being idle",
                &["listener", "phase"],
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

/// Limits of the metrics endpoint.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HttpLimits {
    /// Time `/readyz` gives a worker session.
    pub(crate) ready_timeout: Duration,
    /// Connections served at once.
    pub(crate) max_connections: usize,
    /// Time for a request's header, from its first byte.
    pub(crate) header_timeout: Duration,
    /// Time a connection may stay silent between requests.
    pub(crate) idle_timeout: Duration,
}

/// The answer to a connection beyond the limit.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
    content-length: 32\r\nconnection: close\r\n\r\ntoo many connections to /metrics\n";

/// What the listener's requests need.
#[derive(Clone)]
pub(crate) struct Listener {
    pub(crate) metrics: Arc<Metrics>,
    /// For `/readyz`.
    pub(crate) pool: Arc<Pool>,
    /// HTTPS when set.
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) limits: HttpLimits,
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown` fires.
pub(crate) async fn serve(
    listener: TcpListener,
    served: Listener,
    mut shutdown: watch::Receiver<bool>,
) {
    let (metrics, limits) = (served.metrics.clone(), served.limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(RefusalLog::new("metrics"));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connections_refused.with_label_values(&["metrics", "connections"]).inc();
            refusals.refused(peer, "metrics_max_connections");
            refuse(stream);
            continue;
        };
        let served = served.clone();
        tokio::spawn(async move {
            match served.tls.clone() {
                None => serve_connection(stream, peer, served).await,
                Some(tls) => {
                    // A peer that never finishes its handshake is cut off like a slow header.
                    let timeout = served.limits.header_timeout;
                    match tokio::time::timeout(timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, served).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "metrics TLS handshake failed");
                        }
                        Err(_) => {
                            let m = &served.metrics;
                            m.connections_timed_out
                                .with_label_values(&["metrics", "handshake"])
                                .inc();
                            tracing::debug!(%peer, "metrics TLS handshake timed out");
                        }
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Answers 503 and closes, without waiting: what the socket takes now is all that is sent.
fn refuse(stream: TcpStream) {
    // A request already received is read first: closing with unread bytes would reset the
    // connection, and the peer could lose the answer.
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        if !matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    let _ = stream.try_write(BUSY);
}

/// Serves one connection until it closes, stalls inside a request's header, or stays idle.
async fn serve_connection<S>(stream: S, peer: SocketAddr, served: Listener)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (metrics, limits) = (served.metrics.clone(), served.limits);
    let watch = Arc::new(Mutex::new(Activity { last: Instant::now(), head_since: None }));
    let io = Watched { inner: stream, watch: watch.clone() };
    let service = {
        let watch = watch.clone();
        hyper::service::service_fn(move |req| {
            // The head is in: the header timeout stops here.
            lock(&watch).head_since = None;
            respond(req, served.clone())
        })
    };
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    loop {
        let (deadline, phase) = lock(&watch).deadline(limits);
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                // Bytes may have come in since: only a deadline still passed closes.
                let (now_due, phase_now) = lock(&watch).deadline(limits);
                if now_due <= Instant::now() && phase_now == phase {
                    metrics.connections_timed_out.with_label_values(&["metrics", phase]).inc();
                    tracing::debug!(%peer, phase, "metrics connection timed out");
                    return;
                }
            }
        }
    }
}

/// What a metrics connection last did, kept by [`Watched`] and the service.
struct Activity {
    /// Last byte read or written.
    last: Instant,
    /// First byte of a request whose header is not yet complete.
    head_since: Option<Instant>,
}

impl Activity {
    /// When the connection times out, and in which phase, unless something happens first.
    fn deadline(&self, limits: HttpLimits) -> (Instant, &'static str) {
        match self.head_since {
            Some(since) => (since + limits.header_timeout, "header"),
            None => (self.last + limits.idle_timeout, "idle"),
        }
    }
}

fn lock(m: &Mutex<Activity>) -> std::sync::MutexGuard<'_, Activity> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A stream that records when bytes pass, for the header and idle timeouts.
struct Watched<S> {
    inner: S,
    watch: Arc<Mutex<Activity>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let mut activity = lock(&self.watch);
            let now = Instant::now();
            activity.last = now;
            activity.head_since.get_or_insert(now);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            let mut activity = lock(&self.watch);
            activity.last = Instant::now();
            // An answer is going out: whatever is read next starts a new request.
            activity.head_since = None;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn respond(
    req: Request<Incoming>,
    served: Listener,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" if get => (StatusCode::OK, "text/plain; version=0.0.4", served.metrics.render()),
        "/healthz" if get => (StatusCode::OK, "text/plain", "OK\n".to_owned()),
        "/readyz" if get => readiness(&served).await,
        "/metrics" | "/healthz" | "/readyz" => {
            (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into())
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "try /metrics, /healthz or /readyz\n".into()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    Ok(response)
}

/// `/readyz`: the `Health` operation through the pool, as an appliance sends it (answered from
/// the cache while a recent answer is there, else by a worker session on the token).
async fn readiness(served: &Listener) -> (StatusCode, &'static str, String) {
    let deadline = Instant::now() + served.limits.ready_timeout;
    let mut outcomes = served.pool.run(vec![Ok(Operation::Health(Health))], deadline).await;
    let (status, body) = match outcomes.pop() {
        Some(Ok(Reply::Health(report))) => (
            StatusCode::OK,
            serde_json::json!({
                "status": "ok",
                "token_label": report.token_label,
                "sessions": report.sessions,
                "kek_cache_entries": report.kek_cache_entries,
                "kek_cache_capacity": report.kek_cache_capacity,
                "reinitializations": report.reinitializations,
                "report_age_ms": report.age_ms,
            }),
        ),
        Some(Err(status)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "unavailable", "error": status.name()}),
        ),
        Some(Ok(_)) | None => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "unavailable", "error": "internal"}),
        ),
    };
    (status, "application/json", body.to_string())
}
