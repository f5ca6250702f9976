//! [`FileFormat`]: a session document as its file holds it. The document itself is
//! `store::format` (shared with the database store); here, its size limit, the room a small
//! one gets to grow in place (JSON whitespace up to a page), and the read of a whole file
//! back into a [`Record`], through the [`LastDecoded`] memo.

use std::os::unix::fs::FileExt;

use super::IN_PLACE_MAX;
use super::dir::{Entry, SessionDir};
use super::memo::{LastDecoded, Reuse};
use crate::key::SessionKey;
use crate::store::format::{self, DecodeError};
use crate::store::{Record, StoreError};

/// A session file's document as read: the record, whether it carried a check, and the
/// file's bytes.
pub(super) struct Document {
    pub(super) record: Record,
    pub(super) checked: bool,
    pub(super) bytes: Vec<u8>,
}

/// Why a file read gave no record.
pub(super) enum ReadError {
    /// It could not be read (an error, never "no session").
    Store(StoreError),
    /// Its document is over the size limit.
    TooLarge,
    /// It does not hold a whole document (or one caught half written).
    Corrupt(DecodeError),
}

/// A session document as its file holds it.
#[derive(Debug, Clone, Copy)]
pub(super) struct FileFormat {
    /// The largest document, in bytes (the room after it does not count).
    pub(super) max_file_size: usize,
}

impl FileFormat {
    /// The bytes of `record`, within the size limit, with room to grow
    /// ([`with_room`]).
    ///
    /// # Errors
    /// [`StoreError::TooLarge`] over the limit.
    pub(super) fn encode(
        &self,
        key: Option<&SessionKey>,
        record: &Record,
    ) -> Result<Vec<u8>, StoreError> {
        format::encode_within(key, record, self.max_file_size, true)
            .map(|bytes| with_room(bytes, self.max_file_size))
    }

    /// Reads a whole session file, to its end, refusing a document over the size limit;
    /// `reuse` says what to do with a remembered document of the same bytes. The limit is
    /// the document's, not the file's: a file of up to a page may hold spaces after its
    /// document (room to grow in place), which a lowered limit does not count.
    ///
    /// A write in place keeps a file's length (a shorter document is padded, a longer one
    /// goes to a new file), so `entry`'s `fstat` length holds; the read still asks for a
    /// byte more and reads on if it comes, never trusting a length for the end of a file.
    pub(super) fn read(
        &self,
        dir: &SessionDir,
        entry: &Entry,
        name: &str,
        memo: &LastDecoded,
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
                    ReadError::Store(StoreError::io("read session file", dir.shown(name), e))
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
        if document_len(&bytes) > self.max_file_size {
            return Err(ReadError::TooLarge);
        }
        if let Some((record, checked)) = memo.recall(&bytes, reuse) {
            return Ok(Document {
                record,
                checked,
                bytes,
            });
        }
        let (record, checked) = format::decode_checked(&bytes).map_err(ReadError::Corrupt)?;
        if reuse == Reuse::Share {
            memo.remember(bytes.clone(), record.clone(), checked);
        }
        Ok(Document {
            record,
            checked,
            bytes,
        })
    }
}

/// The length of the document in `bytes` and its newline, without the room after it
/// (spaces, a newline).
pub(super) fn document_len(bytes: &[u8]) -> usize {
    (bytes.trim_ascii_end().len() + 1).min(bytes.len())
}

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
pub(super) fn pad_to(bytes: &mut Vec<u8>, len: usize) {
    if bytes.len() < len {
        bytes.resize(len - 1, b' ');
        bytes.push(b'\n');
    }
}
