//! The scale engine: PostgreSQL, shared by several controller processes.
//!
//! Same tables as SQLite (`BIGSERIAL` for the change log). Every write
//! transaction first takes one transaction-scoped advisory lock, so writes
//! are serialised across all processes on the database exactly as SQLite's
//! one writer serialises them in one: a check followed by a write inside a
//! transaction (quota, placement capacity and generations, unique names)
//! holds across processes, and no transaction ever fails on a
//! serialisation conflict, so a write's closure runs exactly once. Reads
//! run on pooled connections without the lock and never wait for writers.
//! PostgreSQL's own `synchronous_commit` makes each commit durable.

use std::collections::HashMap;
use std::sync::Mutex;

use std::sync::Condvar;

use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Statement};

use crate::engine::{Conn, OrDb, Row, migrations};
use crate::{Change, Document, Query, Result, StoreError};

/// The advisory lock every write transaction takes (any fixed number;
/// "stratus" in ASCII).
const WRITE_LOCK: i64 = 0x0073_7472_6174_7573;

/// The change log's key and the integer type, in this dialect.
const SERIAL: &str = "BIGSERIAL PRIMARY KEY";
const INT: &str = "BIGINT";
/// Byte order for ids, as SQLite (and Rust) compare them.
const BYTES: &str = " COLLATE \"C\"";

/// Connections one process keeps open at most; callers beyond that wait
/// for one to come back rather than open (and close) more.
const MAX_CONNECTIONS: usize = 24;

pub(crate) struct Postgres {
    config: postgres::Config,
    /// Where it is, for messages (the URL without its password).
    pub display: String,
    pool: Mutex<Pool>,
    returned: Condvar,
    /// Writers of this process queue here, not on the database lock, so
    /// they hold no connection that readers could use while they wait.
    writer: Mutex<()>,
}

#[derive(Default)]
struct Pool {
    idle: Vec<PgClient>,
    /// Connections open now, idle or lent out.
    open: usize,
}

impl Postgres {
    /// Connects to `url` (`postgres://user:password@host:port/db`, or with
    /// `?host=/run/postgresql` for a socket) and applies migrations once,
    /// whichever process gets there first.
    pub fn open(url: &str) -> Result<Self> {
        let config: postgres::Config =
            url.parse().map_err(|e: postgres::Error| StoreError::Open {
                what: redact(url),
                message: e.to_string(),
            })?;
        let pg = Postgres {
            config,
            display: redact(url),
            pool: Mutex::new(Pool::default()),
            returned: Condvar::new(),
            writer: Mutex::new(()),
        };
        let mut client = pg.take().map_err(|e| StoreError::Open {
            what: pg.display.clone(),
            message: e.to_string(),
        })?;
        let out = migrate(&mut client.client);
        pg.give_back(client);
        out.map(|()| pg)
    }

    fn connect(&self) -> Result<Client> {
        self.config
            .connect(NoTls)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", self.display)))
    }

    /// A connection from the pool, a new one while fewer than
    /// [`MAX_CONNECTIONS`] are open, or the next one given back.
    fn take(&self) -> Result<PgClient> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(c) = pool.idle.pop() {
                if c.client.is_closed() {
                    // The server closed it (a restart): forget it.
                    pool.open -= 1;
                    continue;
                }
                return Ok(c);
            }
            if pool.open < MAX_CONNECTIONS {
                pool.open += 1;
                drop(pool);
                let c = self.connect().map(|client| PgClient {
                    client,
                    prepared: HashMap::new(),
                });
                if c.is_err() {
                    let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                    pool.open -= 1;
                    self.returned.notify_one();
                }
                return c;
            }
            pool = self.returned.wait(pool).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn give_back(&self, client: PgClient) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if client.client.is_closed() {
            pool.open -= 1;
        } else {
            pool.idle.push(client);
        }
        self.returned.notify_one();
    }

    /// Runs `f` on a pooled connection: each statement on its own
    /// (autocommit), or all in one read-only snapshot when `consistent`.
    pub fn read<R>(
        &self,
        consistent: bool,
        f: impl FnOnce(&mut dyn Conn) -> Result<R>,
    ) -> Result<R> {
        let mut pc = self.take()?;
        let PgClient { client, prepared } = &mut pc;
        let out = if consistent {
            (|| {
                let mut t = client
                    .build_transaction()
                    .read_only(true)
                    .isolation_level(postgres::IsolationLevel::RepeatableRead)
                    .start()
                    .db()?;
                let out = f(&mut PgConn {
                    c: &mut t,
                    prepared,
                })?;
                t.commit().db()?;
                Ok(out)
            })()
        } else {
            f(&mut PgConn {
                c: client,
                prepared,
            })
        };
        let client = pc;
        self.give_back(client);
        out
    }

    /// Runs `f` in one write transaction, serialised with every other
    /// writer on the database by the advisory lock.
    pub fn write<R, E>(
        &self,
        f: impl FnOnce(&mut dyn Conn) -> std::result::Result<R, E>,
    ) -> std::result::Result<R, E>
    where
        E: From<StoreError>,
    {
        let _one = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut pc = self.take()?;
        let PgClient { client, prepared } = &mut pc;
        let out = (|| {
            let mut t = client.transaction().db()?;
            let mut conn = PgConn {
                c: &mut t,
                prepared,
            };
            conn.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
            let out = f(&mut conn)?;
            t.commit().db()?;
            Ok(out)
        })();
        let client = pc;
        self.give_back(client);
        out
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Closing a client blocks on its runtime: never on a worker.
        let idle = std::mem::take(&mut self.pool.lock().unwrap_or_else(|p| p.into_inner()).idle);
        crate::blocking(move || drop(idle));
    }
}

