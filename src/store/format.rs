//! The session document: pretty JSON a person can `cat`, the content of a session file and
//! of a database row's `session_data` alike.
//!
//! ```json
//! {
//!   "format": 1,
//!   "expires_at": "2026-12-10T11:37:46Z",
//!   "expiry": "default",
//!   "data": {
//!     "semail": "abc@gmail.com",
//!     "sname": "abc"
//!   }
//! }
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Record, StoreError};
use crate::expiry::{Expiry, format_rfc3339, parse_rfc3339};
use crate::key::SessionKey;

/// The version written in every file's `"format"` field.
pub(crate) const FORMAT_VERSION: u32 = 1;

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
}

/// The bytes of a session file for `record`, ending in a newline.
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
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Json(e) => write!(f, "not a session file: {e}"),
            DecodeError::Version(v) => write!(f, "unknown format version {v}"),
            DecodeError::Time(t) => write!(f, "expires_at {t:?} is not an RFC 3339 time"),
        }
    }
}

/// Parses a session file.
pub(crate) fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let file: FileIn = serde_json::from_slice(bytes).map_err(DecodeError::Json)?;
    if file.format != FORMAT_VERSION {
        return Err(DecodeError::Version(file.format));
    }
    let expires_at = parse_rfc3339(&file.expires_at).ok_or(DecodeError::Time(file.expires_at))?;
    Ok(Record {
        data: file.data,
        expiry: file.expiry,
        expires_at,
    })
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
        assert_eq!(
            text,
            "{\n  \"format\": 1,\n  \"expires_at\": \"2026-12-07T11:37:46Z\",\n  \
             \"expiry\": \"default\",\n  \"data\": {\n    \"sname\": \"abc\",\n    \
             \"semail\": \"abc@gmail.com\"\n  }\n}\n"
        );
        assert_eq!(decode(text.as_bytes()).unwrap(), record);
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
