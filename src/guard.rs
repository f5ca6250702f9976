//! What Django checks before a view runs, besides sessions: the `Host` against
//! `ALLOWED_HOSTS` (`HttpRequest.get_host()`), and the origin of every unsafe request
//! (`CsrfViewMiddleware`'s `Origin` check, its `Referer` check for HTTPS, and for the JSON
//! API, which has no token, the browser's `Sec-Fetch-Site`). The token check that follows
//! for forms is the app's.

use crate::config::Settings;
use crate::http::{Method, Request};

/// Why a request is refused: the status and the message.
pub(crate) type Refusal = (u16, String);

/// Checks a request's `Host` and, for an unsafe method, its origin, in the order of
/// Django 5.2's `CsrfViewMiddleware.process_view`: an `Origin` header, when present, must be
/// the request's own origin (`https://` when [`is_secure`]) or match `CSRF_TRUSTED_ORIGINS`;
/// without one, an HTTPS request's `Referer` must be of the same host or a trusted origin's.
///
/// # Errors
/// 400 for a `Host` not in `allowed_hosts` (Django's `DisallowedHost`); 403 with Django's
/// reason for a cross-origin unsafe request.
pub(crate) fn check(request: &Request, settings: &Settings) -> Result<(), Refusal> {
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
    if !settings
        .allowed_hosts
        .iter()
        .any(|p| host_matches(&domain, p))
    {
        return Err((
            400,
            format!(
                "Host {domain:?} is not allowed: add it to ALLOWED_HOSTS (now {}).",
                settings.allowed_hosts.join(",")
            ),
        ));
    }
    // RFC 9110's safe methods, as Django's CsrfViewMiddleware.
    let safe = matches!(
        request.method(),
        Method::Get | Method::Head | Method::Options
    ) || request.method_token() == "TRACE";
    if safe {
        return Ok(());
    }
    let path = request.path();
    let api = path == "/api" || path.starts_with("/api/");
    let refused = |reason: String| {
        let message = if api {
            reason
        } else {
            // Django's 403 page says this first.
            format!("CSRF verification failed. Request aborted.\n\n{reason}")
        };
        Err((403, message))
    };
    let trusted = &settings.csrf_trusted_origins;
    let secure = is_secure(request, settings);
    if let Some(origin) = request.header("origin") {
        let own = format!("{}://{host}", if secure { "https" } else { "http" });
        if origin.eq_ignore_ascii_case(&own) || trusted.iter().any(|t| origin_matches(origin, t)) {
            return Ok(());
        }
        return refused(format!(
            "Origin checking failed - {origin} does not match any trusted origins. \
             (This request's own origin is {own}; others go in CSRF_TRUSTED_ORIGINS.)"
        ));
    }
    if api {
        // Scripts (curl) send no Origin and no Referer: only a browser's word refuses.
        return match request.header("sec-fetch-site") {
            Some(site)
                if site.eq_ignore_ascii_case("cross-site")
                    || site.eq_ignore_ascii_case("same-site") =>
            {
                refused(format!(
                    "A {site} request to the API is refused (Sec-Fetch-Site)."
                ))
            }
            _ => Ok(()),
        };
    }
    if secure && let Err(reason) = referer_verified(request, host, trusted) {
        return refused(reason);
    }
    Ok(())
}

/// Django's `request.is_secure()` behind a proxy: the `SECURE_PROXY_SSL_HEADER` header's
/// first comma-separated value is the setting's value. Without the setting, every request
/// is plain HTTP (this server speaks no TLS).
pub(crate) fn is_secure(request: &Request, settings: &Settings) -> bool {
    settings
        .secure_proxy_ssl_header
        .as_ref()
        .and_then(|(name, value)| {
            let sent = request.header(name)?;
            let first = sent.split(',').next().unwrap_or("").trim();
            Some(first == value)
        })
        .unwrap_or(false)
}

