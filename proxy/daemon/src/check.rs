//! `hsm-proxy check-config`: a configuration checked as far as it can be without serving: the
//! TLS files load and are in date, the secret files are private, and the token opens as
//! `serve` opens it, up to its master key. One line per check; nothing is changed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ops::{Outcome, Report};
use pki::inspect::Standing;

use crate::config::Config;

/// A certificate expiring within this many days is a warning.
const EXPIRY_MARGIN_DAYS: i64 = 30;

/// Runs every check of `config`; `now` is in seconds since the epoch.
pub fn run(config: &Config, now: i64) -> Report {
    let mut checks = Report::default();
    let mut add = |name: &str, outcome, detail: String| checks.add(name, outcome, detail);
    match crate::tls::server_config(&config.tls) {
        Ok(_) => add(
            "tls",
            Outcome::Ok,
            format!(
                "certificate, key and client CA load; clients named {}",
                config.tls.allowed_clients.join(", ")
            ),
        ),
        Err(e) => add("tls", Outcome::Fail, e.to_string()),
    }
    for (name, path) in
        [("[tls] cert", &config.tls.cert), ("[tls] client_ca", &config.tls.client_ca)]
    {
        let name = format!("certificate {name}");
        match pki::inspect::standing(path, now, EXPIRY_MARGIN_DAYS) {
            Standing::Valid(text) => add(&name, Outcome::Ok, format!("{}: {text}", path.display())),
            Standing::ExpiresSoon(text) => {
                add(&name, Outcome::Warn, format!("{}: {text}; renew it", path.display()))
            }
            Standing::Invalid(text) => add(&name, Outcome::Fail, text),
        }
    }
    let mut private = vec![("[tls] key", config.tls.key.as_path())];
    if let Some(pin) = &config.pkcs11.pin_file {
        private.push(("[pkcs11] pin_file", pin.as_path()));
    }
    for (name, path) in private {
        let (outcome, detail) = private_file(path);
        add(name, outcome, detail);
    }
    let pin = match config.pkcs11.read_pin() {
        Ok(pin) => pin,
        Err(e) => {
            add("pin", Outcome::Fail, e.to_string());
            return checks;
        }
    };
    let token = crate::hsm::check_token(&config.pkcs11, pin);
    let opened = token.steps.iter().all(|(_, found)| found.is_ok());
    for (name, found) in token.steps {
        match found {
            Ok(detail) => add(name, Outcome::Ok, detail),
            Err(why) => add(name, Outcome::Fail, why),
        }
    }
    if opened {
        match crate::session_limit(config, token.max_sessions) {
            Ok(limit) => add(
                "sessions",
                Outcome::Ok,
                match crate::worker_count(config, limit) {
                    1 => format!("1 worker session (of at most {limit}) beside the key-holder"),
                    n => format!("{n} worker sessions (of at most {limit}) beside the key-holder"),
                },
            ),
            Err(e) => add("sessions", Outcome::Fail, e.to_string()),
        }
    }
    checks
}

/// Whether a file holding a secret can be read by other users than its owner.
fn private_file(path: &Path) -> (Outcome, String) {
    match std::fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => (
            Outcome::Warn,
            format!(
                "{} can be read by other users (mode {:04o}): chmod 0400",
                path.display(),
                meta.permissions().mode() & 0o7777
            ),
        ),
        Ok(_) => (Outcome::Ok, format!("{} is private to its owner", path.display())),
        Err(e) => (Outcome::Fail, format!("{}: {e}", path.display())),
    }
}
