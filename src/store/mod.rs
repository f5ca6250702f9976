//! Where sessions live: the [`SessionStore`] trait, what it stores, and its errors.

use std::any::Any;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use crate::expiry::Expiry;
use crate::key::SessionKey;

pub(crate) mod file;

mod lock;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

/// The data of one session as stored: the dictionary, the expiry rule and the absolute time
/// the session ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The session dictionary.
    pub data: Map<String, Value>,
    /// The expiry rule set by `Session::set_expiry`.
    pub expiry: Expiry,
    /// When the session ends; a load at or after this time finds no session.
    pub expires_at: SystemTime,
}

impl Record {
    /// Whether the session has ended at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.expires_at
    }
}

/// What one request changed in a session: the unit a save applies on top of the newest
/// stored copy, so that concurrent requests changing different keys both keep their change.
///
/// For one key the last save wins. `clear` (and `flush`) wipes what was stored before.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeSet {
    /// The stored dictionary was wiped before `writes` are applied.
    pub cleared: bool,
    /// Keys set, each with its last value.
    pub writes: Map<String, Value>,
    /// Keys removed, kept apart from `writes` because JSON `null` is a value.
    pub removals: Vec<String>,
    /// The expiry rule, if this request set one.
    pub expiry: Option<Expiry>,
    /// `SESSION_COOKIE_AGE`, to compute the absolute expiry at save time.
    pub cookie_age: Duration,
}

impl ChangeSet {
    /// A change set with nothing in it yet.
    pub fn new(cookie_age: Duration) -> Self {
        ChangeSet {
            cookie_age,
            ..ChangeSet::default()
        }
    }

    /// Records `data[key] = value`.
    pub fn set(&mut self, key: &str, value: Value) {
        self.removals.retain(|k| k != key);
        self.writes.insert(key.to_owned(), value);
    }

    /// Records `del data[key]`.
    pub fn remove(&mut self, key: &str) {
        self.writes.remove(key);
        if !self.removals.iter().any(|k| k == key) {
            self.removals.push(key.to_owned());
        }
    }

    /// Records `data.clear()`: everything stored before is dropped.
    pub fn clear(&mut self) {
        self.cleared = true;
        self.writes.clear();
        self.removals.clear();
    }

    /// Applies the changes to `record` (the newest stored copy, or an empty one), and sets its
    /// absolute expiry for a save at `now`.
    pub fn apply_to(&self, record: &mut Record, now: SystemTime) {
        if self.cleared {
            record.data.clear();
        }
        for key in &self.removals {
            record.data.remove(key);
        }
        for (key, value) in &self.writes {
            record.data.insert(key.clone(), value.clone());
        }
        if let Some(expiry) = self.expiry {
            record.expiry = expiry;
        }
        record.expires_at = record.expiry.date(now, self.cookie_age);
    }

    /// Whether applying the changes to `stored` would change its data or expiry rule.
    /// Compares only the keys this request touched.
    pub fn alters(&self, stored: &Record) -> bool {
        (self.cleared && !stored.data.is_empty())
            || self.expiry.is_some_and(|e| e != stored.expiry)
            || self.removals.iter().any(|k| stored.data.contains_key(k))
            || self
                .writes
                .iter()
                .any(|(k, v)| stored.data.get(k) != Some(v))
    }

    /// A new record holding only these changes, as a save at `now` would write it.
    pub fn to_new_record(&self, now: SystemTime) -> Record {
        let mut record = Record {
            data: Map::new(),
            expiry: Expiry::Default,
            expires_at: now,
        };
        self.apply_to(&mut record, now);
        record
    }
}

/// A session's lock, held from load to the end of the request in
/// [`Locking::Request`] mode. Dropping it releases the lock.
pub struct SessionLock(Box<dyn Any + Send>);

impl SessionLock {
    /// Wraps a store's own lock guard.
    pub fn new<T: Any + Send>(guard: T) -> Self {
        SessionLock(Box::new(guard))
    }

    /// The store's own guard if it is of type `T`, else the lock back.
    ///
    /// # Errors
    /// The guard is of another type: the lock is given back unchanged.
    pub fn into_inner<T: Any>(self) -> Result<T, SessionLock> {
        self.0.downcast::<T>().map(|b| *b).map_err(SessionLock)
    }
}

impl fmt::Debug for SessionLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionLock")
    }
}

