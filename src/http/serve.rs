//! The accept loop and the bridge: hyper 1.x HTTP/1.1 connections on a tokio
//! current-thread runtime, each request handed to the [`Service`] on the same thread.
//!
//! All network I/O runs on the runtime's one thread, and so does the service, inline, one
//! request at a time (the runtime polls one task at once). Only what may wait leaves the
//! thread, for a blocking thread: [`Prepared::Wait`], [`Prepared::Work`], [`Ran::Finish`]
//! (the table in [`super::service`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioTimer;
use tokio::sync::Notify;

use super::access_log;
use super::deadlines::Deadlines;
use super::limits::Limits;
use super::registry::{Conn, InRequest, Registry, Slot, client_key};
use super::request::{Method, Request};
use super::response::{Response, reason};
use super::service::{Prepared, Ran, Service, Turn};

/// Access-log lines are written at least this often (and whenever the server is idle).
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(100);
/// File descriptors kept free for everything but connections (session files, the
/// listener, logs, blocking threads' work) when the connection cap is fitted to the
/// open-files limit: this many, or a quarter of the limit if that is less.
pub const RESERVED_DESCRIPTORS: u64 = 256;
/// The most blocking threads at once, for everything that may wait: [`Prepared::Wait`],
/// [`Prepared::Work`], [`Ran::Finish`]; more queue for a thread. A wait's deadline is set
/// when it is prepared, so time in the queue counts against it.
pub const MAX_BLOCKING_THREADS: usize = 64;
/// The most [`Prepared::Wait`]s (waits for a lock held elsewhere, which poll until their
/// deadline) on blocking threads at once: the other threads stay for loads and saves, so
/// that requests waiting for one session never hold up every other session's.
pub const MAX_LOCK_WAITS: usize = 16;
/// The most [`Ran::Finish`]es (writes to a store, which may wait for a database's lock held
/// by another process) on blocking threads at once: the rest of the pool stays for reads.
pub const MAX_FINISHES: usize = 32;
/// The least time between two "accept failed" log lines.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

struct Shared<S> {
    service: S,
    limits: Limits,
    last_request: Cell<Instant>,
    /// [`MAX_LOCK_WAITS`] permits, one per [`Prepared::Wait`] on a blocking thread.
    lock_waits: tokio::sync::Semaphore,
    /// [`MAX_FINISHES`] permits, one per [`Ran::Finish`] on a blocking thread.
    finishes: tokio::sync::Semaphore,
    /// The turns being taken ([`Service::turn`]), by key: a fair (first come, first served)
    /// lock each, dropped once no request holds or waits for it.
    turns: Turns,
}

/// The turns being taken, by key (one thread: `Rc`, `RefCell`).
type Turns = Rc<RefCell<HashMap<u128, Arc<tokio::sync::Mutex<()>>>>>;

/// A request's turn ([`Service::turn`]), held until its answer is produced.
struct TurnHeld {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    key: u128,
    turns: Turns,
}

impl Drop for TurnHeld {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut turns = self.turns.borrow_mut();
        // Only the map holds it: no request holds or waits for this turn.
        if turns
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            turns.remove(&self.key);
        }
    }
}

/// Waits (without holding up the thread) for `turn`, at most its wait.
async fn take_turn(turns: &Turns, turn: Turn) -> Option<TurnHeld> {
    let lock = turns.borrow_mut().entry(turn.key).or_default().clone();
    let mut held = TurnHeld {
        guard: None,
        key: turn.key,
        turns: turns.clone(),
    };
    let guard = tokio::time::timeout(turn.wait, lock.lock_owned())
        .await
        .ok()?;
    held.guard = Some(guard);
    Some(held)
}

