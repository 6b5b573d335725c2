//! The HTTP server: hyper HTTP/1.1 in front of [`api::handle`], with the listener's timeouts
//! and connection limit; and the metrics listener ([`start_metrics`]), in front of
//! `scrape::respond` under limits of its own.
//!
//! Bodies are read into a wiped buffer, at most `max_request_bytes` of them: a longer body is
//! not read further, the handler answers 413, and the connection is closed. A body that does not
//! arrive whole (cut short, reset, badly chunked) is answered 400, one slower than the body
//! timeout 408, and the connection is closed: no handler ever sees a partial body.
//!
//! Between requests a connection's I/O (`TimedIo`) keeps the header timeout (from the accept,
//! or a kept connection's first byte, to the end of the head) and the idle timeout (waiting for
//! the next request, or for the client to take an answer). Connections beyond `max_connections`
//! are answered 503 and closed.
//!
//! With TLS ([`Tls`]) the handshake is done in the connection's own task, on its `TimedIo`:
//! it counts against `max_connections` and has the header timeout (which runs on to the end of
//! the first request's head), so a client that never finishes it neither stalls the accept
//! loop nor keeps its place. A refused connection gets its 503 over TLS, within the time a
//! refusal lingers. SIGHUP reads the certificate files again.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use hsm_proxy_proto::SecretBytes;
use http_body_util::Full;
use hyper::StatusCode;
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{CONNECTION, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use crate::api::{self, App};
use crate::config::{Cidr, MetricsConfig, ServerConfig};
use crate::error::{Error, Result};
use crate::metrics::HttpMetrics;
use crate::scrape;
pub use crate::tls::Tls;

/// Time allowed on shutdown for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);
/// Refused connections kept open at once so that their clients can read the 503; beyond that
/// a refused connection is closed at once.
const MAX_REFUSING: usize = 256;
/// How long a refused connection is kept open for its client to read the 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Least time between two warnings that connections are being refused.
const REFUSAL_WARNING_EVERY: Duration = Duration::from_secs(10);
/// Files the process needs besides its API connections (database, proxies, logs).
const FILES_BESIDES_CONNECTIONS: u64 = 256;

/// The metrics listener's limits: a Prometheus server or two, and an operator's curl; a
/// scraper's kept connection outlives its scrape interval (15-60 s), an abandoned one does not
/// hold its place for long.
const METRICS_MAX_CONNECTIONS: usize = 16;
const METRICS_HEADER_TIMEOUT_MS: u64 = 5_000;
const METRICS_IDLE_TIMEOUT_MS: u64 = 120_000;

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Serves {
    /// The Barbican API.
    Api,
    /// `GET /metrics`.
    Metrics,
}

/// Where a connection's current request stands, as its handler tells its I/O.
const BETWEEN_REQUESTS: u8 = 0;
/// The head has arrived: the handler reads the body (under its own timeout) and answers.
const IN_HANDLER: u8 = 1;
/// The answer is ready; once its first byte is written the connection is between requests.
const ANSWERED: u8 = 2;

/// A listening socket for the API on `addr`, with room for `backlog` connections not yet
/// accepted (the standard library's 128 drops bursts of new connections).
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Serves the API over plain HTTP on `listener` with the default timeouts and limits until
/// `shutdown` completes, then lets requests in flight finish.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    serve_with(listener, app, &ServerConfig::default(), None, shutdown).await;
}

/// Serves the API on `listener` with `config`'s timeouts, connection limit and trusted proxies,
/// over HTTPS with `tls` ([`Tls::from_config`]) or else plain HTTP, until `shutdown` completes,
/// then lets requests in flight finish.
pub async fn serve_with(
    listener: TcpListener,
    app: Arc<App>,
    config: &ServerConfig,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
) {
    listen(listener, app, config, tls, Serves::Api, shutdown).await;
}

