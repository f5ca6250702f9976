//! DbStore: sessions in a database table, Django's default engine (`SESSION_ENGINE=db`):
//! SQLite embedded (feature `sqlite`, on by default), PostgreSQL for many machines
//! (feature `postgres`).
//!
//! # The table
//!
//! `filesession_session` (setting `SESSION_DB_TABLE`), created at start if missing:
//!
//! | column | SQLite | PostgreSQL | holds |
//! |---|---|---|---|
//! | `session_key` | `TEXT PRIMARY KEY` | `varchar(36) PRIMARY KEY` | the key, a UUID v4 |
//! | `session_data` | `TEXT` | `text` | the JSON document a session file holds |
//! | `expire_date` | `INTEGER`, Unix seconds | `timestamptz` | when it ends; indexed |
//!
//! A table of this layout never holds Django's data, and Django's own table is never
//! opened in this layout (refused, not adopted). The version of the layout is kept in
//! `filesession_schema` (one row per table); a table made by a newer layout is refused
//! rather than misread.
//!
//! # The guarantees, as the file store's
//!
//! * **Exclusive create:** `INSERT ... ON CONFLICT DO NOTHING`; a key that exists is never
//!   overwritten (a fresh key is tried).
//! * **Merge saves in one transaction:** the row is read and locked (SQLite
//!   `BEGIN IMMEDIATE`, PostgreSQL `SELECT ... FOR UPDATE`), the request's changes applied
//!   to it ([`ChangeSet::merge_into`], with its skip-write policy) and written, so two
//!   requests changing different keys both keep their change.
//! * **No resurrection:** a row deleted meanwhile makes the save fail with
//!   [`StoreError::Deleted`], writing nothing.
//! * **`request` locking** across processes and machines: PostgreSQL, a session-level
//!   advisory lock (`pg_advisory_lock(classid, objid)` under `lock_timeout`, keyed by the
//!   table and the session) held on a pooled connection until the request ends, which also
//!   reads and writes the session for its holder, released at once if the holder dies; SQLite, a lease row in `<table>_lock` (a random token with an expiry),
//!   since SQLite's own locks cover the whole database. The token names its holder process
//!   (`store::holder`): a waiter on the same machine that finds it dead takes the lock at
//!   once rather than wait out the lease. Waits are bounded by the lock timeout
//!   ([`StoreError::LockTimeout`], 503).
//! * **A file removed or replaced under the store** (SQLite) is
//!   [`StoreError::DatabaseGone`], checked after every statement, before anything is
//!   acknowledged.
//! * **Expiry enforced on load**; `clearsessions` deletes expired rows in batches by the
//!   `expire_date` index.
//!
//! # Django's format
//!
//! [`DbStore::open_django`] (`SESSION_FORMAT=django`, `SESSION_ENGINE=db`) shares the
//! sessions of a running Django 5.2 site: its table (`django_session` by default), its rows,
//! its keys.
//!
//! * **The table is Django's.** Opened as it is, never altered; checked to have
//!   `session_key`, `session_data` and `expire_date` (else [`StoreError::Unavailable`]
//!   names it); no `filesession_schema` row is written for it, and a table filesession made
//!   for its own format is refused. Only if it is missing is it created, exactly as
//!   Django's migration `sessions 0001` creates it (SQLite: `session_key varchar(40) NOT
//!   NULL PRIMARY KEY`, `session_data text NOT NULL`, `expire_date datetime NOT NULL` and
//!   the index `<table>_expire_date_<digest>`; PostgreSQL: `expire_date timestamp with time
//!   zone`, and a `varchar_pattern_ops` index `<table>_session_key_<digest>_like`, the
//!   names as Django's schema editor makes them). Django's `migrate` then wants
//!   `--fake-initial` once, as for any table made before it ran.
//! * **SQLite:** the database's journal mode is left as it is (Django's is `delete`; it is
//!   never switched to WAL), and `expire_date` is Django's naive UTC text
//!   (`2030-01-02 03:04:05.250000`), bound and compared as text as Django compares it: so
//!   Django's `USE_TZ = True` (its default). The `request` locks live in `<table>_lock`, a
//!   table of their own beside Django's. Django's durability is kept too (its
//!   `synchronous=FULL`: a COMMIT makes, syncs and removes a journal, about four `fsync`s):
//!   saves of this process that arrive together share one transaction and one COMMIT
//!   (group commit, `sqlite/group.rs`: each in its own savepoint, in turn, so merges are
//!   as if one after another; each answered only once the COMMIT is on disk; a failed COMMIT
//!   fails them all; reads never see a group's uncommitted writes). Saves of one session
//!   still take turns in a server (`App::turn`), so one session's writes get one COMMIT each.
//! * **Rows:** `session_data` is Django's `SessionBase.encode` of the dictionary (signed
//!   with `SECRET_KEY` and the salt `SESSION_SIGNING_SALT`; verified with `SECRET_KEY` then
//!   `SECRET_KEY_FALLBACKS`), the expiry rule in `_session_expiry` as Django keeps it, and
//!   the session's end in `expire_date`, enforced on load as Django's `expire_date > now`.
//!   A row no key verifies (tampered, signed with another key) is no session
//!   ([`StoreError::Unverified`]: the middleware leaves its cookie alone, as Django; logged
//!   at `warn` at most once a minute), never a 5xx, and never written into.
//! * **Keys** are Django's (32 of `[a-z0-9]`; a cookie may name 8 to 40); a UUID key is no
//!   session of this store and no statement runs with it.
//! * **Guarantees:** every one above holds among filesession's own writers (merge saves
//!   under the row's lock, no resurrection, exclusive create, `request` locking, fresh
//!   reads). Django's own saves are blind whole-row writes (`UPDATE ... SET session_data`,
//!   last writer wins) that take none of our locks: a Django request and a filesession
//!   request changing one session at once may lose one's change, as two Django requests
//!   may. Neither resurrects a deleted session. `clearsessions` deletes the rows Django's
//!   `clear_expired` deletes (`expire_date < now`).

