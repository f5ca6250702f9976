//! One client connection: read requests with limits and deadlines, hand each one whole to
//! the handler thread, write its response. Runs on the connection's own thread, so a slow
//! or hostile client only ever stalls itself.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::io::Errno;
use rustix::net::SendFlags;
use std::time::{Duration, Instant, SystemTime};

use super::request::{Method, Request};
use super::response::{Response, reason};
use crate::expiry::later;
use crate::store::SessionLock;

/// Limits and deadlines of the HTTP layer. Every one is a defence against a client that
/// would otherwise hold a thread or memory forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The largest request head (request line and headers). Default: 32 KiB; more is 431.
    pub max_head_bytes: usize,
    /// The most header fields. Default: 64; more is 431.
    pub max_headers: usize,
    /// The largest body (`DATA_UPLOAD_MAX_MEMORY_SIZE`). Default: 64 KiB; more is 413.
    pub max_body_bytes: usize,
    /// How long a kept-alive connection may sit idle before the next request. Default: 5 s.
    pub idle_timeout: Duration,
    /// How long the whole head may take once its first byte arrived. Default: 10 s; then 408.
    pub head_timeout: Duration,
    /// How long the whole body may take. Default: 10 s; then 408.
    pub body_timeout: Duration,
    /// How long one response write may block on a client that does not read. Default: 10 s.
    pub write_timeout: Duration,
    /// The most open connections; more are answered 503 and closed. Default: 1024.
    pub max_connections: usize,
    /// The most open connections from one client address (hyper layer): a new one beyond
    /// it, or beyond `max_connections`, closes an idle connection of the address holding
    /// the most (an idle one: not inside a handler, e.g. kept alive or still sending its
    /// head), or is answered 503 if none is idle. Default: 256.
    pub max_connections_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 32 * 1024,
            max_headers: 64,
            max_body_bytes: crate::config::DEFAULT_MAX_BODY,
            idle_timeout: Duration::from_secs(5),
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_address: 256,
        }
    }
}

/// How often a blocked read wakes to check its deadline: deadlines are kept to within this.
const READ_TICK: Duration = Duration::from_millis(250);

/// A request handed to the handler thread, with the way back for its response.
pub(crate) struct Job {
    pub request: Request,
    /// What the preflight handed on: the session's lock (`request` locking mode) or the
    /// open file the load may use if it is still current (`merge` mode).
    pub lock: Option<SessionLock>,
    pub reply: Reply,
}

/// How a response gets to its client.
pub(crate) enum Reply {
    /// The connection thread waits for it and writes it (the last request of a connection).
    Wait(SyncSender<Response>),
    /// The handler thread writes it itself, without ever blocking: what the socket does not
    /// take at once waits in the connection's [`Output`] for the connection thread.
    Direct(Arc<Output>, Framing),
}

/// How a response is framed for its request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Framing {
    version: u8,
    keep_alive: bool,
    head_only: bool,
}

/// The most requests of one connection queued for the handler thread at once (pipelining).
const MAX_PIPELINE: usize = 16;

/// The write side of a connection, shared by its connection thread and the handler thread,
/// so that the handler thread can answer a kept-alive request directly (one thread switch
/// fewer per request) and yet never wait on a client: it only ever sends what the socket
/// takes at once; the rest is written by the connection thread, in order.
pub(crate) struct Output {
    stream: TcpStream,
    state: Mutex<OutState>,
    /// Requests handed to the handler thread and not answered yet.
    outstanding: AtomicUsize,
}

#[derive(Default)]
struct OutState {
    pending: Vec<u8>,
    flushing: bool,
    failed: bool,
}

