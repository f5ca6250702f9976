//! [`DjangoFileStore`]: sessions in Django's own file layout (`SESSION_FORMAT=django` with
//! `SESSION_ENGINE=file`), shared with a running Django site whose `SESSION_ENGINE` is
//! `django.contrib.sessions.backends.file` on the same `SESSION_FILE_PATH`.
//!
//! Built from [`FileStore`](super::FileStore)'s parts (the directory by handle, the `flock`
//! protocol, the atomic renames, cleanup in slices), without what Django's readers cannot
//! follow: no write in place, no check line, no mtime stamped with the expiry, no document
//! remembered between requests. `files` holds the reads, the write and cleanup; what is
//! shared with Django and what each side guarantees is [`DjangoFileStore`]'s documentation.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

mod files;
#[cfg(test)]
mod tests;

use files::{DjangoLock, Found};

use super::dir::{Opened, SessionDir};
use super::{DEFAULT_LEFTOVER_AGE, DEFAULT_MAX_FILE_SIZE};
use crate::config::Locking;
use crate::key::SessionKey;
use crate::signing::Signer;
use crate::store::django::{DjangoCodec, log_refused};
use crate::store::{
    Acquired, ChangeSet, ClearReport, ExpiredDeletion, Loaded, LockConfig, LockIssuer,
    LockPreflight, Merged, Record, SessionLock, SessionStore, StoreError, Sweep,
};

