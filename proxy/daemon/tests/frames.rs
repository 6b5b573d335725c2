//! Hostile and broken frames: each gets an error status or a closed connection, never a panic,
//! and the proxy goes on serving.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

mod common;

use std::time::Duration;

use hsm_proxy_proto::frame::{FrameKind, HEADER_BYTES, Header};
use hsm_proxy_proto::op::{OpCode, Random};
use hsm_proxy_proto::{RequestBatch, ResponseBatch, Status};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use common::{Proxy, Settings, Token};

const MAX_BODY: u32 = 4096;

async fn connect(proxy: &Proxy) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let name = ServerName::try_from("hsm-proxy").unwrap();
    TlsConnector::from(proxy.tls()).connect(name, tcp).await.unwrap()
}

/// Reads one response frame; None when the proxy closed the connection instead.
async fn read_frame(stream: &mut TlsStream<TcpStream>) -> Option<(Header, Vec<u8>)> {
    let read = async {
        let mut header = [0u8; HEADER_BYTES];
        stream.read_exact(&mut header).await.ok()?;
        let header = Header::decode(&header, u32::MAX).unwrap();
        assert_eq!(header.kind, FrameKind::Response);
        let mut body = vec![0u8; header.body_len as usize];
        stream.read_exact(&mut body).await.ok()?;
        Some((header, body))
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the proxy must answer or close")
}

async fn assert_closed(stream: &mut TlsStream<TcpStream>) {
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("the proxy must close the connection");
    assert!(matches!(n, Ok(0) | Err(_)), "connection still open");
}

fn refusal(body: &[u8]) -> Status {
    let (status, results) = ResponseBatch::decode(body).unwrap();
    assert!(results.is_empty());
    status
}

fn good_frame(id: u64) -> Vec<u8> {
    RequestBatch::encode_frame(id, 0, &[Random { len: 16 }.into()])
}

async fn assert_good_request_works(proxy: &Proxy) {
    let mut stream = connect(proxy).await;
    stream.write_all(&good_frame(77)).await.unwrap();
    let (header, body) = read_frame(&mut stream).await.unwrap();
    assert_eq!(header.request_id, 77);
    let (status, results) = ResponseBatch::decode_replies(&body, &[OpCode::Random]).unwrap();
    assert_eq!(status, Status::Ok);
    assert!(results[0].is_ok());
}

/// A fresh token and a proxy on it with small limits: bodies of `MAX_BODY`, 8 operations.
async fn small_limits() -> (Token, Proxy) {
    let token = Token::new().await;
    let settings = Settings {
        server_extra: format!("max_body_bytes = {MAX_BODY}\nmax_batch_ops = 8"),
        ..Settings::default()
    };
    let proxy = Proxy::start(&token, &settings);
    (token, proxy)
}

/// Asserts that the proxy counted at least so many refused frames of each status.
fn assert_refusals_counted(proxy: &Proxy, counts: &[(&str, f64)]) {
    let metrics = proxy.metrics_text();
    for (status, at_least) in counts {
        let series = format!("hsm_proxy_frames_refused_total{{status=\"{status}\"}}");
        assert!(common::metric_value(&metrics, &series) >= *at_least, "{series}:\n{metrics}");
    }
}

/// A header the proxy cannot take is answered once with its status, and the connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_header_is_refused_and_its_connection_closed() {
    let (_token, mut proxy) = small_limits().await;

    // Oversized: refused from the header alone, before any body is sent.
    let mut s = connect(&proxy).await;
    let header =
        Header { kind: FrameKind::Request, request_id: 5, body_len: MAX_BODY + 1 }.encode();
    s.write_all(&header).await.unwrap();
    let (h, body) = read_frame(&mut s).await.unwrap();
    assert_eq!((h.request_id, refusal(&body)), (5, Status::FrameTooLarge));
    assert_closed(&mut s).await;
    assert_good_request_works(&proxy).await;

    // Wrong magic.
    let mut s = connect(&proxy).await;
    let mut frame = good_frame(6);
    frame[..4].copy_from_slice(b"HTTP");
    s.write_all(&frame).await.unwrap();
    let (h, body) = read_frame(&mut s).await.unwrap();
    assert_eq!((h.request_id, refusal(&body)), (0, Status::MalformedFrame));
    assert_closed(&mut s).await;
    assert_good_request_works(&proxy).await;

    // Another major version.
    let mut s = connect(&proxy).await;
    let mut frame = good_frame(7);
    frame[4] = 2;
    s.write_all(&frame).await.unwrap();
    let (h, body) = read_frame(&mut s).await.unwrap();
    assert_eq!((h.request_id, refusal(&body)), (7, Status::UnsupportedVersion));
    assert_closed(&mut s).await;

    // Unknown flag bits, and a response frame sent by a client.
    for (flags, id) in [(0x0100u16, 8u64), (0x0001, 9)] {
        let mut s = connect(&proxy).await;
        let mut frame = good_frame(id);
        frame[6..8].copy_from_slice(&flags.to_le_bytes());
        s.write_all(&frame).await.unwrap();
        let (h, body) = read_frame(&mut s).await.unwrap();
        assert_eq!((h.request_id, refusal(&body)), (id, Status::MalformedFrame));
        assert_closed(&mut s).await;
    }
    assert_good_request_works(&proxy).await;
    assert_refusals_counted(
        &proxy,
        &[("frame_too_large", 1.0), ("malformed_frame", 3.0), ("unsupported_version", 1.0)],
    );
    proxy.assert_healthy();
}

