//! PostgreSQL through tokio-postgres, with a bounded pool of connections.
//!
//! The connections' I/O runs on a runtime of its own, on one thread of its own
//! ([`io_runtime`]); a caller waits for each answer with a plain executor
//! (`futures_executor::block_on`), which needs no runtime. So the store works from any
//! thread, the server's one thread included, which already runs a tokio runtime (the
//! synchronous `postgres` crate cannot: it starts a runtime inside the caller's). No TLS: a
//! server on this machine or on a private network.
//!
//! Every wait is bounded: connecting (2 s), a statement and a row lock (10 s, by the server),
//! a silent peer (TCP keepalives and `TCP_USER_TIMEOUT` on our side, 10 s; `tcp_keepalives_*`
//! on the server's, so a holder that vanished loses its advisory lock), a free connection
//! ([`MAX_CONNECTIONS`] per store, 5 s).

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use futures_executor::block_on;
use tokio::runtime::Handle;
use tokio_postgres::{Client, Config, NoTls};

use super::{
    Change, Database, Row, check_schema, lost_lock, missing_or_foreign, schema_version,
    wait_or_time_out,
};
use crate::key::SessionKey;
use crate::store::{Lease, LeaseIssuer, StoreError, locked};

/// How long connecting may take. Short: a server has one handler thread to keep moving.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a peer may leave data unacknowledged before the connection is dropped.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
/// Set at connect: statements and row-lock waits cancelled after 10 s; a transaction left
/// idle 30 s ended; the server probes a silent client after 5 s (every 1 s, 3 times).
const SESSION_SETUP: &str = "SET statement_timeout = 10000; SET lock_timeout = 10000; \
     SET idle_in_transaction_session_timeout = 30000; SET tcp_keepalives_idle = 5; \
     SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 3; SET TIME ZONE 'UTC'";
/// Connections one store opens at most (idle, in use, and holding request locks).
pub(super) const MAX_CONNECTIONS: usize = 16;
/// How long a caller waits for a free connection before 503.
const CONNECTION_WAIT: Duration = Duration::from_secs(5);

/// The runtime that drives every connection's I/O, on a thread of its own, started once.
fn io_runtime() -> Result<&'static Handle, StoreError> {
    static HANDLE: OnceLock<Result<Handle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name("postgres-io".into())
                .spawn(move || runtime.block_on(std::future::pending::<()>()))
                .map_err(|e| e.to_string())?;
            Ok(handle)
        })
        .as_ref()
        .map_err(|e| {
            StoreError::Unavailable(format!("cannot start the PostgreSQL I/O thread: {e}"))
        })
}

/// Connections, made when needed, kept for reuse, at most [`MAX_CONNECTIONS`] open.
struct Pool {
    config: Config,
    idle: Mutex<Vec<Client>>,
    /// Connections open (idle or not).
    open: Mutex<usize>,
    freed: Condvar,
    shown: String,
}

