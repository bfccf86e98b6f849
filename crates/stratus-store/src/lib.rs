//! Persistence for every Stratus controller.
//!
//! What we store and why:
//! - **Resources** (`resources` table): every API object is a JSON document
//!   keyed by `(kind, id)`. A few columns are lifted out of the document so
//!   the store can filter and enforce uniqueness without parsing JSON:
//!   `owner` (the domain or project the object belongs to), `parent` (the
//!   object it hangs under: a parent project, a group for a membership),
//!   `name`, and `unique_key` (a name that must be unique within its kind,
//!   e.g. `domain_id/name` for users). Documents keep the service's own
//!   model; the store never interprets them.
//! - **Revisions and the change log** (`changes` table): every insert,
//!   update and delete appends one row to the change log *in the same
//!   transaction*, and the row's sequence number becomes the resource's
//!   `revision`. Revisions are therefore strictly increasing across the whole
//!   store, and "everything after revision N" is one indexed range scan. That
//!   is what cloud-to-edge sync streams from (see DESIGN.md).
//! - **Liveness** (`liveness` table): when a node (or later a site) was last
//!   heard of. It changes every few seconds for every node and is not
//!   desired state, so it is kept beside the documents, outside the change
//!   log: 1,000 nodes heartbeating add no log rows.
//! - **Compaction**: the change log is cut below a retained revision
//!   ([`Store::compact`]); a reader asking for changes from before that
//!   gets [`StoreError::Compacted`] and starts again from a
//!   [`Store::snapshot`].
//! - **Migrations** (`schema_migrations`): embedded, applied in order at open.
//!
//! The SQL is deliberately plain (no SQLite-only syntax outside the pragmas
//! in [`Store::open`]) so a PostgreSQL engine can run the same statements
//! with `$n` placeholders. SQLite runs in WAL mode: readers never block the
//! single writer, and a commit is durable before it returns.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Errors from the store. Callers map `NotFound` and `Conflict` onto their
/// API's 404 and 409; anything else is an internal failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("stored document is not valid: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error(
        "the change log before revision {oldest} was compacted (asked from {since}): take a snapshot"
    )]
    Compacted { since: i64, oldest: i64 },
    #[error("cannot flush {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open store at {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A type that is kept in the store as a document.
pub trait Record: Serialize + DeserializeOwned {
    /// The kind name, e.g. `"project"`. Stable: it is written to disk and
    /// into the change log.
    const KIND: &'static str;
    fn id(&self) -> &str;
    /// The domain or project that owns this object, if any.
    fn owner(&self) -> Option<&str> {
        None
    }
    /// The object this one hangs under, if any.
    fn parent(&self) -> Option<&str> {
        None
    }
    fn name(&self) -> Option<&str> {
        None
    }
    /// A key that must be unique among objects of this kind; a second
    /// object with the same key is refused with [`StoreError::Conflict`].
    fn unique_key(&self) -> Option<String> {
        None
    }
}

/// Column filters for [`Store::list`]; `None` means "any".
#[derive(Debug, Default, Clone)]
pub struct Query<'a> {
    pub owner: Option<&'a str>,
    pub parent: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl<'a> Query<'a> {
    pub fn all() -> Self {
        Self::default()
    }
    pub fn owner(owner: &'a str) -> Self {
        Query {
            owner: Some(owner),
            ..Self::default()
        }
    }
    pub fn parent(parent: &'a str) -> Self {
        Query {
            parent: Some(parent),
            ..Self::default()
        }
    }
    pub fn name(name: &'a str) -> Self {
        Query {
            name: Some(name),
            ..Self::default()
        }
    }
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub seq: i64,
    pub kind: String,
    pub id: String,
    /// `"put"` or `"delete"`.
    pub op: String,
    /// The document after the change; `None` for deletes.
    pub body: Option<String>,
}

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A write returns only once its commit is on disk: nothing
    /// acknowledged is ever lost. Commits that wait at the same time share
    /// one fsync of the write-ahead log (group commit), so the writer
    /// connection is never held through a disk flush.
    Full,
    /// fsync at checkpoints only: survives a process crash, not a power cut.
    Normal,
}

