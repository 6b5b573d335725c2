//! `appliance db check` and `db upgrade`: where the database's schema stands against this
//! build's migrations, and applying the pending ones.

use std::path::Path;

use appliance_store::{Backend, Migration, SchemaStatus, Store};

use super::{Report, redacted_url};
use crate::config::Config;

/// `appliance db check`: the schema's version, the migrations pending, and any applied
/// migration whose checksum is not this build's; fails unless the schema is current.
pub async fn check(config: &Config, config_path: &Path) -> Report {
    let mut report = Report::default();
    let database = &config.database;
    // A check creates nothing: a SQLite file that is not there is said to be missing.
    if let Some(file) = appliance_store::sqlite_path(&database.url)
        && !file.exists()
    {
        report.fail(
            "database",
            format!(
                "no SQLite file at {}; `appliance db upgrade --config {}` creates it",
                file.display(),
                config_path.display()
            ),
        );
        return report;
    }
    let Some(store) = connect(&mut report, config).await else { return report };
    match store.schema().await {
        Ok(status) => schema_checks(&mut report, &status, config_path),
        Err(e) => report.fail("schema", format!("reading the applied migrations: {e}")),
    }
    store.close().await;
    report
}

/// `appliance db upgrade`: applies every pending migration in one transaction, says which,
/// then checks the schema as `db check` does.
pub async fn upgrade(config: &Config, config_path: &Path) -> Report {
    let mut report = Report::default();
    let Some(store) = connect(&mut report, config).await else { return report };
    let before = store.schema().await.ok();
    match store.migrate().await {
        Ok(applied) if applied.is_empty() => report.ok("upgrade", "no migration was pending"),
        Ok(applied) => {
            let known = appliance_store::migrations(store.backend());
            let names: Vec<String> = applied
                .iter()
                .map(|v| match known.iter().find(|m| m.version == *v) {
                    Some(m) => named(m),
                    None => v.to_string(),
                })
                .collect();
            report.ok("upgrade", format!("applied {}", names.join(", ")));
        }
        Err(e) => {
            report.fail("upgrade", format!("{e} (rolled back: no migration was applied)"));
        }
    }
    if let Some(before) = before
        && !before.unrecorded().is_empty()
        && !report.failed()
    {
        report.ok(
            "checksums recorded",
            format!(
                "for migrations {} (applied before checksums were kept)",
                list(&before.unrecorded())
            ),
        );
    }
    match store.schema().await {
        Ok(status) => schema_checks(&mut report, &status, config_path),
        Err(e) => report.fail("schema", format!("reading the applied migrations: {e}")),
    }
    store.close().await;
    report
}

/// Connects without migrating; a failure goes into the report.
pub(super) async fn connect(report: &mut Report, config: &Config) -> Option<Store> {
    let url = redacted_url(&config.database.url);
    // Checks need one connection, not the pool the API keeps.
    match Store::connect(&config.database.url, 1).await {
        Ok(store) => {
            let kind = match store.backend() {
                Backend::Sqlite => "SQLite",
                Backend::Postgres => "PostgreSQL",
            };
            report.ok("database", format!("{kind} at {url}"));
            Some(store)
        }
        Err(e) => {
            report.fail("database", format!("cannot connect to {url}: {e}"));
            None
        }
    }
}

/// The checks of a schema's standing: its version and what is pending, changed checksums, and
/// migrations of a newer build.
pub(super) fn schema_checks(report: &mut Report, status: &SchemaStatus, config_path: &Path) {
    let known = appliance_store::migrations(status.backend);
    let pending = status.pending();
    let of = format!("of {}", known.len());
    if pending.is_empty() {
        let version = status.version().map_or_else(|| "none".into(), |v| v.to_string());
        report.ok("schema", format!("version {version} {of}, nothing pending"));
    } else {
        let version = match status.version() {
            Some(v) => format!("version {v} {of}"),
            None => "empty".into(),
        };
        let names: Vec<String> = pending.iter().map(named).collect();
        report.fail(
            "schema",
            format!(
                "{version}; pending: {}; apply with `appliance db upgrade --config {}`",
                names.join(", "),
                config_path.display()
            ),
        );
    }
    let changed = status.changed();
    if !changed.is_empty() {
        for m in changed {
            let recorded = status
                .applied
                .iter()
                .find(|a| a.version == m.version)
                .and_then(|a| a.checksum.clone())
                .unwrap_or_default();
            report.fail(
                "checksum",
                format!(
                    "migration {} was applied with checksum {}, this build's is {}: its file \
                     changed after it was applied, or another build migrated this database",
                    named(&m),
                    short(&recorded),
                    short(&m.checksum())
                ),
            );
        }
    } else if !status.unrecorded().is_empty() {
        report.warn(
            "checksum",
            format!(
                "migrations {} were applied before checksums were kept; `appliance db upgrade` \
                 records this build's",
                list(&status.unrecorded())
            ),
        );
    } else if !status.applied.is_empty() {
        report.ok("checksum", "every applied migration matches this build's");
    }
    let unknown = status.unknown();
    if !unknown.is_empty() {
        report.fail(
            "newer schema",
            format!(
                "the database has migration {}, which this build does not know: a newer \
                 appliance migrated it; run that release",
                list(&unknown)
            ),
        );
    }
}

/// Why a schema is not current, in one sentence, for `serve` to refuse it with.
pub(crate) fn problems(status: &SchemaStatus) -> String {
    let mut problems = Vec::new();
    let pending = status.pending();
    if !pending.is_empty() {
        let names: Vec<String> = pending.iter().map(named).collect();
        problems.push(format!("pending migrations {}", names.join(", ")));
    }
    let changed = status.changed();
    if !changed.is_empty() {
        let names: Vec<String> = changed.iter().map(named).collect();
        problems.push(format!("migrations {} applied with another checksum", names.join(", ")));
    }
    let unknown = status.unknown();
    if !unknown.is_empty() {
        problems.push(format!("migrations {} of a newer build", list(&unknown)));
    }
    problems.join("; ")
}

fn named(m: &Migration) -> String {
    format!("{} {}", m.version, m.name)
}

fn list(versions: &[i64]) -> String {
    versions.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
}

/// The first 12 hex digits of a checksum: enough to tell two apart.
fn short(checksum: &str) -> String {
    let head: String = checksum.chars().take(12).collect();
    if head.len() < checksum.len() { format!("{head}…") } else { head }
}
