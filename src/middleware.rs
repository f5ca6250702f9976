//! Django's SessionMiddleware: the cookie in -> a lazy Session; after the handler: save,
//! Set-Cookie, delete the cookie, Vary.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cookie::time::OffsetDateTime;
use cookie::{Cookie, SameSite as CookieSameSite};

use crate::config::{SameSite, Settings};
use crate::expiry::add_clamped;
use crate::http::{Request, Response};
use crate::key::SessionKey;
use crate::session::Session;
use crate::store::{Acquired, Record, SessionStore, StoreError};

/// Loads the session a request names and applies Django's rules to the response.
///
/// ```
/// use std::sync::Arc;
/// use filesession::{MemoryStore, Method, Request, Response, SessionMiddleware, Settings};
///
/// let mw = SessionMiddleware::new(Arc::new(MemoryStore::new()), Settings::default());
/// let request = Request::new(Method::Get, "/setsession/", &[], b"");
/// let (mut session, had_cookie) = mw.session_for(&request);
/// session.insert("sname", "abc");
/// let response = mw.finish(session, had_cookie, "/setsession/", Response::text(200, "ok"));
/// let cookie = response.header("set-cookie").unwrap();
/// assert!(cookie.starts_with("sessionid=") && cookie.contains("HttpOnly"));
/// assert_eq!(response.header("vary"), Some("Cookie"));
/// ```
#[derive(Clone)]
pub struct SessionMiddleware {
    store: Arc<dyn SessionStore>,
    settings: Arc<Settings>,
}

/// What the request's session cookie named: Django reads the cookie once, the last of
/// several with the name.
#[derive(Debug, Clone, PartialEq)]
pub struct CookieKey {
    /// The key, if the cookie's value is a key of the store's kind (anything else names no
    /// session). Always `None` with `SESSION_ENGINE=signed_cookies`, whose cookie is the
    /// session itself.
    pub key: Option<SessionKey>,
    /// Whether the request carried the cookie at all (a malformed one is then deleted).
    pub present: bool,
    /// `SESSION_ENGINE=signed_cookies`: the session the cookie carries, if it verified.
    cookie_session: Option<Record>,
}

/// Django's message for a save that found the session deleted meanwhile.
pub const SESSION_INTERRUPTED: &str = "The request's session was deleted before the request \
completed. The user may have logged out in a concurrent request, for example.";

