//! SignedCookieStore: Django's `signed_cookies` engine (`SESSION_ENGINE=signed_cookies`),
//! the whole session in the cookie, signed with `SECRET_KEY`.
//!
//! The cookie's value is `signing.dumps(session, compress=True,
//! salt="django.contrib.sessions.backends.signed_cookies", serializer=JSONSerializer)`
//! (`django/contrib/sessions/backends/signed_cookies.py`), read back with `max_age` =
//! `SESSION_COOKIE_AGE`: the cookies of a Django site with the same `SECRET_KEY` work here,
//! and ours there.
//!
//! Nothing is kept on the server, so this engine cannot do what the others do: concurrent
//! requests cannot be merged (each response carries its own copy: the last cookie the
//! browser keeps wins), nothing can be locked, and a session cannot be revoked (a copy of an
//! old cookie replays after a logout until it is `SESSION_COOKIE_AGE` old), as in Django.
//!
//! `SessionMiddleware` does the work: it decodes the cookie
//! ([`SignedCookieStore::decode`]) into a store of one request, runs the handler on it as on
//! any store, and encodes what was saved into the answer's cookie
//! ([`SignedCookieStore::encode`]). This store's own [`SessionStore`] methods refuse
//! ([`StoreError::Unavailable`]): a session here exists only within a request.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use super::django::{expiry_of, log_refused, with_expiry};
use super::format::{MAX_VALUE_DEPTH, depth};
use super::memory::MemoryStore;
use super::{ChangeSet, Loaded, Record, SessionLock, SessionStore, StoreError};
use crate::expiry::Expiry;
use crate::key::SessionKey;
use crate::signing::{SIGNED_COOKIES_SALT, SecretKey, Signer, python_json, unbase62};

/// The most a cookie can hold, name and value together: 4096 bytes, what RFC 6265 (section
/// 6.1) asks every browser to keep at least and what browsers keep at most.
pub const MAX_COOKIE_SIZE: usize = 4096;

/// The largest JSON a signed cookie carries, written or read: 64 KiB. A cookie holds 4 KiB,
/// so only a payload that compresses 16 to 1 comes near it; a larger one (a "zip bomb"
/// built through a handler that stores what a client sends) would make each request that
/// carries it inflate and parse megabytes on the server's one thread.
pub const MAX_COOKIE_JSON: usize = 64 << 10;

/// Django's `signed_cookies` session engine: the signer and the cookie's name and age.
#[derive(Debug, Clone)]
pub struct SignedCookieStore {
    signer: Signer,
    cookie_name: String,
    max_age: Duration,
}

impl SignedCookieStore {
    /// A store signing with `secret_key`, verifying with it and then each of `fallbacks`
    /// (Django's `SECRET_KEY_FALLBACKS`), for the cookie `cookie_name`
    /// (`SESSION_COOKIE_NAME`), whose value is refused once older than `max_age`
    /// (`SESSION_COOKIE_AGE`).
    pub fn new(
        secret_key: &SecretKey,
        fallbacks: &[SecretKey],
        cookie_name: &str,
        max_age: Duration,
    ) -> SignedCookieStore {
        SignedCookieStore {
            signer: Signer::from_keys(secret_key, fallbacks, SIGNED_COOKIES_SALT),
            cookie_name: cookie_name.to_owned(),
            max_age,
        }
    }

    /// The session a cookie's value carries, if one of the keys signed it less than
    /// `max_age` ago and it holds a dictionary; `None` ("no session", logged) for anything
    /// else: tampered, signed with another key, too old, not a dictionary.
    ///
    /// The record's expiry rule is its `_session_expiry`; it ends at the earlier of
    /// `max_age` after the signing and the end that rule gives.
    pub fn decode(&self, cookie_value: &str, now: SystemTime) -> Option<Record> {
        let data = match self.signer.unsign_object_within(
            cookie_value,
            Some(self.max_age),
            now,
            MAX_COOKIE_JSON,
        ) {
            Ok(Value::Object(data)) => data,
            Ok(_) => {
                log_refused("signed cookie", None, "signed, but not a dictionary");
                return None;
            }
            Err(e) => {
                log_refused("signed cookie", None, &e.to_string());
                return None;
            }
        };
        let signed_at = cookie_value
            .rsplit(':')
            .nth(1)
            .and_then(unbase62)
            .map_or(now, |s| {
                crate::expiry::add_clamped(SystemTime::UNIX_EPOCH, Duration::from_secs(s))
            });
        let expiry = expiry_of(&data);
        let by_age = crate::expiry::add_clamped(signed_at, self.max_age);
        let expires_at = match expiry {
            Expiry::Default | Expiry::BrowserClose => by_age,
            rule => rule.date(signed_at, self.max_age).min(by_age),
        };
        Some(Record {
            data: Arc::new(data),
            expiry,
            expires_at,
        })
    }

