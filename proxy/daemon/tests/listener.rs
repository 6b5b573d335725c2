//! The listener against peers that hold connections without using them: TCP connections that
//! never start TLS, frames that stop halfway, silent clients, and more connections than the
//! limits. None of them keeps a real client out, and each is closed by its timeout or at once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

mod common;

use std::time::{Duration, Instant};

use hsm_proxy_proto::frame::{FrameKind, HEADER_BYTES, Header};
use hsm_proxy_proto::op::{Health, Random};
use hsm_proxy_proto::{RequestBatch, SecretBytes};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use common::{Proxy, Settings, Token};

async fn connect_tls(proxy: &Proxy) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let name = ServerName::try_from("hsm-proxy").unwrap();
    TlsConnector::from(proxy.tls()).connect(name, tcp).await.unwrap()
}

/// Waits until the proxy closes `stream` (end of stream or reset), at most `limit`; returns the
/// time it took.
async fn closed_within(stream: &mut (impl AsyncRead + Unpin), limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("still open after {limit:?}"),
        }
    }
}

/// Whether `stream` is still open after `wait` (nothing read, no end of stream).
async fn still_open(stream: &mut (impl AsyncRead + Unpin), wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    tokio::time::timeout(wait, stream.read(&mut buf)).await.is_err()
}

