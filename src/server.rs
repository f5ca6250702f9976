//! The server: Django's `runserver` model on the HTTP layer ([`crate::http`]): ONE thread
//! does all network I/O and runs every handler, one request at a time.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::http::{Limits, Prepared, Request, Response, Service};
use crate::middleware::{Preflight, SessionMiddleware};
use crate::router::{Routed, Router};
use crate::store::{SessionLock, SessionStore, Sweep};

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

    /// Waits (bounded) for the session's lock, on a thread that may wait: the server calls
    /// it off its one thread, only when [`try_preflight`](App::try_preflight) found the
    /// lock held elsewhere. `Err` is the answer to give at once (503).
    pub fn preflight(&self, request: &Request) -> Result<Option<SessionLock>, Response> {
        let deadline =
            crate::expiry::later(Instant::now(), self.middleware.settings().lock_timeout);
        self.preflight_until(request, deadline)
    }

    /// [`preflight`](App::preflight) that waits no later than `deadline`.
    pub fn preflight_until(
        &self,
        request: &Request,
        deadline: Instant,
    ) -> Result<Option<SessionLock>, Response> {
        self.middleware.preflight_until(request, deadline)
    }

    /// [`preflight`](App::preflight) that never waits, for a thread that must not:
    /// [`Preflight::Busy`] means call `preflight` on one that may.
    pub fn try_preflight(&self, request: &Request) -> Preflight {
        // Every answer goes through the middleware, the router's 404s included, so every
        // request with a session cookie is preflighted.
        self.middleware.try_preflight(request)
    }

    /// Answers one request: route, load the session, run the handler, apply the middleware.
    /// A handler that panics gets a 500; the server goes on.
    pub fn handle(&self, request: Request) -> Response {
        self.handle_locked(request, None)
    }

    /// [`handle`](App::handle) with the lock [`preflight`](App::preflight) took.
    ///
    /// The session middleware runs around every answer, the router's own included (404,
    /// 405, the `APPEND_SLASH` redirect), as Django's does: a malformed cookie is deleted and
    /// `SESSION_SAVE_EVERY_REQUEST` saves on a 404 too. Before routing, as Django's
    /// middleware: a `Host` not in `ALLOWED_HOSTS` is answered 400, and an unsafe request to
    /// the JSON API from another origin 403 (`Origin`, `Sec-Fetch-Site`,
    /// `CSRF_TRUSTED_ORIGINS`).
    pub fn handle_locked(&self, mut request: Request, lock: Option<SessionLock>) -> Response {
        let path = request.path().to_owned();
        let routed = self
            .router
            .resolve(request.method(), &path, request.query());
        let settings = self.middleware.settings();
        let guard = crate::guard::check(
            &request,
            &settings.allowed_hosts,
            &settings.csrf_trusted_origins,
        );
        let handler = match (guard, routed) {
            (Err((status, message)), _) => Err(Response::error(&path, status, &message)),
            (Ok(()), Routed::Found(handler, params)) => {
                request.params = params;
                Ok(handler)
            }
            (Ok(()), other) => Err(routed_answer(&request, &path, other)),
        };
        let (session, had_cookie) = self.middleware.session_for(&request);
        let mut session = session.with_lock(lock);
        let response = match handler {
            Ok(handler) => {
                match catch_unwind(AssertUnwindSafe(|| handler(&request, &mut session))) {
                    Ok(response) => response,
                    Err(_) => {
                        log::error!("handler for {path} panicked; answered 500");
                        return Response::error(&path, 500, "Internal server error.");
                    }
                }
            }
            Err(answer) => answer,
        };
        self.middleware.finish(session, had_cookie, &path, response)
    }
}

/// The router's own answer when it found no handler (404, 405 with `Allow`, the
/// `APPEND_SLASH` 301); an empty 500 for `Found`, which never reaches it.
fn routed_answer(request: &Request, path: &str, routed: Routed) -> Response {
    match routed {
        Routed::NotFound => Response::error(path, 404, &format!("Not found: {path}")),
        Routed::MethodNotAllowed(methods) => {
            let allow: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
            Response::error(
                path,
                405,
                &format!("Method {} not allowed here.", request.method_token()),
            )
            .with_header("Allow", &allow.join(", "))
        }
        Routed::AppendSlash(location) => Response::redirect(301, &location),
        Routed::Found(..) => Response::new(500),
    }
}

