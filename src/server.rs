//! The server: an accept thread, one thread per connection for all waiting on clients, and
//! ONE handler thread that runs the handlers, one request at a time.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::http::{Job, Limits, Reply, Request, Response, serve_connection};
use crate::middleware::{Preflight, SessionMiddleware};
use crate::router::{Routed, Router};
use crate::store::{SessionLock, SessionStore, Sweep};

/// Stack size of a connection thread: it only parses and copies bytes.
const CONNECTION_STACK: usize = 256 * 1024;
/// Access-log lines are written at least this often (and whenever the server is idle).
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Requests waiting for the handler thread before connection threads wait to hand theirs.
const QUEUE_DEPTH: usize = 256;

/// The router and the session middleware: what the handler thread runs for each request.
#[derive(Clone)]
pub struct App {
    router: Router,
    middleware: SessionMiddleware,
}

impl App {
    /// An app from its routes and its middleware.
    pub fn new(router: Router, middleware: SessionMiddleware) -> Self {
        App { router, middleware }
    }

    /// Runs on the connection's thread before the request is queued for the handler thread:
    /// waits there (bounded) for the session's lock, so a session locked elsewhere never
    /// stalls the handler thread. `Err` is the answer to give at once (503).
    pub fn preflight(&self, request: &Request) -> Result<Option<SessionLock>, Response> {
        match self
            .router
            .resolve(request.method(), request.path(), request.query())
        {
            Routed::Found(..) => self.middleware.preflight(request),
            _ => Ok(None),
        }
    }

    /// [`preflight`](App::preflight) that never waits, for a thread that must not:
    /// [`Preflight::Busy`] means call `preflight` on one that may.
    pub fn try_preflight(&self, request: &Request) -> Preflight {
        match self
            .router
            .resolve(request.method(), request.path(), request.query())
        {
            Routed::Found(..) => self.middleware.try_preflight(request),
            _ => Preflight::Ready(None),
        }
    }

    /// Answers one request: route, load the session, run the handler, apply the middleware.
    /// A handler that panics gets a 500; the server goes on.
    pub fn handle(&self, request: Request) -> Response {
        self.handle_locked(request, None)
    }

    /// [`handle`](App::handle) with the lock [`preflight`](App::preflight) took.
    pub fn handle_locked(&self, mut request: Request, lock: Option<SessionLock>) -> Response {
        let path = request.path().to_owned();
        match self
            .router
            .resolve(request.method(), &path, request.query())
        {
            Routed::NotFound => Response::error(&path, 404, &format!("Not found: {path}")),
            Routed::MethodNotAllowed(methods) => {
                let allow: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
                Response::error(
                    &path,
                    405,
                    &format!("Method {} not allowed here.", request.method_token()),
                )
                .with_header("Allow", &allow.join(", "))
            }
            Routed::AppendSlash(location) => Response::redirect(301, &location),
            Routed::Found(handler, params) => {
                request.params = params;
                let (session, had_cookie) = self.middleware.session_for(&request);
                let mut session = session.with_lock(lock);
                let outcome = catch_unwind(AssertUnwindSafe(|| handler(&request, &mut session)));
                match outcome {
                    Ok(response) => self.middleware.finish(session, had_cookie, &path, response),
                    Err(_) => {
                        log::error!("handler for {path} panicked; answered 500");
                        Response::error(&path, 500, "Internal server error.")
                    }
                }
            }
        }
    }
}

/// Stops a running [`Server`]: the request in hand is finished and written, then
/// [`Server::run`] returns.
#[derive(Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    listener: Option<Arc<TcpListener>>,
    wake: Arc<tokio::sync::Notify>,
}

impl StopHandle {
    /// Asks the server to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_one(); // the hyper loop (a permit is kept if it is not waiting)
        // Wake the accept thread: shutting the listening socket down makes accept() return
        // at once (and works when several processes share the port, where a connection
        // to it might reach another process).
        let woken = self
            .listener
            .as_ref()
            .is_some_and(|l| rustix::net::shutdown(&**l, rustix::net::Shutdown::Read).is_ok());
        if !woken {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        }
    }

    /// Stops the server on SIGINT (Ctrl-C) or SIGTERM.
    ///
    /// # Errors
    /// The signal handlers cannot be installed.
    pub fn stop_on_signals(&self) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let handle = self.clone();
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if signals.forever().next().is_some() {
                    handle.stop();
                }
            })?;
        Ok(())
    }
}

