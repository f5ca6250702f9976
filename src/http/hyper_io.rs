//! EXPERIMENTAL (issue 11, in progress; `FILESESSION_HTTP=hyper`): the HTTP layer on
//! hyper 1.x over a tokio current-thread runtime.
//!
//! All network I/O runs on the runtime's one thread, and so do middleware and handlers,
//! inline, one request at a time (the runtime only ever polls one task at once). The
//! session's lock is tried once on that thread; only a lock held by another process sends
//! the wait (up to `SESSION_LOCK_TIMEOUT`) to `spawn_blocking`.
//!
//! Known differences from the default layer, each allowed by the RFCs: a head not received
//! in time closes the connection without a 408 (RFC 9112 §9.6), and one timer covers the
//! idle keep-alive wait and the head; Content-Length with Transfer-Encoding is read by the
//! chunked framing and the connection closed (RFC 9112 §6.3); chunked request bodies are
//! accepted (RFC 9112 §6.1); hyper's own 400/431 answers skip the access log. Writes have a
//! deadline ([`WriteDeadline`]). Connections are capped globally and per client address;
//! a new one beyond a cap closes an idle connection of the address holding the most
//! ([`Registry`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Notify;

use super::conn::{Limits, flush_access_log, log_access, refuse_overload, request_line};
use super::request::{Method, Request};
use super::response::Response;
use crate::middleware::Preflight;
use crate::server::{AcceptErrors, App, Cleanup};

/// Access-log lines are written at least this often (and whenever the server is idle).
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(100);

struct Shared {
    app: App,
    limits: Limits,
    cleanup: RefCell<Cleanup>,
    last_request: Cell<Instant>,
}

/// Serves `listener` until `stop` is set (and `wake` notified).
pub(crate) fn run(
    listener: &TcpListener,
    app: App,
    limits: Limits,
    cleanup: Cleanup,
    stop: Arc<AtomicBool>,
    wake: Arc<Notify>,
) -> io::Result<()> {
    let listener = listener.try_clone()?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let shared = Rc::new(Shared {
        app,
        limits,
        cleanup: RefCell::new(cleanup),
        last_request: Cell::new(Instant::now()),
    });
    local.block_on(&runtime, serve(listener, shared, stop, wake))
}

