//! One request's way through the app, in two typed steps: [`App::prepare`] resolves
//! everything about the request once (allowed host and origin, route, session cookie and
//! key, the session's lock) without waiting, and [`App::run`] uses what it resolved
//! (session, handler, the middleware's decision, the save).
//!
//! With a store whose loads or saves may wait ([`SessionStore::loads_wait`],
//! [`SessionStore::saves_wait`]: a database, Redis), the store is never called on the
//! server's one thread: `prepare` hands the lock and the load to a blocking thread
//! ([`Prepared::Wait`] in `request` locking, [`Prepared::Work`] otherwise), the handler runs
//! on the one thread with the session already read, and `run` hands the save (and the
//! release of a lock) to a blocking thread ([`Ran::Finish`]).
//!
//! [`SessionStore::loads_wait`]: crate::SessionStore::loads_wait
//! [`SessionStore::saves_wait`]: crate::SessionStore::saves_wait

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crate::expiry::later;
use crate::http::{Prepared, Ran, Request, Response, Turn};
use crate::key::SessionKey;
use crate::middleware::{CookieKey, SessionMiddleware, store_failure};
use crate::router::{Handler, Routed, Router};
use crate::session::Session;
use crate::store::{Acquired, StoreError};

/// The router and the session middleware: what the server's one thread runs for each
/// request.
///
/// The session middleware runs around every answer, the router's own included (404, 405,
/// the `APPEND_SLASH` redirect), as Django's does: a malformed cookie is deleted and
/// `SESSION_SAVE_EVERY_REQUEST` saves on a 404 too. Before routing, as Django's
/// middleware: a `Host` not in `ALLOWED_HOSTS` is answered 400, and an unsafe request to the
/// JSON API from another origin 403 (`Origin`, `Sec-Fetch-Site`, `CSRF_TRUSTED_ORIGINS`).
#[derive(Clone)]
pub struct App {
    router: Router,
    middleware: SessionMiddleware,
}

/// What [`App::prepare`] resolved for one request, for [`App::run`]: nothing is resolved
/// twice.
#[derive(Debug)]
pub struct Ticket {
    target: Target,
    cookie: CookieKey,
    acquired: Option<Acquired>,
    /// The session, read before the handler (off the one thread) from a store whose loads
    /// may wait.
    session: Option<Session>,
}

/// The session of `key`, read now, with what its lock preflight handed on.
fn preloaded(
    middleware: &SessionMiddleware,
    key: SessionKey,
    acquired: Option<Acquired>,
) -> Session {
    let session = middleware.session(Some(key), acquired);
    session.preload();
    session
}

/// Where the request goes: a handler with the route's captures, or an answer decided
/// before any handler (refused host or origin, 404, 405, the `APPEND_SLASH` 301).
enum Target {
    Handler(Handler, HashMap<String, String>),
    Answer(Response),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Handler(..) => f.write_str("Handler"),
            Target::Answer(r) => write!(f, "Answer({})", r.status()),
        }
    }
}

impl App {
    /// An app from its routes and its middleware.
    pub fn new(router: Router, middleware: SessionMiddleware) -> Self {
        App { router, middleware }
    }

    /// The session middleware.
    pub fn middleware(&self) -> &SessionMiddleware {
        &self.middleware
    }

    /// Requests of one session that may change it take turns when the store is used off the
    /// one thread (its loads or saves may wait): two of them must not read the same copy
    /// and both write it back, which a `merge`-mode read-modify-write (a counter, "delete if
    /// present") would lose, as it does across processes. One process then keeps the order
    /// and the exactness it has when everything runs on its one thread. Each waits at most
    /// the lock timeout for its turn (then 503). `None` for a request without a session
    /// cookie, for a store used on the thread, and for the safe methods of RFC 9110 §9.2.1
    /// (GET, HEAD, OPTIONS, TRACE): reads of one session overlap (a GET that writes, as the
    /// demo's `/setsession/`, is merged as any write; a GET that reads a key to write it
    /// back is as across processes: use `request` locking).
    pub fn turn(&self, request: &Request) -> Option<Turn> {
        let store = self.middleware.store();
        if !store.loads_wait() && !store.saves_wait() {
            return None;
        }
        let safe = matches!(
            request.method(),
            crate::http::Method::Get | crate::http::Method::Head | crate::http::Method::Options
        ) || request.method_token() == "TRACE";
        if safe {
            return None;
        }
        let key = self.middleware.cookie_key(request).key?;
        Some(Turn {
            key: u128::from_be_bytes(key.as_bytes()),
            wait: self.middleware.settings().lock_timeout,
        })
    }

