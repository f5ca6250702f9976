//! The connections of a SQLite store: one writer and [`READERS`] readers to one file, each
//! statement retried while the database is busy with the connection let go (so no
//! connection is held while waiting), and the file checked to still be at its path after
//! each statement.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode};

use crate::store::StoreError;

/// How long a statement retries while another process holds the database's write lock,
/// until `Database::set_wait` gives the store's lock timeout.
pub(super) const DEFAULT_BUSY_TIMEOUT: Duration = crate::config::DEFAULT_LOCK_TIMEOUT;
/// Pause between two tries of a busy statement (the connection is free meanwhile).
const BUSY_PAUSE: Duration = Duration::from_millis(1);
/// How many reader connections a store opens beside its writer: a read runs on the writer
/// when it is free, else on a free reader, so that reads overlap each other and the
/// writer's statements.
pub(super) const READERS: usize = 4;

/// The connections and what messages say of them; shared with the leases (which release
/// themselves on drop).
pub(super) struct Inner {
    /// The writer: every statement that writes, and the statements of the schema.
    pub(super) conn: Mutex<Connection>,
    /// The readers ([`READERS`], `PRAGMA query_only`): loads and lookups.
    pub(super) readers: Vec<Mutex<Connection>>,
    /// The reader the next read tries first.
    pub(super) next_reader: std::sync::atomic::AtomicUsize,
    pub(super) path: PathBuf,
    pub(super) shown: String,
    /// The device and inode of the file opened: the path must still name it.
    pub(super) file: (u64, u64),
    /// How long a busy statement is retried, in milliseconds (the lock timeout).
    pub(super) busy_timeout_ms: std::sync::atomic::AtomicU64,
    /// The group commits of saves (Django's rollback-journal database).
    pub(super) group: super::group::Group,
}

impl Inner {
    /// Runs `f` on the connection; while the database is busy (another process writes),
    /// tries again with the connection let go, until the busy timeout (the lock timeout).
    /// Never inside a group's open transaction (the writer is taken only between groups).
    pub(super) fn run<T>(
        &self,
        what: &'static str,
        f: impl FnMut(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let writer = || loop {
            let conn = crate::store::locked(&self.conn);
            if conn.is_autocommit() {
                return conn;
            }
            // Checked with the writer held: no member is between statements of its own.
            if !self.group.in_a_group() {
                // Left open by no one's group (a failed ROLLBACK): ended here.
                let _ = conn.execute_batch("ROLLBACK");
                return conn;
            }
            drop(conn);
            self.group.wait_a_little(BUSY_PAUSE);
        };
        self.run_on(writer, what, f)
    }

    /// How long a busy statement is retried (the lock timeout).
    pub(super) fn busy_timeout(&self) -> Duration {
        Duration::from_millis(
            self.busy_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// [`run`](Inner::run) for a statement that only reads: on the writer if it is free
    /// (its page cache is the one the last write left current), else on a free reader, else
    /// on the next reader in turn. So a read never waits for a write of this process. Never
    /// on the writer inside a transaction (a group's): a read sees committed data only.
    pub(super) fn read<T>(
        &self,
        what: &'static str,
        f: impl FnMut(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let n = self.readers.len();
        if n == 0 {
            return self.run(what, f);
        }
        let connection = || {
            if let Ok(writer) = self.conn.try_lock()
                && writer.is_autocommit()
            {
                return writer;
            }
            let first = self
                .next_reader
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (0..n)
                .find_map(|i| self.readers[(first + i) % n].try_lock().ok())
                .unwrap_or_else(|| crate::store::locked(&self.readers[first % n]))
        };
        self.run_on(connection, what, f)
    }

    /// Runs `f` on the connection `lock` gives, retrying while the database is busy (the
    /// connection let go between tries).
    pub(super) fn run_on<'a, T>(
        &self,
        lock: impl Fn() -> MutexGuard<'a, Connection>,
        what: &'static str,
        mut f: impl FnMut(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let busy_timeout = self.busy_timeout();
        loop {
            let result = {
                let mut conn = lock();
                f(&mut conn)
            };
            match result {
                Err(e) if is_busy(&e) && start.elapsed() < busy_timeout => {
                    std::thread::sleep(BUSY_PAUSE);
                }
                other => {
                    // Committed into a file no longer at the path is not kept: not an answer.
                    self.still_at_its_path()?;
                    return other.map_err(|e| error(&self.shown, &self.path, what, e));
                }
            }
        }
    }

    /// `Err(DatabaseGone)` unless the path still names the file opened. A `stat`, never an
    /// open (closing a descriptor of the database would drop SQLite's locks).
    pub(super) fn still_at_its_path(&self) -> Result<(), StoreError> {
        match file_id(&self.path) {
            Ok(id) if id == self.file => Ok(()),
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StoreError::io("inspect the database", &self.path, e))
            }
            _ => Err(StoreError::DatabaseGone(self.path.clone())),
        }
    }
}

/// The device and inode of the file at `path`.
pub(super) fn file_id(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// A full disk is `Io` with `StorageFull` (507); a database still busy after the busy
/// timeout, or any other failure, names the database and keeps SQLite's error (503).
pub(super) fn error(
    shown: &str,
    path: &Path,
    what: &'static str,
    e: rusqlite::Error,
) -> StoreError {
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
