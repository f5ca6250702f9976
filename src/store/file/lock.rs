//! The lock protocol: a session's `flock`, taken with a bounded wait on the file now at its
//! name (checked by inode after locking) and held in a [`FileLock`]; the [`FileCandidate`] a
//! `merge`-mode preflight hands to the load; the files kept open between requests; the
//! locks kept on files a failing disk left torn ([`TornLocks`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::FileStore;
use super::dir::{Entry, Opened, SessionDir};
use super::flock::{lock_exclusive_until, unlock};
use crate::config::Locking;
use crate::expiry::later;
use crate::key::SessionKey;
use crate::store::{Loaded, SessionLock, StoreError, locked};

/// A session file of a [`FileStore`] locked exclusively (`flock`), checked to be the file
/// now at its name, held in a [`SessionLock`]. Closing it releases the lock.
pub(super) struct FileLock {
    pub(super) entry: Entry,
    pub(super) name: String,
}

/// A session file of a [`FileStore`] opened (and found unlocked) by a `merge`-mode
/// preflight, handed on in a [`Candidate`](crate::store::Candidate): the load reads it
/// only after checking that it is still the file with its name.
pub(super) struct FileCandidate {
    pub(super) entry: Entry,
    pub(super) name: String,
    /// When it was opened, if no change of a name was under way then
    /// ([`SessionDir::quiet_now`](super::dir::SessionDir::quiet_now)).
    pub(super) quiet_since: Option<u64>,
}

// A whole key is a credential: these show its first characters only.
impl std::fmt::Debug for FileLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FileLock")
            .field(&crate::key::shown_name(&self.name))
            .finish()
    }
}

impl std::fmt::Debug for FileCandidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FileCandidate")
            .field(&crate::key::shown_name(&self.name))
            .finish()
    }
}

/// Locks on files left torn by a failing disk, held until the process ends
/// ([`FileStore::hold_torn`]).
#[derive(Debug, Default)]
pub(super) struct TornLocks(Mutex<Vec<FileLock>>);

impl TornLocks {
    /// The most files left torn whose locks are kept.
    const MAX: usize = 1024;
}

// The lock protocol itself is the directory's, shared by both layouts (`FileStore`'s and
// Django's, `super::django`).
impl SessionDir {
    /// Takes `entry`'s lock by `deadline`; else `LockTimeout`, counting the wait from `start`.
    pub(super) fn lock_by(
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

    /// Opens and locks the file now named `name`, checking that the inode locked is still
    /// the one with that name (a writer before it may have replaced the file while it
    /// waited: then the new one is locked). `kept`: a file already open under that name,
    /// tried first. `Ok(None)`: there is no session file (deleted meanwhile).
    pub(super) fn lock_current(
        &self,
        key: &SessionKey,
        name: &str,
        wait: Duration,
        mut kept: Option<Entry>,
    ) -> Result<Option<FileLock>, StoreError> {
        let start = Instant::now();
        let deadline = later(start, wait);
        loop {
            let entry = match kept.take() {
                Some(entry) => entry,
                None => match self.open_entry_for_writing(name)? {
                    Opened::Missing => return Ok(None),
                    Opened::File(entry) => entry,
                },
            };
            self.lock_by(key, &entry, name, start, deadline)?;
            let mut held = FileLock {
                entry,
                name: name.to_owned(),
            };
            match self.current_stat(&held.entry, &held.name)? {
                // Its length now: it may have been written in place while we waited.
                Some(Some(now)) => {
                    held.entry.len = u64::try_from(now.st_size).unwrap_or(u64::MAX);
                    return Ok(Some(held));
                }
                Some(None) => continue, // replaced while we waited: lock the new one
                None => return Ok(None),
            }
        }
    }
}

impl FileStore {
    /// [`SessionDir::lock_by`] on this store's directory.
    pub(super) fn lock_by(
        &self,
        key: &SessionKey,
        entry: &Entry,
        name: &str,
        start: Instant,
        deadline: Instant,
    ) -> Result<(), StoreError> {
        self.dir.lock_by(key, entry, name, start, deadline)
    }

    /// Lets go of a `merge`-mode save's lock and keeps its file open (unlocked) for the next
    /// request on the session, whose preflight or load checks by `stat` that it is still the
    /// file at the name ([`open_current`](FileStore::open_current)) instead of opening the
    /// name again. Called only while `held` is the file at its name (written in place, or
    /// not written). A lock that cannot be let go is closed with its file.
    pub(super) fn release_and_keep(&self, held: FileLock) {
        if self.lock_config.locking == Locking::Merge && unlock(&held.entry.file).is_ok() {
            self.recent.keep(held.name, held.entry);
        }
    }

