//! The embedded engine: one SQLite file in WAL mode, one writer connection
//! and a small pool of readers (readers never block the writer), and group
//! commit for durable writes (see [`Sqlite::write`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use crate::engine::{Conn, OrDb, Row, migrations};
use crate::{Change, Document, Durability, Query, Result, StoreError};

/// The change log's key and the integer type, in this dialect.
const SERIAL: &str = "INTEGER PRIMARY KEY AUTOINCREMENT";
const INT: &str = "INTEGER";
/// SQLite's default collation already orders text by bytes.
const BYTES: &str = "";

pub(crate) struct Sqlite {
    path: PathBuf,
    durability: Durability,
    writer: Mutex<Connection>,
    readers: Mutex<Readers>,
    /// Signalled when a reader connection goes back to the pool.
    reader_free: Condvar,
    /// Commits made so far (a count, bumped under the writer lock right
    /// after each commit).
    committed: AtomicU64,
    /// Group commit: how far the write-ahead log is known to be on disk.
    flush: Mutex<Flush>,
    flushed: Condvar,
}

/// At most this many reader connections are open at once. Each holds its
/// own page cache (2 MB), and reads past the number of cores gain nothing,
/// so a burst of requests waits for a reader rather than opening one each
/// (512 blocking threads once opened 512 connections: 125 MB).
const MAX_READERS: usize = 8;

/// The reader pool of [`Sqlite`].
#[derive(Default)]
struct Readers {
    idle: Vec<Connection>,
    /// Open connections, idle or in use.
    open: usize,
}

/// The group-commit state of [`Sqlite`].
#[derive(Default)]
struct Flush {
    /// Every commit up to this count is on disk.
    durable: u64,
    /// A thread is flushing the log now; others wait for it.
    running: bool,
    /// The write-ahead log, opened on first use.
    wal: Option<std::fs::File>,
}

impl Sqlite {
    pub fn open(path: &Path, durability: Durability) -> Result<Self> {
        let mut conn = open_conn(path)?;
        migrate(&mut conn)?;
        Ok(Sqlite {
            path: path.to_path_buf(),
            durability,
            writer: Mutex::new(conn),
            readers: Mutex::new(Readers::default()),
            reader_free: Condvar::new(),
            committed: AtomicU64::new(0),
            flush: Mutex::new(Flush::default()),
            flushed: Condvar::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a pooled reader connection.
    /// Waits for one when [`MAX_READERS`] are in use.
    fn with_reader<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        let conn = {
            let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(c) = pool.idle.pop() {
                    break Some(c);
                }
                if pool.open < MAX_READERS {
                    pool.open += 1;
                    break None;
                }
                pool = self
                    .reader_free
                    .wait(pool)
                    .unwrap_or_else(|p| p.into_inner());
            }
        };
        let conn = match conn {
            Some(c) => c,
            None => match open_conn(&self.path) {
                Ok(c) => c,
                Err(e) => {
                    self.readers.lock().unwrap_or_else(|p| p.into_inner()).open -= 1;
                    self.reader_free.notify_one();
                    return Err(e);
                }
            },
        };
        // Back to the pool however `f` ends (a panic included).
        struct Back<'a>(&'a Sqlite, Option<Connection>);
        impl Drop for Back<'_> {
            fn drop(&mut self) {
                let mut pool = self.0.readers.lock().unwrap_or_else(|p| p.into_inner());
                match self.1.take() {
                    Some(c) if !std::thread::panicking() => pool.idle.push(c),
                    _ => pool.open -= 1,
                }
                drop(pool);
                self.0.reader_free.notify_one();
            }
        }
        let back = Back(self, Some(conn));
        f(back.1.as_ref().expect("held until dropped"))
    }

    /// Runs `f` on a reader connection.
    pub fn read<R>(&self, f: impl FnOnce(&mut dyn Conn) -> Result<R>) -> Result<R> {
        self.with_reader(|c| f(&mut SqliteConn(c)))
    }

    /// Runs `f` on a reader connection inside one read transaction, so
    /// everything it reads is from one moment.
    pub fn read_consistent<R>(&self, f: impl FnOnce(&mut dyn Conn) -> Result<R>) -> Result<R> {
        self.with_reader(|c| {
            c.execute_batch("BEGIN").db()?;
            let out = f(&mut SqliteConn(c));
            c.execute_batch("COMMIT").db()?;
            out
        })
    }

    /// Runs `f` in one write transaction (`BEGIN IMMEDIATE` on the one
    /// writer connection). With [`Durability::Full`] it returns once the
    /// commit is on disk: the connection runs `synchronous=NORMAL` (a
    /// commit writes its frames to the write-ahead log without waiting)
    /// and the log is then flushed by one fsync shared by every commit
    /// made before the flush began, outside the writer lock.
    pub fn write<R, E>(
        &self,
        f: impl FnOnce(&mut dyn Conn) -> std::result::Result<R, E>,
    ) -> std::result::Result<R, E>
    where
        E: From<StoreError>,
    {
        let (out, ticket) = {
            let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let txn = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .db()?;
            let out = f(&mut SqliteConn(&txn))?;
            txn.commit().db()?;
            let ticket = 1 + self.committed.fetch_add(1, Ordering::SeqCst);
            (out, ticket)
        };
        if self.durability == Durability::Full {
            self.flush_through(ticket)?;
        }
        Ok(out)
    }

    /// Returns once commit number `ticket` is on disk: flushes the
    /// write-ahead log, or waits for a flush that started after that
    /// commit. One flush covers every commit made before it began.
    fn flush_through(&self, ticket: u64) -> Result<()> {
        let mut st = self.flush.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.durable >= ticket {
                return Ok(());
            }
            if st.running {
                st = self.flushed.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.running = true;
            // Every commit counted so far has its frames in the log.
            let upto = self.committed.load(Ordering::SeqCst);
            let wal = match st.wal.take() {
                Some(f) => Ok(f),
                None => std::fs::File::open(wal_path(&self.path)),
            };
            drop(st);
            let res = wal.and_then(|f| f.sync_data().map(|()| f));
            st = self.flush.lock().unwrap_or_else(|p| p.into_inner());
            st.running = false;
            self.flushed.notify_all();
            match res {
                Ok(f) => {
                    st.wal = Some(f);
                    st.durable = st.durable.max(upto);
                }
                Err(e) => {
                    return Err(StoreError::Io {
                        path: wal_path(&self.path),
                        source: e,
                    });
                }
            }
        }
    }

    #[cfg(test)]
    pub fn durable_commits(&self) -> (u64, bool) {
        let f = self.flush.lock().unwrap_or_else(|p| p.into_inner());
        (f.durable, f.running)
    }
}

