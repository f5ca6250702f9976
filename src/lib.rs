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
//!                   SessionMiddleware, Settings, store};
//!
//! fn visits(_: &Request, session: &mut Session) -> Response {
//!     let n = session.get_as::<u64>("visits").ok().flatten().unwrap_or(0) + 1;
//!     session.insert("visits", n);
//!     Response::text(200, format!("visit number {n}"))
//! }
//!
//! let settings = Settings::default();
//! let store = store::open(&settings)?; // SESSION_ENGINE: ./sessions by default
//! let router = Router::new().route(Method::Get, "/", visits);
//! let server = Server::bind("127.0.0.1:8001", App::new(router, SessionMiddleware::new(store, settings)))?;
//! server.stop_handle().stop_on_signals()?;
//! server.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Contents
//!
//! | part | items |
//! |---|---|
//! | the session (Django's `SessionBase`) | [`Session`], [`SessionKey`], [`Expiry`], [`SessionConfig`] |
//! | settings (Django's names) | [`Settings`] (from the table [`SETTINGS`]), [`Engine`], [`Locking`], [`SameSite`], [`SessionFormat`] |
//! | the store contract ([`store`]) | [`SessionStore`] (storage), [`LockPreflight`] (waiting for a lock off the one thread), [`ExpiredDeletion`] (cleanup); [`store::open`]; [`Record`], [`ChangeSet`], [`SessionLock`], [`Lease`], [`Acquired`], [`StoreError`] |
//! | stores | [`FileStore`] (the default), [`DjangoFileStore`] (Django's file layout, shared with a Django site), [`DbStore`] (SQLite; PostgreSQL with feature `postgres`; Django's `django_session` with [`DbStore::open_django`]), [`SignedCookieStore`] (Django's `signed_cookies`: the session in the cookie), [`MemoryStore`] (tests), `RedisStore` and `CachedDbStore` (Django's `cached_db`; feature `redis`) |
//! | around your handlers | [`SessionMiddleware`] (Django's cookie rules), [`Router`], [`App`] (`prepare` then `run`, or `handle`) |
//! | the server | [`Server`], [`StopHandle`], [`Limits`]; [`http`], the HTTP layer on hyper; `Supervisor` (`--workers`, feature `signals`) |
//! | tower and axum | `tower::SessionLayer`, `tower::SessionHandle` (the axum extractor): features `tower`, `axum` |
//! | next to Django | `SESSION_FORMAT=django` ([`SessionFormat`]): [`DbStore::open_django`], [`DjangoFileStore`], [`SessionKey::generate_django`]; [`SignedCookieStore`]; [`signing`]: Django's signed values (`session_data`, session files, signed cookies), its keys and fallback keys ([`signing::SecretKey`]); `docs/next-to-django.md` |
//!
//! The `filesession` binary (`runserver`, `clearsessions`) and its demo app live in
//! `src/bin/filesession/`, built by the server package (`server/Cargo.toml`): this library,
//! with its default features, has no CLI, HTML, allocator, signal or SQLite dependencies.
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
//!   "check": "7c42b668d141e6fd8bfbb6beb1913f41",
//!   "format": 1,
//!   "expires_at": "2026-12-10T11:37:46.250Z",
//!   "expiry": "default",
//!   "data": {
//!     "sname": "abc",
//!     "semail": "abc@gmail.com"
//!   }
//! }
//! ```
//!
//! `expiry` is `"default"`, `"browser_close"`, `{"seconds": N}` or `{"at": "<RFC 3339>"}`
//! (see [`Expiry`]); `expires_at` is when the session ends, enforced on load; `check`, first,
//! is 128 bits of the SHA-256 of everything after its line (a save may write a small session
//! in place: a reader that copies the page half written finds the check wrong and reads
//! again). A document without it is read as it is: remove the line after editing a file by
//! hand. Files up to a page end with spaces: room to grow in place.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

// The modules in layers, bottom up; a module uses only modules of the layers below it
// (tests/layers.rs checks):
//
//   key, expiry, http,  SessionKey; Expiry and RFC 3339 times; hyper under one thread;
//   signing             Django's signed values (django.core.signing)
//   config              Settings (Django's names and defaults), settings_table (the one
//                       table every setting is read, shown and documented from)
//   store               SessionStore, LockPreflight, ExpiredDeletion; File/Memory/Redis
//   session             Session: Django's request.session
//   guard, router,      ALLOWED_HOSTS and the origin check; method + path to a function;
//   middleware          SessionMiddleware: Django's cookie rules
//   pipeline, cleanup,  App: prepare (route, cookie, lock) then run; cleanup in slices;
//   tower               SessionLayer: the same around any tower service (feature tower)
//   server              Server: the one thread, sockets, stop
//   supervisor          runserver --workers N
mod cleanup;
mod config;
mod expiry;
mod guard;
pub mod http;
mod key;
mod middleware;
mod pipeline;
mod router;
mod server;
mod session;
mod settings_table;
pub mod signing;
pub mod store;
#[cfg(feature = "signals")]
mod supervisor;
#[cfg(feature = "tower")]
pub mod tower;

pub use config::{
    DEFAULT_ALLOWED_HOSTS, DEFAULT_COOKIE_AGE, DEFAULT_DATABASE_URL, DEFAULT_DB_TABLE,
    DEFAULT_LOCK_TIMEOUT, DEFAULT_MAX_BODY, DEFAULT_REDIS_URL, DJANGO_DB_TABLE, Engine, Locking,
    SameSite, SessionConfig, SessionFormat, SettingError, Settings, redacted,
};
pub use expiry::{Expiry, format_rfc3339, parse_rfc3339};
pub use http::{Limits, Method, Request, Response};
pub use key::{
    DJANGO_KEY_LEN, DJANGO_KEY_MAX_LEN, DJANGO_KEY_MIN_LEN, SESSION_KEY_LEN, SHOWN_KEY_CHARS,
    SessionKey,
};
pub use middleware::{CookieKey, RenderAfterSave, SESSION_INTERRUPTED, SessionMiddleware};
pub use pipeline::{App, Ticket};
pub use router::{Handler, Routed, Router};
pub use server::{LISTEN_BACKLOG, Server, StopHandle, raise_open_files_limit};
pub use session::{Session, TEST_COOKIE_NAME, TEST_COOKIE_VALUE};
pub use settings_table::{SETTINGS, Setting};
pub use store::file::{DEFAULT_LEFTOVER_AGE, DEFAULT_MAX_FILE_SIZE, DjangoFileStore, FileStore};
pub use store::memory::MemoryStore;
#[cfg(feature = "redis")]
pub use store::redis::RedisStore;
pub use store::{
    Acquired, Candidate, ChangeSet, ClearReport, DbStore, ExpiredDeletion, Lease, Loaded,
    LockConfig, LockIssuer, LockPreflight, MAX_COOKIE_SIZE, Merged, REFRESH_SLACK, Record,
    SessionLock, SessionStore, SignedCookieStore, StoreError, Sweep, SweepCursor,
};
#[cfg(all(feature = "redis", any(feature = "sqlite", feature = "postgres")))]
pub use store::{CachedDbStore, DEFAULT_CACHE_TTL};
#[cfg(feature = "signals")]
pub use supervisor::Supervisor;
