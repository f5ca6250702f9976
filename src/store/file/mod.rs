//! FileStore: one JSON file per session, advisory locks, atomic replacement.
//!
//! One type or one job per file: `dir` ([`SessionDir`](dir::SessionDir): the directory by
//! handle, its entries opened safely; `dir::names`: changing names atomically), `document`
//! (the document as its file holds it: size limit, room to grow, the read), `memo` (the
//! file kept open and the last document decoded), `lock` (the lock protocol and the
//! `merge`-mode candidate), `flock` (the bounded `flock` wait), `read` (loads without a
//! lock, and what "no session" is), `write` (the merge and the write in place), `sweep`
//! (cleanup in slices). The JSON document is `store::format`, shared with the database
//! store, and the skip-write policy is [`ChangeSet::merge_into`]; this file holds the
//! store's state, its builder and the [`SessionStore`] contract.
//!
//! # The directory, by handle
//!
//! The sessions directory is opened once, when the store opens (`O_DIRECTORY`, not
//! following a symlink), and every file operation is relative to that handle (`openat`,
//! `renameat2`, `linkat`, `unlinkat`, `statat`). A directory renamed, swapped for another or
//! for a symlink while the store is open is never followed: the store goes on using the
//! directory it opened. If that directory is removed, every operation answers
//! [`StoreError::DirectoryGone`] (the server answers 500 telling to restart it).
//!
//! # The write protocol
//!
//! A save whose document fits the file it replaces (files are written with room to grow,
//! up to one page: [`IN_PLACE_MAX`]) is written over it in place, under the file's
//! exclusive lock: one `pwrite` of at most one page at offset 0, padded with JSON
//! whitespace to the file's length (never shrinking, never growing, so no block is
//! allocated and no `ftruncate` is needed). A process killed mid-`pwrite` leaves the old page
//! or the new one. Only a file whose document carries a check, ours, mode 0600, one link,
//! every block allocated, is written so ([`FileStore::may_write_in_place`]). Readers take no
//! lock: the document's first field is a check of everything after it (`store::format`), so
//! a reader that copies the page while it is being written finds it wrong, tries the shared
//! lock once without waiting, and reads again ([`FileStore::live_record_unlocked`]). Every
//! other write (a larger document, a new session, and every save in fsync mode, where only a
//! rename survives power loss) goes to a fresh temp file (`.<random uuid>.tmp`, mode 0600)
//! in the same directory, which then takes the session's name in one atomic step:
//!
//! * create: an unnamed file (`O_TMPFILE`) given its name by `linkat`, which fails rather
//!   than replace (a collision retries with a new key); where the file system has no
//!   `O_TMPFILE`, a temp file and `renameat2(RENAME_NOREPLACE)`;
//! * save: `renameat2(temp, <key>.json, RENAME_EXCHANGE)` then unlink the temp name, which
//!   now holds the old copy. Measured on ext4 this is 4-20 times faster than `rename` over an
//!   existing file (which forces block allocation); where the file system lacks `renameat2`
//!   the store falls back to `rename` and `link`.
//!
//! So a reader, and a process killed at any instant, see either the old or the new file,
//! whole (`cat`, which does not check, may in principle catch a page being copied). A build
//! without checks reads these files but does not check them: every server on one directory
//! should be this version or later. Each file's mtime is stamped with the session's expiry, so that
//! cleanup can skip live sessions without reading them. A save that would change nothing
//! but move the expiry by less than 1% of the lifetime (at most [`REFRESH_SLACK`]) is
//! skipped, as PHP's `lazy_write`.
//!
//! # The locking protocol
//!
//! A writer opens `<key>.json`, takes an exclusive `flock` on it (polling, bounded by the
//! lock timeout), then checks that the inode it locked is still the one at the path: a writer
//! before it may have replaced the file while it waited, in which case it retries on the new
//! inode, or removed it, in which case the session was deleted meanwhile and the save fails
//! with [`StoreError::Deleted`] rather than resurrect it. Holding a lock on the current inode,
//! it re-reads the newest copy, applies its [`ChangeSet`], and writes it in place or swaps.
//! Deletes take the same lock. Readers take no lock.
//!
//! # Reads are fresh
//!
//! A load reads the file that has the session's name at the moment it is called, so it sees
//! every save, delete and cycle that completed before it (real-time order, checked by
//! `tests/history.rs`). No open file is
//! read without checking, at the moment of the load, that it is still the file with that
//! name: [`LockPreflight::acquire`] in `merge` mode waits until the lock is free and hands its
//! open file on as a candidate, which the load uses only if `statat` finds the same inode
//! under the name then (the same inode may hold newer content, written in place: the load
//! reads it then, checked), and otherwise opens the name afresh; in `request` mode the lock it hands on
//! keeps every other writer out until the load, so the file it holds is the current one.
//!
//! # Errors are not "no session"
//!
//! A load finds "no session" only for a missing, expired, corrupt or oversized file, or an
//! entry that is not a regular file. Any other failure (`EMFILE`, `EACCES`, `EIO`, a removed
//! directory) is an error, so that the middleware answers 5xx and keeps the user's cookie.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

