//! Storage: SQLite (default) or PostgreSQL through sqlx's `Any` driver, one set of queries.
//!
//! Secrets are stored as AES-GCM ciphertext with IV, tag and the id of the project KEK they are
//! sealed under; KEKs only wrapped under the HSM's master key. Nothing here ever holds a
//! plaintext or an unwrapped key.
//!
//! This crate is the only one that speaks SQL: the appliance's services call it, and
//! nothing here knows of HTTP, policy or the HSM.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use self::grouped::{GroupRead, GroupReader, Kept, push_in_list, push_parameters};
use self::sqlite_reads::{SqliteReader, lookup_one};

mod grouped;
mod keks;
mod observe;
mod orders;
mod projects;
mod quotas;
mod relations;
mod schema;
mod sqlite_reads;

pub use keks::{ActiveKek, KekStatus, RetiredKek, Rewrapped, SealedUnder};
pub use observe::{Observer, PoolStats, Statement};
pub use orders::{OrderRow, OrderStatus, PendingOrders};
pub use projects::Purged;
pub use quotas::{Counted, PerResource, QuotaResource, QuotaRow};
pub use relations::{
    AclRow, ContainerConsumerRow, ContainerRow, ContainerSecret, EntityKind, SecretConsumerRow,
};
pub use schema::{AppliedMigration, Migration, SchemaStatus, migrations};

/// A database failure; callers answer 500 (or 503 when the database is unreachable).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// From sqlx (either backend).
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// From SQLite on the reader thread.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A column that must hold a value was NULL.
    #[error("database: {0} is NULL")]
    Null(&'static str),
    /// The reader thread could not be started.
    #[error("database: starting the reader thread: {0}")]
    Thread(std::io::Error),
    /// The reader thread has stopped (the store is closing).
    #[error("database: the store is closing")]
    ReaderGone,
}

impl StoreError {
    /// Whether the database could not be reached at all (rather than refusing a statement).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Sql(e) => {
                matches!(
                    e,
                    sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
                )
            }
            StoreError::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::SystemIoFailure)
            ),
            StoreError::ReaderGone => true,
            StoreError::Null(_) | StoreError::Thread(_) => false,
        }
    }
}

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

/// Which database is behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, one file.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A project's KEK as stored: its id and the key wrapped under the MKEK.
#[derive(Clone, Debug)]
pub struct KekRow {
    /// Hex of the proxy's 16-byte KEK id.
    pub id: String,
    /// The wrapped key.
    pub wrapped: Vec<u8>,
}

/// A secret's row. The payload fields are all set or all empty.
#[derive(Clone, Debug)]
pub struct SecretRow {
    /// UUID4, canonical lower case; time-ordered when made here.
    pub id: String,
    /// The owning project (external id).
    pub project_id: String,
    /// Free-form name.
    pub name: Option<String>,
    /// `symmetric`, `public`, `private`, `passphrase`, `certificate` or `opaque`.
    pub secret_type: String,
    /// As sent by the client.
    pub algorithm: Option<String>,
    /// As sent by the client.
    pub bit_length: Option<i64>,
    /// As sent by the client.
    pub mode: Option<String>,
    /// Microseconds since the epoch; past it the secret looks deleted.
    pub expiration: Option<i64>,
    /// The user that created it.
    pub creator_id: Option<String>,
    /// Microseconds since the epoch.
    pub created: i64,
    /// Microseconds since the epoch.
    pub updated: i64,
    /// None for a metadata-only secret.
    pub payload: Option<StoredPayload>,
    /// Whether the secret has a read ACL, when the query that loaded it also asked: the policy
    /// check of a secret without one then needs no query of its own. `None`: not asked.
    pub has_read_acl: Option<bool>,
}

/// The sealed payload of a secret.
#[derive(Clone, Debug)]
pub struct StoredPayload {
    /// Normalised media type: `text/plain`, `application/octet-stream`, `application/pkcs8`.
    pub content_type: String,
    /// How the plaintext is served: `None` as stored; `pem:LABEL` for DER stored and served
    /// as PEM with that label (generated private keys).
    pub format: Option<String>,
    /// The project KEK it is sealed under.
    pub kek_id: String,
    /// AES-256-GCM ciphertext.
    pub ciphertext: Vec<u8>,
    /// The 96-bit IV.
    pub iv: Vec<u8>,
    /// The 128-bit tag.
    pub tag: Vec<u8>,
}

impl StoredPayload {
    /// A payload as the HSM sealed it under KEK `kek_id`: AES-256-GCM ciphertext, IV and tag.
    pub fn new(
        content_type: String,
        format: Option<String>,
        kek_id: String,
        ciphertext: Vec<u8>,
        iv: &[u8],
        tag: &[u8],
    ) -> StoredPayload {
        StoredPayload {
            content_type,
            format,
            kek_id,
            ciphertext,
            iv: iv.to_vec(),
            tag: tag.to_vec(),
        }
    }
}

