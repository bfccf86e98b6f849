//! Persistence for every Stratus controller.
//!
//! What we store and why:
//! - **Resources** (`resources` table): every API object is a JSON document
//!   keyed by `(kind, id)`. A few columns are lifted out of the document so
//!   the store can filter and enforce uniqueness without parsing JSON:
//!   `owner` (the domain or project the object belongs to), `parent` (the
//!   object it hangs under: a parent project, a group for a membership),
//!   `name`, `unique_key` (a name that must be unique within its kind,
//!   e.g. `domain_id/name` for users) and `created` (when the object was
//!   created, the keyset order of [`Store::list_newest`]: a first page of
//!   1,000 out of 100,000 reads about 1,000 rows) and `state` (a short
//!   state such as a server's, counted by [`Store::count_states`] from an
//!   index, no document read). Documents keep the
//!   service's own model; the store never interprets them.
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
//! - **Observation**: the store counts nothing itself; an [`Observer`]
//!   given to [`Store::observe`] hears how long each write transaction
//!   waited for the writer and ran, and how it ended (the API's metrics).
//!
//! Engines: the document layer here (records, revisions, conflicts, the
//! change log, compaction) sits on a small row-level interface
//! (`engine::Conn`) with two engines: the embedded SQLite file (the
//! default; WAL, one writer, group commit) and PostgreSQL for several
//! controller processes on one database ([`Store::open_url`]). Writes are
//! serialised on both (SQLite's one writer; an advisory lock on
//! PostgreSQL), so every check made inside [`Store::write`] holds across
//! processes and a write's closure runs exactly once. No engine type leaves
//! this crate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

mod engine;
mod postgres;
mod sqlite;

use engine::{Conn, Row};

/// Errors from the store. Callers map `NotFound` and `Conflict` onto their
/// API's 404 and 409 and `Unavailable` onto 503; anything else is an
/// internal failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Db(String),
    /// The database cannot be reached (PostgreSQL down or restarting).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
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
    #[error("cannot open the store at {what}: {message}")]
    Open { what: String, message: String },
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
    /// When the object was created (any monotonic unit, e.g. µs since the
    /// epoch): the order of [`Store::list_newest`]. Kinds without one sort
    /// by id alone.
    fn created(&self) -> Option<i64> {
        None
    }
    /// A short state the store counts objects of this kind by
    /// ([`Store::count_states`]), e.g. a server's `vm_state/task_state`.
    fn state(&self) -> Option<String> {
        None
    }
}

/// A position in the [`Store::list_newest`] order: the `created` and id
/// of the last document of the page before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct After<'a> {
    pub created: i64,
    pub id: &'a str,
}

impl<'a> After<'a> {
    /// The position just after `rec`.
    pub fn record<T: Record>(rec: &'a T) -> Self {
        After {
            created: rec.created().unwrap_or(0),
            id: rec.id(),
        }
    }
}