/// A bound server. [`run`](Server::run) serves until stopped.
///
/// ```no_run
/// use std::sync::Arc;
/// use filesession::{App, FileStore, Method, Request, Response, Router, Server, Session,
///                   SessionMiddleware, Settings};
///
/// fn visits(_: &Request, session: &mut Session) -> Response {
///     let n = session.get_as::<u64>("visits").ok().flatten().unwrap_or(0) + 1;
///     session.insert("visits", n);
///     Response::text(200, format!("visit number {n}"))
/// }
///
/// let settings = Settings::default();
/// let store = Arc::new(FileStore::open(&settings.file_path)?);
/// let app = App::new(
///     Router::new().route(Method::Get, "/", visits),
///     SessionMiddleware::new(store, settings),
/// );
/// let server = Server::bind("127.0.0.1:8000", app)?;
/// server.stop_handle().stop_on_signals()?;
/// server.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server {
    listener: Arc<TcpListener>,
    app: App,
    limits: Limits,
    stop: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
}

impl Server {
    /// Binds `addr` with default [`Limits`] and the body limit of the app's settings.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn bind(addr: impl ToSocketAddrs, app: App) -> io::Result<Self> {
        Self::from_listener(TcpListener::bind(addr)?, app)
    }

    /// Binds `addr` so that several processes can each bind it and share its connections
    /// (`SO_REUSEPORT`): how `runserver --workers N` runs N of these loops on one port.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn bind_shared(addr: SocketAddr, app: App) -> io::Result<Self> {
        let listener = shared_socket(addr, true)?;
        Self::from_listener(listener, app)
    }

    /// A server on a listener bound elsewhere.
    ///
    /// # Errors
    /// The listener's address cannot be read.
    pub fn from_listener(listener: TcpListener, app: App) -> io::Result<Self> {
        listener.local_addr()?;
        let limits = Limits {
            max_body_bytes: app.middleware.settings().max_body,
            ..Limits::default()
        };
        Ok(Server {
            listener: Arc::new(listener),
            app,
            limits,
            stop: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Replaces the HTTP limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The address it listens on (with the real port when bound to port 0).
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle that stops the server from another thread or a signal.
    pub fn stop_handle(&self) -> StopHandle {
        let addr = self
            .listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        StopHandle {
            stop: self.stop.clone(),
            addr,
            listener: Some(self.listener.clone()),
            wake: self.wake.clone(),
        }
    }

    /// Serves until stopped. The calling thread becomes the handler thread.
    ///
    /// With `FILESESSION_HTTP=hyper` in the environment (experimental, issue 11 in
    /// progress) the network I/O runs on hyper 1 over a tokio current-thread runtime whose
    /// one thread also runs every handler; otherwise on this crate's own HTTP/1.1 layer
    /// (an accept thread, a thread per connection).
    ///
    /// # Errors
    /// The accept thread or the runtime cannot be started.
    pub fn run(self) -> io::Result<()> {
        if std::env::var("FILESESSION_HTTP").as_deref() != Ok("hyper") {
            return self.run_threads();
        }
        let cleanup = Cleanup::new(
            self.app.middleware.store().clone(),
            self.app.middleware.settings().gc_interval,
        );
        crate::http::hyper_io::run(
            &self.listener,
            self.app,
            self.limits,
            cleanup,
            self.stop,
            self.wake,
        )
    }

    /// This crate's own HTTP/1.1 layer: an accept thread, a thread per connection, this
    /// thread handles.
    fn run_threads(self) -> io::Result<()> {
        let Server {
            listener,
            app,
            limits,
            stop,
            wake: _,
        } = self;
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE_DEPTH);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let acceptor = {
            let gate = app.clone();
            let stop = stop.clone();
            let in_flight = in_flight.clone();
            let limits = limits.clone();
            thread::Builder::new()
                .name("accept".into())
                .spawn(move || {
                    accept_loop(listener, jobs, limits, stop, in_flight, connections, gate)
                })?
        };
        let mut cleanup = Cleanup::new(
            app.middleware.store().clone(),
            app.middleware.settings().gc_interval,
        );
        let mut last_log_flush = Instant::now();
        loop {
            match queue.recv_timeout(cleanup.wait()) {
                Ok(job) => {
                    let line = crate::http::request_line(&job.request);
                    let path = job.request.path().to_owned();
                    let response = catch_unwind(AssertUnwindSafe(|| {
                        app.handle_locked(job.request, job.lock)
                    }))
                    .unwrap_or_else(|_| {
                        log::error!("request for {path} panicked; answered 500");
                        Response::error(&path, 500, "Internal server error.")
                    });
                    crate::http::log_access(&line, response.status(), response.body().len());
                    match job.reply {
                        Reply::Direct(out, framing) => out.deliver(&response, framing),
                        Reply::Wait(reply) => {
                            in_flight.fetch_add(1, Ordering::SeqCst);
                            if reply.send(response).is_err() {
                                in_flight.fetch_sub(1, Ordering::SeqCst);
                            }
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    crate::http::flush_access_log();
                    cleanup.idle();
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            cleanup.between_requests();
            if last_log_flush.elapsed() >= LOG_FLUSH_EVERY {
                crate::http::flush_access_log();
                last_log_flush = Instant::now();
            }
            if stop.load(Ordering::SeqCst) {
                break;
            }
        }
        // Let the connection threads write what was answered, then go.
        drop(queue);
        crate::http::flush_access_log();
        let deadline = crate::expiry::later(Instant::now(), limits.write_timeout);
        while in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let _ = acceptor.join();
        Ok(())
    }
}

fn accept_loop(
    listener: Arc<TcpListener>,
    jobs: mpsc::SyncSender<Job>,
    limits: Limits,
    stop: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    app: App,
) {
    let limits = Arc::new(limits);
    let app = Arc::new(app);
    let mut accept_errors = AcceptErrors::default();
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; never give up.
                accept_errors.failed(&e);
                thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        if connections.load(Ordering::SeqCst) >= limits.max_connections {
            crate::http::refuse_overload(stream);
            continue;
        }
        let slot = ConnectionSlot::take(&connections);
        let (jobs, limits, in_flight, app) =
            (jobs.clone(), limits.clone(), in_flight.clone(), app.clone());
        let spawned = thread::Builder::new()
            .name("conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                let _slot = slot; // freed when the thread ends, even by a panic
                serve_connection(stream, &jobs, &limits, &in_flight, &|r| app.preflight(r));
            });
        if spawned.is_err() {
            log::warn!("could not start a connection thread; connection dropped");
        }
    }
}

/// The server's own cleanup (`SESSION_GC_INTERVAL`): every interval a pass over the store,
/// done in slices of at most [`CLEANUP_SLICE`] on the handler thread, so that no request
/// waits more than that for it. Under load a slice runs at most every
/// [`CLEANUP_SPACING`]; when idle, back to back.
pub(crate) struct Cleanup {
    store: Arc<dyn SessionStore>,
    interval: Option<Duration>,
    next_pass: Instant,
    last_slice: Instant,
    sweep: Sweep,
    slices: u32,
    started: Instant,
}

/// The longest a cleanup slice runs.
pub const CLEANUP_SLICE: Duration = Duration::from_millis(2);
/// Under load, the least time between two cleanup slices (so at most ~10% of the time).
pub const CLEANUP_SPACING: Duration = Duration::from_millis(20);

impl Cleanup {
    pub(crate) fn new(store: Arc<dyn SessionStore>, interval: Option<Duration>) -> Self {
        let now = Instant::now();
        Cleanup {
            store,
            interval: interval.filter(|d| !d.is_zero()),
            next_pass: now,
            last_slice: now,
            sweep: Sweep::new(),
            slices: 0,
            started: now,
        }
    }

    /// How long the handler thread may wait for a request before calling `idle`.
    pub(crate) fn wait(&self) -> Duration {
        if self.sweep.in_progress() {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(100)
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.interval.is_some() && (self.sweep.in_progress() || now >= self.next_pass)
    }

    /// No request came: a slice if a pass is due or under way.
    pub(crate) fn idle(&mut self) {
        let now = Instant::now();
        if self.due(now) {
            self.slice(now);
        }
    }

    /// After a request: a slice only if the last one is a while ago.
    pub(crate) fn between_requests(&mut self) {
        let now = Instant::now();
        if self.due(now) && now.duration_since(self.last_slice) >= CLEANUP_SPACING {
            self.slice(now);
        }
    }

    fn slice(&mut self, now: Instant) {
        let Some(interval) = self.interval else {
            return;
        };
        if !self.sweep.in_progress() {
            self.slices = 0;
            self.started = now;
        }
        self.last_slice = now;
        self.slices += 1;
        match self.store.sweep_step(&mut self.sweep, CLEANUP_SLICE) {
            Ok(false) => {}
            Ok(true) => {
                let r = self.sweep.report();
                let level = if r.expired + r.corrupt + r.leftovers > 0 {
                    log::Level::Info
                } else {
                    log::Level::Debug
                };
                log::log!(
                    level,
                    "session cleanup: removed {} expired, {} corrupt, {} leftovers; kept {}; \
                     {} entries in {} slices over {} ms",
                    r.expired,
                    r.corrupt,
                    r.leftovers,
                    r.kept,
                    self.sweep.scanned(),
                    self.slices,
                    self.started.elapsed().as_millis()
                );
                self.next_pass = now + interval;
            }
            Err(e) => {
                log::warn!("session cleanup failed: {e}");
                self.next_pass = now + interval;
            }
        }
    }
}

/// A TCP socket on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`, listening if `listen`.
/// Not listening, it only holds the port (and learns the port when `addr` asks for port 0).
///
/// # Errors
/// The socket cannot be made or bound.
pub fn shared_socket(addr: SocketAddr, listen: bool) -> io::Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    if listen {
        rustix::net::listen(&fd, 1024)?;
    }
    Ok(TcpListener::from(fd))
}

/// Raises this process's soft limit of open files (`RLIMIT_NOFILE`) to its hard limit, as
/// nginx and most servers do at start, and returns the limit now in force (`None`:
/// unlimited). Each connection holds file descriptors and each session load opens a file,
/// so the common soft limit of 1024 is reached by a few hundred idle sockets.
///
/// # Errors
/// `setrlimit` refused; the old limit stays in force.
pub fn raise_open_files_limit() -> io::Result<Option<u64>> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

/// Logs a failed `accept` at most once per [`ACCEPT_LOG_EVERY`], with how many failures
/// were not logged, so that a server out of file descriptors does not flood its log.
#[derive(Default)]
pub(crate) struct AcceptErrors {
    last_logged: Option<Instant>,
    unlogged: u64,
}

/// The least time between two "accept failed" log lines.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

impl AcceptErrors {
    pub(crate) fn failed(&mut self, e: &io::Error) {
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

/// One counted open connection; dropping it frees the place.
struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    fn take(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        ConnectionSlot(count.clone())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Opens the store the settings describe (`SESSION_ENGINE`), ready to share between
/// threads.
///
/// # Errors
/// The sessions directory cannot be created or written.
pub fn file_store(settings: &Settings) -> Result<Arc<dyn SessionStore>, crate::StoreError> {
    match settings.engine {
        crate::config::Engine::File => Ok(Arc::new(open_file_store(settings)?)),
        #[cfg(feature = "redis")]
        crate::config::Engine::Redis => Ok(Arc::new(
            crate::store::redis::RedisStore::open(&settings.redis_url)?
                .with_locking(settings.locking)
                .with_lock_timeout(settings.lock_timeout),
        )),
        #[cfg(not(feature = "redis"))]
        crate::config::Engine::Redis => Err(crate::StoreError::Unavailable(
            "SESSION_ENGINE=redis needs filesession built with the redis feature".into(),
        )),
    }
}

/// Opens the file store the settings describe.
///
/// # Errors
/// The sessions directory cannot be created or written.
pub fn open_file_store(settings: &Settings) -> Result<crate::FileStore, crate::StoreError> {
    Ok(crate::FileStore::open(&settings.file_path)?
        .with_locking(settings.locking)
        .with_lock_timeout(settings.lock_timeout)
        .with_fsync(settings.file_fsync))
}
