//! CSRF protection as Django's default: a `csrftoken` cookie and a hidden form field that
//! must match (double submit), compared in constant time.

use filesession::{Request, SessionKey};

/// The cookie's name, as Django.
pub(crate) const CSRF_COOKIE: &str = "csrftoken";
/// The form field's name, as Django.
pub(crate) const CSRF_FIELD: &str = "csrfmiddlewaretoken";
/// A year, as Django's `CSRF_COOKIE_AGE`.
const CSRF_COOKIE_AGE: u64 = 31_449_600;
const TOKEN_LEN: usize = 64;

/// A token: 64 lowercase hex digits from the OS CSPRNG (two random UUIDs' 244 bits).
fn new_token() -> String {
    let hex = |k: SessionKey| k.to_string().replace('-', "");
    format!(
        "{}{}",
        hex(SessionKey::generate()),
        hex(SessionKey::generate())
    )
}

fn is_token(text: &str) -> bool {
    text.len() == TOKEN_LEN && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The request's `csrftoken` cookie, if it holds a well-formed token.
fn cookie_token(request: &Request) -> Option<String> {
    request.cookie(CSRF_COOKIE).filter(|v| is_token(v))
}

/// The token for a page's forms, and the `Set-Cookie` to send when the request had none.
pub(crate) fn token_for_page(request: &Request) -> (String, Option<String>) {
    match cookie_token(request) {
        Some(token) => (token, None),
        None => {
            let token = new_token();
            let cookie =
                format!("{CSRF_COOKIE}={token}; Max-Age={CSRF_COOKIE_AGE}; Path=/; SameSite=Lax");
            (token, Some(cookie))
        }
    }
}

/// Equal in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a form POST: the cookie and the field must both be present and equal.
/// `Err` is Django's reason, for the 403 page (`page::forbidden`).
pub(crate) fn verify(request: &Request, field: Option<&str>) -> Result<(), &'static str> {
    let reason = match (cookie_token(request), field) {
        (None, _) => "CSRF cookie not set.",
        (Some(_), None) => "CSRF token missing.",
        (Some(cookie), Some(field)) => {
            if constant_time_eq(cookie.as_bytes(), field.as_bytes()) {
                return Ok(());
            }
            "CSRF token incorrect."
        }
    };
    Err(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use filesession::Method;

    fn post(cookie: Option<&str>) -> Request {
        let header = cookie.map(|c| format!("{CSRF_COOKIE}={c}"));
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("Cookie", h.as_str())).collect();
        Request::new(Method::Post, "/form/set", &headers, b"")
    }

    #[test]
    fn a_page_without_the_cookie_gets_a_fresh_token_and_cookie() {
        let (token, cookie) = token_for_page(&post(None));
        assert!(is_token(&token));
        let cookie = cookie.unwrap();
        assert!(cookie.starts_with(&format!("csrftoken={token};")));
        assert!(cookie.contains("SameSite=Lax"));
        let (again, none) = token_for_page(&post(Some(&token)));
        assert_eq!((again, none), (token, None));
    }

    #[test]
    fn only_a_matching_pair_passes() {
        let token = new_token();
        assert!(verify(&post(Some(&token)), Some(&token)).is_ok());
        assert!(verify(&post(None), Some(&token)).is_err());
        assert!(verify(&post(Some(&token)), None).is_err());
        assert!(verify(&post(Some(&token)), Some(&new_token())).is_err());
        assert!(
            verify(&post(Some("short")), Some("short")).is_err(),
            "malformed cookie"
        );
        assert_eq!(
            verify(&post(Some(&token)), Some("x")),
            Err("CSRF token incorrect.")
        );
    }

    #[test]
    fn constant_time_eq_compares_whole_inputs() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