    /// Resolves the request without waiting: host and origin checks, route, the session
    /// cookie and its key, and the session's lock, tried once. When the lock is held by
    /// another request or process the answer is [`Prepared::Wait`], a bounded wait
    /// (`SESSION_LOCK_TIMEOUT`, counted from this call) to run on a thread that may wait;
    /// when the store fails, [`Prepared::Answer`] with the error (5xx; 503 for a lock that
    /// stayed held).
    pub fn prepare(&self, request: &Request) -> Prepared<Ticket> {
        let mut ticket = self.resolve(request);
        if self.middleware.store().loads_wait() {
            return self.prepare_off_thread(ticket);
        }
        let (Some(key), Some(preflight)) = (ticket.cookie.key, self.middleware.store().preflight())
        else {
            return Prepared::Ready(ticket);
        };
        match preflight.acquire(&key, Duration::ZERO) {
            Ok(acquired) => {
                ticket.acquired = acquired;
                Prepared::Ready(ticket)
            }
            Err(StoreError::LockTimeout { .. }) => {
                // The deadline starts now: time spent waiting for a thread counts.
                let deadline = later(Instant::now(), self.middleware.settings().lock_timeout);
                let store = self.middleware.store().clone();
                Prepared::Wait(Box::new(move |request: &Request| {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    let Some(preflight) = store.preflight() else {
                        return Ok(ticket);
                    };
                    match preflight.acquire(&key, wait) {
                        Ok(acquired) => {
                            ticket.acquired = acquired;
                            Ok(ticket)
                        }
                        Err(e) => Err(store_failure(request.path(), &e)),
                    }
                }))
            }
            Err(e) => Prepared::Answer(store_failure(request.path(), &e)),
        }
    }

    /// Answers a prepared request: the session (with the lock `prepare` took), the handler,
    /// and the middleware's `process_response` (save, `Set-Cookie`, `Vary`). A panic in the
    /// handler unwinds out of here (the server answers 500; [`App::handle`] catches it).
    pub fn run(&self, request: Request, ticket: Ticket) -> Response {
        let (mut session, had_cookie, mut request, target) = self.begin(request, ticket);
        let response = match target {
            Target::Handler(handler, params) => {
                request.params = params;
                handler(&request, &mut session)
            }
            Target::Answer(answer) => answer,
        };
        self.middleware
            .finish(session, had_cookie, request.path(), response)
    }

    /// [`run`](App::run) for a server whose one thread must not wait: the handler here, and
    /// the middleware's save handed to a blocking thread ([`Ran::Finish`]) when the store's
    /// saves may wait and the session needs one (modified, `SESSION_SAVE_EVERY_REQUEST`) or
    /// holds a lock to let go of. A handler that panics is answered 500 with nothing saved,
    /// and a lock it held is let go on a blocking thread too.
    pub fn run_off_thread(&self, request: Request, ticket: Ticket) -> Ran {
        let (mut session, had_cookie, mut request, target) = self.begin(request, ticket);
        let path = request.path().to_owned();
        let middleware = &self.middleware;
        let waits = middleware.store().saves_wait();
        let response = match target {
            Target::Handler(handler, params) => {
                request.params = params;
                let ran = catch_unwind(AssertUnwindSafe(|| handler(&request, &mut session)));
                match ran {
                    Ok(response) => response,
                    Err(_) => {
                        log::error!("handler for {path} panicked; answered 500");
                        let failed = Response::error(&path, 500, "Internal server error.");
                        if waits && session.holds_lock() {
                            // Letting the lock go is a call to the store: not here.
                            return Ran::Finish(Box::new(move || {
                                drop(session);
                                failed
                            }));
                        }
                        return Ran::Answer(failed);
                    }
                }
            }
            Target::Answer(answer) => answer,
        };
        let needs_store =
            session.modified() || middleware.settings().save_every_request || session.holds_lock();
        if waits && needs_store {
            let middleware = middleware.clone();
            return Ran::Finish(Box::new(move || {
                middleware.finish(session, had_cookie, &path, response)
            }));
        }
        Ran::Answer(middleware.finish(session, had_cookie, &path, response))
    }

