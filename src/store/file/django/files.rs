//! [`DjangoFileStore`]'s files: a session file read into a record (its end from its mtime),
//! the write (an exchange, checked, merged again when Django renamed a file in meanwhile),
//! and cleanup's verdict on each entry.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::FileType;

use super::DjangoFileStore;
use crate::expiry::Expiry;
use crate::key::SessionKey;
use crate::store::django::log_refused;
use crate::store::file::dir::{Entry, Exchanged, Opened};
use crate::store::file::flock::lock_exclusive_until;
use crate::store::file::lock::FileLock;
use crate::store::file::sweep::{is_temp_name, sweep_listing};
use crate::store::{ChangeSet, ClearReport, Record, SessionLock, StoreError, Sweep};

/// How many times a save merges again after finding that the copy it replaced was not the
/// one it locked (a rename by Django between its check and its write, each time).
const MAX_MERGES: usize = 8;

/// A session file of a [`DjangoFileStore`] locked exclusively and checked to be the file at
/// its name, held in a [`SessionLock`].
pub(super) struct DjangoLock(pub(super) FileLock);

// The name holds the whole key, a credential: the inode only (the `SessionLock` around it
// shows the key shortened).
impl std::fmt::Debug for DjangoLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DjangoLock").field(&self.0.entry).finish()
    }
}

/// What one write of a save did.
enum Wrote {
    /// The copy took the name by an exchange.
    Swapped(Swapped),
    /// The copy took the name by a plain rename (no `renameat2`).
    Renamed,
    /// Not written: the name holds another copy (this device and inode) than the one the
    /// save builds on.
    Stale((u64, u64)),
}

/// A copy of a save that took the session's name by an exchange.
struct Swapped {
    /// The temp name the copy it replaced has now.
    temp: String,
    /// The device and inode of ours, if known.
    ours: Option<(u64, u64)>,
}

/// What a session file holds.
pub(super) enum Found {
    /// A session, live.
    Live(Record),
    /// A session that has ended.
    Expired(Record),
    /// No session of ours (tampered, another key's, over the size limit): why.
    Refused { why: String },
}

/// Reads all of `file` from offset 0, at most `limit` bytes: `None` when it holds more.
fn read_all(file: &File, len_hint: u64, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = vec![0; usize::try_from(len_hint).unwrap_or(limit).min(limit) + 1];
    let mut filled = 0;
    loop {
        let n = file.read_at(&mut bytes[filled..], filled as u64)?;
        filled += n;
        if filled > limit {
            return Ok(None);
        }
        if n == 0 {
            break;
        }
        if filled == bytes.len() {
            bytes.resize((bytes.len() * 2).min(limit + 1), 0);
        }
    }
    bytes.truncate(filled);
    Ok(Some(bytes))
}

impl DjangoFileStore {
    /// What the open file `entry` (named `name`) holds at `now`. Its end is its own mtime
    /// (read from the open file: the copy read) + `SESSION_COOKIE_AGE`, or as
    /// `_session_expiry` says ([`Expiry::date`] from the mtime).
    ///
    /// # Errors
    /// It cannot be read (never "no session").
    pub(super) fn read_file(
        &self,
        entry: &Entry,
        name: &str,
        now: SystemTime,
    ) -> Result<Found, StoreError> {
        let io = |e| StoreError::io("read session file", self.dir.shown(name), e);
        let mtime = entry
            .file
            .metadata()
            .and_then(|m| m.modified())
            .map_err(io)?;
        let refused = |why: &str| Found::Refused {
            why: why.to_owned(),
        };
        let Some(bytes) = read_all(&entry.file, entry.len, self.max_file_size).map_err(io)? else {
            return Ok(refused("over the size limit"));
        };
        let decoded = match std::str::from_utf8(&bytes) {
            // Django's placeholder for a session being created: `{}`, as Django reads it.
            Ok("") => Ok((serde_json::Map::new(), Expiry::Default)),
            Ok(text) => self.codec.decode(text),
            Err(_) => Err("not ASCII".to_owned()),
        };
        let (data, expiry) = match decoded {
            Ok(decoded) => decoded,
            Err(why) => return Ok(refused(&why)),
        };
        let record = Record {
            data: data.into(),
            expiry,
            expires_at: expiry.date(mtime, self.cookie_age),
        };
        Ok(if record.is_expired(now) {
            Found::Expired(record)
        } else {
            Found::Live(record)
        })
    }

