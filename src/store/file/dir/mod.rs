//! [`SessionDir`]: the sessions directory, opened once and reached by handle. Its entries are
//! opened safely (never following a symlink or blocking on a FIFO, regular files only),
//! checked against their names by `stat`, and its failures told apart from "no session"
//! (a removed directory is [`StoreError::DirectoryGone`]). Changing its names atomically
//! is `names`.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use rustix::fs::{
    AtFlags, CWD, Dir, FileType, Mode, OFlags, Stat, fchmod, fstat, openat, statat, unlinkat,
};
use rustix::io::Errno;

use crate::store::StoreError;

mod names;

use names::Changes;
pub(super) use names::{Exchanged, stamp_expiry};

/// The sessions directory, by the handle opened when the store opened: every file
/// operation is relative to it (`openat`, `renameat2`, `linkat`, `unlinkat`, `statat`), so
/// a directory renamed, swapped or replaced by a symlink meanwhile is never followed.
#[derive(Debug)]
pub(super) struct SessionDir {
    /// The directory's path as given, for messages only.
    path: PathBuf,
    fd: OwnedFd,
    /// Whether writes are made durable (file data and directory fsynced).
    pub(super) fsync: bool,
    /// Cleared when the file system refuses `renameat2`; then `rename`/`link` are used.
    renameat2: AtomicBool,
    /// Cleared when the file system refuses `O_TMPFILE`; then creates go through temp names.
    tmpfile: AtomicBool,
    /// Changes to the names begun and finished here ([`SessionDir::changing`]).
    changes: Changes,
    /// Django's layout (`<prefix><key>`, [`SessionDir::open_shared`]): the prefix, for the
    /// names messages show.
    prefix: Option<String>,
}

/// An open session file and what its `fstat` said when it was opened. A write in place
/// keeps a file's length; a read still reads to the end, and a locker refreshes the length
/// once it holds the lock.
pub(super) struct Entry {
    pub(super) file: File,
    pub(super) len: u64,
    pub(super) ino: u64,
    pub(super) dev: u64,
    /// Its mode (type and permissions), owner and group when opened: a file kept open is
    /// used only while they are unchanged, so that an operator's `chmod` or `chown` is seen
    /// at the next request as for a file opened then ([`SessionDir::current_stat`]).
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// Opened for reading and writing (a locker's).
    pub(super) writable: bool,
}

// `File`'s Debug shows its path, which holds the whole key: the inode only.
impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("ino", &self.ino)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// What is at a session's name.
pub(super) enum Opened {
    Missing,
    File(Entry),
}

impl SessionDir {
    /// Opens `path` once for good (`O_DIRECTORY`, not following a symlink); with `create`,
    /// creates it (mode 0700) if missing, makes it 0700 if others can read it, and checks
    /// that files can be created in it.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] naming the directory and the cause when it cannot be
    /// created, opened or written, is a symbolic link, or (without `create`) is missing.
    pub(super) fn open(path: &Path, create: bool) -> Result<SessionDir, StoreError> {
        Self::open_as(path, create, None)
    }

    /// [`open`](SessionDir::open) for a directory shared with Django, whose session files
    /// are `<prefix><key>`: created (mode 0700) if missing, but an existing directory's mode
    /// is never changed (Django's, often the system's temp directory); one that others can
    /// list is only said.
    ///
    /// # Errors
    /// As [`open`](SessionDir::open).
    pub(super) fn open_shared(
        path: &Path,
        create: bool,
        prefix: &str,
    ) -> Result<SessionDir, StoreError> {
        Self::open_as(path, create, Some(prefix.to_owned()))
    }