/// Django's `CsrfViewMiddleware._check_referer`, for an HTTPS request without `Origin`:
/// `Err` is Django's reason.
fn referer_verified(request: &Request, host: &str, trusted: &[String]) -> Result<(), String> {
    let Some(referer) = request.header("referer") else {
        return Err("Referer checking failed - no Referer.".into());
    };
    let malformed = || "Referer checking failed - Referer is malformed.".to_owned();
    let parsed = url::Url::parse(referer).map_err(|_| malformed())?;
    let Some(referer_host) = parsed.host_str() else {
        return Err(malformed());
    };
    if parsed.scheme() != "https" {
        return Err("Referer checking failed - Referer is insecure while host is secure.".into());
    }
    let netloc = match parsed.port() {
        Some(port) => format!("{referer_host}:{port}"),
        None => referer_host.to_owned(),
    }
    .to_ascii_lowercase();
    // A trusted origin's host (`https://*.example.com` gives `.example.com`), or this
    // request's own Host, port included.
    let trusted_host = trusted.iter().any(|t| {
        t.split_once("://")
            .is_some_and(|(_, netloc_t)| host_matches(&netloc, netloc_t.trim_start_matches('*')))
    });
    if trusted_host || netloc == host.to_ascii_lowercase() {
        return Ok(());
    }
    Err(format!(
        "Referer checking failed - {referer} does not match any trusted origins."
    ))
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

    fn settings(hosts: &[String], trusted: &[String]) -> Settings {
        Settings {
            allowed_hosts: hosts.to_vec(),
            csrf_trusted_origins: trusted.to_vec(),
            ..Settings::default()
        }
    }

    /// `check` with these hosts and trusted origins.
    fn check(r: &Request, hosts: &[String], trusted: &[String]) -> Result<(), Refusal> {
        super::check(r, &settings(hosts, trusted))
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

    /// A form POST from `headers` (Host localhost:8000), checked with `https://*.example.com`
    /// trusted and, if `proxy`, `SECURE_PROXY_SSL_HEADER=X-Forwarded-Proto,https`.
    fn form_post(headers: &[(&str, &str)], proxy: bool) -> Result<(), Refusal> {
        let mut all = vec![("Host", "localhost:8000")];
        all.extend_from_slice(headers);
        let mut settings = settings(&defaults(), &["https://*.example.com".into()]);
        if proxy {
            settings.secure_proxy_ssl_header = Some(("X-Forwarded-Proto".into(), "https".into()));
        }
        super::check(&request(Method::Post, "/form/set", &all), &settings)
    }

    #[test]
    fn forms_check_origin_as_django_5_2_before_their_token() {
        assert_eq!(
            form_post(&[], false),
            Ok(()),
            "no Origin: the token decides"
        );
        assert_eq!(
            form_post(&[("Origin", "http://localhost:8000")], false),
            Ok(())
        );
        assert_eq!(
            form_post(&[("Origin", "https://app.example.com")], false),
            Ok(())
        );
        let (status, message) = form_post(&[("Origin", "http://evil.example")], false).unwrap_err();
        assert_eq!(status, 403);
        assert!(
            message.starts_with(
                "CSRF verification failed. Request aborted.\n\nOrigin checking failed - \
                 http://evil.example does not match any trusted origins."
            ),
            "{message}"
        );
        for foreign in ["null", "https://localhost:8000", "http://localhost:8001"] {
            assert_eq!(
                form_post(&[("Origin", foreign)], false).map_err(|e| e.0),
                Err(403)
            );
        }
    }

    #[test]
    fn behind_a_tls_proxy_the_own_origin_is_https_and_the_referer_is_checked() {
        let secure = [("X-Forwarded-Proto", "https")];
        let with = |extra: &[(&str, &str)]| {
            let mut h = secure.to_vec();
            h.extend_from_slice(extra);
            form_post(&h, true).map_err(|e| e.1)
        };
        assert_eq!(with(&[("Origin", "https://localhost:8000")]), Ok(()));
        assert!(with(&[("Origin", "http://localhost:8000")]).is_err());
        // Without Origin: Django's Referer check.
        let reason =
            |r: Result<(), String>| r.unwrap_err().split("\n\n").nth(1).unwrap().to_owned();
        assert_eq!(reason(with(&[])), "Referer checking failed - no Referer.");
        assert_eq!(
            reason(with(&[("Referer", "not a url")])),
            "Referer checking failed - Referer is malformed."
        );
        assert_eq!(
            reason(with(&[("Referer", "http://localhost:8000/")])),
            "Referer checking failed - Referer is insecure while host is secure."
        );
        assert_eq!(
            reason(with(&[("Referer", "https://evil.example/x")])),
            "Referer checking failed - https://evil.example/x does not match any trusted origins."
        );
        assert_eq!(with(&[("Referer", "https://localhost:8000/")]), Ok(()));
        assert_eq!(with(&[("Referer", "https://app.example.com/")]), Ok(()));
        // The header without the setting proves nothing: plain HTTP, no Referer check.
        assert_eq!(form_post(&secure, false), Ok(()));
        assert!(form_post(&[("Origin", "https://localhost:8000")], false).is_err());
        // Its first value counts, as Django's.
        assert_eq!(
            form_post(
                &[
                    ("X-Forwarded-Proto", "https, http"),
                    ("Origin", "https://localhost:8000")
                ],
                true
            ),
            Ok(())
        );
    }
}
