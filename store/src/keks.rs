//! Project KEKs and their lifecycle: each project's active KEK, the durable count of
//! encryptions charged to it, rotation, and the rewrap jobs that empty retired KEKs (leased by
//! one appliance at a time, `FOR UPDATE SKIP LOCKED` on PostgreSQL) before they are destroyed.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Backend, Columns, KekRow, Result, Statement, Store, present};
use crate::now_micros;

/// A project's active KEK, with what rotation is decided on.
#[derive(Clone, Debug)]
pub struct ActiveKek {
    /// Its id and wrapped key.
    pub row: KekRow,
    /// When it was created (microseconds since the epoch).
    pub created: i64,
    /// The encryptions charged to it so far: an upper bound, as appliances reserve them in
    /// blocks.
    pub encryptions: i64,
}

/// A retired KEK leased for its rewrap job.
#[derive(Clone, Debug)]
pub struct RetiredKek {
    /// Its id and wrapped key.
    pub row: KekRow,
    /// The project it belongs to.
    pub project_id: String,
    /// When it was retired (microseconds since the epoch).
    pub retired: i64,
}

/// A payload sealed under a KEK, as the rewrap job reads it.
#[derive(Clone, Debug)]
pub struct SealedUnder {
    /// The secret.
    pub secret_id: String,
    /// AES-256-GCM ciphertext.
    pub ciphertext: Vec<u8>,
    /// Its IV: unique per encryption, so it tells whether the payload changed since.
    pub iv: Vec<u8>,
    /// Its tag.
    pub tag: Vec<u8>,
}

/// A payload sealed again under another KEK, to replace the one read.
#[derive(Clone, Debug)]
pub struct Rewrapped {
    /// The secret.
    pub secret_id: String,
    /// The IV of the payload read: the row is changed only if it still holds that one.
    pub old_iv: Vec<u8>,
    /// The KEK it is now sealed under.
    pub kek_id: String,
    /// The new ciphertext.
    pub ciphertext: Vec<u8>,
    /// The new IV.
    pub iv: Vec<u8>,
    /// The new tag.
    pub tag: Vec<u8>,
}

/// A KEK and what is still sealed under it, for `appliance kek status`.
#[derive(Clone, Debug)]
pub struct KekStatus {
    /// Its id.
    pub id: String,
    /// Its project.
    pub project_id: String,
    /// Whether new data is sealed under it.
    pub active: bool,
    /// When it was created (microseconds since the epoch).
    pub created: i64,
    /// Encryptions charged to it (an upper bound).
    pub encryptions: i64,
    /// When it was retired.
    pub retired: Option<i64>,
    /// Payloads its rewrap job has moved off it.
    pub rewrapped: i64,
    /// The appliance whose rewrap job holds it, and until when.
    pub lease: Option<(String, i64)>,
    /// Secrets still sealed under it.
    pub sealed: i64,
}

fn kek_row(r: &AnyRow) -> Result<KekRow> {
    Ok(KekRow { id: r.try_get("id")?, wrapped: r.try_get("wrapped")? })
}