/// Binds `[metrics] listen` and serves `GET /metrics` there in the background for as long as
/// the runtime runs; the address bound, or `None` when metrics are off.
pub async fn start_metrics(config: &MetricsConfig, app: &Arc<App>) -> Result<Option<SocketAddr>> {
    let Some(addr) = config.listen.address() else { return Ok(None) };
    let listener = TcpListener::bind(addr).await.map_err(Error::Network)?;
    let bound = listener.local_addr().map_err(Error::Network)?;
    if !bound.ip().is_loopback() {
        tracing::warn!(
            listen = %bound,
            "the metrics listener is not on loopback: anyone who reaches it reads the traffic \
             figures; keep it on a management network or behind a proxy with TLS"
        );
    }
    tokio::spawn(serve_metrics(listener, app.clone(), std::future::pending()));
    tracing::info!(listen = %bound, "serving metrics at /metrics");
    Ok(Some(bound))
}

/// Serves `GET /metrics` over plain HTTP on `listener` until `shutdown` completes: connections
/// as the API's are handled, under the metrics listener's own limits.
pub async fn serve_metrics(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) {
    let config = ServerConfig {
        max_connections: METRICS_MAX_CONNECTIONS,
        header_timeout_ms: METRICS_HEADER_TIMEOUT_MS,
        idle_timeout_ms: METRICS_IDLE_TIMEOUT_MS,
        ..ServerConfig::default()
    };
    listen(listener, app, &config, None, Serves::Metrics, shutdown).await;
}