    /// The lock for a write: the one held since the load (`request` mode) if it is still on
    /// the file at the name, else a fresh one.
    ///
    /// # Errors
    /// [`StoreError::Deleted`]: there is no such session file (or the key is not Django's);
    /// [`StoreError::LockTimeout`]; I/O failures.
    pub(super) fn lock_for_write(
        &self,
        key: &SessionKey,
        held: Option<SessionLock>,
    ) -> Result<DjangoLock, StoreError> {
        if !key.is_django() {
            return Err(StoreError::Deleted(*key));
        }
        if let Some(DjangoLock(held)) =
            held.and_then(|lock| lock.take::<DjangoLock>(self.issuer, key).ok())
        {
            match self.dir.is_current(&held.entry, &held.name)? {
                Some(true) => return Ok(DjangoLock(held)),
                None => return Err(StoreError::Deleted(*key)),
                Some(false) => {} // replaced behind our back (Django): lock afresh
            }
        }
        let name = self.name_of(key);
        match self
            .dir
            .lock_current(key, &name, self.lock_config.timeout, None)
        {
            Ok(Some(held)) => Ok(DjangoLock(held)),
            Ok(None) | Err(StoreError::NotARegularFile(_)) => Err(StoreError::Deleted(*key)),
            Err(e) => Err(e),
        }
    }

    /// The session in the locked file, live or ended (the request that saves it loaded it
    /// live). A file that holds no session of ours is not written into.
    ///
    /// # Errors
    /// [`StoreError::Deleted`] for such a file (logged), I/O failures.
    pub(super) fn stored_under(
        &self,
        key: &SessionKey,
        held: &DjangoLock,
    ) -> Result<Record, StoreError> {
        match self.read_file(&held.0.entry, &held.0.name, SystemTime::now())? {
            Found::Live(record) | Found::Expired(record) => Ok(record),
            found => {
                // Logged; never written into.
                let _ = self.not_live(key, &found);
                Err(StoreError::Deleted(*key))
            }
        }
    }

    /// Writes `record` over the locked session file: a temp file, locked, given the name by
    /// an exchange. When the copy the exchange hands back is not the one `held` locked,
    /// something was renamed in since the lock's check (Django, or a writer of ours that
    /// locked Django's copy): that copy is read, `changes` applied on top, and written
    /// again, at most [`MAX_MERGES`] times. Returns what was written last. Once a copy of
    /// this save has the name the save has happened: a later write that fails (a merge over
    /// the size limit, the file removed by Django) leaves it, logged.
    ///
    /// # Errors
    /// Of the first write only: [`StoreError::Deleted`] when the name is gone,
    /// [`StoreError::TooLarge`], I/O failures.
    pub(super) fn publish(
        &self,
        key: &SessionKey,
        held: &DjangoLock,
        changes: &ChangeSet,
        record: Record,
    ) -> Result<Record, StoreError> {
        let name = &held.0.name;
        // The copy the next exchange should hand back: the one locked, then our last.
        let mut replaced = (held.0.entry.dev, held.0.entry.ino);
        // Our copies, each locked from before it takes the name until this save is done.
        let mut ours: Vec<File> = Vec::new();
        let mut record = record;
        let mut written: Option<Record> = None;
        // Copies renamed in that this save built on, open until it is done.
        let mut kept: Vec<File> = Vec::new();
        for merges in 0..=MAX_MERGES {
            let look = (merges < MAX_MERGES).then_some(replaced);
            let Swapped { temp, ours: mine } =
                match self.write_copy(key, name, &record, &mut ours, look) {
                    Ok(Wrote::Swapped(swapped)) => swapped,
                    Ok(Wrote::Renamed) => return Ok(record),
                    Ok(Wrote::Stale(now)) => {
                        // Renamed in (by Django) since the copy this save builds on, and seen
                        // before ours took the name: merged onto, nothing of ours shown yet.
                        // Kept open until the save is done: its inode number is then given
                        // to no other file, so the next look cannot take a newer copy for it.
                        let Some((mut theirs, file, identity)) = self.open_copy(key, name) else {
                            replaced = now;
                            continue;
                        };
                        log::debug!(
                            "{}: replaced by another writer (Django?) during this save: \
                             merged onto it before writing",
                            key.short()
                        );
                        kept.push(file);
                        changes.apply_to(&mut theirs, SystemTime::now());
                        record = theirs;
                        replaced = identity;
                        continue;
                    }
                    Err(e) => {
                        let Some(written) = written else {
                            return Err(e);
                        };
                        log::warn!(
                            "{}: a Django write came in during a save; the save stands, but \
                         merging the two failed ({e}): Django's change is lost",
                            key.short()
                        );
                        return Ok(written);
                    }
                };
            // The copy replaced is at the temp name now.
            let theirs = match (self.dir.identity(&temp), mine) {
                (Some(found), Some(_)) if found != replaced && merges < MAX_MERGES => {
                    self.renamed_in(key, &temp).unwrap_or_else(|e| {
                        log::warn!("{}: cannot read a copy renamed in: {e}", key.short());
                        None
                    })
                }
                _ => None,
            };
            if let Err(e) = self.dir.unlink(&temp) {
                log::warn!("cannot remove the old copy of a session ({temp}): {e}");
            }
            let (Some(mut theirs), Some(mine)) = (theirs, mine) else {
                return Ok(record);
            };
            log::debug!(
                "{}: replaced by another writer (Django?) during this save: merged again",
                key.short()
            );
            changes.apply_to(&mut theirs, SystemTime::now());
            written = Some(std::mem::replace(&mut record, theirs));
            replaced = mine;
        }
        Ok(record)
    }