async fn serve(
    listener: TcpListener,
    shared: Rc<Shared>,
    stop: Arc<AtomicBool>,
    wake: Arc<Notify>,
) -> io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let registry = Rc::new(RefCell::new(Registry::default()));
    let mut accept_errors = AcceptErrors::default();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.idle_timeout) // ONE timer: idle + head (see report)
        .max_headers(shared.limits.max_headers)
        .max_header_size(shared.limits.max_head_bytes)
        .max_buf_size((shared.limits.max_head_bytes + 8192).max(8192))
        .half_close(true)
        .keep_alive(true);

    // Idle work: the access log and the store's cleanup, when no request came for a while.
    {
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
            loop {
                let wait = shared.cleanup.borrow().wait();
                tokio::time::sleep(wait.min(LOG_FLUSH_EVERY)).await;
                flush_access_log();
                if shared.last_request.get().elapsed() >= wait {
                    shared.cleanup.borrow_mut().idle();
                }
            }
        });
    }

    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = wake.notified() => break,
        };
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                accept_errors.failed(&e);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let ip = remote.ip();
        let admitted = registry.borrow_mut().admit(ip, &shared.limits);
        let Some(entry) = admitted else {
            if let Ok(stream) = stream.into_std() {
                refuse_overload(stream);
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot = Slot {
            registry: registry.clone(),
            ip,
            id: entry.id,
        };
        let conn_shared = shared.clone();
        let service_entry = entry.clone();
        let service = service_fn(move |req| {
            respond(
                conn_shared.clone(),
                req,
                remote,
                Busy::new(service_entry.clone()),
            )
        });
        let io = WriteDeadline::new(TokioIo::new(stream), shared.limits.write_timeout);
        let conn = graceful.watch(builder.serve_connection(io, service));
        tokio::task::spawn_local(async move {
            let _slot = slot;
            tokio::select! {
                result = conn => {
                    if let Err(e) = result {
                        log::debug!("connection from {remote}: {e}");
                    }
                }
                // Idle and its place needed: dropping the connection closes it.
                () = entry.evict.notified() => {}
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(shared.limits.write_timeout, graceful.shutdown()).await;
    flush_access_log();
    Ok(())
}

/// A connection whose writes must make progress within a deadline
/// ([`Limits::write_timeout`]): a client that stops reading is dropped when it passes,
/// instead of holding its connection and its answer for ever. hyper has no write timeout of
/// its own; the clock starts when a write finds the socket full and stops at any progress.
struct WriteDeadline {
    io: TokioIo<tokio::net::TcpStream>,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteDeadline {
    fn new(io: TokioIo<tokio::net::TcpStream>, timeout: Duration) -> Self {
        WriteDeadline {
            io,
            timeout,
            stalled: None,
        }
    }

    /// After a write found the socket full: `Ready(Err)` once the deadline has passed.
    fn check<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read its answer within the write deadline",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Progress (or an error) on a write: the clock stops.
    fn progressed<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.check(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl hyper::rt::Read for WriteDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for WriteDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.progressed(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.progressed(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        hyper::rt::Write::is_write_vectored(&self.io)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_flush(cx);
        this.progressed(result, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// One open connection, as the caps see it.
struct Conn {
    id: u64,
    /// Inside a handler (its request read, its answer not yet produced): never evicted.
    busy: Cell<bool>,
    /// Notified to close it (it is idle and its place is needed).
    evict: Notify,
}

/// The open connections by client address: the global and per-address caps, and which
/// connection to close when a new one needs its place (idle ones of the address holding the
/// most, oldest first), so that one address cannot starve the others.
#[derive(Default)]
struct Registry {
    by_addr: HashMap<IpAddr, Vec<Rc<Conn>>>,
    total: usize,
    next_id: u64,
}

impl Registry {
    /// Makes room for a connection from `ip` within the caps, closing an idle connection if
    /// needed; `None` when every connection in the way is busy (answer 503).
    fn admit(&mut self, ip: IpAddr, limits: &Limits) -> Option<Rc<Conn>> {
        let here = self.by_addr.get(&ip).map_or(0, Vec::len);
        if here >= limits.max_connections_per_address.max(1) {
            self.evict_idle_of(ip)?;
        } else if self.total >= limits.max_connections.max(1) {
            let busiest = self
                .by_addr
                .iter()
                .filter(|(_, conns)| conns.iter().any(|c| !c.busy.get()))
                .max_by_key(|(_, conns)| conns.len())
                .map(|(addr, _)| *addr)?;
            self.evict_idle_of(busiest)?;
        }
        self.next_id += 1;
        let conn = Rc::new(Conn {
            id: self.next_id,
            busy: Cell::new(false),
            evict: Notify::new(),
        });
        self.by_addr.entry(ip).or_default().push(conn.clone());
        self.total += 1;
        Some(conn)
    }

    /// Closes the oldest idle connection of `ip`; `None` if it has none.
    fn evict_idle_of(&mut self, ip: IpAddr) -> Option<()> {
        let conns = self.by_addr.get(&ip)?;
        let victim = conns.iter().find(|c| !c.busy.get())?.clone();
        victim.evict.notify_one();
        self.remove(ip, victim.id);
        Some(())
    }

    /// Forgets a connection (closed, or evicted); nothing if already forgotten.
    fn remove(&mut self, ip: IpAddr, id: u64) {
        if let Some(conns) = self.by_addr.get_mut(&ip)
            && let Some(at) = conns.iter().position(|c| c.id == id)
        {
            conns.remove(at);
            self.total -= 1;
            if conns.is_empty() {
                self.by_addr.remove(&ip);
            }
        }
    }
}

/// A connection's place in the registry, given back when its task ends.
struct Slot {
    registry: Rc<RefCell<Registry>>,
    ip: IpAddr,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.borrow_mut().remove(self.ip, self.id);
    }
}

/// Marks a connection busy for as long as it lives (one request in a handler).
struct Busy(Rc<Conn>);

impl Busy {
    fn new(conn: Rc<Conn>) -> Self {
        conn.busy.set(true);
        Busy(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.set(false);
    }
}

type HyperResponse = hyper::Response<Full<Bytes>>;

async fn respond(
    shared: Rc<Shared>,
    req: hyper::Request<Incoming>,
    remote: SocketAddr,
    _busy: Busy,
) -> Result<HyperResponse, Infallible> {
    let (parts, body) = req.into_parts();
    let version = u8::from(parts.version != hyper::Version::HTTP_10);
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.to_string(), |p| p.as_str().to_owned());
    let mut request = Request {
        method: Method::parse(parts.method.as_str()),
        method_token: parts.method.as_str().to_owned(),
        target,
        version,
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        body: Vec::new(),
        remote: Some(remote),
        params: std::collections::HashMap::new(),
    };
    let line = request_line(&request);
    let path = request.path().to_owned();
    let reject = |status: u16, message: &str| {
        let response = Response::error(&path, status, message);
        log_access(&line, status, response.body().len());
        to_hyper(&response, true)
    };

    // Host (RFC 9112 §3.2): exactly one, valid; an absolute-form target's authority wins.
    let hosts: Vec<&HeaderValue> = parts.headers.get_all(hyper::header::HOST).iter().collect();
    if hosts.len() > 1 {
        return Ok(reject(400, "More than one Host header."));
    }
    if version == 1 && hosts.is_empty() {
        return Ok(reject(400, "Missing Host header."));
    }
    if let Some(host) = hosts.first()
        && host
            .to_str()
            .ok()
            .and_then(|h| h.parse::<hyper::http::uri::Authority>().ok())
            .is_none()
        && !host.is_empty()
    {
        return Ok(reject(400, "Invalid Host header."));
    }

    // Body: refused from Content-Length before reading; limited and timed while reading.
    let max = shared.limits.max_body_bytes;
    if let Some(length) = parts.headers.get(hyper::header::CONTENT_LENGTH) {
        let length = length.to_str().ok().and_then(|v| v.parse::<u64>().ok());
        if length.is_some_and(|l| l > max as u64) {
            return Ok(reject(413, "Request body too large."));
        }
    }
    let collected = tokio::time::timeout(
        shared.limits.body_timeout,
        Limited::new(body, max).collect(),
    )
    .await;
    match collected {
        Err(_) => return Ok(reject(408, "Request body not received in time.")),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Ok(reject(413, "Request body too large."));
        }
        Ok(Err(_)) => return Ok(reject(400, "Connection failed.")),
        Ok(Ok(body)) => request.body = body.to_bytes().to_vec(),
    }

    // The lock preflight may wait for SESSION_LOCK_TIMEOUT: never on this thread.
    // The lock is tried once here; only a lock held elsewhere sends the wait to a
    // blocking thread, so the one thread never waits for another process.
    let (request, lock) = match shared.app.try_preflight(&request) {
        Preflight::Ready(lock) => (request, Ok(lock)),
        Preflight::Refused(refused) => (request, Err(refused)),
        Preflight::Busy => {
            let app = shared.app.clone();
            match tokio::task::spawn_blocking(move || {
                let lock = app.preflight(&request);
                (request, lock)
            })
            .await
            {
                Ok(pair) => pair,
                Err(_) => return Ok(reject(500, "Internal server error.")),
            }
        }
    };
    let lock = match lock {
        Ok(lock) => lock,
        Err(refused) => {
            log_access(&line, refused.status(), refused.body().len());
            return Ok(to_hyper(&refused, false));
        }
    };

    let response = catch_unwind(AssertUnwindSafe(|| shared.app.handle_locked(request, lock)))
        .unwrap_or_else(|_| {
            log::error!("request for {path} panicked; answered 500");
            Response::error(&path, 500, "Internal server error.")
        });
    log_access(&line, response.status(), response.body().len());
    shared.last_request.set(Instant::now());
    shared.cleanup.borrow_mut().between_requests();
    Ok(to_hyper(&response, false))
}

/// Our response as hyper's; hyper answers in the request's HTTP version and frames the
/// body (Content-Length, none for HEAD).
fn to_hyper(response: &Response, close: bool) -> HyperResponse {
    let mut out = hyper::Response::new(Full::new(Bytes::copy_from_slice(response.body())));
    *out.status_mut() = hyper::StatusCode::from_u16(response.status())
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    headers.insert(
        hyper::header::SERVER,
        HeaderValue::from_static("filesession"),
    );
    headers.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    for (name, value) in response.headers() {
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("connection") {
            continue;
        }
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => log::warn!("response header {name:?} dropped: not a valid header"),
        }
    }
    if close {
        headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    out
}