/// The accept loop of both listeners: `config`'s limits and timeouts on every connection,
/// connections past the limit answered 503, and a graceful drain once `shutdown` completes.
async fn listen(
    listener: TcpListener,
    app: Arc<App>,
    config: &ServerConfig,
    tls: Option<Arc<Tls>>,
    serves: Serves,
    shutdown: impl Future<Output = ()>,
) {
    let timeouts = Timeouts {
        header: Duration::from_millis(config.header_timeout_ms),
        body: Duration::from_millis(config.body_timeout_ms),
        idle: Duration::from_millis(config.idle_timeout_ms),
    };
    let max_connections = config.max_connections.max(1);
    let trusted: &[Cidr] = &config.trusted_proxies;
    if serves == Serves::Api {
        warn_if_files_are_short(max_connections);
    }
    let open = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicUsize::new(0));
    let refusal = Bytes::from(refusal_bytes());
    let (mut refused, mut warned) = (0u64, None::<Instant>);
    let mut builder = http1::Builder::new();
    // [`TimedIo`] keeps the header timeout (and the idle one, which hyper's would cut short).
    builder.header_read_timeout(None);
    let graceful = GracefulShutdown::new();
    let reloader = match serves {
        Serves::Api => announce_scheme(&listener, tls.as_ref()),
        Serves::Metrics => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, ?serves, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Only this loop adds connections, so the count cannot pass the limit between the
        // check and the increment.
        if open.load(Relaxed) >= max_connections {
            refused += 1;
            if serves == Serves::Metrics {
                tracing::debug!(%peer, "metrics connection refused: too many open");
            } else if warned.is_none_or(|at| at.elapsed() >= REFUSAL_WARNING_EVERY) {
                tracing::warn!(
                    max_connections,
                    refused,
                    "connection limit reached: new API connections are answered 503 \
                     ([server] max_connections)"
                );
                (refused, warned) = (0, Some(Instant::now()));
            }
            refuse(stream, &refusing, refusal.clone(), tls.as_ref().map(|t| t.acceptor()));
            continue;
        }
        open.fetch_add(1, Relaxed);
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(Connection {
            app: app.clone(),
            serves,
            trust_forwarded: trusted.iter().any(|c| c.contains(peer.ip())),
            scheme,
            stage: AtomicU8::new(BETWEEN_REQUESTS),
            timeouts,
            open: open.clone(),
        });
        let io = TimedIo::new(stream, conn.clone());
        let service = hyper::service::service_fn(move |req| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(answer(&conn, req).await) }
        });
        let Some(tls) = &tls else {
            let conn = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
            continue;
        };
        // The handshake holds a watcher too: shutdown waits for it (the header timeout bounds
        // it), and the connection it yields is closed gracefully like the others.
        let (acceptor, watcher, builder) = (tls.acceptor(), graceful.watcher(), builder.clone());
        tokio::spawn(async move {
            let io = match acceptor.accept(io).await {
                Ok(io) => io,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    if let Some(reloader) = reloader {
        reloader.abort();
    }
    tokio::select! {
        () = graceful.shutdown() => tracing::info!(?serves, "all connections closed"),
        () = tokio::time::sleep(DRAIN) => tracing::warn!(?serves, "drain timeout: closing connections"),
    }
    if serves == Serves::Metrics {
        return;
    }
    if let crate::identity::IdentitySource::Keystone(k) = &app.settings.identity {
        let (hits, misses) = k.cache_counts();
        let ratio = hits as f64 / (hits + misses).max(1) as f64;
        tracing::info!(hits, misses, hit_ratio = format!("{ratio:.3}"), "Keystone token cache");
    }
}

/// Says at start which scheme the API speaks, warning of plain HTTP; with TLS, the task that
/// reads the certificate files again on each SIGHUP (registered before the first accept, so that
/// a SIGHUP once the API answers never falls on the signal's default action, which ends the
/// process).
fn announce_scheme(
    listener: &TcpListener,
    tls: Option<&Arc<Tls>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let Some(tls) = tls else {
        let local = listener.local_addr().map(|a| a.ip().to_canonical().is_loopback());
        if local.unwrap_or(false) {
            tracing::warn!(
                "the API speaks plain HTTP, on loopback only; set [server] tls_cert and tls_key \
                 for HTTPS"
            );
        } else {
            tracing::warn!(
                "the API speaks plain HTTP beyond loopback ([server] allow_plain_http = true): \
                 tokens and secrets cross the network in clear unless a proxy in front \
                 terminates TLS"
            );
        }
        return None;
    };
    match signal(SignalKind::hangup()) {
        Ok(hangups) => {
            let tls = tls.clone();
            Some(tokio::spawn(async move { tls.reload_on(hangups).await }))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: the TLS files will not be reloaded");
            None
        }
    }
}

/// Warns when the open-file limit cannot hold `max_connections`: connections past it would
/// fail at accept and wait in the backlog instead of being served or refused.
fn warn_if_files_are_short(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit};
    let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    let needed = (max_connections + MAX_REFUSING) as u64 + FILES_BESIDES_CONNECTIONS;
    if soft < needed {
        tracing::warn!(
            open_file_limit = soft,
            max_connections,
            needed,
            "the open-file limit is below what [server] max_connections needs: raise it \
             (LimitNOFILE=, ulimit -n) or lower max_connections"
        );
    }
}

/// The three timeouts of a connection.
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    header: Duration,
    body: Duration,
    idle: Duration,
}

/// What a connection's handler and its I/O share; the last of them to go closes the
/// connection's place in the count.
struct Connection {
    app: Arc<App>,
    serves: Serves,
    /// The peer is a trusted proxy: its X-Forwarded-* are believed.
    trust_forwarded: bool,
    /// `https` or `http`, as the connection was accepted.
    scheme: &'static str,
    /// [`BETWEEN_REQUESTS`], [`IN_HANDLER`] or [`ANSWERED`].
    stage: AtomicU8,
    timeouts: Timeouts,
    /// Connections open, this one included.
    open: Arc<AtomicUsize>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Relaxed);
    }
}

/// What the I/O waits for while no request is in the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// The first request of the connection: the header timeout runs from the accept.
    First,
    /// A kept connection's next request: the idle timeout runs.
    Idle,
    /// The rest of a head whose first byte has arrived: the header timeout runs.
    Head,
}