/// Column filters for [`Store::list`]; `None` means "any".
#[derive(Debug, Default, Clone)]
pub struct Query<'a> {
    pub owner: Option<&'a str>,
    pub parent: Option<&'a str>,
    pub name: Option<&'a str>,
    /// Only documents written after this revision (what changed since a
    /// reader's last look; deletions are not listed).
    pub after: Option<i64>,
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
    /// The same query, only for documents written after revision `rev`.
    pub fn changed_after(self, rev: i64) -> Self {
        Query {
            after: Some(rev),
            ..self
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

/// Which database a [`Store`] runs on.
enum Engine {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// The store: documents, revisions and the change log on one engine.
pub struct Store {
    engine: Engine,
    /// Kinds whose rows from before the `created` column were backfilled
    /// by this process ([`Store::list_newest`]).
    backfilled: std::sync::Mutex<std::collections::HashSet<&'static str>>,
    /// Who hears about every write transaction ([`Store::observe`]).
    observer: std::sync::OnceLock<std::sync::Arc<dyn Observer>>,
    /// Kinds whose rows from before the `state` column were backfilled
    /// by this process ([`Store::count_states`]).
    stated: std::sync::Mutex<std::collections::HashSet<&'static str>>,
}

/// Hears about every write transaction of a [`Store`], on the thread that
/// ran it: keep it cheap (a few atomic adds).
pub trait Observer: Send + Sync {
    fn write_done(&self, stats: &WriteStats);
}

/// What one write transaction cost, the same on every engine.
#[derive(Debug, Clone, Copy)]
pub struct WriteStats {
    /// From the call to the moment the transaction's closure began:
    /// waiting for the writer (the writer lock, SQLite's `BEGIN
    /// IMMEDIATE`, PostgreSQL's advisory lock) and for a connection.
    pub waited: std::time::Duration,
    /// From the closure's start to the commit being durable (or the
    /// rollback).
    pub ran: std::time::Duration,
    pub outcome: WriteOutcome,
}

/// How a write transaction ended. There is no retry to count: writes are
/// serialised, so a closure runs once and either commits or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed (and durable).
    Committed,
    /// The closure returned an error (a conflict, a refused request):
    /// rolled back, nothing written.
    RolledBack,
    /// The engine failed: the transaction could not begin or commit.
    Failed,
}

impl WriteOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOutcome::Committed => "committed",
            WriteOutcome::RolledBack => "rolled_back",
            WriteOutcome::Failed => "failed",
        }
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite store file and applies
    /// migrations.
    pub fn open(path: &Path, durability: Durability) -> Result<Self> {
        Ok(Store::on(Engine::Sqlite(sqlite::Sqlite::open(
            path, durability,
        )?)))
    }

    /// Opens the PostgreSQL database at `url` (`postgres://...` or
    /// `postgresql://...`) and applies migrations once across processes.
    pub fn open_url(url: &str) -> Result<Self> {
        // The client blocks on a runtime of its own.
        Ok(Store::on(Engine::Postgres(blocking(|| {
            postgres::Postgres::open(url)
        })?)))
    }

    fn on(engine: Engine) -> Self {
        Store {
            engine,
            backfilled: Default::default(),
            observer: Default::default(),
            stated: Default::default(),
        }
    }

    /// Sets who hears about every write transaction from now on (once:
    /// false when an observer was set already).
    pub fn observe(&self, observer: std::sync::Arc<dyn Observer>) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// Whether `s` names a PostgreSQL database rather than a file.
    pub fn is_database_url(s: &str) -> bool {
        s.starts_with("postgres://") || s.starts_with("postgresql://")
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
        // One an earlier process with the same id left is not this one's.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Open {
            what: dir.display().to_string(),
            message: e.to_string(),
        })?;
        Self::open(&dir.join("store.db"), Durability::Normal)
    }

    /// The SQLite file, if this store is one.
    pub fn path(&self) -> Option<&Path> {
        match &self.engine {
            Engine::Sqlite(e) => Some(e.path()),
            Engine::Postgres(_) => None,
        }
    }

    /// Where the store is, for messages (a PostgreSQL URL without its
    /// password).
    pub fn describe(&self) -> String {
        match &self.engine {
            Engine::Sqlite(e) => e.path().display().to_string(),
            Engine::Postgres(e) => e.display.clone(),
        }
    }

    fn read<R>(&self, f: impl FnOnce(&mut dyn Conn) -> Result<R>) -> Result<R> {
        match &self.engine {
            Engine::Sqlite(e) => e.read(f),
            // The client blocks on its own runtime: never on a worker.
            Engine::Postgres(e) => blocking(|| e.read(false, f)),
        }
    }

    /// Reads one document.
    pub fn get<T: Record>(&self, id: &str) -> Result<Option<T>> {
        self.read(|c| decode(c.body(T::KIND, id)?))
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
        self.read(|c| decode_all(c.bodies(T::KIND, q)?))
    }

    /// At most `limit` documents of one kind matching the column filters,
    /// newest first: [`Record::created`] descending, then id descending
    /// (ids compared by bytes), starting just after `after` when given.
    /// Keyset paging over an index: a page costs about `limit` rows
    /// however many documents the kind holds; the next page starts
    /// [`After::record`] the last one.
    pub fn list_newest<T: Record>(
        &self,
        q: &Query,
        after: Option<After>,
        limit: usize,
    ) -> Result<Vec<T>> {
        self.backfill::<T>()?;
        let after = after.map(|a| (a.created, a.id));
        self.read(|c| decode_all(c.page(T::KIND, q, after, limit)?))
    }

    /// Fills the `created` column of the rows of `T` written before it
    /// existed, once per kind and process (later writes fill it
    /// themselves). Not a change: no revision, no change-log entry.
    fn backfill<T: Record>(&self) -> Result<()> {
        let kinds = || self.backfilled.lock().unwrap_or_else(|p| p.into_inner());
        if kinds().contains(T::KIND) {
            return Ok(());
        }
        self.write(|tx| {
            let mut c = tx.conn.borrow_mut();
            for (id, body) in c.unsorted(T::KIND)? {
                let rec: T = serde_json::from_str(&body)?;
                c.set_created(T::KIND, &id, rec.created().unwrap_or(0))?;
            }
            Ok::<_, StoreError>(())
        })?;
        kinds().insert(T::KIND);
        Ok(())
    }

    /// Looks a document up by its unique key.
    pub fn get_unique<T: Record>(&self, key: &str) -> Result<Option<T>> {
        self.read(|c| decode(c.body_by_unique(T::KIND, key)?))
    }

    /// The revision of one document, if it exists.
    pub fn revision<T: Record>(&self, id: &str) -> Result<Option<i64>> {
        self.read(|c| c.revision(T::KIND, id))
    }

    /// Runs `f` in one write transaction. Everything it does commits
    /// together, with its change-log entries, or not at all. Writes are
    /// serialised (one at a time across every process on the database), so
    /// what `f` checks still holds when it commits, and `f` runs once.
    ///
    /// A write waits for the writer and then for the disk. Called from an
    /// async task, it first hands the runtime's worker over to the others
    /// ([`blocking`]), so requests that only read never queue behind
    /// writes.
    pub fn write<R, E>(&self, f: impl FnOnce(&Tx) -> std::result::Result<R, E>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        let called = std::time::Instant::now();
        // When the closure began, and whether it succeeded.
        let mut began: Option<(std::time::Instant, bool)> = None;
        let out = blocking(|| {
            let run = |c: &mut dyn Conn| {
                let start = std::time::Instant::now();
                let tx = Tx {
                    conn: std::cell::RefCell::new(c),
                };
                let r = f(&tx);
                began = Some((start, r.is_ok()));
                r
            };
            match &self.engine {
                Engine::Sqlite(e) => e.write(run),
                Engine::Postgres(e) => e.write(run),
            }
        });
        if let Some(o) = self.observer.get() {
            let (start, ran_ok) = began.unwrap_or((called, false));
            let outcome = match (out.is_ok(), began.is_some(), ran_ok) {
                (true, _, _) => WriteOutcome::Committed,
                (false, true, false) => WriteOutcome::RolledBack,
                _ => WriteOutcome::Failed,
            };
            o.write_done(&WriteStats {
                waited: start - called,
                ran: start.elapsed(),
                outcome,
            });
        }
        out
    }

    /// How many documents of `T` are in each [`Record::state`]: counted
    /// on the state index, no document read, so it stays cheap for a kind
    /// of 100,000 documents (the metrics count servers by status this
    /// way). Documents without a state are not counted.
    pub fn count_states<T: Record>(&self) -> Result<Vec<(String, u64)>> {
        self.backfill_states::<T>()?;
        self.read(|c| c.count_states(T::KIND))
    }

    /// Fills the `state` column of the rows of `T` written before it
    /// existed, once per kind and process (later writes fill it
    /// themselves). Not a change: no revision, no change-log entry.
    fn backfill_states<T: Record>(&self) -> Result<()> {
        let kinds = || self.stated.lock().unwrap_or_else(|p| p.into_inner());
        if kinds().contains(T::KIND) {
            return Ok(());
        }
        self.write(|tx| {
            let mut c = tx.conn.borrow_mut();
            for (id, body) in c.unstated(T::KIND)? {
                let rec: T = serde_json::from_str(&body)?;
                if let Some(state) = rec.state() {
                    c.set_state(T::KIND, &id, &state)?;
                }
            }
            Ok::<_, StoreError>(())
        })?;
        kinds().insert(T::KIND);
        Ok(())
    }

    /// Change-log entries after `seq`, oldest first, at most `limit`;
    /// [`StoreError::Compacted`] when entries after `seq` were compacted
    /// away.
    pub fn changes_since(&self, seq: i64, limit: usize) -> Result<Vec<Change>> {
        self.read(|c| {
            let oldest = compacted_through(c)?;
            if seq < oldest {
                return Err(StoreError::Compacted { since: seq, oldest });
            }
            c.changes_after(seq, limit)
        })
    }

    /// The newest change-log revision (0 for an empty store). It only
    /// grows, across restarts too.
    pub fn last_revision(&self) -> Result<i64> {
        self.read(|c| c.newest_change())
    }

    /// When each object of `kind` was last heard of (microseconds), from
    /// [`Tx::set_liveness`].
    pub fn liveness(&self, kind: &str) -> Result<HashMap<String, i64>> {
        self.read(|c| c.liveness(kind))
    }

    /// Removes the change-log entries up to revision `through` (never the
    /// newest one, so revisions keep growing from where they were).
    /// Returns how many went.
    pub fn compact(&self, through: i64) -> Result<u64> {
        self.write(|tx| {
            let mut c = tx.conn.borrow_mut();
            let upto = through.min(c.newest_change()? - 1);
            if upto <= compacted_through(&mut **c)? {
                return Ok(0);
            }
            let n = c.delete_changes_through(upto)?;
            c.meta_set(COMPACTED, &upto.to_string())?;
            Ok(n)
        })
    }

    /// Compacts the change log through the newest entry written before
    /// `before_ms` (milliseconds since the epoch): a retention by age.
    pub fn compact_older_than(&self, before_ms: i64) -> Result<u64> {
        match self.read(|c| c.newest_change_before(before_ms))? {
            Some(t) => self.compact(t),
            None => Ok(0),
        }
    }

    /// Every document of the given kinds (all kinds when empty) and the
    /// revision they are at, read in one transaction: what a reader whose
    /// position was compacted away starts again from.
    pub fn snapshot(&self, kinds: &[&str]) -> Result<Snapshot> {
        let read = |c: &mut dyn Conn| {
            let revision = c.newest_change()?;
            let documents = c
                .documents()?
                .into_iter()
                .filter(|d| kinds.is_empty() || kinds.contains(&d.kind.as_str()))
                .collect();
            Ok(Snapshot {
                revision,
                documents,
            })
        };
        match &self.engine {
            Engine::Sqlite(e) => e.read_consistent(read),
            Engine::Postgres(e) => blocking(|| e.read(true, read)),
        }
    }

    /// Reads a value from the key-value side table.
    pub fn meta_get(&self, key: &str) -> Result<Option<String>> {
        self.read(|c| c.meta_get(key))
    }
}