/// Sessions in Django's file layout, shared with a running Django site:
/// `<dir>/<cookie_name><key>`, each holding Django's signed session data
/// (`SESSION_FORMAT=django` with `SESSION_ENGINE=file`).
///
/// # What is shared with Django
///
/// * **Names.** One file per session, `<SESSION_COOKIE_NAME><key>`
///   (`sessionidq2u7ep5ma0s2oa5tq1krtb3z86yg0h5n`), no extension, as Django's
///   `_key_to_file`. Keys are Django's: 32 of `[a-z0-9]` made here, 8 to 40 loaded
///   ([`SessionKey::parse_django`]); a cookie holding anything else is no session, and no
///   other file can be named by one.
/// * **Content.** Exactly the text Django's `SessionBase.encode` writes: the session
///   dictionary signed with `SECRET_KEY` (salt `SESSION_SIGNING_SALT`, compressed when it
///   helps), ASCII, no newline. A file that none of `SECRET_KEY` and `SECRET_KEY_FALLBACKS`
///   signed, that was tampered with, or that holds no dictionary is no session
///   ([`StoreError::Unverified`]: the middleware leaves its cookie alone, as Django; logged
///   at `warn` at most once a minute), never a 5xx, and never adopted: a save or cycle of its key
///   fails with [`StoreError::Deleted`] (the request had no such session; Django would read
///   `{}` and overwrite the file, which here would let a forged file pick a session's key).
///   An empty file is Django's placeholder for a session being created: an empty session,
///   as Django reads it.
/// * **The end of a session**, as Django's `_expiry_date` reads it: the file's mtime is the
///   time of its last save, and `_session_expiry` in the dictionary says the rule. Absent,
///   or `0` (browser close): mtime + `SESSION_COOKIE_AGE`; an ISO 8601 time: that time; an
///   int `n`: mtime + `n`. The last is enforced here, where Django's file backend never
///   expires it (a Django quirk: it takes `n` for the age itself, so only the cookie's
///   `Max-Age` ends such a session there). A load finds no session after the end; the file
///   is left for cleanup.
/// * **Modes.** Files made here are 0600, as Django's `mkstemp` makes them. The directory is
///   created (0700) only if missing; an existing one's mode is left as it is, and only said
///   when others can list it (Django's default `SESSION_FILE_PATH` is the system's temp
///   directory, where every user can read the session keys in the names). Django's files
///   keep their modes: they are replaced, never changed.
///
/// # What each side guarantees
///
/// Django writes blindly: a temp file `<name>_out_<random>` renamed over the name, with no
/// lock and no fsync; its reads take no lock. Between Django processes the last writer
/// wins. Writers of this store keep this store's promises among themselves:
///
/// * **Merge under the file's lock.** A save takes the session file's `flock` (bounded by
///   the lock timeout), checks that the inode it locked is still the one at the name (else
///   it locks the new one), reads the newest copy, applies only its request's
///   [`ChangeSet`](crate::ChangeSet) and writes. In `request` mode the lock is held from the
///   load to the save, as [`FileStore`](crate::FileStore)'s, so that a read-modify-write is
///   exact; but Django takes no lock, and a Django write during the request puts a new,
///   unlocked file at the name, which another request of ours may then lock: the two merge
///   their changes onto the newest copy instead of running one at a time.
/// * **Whole files.** Every write is a new temp file `.<uuid>.tmp` (0600) in the same
///   directory, given the name in one step (`renameat2(RENAME_EXCHANGE)`), so Django and
///   this store read the old file or the new one, never a mix; a crash leaves at most a
///   temp file, which cleanup removes. The new file's mtime is the time of the write.
/// * **No resurrection.** The exchange fails when the name is gone: a save of a session
///   deleted meanwhile (here or by Django) is [`StoreError::Deleted`], never a new file.
///   (Where the file system lacks `renameat2`, a `rename` follows a check that the name is
///   there; a deletion between the two is undone.)
/// * **Fresh reads.** A load opens the name when it is called.
/// * **A Django rename during one of our writes.** Django replaces the inode a lock of
///   ours is on, and another writer of ours may then lock Django's new file while the first
///   still holds the old one. Just before its copy takes the name, a writer looks whether
///   the name still holds the copy it built on; if not, it reads the copy renamed in (kept
///   open, so that its inode number names no other file meanwhile), applies its changes on
///   top, and looks again: nothing of ours without Django's change is shown. A rename in
///   the microseconds between that look and the exchange is seen by the exchange, which
///   hands back the copy it replaced: the writer reads it and writes again, and only then
///   is a copy without Django's change shown, for the time of that write (a Django request
///   reading it then saves the session back without the change: `docs/next-to-django.md` gives the
///   rate measured). Each copy of ours is locked before it takes the name, so no other
///   writer of ours bases a write on it meanwhile: writers of ours never lose each other's
///   changes, Django or not.
/// * **Against Django, the last writer wins** for that key: a Django save that read the
///   session before one of ours and renames after it replaces ours (Django's own lost
///   update, as between two Django processes). No interleaving tears or corrupts a file.
///
/// # Cleanup
///
/// `clearsessions` (and the server's sweep) looks only at two kinds of entries: regular
/// files named `<prefix><key>` with a Django key, removed under their lock once ended, and
/// this store's own temp files (`.<uuid>.tmp`, owned by this user), removed once older than
/// the leftover age. Every other entry is left alone: Django's directory is often the
/// system's temp directory. So are session files this store cannot read (tampered, signed
/// with a key it was not given, over its size limit): one may be a live session of Django's
/// whose end only Django can read (a `SECRET_KEY` mistyped here, or behind a rotation,
/// must not make cleanup remove a site's 30-day sessions); Django's own `clear_expired`
/// removes them by its rule. Django's temp files (`<prefix><key>_out_<random>`, left by a
/// crash) are Django's: left, as Django leaves them.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use filesession::{DjangoFileStore, Session, SessionConfig, SessionStore};
/// use filesession::signing::{SESSION_SALT, Signer};
///
/// let dir = tempfile::tempdir()?;
/// let signer = Signer::new("the Django project's SECRET_KEY", &[], SESSION_SALT);
/// let store = Arc::new(DjangoFileStore::open(
///     dir.path(),
///     signer,
///     "sessionid",
///     Duration::from_secs(1_209_600),
/// )?);
///
/// let mut session = Session::new(store.clone(), None, SessionConfig::default());
/// session.insert("_auth_user_id", "1");
/// session.save()?;
/// let key = *session.session_key().expect("saved sessions have a key");
/// assert!(key.is_django());
///
/// // Django's file, Django's content: `<payload>:<timestamp>:<signature>`.
/// let text = std::fs::read_to_string(dir.path().join(format!("sessionid{key}")))?;
/// assert_eq!(text.matches(':').count(), 2);
///
/// let cookie = key.to_string();
/// let again = Session::new(store.clone(), store.parse_key(&cookie), SessionConfig::default());
/// assert_eq!(again.get("_auth_user_id"), Some(&"1".into()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct DjangoFileStore {
    /// The sessions directory, opened once; every file operation is relative to it.
    dir: SessionDir,
    /// `SessionBase.encode` and `decode` with the project's keys and salt.
    codec: DjangoCodec,
    /// `SESSION_COOKIE_NAME`: the files' prefix.
    prefix: String,
    /// `SESSION_COOKIE_AGE`: a session's life after its file's mtime, by default.
    cookie_age: Duration,
    lock_config: LockConfig,
    /// Who made this store's locks: it takes back only its own.
    issuer: LockIssuer,
    /// The largest session file, in bytes.
    max_file_size: usize,
    leftover_age: Duration,
    /// This process's effective user id: only temp files of ours are leftovers of ours.
    euid: u32,
    /// The time a write signs at (tests sign at Django's vectors' time).
    clock: fn() -> SystemTime,
}

