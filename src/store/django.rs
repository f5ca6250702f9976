//! Django's session data (`SESSION_FORMAT=django`): a [`Record`] as Django 5.2's
//! `SessionBase.encode` writes it, and back; `_session_expiry`; `expire_date`'s text.
//!
//! * The dictionary is signed with `TimestampSigner(salt=SESSION_SIGNING_SALT)
//!   .sign_object(data, serializer=JSONSerializer, compress=True)`
//!   (`django/contrib/sessions/backends/base.py`, `encode`); a value no key of the signer
//!   made is no session.
//! * The expiry rule lives in the dictionary, as Django keeps it (`set_expiry`):
//!   `_session_expiry` absent ([`Expiry::Default`]), an int of seconds
//!   ([`Expiry::Seconds`]), `0` ([`Expiry::BrowserClose`]), or an ISO 8601 time
//!   (`2030-01-02T03:04:05+00:00`, [`Expiry::At`]). It stays where it is in the dictionary,
//!   and stays as written while the rule it says is unchanged, so a session is re-encoded
//!   as Django would encode it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::format::{MAX_VALUE_DEPTH, depth};
use super::{Record, StoreError};
use crate::expiry::Expiry;
use crate::key::SessionKey;
use crate::signing::{Signer, python_json};

/// The key Django keeps a session's expiry rule under.
pub(crate) const SESSION_EXPIRY_KEY: &str = "_session_expiry";

/// Django's `SessionBase.encode` and `decode` over one signer.
#[derive(Debug, Clone)]
pub(crate) struct DjangoCodec {
    signer: Signer,
}

/// The largest JSON of a session read in Django's format: 1 MiB, as a session file of
/// ours ([`DEFAULT_MAX_FILE_SIZE`](crate::FileStore)); a compressed payload is inflated no
/// further.
pub(crate) const MAX_SESSION_JSON: usize = 1 << 20;

/// When a refused value was last logged at `warn`, in seconds since the Unix epoch, and how
/// many were refused since: at most one `warn` a minute, saying how many it stands for (a
/// client sending forged cookies must not fill the log, and must not hide a mistyped
/// `SECRET_KEY` either); the others at `debug`.
static REFUSED_WARNED_AT: AtomicU64 = AtomicU64::new(0);
static REFUSED_SINCE: AtomicU64 = AtomicU64::new(0);

/// Logs a value that is not a session (tampered, signed with another key, not a dict): at
/// `warn` at most once a minute, with the count of those since the last; else at `debug`.
pub(crate) fn log_refused(what: &str, key: Option<&SessionKey>, why: &str) {
    let key = key.map_or(String::new(), |k| format!(" {}", k.short()));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = REFUSED_WARNED_AT.load(Ordering::Relaxed);
    let since = REFUSED_SINCE.fetch_add(1, Ordering::Relaxed);
    if now >= last.saturating_add(60)
        && REFUSED_WARNED_AT
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        REFUSED_SINCE.store(0, Ordering::Relaxed);
        let more = if since > 0 {
            format!("; {since} more refused in the last minute (logged at debug level)")
        } else {
            String::new()
        };
        log::warn!(
            "{what}{key}: {why}; no session (a mistyped or rotated SECRET_KEY refuses every \
             session; at most one such warning a minute){more}"
        );
    } else {
        log::debug!("{what}{key}: {why}; no session");
    }
}

impl DjangoCodec {
    /// A codec signing with `signer` (`SECRET_KEY`, `SECRET_KEY_FALLBACKS` and the salt).
    pub(crate) fn new(signer: Signer) -> DjangoCodec {
        DjangoCodec { signer }
    }

    /// The signed text of `record`'s dictionary, its `_session_expiry` set from
    /// `record.expiry`, signed at `now`; at most `limit` bytes.
    ///
    /// # Errors
    /// [`StoreError::TooDeep`], [`StoreError::TooLarge`] (`key` names the session; `None`:
    /// being created).
    pub(crate) fn encode(
        &self,
        key: Option<&SessionKey>,
        record: &Record,
        now: SystemTime,
        limit: usize,
    ) -> Result<String, StoreError> {
        let depth = depth(&record.data);
        if depth > MAX_VALUE_DEPTH {
            return Err(StoreError::TooDeep {
                key: key.copied(),
                depth,
                limit: MAX_VALUE_DEPTH,
            });
        }
        let data = with_expiry(&record.data, record.expiry, now);
        // The limit holds for the JSON as for the signed text: a session that compresses
        // well is still read whole on every request, by both sides.
        let json = python_json(&Value::Object(data));
        let json_limit = limit.min(MAX_SESSION_JSON);
        if json.len() > json_limit {
            return Err(StoreError::TooLarge {
                key: key.copied(),
                size: json.len(),
                limit: json_limit,
            });
        }
        let text = self.signer.sign_json(&json, true, now);
        if text.len() > limit {
            return Err(StoreError::TooLarge {
                key: key.copied(),
                size: text.len(),
                limit,
            });
        }
        Ok(text)
    }

