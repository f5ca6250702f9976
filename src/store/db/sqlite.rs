//! SQLite through rusqlite's bundled SQLite: one connection per store in WAL mode, with a
//! busy timeout for other processes' writes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::{Change, Database, Row, check_schema, schema_version, wait_or_time_out};
use crate::key::SessionKey;
use crate::store::{Lease, LeaseIssuer, StoreError};

/// How long a statement waits for another process's write to the database.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Sqlite {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    shown: String,
    table: String,
    locks: String,
}

/// Seconds since 1970, as `expire_date` holds them (before 1970: 0).
fn seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn time_of(seconds: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Sqlite {
    /// `path` is what follows `sqlite://` in the URL: `/relative` or `//absolute`.
    pub(super) fn open(path: &str, table: &str, shown: &str) -> Result<Sqlite, StoreError> {
        // dj-database-url: sqlite:///db.sqlite3 is the relative path db.sqlite3,
        // sqlite:////var/db.sqlite3 the absolute /var/db.sqlite3.
        let path = PathBuf::from(path.strip_prefix('/').unwrap_or(path));
        if path.as_os_str().is_empty() {
            return Err(StoreError::Unavailable(format!(
                "{shown}: give a file, as sqlite:///db.sqlite3"
            )));
        }
        let shown = format!("SQLite at {}", path.display());
        let unusable = |e: rusqlite::Error| StoreError::Backend {
            action: format!("{shown}: cannot open the database"),
            source: Box::new(e),
        };
        let created = !path.exists();
        let conn = Connection::open(&path).map_err(unusable)?;
        if created {
            restrict(&path).map_err(|e| StoreError::io("make private", &path, e))?;
        }
        conn.busy_timeout(BUSY_TIMEOUT).map_err(unusable)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(unusable)?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!("{shown}: journal mode is {mode}, not WAL");
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL")
            .map_err(unusable)?;
        let locks = format!("{table}_lock");
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS {table} (
                 session_key TEXT PRIMARY KEY NOT NULL,
                 session_data TEXT NOT NULL,
                 expire_date INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS {table}_expire_date ON {table} (expire_date);
             CREATE TABLE IF NOT EXISTS {locks} (
                 session_key TEXT PRIMARY KEY NOT NULL,
                 token TEXT NOT NULL,
                 until_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS filesession_schema (
                 table_name TEXT PRIMARY KEY NOT NULL,
                 version INTEGER NOT NULL);
             INSERT INTO filesession_schema (table_name, version)
                 VALUES ('{table}', {version}) ON CONFLICT DO NOTHING;
             COMMIT;",
            version = schema_version()
        ))
        .map_err(unusable)?;
        let found: i64 = conn
            .query_row(
                "SELECT version FROM filesession_schema WHERE table_name = ?1",
                [table],
                |r| r.get(0),
            )
            .map_err(unusable)?;
        check_schema(found, table, &shown)?;
        Ok(Sqlite {
            conn: Arc::new(Mutex::new(conn)),
            path,
            shown,
            table: table.to_owned(),
            locks,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        lock_conn(&self.conn)
    }

    fn error(&self, what: &'static str, e: rusqlite::Error) -> StoreError {
        error(&self.shown, &self.path, what, e)
    }
}

fn lock_conn(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    match conn.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A full disk is `Io` with `StorageFull` (507); everything else names the database and
/// keeps SQLite's error.
fn error(shown: &str, path: &Path, what: &'static str, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::io(
            what,
            path,
            io::Error::new(io::ErrorKind::StorageFull, e.to_string()),
        ),
        _ => StoreError::Backend {
            action: format!("{shown}: cannot {what}"),
            source: Box::new(e),
        },
    }
}

/// A database file this store made is readable by its owner only (0600), as session files.
fn restrict(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

impl Database for Sqlite {
    fn read(&self, key: &SessionKey) -> Result<Option<Row>, StoreError> {
        let sql = format!(
            "SELECT session_data, expire_date FROM {} WHERE session_key = ?1",
            self.table
        );
        self.conn()
            .query_row(&sql, [key.to_string()], |r| {
                Ok(Row {
                    document: r.get(0)?,
                    expires_at: time_of(r.get(1)?),
                })
            })
            .optional()
            .map_err(|e| self.error("load a session", e))
    }

    fn insert(&self, key: &SessionKey, row: &Row) -> Result<bool, StoreError> {
        let sql = format!(
            "INSERT INTO {} (session_key, session_data, expire_date) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
            self.table
        );
        let inserted = self
            .conn()
            .execute(
                &sql,
                params![key.to_string(), row.document, seconds(row.expires_at)],
            )
            .map_err(|e| self.error("create a session", e))?;
        Ok(inserted == 1)
    }

    fn update(
        &self,
        key: &SessionKey,
        decide: &mut dyn FnMut(Option<Row>) -> Result<Change, StoreError>,
    ) -> Result<bool, StoreError> {
        let table = &self.table;
        let mut conn = self.conn();
        let fail = |e| self.error("save a session", e);
        // IMMEDIATE: the write lock is taken before the read, so the row read is the one
        // written over (no other writer between).
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        let row = tx
            .query_row(
                &format!("SELECT session_data, expire_date FROM {table} WHERE session_key = ?1"),
                [key.to_string()],
                |r| {
                    Ok(Row {
                        document: r.get(0)?,
                        expires_at: time_of(r.get(1)?),
                    })
                },
            )
            .optional()
            .map_err(fail)?;
        match decide(row)? {
            Change::Keep => return Ok(true),
            Change::Write(row) => {
                tx.execute(
                    &format!(
                        "UPDATE {table} SET session_data = ?2, expire_date = ?3 \
                         WHERE session_key = ?1"
                    ),
                    params![key.to_string(), row.document, seconds(row.expires_at)],
                )
                .map_err(fail)?;
            }
            Change::Move(new_key, row) => {
                let inserted = tx
                    .execute(
                        &format!(
                            "INSERT INTO {table} (session_key, session_data, expire_date) \
                             VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING"
                        ),
                        params![new_key.to_string(), row.document, seconds(row.expires_at)],
                    )
                    .map_err(fail)?;
                if inserted == 0 {
                    return Ok(false); // dropped: rolled back
                }
                tx.execute(
                    &format!("DELETE FROM {table} WHERE session_key = ?1"),
                    [key.to_string()],
                )
                .map_err(fail)?;
            }
        }
        tx.commit().map_err(fail)?;
        Ok(true)
    }

    fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        let sql = format!("DELETE FROM {} WHERE session_key = ?1", self.table);
        self.conn()
            .execute(&sql, [key.to_string()])
            .map_err(|e| self.error("delete a session", e))?;
        Ok(())
    }

    fn exists(&self, key: &SessionKey) -> Result<bool, StoreError> {
        let sql = format!("SELECT 1 FROM {} WHERE session_key = ?1", self.table);
        let found: Option<i64> = self
            .conn()
            .query_row(&sql, [key.to_string()], |r| r.get(0))
            .optional()
            .map_err(|e| self.error("look a session up", e))?;
        Ok(found.is_some())
    }

    fn delete_expired(&self, now: SystemTime, batch: u32) -> Result<u64, StoreError> {
        let table = &self.table;
        let sql = format!(
            "DELETE FROM {table} WHERE session_key IN \
             (SELECT session_key FROM {table} WHERE expire_date <= ?1 LIMIT ?2)"
        );
        let deleted = self
            .conn()
            .execute(&sql, params![seconds(now), batch])
            .map_err(|e| self.error("delete expired sessions", e))?;
        Ok(deleted as u64)
    }

    fn count_live(&self, now: SystemTime) -> Result<u64, StoreError> {
        let sql = format!("SELECT count(*) FROM {} WHERE expire_date > ?1", self.table);
        let n: i64 = self
            .conn()
            .query_row(&sql, [seconds(now)], |r| r.get(0))
            .map_err(|e| self.error("count sessions", e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn cheap_reads(&self) -> bool {
        true
    }

    fn lock(
        &self,
        issuer: LeaseIssuer,
        key: &SessionKey,
        wait: Duration,
        lease: Duration,
    ) -> Result<Lease, StoreError> {
        let token = uuid::Uuid::new_v4().to_string();
        let take = format!(
            "INSERT INTO {locks} (session_key, token, until_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (session_key) DO UPDATE SET token = excluded.token, \
             until_ms = excluded.until_ms WHERE {locks}.until_ms <= ?4",
            locks = self.locks
        );
        let start = Instant::now();
        loop {
            let now = SystemTime::now();
            let taken = self
                .conn()
                .execute(
                    &take,
                    params![key.to_string(), token, millis(now + lease), millis(now)],
                )
                .map_err(|e| self.error("take a session lock", e))?;
            if taken == 1 {
                let conn = Arc::clone(&self.conn);
                let release = format!(
                    "DELETE FROM {} WHERE session_key = ?1 AND token = ?2",
                    self.locks
                );
                let shown = self.shown.clone();
                return Ok(Lease::new(issuer, *key, token, move |key, token| {
                    let done =
                        lock_conn(&conn).execute(&release, [key.to_string(), token.to_owned()]);
                    if let Err(e) = done {
                        log::warn!(
                            "{shown}: cannot release the lock of session {}: {e}; it expires \
                             by itself",
                            key.short()
                        );
                    }
                }));
            }
            wait_or_time_out(key, start, wait)?;
        }
    }
}
