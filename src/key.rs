//! The session key: a random UUID v4 (filesession's format) or a Django key (32 of
//! `[a-z0-9]`, `SESSION_FORMAT=django`), and the only way to a session file name.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A session key: a random UUID version 4 in canonical form,
/// e.g. `67e55044-10b1-426f-9247-bb680e5fe0c8`, or, in Django's format, Django's key:
/// 8 to 40 characters of `[a-z0-9]` (Django makes 32), e.g.
/// `q2u7ep5ma0s2oa5tq1krtb3z86yg0h5n`.
///
/// A `SessionKey` exists only in these ways: [`SessionKey::generate`] /
/// [`SessionKey::generate_django`] (from the operating system's CSPRNG through
/// `getrandom`), or [`SessionKey::parse`] / [`SessionKey::parse_django`], which accept the
/// canonical form and nothing else. File names are built from a parsed key only
/// ([`SessionKey::file_name`]), so a cookie value can never reach the file system: path
/// traversal is impossible by construction, not checked for.
///
/// ```
/// use filesession::SessionKey;
///
/// let key = SessionKey::generate();
/// assert_eq!(SessionKey::parse(&key.to_string()), Some(key));
/// assert_eq!(key.file_name(), format!("{key}.json"));
///
/// // Everything but the canonical form means "no session".
/// assert!(SessionKey::parse("../../etc/passwd").is_none());
/// assert!(SessionKey::parse(&key.to_string().to_uppercase()).is_none());
///
/// // Django's keys, for SESSION_FORMAT=django.
/// let django = SessionKey::generate_django();
/// assert_eq!(django.to_string().len(), 32);
/// assert_eq!(SessionKey::parse_django(&django.to_string()), Some(django));
/// assert!(SessionKey::parse_django("sessionid/../x1234567").is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey(Repr);

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Repr {
    Uuid(Uuid),
    /// `len` bytes of `[a-z0-9]`, the rest zero.
    Django {
        len: u8,
        text: [u8; DJANGO_KEY_MAX_LEN],
    },
}

/// The length of a key's text form: 32 hex digits and 4 hyphens.
pub const SESSION_KEY_LEN: usize = 36;

/// The length of the keys Django makes (`get_random_string(32, ascii_lowercase + digits)`,
/// `django/contrib/sessions/backends/base.py`).
pub const DJANGO_KEY_LEN: usize = 32;
/// The shortest Django key a load accepts: Django's `_validate_session_key` wants 8.
pub const DJANGO_KEY_MIN_LEN: usize = 8;
/// The longest Django key a load accepts: `django_session.session_key` is `varchar(40)`.
pub const DJANGO_KEY_MAX_LEN: usize = 40;

/// Django's key alphabet, `string.ascii_lowercase + string.digits`.
const DJANGO_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

