//! The async client: pipelines batches over a few mutual-TLS connections and reconnects.
//!
//! Each connection has a writer task (frames from many callers, flushed together) and a reader
//! task (responses matched to callers by request id), so any number of calls can be in flight
//! on one connection. A caller that finds nothing being written writes its own frame, sparing
//! the writer task's wake-up at low load. A connection that fails is dropped; the next call
//! opens a new one, trying the endpoints in order from the one that worked last.
//!
//! Nothing piles up while a proxy is away: calls in progress are bounded ([`Error::Overloaded`]
//! beyond `max_calls`), each has a deadline that covers connecting too, and an endpoint that
//! refused a connection is not tried again before its backoff (doubling up to
//! `reconnect_backoff_max`) has passed, so that calls meanwhile fail at once.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use zeroize::Zeroizing;

use crate::frame::{DEFAULT_MAX_BODY_BYTES, FrameKind, HEADER_BYTES, Header};
use crate::{Op, OpCode, Outcome, Reply, Request, RequestBatch, ResponseBatch, Status};

/// Frames queued per connection before callers wait.
const WRITE_QUEUE_FRAMES: usize = 1024;

/// Why a call failed as a whole (per-operation failures are [`Status`]es in the results).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// No endpoint accepted a TCP connection or a TLS handshake.
    Connect {
        /// The last endpoint tried.
        endpoint: String,
        /// What went wrong there.
        source: io::Error,
    },
    /// The connection failed while the call was in flight (and again on the retry).
    ConnectionLost,
    /// No response within the request timeout.
    Timeout,
    /// The proxy refused the whole frame.
    Refused(Status),
    /// The proxy's response could not be decoded.
    Protocol(Status),
    /// A single-operation call failed with this status.
    Operation(Status),
    /// The TLS configuration could not be built (files, keys, certificates).
    Config(String),
    /// Too many calls already wait for a connection or an answer; nothing was sent.
    Overloaded,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { endpoint, source } => {
                write!(f, "cannot connect to {endpoint}: {source}")
            }
            Error::ConnectionLost => f.write_str("connection to hsm-proxy lost"),
            Error::Timeout => f.write_str("hsm-proxy did not answer in time"),
            Error::Refused(s) => write!(f, "hsm-proxy refused the request: {s}"),
            Error::Protocol(s) => write!(f, "bad response from hsm-proxy: {s}"),
            Error::Operation(s) => write!(f, "operation failed: {s}"),
            Error::Config(msg) => write!(f, "client configuration: {msg}"),
            Error::Overloaded => f.write_str("too many calls waiting for hsm-proxy"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// How to reach the proxies.
#[derive(Clone)]
pub struct ClientConfig {
    /// `host:port` of each proxy, tried in order.
    pub endpoints: Vec<String>,
    /// The name the proxy's certificate must carry.
    pub server_name: ServerName<'static>,
    /// TLS 1.3 with our client certificate; see [`tls_config_from_pem_files`].
    pub tls: Arc<rustls::ClientConfig>,
    /// Connections kept open; calls are spread over them.
    pub connections: usize,
    /// Limit for TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Limit for one call, from its start to its answer, connecting included.
    pub request_timeout: Duration,
    /// Calls waiting for a connection or an answer at once; a call beyond it fails at once
    /// with [`Error::Overloaded`].
    pub max_calls: usize,
    /// Wait before an endpoint that failed is tried again, doubled on each failure in a row.
    pub reconnect_backoff: Duration,
    /// The longest that wait grows to.
    pub reconnect_backoff_max: Duration,
    /// Largest response body accepted.
    pub max_body_bytes: u32,
    /// How long a caller keeps its thread busy waiting for its answer before parking it (see
    /// [`crate::io::busy_poll`]); zero parks at once.
    pub busy_poll: Duration,
    /// Told of every frame and failed connection, for metrics; `None` tells nobody.
    pub observer: Option<Arc<dyn Observer>>,
}

/// What the client tells of its traffic, per endpoint (an index into
/// [`ClientConfig::endpoints`]): for metrics. Called on the caller's task, so it must be quick.
pub trait Observer: Send + Sync {
    /// A frame of `ops` operations sent to `endpoint` ended `round_trip` after it was handed
    /// to the connection: answered (with one outcome per operation) or failed. A frame whose
    /// caller gave up at its deadline ends as [`Error::Timeout`].
    fn frame(
        &self,
        endpoint: usize,
        ops: usize,
        round_trip: Duration,
        result: &Result<Vec<Outcome<Reply>>, Error>,
    );
    /// A connection to `endpoint` could not be opened (refused, unreachable, handshake failed).
    fn connect_failed(&self, endpoint: usize);
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoints", &self.endpoints)
            .field("server_name", &self.server_name)
            .field("connections", &self.connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_calls", &self.max_calls)
            .field("reconnect_backoff", &self.reconnect_backoff)
            .field("reconnect_backoff_max", &self.reconnect_backoff_max)
            .field("busy_poll", &self.busy_poll)
            .field("observer", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// A configuration with defaults: 2 connections, 3 s to connect, 10 s per call, 4096 calls
    /// at once, reconnection backoff from 50 ms to 1 s, no busy polling.
    pub fn new(
        endpoints: Vec<String>,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, Error> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| Error::Config(format!("server name {server_name:?}: {e}")))?;
        Ok(Self {
            endpoints,
            server_name,
            tls,
            connections: 2,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_calls: 4096,
            reconnect_backoff: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(1),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            busy_poll: Duration::ZERO,
            observer: None,
        })
    }
}

/// Builds a TLS 1.3 client configuration from PEM files: the CA that issued the proxy's
/// certificate, and our certificate chain and key.
pub fn tls_config_from_pem_files(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let config_err =
        |what: &Path, e: &dyn fmt::Display| Error::Config(format!("{}: {e}", what.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| config_err(ca, &e))? {
        roots.add(cert.map_err(|e| config_err(ca, &e))?).map_err(|e| config_err(ca, &e))?;
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| config_err(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_err(cert, &e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| config_err(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| Error::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// A handle to the proxies; cheap to clone, share it.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Connection>>>>,
    next_slot: AtomicUsize,
    next_id: AtomicU64,
    /// The endpoint that last accepted a connection; new connections try it first.
    preferred_endpoint: AtomicUsize,
    /// One per endpoint, in the same order.
    backoff: Vec<Mutex<Backoff>>,
    /// A permit per call in progress (`max_calls`).
    calls: Semaphore,
}

/// An endpoint's failures in a row, and when it may be tried again.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
    /// The last failure, repeated to calls that find the endpoint waiting.
    last_error: Option<(io::ErrorKind, String)>,
}

impl Backoff {
    /// The error to give while the endpoint waits, or `None` when it may be tried.
    fn waiting(&self, now: Instant) -> Option<io::Error> {
        let retry_at = self.retry_at.filter(|at| *at > now)?;
        let (kind, text) = self.last_error.clone().unwrap_or((io::ErrorKind::Other, String::new()));
        let wait = retry_at.duration_since(now).as_millis();
        Some(io::Error::new(kind, format!("{text} (next attempt in {wait} ms)")))
    }

    fn failed(&mut self, error: &io::Error, config: &ClientConfig) {
        self.failures = self.failures.saturating_add(1);
        let doublings = self.failures.saturating_sub(1).min(16);
        let wait = config.reconnect_backoff.saturating_mul(1 << doublings);
        self.retry_at = Some(Instant::now() + wait.min(config.reconnect_backoff_max));
        self.last_error = Some((error.kind(), error.to_string()));
    }
}

type Waiter = oneshot::Sender<Result<Zeroizing<Vec<u8>>, Error>>;

/// A connection's writing side, taken by the writer task for frames queued and by a caller that
/// finds it free for its own frame.
type Writer = tokio::sync::Mutex<WriteHalf<TlsStream<TcpStream>>>;

struct Connection {
    endpoint: String,
    /// `endpoint`'s place in [`ClientConfig::endpoints`].
    endpoint_index: usize,
    frames: mpsc::Sender<Zeroizing<Vec<u8>>>,
    writer: Arc<Writer>,
    pending: Mutex<HashMap<u64, Waiter>>,
    closed: AtomicBool,
    /// Tells the reader task to stop when the last handle to this connection goes away.
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.endpoint)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Connection {
    fn fail_all(&self) {
        self.closed.store(true, Ordering::Release);
        let waiters: Vec<Waiter> = lock_pending(&self.pending).drain().map(|(_, w)| w).collect();
        for w in waiters {
            let _ = w.send(Err(Error::ConnectionLost));
        }
    }

    fn take_waiter(&self, id: u64) -> Option<Waiter> {
        lock_pending(&self.pending).remove(&id)
    }
}

impl Client {
    /// A client; connections open on first use.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        if config.endpoints.is_empty() {
            return Err(Error::Config("no proxy endpoints configured".into()));
        }
        let slots = (0..config.connections.max(1)).map(|_| tokio::sync::Mutex::new(None)).collect();
        let backoff = config.endpoints.iter().map(|_| Mutex::new(Backoff::default())).collect();
        let calls = Semaphore::new(config.max_calls.clamp(1, Semaphore::MAX_PERMITS));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                slots,
                next_slot: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                preferred_endpoint: AtomicUsize::new(0),
                backoff,
                calls,
            }),
        })
    }

    /// Calls in progress: waiting for a connection or an answer.
    pub fn calls_in_progress(&self) -> usize {
        let max = self.inner.config.max_calls.clamp(1, Semaphore::MAX_PERMITS);
        max.saturating_sub(self.inner.calls.available_permits())
    }

    /// Answers awaited on the open connections (each call in progress awaits at most one).
    pub fn answers_awaited(&self) -> usize {
        self.inner
            .slots
            .iter()
            .filter_map(|slot| slot.try_lock().ok().and_then(|conn| conn.clone()))
            .map(|conn| lock_pending(&conn.pending).len())
            .sum()
    }

    /// The endpoint new connections try first (an index into [`ClientConfig::endpoints`]): the
    /// last one that accepted a connection.
    pub fn active_endpoint(&self) -> usize {
        self.inner.preferred_endpoint.load(Ordering::Relaxed)
    }

    /// Runs one operation and returns its typed reply.
    pub async fn call<O: Op>(&self, op: O) -> Result<O::Reply, Error> {
        let mut results = self.call_batch(vec![op.into()]).await?;
        match results.pop() {
            Some(Ok(reply)) => O::Reply::try_from(reply).map_err(Error::Protocol),
            Some(Err(status)) => Err(Error::Operation(status)),
            None => Err(Error::Protocol(Status::MalformedFrame)),
        }
    }

    /// Sends `ops` as one frame and returns one outcome per operation, in order; within the
    /// request timeout.
    pub async fn call_batch(&self, ops: Vec<Request>) -> Result<Vec<Outcome<Reply>>, Error> {
        self.call_batch_by(ops, Instant::now() + self.inner.config.request_timeout).await
    }

    /// [`Client::call_batch`] with a deadline of the caller's: connecting, sending and waiting
    /// all end there, with [`Error::Timeout`], and the proxy is told to give up then too.
    pub async fn call_batch_by(
        &self,
        ops: Vec<Request>,
        deadline: Instant,
    ) -> Result<Vec<Outcome<Reply>>, Error> {
        let Ok(_call) = self.inner.calls.try_acquire() else {
            return Err(Error::Overloaded);
        };
        let attempts = self.attempts(ops, deadline);
        match tokio::time::timeout_at(deadline.into(), attempts).await {
            Ok(result) => result,
            // Whatever the call left behind (its waiter, a half-written frame) is undone as its
            // future is dropped.
            Err(_) => Err(Error::Timeout),
        }
    }

    async fn attempts(
        &self,
        ops: Vec<Request>,
        deadline: Instant,
    ) -> Result<Vec<Outcome<Reply>>, Error> {
        let codes: Vec<OpCode> = ops.iter().map(Request::code).collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let left = deadline.saturating_duration_since(Instant::now());
            // At least 1 ms: 0 would ask the proxy for its default deadline.
            let timeout_ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX).max(1);
            // The frame holds plaintexts: it is wiped once written.
            let frame = Zeroizing::new(RequestBatch::encode_frame(id, timeout_ms, &ops));
            let mut watch = Watch::new(self.inner.config.observer.as_deref(), ops.len());
            let result = match self.send(id, frame, &mut watch.endpoint).await {
                Ok(body) => match ResponseBatch::decode_replies(&body, &codes) {
                    Ok((Status::Ok, replies)) => Ok(replies),
                    Ok((status, _)) => Err(Error::Refused(status)),
                    Err(status) => Err(Error::Protocol(status)),
                },
                Err(e) => Err(e),
            };
            watch.ended(&result);
            match result {
                // Our operations leave nothing behind in the HSM when their answer is lost, so
                // sending them again on a new connection is safe.
                Err(Error::ConnectionLost) if attempt < 2 => continue,
                other => return other,
            }
        }
    }

    /// Sends a frame and waits for its answer; `endpoint` is set once a connection is found.
    async fn send(
        &self,
        id: u64,
        frame: Zeroizing<Vec<u8>>,
        endpoint: &mut Option<usize>,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let conn = self.connection().await?;
        *endpoint = Some(conn.endpoint_index);
        let (tx, rx) = oneshot::channel();
        lock_pending(&conn.pending).insert(id, tx);
        // However the call ends (answered, failed, timed out, or dropped), its waiter goes.
        let _waiter = Unwait { conn: &conn, id };
        if conn.closed.load(Ordering::Acquire) {
            return Err(Error::ConnectionLost);
        }
        // Written by this task when no other frame is being written, sparing a wake-up of the
        // writer task; otherwise queued for it.
        let sent = match conn.writer.try_lock() {
            Ok(mut out) => {
                let cut_off = CutOff(Some(&conn));
                let written = out.write_all(&frame).await.and(out.flush().await);
                cut_off.disarm();
                if written.is_err() {
                    conn.fail_all();
                }
                written.is_ok()
            }
            Err(_) => conn.frames.send(frame).await.is_ok(),
        };
        if !sent {
            return Err(Error::ConnectionLost);
        }
        match crate::io::busy_poll(rx, self.inner.config.busy_poll).await {
            Ok(result) => result,
            Err(_) => Err(Error::ConnectionLost),
        }
    }

    async fn connection(&self) -> Result<Arc<Connection>, Error> {
        let n = self.inner.slots.len();
        let start = self.inner.next_slot.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = self.inner.slots.get(start % n) else {
            return Err(Error::Config("no connection slots".into()));
        };
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref()
            && !conn.closed.load(Ordering::Acquire)
        {
            return Ok(conn.clone());
        }
        match self.connect().await {
            Ok(conn) => {
                *guard = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                drop(guard);
                // Another slot's connection may still be up (only this one was lost).
                self.inner
                    .slots
                    .iter()
                    .filter_map(|slot| slot.try_lock().ok().and_then(|conn| conn.clone()))
                    .find(|conn| !conn.closed.load(Ordering::Acquire))
                    .ok_or(e)
            }
        }
    }

    async fn connect(&self) -> Result<Arc<Connection>, Error> {
        let config = &self.inner.config;
        let count = config.endpoints.len();
        let first = self.inner.preferred_endpoint.load(Ordering::Relaxed);
        let mut last_err = None;
        for i in 0..count {
            let index = (first + i) % count;
            let (Some(endpoint), Some(backoff)) =
                (config.endpoints.get(index), self.inner.backoff.get(index))
            else {
                continue;
            };
            if let Some(source) = lock_backoff(backoff).waiting(Instant::now()) {
                last_err = Some(Error::Connect { endpoint: endpoint.clone(), source });
                continue;
            }
            let source =
                match tokio::time::timeout(config.connect_timeout, self.open(endpoint)).await {
                    Ok(Ok(stream)) => {
                        let was_down = std::mem::take(&mut *lock_backoff(backoff)).failures > 0;
                        if was_down {
                            tracing::info!(%endpoint, "hsm-proxy reachable again");
                        }
                        self.inner.preferred_endpoint.store(index, Ordering::Relaxed);
                        return Ok(spawn_connection(
                            endpoint.clone(),
                            index,
                            stream,
                            config.max_body_bytes,
                        ));
                    }
                    Ok(Err(source)) => source,
                    Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                };
            let mut state = lock_backoff(backoff);
            // The first failure in a row is worth a warning; the retries after it are not.
            if state.failures == 0 {
                tracing::warn!(%endpoint, error = %source, "hsm-proxy connection failed");
            } else {
                tracing::debug!(%endpoint, error = %source, "hsm-proxy connection failed again");
            }
            state.failed(&source, config);
            drop(state);
            if let Some(observer) = &config.observer {
                observer.connect_failed(index);
            }
            last_err = Some(Error::Connect { endpoint: endpoint.clone(), source });
        }
        Err(last_err.unwrap_or(Error::Config("no proxy endpoints configured".into())))
    }

    async fn open(&self, endpoint: &str) -> io::Result<TlsStream<TcpStream>> {
        let config = &self.inner.config;
        let tcp = TcpStream::connect(endpoint).await?;
        tcp.set_nodelay(true)?;
        let connector = TlsConnector::from(config.tls.clone());
        connector.connect(config.server_name.clone(), tcp).await
    }
}

