//! Changing the directory's names atomically: a new inode filled in a temp file (or
//! `O_TMPFILE`) and given the session's name in one step (`renameat2` exchange or
//! no-replace, `linkat`), the old copy unlinked; and the count of changes under way, which
//! tells a file kept open that its name still holds it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use rustix::fs::{
    AtFlags, CWD, Mode, OFlags, RenameFlags, fsync, linkat, openat, renameat, renameat_with,
    unlinkat,
};
use rustix::io::Errno;

use super::SessionDir;
use crate::key::SessionKey;
use crate::store::StoreError;

/// Counts of changes to the names begun and finished ([`SessionDir::changing`]).
#[derive(Debug, Default)]
pub(super) struct Changes {
    begun: AtomicU64,
    done: AtomicU64,
}

/// What [`SessionDir::exchange`] did.
pub(in crate::store::file) enum Exchanged {
    /// The temp file has the name, and the copy it replaced has the temp name: the caller
    /// removes it.
    Swapped,
    /// The temp file has the name, and the copy it replaced is gone (no `renameat2`).
    Replaced,
    /// The name was gone: nothing was replaced nor created, and the temp file is removed.
    Gone,
}

/// A change to the directory's names under way; counted done when dropped.
pub(in crate::store::file) struct Changing<'a>(&'a Changes);

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.0.done.fetch_add(1, Ordering::SeqCst);
    }
}

/// Sets a new session file's modification time to when the session expires, so that
/// cleanup can tell a live session from its metadata alone (as PHP's gc reads mtimes).
pub(in crate::store::file) fn stamp_expiry(
    file: &File,
    expires_at: Option<SystemTime>,
) -> io::Result<()> {
    match expires_at {
        Some(at) => file.set_modified(at),
        None => Ok(()),
    }
}

