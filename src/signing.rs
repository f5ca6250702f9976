//! Django's signing (`django.core.signing`, Django 5.2): the format Django keeps its
//! sessions in (`session_data`, session files, the `signed_cookies` engine), so that a
//! Rust service can read and write the sessions of a running Django site.
//!
//! A signed object is `<payload>:<timestamp>:<signature>`:
//! - payload: the object's JSON as Python's `json.dumps(obj, separators=(",", ":"))` writes
//!   it (every non-ASCII character and DEL as `\uXXXX`, UTF-16 surrogate pairs above
//!   U+FFFF), zlib-compressed when that saves at least 2 bytes (then prefixed with `.`),
//!   base64url without padding;
//! - timestamp: Unix seconds in base62 (`0-9A-Za-z`);
//! - signature: base64url (no padding) of HMAC-SHA256 over `<payload>:<timestamp>`, keyed
//!   with `SHA-256(salt + "signer" + SECRET_KEY)` (`salted_hmac`).
//!
//! Verification tries `SECRET_KEY`, then each of `SECRET_KEY_FALLBACKS`; signing uses
//! `SECRET_KEY` only. Signatures are compared in constant time.

use std::fmt;
use std::io::{self, Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The salt Django's `db`, `file`, `cache` and `cached_db` session engines sign with
/// (`"django.contrib.sessions." + SessionStore.__qualname__`).
pub const SESSION_SALT: &str = "django.contrib.sessions.SessionStore";
/// The salt of Django's `signed_cookies` session engine.
pub const SIGNED_COOKIES_SALT: &str = "django.contrib.sessions.backends.signed_cookies";
/// The salt `django.core.signing.dumps` signs with when given none.
pub const DEFAULT_SALT: &str = "django.core.signing";

/// Why a signed value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadSignature {
    /// No key of the signer made this signature (tampered, or signed with another key).
    Signature,
    /// Signed, but longer ago than the `max_age` asked for (Django's `SignatureExpired`).
    Expired {
        /// How old the signature is, in whole seconds.
        age: u64,
    },
    /// Signed, but the payload is not what a signer writes (base64, zlib or JSON).
    Payload(String),
}

impl fmt::Display for BadSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadSignature::Signature => f.write_str("the signature does not match"),
            BadSignature::Expired { age } => write!(f, "the signature is {age} s old"),
            BadSignature::Payload(why) => write!(f, "the signed payload is unreadable: {why}"),
        }
    }
}

impl std::error::Error for BadSignature {}

/// A secret: Django's `SECRET_KEY` or one of `SECRET_KEY_FALLBACKS`. Never shown: its
/// `Debug` prints `SecretKey(***)`, and it has no `Display`.
///
/// ```
/// use filesession::signing::SecretKey;
///
/// let key = SecretKey::new("django-insecure-x");
/// assert_eq!(format!("{key:?}"), "SecretKey(***)");
/// assert_eq!(key.expose(), "django-insecure-x");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// The secret `text`, as Django's settings give it.
    pub fn new(text: impl Into<String>) -> SecretKey {
        SecretKey(text.into())
    }

    /// The secret's text: to sign with, or to hand to a worker process, never to print.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