impl Store {
    /// The project's active KEK, if it has one.
    pub async fn active_kek(&self, project_id: &str) -> Result<Option<ActiveKek>> {
        let _timed = self.time(Statement::ActiveKek);
        let row = sqlx::query(
            "SELECT id, wrapped, created, encryptions FROM project_keks \
             WHERE project_id = $1 AND active = 1",
        )
        .bind(project_id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(ActiveKek {
                row: kek_row(&r)?,
                created: present(r.int("created")?, "created")?,
                encryptions: present(r.int("encryptions")?, "encryptions")?,
            })
        })
        .transpose()
    }

    /// A KEK by id (active or retired).
    pub async fn kek(&self, id: &str) -> Result<Option<KekRow>> {
        let _timed = self.time(Statement::Kek);
        let row = sqlx::query("SELECT id, wrapped FROM project_keks WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(kek_row).transpose()
    }

    /// Records the project's first KEK, active. `false` when another one became active first
    /// (two first secrets at once); the caller then uses that one.
    pub async fn insert_kek(&self, project_id: &str, kek: &KekRow) -> Result<bool> {
        let _timed = self.time(Statement::InsertKek);
        let result = sqlx::query(
            "INSERT INTO project_keks (id, project_id, wrapped, active, created) \
             VALUES ($1, $2, $3, 1, $4)",
        )
        .bind(&kek.id)
        .bind(project_id)
        .bind(&kek.wrapped)
        .bind(now_micros())
        .execute(self.pool())
        .await;
        match result {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Charges `n` more encryptions to KEK `id` while it is active: the count after, or `None`
    /// when it is no longer active (rotated meanwhile).
    pub async fn reserve_encryptions(&self, id: &str, n: i64) -> Result<Option<i64>> {
        let _timed = self.time(Statement::ReserveEncryptions);
        let row = sqlx::query(
            "UPDATE project_keks SET encryptions = encryptions + $1 WHERE id = $2 AND active = 1 \
             RETURNING encryptions",
        )
        .bind(n)
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| present(r.int("encryptions")?, "encryptions")).transpose()
    }

    /// Retires the project's active KEK `old` and makes `new` active, in one transaction.
    /// `false` when `old` is no longer the active one (another rotation won): nothing is
    /// written.
    pub async fn rotate_kek(&self, project_id: &str, old: &str, new: &KekRow) -> Result<bool> {
        let _timed = self.time(Statement::RotateKek);
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        let retired = sqlx::query(
            "UPDATE project_keks SET active = 0, retired = $1 \
             WHERE id = $2 AND project_id = $3 AND active = 1",
        )
        .bind(now)
        .bind(old)
        .bind(project_id)
        .execute(&mut *tx)
        .await?;
        if retired.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO project_keks (id, project_id, wrapped, active, created) \
             VALUES ($1, $2, $3, 1, $4)",
        )
        .bind(&new.id)
        .bind(project_id)
        .bind(&new.wrapped)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Every KEK (active or retired) with an id after `after`, in id order, at most `limit`.
    pub async fn keks_after(&self, after: &str, limit: i64) -> Result<Vec<KekRow>> {
        let _timed = self.time(Statement::KeksAfter);
        let rows =
            sqlx::query("SELECT id, wrapped FROM project_keks WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(self.pool())
                .await?;
        rows.iter().map(kek_row).collect()
    }

    /// Replaces KEK `id`'s blob `old` by `new` (the same key wrapped under another master
    /// key); `false` when the row no longer holds `old` (or is gone): nothing is written.
    pub async fn replace_kek_blob(&self, id: &str, old: &[u8], new: &[u8]) -> Result<bool> {
        let _timed = self.time(Statement::ReplaceKekBlob);
        let result =
            sqlx::query("UPDATE project_keks SET wrapped = $1 WHERE id = $2 AND wrapped = $3")
                .bind(new)
                .bind(id)
                .bind(old)
                .execute(self.pool())
                .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Active KEKs created before `cutoff`, oldest first, at most `limit`: project and id.
    pub async fn aged_keks(&self, cutoff: i64, limit: i64) -> Result<Vec<(String, String)>> {
        let _timed = self.time(Statement::AgedKeks);
        let rows = sqlx::query(
            "SELECT project_id, id FROM project_keks WHERE active = 1 AND created < $1 \
             ORDER BY created LIMIT $2",
        )
        .bind(cutoff)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Leases the retired KEK retired longest ago whose lease is free or expired, for `owner`
    /// until `lease_until`. Concurrent claimers (other appliances) never get the same one.
    pub async fn claim_retired_kek(
        &self,
        owner: &str,
        lease_until: i64,
    ) -> Result<Option<RetiredKek>> {
        let _timed = self.time(Statement::ClaimRetiredKek);
        let lock = if self.backend() == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let row = sqlx::query(&format!(
            "UPDATE project_keks SET lease_owner = $1, lease_until = $2 WHERE id = \
             (SELECT id FROM project_keks WHERE active = 0 \
             AND (lease_until IS NULL OR lease_until < $3) ORDER BY retired LIMIT 1{lock}) \
             AND active = 0 RETURNING id, wrapped, project_id, retired"
        ))
        .bind(owner)
        .bind(lease_until)
        .bind(now_micros())
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(RetiredKek {
                row: kek_row(&r)?,
                project_id: r.try_get("project_id")?,
                retired: present(r.int("retired")?, "retired")?,
            })
        })
        .transpose()
    }

    /// Extends `owner`'s lease on retired KEK `id`; `false` if it lost it.
    pub async fn renew_kek_lease(&self, id: &str, owner: &str, lease_until: i64) -> Result<bool> {
        let _timed = self.time(Statement::RenewKekLease);
        let r = sqlx::query(
            "UPDATE project_keks SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 \
             AND active = 0",
        )
        .bind(lease_until)
        .bind(id)
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Gives the lease on retired KEK `id` back; its job is taken up again after `retry_at`.
    pub async fn release_kek(&self, id: &str, owner: &str, retry_at: i64) -> Result<()> {
        let _timed = self.time(Statement::ReleaseKek);
        sqlx::query(
            "UPDATE project_keks SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 \
             AND active = 0",
        )
        .bind(retry_at)
        .bind(id)
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Up to `limit` payloads sealed under `kek_id`, of the secrets whose id sorts after
    /// `after`, in id order.
    pub async fn sealed_under(
        &self,
        kek_id: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<SealedUnder>> {
        let _timed = self.time(Statement::SealedUnder);
        let rows = sqlx::query(
            "SELECT id, ciphertext, iv, tag FROM secrets WHERE kek_id = $1 AND id > $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(kek_id)
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SealedUnder {
                    secret_id: r.try_get("id")?,
                    ciphertext: present(r.blob("ciphertext")?, "ciphertext")?,
                    iv: present(r.blob("iv")?, "iv")?,
                    tag: present(r.blob("tag")?, "tag")?,
                })
            })
            .collect()
    }

    /// Replaces payloads sealed under retired KEK `old` by their rewrapped form, in one
    /// transaction under `owner`'s lease on `old`, each only if its row still holds the payload
    /// read (same KEK, same IV: neither deleted nor replaced meanwhile). How many moved;
    /// `None` when the lease was lost, and then nothing is written.
    pub async fn rewrap(&self, old: &str, owner: &str, moved: &[Rewrapped]) -> Result<Option<u64>> {
        let _timed = self.time(Statement::Rewrap);
        let mut tx = self.begin_write().await?;
        let held = sqlx::query(
            "SELECT id FROM project_keks WHERE id = $1 AND lease_owner = $2 AND active = 0",
        )
        .bind(old)
        .bind(owner)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            tx.rollback().await?;
            return Ok(None);
        }
        let mut count = 0u64;
        for m in moved {
            let r = sqlx::query(
                "UPDATE secrets SET kek_id = $1, ciphertext = $2, iv = $3, tag = $4 \
                 WHERE id = $5 AND kek_id = $6 AND iv = $7",
            )
            .bind(&m.kek_id)
            .bind(&m.ciphertext)
            .bind(&m.iv)
            .bind(&m.tag)
            .bind(&m.secret_id)
            .bind(old)
            .bind(&m.old_iv)
            .execute(&mut *tx)
            .await?;
            count += r.rows_affected();
        }
        sqlx::query("UPDATE project_keks SET rewrapped = rewrapped + $1 WHERE id = $2")
            .bind(i64::try_from(count).unwrap_or(i64::MAX))
            .bind(old)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(count))
    }

    /// Destroys retired KEK `id` under `owner`'s lease if nothing is sealed under it any more:
    /// no secret's payload and no waiting order's passphrase. `false` when something still is
    /// (or the lease was lost); then the KEK stays.
    pub async fn destroy_kek(&self, id: &str, owner: &str) -> Result<bool> {
        let _timed = self.time(Statement::DestroyKek);
        // A payload written under the KEK concurrently makes the foreign key refuse the delete
        // (PostgreSQL checks it after the subqueries' snapshot): that is "still in use" too.
        let result = sqlx::query(
            "DELETE FROM project_keks WHERE id = $1 AND active = 0 AND lease_owner = $2 \
             AND NOT EXISTS (SELECT 1 FROM secrets WHERE kek_id = $1) \
             AND NOT EXISTS (SELECT 1 FROM orders WHERE status = 'PENDING' \
             AND sealed_passphrase LIKE $3)",
        )
        .bind(id)
        .bind(owner)
        .bind(format!("%\"kek_id\":\"{id}\"%"))
        .execute(self.pool())
        .await;
        match result {
            Ok(r) => Ok(r.rows_affected() == 1),
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Every KEK, or one project's, with what is still sealed under it; by project, oldest
    /// first.
    pub async fn kek_status(&self, project_id: Option<&str>) -> Result<Vec<KekStatus>> {
        let _timed = self.time(Statement::KekStatus);
        let filter = if project_id.is_some() { "WHERE k.project_id = $1" } else { "" };
        let sql = format!(
            "SELECT k.id, k.project_id, k.active, k.created, k.encryptions, k.retired, \
             k.rewrapped, k.lease_owner, k.lease_until, \
             (SELECT COUNT(*) FROM secrets s WHERE s.kek_id = k.id) AS sealed \
             FROM project_keks k {filter} ORDER BY k.project_id, k.created"
        );
        let mut query = sqlx::query(&sql);
        if let Some(p) = project_id {
            query = query.bind(p);
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                let lease = match (r.text("lease_owner")?, r.int("lease_until")?) {
                    (Some(owner), Some(until)) => Some((owner, until)),
                    _ => None,
                };
                Ok(KekStatus {
                    id: r.try_get("id")?,
                    project_id: r.try_get("project_id")?,
                    active: present(r.int("active")?, "active")? == 1,
                    created: present(r.int("created")?, "created")?,
                    encryptions: present(r.int("encryptions")?, "encryptions")?,
                    retired: r.int("retired")?,
                    rewrapped: present(r.int("rewrapped")?, "rewrapped")?,
                    lease,
                    sealed: present(r.int("sealed")?, "sealed")?,
                })
            })
            .collect()
    }

    /// Retired KEKs not yet destroyed, and the payloads still sealed under them.
    pub async fn retired_keks(&self) -> Result<(i64, i64)> {
        let _timed = self.time(Statement::KekStatus);
        let row = sqlx::query(
            "SELECT COUNT(*) AS keks, \
             (SELECT COUNT(*) FROM secrets s JOIN project_keks r ON s.kek_id = r.id \
             WHERE r.active = 0) AS sealed \
             FROM project_keks WHERE active = 0",
        )
        .fetch_one(self.pool())
        .await?;
        Ok((present(row.int("keks")?, "keks")?, present(row.int("sealed")?, "sealed")?))
    }
}