impl SessionMiddleware {
    /// A middleware over `store` with `settings`.
    pub fn new(store: Arc<dyn SessionStore>, settings: Settings) -> Self {
        SessionMiddleware {
            store,
            settings: Arc::new(settings),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// The session named by the request's cookie (not loaded yet), and whether the request
    /// carried the cookie at all. With several cookies of the name, the last one counts, as
    /// in Django. A value that is not a canonical key means no session.
    pub fn session_for(&self, request: &Request) -> (Session, bool) {
        let cookie = self.cookie_key(request);
        (self.session_of(&cookie, None), cookie.present)
    }

    /// What the request's session cookie names (`SESSION_COOKIE_NAME`).
    pub fn cookie_key(&self, request: &Request) -> CookieKey {
        self.cookie_key_in(request.headers_named("cookie"))
    }

    /// [`cookie_key`](SessionMiddleware::cookie_key) from the values of a request's `Cookie`
    /// headers, for a server of another kind (the tower layer reads `http::HeaderMap`).
    pub fn cookie_key_in<'a>(
        &self,
        cookie_headers: impl IntoIterator<Item = &'a str>,
    ) -> CookieKey {
        let value = cookie_headers
            .into_iter()
            .flat_map(Cookie::split_parse)
            .filter_map(Result::ok)
            .filter(|c| c.name() == self.settings.cookie_name)
            .map(|c| c.value_trimmed().to_owned())
            .last();
        let present = value.is_some();
        if let Some(signed) = self.store.signed_cookies() {
            return CookieKey {
                key: None,
                present,
                cookie_session: value.and_then(|v| signed.decode(&v, SystemTime::now())),
            };
        }
        CookieKey {
            key: value.as_deref().and_then(|v| self.store.parse_key(v)),
            present,
            cookie_session: None,
        }
    }

    /// The session of `key`, not loaded yet, with what the store's lock preflight handed on
    /// for it, if anything. With `SESSION_ENGINE=signed_cookies` (no keys): a new session;
    /// use [`session_of`](SessionMiddleware::session_of).
    pub fn session(&self, key: Option<SessionKey>, acquired: Option<Acquired>) -> Session {
        if let Some(signed) = self.store.signed_cookies() {
            let (store, key) = signed.request_store(None);
            return Session::new(store, key, self.settings.session_config());
        }
        Session::new(self.store.clone(), key, self.settings.session_config())
            .with_acquired(acquired)
    }

    /// The session the request's cookie names (see
    /// [`cookie_key`](SessionMiddleware::cookie_key)), not loaded yet, with what the
    /// store's lock preflight handed on for it, if anything. With
    /// `SESSION_ENGINE=signed_cookies`, the session the cookie carries, in a store of this
    /// request only.
    pub fn session_of(&self, cookie: &CookieKey, acquired: Option<Acquired>) -> Session {
        match self.store.signed_cookies() {
            Some(signed) => {
                let (store, key) = signed.request_store(cookie.cookie_session.as_ref());
                Session::new(store, key, self.settings.session_config())
            }
            None => self.session(cookie.key, acquired),
        }
    }

    /// Applies Django's `process_response` to the handler's response: save when modified
    /// (or `SESSION_SAVE_EVERY_REQUEST`) and the status is below 500, then `Set-Cookie`;
    /// delete the cookie of a request whose session is now empty; `Vary: Cookie` when the
    /// session was accessed or the cookie set. A save that fails answers 400 (session
    /// deleted meanwhile) or 5xx, never with a cookie. `path` picks JSON or text errors.
    pub fn finish(
        &self,
        mut session: Session,
        had_cookie: bool,
        path: &str,
        mut response: Response,
    ) -> Response {
        if let Some(error) = session.load_error() {
            let mut failed = store_failure(path, error);
            patch_vary(&mut failed);
            return failed;
        }
        let wants_save = session.modified() || self.settings.save_every_request;
        if wants_save && session.session_key().is_some() {
            // Resolve the cookie's key first: an unknown key then counts as no session
            // rather than a session to update (Django's file backend creates an empty file
            // here instead).
            let _ = session.len();
        }
        let empty = session.is_empty();
        // A cookie naming data that does not verify is left alone unless the handler wrote
        // (Django keeps it: it may be Django's live session under another SECRET_KEY).
        let kept = session.unverified() && !session.modified();
        if had_cookie && empty && !kept {
            if let Err(error) = session.save() {
                // a flush whose delete failed: the session is still there
                return store_failure(path, &error);
            }
            self.render_after_save(&mut response, &session, path);
            response.add_header("Set-Cookie", &self.deletion_cookie());
            patch_vary(&mut response);
            return response;
        }
        let mut vary = false;
        if wants_save && !empty && response.status() < 500 {
            match session.save() {
                Ok(()) => {}
                Err(StoreError::Deleted(_)) => {
                    let mut interrupted = Response::error(path, 400, SESSION_INTERRUPTED);
                    patch_vary(&mut interrupted);
                    return interrupted;
                }
                Err(error) => {
                    let mut failed = store_failure(path, &error);
                    patch_vary(&mut failed);
                    return failed;
                }
            }
            if let Some(key) = session.session_key() {
                match self.session_cookie(key, &session) {
                    Ok(cookie) => response.add_header("Set-Cookie", &cookie),
                    Err(error) => {
                        let mut failed = store_failure(path, &error);
                        patch_vary(&mut failed);
                        return failed;
                    }
                }
                vary = true;
            }
        }
        self.render_after_save(&mut response, &session, path);
        if let Some(error) = session.load_error() {
            // The renderer was the first to read the session, and the load failed: the
            // answer must not show the session as empty.
            let mut failed = store_failure(path, error);
            patch_vary(&mut failed);
            return failed;
        }
        // Accessed by the handler, or by the renderer just now.
        if vary || session.accessed() {
            patch_vary(&mut response);
        }
        response
    }

    /// Runs the renderer [`Response::json_after_save`] left, if any, against the saved
    /// session. A renderer that fails makes the answer a 500 that keeps the session's cookie
    /// only (the session is saved; the handler's other cookies went with the answer it
    /// meant).
    fn render_after_save(&self, response: &mut Response, session: &Session, path: &str) {
        let Some(AfterSave(render)) = response.extensions_mut().remove::<AfterSave>() else {
            return;
        };
        let mut body = Vec::new();
        if let Err(e) = render(session, &mut body) {
            log::error!("{path}: rendering the answer after the save failed: {e}");
            let mut failed = Response::error(
                path,
                500,
                "The session was saved, but the answer could not be rendered.",
            );
            let ours = format!("{}=", self.settings.cookie_name);
            for (name, value) in response.headers() {
                if name.eq_ignore_ascii_case("set-cookie") && value.starts_with(&ours) {
                    failed.add_header(name, value);
                }
            }
            *response = failed;
            return;
        }
        response.set_body(body);
    }

    fn base_cookie<'c>(&self, value: String) -> cookie::CookieBuilder<'c> {
        let s = &self.settings;
        let mut c = Cookie::build((s.cookie_name.clone(), value)).path(s.cookie_path.clone());
        if let Some(domain) = &s.cookie_domain {
            c = c.domain(domain.clone());
        }
        if let Some(same_site) = s.cookie_samesite {
            c = c.same_site(match same_site {
                SameSite::Strict => CookieSameSite::Strict,
                SameSite::Lax => CookieSameSite::Lax,
                SameSite::None => CookieSameSite::None,
            });
        }
        c
    }

    /// `sessionid=<key>; HttpOnly; SameSite=Lax; Path=/; Max-Age=…; Expires=…`; with
    /// `SESSION_ENGINE=signed_cookies` the value is the signed session.
    ///
    /// # Errors
    /// [`StoreError::CookieTooLarge`], [`StoreError::TooDeep`] (signed cookies).
    fn session_cookie(&self, key: &SessionKey, session: &Session) -> Result<String, StoreError> {
        let s = &self.settings;
        let value = match self.store.signed_cookies() {
            Some(signed) => signed.encode(session.data(), session.expiry(), SystemTime::now())?,
            None => key.to_string(),
        };
        let mut c = self.base_cookie(value);
        if s.cookie_httponly {
            c = c.http_only(true);
        }
        if s.cookie_secure {
            c = c.secure(true);
        }
        if !session.expire_at_browser_close() {
            let age = session.expiry_age();
            let now = SystemTime::now();
            let expires = if age >= 0 {
                add_clamped(now, Duration::from_secs(age.unsigned_abs()))
            } else {
                now.checked_sub(Duration::from_secs(age.unsigned_abs()))
                    .unwrap_or(UNIX_EPOCH)
            };
            c = c
                .max_age(cookie::time::Duration::seconds(age))
                .expires(to_offset(expires));
        }
        Ok(c.build().to_string())
    }

    /// `sessionid=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; SameSite=Lax`.
    ///
    /// `Secure` when the name has a `__Secure-` or `__Host-` prefix or SameSite is `None`:
    /// a browser ignores such a cookie without it, and the old cookie would survive the
    /// logout (Django's `HttpResponse.delete_cookie`, 5.2).
    fn deletion_cookie(&self) -> String {
        let s = &self.settings;
        let secure = s.cookie_name.starts_with("__Secure-")
            || s.cookie_name.starts_with("__Host-")
            || s.cookie_samesite == Some(SameSite::None);
        self.base_cookie(String::new())
            .max_age(cookie::time::Duration::ZERO)
            .expires(OffsetDateTime::UNIX_EPOCH)
            .secure(secure)
            .build()
            .to_string()
    }
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    // Cookie dates stop at year 9999 like the session files.
    OffsetDateTime::from(crate::expiry::clamp_time(t))
}

/// Adds `Cookie` to `Vary`, keeping what is there (Django's `patch_vary_headers`).
fn patch_vary(response: &mut Response) {
    let existing = response.header("vary").map(str::to_owned);
    match existing {
        None => response.add_header("Vary", "Cookie"),
        Some(v) => {
            let has = |t: &str| v.split(',').any(|x| x.trim().eq_ignore_ascii_case(t));
            if !has("*") && !has("cookie") {
                response.set_header("Vary", &format!("{v}, Cookie"));
            }
        }
    }
}

/// The answer to a store failure: a status a client can act on and a message without
/// server paths; the full error goes to the log.
pub(crate) fn store_failure(path: &str, error: &StoreError) -> Response {
    log::error!("session store: {error}");
    let (status, message) = match error {
        StoreError::Deleted(_) => (400, SESSION_INTERRUPTED.to_string()),
        StoreError::LockTimeout { waited, .. } => (
            503,
            format!(
                "The session is busy with another request; gave up after {} ms. Try again.",
                waited.as_millis()
            ),
        ),
        StoreError::TooDeep { depth, limit, .. } => (
            400,
            format!("A session value nests {depth} levels deep, over the limit of {limit}."),
        ),
        StoreError::CookieTooLarge { size, limit } => (
            500,
            format!(
                "The session would make a cookie of {size} bytes, over the {limit} bytes a \
                 browser keeps (SESSION_ENGINE=signed_cookies keeps the whole session in its \
                 cookie). Nothing was saved."
            ),
        ),
        StoreError::TooLarge { size, limit, .. } => (
            413,
            format!("The session would take {size} bytes, over the limit of {limit} bytes."),
        ),
        StoreError::Io { action, source, .. } if is_out_of_descriptors(source) => (
            503,
            format!("Could not {action}: the server is out of file descriptors. Try again."),
        ),
        StoreError::Io { action, source, .. } if is_out_of_space(source) => (
            507,
            format!("Could not {action}: the session store is out of space ({source})."),
        ),
        StoreError::Io { action, source, .. } => (
            500,
            format!("Could not {action}: {source}. Nothing was saved."),
        ),
        StoreError::DirectoryGone(_) => (
            500,
            "The session directory was removed while the server was running; nothing was \
             saved. Restart the server to create it again."
                .to_string(),
        ),
        StoreError::DatabaseGone(_) => (
            500,
            "The session database was removed or replaced while the server was running; \
             nothing was saved. Restart the server to open it again."
                .to_string(),
        ),
        StoreError::Unavailable(_) | StoreError::Backend { .. } => (
            503,
            "The session store is unavailable; nothing was saved. Try again shortly.".to_string(),
        ),
        _ => (
            500,
            "The session store failed; nothing was saved. The server log has the details."
                .to_string(),
        ),
    };
    let mut response = Response::error(path, status, &message);
    if status == 503 {
        response.add_header("Retry-After", "1");
    }
    response
}

/// `EMFILE` (this process) or `ENFILE` (the system): out of file descriptors, a condition
/// that passes, so the client is told to retry.
fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
            || code == rustix::io::Errno::NFILE.raw_os_error()
    )
}

