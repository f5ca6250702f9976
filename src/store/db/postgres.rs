//! PostgreSQL through tokio-postgres, with a pool of connections (deadpool-postgres).
//!
//! The connections' I/O runs on a runtime of its own, on one thread of its own
//! ([`io_runtime`]); a caller waits for each answer with a plain executor
//! (`futures_executor::block_on`), inside that runtime's context (the pool's timeouts and the
//! connection tasks it spawns are that runtime's). So the store works from any thread. A
//! server calls it only off its one thread ([`SessionStore::loads_wait`]). No TLS: a server
//! on this machine or on a private network.
//!
//! Every wait is bounded: connecting (2 s), a statement and a row lock (10 s, by the server),
//! a silent peer (TCP keepalives and `TCP_USER_TIMEOUT` on our side, 10 s; `tcp_keepalives_*`
//! on the server's, so a holder that vanished loses its advisory lock), a free connection
//! ([`MAX_CONNECTIONS`] per store, [`CONNECTION_WAIT`], or a lock's own deadline).
//!
//! A request lock (`request` locking) is a session-level advisory lock, waited for by the
//! server (`pg_advisory_lock` under `SET LOCAL lock_timeout`, not a poll), held by a
//! connection of the pool for as long as the request runs. That connection also reads and
//! writes the session for its holder ([`Database::read`] and the rest with the lease), so
//! however many requests wait for the lock, holding connections or waiting for one, the
//! holder never needs another connection to finish.
//!
//! [`SessionStore::loads_wait`]: crate::SessionStore::loads_wait

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use deadpool_postgres::{
    Manager, ManagerConfig, Object, PoolError, RecyclingMethod, Runtime, Timeouts,
};
use tokio::runtime::Handle;
use tokio_postgres::{Client, Config, NoTls};

use super::{Change, Database, Row, check_schema, lost_lock, missing_or_foreign, schema_version};
use crate::key::SessionKey;
use crate::store::{Lease, StoreError, locked};

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
/// How long a caller waits for a free connection before 503 (a lock's waiter: at most
/// until its own deadline).
const CONNECTION_WAIT: Duration = Duration::from_secs(5);
/// PostgreSQL's SQLSTATE for a lock not granted within `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";
/// Pause between two tries at a lock, for a waiter that holds no connection meanwhile.
const LOCK_POLL: Duration = Duration::from_millis(5);
/// PostgreSQL's SQLSTATE for a statement cancelled (`statement_timeout`).
const QUERY_CANCELED: &str = "57014";

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

/// Waits for `future` on this thread, in the I/O runtime's context.
fn block_on<F: Future>(future: F) -> F::Output {
    // Without the runtime (it could not start) the pool's timers would panic: none is
    // made then, since `Postgres::open` fails first.
    let _context = io_runtime().ok().map(Handle::enter);
    futures_executor::block_on(future)
}

/// The pool, and the connections lent to request locks.
struct Pool {
    pool: deadpool_postgres::Pool,
    /// Connections holding a request lock, by the lease's token: the holder's reads and
    /// writes go through it.
    leased: Mutex<HashMap<String, Object>>,
    shown: String,
}

impl Pool {
    /// A connection, waiting at most `wait` for one to be free.
    fn get_within(&self, wait: Duration) -> Result<Object, PoolWait> {
        let timeouts = Timeouts {
            wait: Some(wait),
            create: Some(CONNECT_TIMEOUT),
            recycle: Some(CONNECT_TIMEOUT),
        };
        block_on(self.pool.timeout_get(&timeouts)).map_err(|e| match e {
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => PoolWait::Busy,
            PoolError::Backend(e) => PoolWait::Failed(backend(&self.shown, "connect", e)),
            other => PoolWait::Failed(StoreError::Unavailable(format!(
                "{}: cannot connect: {other}",
                self.shown
            ))),
        })
    }

