//! What Django checks before a view runs, besides sessions: the `Host` against
//! `ALLOWED_HOSTS` (`HttpRequest.get_host()`), and the origin of an unsafe request to the
//! JSON API (`CsrfViewMiddleware`'s origin check, and the browser's `Sec-Fetch-Site`).

use crate::http::{Method, Request};

/// Why a request is refused: the status and the message.
pub(crate) type Refusal = (u16, String);

/// Checks a request's `Host` and, for an unsafe method under `/api/`, its origin.
///
/// # Errors
/// 400 for a `Host` not in `allowed_hosts` (Django's `DisallowedHost`); 403 for a
/// cross-origin unsafe API request.
pub(crate) fn check(
    request: &Request,
    allowed_hosts: &[String],
    trusted_origins: &[String],
) -> Result<(), Refusal> {
    // No Host (HTTP/1.0, or a request built by hand): Django falls back to the server's
    // own name, which it allows.
    let Some(host) = request.header("host") else {
        return Ok(());
    };
    let Some(domain) = domain_of(host) else {
        return Err((
            400,
            format!(
                "Invalid Host header: {:?}.",
                host.escape_debug().to_string()
            ),
        ));
    };
    if !allowed_hosts.iter().any(|p| host_matches(&domain, p)) {
        return Err((
            400,
            format!(
                "Host {domain:?} is not allowed: add it to ALLOWED_HOSTS (now {}).",
                allowed_hosts.join(",")
            ),
        ));
    }
    // RFC 9110's safe methods, as Django's CsrfViewMiddleware.
    let safe = matches!(
        request.method(),
        Method::Get | Method::Head | Method::Options
    ) || request.method_token() == "TRACE";
    let path = request.path();
    if safe || !(path == "/api" || path.starts_with("/api/")) {
        return Ok(());
    }
    if let Some(origin) = request.header("origin") {
        let own = format!("http://{}", host.to_ascii_lowercase());
        if origin.eq_ignore_ascii_case(&own)
            || trusted_origins.iter().any(|t| origin_matches(origin, t))
        {
            return Ok(());
        }
        return Err((
            403,
            format!(
                "Origin checking failed: {origin:?} does not match any trusted origins \
                 (the request's own is {own:?}; see CSRF_TRUSTED_ORIGINS)."
            ),
        ));
    }
    match request.header("sec-fetch-site") {
        Some(site)
            if site.eq_ignore_ascii_case("cross-site")
                || site.eq_ignore_ascii_case("same-site") =>
        {
            Err((
                403,
                format!("A {site} request to the API is refused (Sec-Fetch-Site)."),
            ))
        }
        _ => Ok(()),
    }
}

