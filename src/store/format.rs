//! The session document: pretty JSON a person can `cat`, the content of a session file and
//! of a database row's `session_data` alike.
//!
//! ```json
//! {
//!   "format": 2,
//!   "expires_at": "2026-12-10T11:37:46Z",
//!   "expiry": "default",
//!   "data": {
//!     "semail": "abc@gmail.com",
//!     "sname": "abc"
//!   },
//!   "check": "b5c68b5a"
//! }
//! ```
//!
//! `check` is the CRC-32 of every byte before its field (`,` included): a file store may
//! write a small session over its file in place, and a reader without a lock that copies the
//! page while it is being written finds the check wrong and reads again. Version 2 requires
//! it, at the end of the document (only JSON whitespace after it): a copy of a version-2 file
//! begins `{"format": 2` whatever mix of two versions it holds, so no mix is taken for a
//! document without one. Version 1 (written before writes in place, never written in place)
//! has none and is read as it is. CRC-32 catches a torn copy, not a forger: the file's owner
//! can write anything into it anyway. To edit a version-2 file by hand, set `"format": 1`
//! and remove the check line.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Record, StoreError};
use crate::expiry::{Expiry, format_rfc3339, parse_rfc3339};
use crate::key::SessionKey;

/// The version written in every file's `"format"` field: 2, a document that ends with its
/// check. Version 1 (no check) is still read.
pub(crate) const FORMAT_VERSION: u32 = 2;

/// The oldest version read: 1, the same document without a check.
const FORMAT_VERSION_UNCHECKED: u32 = 1;

/// How deep values in a session may nest. The file wraps them in two more levels, and the
/// JSON reader stops at 128: anything deeper would be written but never read back.
pub(crate) const MAX_VALUE_DEPTH: usize = 120;

/// How deep the values of `data` nest (a scalar is 1, `[1]` is 2), counted without
/// recursion, so that no value can exhaust the stack here.
pub(crate) fn depth(data: &Map<String, Value>) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&Value, usize)> = data.values().map(|v| (v, 1)).collect();
    while let Some((value, level)) = stack.pop() {
        deepest = deepest.max(level);
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, level + 1))),
            Value::Object(map) => stack.extend(map.values().map(|v| (v, level + 1))),
            _ => {}
        }
    }
    deepest
}

#[derive(Serialize)]
struct FileOut<'a> {
    format: u32,
    expires_at: String,
    expiry: Expiry,
    data: &'a Map<String, Value>,
}

#[derive(Deserialize)]
struct FileIn {
    format: u32,
    expires_at: String,
    #[serde(default)]
    expiry: Expiry,
    data: Map<String, Value>,
    #[serde(default)]
    check: Option<String>,
}

/// What comes before the value of the last field, `"check"`: the CRC-32 (8 lowercase hex
/// digits) of every byte of the document before this text.
const CHECK_FIELD: &[u8] = b",\n  \"check\": \"";

/// What follows the check's 8 digits: the end of the document.
const CHECK_END: &[u8] = b"\"\n}";

/// Where the check field starts, if the document ends with one exactly as `encode` writes
/// it (`,\n  "check": "xxxxxxxx"\n}`, then JSON whitespace only). Nowhere else: a check
/// found anywhere but at the end is no check.
fn check_field_at(bytes: &[u8]) -> Option<usize> {
    let end = bytes.len()
        - bytes
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
    let at = end.checked_sub(CHECK_FIELD.len() + 8 + CHECK_END.len())?;
    (bytes[at..].starts_with(CHECK_FIELD) && bytes[..end].ends_with(CHECK_END)).then_some(at)
}

/// Whether `bytes` end with a check that matches everything before it.
fn check_holds(bytes: &[u8], check: &str) -> bool {
    let Ok(expected) = u32::from_str_radix(check, 16) else {
        return false;
    };
    check.len() == 8
        && check_field_at(bytes).is_some_and(|at| crc32fast::hash(&bytes[..at]) == expected)
}

/// The bytes of a session file for `record`, ending in a newline: the pretty JSON of the
/// record, its last field the check of everything before it.
pub(crate) fn encode(record: &Record) -> Vec<u8> {
    let out = FileOut {
        format: FORMAT_VERSION,
        expires_at: format_rfc3339(record.expires_at),
        expiry: record.expiry,
        data: &record.data,
    };
    // Serializing a Map of Values into memory cannot fail; fall back to an empty
    // session rather than panic should that ever change.
    let mut bytes = serde_json::to_vec_pretty(&out).unwrap_or_else(|_| b"{}".to_vec());
    // The pretty object ends "\n}": the check goes in before it.
    if bytes.ends_with(b"\n}") {
        bytes.truncate(bytes.len() - 2);
        let check = crc32fast::hash(&bytes);
        bytes.extend_from_slice(CHECK_FIELD);
        bytes.extend_from_slice(format!("{check:08x}\"\n}}").as_bytes());
    }
    bytes.push(b'\n');
    bytes
}