    /// The cookie's value for a session of `data` with `expiry` (kept in the dictionary as
    /// `_session_expiry`, as Django keeps it), signed at `now`.
    ///
    /// # Errors
    /// [`StoreError::CookieTooLarge`]: the cookie, name and value, would be over
    /// [`MAX_COOKIE_SIZE`] bytes (a browser would drop it; nothing is truncated);
    /// [`StoreError::TooLarge`]: its JSON over [`MAX_COOKIE_JSON`]; [`StoreError::TooDeep`].
    pub fn encode(
        &self,
        data: &Map<String, Value>,
        expiry: Expiry,
        now: SystemTime,
    ) -> Result<String, StoreError> {
        let depth = depth(data);
        if depth > MAX_VALUE_DEPTH {
            return Err(StoreError::TooDeep {
                key: None,
                depth,
                limit: MAX_VALUE_DEPTH,
            });
        }
        let json = python_json(&Value::Object(with_expiry(data, expiry, now)));
        if json.len() > MAX_COOKIE_JSON {
            return Err(StoreError::TooLarge {
                key: None,
                size: json.len(),
                limit: MAX_COOKIE_JSON,
            });
        }
        let value = self.signer.sign_json(&json, true, now);
        let size = self.cookie_name.len() + 1 + value.len();
        if size > MAX_COOKIE_SIZE {
            return Err(StoreError::CookieTooLarge {
                size,
                limit: MAX_COOKIE_SIZE,
            });
        }
        Ok(value)
    }

    /// A store of one request holding the cookie's session, if any, under a key of its
    /// own; the key names nothing outside that store.
    pub(crate) fn request_store(
        &self,
        cookie: Option<&Record>,
    ) -> (Arc<dyn SessionStore>, Option<SessionKey>) {
        let store = MemoryStore::new();
        let key = cookie.map(|record| store.insert(record.clone()));
        (Arc::new(store), key)
    }
}

fn in_the_cookie() -> StoreError {
    StoreError::Unavailable(
        "SESSION_ENGINE=signed_cookies keeps each session in its cookie: sessions are read \
         and written by SessionMiddleware, within a request"
            .into(),
    )
}

impl SessionStore for SignedCookieStore {
    fn load(&self, _: &SessionKey) -> Result<Option<Loaded>, StoreError> {
        Err(in_the_cookie())
    }

    fn create(&self, _: &Record) -> Result<SessionKey, StoreError> {
        Err(in_the_cookie())
    }

    fn save(
        &self,
        _: &SessionKey,
        _: &ChangeSet,
        _: Option<SessionLock>,
    ) -> Result<Record, StoreError> {
        Err(in_the_cookie())
    }

    fn cycle(
        &self,
        _: &SessionKey,
        _: &ChangeSet,
        _: Option<SessionLock>,
    ) -> Result<(SessionKey, Record), StoreError> {
        Err(in_the_cookie())
    }

    fn delete(&self, _: &SessionKey, _: Option<SessionLock>) -> Result<(), StoreError> {
        Err(in_the_cookie())
    }

    fn exists(&self, _: &SessionKey) -> Result<bool, StoreError> {
        Err(in_the_cookie())
    }

    fn loads_wait(&self) -> bool {
        false
    }

    fn saves_wait(&self) -> bool {
        false
    }

    fn signed_cookies(&self) -> Option<&SignedCookieStore> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "django-insecure-filesession-vector-key";

