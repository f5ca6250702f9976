//! Sessions in any tower stack (feature `tower`), and in axum handlers (feature `axum`):
//! [`SessionLayer`] wraps a service of `http::Request`s, and each request's handler finds a
//! [`SessionHandle`] in the request's extensions (with `axum`: as an extractor).
//!
//! The layer does what [`App`](crate::App) does around a handler, with the same code:
//! the cookie read as [`SessionMiddleware::cookie_key_in`] reads it, the session loaded
//! before the handler (on a blocking thread when the store may wait, or when the lock is
//! held: never a wait on a runtime worker), and after the handler
//! [`SessionMiddleware::finish`] applies Django's `process_response` (save, `Set-Cookie`,
//! the deletion cookie, `Vary: Cookie`, 400 for a session deleted meanwhile, 5xx on a store
//! failure) to the handler's `http::Response`. So a tower stack gets what `runserver` gives:
//! merge saves (two requests that change different keys of one session both keep their
//! change), `request` locking (the lock held from before the handler until its response is
//! saved), no resurrection, fresh reads. Each request runs in a task of its own: a client
//! that goes away mid-handler still gets its save.
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//! use filesession::Settings;
//! use filesession::tower::{SessionHandle, SessionLayer};
//!
//! async fn visits(session: SessionHandle) -> String {
//!     let n = session.get_as::<u64>("visits").await.ok().flatten().unwrap_or(0) + 1;
//!     let _ = session.insert("visits", n).await;
//!     format!("visit number {n}")
//! }
//!
//! let layer = SessionLayer::from_settings(Settings::from_values(|name| std::env::var(name).ok())?)?;
//! let app = Router::new().route("/", get(visits)).layer(layer);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::header::{COOKIE, SET_COOKIE, VARY};
use http::{HeaderName, HeaderValue};
use tokio::sync::Semaphore;

use crate::config::Settings;
use crate::expiry::later;
use crate::key::SessionKey;
use crate::middleware::{AfterSave, CookieKey, RenderAfterSave, SessionMiddleware, store_failure};
use crate::session::Session;
use crate::store::{self, Acquired, SessionStore, StoreError};

mod handle;

pub use handle::{SessionError, SessionHandle};

/// A tower [`Layer`](tower_layer::Layer): sessions for the service it wraps.
#[derive(Clone)]
pub struct SessionLayer {
    middleware: SessionMiddleware,
    /// Turns at waiting for a lock on a blocking thread, shared by every service made.
    lock_waits: Arc<Semaphore>,
}

impl SessionLayer {
    /// A layer applying `middleware`'s store and settings.
    pub fn new(middleware: SessionMiddleware) -> Self {
        SessionLayer {
            middleware,
            lock_waits: Arc::new(Semaphore::new(crate::http::MAX_LOCK_WAITS)),
        }
    }

    /// A layer over the store `settings` name (`SESSION_ENGINE`; [`store::open`]), with
    /// Django's cookie settings.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be opened (a directory that cannot be created, a
    /// database that does not answer).
    pub fn from_settings(settings: Settings) -> Result<Self, StoreError> {
        let store = store::open(&settings)?;
        Ok(SessionLayer::new(SessionMiddleware::new(store, settings)))
    }
}

impl<S> tower_layer::Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> SessionService<S> {
        SessionService {
            inner,
            middleware: self.middleware.clone(),
            lock_waits: Arc::clone(&self.lock_waits),
        }
    }
}