/// Serves `listener` with `service` on the calling thread until `stop` is set and `wake`
/// notified; then closes the listener (new connections are refused at once, or go to the
/// other processes sharing the port), lets every connection finish the request in hand and
/// write what was answered (waiting at most [`Limits::write_timeout`]), and returns.
///
/// # Errors
/// The runtime cannot be built or the listener cannot be registered with it.
pub fn serve<S: Service>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    stop: Arc<AtomicBool>,
    wake: Arc<Notify>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()?;
    let local = tokio::task::LocalSet::new();
    let shared = Rc::new(Shared {
        service,
        limits,
        last_request: Cell::new(Instant::now()),
        lock_waits: tokio::sync::Semaphore::new(MAX_LOCK_WAITS),
        finishes: tokio::sync::Semaphore::new(MAX_FINISHES),
        turns: Rc::default(),
    });
    local.block_on(&runtime, accept_loop(listener, shared, stop, wake))
}

/// The connection cap in force: [`Limits::max_connections`], lowered to what the
/// open-files limit (`RLIMIT_NOFILE`, read now) leaves after [`RESERVED_DESCRIPTORS`], so
/// that a flood of connections closes idle ones instead of leaving no descriptor to open a
/// session file with.
pub fn connection_cap(limits: &Limits) -> usize {
    let open_files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match open_files {
        Some(n) => {
            let room = n - RESERVED_DESCRIPTORS.min(n / 4);
            let room = usize::try_from(room).unwrap_or(usize::MAX);
            limits.max_connections.min(room).max(1)
        }
        None => limits.max_connections.max(1),
    }
}

