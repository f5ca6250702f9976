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
//! holder never needs another connection to finish ([`advisory_lock`]).
//!
//! [`SessionStore::loads_wait`]: crate::SessionStore::loads_wait
//! [`io_runtime`]: pool::io_runtime
//! [`MAX_CONNECTIONS`]: pool::MAX_CONNECTIONS
//! [`CONNECTION_WAIT`]: pool::CONNECTION_WAIT

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, SystemTime};

use deadpool_postgres::Object;

use super::row_format::Layout;
use super::{Change, Database, Row, lost_lock};
use crate::key::SessionKey;
use crate::store::{Lease, StoreError};

// The connections (the I/O runtime, the pool, those lent to request locks), and the
// request locks taken on them; the table, made or checked at open; this file: the
// statements.
mod advisory_lock;
mod pool;
mod table;

use advisory_lock::{as_oid, class_of, object_of};
use pool::{Pool, backend, block_on};

pub(super) struct Postgres {
    pool: Arc<Pool>,
    /// Requests waiting for a lock inside PostgreSQL now (each holding a connection): at
    /// most half the pool; the others poll, holding none.
    server_waiters: AtomicUsize,
    table: String,
    /// The advisory-lock class of this table's request locks.
    lock_class: i32,
    /// Django's table: expired rows deleted as Django's `clear_expired` deletes them
    /// (`expire_date < now`).
    django: bool,
}

impl Postgres {
    /// Connects and, with `create`, makes the table if it is missing (in `layout`); without
    /// it the table must exist (`clearsessions`).
    pub(in crate::store::db) fn open(
        url: &str,
        table: &str,
        shown: &str,
        create: bool,
        layout: Layout,
    ) -> Result<Postgres, StoreError> {
        let pool = Pool::open(url, shown)?;
        table::open_table(&pool, table, create, layout)?;
        Ok(Postgres {
            pool: Arc::new(pool),
            server_waiters: AtomicUsize::new(0),
            table: table.to_owned(),
            lock_class: class_of(table),
            django: layout == Layout::Django,
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
        let ended = if self.django { "<" } else { "<=" };
        // The outer test again: PostgreSQL re-checks it on a row a save refreshed while
        // this waited for its lock, which is then kept.
        let sql = format!(
            "DELETE FROM {table} WHERE expire_date {ended} $1 AND session_key IN \
             (SELECT session_key FROM {table} WHERE expire_date {ended} $1 LIMIT $2)"
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
        self.lock_session(key, wait)
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