/// A connection's socket, failing a read or write that waits past the header or idle
/// deadline while no request is in the handler.
///
/// Deadlines move only when a wait begins, by writing a field; the one timer of the connection
/// is moved only when a deadline comes earlier than it, or when it fires before the deadline.
/// A request served without waiting therefore touches no timer.
struct TimedIo {
    io: TcpStream,
    conn: Arc<Connection>,
    waiting: Waiting,
    /// The end of the current wait; set when the wait first blocks.
    deadline: Option<Instant>,
    /// When `sleep` fires.
    armed: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl TimedIo {
    fn new(io: TcpStream, conn: Arc<Connection>) -> TimedIo {
        let deadline = Instant::now() + conn.timeouts.header;
        TimedIo {
            io,
            conn,
            waiting: Waiting::First,
            deadline: Some(deadline),
            armed: deadline,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Called when the socket is not ready: true when the wait has outlived its deadline;
    /// otherwise the task is woken at the deadline.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.conn.stage.load(Relaxed) != BETWEEN_REQUESTS {
            // In the handler: the body has its own timeout, and answering has none.
            return false;
        }
        let timeouts = self.conn.timeouts;
        let waiting = self.waiting;
        let deadline = *self.deadline.get_or_insert_with(|| {
            Instant::now() + if waiting == Waiting::Idle { timeouts.idle } else { timeouts.header }
        });
        if deadline < self.armed {
            self.sleep.as_mut().reset(deadline);
            self.armed = deadline;
        }
        while self.sleep.as_mut().poll(cx).is_ready() {
            if self.armed >= deadline {
                return true;
            }
            self.sleep.as_mut().reset(deadline);
            self.armed = deadline;
        }
        false
    }

    /// Before a write: the first byte of an answer ends its request.
    fn answering(&mut self) {
        if self.conn.stage.load(Relaxed) == ANSWERED {
            self.conn.stage.store(BETWEEN_REQUESTS, Relaxed);
            self.waiting = Waiting::Idle;
            self.deadline = None;
        }
    }
}

fn timed_out() -> io::Error {
    io::ErrorKind::TimedOut.into()
}

impl AsyncRead for TimedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before
                    && this.waiting != Waiting::Head
                    && this.conn.stage.load(Relaxed) == BETWEEN_REQUESTS
                {
                    // A request begins: the idle wait becomes a head read (the first request's
                    // header timeout already runs from the accept).
                    if this.waiting == Waiting::Idle {
                        this.deadline = None;
                    }
                    this.waiting = Waiting::Head;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.answering();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.answering();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Answers a connection over the limit with a 503 (over TLS with `tls`) and closes it.
fn refuse(stream: TcpStream, refusing: &Arc<AtomicUsize>, answer: Bytes, tls: Option<TlsAcceptor>) {
    if refusing.load(Relaxed) >= MAX_REFUSING {
        // Too many refusals lingering: this one is closed at once.
        return;
    }
    refusing.fetch_add(1, Relaxed);
    let refusing = refusing.clone();
    tokio::spawn(async move {
        // The handshake is within the linger too: a client that does not finish it in time
        // gets nothing.
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            match tls {
                None => linger(stream, &answer).await,
                Some(tls) => linger(tls.accept(stream).await?, &answer).await,
            }
        })
        .await;
        refusing.fetch_sub(1, Relaxed);
    });
}

/// Writes `answer`, closes the sending half, and waits for the client to close.
async fn linger(mut stream: impl AsyncRead + AsyncWrite + Unpin, answer: &[u8]) -> io::Result<()> {
    stream.write_all(answer).await?;
    stream.shutdown().await?;
    // Read what the client sent until it closes: closing a socket with unread data resets the
    // connection, and the client could lose the 503 before reading it.
    let mut sink = [0u8; 1024];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

/// The whole 503 a connection over the limit gets.
fn refusal_bytes() -> Vec<u8> {
    let response = api::refusal(
        &HeaderMap::new(),
        StatusCode::SERVICE_UNAVAILABLE,
        "The server has reached its connection limit; please retry later.",
    );
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\nconnection: close\r\n\
         retry-after: 1\r\n",
        response.body.len()
    )
    .into_bytes();
    for (name, value) in &response.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&response.body);
    out
}