/// Why a file does not hold a session.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// Not JSON, or JSON of another shape.
    Json(serde_json::Error),
    /// A format version this build does not know.
    Version(u32),
    /// `expires_at` is not an RFC 3339 time.
    Time(String),
    /// A version-2 document without its check at its end, or one that does not match: read
    /// while being written, or edited by hand.
    Check,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Json(e) => write!(f, "not a session file: {e}"),
            DecodeError::Version(v) => write!(f, "unknown format version {v}"),
            DecodeError::Time(t) => write!(f, "expires_at {t:?} is not an RFC 3339 time"),
            DecodeError::Check => f.write_str(
                "its \"check\" is missing or does not match its content (edited by hand? \
                 set \"format\" to 1 and remove the check line)",
            ),
        }
    }
}

/// Parses a session document.
pub(crate) fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    decode_versioned(bytes).map(|(record, _)| record)
}

/// Parses a session document, with its format version: a version-2 document must end with
/// a check that holds ([`DecodeError::Check`] otherwise); a version-1 one is read as it is
/// (a check it has must hold).
pub(crate) fn decode_versioned(bytes: &[u8]) -> Result<(Record, u32), DecodeError> {
    let file: FileIn = serde_json::from_slice(bytes).map_err(DecodeError::Json)?;
    let checked = match (file.format, &file.check) {
        (FORMAT_VERSION, Some(check)) | (FORMAT_VERSION_UNCHECKED, Some(check)) => {
            check_holds(bytes, check)
        }
        (FORMAT_VERSION, None) => false,
        (FORMAT_VERSION_UNCHECKED, None) => true,
        (other, _) => return Err(DecodeError::Version(other)),
    };
    if !checked {
        return Err(DecodeError::Check);
    }
    let expires_at = parse_rfc3339(&file.expires_at).ok_or(DecodeError::Time(file.expires_at))?;
    let record = Record {
        data: file.data,
        expiry: file.expiry,
        expires_at,
    };
    Ok((record, file.format))
}

