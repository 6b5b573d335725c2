//! `appliance project purge`: deleting everything a project owns and destroying its KEKs
//! (crypto-shredding), for a project deleted in Keystone.

use appliance_store::Purged;

use super::open_store;
use crate::config::Config;
use crate::error::Result;

/// What a purge did or, unless applied, would do.
#[derive(Debug)]
pub struct Purge {
    /// The project.
    pub project: String,
    /// What was (or would be) deleted.
    pub purged: Purged,
    /// Whether it was done.
    pub applied: bool,
}

impl std::fmt::Display for Purge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Purged { secrets, containers, orders, keks } = &self.purged;
        let verb = if self.applied { "deleted" } else { "would delete" };
        write!(
            f,
            "project {}: {verb} {secrets} secret(s), {containers} container(s), {orders} order(s) \
             and {} KEK(s)",
            self.project,
            keks.len()
        )?;
        for kek in keks {
            write!(f, "\n  KEK {kek} {}", if self.applied { "destroyed" } else { "to destroy" })?;
        }
        Ok(())
    }
}

/// Deletes the project's secrets, containers and orders with their metadata, consumers and
/// ACLs, its quota and preferred store, and its KEKs, in one transaction; unless `apply`, only
/// says what that would delete. Once the KEK rows are gone, the project's data in this
/// database cannot be decrypted; copies in backups taken before can be until the master key
/// they were wrapped under is destroyed (`hsm-proxy mkek rotate`, `appliance kek
/// rewrap-master`, then `hsm-proxy mkek destroy`).
pub async fn purge(config: &Config, project: &str, apply: bool) -> Result<Purge> {
    let store = open_store(config).await?;
    let purged = store.purge_project(project, apply).await;
    store.close().await;
    let purged = purged?;
    if apply {
        tracing::info!(
            project,
            secrets = purged.secrets,
            containers = purged.containers,
            orders = purged.orders,
            keks = purged.keks.len(),
            "project purged; its KEKs are destroyed"
        );
    }
    Ok(Purge { project: project.to_owned(), purged, applied: apply })
}
