//! Loads: a session file read without a lock (a write in place caught half copied is read
//! again), and what a read found told apart: a record, "no session" (missing, expired,
//! corrupt, too large: logged once), or an error (never "no session").

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use super::dir::{Entry, Opened};
use super::document::{Document, ReadError};
use super::flock::{try_lock_shared, unlock};
use super::memo::Reuse;
use super::{FileStore, TORN_PAUSE, TORN_RETRIES};
use crate::key::SessionKey;
use crate::store::{Record, StoreError, locked};

/// How many corrupt files are remembered so that each is logged once.
const CORRUPT_LOG_MEMORY: usize = 10_000;

/// The entries already logged as not holding a session (each is logged once; the memory is
/// cleared past [`CORRUPT_LOG_MEMORY`]).
#[derive(Debug, Default)]
pub(super) struct CorruptLog(Mutex<HashSet<PathBuf>>);

impl CorruptLog {
    /// Whether `path` is logged for the first time now.
    fn first_time(&self, path: PathBuf) -> bool {
        let mut seen = locked(&self.0);
        if seen.len() >= CORRUPT_LOG_MEMORY {
            seen.clear();
        }
        seen.insert(path)
    }
}

impl FileStore {
    /// Reads a whole session file into its record ([`FileFormat::read`](super::document::FileFormat::read)).
    pub(super) fn read_record(&self, entry: &Entry, name: &str) -> Result<Record, ReadError> {
        self.read_document(entry, name, Reuse::Share)
            .map(|doc| doc.record)
    }

    /// [`read_record`](FileStore::read_record), with whether the document carried a check
    /// and the file's bytes; `reuse` says what to do with a remembered document of the same
    /// bytes.
    pub(super) fn read_document(
        &self,
        entry: &Entry,
        name: &str,
        reuse: Reuse,
    ) -> Result<Document, ReadError> {
        self.format
            .read(&self.dir, entry, name, &self.last_decoded, reuse)
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
                .map_err(|e| StoreError::io("lock session file", self.dir.shown(name), e))?;
            if locked {
                read = self.read_record(entry, name);
                unlock(&entry.file)
                    .map_err(|e| StoreError::io("unlock session file", self.dir.shown(name), e))?;
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
        match self.dir.is_current(entry, name)? {
            Some(true) => Ok(self.outcome(name, read)?),
            None => Ok(None),
            Some(false) => {
                let now = match self.dir.open_entry(name) {
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
        let path = self.dir.shown(name);
        if self.corrupt.first_time(path.clone()) {
            log::warn!(
                "{} is not a usable session file ({why}); treated as no session, \
                 left for clearsessions",
                path.display()
            );
        }
    }
}
