//! # filesession
//!
//! Django's session framework (`django.contrib.sessions`) in Rust: a [`Session`] that
//! behaves like Django's `request.session`, stored as one human-readable JSON file per
//! session by [`FileStore`], with advisory file locks so that concurrent requests, threads
//! and processes never lose each other's changes.
//!
//! ## Quick start
//!
//! ```
//! use std::sync::Arc;
//! use filesession::{FileStore, Session, SessionConfig, SessionKey};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Arc::new(FileStore::open(dir.path())?);
//!
//! // First request: no cookie yet.
//! let mut session = Session::new(store.clone(), None, SessionConfig::default());
//! session.insert("sname", "abc");
//! session.insert("semail", "abc@gmail.com");
//! session.save()?;                       // creates <dir>/<key>.json
//! let cookie = session.session_key().expect("saved").to_string();
//!
//! // Next request: the cookie comes back.
//! let key = SessionKey::parse(&cookie);  // anything but a canonical UUID v4 is None
//! let session = Session::new(store, key, SessionConfig::default());
//! assert_eq!(session.get("sname"), Some(&"abc".into()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## A server
//!
//! [`Server`] runs Django's `runserver` model on hyper ([`http`]): one thread does all
//! network I/O and runs every handler, one request at a time. [`SessionMiddleware`] applies Django's cookie rules around
//! your handlers, plain functions routed by [`Router`]:
//!
//! ```no_run
//! use filesession::{App, Method, Request, Response, Router, Server, Session,
//!                   SessionMiddleware, Settings, file_store};
//!
//! fn visits(_: &Request, session: &mut Session) -> Response {
//!     let n = session.get_as::<u64>("visits").ok().flatten().unwrap_or(0) + 1;
//!     session.insert("visits", n);
//!     Response::text(200, format!("visit number {n}"))
//! }
//!
//! let settings = Settings::default();
//! let store = file_store(&settings)?;
//! let router = Router::new().route(Method::Get, "/", visits);
//! let server = Server::bind("127.0.0.1:8001", App::new(router, SessionMiddleware::new(store, settings)))?;
//! server.stop_handle().stop_on_signals()?;
//! server.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## The concurrency contract
//!
//! * **`merge` locking (default).** A save locks the session file for microseconds,
//!   re-reads the newest copy, applies only what this request changed (keys set, keys
//!   removed, clear, expiry) and writes. Two requests that change different keys of one
//!   session both keep their change; for one key the last save wins. Requests never wait
//!   for each other's handlers.
//! * **`request` locking.** The session's lock is held from the first access to its data
//!   until the end of the request, as PHP does, so a read-modify-write such as a visit
//!   counter is exact across processes. Requests of one session run one at a time.
//! * In both modes a save never resurrects a session deleted meanwhile
//!   ([`StoreError::Deleted`]), lock waits are bounded ([`StoreError::LockTimeout`]), and
//!   every file on disk is whole at every instant, even if a process is killed mid-write.
//!
//! ## The file format
//!
//! `<dir>/<key>.json`, mode 0600, in a 0700 directory:
//!
//! ```json
//! {
//!   "format": 1,
//!   "expires_at": "2026-12-10T11:37:46Z",
//!   "expiry": "default",
//!   "data": {
//!     "semail": "abc@gmail.com",
//!     "sname": "abc"
//!   }
//! }
//! ```
//!
//! `expiry` is `"default"`, `"browser_close"`, `{"seconds": N}` or `{"at": "<RFC 3339>"}`
//! (see [`Expiry`]); `expires_at` is when the session ends, enforced on load.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "demo")]
mod app;
mod config;
mod expiry;
mod guard;
pub mod http;
mod key;
mod middleware;
mod router;
mod server;
mod session;
mod settings_table;
mod store;
#[cfg(feature = "signals")]
mod supervisor;

#[cfg(feature = "demo")]
pub use app::demo_router;
pub use config::{
    DEFAULT_ALLOWED_HOSTS, DEFAULT_MAX_BODY, DEFAULT_REDIS_URL, Engine, SameSite, SettingError,
    Settings, redacted,
};
pub use http::{Limits, Method, Request, Response};
pub use middleware::{Preflight, SESSION_INTERRUPTED, SessionMiddleware};
pub use router::{Handler, Routed, Router, safe_location};
pub use server::{
    App, LISTEN_BACKLOG, Server, StopHandle, file_store, open_file_store, raise_open_files_limit,
};

pub use expiry::{Expiry, format_rfc3339, parse_rfc3339};
pub use key::{SESSION_KEY_LEN, SHOWN_KEY_CHARS, SessionKey};
pub use session::{
    DEFAULT_COOKIE_AGE, Session, SessionConfig, TEST_COOKIE_NAME, TEST_COOKIE_VALUE,
};
pub use settings_table::{SETTINGS, Setting};
pub use store::file::{
    DEFAULT_LEFTOVER_AGE, DEFAULT_LOCK_TIMEOUT, DEFAULT_MAX_FILE_SIZE, FileStore, REFRESH_SLACK,
};
pub use store::memory::MemoryStore;
#[cfg(feature = "redis")]
pub use store::redis::RedisStore;
pub use store::{
    ChangeSet, ClearReport, Loaded, Locking, Record, SessionLock, SessionStore, StoreError, Sweep,
};
#[cfg(feature = "signals")]
pub use supervisor::{Supervisor, WORKER_READY};
