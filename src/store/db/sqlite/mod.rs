//! SQLite through rusqlite's bundled SQLite, in WAL mode: per store one writer connection
//! (every write, lock and cleanup) and [`READERS`] reader connections (loads and lookups),
//! so that reads of any session go on while this process writes, as WAL lets readers go on
//! while another process writes. Django's database (`SESSION_FORMAT=django`) keeps its own
//! journal mode (`delete`: there a read waits out another connection's commit, retried as
//! any busy statement), and its `expire_date` is Django's naive UTC text; there saves,
//! creates and deletes of concurrent requests share transactions and COMMITs ([`group`]).
//!
//! Nothing waits while holding a connection: SQLite's own busy wait is off, and a
//! statement that finds the database busy (another process writing) is retried after the
//! connection is let go, until the lock timeout (`SESSION_LOCK_TIMEOUT`, the store's:
//! [`DEFAULT_BUSY_TIMEOUT`] until it is set). A server calls the store only off its one
//! thread ([`SessionStore::loads_wait`](crate::SessionStore::loads_wait)), so such a wait
//! holds up no other request.
//!
//! The database file is opened only while the store opens (the writer, then the readers,
//! which never create it). A file removed or replaced at its path while the store runs
//! (`rm db.sqlite3`, a restore moved into place) would take every later write into a file
//! no one will open again: after each statement the path is compared with the file opened
//! (device and inode, as the file store checks its directory), and a mismatch is
//! [`StoreError::DatabaseGone`] (500) before anything is acknowledged. The path is never
//! opened again in the process: closing any descriptor of the file drops SQLite's POSIX
//! locks.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::types::{Value, ValueRef};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

// The connections (one writer, the readers); opening the file and the table; this file:
// the statements.
mod connections;
mod group;
mod open;

use super::{Change, Database, Row, lost_lock};
use crate::key::SessionKey;
use crate::store::django::{format_expire_date, parse_expire_date};
use crate::store::{Lease, LockConfig, StoreError, holder};
use connections::Inner;

pub(super) struct Sqlite {
    inner: Arc<Inner>,
    table: String,
    locks: String,
    /// Django's table: `expire_date` as Django's text, deleted as Django's `clear_expired`
    /// deletes (`expire_date < now`).
    django: bool,
    /// Whether `<table>_lock` exists (Django's database opened by `clearsessions` may have
    /// none: then there are no stale leases to delete).
    has_locks: bool,
    /// Saves share transactions and COMMITs ([`group`]): Django's rollback-journal database.
    grouped: bool,
}

/// Pause between attempts to take a request lock held by another request.
const LOCK_POLL: Duration = Duration::from_millis(2);

/// Whole seconds since 1970 at or before `t` (before 1970: 0): "now", as the cleanup's
/// `expire_date <= now` compares it.
fn seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Whole seconds since 1970 at or after `t`, as a row's `expire_date` holds when its session
/// ends: rounded up, so that cleanup never deletes a session before its end (the document
/// keeps the end to the millisecond, and a load enforces that).
fn seconds_up(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| {
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            whole.saturating_add(i64::from(d.subsec_nanos() > 0))
        })
        .unwrap_or(0)
}