mod dir;
mod django;
mod document;
mod flock;
mod lock;
mod memo;
mod read;
mod sweep;
#[cfg(test)]
mod tests;
mod write;

use dir::{Opened, SessionDir};
pub use django::DjangoFileStore;
use document::FileFormat;
use flock::unlock;
use lock::{FileCandidate, FileLock, TornLocks};
use memo::{KeptOpen, LastDecoded};
use read::CorruptLog;
use write::InPlace;

use super::{
    Acquired, Candidate, ChangeSet, ClearReport, ExpiredDeletion, Loaded, LockConfig, LockIssuer,
    LockPreflight, Merged, Record, SessionLock, SessionStore, StoreError, Sweep,
};
use crate::config::Locking;
use crate::expiry::later;
use crate::key::SessionKey;

/// The largest session file the store writes or reads. Default: 1 MiB.
pub const DEFAULT_MAX_FILE_SIZE: usize = 1 << 20;

/// How old a temp file must be before `clear_expired` takes it for the leftover of a crashed
/// write and removes it. Default: 60 seconds.
pub const DEFAULT_LEFTOVER_AGE: Duration = Duration::from_secs(60);

/// The largest file a save writes in place: one page. A `pwrite` of one page at offset 0 is
/// not split by a fatal signal (the kernel checks for one between pages; measured in issue
/// 15: 0 torn files in 1 500 kills, 5 in 600 for writes of 5-60 KB); larger documents, and
/// every save in fsync mode, go through a temp file and a rename instead. A concurrent
/// reader may still copy the page while it is being written: the document's check tells it
/// (`store::format`), and it reads again.
pub(super) const IN_PLACE_MAX: usize = 4096;

/// How many times an unlocked read that found a document not whole, while a writer holds
/// the file, reads again, and the pause before each: a page is copied in microseconds.
pub(super) const TORN_RETRIES: usize = 3;
pub(super) const TORN_PAUSE: Duration = Duration::from_micros(50);

/// Sessions as JSON files in one directory: `<dir>/<key>.json`.
///
/// ```
/// use std::sync::Arc;
/// use filesession::{FileStore, Session, SessionConfig};
///
/// let dir = tempfile::tempdir()?;
/// let store = Arc::new(FileStore::open(dir.path())?);
///
/// let mut session = Session::new(store.clone(), None, SessionConfig::default());
/// session.insert("sname", "abc");
/// session.save()?;
/// let key = *session.session_key().expect("saved sessions have a key");
///
/// let text = std::fs::read_to_string(dir.path().join(key.file_name()))?;
/// assert!(text.contains(r#""sname": "abc""#));
///
/// let again = Session::new(store, Some(key), SessionConfig::default());
/// assert_eq!(again.get("sname"), Some(&"abc".into()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FileStore {
    /// The sessions directory, opened once; every file operation is relative to it.
    dir: SessionDir,
    lock_config: LockConfig,
    /// Who made this store's locks and candidates: it takes back only its own.
    issuer: LockIssuer,
    /// The size limit and the room to grow of a session file.
    format: FileFormat,
    leftover_age: Duration,
    /// Entries already logged as not holding a session.
    corrupt: CorruptLog,
    /// Whether saves may be written in place ([`FileStore::with_in_place`]).
    in_place: bool,
    /// One session file kept open, unlocked: the last `merge`-mode load's, for its save, or
    /// the last save's, for the session's next request ([`KeptOpen`]).
    recent: KeptOpen,
    /// Locks on files left torn by a failing disk, held until the process ends
    /// ([`FileStore::hold_torn`]).
    torn: TornLocks,
    /// The last document decoded, by its bytes ([`LastDecoded`]).
    last_decoded: LastDecoded,
    /// Reads without a lock that found a copy not whole and read again (tests look).
    torn_rereads: AtomicU64,
    /// This process's effective user id, read once: only files of ours are written in place.
    euid: u32,
}

