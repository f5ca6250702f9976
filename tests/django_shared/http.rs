//! How tests/django_shared.rs speaks to the two servers: raw HTTP, one browser carrying the
//! session cookie between them, and what each side's views answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{COOKIE, Django, Ours};

/// An answer: status, headers, body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `Set-Cookie` of the session cookie, if any.
    pub fn session_cookie(&self) -> Option<SetCookie> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| SetCookie::parse(v))
            .find(|c| c.name == COOKIE)
    }

    /// The body as JSON (numbers as written: serde_json's arbitrary_precision).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn show(&self) -> String {
        format!("{} {}", self.status, String::from_utf8_lossy(&self.body))
    }
}

/// A `Set-Cookie` header: name, value, `Max-Age`.
#[derive(Debug, Clone)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    pub max_age: Option<i64>,
}

impl SetCookie {
    fn parse(line: &str) -> SetCookie {
        let mut parts = line.split(';');
        let pair = parts.next().unwrap_or_default().trim();
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        let max_age = parts.find_map(|a| {
            let (n, v) = a.split_once('=')?;
            n.trim()
                .eq_ignore_ascii_case("max-age")
                .then(|| v.trim().parse().ok())?
        });
        SetCookie {
            name: name.trim().to_owned(),
            value: value.to_owned(),
            max_age,
        }
    }

    /// A deletion: `Max-Age=0` (both sides send it with an empty value).
    pub fn deletes(&self) -> bool {
        self.max_age == Some(0)
    }
}

/// One request on its own connection (`Connection: close`), read to the end.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    json: Option<&str>,
) -> Result<Reply, String> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(value) = cookie {
        head.push_str(&format!("Cookie: {COOKIE}={value}\r\n"));
    }
    match json {
        Some(body) => head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None if method == "POST" => head.push_str("Content-Length: 0\r\n\r\n"),
        None => head.push_str("\r\n"),
    }
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw)
        && raw.is_empty()
    {
        return Err(format!("read from {addr}: {e}"));
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no response head: {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// One browser: the session cookie it holds, sent to both servers (same name, both on
/// 127.0.0.1: a browser sends a host's cookies to every port), updated by every answer.
#[derive(Debug, Default, Clone)]
pub struct Browser {
    pub cookie: Option<String>,
}

impl Browser {
    /// Sends a request with the cookie held and keeps what the answer sets.
    pub fn send(
        &mut self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        json: Option<&str>,
    ) -> Reply {
        let reply = send(addr, method, path, self.cookie.as_deref(), json)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if let Some(c) = reply.session_cookie() {
            self.cookie = if c.deletes() { None } else { Some(c.value) };
        }
        reply
    }

    pub fn key(&self) -> String {
        self.cookie
            .clone()
            .expect("the browser holds a session cookie")
    }
}

// ---------------------------------------------------------------------------------------
// What each side answers
// ---------------------------------------------------------------------------------------

/// A 200 answer's JSON, or a panic naming the request and what came back.
fn ok(what: &str, reply: &Reply) -> Value {
    assert_eq!(reply.status, 200, "{what}: {}", reply.show());
    reply.json()
}

impl Django {
    /// `GET /session`: `{"session": {...}, "session_key", "user"}`.
    pub fn session(&self, b: &mut Browser) -> Value {
        ok(
            "Django GET /session",
            &b.send(self.addr, "GET", "/session", None),
        )
    }

    /// The session's data alone.
    pub fn data(&self, b: &mut Browser) -> Value {
        self.session(b)["session"].clone()
    }

    pub fn post(&self, b: &mut Browser, path: &str, json: Option<&str>) -> Reply {
        let reply = b.send(self.addr, "POST", path, json);
        assert_eq!(reply.status, 200, "Django POST {path}: {}", reply.show());
        reply
    }

    /// `GET /whoami`: the user's id, or `Value::Null` for anonymous.
    pub fn whoami(&self, b: &mut Browser) -> Value {
        ok(
            "Django GET /whoami",
            &b.send(self.addr, "GET", "/whoami", None),
        )["user"]
            .clone()
    }
}

impl Ours {
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// `GET /api/session`'s `data`.
    pub fn data(&self, b: &mut Browser) -> Value {
        ok(
            "filesession GET /api/session",
            &b.send(self.addr(), "GET", "/api/session", None),
        )["data"]
            .clone()
    }

    pub fn post(&self, b: &mut Browser, path: &str, json: Option<&str>) -> Reply {
        let reply = b.send(self.addr(), "POST", path, json);
        assert_eq!(
            reply.status,
            200,
            "filesession POST {path}: {}",
            reply.show()
        );
        reply
    }
}

/// The data without `_session_expiry` (where each side keeps the expiry rule may differ).
pub fn without_expiry(data: &Value) -> Value {
    let mut data = data.clone();
    if let Some(map) = data.as_object_mut() {
        map.shift_remove("_session_expiry");
    }
    data
}

/// `{}`.
pub fn empty() -> Value {
    Value::Object(serde_json::Map::new())
}