impl DjangoFileStore {
    /// Opens the store in `dir`, shared with Django: session files `<cookie_name><key>`
    /// holding Django's session data signed by `signer` (Django's `SECRET_KEY` and
    /// `SECRET_KEY_FALLBACKS`, with the salt of its `SessionStore`,
    /// [`SESSION_SALT`](crate::signing::SESSION_SALT) unless it was subclassed), ending
    /// `cookie_age` (`SESSION_COOKIE_AGE`) after their last save by default. A missing
    /// directory is created (mode 0700); an existing one's mode is left as it is.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when `cookie_name` could name a file elsewhere or every
    /// file (empty, `/`, NUL), or the directory cannot be created, opened or written, or is
    /// a symbolic link (give its real path).
    pub fn open(
        dir: impl AsRef<Path>,
        signer: Signer,
        cookie_name: &str,
        cookie_age: Duration,
    ) -> Result<Self, StoreError> {
        Self::open_as(dir.as_ref(), true, signer, cookie_name, cookie_age)
    }

    /// [`open`](DjangoFileStore::open) for a directory that must exist already, as
    /// `clearsessions` opens it: a mistyped path is an error, never a new directory (Django
    /// refuses a missing `SESSION_FILE_PATH` too), and nothing is written to open it.
    ///
    /// # Errors
    /// As [`open`](DjangoFileStore::open), and [`StoreError::Unavailable`] when the
    /// directory does not exist.
    pub fn open_existing(
        dir: impl AsRef<Path>,
        signer: Signer,
        cookie_name: &str,
        cookie_age: Duration,
    ) -> Result<Self, StoreError> {
        Self::open_as(dir.as_ref(), false, signer, cookie_name, cookie_age)
    }

    fn open_as(
        dir: &Path,
        create: bool,
        signer: Signer,
        cookie_name: &str,
        cookie_age: Duration,
    ) -> Result<Self, StoreError> {
        if cookie_name.is_empty() || cookie_name.contains(['/', '\0']) {
            return Err(StoreError::Unavailable(format!(
                "SESSION_COOKIE_NAME {cookie_name:?} cannot prefix Django's session files: it \
                 must be a file name's start (not empty, no '/')"
            )));
        }
        Ok(DjangoFileStore {
            dir: SessionDir::open_shared(dir, create, cookie_name)?,
            codec: DjangoCodec::new(signer),
            prefix: cookie_name.to_owned(),
            cookie_age,
            lock_config: LockConfig::default(),
            issuer: LockIssuer::new(),
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            leftover_age: DEFAULT_LEFTOVER_AGE,
            euid: rustix::process::geteuid().as_raw(),
            clock: SystemTime::now,
        })
    }

    /// Sets the locking mode and how long a request waits for a session's lock
    /// (`SESSION_LOCKING`, `SESSION_LOCK_TIMEOUT`). Default: [`LockConfig::default`].
    pub fn with_lock_config(mut self, lock_config: LockConfig) -> Self {
        self.lock_config = lock_config;
        self
    }