    /// The file named `name` for a `merge`-mode preflight or load: the one kept open for it
    /// if it is still the file at the name (the same device and inode number, the test
    /// [`lock_current`](FileStore::lock_current) makes of every file it locks), with its
    /// length now; else the name opened afresh.
    pub(super) fn open_current(&self, name: &str) -> Result<Opened, StoreError> {
        if let Some(mut entry) = self.recent.take(name)
            && let Ok(Some(Some(now))) = self.dir.current_stat(&entry, name)
        {
            entry.len = u64::try_from(now.st_size).unwrap_or(u64::MAX);
            return Ok(Opened::File(entry));
        }
        // Replaced, gone or not inspectable: the open says which, as for any name.
        self.dir.open_entry_for_writing(name)
    }

    /// Lets go of what this store keeps of a session it is deleting or moving to a new key:
    /// the file kept open, the document remembered.
    pub(super) fn forget(&self, name: &str) {
        drop(self.recent.take(name));
        self.last_decoded.forget();
    }

    /// Keeps the lock on a file a failing disk left half written (a write in place stopped,
    /// the old bytes could not be put back, nor a new file put in its place), for as long as
    /// this process lives: a reader that finds the file not whole finds its lock held and
    /// answers [`StoreError::LockTimeout`] (503, the cookie kept), and so does a writer,
    /// rather than reading it as no session while the disk may recover. After a restart the
    /// file reads as corrupt: no session, logged. At most [`TornLocks::MAX`] are kept.
    pub(super) fn hold_torn(&self, held: FileLock) {
        let shown = crate::key::shown_name(&held.name);
        let mut torn = locked(&self.torn.0);
        if torn.len() < TornLocks::MAX {
            log::error!(
                "{shown}: left half written by a failing disk; kept locked (its requests \
                 answer 503) until the server restarts, when it reads as corrupt"
            );
            torn.push(held);
        } else {
            log::error!(
                "{shown}: left half written by a failing disk; {} such files already kept \
                 locked, so this one is not: it reads as corrupt",
                TornLocks::MAX
            );
        }
    }

    /// The live session under a held lock, which stays held with it.
    pub(super) fn loaded_locked(
        &self,
        key: &SessionKey,
        held: FileLock,
    ) -> Result<Option<Loaded>, StoreError> {
        let Some(record) = self.live_record(&held.entry, &held.name)? else {
            return Ok(None);
        };
        Ok(Some(Loaded {
            record,
            lock: Some(SessionLock::new(self.issuer, *key, held)),
        }))
    }

    /// [`SessionDir::lock_current`] on this store's directory.
    pub(super) fn lock_current(
        &self,
        key: &SessionKey,
        name: &str,
        wait: Duration,
        kept: Option<Entry>,
    ) -> Result<Option<FileLock>, StoreError> {
        self.dir.lock_current(key, name, wait, kept)
    }

    /// The lock for a write: the one held since `load` (request mode) if it is still on the
    /// current file, else a fresh one (on the file the load kept open, if it read this
    /// session's). `Ok(None)`: the session is gone.
    pub(super) fn lock_for_write(
        &self,
        key: &SessionKey,
        held: Option<SessionLock>,
    ) -> Result<Option<FileLock>, StoreError> {
        let name = key.file_name();
        if let Some(held) = held.and_then(|lock| lock.take::<FileLock>(self.issuer, key).ok()) {
            match self.dir.is_current(&held.entry, &held.name)? {
                Some(true) => return Ok(Some(held)),
                None => return Ok(None),
                Some(false) => {} // replaced behind our back: lock afresh
            }
        }
        let kept = self.recent.take(&name);
        self.lock_current(key, &name, self.lock_config.timeout, kept)
    }

    /// Whether a candidate is still the file with its session's name. Only a change of the
    /// name can make it another file (a write in place changes the content of the same file,
    /// which the load then reads, checked): if this store changed no name since
    /// the candidate was opened, it is current (a change by another process after the open
    /// is concurrent with the request, and a read that takes effect at the open is
    /// linearizable); otherwise `statat` compares inodes.
    pub(super) fn candidate_is_current(
        &self,
        candidate: &FileCandidate,
    ) -> Result<bool, StoreError> {
        if candidate
            .quiet_since
            .is_some_and(|begun| !self.dir.changed_since(begun))
        {
            return Ok(true);
        }
        Ok(self.dir.is_current(&candidate.entry, &candidate.name)? == Some(true))
    }
}