impl Output {
    fn new(stream: TcpStream) -> Self {
        Output {
            stream,
            state: Mutex::new(OutState::default()),
            outstanding: AtomicUsize::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handler thread's write: never blocks.
    pub(crate) fn deliver(&self, response: &Response, framing: Framing) {
        let bytes = serialize_response(response, framing);
        let mut state = self.state();
        if !state.failed {
            if state.pending.is_empty() && !state.flushing {
                let mut sent = 0;
                while sent < bytes.len() {
                    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
                    match rustix::net::send(&self.stream, &bytes[sent..], flags) {
                        Ok(n) => sent += n,
                        Err(Errno::INTR) => {}
                        Err(Errno::AGAIN) => break,
                        Err(_) => {
                            state.failed = true;
                            break;
                        }
                    }
                }
                if !state.failed {
                    state.pending.extend_from_slice(&bytes[sent..]);
                }
            } else {
                state.pending.extend_from_slice(&bytes);
            }
        }
        drop(state);
        self.outstanding.fetch_sub(1, Ordering::SeqCst);
    }

    /// The connection thread writes what waits (blocking, bounded by the write timeout).
    fn flush(&self, stream: &mut TcpStream) -> io::Result<()> {
        loop {
            let bytes = {
                let mut state = self.state();
                if state.failed {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                if state.pending.is_empty() {
                    return Ok(());
                }
                state.flushing = true;
                std::mem::take(&mut state.pending)
            };
            let written = stream.write_all(&bytes);
            let mut state = self.state();
            state.flushing = false;
            if let Err(e) = written {
                state.failed = true;
                return Err(e);
            }
        }
    }

    /// Before the connection thread writes an answer of its own: every earlier answer is
    /// out, so that answers keep the order of their requests.
    fn settle(&self, stream: &mut TcpStream, limit: Duration) -> io::Result<()> {
        let deadline = later(Instant::now(), limit);
        loop {
            self.flush(stream)?;
            if self.outstanding.load(Ordering::SeqCst) == 0 {
                return self.flush(stream);
            }
            if Instant::now() >= deadline {
                return Err(io::ErrorKind::TimedOut.into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Runs on the connection thread before a request is queued: `Err` answers it at once.
pub(crate) type Preflight<'a> =
    &'a (dyn Fn(&Request) -> Result<Option<SessionLock>, Response> + Sync);

/// A request the connection layer answers itself, then closes.
struct Reject {
    status: u16,
    message: &'static str,
    path: String,
}

enum Head {
    Request(Box<Request>, usize),
    Closed,
    Reject(Reject),
}

/// Serves one connection until it closes, errs, times out or the server stops.
/// `in_flight` counts responses handed over but not yet written (for a clean shutdown).
pub(crate) fn serve_connection(
    mut stream: TcpStream,
    jobs: &SyncSender<Job>,
    limits: &Limits,
    in_flight: &AtomicUsize,
    preflight: Preflight<'_>,
) {
    let _ = stream.set_nodelay(true);
    // Reads wake at least every READ_TICK to check their deadline; set once, not per read.
    if stream.set_read_timeout(Some(READ_TICK)).is_err() {
        return;
    }
    if stream
        .set_write_timeout(Some(limits.write_timeout))
        .is_err()
    {
        return;
    }
    let remote = stream.peer_addr().ok();
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let out = Arc::new(Output::new(writer));
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        if out.flush(&mut stream).is_err() {
            return;
        }
        let (mut request, head_len) = match read_head(&mut stream, &mut buf, limits, &out) {
            Head::Request(request, head_len) => (request, head_len),
            Head::Closed => return,
            Head::Reject(reject) => {
                if out.settle(&mut stream, limits.write_timeout).is_ok() {
                    reject_and_close(stream, &reject, None);
                }
                return;
            }
        };
        request.remote = remote;
        let line = request_line(&request);
        if let Err(reject) = read_body(&mut stream, &mut buf, head_len, &mut request, limits, &out)
        {
            if out.settle(&mut stream, limits.write_timeout).is_ok() {
                reject_and_close(stream, &reject, Some(&line));
            }
            return;
        }
        let framing = Framing {
            version: request.version,
            keep_alive: wants_keep_alive(&request),
            head_only: request.method == Method::Head,
        };
        let lock = match preflight(&request) {
            Ok(lock) => lock,
            Err(refused) => {
                log_access(&line, refused.status(), refused.body().len());
                let written = out
                    .settle(&mut stream, limits.write_timeout)
                    .and_then(|()| stream.write_all(&serialize_response(&refused, framing)));
                if written.is_err() || !framing.keep_alive {
                    return;
                }
                continue;
            }
        };
        if framing.keep_alive {
            // Kept alive: the handler thread answers directly; read the next request meanwhile.
            while out.outstanding.load(Ordering::SeqCst) >= MAX_PIPELINE {
                if out.flush(&mut stream).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            out.outstanding.fetch_add(1, Ordering::SeqCst);
            let job = Job {
                request: *request,
                lock,
                reply: Reply::Direct(out.clone(), framing),
            };
            if jobs.send(job).is_err() {
                return; // the server is stopping
            }
            continue;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let job = Job {
            request: *request,
            lock,
            reply: Reply::Wait(tx),
        };
        if jobs.send(job).is_err() {
            return;
        }
        let Ok(response) = rx.recv() else {
            return;
        };
        let written = out
            .settle(&mut stream, limits.write_timeout)
            .and_then(|()| stream.write_all(&serialize_response(&response, framing)));
        in_flight.fetch_sub(1, Ordering::SeqCst);
        if written.is_ok() {
            let _ = stream.flush();
        }
        let _ = stream.shutdown(Shutdown::Both);
        return;
    }
}

/// `GET /path HTTP/1.1`, for the access log.
pub(crate) fn request_line(request: &Request) -> String {
    format!(
        "{} {} {}",
        request.method_token,
        request.target.escape_debug(),
        request.http_version()
    )
}

/// Prints Django runserver's access-log line to stderr:
/// `[26/Nov/2026 11:37:46] "GET /setsession/ HTTP/1.1" 200 14`.
pub(crate) fn log_access(line: &str, status: u16, body_len: usize) {
    let date = http_date(); // "Thu, 26 Nov 2026 11:37:46 GMT"
    let parts: Vec<&str> = date.split(' ').collect();
    let stamp = match parts.as_slice() {
        [_, day, month, year, time, _] => format!("{day}/{month}/{year} {time}"),
        _ => date.clone(),
    };
    let entry = format!("[{stamp}] \"{line}\" {status} {body_len}\n");
    let mut log = ACCESS_LOG.lock().unwrap_or_else(|p| p.into_inner());
    log.extend_from_slice(entry.as_bytes());
    if log.len() >= ACCESS_LOG_BUFFER {
        let _ = io::stderr().lock().write_all(&log);
        log.clear();
    }
}

/// Access-log lines waiting to be written: one write for many lines under load, flushed by
/// [`flush_access_log`] whenever the handler thread has been idle for a moment.
static ACCESS_LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
const ACCESS_LOG_BUFFER: usize = 8 * 1024;

/// Writes out the buffered access-log lines.
pub(crate) fn flush_access_log() {
    let mut log = ACCESS_LOG.lock().unwrap_or_else(|p| p.into_inner());
    if !log.is_empty() {
        let _ = io::stderr().lock().write_all(&log);
        log.clear();
    }
}

/// The current time as an HTTP date, formatted once per second per thread.
fn http_date() -> String {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != second || cache.1.is_empty() {
            *cache = (second, httpdate::fmt_http_date(now));
        }
        cache.1.clone()
    })
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Reads until a whole head is in `buf` and parses it. Waits up to `idle_timeout` for the
/// first byte, then up to `head_timeout` for the rest.
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>, limits: &Limits, out: &Output) -> Head {
    let started = Instant::now();
    let mut head_deadline = (!buf.is_empty()).then(|| later(started, limits.head_timeout));
    let mut scanned = 0;
    let mut chunk = [0u8; 8192];
    loop {
        if has_head_end(buf, &mut scanned) {
            return parse_head(buf, limits);
        }
        if buf.len() > limits.max_head_bytes {
            return Head::Reject(Reject {
                status: 431,
                message: "Request head too large.",
                path: String::new(),
            });
        }
        let deadline = head_deadline.unwrap_or_else(|| later(started, limits.idle_timeout));
        let now = Instant::now();
        if now >= deadline {
            return match head_deadline {
                None => Head::Closed, // an idle keep-alive connection: just close
                Some(_) => Head::Reject(Reject {
                    status: 408,
                    message: "Request head not received in time.",
                    path: String::new(),
                }),
            };
        }
        let room = (limits.max_head_bytes + 1 - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Head::Closed,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                head_deadline.get_or_insert_with(|| later(Instant::now(), limits.head_timeout));
            }
            Err(e) if would_block(&e) => {
                // A tick: write out answers the socket could not take at once.
                if out.flush(stream).is_err() {
                    return Head::Closed;
                }
            }
            Err(_) => return Head::Closed,
        }
    }
}

/// Whether `buf` holds an empty line ending a head; scans only bytes not scanned before.
fn has_head_end(buf: &[u8], scanned: &mut usize) -> bool {
    let from = scanned.saturating_sub(3);
    // A blank line after a header line: LF LF or LF CR LF (which CRLF CRLF contains).
    let found = buf[from..].windows(2).any(|w| w == b"\n\n")
        || buf[from..].windows(3).any(|w| w == b"\n\r\n");
    *scanned = buf.len();
    found
}

fn parse_head(buf: &[u8], limits: &Limits) -> Head {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut parsed = httparse::Request::new(&mut headers);
    let bad = |message| {
        Head::Reject(Reject {
            status: 400,
            message,
            path: String::new(),
        })
    };
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return bad("Malformed request head."),
        Err(httparse::Error::TooManyHeaders) => {
            return Head::Reject(Reject {
                status: 431,
                message: "Too many header fields.",
                path: String::new(),
            });
        }
        Err(httparse::Error::Version) => {
            return Head::Reject(Reject {
                status: 505,
                message: "Only HTTP/1.0 and HTTP/1.1 are served.",
                path: String::new(),
            });
        }
        Err(_) => return bad("Malformed request head."),
    };
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return bad("Malformed request line.");
    };
    if !target.starts_with('/') {
        return bad("The request target must be a path starting with '/'.");
    }
    let request = Request {
        method: Method::parse(method),
        method_token: method.to_owned(),
        target: target.to_owned(),
        version,
        headers: parsed
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect(),
        body: Vec::new(),
        remote: None,
        params: HashMap::new(),
    };
    Head::Request(Box::new(request), head_len)
}

/// Decides the body's length from the headers (refusing anything ambiguous), then reads it
/// within the body deadline. Leaves any pipelined bytes after it in `buf`.
fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_len: usize,
    request: &mut Request,
    limits: &Limits,
    out: &Output,
) -> Result<(), Reject> {
    let path = request.path().to_owned();
    let reject = |status, message| Reject {
        status,
        message,
        path: path.clone(),
    };
    let has = |name: &str| {
        request
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let lengths: Vec<&[u8]> = request
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_slice())
        .collect();
    if has("transfer-encoding") {
        return Err(if lengths.is_empty() {
            reject(
                411,
                "Chunked request bodies are not accepted: send a Content-Length.",
            )
        } else {
            reject(400, "Both Content-Length and Transfer-Encoding were sent.")
        });
    }
    let length = match lengths.as_slice() {
        [] => 0,
        [first, rest @ ..] => {
            if rest.iter().any(|v| v != first) {
                return Err(reject(400, "Conflicting Content-Length headers."));
            }
            parse_length(first).ok_or_else(|| reject(400, "Invalid Content-Length."))?
        }
    };
    if length > limits.max_body_bytes as u64 {
        return Err(reject(413, "Request body too large."));
    }
    let length = length as usize;
    buf.drain(..head_len);
    if let Some(expect) = request.header("expect") {
        if !expect.eq_ignore_ascii_case("100-continue") {
            return Err(reject(417, "Only Expect: 100-continue is understood."));
        }
        if buf.len() < length {
            let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
    }
    let deadline = later(Instant::now(), limits.body_timeout);
    let mut chunk = [0u8; 8192];
    while buf.len() < length {
        let now = Instant::now();
        if now >= deadline {
            return Err(reject(408, "Request body not received in time."));
        }
        let room = (length - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => {
                return Err(reject(
                    400,
                    "Connection closed before the body was complete.",
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if would_block(&e) => {
                if out.flush(stream).is_err() {
                    return Err(reject(400, "Connection failed."));
                }
            }
            Err(_) => return Err(reject(400, "Connection failed.")),
        }
    }
    request.body = buf.drain(..length).collect();
    Ok(())
}

/// A Content-Length value: digits only, no sign, no spaces, fits in u64.
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn wants_keep_alive(request: &Request) -> bool {
    let tokens = request
        .headers_named("connection")
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect::<Vec<_>>();
    if request.version == 0 {
        tokens.iter().any(|t| t == "keep-alive")
    } else {
        !tokens.iter().any(|t| t == "close")
    }
}

/// A response as bytes on the wire.
fn serialize_response(response: &Response, framing: Framing) -> Vec<u8> {
    let Framing {
        version,
        keep_alive,
        head_only,
    } = framing;
    let body = response.body();
    let mut out = Vec::with_capacity(256 + body.len());
    let status = response.status();
    let _ = write!(
        out,
        "HTTP/1.{version} {status} {}\r\nDate: {}\r\nServer: filesession\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Length: {}\r\n",
        reason(status),
        http_date(),
        body.len()
    );
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if version == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    for (name, value) in response.headers() {
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("connection") {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// Answers a request the connection layer refuses, then closes the connection without
/// reading what the client may still be sending (at most a short, bounded drain so that the
/// client sees the answer rather than a reset).
fn reject_and_close(mut stream: TcpStream, reject: &Reject, line: Option<&str>) {
    let response = Response::error(&reject.path, reject.status, reject.message);
    log_access(line.unwrap_or("-"), reject.status, response.body().len());
    flush_access_log();
    let framing = Framing {
        version: 1,
        keep_alive: false,
        head_only: false,
    };
    let _ = stream.write_all(&serialize_response(&response, framing));
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut drained = 0usize;
    while Instant::now() < deadline && drained < 256 * 1024 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Answers 503 to a connection over the limit, without blocking the accept loop.
pub(crate) fn refuse_overload(stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let response = Response::text(503, "Too many connections; try again shortly.\n");
    let mut out = Vec::new();
    let _ = write!(
        out,
        "HTTP/1.1 503 {}\r\nContent-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        reason(503),
        response.body().len()
    );
    out.extend_from_slice(response.body());
    let _ = (&stream).write(&out);
    let _ = stream.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_must_be_plain_digits() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"65536"), Some(65536));
        for bad in [
            &b""[..],
            b"-1",
            b"+5",
            b" 5",
            b"5 ",
            b"0x10",
            b"99999999999999999999",
            b"1,2",
        ] {
            assert_eq!(
                parse_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn head_end_is_found_across_reads() {
        let mut scanned = 0;
        let mut buf = b"GET / HTTP/1.1\r\nHost: x\r\n\r".to_vec();
        assert!(!has_head_end(&buf, &mut scanned));
        buf.push(b'\n');
        assert!(has_head_end(&buf, &mut scanned));
        let mut scanned = 0;
        assert!(has_head_end(b"GET / HTTP/1.1\nHost: x\n\r\n", &mut scanned));
    }
}
