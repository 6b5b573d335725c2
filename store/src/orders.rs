//! Orders, and the job queue they form: a PENDING order is leased by one appliance at a time
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL), and completes only under its lease.

use sqlx::Row;

use super::relations::{ContainerRow, insert_container_on};
use super::{Backend, Result, SecretRow, Statement, Store, insert_secret_on};
use crate::now_micros;

/// Where an order is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    /// Waiting or being processed.
    Pending,
    /// Done: its secret or container exists.
    Active,
    /// Failed for good.
    Error,
}

impl OrderStatus {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Active => "ACTIVE",
            OrderStatus::Error => "ERROR",
        }
    }
}

/// An order's row.
#[derive(Clone, Debug)]
pub struct OrderRow {
    /// UUID4.
    pub id: String,
    /// The owning project.
    pub project_id: String,
    /// `key` or `asymmetric`.
    pub kind: String,
    /// The validated `meta`, as JSON text.
    pub meta: String,
    /// `PENDING`, `ACTIVE` or `ERROR`.
    pub status: String,
    /// The generated secret (key orders).
    pub secret_id: Option<String>,
    /// The generated container (asymmetric orders).
    pub container_id: Option<String>,
    /// HTTP-like status code of a failure, as a string (Barbican's form).
    pub error_status_code: Option<String>,
    /// Why it failed.
    pub error_reason: Option<String>,
    /// The user that ordered.
    pub creator_id: Option<String>,
    /// Microseconds since the epoch.
    pub created: i64,
    /// Microseconds since the epoch.
    pub updated: i64,
    /// An asymmetric order's passphrase while the order waits, in the form the services
    /// sealed it (never plaintext); dropped once the order is done.
    pub sealed_passphrase: Option<String>,
}

fn order_from_row(r: &sqlx::any::AnyRow) -> Result<OrderRow> {
    Ok(OrderRow {
        id: r.try_get("id")?,
        project_id: r.try_get("project_id")?,
        kind: r.try_get("type")?,
        meta: r.try_get("meta")?,
        status: r.try_get("status")?,
        secret_id: r.try_get("secret_id")?,
        container_id: r.try_get("container_id")?,
        error_status_code: r.try_get("error_status_code")?,
        error_reason: r.try_get("error_reason")?,
        creator_id: r.try_get("creator_id")?,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
        sealed_passphrase: r.try_get("sealed_passphrase")?,
    })
}

const ORDER_COLUMNS: &str = "id, project_id, type, meta, status, secret_id, container_id, \
     error_status_code, error_reason, creator_id, created, updated, sealed_passphrase";

/// The PENDING orders of the whole queue (every appliance's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingOrders {
    /// How many.
    pub count: i64,
    /// When the oldest was created, in microseconds since the epoch; `None` with none.
    pub oldest_created: Option<i64>,
}

impl Store {
    /// How many orders are PENDING, and since when the oldest.
    pub async fn pending_orders(&self) -> Result<PendingOrders> {
        let _timed = self.time(Statement::PendingOrders);
        let row = sqlx::query("SELECT COUNT(*), MIN(created) FROM orders WHERE status = 'PENDING'")
            .fetch_one(self.pool())
            .await?;
        Ok(PendingOrders { count: row.try_get(0)?, oldest_created: row.try_get(1)? })
    }

