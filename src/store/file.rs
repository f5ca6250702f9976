//! FileStore: one JSON file per session, advisory locks, atomic replacement.
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

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{AtFlags, CWD, Mode, OFlags, RenameFlags, linkat, openat, renameat_with};
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
    dir: PathBuf,
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
}

/// A session file locked exclusively, checked to be the file now at its path.
#[derive(Debug)]
struct LockedFile {
    entry: Entry,
    path: PathBuf,
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

/// What is at a session's path.
enum Opened {
    Missing,
    File(Entry),
}

/// A session file opened by `acquire` in `merge` mode (unlocked), for the load to read.
#[derive(Debug)]
struct OpenedFile {
    entry: Entry,
    path: PathBuf,
}

impl FileStore {
    /// Opens the store in `dir`, creating the directory (mode 0700) if it is missing, and
    /// checks that files can be created in it.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] naming the directory and the cause when it cannot be created
    /// or written.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let unavailable = |what: &str, e: io::Error| {
            StoreError::Unavailable(format!("session directory {} {what}: {e}", dir.display()))
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| unavailable("cannot be created", e))?;
        let meta = fs::metadata(&dir).map_err(|e| unavailable("cannot be read", e))?;
        if !meta.is_dir() {
            return Err(unavailable(
                "is not a directory",
                io::Error::from(io::ErrorKind::NotADirectory),
            ));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            // Session keys are bearer credentials: keep the listing private.
            if let Err(e) = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)) {
                log::warn!(
                    "session directory {} is readable by others and cannot be made 0700: {e}",
                    dir.display()
                );
            }
        }
        let store = FileStore {
            dir: dir.clone(),
            locking: Locking::Merge,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            fsync: false,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            leftover_age: DEFAULT_LEFTOVER_AGE,
            renameat2: AtomicBool::new(true),
            tmpfile: AtomicBool::new(true),
            corrupt_logged: Mutex::new(HashSet::new()),
        };
        let (probe, _) = store
            .write_temp(b"probe\n", None)
            .map_err(|e| unavailable("is not writable", e))?;
        fs::remove_file(&probe).map_err(|e| unavailable("is not writable", e))?;
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

    /// The sessions directory.
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

    /// Opens what is at `path` without following a symlink and without blocking on a FIFO,
    /// and refuses anything but a regular file.
    fn open_entry(&self, path: &Path) -> Result<Opened, StoreError> {
        let flags = (OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32;
        match OpenOptions::new().read(true).custom_flags(flags).open(path) {
            Ok(file) => {
                let meta = file
                    .metadata()
                    .map_err(|e| StoreError::io("inspect session file", path, e))?;
                if meta.is_file() {
                    Ok(Opened::File(Entry {
                        file,
                        len: meta.len(),
                        ino: meta.ino(),
                        dev: meta.dev(),
                    }))
                } else {
                    Err(StoreError::NotARegularFile(path.to_path_buf()))
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Opened::Missing),
            Err(e) if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {
                Err(StoreError::NotARegularFile(path.to_path_buf()))
            }
            Err(e) => Err(StoreError::io("open session file", path, e)),
        }
    }

    /// Reads a whole session file, refusing more than the size limit.
    fn read_record(&self, entry: &Entry, path: &Path) -> Result<Record, ReadError> {
        if entry.len > self.max_file_size as u64 {
            return Err(ReadError::TooLarge);
        }
        // One pread of the length fstat gave: no seek, no read to find the end.
        let mut bytes = vec![0; entry.len as usize];
        entry
            .file
            .read_exact_at(&mut bytes, 0)
            .map_err(|e| ReadError::Store(StoreError::io("read session file", path, e)))?;
        file_format::decode(&bytes).map_err(ReadError::Corrupt)
    }

    /// The live session in `file`: `None` (logged) when it is unreadable, corrupt, too large
    /// or expired.
    fn live_record(&self, entry: &Entry, path: &Path) -> Option<Record> {
        match self.stored_record(entry, path) {
            Ok(record) => record.filter(|r| !r.is_expired(SystemTime::now())),
            Err(e) => {
                self.log_bad_file(path, &e);
                None
            }
        }
    }

    /// The record in a session file; `Ok(None)` (logged) when the file does not hold one
    /// (corrupt, too large); `Err` when it cannot be read at all.
    fn stored_record(&self, entry: &Entry, path: &Path) -> Result<Option<Record>, StoreError> {
        match self.read_record(entry, path) {
            Ok(record) => Ok(Some(record)),
            Err(ReadError::Store(e)) => Err(e),
            Err(ReadError::TooLarge) => {
                self.log_bad_file(path, &"over the size limit");
                Ok(None)
            }
            Err(ReadError::Corrupt(why)) => {
                self.log_bad_file(path, &why);
                Ok(None)
            }
        }
    }

    /// Takes `entry`'s lock by `deadline`; else `LockTimeout`, counting the wait from `start`.
    fn lock_by(
        &self,
        key: &SessionKey,
        entry: &Entry,
        path: &Path,
        start: Instant,
        deadline: Instant,
    ) -> Result<(), StoreError> {
        let locked = lock_exclusive_until(&entry.file, deadline)
            .map_err(|e| StoreError::io("lock session file", path, e))?;
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
    fn loaded_locked(&self, held: LockedFile) -> Option<Loaded> {
        let record = self.live_record(&held.entry, &held.path)?;
        Some(Loaded {
            record,
            lock: Some(SessionLock::new(held)),
        })
    }

    /// Logs a file that does not hold a session, once per file.
    fn log_bad_file(&self, path: &Path, why: &dyn std::fmt::Display) {
        let mut seen = match self.corrupt_logged.lock() {
            Ok(seen) => seen,
            Err(poisoned) => poisoned.into_inner(),
        };
        if seen.len() >= CORRUPT_LOG_MEMORY {
            seen.clear();
        }
        if seen.insert(path.to_path_buf()) {
            log::warn!(
                "{} is not a usable session file ({why}); treated as no session, \
                 left for clearsessions",
                path.display()
            );
        }
    }

    /// Opens and locks the file now at `path`, checking that the inode locked is still the
    /// one at the path. `Ok(None)`: there is no session file (deleted meanwhile).
    fn lock_current(
        &self,
        key: &SessionKey,
        path: &Path,
        wait: Duration,
    ) -> Result<Option<LockedFile>, StoreError> {
        let start = Instant::now();
        let deadline = later(start, wait);
        loop {
            let entry = match self.open_entry(path)? {
                Opened::Missing => return Ok(None),
                Opened::File(entry) => entry,
            };
            self.lock_by(key, &entry, path, start, deadline)?;
            let held = LockedFile {
                entry,
                path: path.to_path_buf(),
            };
            match self.is_current(&held)? {
                Some(true) => return Ok(Some(held)),
                Some(false) => continue, // replaced while we waited: lock the new one
                None => return Ok(None),
            }
        }
    }

    /// Whether the locked inode is still the file at its path; `None` if the path is gone.
    fn is_current(&self, held: &LockedFile) -> Result<Option<bool>, StoreError> {
        match fs::symlink_metadata(&held.path) {
            Ok(now) => Ok(Some(
                now.ino() == held.entry.ino && now.dev() == held.entry.dev,
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("inspect session file", &held.path, e)),
        }
    }

    /// The lock for a write: the one held since `load` (request mode) if it is still on the
    /// current file, else a fresh one. `Ok(None)`: the session is gone.
    fn lock_for_write(
        &self,
        key: &SessionKey,
        held: Option<SessionLock>,
    ) -> Result<Option<LockedFile>, StoreError> {
        let path = self.path_of(key);
        if let Some(held) = held.and_then(|l| l.into_inner::<LockedFile>().ok())
            && held.path == path
        {
            match self.is_current(&held)? {
                Some(true) => return Ok(Some(held)),
                None => return Ok(None),
                Some(false) => {} // replaced behind our back: lock afresh
            }
        }
        self.lock_current(key, &path, self.lock_timeout)
    }

    /// The newest stored copy under a held lock with `changes` applied. A file that became
    /// unreadable is replaced by the changes alone rather than blocking the session forever.
    /// `Merged::Unchanged` when the changes would only move the expiry a little.
    fn merged(&self, held: &LockedFile, changes: &ChangeSet) -> Result<Merged, StoreError> {
        let now = SystemTime::now();
        Ok(match self.stored_record(&held.entry, &held.path)? {
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

    /// Writes `bytes` to a new temp file (0600) in the directory: `.<uuid>.tmp`.
    fn write_temp(
        &self,
        bytes: &[u8],
        expires_at: Option<SystemTime>,
    ) -> io::Result<(PathBuf, File)> {
        let temp = self.dir.join(format!(".{}.tmp", SessionKey::generate()));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(OFlags::NOFOLLOW.bits() as i32)
            .open(&temp)?;
        let written = file
            .write_all(bytes)
            .and_then(|()| stamp_expiry(&file, expires_at))
            .and_then(|()| if self.fsync { file.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => Ok((temp, file)),
            Err(e) => {
                drop(file);
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    fn write_temp_for(
        &self,
        path: &Path,
        bytes: &[u8],
        expires_at: SystemTime,
    ) -> Result<PathBuf, StoreError> {
        self.write_temp(bytes, Some(expires_at))
            .map(|(temp, _)| temp)
            .map_err(|e| StoreError::io("write session file", path, e))
    }

    /// Makes a completed write durable: fsync the directory (with `fsync` on).
    fn sync_dir(&self) -> Result<(), StoreError> {
        if self.fsync {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io("sync session directory", &self.dir, e))?;
        }
        Ok(())
    }

    /// Atomically replaces the file at `path` (held locked) with the temp file.
    fn replace(&self, temp: &Path, path: &Path) -> Result<(), StoreError> {
        let result = if self.renameat2.load(Ordering::Relaxed) {
            match renameat_with(CWD, temp, CWD, path, RenameFlags::EXCHANGE) {
                Ok(()) => fs::remove_file(temp),
                Err(e) if e == Errno::INVAL || e == Errno::NOSYS || e == Errno::NOTSUP => {
                    self.renameat2.store(false, Ordering::Relaxed);
                    fs::rename(temp, path)
                }
                Err(e) => Err(e.into()),
            }
        } else {
            fs::rename(temp, path)
        };
        result.map_err(|e| {
            let _ = fs::remove_file(temp);
            StoreError::io("replace session file", path, e)
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
            CWD,
            &self.dir,
            OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => fd,
            Err(e) if unsupported(e) => return Ok(None),
            Err(e) => return Err(StoreError::io("create session file", &self.dir, e.into())),
        };
        let mut file = File::from(fd);
        file.write_all(bytes)
            .and_then(|()| stamp_expiry(&file, Some(expires_at)))
            .and_then(|()| if self.fsync { file.sync_data() } else { Ok(()) })
            .map_err(|e| StoreError::io("write session file", &self.dir, e))?;
        let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        for _ in 0..16 {
            let key = SessionKey::generate();
            let path = self.path_of(&key);
            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; /proc/self/fd works for everyone.
            let linked = match linkat(&file, "", CWD, &path, AtFlags::EMPTY_PATH) {
                Err(Errno::NOENT | Errno::PERM | Errno::ACCESS) => {
                    linkat(CWD, proc_path.as_str(), CWD, &path, AtFlags::SYMLINK_FOLLOW)
                }
                other => other,
            };
            match linked {
                Ok(()) => {
                    self.sync_dir()?;
                    return Ok(Some(key));
                }
                Err(Errno::EXIST) => continue,
                Err(e) if unsupported(e) || e == Errno::NOENT => return Ok(None),
                Err(e) => return Err(StoreError::io("create session file", path, e.into())),
            }
        }
        Err(StoreError::Unavailable(
            "16 fresh random keys were all taken; the random source is broken".into(),
        ))
    }

    /// Gives the temp file the name `path` unless something has it. `Ok(false)`: taken.
    fn link_new(&self, temp: &Path, path: &Path) -> io::Result<bool> {
        if self.renameat2.load(Ordering::Relaxed) {
            match renameat_with(CWD, temp, CWD, path, RenameFlags::NOREPLACE) {
                Ok(()) => return Ok(true),
                Err(Errno::EXIST) => return Ok(false),
                Err(e) if e == Errno::INVAL || e == Errno::NOSYS || e == Errno::NOTSUP => {
                    self.renameat2.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        match fs::hard_link(temp, path) {
            Ok(()) => fs::remove_file(temp).map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Classifies one directory entry for `clear_expired`.
    fn clear_entry(
        &self,
        entry: &fs::DirEntry,
        now: SystemTime,
        wait: Duration,
        report: &mut ClearReport,
    ) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            report.skipped += 1;
            return;
        };
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if let Some(key) = name.strip_suffix(".json").and_then(SessionKey::parse) {
            if !is_file {
                report.skipped += 1;
                return;
            }
            // The store stamps each file's mtime with its expiry: a file whose mtime is still
            // ahead is live, known without opening it (a million files in seconds).
            let live = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|mtime| mtime > now);
            if live {
                report.kept += 1;
                return;
            }
            match self.clear_session(&key, now, wait) {
                Ok(Cleared::Kept) => report.kept += 1,
                Ok(Cleared::Expired) => report.expired += 1,
                Ok(Cleared::Corrupt) => report.corrupt += 1,
                Ok(Cleared::Gone) => {}
                Err(e) => {
                    log::warn!("clearsessions: left {name}: {e}");
                    report.skipped += 1;
                }
            }
        } else if is_temp_name(name) && is_file {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|mtime| now.duration_since(mtime).unwrap_or_default() >= self.leftover_age)
                .unwrap_or(false);
            if old && fs::remove_file(entry.path()).is_ok() {
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
        let path = self.path_of(key);
        let entry = match self.open_entry(&path)? {
            Opened::Missing => return Ok(Cleared::Gone),
            Opened::File(entry) => entry,
        };
        if let Ok(record) = self.read_record(&entry, &path)
            && !record.is_expired(now)
        {
            return Ok(Cleared::Kept);
        }
        drop(entry);
        let Some(held) = self.lock_current(key, &path, wait)? else {
            return Ok(Cleared::Gone);
        };
        let verdict = match self.read_record(&held.entry, &held.path) {
            Ok(record) if record.is_expired(SystemTime::now()) => Cleared::Expired,
            Ok(_) => return Ok(Cleared::Kept),
            Err(ReadError::Store(e)) => return Err(e),
            Err(ReadError::TooLarge | ReadError::Corrupt(_)) => Cleared::Corrupt,
        };
        fs::remove_file(&path).map_err(|e| StoreError::io("remove session file", &path, e))?;
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
        let path = self.path_of(key);
        match self.locking {
            Locking::Merge => match self.open_entry(&path) {
                Ok(Opened::File(entry)) => Ok(self
                    .live_record(&entry, &path)
                    .map(|record| Loaded { record, lock: None })),
                Ok(Opened::Missing) => Ok(None),
                Err(e) => {
                    self.log_bad_file(&path, &e);
                    Ok(None)
                }
            },
            Locking::Request => match self.lock_current(key, &path, self.lock_timeout) {
                Ok(Some(held)) => Ok(self.loaded_locked(held)),
                Ok(None) => Ok(None),
                Err(e @ StoreError::LockTimeout { .. }) => Err(e),
                Err(e) => {
                    self.log_bad_file(&path, &e);
                    Ok(None)
                }
            },
        }
    }

    fn acquire(&self, key: &SessionKey) -> Result<Option<SessionLock>, StoreError> {
        let path = self.path_of(key);
        if self.locking == Locking::Request {
            return match self.lock_current(key, &path, self.lock_timeout) {
                Ok(Some(held)) => Ok(Some(SessionLock::new(held))),
                Ok(None) => Ok(None),
                Err(e @ StoreError::LockTimeout { .. }) => Err(e),
                // Not a regular file, unreadable: the load will find no session.
                Err(_) => Ok(None),
            };
        }
        // merge: wait until no one holds the lock, let go at once, and keep the file open
        // for the load (a copy microseconds old is what a merge-mode load may see anyway).
        let entry = match self.open_entry(&path) {
            Ok(Opened::File(entry)) => entry,
            Ok(Opened::Missing) | Err(_) => return Ok(None),
        };
        let start = Instant::now();
        self.lock_by(key, &entry, &path, start, later(start, self.lock_timeout))?;
        unlock(&entry.file).map_err(|e| StoreError::io("unlock session file", &path, e))?;
        Ok(Some(SessionLock::new(OpenedFile { entry, path })))
    }

    fn load_locked(
        &self,
        key: &SessionKey,
        lock: SessionLock,
    ) -> Result<Option<Loaded>, StoreError> {
        let path = self.path_of(key);
        let lock = match lock.into_inner::<OpenedFile>() {
            Ok(opened) if opened.path == path => {
                return Ok(self
                    .live_record(&opened.entry, &path)
                    .map(|record| Loaded { record, lock: None }));
            }
            Ok(_) => return self.load(key),
            Err(lock) => lock,
        };
        if let Ok(held) = lock.into_inner::<LockedFile>()
            && held.path == path
            && matches!(self.is_current(&held), Ok(Some(true)))
        {
            return Ok(self.loaded_locked(held));
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
        let temp = self.write_temp_for(&self.dir, &bytes, record.expires_at)?;
        // A collision of 122 random bits does not happen; the loop is for correctness only.
        for _ in 0..16 {
            let key = SessionKey::generate();
            let path = self.path_of(&key);
            match self.link_new(&temp, &path) {
                Ok(true) => {
                    self.sync_dir()?;
                    return Ok(key);
                }
                Ok(false) => continue,
                Err(e) => {
                    let _ = fs::remove_file(&temp);
                    return Err(StoreError::io("create session file", path, e));
                }
            }
        }
        let _ = fs::remove_file(&temp);
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
        let temp = self.write_temp_for(&held.path, &bytes, record.expires_at)?;
        self.replace(&temp, &held.path)?;
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
        fs::remove_file(&held.path)
            .map_err(|e| StoreError::io("remove session file", &held.path, e))?;
        self.sync_dir()?;
        Ok((new_key, record))
    }

    fn delete(&self, key: &SessionKey, lock: Option<SessionLock>) -> Result<(), StoreError> {
        let Some(held) = self.lock_for_write(key, lock)? else {
            return Ok(());
        };
        match fs::remove_file(&held.path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove session file", &held.path, e)),
        }
    }

    fn exists(&self, key: &SessionKey) -> Result<bool, StoreError> {
        let path = self.path_of(key);
        match fs::symlink_metadata(&path) {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io("inspect session file", path, e)),
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
            let entries = fs::read_dir(&self.dir)
                .map_err(|e| StoreError::io("list session directory", &self.dir, e))?;
            sweep.begin(Box::new(entries));
        }
        let now = sweep.now;
        loop {
            let Some(entries) = sweep
                .cursor
                .as_mut()
                .and_then(|c| c.downcast_mut::<fs::ReadDir>())
            else {
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
                    return Err(StoreError::io("list session directory", &self.dir, e));
                }
                Some(Ok(entry)) => {
                    self.clear_entry(&entry, now, wait, &mut sweep.report);
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
