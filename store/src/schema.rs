//! The schema's migrations: those this build carries, those a database has applied (with the
//! checksum of each as applied), and applying the pending ones.

use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::{Backend, Result, Store, now_micros};

/// Serialises migrations between appliances sharing one PostgreSQL (an arbitrary constant).
const MIGRATION_LOCK: i64 = 0x6b65_795f_6d67_7231;

/// One migration of the schema, as this build carries it.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Its number; migrations are applied in this order.
    pub version: i64,
    /// Its file's name without the number and extension (`secrets`).
    pub name: &'static str,
    pub(crate) sql: &'static str,
}

impl Migration {
    /// SHA-256 of its SQL, in hex: what the database records when it applies it.
    pub fn checksum(&self) -> String {
        hex(&Sha256::digest(self.sql.as_bytes()))
    }
}

/// Migrations per backend, applied in order; append only: a file once released never changes.
const SQLITE_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "secrets",
        sql: include_str!("../migrations/sqlite/0001_secrets.sql"),
    },
    Migration {
        version: 2,
        name: "orders_containers_acls",
        sql: include_str!("../migrations/sqlite/0002_orders_containers_acls.sql"),
    },
    Migration {
        version: 3,
        name: "sealed_order_passphrase",
        sql: include_str!("../migrations/sqlite/0003_sealed_order_passphrase.sql"),
    },
    Migration {
        version: 4,
        name: "kek_lifecycle",
        sql: include_str!("../migrations/sqlite/0004_kek_lifecycle.sql"),
    },
];
const POSTGRES_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "secrets",
        sql: include_str!("../migrations/postgres/0001_secrets.sql"),
    },
    Migration {
        version: 2,
        name: "orders_containers_acls",
        sql: include_str!("../migrations/postgres/0002_orders_containers_acls.sql"),
    },
    Migration {
        version: 3,
        name: "sealed_order_passphrase",
        sql: include_str!("../migrations/postgres/0003_sealed_order_passphrase.sql"),
    },
    Migration {
        version: 4,
        name: "kek_lifecycle",
        sql: include_str!("../migrations/postgres/0004_kek_lifecycle.sql"),
    },
];

/// The migrations this build carries for `backend`, in order.
pub fn migrations(backend: Backend) -> &'static [Migration] {
    match backend {
        Backend::Sqlite => SQLITE_MIGRATIONS,
        Backend::Postgres => POSTGRES_MIGRATIONS,
    }
}

/// A migration as the database recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedMigration {
    /// Its number.
    pub version: i64,
    /// When it was applied, in microseconds since the epoch.
    pub applied: i64,
    /// The checksum of its SQL as applied; `None` when it was applied before checksums were
    /// recorded (the next `migrate` records this build's).
    pub checksum: Option<String>,
}

/// Where a database's schema stands against this build's migrations.
#[derive(Clone, Debug)]
pub struct SchemaStatus {
    /// Which database.
    pub backend: Backend,
    /// What the database has applied, in order.
    pub applied: Vec<AppliedMigration>,
}

impl SchemaStatus {
    /// The highest migration applied; `None` for an empty database.
    pub fn version(&self) -> Option<i64> {
        self.applied.iter().map(|m| m.version).max()
    }

    /// This build's migrations that the database has not applied, in order.
    pub fn pending(&self) -> Vec<Migration> {
        migrations(self.backend)
            .iter()
            .filter(|m| !self.applied.iter().any(|a| a.version == m.version))
            .copied()
            .collect()
    }

    /// Applied migrations whose recorded checksum is not this build's: the file was changed
    /// after it was applied, or the database was migrated by another build.
    pub fn changed(&self) -> Vec<Migration> {
        migrations(self.backend)
            .iter()
            .filter(|m| {
                self.applied.iter().any(|a| {
                    a.version == m.version
                        && a.checksum.as_ref().is_some_and(|c| *c != m.checksum())
                })
            })
            .copied()
            .collect()
    }

    /// Applied migrations this build does not know: a newer build migrated the database.
    pub fn unknown(&self) -> Vec<i64> {
        let known = migrations(self.backend);
        self.applied
            .iter()
            .map(|a| a.version)
            .filter(|v| !known.iter().any(|m| m.version == *v))
            .collect()
    }

    /// Applied migrations with no checksum recorded.
    pub fn unrecorded(&self) -> Vec<i64> {
        self.applied.iter().filter(|a| a.checksum.is_none()).map(|a| a.version).collect()
    }