impl SessionKey {
    /// A new random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        SessionKey(Repr::Uuid(Uuid::new_v4()))
    }

    /// A new random Django key: 32 characters drawn uniformly from `[a-z0-9]` (about 165
    /// bits), from the operating system's CSPRNG, as Django's `get_new_session_key`.
    pub fn generate_django() -> Self {
        let mut text = [0u8; DJANGO_KEY_MAX_LEN];
        let mut filled = 0;
        while filled < DJANGO_KEY_LEN {
            // Two v4 UUIDs: 32 bytes, 244 of the bits random; only the random bytes are used.
            let mut pool = [0u8; 32];
            pool[..16].copy_from_slice(Uuid::new_v4().as_bytes());
            pool[16..].copy_from_slice(Uuid::new_v4().as_bytes());
            // Bytes 6 and 8 of a v4 UUID carry its version and variant: skipped.
            for (i, &b) in pool.iter().enumerate() {
                if matches!(i % 16, 6 | 8) || filled == DJANGO_KEY_LEN {
                    continue;
                }
                // 252 = 7 * 36: rejection keeps the draw uniform.
                if b < 252 {
                    text[filled] = DJANGO_ALPHABET[usize::from(b % 36)];
                    filled += 1;
                }
            }
        }
        SessionKey(Repr::Django {
            len: DJANGO_KEY_LEN as u8,
            text,
        })
    }

    /// Parses the canonical text form of a version-4 UUID: 36 characters, lowercase hex,
    /// hyphens at positions 8, 13, 18 and 23, version nibble 4, RFC 4122 variant.
    ///
    /// Returns `None` for anything else: braced, URN, uppercase, hyphenless, empty, overlong
    /// or non-ASCII text, other UUID versions, the nil UUID, and Django's keys. `None` means
    /// "no session".
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != SESSION_KEY_LEN {
            return None;
        }
        for (i, &b) in bytes.iter().enumerate() {
            let ok = match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            };
            if !ok {
                return None;
            }
        }
        let uuid = Uuid::from_str(text).ok()?;
        (uuid.get_version() == Some(uuid::Version::Random)
            && uuid.get_variant() == uuid::Variant::RFC4122)
            .then_some(SessionKey(Repr::Uuid(uuid)))
    }

    /// Parses a Django key: 8 to 40 characters of `[a-z0-9]`, what Django 5.2's file backend
    /// loads (its `VALID_KEY_CHARS`; `_validate_session_key` wants 8 or more) and
    /// `django_session.session_key` holds. Django's db backend would also look up a key of
    /// other characters, which no Django makes: refused here, so that no key can name
    /// another file.
    pub fn parse_django(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if !(DJANGO_KEY_MIN_LEN..=DJANGO_KEY_MAX_LEN).contains(&bytes.len())
            || !bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return None;
        }
        let mut key = [0u8; DJANGO_KEY_MAX_LEN];
        key[..bytes.len()].copy_from_slice(bytes);
        Some(SessionKey(Repr::Django {
            len: bytes.len() as u8,
            text: key,
        }))
    }

    /// Whether this is a Django key ([`SessionKey::generate_django`],
    /// [`SessionKey::parse_django`]).
    pub fn is_django(&self) -> bool {
        matches!(self.0, Repr::Django { .. })
    }

    /// 16 bytes that stand for the key, the same in every process: a UUID's own bytes
    /// (122 of them random), the first 16 bytes of a Django key's SHA-256.
    pub(crate) fn as_bytes(&self) -> [u8; 16] {
        match &self.0 {
            Repr::Uuid(uuid) => *uuid.as_bytes(),
            Repr::Django { .. } => {
                let digest = Sha256::digest(self.text(&mut [0; SESSION_KEY_LEN]).as_bytes());
                let mut out = [0u8; 16];
                out.copy_from_slice(&digest[..16]);
                out
            }
        }
    }

    /// The key's text, without allocating: a UUID written into `buf`, a Django key as kept.
    fn text<'a>(&'a self, buf: &'a mut [u8; SESSION_KEY_LEN]) -> &'a str {
        match &self.0 {
            Repr::Uuid(uuid) => uuid.hyphenated().encode_lower(buf),
            // Only [a-z0-9] is ever stored: ASCII.
            Repr::Django { len, text } => {
                std::str::from_utf8(&text[..usize::from(*len)]).unwrap_or_default()
            }
        }
    }

    /// The name of this session's file in filesession's format: `<key>.json`.
    pub fn file_name(&self) -> String {
        format!("{self}.json")
    }

    /// The name of this session's file in Django's layout: `<prefix><key>`, the prefix
    /// being `SESSION_COOKIE_NAME` (Django's `SessionStore._get_storage_path` and
    /// `_key_to_file`).
    pub fn django_file_name(&self, prefix: &str) -> String {
        format!("{prefix}{self}")
    }
}

/// How many characters of a key logs and error messages show: a key is a bearer
/// credential, so it is never printed whole (like git's short hashes, enough to tell keys
/// apart when reading a log).
pub const SHOWN_KEY_CHARS: usize = 8;

impl SessionKey {
    /// The key as logs and error messages show it: its first [`SHOWN_KEY_CHARS`] characters
    /// and `…` (`67e55044…`).
    pub fn short(&self) -> String {
        let mut buf = [0; SESSION_KEY_LEN];
        let text = self.text(&mut buf);
        format!("{}…", &text[..SHOWN_KEY_CHARS])
    }
}

/// A directory entry's name as logs show it: a session file's key shortened
/// (`67e55044….json`); any other name as it is.
pub(crate) fn shown_name(name: &str) -> String {
    match name.strip_suffix(".json").and_then(SessionKey::parse) {
        Some(key) => format!("{}.json", key.short()),
        None => name.to_owned(),
    }
}