    /// The session (read already, or to read when first touched) and where the request
    /// goes: what is left is the handler and the middleware's `process_response`.
    fn begin(&self, request: Request, ticket: Ticket) -> (Session, bool, Request, Target) {
        let Ticket {
            target,
            cookie,
            acquired,
            session,
        } = ticket;
        let session = session.unwrap_or_else(|| self.middleware.session_of(&cookie, acquired));
        (session, cookie.present, request, target)
    }

    /// `prepare` for a store whose loads may wait: a request for a handler with a session
    /// key gets its session read on a blocking thread ([`Prepared::Work`]), with a first try
    /// at its lock (`request` locking) that does not wait; only a lock held elsewhere makes
    /// it a [`Prepared::Wait`], with the lock waits' own budget. The rest go on at once (no
    /// key: nothing to read; an answer without a handler reads the session only to save it,
    /// in the finish).
    fn prepare_off_thread(&self, mut ticket: Ticket) -> Prepared<Ticket> {
        let (Some(key), Target::Handler(..)) = (ticket.cookie.key, &ticket.target) else {
            return Prepared::Ready(ticket);
        };
        // The deadline starts now: time spent waiting for a thread counts.
        let deadline = later(Instant::now(), self.middleware.settings().lock_timeout);
        let middleware = self.middleware.clone();
        Prepared::Work(Box::new(move |request: &Request| {
            let acquired = match middleware.store().preflight() {
                None => None,
                Some(preflight) => match preflight.acquire(&key, Duration::ZERO) {
                    Ok(acquired) => acquired,
                    Err(StoreError::LockTimeout { .. }) => {
                        return Prepared::Wait(Box::new(move |request: &Request| {
                            let wait = deadline.saturating_duration_since(Instant::now());
                            let acquired = match middleware.store().preflight() {
                                Some(preflight) => preflight
                                    .acquire(&key, wait)
                                    .map_err(|e| store_failure(request.path(), &e))?,
                                None => None,
                            };
                            ticket.session = Some(preloaded(&middleware, key, acquired));
                            Ok(ticket)
                        }));
                    }
                    Err(e) => return Prepared::Answer(store_failure(request.path(), &e)),
                },
            };
            ticket.session = Some(preloaded(&middleware, key, acquired));
            Prepared::Ready(ticket)
        }))
    }

    /// Answers one request on this thread, for a server of your own (see
    /// `examples/tiny_http.rs`): what [`prepare`](App::prepare) resolves but the lock, then
    /// [`run`](App::run). With one thread there is nowhere else to wait, so the session
    /// takes its lock when the handler first touches it (a handler that never does never
    /// waits). A handler that panics gets a 500 and the app goes on.
    pub fn handle(&self, request: Request) -> Response {
        let path = request.path().to_owned();
        let answered = catch_unwind(AssertUnwindSafe(|| {
            let ticket = self.resolve(&request);
            self.run(request, ticket)
        }));
        answered.unwrap_or_else(|_| {
            log::error!("handler for {path} panicked; answered 500");
            Response::error(&path, 500, "Internal server error.")
        })
    }

    /// Everything about the request but the lock: where it goes, and its session cookie.
    fn resolve(&self, request: &Request) -> Ticket {
        Ticket {
            target: self.target(request),
            cookie: self.middleware.cookie_key(request),
            acquired: None,
            session: None,
        }
    }

    /// Where the request goes, checked and routed once.
    fn target(&self, request: &Request) -> Target {
        let path = request.path();
        let settings = self.middleware.settings();
        if let Err((status, message)) = crate::guard::check(request, settings) {
            return Target::Answer(Response::error(path, status, &message));
        }
        match self.router.resolve(request.method(), path, request.query()) {
            Routed::Found(handler, params) => Target::Handler(handler, params),
            Routed::NotFound => {
                Target::Answer(Response::error(path, 404, &format!("Not found: {path}")))
            }
            Routed::MethodNotAllowed(methods) => {
                let allow: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
                Target::Answer(
                    Response::error(
                        path,
                        405,
                        &format!("Method {} not allowed here.", request.method_token()),
                    )
                    .with_header("Allow", &allow.join(", ")),
                )
            }
            Routed::AppendSlash(location) => Target::Answer(Response::redirect(301, &location)),
        }
    }
}
