//! Method + path -> handler, with Django's APPEND_SLASH.

use std::collections::HashMap;

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::http::{Method, Request, Response};
use crate::session::Session;

/// A handler: gets the request and its session, returns the response. The middleware saves
/// the session and sets the cookie afterwards.
pub type Handler = fn(&Request, &mut Session) -> Response;

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Clone)]
struct Route {
    method: Method,
    segments: Vec<Segment>,
    handler: Handler,
}

/// Routes requests by method and path. Patterns are paths whose segments may be `{name}`
/// captures, e.g. `/api/session/{name}`; captures are percent-decoded and read with
/// [`Request::param`]. `HEAD` is served by the `GET` route.
///
/// ```
/// use filesession::{Method, Request, Response, Router, Session};
///
/// fn hello(_: &Request, _: &mut Session) -> Response {
///     Response::text(200, "hello")
/// }
/// let router = Router::new().route(Method::Get, "/hello/", hello);
/// assert!(router.allowed("/hello/").contains(&Method::Get));
/// ```
#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

/// Where a request goes.
pub enum Routed {
    /// To this handler, with these captures.
    Found(Handler, HashMap<String, String>),
    /// The path exists for other methods (405 with `Allow`).
    MethodNotAllowed(Vec<Method>),
    /// The path exists only with a trailing slash: a 301 to this location.
    AppendSlash(String),
    /// Nothing here (404).
    NotFound,
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.strip_prefix('/').unwrap_or(path).split('/')
}

impl Router {
    /// A router with no routes.
    pub fn new() -> Self {
        Router::default()
    }

    /// Adds a route.
    pub fn route(mut self, method: Method, pattern: &str, handler: Handler) -> Self {
        let segments = split(pattern)
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => Segment::Param(name.to_owned()),
                    None => Segment::Literal(s.to_owned()),
                },
            )
            .collect();
        self.routes.push(Route {
            method,
            segments,
            handler,
        });
        self
    }

    fn matches(route: &Route, path: &str) -> Option<HashMap<String, String>> {
        let mut params = HashMap::new();
        let mut parts = split(path);
        for segment in &route.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(text) if text == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => {
                    if part.is_empty() {
                        return None;
                    }
                    params.insert(name.clone(), part.to_owned());
                }
            }
        }
        parts.next().is_none().then_some(params)
    }

    /// The methods served at `path` (percent-decoded already: see [`resolve`](Router::resolve)).
    pub fn allowed(&self, path: &str) -> Vec<Method> {
        let mut methods: Vec<Method> = self
            .routes
            .iter()
            .filter(|r| Self::matches(r, path).is_some())
            .map(|r| r.method)
            .collect();
        if methods.contains(&Method::Get) {
            methods.push(Method::Head);
        }
        methods.dedup();
        methods
    }

    /// Finds where a request goes. `path` is the request's path as sent; routes match it
    /// percent-decoded, as Django resolves `request.path_info` (so `/set%73ession/` is
    /// `/setsession/`, and `/api/session/a%2Fb` has three segments after `/api/`); a path
    /// that is not UTF-8 once decoded is matched as sent.
    pub fn resolve(&self, method: Method, path: &str, query: Option<&str>) -> Routed {
        let decoded = crate::http::decode_segment(path);
        let path = decoded.as_deref().unwrap_or(path);
        let wanted = if method == Method::Head {
            Method::Get
        } else {
            method
        };
        for route in self.routes.iter().filter(|r| r.method == wanted) {
            if let Some(params) = Self::matches(route, path) {
                return Routed::Found(route.handler, params);
            }
        }
        let allowed = self.allowed(path);
        if !allowed.is_empty() {
            return Routed::MethodNotAllowed(allowed);
        }
        if !path.ends_with('/') && !self.allowed(&format!("{path}/")).is_empty() {
            return Routed::AppendSlash(safe_location(&format!("{path}/"), query));
        }
        Routed::NotFound
    }
}

/// What may stand in a Location built from request bytes: everything that is not plain
/// visible ASCII is percent-encoded, and so are `\` (browsers read it as `/`) and the
/// characters that would end the URL.
const LOCATION_UNSAFE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(b'#');

/// In a path, also `%` and `?`: the path given is decoded, and must read back as itself.
const PATH_UNSAFE: &AsciiSet = &LOCATION_UNSAFE.add(b'%').add(b'?');