/// Removes a call's waiter from its connection when the call ends, however it ends.
struct Unwait<'a> {
    conn: &'a Connection,
    id: u64,
}

impl Drop for Unwait<'_> {
    fn drop(&mut self) {
        self.conn.take_waiter(self.id);
    }
}

/// Tells the observer how a frame ended, once it has an endpoint: when its result is in, or,
/// for a caller that gave up at its deadline (its future dropped), as a timeout.
struct Watch<'a> {
    observer: Option<&'a dyn Observer>,
    ops: usize,
    started: Instant,
    endpoint: Option<usize>,
    told: bool,
}

impl<'a> Watch<'a> {
    fn new(observer: Option<&'a dyn Observer>, ops: usize) -> Watch<'a> {
        Watch { observer, ops, started: Instant::now(), endpoint: None, told: false }
    }

    fn ended(&mut self, result: &Result<Vec<Outcome<Reply>>, Error>) {
        self.told = true;
        if let (Some(observer), Some(endpoint)) = (self.observer, self.endpoint) {
            observer.frame(endpoint, self.ops, self.started.elapsed(), result);
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if !self.told {
            self.ended(&Err(Error::Timeout));
        }
    }
}

fn lock_pending(
    m: &Mutex<HashMap<u64, Waiter>>,
) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock_backoff(m: &Mutex<Backoff>) -> std::sync::MutexGuard<'_, Backoff> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fails a connection whose caller was dropped midway through writing its frame: the stream may
/// end inside a frame, so nothing more can be sent on it.
struct CutOff<'a>(Option<&'a Connection>);

impl CutOff<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CutOff<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.0 {
            tracing::warn!(endpoint = %conn.endpoint, "call cancelled while writing its frame");
            conn.fail_all();
        }
    }
}

