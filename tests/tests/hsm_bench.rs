//! `hsm-bench` end to end, briefly (these check what it reports, not how fast anything is):
//! every operation against the simulator's module directly, direct and through the proxy of
//! a dev stack (busy polling on) side by side, and HTTP and HTTPS load on its API.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::process::Command;

use devstack::HsmChoice;
use devstack::testing::BlockingTestToken;
use e2e::{DevStack, bin_dir};

fn hsm_bench(args: &[&str], env: &[(&str, &std::path::Path)]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let html = dir.path().join("out.html");
    let mut cmd = Command::new(bin_dir().join("hsm-bench"));
    cmd.args(args).args(["--warmup", "100ms", "--duration", "300ms", "--json"]).arg(&json);
    cmd.arg("--report").arg(&html);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hsm-bench {args:?}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("ops/s"), "{page}");
    for cell in report["cells"].as_array().unwrap() {
        assert!(cell["ops"].as_u64().unwrap() > 0, "a cell did nothing: {cell}");
        assert!(cell["errors"].as_object().unwrap().is_empty(), "errors: {cell}");
        let (p50, p99) = (cell["p50_us"].as_u64().unwrap(), cell["p99_us"].as_u64().unwrap());
        assert!(p50 <= p99 && p99 <= cell["max_us"].as_u64().unwrap(), "{cell}");
        assert!(stdout.contains(cell["op"].as_str().unwrap()), "{stdout}");
    }
    report
}

#[test]
fn every_operation_directly_on_the_simulator() {
    e2e::ensure_binaries();
    let dir = tempfile::tempdir().unwrap();
    let token = BlockingTestToken::start(dir.path(), &HsmChoice::default());
    let (name, value) = token.module_env().expect("the simulator's module is configured");
    let report = hsm_bench(
        &[
            "pkcs11",
            "--module",
            token.module().to_str().unwrap(),
            "--token-label",
            token.label(),
            "--pin-file",
            token.pin_file().to_str().unwrap(),
            "--ops",
            "all",
            "--threads",
            "1,2",
        ],
        &[(name, value)],
    );
    assert_eq!(report["cells"].as_array().unwrap().len(), 8 * 2);
}

/// `hsm-bench <mode> <args>` against `appliance dev` with busy polling on, so that the proxy
/// and the appliance spin for each other: pointed at the API (`http`) or at `dev.json`. The
/// stack is stopped cleanly before the report is given.
fn on_a_busy_polling_stack(mode: &str, args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let stack = DevStack::start_with(&data, &["--busy-poll-us", "200"]);
    let proxy_toml = std::fs::read_to_string(data.join("proxy.toml")).unwrap();
    assert!(proxy_toml.contains("busy_poll_us = 200"), "{proxy_toml}");
    let proxy_log = std::fs::read_to_string(data.join("proxy.log")).unwrap();
    assert!(proxy_log.contains("busy polling"), "{proxy_log}");
    let (api, dev_json) = (stack.api_url(), data.join("dev.json"));
    let target = if mode == "http" {
        ["--base", api.as_str()]
    } else {
        ["--dev-json", dev_json.to_str().unwrap()]
    };
    let all: Vec<&str> = [mode].into_iter().chain(target).chain(args.iter().copied()).collect();
    let report = hsm_bench(&all, &[]);
    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
    report
}

#[test]
fn direct_and_through_the_proxy_side_by_side() {
    let report = on_a_busy_polling_stack(
        "compare",
        &["--ops", "decrypt-32,generate-aes,sign-rsa-2048", "--concurrency", "1,2"],
    );
    let comparisons = report["comparisons"].as_array().unwrap();
    assert_eq!(comparisons.len(), 6);
    for c in comparisons {
        assert!(c["throughput_ratio"].as_f64().unwrap() > 0.0, "{c}");
    }
    let modes: Vec<&str> =
        report["cells"].as_array().unwrap().iter().map(|c| c["mode"].as_str().unwrap()).collect();
    assert_eq!(modes.iter().filter(|m| **m == "pkcs11").count(), 6);
    assert_eq!(modes.iter().filter(|m| **m == "proxy").count(), 6);
}

/// Batched on the proxy side, in two rounds: every proxy cell carries frames of 8, each pair
/// is measured twice, and the comparison is of the medians.
#[test]
fn side_by_side_batched_in_rounds_compares_the_medians() {
    let report = on_a_busy_polling_stack(
        "compare",
        &["--ops", "decrypt-32", "--concurrency", "2", "--batch", "8", "--rounds", "2"],
    );
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 4);
    for cell in cells {
        let batch = if cell["mode"] == "proxy" { 8 } else { 1 };
        assert_eq!(cell["batch"], batch, "{cell}");
    }
    let rounds: Vec<u64> = cells.iter().map(|c| c["round"].as_u64().unwrap()).collect();
    assert_eq!(rounds, [1, 1, 2, 2]);
    let comparisons = report["comparisons"].as_array().unwrap();
    assert_eq!(comparisons.len(), 1);
    let c = &comparisons[0];
    assert_eq!(c["round_ratios"].as_array().unwrap().len(), 2, "{c}");
    let (d, p) = (c["direct_ops_per_s"].as_f64().unwrap(), c["proxy_ops_per_s"].as_f64().unwrap());
    let mean = |mode: &str| {
        let of: Vec<f64> = cells
            .iter()
            .filter(|x| x["mode"] == mode)
            .map(|x| x["ops_per_s"].as_f64().unwrap())
            .collect();
        of.iter().sum::<f64>() / of.len() as f64
    };
    // Of two rounds the median is their mean.
    assert!((d - mean("pkcs11")).abs() < 1e-6 && (p - mean("proxy")).abs() < 1e-6, "{c}");
    assert!((c["throughput_ratio"].as_f64().unwrap() - p / d).abs() < 1e-9, "{c}");
    assert_eq!(report["best"][0]["ratio"], c["throughput_ratio"]);
}

