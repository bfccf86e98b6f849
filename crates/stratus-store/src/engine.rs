//! The engine interface below the document layer: rows of `(kind, id,
//! lifted columns, revision, body)`, the change log, the liveness and meta
//! side tables. Each engine (SQLite, PostgreSQL) implements [`Conn`] over
//! one connection inside one transaction; the document layer in `lib.rs`
//! decides everything else (revisions, conflicts, serialisation), so both
//! engines behave the same.

use std::collections::HashMap;

use crate::{Change, Document, Query, Result, StoreError};

/// The schema, in order, for every engine: `{serial}` is the change log's
/// auto-incrementing key, `{int}` a 64-bit integer and `{bytes}` the
/// collation that orders text by bytes, in the engine's dialect. Embedded;
/// each engine records the versions it applied.
pub(crate) fn migrations(serial: &str, int: &str, bytes: &str) -> Vec<(i64, String)> {
    [
        (
            1,
            "CREATE TABLE changes (
                seq {serial},
                kind TEXT NOT NULL,
                id TEXT NOT NULL,
                op TEXT NOT NULL,
                body TEXT,
                at_ms {int} NOT NULL
             );
             CREATE TABLE resources (
                kind TEXT NOT NULL,
                id TEXT NOT NULL,
                owner TEXT,
                parent TEXT,
                name TEXT,
                unique_key TEXT,
                revision {int} NOT NULL,
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
                at_us {int} NOT NULL,
                PRIMARY KEY (kind, id)
             );
             CREATE INDEX changes_at ON changes (at_ms);",
        ),
        (
            // The lifted creation time ([`crate::Record::created`]) and the
            // keyset order on it: newest first, then id, per kind and per
            // owner. Rows written before this migration have none until
            // the document layer backfills them (`Store::list_newest`).
            // `(kind, owner, created, id)` also serves what
            // `resources_owner` served.
            3,
            "ALTER TABLE resources ADD COLUMN created {int};
             CREATE INDEX resources_created ON resources (kind, created, id{bytes});
             CREATE INDEX resources_owner_created
                 ON resources (kind, owner, created, id{bytes});
             DROP INDEX resources_owner;",
        ),
        (
            // The lifted state ([`crate::Record::state`]), counted per kind
            // without reading a document (`Store::count_states`: servers
            // by status for the metrics). Only kinds with a state are
            // indexed. Rows written before this migration have none until
            // the document layer backfills them.
            4,
            "ALTER TABLE resources ADD COLUMN state TEXT;
             CREATE INDEX resources_state ON resources (kind, state)
                 WHERE state IS NOT NULL;",
        ),
        (
            // What changed under a parent since a revision (a node's
            // servers written since its agent last asked) reads only the
            // changed rows. It serves everything `resources_parent` did.
            5,
            "CREATE INDEX resources_parent_revision ON resources (kind, parent, revision);
             DROP INDEX resources_parent;",
        ),
    ]
    .into_iter()
    .map(|(v, sql)| {
        let sql = sql
            .replace("{serial}", serial)
            .replace("{int}", int)
            .replace("{bytes}", bytes);
        (v, sql)
    })
    .collect()
}

/// One resource row as the document layer writes it.
pub(crate) struct Row<'a> {
    pub kind: &'a str,
    pub id: &'a str,
    pub owner: Option<&'a str>,
    pub parent: Option<&'a str>,
    pub name: Option<&'a str>,
    pub unique_key: Option<&'a str>,
    /// The keyset sort column ([`crate::Record::created`], 0 when none).
    pub created: i64,
    /// The lifted state ([`crate::Record::state`]).
    pub state: Option<&'a str>,
    pub revision: i64,
    pub body: &'a str,
}