/// A session found by [`SessionStore::load`].
#[derive(Debug)]
pub struct Loaded {
    /// Its stored data.
    pub record: Record,
    /// Its lock, held until the session is saved or dropped, in `request` locking mode.
    pub lock: Option<SessionLock>,
}

/// How concurrent requests on one session are kept from losing each other's changes.
/// Setting `SESSION_LOCKING`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Locking {
    /// Default. A save locks the session for a few microseconds, re-reads the newest copy,
    /// applies only what this request changed, and writes. Requests never wait for each
    /// other's handlers; for one key the last save wins.
    #[default]
    Merge,
    /// The session's lock is held from its first access until the end of the request, as
    /// PHP does: requests of one session run one after the other, so a read-modify-write
    /// (a visit counter) is exact.
    Request,
}

impl Locking {
    /// Parses `merge` or `request`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "merge" => Some(Locking::Merge),
            "request" => Some(Locking::Request),
            _ => None,
        }
    }
}

/// What [`SessionStore::clear_expired`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClearReport {
    /// Expired sessions removed.
    pub expired: u64,
    /// Corrupt session files removed.
    pub corrupt: u64,
    /// Leftovers of crashed writes removed.
    pub leftovers: u64,
    /// Live sessions kept.
    pub kept: u64,
    /// Entries left alone: not session files, symlinks, directories, locked, or too young.
    pub skipped: u64,
}

/// A pass of `clear_expired` done in steps ([`SessionStore::sweep_step`]), so that a server
/// can clean up between requests without making any wait more than a few milliseconds.
pub struct Sweep {
    cursor: Option<Box<dyn Any + Send>>,
    report: ClearReport,
    scanned: u64,
    now: SystemTime,
}

impl Default for Sweep {
    fn default() -> Self {
        Sweep::new()
    }
}

impl fmt::Debug for Sweep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sweep")
            .field("in_progress", &self.cursor.is_some())
            .field("scanned", &self.scanned)
            .field("report", &self.report)
            .finish()
    }
}

impl Sweep {
    /// A sweep that has not started.
    pub fn new() -> Self {
        Sweep {
            cursor: None,
            report: ClearReport::default(),
            scanned: 0,
            now: SystemTime::now(),
        }
    }

    /// Starts a new pass over `cursor`, the store's own position.
    pub fn begin(&mut self, cursor: Box<dyn Any + Send>) {
        *self = Sweep {
            cursor: Some(cursor),
            ..Sweep::new()
        };
    }

    /// Whether a pass is under way.
    pub fn in_progress(&self) -> bool {
        self.cursor.is_some()
    }

    /// What this pass did so far (or did, once complete).
    pub fn report(&self) -> &ClearReport {
        &self.report
    }

    /// How many entries this pass has looked at.
    pub fn scanned(&self) -> u64 {
        self.scanned
    }
}