impl SessionDir {
    /// Counts a change to the directory's names from now until the guard is dropped.
    pub(in crate::store::file) fn changing(&self) -> Changing<'_> {
        self.changes.begun.fetch_add(1, Ordering::SeqCst);
        Changing(&self.changes)
    }

    /// `Some(begun)` if no change is under way now: what a file opened now records, to
    /// know later that no name changed since ([`changed_since`](SessionDir::changed_since)).
    pub(in crate::store::file) fn quiet_now(&self) -> Option<u64> {
        let done = self.changes.done.load(Ordering::SeqCst);
        let begun = self.changes.begun.load(Ordering::SeqCst);
        (begun == done).then_some(begun)
    }

    /// Whether a change of a name has begun here since [`quiet_now`](SessionDir::quiet_now)
    /// returned `begun`.
    pub(in crate::store::file) fn changed_since(&self, begun: u64) -> bool {
        self.changes.begun.load(Ordering::SeqCst) != begun
    }

    /// Writes `bytes` to a new temp file (0600) in the directory, `.<uuid>.tmp`, and returns
    /// its name.
    pub(in crate::store::file) fn write_temp(
        &self,
        bytes: &[u8],
        expires_at: Option<SystemTime>,
    ) -> io::Result<(String, File)> {
        let name = format!(".{}.tmp", SessionKey::generate());
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut file = File::from(openat(
            &self.fd,
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
                let _ = unlinkat(&self.fd, name.as_str(), AtFlags::empty());
                Err(e)
            }
        }
    }

    /// [`write_temp`](SessionDir::write_temp) for the session file `name`, its error naming
    /// it.
    pub(in crate::store::file) fn write_temp_for(
        &self,
        name: &str,
        bytes: &[u8],
        expires_at: SystemTime,
    ) -> Result<String, StoreError> {
        self.write_temp(bytes, Some(expires_at))
            .map(|(temp, _)| temp)
            .map_err(|e| self.error("write session file", name, e))
    }

    /// Removes an entry of the directory.
    pub(in crate::store::file) fn unlink(&self, name: &str) -> io::Result<()> {
        let _changing = self.changing();
        unlinkat(&self.fd, name, AtFlags::empty()).map_err(io::Error::from)
    }

    /// Makes a completed write durable: fsync the directory (with `fsync` on).
    pub(in crate::store::file) fn sync(&self) -> Result<(), StoreError> {
        if self.fsync {
            fsync(&self.fd)
                .map_err(|e| StoreError::io("sync session directory", &self.path, e.into()))?;
        }
        Ok(())
    }

    /// Atomically replaces the file named `name` (held locked) with the temp file.
    pub(in crate::store::file) fn replace(&self, temp: &str, name: &str) -> Result<(), StoreError> {
        let _changing = self.changing();
        let dir = &self.fd;
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
            self.error("replace session file", name, e)
        })?;
        self.sync()
    }

    /// Gives the temp file the session file's name `name` if the session still has one, in
    /// one step: `renameat2(RENAME_EXCHANGE)`, which fails rather than create a name that is
    /// gone (a session deleted meanwhile is not brought back). The copy it replaced is then
    /// at the temp name, for the caller to look at and remove ([`Exchanged::Swapped`]).
    /// Where the file system lacks `renameat2`, a `rename` after checking that the name is
    /// there ([`Exchanged::Replaced`]).
    ///
    /// # Errors
    /// The directory's error (the temp file is removed).
    pub(in crate::store::file) fn exchange(
        &self,
        temp: &str,
        name: &str,
    ) -> Result<Exchanged, StoreError> {
        let _changing = self.changing();
        let dir = &self.fd;
        let failed = |e: io::Error| {
            let _ = self.unlink(temp);
            self.error("replace session file", name, e)
        };
        if self.renameat2.load(Ordering::Relaxed) {
            match renameat_with(dir, temp, dir, name, RenameFlags::EXCHANGE) {
                Ok(()) => {
                    self.sync()?;
                    return Ok(Exchanged::Swapped);
                }
                Err(Errno::NOENT) => {
                    // The temp file is ours: the session's name (or the directory) is gone.
                    let _ = self.unlink(temp);
                    self.check()?;
                    return Ok(Exchanged::Gone);
                }
                Err(e) if e == Errno::INVAL || e == Errno::NOSYS || e == Errno::NOTSUP => {
                    self.renameat2.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(failed(e.into())),
            }
        }
        // A removal between this check and the rename would be undone: only where the file
        // system has no renameat2.
        if !self.is_file(name)? {
            let _ = self.unlink(temp);
            return Ok(Exchanged::Gone);
        }
        renameat(dir, temp, dir, name).map_err(|e| failed(e.into()))?;
        self.sync()?;
        Ok(Exchanged::Replaced)
    }

    /// A new session file holding `bytes`, under a fresh random key: from an unnamed file
    /// (`O_TMPFILE`) where the file system has them, else from a temp file given its name
    /// without replacing anything.
    ///
    /// # Errors
    /// The directory's error, or [`StoreError::Unavailable`] if 16 fresh keys were all
    /// taken (a broken random source).
    pub(in crate::store::file) fn create(
        &self,
        bytes: &[u8],
        expires_at: SystemTime,
    ) -> Result<SessionKey, StoreError> {
        self.create_with(bytes, Some(expires_at), &|| {
            let key = SessionKey::generate();
            (key, key.file_name())
        })
    }

    /// [`create`](SessionDir::create) with the new file's mtime stamped with `stamp` (`None`:
    /// the time of the write, as Django keeps it) under the keys and names `fresh` draws.
    ///
    /// # Errors
    /// As [`create`](SessionDir::create).
    pub(in crate::store::file) fn create_with(
        &self,
        bytes: &[u8],
        stamp: Option<SystemTime>,
        fresh: &dyn Fn() -> (SessionKey, String),
    ) -> Result<SessionKey, StoreError> {
        if self.tmpfile.load(Ordering::Relaxed) {
            match self.create_from_tmpfile(bytes, stamp, fresh) {
                Ok(Some(key)) => return Ok(key),
                Ok(None) => self.tmpfile.store(false, Ordering::Relaxed),
                Err(e) => return Err(e),
            }
        }
        let temp = self
            .write_temp(bytes, stamp)
            .map(|(temp, _)| temp)
            .map_err(|e| self.error("write session file", ".", e))?;
        // A collision of 122 random bits (165 for Django's keys) does not happen; the loop is
        // for correctness only.
        for _ in 0..16 {
            let (key, name) = fresh();
            match self.link_new(&temp, &name) {
                Ok(true) => {
                    self.sync()?;
                    return Ok(key);
                }
                Ok(false) => continue,
                Err(e) => {
                    let _ = self.unlink(&temp);
                    return Err(self.error("create session file", &name, e));
                }
            }
        }
        let _ = self.unlink(&temp);
        Err(StoreError::Unavailable(
            "16 fresh random keys were all taken; the random source is broken".into(),
        ))
    }

    /// Creates a session from an unnamed file (`O_TMPFILE`) given its name in one step
    /// (`linkat`, which fails rather than replace): no temp name to add and remove, and
    /// nothing left behind by a crash. `Ok(None)`: the file system cannot (use temp files).
    fn create_from_tmpfile(
        &self,
        bytes: &[u8],
        stamp: Option<SystemTime>,
        fresh: &dyn Fn() -> (SessionKey, String),
    ) -> Result<Option<SessionKey>, StoreError> {
        let unsupported = |e: Errno| {
            e == Errno::OPNOTSUPP || e == Errno::ISDIR || e == Errno::INVAL || e == Errno::NOSYS
        };
        let fd = match openat(
            &self.fd,
            ".",
            OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => fd,
            Err(e) if unsupported(e) => return Ok(None),
            Err(e) => return Err(self.error("create session file", ".", e.into())),
        };
        let mut file = File::from(fd);
        file.write_all(bytes)
            .and_then(|()| stamp_expiry(&file, stamp))
            .and_then(|()| if self.fsync { file.sync_data() } else { Ok(()) })
            .map_err(|e| StoreError::io("write session file", &self.path, e))?;
        let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        for _ in 0..16 {
            let (key, name) = fresh();
            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; /proc/self/fd works for everyone.
            let linked = match linkat(&file, "", &self.fd, name.as_str(), AtFlags::EMPTY_PATH) {
                Err(Errno::NOENT | Errno::PERM | Errno::ACCESS) => linkat(
                    CWD,
                    proc_path.as_str(),
                    &self.fd,
                    name.as_str(),
                    AtFlags::SYMLINK_FOLLOW,
                ),
                other => other,
            };
            match linked {
                Ok(()) => {
                    self.sync()?;
                    return Ok(Some(key));
                }
                Err(Errno::EXIST) => continue,
                Err(Errno::NOENT) => {
                    self.check()?;
                    return Ok(None);
                }
                Err(e) if unsupported(e) => return Ok(None),
                Err(e) => return Err(self.error("create session file", &name, e.into())),
            }
        }
        Err(StoreError::Unavailable(
            "16 fresh random keys were all taken; the random source is broken".into(),
        ))
    }

    /// Gives the temp file the name `name` unless something has it. `Ok(false)`: taken.
    fn link_new(&self, temp: &str, name: &str) -> io::Result<bool> {
        let _changing = self.changing();
        let dir = &self.fd;
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
