//! `appliance dev` from nothing: one command, a working Barbican API over a real proxy and
//! token (firmware-sim by default, SoftHSM2 on request), `dev.json` describing the pieces
//! well enough to point pkcs11-tool at the very token in use, a clean stop, and a second start
//! on the same data.

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
    assert_eq!(info["hsm"]["kind"], "firmware-sim", "{info}");
    assert!(std::path::Path::new(info["hsm"]["pkcs11_module"].as_str().unwrap()).exists());
    assert!(
        std::path::Path::new(info["hsm"]["env"]["FWSIM_PKCS11_CONF"].as_str().unwrap()).exists()
    );
    assert_eq!(info["hsm"]["device"]["profile"], "ideal");
    let device_pid = info["hsm"]["device"]["pid"].as_u64().unwrap();
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

    // pkcs11-tool, pointed at the HSM by dev.json alone, sees the proxy's master key.
    let objects = pkcs11_tool(info, &["--list-objects", "--type", "secrkey"]);
    assert!(objects.contains("hsm-proxy-mkek"), "{objects}");

    // Ctrl-C: a clean stop, the proxy and the simulator with it.
    let proxy_pid = info["proxy"]["pid"].as_u64().unwrap();
    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
    assert!(!data.join("dev.json").exists());
    for (name, pid) in [("the proxy", proxy_pid), ("fwsim", device_pid)] {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .unwrap_or_default()
                    .contains("zombie"),
            "{name} outlived the appliance"
        );
    }

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

/// Runs pkcs11-tool, logged in, against the token `dev.json` describes.
fn pkcs11_tool(info: &serde_json::Value, args: &[&str]) -> String {
    let hsm = &info["hsm"];
    let pin = std::fs::read_to_string(hsm["pin_file"].as_str().unwrap()).unwrap();
    let mut cmd = std::process::Command::new("pkcs11-tool");
    cmd.args(["--module", hsm["pkcs11_module"].as_str().unwrap()])
        .args(["--token-label", hsm["token_label"].as_str().unwrap(), "--login", "--pin"])
        .arg(pin.trim())
        .args(args);
    for (name, value) in hsm["env"].as_object().unwrap() {
        cmd.env(name, value.as_str().unwrap());
    }
    let out = cmd.output().expect("pkcs11-tool (apt-get install opensc)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pkcs11-tool {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn dev_stack_runs_on_softhsm2_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start_with(&dir.path().join("data"), &["--hsm", "softhsm2"]);
    let info = &stack.info;
    assert_eq!(info["hsm"]["kind"], "softhsm2", "{info}");
    assert!(info["hsm"]["device"].is_null());
    let api = stack.api_url();
    let body = br#"{"payload": "on softhsm2", "payload_content_type": "text/plain"}"#;
    let r = http(
        "POST",
        &format!("{api}/v1/secrets"),
        &with(&[("Content-Type", "application/json")]),
        body,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let secret_ref = r.json()["secret_ref"].as_str().unwrap().to_owned();
    let r = http("GET", &format!("{secret_ref}/payload"), &with(&[("Accept", "text/plain")]), b"");
    assert_eq!(r.body, b"on softhsm2");
    let objects = pkcs11_tool(info, &["--list-objects", "--type", "secrkey"]);
    assert!(objects.contains("hsm-proxy-mkek"), "{objects}");
    // SoftHSM2 serialises private-object operations: the proxy keeps one outstanding.
    let proxy_log = std::fs::read_to_string(info["proxy"]["log"].as_str().unwrap()).unwrap();
    assert!(proxy_log.contains(", 1 worker sessions"), "{proxy_log}");
    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
}

/// `appliance dev --fips`: the simulator under its `fips` policy, which refuses GCM IVs from
/// outside, keys that are not sensitive and keys of two purposes; the proxy draws IVs in the
/// token and unwraps each KEK for its one purpose, and the appliance orders approved
/// algorithms only. SoftHSM2 has no FIPS mode.
#[test]
fn dev_stack_runs_a_fips_mode_simulator_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start_with(&dir.path().join("data"), &["--fips"]);
    let info = &stack.info;
    assert_eq!(info["hsm"]["fips"], true, "{info}");
    assert_eq!(info["hsm"]["device"]["policy"], "fips", "{info}");
    let config = std::fs::read_to_string(info["config"].as_str().unwrap()).unwrap();
    assert!(config.contains("fips = true"), "{config}");
    let api = stack.api_url();
    let json = with(&[("Content-Type", "application/json")]);
    let body = br#"{"payload": "under a FIPS-mode token", "payload_content_type": "text/plain"}"#;
    let r = http("POST", &format!("{api}/v1/secrets"), &json, body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let secret_ref = r.json()["secret_ref"].as_str().unwrap().to_owned();
    let r = http("GET", &format!("{secret_ref}/payload"), &with(&[("Accept", "text/plain")]), b"");
    assert_eq!(r.body, b"under a FIPS-mode token");
    let order = |kind: &str, meta: &str| {
        let body = format!(r#"{{"type": "{kind}", "meta": {meta}}}"#);
        let r = http("POST", &format!("{api}/v1/orders"), &json, body.as_bytes());
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let order_ref = r.json()["order_ref"].as_str().unwrap().to_owned();
        for _ in 0..200 {
            let o = http("GET", &order_ref, &with(&[]), b"").json();
            if o["status"] != "PENDING" {
                return o;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("order {order_ref} stayed PENDING");
    };
    let aes = order("key", r#"{"algorithm": "aes", "bit_length": 256}"#);
    assert_eq!(aes["status"], "ACTIVE", "{aes}");
    let des = order("key", r#"{"algorithm": "des", "bit_length": 64}"#);
    assert_eq!((&des["status"], &des["error_status_code"]), (&"ERROR".into(), &"400".into()));
    // A key pair's private key leaves the token only wrapped, yet reads back as PEM.
    for meta in
        [r#"{"algorithm": "rsa", "bit_length": 2048}"#, r#"{"algorithm": "ec", "bit_length": 384}"#]
    {
        let pair = order("asymmetric", meta);
        assert_eq!(pair["status"], "ACTIVE", "{meta}: {pair}");
        let container =
            http("GET", pair["container_ref"].as_str().unwrap(), &with(&[]), b"").json();
        let private = container["secret_refs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "private_key")
            .unwrap()["secret_ref"]
            .as_str()
            .unwrap()
            .to_owned();
        let pem = http(
            "GET",
            &format!("{private}/payload"),
            &with(&[("Accept", "application/octet-stream")]),
            b"",
        );
        let pem = String::from_utf8_lossy(&pem.body).into_owned();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{meta}: {pem}");
    }
    let proxy_log = std::fs::read_to_string(info["proxy"]["log"].as_str().unwrap()).unwrap();
    assert!(proxy_log.contains("AES-GCM message-based"), "{proxy_log}");
    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");

    let out = std::process::Command::new(e2e::bin_dir().join("appliance"))
        .args(["dev", "--hsm", "softhsm2", "--fips", "--data-dir"])
        .arg(dir.path().join("soft"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SoftHSM2 has no FIPS mode"), "{err}");
}

#[test]
fn a_bad_hsm_choice_is_a_clear_error() {
    let out = std::process::Command::new(e2e::bin_dir().join("appliance"))
        .args(["dev", "--hsm", "hsm9000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected sim, softhsm2 or pkcs11:"), "{err}");
    let out = std::process::Command::new(e2e::bin_dir().join("appliance"))
        .args(["dev", "--hsm", "pkcs11:/nonexistent.so"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token-label"));
}
