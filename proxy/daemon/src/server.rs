//! The listener: accepts mutual-TLS connections, reads frames, and answers each batch.
//!
//! Every header is checked before its body is read. A header that cannot be trusted (wrong
//! magic, version or flags, or a body over the limit) is answered with a refusal and the
//! connection is closed, since the next frame boundary is unknown; a body that is malformed
//! inside its announced length is refused alone and the connection goes on. Batches run
//! concurrently, up to a per-connection limit, and are answered by request id as they finish;
//! a small one that finds the pool idle runs at once, on this task (see [`Pool::run_inline`]).
//! Peers are held to timeouts: the TLS handshake, each frame from its first byte, and silence
//! while nothing is in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hsm_proxy_proto::frame::{FrameKind, HEADER_BYTES, Header};
use hsm_proxy_proto::io::spin_on;
use hsm_proxy_proto::{RequestBatch, ResponseBatch, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use zeroize::Zeroizing;

use crate::metrics::Metrics;
use crate::pool::Pool;

/// Limits the listener enforces.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServerSettings {
    pub(crate) max_body_bytes: u32,
    pub(crate) max_batch_ops: u32,
    pub(crate) max_connections: usize,
    pub(crate) max_handshakes: usize,
    pub(crate) max_frames_in_flight: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) frame_timeout: Duration,
    /// Zero: never.
    pub(crate) idle_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) busy_poll: Duration,
    pub(crate) default_deadline: Duration,
    pub(crate) max_deadline: Duration,
}

/// Accepts connections until `shutdown` fires, then waits (up to the drain timeout) for the
/// frames in flight to be answered.
///
/// Every connection is accepted at once, so none waits in the kernel's backlog behind peers
/// that never start TLS: each handshake runs on its own task, under its own timeout, holding
/// one of `max_handshakes` places; a connection past it takes one of `max_connections`. A
/// connection that finds no place is closed at once.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    pool: Arc<Pool>,
    settings: ServerSettings,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let handshakes = Arc::new(Semaphore::new(settings.max_handshakes));
    let refusals = Arc::new(RefusalLog::new("hsm-proxy"));
    // An inline run blocks its runtime thread: only where another thread serves the rest.
    let inline =
        pool.runs_inline() && tokio::runtime::Handle::current().metrics().num_workers() > 1;
    let spinner = Arc::new(AtomicBool::new(false));
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // No handshake is spent on a connection that would find no place after it.
        if connections.available_permits() == 0 {
            metrics.connections_refused.with_label_values(&["proxy", "connections"]).inc();
            refusals.refused(peer, "max_connections");
            continue;
        }
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            metrics.connections_refused.with_label_values(&["proxy", "handshakes"]).inc();
            refusals.refused(peer, "max_handshakes");
            continue;
        };
        let conn = Connection {
            pool: pool.clone(),
            inline,
            settings,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            spinner: spinner.clone(),
        };
        let (acceptor, connections, refusals) =
            (acceptor.clone(), connections.clone(), refusals.clone());
        tokio::spawn(async move {
            let Some(tls) = conn.handshake(&acceptor, tcp, peer).await else { return };
            drop(handshake);
            if *conn.shutdown.borrow() {
                return;
            }
            let Ok(permit) = connections.try_acquire_owned() else {
                conn.metrics.connections_refused.with_label_values(&["proxy", "connections"]).inc();
                refusals.refused(peer, "max_connections");
                return;
            };
            conn.run(tls, peer).await;
            drop(permit);
        });
    }
    let all = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
    match tokio::time::timeout(settings.drain_timeout, connections.acquire_many(all)).await {
        Ok(_) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!("drain timeout: closing connections with frames in flight"),
    }
}

/// Warns of connections closed at accept at most once per [`RefusalLog::EVERY`], with how many
/// there were since the last warning: a flood of them must not flood the log too.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    listener: &'static str,
    state: std::sync::Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    const EVERY: Duration = Duration::from_secs(10);

    pub(crate) fn new(listener: &'static str) -> RefusalLog {
        RefusalLog { listener, state: std::sync::Mutex::new((None, 0)) }
    }

    /// Counts a refusal, and warns if the last warning is old enough.
    pub(crate) fn refused(&self, peer: std::net::SocketAddr, limit: &'static str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, since) = &mut *state;
        *since += 1;
        let now = Instant::now();
        if last.is_none_or(|at| now.duration_since(at) >= Self::EVERY) {
            tracing::warn!(
                listener = self.listener,
                %peer,
                limit,
                refused = *since,
                "connection limit reached: new connections are closed at once"
            );
            *last = Some(now);
            *since = 0;
        }
    }
}

struct Connection {
    pool: Arc<Pool>,
    /// Whether small frames may run on this task's thread when the pool is idle.
    inline: bool,
    settings: ServerSettings,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    /// Held by the connection spinning for its next frame, if any (see [`SpinClaim`]).
    spinner: Arc<AtomicBool>,
}