    /// Sets the locking mode alone.
    pub fn with_locking(mut self, locking: Locking) -> Self {
        self.lock_config.locking = locking;
        self
    }

    /// Sets the lock timeout alone.
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_config.timeout = timeout;
        self
    }

    /// Makes every write of this store durable across power loss: the file data and the
    /// directory are fsynced before a save returns (`SESSION_FILE_FSYNC`; Django's own
    /// writes are not). Default: off.
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.dir.fsync = fsync;
        self
    }

    /// Sets the largest session file, in bytes: a save of a larger one fails with
    /// [`StoreError::TooLarge`], a file holding one reads as no session. Default:
    /// [`DEFAULT_MAX_FILE_SIZE`].
    pub fn with_max_file_size(mut self, bytes: usize) -> Self {
        self.max_file_size = bytes;
        self
    }

    /// Sets how old a temp file of this store must be before cleanup removes it as the
    /// leftover of a crashed write. Default: [`DEFAULT_LEFTOVER_AGE`].
    pub fn with_leftover_age(mut self, age: Duration) -> Self {
        self.leftover_age = age;
        self
    }

    /// The sessions directory, as given to [`open`](DjangoFileStore::open).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The locking mode.
    pub fn locking(&self) -> Locking {
        self.lock_config.locking
    }

    /// The files' prefix, `SESSION_COOKIE_NAME`.
    pub fn cookie_name(&self) -> &str {
        &self.prefix
    }

    /// The path of a session's file, `<dir>/<cookie_name><key>`, built from a parsed key.
    pub fn path_of(&self, key: &SessionKey) -> PathBuf {
        self.dir.path().join(self.name_of(key))
    }

    /// The entry name of a session's file.
    fn name_of(&self, key: &SessionKey) -> String {
        key.django_file_name(&self.prefix)
    }

    /// The session under a held lock, which stays held with it.
    fn loaded_locked(
        &self,
        key: &SessionKey,
        held: DjangoLock,
    ) -> Result<Option<Loaded>, StoreError> {
        match self.read_file(&held.0.entry, &held.0.name, SystemTime::now())? {
            Found::Live(record) => Ok(Some(Loaded {
                record,
                lock: Some(SessionLock::new(self.issuer, *key, held)),
            })),
            found => self.not_live(key, &found),
        }
    }

    /// A load's answer for a file that holds no live session: `Ok(None)` for an ended one,
    /// [`StoreError::Unverified`] (logged) for one this store cannot read.
    fn not_live(&self, key: &SessionKey, found: &Found) -> Result<Option<Loaded>, StoreError> {
        if let Found::Refused { why, .. } = found {
            log_refused("Django session file", Some(key), why);
            return Err(StoreError::Unverified(*key));
        }
        Ok(None)
    }
}

