//! The operator's commands beside `serve`: `appliance db check` and `db upgrade` ([`db`]), and
//! `appliance doctor` ([`doctor`]), each printing a report of checks ([`Report`]) and ending
//! with an exit status from it; `appliance kek status` and `kek rotate` ([`keks`]);
//! `appliance project purge` ([`projects`]).

pub mod db;
pub mod doctor;
pub mod keks;
pub mod projects;

pub use ops::{Check, Outcome, Report};

use appliance_store::Store;

use crate::config::Config;
use crate::error::{Error, Result};

/// Opens the database for a command that changes it, refusing one whose schema is not this
/// build's.
async fn open_store(config: &Config) -> Result<Store> {
    let store = Store::connect(&config.database.url, 2).await?;
    let status = store.schema().await?;
    if !status.is_current() {
        store.close().await;
        return Err(Error::Schema(format!(
            "not current ({}); apply the migrations with `appliance db upgrade --config FILE`",
            db::problems(&status)
        )));
    }
    Ok(store)
}

/// A database URL with its password and parameters left out, fit to be printed.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.split('?').next().unwrap_or_default().to_owned();
    };
    let rest = rest.split('?').next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{path}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests report failures by panicking

    use super::*;

    #[test]
    fn urls_lose_their_passwords_and_parameters() {
        assert_eq!(
            redacted_url("postgres://app:s3cret@db.example.com:5432/kms?sslmode=require"),
            "postgres://app@db.example.com:5432/kms"
        );
        assert_eq!(redacted_url("postgres://app@db/kms"), "postgres://app@db/kms");
        assert_eq!(redacted_url("postgres://db:5432/kms"), "postgres://db:5432/kms");
        assert_eq!(redacted_url("postgres://a:b:c@db"), "postgres://a@db");
        assert_eq!(redacted_url("sqlite:///var/lib/a.db?mode=rwc"), "sqlite:///var/lib/a.db");
        assert_eq!(redacted_url("sqlite:a.db"), "sqlite:a.db");
    }
}