    /// A connection within [`CONNECTION_WAIT`].
    fn get(&self) -> Result<Object, StoreError> {
        self.get_within(CONNECTION_WAIT).map_err(|e| match e {
            PoolWait::Busy => StoreError::Unavailable(format!(
                "{}: all {MAX_CONNECTIONS} connections busy for {} s",
                self.shown,
                CONNECTION_WAIT.as_secs()
            )),
            PoolWait::Failed(e) => e,
        })
    }

    /// Runs `f` on the connection `lease` holds, if it holds one; else on one of the pool.
    /// `retry`: if `f` fails on a pooled connection that turns out to be closed (the server
    /// restarted), `f` runs once more on a new one; only for what is safe to run twice.
    fn run<T>(
        &self,
        what: &'static str,
        retry: bool,
        lease: Option<&Lease>,
        f: impl Fn(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        if let Some(lease) = lease
            && let Some(mut lent) = self.lent(lease)
        {
            let result = f(lent.client()).map_err(|e| {
                if lent.client().is_closed() {
                    // The lock's connection ended, and the lock with it.
                    lost_lock(lease.session())
                } else {
                    backend(&self.shown, what, e)
                }
            });
            lent.give_back();
            return result;
        }
        let client = self.get()?;
        match f(&client) {
            Ok(v) => Ok(v),
            Err(e) if retry && client.is_closed() => {
                drop(e);
                drop(Object::take(client));
                let fresh = self.get()?;
                f(&fresh).map_err(|e| backend(&self.shown, what, e))
            }
            Err(e) => Err(backend(&self.shown, what, e)),
        }
    }

    /// The connection a lease holds, taken out while it is used.
    fn lent<'a>(&'a self, lease: &'a Lease) -> Option<Lent<'a>> {
        let client = locked(&self.leased).remove(lease.token())?;
        Some(Lent {
            pool: self,
            lease,
            client: Some(client),
        })
    }
}

/// A lease's connection, out of its lease while it is used. [`give_back`](Lent::give_back)
/// returns it; dropped without that (a panic in the middle), it is closed, which releases
/// the lock it holds, rather than go back to the pool still holding it.
struct Lent<'a> {
    pool: &'a Pool,
    lease: &'a Lease,
    client: Option<Object>,
}