    /// The database has exactly this build's schema: nothing pending, nothing changed, nothing
    /// from a newer build.
    pub fn is_current(&self) -> bool {
        self.pending().is_empty() && self.changed().is_empty() && self.unknown().is_empty()
    }
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// One `COUNT(*)` query's answer, as a truth.
async fn exists(conn: &mut sqlx::AnyConnection, sql: &str) -> Result<bool> {
    let n: i64 = sqlx::query(sql).fetch_one(&mut *conn).await?.try_get(0)?;
    Ok(n > 0)
}

/// Whether the bookkeeping table exists, and whether it has its `checksum` column.
async fn bookkeeping(conn: &mut sqlx::AnyConnection, backend: Backend) -> Result<(bool, bool)> {
    let (table, column) = match backend {
        Backend::Sqlite => (
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'appliance_schema'",
            "SELECT COUNT(*) FROM pragma_table_info('appliance_schema') WHERE name = 'checksum'",
        ),
        Backend::Postgres => (
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = 'appliance_schema'",
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = \
             current_schema() AND table_name = 'appliance_schema' AND column_name = 'checksum'",
        ),
    };
    if !exists(conn, table).await? {
        return Ok((false, false));
    }
    Ok((true, exists(conn, column).await?))
}

/// The migrations recorded in the database, in order.
async fn applied(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
) -> Result<Vec<AppliedMigration>> {
    let (table, column) = bookkeeping(conn, backend).await?;
    if !table {
        return Ok(Vec::new());
    }
    let sql = if column {
        "SELECT version, applied, checksum FROM appliance_schema ORDER BY version"
    } else {
        "SELECT version, applied, NULL FROM appliance_schema ORDER BY version"
    };
    let rows = sqlx::query(sql).fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|r| {
            Ok(AppliedMigration {
                version: r.try_get(0)?,
                applied: r.try_get(1)?,
                checksum: r.try_get(2)?,
            })
        })
        .collect()
}

impl Store {
    /// Where the database's schema stands; changes nothing.
    pub async fn schema(&self) -> Result<SchemaStatus> {
        let mut conn = self.pool().acquire().await?;
        let applied = applied(&mut conn, self.backend).await?;
        Ok(SchemaStatus { backend: self.backend, applied })
    }

