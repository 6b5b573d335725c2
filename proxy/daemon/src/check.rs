//! `hsm-proxy check-config`: a configuration checked as far as it can be without serving: the
//! TLS files load and are in date, the secret files are private, and the token opens as
//! `serve` opens it, up to its master key. One line per check; nothing is changed.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pki::inspect::Standing;

use crate::config::Config;

/// A certificate expiring within this many days is a warning.
const EXPIRY_MARGIN_DAYS: i64 = 30;

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// As it should be.
    Ok,
    /// Working, but something needs an operator soon.
    Warn,
    /// `serve` would fail, or run without what it needs.
    Fail,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that a width in the format aligns the columns.
        f.pad(match self {
            Outcome::Ok => "ok",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
        })
    }
}

/// One line: what was checked, how it came out, what was found. Never a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// How it came out.
    pub outcome: Outcome,
    /// What was found, or what to do.
    pub detail: String,
}

/// Runs every check of `config`; `now` is in seconds since the epoch.
pub fn run(config: &Config, now: i64) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut add = |name: &str, outcome, detail: String| {
        checks.push(Check { name: name.to_owned(), outcome, detail });
    };
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

/// Writes one line per check, names aligned, then a line counting failures and warnings.
pub fn print(checks: &[Check], out: &mut impl Write) -> std::io::Result<()> {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in checks {
        writeln!(out, "{:<4}  {:<width$}  {}", c.outcome, c.name, c.detail)?;
    }
    let count = |o| checks.iter().filter(|c| c.outcome == o).count();
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let (failures, warnings) = (count(Outcome::Fail), count(Outcome::Warn));
    writeln!(
        out,
        "{} check{}: {failures} failure{}, {warnings} warning{}",
        checks.len(),
        plural(checks.len()),
        plural(failures),
        plural(warnings)
    )
}