async fn accept_loop<S: Service>(
    listener: TcpListener,
    shared: Rc<Shared<S>>,
    stop: Arc<AtomicBool>,
    wake: Arc<Notify>,
) -> io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let registry = Rc::new(RefCell::new(Registry::default()));
    let cap = connection_cap(&shared.limits);
    let mut accept_errors = AcceptErrors::default();
    let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The idle and head deadlines are kept by `Deadlines`, apart (hyper's one timer
        // would run from the end of the last answer to the end of the next head).
        .header_read_timeout(None)
        .max_headers(shared.limits.max_headers)
        .max_header_size(shared.limits.max_head_bytes)
        .max_buf_size((shared.limits.max_head_bytes + 8192).max(8192))
        .half_close(true)
        .keep_alive(true);
    let builder = Rc::new(builder);

    // Idle work: the access log and the service's background work.
    {
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
            loop {
                let wait = shared.service.idle_wait();
                tokio::time::sleep(wait.min(LOG_FLUSH_EVERY)).await;
                access_log::flush();
                if shared.last_request.get().elapsed() >= wait {
                    shared.service.idle();
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
                // EMFILE and friends: back off instead of spinning; never give up.
                accept_errors.failed(&e);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let ip = client_key(remote.ip());
        let admitted = registry.borrow_mut().admit(ip, &shared.limits, cap);
        let Some(conn) = admitted else {
            if let Ok(stream) = stream.into_std() {
                refuse_overload(&stream);
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot = Slot {
            registry: registry.clone(),
            ip,
            conn: conn.clone(),
        };
        let (task_shared, builder, watcher) = (shared.clone(), builder.clone(), graceful.watcher());
        let mut stopping = stopping_rx.clone();
        tokio::task::spawn_local(async move {
            let _slot = slot;
            // Until its first byte a connection costs its socket and this small task:
            // hyper's buffers (16 KiB) are made only for a connection that sends something.
            // (`readable()` may wake without data; a peek waits for a byte or the end.)
            let mut peeked = [0u8; 1];
            let first_byte = tokio::select! {
                ready = stream.peek(&mut peeked) => ready.is_ok(),
                () = tokio::time::sleep(task_shared.limits.idle_timeout) => false,
                () = conn.evict.notified() => false,
                _ = stopping.changed() => false,
            };
            if first_byte {
                let serving =
                    serve_connection(task_shared, &builder, watcher, stream, remote, conn);
                Box::pin(serving).await;
            }
        });
    }
    let _ = stopping.send(true);
    drop(listener);
    let _ = tokio::time::timeout(shared.limits.write_timeout, graceful.shutdown()).await;
    access_log::flush();
    Ok(())
}

/// One connection that has sent its first byte, on hyper, until it closes or is evicted.
async fn serve_connection<S: Service>(
    shared: Rc<Shared<S>>,
    builder: &http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    conn: Rc<Conn>,
) {
    let io = Deadlines::new(
        stream,
        conn.clone(),
        shared.limits.idle_timeout,
        shared.limits.head_timeout,
        shared.limits.write_timeout,
    );
    let service_conn = conn.clone();
    let service = service_fn(move |req| {
        respond(
            shared.clone(),
            req,
            remote,
            InRequest::new(service_conn.clone()),
        )
    });
    let connection = watcher.watch(builder.serve_connection(io, service));
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                log_connection_error(&e, remote);
            }
        }
        // Idle and its place needed: dropping the connection closes it.
        () = conn.evict.notified() => {}
    }
}

/// hyper answered a bad head itself (400, or 431 for one too large): an access-log line
/// as for any other answer; anything else only at debug level.
fn log_connection_error(e: &hyper::Error, remote: SocketAddr) {
    if e.is_parse_too_large() {
        access_log::log("-", 431, 0);
    } else if e.is_parse() || e.is_parse_status() {
        access_log::log("-", 400, 0);
    } else {
        log::debug!("connection from {remote}: {e}");
    }
}

type HyperResponse = hyper::Response<Full<Bytes>>;

/// One request: checks hyper leaves to the server, the body read within its limits, then
/// the service, inline.
async fn respond<S: Service>(
    shared: Rc<Shared<S>>,
    req: hyper::Request<Incoming>,
    remote: SocketAddr,
    in_request: InRequest,
) -> Result<HyperResponse, Infallible> {
    let (parts, body) = req.into_parts();
    let version = u8::from(parts.version != hyper::Version::HTTP_10);
    // Absolute-form (RFC 9112 §3.2.2) is accepted: the path and query are the target.
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
    let line = access_log::request_line(&request);
    let path = request.path().to_owned();
    let reject = |status: u16, message: &str| {
        let response = Response::error(&path, status, message);
        access_log::log(&line, status, response.body().len());
        to_hyper(response, true)
    };

    // Host (RFC 9112 §3.2): exactly one, valid, and required in HTTP/1.1.
    let hosts: Vec<&HeaderValue> = parts.headers.get_all(hyper::header::HOST).iter().collect();
    if hosts.len() > 1 {
        return Ok(reject(400, "More than one Host header."));
    }
    if version == 1 && hosts.is_empty() {
        return Ok(reject(400, "Missing Host header."));
    }
    if let Some(host) = hosts.first()
        && !host.is_empty()
        && host
            .to_str()
            .ok()
            .and_then(|h| h.parse::<hyper::http::uri::Authority>().ok())
            .is_none()
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
        Ok(Err(_)) => return Ok(reject(400, "Request body incomplete.")),
        Ok(Ok(body)) => request.body = body.to_bytes().to_vec(),
    }
    in_request.answering();

    // Requests that must not overlap take turns (an async wait: the thread goes on).
    let _turn = match shared.service.turn(&request) {
        Some(turn) => match take_turn(&shared.turns, turn).await {
            Some(held) => Some(held),
            None => {
                let mut busy = Response::error(
                    &path,
                    503,
                    "The session is busy with other requests; gave up waiting. Try again.",
                );
                busy.add_header("Retry-After", "1");
                access_log::log(&line, 503, busy.body().len());
                return Ok(to_hyper(busy, false));
            }
        },
        None => None,
    };
    // Prepare on this thread; what may wait goes to a blocking thread, never this one.
    let mut prepared = shared.service.prepare(&request);
    let ticket = loop {
        match prepared {
            Prepared::Ready(ticket) => break Ok(ticket),
            Prepared::Answer(answer) => break Err(answer),
            Prepared::Wait(wait) => {
                // Lock waits have a budget of their own (closed only when the server ends).
                let Ok(_permit) = shared.lock_waits.acquire().await else {
                    return Ok(reject(503, "The server is stopping."));
                };
                let Some((back, ticket)) = on_blocking_thread(request, wait).await else {
                    return Ok(reject(500, "Internal server error."));
                };
                request = back;
                break ticket;
            }
            Prepared::Work(work) => {
                // What the work decided: ready, an answer, or a wait for a held lock.
                let Some((back, next)) = on_blocking_thread(request, work).await else {
                    return Ok(reject(500, "Internal server error."));
                };
                request = back;
                prepared = next;
            }
        }
    };
    let internal_error = || {
        log::error!("request for {path} panicked; answered 500");
        Response::error(&path, 500, "Internal server error.")
    };
    let ran = match ticket {
        Ok(ticket) => catch_unwind(AssertUnwindSafe(|| shared.service.run(request, ticket)))
            .unwrap_or_else(|_| Ran::Answer(internal_error())),
        Err(answer) => Ran::Answer(answer),
    };
    let response = match ran {
        Ran::Answer(response) => response,
        // The answer is sent once the finish returns: a request that begins after it sees
        // what it wrote.
        Ran::Finish(finish) => {
            // Writes have a budget of their own (closed only when the server ends): the
            // rest of the pool stays for reads.
            let Ok(_permit) = shared.finishes.acquire().await else {
                return Ok(reject(503, "The server is stopping."));
            };
            tokio::task::spawn_blocking(finish)
                .await
                .unwrap_or_else(|_| internal_error())
        }
    };
    access_log::log(&line, response.status(), response.body().len());
    shared.last_request.set(Instant::now());
    shared.service.after_request();
    Ok(to_hyper(response, false))
}

