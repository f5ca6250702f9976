//! What a [`FileStore`](super::FileStore) remembers between calls, one of each: the session
//! file kept open ([`KeptOpen`]) and the last document decoded ([`LastDecoded`]). Both are
//! only shortcuts: whoever uses them checks first that they still hold (the file by `stat`,
//! the document by its bytes).

use std::sync::{Mutex, MutexGuard};

use super::dir::Entry;
use crate::store::{Record, locked};

/// One session file kept open, by name, unlocked: the file the last `merge`-mode load read,
/// for the save that follows, and the file the last save wrote in place or left as it was,
/// for the session's next request.
#[derive(Default)]
pub(super) struct KeptOpen(pub(super) Mutex<Option<(String, Entry)>>);

// A name is a whole key, a credential: its first characters only.
impl std::fmt::Debug for KeptOpen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = locked(&self.0)
            .as_ref()
            .map(|(name, _)| crate::key::shown_name(name));
        f.debug_tuple("KeptOpen").field(&kept).finish()
    }
}

impl KeptOpen {
    /// Keeps `entry` open as the file of `name`, closing the one kept before.
    pub(super) fn keep(&self, name: String, entry: Entry) {
        *locked(&self.0) = Some((name, entry));
    }

    /// The file kept for `name`, if any (taken: a file is used by one locker).
    pub(super) fn take(&self, name: &str) -> Option<Entry> {
        let mut kept = locked(&self.0);
        match kept.take() {
            Some((kept_name, entry)) if kept_name == name => Some(entry),
            other => {
                *kept = other;
                None
            }
        }
    }

    /// Closes the file kept open, whichever it is.
    pub(super) fn close(&self) {
        drop(locked(&self.0).take());
    }
}

/// The last document decoded, with the exact bytes it was decoded from: decoding is a
/// function of the bytes alone, so a file read again unchanged (by the save, under the
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

/// What a read does with the [`Decoded`] document when the bytes match: `Share` clones the
/// record and keeps it (a load: the save will likely read the same bytes again), `Take`
/// moves it out (the save, which writes new bytes and remembers those).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Reuse {
    Share,
    Take,
}

/// The last [`Decoded`] document, if any.
#[derive(Debug, Default)]
pub(super) struct LastDecoded(pub(super) Mutex<Option<Decoded>>);

impl LastDecoded {
    /// The record and whether it carried a check, if `bytes` are the ones remembered.
    pub(super) fn recall(&self, bytes: &[u8], reuse: Reuse) -> Option<(Record, bool)> {
        let mut last = self.get();
        match reuse {
            Reuse::Share => last
                .as_ref()
                .filter(|known| known.bytes == bytes)
                .map(|known| (known.record.clone(), known.checked)),
            Reuse::Take => last
                .take_if(|known| known.bytes == bytes)
                .map(|known| (known.record, known.checked)),
        }
    }

    /// Remembers that `bytes` decode to `record`: what a read decoded, or what a save wrote.
    pub(super) fn remember(&self, bytes: Vec<u8>, record: Record, checked: bool) {
        *self.get() = Some(Decoded {
            bytes,
            record,
            checked,
        });
    }

    /// Forgets the document remembered (a session deleted or moved: its data is not kept).
    pub(super) fn forget(&self) {
        *self.get() = None;
    }

    fn get(&self) -> MutexGuard<'_, Option<Decoded>> {
        locked(&self.0)
    }
}