    /// One write of `record` to the session file `name`: a temp file locked (and kept in
    /// `ours`) before it takes the name by an exchange. [`Wrote::Swapped`]: the copy
    /// replaced is at the temp name; [`Wrote::Renamed`]: written by a plain rename (no
    /// `renameat2`), the copy replaced gone; [`Wrote::Stale`]: with `expected`, the name
    /// held another copy just before the exchange, and nothing was written.
    ///
    /// # Errors
    /// [`StoreError::Deleted`] when the name is gone, [`StoreError::TooLarge`], I/O failures.
    fn write_copy(
        &self,
        key: &SessionKey,
        name: &str,
        record: &Record,
        ours: &mut Vec<File>,
        expected: Option<(u64, u64)>,
    ) -> Result<Wrote, StoreError> {
        let text = self
            .codec
            .encode(Some(key), record, (self.clock)(), self.max_file_size)?;
        let (temp, file) = self
            .dir
            .write_temp(text.as_bytes(), None)
            .map_err(|e| self.dir.error("write session file", name, e))?;
        // A new inode no one else has opened: the lock is free. (Should the try fail, the
        // copy is unlocked, as Django's are.)
        let _ = lock_exclusive_until(&file, Instant::now());
        let mine = file.metadata().ok().map(|m| (m.dev(), m.ino()));
        // The last look before the exchange: a copy renamed in (by Django) since the one
        // this save builds on must not be replaced by a copy without its change, even for
        // the moment a merge again takes (a Django request reading that copy would save
        // it back without the change, for good). What is left is the moment between this
        // look and the exchange, which the exchange's own check covers for our writers.
        if let Some(expected) = expected
            && let Some(now) = self.dir.identity(name)
            && now != expected
        {
            if let Err(e) = self.dir.unlink(&temp) {
                log::warn!("cannot remove an unused copy of a session ({temp}): {e}");
            }
            return Ok(Wrote::Stale(now));
        }
        ours.push(file);
        match self.dir.exchange(&temp, name)? {
            Exchanged::Gone => Err(StoreError::Deleted(*key)),
            Exchanged::Replaced => Ok(Wrote::Renamed),
            Exchanged::Swapped => Ok(Wrote::Swapped(Swapped { temp, ours: mine })),
        }
    }

    /// The session in a copy renamed in during a save (now at the temp name `temp`), if it
    /// holds one of ours.
    /// The session file at `name` now, opened: its record, the open file and its device
    /// and inode; `None` (logged) when it is gone, unreadable or not a session.
    fn open_copy(&self, key: &SessionKey, name: &str) -> Option<(Record, File, (u64, u64))> {
        let entry = match self.dir.open_entry(name) {
            Ok(Opened::File(entry)) => entry,
            Ok(Opened::Missing) | Err(StoreError::NotARegularFile(_)) => return None,
            Err(e) => {
                log::warn!("{}: cannot read a copy renamed in: {e}", key.short());
                return None;
            }
        };
        let record = match self.read_file(&entry, name, SystemTime::now()) {
            Ok(Found::Live(record) | Found::Expired(record)) => record,
            Ok(Found::Refused { why, .. }) => {
                log_refused("a copy renamed in during a save of", Some(key), &why);
                return None;
            }
            Err(e) => {
                log::warn!("{}: cannot read a copy renamed in: {e}", key.short());
                return None;
            }
        };
        let identity = (entry.dev, entry.ino);
        Some((record, entry.file, identity))
    }