// Built without either database, DbStore only says which feature a URL needs.
#![cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]

use std::time::{Duration, SystemTime};

use super::{
    Acquired, ChangeSet, ExpiredDeletion, Lease, Loaded, LockConfig, LockIssuer, LockPreflight,
    Merged, Record, SessionLock, SessionStore, StoreError,
};
#[cfg(test)]
use crate::config::DEFAULT_DB_TABLE;
use crate::config::Locking;
use crate::key::SessionKey;

// The two databases; the table's name and layout version, which both check, and Django's
// table; opening a store; what rows hold (filesession's or Django's format); the cleanup
// of expired rows. This file: the Database trait and DbStore over it.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod django_table;
mod expired_deletion;
mod open;
#[cfg(feature = "postgres")]
mod postgres;
mod row_format;
mod schema;
#[cfg(feature = "sqlite")]
mod sqlite;

use row_format::RowFormat;
#[cfg(test)]
use schema::check_table_name;

/// The largest `session_data` written or read: 1 MiB, as a session file.
const MAX_DOCUMENT_SIZE: usize = 1 << 20;
/// How long a request lock outlives the lock timeout (SQLite's lease), in case its holder
/// dies.
const LOCK_LEASE_EXTRA: Duration = Duration::from_secs(30);
/// Attempts at a fresh key before giving up (a collision of 122 random bits never happens).
const KEY_ATTEMPTS: usize = 16;

/// One row: the JSON document and when the session ends.
pub(crate) struct Row {
    pub(crate) document: String,
    pub(crate) expires_at: SystemTime,
}

/// What a transaction over one row does, decided from the row it read.
pub(crate) enum Change {
    /// Nothing to write.
    Keep,
    /// Replace the row's document and expiry.
    Write(Row),
    /// Insert this row under a new key and delete the old one (a cycle); if the new key is
    /// taken, nothing is done.
    Move(SessionKey, Row),
}