impl Pool {
    /// Opens a connection; the caller holds a slot for it.
    fn connect(&self) -> Result<Client, StoreError> {
        let config = self.config.clone();
        let connected = block_on(io_runtime()?.spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            // The connection's I/O: it ends when the client is dropped or the server goes.
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok::<_, tokio_postgres::Error>(client)
        }));
        let client = match connected {
            Ok(client) => client.map_err(|e| backend(&self.shown, "connect", e))?,
            Err(e) => {
                return Err(StoreError::Unavailable(format!(
                    "{}: the connection task failed: {e}",
                    self.shown
                )));
            }
        };
        block_on(client.batch_execute(SESSION_SETUP))
            .map_err(|e| backend(&self.shown, "connect", e))?;
        Ok(client)
    }

    /// A slot for one more connection, waiting at most [`CONNECTION_WAIT`].
    fn take_slot(&self) -> Result<(), StoreError> {
        let deadline = Instant::now() + CONNECTION_WAIT;
        let mut open = locked(&self.open);
        while *open >= MAX_CONNECTIONS {
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "{}: all {MAX_CONNECTIONS} connections busy for {} s",
                    self.shown,
                    CONNECTION_WAIT.as_secs()
                )));
            }
            open = match self.freed.wait_timeout(open, deadline - now) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        *open += 1;
        Ok(())
    }

    /// A connection gone (closed, broken, or not kept): its slot is free.
    fn discard(&self, client: Client) {
        drop(client);
        let mut open = locked(&self.open);
        *open = open.saturating_sub(1);
        self.freed.notify_one();
    }

    /// An idle connection, or a new one; `true` if it was reused.
    fn get(&self) -> Result<(Client, bool), StoreError> {
        loop {
            let reused = locked(&self.idle).pop();
            match reused {
                Some(client) if !client.is_closed() => return Ok((client, true)),
                Some(closed) => self.discard(closed),
                None => break,
            }
        }
        self.take_slot()?;
        match self.connect() {
            Ok(client) => Ok((client, false)),
            Err(e) => {
                let mut open = locked(&self.open);
                *open = open.saturating_sub(1);
                self.freed.notify_one();
                Err(e)
            }
        }
    }

    /// Gives a connection back for reuse (a closed one frees its slot).
    fn put(&self, client: Client) {
        if client.is_closed() {
            self.discard(client);
        } else {
            locked(&self.idle).push(client);
            self.freed.notify_one();
        }
    }

    /// Runs `f` on a connection. `retry`: if `f` fails on a reused connection that turns
    /// out to be closed (the server restarted), `f` runs once more on a new one; only for
    /// what is safe to run twice.
    fn run<T>(
        &self,
        what: &'static str,
        retry: bool,
        f: impl Fn(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let (client, reused) = self.get()?;
        match f(&client) {
            Ok(v) => {
                self.put(client);
                Ok(v)
            }
            Err(e) if retry && reused && client.is_closed() => {
                self.discard(client);
                drop(e);
                let (fresh, _) = self.get()?;
                let r = f(&fresh).map_err(|e| backend(&self.shown, what, e));
                self.put(fresh);
                r
            }
            Err(e) => {
                self.put(client);
                Err(backend(&self.shown, what, e))
            }
        }
    }
}

fn backend(shown: &str, what: &str, e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend {
        action: format!("{shown}: cannot {what}"),
        source: Box::new(e),
    }
}

pub(super) struct Postgres {
    pool: Arc<Pool>,
    table: String,
    /// The advisory-lock class of this table's request locks.
    lock_class: i32,
}

/// A stable 32-bit number for `text` (FNV-1a), so every process locks the same class.
fn class_of(text: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(hash.to_ne_bytes())
}

/// The advisory-lock object of a session: 32 of its key's random bits. Two sessions sharing
/// it only wait for each other; no lock is ever lost.
fn object_of(key: &SessionKey) -> i32 {
    let bytes = key.as_bytes();
    i32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]])
}

/// How `pg_locks` shows an int4 advisory key (an `oid`, unsigned), as a bigint.
fn as_oid(n: i32) -> i64 {
    i64::from(u32::from_ne_bytes(n.to_ne_bytes()))
}

impl Postgres {
    /// Connects and, with `create`, makes the table if it is missing; without it the table
    /// must exist (`clearsessions`).
    pub(super) fn open(
        url: &str,
        table: &str,
        shown: &str,
        create: bool,
    ) -> Result<Postgres, StoreError> {
        let mut config: Config = url.parse().map_err(|e| StoreError::Backend {
            action: format!("PostgreSQL at {shown}: cannot read DATABASE_URL"),
            source: Box::new(e),
        })?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_user_timeout(TCP_USER_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3);
        let pool = Pool {
            config,
            idle: Mutex::new(Vec::new()),
            open: Mutex::new(0),
            freed: Condvar::new(),
            shown: format!("PostgreSQL at {shown}"),
        };
        let schema_lock = class_of("filesession_schema");
        let create_table = format!(
            "CREATE TABLE {table} (
                 session_key varchar(36) PRIMARY KEY,
                 session_data text NOT NULL,
                 expire_date timestamptz NOT NULL);
             CREATE INDEX {table}_expire_date ON {table} (expire_date);"
        );
        // One creator at a time (an advisory lock for the transaction), and a table that
        // exists without our version row is someone else's: never adopted.
        let found: Option<i32> = pool.run("create the session table", false, |c| {
            block_on(async {
                c.batch_execute("BEGIN").await?;
                let done = async {
                    c.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&schema_lock])
                        .await?;
                    if !create {
                        let schema = c
                            .query_one("SELECT to_regclass('filesession_schema') IS NOT NULL", &[])
                            .await?
                            .try_get::<_, bool>(0)?;
                        if !schema {
                            return Ok(None);
                        }
                    }
                    c.batch_execute(
                        "SET LOCAL client_min_messages = warning;
                         CREATE TABLE IF NOT EXISTS filesession_schema (
                             table_name text PRIMARY KEY,
                             version integer NOT NULL)",
                    )
                    .await?;
                    let known = c
                        .query_opt(
                            "SELECT version FROM filesession_schema WHERE table_name = $1",
                            &[&table],
                        )
                        .await?;
                    if let Some(row) = known {
                        return Ok(Some(row.try_get::<_, i32>(0)?));
                    }
                    let exists = c
                        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                        .await?
                        .try_get::<_, bool>(0)?;
                    if exists || !create {
                        return Ok(None);
                    }
                    c.batch_execute(&create_table).await?;
                    c.execute(
                        "INSERT INTO filesession_schema (table_name, version) VALUES ($1, $2)",
                        &[&table, &(schema_version() as i32)],
                    )
                    .await?;
                    Ok(Some(schema_version() as i32))
                }
                .await;
                let end = if done.is_ok() { "COMMIT" } else { "ROLLBACK" };
                c.batch_execute(end).await?;
                done
            })
        })?;
        let Some(found) = found else {
            return Err(StoreError::Unavailable(missing_or_foreign(
                &pool.shown,
                table,
                create,
            )));
        };
        check_schema(i64::from(found), table, &pool.shown)?;
        Ok(Postgres {
            pool: Arc::new(pool),
            table: table.to_owned(),
            lock_class: class_of(table),
        })
    }
}