impl LockPreflight for DjangoFileStore {
    /// In `request` mode, the session's lock, held; in `merge` mode nothing (no write here
    /// is ever caught half done by a reader: there is nothing to wait for).
    fn acquire(&self, key: &SessionKey, wait: Duration) -> Result<Option<Acquired>, StoreError> {
        if self.lock_config.locking == Locking::Merge || !key.is_django() {
            return Ok(None);
        }
        match self.dir.lock_current(key, &self.name_of(key), wait, None) {
            Ok(Some(held)) => Ok(Some(Acquired::Locked(SessionLock::new(
                self.issuer,
                *key,
                DjangoLock(held),
            )))),
            Ok(None) | Err(StoreError::NotARegularFile(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn load_acquired(
        &self,
        key: &SessionKey,
        acquired: Acquired,
    ) -> Result<Option<Loaded>, StoreError> {
        if let Acquired::Locked(lock) = acquired {
            match lock.take::<DjangoLock>(self.issuer, key) {
                Ok(held)
                    if matches!(
                        self.dir.is_current(&held.0.entry, &held.0.name),
                        Ok(Some(true))
                    ) =>
                {
                    return self.loaded_locked(key, held);
                }
                // Another session's, or replaced meanwhile: let it go (a lock held here
                // would make the load wait for itself), then a fresh load.
                other => drop(other),
            }
        }
        self.load(key)
    }
}

impl SessionStore for DjangoFileStore {
    fn load(&self, key: &SessionKey) -> Result<Option<Loaded>, StoreError> {
        if !key.is_django() {
            return Ok(None);
        }
        let name = self.name_of(key);
        let outcome = match self.lock_config.locking {
            Locking::Merge => match self.dir.open_entry(&name) {
                Ok(Opened::File(entry)) => {
                    return match self.read_file(&entry, &name, SystemTime::now())? {
                        Found::Live(record) => Ok(Some(Loaded { record, lock: None })),
                        found => self.not_live(key, &found),
                    };
                }
                Ok(Opened::Missing) => return Ok(None),
                Err(e) => Err(e),
            },
            Locking::Request => {
                match self
                    .dir
                    .lock_current(key, &name, self.lock_config.timeout, None)
                {
                    Ok(Some(held)) => return self.loaded_locked(key, DjangoLock(held)),
                    Ok(None) => return Ok(None),
                    Err(e) => Err(e),
                }
            }
        };
        match outcome {
            // Not a session file (a directory, a symlink, a FIFO): no session.
            Err(StoreError::NotARegularFile(path)) => {
                log_refused(
                    "Django session entry",
                    Some(key),
                    &format!("{} is not a regular file", path.display()),
                );
                Ok(None)
            }
            other => other,
        }
    }

    fn create(&self, record: &Record) -> Result<SessionKey, StoreError> {
        let text = self
            .codec
            .encode(None, record, (self.clock)(), self.max_file_size)?;
        let prefix = self.prefix.as_str();
        self.dir.create_with(text.as_bytes(), None, &|| {
            let key = SessionKey::generate_django();
            (key, key.django_file_name(prefix))
        })
    }

    fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        lock: Option<SessionLock>,
    ) -> Result<Record, StoreError> {
        let held = self.lock_for_write(key, lock)?;
        let stored = self.stored_under(key, &held)?;
        match changes.merge_into(Some(stored), SystemTime::now()) {
            // Not written: the file holds what was read.
            Merged::Unchanged(record) => Ok(record),
            Merged::Changed(record) => self.publish(key, &held, changes, record),
        }
    }

    fn cycle(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        lock: Option<SessionLock>,
    ) -> Result<(SessionKey, Record), StoreError> {
        let held = self.lock_for_write(key, lock)?;
        let mut record = self.stored_under(key, &held)?;
        // A new file: its mtime starts the session's life again.
        changes.apply_to(&mut record, SystemTime::now());
        let new_key = self.create(&record)?;
        // The new session exists before the old one goes: a crash in between leaves both,
        // never neither. Django may have removed the old one meanwhile: it is gone either way.
        match self.dir.unlink(&held.0.name) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.dir.check()?,
            Err(e) => return Err(self.dir.error("remove session file", &held.0.name, e)),
        }
        self.dir.sync()?;
        Ok((new_key, record))
    }

    fn delete(&self, key: &SessionKey, lock: Option<SessionLock>) -> Result<(), StoreError> {
        let held = match self.lock_for_write(key, lock) {
            Ok(held) => held,
            Err(StoreError::Deleted(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        match self.dir.unlink(&held.0.name) {
            Ok(()) => self.dir.sync(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.dir.check(),
            Err(e) => Err(self.dir.error("remove session file", &held.0.name, e)),
        }
    }

    fn exists(&self, key: &SessionKey) -> Result<bool, StoreError> {
        if !key.is_django() {
            return Ok(false);
        }
        self.dir.is_file(&self.name_of(key))
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

    /// Django's keys: 8 to 40 of `[a-z0-9]` ([`SessionKey::parse_django`]).
    fn parse_key(&self, cookie_value: &str) -> Option<SessionKey> {
        SessionKey::parse_django(cookie_value)
    }
}

impl ExpiredDeletion for DjangoFileStore {
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
        crate::store::sweep::whole_pass(
            |sweep| self.sweep_with(sweep, every, self.lock_config.timeout),
            progress,
        )
    }
}
