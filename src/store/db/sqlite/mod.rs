//! SQLite through rusqlite's bundled SQLite, in WAL mode: per store one writer connection
//! (every write, lock and cleanup) and [`READERS`] reader connections (loads and lookups),
//! so that reads of any session go on while this process writes, as WAL lets readers go on
//! while another process writes.
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

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

mod connections;

use super::schema::{check_schema, missing_or_foreign, schema_version};
use super::{Change, Database, Row, lost_lock};
use crate::key::SessionKey;
use crate::store::{Lease, LockConfig, StoreError, holder};
use connections::{DEFAULT_BUSY_TIMEOUT, Inner, READERS, error, file_id};

pub(super) struct Sqlite {
    inner: Arc<Inner>,
    table: String,
    locks: String,
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

/// Makes the database file readable by its owner only (0600), before SQLite opens it, if
/// it does not exist yet; an existing file keeps its mode.
fn create_private(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        document: r.get(0)?,
        expires_at: time_of(r.get(1)?),
    })
}

impl Sqlite {
    /// `path` is what follows `sqlite://` in the URL: `/relative` or `//absolute`. With
    /// `create`, a missing file (made 0600) and table are created; without it (for
    /// `clearsessions`, where a mistyped path must not make a database) both must exist.
    pub(super) fn open(
        path: &str,
        table: &str,
        shown: &str,
        create: bool,
    ) -> Result<Sqlite, StoreError> {
        // dj-database-url: sqlite:///db.sqlite3 is the relative path db.sqlite3,
        // sqlite:////var/db.sqlite3 the absolute /var/db.sqlite3.
        let path = PathBuf::from(path.strip_prefix('/').unwrap_or(path));
        if path.as_os_str().is_empty() {
            return Err(StoreError::Unavailable(format!(
                "{shown}: give a file, as sqlite:///db.sqlite3"
            )));
        }
        if path.to_string_lossy().contains(['?', '#']) {
            // Not a file name: options (dj-database-url's ?timeout=...) are not read here,
            // and they, or a fragment, may hold a secret (?password=...): shown cut there.
            let cut = shown.split(['?', '#']).next().unwrap_or_default();
            return Err(StoreError::Unavailable(format!(
                "{cut}...: a sqlite:// DATABASE_URL takes a file only, no ?options or \
                 #fragment (not shown)"
            )));
        }
        // Absolute, so that the check of the path against the file opened does not depend
        // on the working directory (a library user may change it); not canonical, so that a
        // symlink swapped under the store is still noticed.
        let path = std::path::absolute(&path)
            .map_err(|e| StoreError::io("find the database", &path, e))?;
        let shown = format!("SQLite at {}", path.display());
        if create {
            create_private(&path).map_err(|e| StoreError::io("create the database", &path, e))?;
        } else if let Err(e) = std::fs::metadata(&path) {
            return Err(StoreError::io("open the database", &path, e));
        }
        let conn = Connection::open(&path).map_err(|e| StoreError::Backend {
            action: format!("{shown}: cannot open the database"),
            source: Box::new(e),
        })?;
        let file = file_id(&path).map_err(|e| StoreError::io("inspect the database", &path, e))?;
        let mut inner = Inner {
            conn: Mutex::new(conn),
            readers: Vec::new(),
            next_reader: std::sync::atomic::AtomicUsize::new(0),
            path,
            shown,
            file,
            busy_timeout_ms: std::sync::atomic::AtomicU64::new(millis_of(DEFAULT_BUSY_TIMEOUT)),
        };
        let locks = format!("{table}_lock");
        inner.run("open the database", |c| {
            // No busy wait inside SQLite: `Inner::run` retries with the connection let go.
            c.busy_timeout(Duration::ZERO)?;
            if create {
                c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))?;
            }
            c.execute_batch("PRAGMA synchronous=NORMAL")
        })?;
        if !create {
            let schema: bool = inner.run("read the table's version", |c| {
                c.query_row(
                    "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'filesession_schema'",
                    [],
                    |r| r.get(0),
                )
            })?;
            if !schema {
                return Err(StoreError::Unavailable(missing_or_foreign(
                    &inner.shown,
                    table,
                    false,
                )));
            }
        }
        inner.run("create the session table", |c| {
            if !create {
                return Ok(());
            }
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS filesession_schema (
                     table_name TEXT PRIMARY KEY NOT NULL,
                     version INTEGER NOT NULL)",
            )?;
            let known: Option<i64> = tx
                .query_row(
                    "SELECT version FROM filesession_schema WHERE table_name = ?1",
                    [table],
                    |r| r.get(0),
                )
                .optional()?;
            if known.is_none() {
                let exists: bool = tx.query_row(
                    "SELECT count(*) > 0 FROM sqlite_master WHERE name = ?1",
                    [table],
                    |r| r.get(0),
                )?;
                if exists {
                    // Someone else's table (Django's django_session, say): never adopted.
                    return tx.commit();
                }
                tx.execute_batch(&format!(
                    "CREATE TABLE {table} (
                         session_key TEXT PRIMARY KEY NOT NULL,
                         session_data TEXT NOT NULL,
                         expire_date INTEGER NOT NULL);
                     CREATE INDEX {table}_expire_date ON {table} (expire_date);
                     CREATE TABLE IF NOT EXISTS {locks} (
                         session_key TEXT PRIMARY KEY NOT NULL,
                         token TEXT NOT NULL,
                         until_ms INTEGER NOT NULL);"
                ))?;
                tx.execute(
                    "INSERT INTO filesession_schema (table_name, version) VALUES (?1, ?2)",
                    params![table, schema_version()],
                )?;
            }
            tx.commit()
        })?;
        let found: Option<i64> = inner.run("read the table's version", |c| {
            c.query_row(
                "SELECT version FROM filesession_schema WHERE table_name = ?1",
                [table],
                |r| r.get(0),
            )
            .optional()
        })?;
        let Some(found) = found else {
            return Err(StoreError::Unavailable(missing_or_foreign(
                &inner.shown,
                table,
                create,
            )));
        };
        check_schema(found, table, &inner.shown)?;
        // Opened once the file is in WAL mode (set by the writer above), before any
        // request: the path is the file just checked.
        inner.readers = (0..READERS)
            .map(|_| {
                // Never created here: a file removed meanwhile is an error, not a new one.
                let reader = Connection::open_with_flags(
                    &inner.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                reader.busy_timeout(Duration::ZERO)?;
                reader.execute_batch("PRAGMA query_only=1")?;
                Ok(Mutex::new(reader))
            })
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| error(&inner.shown, &inner.path, "open a reader connection", e))?;
        inner.still_at_its_path()?;
        Ok(Sqlite {
            inner: Arc::new(inner),
            table: table.to_owned(),
            locks,
        })
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
        let inserted = self.inner.run("create a session", |c| {
            c.execute(
                &sql,
                params![key.to_string(), row.document, seconds_up(row.expires_at)],
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
        let applied = self.inner.run("save a session", |c| {
            decided = Ok(());
            // IMMEDIATE: the write lock is taken before the read, so the row read is the
            // one written over (no other writer between).
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
                    return Ok(false);
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
                    return Ok(false);
                }
            };
            match change {
                Change::Keep => return Ok(true),
                Change::Write(row) => {
                    tx.execute(
                        &format!(
                            "UPDATE {table} SET session_data = ?2, expire_date = ?3 \
                             WHERE session_key = ?1"
                        ),
                        params![key_text, row.document, seconds_up(row.expires_at)],
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
                            seconds_up(row.expires_at)
                        ],
                    )?;
                    if inserted == 0 {
                        return Ok(false); // dropped: rolled back
                    }
                    tx.execute(
                        &format!("DELETE FROM {table} WHERE session_key = ?1"),
                        [&key_text],
                    )?;
                }
            }
            tx.commit()?;
            Ok(true)
        })?;
        decided.map(|()| applied)
    }

    fn delete(&self, key: &SessionKey, _: Option<&Lease>) -> Result<(), StoreError> {
        let sql = format!("DELETE FROM {} WHERE session_key = ?1", self.table);
        let key = key.to_string();
        self.inner
            .run("delete a session", |c| c.execute(&sql, [&key]))?;
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
        // The outer test again: a row a save refreshed meanwhile is kept.
        let sql = format!(
            "DELETE FROM {table} WHERE expire_date <= ?1 AND session_key IN \
             (SELECT session_key FROM {table} WHERE expire_date <= ?1 LIMIT ?2)"
        );
        let deleted = self.inner.run("delete expired sessions", |c| {
            c.execute(&sql, params![seconds(now), batch])
        })?;
        // Leases whose holders died (never released) go too.
        let stale = format!("DELETE FROM {locks} WHERE until_ms <= ?1");
        self.inner.run("delete stale session locks", |c| {
            c.execute(&stale, [millis(now)])
        })?;
        Ok(deleted as u64)
    }

    fn count_live(&self, now: SystemTime) -> Result<u64, StoreError> {
        let sql = format!("SELECT count(*) FROM {} WHERE expire_date > ?1", self.table);
        let n: i64 = self.inner.read("count sessions", |c| {
            c.query_row(&sql, [seconds(now)], |r| r.get(0))
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
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn opened(dir: &tempfile::TempDir) -> Sqlite {
        let path = format!("/{}", dir.path().join("db.sqlite3").display());
        Sqlite::open(&path, "filesession_session", "SQLite (test)", true).unwrap()
    }

    #[test]
    fn reads_go_on_while_the_writer_connection_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(opened(&dir));
        let key = SessionKey::generate();
        let row = Row {
            document: r#"{"a": 1}"#.into(),
            expires_at: SystemTime::now() + Duration::from_secs(60),
        };
        assert!(db.insert(&key, &row).unwrap());
        // The writer held, as by a write of this process waiting on the disk: a load and a
        // lookup are answered while it is still held.
        let writer = crate::store::locked(&db.inner.conn);
        let (tx, rx) = mpsc::channel();
        let reader = Arc::clone(&db);
        std::thread::spawn(move || {
            let read = reader.read(&key, None).map(|r| r.map(|r| r.document));
            let found = reader.exists(&key, None);
            let _ = tx.send((read, found));
        });
        // A guard against a hang, not a speed goal: before readers this never came.
        let (read, found) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("read while the writer is held");
        assert_eq!(read.unwrap().as_deref(), Some(r#"{"a": 1}"#));
        assert!(found.unwrap());
        drop(writer);
    }

    #[test]
    fn readers_see_every_write_committed_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = opened(&dir);
        let key = SessionKey::generate();
        assert_eq!(db.inner.readers.len(), READERS);
        for n in 0..3 {
            let row = Row {
                document: format!(r#"{{"n": {n}}}"#),
                expires_at: SystemTime::now() + Duration::from_secs(60),
            };
            if n == 0 {
                assert!(db.insert(&key, &row).unwrap());
            } else {
                let write = Row {
                    document: row.document.clone(),
                    expires_at: row.expires_at,
                };
                let mut write = Some(write);
                db.update(&key, None, &mut |_| {
                    Ok(write.take().map_or(Change::Keep, Change::Write))
                })
                .unwrap();
            }
            // Every reader sees the write just made on the writer.
            let sql = "SELECT session_data FROM filesession_session WHERE session_key = ?1";
            for (i, reader) in db.inner.readers.iter().enumerate() {
                let read: String = db
                    .inner
                    .run_on(
                        || crate::store::locked(reader),
                        "read",
                        |c| c.query_row(sql, [key.to_string()], |r| r.get(0)),
                    )
                    .unwrap();
                assert_eq!(read, row.document, "write {n}, reader {i}");
            }
        }
        db.delete(&key, None).unwrap();
        assert!(!db.exists(&key, None).unwrap());
        assert_eq!(db.read(&key, None).unwrap().map(|r| r.document), None);
    }
}
