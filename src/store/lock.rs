//! Locks, the same for every store: [`LockConfig`] (the mode and the timeout),
//! [`SessionLock`] (held from a load to the save in `request` locking mode), [`Candidate`]
//! and [`Acquired`] (what a lock preflight hands on to the load), [`Lease`] (a lock kept in
//! a shared store). A store's own lock types stay its own: wrapped in these, and taken back
//! checked (the store that made them, the session, the type).

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::record::Record;
use crate::config::{DEFAULT_LOCK_TIMEOUT, Locking, Settings};
use crate::key::SessionKey;

/// A session's lock, held from load to the end of the request in
/// [`Locking::Request`](crate::Locking::Request) mode. Dropping it releases the lock.
///
/// Opaque to all but the store that made it: a store wraps what it holds (an `flock`ed file,
/// a [`Lease`]) with [`SessionLock::new`] and takes it back with [`SessionLock::take`],
/// which checks that this store made it, for this session, of that type. A store handed a
/// lock it cannot take back (a bug) takes a fresh lock, never trusting one it cannot check.
///
/// ```
/// use filesession::{LockIssuer, SessionKey, SessionLock};
///
/// let (store, other) = (LockIssuer::new(), LockIssuer::new());
/// let key = SessionKey::generate();
/// let lock = SessionLock::new(store, key, 7_u32);
/// let lock = lock.take::<u32>(other, &key).expect_err("another store's lock");
/// let lock = lock.take::<u64>(store, &key).expect_err("another type");
/// assert_eq!(lock.take::<u32>(store, &key).ok(), Some(7));
/// ```
#[derive(Debug)]
pub struct SessionLock(Issued);

impl SessionLock {
    /// `held`, the lock `issuer` holds on `session`; dropping the `SessionLock` drops it.
    pub fn new<T: fmt::Debug + Send + 'static>(
        issuer: LockIssuer,
        session: SessionKey,
        held: T,
    ) -> Self {
        SessionLock(Issued::new(issuer, session, held))
    }

    /// The session it locks.
    pub fn session(&self) -> &SessionKey {
        &self.0.session
    }

    /// Whether `issuer` made this lock for `key` with a `T`: what
    /// [`take`](SessionLock::take) checks.
    pub fn is_for<T: 'static>(&self, issuer: LockIssuer, key: &SessionKey) -> bool {
        self.0.is_for::<T>(issuer, key)
    }

    /// What `issuer` holds, if `issuer` made this lock for `key` with a `T`.
    ///
    /// # Errors
    /// The lock itself, unchanged, when it is another store's, another session's or not a
    /// `T`.
    pub fn take<T: 'static>(self, issuer: LockIssuer, key: &SessionKey) -> Result<T, Self> {
        self.0.take(issuer, key).map_err(SessionLock)
    }
}

/// What a `merge`-mode lock preflight found and hands on to the load
/// ([`Acquired::Candidate`]): opaque, as a [`SessionLock`], to all but the store that made
/// it (a file store's open session file, found unlocked).
#[derive(Debug)]
pub struct Candidate(Issued);

impl Candidate {
    /// `found`, made by `issuer` for `session`.
    pub fn new<T: fmt::Debug + Send + 'static>(
        issuer: LockIssuer,
        session: SessionKey,
        found: T,
    ) -> Self {
        Candidate(Issued::new(issuer, session, found))
    }

    /// What `issuer` found, if `issuer` made this candidate for `key` with a `T`.
    ///
    /// # Errors
    /// The candidate itself, unchanged, when it is another store's, another session's or
    /// not a `T`.
    pub fn take<T: 'static>(self, issuer: LockIssuer, key: &SessionKey) -> Result<T, Self> {
        self.0.take(issuer, key).map_err(Candidate)
    }
}

/// A value of one store's own type, made for one session, that only that store takes back.
struct Issued {
    issuer: LockIssuer,
    session: SessionKey,
    value: Box<dyn Any + Send>,
    /// The value's own `Debug` (a store's types show no whole key, only its first
    /// characters), kept beside it since `dyn Any` has none.
    show: fn(&(dyn Any + Send), &mut fmt::Formatter<'_>) -> fmt::Result,
}

impl Issued {
    fn new<T: fmt::Debug + Send + 'static>(
        issuer: LockIssuer,
        session: SessionKey,
        value: T,
    ) -> Self {
        Issued {
            issuer,
            session,
            value: Box::new(value),
            show: |value, f| match value.downcast_ref::<T>() {
                Some(value) => fmt::Debug::fmt(value, f),
                None => f.write_str(".."),
            },
        }
    }

