//! The async client: pipelines batches over a few mutual-TLS connections and reconnects.
//!
//! Each connection has a writer task (frames from many callers, flushed together) and a reader
//! task (responses matched to callers by request id), so any number of calls can be in flight
//! on one connection. A caller that finds nothing being written writes its own frame, sparing
//! the writer task's wake-up at low load. A connection that fails is dropped; the next call
//! opens a new one, trying the endpoints in order from the one that worked last.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
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
    /// Limit for one call, from send to response.
    pub request_timeout: Duration,
    /// Largest response body accepted.
    pub max_body_bytes: u32,
    /// How long a caller keeps its thread busy waiting for its answer before parking it (see
    /// [`crate::io::busy_poll`]); zero parks at once.
    pub busy_poll: Duration,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoints", &self.endpoints)
            .field("server_name", &self.server_name)
            .field("connections", &self.connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("busy_poll", &self.busy_poll)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// A configuration with defaults: 2 connections, 3 s to connect, 10 s per call, no busy
    /// polling.
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
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            busy_poll: Duration::ZERO,
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
}

type Waiter = oneshot::Sender<Result<Zeroizing<Vec<u8>>, Error>>;

/// A connection's writing side, taken by the writer task for frames queued and by a caller that
/// finds it free for its own frame.
type Writer = tokio::sync::Mutex<WriteHalf<TlsStream<TcpStream>>>;

struct Connection {
    endpoint: String,
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
        let waiters: Vec<Waiter> = match self.pending.lock() {
            Ok(mut p) => p.drain().map(|(_, w)| w).collect(),
            Err(poisoned) => poisoned.into_inner().drain().map(|(_, w)| w).collect(),
        };
        for w in waiters {
            let _ = w.send(Err(Error::ConnectionLost));
        }
    }

    fn take_waiter(&self, id: u64) -> Option<Waiter> {
        match self.pending.lock() {
            Ok(mut p) => p.remove(&id),
            Err(poisoned) => poisoned.into_inner().remove(&id),
        }
    }
}

impl Client {
    /// A client; connections open on first use.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        if config.endpoints.is_empty() {
            return Err(Error::Config("no proxy endpoints configured".into()));
        }
        let slots = (0..config.connections.max(1)).map(|_| tokio::sync::Mutex::new(None)).collect();
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                slots,
                next_slot: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                preferred_endpoint: AtomicUsize::new(0),
            }),
        })
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

    /// Sends `ops` as one frame and returns one outcome per operation, in order.
    pub async fn call_batch(&self, ops: Vec<Request>) -> Result<Vec<Outcome<Reply>>, Error> {
        let codes: Vec<OpCode> = ops.iter().map(Request::code).collect();
        let timeout = self.inner.config.request_timeout;
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            // The frame holds plaintexts: it is wiped once written.
            let frame = Zeroizing::new(RequestBatch::encode_frame(id, timeout_ms, &ops));
            match self.send(id, frame, timeout).await {
                Ok(body) => {
                    let (status, replies) =
                        ResponseBatch::decode_replies(&body, &codes).map_err(Error::Protocol)?;
                    if status != Status::Ok {
                        return Err(Error::Refused(status));
                    }
                    return Ok(replies);
                }
                // Our operations leave nothing behind in the HSM when their answer is lost, so
                // sending them again on a new connection is safe.
                Err(Error::ConnectionLost) if attempt < 2 => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn send(
        &self,
        id: u64,
        frame: Zeroizing<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let conn = self.connection().await?;
        let (tx, rx) = oneshot::channel();
        match conn.pending.lock() {
            Ok(mut p) => p.insert(id, tx),
            Err(_) => return Err(Error::ConnectionLost),
        };
        if conn.closed.load(Ordering::Acquire) {
            conn.take_waiter(id);
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
            conn.take_waiter(id);
            return Err(Error::ConnectionLost);
        }
        let answer = tokio::time::timeout(timeout, rx);
        match crate::io::busy_poll(answer, self.inner.config.busy_poll).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::ConnectionLost),
            Err(_) => {
                conn.take_waiter(id);
                Err(Error::Timeout)
            }
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
        let conn = self.connect().await?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    async fn connect(&self) -> Result<Arc<Connection>, Error> {
        let config = &self.inner.config;
        let count = config.endpoints.len();
        let first = self.inner.preferred_endpoint.load(Ordering::Relaxed);
        let mut last_err = None;
        for i in 0..count {
            let index = (first + i) % count;
            let Some(endpoint) = config.endpoints.get(index) else { continue };
            match tokio::time::timeout(config.connect_timeout, self.open(endpoint)).await {
                Ok(Ok(stream)) => {
                    self.inner.preferred_endpoint.store(index, Ordering::Relaxed);
                    return Ok(spawn_connection(endpoint.clone(), stream, config.max_body_bytes));
                }
                Ok(Err(source)) => {
                    tracing::warn!(%endpoint, error = %source, "hsm-proxy connection failed");
                    last_err = Some(Error::Connect { endpoint: endpoint.clone(), source });
                }
                Err(_) => {
                    tracing::warn!(%endpoint, "hsm-proxy connection timed out");
                    let source = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                    last_err = Some(Error::Connect { endpoint: endpoint.clone(), source });
                }
            }
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
    stream: TlsStream<TcpStream>,
    max_body: u32,
) -> Arc<Connection> {
    let (frames_tx, frames_rx) = mpsc::channel(WRITE_QUEUE_FRAMES);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (read_half, write_half) = tokio::io::split(stream);
    let writer = Arc::new(tokio::sync::Mutex::new(write_half));
    let conn = Arc::new(Connection {
        endpoint,
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
                tracing::warn!(endpoint = %conn.endpoint, reason, "hsm-proxy connection closed");
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
