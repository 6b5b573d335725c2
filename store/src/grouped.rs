//! Group reads: lookups of one table by key that wait at the same moment are answered by one
//! `SELECT ... WHERE key IN (...)`.
//!
//! Each statement costs two thread hand-offs (SQLite runs each connection on a thread of its
//! own) or a network round trip (PostgreSQL), which at the rates Nova and Cinder fetch and
//! store keys cost more than reading the rows. The reader takes every lookup waiting and never
//! waits for more, so a lone lookup is read at once. When a group fails, its lookups are read
//! one by one, so that each caller gets its own answer.
//!
//! On a SQLite file, lookups go straight to the store's reader thread ([`SqliteReader`]),
//! which reads whatever waits for it in one transaction; this reader serves PostgreSQL, where
//! its statements run on connections the store keeps between them ([`Kept`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::sqlite_reads::SqliteReader;
use super::{Backend, Result, StoreError};

/// Most keys read by one statement.
const MAX_GROUPED_LOOKUPS: usize = 64;

/// Group reads running at once, per table; lookups arriving while all run leave together in
/// the next.
const GROUPS_IN_FLIGHT: usize = 4;

/// A table read by key in groups.
pub(super) trait GroupRead: Send + Sync + 'static {
    /// What one key finds.
    type Row: Clone + Send + 'static;

    /// The rows found for `keys` (distinct, at least one), by key.
    fn select(
        conn: &mut AnyConnection,
        backend: Backend,
        keys: &[&str],
    ) -> impl Future<Output = Result<HashMap<String, Self::Row>>> + Send;

    /// The row for one key, on the SQLite reader thread's connection.
    fn select_sqlite(conn: &rusqlite::Connection, key: &str) -> Result<Option<Self::Row>>;
}

/// A lookup waiting for its group, and who waits for it.
type Pending<R> = (String, oneshot::Sender<Result<Option<<R as GroupRead>::Row>>>);

/// The sending side of a group reader: where lookups of `R` are queued.
pub(super) struct GroupReader<R: GroupRead> {
    queue: mpsc::Sender<Pending<R>>,
    /// On a SQLite file: the reader thread, which groups what waits for it itself.
    native: Option<SqliteReader>,
    /// Where a lookup is read alone once the reader is gone.
    source: Source,
    /// Statements the reader has run, for the tests.
    statements: Arc<AtomicUsize>,
}

impl<R: GroupRead> Clone for GroupReader<R> {
    fn clone(&self) -> Self {
        GroupReader {
            queue: self.queue.clone(),
            native: self.native.clone(),
            source: self.source.clone(),
            statements: self.statements.clone(),
        }
    }
}

impl<R: GroupRead> std::fmt::Debug for GroupReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupReader").field("table", &std::any::type_name::<R>()).finish()
    }
}

impl<R: GroupRead> GroupReader<R> {
    /// Starts the reader on the current runtime; it ends when the last sender is dropped.
    /// `native`: the SQLite reader thread, on a SQLite file.
    pub(super) fn start(
        kept: Kept,
        backend: Backend,
        native: Option<SqliteReader>,
    ) -> GroupReader<R> {
        let (queue, waiting) = mpsc::channel(4 * MAX_GROUPED_LOOKUPS);
        let statements = Arc::new(AtomicUsize::new(0));
        let source = Source { kept, backend };
        tokio::spawn(read_in_groups::<R>(source.clone(), waiting, statements.clone()));
        GroupReader { queue, native, source, statements }
    }

    /// How many statements the reader has run so far.
    #[cfg(test)]
    pub(super) fn statements(&self) -> usize {
        self.statements.load(Ordering::Relaxed)
    }

    /// The row for `key`, read with whatever other lookups are waiting.
    pub(super) async fn read(&self, key: &str) -> Result<Option<R::Row>> {
        if let Some(native) = &self.native {
            let owned = key.to_owned();
            match native.run(move |conn| R::select_sqlite(conn, &owned)).await {
                Ok(found) => return Ok(found),
                // Stopped: the store is closing, and the pool answers that.
                Err(StoreError::ReaderGone) => {}
                Err(e) => return Err(e),
            }
        }
        let (done, answer) = oneshot::channel();
        if self.queue.send((key.to_owned(), done)).await.is_ok()
            && let Ok(found) = answer.await
        {
            return found;
        }
        // The reader is gone (the runtime is shutting down): read it here.
        Ok(self.source.select::<R>(&[key]).await?.remove(key))
    }
}

/// The reader: takes every lookup waiting, up to [`MAX_GROUPED_LOOKUPS`], and answers them with
/// one statement, with at most [`GROUPS_IN_FLIGHT`] statements running.
async fn read_in_groups<R: GroupRead>(
    source: Source,
    mut queue: mpsc::Receiver<Pending<R>>,
    statements: Arc<AtomicUsize>,
) {
    let slots = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut group = Vec::with_capacity(MAX_GROUPED_LOOKUPS);
        if queue.recv_many(&mut group, MAX_GROUPED_LOOKUPS).await == 0 {
            return;
        }
        let (source, statements) = (source.clone(), statements.clone());
        tokio::spawn(async move {
            answer_group::<R>(&source, group, &statements).await;
            drop(slot);
        });
    }
}

