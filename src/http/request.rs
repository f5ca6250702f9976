//! An HTTP request, complete with its body, as the handler thread sees it.

use std::collections::HashMap;
use std::net::SocketAddr;

use percent_encoding::percent_decode_str;

/// An HTTP method. Anything else is answered 405 by the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET
    Get,
    /// HEAD: answered as GET without the body.
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
    /// Any other token.
    Other,
}

impl Method {
    /// Parses a method token, case-sensitively as RFC 9110 says.
    pub fn parse(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    /// The method's token.
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }
}

/// A complete request: head and body.
#[derive(Debug, Clone)]
pub struct Request {
    pub(crate) method: Method,
    pub(crate) method_token: String,
    pub(crate) target: String,
    pub(crate) version: u8,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) body: Vec<u8>,
    pub(crate) remote: Option<SocketAddr>,
    pub(crate) params: HashMap<String, String>,
}

impl Request {
    /// A request built by hand, for tests and other front ends: `target` is the request
    /// target (`/path?query`), `headers` are name/value pairs.
    pub fn new(method: Method, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Self {
        Request {
            method,
            method_token: method.as_str().to_owned(),
            target: target.to_owned(),
            version: 1,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
                .collect(),
            body: body.to_vec(),
            remote: None,
            params: HashMap::new(),
        }
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The method's token as the client sent it (`BREW` where [`method`](Request::method)
    /// says [`Method::Other`]).
    pub fn method_token(&self) -> &str {
        &self.method_token
    }

    /// The request target as sent: `/path?query`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The path part of the target, still percent-encoded.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The query string after `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// `HTTP/1.0` or `HTTP/1.1`.
    pub fn http_version(&self) -> &'static str {
        if self.version == 0 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        }
    }

    /// The first header named `name` (case-insensitive), if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Every header named `name` that is valid UTF-8, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The value of the cookie `name` from the `Cookie` headers, quotes trimmed; with
    /// several of that name the last one counts, as in Django. Malformed pairs are skipped.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers_named("cookie")
            .flat_map(cookie::Cookie::split_parse)
            .filter_map(Result::ok)
            .filter(|c| c.name() == name)
            .map(|c| c.value_trimmed().to_owned())
            .last()
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The client's address, when the request came over TCP.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote
    }

    /// A path parameter captured by the route pattern (`{name}`), percent-decoded.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The media type of the body (`Content-Type` without parameters), lowercase.
    pub fn content_type(&self) -> Option<String> {
        self.header("content-type").map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
    }

    /// The query's parameters, percent-decoded (`+` is a space).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect()
    }
}

/// Percent-decodes a path or one of its segments; `None` if it is not UTF-8 once decoded.
pub(crate) fn decode_segment(segment: &str) -> Option<String> {
    percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}
