//! The metrics listener's liveness (`/healthz`) and readiness (`/readyz`: a worker session runs
//! `Health` on the token) beside `/metrics`, in plain HTTP and, with a certificate and key
//! configured, in HTTPS (TLS 1.2 and 1.3, no client certificate). On the simulator, a token
//! that fails every command makes `/readyz` say 503 until it is healthy again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use common::{Proxy, Settings, Token};

/// One `GET` on `stream`, read to its end: the status and the body.
async fn get(mut stream: impl AsyncRead + AsyncWrite + Unpin, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    // A TLS peer may close without close_notify once the answer is out; what arrived counts.
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut bytes)).await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

async fn plain(proxy: &Proxy, path: &str) -> (u16, String) {
    get(TcpStream::connect(proxy.metrics).await.unwrap(), path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_beside_metrics() {
    let token = Token::new().await;
    let mut proxy = Proxy::start(&token, &Settings::default());
    assert!(proxy.metrics.ip().is_loopback());
    assert_eq!(plain(&proxy, "/healthz").await, (200, "OK\n".to_owned()));
    let (status, body) = plain(&proxy, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["status"], "ok", "{report}");
    assert_eq!(report["token_label"], token.label.as_str(), "{report}");
    assert!(report["sessions"].as_u64().unwrap() >= 1, "{report}");
    // A second ask within the cache's lifetime is answered from it.
    let (_, again) = plain(&proxy, "/readyz").await;
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert!(again["report_age_ms"].as_u64().unwrap() <= 1_000, "{again}");
    let (status, body) = plain(&proxy, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("hsm_proxy_operations_total{op=\"Health\",status=\"ok\"}"), "{body}");
    assert_eq!(plain(&proxy, "/nothing").await.0, 404);
    proxy.assert_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_https_with_a_certificate() {
    let token = Token::new().await;
    // The proxy's own certificate (issued for hsm-proxy by the test CA) serves here too.
    let pki = token.path().join("pki");
    let settings = Settings {
        server_extra: format!(
            "metrics_tls_cert = \"{}\"\nmetrics_tls_key = \"{}\"",
            pki.join("proxy.pem").display(),
            pki.join("proxy-key.pem").display()
        ),
        ..Settings::default()
    };
    let mut proxy = Proxy::start(&token, &settings);
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(&proxy.pki.ca_cert).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let tcp = TcpStream::connect(proxy.metrics).await.unwrap();
        let name = ServerName::try_from("hsm-proxy").unwrap();
        let tls = TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
        assert_eq!(get(tls, "/healthz").await, (200, "OK\n".to_owned()), "{version:?}");
    }
    // Plain HTTP gets no answer from an HTTPS listener.
    let (status, _) = plain(&proxy, "/healthz").await;
    assert_eq!(status, 0);
    proxy.assert_healthy();
}

/// Polls `/readyz` until it answers `status`.
async fn readyz_until(proxy: &Proxy, status: u16) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let (got, body) = plain(proxy, "/readyz").await;
        if got == status {
            return serde_json::from_str(&body).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "/readyz stayed {got}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_503_while_the_token_fails_every_command() {
    if !common::is_simulator() {
        eprintln!("faults are injected on the simulator only; run with its module");
        return;
    }
    let token = Token::new().await;
    let mut proxy = Proxy::start(&token, &Settings::default());
    readyz_until(&proxy, 200).await;
    let faults = token.fault_file();
    std::fs::write(&faults, "device_error_rate = 1.0\n").unwrap();
    let down = readyz_until(&proxy, 503).await;
    assert_eq!(down["status"], "unavailable", "{down}");
    assert_eq!(plain(&proxy, "/healthz").await.0, 200, "liveness is not readiness");
    std::fs::remove_file(&faults).unwrap();
    readyz_until(&proxy, 200).await;
    proxy.assert_healthy();
}
