//! Reading the directory's entries safely: opened by handle, never following a symlink or
//! blocking on a FIFO, checked to be regular files, size-limited, decoded; errors told
//! apart from "no session".

use super::*;

pub(super) enum ReadError {
    Store(StoreError),
    TooLarge,
    Corrupt(DecodeError),
}

impl FileStore {
    /// The path of an entry of the directory, for messages.
    pub(super) fn shown(&self, name: &str) -> PathBuf {
        self.dir.join(crate::key::shown_name(name))
    }

    /// `Err(DirectoryGone)` if the directory the store opened has been removed. Called on
    /// error paths only (an entry not found, a create refused).
    ///
    /// A removed directory has no links left (`st_nlink == 0` on ext4, tmpfs, btrfs, xfs),
    /// but overlayfs reports 1 for every merged directory, removed or not: there the kernel
    /// is asked directly, since reading a removed directory fails with `ENOENT` on every
    /// file system.
    pub(super) fn check_dir(&self) -> Result<(), StoreError> {
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
    pub(super) fn fs_error(&self, action: &'static str, name: &str, e: io::Error) -> StoreError {
        // A removed directory refuses with ENOENT, or EPERM for O_TMPFILE: ask it.
        if let Err(gone @ StoreError::DirectoryGone(_)) = self.check_dir() {
            return gone;
        }
        StoreError::io(action, self.shown(name), e)
    }

    /// Opens the entry `name` without following a symlink and without blocking on a FIFO,
    /// and refuses anything but a regular file.
    pub(super) fn open_entry(&self, name: &str) -> Result<Opened, StoreError> {
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
    pub(super) fn read_record(&self, entry: &Entry, name: &str) -> Result<Record, ReadError> {
        if entry.len > self.max_file_size as u64 {
            return Err(ReadError::TooLarge);
        }
        // One pread of the length fstat gave: no seek, no read to find the end.
        let mut bytes = vec![0; entry.len as usize];
        entry.file.read_exact_at(&mut bytes, 0).map_err(|e| {
            ReadError::Store(StoreError::io("read session file", self.shown(name), e))
        })?;
        format::decode(&bytes).map_err(ReadError::Corrupt)
    }

    /// The live session in `entry`: `Ok(None)` (logged) when it is corrupt, too large or
    /// expired; `Err` when it cannot be read.
    pub(super) fn live_record(
        &self,
        entry: &Entry,
        name: &str,
    ) -> Result<Option<Record>, StoreError> {
        Ok(self
            .stored_record(entry, name)?
            .filter(|r| !r.is_expired(SystemTime::now())))
    }

    /// The record in a session file; `Ok(None)` (logged) when the file does not hold one
    /// (corrupt, too large); `Err` when it cannot be read at all.
    pub(super) fn stored_record(
        &self,
        entry: &Entry,
        name: &str,
    ) -> Result<Option<Record>, StoreError> {
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

    /// Logs an entry that does not hold a session, once per entry.
    pub(super) fn log_bad_file(&self, name: &str, why: &dyn std::fmt::Display) {
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

    /// Whether `entry` is, at this moment, the file named `name` (same inode; a session file
    /// is never modified in place, so the same inode is the same content). `Some(false)`:
    /// replaced since it was opened; `None`: the name is gone.
    pub(super) fn is_current(&self, entry: &Entry, name: &str) -> Result<Option<bool>, StoreError> {
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

    /// The modification time of an entry, not following a symlink.
    pub(super) fn mtime_of(&self, name: &str) -> Option<SystemTime> {
        let st = statat(&self.dirfd, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        let secs = u64::try_from(st.st_mtime).ok()?;
        let nanos = u32::try_from(st.st_mtime_nsec).unwrap_or(0);
        SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
    }
}