fn spawn_connection(
    endpoint: String,
    endpoint_index: usize,
    stream: TlsStream<TcpStream>,
    max_body: u32,
) -> Arc<Connection> {
    let (frames_tx, frames_rx) = mpsc::channel(WRITE_QUEUE_FRAMES);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (read_half, write_half) = tokio::io::split(stream);
    let writer = Arc::new(tokio::sync::Mutex::new(write_half));
    let conn = Arc::new(Connection {
        endpoint,
        endpoint_index,
        frames: frames_tx,
        writer: writer.clone(),
        pending: Mutex::new(HashMap::new()),
        closed: AtomicBool::new(false),
        stop,
    });
    // The tasks hold only weak references: when the client drops its last handle, the frame
    // channel closes (ending the writer) and `stop` fires (ending the reader).
    tokio::spawn(write_loop(Arc::downgrade(&conn), writer, frames_rx));
    tokio::spawn(read_loop(Arc::downgrade(&conn), read_half, max_body, stopped));
    conn
}

async fn write_loop(
    conn: Weak<Connection>,
    half: Arc<Writer>,
    mut frames: mpsc::Receiver<Zeroizing<Vec<u8>>>,
) {
    // Ends when the connection's last handle is dropped (the channel closes), a write fails, or
    // a caller cancelled midway through its own frame has retired the connection.
    let usable = || conn.upgrade().is_some_and(|c| !c.closed.load(Ordering::Acquire));
    let _ = crate::io::write_frames(&half, &mut frames, usable).await;
    if let Some(c) = conn.upgrade() {
        c.fail_all();
    }
}

