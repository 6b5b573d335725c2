//! Lookups by key on a SQLite file (secrets, project quotas), run on a reader thread of the
//! store's own that calls SQLite directly.
//!
//! Through sqlx, a statement goes to its connection's thread and every row it finds comes back
//! as a message of its own, converted twice on the way: for the key fetches of Nova and Cinder
//! that cost more than the lookups. Here a lookup is one hand-off to the reader thread and one
//! back. The reader takes every lookup waiting for it and reads them in one transaction, so that
//! under load they share its cost. In WAL mode a read transaction sees every commit made before
//! it began: a secret can be read as soon as its creation has been answered.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Row, ToSql, TransactionBehavior};
use tokio::sync::oneshot;

use super::{Result, StoreError};

/// Most lookups read in one transaction.
const MOST_PER_TRANSACTION: usize = 64;

/// How long a lookup waits for SQLite's locks, as the pool's connections do.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

type Job = Box<dyn FnOnce(&Connection) + Send>;

/// What the reader thread is sent: a lookup, or `None` to stop.
type Message = Option<Job>;

/// The reader thread's queue. Cloning shares the thread; it ends when the store closes
/// ([`SqliteReader::stop`]) or when every clone is dropped.
///
/// One thread: in WAL mode nothing a writer does makes a reader wait, and a lookup takes
/// microseconds, so a second thread would only add the cost of the two handing the queue
/// between them.
#[derive(Clone)]
pub(super) struct SqliteReader {
    jobs: mpsc::Sender<Message>,
    stopped: Arc<AtomicBool>,
    /// Transactions the thread has read in, for the tests.
    #[cfg(test)]
    transactions: Arc<AtomicUsize>,
}

impl std::fmt::Debug for SqliteReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteReader")
            .field("stopped", &self.stopped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SqliteReader {
    /// Opens the reader thread's connection to the database file at `path` (which the pool
    /// has already created) and starts the thread.
    pub(super) fn open(path: &Path) -> Result<SqliteReader> {
        // Opened here, so that a file that cannot be read fails the store's start.
        let mut conn = connect(path)?;
        let (jobs, queue) = mpsc::channel::<Message>();
        let transactions = Arc::new(AtomicUsize::new(0));
        let counted = transactions.clone();
        std::thread::Builder::new()
            .name("sqlite-reader".into())
            .spawn(move || {
                let lookups = serve(&mut conn, &queue, &counted);
                let transactions = counted.load(Ordering::Relaxed);
                tracing::debug!(lookups, transactions, "SQLite reader thread stopped");
            })
            .map_err(StoreError::Thread)?;
        Ok(SqliteReader {
            jobs,
            stopped: Arc::new(AtomicBool::new(false)),
            #[cfg(test)]
            transactions,
        })
    }

    /// Runs `read` on the reader thread and returns what it found; [`StoreError::ReaderGone`]
    /// once the reader has stopped.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(StoreError::ReaderGone);
        }
        let (done, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn: &Connection| {
            // The caller may have given up waiting; the answer is then not needed.
            let _ = done.send(read(conn));
        });
        self.jobs.send(Some(job)).map_err(|_| StoreError::ReaderGone)?;
        // Dropped unanswered: queued behind the stop.
        answer.await.map_err(|_| StoreError::ReaderGone)?
    }

    /// How many transactions the thread has read in so far.
    #[cfg(test)]
    pub(super) fn transactions(&self) -> usize {
        self.transactions.load(Ordering::Relaxed)
    }

    /// Stops the thread once the lookups already queued are read; its connection closes then.
    pub(super) fn stop(&self) {
        if !self.stopped.swap(true, Ordering::AcqRel) {
            let _ = self.jobs.send(None);
        }
    }
}

