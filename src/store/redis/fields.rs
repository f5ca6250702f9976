//! A session as a Redis hash: one field per key (JSON text), `__expiry` for the rule.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::expiry::Expiry;

/// The hash field holding the expiry rule.
pub(super) const EXPIRY_FIELD: &str = "__expiry";
/// Prefix of the stored name of a session key that starts with `_`.
pub(super) const ESCAPE: &str = "_:";

/// Milliseconds since the epoch, for `PEXPIREAT` (0 for times before it: expired).
pub(super) fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The hash field of a session key.
pub(super) fn field_of(name: &str) -> String {
    if name.starts_with('_') {
        format!("{ESCAPE}{name}")
    } else {
        name.to_owned()
    }
}

/// The session key of a hash field; `None` for metadata fields.
pub(super) fn name_of(field: &str) -> Option<&str> {
    if let Some(name) = field.strip_prefix(ESCAPE) {
        Some(name)
    } else if field.starts_with('_') {
        None
    } else {
        Some(field)
    }
}

pub(super) fn expiry_json(expiry: &Expiry) -> String {
    serde_json::to_string(expiry).unwrap_or_else(|_| "\"default\"".to_owned())
}

/// The data and rule of a hash's fields (`HGETALL` order: field, value, ...); `None` if a
/// field is not JSON (a corrupt session).
pub(super) fn decode(fields: &[String]) -> Option<(Map<String, Value>, Expiry)> {
    let mut data = Map::new();
    let mut expiry = Expiry::Default;
    for pair in fields.chunks(2) {
        let [field, value] = pair else { return None };
        if field == EXPIRY_FIELD {
            expiry = serde_json::from_str(value).ok()?;
        } else if let Some(name) = name_of(field) {
            data.insert(name.to_owned(), serde_json::from_str(value).ok()?);
        }
    }
    Some((data, expiry))
}