/// Through the proxy alone, its address and certificates from `dev.json`, the client spinning
/// for its answers: one frame of one, then frames of 4 from 3 callers.
#[test]
fn through_the_proxy_alone_from_dev_json() {
    let report = on_a_busy_polling_stack(
        "proxy",
        &[
            "--ops",
            "decrypt-32",
            "--concurrency",
            "1,3",
            "--batch",
            "1,4",
            "--connections",
            "1",
            "--busy-poll-us",
            "200",
        ],
    );
    let shapes: Vec<(u64, u64)> = report["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["concurrency"].as_u64().unwrap(), c["batch"].as_u64().unwrap()))
        .collect();
    assert_eq!(shapes, [(1, 1), (1, 4), (3, 1), (3, 4)]);
}

#[test]
fn http_load_on_the_api() {
    let report = on_a_busy_polling_stack(
        "http",
        &[
            "--scenario",
            "payload-get,secret-store,metadata-get,order",
            "--concurrency",
            "1,4",
            "--pool",
            "10",
        ],
    );
    assert_eq!(report["cells"].as_array().unwrap().len(), 8);
}

/// Payload fetches spread over many projects, each with its KEK: every project gets its
/// secret (and so its KEK), and every fetch, in its own project, reads the right payload.
#[test]
fn http_load_over_many_projects() {
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start(&dir.path().join("data"));
    let api = stack.api_url();
    for access in ["uniform", "zipf"] {
        let report = hsm_bench(
            &["http", "--base", &api, "--scenario", "payload-get", "--concurrency", "4"]
                .into_iter()
                .chain(["--projects", "40", "--access", access, "--pool", "10"])
                .collect::<Vec<_>>(),
            &[],
        );
        let cells = report["cells"].as_array().unwrap();
        assert_eq!(cells.len(), 1);
        assert!(report["title"].as_str().unwrap_or_default().contains("40 projects"), "{report}");
    }
    let database = stack.info["database"].as_str().unwrap().to_owned();
    let file = database.trim_start_matches("sqlite://").to_owned();
    let db = rusqlite::Connection::open(file).unwrap();
    let projects: i64 = db
        .query_row(
            "SELECT COUNT(DISTINCT project_id) FROM project_keks WHERE project_id LIKE 'hsm-bench-%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(projects, 40);
    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
}

/// The same load over HTTPS on `appliance dev --tls`, the certificate checked against the dev CA.
#[test]
fn http_load_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let stack = DevStack::start_with(&dir.path().join("data"), &["--tls"]);
    let api = stack.api_url();
    assert!(api.starts_with("https://"), "{api}");
    let ca = stack.info["api_ca"].as_str().unwrap().to_owned();
    let report = hsm_bench(
        &[
            "http",
            "--base",
            &api,
            "--ca",
            &ca,
            "--scenario",
            "payload-get,secret-store",
            "--concurrency",
            "1,4",
            "--pool",
            "10",
        ],
        &[],
    );
    assert_eq!(report["cells"].as_array().unwrap().len(), 4);
    let (status, log) = stack.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    e2e::ensure_binaries();
    let run = |args: &[&str]| {
        let out = Command::new(bin_dir().join("hsm-bench")).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(
        run(&["pkcs11", "--ops", "decrypt", "--module", "/x.so", "--pin-file", "/x"])
            .contains("reading /x")
    );
    assert!(run(&["pkcs11", "--pin-file", "/x"]).contains("--module"));
    assert!(
        run(&["http", "--base", "http://127.0.0.1:9", "--scenario", "payload"])
            .contains("payload-get")
    );
    assert!(run(&["http", "--base", "https://127.0.0.1:9"]).contains("needs --ca"));
    assert!(
        run(&["http", "--base", "http://127.0.0.1:9", "--access", "pareto"])
            .contains("expected uniform or zipf")
    );
    assert!(run(&["proxy", "--duration", "5h"]).contains("units are ms, s, m"));
    assert!(run(&["proxy", "--ops", "decrypt-32"]).contains("give --endpoint (or --dev-json)"));
    assert!(run(&["compare", "--batch", "0"]).contains("--batch must be at least 1"));
}
