//! Mutual TLS: who the proxy refuses at the handshake, and that it keeps serving the others.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use hsm_proxy_proto::RequestBatch;
use hsm_proxy_proto::client::{Client, ClientConfig};
use hsm_proxy_proto::op::{Health, Random};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use common::{Proxy, Settings, Token};

fn client_with_tls(proxy: &Proxy, tls: Arc<rustls::ClientConfig>) -> Client {
    let mut config = ClientConfig::new(vec![proxy.addr.to_string()], "hsm-proxy", tls).unwrap();
    config.request_timeout = Duration::from_secs(10);
    Client::new(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_happen_at_the_handshake() {
    let token = Token::new().await;
    let settings = Settings { allowed_clients: vec!["appliance"], ..Settings::default() };
    let mut proxy = Proxy::start(&token, &settings);

    // No client certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&proxy.pki.ca_cert).unwrap()).unwrap();
    let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let r = client_with_tls(&proxy, Arc::new(anonymous)).call(Health).await;
    assert!(r.is_err(), "a client without a certificate got an answer: {r:?}");

    // A certificate from another CA, even with the allowed name.
    let (cert, key) = common::foreign_client(token.path(), "appliance");
    let r = proxy.client_with(&cert, &key).call(Health).await;
    assert!(r.is_err(), "a certificate from another CA was accepted: {r:?}");

    // A certificate from our CA whose name is not on the allow-list.
    let intruder = appliance_ca_client(&proxy, &token, "intruder");
    let r = proxy.client_with(&intruder.0, &intruder.1).call(Health).await;
    assert!(r.is_err(), "a client outside the allow-list was accepted: {r:?}");

    // Plain TCP: a well-formed frame without TLS gets no frame back.
    let mut tcp = TcpStream::connect(proxy.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(&RequestBatch::encode_frame(1, 0, &[Random { len: 4 }.into()])).unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HSMP"), "plain TCP got a protocol answer");

    // TLS 1.2 is refused even with a valid certificate.
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-tls1_2", "-connect", &proxy.addr.to_string(), "-CAfile"])
        .arg(&proxy.pki.ca_cert)
        .arg("-cert")
        .arg(&proxy.pki.client_cert)
        .arg("-key")
        .arg(&proxy.pki.client_key)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl must be installed");
    assert!(!out.status.success(), "a TLS 1.2 handshake succeeded");

    // Each refusal was counted under its own reason.
    let metrics = proxy.metrics_text();
    for reason in ["no_client_certificate", "unknown_issuer", "client_not_allowed", "not_tls"] {
        let series = format!("hsm_proxy_tls_handshake_failures_total{{reason=\"{reason}\"}}");
        assert!(common::metric_value(&metrics, &series) >= 1.0, "{reason} not counted:\n{metrics}");
    }
    let all_failures: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("hsm_proxy_tls_handshake_failures_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(all_failures >= 5.0, "the TLS 1.2 attempt was not refused by the proxy:\n{metrics}");

    // And the allowed client is served as before.
    let health = proxy.client().call(Health).await.unwrap();
    assert_eq!(health.token_label, token.label);
    proxy.assert_healthy();
}

/// A client certificate from the proxy's own CA, with another name.
fn appliance_ca_client(
    proxy: &Proxy,
    token: &Token,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let ca_key = std::fs::read_to_string(&proxy.pki.ca_key).unwrap();
    let ca_cert = std::fs::read_to_string(&proxy.pki.ca_cert).unwrap();
    let ca = pki::CertificateAuthority::load(&ca_cert, &ca_key, pki::BUNDLE_CA_NAME).unwrap();
    let issued = ca.issue_client(name).unwrap();
    let cert = token.path().join(format!("{name}.pem"));
    let key = token.path().join(format!("{name}-key.pem"));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, issued.key_pem.as_bytes()).unwrap();
    (cert, key)
}