/// What a connection of an engine can do, in the transaction it is in.
/// Writes are only called inside a write transaction, where the engine
/// guarantees that no other writer runs (SQLite's one writer, a database
/// lock on PostgreSQL), so a check followed by a write is exact.
pub(crate) trait Conn {
    fn body(&mut self, kind: &str, id: &str) -> Result<Option<String>>;
    /// Bodies of `kind` matching the filters, in id order.
    fn bodies(&mut self, kind: &str, q: &Query) -> Result<Vec<String>>;
    /// At most `limit` bodies of `kind` matching the filters, newest
    /// first (`created` descending, then id descending, ids by bytes),
    /// starting after the position `after` (`(created, id)`) when given.
    /// Walks an index, so a page costs about `limit` rows.
    fn page(
        &mut self,
        kind: &str,
        q: &Query,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<String>>;
    /// Ids and bodies of the rows of `kind` whose `created` column is not
    /// filled yet (written before it existed).
    fn unsorted(&mut self, kind: &str) -> Result<Vec<(String, String)>>;
    /// Fills one row's `created` column; not a change of the document.
    fn set_created(&mut self, kind: &str, id: &str, created: i64) -> Result<()>;
    fn body_by_unique(&mut self, kind: &str, key: &str) -> Result<Option<String>>;
    /// The id holding a unique key, if any.
    fn unique_holder(&mut self, kind: &str, key: &str) -> Result<Option<String>>;
    fn revision(&mut self, kind: &str, id: &str) -> Result<Option<i64>>;
    /// Appends to the change log; the entry's sequence number.
    fn append_change(
        &mut self,
        kind: &str,
        id: &str,
        op: &str,
        body: Option<&str>,
        at_ms: i64,
    ) -> Result<i64>;
    fn insert(&mut self, row: &Row) -> Result<()>;
    fn update(&mut self, row: &Row) -> Result<()>;
    /// Whether a row was there.
    fn delete(&mut self, kind: &str, id: &str) -> Result<bool>;
    fn meta_get(&mut self, key: &str) -> Result<Option<String>>;
    fn meta_set(&mut self, key: &str, value: &str) -> Result<()>;
    /// Keeps the newer of the stored time and `at_us`.
    fn set_liveness(&mut self, kind: &str, id: &str, at_us: i64) -> Result<()>;
    fn liveness(&mut self, kind: &str) -> Result<HashMap<String, i64>>;
    fn delete_liveness(&mut self, kind: &str, id: &str) -> Result<()>;
    /// The newest change-log sequence number (0 when empty).
    fn newest_change(&mut self) -> Result<i64>;
    fn changes_after(&mut self, seq: i64, limit: usize) -> Result<Vec<Change>>;
    /// The newest entry written before `at_ms`.
    fn newest_change_before(&mut self, at_ms: i64) -> Result<Option<i64>>;
    fn delete_changes_through(&mut self, seq: i64) -> Result<u64>;
    /// Every resource row, ordered by kind and id.
    fn documents(&mut self) -> Result<Vec<Document>>;
    /// How many rows of `kind` hold each state (rows without one are not
    /// counted). Walks the state index only.
    fn count_states(&mut self, kind: &str) -> Result<Vec<(String, u64)>>;
    /// Ids and bodies of the rows of `kind` whose `state` column is not
    /// filled (written before it existed, or of a kind without states).
    fn unstated(&mut self, kind: &str) -> Result<Vec<(String, String)>>;
    /// Fills one row's `state` column; not a change of the document.
    fn set_state(&mut self, kind: &str, id: &str, state: &str) -> Result<()>;
}

/// Maps an engine's own error into [`StoreError::Db`], so no engine type
/// leaves the crate.
pub(crate) trait OrDb<T> {
    fn db(self) -> Result<T>;
}

impl<T> OrDb<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T> {
        self.map_err(|e| StoreError::Db(e.to_string()))
    }
}

impl<T> OrDb<T> for Result<T> {
    fn db(self) -> Result<T> {
        self
    }
}

impl<T> OrDb<T> for std::result::Result<T, postgres::Error> {
    fn db(self) -> Result<T> {
        self.map_err(|e| {
            if e.is_closed() || e.as_db_error().is_none() && e.code().is_none() {
                StoreError::Unavailable(e.to_string())
            } else {
                StoreError::Db(e.to_string())
            }
        })
    }
}
