//! FileStore: one JSON file per session, advisory locks, atomic replacement.
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
//! A session file is never modified in place. Every write goes to a fresh temp file
//! (`.<random uuid>.tmp`, mode 0600) in the same directory, which then takes the session's
//! name in one atomic step:
//!
//! * create: an unnamed file (`O_TMPFILE`) given its name by `linkat`, which fails rather
//!   than replace (a collision retries with a new key); where the file system has no
//!   `O_TMPFILE`, a temp file and `renameat2(RENAME_NOREPLACE)`;
//! * save: `renameat2(temp, <key>.json, RENAME_EXCHANGE)` then unlink the temp name, which
//!   now holds the old copy. Measured on ext4 this is 4-20 times faster than `rename` over an
//!   existing file (which forces block allocation); where the file system lacks `renameat2`
//!   the store falls back to `rename` and `link`.
//!
//! So a reader, locked or not, and a process killed at any instant, see either the old or
//! the new file, whole. Each file's mtime is stamped with the session's expiry, so that
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
//! it re-reads the newest copy, applies its [`ChangeSet`], writes and swaps. Deletes take the
//! same lock. Readers take no lock: whole-file replacement already keeps them consistent.
//!
//! # Reads are fresh
//!
//! A load reads the file that has the session's name at the moment it is called, so it sees
//! every save, delete and cycle that completed before it (real-time order, checked by
//! `tests/history.rs`). No open file is
//! read without checking, at the moment of the load, that it is still the file with that
//! name: [`SessionStore::acquire`] in `merge` mode waits until the lock is free and hands its
//! open file on as a candidate, which the load uses only if `statat` finds the same inode
//! under the name then (a file is never modified in place, so the same inode is the same
//! content), and otherwise opens the name afresh; in `request` mode the lock it hands on
//! keeps every other writer out until the load, so the file it holds is the current one.
//!
//! # Errors are not "no session"
//!
//! A load finds "no session" only for a missing, expired, corrupt or oversized file, or an
//! entry that is not a regular file. Any other failure (`EMFILE`, `EACCES`, `EIO`, a removed
//! directory) is an error, so that the middleware answers 5xx and keeps the user's cookie.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{
    AtFlags, CWD, Dir, FileType, Mode, OFlags, RenameFlags, fchmod, fstat, fsync, linkat, openat,
    renameat, renameat_with, statat, unlinkat,
};
use rustix::io::Errno;

use super::file_format::{self, DecodeError};
use super::lock::{lock_exclusive_until, unlock};
use super::{
    ChangeSet, ClearReport, Loaded, Locking, Record, SessionLock, SessionStore, StoreError, Sweep,
};
use crate::expiry::later;
use crate::key::SessionKey;

/// How long a writer waits for a session's lock before giving up with
/// [`StoreError::LockTimeout`]. Default: 3 seconds.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(3);

/// The largest session file the store writes or reads. Default: 1 MiB.
pub const DEFAULT_MAX_FILE_SIZE: usize = 1 << 20;

/// How old a temp file must be before `clear_expired` takes it for the leftover of a crashed
/// write and removes it. Default: 60 seconds.
pub const DEFAULT_LEFTOVER_AGE: Duration = Duration::from_secs(60);

/// How many corrupt files are remembered so that each is logged once.
const CORRUPT_LOG_MEMORY: usize = 10_000;

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
    /// The directory's path as given, for messages only: files are reached through `dirfd`.
    dir: PathBuf,
    /// The sessions directory, opened once; every file operation is relative to it.
    dirfd: OwnedFd,
    locking: Locking,
    lock_timeout: Duration,
    fsync: bool,
    max_file_size: usize,
    leftover_age: Duration,
    /// Cleared when the file system refuses `renameat2`; then `rename`/`link` are used.
    renameat2: AtomicBool,
    /// Cleared when the file system refuses `O_TMPFILE`; then creates go through temp names.
    tmpfile: AtomicBool,
    corrupt_logged: Mutex<HashSet<PathBuf>>,
    /// Changes to the directory's names begun and finished by this store (renames,
    /// links, unlinks): a candidate opened with none in progress and none begun since is
    /// current without asking the file system ([`FileStore::candidate_is_current`]).
    changes: Changes,
}

/// Counts of changes begun and finished ([`FileStore::changing`]).
#[derive(Debug, Default)]
struct Changes {
    begun: AtomicU64,
    done: AtomicU64,
}

/// A change to the directory's names under way; counted done when dropped.
struct Changing<'a>(&'a Changes);

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.0.done.fetch_add(1, Ordering::SeqCst);
    }
}

/// A session file locked exclusively, checked to be the file now at its name.
#[derive(Debug)]
struct LockedFile {
    entry: Entry,
    name: String,
}

/// An open session file and what its `fstat` said when it was opened. A session file is
/// never modified in place, so its length stays true for as long as it is open.
#[derive(Debug)]
struct Entry {
    file: File,
    len: u64,
    ino: u64,
    dev: u64,
}

/// A session file opened (and found unlocked) by `acquire` in `merge` mode: the load reads
/// it only after checking that it is still the file with its name.
#[derive(Debug)]
struct Candidate {
    entry: Entry,
    name: String,
    /// [`Changes::begun`] when it was opened, if no change was under way then.
    quiet_since: Option<u64>,
}