/// Django's `TimestampSigner`: a secret key, fallback keys tried when verifying, and a salt.
/// Its `Debug` shows no key.
#[derive(Clone)]
pub struct Signer {
    /// The HMAC keys: `SHA-256(salt + "signer" + key)`, `SECRET_KEY`'s first.
    keys: Vec<[u8; 32]>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer with `secret_key` (Django's `SECRET_KEY`), `fallbacks`
    /// (`SECRET_KEY_FALLBACKS`, tried in order when verifying) and `salt`.
    pub fn new(secret_key: &str, fallbacks: &[String], salt: &str) -> Signer {
        let key = |secret: &str| -> [u8; 32] {
            let mut hasher = Sha256::new();
            hasher.update(salt.as_bytes());
            hasher.update(b"signer");
            hasher.update(secret.as_bytes());
            hasher.finalize().into()
        };
        let mut keys = vec![key(secret_key)];
        keys.extend(fallbacks.iter().map(|k| key(k)));
        Signer { keys }
    }

    /// [`Signer::new`] with the keys as settings keep them.
    pub fn from_keys(secret_key: &SecretKey, fallbacks: &[SecretKey], salt: &str) -> Signer {
        let fallbacks: Vec<String> = fallbacks.iter().map(|k| k.expose().to_owned()).collect();
        Signer::new(secret_key.expose(), &fallbacks, salt)
    }

    fn signature(key: &[u8; 32], value: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(value.as_bytes());
        mac
    }

    /// `value:<signature>` (Django's `Signer.sign`; with [`sign_object`](Signer::sign_object)
    /// the value carries its timestamp).
    pub fn sign(&self, value: &str) -> String {
        let mac = Self::signature(&self.keys[0], value)
            .finalize()
            .into_bytes();
        format!("{value}:{}", URL_SAFE_NO_PAD.encode(mac))
    }

    /// The value `signed` carries, if one of the keys signed it (Django's `Signer.unsign`).
    ///
    /// # Errors
    /// [`BadSignature::Signature`].
    pub fn unsign<'a>(&self, signed: &'a str) -> Result<&'a str, BadSignature> {
        let (value, signature) = signed.rsplit_once(':').ok_or(BadSignature::Signature)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| BadSignature::Signature)?;
        self.keys
            .iter()
            .any(|key| Self::signature(key, value).verify_slice(&signature).is_ok())
            .then_some(value)
            .ok_or(BadSignature::Signature)
    }

    /// `object` signed as Django's `TimestampSigner.sign_object(object,
    /// serializer=JSONSerializer, compress=compress)` at `now`.
    pub fn sign_object(&self, object: &Value, compress: bool, now: SystemTime) -> String {
        self.sign_json(&python_json(object), compress, now)
    }

    /// [`sign_object`](Signer::sign_object) of an object already written as Python's JSON
    /// ([`python_json`]).
    pub fn sign_json(&self, json: &str, compress: bool, now: SystemTime) -> String {
        let mut payload = String::new();
        let compressed = compress.then(|| zlib(json.as_bytes())).flatten();
        match compressed {
            Some(z) if z.len() < json.len().saturating_sub(1) => {
                payload.push('.');
                payload.push_str(&URL_SAFE_NO_PAD.encode(z));
            }
            _ => payload.push_str(&URL_SAFE_NO_PAD.encode(json.as_bytes())),
        }
        let seconds = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.sign(&format!("{payload}:{}", base62(seconds)))
    }

    /// The object `signed` carries (Django's `TimestampSigner.unsign_object` with the JSON
    /// serializer), checked against the keys and, with `max_age`, against its age at `now`.
    ///
    /// # Errors
    /// [`BadSignature`]: a signature of no key, too old, or an unreadable payload.
    pub fn unsign_object(
        &self,
        signed: &str,
        max_age: Option<Duration>,
        now: SystemTime,
    ) -> Result<Value, BadSignature> {
        self.unsign_object_within(signed, max_age, now, MAX_JSON)
    }

    /// [`unsign_object`](Signer::unsign_object) of an object whose JSON is at most
    /// `max_json` bytes (a compressed payload is inflated no further): a session's limit, so
    /// that a small signed value cannot make much work.
    ///
    /// # Errors
    /// As [`unsign_object`](Signer::unsign_object); [`BadSignature::Payload`] over the limit.
    pub fn unsign_object_within(
        &self,
        signed: &str,
        max_age: Option<Duration>,
        now: SystemTime,
        max_json: usize,
    ) -> Result<Value, BadSignature> {
        let value = self.unsign(signed)?;
        let (payload, timestamp) = value.rsplit_once(':').ok_or(BadSignature::Signature)?;
        if let Some(max_age) = max_age {
            let signed_at =
                unbase62(timestamp).ok_or_else(|| BadSignature::Payload("timestamp".into()))?;
            let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let age = now.saturating_sub(signed_at);
            if age > max_age.as_secs() {
                return Err(BadSignature::Expired { age });
            }
        }
        let (compressed, payload) = match payload.strip_prefix('.') {
            Some(rest) => (true, rest),
            None => (false, payload),
        };
        let bad = |what: &str| BadSignature::Payload(what.to_owned());
        let mut data = URL_SAFE_NO_PAD.decode(payload).map_err(|_| bad("base64"))?;
        if compressed {
            data = unzlib(&data, max_json).map_err(|e| bad(&format!("zlib: {e}")))?;
        }
        if data.len() > max_json {
            return Err(bad(&format!("JSON over {max_json} bytes")));
        }
        // Django reads the bytes as latin-1 (its own writers escape all but ASCII).
        let text: String = data.iter().map(|&b| char::from(b)).collect();
        serde_json::from_str(&text).map_err(|e| BadSignature::Payload(format!("JSON: {e}")))
    }
}

