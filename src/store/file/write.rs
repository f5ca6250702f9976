//! Atomic writes: a new inode filled in a temp file (or `O_TMPFILE`) and given the session's
//! name in one step (`renameat2` exchange or no-replace, `linkat`), the old copy unlinked;
//! the merge of a request's changes into the newest copy.

use super::*;

/// A small document as a file holds it: padded with spaces (JSON whitespace) to leave room
/// to grow in place, to the next 256 bytes at least 64 bytes ahead, at most one page, and
/// never past `limit` (this build counts the document against the limit, not its padding,
/// but a build before checks counts the file: a rollback must read it back).
pub(super) fn with_room(mut bytes: Vec<u8>, limit: usize) -> Vec<u8> {
    if bytes.len() < IN_PLACE_MAX {
        let room = ((bytes.len() + 64).div_ceil(256) * 256)
            .min(IN_PLACE_MAX)
            .min(limit);
        pad_to(&mut bytes, room);
    }
    bytes
}

/// Pads a document with JSON whitespace to `len` bytes: spaces, then a newline, so that
/// `cat` ends on a line of its own.
fn pad_to(bytes: &mut Vec<u8>, len: usize) {
    if bytes.len() < len {
        bytes.resize(len - 1, b' ');
        bytes.push(b'\n');
    }
}

/// What a save read of the file it locked: its bytes, and whether its document carries a
/// check.
pub(super) struct Stored {
    pub(super) bytes: Vec<u8>,
    pub(super) checked: bool,
}

/// What [`FileStore::write_in_place`] did.
pub(super) enum InPlace {
    /// Written: the file's bytes now.
    Written(Vec<u8>),
    /// Not written, the file as it was: the save goes to a new file.
    NotWritten,
    /// Stopped half way and the old bytes could not be put back: the file is torn until the
    /// save's new file replaces it.
    Torn,
}