/// A directory entry's name in Django's layout as logs show it: `<prefix><key>` with the
/// key shortened (`sessionidq2u7ep5m…`); any other name that starts with the prefix (Django's
/// own temp files, `<prefix><key>_out_<random>`, carry a key) cut 8 characters after it;
/// other names as [`shown_name`] shows them.
pub(crate) fn shown_django_name(name: &str, prefix: &str) -> String {
    match name.strip_prefix(prefix) {
        Some(rest) => match SessionKey::parse_django(rest) {
            Some(key) => format!("{prefix}{}", key.short()),
            None if rest.len() > SHOWN_KEY_CHARS => {
                let cut = rest
                    .char_indices()
                    .nth(SHOWN_KEY_CHARS)
                    .map_or(rest.len(), |(i, _)| i);
                format!("{prefix}{}…", &rest[..cut])
            }
            None => name.to_owned(),
        },
        None => shown_name(name),
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text(&mut [0; SESSION_KEY_LEN]))
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({})", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";

    #[test]
    fn logs_show_a_key_shortened() {
        let key = SessionKey::parse(GOOD).expect("canonical key parses");
        assert_eq!(key.short(), "67e55044…");
        assert_eq!(format!("{key:?}"), "SessionKey(67e55044…)");
        assert_eq!(shown_name(&key.file_name()), "67e55044….json");
        assert_eq!(shown_name(".tmp-abc"), ".tmp-abc");
    }

    #[test]
    fn canonical_v4_key_round_trips() {
        let key = SessionKey::parse(GOOD).expect("canonical key parses");
        assert_eq!(key.to_string(), GOOD);
        assert_eq!(key.file_name(), format!("{GOOD}.json"));
    }

    #[test]
    fn generated_keys_are_canonical_and_distinct() {
        let a = SessionKey::generate();
        let b = SessionKey::generate();
        assert_ne!(a, b);
        for key in [a, b] {
            let text = key.to_string();
            assert_eq!(text.len(), SESSION_KEY_LEN);
            assert_eq!(SessionKey::parse(&text), Some(key));
        }
    }

    #[test]
    fn every_non_canonical_form_means_no_session() {
        let hostile = [
            String::new(),
            GOOD.to_uppercase(),
            "67E55044-10b1-426f-9247-bb680e5fe0c8".to_string(),
            format!("{{{GOOD}}}"),
            format!("urn:uuid:{GOOD}"),
            GOOD.replace('-', ""),
            format!("{GOOD}0"),
            format!(" {GOOD}"),
            format!("{GOOD}\n"),
            "67e55044-10b1-426f-9247-bb680e5fe0c".to_string(),
            "67e5504410b1-426f-9247-bb680e5fe0c8-".to_string(),
            "../../../../../../../../etc/passwd".to_string(),
            "67e55044-10b1-426f-9247-bb680e5f/../".to_string(),
            "67e55044-10b1-426f-9247-bb680e5f\\..\\".to_string(),
            "67e55044-10b1-426f-9247-bb680e5fe0\0\0".to_string(),
            "67e55044-10b1-426f-9247-bb680e5fé0c".to_string(),
            "..".to_string(),
            "/".to_string(),
            // nil UUID, version 1, and a non-RFC-4122 variant
            "00000000-0000-0000-0000-000000000000".to_string(),
            "67e55044-10b1-126f-9247-bb680e5fe0c8".to_string(),
            "67e55044-10b1-426f-c247-bb680e5fe0c8".to_string(),
            "g7e55044-10b1-426f-9247-bb680e5fe0c8".to_string(),
        ];
        for text in &hostile {
            assert_eq!(SessionKey::parse(text), None, "{text:?} must be rejected");
        }
    }

    #[test]
    fn django_keys_are_32_of_lowercase_and_digits_and_distinct() {
        let keys: Vec<SessionKey> = (0..200).map(|_| SessionKey::generate_django()).collect();
        for key in &keys {
            let text = key.to_string();
            assert_eq!(text.len(), DJANGO_KEY_LEN);
            assert!(text.bytes().all(|b| DJANGO_ALPHABET.contains(&b)), "{text}");
            assert_eq!(SessionKey::parse_django(&text), Some(*key));
            assert!(key.is_django());
            assert_eq!(SessionKey::parse(&text), None, "a Django key is not a UUID");
        }
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
        // Every character of the alphabet turns up (a uniform draw over 6400 characters).
        let seen: std::collections::HashSet<u8> = keys
            .iter()
            .flat_map(|k| k.to_string().into_bytes())
            .collect();
        assert_eq!(seen.len(), 36);
    }

    #[test]
    fn a_django_key_loads_what_django_loads_and_nothing_that_names_another_file() {
        for good in [
            "abcdefgh",
            "q2u7ep5ma0s2oa5tq1krtb3z86yg0h5n",
            &"a".repeat(40),
        ] {
            let key = SessionKey::parse_django(good).expect("Django would load it");
            assert_eq!(key.to_string(), good);
            assert_eq!(
                key.django_file_name("sessionid"),
                format!("sessionid{good}")
            );
        }
        let hostile = [
            "",
            "abcdefg",
            &"a".repeat(41),
            "../../etc/passwd",
            "abcdefgh/",
            "ABCDEFGH",
            "abcdefgh\0",
            "abcd efgh",
            "abcdéfgh",
            GOOD,
        ];
        for text in hostile {
            assert_eq!(
                SessionKey::parse_django(text),
                None,
                "{text:?} must be rejected"
            );
        }
        let key = SessionKey::parse_django("q2u7ep5ma0s2oa5tq1krtb3z86yg0h5n").expect("valid");
        assert_eq!(key.short(), "q2u7ep5m…");
        assert_eq!(format!("{key:?}"), "SessionKey(q2u7ep5m…)");
        assert_ne!(key.as_bytes(), SessionKey::generate_django().as_bytes());
        let name = key.django_file_name("sessionid");
        assert_eq!(shown_django_name(&name, "sessionid"), "sessionidq2u7ep5m…");
        assert_eq!(
            shown_django_name(&format!("{name}_out_abcd1234"), "sessionid"),
            "sessionidq2u7ep5m…"
        );
        assert_eq!(shown_django_name("sessionidé", "sessionid"), "sessionidé");
        assert_eq!(shown_django_name(".tmp-abc", "sessionid"), ".tmp-abc");
    }
}
