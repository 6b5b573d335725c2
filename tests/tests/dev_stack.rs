//! `appliance dev` from nothing: one command, a working Barbican API over a real proxy and
//! token, `dev.json` describing the pieces, a clean stop, and a second start on the same data.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use e2e::{DevStack, http};

const MEMBER: &[(&str, &str)] =
    &[("X-Project-Id", "e2e"), ("X-Roles", "member,reader"), ("X-User-Id", "tester")];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    MEMBER.iter().copied().chain(extra.iter().copied()).collect()
}

#[test]
fn dev_stack_starts_serves_stops_and_restarts_on_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let stack = DevStack::start(&data);
    let api = stack.api_url();

    // dev.json tells where everything is.
    let info = &stack.info;
    for key in ["ca", "client_cert", "client_key", "proxy_cert", "proxy_key"] {
        let path = info["pki"][key].as_str().unwrap();
        assert!(std::path::Path::new(path).exists(), "{key}: {path}");
    }
    assert!(info["proxy"]["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    let metrics_url = info["proxy"]["metrics_url"].as_str().unwrap();
    assert!(std::path::Path::new(info["hsm"]["pkcs11_module"].as_str().unwrap()).exists());
    assert!(std::path::Path::new(info["hsm"]["env"]["SOFTHSM2_CONF"].as_str().unwrap()).exists());
    assert!(info["database"].as_str().unwrap().starts_with("sqlite://"));

    // The API works end to end.
    let r = http("GET", &format!("{api}/"), &[], b"");
    assert_eq!(r.status, 300);
    let body = br#"{"name": "e2e", "payload": "kept across restarts", "payload_content_type": "text/plain"}"#;
    let r = http(
        "POST",
        &format!("{api}/v1/secrets"),
        &with(&[("Content-Type", "application/json")]),
        body,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let secret_ref = r.json()["secret_ref"].as_str().unwrap().to_owned();
    assert!(secret_ref.starts_with(&api));
    let r = http("GET", &format!("{secret_ref}/payload"), &with(&[("Accept", "text/plain")]), b"");
    assert_eq!(r.body, b"kept across restarts");
    // The proxy did the work: its metrics count the operations.
    let metrics = http("GET", metrics_url, &[], b"");
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains(r#"hsm_proxy_operations_total{op="Encrypt",status="ok"} 1"#), "{text}");
    assert!(
        text.contains(r#"hsm_proxy_operations_total{op="GenerateKek",status="ok"} 1"#),
        "{text}"
    );

    // Ctrl-C: a clean stop, the proxy with it.
    let proxy_pid = info["proxy"]["pid"].as_u64().unwrap();
    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
    assert!(!data.join("dev.json").exists());
    assert!(
        !std::path::Path::new(&format!("/proc/{proxy_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{proxy_pid}/status"))
                .unwrap_or_default()
                .contains("zombie"),
        "the proxy outlived the appliance"
    );

    // A second start reuses the token, the PKI and the database.
    let ca_before = std::fs::read(data.join("pki/ca.pem")).unwrap();
    let stack = DevStack::start(&data);
    assert_eq!(std::fs::read(data.join("pki/ca.pem")).unwrap(), ca_before);
    let api = stack.api_url();
    let id = secret_ref.rsplit('/').next().unwrap();
    let r = http(
        "GET",
        &format!("{api}/v1/secrets/{id}/payload"),
        &with(&[("Accept", "text/plain")]),
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, b"kept across restarts");
    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
}