/// What is at a session's name.
enum Opened {
    Missing,
    File(Entry),
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
        let dir = dir.as_ref().to_path_buf();
        let unavailable = |what: &str, e: io::Error| {
            StoreError::Unavailable(format!("session directory {} {what}: {e}", dir.display()))
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| unavailable("cannot be created", e))?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dirfd = match openat(CWD, &dir, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                let symlink = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_symlink());
                return Err(if symlink {
                    unavailable(
                        "is a symbolic link, which the store does not follow; \
                         give the directory's real path",
                        e.into(),
                    )
                } else if e == Errno::NOTDIR {
                    unavailable("is not a directory", e.into())
                } else {
                    unavailable("cannot be opened", e.into())
                });
            }
        };
        let mode = fstat(&dirfd)
            .map_err(|e| unavailable("cannot be read", e.into()))?
            .st_mode;
        if mode & 0o077 != 0 {
            // Session keys are bearer credentials: keep the listing private.
            if let Err(e) = fchmod(&dirfd, Mode::from_raw_mode(0o700)) {
                log::warn!(
                    "session directory {} is readable by others and cannot be made 0700: {e}",
                    dir.display()
                );
            }
        }
        let store = FileStore {
            dir: dir.clone(),
            dirfd,
            locking: Locking::Merge,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            fsync: false,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            leftover_age: DEFAULT_LEFTOVER_AGE,
            renameat2: AtomicBool::new(true),
            tmpfile: AtomicBool::new(true),
            corrupt_logged: Mutex::new(HashSet::new()),
            changes: Changes::default(),
        };
        let (probe, _) = store
            .write_temp(b"probe\n", None)
            .map_err(|e| unavailable("is not writable", e))?;
        unlinkat(&store.dirfd, probe.as_str(), AtFlags::empty())
            .map_err(|e| unavailable("is not writable", e.into()))?;
        Ok(store)
    }

    /// Sets the locking mode. Default: [`Locking::Merge`].
    pub fn with_locking(mut self, locking: Locking) -> Self {
        self.locking = locking;
        self
    }

    /// Sets how long a request waits for a session's lock. Default:
    /// [`DEFAULT_LOCK_TIMEOUT`].
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Makes every write durable across power loss: the file data and the directory are
    /// fsynced before a save returns (`SESSION_FILE_FSYNC`). Default: off, as Django and PHP.
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// Sets the largest session file, in bytes. Default: [`DEFAULT_MAX_FILE_SIZE`].
    pub fn with_max_file_size(mut self, bytes: usize) -> Self {
        self.max_file_size = bytes;
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
        &self.dir
    }

    /// The locking mode.
    pub fn locking(&self) -> Locking {
        self.locking
    }

    /// The path of a session's file: `<dir>/<key>.json`, built from a parsed key only.
    pub fn path_of(&self, key: &SessionKey) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// The path of an entry of the directory, for messages.
    fn shown(&self, name: &str) -> PathBuf {
        self.dir.join(crate::key::shown_name(name))
    }

    /// `Err(DirectoryGone)` if the directory the store opened has been removed. Called on
    /// error paths only (an entry not found, a create refused).
    ///
    /// A removed directory has no links left (`st_nlink == 0` on ext4, tmpfs, btrfs, xfs),
    /// but overlayfs reports 1 for every merged directory, removed or not: there the kernel
    /// is asked directly, since reading a removed directory fails with `ENOENT` on every
    /// file system.
    fn check_dir(&self) -> Result<(), StoreError> {
        let gone = || StoreError::DirectoryGone(self.dir.clone());
        match fstat(&self.dirfd) {
            Ok(st) if st.st_nlink == 0 => Err(gone()),
            Ok(st) if st.st_nlink == 1 => match Dir::read_from(&self.dirfd) {
                Err(Errno::NOENT) => Err(gone()),
                Ok(mut entries) => match entries.next() {
                    Some(Err(Errno::NOENT)) => Err(gone()),
                    _ => Ok(()),
                },
                Err(_) => Ok(()),
            },
            Ok(_) => Ok(()),
            Err(e) => Err(StoreError::io(
                "inspect session directory",
                &self.dir,
                e.into(),
            )),
        }
    }

    /// The error for a failed operation on an entry: [`StoreError::DirectoryGone`] when the
    /// directory was removed, else an I/O error naming the entry.
    fn fs_error(&self, action: &'static str, name: &str, e: io::Error) -> StoreError {
        // A removed directory refuses with ENOENT, or EPERM for O_TMPFILE: ask it.
        if let Err(gone @ StoreError::DirectoryGone(_)) = self.check_dir() {
            return gone;
        }
        StoreError::io(action, self.shown(name), e)
    }

    /// Opens the entry `name` without following a symlink and without blocking on a FIFO,
    /// and refuses anything but a regular file.
    fn open_entry(&self, name: &str) -> Result<Opened, StoreError> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        match openat(&self.dirfd, name, flags, Mode::empty()) {
            Ok(fd) => {
                let file = File::from(fd);
                let meta = file
                    .metadata()
                    .map_err(|e| StoreError::io("inspect session file", self.shown(name), e))?;
                if meta.is_file() {
                    Ok(Opened::File(Entry {
                        file,
                        len: meta.len(),
                        ino: meta.ino(),
                        dev: meta.dev(),
                    }))
                } else {
                    Err(StoreError::NotARegularFile(self.shown(name)))
                }
            }
            Err(Errno::NOENT) => {
                self.check_dir()?;
                Ok(Opened::Missing)
            }
            // ELOOP: a symlink; ENXIO: a socket. Neither is a session file.
            Err(Errno::LOOP | Errno::NXIO) => Err(StoreError::NotARegularFile(self.shown(name))),
            Err(e) => Err(StoreError::io(
                "open session file",
                self.shown(name),
                e.into(),
            )),
        }
    }

    /// Reads a whole session file, refusing more than the size limit.
    fn read_record(&self, entry: &Entry, name: &str) -> Result<Record, ReadError> {
        if entry.len > self.max_file_size as u64 {
            return Err(ReadError::TooLarge);
        }
        // One pread of the length fstat gave: no seek, no read to find the end.
        let mut bytes = vec![0; entry.len as usize];
        entry.file.read_exact_at(&mut bytes, 0).map_err(|e| {
            ReadError::Store(StoreError::io("read session file", self.shown(name), e))
        })?;
        file_format::decode(&bytes).map_err(ReadError::Corrupt)
    }

    /// The live session in `entry`: `Ok(None)` (logged) when it is corrupt, too large or
    /// expired; `Err` when it cannot be read.
    fn live_record(&self, entry: &Entry, name: &str) -> Result<Option<Record>, StoreError> {
        Ok(self
            .stored_record(entry, name)?
            .filter(|r| !r.is_expired(SystemTime::now())))
    }

    /// The record in a session file; `Ok(None)` (logged) when the file does not hold one
    /// (corrupt, too large); `Err` when it cannot be read at all.
    fn stored_record(&self, entry: &Entry, name: &str) -> Result<Option<Record>, StoreError> {
        match self.read_record(entry, name) {
            Ok(record) => Ok(Some(record)),
            Err(ReadError::Store(e)) => Err(e),
            Err(ReadError::TooLarge) => {
                self.log_bad_file(name, &"over the size limit");
                Ok(None)
            }
            Err(ReadError::Corrupt(why)) => {
                self.log_bad_file(name, &why);
                Ok(None)
            }
        }
    }

    /// Takes `entry`'s lock by `deadline`; else `LockTimeout`, counting the wait from `start`.
    fn lock_by(
        &self,
        key: &SessionKey,
        entry: &Entry,
        name: &str,
        start: Instant,
        deadline: Instant,
    ) -> Result<(), StoreError> {
        let locked = lock_exclusive_until(&entry.file, deadline)
            .map_err(|e| StoreError::io("lock session file", self.shown(name), e))?;
        if locked {
            Ok(())
        } else {
            Err(StoreError::LockTimeout {
                key: *key,
                waited: start.elapsed(),
            })
        }
    }

    /// The live session under a held lock, which stays held with it.
    fn loaded_locked(&self, held: LockedFile) -> Result<Option<Loaded>, StoreError> {
        let Some(record) = self.live_record(&held.entry, &held.name)? else {
            return Ok(None);
        };
        Ok(Some(Loaded {
            record,
            lock: Some(SessionLock::new(held)),
        }))
    }

    /// Logs an entry that does not hold a session, once per entry.
    fn log_bad_file(&self, name: &str, why: &dyn std::fmt::Display) {
        let mut seen = match self.corrupt_logged.lock() {
            Ok(seen) => seen,
            Err(poisoned) => poisoned.into_inner(),
        };
        if seen.len() >= CORRUPT_LOG_MEMORY {
            seen.clear();
        }
        let path = self.shown(name);
        if seen.insert(path.clone()) {
            log::warn!(
                "{} is not a usable session file ({why}); treated as no session, \
                 left for clearsessions",
                path.display()
            );
        }
    }

    /// Opens and locks the file now named `name`, checking that the inode locked is still
    /// the one with that name. `Ok(None)`: there is no session file (deleted meanwhile).
    fn lock_current(
        &self,
        key: &SessionKey,
        name: &str,
        wait: Duration,
    ) -> Result<Option<LockedFile>, StoreError> {
        let start = Instant::now();
        let deadline = later(start, wait);
        loop {
            let entry = match self.open_entry(name)? {
                Opened::Missing => return Ok(None),
                Opened::File(entry) => entry,
            };
            self.lock_by(key, &entry, name, start, deadline)?;
            let held = LockedFile {
                entry,
                name: name.to_owned(),
            };
            match self.is_current(&held.entry, &held.name)? {
                Some(true) => return Ok(Some(held)),
                Some(false) => continue, // replaced while we waited: lock the new one
                None => return Ok(None),
            }
        }
    }

    /// Whether `entry` is, at this moment, the file named `name` (same inode; a session file
    /// is never modified in place, so the same inode is the same content). `Some(false)`:
    /// replaced since it was opened; `None`: the name is gone.
    fn is_current(&self, entry: &Entry, name: &str) -> Result<Option<bool>, StoreError> {
        match statat(&self.dirfd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(now) => Ok(Some(now.st_ino == entry.ino && now.st_dev == entry.dev)),
            Err(Errno::NOENT) => {
                self.check_dir()?;
                Ok(None)
            }
            Err(e) => Err(StoreError::io(
                "inspect session file",
                self.shown(name),
                e.into(),
            )),
        }
    }

    /// The lock for a write: the one held since `load` (request mode) if it is still on the
    /// current file, else a fresh one. `Ok(None)`: the session is gone.
    fn lock_for_write(
        &self,
        key: &SessionKey,
        held: Option<SessionLock>,
    ) -> Result<Option<LockedFile>, StoreError> {
        let name = key.file_name();
        if let Some(held) = held.and_then(|l| l.into_inner::<LockedFile>().ok())
            && held.name == name
        {
            match self.is_current(&held.entry, &held.name)? {
                Some(true) => return Ok(Some(held)),
                None => return Ok(None),
                Some(false) => {} // replaced behind our back: lock afresh
            }
        }
        self.lock_current(key, &name, self.lock_timeout)
    }

    /// The newest stored copy under a held lock with `changes` applied. A file that became
    /// unreadable is replaced by the changes alone rather than blocking the session forever.
    /// `Merged::Unchanged` when the changes would only move the expiry a little.
    fn merged(&self, held: &LockedFile, changes: &ChangeSet) -> Result<Merged, StoreError> {
        let now = SystemTime::now();
        Ok(match self.stored_record(&held.entry, &held.name)? {
            Some(stored)
                if !changes.alters(&stored)
                    && expiry_moved_little(
                        &stored,
                        stored.expiry.date(now, changes.cookie_age),
                        changes.cookie_age,
                    ) =>
            {
                Merged::Unchanged(stored)
            }
            Some(mut record) => {
                changes.apply_to(&mut record, now);
                Merged::Changed(record)
            }
            None => Merged::Changed(changes.to_new_record(now)),
        })
    }

    /// The bytes of `record`, or `TooDeep` / `TooLarge`: nothing is written that could not
    /// be read back.
    fn encode(&self, key: Option<&SessionKey>, record: &Record) -> Result<Vec<u8>, StoreError> {
        let depth = file_format::depth(&record.data);
        if depth > file_format::MAX_VALUE_DEPTH {
            return Err(StoreError::TooDeep {
                key: key.copied(),
                depth,
                limit: file_format::MAX_VALUE_DEPTH,
            });
        }
        let bytes = file_format::encode(record);
        if bytes.len() > self.max_file_size {
            return Err(StoreError::TooLarge {
                key: key.copied(),
                size: bytes.len(),
                limit: self.max_file_size,
            });
        }
        Ok(bytes)
    }

    /// Writes `bytes` to a new temp file (0600) in the directory, `.<uuid>.tmp`, and returns
    /// its name.
    fn write_temp(
        &self,
        bytes: &[u8],
        expires_at: Option<SystemTime>,
    ) -> io::Result<(String, File)> {
        let name = format!(".{}.tmp", SessionKey::generate());
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut file = File::from(openat(
            &self.dirfd,
            name.as_str(),
            flags,
            Mode::from_raw_mode(0o600),
        )?);
        let written = file
            .write_all(bytes)
            .and_then(|()| stamp_expiry(&file, expires_at))
            .and_then(|()| if self.fsync { file.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => Ok((name, file)),
            Err(e) => {
                drop(file);
                let _ = unlinkat(&self.dirfd, name.as_str(), AtFlags::empty());
                Err(e)
            }
        }
    }

    fn write_temp_for(
        &self,
        name: &str,
        bytes: &[u8],
        expires_at: SystemTime,
    ) -> Result<String, StoreError> {
        self.write_temp(bytes, Some(expires_at))
            .map(|(temp, _)| temp)
            .map_err(|e| self.fs_error("write session file", name, e))
    }

    /// Removes an entry of the directory.
    fn unlink(&self, name: &str) -> io::Result<()> {
        let _changing = self.changing();
        unlinkat(&self.dirfd, name, AtFlags::empty()).map_err(io::Error::from)
    }

    /// Counts a change to the directory's names from now until the guard is dropped.
    fn changing(&self) -> Changing<'_> {
        self.changes.begun.fetch_add(1, Ordering::SeqCst);
        Changing(&self.changes)
    }

    /// `Some(begun)` if no change is under way now: what a candidate opened now records.
    fn quiet_now(&self) -> Option<u64> {
        let done = self.changes.done.load(Ordering::SeqCst);
        let begun = self.changes.begun.load(Ordering::SeqCst);
        (begun == done).then_some(begun)
    }

    /// Whether a candidate still holds the current copy of its session. A session file is
    /// never modified in place, so only a change of its name can make it stale: if this
    /// store changed no name since the candidate was opened, it is current (a change by
    /// another process after the open is concurrent with the request, and a read that
    /// takes effect at the open is linearizable); otherwise `statat` compares inodes.
    fn candidate_is_current(&self, candidate: &Candidate) -> Result<bool, StoreError> {
        if candidate
            .quiet_since
            .is_some_and(|begun| self.changes.begun.load(Ordering::SeqCst) == begun)
        {
            return Ok(true);
        }
        Ok(self.is_current(&candidate.entry, &candidate.name)? == Some(true))
    }

    /// Makes a completed write durable: fsync the directory (with `fsync` on).
    fn sync_dir(&self) -> Result<(), StoreError> {
        if self.fsync {
            fsync(&self.dirfd)
                .map_err(|e| StoreError::io("sync session directory", &self.dir, e.into()))?;
        }
        Ok(())
    }

    /// Atomically replaces the file named `name` (held locked) with the temp file.
    fn replace(&self, temp: &str, name: &str) -> Result<(), StoreError> {
        let _changing = self.changing();
        let dir = &self.dirfd;
        let result = if self.renameat2.load(Ordering::Relaxed) {
            match renameat_with(dir, temp, dir, name, RenameFlags::EXCHANGE) {
                Ok(()) => {
                    // The new copy is in place: the save happened. The old copy left under
                    // the temp name is removed by clearsessions if this fails.
                    if let Err(e) = self.unlink(temp) {
                        log::warn!("cannot remove the old copy of a session ({temp}): {e}");
                    }
                    Ok(())
                }
                Err(e) if e == Errno::INVAL || e == Errno::NOSYS || e == Errno::NOTSUP => {
                    self.renameat2.store(false, Ordering::Relaxed);
                    renameat(dir, temp, dir, name).map_err(io::Error::from)
                }
                Err(e) => Err(e.into()),
            }
        } else {
            renameat(dir, temp, dir, name).map_err(io::Error::from)
        };
        result.map_err(|e| {
            let _ = self.unlink(temp);
            self.fs_error("replace session file", name, e)
        })?;
        self.sync_dir()
    }

    /// Creates a session from an unnamed file (`O_TMPFILE`) given its name in one step
    /// (`linkat`, which fails rather than replace): no temp name to add and remove, and
    /// nothing left behind by a crash. `Ok(None)`: the file system cannot (use temp files).
    fn create_from_tmpfile(
        &self,
        bytes: &[u8],
        expires_at: SystemTime,
    ) -> Result<Option<SessionKey>, StoreError> {
        let unsupported = |e: Errno| {
            e == Errno::OPNOTSUPP || e == Errno::ISDIR || e == Errno::INVAL || e == Errno::NOSYS
        };
        let fd = match openat(
            &self.dirfd,
            ".",
            OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => fd,
            Err(e) if unsupported(e) => return Ok(None),
            Err(e) => return Err(self.fs_error("create session file", ".", e.into())),
        };
        let mut file = File::from(fd);
        file.write_all(bytes)
            .and_then(|()| stamp_expiry(&file, Some(expires_at)))
            .and_then(|()| if self.fsync { file.sync_data() } else { Ok(()) })
            .map_err(|e| StoreError::io("write session file", &self.dir, e))?;
        let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        for _ in 0..16 {
            let key = SessionKey::generate();
            let name = key.file_name();
            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; /proc/self/fd works for everyone.
            let linked = match linkat(&file, "", &self.dirfd, name.as_str(), AtFlags::EMPTY_PATH) {
                Err(Errno::NOENT | Errno::PERM | Errno::ACCESS) => linkat(
                    CWD,
                    proc_path.as_str(),
                    &self.dirfd,
                    name.as_str(),
                    AtFlags::SYMLINK_FOLLOW,
                ),
                other => other,
            };
            match linked {
                Ok(()) => {
                    self.sync_dir()?;
                    return Ok(Some(key));
                }
                Err(Errno::EXIST) => continue,
                Err(Errno::NOENT) => {
                    self.check_dir()?;
                    return Ok(None);
                }
                Err(e) if unsupported(e) => return Ok(None),
                Err(e) => return Err(self.fs_error("create session file", &name, e.into())),
            }
        }
        Err(StoreError::Unavailable(
            "16 fresh random keys were all taken; the random source is broken".into(),
        ))
    }

    /// Gives the temp file the name `name` unless something has it. `Ok(false)`: taken.
    fn link_new(&self, temp: &str, name: &str) -> io::Result<bool> {
        let _changing = self.changing();
        let dir = &self.dirfd;
        if self.renameat2.load(Ordering::Relaxed) {
            match renameat_with(dir, temp, dir, name, RenameFlags::NOREPLACE) {
                Ok(()) => return Ok(true),
                Err(Errno::EXIST) => return Ok(false),
                Err(e) if e == Errno::INVAL || e == Errno::NOSYS || e == Errno::NOTSUP => {
                    self.renameat2.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        match linkat(dir, temp, dir, name, AtFlags::empty()) {
            Ok(()) => {
                // The session exists: a temp name left behind is removed by clearsessions.
                if let Err(e) = self.unlink(temp) {
                    log::warn!("cannot remove the temp name of a new session ({temp}): {e}");
                }
                Ok(true)
            }
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The modification time of an entry, not following a symlink.
    fn mtime_of(&self, name: &str) -> Option<SystemTime> {
        let st = statat(&self.dirfd, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        let secs = u64::try_from(st.st_mtime).ok()?;
        let nanos = u32::try_from(st.st_mtime_nsec).unwrap_or(0);
        SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
    }

    /// Classifies one directory entry for `clear_expired`.
    fn clear_entry(
        &self,
        name: &str,
        file_type: FileType,
        now: SystemTime,
        wait: Duration,
        report: &mut ClearReport,
    ) {
        let is_file = match file_type {
            FileType::Unknown => statat(&self.dirfd, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile),
            other => other == FileType::RegularFile,
        };
        if let Some(key) = name.strip_suffix(".json").and_then(SessionKey::parse) {
            if !is_file {
                report.skipped += 1;
                return;
            }
            // The store stamps each file's mtime with its expiry: a file whose mtime is still
            // ahead is live, known without opening it (a million files in seconds).
            if self.mtime_of(name).is_some_and(|mtime| mtime > now) {
                report.kept += 1;
                return;
            }
            match self.clear_session(&key, now, wait) {
                Ok(Cleared::Kept) => report.kept += 1,
                Ok(Cleared::Expired) => report.expired += 1,
                Ok(Cleared::Corrupt) => report.corrupt += 1,
                Ok(Cleared::Gone) => {}
                Err(e) => {
                    log::warn!("clearsessions: left {}: {e}", crate::key::shown_name(name));
                    report.skipped += 1;
                }
            }
        } else if is_temp_name(name) && is_file {
            let old = self.mtime_of(name).is_some_and(|mtime| {
                now.duration_since(mtime).unwrap_or_default() >= self.leftover_age
            });
            if old && self.unlink(name).is_ok() {
                report.leftovers += 1;
            } else {
                report.skipped += 1;
            }
        } else {
            report.skipped += 1;
        }
    }

    /// Removes one session if it is expired or corrupt, deciding under its lock so that a
    /// session refreshed meanwhile is kept.
    fn clear_session(
        &self,
        key: &SessionKey,
        now: SystemTime,
        wait: Duration,
    ) -> Result<Cleared, StoreError> {
        let name = key.file_name();
        let entry = match self.open_entry(&name)? {
            Opened::Missing => return Ok(Cleared::Gone),
            Opened::File(entry) => entry,
        };
        if let Ok(record) = self.read_record(&entry, &name)
            && !record.is_expired(now)
        {
            return Ok(Cleared::Kept);
        }
        drop(entry);
        let Some(held) = self.lock_current(key, &name, wait)? else {
            return Ok(Cleared::Gone);
        };
        let verdict = match self.read_record(&held.entry, &held.name) {
            Ok(record) if record.is_expired(SystemTime::now()) => Cleared::Expired,
            Ok(_) => return Ok(Cleared::Kept),
            Err(ReadError::Store(e)) => return Err(e),
            Err(ReadError::TooLarge | ReadError::Corrupt(_)) => Cleared::Corrupt,
        };
        self.unlink(&name)
            .map_err(|e| self.fs_error("remove session file", &name, e))?;
        Ok(verdict)
    }
}

enum Cleared {
    Kept,
    Expired,
    Corrupt,
    Gone,
}

enum ReadError {
    Store(StoreError),
    TooLarge,
    Corrupt(DecodeError),
}

/// Sets a new session file's modification time to when the session expires, so that
/// cleanup can tell a live session from its metadata alone (as PHP's gc reads mtimes).
fn stamp_expiry(file: &File, expires_at: Option<SystemTime>) -> io::Result<()> {
    match expires_at {
        Some(at) => file.set_modified(at),
        None => Ok(()),
    }
}

/// The most a skipped refresh lets the stored expiry lag behind the cookie's.
pub const REFRESH_SLACK: Duration = Duration::from_secs(60);

/// What a save would store.
enum Merged {
    /// The data and the expiry rule as stored: only the expiry would move, a little.
    Unchanged(Record),
    /// A new copy to write.
    Changed(Record),
}

/// Whether moving `stored`'s expiry to `new_expires_at` is a move by less than 1% of the
/// session's lifetime, and at most [`REFRESH_SLACK`]: then a save that changes nothing else
/// is skipped (as PHP's `lazy_write`).
fn expiry_moved_little(stored: &Record, new_expires_at: SystemTime, cookie_age: Duration) -> bool {
    let lifetime = new_expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .max(match stored.expiry {
            crate::expiry::Expiry::Seconds(n) => Duration::from_secs(n),
            _ => cookie_age,
        });
    let slack = (lifetime / 100).min(REFRESH_SLACK);
    let moved = new_expires_at
        .duration_since(stored.expires_at)
        .unwrap_or_else(|e| e.duration());
    moved < slack
}

/// `.<uuid>.tmp`: the name of a temp file of this store.
fn is_temp_name(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_suffix(".tmp"))
        .and_then(SessionKey::parse)
        .is_some()
}

impl SessionStore for FileStore {
    fn load(&self, key: &SessionKey) -> Result<Option<Loaded>, StoreError> {
        let name = key.file_name();
        let found = match self.locking {
            Locking::Merge => match self.open_entry(&name) {
                Ok(Opened::File(entry)) => {
                    return Ok(self
                        .live_record(&entry, &name)?
                        .map(|record| Loaded { record, lock: None }));
                }
                Ok(Opened::Missing) => return Ok(None),
                Err(e) => Err(e),
            },
            Locking::Request => match self.lock_current(key, &name, self.lock_timeout) {
                Ok(Some(held)) => return self.loaded_locked(held),
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

    fn acquire(&self, key: &SessionKey) -> Result<Option<SessionLock>, StoreError> {
        self.acquire_within(key, self.lock_timeout)
    }

    fn acquire_within(
        &self,
        key: &SessionKey,
        wait: Duration,
    ) -> Result<Option<SessionLock>, StoreError> {
        let name = key.file_name();
        if self.locking == Locking::Request {
            return match self.lock_current(key, &name, wait) {
                Ok(Some(held)) => Ok(Some(SessionLock::new(held))),
                Ok(None) | Err(StoreError::NotARegularFile(_)) => Ok(None),
                Err(e) => Err(e),
            };
        }
        // merge: wait until no one holds the lock, and let go at once. The open file goes to
        // the load only as a candidate: the load uses it if it is still the file with that
        // name when the handler runs (a file is never modified in place, so the same inode
        // means the same content), and opens the name afresh otherwise.
        let quiet_since = self.quiet_now();
        let entry = match self.open_entry(&name) {
            Ok(Opened::File(entry)) => entry,
            Ok(Opened::Missing) | Err(StoreError::NotARegularFile(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let start = Instant::now();
        self.lock_by(key, &entry, &name, start, later(start, wait))?;
        unlock(&entry.file)
            .map_err(|e| StoreError::io("unlock session file", self.shown(&name), e))?;
        Ok(Some(SessionLock::new(Candidate {
            entry,
            name,
            quiet_since,
        })))
    }

    fn load_locked(
        &self,
        key: &SessionKey,
        lock: SessionLock,
    ) -> Result<Option<Loaded>, StoreError> {
        let lock = match lock.into_inner::<Candidate>() {
            Ok(candidate) if candidate.name == key.file_name() => {
                // Checked now, when the handler runs: the copy is current or not used.
                if self.candidate_is_current(&candidate)? {
                    return Ok(self
                        .live_record(&candidate.entry, &candidate.name)?
                        .map(|record| Loaded { record, lock: None }));
                }
                return self.load(key);
            }
            Ok(_) => return self.load(key),
            Err(lock) => lock,
        };
        if let Ok(held) = lock.into_inner::<LockedFile>()
            && held.name == key.file_name()
            && matches!(self.is_current(&held.entry, &held.name), Ok(Some(true)))
        {
            return self.loaded_locked(held);
        }
        self.load(key)
    }

    fn create(&self, record: &Record) -> Result<SessionKey, StoreError> {
        let bytes = self.encode(None, record)?;
        if self.tmpfile.load(Ordering::Relaxed) {
            match self.create_from_tmpfile(&bytes, record.expires_at) {
                Ok(Some(key)) => return Ok(key),
                Ok(None) => self.tmpfile.store(false, Ordering::Relaxed),
                Err(e) => return Err(e),
            }
        }
        let temp = self.write_temp_for(".", &bytes, record.expires_at)?;
        // A collision of 122 random bits does not happen; the loop is for correctness only.
        for _ in 0..16 {
            let key = SessionKey::generate();
            let name = key.file_name();
            match self.link_new(&temp, &name) {
                Ok(true) => {
                    self.sync_dir()?;
                    return Ok(key);
                }
                Ok(false) => continue,
                Err(e) => {
                    let _ = self.unlink(&temp);
                    return Err(self.fs_error("create session file", &name, e));
                }
            }
        }
        let _ = self.unlink(&temp);
        Err(StoreError::Unavailable(
            "16 fresh random keys were all taken; the random source is broken".into(),
        ))
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
        let record = match self.merged(&held, changes)? {
            Merged::Unchanged(stored) => return Ok(stored),
            Merged::Changed(record) => record,
        };
        let bytes = self.encode(Some(key), &record)?;
        let temp = self.write_temp_for(&held.name, &bytes, record.expires_at)?;
        self.replace(&temp, &held.name)?;
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
        let (Merged::Changed(record) | Merged::Unchanged(record)) = self.merged(&held, changes)?;
        let new_key = self.create(&record)?;
        // The new session exists before the old one goes: a crash in between leaves both,
        // never neither.
        self.unlink(&held.name)
            .map_err(|e| self.fs_error("remove session file", &held.name, e))?;
        self.sync_dir()?;
        Ok((new_key, record))
    }

    fn delete(&self, key: &SessionKey, lock: Option<SessionLock>) -> Result<(), StoreError> {
        let Some(held) = self.lock_for_write(key, lock)? else {
            return Ok(());
        };
        match self.unlink(&held.name) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.check_dir(),
            Err(e) => Err(self.fs_error("remove session file", &held.name, e)),
        }
    }

    fn exists(&self, key: &SessionKey) -> Result<bool, StoreError> {
        let name = key.file_name();
        match statat(&self.dirfd, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(FileType::from_raw_mode(st.st_mode) == FileType::RegularFile),
            Err(Errno::NOENT) => self.check_dir().map(|()| false),
            Err(e) => Err(StoreError::io(
                "inspect session file",
                self.shown(&name),
                e.into(),
            )),
        }
    }

    fn clear_expired(&self) -> Result<ClearReport, StoreError> {
        let mut sweep = Sweep::new();
        while !self.sweep_with(&mut sweep, Duration::from_secs(3600), self.lock_timeout)? {}
        Ok(sweep.report().clone())
    }

    fn sweep_step(&self, sweep: &mut Sweep, budget: Duration) -> Result<bool, StoreError> {
        // Within a short budget a locked session is left for the next pass, not waited for.
        self.sweep_with(sweep, budget, budget.min(self.lock_timeout))
    }
}

impl FileStore {
    /// `clear_expired` with a progress report: `progress` is called about every `every`
    /// with the pass so far (entries scanned, the counts).
    ///
    /// # Errors
    /// The directory cannot be listed.
    pub fn clear_expired_with_progress(
        &self,
        every: Duration,
        progress: &mut dyn FnMut(&Sweep),
    ) -> Result<ClearReport, StoreError> {
        let mut sweep = Sweep::new();
        loop {
            let done = self.sweep_with(&mut sweep, every, self.lock_timeout)?;
            progress(&sweep);
            if done {
                return Ok(sweep.report().clone());
            }
        }
    }

    /// Goes on with a pass over the directory for about `budget`; `Ok(true)` when the pass
    /// is complete (the next call starts a new one).
    fn sweep_with(
        &self,
        sweep: &mut Sweep,
        budget: Duration,
        wait: Duration,
    ) -> Result<bool, StoreError> {
        let deadline = later(Instant::now(), budget);
        if sweep.cursor.is_none() {
            self.check_dir()?;
            let entries = Dir::read_from(&self.dirfd)
                .map_err(|e| StoreError::io("list session directory", &self.dir, e.into()))?;
            sweep.begin(Box::new(entries));
        }
        let now = sweep.now;
        loop {
            let Some(entries) = sweep.cursor.as_mut().and_then(|c| c.downcast_mut::<Dir>()) else {
                sweep.cursor = None;
                return Ok(true);
            };
            match entries.next() {
                None => {
                    sweep.cursor = None;
                    return Ok(true);
                }
                Some(Err(e)) => {
                    sweep.cursor = None;
                    return Err(StoreError::io(
                        "list session directory",
                        &self.dir,
                        e.into(),
                    ));
                }
                Some(Ok(entry)) => {
                    let name = entry.file_name().to_bytes();
                    if name == b"." || name == b".." {
                        continue;
                    }
                    match std::str::from_utf8(name) {
                        Ok(name) => {
                            self.clear_entry(name, entry.file_type(), now, wait, &mut sweep.report)
                        }
                        Err(_) => sweep.report.skipped += 1,
                    }
                    sweep.scanned += 1;
                }
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expiry::Expiry;
    use serde_json::{Map, json};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn store() -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("sessions")).unwrap();
        (dir, store)
    }

    fn changes(pairs: &[(&str, serde_json::Value)]) -> ChangeSet {
        let mut c = ChangeSet::new(Duration::from_secs(3600));
        for (k, v) in pairs {
            c.set(k, v.clone());
        }
        c
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn open_creates_a_private_directory() {
        let (_tmp, store) = store();
        let mode = fs::metadata(store.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(
            files_in(store.dir()).is_empty(),
            "the write probe is removed"
        );
    }

    #[test]
    fn open_tightens_an_existing_open_directory() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let store = FileStore::open(tmp.path()).unwrap();
        let mode = fs::metadata(store.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn open_refuses_a_path_that_is_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        fs::write(&file, "x").unwrap();
        let err = FileStore::open(&file).unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }

    #[test]
    fn create_writes_a_private_file_named_by_the_key() {
        let (_tmp, store) = store();
        let key = store
            .create(&changes(&[("sname", json!("abc"))]).to_new_record(SystemTime::now()))
            .unwrap();
        assert_eq!(files_in(store.dir()), vec![key.file_name()]);
        let path = store.path_of(&key);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"sname\": \"abc\""), "{text}");
        assert!(text.contains("\"format\": 1"), "{text}");
    }

    #[test]
    fn save_merges_changes_into_the_newest_copy() {
        let (_tmp, store) = store();
        let key = store
            .create(&changes(&[("base", json!(1))]).to_new_record(SystemTime::now()))
            .unwrap();
        store
            .save(&key, &changes(&[("a", json!("A"))]), None)
            .unwrap();
        let record = store
            .save(&key, &changes(&[("b", json!("B"))]), None)
            .unwrap();
        assert_eq!(
            serde_json::Value::Object(record.data),
            json!({"base": 1, "a": "A", "b": "B"})
        );
        let loaded = store.load(&key).unwrap().unwrap().record;
        assert_eq!(loaded.data.len(), 3);
        assert_eq!(
            files_in(store.dir()),
            vec![key.file_name()],
            "no temp files left"
        );
    }

    #[test]
    fn save_of_a_deleted_session_fails_and_does_not_resurrect_it() {
        let (_tmp, store) = store();
        let key = store
            .create(&changes(&[]).to_new_record(SystemTime::now()))
            .unwrap();
        store.delete(&key, None).unwrap();
        let err = store
            .save(&key, &changes(&[("a", json!(1))]), None)
            .unwrap_err();
        assert!(matches!(err, StoreError::Deleted(k) if k == key), "{err}");
        assert!(!store.exists(&key).unwrap());
        assert!(files_in(store.dir()).is_empty());
    }

    #[test]
    fn open_refuses_a_directory_given_as_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = FileStore::open(&link).unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn a_removed_directory_is_an_error_never_no_session_and_never_recreated() {
        let (_tmp, store) = store();
        let key = store
            .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
            .unwrap();
        let path = store.dir().to_path_buf();
        fs::remove_dir_all(&path).unwrap();
        let gone = |e: &StoreError| matches!(e, StoreError::DirectoryGone(p) if *p == path);
        let err = store.load(&key).unwrap_err();
        assert!(gone(&err), "{err}");
        assert!(err.to_string().contains("restart"), "{err}");
        let err = store
            .save(&key, &changes(&[("b", json!(2))]), None)
            .unwrap_err();
        assert!(gone(&err), "{err}");
        let err = store
            .create(&changes(&[("c", json!(3))]).to_new_record(SystemTime::now()))
            .unwrap_err();
        assert!(gone(&err), "{err}");
        assert!(gone(&store.exists(&key).unwrap_err()));
        assert!(gone(&store.clear_expired().unwrap_err()));
        // A directory made again at the path is somebody else's: never adopted.
        fs::create_dir(&path).unwrap();
        let err = store
            .create(&changes(&[("c", json!(3))]).to_new_record(SystemTime::now()))
            .unwrap_err();
        assert!(gone(&err), "{err}");
        assert!(files_in(&path).is_empty());
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_is_never_followed() {
        let (tmp, store) = store();
        let key = store
            .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
            .unwrap();
        let path = store.dir().to_path_buf();
        let moved = tmp.path().join("moved");
        fs::rename(&path, &moved).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        // The attacker's copy of the session, with other data, under the same name.
        let planted = changes(&[("a", json!("planted"))]).to_new_record(SystemTime::now());
        fs::write(
            elsewhere.join(key.file_name()),
            file_format::encode(&planted),
        )
        .unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();

        let loaded = store.load(&key).unwrap().unwrap().record;
        assert_eq!(
            loaded.data.get("a"),
            Some(&json!(1)),
            "read from the directory opened"
        );
        store
            .save(&key, &changes(&[("b", json!(2))]), None)
            .unwrap();
        let new = store
            .create(&changes(&[("n", json!(1))]).to_new_record(SystemTime::now()))
            .unwrap();
        let mut expected = vec![key.file_name(), new.file_name()];
        expected.sort();
        assert_eq!(
            files_in(&moved),
            expected,
            "writes go where the store opened"
        );
        assert_eq!(files_in(&elsewhere), vec![key.file_name()]);
        assert_eq!(
            fs::read(elsewhere.join(key.file_name())).unwrap(),
            file_format::encode(&planted),
            "the symlink's target is never written"
        );
        store.delete(&key, None).unwrap();
        assert_eq!(files_in(&moved), vec![new.file_name()]);
        assert_eq!(files_in(&elsewhere), vec![key.file_name()]);
    }

    #[test]
    fn a_merge_mode_load_sees_every_change_made_after_the_lock_preflight() {
        let (_tmp, store) = store();
        let key = store
            .create(&changes(&[("n", json!(1))]).to_new_record(SystemTime::now()))
            .unwrap();
        // Nothing changed between acquire and load: the candidate is used.
        let lock = store.acquire(&key).unwrap().expect("a candidate");
        let loaded = store.load_locked(&key, lock).unwrap().unwrap().record;
        assert_eq!(loaded.data.get("n"), Some(&json!(1)));
        // A save in between: the load sees it.
        let lock = store.acquire(&key).unwrap().expect("a candidate");
        store
            .save(&key, &changes(&[("n", json!(2))]), None)
            .unwrap();
        let loaded = store.load_locked(&key, lock).unwrap().unwrap().record;
        assert_eq!(loaded.data.get("n"), Some(&json!(2)));
        // A cycle in between: the old key is dead.
        let lock = store.acquire(&key).unwrap().expect("a candidate");
        let (new, _) = store.cycle(&key, &changes(&[]), None).unwrap();
        assert!(store.load_locked(&key, lock).unwrap().is_none());
        // A delete (a logout) in between: nothing.
        let lock = store.acquire(&new).unwrap().expect("a candidate");
        store.delete(&new, None).unwrap();
        assert!(store.load_locked(&new, lock).unwrap().is_none());
    }

    #[test]
    fn load_never_creates_a_file() {
        let (_tmp, store) = store();
        let key = SessionKey::generate();
        assert!(store.load(&key).unwrap().is_none());
        assert!(files_in(store.dir()).is_empty());
    }

    #[test]
    fn expired_sessions_load_as_none_and_are_cleared() {
        let (_tmp, store) = store();
        let mut c = changes(&[("a", json!(1))]);
        c.expiry = Some(Expiry::Seconds(0));
        let expired = store.create(&c.to_new_record(SystemTime::now())).unwrap();
        let live = store
            .create(&changes(&[("b", json!(2))]).to_new_record(SystemTime::now()))
            .unwrap();
        assert!(store.load(&expired).unwrap().is_none());
        assert!(store.load(&live).unwrap().is_some());
        let report = store.clear_expired().unwrap();
        assert_eq!((report.expired, report.kept), (1, 1), "{report:?}");
        assert_eq!(files_in(store.dir()), vec![live.file_name()]);
    }

    #[test]
    fn corrupt_and_hostile_entries_are_no_session() {
        let (_tmp, store) = store();
        let outside = store.dir().parent().unwrap().join("outside.json");
        let good = changes(&[("secret", json!(1))]).to_new_record(SystemTime::now());
        fs::write(&outside, file_format::encode(&good)).unwrap();
        type Make = Box<dyn Fn(&Path)>;
        let cases: Vec<(SessionKey, Make)> = vec![
            (
                SessionKey::generate(),
                Box::new(|p| fs::write(p, b"").unwrap()),
            ),
            (
                SessionKey::generate(),
                Box::new(|p| fs::write(p, b"{\"format\":1,").unwrap()),
            ),
            (
                SessionKey::generate(),
                Box::new(|p| fs::write(p, b"\xff\xfe\x00\x01").unwrap()),
            ),
            (
                SessionKey::generate(),
                Box::new(|p| fs::create_dir(p).unwrap()),
            ),
            (
                SessionKey::generate(),
                Box::new(move |p| std::os::unix::fs::symlink(&outside, p).unwrap()),
            ),
            (
                SessionKey::generate(),
                Box::new(|p| {
                    let status = std::process::Command::new("mkfifo")
                        .arg(p)
                        .status()
                        .unwrap();
                    assert!(status.success());
                }),
            ),
        ];
        for (key, make) in &cases {
            make(&store.path_of(key));
            assert!(store.load(key).unwrap().is_none(), "{key}");
        }
        let huge = SessionKey::generate();
        let store = store.with_max_file_size(64);
        let big = changes(&[("x", json!("y".repeat(100)))]).to_new_record(SystemTime::now());
        fs::write(store.path_of(&huge), file_format::encode(&big)).unwrap();
        assert!(store.load(&huge).unwrap().is_none());
        // The symlink's target is never written through either.
        let symlinked = &cases[4].0;
        let err = store
            .save(symlinked, &changes(&[("a", json!(1))]), None)
            .unwrap_err();
        assert!(matches!(err, StoreError::NotARegularFile(_)), "{err}");
        let outside = store.dir().parent().unwrap().join("outside.json");
        assert_eq!(fs::read(&outside).unwrap(), file_format::encode(&good));
    }

    #[test]
    fn save_over_the_size_limit_is_refused_and_keeps_the_old_copy() {
        let (_tmp, store) = store();
        let store = store.with_max_file_size(200);
        let key = store
            .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
            .unwrap();
        let before = fs::read(store.path_of(&key)).unwrap();
        let err = store
            .save(&key, &changes(&[("b", json!("z".repeat(500)))]), None)
            .unwrap_err();
        assert!(
            matches!(err, StoreError::TooLarge { limit: 200, .. }),
            "{err}"
        );
        assert_eq!(fs::read(store.path_of(&key)).unwrap(), before);
        assert_eq!(files_in(store.dir()), vec![key.file_name()]);
    }

    #[test]
    fn cycle_moves_the_data_to_a_new_key_and_removes_the_old_file() {
        let (_tmp, store) = store();
        let old = store
            .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
            .unwrap();
        let (new, record) = store
            .cycle(&old, &changes(&[("b", json!(2))]), None)
            .unwrap();
        assert_ne!(old, new);
        assert_eq!(
            serde_json::Value::Object(record.data),
            json!({"a": 1, "b": 2})
        );
        assert_eq!(files_in(store.dir()), vec![new.file_name()]);
    }

    #[test]
    fn clear_expired_removes_old_leftovers_and_corrupt_files_only() {
        let (_tmp, store) = store();
        let store = store.with_leftover_age(Duration::ZERO);
        let leftover = format!(".{}.tmp", SessionKey::generate());
        fs::write(store.dir().join(&leftover), b"half a sess").unwrap();
        let corrupt = SessionKey::generate();
        fs::write(store.path_of(&corrupt), b"{").unwrap();
        fs::write(store.dir().join("README.md"), b"hello").unwrap();
        let live = store
            .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
            .unwrap();
        let report = store.clear_expired().unwrap();
        assert_eq!(
            report,
            ClearReport {
                expired: 0,
                corrupt: 1,
                leftovers: 1,
                kept: 1,
                skipped: 1
            }
        );
        let mut expected = vec!["README.md".to_string(), live.file_name()];
        expected.sort();
        assert_eq!(files_in(store.dir()), expected);
    }

    #[test]
    fn a_sweep_in_small_steps_does_what_clear_expired_does() {
        let (_tmp, store) = store();
        let mut expire_now = changes(&[("a", json!(1))]);
        expire_now.expiry = Some(Expiry::Seconds(0));
        for i in 0..60 {
            let c = if i % 3 == 0 {
                expire_now.clone()
            } else {
                changes(&[("b", json!(i))])
            };
            store.create(&c.to_new_record(SystemTime::now())).unwrap();
        }
        let mut sweep = Sweep::new();
        let mut steps = 0;
        while !store.sweep_step(&mut sweep, Duration::ZERO).unwrap() {
            steps += 1;
            assert!(sweep.in_progress());
        }
        assert!(
            steps >= 59,
            "one entry per zero-budget step, got {steps} steps"
        );
        assert_eq!((sweep.report().expired, sweep.report().kept), (20, 40));
        assert_eq!(sweep.scanned(), 60);
        assert_eq!(files_in(store.dir()).len(), 40);
        assert!(!sweep.in_progress());
    }

    #[test]
    fn acquire_within_zero_tries_the_lock_once_in_both_modes() {
        let (_tmp, store) = store();
        let key = store
            .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
            .unwrap();
        let holder = File::open(store.path_of(&key)).unwrap();
        fs2::FileExt::lock_exclusive(&holder).unwrap();
        let store = store.with_lock_timeout(Duration::from_secs(60));
        for locking in [Locking::Merge, Locking::Request] {
            let store = FileStore::open(store.dir())
                .unwrap()
                .with_locking(locking)
                .with_lock_timeout(Duration::from_secs(60));
            let err = store.acquire_within(&key, Duration::ZERO).unwrap_err();
            assert!(matches!(err, StoreError::LockTimeout { .. }), "{err}");
        }
        drop(holder);
        let request = FileStore::open(store.dir())
            .unwrap()
            .with_locking(Locking::Request);
        let lock = request.acquire_within(&key, Duration::ZERO).unwrap();
        assert!(lock.is_some(), "free: taken at once and handed on");
        drop(lock);
        assert!(
            store
                .acquire_within(&key, Duration::ZERO)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_sweep_leaves_a_locked_expired_session_for_later_instead_of_waiting() {
        let (_tmp, store) = store();
        let mut expire_now = changes(&[("a", json!(1))]);
        expire_now.expiry = Some(Expiry::Seconds(0));
        let key = store
            .create(&expire_now.to_new_record(SystemTime::now()))
            .unwrap();
        let holder = File::open(store.path_of(&key)).unwrap();
        fs2::FileExt::lock_exclusive(&holder).unwrap();
        let started = Instant::now();
        let mut sweep = Sweep::new();
        while !store
            .sweep_step(&mut sweep, Duration::from_millis(2))
            .unwrap()
        {}
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(sweep.report().skipped, 1);
        assert!(store.exists(&key).unwrap());
        drop(holder);
        assert_eq!(store.clear_expired().unwrap().expired, 1);
    }

    #[test]
    fn clear_expired_never_removes_a_session_refreshed_while_it_waited() {
        let (_tmp, store) = store();
        let store = std::sync::Arc::new(store.with_locking(Locking::Request));
        let mut expire_now = changes(&[("a", json!(1))]);
        expire_now.expiry = Some(Expiry::Seconds(0));
        let key = store
            .create(&expire_now.to_new_record(SystemTime::now()))
            .unwrap();
        // A request holds the session (it is writing it)...
        let lock = store.acquire(&key).unwrap().expect("the lock");
        let cleaner = {
            let store = store.clone();
            std::thread::spawn(move || store.clear_expired().unwrap())
        };
        std::thread::sleep(Duration::from_millis(150));
        // ...and refreshes it while clearsessions waits for the lock.
        let mut refresh = changes(&[]);
        refresh.expiry = Some(Expiry::Default);
        store.save(&key, &refresh, Some(lock)).unwrap();
        let report = cleaner.join().unwrap();
        assert_eq!((report.expired, report.kept), (0, 1), "{report:?}");
        assert!(store.load(&key).unwrap().is_some());
    }

    #[test]
    fn a_save_that_only_refreshes_the_expiry_is_skipped_but_a_change_is_written() {
        let (_tmp, store) = store();
        let key = store
            .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
            .unwrap();
        let ino = || fs::metadata(store.path_of(&key)).unwrap().ino();
        let before = ino();
        store
            .save(&key, &changes(&[("a", json!(1))]), None)
            .unwrap();
        assert_eq!(
            ino(),
            before,
            "same data, expiry moved by less than a minute: no write"
        );
        store
            .save(&key, &changes(&[("a", json!(2))]), None)
            .unwrap();
        assert_ne!(ino(), before, "a change is written");
        let mut longer = changes(&[]);
        longer.expiry = Some(Expiry::Seconds(7200));
        let after_change = ino();
        store.save(&key, &longer, None).unwrap();
        assert_ne!(ino(), after_change, "a new expiry rule is written");
    }

    #[test]
    fn a_refresh_is_written_once_the_expiry_moved_more_than_the_slack() {
        let now = SystemTime::now();
        let stored = Record {
            data: Map::new(),
            expiry: Expiry::Default,
            expires_at: now,
        };
        let age = Duration::from_secs(1_209_600);
        assert!(expiry_moved_little(
            &stored,
            now + Duration::from_secs(59),
            age
        ));
        assert!(!expiry_moved_little(
            &stored,
            now + Duration::from_secs(61),
            age
        ));
        // A short session: 1% of 10 s.
        let short = Record {
            expiry: Expiry::Seconds(10),
            ..stored.clone()
        };
        assert!(!expiry_moved_little(
            &short,
            now + Duration::from_secs(1),
            age
        ));
    }

    #[test]
    fn a_session_files_mtime_is_its_expiry_and_cleanup_trusts_it() {
        let (_tmp, store) = store();
        let mut c = changes(&[("a", json!(1))]);
        c.expiry = Some(Expiry::Seconds(3600));
        let record = c.to_new_record(SystemTime::now());
        let key = store.create(&record).unwrap();
        let mtime = fs::metadata(store.path_of(&key))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(mtime, record.expires_at);
        store
            .save(&key, &changes(&[("b", json!(2))]), None)
            .unwrap();
        let saved = store.load(&key).unwrap().unwrap().record;
        let mtime = fs::metadata(store.path_of(&key))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(mtime, saved.expires_at);
        // A live-stamped file is kept without being read.
        let stamped = SessionKey::generate();
        fs::write(store.path_of(&stamped), b"not read").unwrap();
        File::options()
            .write(true)
            .open(store.path_of(&stamped))
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(60))
            .unwrap();
        let report = store.clear_expired().unwrap();
        assert_eq!((report.kept, report.corrupt), (2, 0), "{report:?}");
    }

    #[test]
    fn young_leftovers_are_kept() {
        let (_tmp, store) = store();
        let leftover = format!(".{}.tmp", SessionKey::generate());
        fs::write(store.dir().join(&leftover), b"in flight").unwrap();
        let report = store.clear_expired().unwrap();
        assert_eq!((report.leftovers, report.skipped), (0, 1));
    }

    #[test]
    fn fsync_mode_writes_the_same_files() {
        let (_tmp, store) = store();
        let store = store.with_fsync(true);
        let key = store
            .create(&changes(&[("a", json!(1))]).to_new_record(SystemTime::now()))
            .unwrap();
        store
            .save(&key, &changes(&[("b", json!(2))]), None)
            .unwrap();
        assert_eq!(store.load(&key).unwrap().unwrap().record.data.len(), 2);
    }

    #[test]
    fn request_mode_holds_the_lock_until_the_session_is_saved() {
        let (_tmp, store) = store();
        let store = store
            .with_locking(Locking::Request)
            .with_lock_timeout(Duration::from_millis(100));
        let key = store
            .create(&changes(&[("n", json!(0))]).to_new_record(SystemTime::now()))
            .unwrap();
        let first = store.load(&key).unwrap().unwrap();
        let err = store.load(&key).unwrap_err();
        assert!(matches!(err, StoreError::LockTimeout { .. }), "{err}");
        store
            .save(&key, &changes(&[("n", json!(1))]), first.lock)
            .unwrap();
        let second = store.load(&key).unwrap().unwrap();
        assert_eq!(second.record.data["n"], json!(1));
    }
}