async fn one_call(proxy: &Proxy) -> Duration {
    let client = proxy.client();
    let started = Instant::now();
    let bytes: SecretBytes = client.call(Random { len: 16 }).await.unwrap();
    assert_eq!(bytes.expose_secret().len(), 16);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_and_stalled_frames_keep_no_client_out_and_are_cut_off() {
    let token = Token::new().await;
    let settings = Settings {
        server_extra: "handshake_timeout_ms = 2500\nframe_timeout_ms = 2000".into(),
        ..Settings::default()
    };
    let mut proxy = Proxy::start(&token, &settings);

    // More connections that never start TLS than max_connections (256 by default).
    let mut idle = Vec::new();
    for _ in 0..320 {
        idle.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    // Clients through the handshake that stop inside a frame: in the header, and in the body.
    let frame = RequestBatch::encode_frame(1, 0, &[Random { len: 16 }.into()]);
    let mut stalled = Vec::new();
    for cut in [3, HEADER_BYTES - 1, HEADER_BYTES + 2, frame.len() - 1] {
        let mut s = connect_tls(&proxy).await;
        s.write_all(&frame[..cut]).await.unwrap();
        s.flush().await.unwrap();
        stalled.push((Instant::now(), s));
    }

    // A real client connects and is answered at once, its connection beside all of them.
    let took = one_call(&proxy).await;
    assert!(took < Duration::from_millis(1500), "the call took {took:?}");
    let started = Instant::now();

    // The handshake timeout closes every idle connection.
    for s in &mut idle {
        closed_within(s, Duration::from_secs(10)).await;
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(8), "idle connections closed only after {waited:?}");
    // The frame timeout closes each stalled frame, counted from its first byte.
    for (since, s) in &mut stalled {
        closed_within(s, Duration::from_secs(10)).await;
        let after = since.elapsed();
        assert!(after >= Duration::from_millis(1900), "a stalled frame was cut after {after:?}");
    }

    // Each is counted as its connection closes, a moment after the peer sees it.
    let timeouts = "hsm_proxy_tls_handshake_failures_total{reason=\"timeout\"}";
    let counted = Instant::now();
    while proxy.metric(timeouts) < 320.0 && counted.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = proxy.metrics_text();
    let value = |series| common::metric_value(&metrics, series);
    assert!(value(timeouts) >= 320.0, "handshake timeouts:\n{metrics}");
    assert_eq!(
        value("hsm_proxy_connections_timed_out_total{listener=\"proxy\",phase=\"frame\"}"),
        4.0
    );
    assert_eq!(
        value("hsm_proxy_connections_refused_total{limit=\"connections\",listener=\"proxy\"}"),
        0.0
    );
    // And the proxy serves as before.
    one_call(&proxy).await;
    proxy.assert_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_limits_new_connections_are_closed_at_once() {
    let token = Token::new().await;
    let settings = Settings {
        server_extra: "max_handshakes = 8\nmax_connections = 2\nhandshake_timeout_ms = 20000"
            .into(),
        ..Settings::default()
    };
    let mut proxy = Proxy::start(&token, &settings);

    // Eight handshakes pending: the ninth connection is closed at once, not left waiting.
    let mut pending = Vec::new();
    for _ in 0..8 {
        pending.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ninth = TcpStream::connect(proxy.addr).await.unwrap();
    closed_within(&mut ninth, Duration::from_secs(3)).await;
    for s in &mut pending {
        assert!(still_open(s, Duration::from_millis(10)).await, "a pending handshake was closed");
    }
    drop(pending);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Two connections through the handshake: a third is closed at once.
    let first = connect_tls(&proxy).await;
    let mut second = connect_tls(&proxy).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(proxy.addr).await.unwrap();
    closed_within(&mut third, Duration::from_secs(3)).await;
    assert!(still_open(&mut second, Duration::from_millis(10)).await);
    // A place given back is taken by the next client.
    drop(first);
    drop(second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    one_call(&proxy).await;

    let metrics = proxy.metrics_text();
    let refused = |limit: &str| {
        common::metric_value(
            &metrics,
            &format!("hsm_proxy_connections_refused_total{{limit=\"{limit}\",listener=\"proxy\"}}"),
        )
    };
    assert_eq!(refused("handshakes"), 1.0);
    assert_eq!(refused("connections"), 1.0);
    let log = proxy.log();
    assert!(log.contains("connection limit reached"), "no warning logged:\n{log}");
    proxy.assert_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_the_client_reconnects_by_itself() {
    let token = Token::new().await;
    let settings = Settings { server_extra: "idle_timeout_ms = 400".into(), ..Settings::default() };
    let mut proxy = Proxy::start(&token, &settings);
    let client = proxy.client();
    for round in 0..3 {
        client.call(Health).await.unwrap_or_else(|e| panic!("round {round}: {e}"));
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    let closed =
        proxy.metric("hsm_proxy_connections_timed_out_total{listener=\"proxy\",phase=\"idle\"}");
    assert!(closed >= 3.0, "{closed} idle connections closed");

    // A connection inside a frame is not idle: it is the frame timeout that applies to it.
    let mut s = connect_tls(&proxy).await;
    let header = Header { kind: FrameKind::Request, request_id: 1, body_len: 10 }.encode();
    s.write_all(&header[..4]).await.unwrap();
    assert!(still_open(&mut s, Duration::from_millis(900)).await, "a started frame idled out");
    proxy.assert_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_limits_connections_and_times_out_slow_and_idle_ones() {
    let token = Token::new().await;
    let settings = Settings {
        server_extra: "metrics_max_connections = 3\nmetrics_header_timeout_ms = 500\n\
                       metrics_idle_timeout_ms = 1500"
            .into(),
        ..Settings::default()
    };
    let mut proxy = Proxy::start(&token, &settings);
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

    // Half a header: closed at the header timeout.
    let mut slow = TcpStream::connect(proxy.metrics).await.unwrap();
    slow.write_all(&request[..10]).await.unwrap();
    let took = closed_within(&mut slow, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(400), "closed after {took:?}");

    // A kept connection: answered, then closed once idle, and not at the header timeout.
    let mut kept = TcpStream::connect(proxy.metrics).await.unwrap();
    kept.write_all(request).await.unwrap();
    let mut answer = vec![0u8; 256];
    let n = kept.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..n]));
    let mut rest = vec![0u8; 1 << 20];
    // The rest of the page, then silence until the idle timeout.
    let started = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), kept.read(&mut rest)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("a kept connection was not closed when idle"),
        }
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1200), "closed after {took:?}, before the idle timeout");

    // Three connections held: a fourth is answered 503 at once.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(proxy.metrics).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = TcpStream::connect(proxy.metrics).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), fourth.read_to_end(&mut answer))
        .await
        .expect("the connection beyond the limit was left open")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let metrics = proxy.metrics_text();
    let value = |series| common::metric_value(&metrics, series);
    assert_eq!(
        value("hsm_proxy_connections_refused_total{limit=\"connections\",listener=\"metrics\"}"),
        1.0
    );
    assert_eq!(
        value("hsm_proxy_connections_timed_out_total{listener=\"metrics\",phase=\"header\"}"),
        1.0
    );
    assert_eq!(
        value("hsm_proxy_connections_timed_out_total{listener=\"metrics\",phase=\"idle\"}"),
        1.0
    );
    proxy.assert_healthy();
}