/// The handful of statements a database runs for [`DbStore`]. Every statement is
/// parameterised; only the table name, checked to be a plain identifier, is written into
/// the SQL.
pub(crate) trait Database: Send + Sync {
    /// The row of `key`, if any. With `lease` (the request's lock), on what the lease holds
    /// if it holds a connection (PostgreSQL): a holder never waits for another.
    fn read(&self, key: &SessionKey, lease: Option<&Lease>) -> Result<Option<Row>, StoreError>;
    /// Inserts a row; `Ok(false)` if the key exists (nothing changed).
    fn insert(&self, key: &SessionKey, row: &Row) -> Result<bool, StoreError>;
    /// In one transaction, with the row locked: `decide` gets the row (`None`: missing)
    /// and what it returns is applied. `Ok(false)`: a [`Change::Move`]'s new key was taken,
    /// nothing changed. With `lease` (`request` locking), the transaction first checks that
    /// the request still holds the session's lock, else writes nothing
    /// ([`StoreError::LockTimeout`]).
    fn update(
        &self,
        key: &SessionKey,
        lease: Option<&Lease>,
        decide: &mut dyn FnMut(Option<Row>) -> Result<Change, StoreError>,
    ) -> Result<bool, StoreError>;
    /// Deletes the row of `key`, if any (with `lease`: as [`read`](Database::read)).
    fn delete(&self, key: &SessionKey, lease: Option<&Lease>) -> Result<(), StoreError>;
    /// Whether a row of `key` exists, expired or not (with `lease`: as
    /// [`read`](Database::read)).
    fn exists(&self, key: &SessionKey, lease: Option<&Lease>) -> Result<bool, StoreError>;
    /// Deletes at most `batch` rows that ended at or before `now`; how many.
    fn delete_expired(&self, now: SystemTime, batch: u32) -> Result<u64, StoreError>;
    /// How many rows end after `now`.
    fn count_live(&self, now: SystemTime) -> Result<u64, StoreError>;
    /// Whether a read costs next to nothing (an embedded database): then a save that may
    /// change nothing reads first and skips its write transaction when it would.
    fn cheap_reads(&self) -> bool;
    /// How long a statement may wait for the database itself (SQLite: another process's
    /// write lock): the store's lock timeout. Default: the database's own setting.
    fn set_wait(&self, timeout: Duration) {
        let _ = timeout;
    }
    /// Takes the request lock of `key`, waiting at most `wait`; a lease (SQLite) lasts
    /// `lease` if its holder dies.
    fn lock(&self, key: &SessionKey, wait: Duration, lease: Duration) -> Result<Lease, StoreError>;
}

/// Sessions as rows of a database table: Django's `django.contrib.sessions.backends.db`.
///
/// ```
/// use std::sync::Arc;
/// use filesession::{DbStore, Session, SessionConfig};
///
/// let dir = tempfile::tempdir()?;
/// let url = format!("sqlite:///{}", dir.path().join("db.sqlite3").display());
/// let store = Arc::new(DbStore::open(&url, "filesession_session")?);
/// let mut session = Session::new(store.clone(), None, SessionConfig::default());
/// session.insert("sname", "abc");
/// session.save()?;
/// let key = session.session_key().copied();
/// let again = Session::new(store, key, SessionConfig::default());
/// assert_eq!(again.get("sname"), Some(&"abc".into()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DbStore {
    db: Box<dyn Database>,
    format: RowFormat,
    shown: String,
    lock_config: LockConfig,
    issuer: LockIssuer,
}

impl std::fmt::Debug for DbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbStore")
            .field("database", &self.shown)
            .field("format", &self.format.name())
            .field("lock_config", &self.lock_config)
            .finish_non_exhaustive()
    }
}

impl DbStore {
    /// Sets the locking mode and how long a request waits for a session's lock
    /// (`SESSION_LOCKING`, `SESSION_LOCK_TIMEOUT`); on SQLite the timeout is also how long a
    /// statement waits while another process writes. Default: [`LockConfig::default`].
    pub fn with_lock_config(mut self, lock_config: LockConfig) -> Self {
        self.lock_config = lock_config;
        self.db.set_wait(lock_config.timeout);
        self
    }

    /// Sets the locking mode alone ([`with_lock_config`](DbStore::with_lock_config)).
    pub fn with_locking(mut self, locking: Locking) -> Self {
        self.lock_config.locking = locking;
        self
    }

    /// Sets the lock timeout alone ([`with_lock_config`](DbStore::with_lock_config)).
    pub fn with_lock_timeout(self, timeout: Duration) -> Self {
        let lock_config = LockConfig {
            timeout,
            ..self.lock_config
        };
        self.with_lock_config(lock_config)
    }