async fn read_loop(
    conn: Weak<Connection>,
    mut half: ReadHalf<TlsStream<TcpStream>>,
    max_body: u32,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut half, max_body) => frame,
            _ = stopped.changed() => break,
        };
        let Some(conn) = conn.upgrade() else { break };
        match frame {
            Ok((header, body)) => {
                if let Some(waiter) = conn.take_waiter(header.request_id) {
                    let _ = waiter.send(Ok(body));
                }
            }
            Err(reason) => {
                let waiting = lock_pending(&conn.pending).len();
                // A proxy closes connections that stay idle: only one with calls on it is news.
                if waiting > 0 {
                    tracing::warn!(endpoint = %conn.endpoint, reason, waiting, "hsm-proxy connection closed");
                } else {
                    tracing::debug!(endpoint = %conn.endpoint, reason, "hsm-proxy connection closed");
                }
                break;
            }
        }
    }
    if let Some(c) = conn.upgrade() {
        c.fail_all();
    }
}

async fn read_frame(
    half: &mut ReadHalf<TlsStream<TcpStream>>,
    max_body: u32,
) -> Result<(Header, Zeroizing<Vec<u8>>), &'static str> {
    let mut header = [0u8; HEADER_BYTES];
    half.read_exact(&mut header).await.map_err(|_| "read failed")?;
    let header = match Header::decode(&header, max_body) {
        Ok(h) if h.kind == FrameKind::Response => h,
        Ok(_) | Err(_) => return Err("malformed frame header"),
    };
    let len = usize::try_from(header.body_len).map_err(|_| "frame too large")?;
    let mut body = Zeroizing::new(vec![0u8; len]);
    half.read_exact(&mut body).await.map_err(|_| "read failed")?;
    Ok((header, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::Health;

    /// A TLS configuration that never gets used: these endpoints fail before any handshake
    /// ends.
    fn tls() -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap_or_else(|e| panic!("{e}"))
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Arc::new(config)
    }

    fn client(endpoint: String, tune: impl FnOnce(&mut ClientConfig)) -> Client {
        let mut config =
            ClientConfig::new(vec![endpoint], "hsm-proxy", tls()).unwrap_or_else(|e| panic!("{e}"));
        tune(&mut config);
        Client::new(config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// An address where nothing listens.
    async fn dead_address() -> String {
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        drop(listener);
        addr.to_string()
    }

    /// An address that accepts TCP connections and never says a word; counts them.
    async fn silent_address() -> (String, Arc<AtomicUsize>) {
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                held.push(tcp);
            }
        });
        (addr.to_string(), accepted)
    }

    /// Runs `n` calls at once; returns their errors, in no order.
    async fn calls(client: &Client, n: usize) -> Vec<Error> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let c = client.clone();
                tokio::spawn(async move { c.call(Health).await })
            })
            .collect();
        let mut errors = Vec::new();
        for task in tasks {
            match task.await {
                Ok(Err(e)) => errors.push(e),
                Ok(Ok(_)) => panic!("a call to nowhere succeeded"),
                Err(e) => panic!("a call panicked: {e}"),
            }
        }
        errors
    }

    #[tokio::test(flavor = "current_thread")]
    async fn with_nothing_listening_calls_fail_at_once_and_leave_nothing_behind() {
        let client = client(dead_address().await, |_| {});
        let started = Instant::now();
        let errors = calls(&client, 5000).await;
        let took = started.elapsed();
        assert_eq!(errors.len(), 5000);
        assert!(took < Duration::from_secs(3), "5000 failed calls took {took:?}");
        // Started all at once, more than `max_calls` (4096) are in progress at one moment: the
        // rest are refused without waiting.
        let refused = errors.iter().filter(|e| matches!(e, Error::Overloaded)).count();
        let unreachable = errors.iter().filter(|e| matches!(e, Error::Connect { .. })).count();
        assert_eq!(refused + unreachable, 5000);
        assert!(unreachable >= 4096, "{refused} refused as overloaded");
        // The endpoint waits out its backoff: the calls after the first failures say so.
        assert!(errors.iter().any(|e| e.to_string().contains("next attempt in")));
        assert_eq!(client.calls_in_progress(), 0);
        assert_eq!(client.answers_awaited(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_silent_endpoint_costs_a_few_connect_timeouts_not_one_per_call() {
        let (addr, accepted) = silent_address().await;
        let client = client(addr, |c| {
            c.connections = 1;
            c.connect_timeout = Duration::from_millis(200);
            c.request_timeout = Duration::from_millis(500);
        });
        let started = Instant::now();
        let errors = calls(&client, 3000).await;
        let took = started.elapsed();
        assert_eq!(errors.len(), 3000);
        // Each call ends by its deadline at the latest, whatever it waited on.
        assert!(took < Duration::from_secs(2), "3000 calls took {took:?}");
        assert!(
            errors.iter().all(|e| matches!(e, Error::Connect { .. } | Error::Timeout)),
            "{:?}",
            errors.iter().find(|e| !matches!(e, Error::Connect { .. } | Error::Timeout))
        );
        let tries = accepted.load(Ordering::Relaxed);
        assert!((1..=4).contains(&tries), "{tries} connection attempts");
        assert_eq!(client.calls_in_progress(), 0);
        assert_eq!(client.answers_awaited(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn calls_beyond_the_bound_fail_at_once_and_the_rest_by_their_deadline() {
        let (addr, _) = silent_address().await;
        let client = client(addr, |c| {
            c.max_calls = 10;
            c.connect_timeout = Duration::from_secs(30);
            c.request_timeout = Duration::from_millis(300);
        });
        let waiting: Vec<_> = (0..10)
            .map(|_| {
                let c = client.clone();
                tokio::spawn(async move { c.call(Health).await })
            })
            .collect();
        while client.calls_in_progress() < 10 {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        let over = client.call(Health).await;
        assert!(matches!(over, Err(Error::Overloaded)), "{over:?}");
        assert!(started.elapsed() < Duration::from_millis(50));
        for task in waiting {
            let result = task.await.unwrap_or_else(|e| panic!("{e}"));
            assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(client.calls_in_progress(), 0);
        // Places are given back: the next call is not refused as overloaded.
        let next = client.call(Health).await;
        assert!(matches!(next, Err(Error::Timeout)), "{next:?}");
    }

    #[test]
    fn the_backoff_doubles_up_to_its_bound() {
        let mut config = ClientConfig::new(vec!["x:1".into()], "hsm-proxy", tls())
            .unwrap_or_else(|e| panic!("{e}"));
        config.reconnect_backoff = Duration::from_millis(100);
        config.reconnect_backoff_max = Duration::from_millis(350);
        let mut backoff = Backoff::default();
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        let mut waits = Vec::new();
        for _ in 0..5 {
            let before = Instant::now();
            backoff.failed(&refused, &config);
            let wait = backoff.retry_at.map(|at| at.duration_since(before)).unwrap_or_default();
            waits.push(wait.as_millis() / 50 * 50);
        }
        assert_eq!(waits, vec![100, 200, 350, 350, 350]);
        let waiting = backoff.waiting(Instant::now()).unwrap_or_else(|| panic!("not waiting"));
        assert_eq!(waiting.kind(), io::ErrorKind::ConnectionRefused);
        assert!(backoff.waiting(Instant::now() + Duration::from_secs(1)).is_none());
    }
}
