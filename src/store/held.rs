//! Locks a store hands out: [`SessionLock`] (held from a load to the save in `request`
//! locking mode), [`Lease`] (a lock kept in a shared store), and [`Acquired`] (what a lock
//! preflight hands on to the load). Typed: a store matches on the variant it made.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use super::file::{FileCandidate, FileLock};
use super::record::Record;
use crate::key::SessionKey;

/// A session's lock, held from load to the end of the request in
/// [`Locking::Request`](crate::Locking::Request) mode. Dropping it releases the lock.
///
/// A store is handed back only locks it made; one that gets another kind (a bug) takes
/// a fresh lock, never trusting a lock it cannot check.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionLock {
    /// [`FileStore`](crate::FileStore): the session file, open and locked with `flock`.
    File(FileLock),
    /// A lock kept in a shared store (Redis, a database): see [`Lease`].
    Lease(Lease),
}

/// Who made a [`Lease`]: each store makes one issuer when it opens, and takes back only the
/// leases it issued (a lease of another store, even for the same key, proves nothing here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseIssuer(u64);

impl LeaseIssuer {
    /// An issuer unlike every other of this process.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        LeaseIssuer(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for LeaseIssuer {
    fn default() -> Self {
        LeaseIssuer::new()
    }
}

/// A lock kept in a shared store (a random token stored under the session's lock name with
/// an expiry, so that a holder that dies cannot keep it for ever; or a database lock held
/// on a connection). The store that made it passes a function that releases it (deleting
/// the lock only if it still holds the token); it runs once, when the lease is dropped.
///
/// ```
/// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
/// use filesession::{Lease, LeaseIssuer, SessionKey};
///
/// let store = LeaseIssuer::new();
/// let released = Arc::new(AtomicBool::new(false));
/// let flag = released.clone();
/// let key = SessionKey::generate();
/// let lease = Lease::new(store, key, "token-1".into(), move |_key, token| {
///     assert_eq!(token, "token-1");
///     flag.store(true, Ordering::SeqCst);
/// });
/// assert!(lease.is_for(store, &key));
/// assert!(!lease.is_for(LeaseIssuer::new(), &key));
/// drop(lease);
/// assert!(released.load(Ordering::SeqCst));
/// ```
pub struct Lease {
    issuer: LeaseIssuer,
    session: SessionKey,
    token: String,
    release: Option<Release>,
}

type Release = Box<dyn FnOnce(&SessionKey, &str) + Send>;

impl Lease {
    /// A lease `issuer` holds on `session` with `token`; `release(session, token)` runs on
    /// drop.
    pub fn new(
        issuer: LeaseIssuer,
        session: SessionKey,
        token: String,
        release: impl FnOnce(&SessionKey, &str) + Send + 'static,
    ) -> Self {
        Lease {
            issuer,
            session,
            token,
            release: Some(Box::new(release)),
        }
    }

    /// The session it locks.
    pub fn session(&self) -> &SessionKey {
        &self.session
    }

    /// Whether `issuer` made this lease for `key`: the check a store makes before it takes
    /// a lease back as its lock.
    pub fn is_for(&self, issuer: LeaseIssuer, key: &SessionKey) -> bool {
        self.issuer == issuer && self.session == *key
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

/// Between two tries at a lease: `LockTimeout` (counted from `start`) once `wait` has
/// passed, else a pause of `poll` (no later than the end of `wait`). Shared by the stores
/// that keep their locks elsewhere (Redis, the databases).
pub(crate) fn pause_or_time_out(
    key: &SessionKey,
    start: std::time::Instant,
    wait: std::time::Duration,
    poll: std::time::Duration,
) -> Result<(), crate::store::StoreError> {
    let waited = start.elapsed();
    if waited >= wait {
        return Err(crate::store::StoreError::LockTimeout { key: *key, waited });
    }
    std::thread::sleep(poll.min(wait - waited));
    Ok(())
}

/// What a lock preflight ([`LockPreflight::acquire`](crate::LockPreflight::acquire)) hands
/// on to the load ([`LockPreflight::load_acquired`](crate::LockPreflight::load_acquired)).
#[derive(Debug)]
#[non_exhaustive]
pub enum Acquired {
    /// The session's lock, held (`request` locking mode): the load reads under it and the
    /// session keeps it until the save.
    Locked(SessionLock),
    /// [`FileStore`](crate::FileStore) in `merge` mode: the session file, open, found
    /// unlocked; the load reads it only if it is still the file with the session's name.
    Candidate(FileCandidate),
}

/// A session found by [`SessionStore::load`](crate::SessionStore::load).
#[derive(Debug)]
pub struct Loaded {
    /// Its stored data.
    pub record: Record,
    /// Its lock, held until the session is saved or dropped, in `request` locking mode.
    pub lock: Option<SessionLock>,
}
