//! Reading the directory's entries safely: opened by handle, never following a symlink or
//! blocking on a FIFO, checked to be regular files, size-limited, decoded; errors told
//! apart from "no session".

use super::*;

/// A session file's document as read: the record, whether it carried a check, and the
/// file's bytes.
pub(super) struct Document {
    pub(super) record: Record,
    pub(super) checked: bool,
    pub(super) bytes: Vec<u8>,
}

/// The last document this store decoded, with the exact bytes it was decoded from: decoding is
/// a function of the bytes alone, so a file read again unchanged (by the save, under the
/// lock, after the load; by the next request for the same session) is not parsed again.
pub(super) struct Decoded {
    bytes: Vec<u8>,
    record: Record,
    checked: bool,
}

// Session data is not for logs: the length only.
impl std::fmt::Debug for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Decoded({} bytes)", self.bytes.len())
    }
}

/// What a read does with [`Decoded`] when the bytes match: `Share` clones the record and
/// keeps it (a load: the save will likely read the same bytes again), `Take` moves it out
/// (the save, which writes new bytes and remembers those).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Reuse {
    Share,
    Take,
}

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
        self.open_entry_as(name, OFlags::RDONLY)
    }

    /// [`open_entry`](FileStore::open_entry) for a writer, which may write in place: read
    /// and write, or read only when the file is not writable to us (it is then replaced, not
    /// written in place).
    pub(super) fn open_entry_for_writing(&self, name: &str) -> Result<Opened, StoreError> {
        match self.open_entry_as(name, OFlags::RDWR) {
            Err(StoreError::Io { source, .. })
                if source.kind() == io::ErrorKind::PermissionDenied
                    || source.raw_os_error() == Some(Errno::ROFS.raw_os_error()) =>
            {
                self.open_entry_as(name, OFlags::RDONLY)
            }
            other => other,
        }
    }

    /// Opens with `O_NOATIME`: a read after a write would otherwise update the access time,
    /// a journaled inode update on every W-update request (`touch_atime`, 3.5% of it: perf)
    /// for a time nothing here reads (the sweep reads mtimes). The kernel allows the flag on
    /// files of our own user only (`EPERM` otherwise, open(2)); such a file is opened again
    /// without it.
    fn open_entry_as(&self, name: &str, access: OFlags) -> Result<Opened, StoreError> {
        let flags = access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let opened = match openat(&self.dirfd, name, flags | OFlags::NOATIME, Mode::empty()) {
            Err(Errno::PERM) => openat(&self.dirfd, name, flags, Mode::empty()),
            other => other,
        };
        match opened {
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
                        mode: meta.mode(),
                        uid: meta.uid(),
                        gid: meta.gid(),
                        writable: access == OFlags::RDWR,
                    }))
                } else {
                    Err(StoreError::NotARegularFile(self.shown(name)))
                }
            }
            Err(Errno::NOENT) => {
                self.check_dir()?;
                Ok(Opened::Missing)
            }
            // ELOOP: a symlink; ENXIO: a socket; EISDIR: a directory opened for writing.
            // None is a session file.
            Err(Errno::LOOP | Errno::NXIO | Errno::ISDIR) => {
                Err(StoreError::NotARegularFile(self.shown(name)))
            }
            Err(e) => Err(StoreError::io(
                "open session file",
                self.shown(name),
                e.into(),
            )),
        }
    }

    /// Reads a whole session file, to its end, refusing a document over the size limit.
    /// The limit is the document's, not the file's: a file of up to a page may hold spaces
    /// after its document (room to grow in place), which a lowered limit does not count.
    ///
    /// A write in place keeps a file's length (a shorter document is padded, a longer one
    /// goes to a new file), so `entry`'s `fstat` length holds; the read still asks for a
    /// byte more and reads on if it comes, never trusting a length for the end of a file.
    pub(super) fn read_record(&self, entry: &Entry, name: &str) -> Result<Record, ReadError> {
        self.read_document(entry, name, Reuse::Share)
            .map(|doc| doc.record)
    }

    /// [`read_record`](FileStore::read_record), with whether the document carried a check
    /// and the file's bytes; `reuse` says what to do with a [`Decoded`] of the same bytes.
    pub(super) fn read_document(
        &self,
        entry: &Entry,
        name: &str,
        reuse: Reuse,
    ) -> Result<Document, ReadError> {
        let limit = self.max_file_size.max(IN_PLACE_MAX);
        let mut bytes = vec![0; (entry.len as usize).min(limit) + 1];
        let mut filled = 0;
        loop {
            let n = entry
                .file
                .read_at(&mut bytes[filled..], filled as u64)
                .map_err(|e| {
                    ReadError::Store(StoreError::io("read session file", self.shown(name), e))
                })?;
            filled += n;
            if filled > limit {
                return Err(ReadError::TooLarge);
            }
            if n == 0 || filled < bytes.len() {
                break;
            }
            bytes.resize((bytes.len() * 2).max(IN_PLACE_MAX).min(limit + 1), 0);
        }
        bytes.truncate(filled);
        // The document and its newline; what follows is room to grow (spaces, a newline).
        let document = (bytes.trim_ascii_end().len() + 1).min(filled);
        if document > self.max_file_size {
            return Err(ReadError::TooLarge);
        }
        let mut last = self.last_decoded();
        let known = match reuse {
            Reuse::Share => last
                .as_ref()
                .filter(|known| known.bytes == bytes)
                .map(|known| (known.record.clone(), known.checked)),
            Reuse::Take => last
                .take_if(|known| known.bytes == bytes)
                .map(|known| (known.record, known.checked)),
        };
        if let Some((record, checked)) = known {
            return Ok(Document {
                record,
                checked,
                bytes,
            });
        }
        drop(last);
        let (record, checked) = format::decode_checked(&bytes).map_err(ReadError::Corrupt)?;
        if reuse == Reuse::Share {
            self.remember(bytes.clone(), record.clone(), checked);
        }
        Ok(Document {
            record,
            checked,
            bytes,
        })
    }

    /// Remembers that `bytes` decode to `record` ([`Decoded`]): what a read decoded, or what
    /// a save wrote.
    pub(super) fn remember(&self, bytes: Vec<u8>, record: Record, checked: bool) {
        *self.last_decoded() = Some(Decoded {
            bytes,
            record,
            checked,
        });
    }

    /// Forgets the document remembered (a session deleted or moved: its data is not kept).
    pub(super) fn forget_decoded(&self) {
        *self.last_decoded() = None;
    }

    fn last_decoded(&self) -> std::sync::MutexGuard<'_, Option<Decoded>> {
        crate::store::locked(&self.last_decoded)
    }

    /// The live session in `entry`, read without a lock. A save in another process may be
    /// writing the file in place at that very moment (under its exclusive lock): a read that
    /// catches the page half copied finds the document's check wrong (or its JSON cut). Then
    /// the shared lock is tried, once, without waiting: held, no save is writing, and a read
    /// under it decides (a file corrupt for good is "no session" at once, no retries); not
    /// held, the save is still writing, so the read is tried again [`TORN_RETRIES`] times,
    /// [`TORN_PAUSE`] apart (a page is copied in microseconds). A writer that still holds the
    /// file after that is a [`StoreError::LockTimeout`], never "no session" and never a wait
    /// on the server's one thread.
    pub(super) fn live_record_unlocked(
        &self,
        key: &SessionKey,
        entry: &Entry,
        name: &str,
    ) -> Result<Option<Record>, StoreError> {
        let start = Instant::now();
        let mut read = self.read_record(entry, name);
        let mut retries = 0;
        while matches!(read, Err(ReadError::Corrupt(_))) {
            self.torn_rereads.fetch_add(1, Ordering::Relaxed);
            let locked = try_lock_shared(&entry.file)
                .map_err(|e| StoreError::io("lock session file", self.shown(name), e))?;
            if locked {
                read = self.read_record(entry, name);
                unlock(&entry.file)
                    .map_err(|e| StoreError::io("unlock session file", self.shown(name), e))?;
                if matches!(read, Err(ReadError::Corrupt(_))) {
                    return self.corrupt_unless_replaced(key, entry, name, read, start);
                }
                break;
            }
            if retries == TORN_RETRIES {
                return Err(StoreError::LockTimeout {
                    key: *key,
                    waited: start.elapsed(),
                });
            }
            retries += 1;
            std::thread::sleep(TORN_PAUSE);
            read = self.read_record(entry, name);
        }
        self.live_outcome(name, read)
    }

    /// A file read corrupt under its shared lock: "no session" only if it is still the file
    /// at its name. A file replaced meanwhile (a save that tore it, then put a new file in its
    /// place, or was killed between the two) says nothing of the session: the file now at the
    /// name is read instead, once (then a [`StoreError::LockTimeout`], the name being
    /// rewritten as fast as it is read); a name gone means the session was deleted.
    fn corrupt_unless_replaced(
        &self,
        key: &SessionKey,
        entry: &Entry,
        name: &str,
        read: Result<Record, ReadError>,
        start: Instant,
    ) -> Result<Option<Record>, StoreError> {
        match self.is_current(entry, name)? {
            Some(true) => Ok(self.outcome(name, read)?),
            None => Ok(None),
            Some(false) => {
                let now = match self.open_entry(name) {
                    Ok(Opened::File(now)) => now,
                    Ok(Opened::Missing) => return Ok(None),
                    // Not a session file: no session, as `load` says of one.
                    Err(e @ StoreError::NotARegularFile(_)) => {
                        self.log_bad_file(name, &e);
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                };
                match self.read_record(&now, name) {
                    Err(ReadError::Corrupt(_)) => Err(StoreError::LockTimeout {
                        key: *key,
                        waited: start.elapsed(),
                    }),
                    read => self.live_outcome(name, read),
                }
            }
        }
    }

    /// The live session in `entry`: `Ok(None)` (logged) when it is corrupt, too large or
    /// expired; `Err` when it cannot be read.
    pub(super) fn live_record(
        &self,
        entry: &Entry,
        name: &str,
    ) -> Result<Option<Record>, StoreError> {
        self.live_outcome(name, self.read_record(entry, name))
    }

    /// [`outcome`](FileStore::outcome), and a session that has ended by now is none.
    fn live_outcome(
        &self,
        name: &str,
        read: Result<Record, ReadError>,
    ) -> Result<Option<Record>, StoreError> {
        Ok(self
            .outcome(name, read)?
            .filter(|r| !r.is_expired(SystemTime::now())))
    }

    /// What a read of `name` found: the record, `Ok(None)` (logged) when the file does not
    /// hold one, `Err` when it could not be read at all.
    pub(super) fn outcome(
        &self,
        name: &str,
        read: Result<Record, ReadError>,
    ) -> Result<Option<Record>, StoreError> {
        match read {
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
        let mut seen = crate::store::locked(&self.corrupt_logged);
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

    /// Whether `entry` is, at this moment, the file named `name` (same inode) as it was when
    /// opened (same mode, owner and group). `Some(false)`: replaced, or its mode or owner
    /// changed, since it was opened (the name is then opened afresh, which may now be
    /// refused, as for any file); `None`: the name is gone. (The same inode may hold new
    /// content, written in place: a reader checks what it read.)
    pub(super) fn is_current(&self, entry: &Entry, name: &str) -> Result<Option<bool>, StoreError> {
        Ok(self.current_stat(entry, name)?.map(|st| st.is_some()))
    }

    /// [`is_current`](FileStore::is_current), with the file's `stat` now when it is:
    /// `Some(Some(stat))` current, `Some(None)` replaced (or its mode or owner changed),
    /// `None` gone.
    pub(super) fn current_stat(
        &self,
        entry: &Entry,
        name: &str,
    ) -> Result<Option<Option<Stat>>, StoreError> {
        match statat(&self.dirfd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(now) => Ok(Some(
                (now.st_ino == entry.ino
                    && now.st_dev == entry.dev
                    && now.st_mode == entry.mode
                    && now.st_uid == entry.uid
                    && now.st_gid == entry.gid)
                    .then_some(now),
            )),
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