/// A write transaction; see [`Store::write`].
pub struct Tx<'c> {
    conn: std::cell::RefCell<&'c mut dyn Conn>,
}

impl Tx<'_> {
    pub fn get<T: Record>(&self, id: &str) -> Result<Option<T>> {
        decode(self.conn.borrow_mut().body(T::KIND, id)?)
    }

    pub fn fetch<T: Record>(&self, id: &str) -> Result<T> {
        self.get::<T>(id)?.ok_or_else(|| StoreError::NotFound {
            kind: T::KIND,
            id: id.to_string(),
        })
    }

    pub fn list<T: Record>(&self, q: &Query) -> Result<Vec<T>> {
        decode_all(self.conn.borrow_mut().bodies(T::KIND, q)?)
    }

    /// Inserts a new document; [`StoreError::Conflict`] if the id or the
    /// unique key is taken (and nothing is written). Returns the new
    /// revision.
    pub fn insert<T: Record>(&self, rec: &T) -> Result<i64> {
        let key = rec.unique_key();
        let state = rec.state();
        let mut c = self.conn.borrow_mut();
        let taken = c.revision(T::KIND, rec.id())?.is_some()
            || match &key {
                Some(k) => c.unique_holder(T::KIND, k)?.is_some(),
                None => false,
            };
        if taken {
            return Err(conflict(rec));
        }
        let body = serde_json::to_string(rec)?;
        let rev = c.append_change(T::KIND, rec.id(), "put", Some(&body), now_ms())?;
        c.insert(&row(rec, key.as_deref(), state.as_deref(), rev, &body))?;
        Ok(rev)
    }

    /// Replaces an existing document; [`StoreError::NotFound`] if absent,
    /// [`StoreError::Conflict`] if its unique key is another's.
    pub fn update<T: Record>(&self, rec: &T) -> Result<i64> {
        let key = rec.unique_key();
        let state = rec.state();
        let mut c = self.conn.borrow_mut();
        if c.revision(T::KIND, rec.id())?.is_none() {
            return Err(StoreError::NotFound {
                kind: T::KIND,
                id: rec.id().to_string(),
            });
        }
        if let Some(k) = &key
            && c.unique_holder(T::KIND, k)?
                .is_some_and(|holder| holder != rec.id())
        {
            return Err(conflict(rec));
        }
        let body = serde_json::to_string(rec)?;
        let rev = c.append_change(T::KIND, rec.id(), "put", Some(&body), now_ms())?;
        c.update(&row(rec, key.as_deref(), state.as_deref(), rev, &body))?;
        Ok(rev)
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
        Ok(self.conn.borrow_mut().revision(T::KIND, id)?.is_some())
    }

    /// The id of the document that holds `rec`'s unique key, if another
    /// document does (what an [`Tx::insert`] of `rec` would conflict with).
    pub fn unique_holder<T: Record>(&self, rec: &T) -> Result<Option<String>> {
        let Some(key) = rec.unique_key() else {
            return Ok(None);
        };
        Ok(self
            .conn
            .borrow_mut()
            .unique_holder(T::KIND, &key)?
            .filter(|holder| holder != rec.id()))
    }

    /// Deletes a document; returns whether it existed.
    pub fn delete<T: Record>(&self, id: &str) -> Result<bool> {
        let mut c = self.conn.borrow_mut();
        let existed = c.delete(T::KIND, id)?;
        if existed {
            c.append_change(T::KIND, id, "delete", None, now_ms())?;
            c.delete_liveness(T::KIND, id)?;
        }
        Ok(existed)
    }

    /// Records that `kind`/`id` was heard of at `at_us` (microseconds).
    /// Not a change: no revision, no change-log entry.
    pub fn set_liveness(&self, kind: &str, id: &str, at_us: i64) -> Result<()> {
        self.conn.borrow_mut().set_liveness(kind, id, at_us)
    }

    pub fn meta_set(&self, key: &str, value: &str) -> Result<()> {
        self.conn.borrow_mut().meta_set(key, value)
    }

    pub fn meta_get(&self, key: &str) -> Result<Option<String>> {
        self.conn.borrow_mut().meta_get(key)
    }

    /// Change-log entries after `seq`, as [`Store::changes_since`], read
    /// inside this transaction: with the writer held, nothing can be
    /// committed after them, so a follower that catches up here is exact
    /// until the commit.
    pub fn changes_since(&self, seq: i64, limit: usize) -> Result<Vec<Change>> {
        let mut c = self.conn.borrow_mut();
        let oldest = compacted_through(&mut **c)?;
        if seq < oldest {
            return Err(StoreError::Compacted { since: seq, oldest });
        }
        c.changes_after(seq, limit)
    }

    /// The newest change-log revision, this transaction's own writes
    /// included.
    pub fn last_revision(&self) -> Result<i64> {
        self.conn.borrow_mut().newest_change()
    }
}