    fn open_as(
        path: &Path,
        create: bool,
        prefix: Option<String>,
    ) -> Result<SessionDir, StoreError> {
        let unavailable = |what: &str, e: io::Error| {
            StoreError::Unavailable(format!("session directory {} {what}: {e}", path.display()))
        };
        if create {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|e| unavailable("cannot be created", e))?;
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match openat(CWD, path, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                let symlink = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink());
                return Err(if symlink {
                    unavailable(
                        "is a symbolic link, which the store does not follow; \
                         give the directory's real path",
                        e.into(),
                    )
                } else if e == Errno::NOTDIR {
                    unavailable("is not a directory", e.into())
                } else if e == Errno::NOENT {
                    unavailable("does not exist (nothing was created)", e.into())
                } else {
                    unavailable("cannot be opened", e.into())
                });
            }
        };
        let mode = fstat(&fd)
            .map_err(|e| unavailable("cannot be read", e.into()))?
            .st_mode;
        if mode & 0o077 != 0 && prefix.is_some() {
            // Django's directory: its mode is Django's operator's to choose.
            log::warn!(
                "session directory {} is open to others (mode {:o}): session keys are \
                 credentials and Django's layout puts them in the file names; give Django and \
                 filesession a private SESSION_FILE_PATH (mode 0700), not a shared temp \
                 directory",
                path.display(),
                mode & 0o7777
            );
        } else if mode & 0o077 != 0 && !create {
            // An existing directory, as clearsessions is given it: said, never changed (a
            // mistyped path may name a shared one, /var/tmp, whose mode others rely on).
            log::warn!(
                "session directory {} is readable by others (mode {:o}): session keys are \
                 credentials; make it 0700",
                path.display(),
                mode & 0o7777
            );
        } else if mode & 0o077 != 0 {
            // Session keys are bearer credentials: keep the listing private.
            if let Err(e) = fchmod(&fd, Mode::from_raw_mode(0o700)) {
                log::warn!(
                    "session directory {} is readable by others and cannot be made 0700: {e}",
                    path.display()
                );
            }
        }
        let dir = SessionDir {
            path: path.to_path_buf(),
            fd,
            fsync: false,
            renameat2: AtomicBool::new(true),
            tmpfile: AtomicBool::new(true),
            changes: Changes::default(),
            prefix,
        };
        if create {
            // A server finds out now, not at its first session, that it cannot write here.
            let (probe, _) = dir
                .write_temp(b"probe\n", None)
                .map_err(|e| unavailable("is not writable", e))?;
            unlinkat(&dir.fd, probe.as_str(), AtFlags::empty())
                .map_err(|e| unavailable("is not writable", e.into()))?;
        }
        Ok(dir)
    }

    /// The directory's path as given when it was opened (for messages).
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The path of an entry of the directory, for messages (a session's key shortened).
    pub(super) fn shown(&self, name: &str) -> PathBuf {
        match &self.prefix {
            Some(prefix) => self.path.join(crate::key::shown_django_name(name, prefix)),
            None => self.path.join(crate::key::shown_name(name)),
        }
    }

    /// `Err(DirectoryGone)` if the directory has been removed. Called on error paths only
    /// (an entry not found, a create refused).
    ///
    /// A removed directory has no links left (`st_nlink == 0` on ext4, tmpfs, btrfs, xfs),
    /// but overlayfs reports 1 for every merged directory, removed or not: there the kernel
    /// is asked directly, since reading a removed directory fails with `ENOENT` on every
    /// file system.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        let gone = || StoreError::DirectoryGone(self.path.clone());
        match fstat(&self.fd) {
            Ok(st) if st.st_nlink == 0 => Err(gone()),
            Ok(st) if st.st_nlink == 1 => match Dir::read_from(&self.fd) {
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
                &self.path,
                e.into(),
            )),
        }
    }

    /// The error for a failed operation on an entry: [`StoreError::DirectoryGone`] when the
    /// directory was removed, else an I/O error naming the entry.
    pub(super) fn error(&self, action: &'static str, name: &str, e: io::Error) -> StoreError {
        // A removed directory refuses with ENOENT, or EPERM for O_TMPFILE: ask it.
        if let Err(gone @ StoreError::DirectoryGone(_)) = self.check() {
            return gone;
        }
        StoreError::io(action, self.shown(name), e)
    }

    /// A listing of the directory, from its start.
    ///
    /// # Errors
    /// As [`check`](SessionDir::check), or an I/O error.
    pub(super) fn list(&self) -> Result<Dir, StoreError> {
        self.check()?;
        Dir::read_from(&self.fd)
            .map_err(|e| StoreError::io("list session directory", &self.path, e.into()))
    }

    /// Opens the entry `name` without following a symlink and without blocking on a FIFO,
    /// and refuses anything but a regular file.
    pub(super) fn open_entry(&self, name: &str) -> Result<Opened, StoreError> {
        self.open_entry_as(name, OFlags::RDONLY)
    }

    /// [`open_entry`](SessionDir::open_entry) for a writer, which may write in place: read
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
        let opened = match openat(&self.fd, name, flags | OFlags::NOATIME, Mode::empty()) {
            Err(Errno::PERM) => openat(&self.fd, name, flags, Mode::empty()),
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
                self.check()?;
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

    /// Whether `entry` is, at this moment, the file named `name` (same inode) as it was when
    /// opened (same mode, owner and group). `Some(false)`: replaced, or its mode or owner
    /// changed, since it was opened (the name is then opened afresh, which may now be
    /// refused, as for any file); `None`: the name is gone. (The same inode may hold new
    /// content, written in place: a reader checks what it read.)
    pub(super) fn is_current(&self, entry: &Entry, name: &str) -> Result<Option<bool>, StoreError> {
        Ok(self.current_stat(entry, name)?.map(|st| st.is_some()))
    }

    /// [`is_current`](SessionDir::is_current), with the file's `stat` now when it is:
    /// `Some(Some(stat))` current, `Some(None)` replaced (or its mode or owner changed),
    /// `None` gone.
    pub(super) fn current_stat(
        &self,
        entry: &Entry,
        name: &str,
    ) -> Result<Option<Option<Stat>>, StoreError> {
        match statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(now) => Ok(Some(
                (now.st_ino == entry.ino
                    && now.st_dev == entry.dev
                    && now.st_mode == entry.mode
                    && now.st_uid == entry.uid
                    && now.st_gid == entry.gid)
                    .then_some(now),
            )),
            Err(Errno::NOENT) => {
                self.check()?;
                Ok(None)
            }
            Err(e) => Err(StoreError::io(
                "inspect session file",
                self.shown(name),
                e.into(),
            )),
        }
    }

    /// Whether `name` is a regular file (not following a symlink). `Ok(false)`: missing,
    /// or something else.
    pub(super) fn is_file(&self, name: &str) -> Result<bool, StoreError> {
        match statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(FileType::from_raw_mode(st.st_mode) == FileType::RegularFile),
            Err(Errno::NOENT) => self.check().map(|()| false),
            Err(e) => Err(StoreError::io(
                "inspect session file",
                self.shown(name),
                e.into(),
            )),
        }
    }

    /// The device and inode of the entry `name` (not following a symlink), if it can be
    /// inspected.
    pub(super) fn identity(&self, name: &str) -> Option<(u64, u64)> {
        statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| (st.st_dev, st.st_ino))
    }

    /// The owner (user id) of the entry `name` (not following a symlink), if it can be
    /// inspected.
    pub(super) fn owner_of(&self, name: &str) -> Option<u32> {
        statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| st.st_uid)
    }

    /// Whether `name` is a regular file now (not following a symlink); an entry that cannot
    /// be inspected (gone meanwhile) is not. For cleanup's listing, which asks of each entry.
    pub(super) fn holds_a_file(&self, name: &str) -> bool {
        statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
    }

    /// The modification time of an entry, not following a symlink.
    pub(super) fn mtime_of(&self, name: &str) -> Option<SystemTime> {
        let st = statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        let secs = u64::try_from(st.st_mtime).ok()?;
        let nanos = u32::try_from(st.st_mtime_nsec).unwrap_or(0);
        SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
    }
}