/// [`Conn`] over one SQLite connection.
struct SqliteConn<'c>(&'c Connection);

impl SqliteConn<'_> {
    /// The first column of the one row `sql` finds, if any.
    fn one<T: rusqlite::types::FromSql>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Option<T>> {
        self.0
            .prepare_cached(sql)
            .db()?
            .query_row(params, |r| r.get(0))
            .optional()
            .db()
    }
}

impl Conn for SqliteConn<'_> {
    fn body(&mut self, kind: &str, id: &str) -> Result<Option<String>> {
        self.one(
            "SELECT body FROM resources WHERE kind = ?1 AND id = ?2",
            params![kind, id],
        )
    }

    fn bodies(&mut self, kind: &str, q: &Query) -> Result<Vec<String>> {
        // Only the filters given go into the SQL, so SQLite can use the
        // index on that column (`?n IS NULL OR col = ?n` would make it scan
        // the whole kind).
        let mut sql = String::from("SELECT body FROM resources WHERE kind = ?1");
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&kind];
        for (col, val) in [
            ("owner", &q.owner),
            ("parent", &q.parent),
            ("name", &q.name),
        ] {
            if let Some(v) = val {
                args.push(v);
                sql.push_str(&format!(" AND {col} = ?{}", args.len()));
            }
        }
        if let Some(rev) = &q.after {
            args.push(rev);
            sql.push_str(&format!(" AND revision > ?{}", args.len()));
        }
        // `+id`: sort the few matching rows rather than walk the whole kind
        // in id order.
        sql.push_str(if args.len() > 1 {
            " ORDER BY +id"
        } else {
            " ORDER BY id"
        });
        let mut st = self.0.prepare_cached(&sql).db()?;
        let rows = st.query_map(&*args, |r| r.get::<_, String>(0)).db()?;
        rows.collect::<rusqlite::Result<Vec<_>>>().db()
    }

    fn page(
        &mut self,
        kind: &str,
        q: &Query,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<String>> {
        use rusqlite::types::Value;
        let mut sql = String::from("SELECT body FROM resources WHERE kind = ?1");
        let mut args: Vec<Value> = vec![Value::Text(kind.into())];
        for (col, val) in [("owner", q.owner), ("parent", q.parent), ("name", q.name)] {
            if let Some(v) = val {
                args.push(Value::Text(v.into()));
                sql.push_str(&format!(" AND {col} = ?{}", args.len()));
            }
        }
        if let Some((created, id)) = after {
            args.push(Value::Integer(created));
            args.push(Value::Text(id.into()));
            // A row value: SQLite walks `resources_owner_created` (or
            // `resources_created`) backwards from the position.
            sql.push_str(&format!(
                " AND (created, id) < (?{}, ?{})",
                args.len() - 1,
                args.len()
            ));
        }
        args.push(Value::Integer(limit.min(i64::MAX as usize) as i64));
        sql.push_str(&format!(
            " ORDER BY created DESC, id DESC LIMIT ?{}",
            args.len()
        ));
        let mut st = self.0.prepare_cached(&sql).db()?;
        let rows = st
            .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                r.get::<_, String>(0)
            })
            .db()?;
        rows.collect::<rusqlite::Result<Vec<_>>>().db()
    }

    fn unsorted(&mut self, kind: &str) -> Result<Vec<(String, String)>> {
        let mut st = self
            .0
            .prepare_cached("SELECT id, body FROM resources WHERE kind = ?1 AND created IS NULL")
            .db()?;
        let rows = st
            .query_map(params![kind], |r| Ok((r.get(0)?, r.get(1)?)))
            .db()?;
        rows.collect::<rusqlite::Result<Vec<_>>>().db()
    }

    fn set_created(&mut self, kind: &str, id: &str, created: i64) -> Result<()> {
        self.0
            .prepare_cached("UPDATE resources SET created = ?3 WHERE kind = ?1 AND id = ?2")
            .db()?
            .execute(params![kind, id, created])
            .db()?;
        Ok(())
    }

    fn body_by_unique(&mut self, kind: &str, key: &str) -> Result<Option<String>> {
        self.one(
            "SELECT body FROM resources WHERE kind = ?1 AND unique_key = ?2",
            params![kind, key],
        )
    }

    fn unique_holder(&mut self, kind: &str, key: &str) -> Result<Option<String>> {
        self.one(
            "SELECT id FROM resources WHERE kind = ?1 AND unique_key = ?2",
            params![kind, key],
        )
    }

    fn revision(&mut self, kind: &str, id: &str) -> Result<Option<i64>> {
        self.one(
            "SELECT revision FROM resources WHERE kind = ?1 AND id = ?2",
            params![kind, id],
        )
    }

    fn append_change(
        &mut self,
        kind: &str,
        id: &str,
        op: &str,
        body: Option<&str>,
        at_ms: i64,
    ) -> Result<i64> {
        self.0
            .prepare_cached(
                "INSERT INTO changes (kind, id, op, body, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .db()?
            .execute(params![kind, id, op, body, at_ms])
            .db()?;
        Ok(self.0.last_insert_rowid())
    }

    fn insert(&mut self, row: &Row) -> Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO resources
                 (kind, id, owner, parent, name, unique_key, revision, body, created, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .db()?
            .execute(params![
                row.kind,
                row.id,
                row.owner,
                row.parent,
                row.name,
                row.unique_key,
                row.revision,
                row.body,
                row.created,
                row.state
            ])
            .db()?;
        Ok(())
    }

    fn update(&mut self, row: &Row) -> Result<()> {
        self.0
            .prepare_cached(
                "UPDATE resources SET owner = ?3, parent = ?4, name = ?5, unique_key = ?6,
                 revision = ?7, body = ?8, created = ?9, state = ?10
                 WHERE kind = ?1 AND id = ?2",
            )
            .db()?
            .execute(params![
                row.kind,
                row.id,
                row.owner,
                row.parent,
                row.name,
                row.unique_key,
                row.revision,
                row.body,
                row.created,
                row.state
            ])
            .db()?;
        Ok(())
    }

    fn delete(&mut self, kind: &str, id: &str) -> Result<bool> {
        let n = self
            .0
            .prepare_cached("DELETE FROM resources WHERE kind = ?1 AND id = ?2")
            .db()?
            .execute(params![kind, id])
            .db()?;
        Ok(n > 0)
    }

    fn meta_get(&mut self, key: &str) -> Result<Option<String>> {
        self.one("SELECT value FROM meta WHERE key = ?1", params![key])
    }

    fn meta_set(&mut self, key: &str, value: &str) -> Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .db()?
            .execute(params![key, value])
            .db()?;
        Ok(())
    }

    fn set_liveness(&mut self, kind: &str, id: &str, at_us: i64) -> Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO liveness (kind, id, at_us) VALUES (?1, ?2, ?3)
                 ON CONFLICT (kind, id) DO UPDATE SET at_us = MAX(at_us, excluded.at_us)",
            )
            .db()?
            .execute(params![kind, id, at_us])
            .db()?;
        Ok(())
    }

    fn liveness(&mut self, kind: &str) -> Result<HashMap<String, i64>> {
        let mut st = self
            .0
            .prepare_cached("SELECT id, at_us FROM liveness WHERE kind = ?1")
            .db()?;
        let rows = st
            .query_map(params![kind], |r| Ok((r.get(0)?, r.get(1)?)))
            .db()?;
        rows.collect::<rusqlite::Result<_>>().db()
    }

    fn delete_liveness(&mut self, kind: &str, id: &str) -> Result<()> {
        self.0
            .prepare_cached("DELETE FROM liveness WHERE kind = ?1 AND id = ?2")
            .db()?
            .execute(params![kind, id])
            .db()?;
        Ok(())
    }

    fn newest_change(&mut self) -> Result<i64> {
        self.0
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM changes")
            .db()?
            .query_row([], |r| r.get(0))
            .db()
    }

    fn changes_after(&mut self, seq: i64, limit: usize) -> Result<Vec<Change>> {
        let mut st = self
            .0
            .prepare_cached(
                "SELECT seq, kind, id, op, body FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .db()?;
        let rows = st
            .query_map(params![seq, limit as i64], |r| {
                Ok(Change {
                    seq: r.get(0)?,
                    kind: r.get(1)?,
                    id: r.get(2)?,
                    op: r.get(3)?,
                    body: r.get(4)?,
                })
            })
            .db()?;
        rows.collect::<rusqlite::Result<Vec<_>>>().db()
    }

    fn newest_change_before(&mut self, at_ms: i64) -> Result<Option<i64>> {
        self.0
            .prepare_cached("SELECT MAX(seq) FROM changes WHERE at_ms < ?1")
            .db()?
            .query_row(params![at_ms], |r| r.get(0))
            .db()
    }

    fn delete_changes_through(&mut self, seq: i64) -> Result<u64> {
        let n = self
            .0
            .prepare_cached("DELETE FROM changes WHERE seq <= ?1")
            .db()?
            .execute(params![seq])
            .db()?;
        Ok(n as u64)
    }

    fn count_states(&mut self, kind: &str) -> Result<Vec<(String, u64)>> {
        let mut st = self
            .0
            .prepare_cached(
                "SELECT state, COUNT(*) FROM resources
                 WHERE kind = ?1 AND state IS NOT NULL GROUP BY state",
            )
            .db()?;
        let rows = st
            .query_map(params![kind], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .db()?;
        rows.collect::<rusqlite::Result<Vec<_>>>().db()
    }

    fn unstated(&mut self, kind: &str) -> Result<Vec<(String, String)>> {
        let mut st = self
            .0
            .prepare_cached("SELECT id, body FROM resources WHERE kind = ?1 AND state IS NULL")
            .db()?;
        let rows = st
            .query_map(params![kind], |r| Ok((r.get(0)?, r.get(1)?)))
            .db()?;
        rows.collect::<rusqlite::Result<Vec<_>>>().db()
    }

    fn set_state(&mut self, kind: &str, id: &str, state: &str) -> Result<()> {
        self.0
            .prepare_cached("UPDATE resources SET state = ?3 WHERE kind = ?1 AND id = ?2")
            .db()?
            .execute(params![kind, id, state])
            .db()?;
        Ok(())
    }

    fn documents(&mut self) -> Result<Vec<Document>> {
        let mut st = self
            .0
            .prepare_cached("SELECT kind, id, revision, body FROM resources ORDER BY kind, id")
            .db()?;
        let rows = st
            .query_map([], |r| {
                Ok(Document {
                    kind: r.get(0)?,
                    id: r.get(1)?,
                    revision: r.get(2)?,
                    body: r.get(3)?,
                })
            })
            .db()?;
        rows.collect::<rusqlite::Result<Vec<_>>>().db()
    }
}

/// The write-ahead log beside the store file.
fn wal_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|e| StoreError::Open {
        what: path.display().to_string(),
        message: e.to_string(),
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).db()?;
    conn.pragma_update(None, "journal_mode", "WAL").db()?;
    // In WAL mode NORMAL writes each commit to the log without waiting for
    // the disk and syncs it at checkpoints; durable stores then flush the
    // log themselves after each commit, shared between concurrent commits
    // ([`Sqlite::write`]).
    conn.pragma_update(None, "synchronous", "NORMAL").db()?;
    conn.pragma_update(None, "cache_size", -2000).db()?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)",
    )
    .db()?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .db()?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .db()?;
    for (version, sql) in migrations(SERIAL, INT, BYTES)
        .iter()
        .filter(|(v, _)| *v > current)
    {
        tx.execute_batch(sql).db()?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES (?1)",
            params![version],
        )
        .db()?;
    }
    tx.commit().db()?;
    Ok(())
}