    /// The dictionary `text` carries (with its `_session_expiry`, if any) and the expiry
    /// rule that says. The signature's time is not checked: a session's end is kept by its
    /// store, as in Django.
    ///
    /// # Errors
    /// Why it is not a session: a signature none of the keys made, a payload that is not a
    /// JSON object.
    pub(crate) fn decode(&self, text: &str) -> Result<(Map<String, Value>, Expiry), String> {
        match self
            .signer
            .unsign_object_within(text, None, SystemTime::now(), MAX_SESSION_JSON)
        {
            Ok(Value::Object(data)) => {
                let expiry = expiry_of(&data);
                Ok((data, expiry))
            }
            Ok(_) => Err("signed, but not a dictionary".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The signer.
    #[cfg(test)]
    pub(crate) fn signer(&self) -> &Signer {
        &self.signer
    }
}

/// The expiry rule `data["_session_expiry"]` says, as Django's `get_expiry_age` and
/// `get_expire_at_browser_close` read it: absent or `null` is the default; `0` and `false`
/// browser close; a positive number that many seconds (`true`: 1; a negative one: ended);
/// a string an ISO 8601 time (naive means UTC). A string that is not a time, or anything
/// else, is ended (Django fails on it): a session is never kept longer than its writer
/// meant.
pub(crate) fn expiry_of(data: &Map<String, Value>) -> Expiry {
    match data.get(SESSION_EXPIRY_KEY) {
        None | Some(Value::Null) => Expiry::Default,
        Some(Value::Bool(false)) => Expiry::BrowserClose,
        Some(Value::Bool(true)) => Expiry::Seconds(1),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(0), _) => Expiry::BrowserClose,
            (Some(seconds), _) => Expiry::Seconds(seconds),
            (None, Some(f)) if f > 0.0 => Expiry::Seconds(f.ceil() as u64),
            (None, Some(f)) if f >= 0.0 => Expiry::BrowserClose,
            _ => Expiry::At(UNIX_EPOCH),
        },
        Some(Value::String(text)) => parse_iso(text).map_or(Expiry::At(UNIX_EPOCH), Expiry::At),
        Some(_) => Expiry::At(UNIX_EPOCH),
    }
}

/// `data` with `_session_expiry` saying `expiry`: removed for the default, else set in
/// place; kept as written when it already says the same.
pub(crate) fn with_expiry(
    data: &Map<String, Value>,
    expiry: Expiry,
    now: SystemTime,
) -> Map<String, Value> {
    // Django adds the seconds to a datetime: past year 9999 its every request on the
    // session fails (OverflowError), so the seconds stop a day before.
    let expiry = match expiry {
        Expiry::Seconds(n) => Expiry::Seconds(n.min(max_seconds_from(now))),
        rule => rule,
    };
    let mut data = data.clone();
    if expiry_of(&data) == expiry
        && (expiry != Expiry::Default || !data.contains_key(SESSION_EXPIRY_KEY))
    {
        return data;
    }
    match expiry {
        Expiry::Default => {
            data.shift_remove(SESSION_EXPIRY_KEY);
        }
        Expiry::BrowserClose => {
            data.insert(SESSION_EXPIRY_KEY.into(), 0.into());
        }
        Expiry::Seconds(n) => {
            data.insert(SESSION_EXPIRY_KEY.into(), n.into());
        }
        Expiry::At(t) => {
            data.insert(SESSION_EXPIRY_KEY.into(), format_iso(t).into());
        }
    }
    data
}

/// The most seconds from `now` that Django's `datetime` holds: until a day before the end
/// of year 9999.
fn max_seconds_from(now: SystemTime) -> u64 {
    let end = UNIX_EPOCH + Duration::from_millis(crate::expiry::MAX_TIME_MILLIS);
    end.duration_since(now)
        .map_or(0, |d| d.as_secs().saturating_sub(86_400))
}

/// Python's `datetime.isoformat()` of an aware UTC time: `2030-01-02T03:04:05+00:00`, with
/// `.ffffff` when there are microseconds.
pub(crate) fn format_iso(t: SystemTime) -> String {
    format!("{}+00:00", naive(t, 'T'))
}

/// `expire_date` as Django's SQLite backend stores it: naive UTC,
/// `YYYY-MM-DD HH:MM:SS[.ffffff]` (microseconds dropped when zero).
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn format_expire_date(t: SystemTime) -> String {
    naive(t, ' ')
}

fn naive(t: SystemTime, separator: char) -> String {
    let t = crate::expiry::clamp_time(t);
    // "YYYY-MM-DDTHH:MM:SS.ffffffZ"
    let text = humantime::format_rfc3339_micros(t).to_string();
    let text = text.trim_end_matches('Z');
    let text = text.strip_suffix(".000000").unwrap_or(text);
    text.replacen('T', &separator.to_string(), 1)
}

/// `expire_date`'s text (`YYYY-MM-DD HH:MM:SS[.ffffff]`, naive UTC), or `None`.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn parse_expire_date(text: &str) -> Option<SystemTime> {
    parse_iso(text)
}