/// The URL without a password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..s + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn migrate(client: &mut Client) -> Result<()> {
    let mut t = client.transaction().db()?;
    // One process migrates; the others wait here and find it done.
    t.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .db()?;
    t.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)")
        .db()?;
    let current: i64 = t
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
            &[],
        )
        .db()?
        .get(0);
    for (version, sql) in migrations(SERIAL, INT, BYTES)
        .iter()
        .filter(|(v, _)| *v > current)
    {
        t.batch_execute(sql).db()?;
        t.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .db()?;
    }
    t.commit().db()
}

/// PostgreSQL text cannot hold NUL: a lookup by such a key finds
/// nothing (nothing stored can have one), where SQLite simply finds no row.
fn nul(s: &str) -> bool {
    s.contains('\0')
}

/// A pooled connection and the statements prepared on it (one round trip
/// per statement instead of two).
struct PgClient {
    client: Client,
    prepared: HashMap<String, Statement>,
}

type Params<'p> = [&'p (dyn ToSql + Sync)];

/// [`Conn`] over one PostgreSQL connection or transaction.
struct PgConn<'a, C: GenericClient> {
    c: &'a mut C,
    prepared: &'a mut HashMap<String, Statement>,
}

impl<C: GenericClient> PgConn<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(st) = self.prepared.get(sql) {
            return Ok(st.clone());
        }
        let st = self.c.prepare(sql).db()?;
        self.prepared.insert(sql.to_string(), st.clone());
        Ok(st)
    }

    fn query(&mut self, sql: &str, params: &Params) -> Result<Vec<postgres::Row>> {
        let st = self.statement(sql)?;
        self.c.query(&st, params).db()
    }

    fn query_one(&mut self, sql: &str, params: &Params) -> Result<postgres::Row> {
        let st = self.statement(sql)?;
        self.c.query_one(&st, params).db()
    }

    fn query_opt(&mut self, sql: &str, params: &Params) -> Result<Option<postgres::Row>> {
        let st = self.statement(sql)?;
        self.c.query_opt(&st, params).db()
    }

    /// The first column of the one row `sql` finds, if any.
    fn one<T: for<'r> postgres::types::FromSql<'r>>(
        &mut self,
        sql: &str,
        params: &Params,
    ) -> Result<Option<T>> {
        Ok(self.query_opt(sql, params)?.map(|r| r.get(0)))
    }

    fn execute(&mut self, sql: &str, params: &Params) -> Result<u64> {
        let st = self.statement(sql)?;
        self.c.execute(&st, params).db()
    }
}