/// A comparison in a date filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// `=`
    Eq,
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `<`
    Lt,
    /// `<=`
    Lte,
}

/// What `GET /v1/secrets` asks for.
#[derive(Clone, Debug, Default)]
pub struct SecretQuery {
    /// The caller's project.
    pub project_id: String,
    /// SQL `LIKE` pattern on the name (case-insensitive).
    pub name: Option<String>,
    /// SQL `LIKE` pattern on the algorithm.
    pub algorithm: Option<String>,
    /// SQL `LIKE` pattern on the mode.
    pub mode: Option<String>,
    /// Exact bit length.
    pub bits: Option<i64>,
    /// Exact secret type.
    pub secret_type: Option<String>,
    /// Bounds on `created`.
    pub created: Vec<(Compare, i64)>,
    /// Bounds on `updated`.
    pub updated: Vec<(Compare, i64)>,
    /// Bounds on `expiration`.
    pub expiration: Vec<(Compare, i64)>,
    /// (column, descending), before the default creation order.
    pub sort: Vec<(&'static str, bool)>,
    /// Rows skipped.
    pub offset: i64,
    /// Rows returned at most.
    pub limit: i64,
}

/// The database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    inserts: mpsc::Sender<PendingInsert>,
    secrets: GroupReader<Secrets>,
    quotas: GroupReader<quotas::ProjectQuotas>,
    kept: Kept,
    /// The lookups' reader thread, on a SQLite file.
    reader: Option<SqliteReader>,
    /// Told how long each statement takes.
    observer: Option<Arc<dyn Observer>>,
}

const SECRET_COLUMNS: &str = "id, project_id, name, secret_type, algorithm, bit_length, mode, \
     expiration, creator_id, created, updated, content_type, kek_id, ciphertext, iv, tag, \
     payload_format";

impl Store {
    /// Connects (creating a SQLite file if needed) and applies pending migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<Store> {
        let store = Store::connect(url, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects (creating a SQLite file if needed) and leaves the schema as it is: see
    /// [`Store::schema`] and [`Store::migrate`].
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        Store::connect_observed(url, max_connections, None).await
    }