impl Lent<'_> {
    fn client(&mut self) -> &mut Object {
        match self.client.as_mut() {
            Some(client) => client,
            None => unreachable!("a lent connection is there until given back"),
        }
    }

    fn give_back(mut self) {
        if let Some(client) = self.client.take() {
            locked(&self.pool.leased).insert(self.lease.token().to_owned(), client);
        }
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

/// Why no connection came.
enum PoolWait {
    /// Every connection stayed busy for the wait.
    Busy,
    /// Connecting failed.
    Failed(StoreError),
}

fn backend(shown: &str, what: &str, e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend {
        action: format!("{shown}: cannot {what}"),
        source: Box::new(e),
    }
}

pub(super) struct Postgres {
    pool: Arc<Pool>,
    /// Requests waiting for a lock inside PostgreSQL now (each holding a connection): at
    /// most half the pool; the others poll, holding none.
    server_waiters: AtomicUsize,
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
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A connection that is closed is replaced; nothing else is asked of it.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let setup = deadpool_postgres::Hook::async_fn(
            |client: &mut deadpool_postgres::ClientWrapper, _| {
                Box::pin(async move {
                    client
                        .batch_execute(SESSION_SETUP)
                        .await
                        .map_err(deadpool_postgres::HookError::Backend)
                })
            },
        );
        let shown = format!("PostgreSQL at {shown}");
        let built = {
            let _context = io_runtime()?.enter();
            deadpool_postgres::Pool::builder(manager)
                .max_size(MAX_CONNECTIONS)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(CONNECTION_WAIT))
                .create_timeout(Some(CONNECT_TIMEOUT))
                .recycle_timeout(Some(CONNECT_TIMEOUT))
                .post_create(setup)
                .build()
        };
        let pool = Pool {
            pool: built.map_err(|e| StoreError::Unavailable(format!("{shown}: {e}")))?,
            leased: Mutex::new(HashMap::new()),
            shown,
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
        let found: Option<i32> = pool.run("create the session table", false, None, |c| {
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
            server_waiters: AtomicUsize::new(0),
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
    fn read(&self, key: &SessionKey, lease: Option<&Lease>) -> Result<Option<Row>, StoreError> {
        let sql = format!(
            "SELECT session_data, expire_date FROM {} WHERE session_key = $1",
            self.table
        );
        let key = key.to_string();
        self.pool.run("load a session", true, lease, |c| {
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
        let n = self.pool.run("create a session", false, None, |c| {
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
        let shown = &self.pool.shown;
        let fail = |e| backend(shown, "save a session", e);
        // The holder's own connection (the one holding its lock), or one of the pool.
        if let Some(lease) = lease
            && let Some(mut lent) = self.pool.lent(lease)
        {
            let mut outcome = self.update_on(lent.client(), key, Some(lease), decide, &fail);
            if outcome.is_err() && lent.client().is_closed() {
                // The lock's connection ended, and the lock with it: nothing was written.
                outcome = Err(lost_lock(key));
            }
            lent.give_back();
            return outcome;
        }
        let mut client = self.pool.get()?;
        self.update_on(&mut client, key, lease, decide, &fail)
    }

    fn delete(&self, key: &SessionKey, lease: Option<&Lease>) -> Result<(), StoreError> {
        let sql = format!("DELETE FROM {} WHERE session_key = $1", self.table);
        let key = key.to_string();
        self.pool.run("delete a session", true, lease, |c| {
            block_on(c.execute(&sql, &[&key]))
        })?;
        Ok(())
    }

    fn exists(&self, key: &SessionKey, lease: Option<&Lease>) -> Result<bool, StoreError> {
        let sql = format!("SELECT 1 FROM {} WHERE session_key = $1", self.table);
        let key = key.to_string();
        self.pool.run("look a session up", true, lease, |c| {
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
        self.pool.run("delete expired sessions", true, None, |c| {
            block_on(c.execute(&sql, &[&now, &batch]))
        })
    }

    fn count_live(&self, now: SystemTime) -> Result<u64, StoreError> {
        let sql = format!("SELECT count(*) FROM {} WHERE expire_date > $1", self.table);
        let n: i64 = self.pool.run("count sessions", true, None, |c| {
            block_on(c.query_one(&sql, &[&now]))?.try_get(0)
        })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn cheap_reads(&self) -> bool {
        false
    }

    fn lock(
        &self,
        key: &SessionKey,
        wait: Duration,
        _lease: Duration,
    ) -> Result<Lease, StoreError> {
        // A session-level advisory lock lives as long as its connection: this connection
        // stays with the lease until it is released (then it goes back to the pool), and a
        // holder that dies releases it with its connection. The wait is the server's
        // (`pg_advisory_lock` under `lock_timeout`) for at most half the pool at once; the
        // others try again and again, holding no connection between tries, so that waiters
        // never take every connection from the requests of other sessions.
        let (class, object) = (self.lock_class, object_of(key));
        let start = Instant::now();
        let timed_out = || StoreError::LockTimeout {
            key: *key,
            waited: start.elapsed(),
        };
        let (client, pid) = loop {
            // A connection within the lock's own deadline: waiting for one is waiting for it.
            let left = wait.saturating_sub(start.elapsed());
            let client = match self.pool.get_within(left.max(Duration::from_millis(1))) {
                Ok(client) => client,
                Err(PoolWait::Busy) => return Err(timed_out()),
                Err(PoolWait::Failed(e)) => return Err(e),
            };
            let left = wait.saturating_sub(start.elapsed());
            let server_waits = !left.is_zero()
                && self.server_waiters.fetch_add(1, Ordering::SeqCst) < MAX_CONNECTIONS / 2;
            let taken = if server_waits {
                let taken = lock_waiting(&client, class, object, left);
                self.server_waiters.fetch_sub(1, Ordering::SeqCst);
                taken
            } else {
                if !left.is_zero() {
                    self.server_waiters.fetch_sub(1, Ordering::SeqCst);
                }
                lock_now(&client, class, object)
            };
            match taken {
                Ok(Some(pid)) => break (client, pid),
                // Not granted: the connection holds nothing, back to the pool.
                Ok(None) => drop(client),
                Err(e) => {
                    // Perhaps granted before the error (a COMMIT that failed): closing the
                    // connection releases whatever it holds.
                    drop(Object::take(client));
                    return Err(backend(&self.pool.shown, "take a session lock", e));
                }
            }
            let left = wait.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(timed_out());
            }
            std::thread::sleep(LOCK_POLL.min(left));
        };
        // The token is the backend's pid: the save checks in pg_locks that it still holds
        // the lock. The connection is lent to the lease until it is released.
        let token = pid.to_string();
        locked(&self.pool.leased).insert(token.clone(), client);
        let pool = Arc::clone(&self.pool);
        Ok(Lease::new(*key, token, move |key, token| {
            let Some(client) = locked(&pool.leased).remove(token) else {
                return;
            };
            let unlock =
                block_on(client.execute("SELECT pg_advisory_unlock($1, $2)", &[&class, &object]));
            if let Err(e) = unlock {
                // Closing the connection ends its session, which releases the lock.
                log::warn!(
                    "{}: cannot release the lock of session {}: {e}; closing its connection",
                    pool.shown,
                    key.short()
                );
                drop(Object::take(client));
            }
        }))
    }
}

/// `pg_try_advisory_lock`: the backend's pid if granted, `None` if held elsewhere.
fn lock_now(
    client: &Client,
    class: i32,
    object: i32,
) -> Result<Option<i32>, tokio_postgres::Error> {
    let row = block_on(client.query_one(
        "SELECT pg_try_advisory_lock($1, $2), pg_backend_pid()",
        &[&class, &object],
    ))?;
    Ok(row
        .try_get::<_, bool>(0)?
        .then_some(row.try_get::<_, i32>(1)?))
}

/// `pg_advisory_lock`, waited for by the server at most `left`: the backend's pid if
/// granted, `None` if not in time.
fn lock_waiting(
    client: &Client,
    class: i32,
    object: i32,
    left: Duration,
) -> Result<Option<i32>, tokio_postgres::Error> {
    let millis = left.as_millis().max(1);
    let taken = block_on(async {
        // SET LOCAL: the timeouts end with this transaction; the session-level lock taken in
        // it outlives it.
        client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = {millis}; SET LOCAL statement_timeout = {}",
                millis + 1_000
            ))
            .await?;
        let row = client
            .query_one(
                "SELECT pg_advisory_lock($1, $2), pg_backend_pid()",
                &[&class, &object],
            )
            .await;
        let end = if row.is_ok() { "COMMIT" } else { "ROLLBACK" };
        client.batch_execute(end).await?;
        row.and_then(|r| r.try_get::<_, i32>(1))
    });
    match taken {
        Ok(pid) => Ok(Some(pid)),
        Err(e)
            if e.code()
                .is_some_and(|c| c.code() == LOCK_NOT_AVAILABLE || c.code() == QUERY_CANCELED) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl Postgres {
    /// The transaction of [`Database::update`] on `client`.
    fn update_on(
        &self,
        client: &mut Object,
        key: &SessionKey,
        lease: Option<&Lease>,
        decide: &mut dyn FnMut(Option<Row>) -> Result<Change, StoreError>,
        fail: &dyn Fn(tokio_postgres::Error) -> StoreError,
    ) -> Result<bool, StoreError> {
        let table = &self.table;
        let key_text = key.to_string();
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
    }
}