/// The row `sql` finds for `key`, its `?1`, with `extra` as `?2`, `?3`, ...; the first if
/// several.
pub(super) fn lookup_one<T>(
    conn: &Connection,
    sql: &str,
    key: &str,
    extra: &[&dyn ToSql],
    from_row: impl FnOnce(&Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    let mut statement = conn.prepare_cached(sql)?;
    statement.raw_bind_parameter(1, key)?;
    for (n, value) in extra.iter().enumerate() {
        statement.raw_bind_parameter(n + 2, value)?;
    }
    let mut rows = statement.raw_query();
    rows.next()?.map(from_row).transpose()
}

fn connect(path: &Path) -> Result<Connection> {
    // Not SQLITE_OPEN_READ_ONLY: a read-only connection cannot make the WAL index should the
    // pool's connections all be closed; `query_only` refuses writes all the same.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// Reads lookups until told to stop or every sender is gone; returns how many it read.
fn serve(
    conn: &mut Connection,
    queue: &mpsc::Receiver<Message>,
    transactions: &AtomicUsize,
) -> u64 {
    let mut batch: Vec<Job> = Vec::with_capacity(MOST_PER_TRANSACTION);
    let mut lookups = 0;
    let mut stop = false;
    while !stop {
        match queue.recv() {
            Ok(Some(job)) => batch.push(job),
            Ok(None) | Err(mpsc::RecvError) => break,
        }
        // Whatever else waits is read in the same transaction.
        while batch.len() < MOST_PER_TRANSACTION {
            match queue.try_recv() {
                Ok(Some(job)) => batch.push(job),
                Ok(None) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        lookups += batch.len() as u64;
        if let Ok(tx) = conn.transaction_with_behavior(TransactionBehavior::Deferred) {
            transactions.fetch_add(1, Ordering::Relaxed);
            for job in batch.drain(..) {
                job(&tx);
            }
            // Read only: ending it either way frees its snapshot.
            let _ = tx.commit();
        }
        // Should a transaction not begin, each lookup reads in one of its own.
        for job in batch.drain(..) {
            job(conn);
        }
    }
    lookups
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests report failures by panicking

    use super::*;

    const BY_KEY: &str = "SELECT k, v FROM t WHERE k = ?1 AND v > ?2";

    /// A WAL database file with `t(k, v)` holding k0..k9 with v = 0..9, and a reader on it.
    fn reader() -> (tempfile::TempDir, std::path::PathBuf, SqliteReader) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)", []).unwrap();
        for n in 0..10 {
            conn.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", (format!("k{n}"), n)).unwrap();
        }
        let reader = SqliteReader::open(&path).unwrap();
        (dir, path, reader)
    }

    async fn lookup(reader: &SqliteReader, key: &str, above: i64) -> Result<Option<i64>> {
        let key = key.to_owned();
        reader
            .run(move |conn| {
                lookup_one(conn, BY_KEY, &key, &[&above], |r| Ok(r.get::<_, i64>("v")?))
            })
            .await
    }

    /// A job that holds the reader thread until told to let go; returns once it holds it.
    async fn hold_the_thread(reader: &SqliteReader) -> std::sync::mpsc::Sender<()> {
        let (started, has_started) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let reader = reader.clone();
        tokio::spawn(async move {
            reader
                .run(move |_| {
                    started.send(()).unwrap();
                    let _ = released.recv();
                    Ok(())
                })
                .await
        });
        // On this one-thread runtime the task sends its job once this one yields.
        tokio::task::yield_now().await;
        has_started.recv().unwrap();
        release
    }

    // One thread: tasks spawned run, as far as their first wait, when the test yields.
    #[tokio::test(flavor = "current_thread")]
    async fn lookups_waiting_for_the_reader_are_read_in_one_transaction() {
        let (_dir, _path, reader) = reader();
        let held = hold_the_thread(&reader).await;
        let before = reader.transactions();

        // Ten lookups, asking for v > 4, queue while the thread is held.
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..10 {
            let reader = reader.clone();
            tasks.spawn(async move { (n, lookup(&reader, &format!("k{n}"), 4).await.unwrap()) });
        }
        tokio::task::yield_now().await;
        held.send(()).unwrap();
        while let Some(done) = tasks.join_next().await {
            let (n, found) = done.unwrap();
            assert_eq!(found, (n > 4).then_some(n), "k{n}");
        }
        assert_eq!(reader.transactions() - before, 1, "the waiting lookups were not read together");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stopping_reads_what_was_queued_and_refuses_what_comes_after() {
        let (_dir, _path, reader) = reader();
        let held = hold_the_thread(&reader).await;
        let queued = {
            let reader = reader.clone();
            tokio::spawn(async move { lookup(&reader, "k7", -1).await })
        };
        tokio::task::yield_now().await;
        reader.stop();
        held.send(()).unwrap();
        assert_eq!(queued.await.unwrap().unwrap(), Some(7));
        let after = lookup(&reader, "k7", -1).await;
        assert!(matches!(after, Err(StoreError::ReaderGone)), "{after:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_are_seen_by_the_next_lookup_and_a_failed_one_leaves_the_reader_serving() {
        let (_dir, path, reader) = reader();
        assert_eq!(lookup(&reader, "k3", -1).await.unwrap(), Some(3));
        assert_eq!(lookup(&reader, "new", -1).await.unwrap(), None);
        // Written by another connection, as the pool's writers do.
        let writer = Connection::open(&path).unwrap();
        writer.execute("INSERT INTO t (k, v) VALUES ('new', 42)", []).unwrap();
        writer.execute("DELETE FROM t WHERE k = 'k3'", []).unwrap();
        assert_eq!(lookup(&reader, "new", -1).await.unwrap(), Some(42));
        assert_eq!(lookup(&reader, "k3", -1).await.unwrap(), None);

        // A statement SQLite refuses is that lookup's error; the thread goes on.
        let refused = reader
            .run(|conn| {
                lookup_one(conn, "SELECT * FROM missing WHERE k = ?1", "k1", &[], |_| Ok(()))
            })
            .await;
        assert!(matches!(refused, Err(StoreError::Sqlite(_))), "{refused:?}");
        // And so is a write: the readers' connections are query-only.
        let write = reader.run(|conn| Ok(conn.execute("DELETE FROM t", [])?)).await;
        assert!(matches!(write, Err(StoreError::Sqlite(_))), "{write:?}");
        assert_eq!(lookup(&reader, "k9", -1).await.unwrap(), Some(9));

        reader.stop();
        let stopped = lookup(&reader, "k9", -1).await;
        assert!(matches!(stopped, Err(StoreError::ReaderGone)), "{stopped:?}");
        assert!(stopped.unwrap_err().is_unavailable());
    }

    #[test]
    fn a_file_that_cannot_be_opened_fails_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent").join("t.db");
        let failed = SqliteReader::open(&missing);
        assert!(matches!(failed, Err(StoreError::Sqlite(_))), "{failed:?}");
    }
}
