//! `hsm-proxy check-config` on a real token: every check passes on a token ready to serve, and
//! a wrong PIN, a missing master key, a token that is not there and a secret file others can
//! read are each said, on the line of their check, with the exit status that goes with them.
//! And the proxy's JSON log lines.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers report failures by panicking

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use common::{Proxy, Settings, Token, proxy_command, write_config};

fn check_config(token: &Token, config: &Path) -> Output {
    proxy_command(token).args(["check-config", "--config"]).arg(config).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn both(out: &Output) -> String {
    format!("{}\n--- stderr ---\n{}", stdout(out), String::from_utf8_lossy(&out.stderr))
}

/// The report line of check `name`, panicking when there is none.
fn line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(&format!("{name} "))))
        .unwrap_or_else(|| panic!("no {name:?} line in:\n{report}"))
}

/// `config` with `[pkcs11] pin_file` pointing at `pin_file`.
fn with_pin_file(config: &Path, token: &Token, pin_file: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    let old = format!("pin_file = \"{}\"", token.pin_file.display());
    assert!(text.contains(&old));
    std::fs::write(config, text.replace(&old, &format!("pin_file = \"{}\"", pin_file.display())))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_its_master_key_fails_until_init_token() {
    let token = Token::new().await;
    let (config, _) = write_config(&token, &Settings::default());

    let out = check_config(&token, &config);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let report = stdout(&out);
    // The file's summary comes first, as before.
    assert!(report.contains(": valid"), "{report}");
    for name in ["tls", "certificate [tls] cert", "certificate [tls] client_ca", "pkcs11 module"] {
        assert!(line(&report, name).starts_with("ok"), "{name}: {report}");
    }
    assert!(line(&report, "token").contains(&format!("{:?}", token.label)), "{report}");
    assert!(line(&report, "login").starts_with("ok"), "{report}");
    let mkek = line(&report, "master key");
    assert!(
        mkek.starts_with("FAIL")
            && mkek.contains("no master key labelled \"hsm-proxy-mkek\"")
            && mkek.contains("hsm-proxy init-token"),
        "{report}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("some checks failed"), "{}", both(&out));

    let out = proxy_command(&token).args(["init-token", "--config"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", both(&out));
    let out = check_config(&token, &config);
    assert!(out.status.success(), "{}", both(&out));
    let report = stdout(&out);
    assert!(!report.contains("FAIL"), "{report}");
    assert!(line(&report, "master key").contains("non-extractable AES key"), "{report}");
    assert!(line(&report, "sessions").starts_with("ok"), "{report}");
    assert!(report.contains(" 0 failures"), "{report}");
    // The PIN is never shown.
    assert!(!both(&out).contains(&token.pin()), "{}", both(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_a_missing_token_and_a_readable_pin_file_are_named() {
    let token = Token::new().await;
    let (config, _) = write_config(&token, &Settings::default());
    let out = proxy_command(&token).args(["init-token", "--config"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", both(&out));

    let wrong = token.path().join("wrong-pin");
    std::fs::write(&wrong, "not-the-pin\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o400)).unwrap();
    with_pin_file(&config, &token, &wrong);
    let out = check_config(&token, &config);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let report = stdout(&out);
    let login = line(&report, "login");
    assert!(
        login.starts_with("FAIL") && login.contains("refused the user PIN (CKR_PIN_INCORRECT)"),
        "{report}"
    );
    // Nothing after a failed login is tried.
    assert!(!report.contains("master key"), "{report}");
    assert!(!both(&out).contains("not-the-pin"), "{}", both(&out));

    // A PIN file others can read works, with a warning; a warning alone passes.
    let (config, _) = write_config(&token, &Settings::default());
    std::fs::set_permissions(&token.pin_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check_config(&token, &config);
    assert!(out.status.success(), "{}", both(&out));
    let report = stdout(&out);
    let pin = line(&report, "[pkcs11] pin_file");
    assert!(pin.starts_with("warn") && pin.contains("mode 0644"), "{report}");
    assert!(report.contains("0 failures, 1 warning"), "{report}");

    let (config, _) = write_config(&token, &Settings::default());
    let text = std::fs::read_to_string(&config).unwrap();
    let label = format!("token_label = \"{}\"", token.label);
    std::fs::write(&config, text.replace(&label, "token_label = \"no-such-token\"")).unwrap();
    let out = check_config(&token, &config);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let report = stdout(&out);
    let found = line(&report, "token");
    assert!(
        found.starts_with("FAIL")
            && found.contains("no token labelled \"no-such-token\"")
            && found.contains(&token.label),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_parse_and_carry_their_fields() {
    let token = Token::new().await;
    let settings =
        Settings { extra: "[logging]\nformat = \"json\"\n".into(), ..Settings::default() };
    let proxy = Proxy::start(&token, &settings);
    let addr = proxy.addr.to_string();
    let (status, log) = proxy.terminate();
    assert!(status.success(), "{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let serving = lines
        .iter()
        .find(|l| l["message"] == "serving")
        .unwrap_or_else(|| panic!("no serving line:\n{log}"));
    assert_eq!(serving["listen"], addr.as_str(), "{serving}");
    assert_eq!(serving["level"], "INFO");
    assert!(serving["timestamp"].is_string() && serving["target"].is_string(), "{serving}");
    assert!(lines.len() > 2, "{log}");
}