    /// Applies every pending migration, in one transaction (on PostgreSQL under an advisory
    /// lock, so that appliances starting at once apply each once), and records this build's
    /// checksum for applied migrations that have none. The versions applied, in order.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        let mut tx = self.pool().begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        match bookkeeping(&mut tx, self.backend).await? {
            (false, _) => {
                sqlx::query(
                    "CREATE TABLE appliance_schema (version BIGINT PRIMARY KEY, \
                     applied BIGINT NOT NULL, checksum TEXT)",
                )
                .execute(&mut *tx)
                .await?;
            }
            (true, false) => {
                sqlx::query("ALTER TABLE appliance_schema ADD COLUMN checksum TEXT")
                    .execute(&mut *tx)
                    .await?;
            }
            (true, true) => {}
        }
        let recorded = applied(&mut tx, self.backend).await?;
        let mut done = Vec::new();
        for migration in migrations(self.backend) {
            match recorded.iter().find(|a| a.version == migration.version) {
                Some(a) if a.checksum.is_none() => {
                    sqlx::query("UPDATE appliance_schema SET checksum = $1 WHERE version = $2")
                        .bind(migration.checksum())
                        .bind(migration.version)
                        .execute(&mut *tx)
                        .await?;
                }
                Some(_) => {}
                None => {
                    sqlx::raw_sql(migration.sql).execute(&mut *tx).await?;
                    sqlx::query(
                        "INSERT INTO appliance_schema (version, applied, checksum) \
                         VALUES ($1, $2, $3)",
                    )
                    .bind(migration.version)
                    .bind(now_micros())
                    .bind(migration.checksum())
                    .execute(&mut *tx)
                    .await?;
                    tracing::info!(
                        version = migration.version,
                        name = migration.name,
                        "database migration applied"
                    );
                    done.push(migration.version);
                }
            }
        }
        tx.commit().await?;
        Ok(done)
    }

    /// The database server's clock, in microseconds since the epoch; `None` for SQLite, which
    /// runs on this machine's.
    pub async fn server_time_micros(&self) -> Result<Option<i64>> {
        if self.backend == Backend::Sqlite {
            return Ok(None);
        }
        // clock_timestamp(), not now(): the latter is the start of the transaction.
        let row =
            sqlx::query("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)")
                .fetch_one(self.pool())
                .await?;
        Ok(Some(row.try_get(0)?))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests report failures by panicking

    use super::*;

    /// A SQLite database on a new file, connected without migrating.
    async fn fresh() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let store = Store::connect(&url, 2).await.unwrap();
        (dir, store)
    }

    #[test]
    fn each_backend_has_the_same_migrations_in_order() {
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let versions: Vec<i64> = migrations(backend).iter().map(|m| m.version).collect();
            let expected: Vec<i64> = (1..=versions.len() as i64).collect();
            assert_eq!(versions, expected, "{backend:?}");
        }
        let names = |b| migrations(b).iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(Backend::Sqlite), names(Backend::Postgres));
        let sum = SQLITE_MIGRATIONS[0].checksum();
        assert_eq!(sum.len(), 64);
        assert!(sum.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{sum}");
        assert_ne!(sum, POSTGRES_MIGRATIONS[0].checksum());
    }

    #[tokio::test]
    async fn a_fresh_database_has_everything_pending_until_migrated() {
        let (_dir, store) = fresh().await;
        let status = store.schema().await.unwrap();
        assert_eq!(status.version(), None);
        assert_eq!(status.pending().len(), SQLITE_MIGRATIONS.len());
        assert!(!status.is_current());
        let applied = store.migrate().await.unwrap();
        let every: Vec<i64> = SQLITE_MIGRATIONS.iter().map(|m| m.version).collect();
        assert_eq!(applied, every);
        let status = store.schema().await.unwrap();
        assert_eq!(status.version(), every.last().copied());
        assert!(status.pending().is_empty() && status.changed().is_empty());
        assert!(status.is_current());
        for (a, m) in status.applied.iter().zip(SQLITE_MIGRATIONS) {
            assert_eq!(a.checksum.as_deref(), Some(m.checksum().as_str()));
            assert!(a.applied > now_micros() - 60_000_000);
        }
        // Nothing left to do.
        assert!(store.migrate().await.unwrap().is_empty());
        store.close().await;
    }

    #[tokio::test]
    async fn a_changed_checksum_and_a_newer_migration_make_the_schema_not_current() {
        let (_dir, store) = fresh().await;
        store.migrate().await.unwrap();
        sqlx::query("UPDATE appliance_schema SET checksum = 'abc' WHERE version = 2")
            .execute(store.pool())
            .await
            .unwrap();
        let status = store.schema().await.unwrap();
        let changed: Vec<i64> = status.changed().iter().map(|m| m.version).collect();
        assert_eq!(changed, [2]);
        assert!(status.pending().is_empty() && !status.is_current());
        // Migrating again does not hide it.
        assert!(store.migrate().await.unwrap().is_empty());
        assert_eq!(store.schema().await.unwrap().changed().len(), 1);
        sqlx::query("UPDATE appliance_schema SET checksum = $1 WHERE version = 2")
            .bind(SQLITE_MIGRATIONS[1].checksum())
            .execute(store.pool())
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO appliance_schema (version, applied, checksum) VALUES (99, 1, 'x')",
        )
        .execute(store.pool())
        .await
        .unwrap();
        let status = store.schema().await.unwrap();
        assert_eq!(status.unknown(), [99]);
        assert!(status.changed().is_empty() && !status.is_current());
        store.close().await;
    }

    /// A database migrated before checksums were recorded: its bookkeeping table gains the
    /// column, its rows this build's checksums, and the pending migrations are applied.
    #[tokio::test]
    async fn checksums_are_recorded_for_migrations_applied_without_them() {
        let (_dir, store) = fresh().await;
        sqlx::query(
            "CREATE TABLE appliance_schema (version BIGINT PRIMARY KEY, applied BIGINT NOT NULL)",
        )
        .execute(store.pool())
        .await
        .unwrap();
        for m in &SQLITE_MIGRATIONS[..2] {
            sqlx::raw_sql(m.sql).execute(store.pool()).await.unwrap();
            sqlx::query("INSERT INTO appliance_schema (version, applied) VALUES ($1, 7)")
                .bind(m.version)
                .execute(store.pool())
                .await
                .unwrap();
        }
        let status = store.schema().await.unwrap();
        assert_eq!(status.version(), Some(2));
        assert_eq!(status.unrecorded(), [1, 2]);
        let later: Vec<i64> = SQLITE_MIGRATIONS[2..].iter().map(|m| m.version).collect();
        assert_eq!(status.pending().iter().map(|m| m.version).collect::<Vec<_>>(), later);
        assert!(status.changed().is_empty());
        assert_eq!(store.migrate().await.unwrap(), later);
        let status = store.schema().await.unwrap();
        assert!(status.is_current() && status.unrecorded().is_empty());
        assert_eq!(status.applied[0].applied, 7, "the time it was applied is kept");
        store.close().await;
    }
}