/// The service [`SessionLayer`] makes: loads the request's session, runs the inner service
/// with a [`SessionHandle`] in the request's extensions, then saves the session and sets
/// the cookie on its response.
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    middleware: SessionMiddleware,
    lock_waits: Arc<Semaphore>,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for SessionService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<Vec<u8>> + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The service polled ready is the one that runs this request (tower's rule).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let middleware = self.middleware.clone();
        let lock_waits = Arc::clone(&self.lock_waits);
        // A task of its own: a client that goes away drops the future the server awaits,
        // not this one, so the handler still ends and its session is still saved (and a
        // lock or lease it holds let go off the runtime's workers, as on every path here).
        let request_task = tokio::spawn(async move {
            let path = request.uri().path().to_owned();
            let cookie = middleware.cookie_key_in(
                request
                    .headers()
                    .get_all(COOKIE)
                    .iter()
                    // As runserver reads them: any UTF-8 (`to_str` refuses all but ASCII,
                    // and a cookie of another name with an accent would hide the session's).
                    .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok()),
            );
            let session = match load(&middleware, &lock_waits, &cookie, &path).await {
                Ok(session) => session,
                Err(answer) => return Ok(into_http(answer)),
            };
            let handle = SessionHandle(Arc::new(Mutex::new(Some(session))));
            request.extensions_mut().insert(handle.clone());
            let ran = AssertUnwindSafe(inner.call(request)).catch_unwind().await;
            // From here on the handler's clones are detached: their changes are refused.
            let session = handle.detach();
            match (ran, session) {
                (Ok(Ok(response)), Some(session)) => {
                    Ok(finish(middleware, session, cookie.present, path, response).await)
                }
                (Ok(Ok(_)), None) => {
                    // Only this layer takes the session out of its handle.
                    Ok(into_http(crate::http::Response::error(
                        &path,
                        500,
                        "The request's session went missing.",
                    )))
                }
                (Ok(Err(e)), session) => {
                    release(&middleware, session).await;
                    Err(e)
                }
                (Err(_panic), session) => {
                    log::error!("handler for {path} panicked; answered 500, nothing saved");
                    release(&middleware, session).await;
                    Ok(into_http(crate::http::Response::error(
                        &path,
                        500,
                        "Internal server error.",
                    )))
                }
            }
        });
        Box::pin(async move {
            request_task.await.unwrap_or_else(|e| {
                // Only a runtime shutting down cancels the task; a panic was caught inside.
                log::error!("a request's session task ended early: {e}");
                Ok(into_http(crate::http::Response::error(
                    "",
                    500,
                    "Internal server error.",
                )))
            })
        })
    }
}

/// The session of `key`, read before the handler as [`App::prepare`](crate::App::prepare)
/// reads it: first with the lock tried once, without waiting (here when the store's loads
/// never wait, as the file store's; else on a blocking thread); only a lock held by another
/// request or process makes it wait, on a blocking thread, at most
/// [`MAX_LOCK_WAITS`](crate::http::MAX_LOCK_WAITS) such waits at once (the others wait for
/// a turn here, holding no thread), all by `SESSION_LOCK_TIMEOUT` from now. `Err`: the
/// answer to a store failure (503 for a lock still held at the deadline).
async fn load(
    middleware: &SessionMiddleware,
    lock_waits: &Arc<Semaphore>,
    cookie: &CookieKey,
    path: &str,
) -> Result<Session, crate::http::Response> {
    let Some(key) = cookie.key else {
        // No key: a new session, or (signed cookies) the one the cookie carries.
        return Ok(middleware.session_of(cookie, None));
    };
    let start = Instant::now();
    let deadline = later(start, middleware.settings().lock_timeout);
    let first = if middleware.store().loads_wait() {
        let middleware = middleware.clone();
        off_thread(path, move || load_now(&middleware, key, Duration::ZERO)).await?
    } else {
        load_now(middleware, key, Duration::ZERO)
    };
    match first {
        Ok(session) => return Ok(session),
        Err(StoreError::LockTimeout { .. }) => {}
        Err(e) => return Err(store_failure(path, &e)),
    }
    let turn = tokio::time::timeout_at(deadline.into(), Arc::clone(lock_waits).acquire_owned());
    let Ok(Ok(permit)) = turn.await else {
        let timeout = StoreError::LockTimeout {
            key,
            waited: start.elapsed(),
        };
        return Err(store_failure(path, &timeout));
    };
    let middleware = middleware.clone();
    let waited = off_thread(path, move || {
        let _turn = permit;
        load_now(
            &middleware,
            key,
            deadline.saturating_duration_since(Instant::now()),
        )
    })
    .await?;
    waited.map_err(|e| store_failure(path, &e))
}

/// The session of `key` read now, its lock waited for at most `wait`.
fn load_now(
    middleware: &SessionMiddleware,
    key: SessionKey,
    wait: Duration,
) -> Result<Session, StoreError> {
    let acquired = try_lock(middleware.store().as_ref(), &key, wait)?;
    let session = middleware.session(Some(key), acquired);
    session.preload();
    Ok(session)
}