/// Errors of a session store. Each message names the file or key and the cause.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O error on a file or directory of the store.
    Io {
        /// What was being done, e.g. "write session file".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The session was deleted after this request loaded it (a logout in a concurrent
    /// request). Saving would resurrect it, so nothing was written. Django's `UpdateError`;
    /// the middleware answers 400.
    Deleted(SessionKey),
    /// The session's lock was not free within the lock timeout: another request or process
    /// holds it. Nothing was written.
    LockTimeout {
        /// The session.
        key: SessionKey,
        /// How long it waited.
        waited: Duration,
    },
    /// The session would exceed the size limit of one session file. Nothing was written.
    TooLarge {
        /// The session, unless it was being created.
        key: Option<SessionKey>,
        /// Its encoded size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A value of the session nests deeper than a session file can be read back with.
    /// Nothing was written.
    TooDeep {
        /// The session, unless it was being created.
        key: Option<SessionKey>,
        /// How deep its values nest.
        depth: usize,
        /// The deepest allowed.
        limit: usize,
    },
    /// An entry named like this session is not a regular file (a symlink, a directory, a
    /// FIFO). It is never followed, read or replaced.
    NotARegularFile(PathBuf),
    /// The sessions directory the store opened was removed while the store was in use.
    /// The store never follows a new directory made at the same path (it could be anyone's);
    /// restart the process to open it again.
    DirectoryGone(PathBuf),
    /// The store could not be used at all (its directory is missing and cannot be created,
    /// or is not writable).
    Unavailable(String),
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            StoreError::Deleted(_) => f.write_str(
                "The request's session was deleted before the request completed. \
                 The user may have logged out in a concurrent request, for example.",
            ),
            StoreError::LockTimeout { key, waited } => write!(
                f,
                "session {} is locked by another request or process; gave up after {} ms",
                key.short(),
                waited.as_millis()
            ),
            StoreError::TooLarge { size, limit, .. } => write!(
                f,
                "the session would take {size} bytes, more than the limit of {limit} bytes"
            ),
            StoreError::TooDeep { depth, limit, .. } => write!(
                f,
                "a session value nests {depth} levels deep, more than the limit of {limit}"
            ),
            StoreError::NotARegularFile(path) => write!(
                f,
                "{} is not a regular file (symlink, directory or device); refusing to use it",
                path.display()
            ),
            StoreError::DirectoryGone(path) => write!(
                f,
                "the session directory {} was removed while the server was running; \
                 restart the server to open it again",
                path.display()
            ),
            StoreError::Unavailable(why) => write!(f, "session store unavailable: {why}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A place sessions are kept. Implemented by [`FileStore`](crate::FileStore) and
/// [`MemoryStore`](crate::MemoryStore); Django's `SessionBase` backend contract.
///
/// Every method may be called from several threads and processes at once; a store makes
/// `save` apply a [`ChangeSet`] atomically on top of the newest copy.
pub trait SessionStore: Send + Sync {
    /// Loads a session, as it is at the moment of the call: every save, delete and cycle
    /// that returned before the call is seen. `Ok(None)` ("no session") only when it is
    /// missing, expired or corrupt, or the entry is not a session (not a regular file).
    /// Never creates anything.
    ///
    /// # Errors
    /// Everything else, which must not be mistaken for "no session" (the middleware would
    /// delete the user's cookie): I/O failures such as `EMFILE` or `EACCES`
    /// ([`StoreError::Io`]), a removed directory ([`StoreError::DirectoryGone`]), a store
    /// that does not answer ([`StoreError::Unavailable`]), and in `request` locking mode a
    /// lock that could not be taken ([`StoreError::LockTimeout`]).
    fn load(&self, key: &SessionKey) -> Result<Option<Loaded>, StoreError>;

    /// Waits, within the lock timeout, until the session's lock is free, so that a request
    /// can wait off the handler thread. In `request` locking mode the lock is returned, held,
    /// for [`load_locked`](SessionStore::load_locked); otherwise it is released at once (a
    /// store may still hand on something the load can use, such as the open file, or
    /// `Ok(None)`). `Ok(None)` too when there is no such session. What it returns is
    /// never read without checking, when [`load_locked`](SessionStore::load_locked) runs,
    /// that it is still current: a load sees every change made after the acquire. The
    /// default does nothing.
    ///
    /// # Errors
    /// [`StoreError::LockTimeout`], and the failures of [`load`](SessionStore::load).
    fn acquire(&self, key: &SessionKey) -> Result<Option<SessionLock>, StoreError> {
        let _ = key;
        Ok(None)
    }

    /// [`acquire`](SessionStore::acquire) waiting at most `wait` for the lock instead of the
    /// store's lock timeout; `Duration::ZERO` tries once. A server calls it on a thread that
    /// must not wait, and hands the wait to another thread only when the lock is held. The
    /// default calls `acquire`.
    ///
    /// # Errors
    /// As `acquire`; [`StoreError::LockTimeout`] when the lock stayed held for `wait`.
    fn acquire_within(
        &self,
        key: &SessionKey,
        wait: Duration,
    ) -> Result<Option<SessionLock>, StoreError> {
        let _ = wait;
        self.acquire(key)
    }

    /// [`load`](SessionStore::load) with a lock taken by [`acquire`](SessionStore::acquire).
    /// The default releases it and loads.
    ///
    /// # Errors
    /// As `load`.
    fn load_locked(
        &self,
        key: &SessionKey,
        lock: SessionLock,
    ) -> Result<Option<Loaded>, StoreError> {
        drop(lock);
        self.load(key)
    }

    /// Stores a new session under a fresh random key, never overwriting an existing one.
    ///
    /// # Errors
    /// I/O failures, [`StoreError::TooLarge`].
    fn create(&self, record: &Record) -> Result<SessionKey, StoreError>;

    /// Applies `changes` to the newest stored copy of `key` and returns what was stored.
    /// `lock` is the lock taken by `load` in `request` mode.
    ///
    /// # Errors
    /// [`StoreError::Deleted`] if the session no longer exists (it is not resurrected),
    /// [`StoreError::LockTimeout`], I/O failures, [`StoreError::TooLarge`].
    fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        lock: Option<SessionLock>,
    ) -> Result<Record, StoreError>;

    /// Moves the session to a new key: the newest copy with `changes` applied is created
    /// under a fresh key, then the old one is removed. Returns the new key and its record.
    ///
    /// # Errors
    /// As [`save`](SessionStore::save).
    fn cycle(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        lock: Option<SessionLock>,
    ) -> Result<(SessionKey, Record), StoreError>;

    /// Removes a session. Removing a missing session is not an error.
    ///
    /// # Errors
    /// [`StoreError::LockTimeout`], I/O failures.
    fn delete(&self, key: &SessionKey, lock: Option<SessionLock>) -> Result<(), StoreError>;

    /// Whether a session is stored under `key` (expired or not).
    ///
    /// # Errors
    /// I/O failures other than "not found".
    fn exists(&self, key: &SessionKey) -> Result<bool, StoreError>;

    /// Removes expired sessions and leftovers of crashed writes.
    ///
    /// # Errors
    /// The store cannot be listed.
    fn clear_expired(&self) -> Result<ClearReport, StoreError>;

    /// Goes on with an incremental `clear_expired` for about `budget`; `Ok(true)` when the
    /// pass is complete. The default does a whole `clear_expired` in one step.
    ///
    /// # Errors
    /// The store cannot be listed.
    fn sweep_step(&self, sweep: &mut Sweep, budget: Duration) -> Result<bool, StoreError> {
        let _ = budget;
        sweep.report = self.clear_expired()?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(data: Value) -> Record {
        Record {
            data: data.as_object().cloned().unwrap_or_default(),
            expiry: Expiry::Default,
            expires_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn changes_apply_on_top_of_other_keys() {
        let mut changes = ChangeSet::new(Duration::from_secs(60));
        changes.set("a", json!(1));
        changes.remove("gone");
        let mut stored = record(json!({"b": 2, "gone": 3}));
        changes.apply_to(&mut stored, SystemTime::UNIX_EPOCH);
        assert_eq!(Value::Object(stored.data), json!({"a": 1, "b": 2}));
        assert_eq!(
            stored.expires_at,
            SystemTime::UNIX_EPOCH + Duration::from_secs(60)
        );
    }

    #[test]
    fn last_change_to_a_key_wins() {
        let mut changes = ChangeSet::new(Duration::from_secs(60));
        changes.set("a", json!(1));
        changes.remove("a");
        changes.set("b", json!(1));
        changes.remove("b");
        changes.set("b", json!(2));
        let mut stored = record(json!({"a": 0}));
        changes.apply_to(&mut stored, SystemTime::UNIX_EPOCH);
        assert_eq!(Value::Object(stored.data), json!({"b": 2}));
    }

    #[test]
    fn alters_tells_a_real_change_from_a_rewrite_of_the_same_values() {
        let stored = record(json!({"a": 1, "b": 2}));
        let mut same = ChangeSet::new(Duration::from_secs(60));
        same.set("a", json!(1));
        same.remove("absent");
        assert!(!same.alters(&stored));
        let mut changed = same.clone();
        changed.set("b", json!(3));
        assert!(changed.alters(&stored));
        let mut removed = ChangeSet::new(Duration::from_secs(60));
        removed.remove("a");
        assert!(removed.alters(&stored));
        let mut cleared = ChangeSet::new(Duration::from_secs(60));
        cleared.clear();
        assert!(cleared.alters(&stored));
        assert!(!cleared.alters(&record(json!({}))));
        let mut expiry = ChangeSet::new(Duration::from_secs(60));
        expiry.expiry = Some(Expiry::Seconds(5));
        assert!(expiry.alters(&stored));
    }

    #[test]
    fn clear_drops_what_was_stored_but_keeps_later_writes() {
        let mut changes = ChangeSet::new(Duration::from_secs(60));
        changes.set("old", json!(1));
        changes.clear();
        changes.set("new", json!(2));
        let mut stored = record(json!({"other": 3}));
        changes.apply_to(&mut stored, SystemTime::UNIX_EPOCH);
        assert_eq!(Value::Object(stored.data), json!({"new": 2}));
    }
}