    fn is_for<T: 'static>(&self, issuer: LockIssuer, key: &SessionKey) -> bool {
        self.issuer == issuer && self.session == *key && self.value.is::<T>()
    }

    fn take<T: 'static>(self, issuer: LockIssuer, key: &SessionKey) -> Result<T, Self> {
        if self.issuer != issuer || self.session != *key {
            return Err(self);
        }
        let Issued {
            issuer,
            session,
            value,
            show,
        } = self;
        value
            .downcast::<T>()
            .map(|value| *value)
            .map_err(|value| Issued {
                issuer,
                session,
                value,
                show,
            })
    }
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Shown<'a>(&'a Issued);
        impl fmt::Debug for Shown<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                (self.0.show)(&*self.0.value, f)
            }
        }
        f.debug_struct("Issued")
            .field("session", &self.session.short())
            .field("value", &Shown(self))
            .finish()
    }
}

/// Who made a [`SessionLock`] or a [`Candidate`]: each store makes one issuer when it opens,
/// and takes back only what it issued (a lock of another store, even for the same key,
/// proves nothing here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockIssuer(u64);

impl LockIssuer {
    /// An issuer unlike every other of this process.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        LockIssuer(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for LockIssuer {
    fn default() -> Self {
        LockIssuer::new()
    }
}

/// A lock kept in a shared store (a random token stored under the session's lock name with
/// an expiry, so that a holder that dies cannot keep it for ever; or a database lock held
/// on a connection). The store that made it passes a function that releases it (deleting
/// the lock only if it still holds the token); it runs once, when the lease is dropped. A
/// store hands it out wrapped in a [`SessionLock`].
///
/// ```
/// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
/// use filesession::{Lease, LockIssuer, SessionKey, SessionLock};
///
/// let store = LockIssuer::new();
/// let released = Arc::new(AtomicBool::new(false));
/// let flag = released.clone();
/// let key = SessionKey::generate();
/// let lease = Lease::new(key, "token-1".into(), move |_key, token| {
///     assert_eq!(token, "token-1");
///     flag.store(true, Ordering::SeqCst);
/// });
/// let lock = SessionLock::new(store, key, lease);
/// let lease: Lease = lock.take(store, &key).expect("this store's lease");
/// assert_eq!(lease.token(), "token-1");
/// drop(lease);
/// assert!(released.load(Ordering::SeqCst));
/// ```
pub struct Lease {
    session: SessionKey,
    token: String,
    release: Option<Release>,
}

type Release = Box<dyn FnOnce(&SessionKey, &str) + Send>;

impl Lease {
    /// A lease held on `session` with `token`; `release(session, token)` runs on drop.
    pub fn new(
        session: SessionKey,
        token: String,
        release: impl FnOnce(&SessionKey, &str) + Send + 'static,
    ) -> Self {
        Lease {
            session,
            token,
            release: Some(Box::new(release)),
        }
    }

    /// The session it locks.
    pub fn session(&self) -> &SessionKey {
        &self.session
    }

    /// The token that proves this holder owns the lock.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release(&self.session, &self.token);
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secret of its holder, and a whole key is a credential.
        f.debug_struct("Lease")
            .field("session", &self.session.short())
            .finish_non_exhaustive()
    }
}

/// How a store locks sessions, the same for every store: the mode (`SESSION_LOCKING`) and
/// how long a request waits for a session's lock (`SESSION_LOCK_TIMEOUT`). Default: merge,
/// [`DEFAULT_LOCK_TIMEOUT`].
///
/// ```
/// use std::time::Duration;
/// use filesession::{LockConfig, Locking};
///
/// let config = LockConfig::default();
/// assert_eq!((config.locking, config.timeout), (Locking::Merge, Duration::from_secs(3)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockConfig {
    /// The locking mode. Default: [`Locking::Merge`].
    pub locking: Locking,
    /// How long a request waits for a session's lock. Default: [`DEFAULT_LOCK_TIMEOUT`].
    pub timeout: Duration,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            locking: Locking::Merge,
            timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }
}

impl From<&Settings> for LockConfig {
    /// `SESSION_LOCKING` and `SESSION_LOCK_TIMEOUT`.
    fn from(settings: &Settings) -> Self {
        LockConfig {
            locking: settings.locking,
            timeout: settings.lock_timeout,
        }
    }
}

