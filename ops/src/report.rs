//! A report of checks: one aligned line per check (`ok`, `warn` or `FAIL`, what was checked,
//! what was found), then a count of failures and warnings.

use std::fmt;
use std::io::Write;

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// As it should be.
    Ok,
    /// Working, but something needs an operator soon (a certificate about to expire).
    Warn,
    /// Not working, or not as the daemon needs it.
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

/// One line of a report: what was checked, how it came out, and what was found. The detail
/// never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked (`database`, `proxy 10.0.0.5:5696`).
    pub name: String,
    /// How it came out.
    pub outcome: Outcome,
    /// What was found, or what to do.
    pub detail: String,
}

/// The checks of one command, in the order they ran.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// Adds a check.
    pub fn add(&mut self, name: impl Into<String>, outcome: Outcome, detail: impl Into<String>) {
        self.checks.push(Check { name: name.into(), outcome, detail: detail.into() });
    }

    /// Adds a passed check.
    pub fn ok(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(name, Outcome::Ok, detail);
    }

    /// Adds a warning.
    pub fn warn(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(name, Outcome::Warn, detail);
    }

    /// Adds a failed check.
    pub fn fail(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(name, Outcome::Fail, detail);
    }

    /// The worst outcome; `Ok` for no checks.
    pub fn worst(&self) -> Outcome {
        self.checks.iter().map(|c| c.outcome).max().unwrap_or(Outcome::Ok)
    }

    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.worst() == Outcome::Fail
    }

    /// The check named `name`, if one ran.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Writes one line per check, names aligned, then a line counting failures and warnings.
    pub fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            writeln!(out, "{:<4}  {:<width$}  {}", c.outcome, c.name, c.detail)?;
        }
        let count = |o| self.checks.iter().filter(|c| c.outcome == o).count();
        let (failures, warnings) = (count(Outcome::Fail), count(Outcome::Warn));
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        writeln!(
            out,
            "{} check{}: {failures} failure{}, {warnings} warning{}",
            self.checks.len(),
            plural(self.checks.len()),
            plural(failures),
            plural(warnings)
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests report failures by panicking

    use super::*;

    #[test]
    fn the_worst_outcome_decides_and_lines_align() {
        let mut report = Report::default();
        assert_eq!(report.worst(), Outcome::Ok);
        report.ok("database", "sqlite, schema 7");
        report.warn("tls certificate", "expires in 12 days");
        assert_eq!(report.worst(), Outcome::Warn);
        assert!(!report.failed());
        report.fail("proxy 10.0.0.5:5696", "connection refused");
        assert!(report.failed());
        assert_eq!(report.get("database").map(|c| c.outcome), Some(Outcome::Ok));
        let mut out = Vec::new();
        report.print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ok    database             sqlite, schema 7");
        assert_eq!(lines[1], "warn  tls certificate      expires in 12 days");
        assert_eq!(lines[2], "FAIL  proxy 10.0.0.5:5696  connection refused");
        assert_eq!(lines[3], "3 checks: 1 failure, 1 warning");
    }
}