fn row_of(r: &tokio_postgres::Row) -> Result<Row, tokio_postgres::Error> {
    Ok(Row {
        document: r.try_get(0)?,
        expires_at: r.try_get(1)?,
    })
}

impl Database for Postgres {
    fn read(&self, key: &SessionKey) -> Result<Option<Row>, StoreError> {
        let sql = format!(
            "SELECT session_data, expire_date FROM {} WHERE session_key = $1",
            self.table
        );
        let key = key.to_string();
        self.pool.run("load a session", true, |c| {
            block_on(c.query_opt(&sql, &[&key]))?
                .as_ref()
                .map(row_of)
                .transpose()
        })
    }

    fn insert(&self, key: &SessionKey, row: &Row) -> Result<bool, StoreError> {
        let sql = format!(
            "INSERT INTO {} (session_key, session_data, expire_date) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
            self.table
        );
        let key = key.to_string();
        let n = self.pool.run("create a session", false, |c| {
            block_on(c.execute(&sql, &[&key, &row.document, &row.expires_at]))
        })?;
        Ok(n == 1)
    }

    fn update(
        &self,
        key: &SessionKey,
        lease: Option<&Lease>,
        decide: &mut dyn FnMut(Option<Row>) -> Result<Change, StoreError>,
    ) -> Result<bool, StoreError> {
        let table = &self.table;
        let key_text = key.to_string();
        let shown = &self.pool.shown;
        let fail = |e| backend(shown, "save a session", e);
        let (mut client, _) = self.pool.get()?;
        let outcome = (|| {
            // Dropped without commit (an error, a refusal), the transaction rolls back.
            let tx = block_on(client.transaction()).map_err(fail)?;
            if let Some(lease) = lease {
                // The lock is still ours: its connection (the lease's token is its backend
                // pid) holds it. A lock lost with its connection writes nothing.
                let holder: i32 = lease.token().parse().unwrap_or(0);
                let held = block_on(tx.query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                     AND objsubid = 2 AND classid::bigint = $1 AND objid::bigint = $2 \
                     AND pid = $3",
                    &[&as_oid(self.lock_class), &as_oid(object_of(key)), &holder],
                ))
                .and_then(|r| r.try_get::<_, i64>(0))
                .map_err(fail)?;
                if held == 0 {
                    return Err(lost_lock(key));
                }
            }
            let row = block_on(tx.query_opt(
                &format!(
                    "SELECT session_data, expire_date FROM {table} \
                     WHERE session_key = $1 FOR UPDATE"
                ),
                &[&key_text],
            ))
            .map_err(fail)?;
            let row = row.as_ref().map(row_of).transpose().map_err(fail)?;
            match decide(row)? {
                Change::Keep => return Ok(true),
                Change::Write(row) => {
                    block_on(tx.execute(
                        &format!(
                            "UPDATE {table} SET session_data = $2, expire_date = $3 \
                             WHERE session_key = $1"
                        ),
                        &[&key_text, &row.document, &row.expires_at],
                    ))
                    .map_err(fail)?;
                }
                Change::Move(new_key, row) => {
                    let inserted = block_on(tx.execute(
                        &format!(
                            "INSERT INTO {table} (session_key, session_data, expire_date) \
                             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
                        ),
                        &[&new_key.to_string(), &row.document, &row.expires_at],
                    ))
                    .map_err(fail)?;
                    if inserted == 0 {
                        return Ok(false);
                    }
                    block_on(tx.execute(
                        &format!("DELETE FROM {table} WHERE session_key = $1"),
                        &[&key_text],
                    ))
                    .map_err(fail)?;
                }
            }
            block_on(tx.commit()).map_err(fail)?;
            Ok(true)
        })();
        self.pool.put(client);
        outcome
    }

    fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        let sql = format!("DELETE FROM {} WHERE session_key = $1", self.table);
        let key = key.to_string();
        self.pool.run("delete a session", true, |c| {
            block_on(c.execute(&sql, &[&key]))
        })?;
        Ok(())
    }

    fn exists(&self, key: &SessionKey) -> Result<bool, StoreError> {
        let sql = format!("SELECT 1 FROM {} WHERE session_key = $1", self.table);
        let key = key.to_string();
        self.pool.run("look a session up", true, |c| {
            block_on(c.query_opt(&sql, &[&key])).map(|r| r.is_some())
        })
    }

    fn delete_expired(&self, now: SystemTime, batch: u32) -> Result<u64, StoreError> {
        let table = &self.table;
        // The outer test again: PostgreSQL re-checks it on a row a save refreshed while
        // this waited for its lock, which is then kept.
        let sql = format!(
            "DELETE FROM {table} WHERE expire_date <= $1 AND session_key IN \
             (SELECT session_key FROM {table} WHERE expire_date <= $1 LIMIT $2)"
        );
        let batch = i64::from(batch);
        self.pool.run("delete expired sessions", true, |c| {
            block_on(c.execute(&sql, &[&now, &batch]))
        })
    }

    fn count_live(&self, now: SystemTime) -> Result<u64, StoreError> {
        let sql = format!("SELECT count(*) FROM {} WHERE expire_date > $1", self.table);
        let n: i64 = self.pool.run("count sessions", true, |c| {
            block_on(c.query_one(&sql, &[&now]))?.try_get(0)
        })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn cheap_reads(&self) -> bool {
        false
    }

    fn lock(
        &self,
        issuer: LeaseIssuer,
        key: &SessionKey,
        wait: Duration,
        _lease: Duration,
    ) -> Result<Lease, StoreError> {
        // A session-level advisory lock lives as long as its connection: this connection
        // stays with the lease until it is released (then it goes back to the pool), and a
        // holder that dies releases it with its connection.
        let (class, object) = (self.lock_class, object_of(key));
        let (client, _) = self.pool.get()?;
        let start = Instant::now();
        let pid = loop {
            let taken = block_on(client.query_one(
                "SELECT pg_try_advisory_lock($1, $2), pg_backend_pid()",
                &[&class, &object],
            ))
            .and_then(|r| Ok((r.try_get::<_, bool>(0)?, r.try_get::<_, i32>(1)?)));
            match taken {
                Ok((true, pid)) => break pid,
                Ok((false, _)) => {}
                Err(e) => {
                    self.pool.put(client);
                    return Err(backend(&self.pool.shown, "take a session lock", e));
                }
            }
            if let Err(timeout) = wait_or_time_out(key, start, wait) {
                self.pool.put(client);
                return Err(timeout);
            }
        };
        let pool = Arc::clone(&self.pool);
        Ok(Lease::new(issuer, *key, pid.to_string(), move |key, _| {
            let unlock =
                block_on(client.execute("SELECT pg_advisory_unlock($1, $2)", &[&class, &object]));
            match unlock {
                Ok(_) => pool.put(client),
                // Closing the connection ends its session, which releases the lock.
                Err(e) => {
                    log::warn!(
                        "{}: cannot release the lock of session {}: {e}; closing its connection",
                        pool.shown,
                        key.short()
                    );
                    pool.discard(client);
                }
            }
        }))
    }
}
