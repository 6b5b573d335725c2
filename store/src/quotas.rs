//! Per-project quotas, the counts they are checked against, and preferred secret stores.

use std::collections::HashMap;

use sqlx::{AnyConnection, Row};

use super::grouped::{GroupRead, push_in_list};
use super::sqlite_reads::lookup_one;
use super::{Backend, Columns, Result, Statement, Store, present};
use crate::now_micros;

/// What a quota limits, in Barbican's order; each is a column of `project_quotas`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuotaResource {
    /// Secrets.
    Secrets,
    /// Orders.
    Orders,
    /// Containers.
    Containers,
    /// Consumers of secrets and of containers together.
    Consumers,
    /// Certificate authorities.
    Cas,
}

impl QuotaResource {
    /// Every resource, in Barbican's order.
    pub const ALL: [QuotaResource; 5] = [
        QuotaResource::Secrets,
        QuotaResource::Orders,
        QuotaResource::Containers,
        QuotaResource::Consumers,
        QuotaResource::Cas,
    ];

    /// The name in the API and the column in the database.
    pub fn name(self) -> &'static str {
        match self {
            QuotaResource::Secrets => "secrets",
            QuotaResource::Orders => "orders",
            QuotaResource::Containers => "containers",
            QuotaResource::Consumers => "consumers",
            QuotaResource::Cas => "cas",
        }
    }

    /// The resource of this name, if there is one.
    pub fn parse(name: &str) -> Option<QuotaResource> {
        QuotaResource::ALL.into_iter().find(|r| r.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What is counted against a quota: consumers of secrets and of containers are kept apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// Unexpired secrets.
    Secrets,
    /// Orders.
    Orders,
    /// Containers.
    Containers,
    /// Consumers registered on secrets.
    SecretConsumers,
    /// Consumers registered on containers.
    ContainerConsumers,
}

impl Counted {
    /// The quota it counts against.
    pub fn resource(self) -> QuotaResource {
        match self {
            Counted::Secrets => QuotaResource::Secrets,
            Counted::Orders => QuotaResource::Orders,
            Counted::Containers => QuotaResource::Containers,
            Counted::SecretConsumers | Counted::ContainerConsumers => QuotaResource::Consumers,
        }
    }
}

/// Per resource, a value; indexed by [`QuotaResource`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerResource(pub [Option<i64>; 5]);

impl PerResource {
    /// The value for `resource`.
    pub fn get(&self, resource: QuotaResource) -> Option<i64> {
        self.0[resource.index()]
    }

    /// Sets the value for `resource`.
    pub fn set(&mut self, resource: QuotaResource, value: Option<i64>) {
        self.0[resource.index()] = value;
    }

    /// Each resource with its value, in Barbican's order.
    pub fn iter(&self) -> impl Iterator<Item = (QuotaResource, Option<i64>)> + '_ {
        QuotaResource::ALL.into_iter().map(|r| (r, self.get(r)))
    }
}

/// A project's configured quotas (`None`: the default applies).
#[derive(Clone, Debug, Default)]
pub struct QuotaRow {
    /// The project (any string).
    pub project_id: String,
    /// Per resource.
    pub values: PerResource,
}

impl Store {
    /// A project's configured quotas, if any, read with the other lookups waiting: every
    /// creation checks its project's quota first.
    pub async fn project_quota(&self, project_id: &str) -> Result<Option<QuotaRow>> {
        let _timed = self.time(Statement::ProjectQuota);
        self.quotas.read(project_id).await
    }

    /// A page of configured projects and their total.
    pub async fn list_project_quotas(
        &self,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<QuotaRow>, i64)> {
        let _timed = self.time(Statement::ListProjectQuotas);
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
    pub async fn put_project_quota(
        &self,
        project_id: &str,
        updates: &[(QuotaResource, i64)],
    ) -> Result<()> {
        let _timed = self.time(Statement::PutProjectQuota);
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
            let column = resource.name();
            sqlx::query(&format!(
                "UPDATE project_quotas SET {column} = $1, updated = $2 WHERE project_id = $3"
            ))
            .bind(*value)
            .bind(now)
            .bind(project_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes a project's quotas; `false` if none were configured.
    pub async fn delete_project_quota(&self, project_id: &str) -> Result<bool> {
        let _timed = self.time(Statement::DeleteProjectQuota);
        let r = sqlx::query("DELETE FROM project_quotas WHERE project_id = $1")
            .bind(project_id)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Live entities of `resource` in a project (`consumers` counts `table`'s consumers).
    pub async fn count(&self, counted: Counted, project_id: &str) -> Result<i64> {
        let _timed = self.time(Statement::Count);
        let sql = match counted {
            Counted::Secrets => {
                "SELECT COUNT(*) FROM secrets WHERE project_id = $1 AND (expiration IS NULL OR expiration > $2)"
            }
            Counted::Orders => "SELECT COUNT(*) FROM orders WHERE project_id = $1 AND $2 = $2",
            Counted::Containers => {
                "SELECT COUNT(*) FROM containers WHERE project_id = $1 AND $2 = $2"
            }
            Counted::SecretConsumers => {
                "SELECT COUNT(*) FROM secret_consumers WHERE project_id = $1 AND $2 = $2"
            }
            Counted::ContainerConsumers => {
                "SELECT COUNT(*) FROM container_consumers WHERE project_id = $1 AND $2 = $2"
            }
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
        let _timed = self.time(Statement::PreferredStore);
        let row = sqlx::query("SELECT store_id FROM preferred_stores WHERE project_id = $1")
            .bind(project_id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| r.try_get(0).map_err(Into::into)).transpose()
    }

    /// Sets the project's preferred secret store.
    pub async fn set_preferred_store(&self, project_id: &str, store_id: &str) -> Result<()> {
        let _timed = self.time(Statement::SetPreferredStore);
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
        let _timed = self.time(Statement::DeletePreferredStore);
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
    let mut values = PerResource::default();
    for resource in QuotaResource::ALL {
        values.set(resource, r.int(resource.name())?);
    }
    Ok(QuotaRow { project_id: present(r.text("project_id")?, "project_id")?, values })
}