impl LockConfig {
    /// Whether sessions are locked from load to save ([`Locking::Request`]).
    pub fn per_request(&self) -> bool {
        self.locking == Locking::Request
    }

    /// Between two tries at a lock kept elsewhere: `LockTimeout` (counted from `start`) once
    /// `wait` has passed, else a pause of `poll` (no later than the end of `wait`). Shared by
    /// the stores that poll for a lock kept in a table or a key (SQLite, Redis).
    #[cfg(any(feature = "sqlite", feature = "redis"))]
    pub(crate) fn pause_or_time_out(
        key: &SessionKey,
        start: std::time::Instant,
        wait: Duration,
        poll: Duration,
    ) -> Result<(), super::StoreError> {
        let waited = start.elapsed();
        if waited >= wait {
            return Err(super::StoreError::LockTimeout { key: *key, waited });
        }
        std::thread::sleep(poll.min(wait - waited));
        Ok(())
    }
}

/// What a lock preflight ([`LockPreflight::acquire`](crate::LockPreflight::acquire)) hands
/// on to the load ([`LockPreflight::load_acquired`](crate::LockPreflight::load_acquired)).
#[derive(Debug)]
#[non_exhaustive]
pub enum Acquired {
    /// The session's lock, held (`request` locking mode): the load reads under it and the
    /// session keeps it until the save.
    Locked(SessionLock),
    /// `merge` mode: what the preflight found once no one held the lock (a file store's
    /// session file, open); the load uses it only after checking that it is still current.
    Candidate(Candidate),
}

/// A session found by [`SessionStore::load`](crate::SessionStore::load).
#[derive(Debug)]
pub struct Loaded {
    /// Its stored data.
    pub record: Record,
    /// Its lock, held until the session is saved or dropped, in `request` locking mode.
    pub lock: Option<SessionLock>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Mine(u32);

    #[test]
    fn a_lock_is_taken_back_by_its_issuer_for_its_session_as_its_type() {
        let (issuer, key) = (LockIssuer::new(), SessionKey::generate());
        let lock = SessionLock::new(issuer, key, Mine(7));
        assert!(lock.is_for::<Mine>(issuer, &key));
        assert_eq!(lock.take::<Mine>(issuer, &key).ok(), Some(Mine(7)));
    }

    #[test]
    fn a_lock_of_another_issuer_session_or_type_is_given_back_whole() {
        let (issuer, key) = (LockIssuer::new(), SessionKey::generate());
        let lock = SessionLock::new(issuer, key, Mine(7));
        assert!(!lock.is_for::<Mine>(LockIssuer::new(), &key));
        assert!(!lock.is_for::<Mine>(issuer, &SessionKey::generate()));
        assert!(!lock.is_for::<String>(issuer, &key));
        let lock = lock.take::<Mine>(LockIssuer::new(), &key).unwrap_err();
        let lock = lock
            .take::<Mine>(issuer, &SessionKey::generate())
            .unwrap_err();
        let lock = lock.take::<String>(issuer, &key).unwrap_err();
        // Refused three times, still whole: its own store takes it back.
        assert_eq!(lock.session(), &key);
        assert_eq!(lock.take::<Mine>(issuer, &key).ok(), Some(Mine(7)));
    }

    #[test]
    fn a_candidate_is_taken_back_only_by_its_issuer() {
        let (issuer, key) = (LockIssuer::new(), SessionKey::generate());
        let found = Candidate::new(issuer, key, Mine(1));
        let found = found.take::<Mine>(LockIssuer::new(), &key).unwrap_err();
        assert_eq!(found.take::<Mine>(issuer, &key).ok(), Some(Mine(1)));
    }

    #[test]
    fn a_lock_shows_its_value_but_no_whole_key() {
        let key = SessionKey::generate();
        let lock = SessionLock::new(LockIssuer::new(), key, Mine(7));
        let shown = format!("{lock:?}");
        assert!(shown.contains("Mine(7)"), "{shown}");
        assert!(!shown.contains(&key.to_string()), "{shown}");
    }

    #[test]
    fn a_dropped_lease_is_released_once() {
        let released = std::sync::Arc::new(AtomicU64::new(0));
        let counter = released.clone();
        let lease = Lease::new(SessionKey::generate(), "t".into(), move |_, token| {
            assert_eq!(token, "t");
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let lock = SessionLock::new(LockIssuer::new(), *lease.session(), lease);
        assert_eq!(released.load(Ordering::SeqCst), 0);
        drop(lock);
        assert_eq!(released.load(Ordering::SeqCst), 1);
    }
}