/// Stops a running [`Server`]: it stops accepting, finishes the request in hand, writes
/// every answer already produced, then [`Server::run`] returns.
#[derive(Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
}

impl StopHandle {
    /// Asks the server to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // A permit is kept if the loop is not waiting at this instant.
        self.wake.notify_one();
    }

    /// Stops the server on SIGINT (Ctrl-C) or SIGTERM (feature `signals`, on by default).
    ///
    /// # Errors
    /// The signal handlers cannot be installed.
    #[cfg(feature = "signals")]
    pub fn stop_on_signals(&self) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let handle = self.clone();
        std::thread::Builder::new()
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
    listener: TcpListener,
    app: App,
    limits: Limits,
    stop: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
}

impl Server {
    /// Binds `addr` (listening with a backlog of [`LISTEN_BACKLOG`]) with default [`Limits`] and
    /// the body limit of the app's settings.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn bind(addr: impl ToSocketAddrs, app: App) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        // std listens with a backlog of 128: a burst of new connections beyond it has its
        // SYNs dropped and waits a second for the retry. Listening again raises it.
        rustix::net::listen(&listener, LISTEN_BACKLOG)?;
        Self::from_listener(listener, app)
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
            listener,
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
        StopHandle {
            stop: self.stop.clone(),
            wake: self.wake.clone(),
        }
    }

    /// Serves until stopped; the calling thread becomes the server's one thread (network
    /// I/O and handlers). Connections beyond [`Limits::max_connections`] (lowered to what
    /// the open-files limit allows: [`crate::http::connection_cap`]) close idle ones first.
    ///
    /// # Errors
    /// The runtime cannot be started.
    pub fn run(self) -> io::Result<()> {
        let cleanup = Cleanup::new(
            self.app.middleware.store().clone(),
            self.app.middleware.settings().gc_interval,
        );
        let pipeline = Pipeline {
            app: self.app,
            cleanup: RefCell::new(cleanup),
        };
        crate::http::serve(self.listener, pipeline, self.limits, self.stop, self.wake)
    }
}

/// The app and its cleanup, as the HTTP layer runs them.
struct Pipeline {
    app: App,
    cleanup: RefCell<Cleanup>,
}

impl Service for Pipeline {
    type Ticket = Option<SessionLock>;

    fn prepare(&self, request: &Request) -> Prepared<Self::Ticket> {
        match self.app.try_preflight(request) {
            Preflight::Ready(lock) => Prepared::Ready(lock),
            Preflight::Refused(answer) => Prepared::Answer(answer),
            Preflight::Busy => {
                // The deadline starts now: time spent waiting for a thread counts.
                let deadline = crate::expiry::later(
                    Instant::now(),
                    self.app.middleware.settings().lock_timeout,
                );
                let app = self.app.clone();
                Prepared::Wait(Box::new(move |request: &Request| {
                    app.preflight_until(request, deadline)
                }))
            }
        }
    }

    fn run(&self, request: Request, lock: Self::Ticket) -> Response {
        self.app.handle_locked(request, lock)
    }

    fn idle(&self) {
        self.cleanup.borrow_mut().idle();
    }

    fn idle_wait(&self) -> Duration {
        self.cleanup.borrow().wait()
    }

    fn after_request(&self) {
        self.cleanup.borrow_mut().between_requests();
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
pub(crate) const CLEANUP_SLICE: Duration = Duration::from_millis(2);
/// Under load, the least time between two cleanup slices (so at most ~10% of the time).
pub(crate) const CLEANUP_SPACING: Duration = Duration::from_millis(20);

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
                self.next_pass = crate::expiry::later(now, interval);
            }
            Err(e) => {
                log::warn!("session cleanup failed: {e}");
                self.next_pass = crate::expiry::later(now, interval);
            }
        }
    }
}

/// The listening backlog: connections the kernel completes before the server accepts them
/// (the kernel caps it at `net.core.somaxconn`, 4096 by default since Linux 5.4). A burst
/// beyond it has its SYNs dropped, and each such client waits a second for the retry.
pub const LISTEN_BACKLOG: i32 = 4096;

/// A TCP socket on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`, listening if `listen`.
/// Not listening, it only holds the port (and learns the port when `addr` asks for port 0).
///
/// # Errors
/// The socket cannot be made or bound.
pub(crate) fn shared_socket(addr: SocketAddr, listen: bool) -> io::Result<TcpListener> {
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
        rustix::net::listen(&fd, LISTEN_BACKLOG)?;
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
