//! `[logging]` of `appliance serve`: JSON lines that parse, with the access log's fields; one
//! request in N logged, counted rather than drawn, and every answer 5xx logged whatever the
//! sampling; the access log at debug (hidden by the default filter) or off.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{ServeConfig, bin_dir, free_port, http};

/// Runs `appliance serve` with `logging` as its `[logging]` section and `args` before `serve`,
/// its proxy down (so that storing a secret answers 503), sends `gets` listings (200) and
/// `posts` secrets (503), stops it, and gives its standard error.
fn serve(dir: &Path, args: &[&str], logging: &str, gets: usize, posts: usize) -> String {
    e2e::ensure_binaries();
    let pki = dir.join("pki");
    if !pki.join("ca.pem").exists() {
        let out = Command::new(bin_dir().join("appliance"))
            .args(["pki", "init", "--dir"])
            .arg(&pki)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let pki = ["pki/ca.pem", "pki/appliance.pem", "pki/appliance-key.pem"].map(String::from);
    let dead = vec![format!("127.0.0.1:{}", free_port())];
    let mut settings = ServeConfig::with_pki("", dead, pki);
    let port = settings.port;
    settings.database = format!("sqlite://{}", dir.join(format!("{port}.db")).display());
    settings.hsm = "connect_timeout_ms = 1000".into();
    settings.sections = format!("[logging]\n{logging}");
    let config = settings.write(&dir.join(format!("appliance-{port}.toml")));
    let log = dir.join(format!("serve-{port}.log"));
    let mut child = Command::new(bin_dir().join("appliance"))
        .args(args)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "{}", std::fs::read_to_string(&log).unwrap());
        assert!(Instant::now() < deadline, "serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let api = format!("http://127.0.0.1:{port}");
    let member = [("X-Project-Id", "logs"), ("X-Roles", "member,reader")];
    for _ in 0..gets {
        assert_eq!(http("GET", &format!("{api}/v1/secrets"), &member, b"").status, 200);
    }
    let body = br#"{"payload": "never logged", "payload_content_type": "text/plain"}"#;
    let json =
        [("X-Project-Id", "logs"), ("X-Roles", "member"), ("Content-Type", "application/json")];
    for _ in 0..posts {
        let r = http("POST", &format!("{api}/v1/secrets"), &json, body);
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(!text.contains("never logged"), "a payload was logged:\n{text}");
    text
}

/// The access log's lines among JSON log lines, every line of which must parse.
fn access_lines(text: &str) -> Vec<serde_json::Value> {
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for line in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line.get(key).is_some(), "no {key}: {line}");
        }
    }
    lines.into_iter().filter(|l| l["target"] == "appliance::access").collect()
}

#[test]
fn json_lines_with_one_request_in_n_and_every_5xx() {
    let dir = tempfile::tempdir().unwrap();
    let text = serve(dir.path(), &[], "format = \"json\"\naccess_log_sample = 5", 20, 3);
    let lines = access_lines(&text);
    // Requests 1, 6, 11 and 16 of the 20 listings, and each of the 3 failures.
    let ok: Vec<&serde_json::Value> = lines.iter().filter(|l| l["status"] == 200).collect();
    let failed: Vec<&serde_json::Value> = lines.iter().filter(|l| l["status"] == 503).collect();
    assert_eq!((ok.len(), failed.len(), lines.len()), (4, 3, 7), "{text}");
    for line in &lines {
        assert_eq!(line["message"], "request", "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
        assert!(line["ms"].is_u64(), "{line}");
    }
    assert_eq!(
        (ok[0]["method"].as_str(), ok[0]["path"].as_str()),
        (Some("GET"), Some("/v1/secrets"))
    );
    assert_eq!(failed[0]["method"], "POST");
    // The other lines are JSON too, with their own fields.
    assert!(
        text.lines().any(|l| l.contains("\"message\":\"serving the Barbican v1 API\"")),
        "{text}"
    );
}

#[test]
fn the_flag_overrides_the_file_and_the_access_log_can_be_quieted() {
    let dir = tempfile::tempdir().unwrap();
    // At debug, the default filter hides the successes; failures are still said, at INFO.
    let text = serve(
        dir.path(),
        &["--log-format", "json"],
        "format = \"text\"\naccess_log = \"debug\"",
        4,
        2,
    );
    let lines = access_lines(&text);
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines.iter().all(|l| l["status"] == 503 && l["level"] == "INFO"), "{text}");
    // With a debug filter, every request.
    let text = serve(
        dir.path(),
        &["--log-format", "json", "--log-level", "info,appliance::access=debug"],
        "access_log = \"debug\"",
        4,
        1,
    );
    let lines = access_lines(&text);
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(lines.iter().filter(|l| l["level"] == "DEBUG").count(), 4, "{text}");
    // Off: no access lines at all; text lines by default.
    let text = serve(dir.path(), &[], "access_log = \"off\"", 3, 1);
    assert!(!text.contains("appliance::access"), "{text}");
    assert!(text.contains("serving the Barbican v1 API"), "{text}");
    assert!(serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap()).is_err());
    // And text is what the access log looks like by default.
    let text = serve(dir.path(), &[], "", 2, 0);
    let requests =
        text.lines().filter(|l| l.contains("appliance::access") && l.contains("status=200"));
    assert_eq!(requests.count(), 2, "{text}");
}