/// Truncated: the header announces more than ever arrives, then the client goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_frame_costs_only_its_connection() {
    let (_token, mut proxy) = small_limits().await;
    let mut s = connect(&proxy).await;
    let frame = good_frame(10);
    s.write_all(&frame[..frame.len() - 3]).await.unwrap();
    s.shutdown().await.unwrap();
    drop(s);
    assert_good_request_works(&proxy).await;
    proxy.assert_healthy();
}

/// A body that is malformed inside its announced length is refused alone; the connection goes
/// on and serves the next frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_body_is_refused_alone_and_its_connection_goes_on() {
    let (_token, mut proxy) = small_limits().await;
    let mut s = connect(&proxy).await;
    let mut frame = good_frame(11);
    frame[HEADER_BYTES + 4..HEADER_BYTES + 8].copy_from_slice(&3u32.to_le_bytes()); // count lies
    s.write_all(&frame).await.unwrap();
    let (h, body) = read_frame(&mut s).await.unwrap();
    assert_eq!((h.request_id, refusal(&body)), (11, Status::MalformedFrame));
    // Too many operations for this proxy.
    let ops: Vec<_> = (0..9).map(|_| Random { len: 1 }.into()).collect();
    s.write_all(&RequestBatch::encode_frame(12, 0, &ops)).await.unwrap();
    let (h, body) = read_frame(&mut s).await.unwrap();
    assert_eq!((h.request_id, refusal(&body)), (12, Status::TooManyOperations));
    // Garbage after a plausible count: entry lengths point past the body.
    let mut garbage = [0xA5u8; 100];
    garbage[..8].copy_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
    let header = Header { kind: FrameKind::Request, request_id: 13, body_len: 100 }.encode();
    s.write_all(&header).await.unwrap();
    s.write_all(&garbage).await.unwrap();
    let (h, body) = read_frame(&mut s).await.unwrap();
    assert_eq!((h.request_id, refusal(&body)), (13, Status::MalformedFrame));

    // Unknown operation and garbage postcard fail alone; the good operation beside them works.
    let mut frame = good_frame(14);
    frame.extend_from_slice(&0xBEEFu16.to_le_bytes());
    frame.extend_from_slice(&2u32.to_le_bytes());
    frame.extend_from_slice(&[1, 2]);
    frame.extend_from_slice(&OpCode::Encrypt.code().to_le_bytes());
    frame.extend_from_slice(&5u32.to_le_bytes());
    frame.extend_from_slice(&[0xff; 5]);
    frame[HEADER_BYTES + 4..HEADER_BYTES + 8].copy_from_slice(&3u32.to_le_bytes());
    let body_len = (frame.len() - HEADER_BYTES) as u32;
    frame[16..20].copy_from_slice(&body_len.to_le_bytes());
    s.write_all(&frame).await.unwrap();
    let (h, body) = read_frame(&mut s).await.unwrap();
    assert_eq!(h.request_id, 14);
    let (status, results) = ResponseBatch::decode(&body).unwrap();
    assert_eq!(status, Status::Ok);
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok());
    assert_eq!(results[1], Err(Status::UnknownOperation));
    assert_eq!(results[2], Err(Status::MalformedOperation));

    // The same connection still serves well-formed frames.
    s.write_all(&good_frame(15)).await.unwrap();
    let (h, body) = read_frame(&mut s).await.unwrap();
    assert_eq!(h.request_id, 15);
    assert_eq!(ResponseBatch::decode(&body).unwrap().0, Status::Ok);

    assert_good_request_works(&proxy).await;
    assert_refusals_counted(&proxy, &[("malformed_frame", 2.0), ("too_many_operations", 1.0)]);
    proxy.assert_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_after_the_handshake_never_crash_the_proxy() {
    let token = Token::new().await;
    let settings =
        Settings { server_extra: format!("max_body_bytes = {MAX_BODY}"), ..Settings::default() };
    let mut proxy = Proxy::start(&token, &settings);
    // A deterministic stream of pseudo-random byte strings (xorshift), some starting with a
    // valid header so that they reach the body decoder.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..200u64 {
        let mut s = connect(&proxy).await;
        let len = (next() % 300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 {
            let body_len = bytes.len() as u32;
            let mut frame =
                Header { kind: FrameKind::Request, request_id: round, body_len }.encode().to_vec();
            frame.append(&mut bytes);
            bytes = frame;
        }
        s.write_all(&bytes).await.unwrap();
        s.shutdown().await.unwrap();
        // Whatever comes back, the proxy must answer or close; it must not hang or die.
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink))
            .await
            .expect("hung");
    }
    assert_good_request_works(&proxy).await;
    proxy.assert_healthy();
}
