//! [`StoreError`]: the one error type of every store, which keeps the cause.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::key::SessionKey;

/// Errors of a session store. Each message names the file or key and the cause.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O error on a file or directory of the store.
    Io {
        /// What was being done, e.g. "write session file".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The session was deleted after this request loaded it (a logout in a concurrent
    /// request). Saving would resurrect it, so nothing was written. Django's `UpdateError`;
    /// the middleware answers 400.
    Deleted(SessionKey),
    /// The session's lock was not free within the lock timeout: another request or process
    /// holds it. Nothing was written.
    LockTimeout {
        /// The session.
        key: SessionKey,
        /// How long it waited.
        waited: Duration,
    },
    /// `SESSION_FORMAT=django`: the key names stored data that does not verify (tampered,
    /// signed with a key that is neither `SECRET_KEY` nor one of its fallbacks) or that
    /// cannot be read (Python's `NaN`, a lone surrogate, nesting deeper than serde's 128).
    /// A load's answer, not a failure: `Session` takes it as "no
    /// session", and the middleware leaves the cookie alone (Django keeps it: the data may
    /// be a live session of Django's, under a `SECRET_KEY` mistyped or rotated here).
    Unverified(SessionKey),
    /// `SESSION_ENGINE=signed_cookies`: the session would make a cookie (name and value) of
    /// `size` bytes, over the `limit` a browser keeps
    /// ([`MAX_COOKIE_SIZE`](crate::store::signed_cookies::MAX_COOKIE_SIZE)). No cookie was
    /// set; the middleware answers 500 with the reason.
    CookieTooLarge {
        /// The cookie's size in bytes, name and value.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The session would exceed the size limit of one session file. Nothing was written.
    TooLarge {
        /// The session, unless it was being created.
        key: Option<SessionKey>,
        /// Its encoded size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A value of the session nests deeper than a session file can be read back with.
    /// Nothing was written.
    TooDeep {
        /// The session, unless it was being created.
        key: Option<SessionKey>,
        /// How deep its values nest.
        depth: usize,
        /// The deepest allowed.
        limit: usize,
    },
    /// An entry named like this session is not a regular file (a symlink, a directory, a
    /// FIFO). It is never followed, read or replaced.
    NotARegularFile(PathBuf),
    /// The sessions directory the store opened was removed while the store was in use.
    /// The store never follows a new directory made at the same path (it could be anyone's);
    /// restart the process to open it again.
    DirectoryGone(PathBuf),
    /// The database file the store opened (SQLite) was removed or replaced while the store
    /// was in use: what is written into the open file is lost at the next start, so nothing
    /// is acknowledged. The store never opens the file at the path again (that would drop
    /// SQLite's locks); restart the process to open it again.
    DatabaseGone(PathBuf),
    /// The store could not be used at all (its directory is missing and cannot be created,
    /// or is not writable).
    Unavailable(String),
    /// A backend the store talks to (Redis, a database server) failed or did not answer in
    /// time. The middleware answers 503: such a failure usually passes.
    Backend {
        /// What was being done, and where, without secrets: "Redis at redis://:***@host:
        /// cannot load a session".
        action: String,
        /// The backend's own error (for Redis a `redis::RedisError`), kept whole.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            StoreError::Deleted(_) => f.write_str(
                "The request's session was deleted before the request completed. \
                 The user may have logged out in a concurrent request, for example.",
            ),
            StoreError::LockTimeout { key, waited } => write!(
                f,
                "session {} is locked by another request or process; gave up after {} ms",
                key.short(),
                waited.as_millis()
            ),
            StoreError::Unverified(key) => write!(
                f,
                "session {}: its stored data does not verify with SECRET_KEY or a fallback, \
                 or cannot be read; no session",
                key.short()
            ),
            StoreError::CookieTooLarge { size, limit } => write!(
                f,
                "the session would make a cookie of {size} bytes, more than the {limit} bytes \
                 a browser keeps (SESSION_ENGINE=signed_cookies keeps the whole session in \
                 its cookie); no cookie was set"
            ),
            StoreError::TooLarge { size, limit, .. } => write!(
                f,
                "the session would take {size} bytes, more than the limit of {limit} bytes"
            ),
            StoreError::TooDeep { depth, limit, .. } => write!(
                f,
                "a session value nests {depth} levels deep, more than the limit of {limit}"
            ),
            StoreError::NotARegularFile(path) => write!(
                f,
                "{} is not a regular file (symlink, directory or device); refusing to use it",
                path.display()
            ),
            StoreError::DirectoryGone(path) => write!(
                f,
                "the session directory {} was removed while the server was running; \
                 restart the server to open it again",
                path.display()
            ),
            StoreError::DatabaseGone(path) => write!(
                f,
                "the database file {} was removed or replaced while the server was running; \
                 nothing written since is kept: restart the server to open it again",
                path.display()
            ),
            StoreError::Unavailable(why) => write!(f, "session store unavailable: {why}"),
            StoreError::Backend { action, source } => {
                write!(f, "session store unavailable: {action}: {source}")
            }
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            StoreError::Backend { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}