impl FileStore {
    /// Opens the store in `dir`, creating the directory (mode 0700) if it is missing, opens
    /// it once for good (every later file operation is relative to that handle) and checks
    /// that files can be created in it.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] naming the directory and the cause when it cannot be
    /// created, opened or written, or is a symbolic link (give its real path).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_as(dir.as_ref(), true)
    }

    /// [`open`](FileStore::open) for a directory that must exist already, as
    /// `clearsessions` opens it: a mistyped path is an error, never a new directory, and an
    /// existing one is left as it is (no mode tightened, no probe file written). Django
    /// refuses a missing `SESSION_FILE_PATH` too.
    ///
    /// # Errors
    /// As [`open`](FileStore::open), and [`StoreError::Unavailable`] when the directory
    /// does not exist.
    pub fn open_existing(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_as(dir.as_ref(), false)
    }

    fn open_as(dir: &Path, create: bool) -> Result<Self, StoreError> {
        Ok(FileStore {
            dir: SessionDir::open(dir, create)?,
            lock_config: LockConfig::default(),
            issuer: LockIssuer::new(),
            format: FileFormat {
                max_file_size: DEFAULT_MAX_FILE_SIZE,
            },
            leftover_age: DEFAULT_LEFTOVER_AGE,
            corrupt: CorruptLog::default(),
            in_place: true,
            recent: KeptOpen::default(),
            torn: TornLocks::default(),
            last_decoded: LastDecoded::default(),
            torn_rereads: AtomicU64::new(0),
            euid: rustix::process::geteuid().as_raw(),
        })
    }

    /// Sets the locking mode and how long a request waits for a session's lock
    /// (`SESSION_LOCKING`, `SESSION_LOCK_TIMEOUT`). Default: [`LockConfig::default`].
    pub fn with_lock_config(mut self, lock_config: LockConfig) -> Self {
        self.lock_config = lock_config;
        self
    }

    /// Sets the locking mode alone ([`with_lock_config`](FileStore::with_lock_config)).
    pub fn with_locking(mut self, locking: Locking) -> Self {
        self.lock_config.locking = locking;
        self
    }

    /// Sets the lock timeout alone ([`with_lock_config`](FileStore::with_lock_config)).
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_config.timeout = timeout;
        self
    }

    /// Whether a save whose document fits its file may be written over it in place
    /// (`SESSION_FILE_IN_PLACE`). Default: on. Turn it off while a server of a version
    /// without checks (one whose files have no `"check"` line) reads the same directory:
    /// such a server reads without checking, and could take a page caught half written for
    /// a session.
    pub fn with_in_place(mut self, in_place: bool) -> Self {
        self.in_place = in_place;
        self
    }

    /// Makes every write durable across power loss: the file data and the directory are
    /// fsynced before a save returns (`SESSION_FILE_FSYNC`). Default: off, as Django and PHP.
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.dir.fsync = fsync;
        self
    }

    /// Sets the largest session document, in bytes: a save of a larger one fails with
    /// [`StoreError::TooLarge`], a file holding one reads as no session. The spaces after a
    /// document (room to grow in place, files up to a page) do not count. Default:
    /// [`DEFAULT_MAX_FILE_SIZE`].
    pub fn with_max_file_size(mut self, bytes: usize) -> Self {
        self.format.max_file_size = bytes;
        self
    }

    /// Sets how old a temp file must be before `clear_expired` removes it as the leftover of
    /// a crashed write. Default: [`DEFAULT_LEFTOVER_AGE`].
    pub fn with_leftover_age(mut self, age: Duration) -> Self {
        self.leftover_age = age;
        self
    }

    /// The sessions directory, as given to [`open`](FileStore::open). The store itself uses
    /// the directory it opened then, wherever it is now.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The locking mode.
    pub fn locking(&self) -> Locking {
        self.lock_config.locking
    }

    /// The path of a session's file: `<dir>/<key>.json`, built from a parsed key only.
    pub fn path_of(&self, key: &SessionKey) -> PathBuf {
        self.dir.path().join(key.file_name())
    }
}