    /// [`Store::connect`], telling `observer` how long each statement takes.
    pub async fn connect_observed(
        url: &str,
        max_connections: u32,
        observer: Option<Arc<dyn Observer>>,
    ) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            // A SQLite connection lives in this process and cannot be lost, and testing it
            // costs two thread hand-offs per query; a PostgreSQL one can, after a restart.
            .test_before_acquire(backend != Backend::Sqlite)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; the busy timeout makes writers
                        // queue instead of failing with SQLITE_BUSY.
                        for pragma in [
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA busy_timeout = 5000",
                            "PRAGMA synchronous = NORMAL",
                            // Under sustained load the log outgrows its checkpoints; once it
                            // is reset, the file is cut back to 64 MiB rather than kept at its
                            // peak.
                            "PRAGMA journal_size_limit = 67108864",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let reader = match backend {
            Backend::Sqlite => sqlite_file(&url).map(|f| SqliteReader::open(&f)).transpose()?,
            Backend::Postgres => None,
        };
        let kept = Kept::new(pool.clone(), backend, max_connections);
        let (inserts, queue) = mpsc::channel(4 * MAX_GROUPED_INSERTS);
        let (writer_alive, writer_gone) = oneshot::channel::<()>();
        tokio::spawn(write_inserts(kept.clone(), queue, writer_alive));
        if backend == Backend::Sqlite {
            tokio::spawn(checkpoint_in_background(pool.clone(), writer_gone));
        }
        let secrets = GroupReader::start(kept.clone(), backend, reader.clone());
        let quotas = GroupReader::start(kept.clone(), backend, reader.clone());
        Ok(Store { pool, backend, inserts, secrets, quotas, kept, reader, observer })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Inserts a secret, through the group writer: concurrent inserts share a commit.
    pub async fn insert_secret(&self, s: SecretRow) -> Result<()> {
        let _timed = self.time(Statement::InsertSecret);
        let (done, written) = oneshot::channel();
        // The writer ends only when the last handle to the store is dropped.
        self.inserts.send((s, done)).await.map_err(|_| sqlx::Error::PoolClosed)?;
        written.await.map_err(|_| sqlx::Error::PoolClosed)?
    }

    /// The pool, for the other store modules.
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A transaction that writes. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`): a deferred one that reads before it writes cannot wait out another writer
    /// (its snapshot is stale by then) and fails with SQLITE_BUSY despite the busy timeout.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }
}

/// The existing database file a SQLite URL names; `None` for an in-memory database, which
/// only the pool's own connections can see.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    sqlite_path(url).filter(|path| path.is_file())
}

/// The file a SQLite URL names, whether or not it exists; `None` for PostgreSQL and for an
/// in-memory database.
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    if !url.starts_with("sqlite:") || url.contains("mode=memory") || url.contains(":memory:") {
        return None;
    }
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse().ok()?;
    Some(options.get_filename().to_path_buf())
}

/// Now, in microseconds since the epoch: every timestamp column holds this.
pub fn now_micros() -> i64 {
    let since =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// A new id for a secret, container or order: a version-4 UUID in canonical form, as Barbican
/// makes and its lookups insist on, whose first 48 bits are the time in milliseconds (laid out
/// as in RFC 9562's version 7) and whose other 74 free bits are random. New rows then land at
/// the end of the primary-key index instead of on a random page of it, so under load a commit
/// rewrites a few index pages rather than one per row. The creation time it carries is no news
/// to anyone who can read the entity.
pub fn new_id() -> String {
    let time_ordered = uuid::Uuid::now_v7().into_bytes();
    uuid::Builder::from_bytes(time_ordered)
        .with_version(uuid::Version::Random)
        .into_uuid()
        .to_string()
}

/// Inserts a secret on a connection or inside a transaction.
pub(crate) async fn insert_secret_on(conn: &mut sqlx::AnyConnection, s: &SecretRow) -> Result<()> {
    insert_secrets_on(conn, &[s]).await
}

/// Inserts secrets in one statement, so one commit; all or none.
async fn insert_secrets_on(conn: &mut sqlx::AnyConnection, rows: &[&SecretRow]) -> Result<()> {
    const COLUMNS: usize = 17;
    let numbered = conn.backend_name() != "SQLite";
    let mut sql = format!("INSERT INTO secrets ({SECRET_COLUMNS}) VALUES ");
    for row in 0..rows.len() {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        push_parameters(&mut sql, numbered, row * COLUMNS, COLUMNS);
        sql.push(')');
    }
    let mut query = sqlx::query(&sql);
    for s in rows {
        let p = s.payload.as_ref();
        query = query
            .bind(s.id.as_str())
            .bind(s.project_id.as_str())
            .bind(s.name.as_deref())
            .bind(s.secret_type.as_str())
            .bind(s.algorithm.as_deref())
            .bind(s.bit_length)
            .bind(s.mode.as_deref())
            .bind(s.expiration)
            .bind(s.creator_id.as_deref())
            .bind(s.created)
            .bind(s.updated)
            .bind(p.map(|p| p.content_type.as_str()))
            .bind(p.map(|p| p.kek_id.as_str()))
            .bind(p.map(|p| p.ciphertext.as_slice()))
            .bind(p.map(|p| p.iv.as_slice()))
            .bind(p.map(|p| p.tag.as_slice()))
            .bind(p.and_then(|p| p.format.as_deref()));
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

/// A secret row waiting for the group writer, and who waits for it.
type PendingInsert = (SecretRow, oneshot::Sender<Result<()>>);

/// Most rows in one grouped insert: 17 values each stays far below SQLite's 32,766.
const MAX_GROUPED_INSERTS: usize = 64;

/// The group writer: takes every secret insert waiting (never waiting for more) and writes
/// them in one statement and one commit. Under load this turns many small commits, each
/// rewriting the same pages into the write-ahead log and contending for SQLite's one write
/// lock, into a few; at low load a row is written alone, as before. When a group fails, its
/// rows are written one by one, so each request gets its own answer.
async fn write_inserts(
    kept: Kept,
    mut queue: mpsc::Receiver<PendingInsert>,
    _alive: oneshot::Sender<()>,
) {
    let mut group = Vec::with_capacity(MAX_GROUPED_INSERTS);
    while queue.recv_many(&mut group, MAX_GROUPED_INSERTS).await > 0 {
        let rows: Vec<&SecretRow> = group.iter().map(|(row, _)| row).collect();
        let written = insert_kept(&kept, &rows).await;
        drop(rows);
        match written {
            Ok(()) => {
                for (_, done) in group.drain(..) {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) if group.len() == 1 => {
                if let Some((_, done)) = group.pop() {
                    let _ = done.send(Err(e));
                }
            }
            Err(_) => {
                for (row, done) in group.drain(..) {
                    let _ = done.send(insert_kept(&kept, &[&row]).await);
                }
            }
        }
    }
}

/// Inserts `rows` in one statement on a kept connection.
async fn insert_kept(kept: &Kept, rows: &[&SecretRow]) -> Result<()> {
    let mut conn = kept.take().await?;
    insert_secrets_on(&mut conn, rows).await?;
    kept.keep(conn);
    Ok(())
}

/// Secrets by id, for the group reader: the live (unexpired) ones, each with whether it has a
/// read ACL (the policy check that follows every fetch needs it).
#[derive(Debug)]
struct Secrets;

/// A secret's columns and its count of read ACLs, from `secrets`; the condition follows.
static SECRET_WITH_READ_ACLS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {SECRET_COLUMNS}, (SELECT COUNT(*) FROM acls WHERE acls.entity_type = 'secret' \
         AND acls.entity_id = secrets.id AND acls.operation = 'read') AS read_acls \
         FROM secrets WHERE"
    )
});

/// The unexpired secret with the id `?1`, `?2` being now.
static LIVE_SECRET_BY_ID: LazyLock<String> = LazyLock::new(|| {
    format!("{} id = ?1 AND (expiration IS NULL OR expiration > ?2)", *SECRET_WITH_READ_ACLS)
});

impl GroupRead for Secrets {
    type Row = SecretRow;

    async fn select(
        conn: &mut sqlx::AnyConnection,
        backend: Backend,
        ids: &[&str],
    ) -> Result<HashMap<String, SecretRow>> {
        let mut sql = format!("{} id IN (", *SECRET_WITH_READ_ACLS);
        let bound = push_in_list(&mut sql, backend, 0, ids);
        sql.push_str(") AND (expiration IS NULL OR expiration > ");
        push_parameters(&mut sql, backend == Backend::Postgres, bound.len(), 1);
        sql.push(')');
        let mut query = sqlx::query(&sql);
        for id in bound {
            query = query.bind(id);
        }
        let rows = query.bind(now_micros()).fetch_all(&mut *conn).await?;
        rows.iter().map(|r| secret_from_row(r).map(|s| (s.id.clone(), s))).collect()
    }

    fn select_sqlite(conn: &rusqlite::Connection, id: &str) -> Result<Option<SecretRow>> {
        lookup_one(conn, &LIVE_SECRET_BY_ID, id, &[&now_micros()], |r| secret_from_row(r))
    }
}

/// How often the background checkpointer runs on SQLite.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Copies the write-ahead log into the database on its own connection, every
/// [`CHECKPOINT_EVERY`], until the group writer ends or the pool closes.
///
/// SQLite checkpoints inline: the commit that takes the log past 1,000 pages copies it back
/// and syncs the database file before it returns, and every write queued behind it waits for
/// that sync. Run here, beside the writers (a passive checkpoint never blocks them), the copy
/// and the sync are mostly done by the time a commit crosses the threshold, so its own
/// checkpoint has little left to do. That inline checkpoint stays: it is the one that lets the
/// log start over while writes keep coming, which keeps the file bounded.
async fn checkpoint_in_background(pool: AnyPool, mut writer_gone: oneshot::Receiver<()>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut writer_gone => return,
        }
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            Ok(_) => {}
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => tracing::debug!(error = %e, "background checkpoint failed"),
        }
    }
}

impl Store {
    /// A secret that exists and has not expired, read with the other lookups waiting.
    pub async fn secret(&self, id: &str) -> Result<Option<SecretRow>> {
        let _timed = self.time(Statement::Secret);
        self.secrets.read(id).await
    }

    /// Adds the payload to a metadata-only secret; `false` if it already has one.
    pub async fn set_payload(&self, id: &str, payload: &StoredPayload) -> Result<bool> {
        let _timed = self.time(Statement::SetPayload);
        let result = sqlx::query(
            "UPDATE secrets SET content_type = $1, kek_id = $2, ciphertext = $3, iv = $4, tag = $5, \
             updated = $6 WHERE id = $7 AND ciphertext IS NULL",
        )
        .bind(&payload.content_type)
        .bind(&payload.kek_id)
        .bind(&payload.ciphertext)
        .bind(&payload.iv)
        .bind(&payload.tag)
        .bind(now_micros())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Deletes a secret with its metadata.
    pub async fn delete_secret(&self, id: &str) -> Result<()> {
        let _timed = self.time(Statement::DeleteSecret);
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM secret_metadata WHERE secret_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM secrets WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// One page of a project's secrets and the total number matching.
    pub async fn list_secrets(&self, q: &SecretQuery) -> Result<(Vec<SecretRow>, i64)> {
        let _timed = self.time(Statement::ListSecrets);
        let mut sql = String::from(
            " FROM secrets WHERE project_id = $1 AND (expiration IS NULL OR expiration > $2)",
        );
        let mut n = 2;
        let mut next = |sql: &mut String, clause: &str| {
            n += 1;
            sql.push_str(&clause.replace("$?", &format!("${n}")));
        };
        // Case-insensitive on both databases (SQLite's LIKE already is, for ASCII).
        let like = if self.backend == Backend::Postgres { "ILIKE" } else { "LIKE" };
        if q.name.is_some() {
            next(&mut sql, &format!(" AND name {like} $?"));
        }
        if q.algorithm.is_some() {
            next(&mut sql, &format!(" AND algorithm {like} $?"));
        }
        if q.mode.is_some() {
            next(&mut sql, &format!(" AND mode {like} $?"));
        }
        if q.bits.is_some() {
            next(&mut sql, " AND bit_length = $?");
        }
        if q.secret_type.is_some() {
            next(&mut sql, " AND secret_type = $?");
        }
        for (column, filters) in
            [("created", &q.created), ("updated", &q.updated), ("expiration", &q.expiration)]
        {
            for (cmp, _) in filters.iter() {
                let op = match cmp {
                    Compare::Eq => "=",
                    Compare::Gt => ">",
                    Compare::Gte => ">=",
                    Compare::Lt => "<",
                    Compare::Lte => "<=",
                };
                next(&mut sql, &format!(" AND {column} {op} $?"));
            }
        }
        let now = now_micros();
        macro_rules! bind_all {
            ($query:expr) => {{
                let mut query = $query.bind(&q.project_id).bind(now);
                for v in [&q.name, &q.algorithm, &q.mode].into_iter().flatten() {
                    query = query.bind(v);
                }
                if let Some(bits) = q.bits {
                    query = query.bind(bits);
                }
                if let Some(t) = &q.secret_type {
                    query = query.bind(t);
                }
                for filters in [&q.created, &q.updated, &q.expiration] {
                    for (_, value) in filters.iter() {
                        query = query.bind(*value);
                    }
                }
                query
            }};
        }
        let count_sql = format!("SELECT COUNT(*){sql}");
        let total: i64 =
            bind_all!(sqlx::query(&count_sql)).fetch_one(&self.pool).await?.try_get(0)?;
        let mut order: Vec<String> = q
            .sort
            .iter()
            .map(|(c, desc)| format!("{c} {}", if *desc { "DESC" } else { "ASC" }))
            .collect();
        order.push("created ASC".into());
        order.push("id ASC".into());
        let page_sql = format!(
            "SELECT {SECRET_COLUMNS}{sql} ORDER BY {} LIMIT {} OFFSET {}",
            order.join(", "),
            q.limit.max(0),
            q.offset.max(0)
        );
        let rows = bind_all!(sqlx::query(&page_sql)).fetch_all(&self.pool).await?;
        let secrets = rows.iter().map(secret_from_row).collect::<Result<Vec<_>>>()?;
        Ok((secrets, total))
    }

    /// A secret's user metadata.
    pub async fn metadata(&self, secret_id: &str) -> Result<BTreeMap<String, String>> {
        let _timed = self.time(Statement::Metadata);
        let rows = sqlx::query("SELECT key, value FROM secret_metadata WHERE secret_id = $1")
            .bind(secret_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Replaces the whole metadata set.
    pub async fn replace_metadata(
        &self,
        secret_id: &str,
        entries: &BTreeMap<String, String>,
    ) -> Result<()> {
        let _timed = self.time(Statement::ReplaceMetadata);
        let now = now_micros();
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM secret_metadata WHERE secret_id = $1")
            .bind(secret_id)
            .execute(&mut *tx)
            .await?;
        for (key, value) in entries {
            sqlx::query(
                "INSERT INTO secret_metadata (secret_id, key, value, created, updated) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(secret_id)
            .bind(key)
            .bind(value)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Adds one key; `false` if it is already there.
    pub async fn add_metadatum(&self, secret_id: &str, key: &str, value: &str) -> Result<bool> {
        let _timed = self.time(Statement::AddMetadatum);
        let now = now_micros();
        let result = sqlx::query(
            "INSERT INTO secret_metadata (secret_id, key, value, created, updated) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(secret_id)
        .bind(key)
        .bind(value)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Changes one key's value; `false` if the key is not there.
    pub async fn update_metadatum(&self, secret_id: &str, key: &str, value: &str) -> Result<bool> {
        let _timed = self.time(Statement::UpdateMetadatum);
        let result = sqlx::query(
            "UPDATE secret_metadata SET value = $1, updated = $2 WHERE secret_id = $3 AND key = $4",
        )
        .bind(value)
        .bind(now_micros())
        .bind(secret_id)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Removes one key (nothing happens if it is not there).
    pub async fn delete_metadatum(&self, secret_id: &str, key: &str) -> Result<()> {
        let _timed = self.time(Statement::DeleteMetadatum);
        sqlx::query("DELETE FROM secret_metadata WHERE secret_id = $1 AND key = $2")
            .bind(secret_id)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Closes the pool, kept connections included, and stops the reader thread.
    pub async fn close(&self) {
        if let Some(reader) = &self.reader {
            reader.stop();
        }
        self.kept.release();
        self.pool.close().await;
    }
}

/// A row's columns by name, whether sqlx read it (either backend) or the SQLite reader thread
/// did: the rows the group readers find are built by the same code either way.
pub(crate) trait Columns {
    /// A text column; `None` for NULL.
    fn text(&self, name: &'static str) -> Result<Option<String>>;
    /// An integer column; `None` for NULL.
    fn int(&self, name: &'static str) -> Result<Option<i64>>;
    /// A blob column; `None` for NULL.
    fn blob(&self, name: &'static str) -> Result<Option<Vec<u8>>>;
}

impl Columns for AnyRow {
    fn text(&self, name: &'static str) -> Result<Option<String>> {
        Ok(self.try_get(name)?)
    }
    fn int(&self, name: &'static str) -> Result<Option<i64>> {
        Ok(self.try_get(name)?)
    }
    fn blob(&self, name: &'static str) -> Result<Option<Vec<u8>>> {
        Ok(self.try_get(name)?)
    }
}

impl Columns for rusqlite::Row<'_> {
    fn text(&self, name: &'static str) -> Result<Option<String>> {
        Ok(self.get(name)?)
    }
    fn int(&self, name: &'static str) -> Result<Option<i64>> {
        Ok(self.get(name)?)
    }
    fn blob(&self, name: &'static str) -> Result<Option<Vec<u8>>> {
        Ok(self.get(name)?)
    }
}

/// A column's value, which the schema says is never NULL.
pub(crate) fn present<T>(value: Option<T>, name: &'static str) -> Result<T> {
    value.ok_or(StoreError::Null(name))
}

pub(crate) fn secret_from_row(r: &impl Columns) -> Result<SecretRow> {
    let payload = match r.text("content_type")? {
        Some(content_type) => Some(StoredPayload {
            content_type,
            format: r.text("payload_format")?,
            kek_id: present(r.text("kek_id")?, "kek_id")?,
            ciphertext: present(r.blob("ciphertext")?, "ciphertext")?,
            iv: present(r.blob("iv")?, "iv")?,
            tag: present(r.blob("tag")?, "tag")?,
        }),
        None => None,
    };
    Ok(SecretRow {
        id: present(r.text("id")?, "id")?,
        project_id: present(r.text("project_id")?, "project_id")?,
        name: r.text("name")?,
        secret_type: present(r.text("secret_type")?, "secret_type")?,
        algorithm: r.text("algorithm")?,
        bit_length: r.int("bit_length")?,
        mode: r.text("mode")?,
        expiration: r.int("expiration")?,
        creator_id: r.text("creator_id")?,
        created: present(r.int("created")?, "created")?,
        updated: present(r.int("updated")?, "updated")?,
        payload,
        // Present only where the query asked (see `Store::secret`).
        has_read_acl: r.int("read_acls").ok().flatten().map(|n| n > 0),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests report failures by panicking

    use super::*;

    #[tokio::test]
    async fn sqlite_connections_get_wal_and_a_bounded_log() {
        let (_dir, store) = temp_store(2).await;
        let pragma = |name: &'static str| {
            let pool = store.pool().clone();
            async move {
                let row = sqlx::query(&format!("PRAGMA {name}")).fetch_one(&pool).await.unwrap();
                let value: String = match row.try_get::<i64, _>(0) {
                    Ok(n) => n.to_string(),
                    Err(_) => row.try_get(0).unwrap(),
                };
                value
            }
        };
        assert_eq!(pragma("journal_mode").await, "wal");
        assert_eq!(pragma("journal_size_limit").await, "67108864");
        assert_eq!(pragma("foreign_keys").await, "1");
    }

    /// A store on a new SQLite file with a pool of `connections`; the folder goes with the
    /// returned guard.
    async fn temp_store(connections: u32) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let store = Store::open(&url, connections).await.unwrap();
        (dir, store)
    }

    /// A store on an in-memory database, which only the pool's connections see: its lookups
    /// go through the group readers, as on PostgreSQL.
    async fn memory_store(connections: u32) -> Store {
        // Named and shared: every connection of the pool opens the same one.
        let url = format!("sqlite:file:store-{}?mode=memory&cache=shared", new_id());
        let store = Store::open(&url, connections).await.unwrap();
        assert!(store.reader.is_none(), "a reader thread on an in-memory database");
        store
    }

    fn row(id: String) -> SecretRow {
        SecretRow {
            id,
            project_id: "p".into(),
            name: None,
            secret_type: "opaque".into(),
            algorithm: None,
            bit_length: None,
            mode: None,
            expiration: None,
            creator_id: None,
            created: 1,
            updated: 1,
            payload: None,
            has_read_acl: None,
        }
    }

    /// Migrating a database of orders stored with their passphrase in the meta leaves no
    /// passphrase there; a pending asymmetric order that had one fails, as it could no longer
    /// be protected, and the others keep their state.
    #[tokio::test]
    async fn migrated_orders_keep_no_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("store.db").display());
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        sqlx::query(
            "CREATE TABLE appliance_schema (version BIGINT PRIMARY KEY, applied BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        for m in &migrations(Backend::Sqlite)[..2] {
            sqlx::raw_sql(m.sql).execute(&pool).await.unwrap();
            sqlx::query("INSERT INTO appliance_schema (version, applied) VALUES ($1, 0)")
                .bind(m.version)
                .execute(&pool)
                .await
                .unwrap();
        }
        let orders = [
            ("pending", "PENDING", "asymmetric", r#"{"algorithm":"rsa","passphrase":"pw"}"#),
            ("not-a-string", "PENDING", "asymmetric", r#"{"passphrase":7}"#),
            ("empty", "PENDING", "asymmetric", r#"{"passphrase":""}"#),
            ("null", "PENDING", "asymmetric", r#"{"passphrase":null}"#),
            ("none", "PENDING", "asymmetric", r#"{"name":"n"}"#),
            ("key", "PENDING", "key", r#"{"passphrase":"pw"}"#),
            ("done", "ACTIVE", "asymmetric", r#"{"name":"d","passphrase":"pw"}"#),
        ];
        for (id, status, kind, meta) in orders {
            sqlx::query(
                "INSERT INTO orders (id, project_id, type, meta, status, created, updated, \
                 lease_owner, lease_until) VALUES ($1, 'p', $2, $3, $4, 1, 1, 'a', 2)",
            )
            .bind(id)
            .bind(kind)
            .bind(meta)
            .bind(status)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;

        let store = Store::open(&url, 2).await.unwrap();
        for (id, status, meta) in [
            ("pending", "ERROR", r#"{"algorithm":"rsa"}"#),
            ("not-a-string", "ERROR", "{}"),
            ("empty", "PENDING", "{}"),
            ("null", "PENDING", "{}"),
            ("none", "PENDING", r#"{"name":"n"}"#),
            ("key", "PENDING", "{}"),
            ("done", "ACTIVE", r#"{"name":"d"}"#),
        ] {
            let order = store.order(id).await.unwrap().unwrap();
            assert_eq!((order.status.as_str(), order.meta.as_str()), (status, meta), "{id}");
            assert!(order.sealed_passphrase.is_none(), "{id}");
            if status == "ERROR" {
                assert_eq!(order.error_status_code.as_deref(), Some("500"), "{id}");
                assert!(order.updated > now_micros() - 60_000_000, "{id}: {}", order.updated);
            }
        }
    }

    #[test]
    fn new_ids_are_canonical_uuid4_and_ordered_by_time() {
        let first = new_id();
        std::thread::sleep(Duration::from_millis(2));
        let ids: Vec<String> = (0..1000).map(|_| new_id()).collect();
        for id in ids.iter().chain([&first]) {
            let parsed = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(parsed.get_version_num(), 4, "{id} is not what Barbican's lookup accepts");
            assert_eq!(parsed.hyphenated().to_string(), *id, "{id} is not canonical");
        }
        let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Later ids sort after earlier ones: they go to the end of the primary-key index.
        assert!(ids.iter().all(|id| *id > first), "{first} sorts after a later id");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_inserts_are_written_together_and_fail_alone() {
        let (_dir, store) = temp_store(4).await;
        let taken = new_id();
        store.insert_secret(row(taken.clone())).await.unwrap();

        // Forty new rows and one whose id is taken, all at once: they share groups, and the
        // duplicate must fail alone while the rows grouped with it are still written.
        let mut tasks = tokio::task::JoinSet::new();
        let mut ids = Vec::new();
        for n in 0..41 {
            let id = if n == 20 { taken.clone() } else { new_id() };
            ids.push(id.clone());
            let store = store.clone();
            tasks.spawn(async move { (id.clone(), store.insert_secret(row(id)).await.is_ok()) });
        }
        let mut failed = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (id, ok) = done.unwrap();
            if !ok {
                failed.push(id);
            }
        }
        assert_eq!(failed, vec![taken]);
        for id in &ids {
            assert!(store.secret(id).await.unwrap().is_some(), "{id} was not written");
        }
        let count: i64 = sqlx::query("SELECT COUNT(*) FROM secrets")
            .fetch_one(store.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!(count, 41);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_lookups_each_get_their_own_row() {
        let (_dir, store) = temp_store(4).await;
        let before = store.reader.as_ref().unwrap().transactions();
        let lookups = concurrent_lookups(&store).await;
        let transactions = store.reader.as_ref().unwrap().transactions() - before;
        assert!((1..=lookups).contains(&transactions), "{transactions} for {lookups} lookups");

        let store = memory_store(4).await;
        let before = store.secrets.statements();
        let lookups = concurrent_lookups(&store).await;
        let statements = store.secrets.statements() - before;
        assert!((1..=lookups).contains(&statements), "{statements} for {lookups} lookups");
    }

    /// Looks up live, expired and absent secrets, each several times at once, and checks every
    /// answer; returns how many lookups were made.
    async fn concurrent_lookups(store: &Store) -> usize {
        // Live rows with distinct names, expired ones, one with a read ACL, and ids never
        // written; every id asked for several times at once, so that groups hold repeats.
        let mut expected = HashMap::new();
        for n in 0..40 {
            let id = new_id();
            let mut secret = row(id.clone());
            secret.name = Some(format!("secret {n}"));
            if n % 7 == 3 {
                secret.expiration = Some(1);
            }
            store.insert_secret(secret).await.unwrap();
            expected.insert(id, (n % 7 != 3).then(|| format!("secret {n}")));
        }
        let with_acl = expected.iter().find_map(|(id, name)| name.as_ref().map(|_| id.clone()));
        let with_acl = with_acl.unwrap();
        store.set_acl(EntityKind::Secret, &with_acl, Some((true, &[]))).await.unwrap();
        for _ in 0..5 {
            expected.insert(new_id(), None);
        }

        let mut tasks = tokio::task::JoinSet::new();
        for round in 0..3 {
            for id in expected.keys() {
                let (store, id) = (store.clone(), id.clone());
                tasks.spawn(async move {
                    let found = store.secret(&id).await.unwrap();
                    (round, id, found)
                });
            }
        }
        let mut answers = 0;
        while let Some(done) = tasks.join_next().await {
            let (_, id, found) = done.unwrap();
            let name = found.as_ref().map(|s| s.name.clone().unwrap());
            assert_eq!(&name, expected.get(&id).unwrap(), "wrong answer for {id}");
            if let Some(found) = found {
                assert_eq!(found.id, id);
                assert_eq!(found.has_read_acl, Some(id == with_acl), "read ACL of {id}");
            }
            answers += 1;
        }
        assert_eq!(answers, 3 * expected.len());
        answers
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_kept_between_grouped_statements_and_given_back_at_close() {
        let (_dir, store) = temp_store(4).await;
        assert_eq!(store.kept.len(), 0);
        let id = new_id();
        store.insert_secret(row(id.clone())).await.unwrap();
        assert!(store.secret(&id).await.unwrap().is_some());
        // Both statements ran on the one connection kept after the first.
        assert_eq!(store.kept.len(), 1);
        // A failed statement's connection goes back to the pool rather than being kept.
        assert!(store.insert_secret(row(id.clone())).await.is_err());
        assert_eq!(store.kept.len(), 0);
        store.insert_secret(row(new_id())).await.unwrap();
        assert_eq!(store.kept.len(), 1);
        // Closing gives the kept connection back, for the pool to close with the others.
        let closed = tokio::time::timeout(Duration::from_secs(30), store.close()).await;
        assert!(closed.is_ok(), "the pool never closed");
        assert_eq!(store.kept.len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_on_a_file_use_the_reader_thread_and_fall_back_to_the_pool_once_closed() {
        let (_dir, store) = temp_store(4).await;
        let id = new_id();
        store.insert_secret(row(id.clone())).await.unwrap();
        store.put_project_quota("p", &[(QuotaResource::Secrets, 7)]).await.unwrap();
        let reader = store.reader.clone().unwrap();
        let before = (reader.transactions(), store.secrets.statements(), store.quotas.statements());
        // Read as soon as written: the insert was answered after its commit.
        assert_eq!(store.secret(&id).await.unwrap().unwrap().id, id);
        assert_eq!(
            store.project_quota("p").await.unwrap().unwrap().values.get(QuotaResource::Secrets),
            Some(7)
        );
        assert!(store.secret(&new_id()).await.unwrap().is_none());
        assert_eq!(reader.transactions() - before.0, 3);
        assert_eq!((store.secrets.statements(), store.quotas.statements()), (before.1, before.2));

        store.close().await;
        // The thread has stopped and the pool is closed: an error that says so, not a hang.
        let closed = tokio::time::timeout(Duration::from_secs(30), store.secret(&id)).await;
        let error = closed.expect("a lookup on a closed store hung").unwrap_err();
        assert!(error.is_unavailable(), "{error}");
    }

    // One thread: the lookups are all queued before the reader runs, so the groups they form
    // are known.
    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_quota_lookups_are_read_together_and_each_gets_its_own_row() {
        let store = memory_store(4).await;
        // Twenty projects with quotas of their own (secrets = n), and ten with none.
        let mut expected = HashMap::new();
        for n in 0..30 {
            let project = format!("project-{n:02}");
            let secrets = (n < 20).then_some(n);
            if let Some(secrets) = secrets {
                store
                    .put_project_quota(&project, &[(QuotaResource::Secrets, secrets)])
                    .await
                    .unwrap();
            }
            expected.insert(project, secrets);
        }
        let before = store.quotas.statements();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            for project in expected.keys() {
                let (store, project) = (store.clone(), project.clone());
                tasks.spawn(async move {
                    let found = store.project_quota(&project).await.unwrap();
                    (project, found)
                });
            }
        }
        let mut answers = 0;
        while let Some(done) = tasks.join_next().await {
            let (project, found) = done.unwrap();
            if let Some(found) = &found {
                assert_eq!(found.project_id, project);
                assert_eq!(found.values.0[1..], [None; 4], "quotas of {project}");
            }
            let secrets = found.map(|q| q.values.get(QuotaResource::Secrets).unwrap());
            assert_eq!(&secrets, expected.get(&project).unwrap(), "wrong quota for {project}");
            answers += 1;
        }
        assert_eq!(answers, 4 * expected.len());
        // 120 lookups of 30 projects: two groups of at most 64.
        assert_eq!(store.quotas.statements() - before, 2, "lookups were not read together");
    }
}