impl<C: GenericClient> Conn for PgConn<'_, C> {
    fn body(&mut self, kind: &str, id: &str) -> Result<Option<String>> {
        if nul(id) {
            return Ok(None);
        }
        self.one(
            "SELECT body FROM resources WHERE kind = $1 AND id = $2",
            &[&kind, &id],
        )
    }

    fn bodies(&mut self, kind: &str, q: &Query) -> Result<Vec<String>> {
        if [q.owner, q.parent, q.name].into_iter().flatten().any(nul) {
            return Ok(Vec::new());
        }
        let mut sql = String::from("SELECT body FROM resources WHERE kind = $1");
        let mut args: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&kind];
        let filters = [
            ("owner", &q.owner),
            ("parent", &q.parent),
            ("name", &q.name),
        ];
        for (col, val) in &filters {
            if let Some(v) = val {
                args.push(v);
                sql.push_str(&format!(" AND {col} = ${}", args.len()));
            }
        }
        if let Some(rev) = &q.after {
            args.push(rev);
            sql.push_str(&format!(" AND revision > ${}", args.len()));
        }
        // Byte order, as SQLite sorts ids.
        sql.push_str(" ORDER BY id COLLATE \"C\"");
        Ok(self
            .query(&sql, &args)
            .db()?
            .into_iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn page(
        &mut self,
        kind: &str,
        q: &Query,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let filters = [q.owner, q.parent, q.name];
        if filters
            .into_iter()
            .flatten()
            .chain(after.map(|a| a.1))
            .any(nul)
        {
            return Ok(Vec::new());
        }
        let after = after.map(|(c, id)| (c, id.to_string()));
        let limit = limit.min(i64::MAX as usize) as i64;
        let mut sql = String::from("SELECT body FROM resources WHERE kind = $1");
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&kind];
        let filters = [
            ("owner", &q.owner),
            ("parent", &q.parent),
            ("name", &q.name),
        ];
        for (col, val) in &filters {
            if let Some(v) = val {
                args.push(v);
                sql.push_str(&format!(" AND {col} = ${}", args.len()));
            }
        }
        if let Some((created, id)) = &after {
            args.push(created);
            args.push(id);
            // A row comparison in the index's own collation: PostgreSQL
            // walks `resources_owner_created` backwards from the position.
            sql.push_str(&format!(
                " AND (created, id COLLATE \"C\") < (${}, ${})",
                args.len() - 1,
                args.len()
            ));
        }
        args.push(&limit);
        sql.push_str(&format!(
            " ORDER BY created DESC, id COLLATE \"C\" DESC LIMIT ${}",
            args.len()
        ));
        Ok(self
            .query(&sql, &args)?
            .into_iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn unsorted(&mut self, kind: &str) -> Result<Vec<(String, String)>> {
        Ok(self
            .query(
                "SELECT id, body FROM resources WHERE kind = $1 AND created IS NULL",
                &[&kind],
            )?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn set_created(&mut self, kind: &str, id: &str, created: i64) -> Result<()> {
        self.execute(
            "UPDATE resources SET created = $3 WHERE kind = $1 AND id = $2",
            &[&kind, &id, &created],
        )?;
        Ok(())
    }

    fn body_by_unique(&mut self, kind: &str, key: &str) -> Result<Option<String>> {
        if nul(key) {
            return Ok(None);
        }
        self.one(
            "SELECT body FROM resources WHERE kind = $1 AND unique_key = $2",
            &[&kind, &key],
        )
    }

    fn unique_holder(&mut self, kind: &str, key: &str) -> Result<Option<String>> {
        if nul(key) {
            return Ok(None);
        }
        self.one(
            "SELECT id FROM resources WHERE kind = $1 AND unique_key = $2",
            &[&kind, &key],
        )
    }

    fn revision(&mut self, kind: &str, id: &str) -> Result<Option<i64>> {
        if nul(id) {
            return Ok(None);
        }
        self.one(
            "SELECT revision FROM resources WHERE kind = $1 AND id = $2",
            &[&kind, &id],
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
        Ok(self
            .query_one(
                "INSERT INTO changes (kind, id, op, body, at_ms) VALUES ($1, $2, $3, $4, $5)
                 RETURNING seq",
                &[&kind, &id, &op, &body, &at_ms],
            )
            .db()?
            .get(0))
    }

    fn insert(&mut self, row: &Row) -> Result<()> {
        self.execute(
            "INSERT INTO resources
                 (kind, id, owner, parent, name, unique_key, revision, body, created, state)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &row.kind,
                &row.id,
                &row.owner,
                &row.parent,
                &row.name,
                &row.unique_key,
                &row.revision,
                &row.body,
                &row.created,
                &row.state,
            ],
        )
        .db()?;
        Ok(())
    }

    fn update(&mut self, row: &Row) -> Result<()> {
        self.execute(
            "UPDATE resources SET owner = $3, parent = $4, name = $5, unique_key = $6,
                 revision = $7, body = $8, created = $9, state = $10
                 WHERE kind = $1 AND id = $2",
            &[
                &row.kind,
                &row.id,
                &row.owner,
                &row.parent,
                &row.name,
                &row.unique_key,
                &row.revision,
                &row.body,
                &row.created,
                &row.state,
            ],
        )
        .db()?;
        Ok(())
    }

    fn delete(&mut self, kind: &str, id: &str) -> Result<bool> {
        if nul(id) {
            return Ok(false);
        }
        let n = self
            .execute(
                "DELETE FROM resources WHERE kind = $1 AND id = $2",
                &[&kind, &id],
            )
            .db()?;
        Ok(n > 0)
    }

    fn meta_get(&mut self, key: &str) -> Result<Option<String>> {
        if nul(key) {
            return Ok(None);
        }
        self.one("SELECT value FROM meta WHERE key = $1", &[&key])
    }

    fn meta_set(&mut self, key: &str, value: &str) -> Result<()> {
        self.execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )
        .db()?;
        Ok(())
    }

    fn set_liveness(&mut self, kind: &str, id: &str, at_us: i64) -> Result<()> {
        self.execute(
            "INSERT INTO liveness (kind, id, at_us) VALUES ($1, $2, $3)
                 ON CONFLICT (kind, id) DO UPDATE
                 SET at_us = GREATEST(liveness.at_us, excluded.at_us)",
            &[&kind, &id, &at_us],
        )
        .db()?;
        Ok(())
    }

    fn liveness(&mut self, kind: &str) -> Result<HashMap<String, i64>> {
        Ok(self
            .query("SELECT id, at_us FROM liveness WHERE kind = $1", &[&kind])
            .db()?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn delete_liveness(&mut self, kind: &str, id: &str) -> Result<()> {
        self.execute(
            "DELETE FROM liveness WHERE kind = $1 AND id = $2",
            &[&kind, &id],
        )
        .db()?;
        Ok(())
    }

    fn newest_change(&mut self) -> Result<i64> {
        Ok(self
            .query_one("SELECT COALESCE(MAX(seq), 0)::BIGINT FROM changes", &[])
            .db()?
            .get(0))
    }

    fn changes_after(&mut self, seq: i64, limit: usize) -> Result<Vec<Change>> {
        Ok(self
            .query(
                "SELECT seq, kind, id, op, body FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&seq, &(limit as i64)],
            )
            .db()?
            .into_iter()
            .map(|r| Change {
                seq: r.get(0),
                kind: r.get(1),
                id: r.get(2),
                op: r.get(3),
                body: r.get(4),
            })
            .collect())
    }

    fn newest_change_before(&mut self, at_ms: i64) -> Result<Option<i64>> {
        Ok(self
            .query_one("SELECT MAX(seq) FROM changes WHERE at_ms < $1", &[&at_ms])
            .db()?
            .get(0))
    }

    fn delete_changes_through(&mut self, seq: i64) -> Result<u64> {
        self.execute("DELETE FROM changes WHERE seq <= $1", &[&seq])
            .db()
    }

    fn count_states(&mut self, kind: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .query(
                "SELECT state, COUNT(*)::BIGINT FROM resources
                 WHERE kind = $1 AND state IS NOT NULL GROUP BY state",
                &[&kind],
            )?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    fn unstated(&mut self, kind: &str) -> Result<Vec<(String, String)>> {
        Ok(self
            .query(
                "SELECT id, body FROM resources WHERE kind = $1 AND state IS NULL",
                &[&kind],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn set_state(&mut self, kind: &str, id: &str, state: &str) -> Result<()> {
        self.execute(
            "UPDATE resources SET state = $3 WHERE kind = $1 AND id = $2",
            &[&kind, &id, &state],
        )?;
        Ok(())
    }

    fn documents(&mut self) -> Result<Vec<Document>> {
        Ok(self
            .query(
                "SELECT kind, id, revision, body FROM resources
                 ORDER BY kind COLLATE \"C\", id COLLATE \"C\"",
                &[],
            )
            .db()?
            .into_iter()
            .map(|r| Document {
                kind: r.get(0),
                id: r.get(1),
                revision: r.get(2),
                body: r.get(3),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redact("postgres://stratus:s3cret@db:5432/stratus"),
            "postgres://stratus@db:5432/stratus"
        );
        assert_eq!(redact("postgres://db/stratus"), "postgres://db/stratus");
    }
}