fn row<'a, T: Record>(
    rec: &'a T,
    key: Option<&'a str>,
    state: Option<&'a str>,
    revision: i64,
    body: &'a str,
) -> Row<'a> {
    Row {
        kind: T::KIND,
        id: rec.id(),
        owner: rec.owner(),
        parent: rec.parent(),
        name: rec.name(),
        unique_key: key,
        created: rec.created().unwrap_or(0),
        state,
        revision,
        body,
    }
}

fn conflict<T: Record>(rec: &T) -> StoreError {
    StoreError::Conflict(format!(
        "{} {} conflicts with an existing one",
        T::KIND,
        rec.name().unwrap_or(rec.id())
    ))
}

fn decode<T: Record>(body: Option<String>) -> Result<Option<T>> {
    body.map(|b| serde_json::from_str(&b).map_err(Into::into))
        .transpose()
}

fn decode_all<T: Record>(bodies: Vec<String>) -> Result<Vec<T>> {
    bodies
        .iter()
        .map(|b| serde_json::from_str(b).map_err(Into::into))
        .collect()
}

/// The revision the change log is compacted through (0: never).
fn compacted_through(c: &mut dyn Conn) -> Result<i64> {
    Ok(c.meta_get(COMPACTED)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
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

    /// Runs `test` on a fresh SQLite store and, when
    /// `STRATUS_TEST_DATABASE` names a PostgreSQL database, on a fresh
    /// schema there too: one suite for both engines.
    fn each_engine(test: impl Fn(Store)) {
        test(Store::open_in_memory().unwrap());
        if let Some(url) = test_database() {
            test(Store::open_url(&fresh_schema(&url)).unwrap());
        }
    }

    fn test_database() -> Option<String> {
        std::env::var("STRATUS_TEST_DATABASE")
            .ok()
            .filter(|u| !u.is_empty())
    }

    /// A new schema in the test database; the URL that uses it.
    fn fresh_schema(url: &str) -> String {
        let schema = format!("t_{}_{}", std::process::id(), next_tmp());
        let mut c = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
        c.batch_execute(&format!("CREATE SCHEMA {schema}")).unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options=-c%20search_path%3D{schema}")
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
        each_engine(|s| {
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
            // A key no document can have finds nothing, on every engine.
            assert!(s.get::<Thing>("a\0b").unwrap().is_none());
            assert!(s.list::<Thing>(&Query::owner("\0")).unwrap().is_empty());
            assert!(!s.write(|tx| tx.delete::<Thing>("\0")).unwrap());
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
        });
    }

    #[test]
    fn lists_only_what_changed_after_a_revision() {
        each_engine(|s| {
            s.write(|tx| {
                tx.insert(&thing("a", "d1", "x"))?;
                tx.insert(&thing("b", "d1", "y"))?;
                tx.insert(&thing("c", "d2", "z"))?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
            let seen = s.last_revision().unwrap();
            let ids = |q: &Query| -> Vec<String> {
                s.list::<Thing>(q)
                    .unwrap()
                    .into_iter()
                    .map(|t| t.id)
                    .collect()
            };
            assert!(ids(&Query::owner("d1").changed_after(seen)).is_empty());
            let mut b = s.fetch::<Thing>("b").unwrap();
            b.name = "w".into();
            s.write(|tx| tx.update(&b)).unwrap();
            s.write(|tx| tx.insert(&thing("d", "d1", "v"))).unwrap();
            s.write(|tx| tx.update(&thing("c", "d2", "u"))).unwrap();
            // Within the owner, after the revision: the update and the
            // insert, not the untouched document nor the other owner's.
            assert_eq!(ids(&Query::owner("d1").changed_after(seen)), ["b", "d"]);
            assert_eq!(ids(&Query::all().changed_after(seen)), ["b", "c", "d"]);
            let now = s.last_revision().unwrap();
            assert!(ids(&Query::all().changed_after(now)).is_empty());
            assert_eq!(ids(&Query::owner("d1")), ["a", "b", "d"]);
        });
    }

    #[test]
    fn unique_key_and_id_conflicts() {
        each_engine(|s| {
            s.write(|tx| tx.insert(&thing("a", "d1", "x"))).unwrap();
            let dup_name = s.write(|tx| tx.insert(&thing("b", "d1", "x")));
            assert!(matches!(dup_name, Err(StoreError::Conflict(_))));
            let dup_id = s.write(|tx| tx.insert(&thing("a", "d9", "q")));
            assert!(matches!(dup_id, Err(StoreError::Conflict(_))));
            // Same name in another owner is fine.
            s.write(|tx| tx.insert(&thing("b", "d2", "x"))).unwrap();
        });
    }

    /// A thing with a state, as a server has.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Lamp {
        id: String,
        on: bool,
    }

    impl Record for Lamp {
        const KIND: &'static str = "lamp";
        fn id(&self) -> &str {
            &self.id
        }
        fn state(&self) -> Option<String> {
            Some(if self.on { "on" } else { "off" }.to_string())
        }
    }

    fn lamp(id: &str, on: bool) -> Lamp {
        Lamp { id: id.into(), on }
    }

    #[test]
    fn count_states_follows_writes() {
        each_engine(|s| {
            s.write(|tx| {
                tx.insert(&lamp("a", true))?;
                tx.insert(&lamp("b", true))?;
                tx.insert(&lamp("c", false))?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
            let sorted = |mut v: Vec<(String, u64)>| {
                v.sort();
                v
            };
            assert_eq!(
                sorted(s.count_states::<Lamp>().unwrap()),
                [("off".to_string(), 1), ("on".to_string(), 2)]
            );
            s.write(|tx| tx.update(&lamp("a", false))).unwrap();
            s.write(|tx| tx.delete::<Lamp>("b")).unwrap();
            assert_eq!(
                sorted(s.count_states::<Lamp>().unwrap()),
                [("off".to_string(), 2)]
            );
            // Kinds without a state count nothing.
            s.write(|tx| tx.insert(&thing("t", "d1", "x"))).unwrap();
            assert!(s.count_states::<Thing>().unwrap().is_empty());
        });
    }

    #[test]
    fn rows_from_before_the_state_column_are_backfilled() {
        let s = Store::open_in_memory().unwrap();
        let path = s.path().unwrap().to_path_buf();
        s.write(|tx| {
            tx.insert(&lamp("a", true))?;
            tx.insert(&lamp("b", false))
        })
        .unwrap();
        drop(s);
        // As a store written before migration 4 left them.
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute("UPDATE resources SET state = NULL", [])
            .unwrap();
        drop(raw);
        let s = Store::open(&path, Durability::Normal).unwrap();
        let mut counts = s.count_states::<Lamp>().unwrap();
        counts.sort();
        assert_eq!(counts, [("off".to_string(), 1), ("on".to_string(), 1)]);
    }

    #[test]
    fn the_observer_hears_every_write_and_how_it_ended() {
        #[derive(Default)]
        struct Tally(std::sync::Mutex<Vec<WriteOutcome>>);
        impl Observer for Tally {
            fn write_done(&self, w: &WriteStats) {
                self.0.lock().unwrap().push(w.outcome);
            }
        }
        each_engine(|s| {
            let tally = std::sync::Arc::new(Tally::default());
            assert!(s.observe(tally.clone()));
            assert!(!s.observe(tally.clone()));
            s.write(|tx| tx.insert(&thing("a", "d1", "x"))).unwrap();
            assert!(s.write(|tx| tx.insert(&thing("b", "d1", "x"))).is_err());
            assert_eq!(
                *tally.0.lock().unwrap(),
                [WriteOutcome::Committed, WriteOutcome::RolledBack]
            );
        });
    }

    #[test]
    fn failed_transaction_leaves_nothing_behind() {
        each_engine(|s| {
            let before = s.changes_since(0, 100).unwrap().len();
            let r = s.write(|tx| {
                tx.insert(&thing("a", "d1", "x"))?;
                tx.insert(&thing("b", "d1", "x")) // conflicts: whole txn rolls back
            });
            assert!(r.is_err());
            assert!(s.get::<Thing>("a").unwrap().is_none());
            assert_eq!(s.changes_since(0, 100).unwrap().len(), before);
        });
    }

    #[test]
    fn revisions_follow_the_change_log() {
        each_engine(|s| {
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
        });
    }

    #[test]
    fn concurrent_durable_writes_share_flushes_and_all_land() {
        let s = Store::open_in_memory().unwrap();
        let path = s.path().unwrap().to_path_buf();
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
        let Engine::Sqlite(e) = &s.engine else {
            unreachable!()
        };
        assert_eq!(
            e.durable_commits(),
            (320, false),
            "every commit is covered by a flush"
        );
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
        each_engine(|s| {
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
        });
    }

    #[test]
    fn compaction_sends_old_readers_to_a_snapshot() {
        each_engine(|s| {
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
        });
    }

    /// A kind with a creation time, for the keyset order.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Event {
        id: String,
        owner: String,
        name: String,
        at: i64,
    }

    impl Record for Event {
        const KIND: &'static str = "event";
        fn id(&self) -> &str {
            &self.id
        }
        fn owner(&self) -> Option<&str> {
            Some(&self.owner)
        }
        fn name(&self) -> Option<&str> {
            Some(&self.name)
        }
        fn created(&self) -> Option<i64> {
            Some(self.at)
        }
    }

    /// Twelve events over two owners, written out of order, with equal
    /// creation times that the id must break.
    fn events() -> Vec<Event> {
        (0..12)
            .map(|i| Event {
                id: format!("e{:02}", (i * 7) % 12),
                owner: if i % 3 == 0 { "p2" } else { "p1" }.into(),
                name: if i % 2 == 0 { "even" } else { "odd" }.into(),
                at: 1000 + (i / 2) * 10 - (i % 4),
            })
            .collect()
    }

    /// What `list_newest` must return: created descending, then id
    /// descending.
    fn newest_first(mut v: Vec<Event>, keep: impl Fn(&Event) -> bool) -> Vec<String> {
        v.retain(|e| keep(e));
        v.sort_by(|a, b| b.at.cmp(&a.at).then(b.id.cmp(&a.id)));
        v.into_iter().map(|e| e.id).collect()
    }

    /// Every page of `size` in turn, each starting after the last one.
    fn walk(s: &Store, q: &Query, size: usize) -> Vec<String> {
        let mut out: Vec<Event> = Vec::new();
        loop {
            let after = out.last().map(After::record);
            let page = s.list_newest::<Event>(q, after, size).unwrap();
            assert!(page.len() <= size);
            let n = page.len();
            out.extend(page);
            if n < size {
                return out.into_iter().map(|e| e.id).collect();
            }
        }
    }

    #[test]
    fn keyset_pages_newest_first_with_filters() {
        each_engine(|s| {
            let all = events();
            s.write(|tx| {
                for e in &all {
                    tx.insert(e)?;
                }
                // Another kind is never in the way.
                tx.insert(&thing("e99", "p1", "even"))?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
            // An update keeps the document's place.
            let mut moved = all[3].clone();
            moved.name = "renamed".into();
            s.write(|tx| tx.update(&moved)).unwrap();
            let mut all = all;
            all[3] = moved;

            let every = newest_first(all.clone(), |_| true);
            assert_eq!(walk(&s, &Query::all(), 100), every);
            for size in [1, 3, 5] {
                assert_eq!(walk(&s, &Query::all(), size), every, "pages of {size}");
            }
            let p1 = newest_first(all.clone(), |e| e.owner == "p1");
            assert_eq!(walk(&s, &Query::owner("p1"), 3), p1);
            let even = newest_first(all.clone(), |e| e.name == "even");
            assert_eq!(walk(&s, &Query::name("even"), 2), even);
            let both = Query {
                owner: Some("p2"),
                name: Some("odd"),
                ..Query::default()
            };
            let p2_odd = newest_first(all.clone(), |e| e.owner == "p2" && e.name == "odd");
            assert_eq!(walk(&s, &both, 1), p2_odd);
            // A position that is no document's still starts after it.
            let mid = After {
                created: 1020,
                id: "e05",
            };
            let from_mid = s
                .list_newest::<Event>(&Query::all(), Some(mid), 100)
                .unwrap();
            let expect: Vec<String> =
                newest_first(all.clone(), |e| (e.at, e.id.as_str()) < (1020, "e05"));
            assert_eq!(
                from_mid.into_iter().map(|e| e.id).collect::<Vec<_>>(),
                expect
            );
            assert!(
                s.list_newest::<Event>(&Query::owner("\0"), None, 10)
                    .unwrap()
                    .is_empty()
            );
            assert!(
                s.list_newest::<Event>(&Query::all(), None, 0)
                    .unwrap()
                    .is_empty()
            );
        });
    }

    #[test]
    fn rows_from_before_the_created_column_are_backfilled() {
        let s = Store::open_in_memory().unwrap();
        let path = s.path().unwrap().to_path_buf();
        let all = events();
        s.write(|tx| {
            for e in &all {
                tx.insert(e)?;
            }
            Ok::<_, StoreError>(())
        })
        .unwrap();
        drop(s);
        // As a store written before migration 3 left them.
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute("UPDATE resources SET created = NULL", [])
            .unwrap();
        drop(raw);
        let s = Store::open(&path, Durability::Normal).unwrap();
        assert_eq!(walk(&s, &Query::all(), 4), newest_first(all, |_| true));
    }

    #[test]
    fn reopening_keeps_data_and_schema() {
        let s = Store::open_in_memory().unwrap();
        let path = s.path().unwrap().to_path_buf();
        s.write(|tx| tx.insert(&thing("a", "d1", "x"))).unwrap();
        drop(s);
        let s = Store::open(&path, Durability::Full).unwrap();
        assert_eq!(s.fetch::<Thing>("a").unwrap().name, "x");
    }
}