/// An ISO 8601 time as Python's `datetime.fromisoformat` writes it: date, `T` or space,
/// time with optional fraction, then `Z`, `+HH:MM`, `-HH:MM` or nothing (UTC).
pub(crate) fn parse_iso(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if text.len() < 19 || !text.is_ascii() {
        return None;
    }
    let (local, offset) = match text.strip_suffix('Z') {
        Some(local) => (local, 0i64),
        None => match text.len().checked_sub(6).map(|i| text.split_at(i)) {
            Some((local, off))
                if local.len() >= 19 && (off.starts_with('+') || off.starts_with('-')) =>
            {
                let sign = if off.starts_with('-') { -1 } else { 1 };
                let (h, m) = off[1..].split_once(':')?;
                let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
                if h > 23 || m > 59 {
                    return None;
                }
                (local, sign * (h * 3600 + m * 60))
            }
            _ => (text, 0),
        },
    };
    let local = humantime::parse_rfc3339_weak(local).ok()?;
    // local = UTC + offset
    let magnitude = Duration::from_secs(offset.unsigned_abs());
    if offset >= 0 {
        local.checked_sub(magnitude)
    } else {
        local.checked_add(magnitude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "django-insecure-filesession-vector-key";

    fn codec() -> DjangoCodec {
        DjangoCodec::new(Signer::new(KEY, &[], crate::signing::SESSION_SALT))
    }

    fn at(seconds: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(seconds, micros * 1000)
    }

    #[test]
    fn a_record_encodes_as_djangos_vector() {
        let data: Map<String, Value> =
            serde_json::from_str(r#"{"_auth_user_id":"1","cart":[1,2,3]}"#).expect("json");
        let record = Record {
            data: data.into(),
            expiry: Expiry::Default,
            expires_at: at(1_700_000_000, 0),
        };
        let text = codec()
            .encode(None, &record, at(1_700_000_000, 0), 1 << 20)
            .expect("encodes");
        assert_eq!(
            text,
            "eyJfYXV0aF91c2VyX2lkIjoiMSIsImNhcnQiOlsxLDIsM119:1r31eq:\
             0RpGJPWrzlS_z6JhV9XsntzMZM9mSiKEIGe9QCselcw"
        );
        let (back, expiry) = codec().decode(&text).expect("decodes");
        assert_eq!(back, *record.data);
        assert_eq!(expiry, Expiry::Default);
    }

    #[test]
    fn session_expiry_says_the_rule_as_django_writes_it() {
        let cases = [
            (r#"{"a":1}"#, Expiry::Default),
            (r#"{"_session_expiry":0}"#, Expiry::BrowserClose),
            (r#"{"_session_expiry":300}"#, Expiry::Seconds(300)),
            (r#"{"_session_expiry":null}"#, Expiry::Default),
            (
                r#"{"_session_expiry":"2030-01-02T03:04:05+00:00"}"#,
                Expiry::At(at(1_893_553_445, 0)),
            ),
            (
                r#"{"_session_expiry":"2030-01-02T04:04:05.250000+01:00"}"#,
                Expiry::At(at(1_893_553_445, 250_000)),
            ),
            (
                r#"{"_session_expiry":"2030-01-02T03:04:05"}"#,
                Expiry::At(at(1_893_553_445, 0)),
            ),
            (r#"{"_session_expiry":-5}"#, Expiry::At(UNIX_EPOCH)),
            (r#"{"_session_expiry":"soon"}"#, Expiry::At(UNIX_EPOCH)),
            (r#"{"_session_expiry":false}"#, Expiry::BrowserClose),
            (r#"{"_session_expiry":true}"#, Expiry::Seconds(1)),
            (r#"{"_session_expiry":[1]}"#, Expiry::At(UNIX_EPOCH)),
        ];
        for (json, expiry) in cases {
            let data: Map<String, Value> = serde_json::from_str(json).expect("json");
            assert_eq!(expiry_of(&data), expiry, "{json}");
        }
    }

    #[test]
    fn session_expiry_is_set_in_place_and_kept_as_written() {
        let data: Map<String, Value> = serde_json::from_str(
            r#"{"a":1,"_session_expiry":"2030-01-02T03:04:05.000000+00:00","b":2}"#,
        )
        .expect("json");
        // The same rule: the text as written.
        let same = with_expiry(&data, Expiry::At(at(1_893_553_445, 0)), SystemTime::now());
        assert_eq!(same, data);
        // Another: in place.
        let seconds = with_expiry(&data, Expiry::Seconds(60), SystemTime::now());
        assert_eq!(
            serde_json::to_string(&seconds).expect("json"),
            r#"{"a":1,"_session_expiry":60,"b":2}"#
        );
        let browser = with_expiry(&seconds, Expiry::BrowserClose, SystemTime::now());
        assert_eq!(browser.get(SESSION_EXPIRY_KEY), Some(&Value::from(0)));
        let default = with_expiry(&seconds, Expiry::Default, SystemTime::now());
        assert_eq!(
            serde_json::to_string(&default).expect("json"),
            r#"{"a":1,"b":2}"#
        );
        // Kept to the millisecond, as every expiry.
        let appended = with_expiry(
            &default,
            Expiry::At(at(1_893_553_445, 123_000)),
            SystemTime::now(),
        );
        assert_eq!(
            serde_json::to_string(&appended).expect("json"),
            r#"{"a":1,"b":2,"_session_expiry":"2030-01-02T03:04:05.123000+00:00"}"#
        );
    }

    #[test]
    fn expire_date_is_naive_utc_text_as_djangos_sqlite_keeps_it() {
        assert_eq!(
            format_expire_date(at(1_893_553_445, 0)),
            "2030-01-02 03:04:05"
        );
        assert_eq!(
            format_expire_date(at(1_893_553_445, 7_000)),
            "2030-01-02 03:04:05.007000"
        );
        for t in [at(1_893_553_445, 0), at(1_893_553_445, 999_000)] {
            assert_eq!(parse_expire_date(&format_expire_date(t)), Some(t));
        }
        assert_eq!(parse_expire_date("not a date"), None);
    }

    #[test]
    fn a_value_signed_with_another_key_or_tampered_is_refused() {
        let other = DjangoCodec::new(Signer::new("another", &[], crate::signing::SESSION_SALT));
        let record = Record {
            data: Map::new().into(),
            expiry: Expiry::Default,
            expires_at: UNIX_EPOCH,
        };
        let text = other
            .encode(None, &record, SystemTime::now(), 1 << 20)
            .expect("encodes");
        assert!(codec().decode(&text).is_err());
        let mine = codec()
            .encode(None, &record, SystemTime::now(), 1 << 20)
            .expect("encodes");
        let tampered = mine.replacen('e', "f", 1);
        assert!(codec().decode(&tampered).is_err());
        assert!(codec().decode(&mine).is_ok());
        let list = codec()
            .signer()
            .sign_object(&serde_json::json!([1]), true, SystemTime::now());
        assert!(codec().decode(&list).is_err());
    }

    #[test]
    fn a_session_too_large_is_refused_before_it_is_stored() {
        let mut data = Map::new();
        data.insert("big".into(), "x".repeat(5000).into());
        // zlib makes 5000 x's small: use varied text.
        let varied: String = (0..5000u32)
            .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
            .collect();
        data.insert("varied".into(), varied.into());
        let record = Record {
            data: data.into(),
            expiry: Expiry::Default,
            expires_at: UNIX_EPOCH,
        };
        let e = codec()
            .encode(None, &record, SystemTime::now(), 60)
            .expect_err("too large");
        assert!(matches!(e, StoreError::TooLarge { limit: 60, .. }), "{e}");
    }
}
