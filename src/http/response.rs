//! An HTTP response built by a handler; the middleware adds the session's headers.

use std::fmt;

use serde_json::{Value, json};

/// An HTTP response: status, headers and body.
///
/// Header values never carry CR, LF or NUL: they are removed on the way in, so no handler
/// can split a response by echoing request bytes.
///
/// ```
/// use filesession::Response;
///
/// let r = Response::text(200, "session is set").with_header("X-Demo", "a\r\nSet-Cookie: x=y");
/// assert_eq!(r.status(), 200);
/// assert_eq!(r.header("x-demo"), Some("aSet-Cookie: x=y"));
/// assert_eq!(r.body(), b"session is set");
/// ```
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    extensions: http::Extensions,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

fn clean_value(value: &str) -> String {
    value
        .chars()
        .filter(|c| !matches!(c, '\r' | '\n' | '\0'))
        .collect()
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            extensions: http::Extensions::new(),
        }
    }

    /// `text/plain; charset=utf-8`.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response::new(status)
            .with_header("Content-Type", "text/plain; charset=utf-8")
            .with_body(body.into().into_bytes())
    }

    /// `text/html; charset=utf-8`.
    pub fn html(status: u16, body: impl Into<String>) -> Self {
        Response::new(status)
            .with_header("Content-Type", "text/html; charset=utf-8")
            .with_body(body.into().into_bytes())
    }

    /// `application/json`.
    pub fn json(status: u16, body: &Value) -> Self {
        Response::new(status)
            .with_header("Content-Type", "application/json")
            .with_body(body.to_string().into_bytes())
    }

    /// A redirect to `location` (which must already be safe: see `router`).
    pub fn redirect(status: u16, location: &str) -> Self {
        Response::text(status, "").with_header("Location", location)
    }

    /// An error answer: JSON `{"error": message}` under `/api/`, plain text elsewhere.
    pub fn error(path: &str, status: u16, message: &str) -> Self {
        if path == "/api" || path.starts_with("/api/") {
            Response::json(status, &json!({ "error": message }))
        } else {
            Response::text(status, format!("{message}\n"))
        }
    }

    /// Adds a header. CR, LF and NUL are removed from the value; a name that is not an HTTP
    /// token is dropped.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.add_header(name, value);
        self
    }

    /// Adds a header in place (see [`with_header`](Response::with_header)).
    pub fn add_header(&mut self, name: &str, value: &str) {
        if is_token(name) {
            self.headers.push((name.to_owned(), clean_value(value)));
        } else {
            log::warn!("dropped a response header with an invalid name {name:?}");
        }
    }

    /// Replaces every header of that name with one value.
    pub fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.add_header(name, value);
    }

    /// Sets the body.
    pub fn with_body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// Replaces the body in place.
    pub fn set_body(&mut self, body: Vec<u8>) {
        self.body = body;
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All headers, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Typed values carried along with the response, for layers above this one (the
    /// session middleware keeps a renderer here: `Response::json_after_save`).
    pub fn extensions(&self) -> &http::Extensions {
        &self.extensions
    }

    /// The extensions, to add or take values.
    pub fn extensions_mut(&mut self) -> &mut http::Extensions {
        &mut self.extensions
    }

    /// Headers and body, for the layer that writes the response.
    pub(crate) fn into_parts(self) -> (Vec<(String, String)>, Vec<u8>) {
        (self.headers, self.body)
    }
}

/// The reason phrase of a status code.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}