/// Runs `f` with the request on a blocking thread, and gives the request back with what
/// `f` returned; `None` if `f` panicked.
async fn on_blocking_thread<R: Send + 'static>(
    request: Request,
    f: impl FnOnce(&Request) -> R + Send + 'static,
) -> Option<(Request, R)> {
    tokio::task::spawn_blocking(move || {
        let out = f(&request);
        (request, out)
    })
    .await
    .ok()
}

/// Our response as hyper's: hyper answers in the request's HTTP version and frames the
/// body (Content-Length; none on HEAD, 1xx, 204, 304).
fn to_hyper(response: Response, close: bool) -> HyperResponse {
    let status = hyper::StatusCode::from_u16(response.status())
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let (headers_in, body) = response.into_parts();
    let mut out = hyper::Response::new(Full::new(Bytes::from(body)));
    *out.status_mut() = status;
    let headers = out.headers_mut();
    headers.insert(
        hyper::header::SERVER,
        HeaderValue::from_static("filesession"),
    );
    headers.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    for (name, value) in headers_in {
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

/// Answers 503 to a connection over the caps, without waiting on it.
fn refuse_overload(stream: &std::net::TcpStream) {
    let _ = stream.set_nonblocking(true);
    let body = b"Too many connections; try again shortly.\n";
    let mut out = Vec::new();
    let _ = write!(
        out,
        "HTTP/1.1 503 {}\r\nContent-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n",
        reason(503),
        body.len()
    );
    out.extend_from_slice(body);
    let _ = (&*stream).write(&out);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    access_log::log("-", 503, body.len());
}

/// Logs a failed `accept` at most once per [`ACCEPT_LOG_EVERY`], with how many failures
/// were not logged, so that a server out of file descriptors does not flood its log.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    fn failed(&mut self, e: &io::Error) {
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|t| now.duration_since(t) < ACCEPT_LOG_EVERY)
        {
            self.unlogged += 1;
            return;
        }
        if self.unlogged > 0 {
            log::warn!(
                "accept failed: {e} ({} more failures since the last such line)",
                self.unlogged
            );
        } else {
            log::warn!("accept failed: {e}");
        }
        self.last_logged = Some(now);
        self.unlogged = 0;
    }
}
