//! The server: Django's `runserver` model on the HTTP layer ([`crate::http`]): ONE thread
//! does all network I/O and runs every handler, one request at a time.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::cleanup::Cleanup;
use crate::http::{Limits, Prepared, Ran, Request, Service, Turn};
use crate::pipeline::{App, Ticket};

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
            max_body_bytes: app.middleware().settings().max_body,
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
            self.app.middleware().store().clone(),
            self.app.middleware().settings().gc_interval,
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
    type Ticket = Ticket;

    fn turn(&self, request: &Request) -> Option<Turn> {
        self.app.turn(request)
    }

    fn prepare(&self, request: &Request) -> Prepared<Ticket> {
        self.app.prepare(request)
    }

    fn run(&self, request: Request, ticket: Ticket) -> Ran {
        self.app.run_off_thread(request, ticket)
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