    /// The locking mode and the lock timeout.
    pub fn lock_config(&self) -> LockConfig {
        self.lock_config
    }

    /// The database, as it may be shown (no password).
    pub fn database(&self) -> &str {
        &self.shown
    }

    fn lease(&self) -> Duration {
        self.lock_config.timeout + LOCK_LEASE_EXTRA
    }

    /// The live record of a row; `None` if it ended or its document is corrupt (logged);
    /// in Django's format [`StoreError::Unverified`] if it does not verify.
    fn live(&self, key: &SessionKey, row: Row) -> Result<Option<Record>, StoreError> {
        let record = self.decode(key, &row)?;
        Ok(record.filter(|record| !record.is_expired(SystemTime::now())))
    }

    fn decode(&self, key: &SessionKey, row: &Row) -> Result<Option<Record>, StoreError> {
        self.format.decode(key, row)
    }

    fn row(&self, key: Option<&SessionKey>, record: &Record) -> Result<Row, StoreError> {
        self.format.row(key, record)
    }

    /// In `request` mode, the lock for a write: the lease given back if it is this
    /// session's, else a fresh one. In `merge` mode none (each write is one transaction).
    fn lock_for_write(
        &self,
        key: &SessionKey,
        held: Option<SessionLock>,
    ) -> Result<Option<Lease>, StoreError> {
        if let Some(lease) = held.and_then(|lock| lock.take::<Lease>(self.issuer, key).ok()) {
            return Ok(Some(lease));
        }
        match self.lock_config.locking {
            Locking::Merge => Ok(None),
            Locking::Request => self
                .db
                .lock(key, self.lock_config.timeout, self.lease())
                .map(Some),
        }
    }

    /// Reads the live session under a lease the caller holds.
    fn load_with(
        &self,
        key: &SessionKey,
        lease: Option<Lease>,
    ) -> Result<Option<Loaded>, StoreError> {
        let Some(row) = self.db.read(key, lease.as_ref())? else {
            return Ok(None);
        };
        Ok(self.live(key, row)?.map(|record| Loaded {
            record,
            lock: lease.map(|lease| SessionLock::new(self.issuer, *key, lease)),
        }))
    }

    /// The newest copy with `changes` applied, as `decide` sees the locked row.
    fn merged(
        &self,
        key: &SessionKey,
        row: Option<Row>,
        changes: &ChangeSet,
    ) -> Result<Merged, StoreError> {
        let Some(row) = row else {
            return Err(StoreError::Deleted(*key));
        };
        // Data that does not verify is never written into (nor adopted): as if deleted.
        let stored = match self.decode(key, &row) {
            Err(StoreError::Unverified(_)) => return Err(StoreError::Deleted(*key)),
            other => other?,
        };
        Ok(changes.merge_into(stored, SystemTime::now()))
    }
}

impl SessionStore for DbStore {
    fn load(&self, key: &SessionKey) -> Result<Option<Loaded>, StoreError> {
        if !self.format.accepts(key) {
            return Ok(None);
        }
        let lease = match self.lock_config.locking {
            Locking::Merge => None,
            Locking::Request => Some(self.db.lock(key, self.lock_config.timeout, self.lease())?),
        };
        self.load_with(key, lease)
    }

    fn create(&self, record: &Record) -> Result<SessionKey, StoreError> {
        let row = self.row(None, record)?;
        for _ in 0..KEY_ATTEMPTS {
            let key = self.format.new_key();
            if self.db.insert(&key, &row)? {
                return Ok(key);
            }
        }
        Err(StoreError::Unavailable(format!(
            "{}: no free session key after {KEY_ATTEMPTS} attempts",
            self.shown
        )))
    }

    fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        lock: Option<SessionLock>,
    ) -> Result<Record, StoreError> {
        if !self.format.accepts(key) {
            return Err(StoreError::Deleted(*key));
        }
        let _lease = self.lock_for_write(key, lock)?;
        if self.db.cheap_reads()
            && let Some(row) = self.db.read(key, _lease.as_ref())?
            && let Ok(Some(stored)) = self.decode(key, &row)
            && let Merged::Unchanged(record) = changes.merge_into(Some(stored), SystemTime::now())
        {
            // Nothing would change: the save takes effect at this read (a write of the same
            // values in the transaction would be indistinguishable), and takes no write lock.
            return Ok(record);
        }
        let mut saved = None;
        self.db.update(key, _lease.as_ref(), &mut |row| {
            Ok(match self.merged(key, row, changes)? {
                Merged::Unchanged(record) => {
                    saved = Some(record);
                    Change::Keep
                }
                Merged::Changed(record) => {
                    let row = self.row(Some(key), &record)?;
                    saved = Some(record);
                    Change::Write(row)
                }
            })
        })?;
        saved.ok_or(StoreError::Deleted(*key))
    }

    fn cycle(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        lock: Option<SessionLock>,
    ) -> Result<(SessionKey, Record), StoreError> {
        if !self.format.accepts(key) {
            return Err(StoreError::Deleted(*key));
        }
        let _lease = self.lock_for_write(key, lock)?;
        for _ in 0..KEY_ATTEMPTS {
            let new_key = self.format.new_key();
            let mut moved = None;
            let applied = self.db.update(key, _lease.as_ref(), &mut |row| {
                let record = self.merged(key, row, changes)?.into_record();
                let row = self.row(Some(key), &record)?;
                moved = Some(record);
                Ok(Change::Move(new_key, row))
            })?;
            if let (true, Some(record)) = (applied, moved) {
                return Ok((new_key, record));
            }
        }
        Err(StoreError::Unavailable(format!(
            "{}: no free session key after {KEY_ATTEMPTS} attempts",
            self.shown
        )))
    }

    fn delete(&self, key: &SessionKey, lock: Option<SessionLock>) -> Result<(), StoreError> {
        if !self.format.accepts(key) {
            return Ok(());
        }
        let _lease = self.lock_for_write(key, lock)?;
        self.db.delete(key, _lease.as_ref())
    }

    fn exists(&self, key: &SessionKey) -> Result<bool, StoreError> {
        if !self.format.accepts(key) {
            return Ok(false);
        }
        self.db.exists(key, None)
    }

    fn parse_key(&self, cookie_value: &str) -> Option<SessionKey> {
        self.format.parse_key(cookie_value)
    }

    fn preflight(&self) -> Option<&dyn LockPreflight> {
        // In merge mode each write is one short transaction: nothing to wait for first.
        (self.lock_config.locking == Locking::Request).then_some(self as &dyn LockPreflight)
    }

    fn expired_deletion(&self) -> Option<&dyn ExpiredDeletion> {
        Some(self)
    }
}

impl LockPreflight for DbStore {
    fn acquire(&self, key: &SessionKey, wait: Duration) -> Result<Option<Acquired>, StoreError> {
        if self.lock_config.locking == Locking::Merge || !self.format.accepts(key) {
            return Ok(None);
        }
        let lease = self.db.lock(key, wait, self.lease())?;
        Ok(self
            .db
            .exists(key, Some(&lease))?
            .then(|| Acquired::Locked(SessionLock::new(self.issuer, *key, lease))))
    }

    fn load_acquired(
        &self,
        key: &SessionKey,
        acquired: Acquired,
    ) -> Result<Option<Loaded>, StoreError> {
        match acquired {
            Acquired::Locked(lock) => match lock.take::<Lease>(self.issuer, key) {
                Ok(lease) => self.load_with(key, Some(lease)),
                // Not this session's lock: let it go and load afresh.
                Err(other) => {
                    drop(other);
                    self.load(key)
                }
            },
            // Not this session's lock: let it go and load afresh.
            other => {
                drop(other);
                self.load(key)
            }
        }
    }
}

/// The lock a request held is no longer its own (its lease ran out while the handler ran
/// past the lock timeout and its margin, or its connection to PostgreSQL dropped): nothing
/// is written, as for a lock not had (503).
pub(crate) fn lost_lock(key: &SessionKey) -> StoreError {
    StoreError::LockTimeout {
        key: *key,
        waited: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests;
#[cfg(all(test, feature = "sqlite"))]
mod tests_django;
