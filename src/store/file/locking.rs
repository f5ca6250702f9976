//! The lock protocol: a session's `flock`, taken with a bounded wait on the file now at its
//! name (checked by inode after locking), and the candidate a `merge`-mode preflight hands
//! to the load.

use super::*;

impl FileStore {
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

    /// Whether a save may write over the locked file `entry` in place, from its `fstat` taken
    /// just before the write: writes in place are on and fsync mode off (only a rename
    /// survives power loss); the file was opened for writing; it is ours, mode 0600, a
    /// regular file with one link (a hard link elsewhere, as `cp -al` backups make, would be
    /// written through); at most a page ([`IN_PLACE_MAX`]) and within the size limit (an
    /// older build counts the padding); and every byte of it has its
    /// block (`st_blocks`), so that writing over it allocates nothing on a file system that
    /// overwrites in place. (Its document must also carry a check, which the save knows
    /// from its read.)
    pub(super) fn may_write_in_place(&self, entry: &Entry, st: &Stat) -> bool {
        let len = u64::try_from(st.st_size).unwrap_or(u64::MAX);
        let allocated = u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512);
        self.in_place
            && !self.fsync
            && entry.writable
            && st.st_uid == self.euid
            && st.st_mode & 0o7777 == 0o600
            && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
            && st.st_nlink == 1
            && len == entry.len
            && len <= IN_PLACE_MAX as u64
            && len <= self.max_file_size as u64
            && allocated >= len
    }

    /// Keeps a session file open (one at a time, unlocked): the file a `merge`-mode load read,
    /// for the save that usually follows in the same request, which then locks it without
    /// opening its name again ([`lock_current`](FileStore::lock_current) checks, once it
    /// holds the lock, that it is still the file at the name, as it does for a file it
    /// opens); or the file a save left ([`release_and_keep`](FileStore::release_and_keep)),
    /// for the session's next request ([`open_current`](FileStore::open_current)).
    pub(super) fn keep_open(&self, name: String, entry: Entry) {
        *self.kept_open() = Some((name, entry));
    }

    /// The file [`keep_open`](FileStore::keep_open) kept for `name`, if any (taken: a file is
    /// used by one locker).
    fn take_open(&self, name: &str) -> Option<Entry> {
        let mut kept = self.kept_open();
        match kept.take() {
            Some((kept_name, entry)) if kept_name == name => Some(entry),
            other => {
                *kept = other;
                None
            }
        }
    }

    /// Lets go of a `merge`-mode save's lock and keeps its file open (unlocked) for the next
    /// request on the session, whose preflight or load checks by `stat` that it is still the
    /// file at the name ([`open_current`](FileStore::open_current)) instead of opening the
    /// name again. Called only while `held` is the file at its name (written in place, or
    /// not written). A lock that cannot be let go is closed with its file.
    pub(super) fn release_and_keep(&self, held: FileLock) {
        if self.lock_config.locking == Locking::Merge && unlock(&held.entry.file).is_ok() {
            self.keep_open(held.name, held.entry);
        }
    }

    /// The file named `name` for a `merge`-mode preflight or load: the one kept open for it
    /// if it is still the file at the name (the same device and inode number, the test
    /// [`lock_current`](FileStore::lock_current) makes of every file it locks), with its
    /// length now; else the name opened afresh.
    pub(super) fn open_current(&self, name: &str) -> Result<Opened, StoreError> {
        if let Some(mut entry) = self.take_open(name)
            && let Ok(Some(Some(now))) = self.current_stat(&entry, name)
        {
            entry.len = u64::try_from(now.st_size).unwrap_or(u64::MAX);
            return Ok(Opened::File(entry));
        }
        // Replaced, gone or not inspectable: the open says which, as for any name.
        self.open_entry_for_writing(name)
    }

    pub(super) fn kept_open(&self) -> std::sync::MutexGuard<'_, Option<(String, Entry)>> {
        crate::store::locked(&self.recent.0)
    }

    /// Lets go of what this store keeps of a session it is deleting or moving to a new key:
    /// the file kept open, the document remembered.
    pub(super) fn forget(&self, name: &str) {
        drop(self.take_open(name));
        self.forget_decoded();
    }

    /// The most files left torn whose locks [`hold_torn`](FileStore::hold_torn) keeps.
    const TORN_HELD_MAX: usize = 1024;

    /// Keeps the lock on a file a failing disk left half written (a write in place stopped,
    /// the old bytes could not be put back, nor a new file put in its place), for as long as
    /// this process lives: a reader that finds the file not whole finds its lock held and
    /// answers [`StoreError::LockTimeout`] (503, the cookie kept), and so does a writer,
    /// rather than reading it as no session while the disk may recover. After a restart the
    /// file reads as corrupt: no session, logged. At most
    /// [`TORN_HELD_MAX`](Self::TORN_HELD_MAX) are kept.
    pub(super) fn hold_torn(&self, held: FileLock) {
        let shown = crate::key::shown_name(&held.name);
        let mut torn = crate::store::locked(&self.torn_held);
        if torn.len() < Self::TORN_HELD_MAX {
            log::error!(
                "{shown}: left half written by a failing disk; kept locked (its requests \
                 answer 503) until the server restarts, when it reads as corrupt"
            );
            torn.push(held);
        } else {
            log::error!(
                "{shown}: left half written by a failing disk; {} such files already kept \
                 locked, so this one is not: it reads as corrupt",
                Self::TORN_HELD_MAX
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

    /// Opens and locks the file now named `name`, checking that the inode locked is still
    /// the one with that name. `kept`: a file already open under that name, tried first.
    /// `Ok(None)`: there is no session file (deleted meanwhile).
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
            match self.is_current(&held.entry, &held.name)? {
                Some(true) => return Ok(Some(held)),
                None => return Ok(None),
                Some(false) => {} // replaced behind our back: lock afresh
            }
        }
        let kept = self.take_open(&name);
        self.lock_current(key, &name, self.lock_config.timeout, kept)
    }

    /// Counts a change to the directory's names from now until the guard is dropped.
    pub(super) fn changing(&self) -> Changing<'_> {
        self.changes.begun.fetch_add(1, Ordering::SeqCst);
        Changing(&self.changes)
    }

    /// `Some(begun)` if no change is under way now: what a candidate opened now records.
    pub(super) fn quiet_now(&self) -> Option<u64> {
        let done = self.changes.done.load(Ordering::SeqCst);
        let begun = self.changes.begun.load(Ordering::SeqCst);
        (begun == done).then_some(begun)
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
            .is_some_and(|begun| self.changes.begun.load(Ordering::SeqCst) == begun)
        {
            return Ok(true);
        }
        Ok(self.is_current(&candidate.entry, &candidate.name)? == Some(true))
    }
}
