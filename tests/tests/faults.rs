//! The whole stack under an HSM that misbehaves: firmware-sim injecting device errors and
//! dropping sessions, then a tamper event. The proxy recovers, and the appliance answers every
//! request with the right data or Barbican's clear 503, never with wrong data; a failed store
//! leaves no secret behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::time::{Duration, Instant};

use e2e::{DevStack, HttpResponse, bin_dir, http};

const MEMBER: &[(&str, &str)] =
    &[("X-Project-Id", "faults"), ("X-Roles", "member,reader"), ("X-User-Id", "tester")];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    MEMBER.iter().copied().chain(extra.iter().copied()).collect()
}

fn store(api: &str, payload: &str) -> HttpResponse {
    let body = serde_json::json!({"payload": payload, "payload_content_type": "text/plain"});
    http(
        "POST",
        &format!("{api}/v1/secrets"),
        &with(&[("Content-Type", "application/json")]),
        body.to_string().as_bytes(),
    )
}

fn fetch(secret_ref: &str) -> HttpResponse {
    http("GET", &format!("{secret_ref}/payload"), &with(&[("Accept", "text/plain")]), b"")
}

/// An error must be Barbican's 503 with its JSON body.
fn assert_clear_error(r: &HttpResponse) {
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["code"], 503, "{body}");
    assert!(body["description"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
}

fn device_status(endpoint: &str) -> serde_json::Value {
    let out = std::process::Command::new(bin_dir().join("fwsim"))
        .args(["status", "--device", endpoint])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_for_faults(endpoint: &str, rate: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while device_status(endpoint)["faults"]["device_error_rate"].as_f64() != Some(rate) {
        assert!(Instant::now() < deadline, "the fault file was not applied");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn device_errors_and_lost_sessions_never_give_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(&dir.path().join("data"));
    let api = stack.api_url();
    let endpoint = stack.info["hsm"]["device"]["endpoint"].as_str().unwrap().to_owned();
    let fault_file = stack.info["hsm"]["device"]["fault_file"].as_str().unwrap().to_owned();

    let mut stored = Vec::new();
    for i in 0..20 {
        let r = store(&api, &format!("payload number {i}"));
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        stored.push((
            r.json()["secret_ref"].as_str().unwrap().to_owned(),
            format!("payload number {i}"),
        ));
    }

    std::fs::write(&fault_file, "device_error_rate = 0.1\ndrop_session_rate = 0.05\n").unwrap();
    wait_for_faults(&endpoint, 0.1);
    let (mut ok, mut failed) = (0, 0);
    for round in 0..10 {
        for (secret_ref, payload) in &stored {
            let r = fetch(secret_ref);
            if r.status == 200 {
                assert_eq!(
                    r.body,
                    payload.as_bytes(),
                    "round {round}: wrong data for {secret_ref}"
                );
                ok += 1;
            } else {
                assert_clear_error(&r);
                failed += 1;
            }
        }
    }
    // Stores under faults either succeed for good or leave nothing behind.
    let mut created = Vec::new();
    for i in 0..30 {
        let payload = format!("stored under faults {i}");
        let r = store(&api, &payload);
        if r.status == 201 {
            created.push((r.json()["secret_ref"].as_str().unwrap().to_owned(), payload));
        } else {
            assert_clear_error(&r);
        }
    }
    let status = device_status(&endpoint);
    let injected = &status["injected"];
    assert!(injected["device_errors"].as_u64().unwrap() > 0, "{status}");
    assert!(injected["dropped_sessions"].as_u64().unwrap() > 0, "{status}");
    // Three attempts per operation, each on a fresh session: with 10 % device errors and 5 %
    // dropped sessions, nearly every request still succeeds.
    assert!(ok * 10 >= (ok + failed) * 8, "{ok} right, {failed} failed");
    assert!(created.len() >= 20, "only {} of 30 stores succeeded", created.len());

    // Faults cleared: everything stored is there, exactly once, with its data.
    std::fs::remove_file(&fault_file).unwrap();
    wait_for_faults(&endpoint, 0.0);
    // The proxy may be waiting out its re-initialisation back-off; it comes back by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = fetch(&stored[0].0);
        if r.status == 200 {
            break;
        }
        assert_clear_error(&r);
        assert!(Instant::now() < deadline, "the proxy did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (secret_ref, payload) in stored.iter().chain(&created) {
        let r = fetch(secret_ref);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.body, payload.as_bytes());
    }
    let list = http("GET", &format!("{api}/v1/secrets?limit=100"), &with(&[]), b"").json();
    assert_eq!(list["total"].as_u64().unwrap() as usize, stored.len() + created.len(), "{list}");
    let metrics_url = stack.info["proxy"]["metrics_url"].as_str().unwrap();
    let metrics = String::from_utf8_lossy(&http("GET", metrics_url, &[], b"").body).into_owned();
    assert!(
        metrics.contains("hsm_proxy_sessions_replaced_total")
            || metrics.contains("reinitializations"),
        "{metrics}"
    );

    // A tamper event wipes the master key: the appliance says the HSM is unavailable.
    let out = std::process::Command::new(bin_dir().join("fwsim"))
        .args(["tamper", "--device", &endpoint])
        .output()
        .unwrap();
    assert!(out.status.success());
    for (secret_ref, _) in stored.iter().take(3) {
        let r = fetch(secret_ref);
        assert_clear_error(&r);
    }
    assert_clear_error(&store(&api, "after the tamper"));
    let log = stack.log();
    assert!(!log.contains("panicked"), "{log}");
    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
    eprintln!(
        "under faults: {ok} fetches right, {failed} clear errors; {} of 30 stores kept",
        created.len()
    );
}