    fn renamed_in(&self, key: &SessionKey, temp: &str) -> Result<Option<Record>, StoreError> {
        let entry = match self.dir.open_entry(temp) {
            Ok(Opened::File(entry)) => entry,
            Ok(Opened::Missing) | Err(StoreError::NotARegularFile(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(match self.read_file(&entry, temp, SystemTime::now())? {
            Found::Live(record) | Found::Expired(record) => Some(record),
            Found::Refused { why, .. } => {
                log_refused("a copy renamed in during a save of", Some(key), &why);
                None
            }
        })
    }

    /// Goes on with a cleanup pass for about `budget`, waiting at most `wait` for a locked
    /// session.
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

    /// Cleanup's verdict on one entry: only `<prefix><Django key>` files and this store's
    /// own temp files are ever removed; every other entry is skipped, untouched.
    fn clear_entry(
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
        if !is_file {
            report.skipped += 1;
        } else if let Some(key) = name
            .strip_prefix(self.prefix.as_str())
            .and_then(SessionKey::parse_django)
        {
            match self.clear_session(&key, name, now, wait) {
                Ok(Cleared::Kept) => report.kept += 1,
                Ok(Cleared::Expired) => report.expired += 1,
                Ok(Cleared::Unreadable) => report.skipped += 1,
                Ok(Cleared::Gone) => {}
                Err(e) => {
                    log::warn!(
                        "clearsessions: left {}: {e}",
                        self.dir.shown(name).display()
                    );
                    report.skipped += 1;
                }
            }
        } else if is_temp_name(name) && self.is_old_leftover(name, now) {
            match self.dir.unlink(name) {
                Ok(()) => report.leftovers += 1,
                Err(_) => report.skipped += 1,
            }
        } else {
            report.skipped += 1;
        }
    }

    /// Whether the temp file `name` is this user's and older than the leftover age.
    fn is_old_leftover(&self, name: &str, now: SystemTime) -> bool {
        self.dir.owner_of(name) == Some(self.euid)
            && self.dir.mtime_of(name).is_some_and(|mtime| {
                now.duration_since(mtime).unwrap_or_default() >= self.leftover_age
            })
    }

    /// Removes one session file if it has ended, decided again under its lock, so that a
    /// session written meanwhile is kept. A file that holds no session of ours is left: it
    /// may be a live session of Django's signed with a key this store was not given (a
    /// `SECRET_KEY` mistyped, or behind a rotation), whose end only Django can read.
    fn clear_session(
        &self,
        key: &SessionKey,
        name: &str,
        now: SystemTime,
        wait: Duration,
    ) -> Result<Cleared, StoreError> {
        let entry = match self.dir.open_entry(name)? {
            Opened::Missing => return Ok(Cleared::Gone),
            Opened::File(entry) => entry,
        };
        match verdict_on(self.read_file(&entry, name, now)?) {
            Cleared::Expired => {}
            Cleared::Unreadable => {
                log_refused(
                    "clearsessions left the Django session file",
                    Some(key),
                    "unreadable",
                );
                return Ok(Cleared::Unreadable);
            }
            other => return Ok(other),
        }
        drop(entry);
        let Some(held) = self.dir.lock_current(key, name, wait, None)? else {
            return Ok(Cleared::Gone);
        };
        let verdict = verdict_on(self.read_file(&held.entry, name, SystemTime::now())?);
        if verdict != Cleared::Expired {
            return Ok(verdict);
        }
        match self.dir.unlink(name) {
            Ok(()) => Ok(verdict),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cleared::Gone),
            Err(e) => Err(self.dir.error("remove session file", name, e)),
        }
    }
}

/// What cleanup does with a session file.
#[derive(Debug, PartialEq)]
enum Cleared {
    Kept,
    Expired,
    Unreadable,
    Gone,
}

/// Cleanup's verdict on what a file holds.
fn verdict_on(found: Found) -> Cleared {
    match found {
        Found::Live(_) => Cleared::Kept,
        Found::Expired(_) => Cleared::Expired,
        Found::Refused { .. } => Cleared::Unreadable,
    }
}