    /// Records a new PENDING order, leased to `owner` until `lease_until`.
    pub async fn insert_order(&self, o: &OrderRow, owner: &str, lease_until: i64) -> Result<()> {
        let _timed = self.time(Statement::InsertOrder);
        sqlx::query(&format!(
            "INSERT INTO orders ({ORDER_COLUMNS}, lease_owner, lease_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        ))
        .bind(&o.id)
        .bind(&o.project_id)
        .bind(&o.kind)
        .bind(&o.meta)
        .bind(&o.status)
        .bind(&o.secret_id)
        .bind(&o.container_id)
        .bind(&o.error_status_code)
        .bind(&o.error_reason)
        .bind(&o.creator_id)
        .bind(o.created)
        .bind(o.updated)
        .bind(&o.sealed_passphrase)
        .bind(owner)
        .bind(lease_until)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// An order by id (any project).
    pub async fn order(&self, id: &str) -> Result<Option<OrderRow>> {
        let _timed = self.time(Statement::Order);
        let row = sqlx::query(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(order_from_row).transpose()
    }

    /// A page of a project's orders (by creation), optionally those whose meta contains
    /// `meta`, and their total.
    pub async fn list_orders(
        &self,
        project_id: &str,
        meta: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<OrderRow>, i64)> {
        let _timed = self.time(Statement::ListOrders);
        let filter = if meta.is_some() { " AND meta LIKE $2" } else { "" };
        let pattern = meta.map(|m| format!("%{m}%"));
        let count_sql = format!("SELECT COUNT(*) FROM orders WHERE project_id = $1{filter}");
        let page_sql = format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE project_id = $1{filter} ORDER BY created, id LIMIT {} OFFSET {}",
            limit.max(0),
            offset.max(0)
        );
        let mut count = sqlx::query(&count_sql).bind(project_id);
        let mut page = sqlx::query(&page_sql).bind(project_id);
        if let Some(p) = &pattern {
            count = count.bind(p);
            page = page.bind(p);
        }
        let total: i64 = count.fetch_one(self.pool()).await?.try_get(0)?;
        let rows = page.fetch_all(self.pool()).await?;
        Ok((rows.iter().map(order_from_row).collect::<Result<_>>()?, total))
    }

    /// Deletes an order (its secret or container stays).
    pub async fn delete_order(&self, id: &str) -> Result<()> {
        let _timed = self.time(Statement::DeleteOrder);
        sqlx::query("DELETE FROM orders WHERE id = $1").bind(id).execute(self.pool()).await?;
        Ok(())
    }

    /// Leases the oldest PENDING order whose lease is free or expired, for `owner` until
    /// `lease_until`. Concurrent claimers (other appliances) never get the same order.
    pub async fn claim_order(&self, owner: &str, lease_until: i64) -> Result<Option<OrderRow>> {
        let _timed = self.time(Statement::ClaimOrder);
        let lock = if self.backend() == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let row = sqlx::query(&format!(
            "UPDATE orders SET lease_owner = $1, lease_until = $2, attempts = attempts + 1 WHERE id = \
             (SELECT id FROM orders WHERE status = 'PENDING' AND (lease_until IS NULL OR lease_until < $3) \
             ORDER BY created LIMIT 1{lock}) AND status = 'PENDING' RETURNING {ORDER_COLUMNS}"
        ))
        .bind(owner)
        .bind(lease_until)
        .bind(now_micros())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(order_from_row).transpose()
    }

    /// Completes an order under `owner`'s lease: its secrets (and container) are written and
    /// the order becomes ACTIVE in one transaction. `false` if the lease was lost (another
    /// appliance took the order over): then nothing is written.
    pub async fn complete_order(
        &self,
        id: &str,
        owner: &str,
        secrets: &[SecretRow],
        container: Option<&ContainerRow>,
    ) -> Result<bool> {
        let _timed = self.time(Statement::CompleteOrder);
        let mut tx = self.begin_write().await?;
        let secret_id =
            if container.is_none() { secrets.first().map(|s| s.id.clone()) } else { None };
        let container_id = container.map(|c| c.id.clone());
        let updated = sqlx::query(
            "UPDATE orders SET status = 'ACTIVE', secret_id = $1, container_id = $2, updated = $3, \
             lease_owner = NULL, lease_until = NULL, sealed_passphrase = NULL WHERE id = $4 AND lease_owner = $5 AND status = 'PENDING'",
        )
        .bind(&secret_id)
        .bind(&container_id)
        .bind(now_micros())
        .bind(id)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        for s in secrets {
            insert_secret_on(&mut tx, s).await?;
        }
        if let Some(c) = container {
            insert_container_on(&mut tx, c).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Marks an order ERROR under `owner`'s lease.
    pub async fn fail_order(
        &self,
        id: &str,
        owner: &str,
        code: &str,
        reason: &str,
    ) -> Result<bool> {
        let _timed = self.time(Statement::FailOrder);
        let r = sqlx::query(
            "UPDATE orders SET status = 'ERROR', error_status_code = $1, error_reason = $2, updated = $3, \
             lease_owner = NULL, lease_until = NULL, sealed_passphrase = NULL WHERE id = $4 AND lease_owner = $5 AND status = 'PENDING'",
        )
        .bind(code)
        .bind(reason)
        .bind(now_micros())
        .bind(id)
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Extends `owner`'s lease on an order it is still processing; `false` if it lost it.
    pub async fn renew_lease(&self, id: &str, owner: &str, lease_until: i64) -> Result<bool> {
        let _timed = self.time(Statement::RenewLease);
        let r = sqlx::query("UPDATE orders SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'PENDING'")
            .bind(lease_until)
            .bind(id)
            .bind(owner)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Gives a lease back after a transient failure; the order is retried after `retry_at`.
    pub async fn release_order(&self, id: &str, owner: &str, retry_at: i64) -> Result<()> {
        let _timed = self.time(Statement::ReleaseOrder);
        sqlx::query("UPDATE orders SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'PENDING'")
            .bind(retry_at)
            .bind(id)
            .bind(owner)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
