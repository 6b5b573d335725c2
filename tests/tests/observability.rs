//! Health and metrics of the whole dev stack: `dev.json` names each component's metrics, both
//! scrapes pass `promtool check metrics`, every series the Grafana dashboard
//! (`deploy/grafana/appliance.json`) queries is in one of them, and the proxy's `/readyz` and
//! the appliance's readiness check say 503 while the simulated HSM fails every command, and
//! 200 again once it is healthy.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use e2e::{DevStack, HttpResponse, fetch_text, http, store_text};

const PROJECT: &str = "observability";

/// Polls `url` until it answers `status`.
fn until_status(url: &str, status: u16) -> HttpResponse {
    let started = Instant::now();
    loop {
        let r = http("GET", url, &[], b"");
        if r.status == status {
            return r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{url} stayed {} instead of {status}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The metric families a scrape has (from its `# TYPE` lines).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Every metric name the dashboard's queries use: identifiers followed by `{`, `[` or `)`
/// that look like the appliance's, the proxy's or the process's series.
fn dashboard_metrics(dashboard: &serde_json::Value) -> BTreeSet<String> {
    let mut exprs = Vec::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("an expr").to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(query) = variable["query"]["query"].as_str() {
            exprs.push(query.to_owned());
        }
    }
    let mut names = BTreeSet::new();
    for expr in exprs {
        let mut word = String::new();
        for c in expr.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_alphanumeric() || c == '_' {
                word.push(c);
                continue;
            }
            let is_series = ["appliance_", "hsm_proxy_", "process_"]
                .iter()
                .any(|prefix| word.starts_with(prefix));
            if is_series && matches!(c, '{' | '[' | ')' | ',' | ' ') {
                names.insert(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    names
}

/// A histogram's series name without its `_bucket`, `_sum` or `_count` suffix.
fn family_of(name: &str) -> &str {
    ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
}

#[test]
fn health_metrics_and_the_dashboard_on_the_dev_stack() {
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(&dir.path().join("data"));
    let api = stack.api_url();
    let info = stack.info.clone();
    let appliance_metrics = info["metrics_urls"]["appliance"].as_str().expect("appliance metrics");
    let proxy_metrics = info["metrics_urls"]["proxy"].as_str().expect("proxy metrics");
    assert_eq!(Some(proxy_metrics), info["proxy"]["metrics_url"].as_str());
    for url in [appliance_metrics, proxy_metrics] {
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    }
    let proxy_base = proxy_metrics.strip_suffix("/metrics").unwrap();

    // Health: the appliance's plain check and readiness, the proxy's liveness and readiness.
    let r = http("GET", &format!("{api}/healthcheck"), &[], b"");
    assert_eq!((r.status, r.body.as_slice()), (200, b"OK".as_slice()));
    let ready = until_status(&format!("{api}/healthcheck?detail"), 200).json();
    assert_eq!(ready["hsm_proxies"][0]["ok"], true, "{ready}");
    let r = http("GET", &format!("{proxy_base}/healthz"), &[], b"");
    assert_eq!((r.status, r.body.as_slice()), (200, b"OK\n".as_slice()));
    let ready = until_status(&format!("{proxy_base}/readyz"), 200).json();
    assert_eq!(ready["status"], "ok", "{ready}");
    assert_eq!(ready["token_label"], info["hsm"]["token_label"], "{ready}");

    // Traffic, so that the series the dashboard reads have values.
    let stored = store_text(&api, PROJECT, "observed");
    assert_eq!(stored.status, 201, "{}", String::from_utf8_lossy(&stored.body));
    let secret_ref = stored.json()["secret_ref"].as_str().unwrap().to_owned();
    assert_eq!(fetch_text(&secret_ref, PROJECT).body, b"observed");

    // The simulated HSM fails every command: the proxy is not ready, nor is the appliance.
    let fault_file = info["hsm"]["device"]["fault_file"].as_str().unwrap().to_owned();
    std::fs::write(&fault_file, "device_error_rate = 1.0\n").unwrap();
    let down = until_status(&format!("{proxy_base}/readyz"), 503).json();
    assert_eq!(down["status"], "unavailable", "{down}");
    let down = until_status(&format!("{api}/healthcheck?detail"), 503).json();
    assert_eq!(down["hsm_proxies"][0]["ok"], false, "{down}");
    assert_eq!(down["database"]["ok"], true, "{down}");
    // Liveness is not readiness: both processes still serve.
    assert_eq!(http("GET", &format!("{proxy_base}/healthz"), &[], b"").status, 200);
    assert_eq!(http("GET", &format!("{api}/healthcheck"), &[], b"").status, 200);
    // A request meanwhile fails clearly, and the appliance counts the proxy's error.
    assert_eq!(fetch_text(&secret_ref, PROJECT).status, 503);
    std::fs::remove_file(&fault_file).unwrap();
    until_status(&format!("{proxy_base}/readyz"), 200);
    until_status(&format!("{api}/healthcheck?detail"), 200);
    assert_eq!(fetch_text(&secret_ref, PROJECT).body, b"observed");

    // Both scrapes lint clean, and hold every series the dashboard queries.
    let appliance_text = String::from_utf8(http("GET", appliance_metrics, &[], b"").body).unwrap();
    let proxy_text = String::from_utf8(http("GET", proxy_metrics, &[], b"").body).unwrap();
    devstack::testing::promtool_accepts("appliance", &appliance_text);
    devstack::testing::promtool_accepts("proxy", &proxy_text);
    assert!(appliance_text.contains("appliance_hsm_errors_total{"), "{appliance_text}");
    let exported: BTreeSet<String> =
        families(&appliance_text).into_iter().chain(families(&proxy_text)).collect();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/appliance.json");
    let dashboard: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("the dashboard is JSON");
    let used = dashboard_metrics(&dashboard);
    assert!(used.len() >= 20, "too few metrics found in the dashboard: {used:?}");
    let missing: Vec<&String> =
        used.iter().filter(|name| !exported.contains(family_of(name))).collect();
    assert!(missing.is_empty(), "the dashboard queries series no component exports: {missing:?}");

    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
}