impl LockPreflight for FileStore {
    fn acquire(&self, key: &SessionKey, wait: Duration) -> Result<Option<Acquired>, StoreError> {
        let name = key.file_name();
        if self.lock_config.locking == Locking::Request {
            return match self.lock_current(key, &name, wait, None) {
                Ok(Some(held)) => Ok(Some(Acquired::Locked(SessionLock::new(
                    self.issuer,
                    *key,
                    held,
                )))),
                Ok(None) | Err(StoreError::NotARegularFile(_)) => Ok(None),
                Err(e) => Err(e),
            };
        }
        // merge: wait until no one holds the lock, and let go at once. The open file goes to
        // the load only as a candidate: the load uses it if it is still the file with that
        // name when the handler runs (reading it then sees any write in place since), and
        // opens the name afresh otherwise.
        let quiet_since = self.dir.quiet_now();
        let entry = match self.open_current(&name) {
            Ok(Opened::File(entry)) => entry,
            Ok(Opened::Missing) | Err(StoreError::NotARegularFile(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let start = Instant::now();
        self.lock_by(key, &entry, &name, start, later(start, wait))?;
        unlock(&entry.file)
            .map_err(|e| StoreError::io("unlock session file", self.dir.shown(&name), e))?;
        let found = FileCandidate {
            entry,
            name,
            quiet_since,
        };
        Ok(Some(Acquired::Candidate(Candidate::new(
            self.issuer,
            *key,
            found,
        ))))
    }

    fn load_acquired(
        &self,
        key: &SessionKey,
        acquired: Acquired,
    ) -> Result<Option<Loaded>, StoreError> {
        match acquired {
            Acquired::Candidate(candidate) => {
                let Ok(candidate) = candidate.take::<FileCandidate>(self.issuer, key) else {
                    return self.load(key); // not this store's, nor this session's
                };
                // Checked now, when the handler runs: the copy is current or not used.
                if self.candidate_is_current(&candidate)? {
                    let loaded = self
                        .live_record_unlocked(key, &candidate.entry, &candidate.name)?
                        .map(|record| Loaded { record, lock: None });
                    self.recent.keep(candidate.name, candidate.entry);
                    return Ok(loaded);
                }
                self.load(key)
            }
            Acquired::Locked(lock) => match lock.take::<FileLock>(self.issuer, key) {
                Ok(held)
                    if matches!(self.dir.is_current(&held.entry, &held.name), Ok(Some(true))) =>
                {
                    self.loaded_locked(key, held)
                }
                // Another session's, or replaced meanwhile: let it go (a lock held here would
                // make the load wait for itself), then a fresh load.
                other => {
                    drop(other);
                    self.load(key)
                }
            },
        }
    }
}

impl SessionStore for FileStore {
    fn load(&self, key: &SessionKey) -> Result<Option<Loaded>, StoreError> {
        let name = key.file_name();
        let found = match self.lock_config.locking {
            Locking::Merge => match self.open_current(&name) {
                Ok(Opened::File(entry)) => {
                    let loaded = self
                        .live_record_unlocked(key, &entry, &name)?
                        .map(|record| Loaded { record, lock: None });
                    self.recent.keep(name, entry);
                    return Ok(loaded);
                }
                Ok(Opened::Missing) => return Ok(None),
                Err(e) => Err(e),
            },
            Locking::Request => match self.lock_current(key, &name, self.lock_config.timeout, None)
            {
                Ok(Some(held)) => return self.loaded_locked(key, held),
                Ok(None) => return Ok(None),
                Err(e) => Err(e),
            },
        };
        match found {
            // Not a session file: no session, as a corrupt one. Anything else is an error.
            Err(e @ StoreError::NotARegularFile(_)) => {
                self.log_bad_file(&name, &e);
                Ok(None)
            }
            other => other,
        }
    }

    fn create(&self, record: &Record) -> Result<SessionKey, StoreError> {
        let bytes = self.format.encode(None, record)?;
        self.dir.create(&bytes, record.expires_at)
    }

    fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        lock: Option<SessionLock>,
    ) -> Result<Record, StoreError> {
        let held = self
            .lock_for_write(key, lock)?
            .ok_or(StoreError::Deleted(*key))?;
        let (merged, stored) = self.merged(&held, changes)?;
        let record = match merged {
            Merged::Unchanged(record) => {
                // Not written: the file still holds what was read, which the next load
                // finds remembered.
                if let Some(stored) = stored {
                    self.last_decoded
                        .remember(stored.bytes, record.clone(), stored.checked);
                }
                self.release_and_keep(held);
                return Ok(record);
            }
            Merged::Changed(record) => record,
        };
        let old = stored
            .filter(|stored| stored.checked)
            .map(|stored| stored.bytes);
        let bytes = self.format.encode(Some(key), &record)?;
        let written = match self.write_in_place(&held, &bytes, old.as_deref(), record.expires_at) {
            InPlace::Written(page) => {
                // Still the file at the name: kept open for the session's next request.
                self.last_decoded.remember(page, record.clone(), true);
                self.release_and_keep(held);
                return Ok(record);
            }
            outcome => {
                let replaced = self
                    .dir
                    .write_temp_for(&held.name, &bytes, record.expires_at)
                    .and_then(|temp| self.dir.replace(&temp, &held.name));
                if let Err(e) = replaced {
                    if matches!(outcome, InPlace::Torn) {
                        self.hold_torn(held);
                    }
                    return Err(e);
                }
                bytes
            }
        };
        // The file now holds exactly these bytes: the next read of them needs no parse.
        // (`held` is the copy swapped out: closed.)
        self.last_decoded.remember(written, record.clone(), true);
        Ok(record)
    }

    fn cycle(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        lock: Option<SessionLock>,
    ) -> Result<(SessionKey, Record), StoreError> {
        let held = self
            .lock_for_write(key, lock)?
            .ok_or(StoreError::Deleted(*key))?;
        let record = self.merged(&held, changes)?.0.into_record();
        let new_key = self.create(&record)?;
        // The new session exists before the old one goes: a crash in between leaves both,
        // never neither.
        self.dir
            .unlink(&held.name)
            .map_err(|e| self.dir.error("remove session file", &held.name, e))?;
        self.forget(&held.name);
        self.dir.sync()?;
        Ok((new_key, record))
    }

    fn delete(&self, key: &SessionKey, lock: Option<SessionLock>) -> Result<(), StoreError> {
        let Some(held) = self.lock_for_write(key, lock)? else {
            return Ok(());
        };
        match self.dir.unlink(&held.name) {
            Ok(()) => {
                self.forget(&held.name);
                self.dir.sync()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.dir.check(),
            Err(e) => Err(self.dir.error("remove session file", &held.name, e)),
        }
    }

    fn exists(&self, key: &SessionKey) -> Result<bool, StoreError> {
        self.dir.is_file(&key.file_name())
    }

    fn preflight(&self) -> Option<&dyn LockPreflight> {
        Some(self)
    }

    fn expired_deletion(&self) -> Option<&dyn ExpiredDeletion> {
        Some(self)
    }

    /// A load reads a local file (a lock held elsewhere is the preflight's to wait for).
    fn loads_wait(&self) -> bool {
        false
    }

    /// Only in fsync mode, where a save waits for the disk.
    fn saves_wait(&self) -> bool {
        self.dir.fsync
    }

    /// Closes the session file kept open between requests (the next request opens it by
    /// name again): a file open for writing makes `mount -o remount,ro` fail as busy.
    fn release_idle(&self) {
        self.recent.close();
    }
}

impl ExpiredDeletion for FileStore {
    fn clear_expired(&self) -> Result<ClearReport, StoreError> {
        self.clear_expired_with_progress(Duration::from_secs(3600), &mut |_| {})
    }

    fn sweep_step(&self, sweep: &mut Sweep, budget: Duration) -> Result<bool, StoreError> {
        // Within a short budget a locked session is left for the next pass, not waited for.
        self.sweep_with(sweep, budget, budget.min(self.lock_config.timeout))
    }

    fn clear_expired_with_progress(
        &self,
        every: Duration,
        progress: &mut dyn FnMut(&Sweep),
    ) -> Result<ClearReport, StoreError> {
        // A whole pass waits for a locked session (the lock timeout) rather than leave it.
        super::sweep::whole_pass(
            |sweep| self.sweep_with(sweep, every, self.lock_config.timeout),
            progress,
        )
    }
}