fn is_out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// A body rendered once the session is saved, kept in the response's extensions by
/// [`Response::json_after_save`].
#[derive(Clone, Copy)]
pub(crate) struct AfterSave(pub(crate) RenderAfterSave);

/// A renderer for [`Response::json_after_save`]: writes the JSON body for the saved session
/// into the buffer given (empty at the call).
///
/// # Errors
/// The serializer's: the response is then a 500 that keeps the session's cookie (the log
/// says why).
pub type RenderAfterSave = fn(&Session, &mut Vec<u8>) -> serde_json::Result<()>;

impl Response {
    /// A JSON response whose body is rendered after the session is saved, so that it shows
    /// the saved session (a new key, its expiry). `status` decides the save as usual.
    ///
    /// The renderer writes the body itself, so that it can serialize a view borrowing the
    /// session's data rather than a copy of it (`serde_json::to_writer`). A renderer that
    /// reads the session counts as an access (`Vary: Cookie`); if it is the first to read
    /// it and the load fails, the answer is that failure (a 503 for a lock timeout), never
    /// the session shown empty.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use filesession::{MemoryStore, Method, Request, Response, SessionMiddleware, Settings};
    ///
    /// let mw = SessionMiddleware::new(Arc::new(MemoryStore::new()), Settings::default());
    /// let request = Request::new(Method::Post, "/visit", &[], b"");
    /// let (mut session, had_cookie) = mw.session_for(&request);
    /// session.insert("visits", 1);
    /// let response = Response::json_after_save(200, |session, body| {
    ///     serde_json::to_writer(body, &(session.session_key().is_some(), session.data()))
    /// });
    /// let response = mw.finish(session, had_cookie, "/visit", response);
    /// assert_eq!(response.body(), br#"[true,{"visits":1}]"#);
    /// ```
    pub fn json_after_save(status: u16, render: RenderAfterSave) -> Self {
        let mut response = Response::new(status).with_header("Content-Type", "application/json");
        response.extensions_mut().insert(AfterSave(render));
        response
    }
}