/// A same-site relative Location for a decoded `path` (as the router matches it) and a
/// request's `query` as sent: unsafe bytes are percent-encoded (in the path also `%` and
/// `?`, as Django's `escape_uri_path`) and a leading `//` (which a browser reads as another
/// host) becomes `/%2F`, as Django's `escape_leading_slashes`.
pub(crate) fn safe_location(path: &str, query: Option<&str>) -> String {
    let mut location: String = utf8_percent_encode(path, PATH_UNSAFE).collect();
    if location.starts_with("//") {
        location.replace_range(..2, "/%2F");
    }
    if let Some(query) = query {
        location.push('?');
        location.extend(utf8_percent_encode(query, LOCATION_UNSAFE));
    }
    location
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(_: &Request, _: &mut Session) -> Response {
        Response::text(200, "ok")
    }

    fn router() -> Router {
        Router::new()
            .route(Method::Get, "/setsession/", ok)
            .route(Method::Get, "/api/session", ok)
            .route(Method::Post, "/api/session", ok)
            .route(Method::Delete, "/api/session/{name}", ok)
    }

    #[test]
    fn routes_by_method_and_path_with_captures() {
        let r = router();
        assert!(matches!(
            r.resolve(Method::Get, "/setsession/", None),
            Routed::Found(..)
        ));
        assert!(matches!(
            r.resolve(Method::Head, "/setsession/", None),
            Routed::Found(..)
        ));
        match r.resolve(Method::Delete, "/api/session/a%20b", None) {
            Routed::Found(_, params) => assert_eq!(params["name"], "a b"),
            _ => panic!("not found"),
        }
        // Decoded first, as Django: an encoded letter is the letter, an encoded slash a slash.
        assert!(matches!(
            r.resolve(Method::Get, "/set%73ession/", None),
            Routed::Found(..)
        ));
        assert!(matches!(
            r.resolve(Method::Delete, "/api/session/a%2Fb", None),
            Routed::NotFound
        ));
        assert!(matches!(
            r.resolve(Method::Delete, "/api/session/", None),
            Routed::NotFound
        ));
        assert!(matches!(
            r.resolve(Method::Get, "/nope", None),
            Routed::NotFound
        ));
    }

    #[test]
    fn wrong_method_lists_the_allowed_ones() {
        match router().resolve(Method::Put, "/api/session", None) {
            Routed::MethodNotAllowed(m) => {
                assert_eq!(m, vec![Method::Get, Method::Post, Method::Head])
            }
            _ => panic!("expected 405"),
        }
    }

    #[test]
    fn append_slash_keeps_the_query_and_escapes_hostile_bytes() {
        match router().resolve(Method::Get, "/setsession", Some("a=1&b=%20")) {
            Routed::AppendSlash(loc) => assert_eq!(loc, "/setsession/?a=1&b=%20"),
            _ => panic!("expected a redirect"),
        }
        assert_eq!(safe_location("//evil.example/", None), "/%2Fevil.example/");
        assert_eq!(safe_location("/\\evil.example/", None), "/%5Cevil.example/");
        assert_eq!(
            safe_location("/a b\"<>/", Some("q=\\x#")),
            "/a%20b%22%3C%3E/?q=%5Cx%23"
        );
        assert_eq!(safe_location("/é/", None), "/%C3%A9/");
        // A decoded path reads back as itself.
        assert_eq!(safe_location("/a?b%/", Some("q=%20")), "/a%3Fb%25/?q=%20");
    }

    mod locations {
        use super::super::safe_location;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            /// Any path and query (hostile bytes, `//`, backslashes, controls) gives a
            /// Location that stays on this site and cannot split a header.
            #[test]
            fn every_redirect_location_is_safe(
                path in prop_oneof![
                    any::<String>(),
                    any::<String>().prop_map(|s| format!("//{s}")),
                    "[/\\\\ .%a-z\t\r\n]{0,12}",
                ],
                query in proptest::option::of(any::<String>()),
            ) {
                let location = safe_location(&path, query.as_deref());
                prop_assert!(!location.starts_with("//"), "{:?}", location);
                prop_assert!(
                    location.is_ascii()
                        && !location.contains(['\\', '\r', '\n', ' ', '\0'])
                        && !location.bytes().any(|b| b.is_ascii_control()),
                    "unsafe Location {:?}",
                    location
                );
            }
        }
    }
}
