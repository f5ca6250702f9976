//! Cleanup: a pass over the directory in slices, removing expired sessions (known from the
//! file's mtime without reading it), corrupt files and old leftovers of crashed writes.

use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{Dir, FileType};

use super::FileStore;
use super::dir::{Opened, SessionDir};
use super::document::ReadError;
use crate::expiry::later;
use crate::key::SessionKey;
use crate::store::{ClearReport, LockIssuer, StoreError, Sweep, SweepCursor};

pub(super) enum Cleared {
    Kept,
    Expired,
    Corrupt,
    Gone,
}

/// `.<uuid>.tmp`: the name of a temp file of this store.
pub(super) fn is_temp_name(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_suffix(".tmp"))
        .and_then(SessionKey::parse)
        .is_some()
}

impl FileStore {
    /// Classifies one directory entry for `clear_expired`.
    pub(super) fn clear_entry(
        &self,
        name: &str,
        file_type: FileType,
        now: SystemTime,
        wait: Duration,
        report: &mut ClearReport,
    ) {
        let is_file = match file_type {
            FileType::Unknown => self.dir.holds_a_file(name),
            other => other == FileType::RegularFile,
        };
        if let Some(key) = name.strip_suffix(".json").and_then(SessionKey::parse) {
            if !is_file {
                report.skipped += 1;
                return;
            }
            // The store stamps each file's mtime with its expiry: a file whose mtime is still
            // ahead is live, known without opening it (a million files in seconds).
            if self.dir.mtime_of(name).is_some_and(|mtime| mtime > now) {
                report.kept += 1;
                return;
            }
            match self.clear_session(&key, now, wait) {
                Ok(Cleared::Kept) => report.kept += 1,
                Ok(Cleared::Expired) => report.expired += 1,
                Ok(Cleared::Corrupt) => report.corrupt += 1,
                Ok(Cleared::Gone) => {}
                Err(e) => {
                    log::warn!("clearsessions: left {}: {e}", crate::key::shown_name(name));
                    report.skipped += 1;
                }
            }
        } else if is_temp_name(name) && is_file {
            let old = self.dir.mtime_of(name).is_some_and(|mtime| {
                now.duration_since(mtime).unwrap_or_default() >= self.leftover_age
            });
            if old && self.dir.unlink(name).is_ok() {
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
    pub(super) fn clear_session(
        &self,
        key: &SessionKey,
        now: SystemTime,
        wait: Duration,
    ) -> Result<Cleared, StoreError> {
        let name = key.file_name();
        let entry = match self.dir.open_entry(&name)? {
            Opened::Missing => return Ok(Cleared::Gone),
            Opened::File(entry) => entry,
        };
        if let Ok(record) = self.read_record(&entry, &name)
            && !record.is_expired(now)
        {
            return Ok(Cleared::Kept);
        }
        drop(entry);
        let Some(held) = self.lock_current(key, &name, wait, None)? else {
            return Ok(Cleared::Gone);
        };
        let verdict = match self.read_record(&held.entry, &held.name) {
            Ok(record) if record.is_expired(SystemTime::now()) => Cleared::Expired,
            Ok(_) => return Ok(Cleared::Kept),
            Err(ReadError::Store(e)) => return Err(e),
            Err(ReadError::TooLarge | ReadError::Corrupt(_)) => Cleared::Corrupt,
        };
        self.dir
            .unlink(&name)
            .map_err(|e| self.dir.error("remove session file", &name, e))?;
        // Neither its file kept open nor its document remembered outlives it.
        self.forget(&name);
        Ok(verdict)
    }
}

/// A [`FileStore`]'s place in a cleanup pass: the directory listing, read so far
/// ([`SweepCursor::Own`]), and the store whose directory it lists (another store given it
/// starts a pass of its own).
pub(super) struct DirCursor {
    issuer: LockIssuer,
    entries: Dir,
}

impl std::fmt::Debug for DirCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirCursor")
    }
}

impl FileStore {
    /// Goes on with a pass over the directory for about `budget`; `Ok(true)` when the pass
    /// is complete (the next call starts a new one).
    pub(super) fn sweep_with(
        &self,
        sweep: &mut Sweep,
        budget: Duration,
        wait: Duration,
    ) -> Result<bool, StoreError> {
        sweep_listing(
            &self.dir,
            self.issuer,
            sweep,
            budget,
            &mut |name, file_type, now, report| {
                self.clear_entry(name, file_type, now, wait, report);
            },
        )
    }
}

/// Goes on with a pass over `dir`'s listing for about `budget`, handing each entry (but `.`
/// and `..`; a name that is not UTF-8 is skipped) to `each` with its type and the pass's
/// time; `Ok(true)` when the pass is complete (the next call starts a new one). The pass's
/// place is kept in `sweep` for the store `issuer` names (another store given it starts a
/// pass of its own).
pub(super) fn sweep_listing(
    dir: &SessionDir,
    issuer: LockIssuer,
    sweep: &mut Sweep,
    budget: Duration,
    each: &mut dyn FnMut(&str, FileType, SystemTime, &mut ClearReport),
) -> Result<bool, StoreError> {
    let mine = issuer;
    let deadline = later(Instant::now(), budget);
    if !sweep.in_progress() {
        let entries = dir.list()?;
        sweep.begin(SweepCursor::Own(Box::new(DirCursor { issuer, entries })));
    }
    let now = sweep.now();
    loop {
        let SweepCursor::Own(own) = sweep.cursor_mut() else {
            sweep.finish();
            return Ok(true);
        };
        let Some(DirCursor { issuer, entries }) = own.downcast_mut::<DirCursor>() else {
            // Another kind of store's position: this store starts its own pass next time.
            sweep.finish();
            return Ok(true);
        };
        if *issuer != mine {
            // Another file store's listing: its names are not this directory's.
            sweep.finish();
            return Ok(true);
        }
        match entries.next() {
            None => {
                sweep.finish();
                return Ok(true);
            }
            Some(Err(e)) => {
                sweep.finish();
                return Err(StoreError::io(
                    "list session directory",
                    dir.path(),
                    e.into(),
                ));
            }
            Some(Ok(entry)) => {
                let name = entry.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                match std::str::from_utf8(name) {
                    Ok(name) => each(name, entry.file_type(), now, sweep.report_mut()),
                    Err(_) => sweep.report_mut().skipped += 1,
                }
                sweep.count_scanned(1);
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}
