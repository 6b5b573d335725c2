//! Per-project quotas, the counts they are checked against, and preferred secret stores.

use std::collections::HashMap;

use sqlx::{AnyConnection, Row};

use super::grouped::{GroupRead, push_in_list};
use super::sqlite_reads::lookup_one;
use super::{Backend, Columns, Result, Store, present};
use crate::now_micros;

/// The quota resources, in Barbican's order.
pub const QUOTA_RESOURCES: [&str; 5] = ["secrets", "orders", "containers", "consumers", "cas"];

/// A project's configured quotas (`None`: the default applies).
#[derive(Clone, Debug, Default)]
pub struct QuotaRow {
    /// The project (any string).
    pub project_id: String,
    /// Per resource, in [`QUOTA_RESOURCES`] order.
    pub values: [Option<i64>; 5],
}

impl Store {
    /// A project's configured quotas, if any, read with the other lookups waiting: every
    /// creation checks its project's quota first.
    pub async fn project_quota(&self, project_id: &str) -> Result<Option<QuotaRow>> {
        self.quotas.read(project_id).await
    }

    /// A page of configured projects and their total.
    pub async fn list_project_quotas(
        &self,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<QuotaRow>, i64)> {
        let total: i64 = sqlx::query("SELECT COUNT(*) FROM project_quotas")
            .fetch_one(self.pool())
            .await?
            .try_get(0)?;
        let rows = sqlx::query(&format!(
            "SELECT * FROM project_quotas ORDER BY created, project_id LIMIT {} OFFSET {}",
            limit.max(0),
            offset.max(0)
        ))
        .fetch_all(self.pool())
        .await?;
        Ok((rows.iter().map(quota_from_row).collect::<Result<_>>()?, total))
    }

    /// Sets the given resources' quotas, keeping the others (Barbican merges).
    pub async fn put_project_quota(&self, project_id: &str, updates: &[(&str, i64)]) -> Result<()> {
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO project_quotas (project_id, created, updated) VALUES ($1, $2, $3) ON CONFLICT (project_id) DO NOTHING",
        )
        .bind(project_id)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for (resource, value) in updates {
            if QUOTA_RESOURCES.contains(resource) {
                sqlx::query(&format!(
                    "UPDATE project_quotas SET {resource} = $1, updated = $2 WHERE project_id = $3"
                ))
                .bind(*value)
                .bind(now)
                .bind(project_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes a project's quotas; `false` if none were configured.
    pub async fn delete_project_quota(&self, project_id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM project_quotas WHERE project_id = $1")
            .bind(project_id)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Live entities of `resource` in a project (`consumers` counts `table`'s consumers).
    pub async fn count(&self, resource: &str, project_id: &str) -> Result<i64> {
        let sql = match resource {
            "secrets" => {
                "SELECT COUNT(*) FROM secrets WHERE project_id = $1 AND (expiration IS NULL OR expiration > $2)"
            }
            "orders" => "SELECT COUNT(*) FROM orders WHERE project_id = $1 AND $2 = $2",
            "containers" => "SELECT COUNT(*) FROM containers WHERE project_id = $1 AND $2 = $2",
            "secret_consumers" => {
                "SELECT COUNT(*) FROM secret_consumers WHERE project_id = $1 AND $2 = $2"
            }
            "container_consumers" => {
                "SELECT COUNT(*) FROM container_consumers WHERE project_id = $1 AND $2 = $2"
            }
            _ => return Ok(0),
        };
        Ok(sqlx::query(sql)
            .bind(project_id)
            .bind(now_micros())
            .fetch_one(self.pool())
            .await?
            .try_get(0)?)
    }

    /// The project's preferred secret store, if set.
    pub async fn preferred_store(&self, project_id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT store_id FROM preferred_stores WHERE project_id = $1")
            .bind(project_id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| r.try_get(0).map_err(Into::into)).transpose()
    }

    /// Sets the project's preferred secret store.
    pub async fn set_preferred_store(&self, project_id: &str, store_id: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO preferred_stores (project_id, store_id, created) VALUES ($1, $2, $3) \
             ON CONFLICT (project_id) DO UPDATE SET store_id = $2",
        )
        .bind(project_id)
        .bind(store_id)
        .bind(now_micros())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Removes the project's preference; `false` if none was set.
    pub async fn delete_preferred_store(&self, project_id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM preferred_stores WHERE project_id = $1")
            .bind(project_id)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }
}

/// Configured quotas by project, for the group reader.
#[derive(Debug)]
pub(super) struct ProjectQuotas;

impl GroupRead for ProjectQuotas {
    type Row = QuotaRow;

    async fn select(
        conn: &mut AnyConnection,
        backend: Backend,
        projects: &[&str],
    ) -> Result<HashMap<String, QuotaRow>> {
        let mut sql = String::from("SELECT * FROM project_quotas WHERE project_id IN (");
        let bound = push_in_list(&mut sql, backend, 0, projects);
        sql.push(')');
        let mut query = sqlx::query(&sql);
        for project in bound {
            query = query.bind(project);
        }
        let rows = query.fetch_all(&mut *conn).await?;
        rows.iter().map(|r| quota_from_row(r).map(|q| (q.project_id.clone(), q))).collect()
    }

    fn select_sqlite(conn: &rusqlite::Connection, project: &str) -> Result<Option<QuotaRow>> {
        const SQL: &str = "SELECT * FROM project_quotas WHERE project_id = ?1";
        lookup_one(conn, SQL, project, &[], |r| quota_from_row(r))
    }
}

fn quota_from_row(r: &impl Columns) -> Result<QuotaRow> {
    let mut values = [None; 5];
    for (i, resource) in QUOTA_RESOURCES.iter().enumerate() {
        values[i] = r.int(resource)?;
    }
    Ok(QuotaRow { project_id: present(r.text("project_id")?, "project_id")?, values })
}
