//! Whole projects: purging everything a project owns, its KEKs last, in one transaction, so
//! that what it sealed can never be opened again from this database.

use sqlx::Row;

use super::{Backend, Result, Statement, Store};

/// What a purge deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// Secrets (with their metadata, consumers and ACLs).
    pub secrets: u64,
    /// Containers (with their references, consumers and ACLs).
    pub containers: u64,
    /// Orders, whatever their status.
    pub orders: u64,
    /// The ids of the project's KEKs, active and retired, whose rows are gone: the wrapped keys
    /// the proxy may still hold unwrapped.
    pub keks: Vec<String>,
}

/// Rows of other tables that belong to the project's secrets or containers, deleted before
/// them. `$1` is the project.
const DEPENDENTS: &[&str] = &[
    "DELETE FROM acl_users WHERE entity_type = 'secret' \
     AND entity_id IN (SELECT id FROM secrets WHERE project_id = $1)",
    "DELETE FROM acls WHERE entity_type = 'secret' \
     AND entity_id IN (SELECT id FROM secrets WHERE project_id = $1)",
    "DELETE FROM acl_users WHERE entity_type = 'container' \
     AND entity_id IN (SELECT id FROM containers WHERE project_id = $1)",
    "DELETE FROM acls WHERE entity_type = 'container' \
     AND entity_id IN (SELECT id FROM containers WHERE project_id = $1)",
    // A container of another project may not hold this project's secrets, but a reference
    // left by any path must not keep a deleted secret's row alive.
    "DELETE FROM container_secrets WHERE container_id IN \
     (SELECT id FROM containers WHERE project_id = $1) \
     OR secret_id IN (SELECT id FROM secrets WHERE project_id = $1)",
    "DELETE FROM container_consumers WHERE container_id IN \
     (SELECT id FROM containers WHERE project_id = $1)",
    "DELETE FROM secret_metadata WHERE secret_id IN \
     (SELECT id FROM secrets WHERE project_id = $1)",
    "DELETE FROM secret_consumers WHERE secret_id IN \
     (SELECT id FROM secrets WHERE project_id = $1)",
    "DELETE FROM project_quotas WHERE project_id = $1",
    "DELETE FROM preferred_stores WHERE project_id = $1",
];