/// Runs `f` on one of tokio's blocking threads. `Err`: a 500, if it panicked.
async fn off_thread<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, crate::http::Response> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        log::error!("{path}: reading the session failed: {e}");
        crate::http::Response::error(path, 500, "Internal server error.")
    })
}

/// The store's lock preflight for `key`, waiting at most `wait` (none: nothing to wait for).
fn try_lock(
    store: &dyn SessionStore,
    key: &SessionKey,
    wait: Duration,
) -> Result<Option<Acquired>, StoreError> {
    match store.preflight() {
        Some(preflight) => preflight.acquire(key, wait),
        None => Ok(None),
    }
}

/// Lets go of a session that is not saved (a handler that failed or panicked), and of its
/// lock: on a blocking thread when that may wait (a lease released in a store).
async fn release(middleware: &SessionMiddleware, session: Option<Session>) {
    let Some(session) = session else { return };
    if middleware.store().saves_wait() && session.holds_lock() {
        let _ = tokio::task::spawn_blocking(move || drop(session)).await;
    }
}

/// Marks the answer [`finish`] hands to the middleware: still there afterwards, the
/// middleware kept the handler's answer (and only added headers).
#[derive(Clone, Copy)]
struct HandlersAnswer;

/// Django's `process_response` on the handler's `http::Response`, by
/// [`SessionMiddleware::finish`] itself: it is given the status and the `Vary` header (all
/// it reads of an answer), and either keeps that answer, whose `Set-Cookie` and `Vary` are
/// then set on the handler's, or replaces it (400, 5xx), which is then the answer. On a
/// blocking thread when the store's saves may wait.
async fn finish<B: From<Vec<u8>> + Send + 'static>(
    middleware: SessionMiddleware,
    session: Session,
    had_cookie: bool,
    path: String,
    response: http::Response<B>,
) -> http::Response<B> {
    let (mut parts, body) = response.into_parts();
    let mut shell = crate::http::Response::new(parts.status.as_u16());
    let vary: Vec<&str> = parts
        .headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !vary.is_empty() {
        shell.add_header("Vary", &vary.join(", "));
    }
    shell.extensions_mut().insert(HandlersAnswer);
    let renders = parts.extensions.remove::<AfterSave>();
    if let Some(render) = renders {
        shell.extensions_mut().insert(render);
    }
    let decided = if middleware.store().saves_wait() {
        let finishing = path.clone();
        tokio::task::spawn_blocking(move || {
            middleware.finish(session, had_cookie, &finishing, shell)
        })
        .await
        .unwrap_or_else(|e| {
            log::error!("saving the session of {path} failed: {e}");
            crate::http::Response::error(&path, 500, "Internal server error.")
        })
    } else {
        middleware.finish(session, had_cookie, &path, shell)
    };
    if decided.extensions().get::<HandlersAnswer>().is_none() {
        return into_http(decided);
    }
    let body = match renders {
        // Rendered from the saved session.
        Some(_) => B::from(decided.body().to_vec()),
        None => body,
    };
    for (name, value) in decided.headers() {
        let Ok(value) = HeaderValue::from_str(value) else {
            continue;
        };
        if name.eq_ignore_ascii_case("vary") {
            parts.headers.insert(VARY, value);
        } else if name.eq_ignore_ascii_case("set-cookie") {
            parts.headers.append(SET_COOKIE, value);
        }
    }
    http::Response::from_parts(parts, body)
}

/// A JSON answer whose body is rendered once the session is saved, so that it shows the
/// saved session (a new key after [`cycle_key`](SessionHandle::cycle_key), the new expiry):
/// [`Response::json_after_save`](crate::Response::json_after_save) for a tower service.
/// The status decides the save as usual.
pub fn json_after_save<B: Default>(
    status: http::StatusCode,
    render: RenderAfterSave,
) -> http::Response<B> {
    let mut response = http::Response::new(B::default());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response.extensions_mut().insert(AfterSave(render));
    response
}

/// One of this crate's answers (an error the middleware decided) as an `http::Response`.
fn into_http<B: From<Vec<u8>>>(answer: crate::http::Response) -> http::Response<B> {
    let mut response = http::Response::new(B::from(answer.body().to_vec()));
    *response.status_mut() = http::StatusCode::from_u16(answer.status())
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in answer.headers() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}
