//! Opening a SQLite store: the file (made 0600 if missing), the writer, the table in its
//! layout (filesession's, made and versioned by us, in WAL mode; or Django's, used as it is
//! and made as Django's migration makes it only if missing), then the readers.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::connections::{DEFAULT_BUSY_TIMEOUT, Inner, READERS, error, file_id};
use super::{Sqlite, millis_of};
use crate::store::StoreError;
use crate::store::db::django_table;
use crate::store::db::row_format::Layout;
use crate::store::db::schema::{check_schema, missing_or_foreign, schema_version};

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

/// The table of `request` locks: leases, beside the session table (never in it).
fn create_locks(locks: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {locks} (
             session_key TEXT PRIMARY KEY NOT NULL,
             token TEXT NOT NULL,
             until_ms INTEGER NOT NULL);"
    )
}

/// What a look at Django's table found.
enum DjangoTable {
    /// There (or just made), with these columns.
    Columns(Vec<String>),
    /// Missing, and nothing may be made.
    Missing,
    /// filesession's own layout.
    Ours,
}

impl Sqlite {
    /// `path` is what follows `sqlite://` in the URL: `/relative` or `//absolute`. With
    /// `create`, a missing file (made 0600) and table are created; without it (for
    /// `clearsessions`, where a mistyped path must not make a database) both must exist.
    pub(in crate::store::db) fn open(
        path: &str,
        table: &str,
        shown: &str,
        create: bool,
        layout: Layout,
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
            group: super::group::Group::default(),
        };
        let locks = format!("{table}_lock");
        inner.run("open the database", |c| {
            // No busy wait inside SQLite: `Inner::run` retries with the connection let go.
            c.busy_timeout(Duration::ZERO)?;
            // Django's database keeps its journal mode (and its durability settings).
            if layout == Layout::Filesession {
                if create {
                    c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))?;
                }
                c.execute_batch("PRAGMA synchronous=NORMAL")?;
            }
            Ok(())
        })?;
        match layout {
            Layout::Filesession => filesession_table(&inner, table, &locks, create)?,
            Layout::Django => django_table(&inner, table, &locks, create)?,
        }
        let has_locks: bool = inner.run("look for the lock table", |c| {
            c.query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [&locks],
                |r| r.get(0),
            )
        })?;
        // Opened once the table is there (and the file, in filesession's layout, in WAL
        // mode), before any request: the path is the file just checked.
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
            django: layout == Layout::Django,
            grouped: layout == Layout::Django,
            has_locks,
        })
    }
}

/// filesession's table: made (with its index, lock and schema tables) if missing with
/// `create`; used only if `filesession_schema` says we made it, in a version we read.
fn filesession_table(
    inner: &Inner,
    table: &str,
    locks: &str,
    create: bool,
) -> Result<(), StoreError> {
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
                 {}",
                create_locks(locks)
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
    check_schema(found, table, &inner.shown)
}

/// Django's table: used as it is if there (with Django's three columns, and not one
/// filesession made for its own format); with `create`, made as Django's migration makes
/// it if missing, and the lock table beside it. No `filesession_schema` row is written.
fn django_table(inner: &Inner, table: &str, locks: &str, create: bool) -> Result<(), StoreError> {
    let found = inner.run("open the session table", |c| {
        // IMMEDIATE when it may create: one creator at a time, the others then find it.
        let behavior = if create {
            TransactionBehavior::Immediate
        } else {
            TransactionBehavior::Deferred
        };
        let tx = c.transaction_with_behavior(behavior)?;
        let ours: bool = tx.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' \
             AND name = 'filesession_schema'",
            [],
            |r| r.get(0),
        )? && tx.query_row(
            "SELECT count(*) > 0 FROM filesession_schema WHERE table_name = ?1",
            [table],
            |r| r.get(0),
        )?;
        if ours {
            return Ok(DjangoTable::Ours);
        }
        let exists: bool = tx.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )?;
        if !exists && !create {
            return Ok(DjangoTable::Missing);
        }
        if !exists {
            for statement in django_table::sqlite_ddl(table) {
                tx.execute(&statement, [])?;
            }
        }
        let columns = tx
            .prepare("SELECT name FROM pragma_table_info(?1)")?
            .query_map([table], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        let djangos = django_table::COLUMNS
            .iter()
            .all(|c| columns.iter().any(|found| found == c));
        if create && djangos {
            tx.execute_batch(&create_locks(locks))?;
        }
        tx.commit()?;
        Ok(DjangoTable::Columns(columns))
    })?;
    match found {
        DjangoTable::Columns(columns) => django_table::check_columns(&columns, table, &inner.shown),
        DjangoTable::Missing => Err(django_table::unusable(&inner.shown, table, false)),
        DjangoTable::Ours => Err(django_table::unusable(&inner.shown, table, true)),
    }
}