/// The JSON Python's `json.dumps(value, separators=(",", ":"))` writes: compact, every
/// character outside space..`~` escaped as `\uXXXX` (surrogate pairs above U+FFFF), keys
/// in their order.
pub fn python_json(value: &Value) -> String {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, AsciiFormatter);
    // Writing a `Value` to memory fails for nothing.
    if serde::Serialize::serialize(value, &mut serializer).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

/// serde_json's compact formatter, escaping as Python's `ensure_ascii` does.
struct AsciiFormatter;

impl serde_json::ser::Formatter for AsciiFormatter {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        for c in fragment.chars() {
            if (' '..='~').contains(&c) {
                writer.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

fn zlib(data: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).ok()?;
    encoder.finish().ok()
}

/// The largest JSON [`Signer::unsign_object`] reads: 16 MiB.
pub const MAX_JSON: usize = 16 << 20;

/// Inflates at most `limit` bytes: a zlib bomb is refused.
fn unzlib(data: &[u8], limit: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(data)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("over {limit} bytes inflated"),
        ));
    }
    Ok(out)
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `n` in base 62 (Django's `b62_encode`).
pub fn base62(mut n: u64) -> String {
    if n == 0 {
        return "0".into();
    }
    let mut digits = Vec::new();
    while n > 0 {
        digits.push(BASE62[(n % 62) as usize]);
        n /= 62;
    }
    digits.iter().rev().map(|&d| char::from(d)).collect()
}

/// The number `text` is in base 62; `None` for anything else (Django's `b62_decode`).
pub fn unbase62(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.bytes().try_fold(0u64, |n, b| {
        let digit = BASE62.iter().position(|&d| d == b)? as u64;
        n.checked_mul(62)?.checked_add(digit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "django-insecure-filesession-vector-key";

    fn at_vector_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn djangos_own_signer_vector() {
        let signer = Signer::new("predictable-secret", &[], "django.core.signing.Signer");
        // Django's test suite: Signer(key="predictable-secret").sign("foo"), whose salt is
        // the class's qualified name.
        assert_eq!(
            signer.sign("foo"),
            "foo:jZQoX_FtSO70jX9HLRGg2A_2s4kdDBxz1QoO_OpEQb0"
        );
        assert_eq!(
            signer.unsign("foo:jZQoX_FtSO70jX9HLRGg2A_2s4kdDBxz1QoO_OpEQb0"),
            Ok("foo")
        );
    }

    #[test]
    fn the_vectors_made_by_django_5_2_are_written_byte_for_byte() {
        let cases = [
            (
                DEFAULT_SALT,
                json!("hello"),
                "ImhlbGxvIg:1r31eq:c6BjtsSW1GhrNcP4N_F_pxrUNTSjd3YKFM259LwYrTE",
            ),
            (
                SESSION_SALT,
                json!({"_auth_user_id": "1", "cart": [1, 2, 3]}),
                "eyJfYXV0aF91c2VyX2lkIjoiMSIsImNhcnQiOlsxLDIsM119:1r31eq:0RpGJPWrzlS_z6JhV9XsntzMZM9mSiKEIGe9QCselcw",
            ),
            (
                SESSION_SALT,
                json!({"name": "Zoë 😀"}),
                "eyJuYW1lIjoiWm9cdTAwZWIgXHVkODNkXHVkZTAwIn0:1r31eq:HhPHUxZIahHMgavFS4JtRzfELqoeq0g6pprWugRV_o8",
            ),
            (
                SIGNED_COOKIES_SALT,
                json!({"a": 1}),
                "eyJhIjoxfQ:1r31eq:diR6L6_LZmbVMCW4tkN5wnIFiUH2rPY98F0J4L5RMbc",
            ),
        ];
        for (salt, object, signed) in cases {
            let signer = Signer::new(KEY, &[], salt);
            assert_eq!(signer.sign_object(&object, true, at_vector_time()), signed);
            assert_eq!(
                signer.unsign_object(signed, None, at_vector_time()),
                Ok(object)
            );
        }
    }

    #[test]
    fn json_is_escaped_as_pythons_ensure_ascii() {
        assert_eq!(
            python_json(&json!({"name": "Zoë 😀", "del": "\u{7f}", "q": "\"\\\n"})),
            r#"{"name":"Zo\u00eb \ud83d\ude00","del":"\u007f","q":"\"\\\n"}"#
        );
        assert_eq!(
            python_json(&serde_json::from_str::<Value>("12345678901234567890123").unwrap()),
            "12345678901234567890123"
        );
    }

    #[test]
    fn a_compressible_object_is_compressed_and_read_back() {
        let signer = Signer::new(KEY, &[], SESSION_SALT);
        let object = json!({"text": "a".repeat(500)});
        let signed = signer.sign_object(&object, true, at_vector_time());
        assert!(signed.starts_with('.'), "{signed}");
        assert!(signed.len() < 100, "{signed}");
        assert_eq!(
            signer.unsign_object(&signed, None, at_vector_time()),
            Ok(object)
        );
    }

    #[test]
    fn a_fallback_key_verifies_and_the_secret_key_signs() {
        let old = Signer::new("old-key", &[], SESSION_SALT);
        let signed = old.sign_object(&json!({"a": 1}), true, at_vector_time());
        let rotated = Signer::new("new-key", &["old-key".into()], SESSION_SALT);
        assert_eq!(
            rotated.unsign_object(&signed, None, at_vector_time()),
            Ok(json!({"a": 1}))
        );
        let resigned = rotated.sign_object(&json!({"a": 1}), true, at_vector_time());
        assert_eq!(
            old.unsign_object(&resigned, None, at_vector_time()),
            Err(BadSignature::Signature)
        );
        assert!(
            Signer::new("new-key", &[], SESSION_SALT)
                .unsign_object(&resigned, None, at_vector_time())
                .is_ok()
        );
    }

    #[test]
    fn tampered_foreign_and_malformed_values_are_refused() {
        let signer = Signer::new(KEY, &[], SESSION_SALT);
        let good = "eyJhIjoxfQ:1r31eq:diR6L6_LZmbVMCW4tkN5wnIFiUH2rPY98F0J4L5RMbc";
        let cookies = Signer::new(KEY, &[], SIGNED_COOKIES_SALT);
        assert!(cookies.unsign_object(good, None, at_vector_time()).is_ok());
        // Another salt, a changed payload, a changed signature, no separator, junk.
        assert_eq!(
            signer.unsign_object(good, None, at_vector_time()),
            Err(BadSignature::Signature)
        );
        for bad in [
            good.replacen("eyJhIjox", "eyJhIjoy", 1),
            good.replacen("diR6", "diR7", 1),
            "eyJhIjoxfQ".to_owned(),
            String::new(),
            ":::".to_owned(),
            "\u{e9}:\u{e9}:\u{e9}".to_owned(),
        ] {
            assert!(
                cookies.unsign_object(&bad, None, at_vector_time()).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn max_age_is_checked_against_the_signed_time() {
        let signer = Signer::new(KEY, &[], SIGNED_COOKIES_SALT);
        let signed = signer.sign_object(&json!({"a": 1}), true, at_vector_time());
        let later = at_vector_time() + Duration::from_secs(100);
        assert!(
            signer
                .unsign_object(&signed, Some(Duration::from_secs(100)), later)
                .is_ok()
        );
        assert_eq!(
            signer.unsign_object(&signed, Some(Duration::from_secs(99)), later),
            Err(BadSignature::Expired { age: 100 })
        );
    }

    #[test]
    fn a_zlib_bomb_is_refused() {
        let signer = Signer::new(KEY, &[], SESSION_SALT);
        let huge = zlib(&vec![b' '; 32 << 20]).unwrap();
        let signed = signer.sign(&format!(".{}:1r31eq", URL_SAFE_NO_PAD.encode(huge)));
        assert_eq!(
            signer.unsign_object(&signed, None, at_vector_time()),
            Err(BadSignature::Payload(
                "zlib: over 16777216 bytes inflated".into()
            ))
        );
        // A limit of the caller's.
        let small = zlib(&vec![b' '; 2000]).unwrap();
        let signed = signer.sign(&format!(".{}:1r31eq", URL_SAFE_NO_PAD.encode(small)));
        assert!(
            signer
                .unsign_object_within(&signed, None, at_vector_time(), 1000)
                .is_err()
        );
        let plain = signer.sign(&format!("{}:1r31eq", URL_SAFE_NO_PAD.encode([b' '; 1001])));
        assert_eq!(
            signer.unsign_object_within(&plain, None, at_vector_time(), 1000),
            Err(BadSignature::Payload("JSON over 1000 bytes".into()))
        );
    }

    #[test]
    fn base62_is_djangos() {
        assert_eq!(base62(1_700_000_000), "1r31eq");
        assert_eq!(unbase62("1r31eq"), Some(1_700_000_000));
        assert_eq!(base62(0), "0");
        assert_eq!(unbase62(""), None);
        assert_eq!(unbase62("-1"), None);
        assert_eq!(unbase62("zzzzzzzzzzzzzzzzzzzz"), None, "overflow");
    }
}