/// The right to spin for a next frame (`[server] busy_poll_us`), held by one connection at a
/// time and only while no work is with the workers: spinning saves the wake-up of an idle CPU,
/// which is what a lone client waits on. A second spinner would keep a second CPU busy for the
/// same purpose, and under load, when answers and frames wake the threads anyway, spinning takes
/// CPU time from the workers and the HSM library.
struct SpinClaim<'a>(&'a AtomicBool);

impl<'a> SpinClaim<'a> {
    fn take(flag: &'a AtomicBool) -> Option<SpinClaim<'a>> {
        flag.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SpinClaim(flag))
    }
}

impl Drop for SpinClaim<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Connection {
    /// The TLS handshake, within the handshake timeout; `None` when it failed (logged, counted).
    async fn handshake(
        &self,
        acceptor: &TlsAcceptor,
        tcp: TcpStream,
        peer: std::net::SocketAddr,
    ) -> Option<TlsStream<TcpStream>> {
        let _ = tcp.set_nodelay(true);
        match tokio::time::timeout(self.settings.handshake_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                let reason = handshake_failure_reason(&e);
                self.metrics.handshake_failures.with_label_values(&[reason]).inc();
                tracing::warn!(%peer, reason, error = %e, "TLS handshake refused");
                None
            }
            Err(_) => {
                self.metrics.handshake_failures.with_label_values(&["timeout"]).inc();
                // Debug only: anyone who can reach the port can cause these by the thousand.
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }

    async fn run(mut self, tls: TlsStream<TcpStream>, peer: std::net::SocketAddr) {
        self.metrics.connections.inc();
        tracing::debug!(%peer, "client connected");
        let (read_half, write_half) = tokio::io::split(tls);
        let (frames_tx, frames_rx) = mpsc::channel(self.settings.max_frames_in_flight + 1);
        let write_half = Arc::new(tokio::sync::Mutex::new(write_half));
        let writer = tokio::spawn(write_loop(write_half.clone(), frames_rx));
        let in_flight = Arc::new(Semaphore::new(self.settings.max_frames_in_flight));
        let reason = self.read_loop(read_half, &write_half, &frames_tx, &in_flight).await;
        // Answer what is in flight before closing.
        let all = u32::try_from(self.settings.max_frames_in_flight).unwrap_or(u32::MAX);
        let _ = in_flight.acquire_many(all).await;
        drop(frames_tx);
        let _ = writer.await;
        self.metrics.connections.dec();
        tracing::debug!(%peer, reason, "client disconnected");
    }

    /// Reads frames until the peer closes, a header is refused, a frame stalls, the connection
    /// idles out, or shutdown; says which.
    async fn read_loop(
        &mut self,
        mut half: ReadHalf<TlsStream<TcpStream>>,
        out: &Writer,
        frames: &mpsc::Sender<Zeroizing<Vec<u8>>>,
        in_flight: &Arc<Semaphore>,
    ) -> &'static str {
        loop {
            let mut header = [0u8; HEADER_BYTES];
            let first = {
                let (shutdown, pool) = (&mut self.shutdown, &self.pool);
                let (idle, all) = (self.settings.idle_timeout, self.settings.max_frames_in_flight);
                let next = async {
                    loop {
                        // A read is safe to drop: rustls keeps what it has decrypted.
                        tokio::select! {
                            read = half.read(&mut header) => return match read {
                                Ok(0) | Err(_) => Err("closed by peer"),
                                Ok(n) => Ok(n),
                            },
                            _ = shutdown.changed() => return Err("shutdown"),
                            () = idle_for(idle) => {
                                // Waiting for answers is not idle.
                                if in_flight.available_permits() == all {
                                    return Err("idle");
                                }
                            }
                        }
                    }
                };
                let mut next = std::pin::pin!(next);
                let claim = if self.settings.busy_poll.is_zero() || !pool.idle() {
                    None
                } else {
                    SpinClaim::take(&self.spinner)
                };
                let spun = match claim {
                    Some(_claim) => {
                        spin_on(next.as_mut(), self.settings.busy_poll, || pool.idle()).await
                    }
                    None => None,
                };
                match spun {
                    Some(first) => first,
                    None => next.await,
                }
            };
            let got = match first {
                Ok(n) => n,
                Err(reason) => {
                    if reason == "idle" {
                        self.timed_out("idle");
                    }
                    return reason;
                }
            };
            // From its first byte, the whole frame must come within the frame timeout.
            let frame_deadline = tokio::time::Instant::now() + self.settings.frame_timeout;
            let rest = header.get_mut(got..).unwrap_or_default();
            match tokio::time::timeout_at(frame_deadline, half.read_exact(rest)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return "truncated frame",
                Err(_) => {
                    self.timed_out("frame");
                    return "frame timed out";
                }
            }
            let header = match Header::decode(&header, self.settings.max_body_bytes) {
                Ok(h) if h.kind == FrameKind::Request => h,
                Ok(h) => {
                    self.refuse(frames, h.request_id, Status::MalformedFrame).await;
                    return "response frame from client";
                }
                Err(e) => {
                    self.refuse(frames, e.request_id.unwrap_or(0), e.status).await;
                    return "bad frame header";
                }
            };
            let mut body = Zeroizing::new(vec![0u8; usize_of(header.body_len)]);
            match tokio::time::timeout_at(frame_deadline, half.read_exact(&mut body)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return "truncated frame",
                Err(_) => {
                    self.timed_out("frame");
                    return "frame timed out";
                }
            }
            let (timeout_ms, ops) = match RequestBatch::decode(&body, self.settings.max_batch_ops) {
                Ok(decoded) => decoded,
                Err(status) => {
                    self.refuse(frames, header.request_id, status).await;
                    continue;
                }
            };
            // Plaintexts now live in the decoded operations; wipe the receive buffer.
            drop(body);
            self.metrics.batch_size.observe(ops.len() as f64);
            let requested = Duration::from_millis(u64::from(timeout_ms));
            let budget = if timeout_ms == 0 { self.settings.default_deadline } else { requested };
            let deadline = Instant::now() + budget.min(self.settings.max_deadline);
            let ops = if self.inline {
                match self.pool.run_inline(ops, deadline) {
                    Ok(results) => {
                        let frame = ResponseBatch::encode_frame(header.request_id, &results);
                        let frame = Zeroizing::new(frame);
                        drop(results);
                        // Written from here when no other answer is being written, sparing a
                        // wake-up of the writer task; otherwise the writer takes it.
                        match out.try_lock() {
                            Ok(mut out) => {
                                if out.write_all(&frame).await.and(out.flush().await).is_err() {
                                    return "write failed";
                                }
                            }
                            Err(_) => {
                                let _ = frames.send(frame).await;
                            }
                        }
                        continue;
                    }
                    Err(ops) => ops,
                }
            } else {
                ops
            };
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return "closing";
            };
            let pool = self.pool.clone();
            let frames = frames.clone();
            let request_id = header.request_id;
            tokio::spawn(async move {
                let results = pool.run(ops, deadline).await;
                let frame = Zeroizing::new(ResponseBatch::encode_frame(request_id, &results));
                drop(results);
                let _ = frames.send(frame).await;
                drop(permit);
            });
        }
    }

    fn timed_out(&self, phase: &'static str) {
        self.metrics.connections_timed_out.with_label_values(&["proxy", phase]).inc();
    }

    async fn refuse(&self, frames: &mpsc::Sender<Zeroizing<Vec<u8>>>, id: u64, status: Status) {
        self.metrics.frames_refused.with_label_values(&[status.name()]).inc();
        tracing::info!(request_id = id, %status, "request frame refused");
        let _ = frames.send(Zeroizing::new(ResponseBatch::encode_refusal(id, status))).await;
    }
}