/// How a request body was read.
enum BodyRead {
    /// To its end.
    Whole,
    /// Past `max_request_bytes`; the rest is left unread.
    TooLarge,
    /// It ended early or could not be read: a connection closed or reset mid-body, a chunked
    /// body cut short or malformed.
    Broken(hyper::Error),
    /// Not within the body timeout.
    Late,
}

/// Reads `body` into `buffer`, at most `limit` bytes, within `timeout`.
async fn read_body(
    body: &mut Incoming,
    buffer: &mut Vec<u8>,
    limit: usize,
    timeout: Duration,
) -> BodyRead {
    // The timer is made only when the body is not all there already, which most are.
    let mut late = pin!(None::<Sleep>);
    std::future::poll_fn(|cx| {
        loop {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(None) => return Poll::Ready(BodyRead::Whole),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(BodyRead::Broken(e)),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if buffer.len() + data.len() > limit {
                            return Poll::Ready(BodyRead::TooLarge);
                        }
                        buffer.extend_from_slice(&data);
                    }
                }
                Poll::Pending => {
                    if late.is_none() {
                        late.set(Some(tokio::time::sleep(timeout)));
                    }
                    if let Some(sleep) = late.as_mut().as_pin_mut()
                        && sleep.poll(cx).is_ready()
                    {
                        return Poll::Ready(BodyRead::Late);
                    }
                    return Poll::Pending;
                }
            }
        }
    })
    .await
}

async fn answer(conn: &Connection, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    conn.stage.store(IN_HANDLER, Relaxed);
    let response = match (conn.serves, conn.app.metrics()) {
        // The metrics listener's own requests are not counted.
        (Serves::Metrics, _) => scrape::respond(&conn.app, &req).await,
        (Serves::Api, Some(metrics)) => {
            let started = std::time::Instant::now();
            let route = api::route_template(req.uri().path());
            let method = HttpMetrics::method(req.method());
            let _in_flight = metrics.http.in_flight();
            let response = respond(conn, req).await;
            metrics.http.observe(route, method, response.status(), started.elapsed());
            response
        }
        (Serves::Api, None) => respond(conn, req).await,
    };
    conn.stage.store(ANSWERED, Relaxed);
    response
}

async fn respond(conn: &Connection, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    let app = &conn.app;
    let (parts, mut body) = req.into_parts();
    let mut buffer = Zeroizing::new(Vec::new());
    let read = if body.is_end_stream() {
        BodyRead::Whole
    } else {
        let limit = app.settings.max_request_bytes;
        read_body(&mut body, &mut buffer, limit, conn.timeouts.body).await
    };
    let started = std::time::Instant::now();
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    // Whether the connection must close after the answer: the rest of the body is unread.
    let (response, close) = match read {
        BodyRead::Whole | BodyRead::TooLarge => {
            let too_large = matches!(read, BodyRead::TooLarge);
            let request = api::Request {
                method: parts.method,
                path: path.clone(),
                query: parts.uri.query().map(str::to_owned),
                headers: parts.headers,
                body: SecretBytes::from(buffer),
                body_too_large: too_large,
                scheme: conn.scheme,
                trust_forwarded: conn.trust_forwarded,
            };
            (api::handle(app, request).await, too_large)
        }
        BodyRead::Broken(e) => {
            tracing::info!(%method, %path, error = %e, "request body did not arrive whole");
            let description = "The request body could not be read: it ended before it was whole.";
            (api::refusal(&parts.headers, StatusCode::BAD_REQUEST, description), true)
        }
        BodyRead::Late => {
            tracing::info!(%method, %path, "request body slower than [server] body_timeout_ms");
            let description = "The request body did not arrive within the time allowed.";
            (api::refusal(&parts.headers, StatusCode::REQUEST_TIMEOUT, description), true)
        }
    };
    app.settings.access_log.record(
        method.as_str(),
        &path,
        response.status.as_u16(),
        started.elapsed(),
    );
    let mut out = hyper::Response::new(Full::new(response.body));
    *out.status_mut() = response.status;
    *out.headers_mut() = response.headers;
    if close {
        out.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    out
}