/// The domain of a `Host` value, lowercased, without the port or a trailing dot; `None`
/// when it is not a valid host (Django's `split_domain_port` and `host_validation_re`).
fn domain_of(host: &str) -> Option<String> {
    let host = host.to_ascii_lowercase();
    let (domain, port) = if let Some(rest) = host.strip_prefix('[') {
        let end = rest.find(']')?;
        let literal = &rest[..end];
        let valid = !literal.is_empty()
            && literal.contains(':')
            && literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !valid {
            return None;
        }
        (format!("[{literal}]"), &rest[end + 1..])
    } else {
        match host.rfind(':') {
            Some(at) => (host[..at].to_owned(), &host[at..]),
            None => (host.clone(), ""),
        }
    };
    if let Some(port) = port.strip_prefix(':') {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    } else if !port.is_empty() {
        return None;
    }
    if !domain.starts_with('[')
        && (domain.is_empty()
            || !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
    {
        return None;
    }
    Some(
        domain
            .strip_suffix('.')
            .map(str::to_owned)
            .unwrap_or(domain),
    )
}

/// Django's `validate_host` for one pattern (`is_same_domain`).
fn host_matches(domain: &str, pattern: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('.') {
        Some(parent) => domain == parent || domain.ends_with(&pattern),
        None => domain == pattern,
    }
}

/// Whether `origin` is the trusted origin `trusted`: equal, or for `scheme://*.domain` the
/// same scheme and a subdomain of `domain` (Django's `CSRF_TRUSTED_ORIGINS`).
fn origin_matches(origin: &str, trusted: &str) -> bool {
    if origin.eq_ignore_ascii_case(trusted) {
        return true;
    }
    let (Some((scheme, netloc)), Some((t_scheme, t_netloc))) =
        (origin.split_once("://"), trusted.split_once("://"))
    else {
        return false;
    };
    match t_netloc.strip_prefix('*') {
        Some(suffix) if scheme.eq_ignore_ascii_case(t_scheme) => {
            host_matches(&netloc.to_ascii_lowercase(), suffix)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Request {
        Request::new(method, path, headers, b"")
    }

    fn defaults() -> Vec<String> {
        crate::config::DEFAULT_ALLOWED_HOSTS
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn hosts_as_django_validates_them() {
        let allowed = defaults();
        for ok in [
            "localhost",
            "localhost:8000",
            "app.localhost",
            "127.0.0.1:8000",
            "[::1]:8000",
            "LOCALHOST",
            "localhost.",
        ] {
            let r = request(Method::Get, "/", &[("Host", ok)]);
            assert_eq!(check(&r, &allowed, &[]), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example",
            "127.0.0.2",
            "localhost.evil.example",
            "[::2]",
            "a b",
            "localhost:x",
            "[::1",
            "user@localhost",
            "",
        ] {
            let r = request(Method::Get, "/", &[("Host", bad)]);
            assert_eq!(check(&r, &allowed, &[]).map_err(|e| e.0), Err(400), "{bad}");
        }
        let r = request(Method::Get, "/", &[]);
        assert_eq!(check(&r, &allowed, &[]), Ok(()), "no Host");
        let r = request(Method::Get, "/", &[("Host", "anything.example")]);
        assert_eq!(check(&r, &["*".into()], &[]), Ok(()));
        let r = request(Method::Get, "/", &[("Host", "a.example.com")]);
        assert_eq!(check(&r, &[".example.com".into()], &[]), Ok(()));
    }

    #[test]
    fn unsafe_api_requests_from_another_origin_are_refused() {
        let allowed = defaults();
        let post = |headers: &[(&str, &str)]| {
            let mut all = vec![("Host", "localhost:8000")];
            all.extend_from_slice(headers);
            check(
                &request(Method::Post, "/api/session/flush", &all),
                &allowed,
                &["https://*.example.com".into()],
            )
            .map_err(|e| e.0)
        };
        assert_eq!(post(&[]), Ok(()), "a script sends neither header");
        assert_eq!(post(&[("Origin", "http://localhost:8000")]), Ok(()));
        assert_eq!(post(&[("Sec-Fetch-Site", "same-origin")]), Ok(()));
        assert_eq!(post(&[("Sec-Fetch-Site", "none")]), Ok(()));
        assert_eq!(post(&[("Origin", "http://evil.example")]), Err(403));
        assert_eq!(post(&[("Origin", "null")]), Err(403));
        assert_eq!(
            post(&[("Origin", "https://localhost:8000")]),
            Err(403),
            "another scheme"
        );
        assert_eq!(post(&[("Sec-Fetch-Site", "cross-site")]), Err(403));
        assert_eq!(post(&[("Sec-Fetch-Site", "same-site")]), Err(403));
        assert_eq!(
            post(&[
                ("Origin", "https://app.example.com"),
                ("Sec-Fetch-Site", "cross-site")
            ]),
            Ok(()),
            "trusted"
        );
        assert_eq!(
            post(&[("Origin", "http://app.example.com")]),
            Err(403),
            "trusted is https only"
        );
        // Safe methods and paths outside the API are not checked here.
        let get = request(
            Method::Get,
            "/api/session",
            &[("Host", "localhost"), ("Origin", "http://evil.example")],
        );
        assert_eq!(check(&get, &allowed, &[]), Ok(()));
        let form = request(
            Method::Post,
            "/form/set",
            &[("Host", "localhost"), ("Sec-Fetch-Site", "cross-site")],
        );
        assert_eq!(
            check(&form, &allowed, &[]),
            Ok(()),
            "the forms have their token"
        );
    }
}
