//! The whole stack under an HSM that misbehaves: firmware-sim injecting device errors and
//! dropping sessions, then a tamper event. The proxy recovers, and the appliance answers every
//! request with the right data or Barbican's clear 503, never with wrong data; a failed store
//! leaves no secret behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::time::{Duration, Instant};

use e2e::{DevStack, HttpResponse, bin_dir, fetch_text, http, member_of, store_text};

/// The project every secret of this test belongs to.
const PROJECT: &str = "faults";

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    member_of(PROJECT, extra)
}

fn store(api: &str, payload: &str) -> HttpResponse {
    store_text(api, PROJECT, payload)
}

fn fetch(secret_ref: &str) -> HttpResponse {
    fetch_text(secret_ref, PROJECT)
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

/// What a window of concurrent load saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: u64,
    created: Vec<(String, String)>,
}

/// `threads` clients for `window`, each reading stored payloads (checked byte for byte) and
/// storing one new secret in every eight requests.
fn load(api: &str, stored: &[(String, String)], threads: usize, window: Duration) -> Tally {
    let until = Instant::now() + window;
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    let mut n = 0usize;
                    while Instant::now() < until {
                        n += 1;
                        if n.is_multiple_of(8) {
                            let payload = format!("stored under load {t}-{n}");
                            let r = store(api, &payload);
                            if r.status == 201 {
                                let secret_ref =
                                    r.json()["secret_ref"].as_str().unwrap().to_owned();
                                tally.created.push((secret_ref, payload));
                                tally.ok += 1;
                            } else {
                                assert_clear_error(&r);
                                tally.failed += 1;
                            }
                            continue;
                        }
                        let (secret_ref, payload) = &stored[(n * 7 + t) % stored.len()];
                        let r = fetch(secret_ref);
                        if r.status == 200 {
                            assert_eq!(r.body, payload.as_bytes(), "wrong data for {secret_ref}");
                            tally.ok += 1;
                        } else {
                            assert_clear_error(&r);
                            tally.failed += 1;
                        }
                    }
                    tally
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    tallies.into_iter().fold(Tally::default(), |mut all, t| {
        all.ok += t.ok;
        all.failed += t.failed;
        all.created.extend(t.created);
        all
    })
}

/// The proxy's session budget in the dev stack (`[pool] max_sessions`, the default).
const SESSION_BUDGET: u64 = 128;

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

    // A burst of transient faults under 16 requests in flight: each failed PKCS#11 call is
    // retried alone, so nearly every request succeeds, and sessions never pile up.
    std::fs::write(&fault_file, "device_error_rate = 0.1\ndrop_session_rate = 0.05\n").unwrap();
    wait_for_faults(&endpoint, 0.1);
    let under_faults = load(&api, &stored, 16, Duration::from_secs(4));
    let status = device_status(&endpoint);
    let injected = &status["injected"];
    assert!(injected["device_errors"].as_u64().unwrap() > 0, "{status}");
    assert!(injected["dropped_sessions"].as_u64().unwrap() > 0, "{status}");
    let sessions = status["sessions"].as_u64().unwrap();
    assert!(sessions <= SESSION_BUDGET, "{sessions} sessions open on the device: {status}");
    let (ok, failed) = (under_faults.ok, under_faults.failed);
    assert!(ok > 100, "too little load to judge: {ok} right, {failed} failed");
    assert!(failed * 1000 <= ok + failed, "{ok} right, {failed} failed: below 99.9 %");

    // Faults cleared: the very first request succeeds, and everything stored is there,
    // exactly once, with its data.
    std::fs::remove_file(&fault_file).unwrap();
    wait_for_faults(&endpoint, 0.0);
    let r = fetch(&stored[0].0);
    assert_eq!(
        r.status,
        200,
        "first request after the faults: {}",
        String::from_utf8_lossy(&r.body)
    );
    let r = store(&api, "the first store after the faults");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    stored.push((
        r.json()["secret_ref"].as_str().unwrap().to_owned(),
        "the first store after the faults".into(),
    ));
    let created = under_faults.created.len();
    for (secret_ref, payload) in stored.iter().chain(&under_faults.created) {
        let r = fetch(secret_ref);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.body, payload.as_bytes());
    }
    let list = http("GET", &format!("{api}/v1/secrets?limit=1"), &with(&[]), b"").json();
    assert_eq!(list["total"].as_u64().unwrap() as usize, stored.len() + created, "{list}");
    let sessions = device_status(&endpoint)["sessions"].as_u64().unwrap();
    assert!(sessions <= SESSION_BUDGET, "{sessions} sessions open after the faults");
    let metrics_url = stack.info["proxy"]["metrics_url"].as_str().unwrap();
    let metrics = String::from_utf8_lossy(&http("GET", metrics_url, &[], b"").body).into_owned();
    assert!(metrics.contains("hsm_proxy_retries_total"), "{metrics}");

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
        "under faults at 16 in flight: {ok} right, {failed} clear errors, {created} stores kept; \
         {sessions} sessions open"
    );
}
