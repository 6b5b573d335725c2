//! `appliance serve --config`: a configuration file, failover past a dead proxy endpoint, and
//! an operator's policy file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{DevStack, ServeConfig, bin_dir, free_port, http};

#[test]
fn serve_reads_its_config_fails_over_and_applies_the_policy_file() {
    let dir = tempfile::tempdir().unwrap();
    // The dev stack provides a token, a proxy and a PKI to point a second appliance at.
    let stack = DevStack::start(&dir.path().join("dev"));
    let dead = format!("127.0.0.1:{}", free_port());
    let policy = dir.path().join("policy.yaml");
    // Operators' files look like oslo's samples: comments, quoted names.
    std::fs::write(&policy, "# only admins may list\n\"secrets:get\": \"role:admin\"\n").unwrap();
    let mut settings =
        ServeConfig::on(&stack, &format!("sqlite://{}", dir.path().join("serve.db").display()));
    settings.endpoints.insert(0, dead.clone());
    settings.hsm = "connect_timeout_ms = 1000".into();
    settings.sections = "[policy]\nfile = \"policy.yaml\"".into();
    let config = settings.write(&dir.path().join("appliance.toml"));
    let port = settings.port;

    let log = dir.path().join("serve.log");
    let mut child = Command::new(bin_dir().join("appliance"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let api = settings.api();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "serve exited:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(Instant::now() < deadline, "serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let member = [
        ("X-Project-Id", "ops"),
        ("X-Roles", "member,reader"),
        ("Content-Type", "application/json"),
    ];
    let r = http(
        "POST",
        &format!("{api}/v1/secrets"),
        &member,
        br#"{"payload": "via failover", "payload_content_type": "text/plain"}"#,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let secret = r.json()["secret_ref"].as_str().unwrap().to_owned();
    let r = http(
        "GET",
        &format!("{secret}/payload"),
        &[("X-Project-Id", "ops"), ("X-Roles", "member"), ("Accept", "text/plain")],
        b"",
    );
    assert_eq!(r.body, b"via failover");
    // The policy file took listing away from members, not from admins.
    let r = http("GET", &format!("{api}/v1/secrets"), &member, b"");
    assert_eq!(r.status, 403);
    let r = http(
        "GET",
        &format!("{api}/v1/secrets"),
        &[("X-Project-Id", "ops"), ("X-Roles", "admin")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["total"], 1);

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(text.contains("IDENTITY IS NOT AUTHENTICATED"), "no-auth must be announced:\n{text}");
    assert!(text.contains("policy overrides loaded"), "{text}");
    assert!(!text.contains("via failover"), "payloads must never be logged");
    drop(stack);
}

#[test]
fn serve_refuses_noauth_without_the_explicit_opt_in() {
    e2e::ensure_binaries();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("appliance.toml");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../appliance/appliance.example.toml"
    ))
    .unwrap();
    std::fs::write(&config, example.replace("allow_noauth = true", "allow_noauth = false"))
        .unwrap();
    let out = Command::new(bin_dir().join("appliance"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("allow_noauth"), "{stderr}");
}