    fn store(fallbacks: &[&str]) -> SignedCookieStore {
        let fallbacks: Vec<SecretKey> = fallbacks.iter().map(|k| SecretKey::new(*k)).collect();
        SignedCookieStore::new(
            &SecretKey::new(KEY),
            &fallbacks,
            "sessionid",
            Duration::from_secs(1_209_600),
        )
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn a_session_encodes_as_djangos_cookie_vector() {
        let data: Map<String, Value> = serde_json::from_str(r#"{"a":1}"#).expect("json");
        let value = store(&[])
            .encode(&data, Expiry::Default, at(1_700_000_000))
            .expect("fits");
        assert_eq!(
            value,
            "eyJhIjoxfQ:1r31eq:diR6L6_LZmbVMCW4tkN5wnIFiUH2rPY98F0J4L5RMbc"
        );
        let record = store(&[])
            .decode(&value, at(1_700_000_100))
            .expect("a session");
        assert_eq!(*record.data, data);
        assert_eq!(record.expires_at, at(1_700_000_000 + 1_209_600));
    }

    #[test]
    fn a_cookie_older_than_the_cookie_age_is_no_session() {
        let data = Map::new();
        let value = store(&[])
            .encode(&data, Expiry::Default, at(1_700_000_000))
            .expect("fits");
        assert!(
            store(&[])
                .decode(&value, at(1_700_000_000 + 1_209_600))
                .is_some()
        );
        assert!(
            store(&[])
                .decode(&value, at(1_700_000_000 + 1_209_601))
                .is_none()
        );
    }

    #[test]
    fn a_tampered_or_foreign_cookie_is_no_session_and_a_fallback_key_verifies() {
        let other = SignedCookieStore::new(
            &SecretKey::new("old-key"),
            &[],
            "sessionid",
            Duration::from_secs(60),
        );
        let now = SystemTime::now();
        let value = other
            .encode(&Map::new(), Expiry::Default, now)
            .expect("fits");
        assert!(store(&[]).decode(&value, now).is_none());
        assert!(store(&["old-key"]).decode(&value, now).is_some());
        let mine = store(&[])
            .encode(&Map::new(), Expiry::Default, now)
            .expect("fits");
        let tampered = format!("x{mine}");
        assert!(store(&[]).decode(&tampered, now).is_none());
        // The session salt is not the cookies': a session_data value is no cookie.
        let session_data = Signer::new(KEY, &[], crate::signing::SESSION_SALT).sign_object(
            &Value::Object(Map::new()),
            true,
            now,
        );
        assert!(store(&[]).decode(&session_data, now).is_none());
    }

    #[test]
    fn a_session_too_big_for_a_cookie_is_an_error_not_a_truncated_cookie() {
        let mut data = Map::new();
        // Random text that zlib cannot shrink below 4 KiB.
        let text: String = (0..300)
            .map(|_| SessionKey::generate().to_string())
            .collect();
        data.insert("big".into(), text.into());
        let e = store(&[])
            .encode(&data, Expiry::Default, SystemTime::now())
            .expect_err("too large");
        assert!(
            matches!(e, StoreError::CookieTooLarge { limit: MAX_COOKIE_SIZE, size } if size > MAX_COOKIE_SIZE),
            "{e}"
        );
    }

    #[test]
    fn a_cookie_that_inflates_past_the_limit_is_no_session_and_none_is_written() {
        // 1 MiB of zeros compresses to about 1 KiB: a cookie, signed with the key.
        let zeros = format!("{{\"z\":\"{}\"}}", "0".repeat(1 << 20));
        let now = SystemTime::now();
        let bomb = store(&[]).signer.sign_json(&zeros, true, now);
        assert!(bomb.len() < MAX_COOKIE_SIZE, "{}", bomb.len());
        assert!(store(&[]).decode(&bomb, now).is_none());
        let mut data = Map::new();
        data.insert("z".into(), "0".repeat(MAX_COOKIE_JSON).into());
        let e = store(&[])
            .encode(&data, Expiry::Default, now)
            .expect_err("over the limit");
        assert!(
            matches!(
                e,
                StoreError::TooLarge {
                    limit: MAX_COOKIE_JSON,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_signing_time_past_the_end_of_time_is_read_without_a_panic() {
        // Signed with the key: base62 of u64::MAX as the timestamp.
        let signer = &store(&[]).signer;
        let payload = "eyJhIjoxfQ";
        let signed = signer.sign(&format!("{payload}:{}", crate::signing::base62(u64::MAX)));
        // In the future: not too old (Django accepts it too).
        assert!(store(&[]).decode(&signed, SystemTime::now()).is_some());
    }

    #[test]
    fn an_expiry_set_in_the_session_ends_it_earlier() {
        let mut data = Map::new();
        data.insert("_session_expiry".into(), 60.into());
        let value = store(&[])
            .encode(&data, Expiry::Seconds(60), at(1_700_000_000))
            .expect("fits");
        let record = store(&[])
            .decode(&value, at(1_700_000_001))
            .expect("a session");
        assert_eq!(record.expiry, Expiry::Seconds(60));
        assert_eq!(record.expires_at, at(1_700_000_060));
    }
}
