//! The session key: a random UUID v4, and the only way to a session file name.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// A session key: a random UUID version 4 in canonical form,
/// e.g. `67e55044-10b1-426f-9247-bb680e5fe0c8`.
///
/// A `SessionKey` exists only in two ways: [`SessionKey::generate`] (16 bytes from the
/// operating system's CSPRNG through `getrandom`) or [`SessionKey::parse`], which accepts the
/// canonical lowercase hyphenated form of a version-4 UUID and nothing else. File names are
/// built from a parsed key only ([`SessionKey::file_name`]), so a cookie value can never
/// reach the file system: path traversal is impossible by construction, not checked for.
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
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey(Uuid);

/// The length of a key's text form: 32 hex digits and 4 hyphens.
pub const SESSION_KEY_LEN: usize = 36;

impl SessionKey {
    /// A new random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        SessionKey(Uuid::new_v4())
    }

    /// Parses the canonical text form of a version-4 UUID: 36 characters, lowercase hex,
    /// hyphens at positions 8, 13, 18 and 23, version nibble 4, RFC 4122 variant.
    ///
    /// Returns `None` for anything else: braced, URN, uppercase, hyphenless, empty, overlong
    /// or non-ASCII text, other UUID versions, and the nil UUID. `None` means "no session".
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
            .then_some(SessionKey(uuid))
    }

    /// The key's 16 bytes (122 of them random).
    pub(crate) fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The name of this session's file: `<key>.json`.
    pub fn file_name(&self) -> String {
        format!("{}.json", self.0.hyphenated())
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
        let text = self.0.hyphenated().to_string();
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

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
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
}
