//! PostgreSQL through tokio-postgres, with a small pool of connections.
//!
//! The connections' I/O runs on a runtime of its own, on one thread of its own
//! ([`io_runtime`]); a caller waits for each answer with a plain executor
//! (`futures_executor::block_on`), which needs no runtime. So the store works from any
//! thread, the server's one thread included, which already runs a tokio runtime (the
//! synchronous `postgres` crate cannot: it starts a runtime inside the caller's). No TLS: a
//! server on this machine or on a private network.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use futures_executor::block_on;
use tokio::runtime::Handle;
use tokio_postgres::{Client, Config, NoTls};

use super::{Change, Database, Row, check_schema, schema_version, wait_or_time_out};
use crate::key::SessionKey;
use crate::store::{Lease, LeaseIssuer, StoreError};

/// How long connecting may take. Short: a server has one handler thread to keep moving.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest one statement may run before PostgreSQL cancels it (503).
const STATEMENT_TIMEOUT_MS: u64 = 10_000;
/// Idle connections kept for reuse.
const POOL_SIZE: usize = 8;

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

/// Connections, made when needed and kept for reuse.
struct Pool {
    config: Config,
    idle: Mutex<Vec<Client>>,
    shown: String,
}

impl Pool {
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
        block_on(client.batch_execute(&format!(
            "SET statement_timeout = {STATEMENT_TIMEOUT_MS}; SET TIME ZONE 'UTC'"
        )))
        .map_err(|e| backend(&self.shown, "connect", e))?;
        Ok(client)
    }

    /// An idle connection, or a new one; `true` if it was reused.
    fn get(&self) -> Result<(Client, bool), StoreError> {
        let reused = match self.idle.lock() {
            Ok(mut idle) => idle.pop(),
            Err(poisoned) => poisoned.into_inner().pop(),
        };
        match reused {
            Some(client) if !client.is_closed() => Ok((client, true)),
            _ => Ok((self.connect()?, false)),
        }
    }

    fn put(&self, client: Client) {
        if client.is_closed() {
            return;
        }
        let mut idle = match self.idle.lock() {
            Ok(idle) => idle,
            Err(poisoned) => poisoned.into_inner(),
        };
        if idle.len() < POOL_SIZE {
            idle.push(client);
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
            Err(_) if retry && reused && client.is_closed() => {
                let fresh = self.connect()?;
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

impl Postgres {
    pub(super) fn open(url: &str, table: &str, shown: &str) -> Result<Postgres, StoreError> {
        let mut config: Config = url.parse().map_err(|e| StoreError::Backend {
            action: format!("PostgreSQL at {shown}: cannot read DATABASE_URL"),
            source: Box::new(e),
        })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        let pool = Pool {
            config,
            idle: Mutex::new(Vec::new()),
            shown: format!("PostgreSQL at {shown}"),
        };
        let schema = format!(
            "SET client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS {table} (
                 session_key varchar(36) PRIMARY KEY,
                 session_data text NOT NULL,
                 expire_date timestamptz NOT NULL);
             CREATE INDEX IF NOT EXISTS {table}_expire_date ON {table} (expire_date);
             CREATE TABLE IF NOT EXISTS filesession_schema (
                 table_name text PRIMARY KEY,
                 version integer NOT NULL);
             INSERT INTO filesession_schema (table_name, version)
                 VALUES ('{table}', {version}) ON CONFLICT DO NOTHING;
             RESET client_min_messages;",
            version = schema_version()
        );
        // Two processes creating the table at once may collide in the catalog: try again.
        let create = |c: &Client| block_on(c.batch_execute(&schema));
        let mut made = pool.run("create the session table", false, create);
        if made.is_err() {
            std::thread::sleep(Duration::from_millis(100));
            made = pool.run("create the session table", false, create);
        }
        made?;
        let found: i32 = pool.run("read the table's version", true, |c| {
            block_on(c.query_one(
                "SELECT version FROM filesession_schema WHERE table_name = $1",
                &[&table],
            ))
            .map(|r| r.get(0))
        })?;
        check_schema(i64::from(found), table, &pool.shown)?;
        Ok(Postgres {
            pool: Arc::new(pool),
            table: table.to_owned(),
            lock_class: class_of(table),
        })
    }
}

fn row_of(r: &tokio_postgres::Row) -> Row {
    Row {
        document: r.get(0),
        expires_at: r.get(1),
    }
}

impl Database for Postgres {
    fn read(&self, key: &SessionKey) -> Result<Option<Row>, StoreError> {
        let sql = format!(
            "SELECT session_data, expire_date FROM {} WHERE session_key = $1",
            self.table
        );
        let key = key.to_string();
        self.pool.run("load a session", true, |c| {
            block_on(c.query_opt(&sql, &[&key])).map(|r| r.as_ref().map(row_of))
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
        decide: &mut dyn FnMut(Option<Row>) -> Result<Change, StoreError>,
    ) -> Result<bool, StoreError> {
        let table = &self.table;
        let key = key.to_string();
        let shown = &self.pool.shown;
        let fail = |e| backend(shown, "save a session", e);
        let (mut client, _) = self.pool.get()?;
        let outcome = (|| {
            // Dropped without commit (an error, a refusal), the transaction rolls back.
            let tx = block_on(client.transaction()).map_err(fail)?;
            let row = block_on(tx.query_opt(
                &format!(
                    "SELECT session_data, expire_date FROM {table} \
                     WHERE session_key = $1 FOR UPDATE"
                ),
                &[&key],
            ))
            .map_err(fail)?;
            match decide(row.as_ref().map(row_of))? {
                Change::Keep => return Ok(true),
                Change::Write(row) => {
                    block_on(tx.execute(
                        &format!(
                            "UPDATE {table} SET session_data = $2, expire_date = $3 \
                             WHERE session_key = $1"
                        ),
                        &[&key, &row.document, &row.expires_at],
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
                        &[&key],
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
        let sql = format!(
            "DELETE FROM {table} WHERE session_key IN \
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
            block_on(c.query_one(&sql, &[&now])).map(|r| r.get(0))
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
        loop {
            let taken = block_on(
                client.query_one("SELECT pg_try_advisory_lock($1, $2)", &[&class, &object]),
            )
            .map(|r| r.get::<_, bool>(0));
            match taken {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => return Err(backend(&self.pool.shown, "take a session lock", e)),
            }
            if let Err(timeout) = wait_or_time_out(key, start, wait) {
                self.pool.put(client);
                return Err(timeout);
            }
        }
        let pool = Arc::clone(&self.pool);
        Ok(Lease::new(issuer, *key, String::new(), move |key, _| {
            let unlock =
                block_on(client.execute("SELECT pg_advisory_unlock($1, $2)", &[&class, &object]));
            match unlock {
                Ok(_) => pool.put(client),
                // Dropping the connection ends its session, which releases the lock.
                Err(e) => log::warn!(
                    "{}: cannot release the lock of session {}: {e}; closing its connection",
                    pool.shown,
                    key.short()
                ),
            }
        }))
    }
}