impl Store {
    /// Deletes every secret, container and order of `project_id` with all that hangs off
    /// them, then the project's KEKs, in one transaction: either all of it is gone or none.
    /// Unless `apply`, the transaction is rolled back: what it would delete, exactly.
    pub async fn purge_project(&self, project_id: &str, apply: bool) -> Result<Purged> {
        let _timed = self.time(Statement::PurgeProject);
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            // A row the project gains while the purge runs must not outlive it: serialisable,
            // such a write makes one of the two fail (SQLite's write lock already excludes it).
            sqlx::query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").execute(&mut *tx).await?;
        }
        for sql in DEPENDENTS {
            sqlx::query(sql).bind(project_id).execute(&mut *tx).await?;
        }
        let mut owned = [0u64; 3];
        for (n, table) in ["containers", "orders", "secrets"].into_iter().enumerate() {
            let sql = format!("DELETE FROM {table} WHERE project_id = $1");
            owned[n] = sqlx::query(&sql).bind(project_id).execute(&mut *tx).await?.rows_affected();
        }
        let [containers, orders, secrets] = owned;
        let keks = sqlx::query("DELETE FROM project_keks WHERE project_id = $1 RETURNING id")
            .bind(project_id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if apply {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(Purged { secrets, containers, orders, keks })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests report failures by panicking

    use super::*;

    /// Two projects' worth of rows: a KEK each (and a retired one for `p`), secrets with
    /// metadata, consumers and ACLs, a container with a consumer, an order, a quota.
    const ROWS: &[&str] = &[
        "INSERT INTO project_keks (id, project_id, wrapped, active, created) VALUES \
         ('kp', 'p', x'00', 1, 1), ('kp0', 'p', x'00', 0, 1), ('kq', 'q', x'00', 1, 1)",
        "INSERT INTO secrets (id, project_id, secret_type, created, updated, kek_id) VALUES \
         ('s1', 'p', 'opaque', 1, 1, 'kp'), ('s2', 'p', 'opaque', 1, 1, 'kp0'), \
         ('s3', 'q', 'opaque', 1, 1, 'kq')",
        "INSERT INTO secret_metadata (secret_id, key, value, created, updated) VALUES \
         ('s1', 'k', 'v', 1, 1), ('s3', 'k', 'v', 1, 1)",
        "INSERT INTO secret_consumers (secret_id, project_id, service, resource_type, \
         resource_id, created, updated) VALUES ('s1', 'p', 'nova', 'vm', 'a', 1, 1), \
         ('s3', 'q', 'nova', 'vm', 'b', 1, 1)",
        "INSERT INTO containers (id, project_id, type, created, updated) VALUES \
         ('c1', 'p', 'generic', 1, 1), ('c2', 'q', 'generic', 1, 1)",
        "INSERT INTO container_secrets (container_id, position, secret_id) VALUES \
         ('c1', 0, 's1'), ('c1', 1, 's2'), ('c2', 0, 's3')",
        "INSERT INTO container_consumers (container_id, project_id, name, url, created, \
         updated) VALUES ('c1', 'p', 'lb', 'http://lb', 1, 1), ('c2', 'q', 'lb', 'http://lb', 1, 1)",
        "INSERT INTO acls (entity_type, entity_id, operation, project_access, created, \
         updated) VALUES ('secret', 's1', 'read', 0, 1, 1), ('container', 'c1', 'read', 0, 1, 1), \
         ('secret', 's3', 'read', 0, 1, 1)",
        "INSERT INTO acl_users (entity_type, entity_id, operation, user_id) VALUES \
         ('secret', 's1', 'read', 'u'), ('container', 'c1', 'read', 'u'), \
         ('secret', 's3', 'read', 'u')",
        "INSERT INTO orders (id, project_id, type, meta, status, created, updated) VALUES \
         ('o1', 'p', 'key', '{}', 'ACTIVE', 1, 1), ('o2', 'q', 'key', '{}', 'ACTIVE', 1, 1)",
        "INSERT INTO project_quotas (project_id, secrets, created, updated) VALUES \
         ('p', 5, 1, 1), ('q', 5, 1, 1)",
    ];

    /// Every row of every project table, as text, for comparing before and after.
    async fn everything(store: &Store) -> Vec<String> {
        let mut all = Vec::new();
        for (table, key) in [
            ("project_keks", "id"),
            ("secrets", "id"),
            ("secret_metadata", "secret_id"),
            ("secret_consumers", "secret_id"),
            ("containers", "id"),
            ("container_secrets", "container_id || '/' || secret_id"),
            ("container_consumers", "container_id"),
            ("acls", "entity_id"),
            ("acl_users", "entity_id"),
            ("orders", "id"),
            ("project_quotas", "project_id"),
        ] {
            let sql = format!("SELECT {key} AS k FROM {table} ORDER BY 1");
            for row in sqlx::query(&sql).fetch_all(store.pool()).await.unwrap() {
                all.push(format!("{table}:{}", row.try_get::<String, _>("k").unwrap()));
            }
        }
        all
    }

    #[tokio::test]
    async fn a_purge_takes_all_of_one_project_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let store = Store::open(&url, 2).await.unwrap();
        for sql in ROWS {
            sqlx::query(sql).execute(store.pool()).await.unwrap();
        }
        let before = everything(&store).await;

        let dry = store.purge_project("p", false).await.unwrap();
        assert_eq!(everything(&store).await, before, "a dry run deleted something");
        let purged = store.purge_project("p", true).await.unwrap();
        assert_eq!(dry, purged);
        let mut keks = purged.keks.clone();
        keks.sort();
        assert_eq!((purged.secrets, purged.containers, purged.orders), (2, 1, 1));
        assert_eq!(keks, ["kp", "kp0"]);

        let q = [
            "project_keks:kq",
            "secrets:s3",
            "secret_metadata:s3",
            "secret_consumers:s3",
            "containers:c2",
            "container_secrets:c2/s3",
            "container_consumers:c2",
            "acls:s3",
            "acl_users:s3",
            "orders:o2",
            "project_quotas:q",
        ];
        assert_eq!(everything(&store).await, q);
        // Purging again finds nothing; another project is untouched by an unknown one.
        assert_eq!(store.purge_project("p", true).await.unwrap(), Purged::default());
        assert_eq!(store.purge_project("nobody", true).await.unwrap(), Purged::default());
        assert_eq!(everything(&store).await, q);
    }
}