const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        op TEXT NOT NULL,
        body TEXT,
        at_ms INTEGER NOT NULL
     );
     CREATE TABLE resources (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        owner TEXT,
        parent TEXT,
        name TEXT,
        unique_key TEXT,
        revision INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (kind, id)
     );
     CREATE INDEX resources_owner ON resources (kind, owner);
     CREATE INDEX resources_parent ON resources (kind, parent);
     CREATE INDEX resources_name ON resources (kind, name);
     CREATE UNIQUE INDEX resources_unique ON resources (kind, unique_key);
     CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    ),
    (
        2,
        "CREATE TABLE liveness (
            kind TEXT NOT NULL,
            id TEXT NOT NULL,
            at_us INTEGER NOT NULL,
            PRIMARY KEY (kind, id)
         );
         CREATE INDEX changes_at ON changes (at_ms);",
    ),
];

/// The `meta` key holding the revision the change log is compacted
/// through.
const COMPACTED: &str = "changes.compacted_through";

/// Every document of some kinds at one revision, from [`Store::snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The change-log revision the documents are at: a reader continues
    /// with the changes after it.
    pub revision: i64,
    pub documents: Vec<Document>,
}

/// One stored document, as [`Store::snapshot`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub kind: String,
    pub id: String,
    pub revision: i64,
    pub body: String,
}

/// The store: one writer connection and a small pool of readers.
pub struct Store {
    path: PathBuf,
    durability: Durability,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Commits made so far (a count, bumped under the writer lock right
    /// after each commit).
    committed: std::sync::atomic::AtomicU64,
    /// Group commit: how far the write-ahead log is known to be on disk.
    flush: Mutex<Flush>,
    flushed: std::sync::Condvar,
}

/// The group-commit state of [`Store`].
#[derive(Default)]
struct Flush {
    /// Every commit up to this count is on disk.
    durable: u64,
    /// A thread is flushing the log now; others wait for it.
    running: bool,
    /// The write-ahead log, opened on first use.
    wal: Option<std::fs::File>,
}

impl Store {
    /// Opens (creating if needed) the store file and applies migrations.
    pub fn open(path: &Path, durability: Durability) -> Result<Self> {
        let mut conn = open_conn(path, durability)?;
        migrate(&mut conn)?;
        Ok(Store {
            path: path.to_path_buf(),
            durability,
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            committed: std::sync::atomic::AtomicU64::new(0),
            flush: Mutex::new(Flush::default()),
            flushed: std::sync::Condvar::new(),
        })
    }