/// Writes all of `bytes` at offset 0 of `file`, going on after a short write or an
/// interruption. `Err((written, e))`: it stopped after `written` bytes.
fn write_all_at(file: &File, bytes: &[u8]) -> Result<(), (usize, io::Error)> {
    let mut done = 0;
    while done < bytes.len() {
        match file.write_at(&bytes[done..], done as u64) {
            Ok(0) => return Err((done, io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((done, e)),
        }
    }
    Ok(())
}

/// Sets a new session file's modification time to when the session expires, so that
/// cleanup can tell a live session from its metadata alone (as PHP's gc reads mtimes).
pub(super) fn stamp_expiry(file: &File, expires_at: Option<SystemTime>) -> io::Result<()> {
    match expires_at {
        Some(at) => file.set_modified(at),
        None => Ok(()),
    }
}

impl FileStore {
    /// The newest stored copy under a held lock with `changes` applied, or `Unchanged` by
    /// the skip-write policy ([`ChangeSet::merge_into`]). A file that became unreadable is
    /// replaced by the changes alone rather than blocking the session forever. With it, what
    /// was read of the file (its bytes, whether its document carries a check): a save may
    /// write over a checked file in place, and puts these bytes back if that fails half way.
    pub(super) fn merged(
        &self,
        held: &FileLock,
        changes: &ChangeSet,
    ) -> Result<(Merged, Option<Stored>), StoreError> {
        let (record, stored) = match self.read_document(&held.entry, &held.name, Reuse::Take) {
            Ok(doc) => (
                Some(doc.record),
                Some(Stored {
                    bytes: doc.bytes,
                    checked: doc.checked,
                }),
            ),
            Err(e) => (self.outcome(&held.name, Err(e))?, None),
        };
        Ok((changes.merge_into(record, SystemTime::now()), stored))
    }

    /// The bytes of `record`, within the size limit of one session file, with room to grow
    /// ([`with_room`]).
    pub(super) fn encode(
        &self,
        key: Option<&SessionKey>,
        record: &Record,
    ) -> Result<Vec<u8>, StoreError> {
        format::encode_within(key, record, self.max_file_size, true)
            .map(|bytes| with_room(bytes, self.max_file_size))
    }

    /// Writes a save over the locked file itself when it may: the file passes
    /// [`may_write_in_place`](FileStore::may_write_in_place) just before the write, its document
    /// (`old`, its bytes as read under the lock) is of the current format version (whose
    /// check every reader requires), and the new document fits in it. One `pwrite` of the
    /// whole file (at most a page) at offset 0, padded with JSON whitespace to the file's
    /// length (the file never shrinks, never grows, needs no `ftruncate`), then the mtime
    /// stamped with the expiry. A reader that copies the page half written finds its check
    /// wrong and reads again; a process killed mid-`pwrite` leaves the old page or the new
    /// one (see [`IN_PLACE_MAX`]). A write that stops half way (not expected: no block is
    /// allocated) is undone, `old` written back, and the save goes to a new file
    /// ([`InPlace`]).
    pub(super) fn write_in_place(
        &self,
        held: &FileLock,
        bytes: &[u8],
        old: Option<&[u8]>,
        expires_at: SystemTime,
    ) -> InPlace {
        let len = held.entry.len as usize;
        let Some(old) = old else {
            return InPlace::NotWritten;
        };
        // The document and its newline, without the room `encode` left after it.
        let document = &bytes[..(bytes.trim_ascii_end().len() + 1).min(bytes.len())];
        if document.len() > len || old.len() != len {
            return InPlace::NotWritten;
        }
        // Decided on the file as it is now, just before the write (a link made a moment ago
        // is seen).
        match fstat(&held.entry.file) {
            Ok(now) if self.may_write_in_place(&held.entry, &now) => {}
            _ => return InPlace::NotWritten,
        }
        let mut page = Vec::with_capacity(len);
        page.extend_from_slice(document);
        pad_to(&mut page, len);
        // Named for the log only when something goes wrong.
        let shown = || crate::key::shown_name(&held.name);
        match write_all_at(&held.entry.file, &page) {
            Ok(()) => {
                // The data is written: the save happened. The expiry stamp only spares
                // cleanup a read (with the mtime of the write, cleanup reads the file).
                if let Err(e) = stamp_expiry(&held.entry.file, Some(expires_at)) {
                    log::warn!("cannot stamp {} with its expiry: {e}", shown());
                }
                InPlace::Written(page)
            }
            Err((0, e)) => {
                log::warn!(
                    "{}: cannot write in place ({e}); replacing the file",
                    shown()
                );
                InPlace::NotWritten
            }
            Err((written, e)) => {
                // Half written: the old document goes back before anything else happens.
                match write_all_at(&held.entry.file, old) {
                    Ok(()) => {
                        log::warn!(
                            "{}: a write in place stopped after {written} bytes ({e}); \
                             the old copy is back, replacing the file",
                            shown()
                        );
                        InPlace::NotWritten
                    }
                    Err((_, again)) => {
                        log::error!(
                            "{}: a write in place stopped after {written} bytes ({e}) and \
                             the old copy could not be put back ({again}); replacing the file",
                            shown()
                        );
                        InPlace::Torn
                    }
                }
            }
        }
    }

    /// Writes `bytes` to a new temp file (0600) in the directory, `.<uuid>.tmp`, and returns
    /// its name.
    pub(super) fn write_temp(
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

    pub(super) fn write_temp_for(
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
    pub(super) fn unlink(&self, name: &str) -> io::Result<()> {
        let _changing = self.changing();
        unlinkat(&self.dirfd, name, AtFlags::empty()).map_err(io::Error::from)
    }

    /// Makes a completed write durable: fsync the directory (with `fsync` on).
    pub(super) fn sync_dir(&self) -> Result<(), StoreError> {
        if self.fsync {
            fsync(&self.dirfd)
                .map_err(|e| StoreError::io("sync session directory", &self.dir, e.into()))?;
        }
        Ok(())
    }

    /// Atomically replaces the file named `name` (held locked) with the temp file.
    pub(super) fn replace(&self, temp: &str, name: &str) -> Result<(), StoreError> {
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
    pub(super) fn create_from_tmpfile(
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
    pub(super) fn link_new(&self, temp: &str, name: &str) -> io::Result<bool> {
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
}