fn time_of(seconds: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A row: `expire_date` in Unix seconds (filesession's table) or as Django's text (a text
/// that is no time: ended).
fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let expires_at = match r.get_ref(1)? {
        ValueRef::Integer(seconds) => time_of(seconds),
        ValueRef::Text(text) => std::str::from_utf8(text)
            .ok()
            .and_then(parse_expire_date)
            .unwrap_or(UNIX_EPOCH),
        _ => UNIX_EPOCH,
    };
    Ok(Row {
        document: r.get(0)?,
        expires_at,
    })
}

impl Sqlite {
    /// A row's `expire_date` for the end `t`: Django's text, or Unix seconds rounded up.
    fn expire_date(&self, t: SystemTime) -> Value {
        if self.django {
            Value::Text(format_expire_date(t))
        } else {
            Value::Integer(seconds_up(t))
        }
    }

    /// `now` as `expire_date` is compared with: Django's text, or whole Unix seconds.
    fn now(&self, now: SystemTime) -> Value {
        if self.django {
            Value::Text(format_expire_date(now))
        } else {
            Value::Integer(seconds(now))
        }
    }
}

impl Sqlite {
    /// Runs `f`, a write, in a group's transaction ([`group`]) when the store groups its
    /// saves, else on the writer in a transaction of its own.
    fn write<T>(
        &self,
        what: &'static str,
        mut f: impl FnMut(&rusqlite::Connection) -> rusqlite::Result<Option<T>>,
    ) -> Result<Option<T>, StoreError> {
        if self.grouped {
            return self.inner.group.save(&self.inner, what, f);
        }
        self.inner.run(what, |c| {
            // IMMEDIATE: the write lock is taken before the read, so the row read is the
            // one written over (no other writer between).
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let done = f(&tx)?;
            // None: nothing to keep (rolled back).
            if done.is_some() {
                tx.commit()?;
            }
            Ok(done)
        })
    }
}

impl Sqlite {
    /// Runs `f`, one statement that writes, in a group's transaction when the store groups
    /// its saves, else on the writer alone.
    fn statement<T>(
        &self,
        what: &'static str,
        f: impl Fn(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        if self.grouped {
            return self.inner.group.save(&self.inner, what, f);
        }
        self.inner.run(what, |c| f(c))
    }
}

impl Database for Sqlite {
    fn set_wait(&self, timeout: Duration) {
        self.inner
            .busy_timeout_ms
            .store(millis_of(timeout), std::sync::atomic::Ordering::Relaxed);
    }

    fn read(&self, key: &SessionKey, _: Option<&Lease>) -> Result<Option<Row>, StoreError> {
        let sql = format!(
            "SELECT session_data, expire_date FROM {} WHERE session_key = ?1",
            self.table
        );
        let key = key.to_string();
        self.inner.read("load a session", |c| {
            c.prepare_cached(&sql)?.query_row([&key], row_of).optional()
        })
    }

    fn insert(&self, key: &SessionKey, row: &Row) -> Result<bool, StoreError> {
        let sql = format!(
            "INSERT INTO {} (session_key, session_data, expire_date) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
            self.table
        );
        let inserted = self.statement("create a session", |c| {
            c.execute(
                &sql,
                params![
                    key.to_string(),
                    row.document,
                    self.expire_date(row.expires_at)
                ],
            )
        })?;
        Ok(inserted == 1)
    }

    fn update(
        &self,
        key: &SessionKey,
        lease: Option<&Lease>,
        decide: &mut dyn FnMut(Option<Row>) -> Result<Change, StoreError>,
    ) -> Result<bool, StoreError> {
        let (table, locks) = (&self.table, &self.locks);
        let key_text = key.to_string();
        // `decide`'s own errors (Deleted, TooLarge) come out through here, the database's
        // through `run`.
        let mut decided: Result<(), StoreError> = Ok(());
        let applied = self.write("save a session", |tx| {
            decided = Ok(());
            if let Some(lease) = lease {
                let holder: Option<String> = tx
                    .query_row(
                        &format!("SELECT token FROM {locks} WHERE session_key = ?1"),
                        [&key_text],
                        |r| r.get(0),
                    )
                    .optional()?;
                if holder.as_deref() != Some(lease.token()) {
                    decided = Err(lost_lock(key));
                    return Ok(None);
                }
            }
            let row = tx
                .query_row(
                    &format!(
                        "SELECT session_data, expire_date FROM {table} WHERE session_key = ?1"
                    ),
                    [&key_text],
                    row_of,
                )
                .optional()?;
            let change = match decide(row) {
                Ok(change) => change,
                Err(e) => {
                    decided = Err(e);
                    return Ok(None);
                }
            };
            match change {
                Change::Keep => return Ok(Some(true)),
                Change::Write(row) => {
                    tx.execute(
                        &format!(
                            "UPDATE {table} SET session_data = ?2, expire_date = ?3 \
                             WHERE session_key = ?1"
                        ),
                        params![key_text, row.document, self.expire_date(row.expires_at)],
                    )?;
                }
                Change::Move(new_key, row) => {
                    let inserted = tx.execute(
                        &format!(
                            "INSERT INTO {table} (session_key, session_data, expire_date) \
                             VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING"
                        ),
                        params![
                            new_key.to_string(),
                            row.document,
                            self.expire_date(row.expires_at)
                        ],
                    )?;
                    if inserted == 0 {
                        return Ok(Some(false)); // nothing written
                    }
                    tx.execute(
                        &format!("DELETE FROM {table} WHERE session_key = ?1"),
                        [&key_text],
                    )?;
                }
            }
            Ok(Some(true))
        })?;
        decided.map(|()| applied.unwrap_or(false))
    }

    fn delete(&self, key: &SessionKey, _: Option<&Lease>) -> Result<(), StoreError> {
        let sql = format!("DELETE FROM {} WHERE session_key = ?1", self.table);
        let key = key.to_string();
        self.statement("delete a session", |c| c.execute(&sql, [&key]))?;
        Ok(())
    }

    fn exists(&self, key: &SessionKey, _: Option<&Lease>) -> Result<bool, StoreError> {
        let sql = format!("SELECT 1 FROM {} WHERE session_key = ?1", self.table);
        let key = key.to_string();
        let found: Option<i64> = self.inner.read("look a session up", |c| {
            c.prepare_cached(&sql)?
                .query_row([&key], |r| r.get(0))
                .optional()
        })?;
        Ok(found.is_some())
    }

    fn delete_expired(&self, now: SystemTime, batch: u32) -> Result<u64, StoreError> {
        let (table, locks) = (&self.table, &self.locks);
        // Django's clear_expired deletes `expire_date < now`.
        let ended = if self.django { "<" } else { "<=" };
        // The outer test again: a row a save refreshed meanwhile is kept.
        let sql = format!(
            "DELETE FROM {table} WHERE expire_date {ended} ?1 AND session_key IN \
             (SELECT session_key FROM {table} WHERE expire_date {ended} ?1 LIMIT ?2)"
        );
        let deleted = self.inner.run("delete expired sessions", |c| {
            c.execute(&sql, params![self.now(now), batch])
        })?;
        // Leases whose holders died (never released) go too.
        if self.has_locks {
            let stale = format!("DELETE FROM {locks} WHERE until_ms <= ?1");
            self.inner.run("delete stale session locks", |c| {
                c.execute(&stale, [millis(now)])
            })?;
        }
        Ok(deleted as u64)
    }

    fn count_live(&self, now: SystemTime) -> Result<u64, StoreError> {
        let sql = format!("SELECT count(*) FROM {} WHERE expire_date > ?1", self.table);
        let n: i64 = self.inner.read("count sessions", |c| {
            c.query_row(&sql, [self.now(now)], |r| r.get(0))
        })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn cheap_reads(&self) -> bool {
        true
    }

    fn lock(&self, key: &SessionKey, wait: Duration, lease: Duration) -> Result<Lease, StoreError> {
        // Who holds it, in the token: a waiter on this machine takes the lock of a holder
        // that died at once (store::holder), instead of waiting out the lease.
        let token = holder::token(&uuid::Uuid::new_v4().to_string());
        let take = format!(
            "INSERT INTO {locks} (session_key, token, until_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (session_key) DO UPDATE SET token = excluded.token, \
             until_ms = excluded.until_ms WHERE {locks}.until_ms <= ?4",
            locks = self.locks
        );
        let holder_of = format!("SELECT token FROM {} WHERE session_key = ?1", self.locks);
        let take_over = format!(
            "UPDATE {} SET token = ?2, until_ms = ?3 WHERE session_key = ?1 AND token = ?4",
            self.locks
        );
        let key_text = key.to_string();
        let start = Instant::now();
        loop {
            let now = SystemTime::now();
            let mut taken = self.inner.run("take a session lock", |c| {
                c.execute(
                    &take,
                    params![key_text, token, millis(now + lease), millis(now)],
                )
            })?;
            if taken == 0 {
                // Held: by a process that has died since? (A read of /proc, each poll.)
                let held_by: Option<String> = self.inner.run("read a session lock", |c| {
                    c.query_row(&holder_of, [&key_text], |r| r.get(0))
                        .optional()
                })?;
                if let Some(old) = held_by
                    && holder::holder_died(&old)
                {
                    taken = self.inner.run("take a session lock", |c| {
                        c.execute(
                            &take_over,
                            params![key_text, token, millis(now + lease), old],
                        )
                    })?;
                    if taken == 1 {
                        log::warn!(
                            "session {}: its lock's holder died; taken over",
                            key.short()
                        );
                    }
                }
            }
            if taken == 1 {
                let inner = Arc::clone(&self.inner);
                let release = format!(
                    "DELETE FROM {} WHERE session_key = ?1 AND token = ?2",
                    self.locks
                );
                return Ok(Lease::new(*key, token, move |key, token| {
                    let done = inner.run("release a session lock", |c| {
                        c.execute(&release, [key.to_string(), token.to_owned()])
                    });
                    if let Err(e) = done {
                        log::warn!("session {}: {e}; the lock expires by itself", key.short());
                    }
                }));
            }
            LockConfig::pause_or_time_out(key, start, wait, LOCK_POLL)?;
        }
    }
}

#[cfg(test)]
mod tests;
