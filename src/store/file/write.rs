//! Saves: the merge of a request's changes into the newest copy, and the write in place
//! (one `pwrite` of at most a page over the locked file) with the rules for when it may be
//! used. Every other write is a new file given the name in one step (`dir::names`).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::SystemTime;

use rustix::fs::{FileType, Stat, fstat};

use super::dir::{Entry, stamp_expiry};
use super::document::{document_len, pad_to};
use super::lock::FileLock;
use super::memo::Reuse;
use super::{FileStore, IN_PLACE_MAX};
use crate::store::{ChangeSet, Merged, StoreError};

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
            && !self.dir.fsync
            && entry.writable
            && st.st_uid == self.euid
            && st.st_mode & 0o7777 == 0o600
            && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
            && st.st_nlink == 1
            && len == entry.len
            && len <= IN_PLACE_MAX as u64
            && len <= self.format.max_file_size as u64
            && allocated >= len
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
        let document = &bytes[..document_len(bytes)];
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
}