    /// An in-memory store for unit tests of code that needs one.
    pub fn open_in_memory() -> Result<Self> {
        // A shared-cache memory database would be needed for readers; unit
        // tests use a temp file instead so the real WAL path is exercised.
        let dir = std::env::temp_dir().join(format!(
            "stratus-store-{}-{}",
            std::process::id(),
            next_tmp()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Open {
            path: dir.clone(),
            source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
        })?;
        Self::open(&dir.join("store.db"), Durability::Normal)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with_reader<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        let conn = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => open_conn(&self.path, self.durability)?,
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 32 {
            pool.push(conn);
        }
        out
    }

    /// Reads one document.
    pub fn get<T: Record>(&self, id: &str) -> Result<Option<T>> {
        self.with_reader(|c| get_in::<T>(c, id))
    }

    /// Reads one document or fails with [`StoreError::NotFound`].
    pub fn fetch<T: Record>(&self, id: &str) -> Result<T> {
        self.get::<T>(id)?.ok_or_else(|| StoreError::NotFound {
            kind: T::KIND,
            id: id.to_string(),
        })
    }

    /// Lists documents of one kind matching the column filters, in id order.
    pub fn list<T: Record>(&self, q: &Query) -> Result<Vec<T>> {
        self.with_reader(|c| list_in::<T>(c, q))
    }

    /// Looks a document up by its unique key.
    pub fn get_unique<T: Record>(&self, key: &str) -> Result<Option<T>> {
        self.with_reader(|c| {
            let body: Option<String> = c
                .prepare_cached("SELECT body FROM resources WHERE kind = ?1 AND unique_key = ?2")?
                .query_row(params![T::KIND, key], |r| r.get(0))
                .optional()?;
            body.map(|b| serde_json::from_str(&b).map_err(Into::into))
                .transpose()
        })
    }

    /// The revision of one document, if it exists.
    pub fn revision<T: Record>(&self, id: &str) -> Result<Option<i64>> {
        self.with_reader(|c| {
            Ok(
                c.prepare_cached("SELECT revision FROM resources WHERE kind = ?1 AND id = ?2")?
                    .query_row(params![T::KIND, id], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    /// Runs `f` in one write transaction. Everything it does commits
    /// together, with its change-log entries, or not at all.
    ///
    /// A write waits for the one writer connection and then for the disk
    /// (an fsync per commit). Called from an async task, it first hands
    /// the runtime's worker over to the others ([`blocking`]), so requests
    /// that only read never queue behind writes.
    pub fn write<R, E>(&self, f: impl FnOnce(&Tx) -> std::result::Result<R, E>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        blocking(|| {
            let (out, ticket) = {
                let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
                let txn = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(StoreError::from)?;
                let out = f(&Tx { conn: &txn })?;
                txn.commit().map_err(StoreError::from)?;
                let ticket = 1 + self
                    .committed
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (out, ticket)
            };
            if self.durability == Durability::Full {
                self.flush_through(ticket)?;
            }
            Ok(out)
        })
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
            let upto = self.committed.load(std::sync::atomic::Ordering::SeqCst);
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

    /// Change-log entries after `seq`, oldest first, at most `limit`;
    /// [`StoreError::Compacted`] when entries after `seq` were compacted
    /// away.
    pub fn changes_since(&self, seq: i64, limit: usize) -> Result<Vec<Change>> {
        self.with_reader(|c| {
            let oldest = compacted_through(c)?;
            if seq < oldest {
                return Err(StoreError::Compacted { since: seq, oldest });
            }
            let mut st = c.prepare_cached(
                "SELECT seq, kind, id, op, body FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = st.query_map(params![seq, limit as i64], |r| {
                Ok(Change {
                    seq: r.get(0)?,
                    kind: r.get(1)?,
                    id: r.get(2)?,
                    op: r.get(3)?,
                    body: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// The newest change-log revision (0 for an empty store). It only
    /// grows, across restarts too.
    pub fn last_revision(&self) -> Result<i64> {
        self.with_reader(|c| {
            Ok(
                c.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM changes")?
                    .query_row([], |r| r.get(0))?,
            )
        })
    }

    /// When each object of `kind` was last heard of (microseconds), from
    /// [`Tx::set_liveness`].
    pub fn liveness(&self, kind: &str) -> Result<std::collections::HashMap<String, i64>> {
        self.with_reader(|c| {
            let mut st = c.prepare_cached("SELECT id, at_us FROM liveness WHERE kind = ?1")?;
            let rows = st.query_map(params![kind], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Removes the change-log entries up to revision `through` (never the
    /// newest one, so revisions keep growing from where they were).
    /// Returns how many went.
    pub fn compact(&self, through: i64) -> Result<u64> {
        self.write(|tx| {
            let newest: i64 =
                tx.conn
                    .query_row("SELECT COALESCE(MAX(seq), 0) FROM changes", [], |r| {
                        r.get(0)
                    })?;
            let upto = through.min(newest - 1);
            if upto <= compacted_through(tx.conn)? {
                return Ok(0);
            }
            let n = tx
                .conn
                .execute("DELETE FROM changes WHERE seq <= ?1", params![upto])?;
            tx.meta_set(COMPACTED, &upto.to_string())?;
            Ok(n as u64)
        })
    }

    /// Compacts the change log through the newest entry written before
    /// `before_ms` (milliseconds since the epoch): a retention by age.
    pub fn compact_older_than(&self, before_ms: i64) -> Result<u64> {
        let through: Option<i64> = self.with_reader(|c| {
            Ok(
                c.prepare_cached("SELECT MAX(seq) FROM changes WHERE at_ms < ?1")?
                    .query_row(params![before_ms], |r| r.get(0))?,
            )
        })?;
        match through {
            Some(t) => self.compact(t),
            None => Ok(0),
        }
    }

    /// Every document of the given kinds (all kinds when empty) and the
    /// revision they are at, read in one transaction: what a reader whose
    /// position was compacted away starts again from.
    pub fn snapshot(&self, kinds: &[&str]) -> Result<Snapshot> {
        self.with_reader(|c| {
            c.execute_batch("BEGIN")?;
            let out = (|| {
                let revision: i64 =
                    c.query_row("SELECT COALESCE(MAX(seq), 0) FROM changes", [], |r| {
                        r.get(0)
                    })?;
                let mut documents = Vec::new();
                let mut st = c.prepare_cached(
                    "SELECT kind, id, revision, body FROM resources ORDER BY kind, id",
                )?;
                let rows = st.query_map([], |r| {
                    Ok(Document {
                        kind: r.get(0)?,
                        id: r.get(1)?,
                        revision: r.get(2)?,
                        body: r.get(3)?,
                    })
                })?;
                for d in rows {
                    let d = d?;
                    if kinds.is_empty() || kinds.contains(&d.kind.as_str()) {
                        documents.push(d);
                    }
                }
                Ok(Snapshot {
                    revision,
                    documents,
                })
            })();
            c.execute_batch("COMMIT")?;
            out
        })
    }

    /// Reads a value from the key-value side table.
    pub fn meta_get(&self, key: &str) -> Result<Option<String>> {
        self.with_reader(|c| {
            Ok(c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
                .query_row(params![key], |r| r.get(0))
                .optional()?)
        })
    }
}

/// A write transaction; see [`Store::write`].
pub struct Tx<'c> {
    conn: &'c Connection,
}

impl Tx<'_> {
    pub fn get<T: Record>(&self, id: &str) -> Result<Option<T>> {
        get_in::<T>(self.conn, id)
    }

    pub fn fetch<T: Record>(&self, id: &str) -> Result<T> {
        self.get::<T>(id)?.ok_or_else(|| StoreError::NotFound {
            kind: T::KIND,
            id: id.to_string(),
        })
    }

    pub fn list<T: Record>(&self, q: &Query) -> Result<Vec<T>> {
        list_in::<T>(self.conn, q)
    }

    fn log(&self, kind: &str, id: &str, op: &str, body: Option<&str>) -> Result<i64> {
        self.conn
            .prepare_cached(
                "INSERT INTO changes (kind, id, op, body, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![kind, id, op, body, now_ms()])?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Inserts a new document; [`StoreError::Conflict`] if the id or the
    /// unique key is taken. Returns the new revision.
    pub fn insert<T: Record>(&self, rec: &T) -> Result<i64> {
        let body = serde_json::to_string(rec)?;
        let rev = self.log(T::KIND, rec.id(), "put", Some(&body))?;
        let res = self
            .conn
            .prepare_cached(
                "INSERT INTO resources (kind, id, owner, parent, name, unique_key, revision, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                T::KIND,
                rec.id(),
                rec.owner(),
                rec.parent(),
                rec.name(),
                rec.unique_key(),
                rev,
                body
            ]);
        match res {
            Ok(_) => Ok(rev),
            Err(e) if is_constraint(&e) => Err(StoreError::Conflict(format!(
                "{} {} conflicts with an existing one",
                T::KIND,
                rec.name().unwrap_or(rec.id())
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces an existing document; [`StoreError::NotFound`] if absent.
    pub fn update<T: Record>(&self, rec: &T) -> Result<i64> {
        let body = serde_json::to_string(rec)?;
        let rev = self.log(T::KIND, rec.id(), "put", Some(&body))?;
        let res = self
            .conn
            .prepare_cached(
                "UPDATE resources SET owner = ?3, parent = ?4, name = ?5, unique_key = ?6,
                 revision = ?7, body = ?8 WHERE kind = ?1 AND id = ?2",
            )?
            .execute(params![
                T::KIND,
                rec.id(),
                rec.owner(),
                rec.parent(),
                rec.name(),
                rec.unique_key(),
                rev,
                body
            ]);
        match res {
            Ok(0) => Err(StoreError::NotFound {
                kind: T::KIND,
                id: rec.id().to_string(),
            }),
            Ok(_) => Ok(rev),
            Err(e) if is_constraint(&e) => Err(StoreError::Conflict(format!(
                "{} {} conflicts with an existing one",
                T::KIND,
                rec.name().unwrap_or(rec.id())
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Inserts or replaces.
    pub fn upsert<T: Record>(&self, rec: &T) -> Result<i64> {
        if self.exists::<T>(rec.id())? {
            self.update(rec)
        } else {
            self.insert(rec)
        }
    }

    pub fn exists<T: Record>(&self, id: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM resources WHERE kind = ?1 AND id = ?2")?
            .query_row(params![T::KIND, id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Deletes a document; returns whether it existed.
    pub fn delete<T: Record>(&self, id: &str) -> Result<bool> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM resources WHERE kind = ?1 AND id = ?2")?
            .execute(params![T::KIND, id])?;
        if n > 0 {
            self.log(T::KIND, id, "delete", None)?;
            self.conn
                .prepare_cached("DELETE FROM liveness WHERE kind = ?1 AND id = ?2")?
                .execute(params![T::KIND, id])?;
        }
        Ok(n > 0)
    }

    /// Records that `kind`/`id` was heard of at `at_us` (microseconds).
    /// Not a change: no revision, no change-log entry.
    pub fn set_liveness(&self, kind: &str, id: &str, at_us: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO liveness (kind, id, at_us) VALUES (?1, ?2, ?3)
                 ON CONFLICT (kind, id) DO UPDATE SET at_us = MAX(at_us, excluded.at_us)",
            )?
            .execute(params![kind, id, at_us])?;
        Ok(())
    }

    pub fn meta_set(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
        Ok(())
    }
}

fn get_in<T: Record>(c: &Connection, id: &str) -> Result<Option<T>> {
    let body: Option<String> = c
        .prepare_cached("SELECT body FROM resources WHERE kind = ?1 AND id = ?2")?
        .query_row(params![T::KIND, id], |r| r.get(0))
        .optional()?;
    body.map(|b| serde_json::from_str(&b).map_err(Into::into))
        .transpose()
}

fn list_in<T: Record>(c: &Connection, q: &Query) -> Result<Vec<T>> {
    // Only the filters given go into the SQL, so SQLite can use the index
    // on that column (`?n IS NULL OR col = ?n` would make it scan the
    // whole kind).
    let mut sql = String::from("SELECT body FROM resources WHERE kind = ?1");
    let mut args: Vec<&str> = vec![T::KIND];
    for (col, val) in [("owner", q.owner), ("parent", q.parent), ("name", q.name)] {
        if let Some(v) = val {
            args.push(v);
            sql.push_str(&format!(" AND {col} = ?{}", args.len()));
        }
    }
    // `+id`: sort the few matching rows rather than walk the whole kind
    // in id order.
    sql.push_str(if args.len() > 1 {
        " ORDER BY +id"
    } else {
        " ORDER BY id"
    });
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map(rusqlite::params_from_iter(args.iter()), |r| {
        r.get::<_, String>(0)
    })?;
    let mut out = Vec::new();
    for body in rows {
        out.push(serde_json::from_str(&body?)?);
    }
    Ok(out)
}

/// Runs `f`, which may block for a while (waiting for the writer or the
/// disk), without stalling an async runtime: on a worker thread of a
/// multi-threaded tokio runtime the worker's other tasks move to another
/// thread first (`block_in_place`); anywhere else `f` just runs.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The revision the change log is compacted through (0: never).
fn compacted_through(c: &Connection) -> Result<i64> {
    let v: Option<String> = c
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row(params![COMPACTED], |r| r.get(0))
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

/// The write-ahead log beside the store file.
fn wal_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

fn open_conn(path: &Path, durability: Durability) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // In WAL mode NORMAL writes each commit to the log without waiting
    // for the disk and syncs it at checkpoints; `Full` stores then flush
    // the log themselves after each commit, shared between concurrent
    // commits ([`Store::write`]).
    let _ = durability;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -2000)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)",
    )?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES (?1)",
            params![version],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn next_tmp() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Thing {
        id: String,
        domain: String,
        name: String,
    }

    impl Record for Thing {
        const KIND: &'static str = "thing";
        fn id(&self) -> &str {
            &self.id
        }
        fn owner(&self) -> Option<&str> {
            Some(&self.domain)
        }
        fn name(&self) -> Option<&str> {
            Some(&self.name)
        }
        fn unique_key(&self) -> Option<String> {
            Some(format!("{}/{}", self.domain, self.name))
        }
    }

    fn thing(id: &str, domain: &str, name: &str) -> Thing {
        Thing {
            id: id.into(),
            domain: domain.into(),
            name: name.into(),
        }
    }

    #[test]
    fn crud_and_filters() {
        let s = Store::open_in_memory().unwrap();
        s.write(|tx| {
            tx.insert(&thing("a", "d1", "x"))?;
            tx.insert(&thing("b", "d1", "y"))?;
            tx.insert(&thing("c", "d2", "x"))?;
            Ok::<_, StoreError>(())
        })
        .unwrap();
        assert_eq!(s.list::<Thing>(&Query::all()).unwrap().len(), 3);
        assert_eq!(s.list::<Thing>(&Query::owner("d1")).unwrap().len(), 2);
        let by_name = s.list::<Thing>(&Query::name("x")).unwrap();
        assert_eq!(
            by_name.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );
        assert_eq!(s.get_unique::<Thing>("d2/x").unwrap().unwrap().id, "c");
        let mut b = s.fetch::<Thing>("b").unwrap();
        b.name = "z".into();
        s.write(|tx| tx.update(&b)).unwrap();
        assert_eq!(s.fetch::<Thing>("b").unwrap().name, "z");
        assert!(s.write(|tx| tx.delete::<Thing>("b")).unwrap());
        assert!(!s.write(|tx| tx.delete::<Thing>("b")).unwrap());
        assert!(matches!(
            s.fetch::<Thing>("b"),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn unique_key_and_id_conflicts() {
        let s = Store::open_in_memory().unwrap();
        s.write(|tx| tx.insert(&thing("a", "d1", "x"))).unwrap();
        let dup_name = s.write(|tx| tx.insert(&thing("b", "d1", "x")));
        assert!(matches!(dup_name, Err(StoreError::Conflict(_))));
        let dup_id = s.write(|tx| tx.insert(&thing("a", "d9", "q")));
        assert!(matches!(dup_id, Err(StoreError::Conflict(_))));
        // Same name in another owner is fine.
        s.write(|tx| tx.insert(&thing("b", "d2", "x"))).unwrap();
    }

    #[test]
    fn failed_transaction_leaves_nothing_behind() {
        let s = Store::open_in_memory().unwrap();
        let before = s.changes_since(0, 100).unwrap().len();
        let r = s.write(|tx| {
            tx.insert(&thing("a", "d1", "x"))?;
            tx.insert(&thing("b", "d1", "x")) // conflicts: whole txn rolls back
        });
        assert!(r.is_err());
        assert!(s.get::<Thing>("a").unwrap().is_none());
        assert_eq!(s.changes_since(0, 100).unwrap().len(), before);
    }

    #[test]
    fn revisions_follow_the_change_log() {
        let s = Store::open_in_memory().unwrap();
        let r1 = s.write(|tx| tx.insert(&thing("a", "d1", "x"))).unwrap();
        let r2 = s.write(|tx| tx.insert(&thing("b", "d1", "y"))).unwrap();
        let r3 = s.write(|tx| tx.update(&thing("a", "d1", "x2"))).unwrap();
        assert!(r1 < r2 && r2 < r3);
        assert_eq!(s.revision::<Thing>("a").unwrap(), Some(r3));
        s.write(|tx| tx.delete::<Thing>("b")).unwrap();
        let log = s.changes_since(r1, 10).unwrap();
        let ops: Vec<_> = log.iter().map(|c| (c.id.as_str(), c.op.as_str())).collect();
        assert_eq!(ops, [("b", "put"), ("a", "put"), ("b", "delete")]);
        assert!(log[1].body.as_deref().unwrap().contains("x2"));
    }

    #[test]
    fn concurrent_durable_writes_share_flushes_and_all_land() {
        let s = Store::open_in_memory().unwrap();
        let path = s.path().to_path_buf();
        drop(s);
        let s = Store::open(&path, Durability::Full).unwrap();
        std::thread::scope(|scope| {
            for t in 0..8 {
                let s = &s;
                scope.spawn(move || {
                    for i in 0..40 {
                        let id = format!("t{t}-{i}");
                        s.write(|tx| tx.insert(&thing(&id, "d", &id))).unwrap();
                        // Acknowledged means readable, by anyone.
                        assert!(s.get::<Thing>(&id).unwrap().is_some());
                    }
                });
            }
        });
        let flush = s.flush.lock().unwrap();
        assert_eq!(flush.durable, 320, "every commit is covered by a flush");
        assert!(!flush.running);
        drop(flush);
        drop(s);
        let s = Store::open(&path, Durability::Full).unwrap();
        assert_eq!(s.list::<Thing>(&Query::all()).unwrap().len(), 320);
    }

    #[test]
    fn writes_from_an_async_runtime_do_not_stall_its_workers() {
        let s = std::sync::Arc::new(Store::open_in_memory().unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let s2 = s.clone();
        // On a thread of its own, so a stalled runtime fails the test
        // instead of hanging it.
        std::thread::spawn(move || {
            let s = s2;
            rt.block_on(async {
                // A write holds the writer while another task on the only
                // worker must still make progress.
                let (held_tx, held_rx) = std::sync::mpsc::channel();
                let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
                let s1 = s.clone();
                let writer = tokio::spawn(async move {
                    s1.write(|tx| {
                        tx.insert(&thing("w", "d", "w"))?;
                        held_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                        Ok::<_, StoreError>(())
                    })
                    .unwrap();
                });
                tokio::task::spawn_blocking(move || held_rx.recv().unwrap())
                    .await
                    .unwrap();
                // The worker is free: this task runs while the write is held.
                let ran = tokio::spawn(async { 42 }).await.unwrap();
                assert_eq!(ran, 42);
                release_tx.send(()).unwrap();
                writer.await.unwrap();
            });
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the only worker stalled behind a write");
        assert!(s.get::<Thing>("w").unwrap().is_some());
    }

    #[test]
    fn liveness_is_kept_outside_the_change_log() {
        let s = Store::open_in_memory().unwrap();
        s.write(|tx| tx.insert(&thing("a", "d", "x"))).unwrap();
        let before = s.last_revision().unwrap();
        for at in [10, 30, 20] {
            s.write(|tx| tx.set_liveness(Thing::KIND, "a", at)).unwrap();
        }
        assert_eq!(s.last_revision().unwrap(), before, "no log rows");
        // The newest time wins, whatever order they come in.
        assert_eq!(s.liveness(Thing::KIND).unwrap().get("a"), Some(&30));
        s.write(|tx| tx.delete::<Thing>("a")).unwrap();
        assert!(s.liveness(Thing::KIND).unwrap().is_empty());
    }

    #[test]
    fn compaction_sends_old_readers_to_a_snapshot() {
        let s = Store::open_in_memory().unwrap();
        let mut revs = Vec::new();
        for i in 0..10 {
            let id = format!("t{i}");
            revs.push(s.write(|tx| tx.insert(&thing(&id, "d", &id))).unwrap());
        }
        s.write(|tx| tx.delete::<Thing>("t0")).unwrap();
        let newest = s.last_revision().unwrap();
        assert_eq!(s.compact(revs[5]).unwrap(), 6);
        // Readers at or after the cut carry on; older ones are told.
        assert_eq!(s.changes_since(revs[5], 100).unwrap().len(), 5);
        match s.changes_since(revs[2], 100) {
            Err(StoreError::Compacted { oldest, .. }) => assert_eq!(oldest, revs[5]),
            other => panic!("expected Compacted, got {other:?}"),
        }
        // Never the newest entry: revisions keep growing after a restart.
        assert_eq!(s.compact(i64::MAX).unwrap(), 4);
        assert_eq!(s.last_revision().unwrap(), newest);
        assert_eq!(s.changes_since(newest - 1, 10).unwrap().len(), 1);
        let next = s.write(|tx| tx.insert(&thing("n", "d", "n"))).unwrap();
        assert!(next > newest);
        // The snapshot has every live document at its revision.
        let snap = s.snapshot(&[Thing::KIND]).unwrap();
        assert_eq!(snap.revision, next);
        let ids: Vec<_> = snap.documents.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(
            ids,
            ["n", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9"]
        );
        assert_eq!(snap.documents[0].revision, next);
        assert!(s.snapshot(&["other"]).unwrap().documents.is_empty());
        // Age-based retention finds the cut from the entries' times.
        assert_eq!(s.compact_older_than(0).unwrap(), 0);
    }

    #[test]
    fn reopening_keeps_data_and_schema() {
        let s = Store::open_in_memory().unwrap();
        let path = s.path().to_path_buf();
        s.write(|tx| tx.insert(&thing("a", "d1", "x"))).unwrap();
        drop(s);
        let s = Store::open(&path, Durability::Full).unwrap();
        assert_eq!(s.fetch::<Thing>("a").unwrap().name, "x");
    }
}