async fn answer_group<R: GroupRead>(
    source: &Source,
    mut group: Vec<Pending<R>>,
    statements: &AtomicUsize,
) {
    let mut keys: Vec<&str> = group.iter().map(|(key, _)| key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    statements.fetch_add(1, Ordering::Relaxed);
    let found = source.select::<R>(&keys).await;
    drop(keys);
    match found {
        Ok(rows) => {
            for (key, done) in group {
                let _ = done.send(Ok(rows.get(&key).cloned()));
            }
        }
        Err(e) if group.len() == 1 => {
            if let Some((_, done)) = group.pop() {
                let _ = done.send(Err(e));
            }
        }
        Err(_) => {
            for (key, done) in group {
                statements.fetch_add(1, Ordering::Relaxed);
                let alone = source.select::<R>(&[&key]).await;
                let _ = done.send(alone.map(|mut rows| rows.remove(&key)));
            }
        }
    }
}

/// Where a group is read: one statement on a kept connection.
#[derive(Clone, Debug)]
struct Source {
    kept: Kept,
    backend: Backend,
}

impl Source {
    async fn select<R: GroupRead>(&self, keys: &[&str]) -> Result<HashMap<String, R::Row>> {
        let mut conn = self.kept.take().await?;
        let found = R::select(&mut conn, self.backend, keys).await?;
        self.kept.keep(conn);
        Ok(found)
    }
}

/// Connections the store's background tasks (the group readers and the group writer) keep
/// between statements instead of giving each back to the pool.
///
/// sqlx tests every connection given back to its pool, which on SQLite is a round trip to the
/// connection's own thread: about as much as the grouped statement itself. SQLite connections
/// live in this process and cannot be lost, so the store keeps some; PostgreSQL connections
/// can (a server restart), so they go back to the pool and are tested as before. At most half
/// the pool is kept idle here, so the API's other statements always find connections.
#[derive(Clone)]
pub(super) struct Kept {
    pool: AnyPool,
    /// `None` once released (the store is closing): nothing is kept from then on.
    idle: Arc<std::sync::Mutex<Option<Vec<PoolConnection<Any>>>>>,
    most: usize,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept").field("most", &self.most).finish_non_exhaustive()
    }
}

impl Kept {
    /// Keeps up to half of a pool of `max_connections` idle, on SQLite; none on PostgreSQL.
    pub(super) fn new(pool: AnyPool, backend: Backend, max_connections: u32) -> Kept {
        let most = match backend {
            Backend::Sqlite => usize::try_from(max_connections / 2).unwrap_or(0),
            Backend::Postgres => 0,
        };
        Kept { pool, idle: Arc::new(std::sync::Mutex::new(Some(Vec::new()))), most }
    }

    /// A kept connection, or else one from the pool.
    pub(super) async fn take(&self) -> Result<PoolConnection<Any>> {
        if let Some(conn) = self.lock().as_mut().and_then(Vec::pop) {
            return Ok(conn);
        }
        Ok(self.pool.acquire().await?)
    }

    /// Keeps a connection whose statement succeeded, while fewer than the most are kept;
    /// otherwise (and for one whose statement failed: dropped, not kept) it goes back to the
    /// pool, which tests it and closes it if broken.
    pub(super) fn keep(&self, conn: PoolConnection<Any>) {
        let mut idle = self.lock();
        if let Some(idle) = idle.as_mut()
            && idle.len() < self.most
        {
            idle.push(conn);
        }
    }

    /// How many connections are kept idle.
    pub(super) fn len(&self) -> usize {
        self.lock().as_ref().map_or(0, Vec::len)
    }

    /// Gives every kept connection back to the pool, and keeps none from now on, so that the
    /// pool closes them with the others.
    pub(super) fn release(&self) {
        self.lock().take();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<PoolConnection<Any>>>> {
        // The list stays consistent whatever panicked while holding it.
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Appends `count` comma-separated parameters, the first being the statement's `after + 1`th:
/// `$n` where numbered (PostgreSQL), else SQLite's anonymous `?`. SQLite looks a numbered
/// parameter's name up in a list once per value bound, which for the grouped statements'
/// hundreds of values made binding quadratic; `?` needs no lookup.
pub(super) fn push_parameters(sql: &mut String, numbered: bool, after: usize, count: usize) {
    for n in after + 1..=after + count {
        let sep = if n == after + 1 { "" } else { ", " };
        if numbered {
            let _ = write!(sql, "{sep}${n}");
        } else {
            let _ = write!(sql, "{sep}?");
        }
    }
}

/// Appends the parameters of an `IN (...)` list for `keys` (the list's first parameter being
/// the statement's `after + 1`th) and returns the values to bind, in order.
///
/// Statements are prepared once per connection and cached by their text: rounding the number
/// of keys up to a power of two (repeating the last) keeps that to seven texts per statement.
pub(super) fn push_in_list<'k>(
    sql: &mut String,
    backend: Backend,
    after: usize,
    keys: &[&'k str],
) -> Vec<&'k str> {
    let slots = keys.len().next_power_of_two();
    push_parameters(sql, backend == Backend::Postgres, after, slots);
    let last = keys.last().copied().unwrap_or_default();
    (0..slots).map(|n| keys.get(n).copied().unwrap_or(last)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_lists_round_up_to_a_power_of_two_by_repeating_the_last_key() {
        let mut sql = String::from("x IN (");
        let bound = push_in_list(&mut sql, Backend::Postgres, 1, &["a", "b", "c"]);
        assert_eq!(sql, "x IN ($2, $3, $4, $5");
        assert_eq!(bound, ["a", "b", "c", "c"]);

        let mut sql = String::new();
        let bound = push_in_list(&mut sql, Backend::Sqlite, 0, &["only"]);
        assert_eq!(sql, "?");
        assert_eq!(bound, ["only"]);
    }
}