/// The bytes of `record`, or `TooDeep` / `TooLarge` (more than `limit` bytes): nothing is
/// stored that could not be read back. `key` names the session in the error (`None`: it is
/// being created).
pub(crate) fn encode_within(
    key: Option<&SessionKey>,
    record: &Record,
    limit: usize,
) -> Result<Vec<u8>, StoreError> {
    let depth = depth(&record.data);
    if depth > MAX_VALUE_DEPTH {
        return Err(StoreError::TooDeep {
            key: key.copied(),
            depth,
            limit: MAX_VALUE_DEPTH,
        });
    }
    let bytes = encode(record);
    if bytes.len() > limit {
        return Err(StoreError::TooLarge {
            key: key.copied(),
            size: bytes.len(),
            limit,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn file_is_pretty_json_a_person_can_read_with_keys_in_insertion_order() {
        let record = Record {
            data: json!({"sname": "abc", "semail": "abc@gmail.com"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            expiry: Expiry::Default,
            expires_at: UNIX_EPOCH + Duration::from_secs(1_796_643_466),
        };
        let text = String::from_utf8(encode(&record)).unwrap();
        let body = "{\n  \"format\": 2,\n  \"expires_at\": \"2026-12-07T11:37:46Z\",\n  \
             \"expiry\": \"default\",\n  \"data\": {\n    \"sname\": \"abc\",\n    \
             \"semail\": \"abc@gmail.com\"\n  }";
        let check = format!("{:08x}", crc32fast::hash(body.as_bytes()));
        assert_eq!(text, format!("{body},\n  \"check\": \"{check}\"\n}}\n"));
        assert_eq!(decode(text.as_bytes()).unwrap(), record);
        // Padded with JSON whitespace (room to grow in place): the same document.
        let padded = format!("{text}{}", " ".repeat(300));
        assert_eq!(decode(padded.as_bytes()).unwrap(), record);
        // Version 2 without its check line: refused. Edited by hand as the message says
        // (version 1, no check): read as it is, as files written before version 2 are.
        let edited = format!("{body}\n}}\n");
        assert!(matches!(decode(edited.as_bytes()), Err(DecodeError::Check)));
        let as_v1 = edited.replace("\"format\": 2", "\"format\": 1");
        assert_eq!(decode(as_v1.as_bytes()).unwrap(), record);
        // A check anywhere but at the end is no check.
        let moved = format!("{body},\n  \"check\": \"{check}\",\n  \"x\": 1\n}}\n");
        assert!(decode(moved.as_bytes()).is_err());
    }

    #[test]
    fn no_mix_of_two_copies_is_read_as_a_session() {
        // A reader copying a page while a save writes over it may get any interleaving of the
        // old and the new bytes: a new prefix, an old middle, a new end ("old-new-old" as
        // seen by a copy that changes who is ahead twice), whatever lengths the two
        // documents have within the padded page.
        let at = |n: u64, data: serde_json::Value| Record {
            data: data.as_object().cloned().unwrap_or_default(),
            expiry: Expiry::Default,
            expires_at: UNIX_EPOCH + Duration::from_secs(n),
        };
        let pad = |mut b: Vec<u8>| {
            b.resize(512, b' ');
            b
        };
        // A hostile value: the old document's second half, check included, inside the new
        // data.
        let old_record = at(1_796_643_466, json!({"n": 9, "cart": [1, 2]}));
        let old = encode(&old_record);
        let tail = String::from_utf8_lossy(&old[old.len() / 2..]).into_owned();
        let new_record = at(1_796_643_467, json!({"n": 10, "note": tail, "cart": [1]}));
        let (old, new) = (pad(old), pad(encode(&new_record)));
        let mut refused = 0;
        for (a, b) in [(&old, &new), (&new, &old)] {
            for cut in (1..a.len()).step_by(3) {
                for back in (cut..a.len()).step_by(17) {
                    let mut mixed = b[..cut].to_vec();
                    mixed.extend_from_slice(&a[cut..back]);
                    mixed.extend_from_slice(&b[back..]);
                    if mixed == *a || mixed == *b {
                        continue;
                    }
                    // Read only as one of the two (the mix differing in whitespace after the
                    // document), or refused.
                    match decode(&mixed) {
                        Ok(record) => assert!(
                            record == old_record || record == new_record,
                            "cut {cut}..{back} read as another session: {record:?}"
                        ),
                        Err(_) => refused += 1,
                    }
                }
            }
        }
        assert!(refused > 1000, "{refused}");
    }

    #[test]
    fn a_copy_caught_half_written_fails_its_check() {
        let at = |n: u64, data: serde_json::Value| Record {
            data: data.as_object().cloned().unwrap_or_default(),
            expiry: Expiry::Default,
            expires_at: UNIX_EPOCH + Duration::from_secs(n),
        };
        let old = encode(&at(1_796_643_466, json!({"n": 9, "cart": [1, 2]})));
        let new = encode(&at(1_796_643_467, json!({"n": 8, "cart": [1, 3]})));
        assert_eq!(old.len(), new.len());
        // Every mix of a new prefix and an old suffix (a page copied while read) that
        // differs from both is refused, never read as a session.
        let mut refused = 0;
        for cut in 1..old.len() {
            let mut mixed = new[..cut].to_vec();
            mixed.extend_from_slice(&old[cut..]);
            if mixed == old || mixed == new {
                continue;
            }
            assert!(decode(&mixed).is_err(), "cut at {cut} read as a session");
            refused += 1;
        }
        assert!(refused > 0);
        // A value changed in place by hand, check left: refused as not whole.
        let text = String::from_utf8(old)
            .unwrap()
            .replace("\"n\": 9", "\"n\": 7");
        assert!(matches!(decode(text.as_bytes()), Err(DecodeError::Check)));
    }

    #[test]
    fn values_as_deep_as_allowed_read_back() {
        let mut value = json!(1);
        for _ in 1..MAX_VALUE_DEPTH {
            value = json!([value]);
        }
        let mut data = Map::new();
        data.insert("deep".into(), value);
        assert_eq!(depth(&data), MAX_VALUE_DEPTH);
        let record = Record {
            data,
            expiry: Expiry::Default,
            expires_at: UNIX_EPOCH,
        };
        assert_eq!(decode(&encode(&record)).unwrap(), record);
    }

    #[test]
    fn garbage_truncated_and_foreign_files_do_not_decode() {
        let good = encode(&Record {
            data: Map::new(),
            expiry: Expiry::Seconds(5),
            expires_at: UNIX_EPOCH,
        });
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"{}".to_vec(),
            b"\xff\xfe\x00garbage".to_vec(),
            good[..good.len() / 2].to_vec(),
            br#"{"format":2,"expires_at":"2026-12-07T11:37:46Z","data":{}}"#.to_vec(),
            br#"{"format":1,"expires_at":"soon","data":{}}"#.to_vec(),
            br#"{"format":1,"expires_at":"2026-12-07T11:37:46Z","data":[]}"#.to_vec(),
            b"[1,2,3]".to_vec(),
        ];
        for bytes in cases {
            assert!(
                decode(&bytes).is_err(),
                "{:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
        assert!(decode(&good).is_ok());
    }
}