/// A connection's writing side: the writer task's, and the reading task's for answers it
/// makes itself.
type Writer = tokio::sync::Mutex<WriteHalf<TlsStream<TcpStream>>>;

/// Writes answers as they come, those already waiting gathered into one write, until the
/// reading side is done and every answer sent; then closes the stream.
async fn write_loop(half: Arc<Writer>, mut frames: mpsc::Receiver<Zeroizing<Vec<u8>>>) {
    if hsm_proxy_proto::io::write_frames(&half, &mut frames, || true).await.is_err() {
        return;
    }
    let _ = half.lock().await.shutdown().await;
}

/// Completes once `limit` has passed; never when it is zero.
async fn idle_for(limit: Duration) {
    if limit.is_zero() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(limit).await;
}

fn usize_of(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// A metric label for a failed handshake.
fn handshake_failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error as TlsError};
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<TlsError>()) else {
        return "io";
    };
    match tls {
        TlsError::NoCertificatesPresented => "no_client_certificate",
        TlsError::InvalidCertificate(CertificateError::NotValidForName)
        | TlsError::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            "client_not_allowed"
        }
        TlsError::InvalidCertificate(CertificateError::UnknownIssuer)
        | TlsError::InvalidCertificate(CertificateError::BadSignature) => "unknown_issuer",
        TlsError::InvalidCertificate(_) => "invalid_certificate",
        TlsError::PeerIncompatible(_) => "incompatible_peer",
        TlsError::InvalidMessage(_) => "not_tls",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_connection_spins_at_a_time() {
        let flag = AtomicBool::new(false);
        let first = SpinClaim::take(&flag);
        assert!(first.is_some());
        assert!(SpinClaim::take(&flag).is_none(), "a second spinner while the first holds it");
        drop(first);
        assert!(SpinClaim::take(&flag).is_some(), "free again once the first is done");
    }
}
