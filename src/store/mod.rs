//! Where sessions live: the store contract and its stores.
//!
//! Three traits, after tower-sessions' split of `SessionStore` and `ExpiredDeletion`:
//!
//! * [`SessionStore`]: storage (load, create, save, cycle, delete, exists). Every store.
//! * [`LockPreflight`]: wait for a session's lock off the server's one thread, before the
//!   handler runs. Stores whose locks can be held by another process.
//! * [`ExpiredDeletion`]: remove expired sessions, in slices. Stores that do not expire
//!   sessions by themselves (Redis does).
//!
//! A store says which of the last two it has through [`SessionStore::preflight`] and
//! [`SessionStore::expired_deletion`], so that one `Arc<dyn SessionStore>` carries all
//! three. [`open`] opens the store the settings name. The conformance suite
//! (`tests/conformance.rs`) is the one suite every store passes.
//!
//! # Implementing a store
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//! use std::time::SystemTime;
//! use filesession::{ChangeSet, Loaded, Record, SessionKey, SessionLock, SessionStore,
//!                   StoreError};
//!
//! #[derive(Default)]
//! struct Map(Mutex<HashMap<SessionKey, Record>>);
//!
//! impl Map {
//!     fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, Record>> {
//!         self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
//!     }
//! }
//!
//! impl SessionStore for Map {
//!     fn load(&self, key: &SessionKey) -> Result<Option<Loaded>, StoreError> {
//!         let now = SystemTime::now();
//!         Ok(self.map().get(key).filter(|r| !r.is_expired(now))
//!             .map(|r| Loaded { record: r.clone(), lock: None }))
//!     }
//!     fn create(&self, record: &Record) -> Result<SessionKey, StoreError> {
//!         let key = SessionKey::generate(); // 122 random bits: never taken
//!         self.map().insert(key, record.clone());
//!         Ok(key)
//!     }
//!     fn save(&self, key: &SessionKey, changes: &ChangeSet, _: Option<SessionLock>)
//!         -> Result<Record, StoreError> {
//!         let mut map = self.map();
//!         let record = map.get_mut(key).ok_or(StoreError::Deleted(*key))?;
//!         changes.apply_to(record, SystemTime::now());
//!         Ok(record.clone())
//!     }
//!     fn cycle(&self, key: &SessionKey, changes: &ChangeSet, _: Option<SessionLock>)
//!         -> Result<(SessionKey, Record), StoreError> {
//!         let mut map = self.map();
//!         let mut record = map.remove(key).ok_or(StoreError::Deleted(*key))?;
//!         changes.apply_to(&mut record, SystemTime::now());
//!         let new_key = SessionKey::generate();
//!         map.insert(new_key, record.clone());
//!         Ok((new_key, record))
//!     }
//!     fn delete(&self, key: &SessionKey, _: Option<SessionLock>) -> Result<(), StoreError> {
//!         self.map().remove(key);
//!         Ok(())
//!     }
//!     fn exists(&self, key: &SessionKey) -> Result<bool, StoreError> {
//!         Ok(self.map().contains_key(key))
//!     }
//! }
//!
//! let store = std::sync::Arc::new(Map::default());
//! let mut session = filesession::Session::new(store, None, Default::default());
//! session.insert("sname", "abc");
//! session.save()?;
//! # Ok::<(), StoreError>(())
//! ```

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::config::{Engine, SessionFormat, Settings};
use crate::key::SessionKey;

#[cfg(all(feature = "redis", any(feature = "sqlite", feature = "postgres")))]
pub(crate) mod cached_db;
pub(crate) mod db;
pub(crate) mod django;
mod error;
pub(crate) mod file;
mod format;
// Lease tokens that name their holder: the SQLite and Redis request locks.
#[cfg(any(feature = "sqlite", feature = "redis"))]
pub(crate) mod holder;
mod lock;
pub(crate) mod memory;
mod record;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub mod signed_cookies;
mod sweep;

#[cfg(all(feature = "redis", any(feature = "sqlite", feature = "postgres")))]
pub use cached_db::{CachedDbStore, DEFAULT_CACHE_TTL};
pub use db::DbStore;
pub use error::StoreError;
pub use lock::{Acquired, Candidate, Lease, Loaded, LockConfig, LockIssuer, SessionLock};
pub use record::{ChangeSet, Merged, REFRESH_SLACK, Record};
pub use signed_cookies::{MAX_COOKIE_SIZE, SignedCookieStore};
pub use sweep::{ClearReport, Sweep, SweepCursor};

/// Locks one of a store's mutexes, taking the value as it is if a thread panicked while
/// holding it: the values a store guards (a connection slot, a map of sessions, a memo)
/// stay whole between statements, and a store must go on serving after a handler's panic.
pub(crate) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A place sessions are kept: Django's `SessionBase` backend contract, storage only.
/// Implemented by [`FileStore`](crate::FileStore),
/// [`DjangoFileStore`](crate::DjangoFileStore), [`MemoryStore`](crate::MemoryStore) and
/// `RedisStore` (feature `redis`).
///
/// Every method may be called from several threads and processes at once; a store makes
/// `save` apply a [`ChangeSet`] atomically on top of the newest copy.
pub trait SessionStore: Send + Sync {
    /// Loads a session, as it is at the moment of the call: every save, delete and cycle
    /// that returned before the call is seen. `Ok(None)` ("no session") only when it is
    /// missing, expired or corrupt, or the entry is not a session (not a regular file).
    /// Never creates anything. In `request` locking mode the session's lock comes with it.
    ///
    /// # Errors
    /// Everything else, which must not be mistaken for "no session" (the middleware would
    /// delete the user's cookie): I/O failures such as `EMFILE` or `EACCES`
    /// ([`StoreError::Io`]), a removed directory ([`StoreError::DirectoryGone`]), a backend
    /// that does not answer ([`StoreError::Backend`]), and in `request` locking mode a lock
    /// that could not be taken ([`StoreError::LockTimeout`]).
    fn load(&self, key: &SessionKey) -> Result<Option<Loaded>, StoreError>;

    /// Stores a new session under a fresh random key, never overwriting an existing one.
    ///
    /// # Errors
    /// I/O or backend failures, [`StoreError::TooLarge`], [`StoreError::TooDeep`].
    fn create(&self, record: &Record) -> Result<SessionKey, StoreError>;

    /// Applies `changes` to the newest stored copy of `key` and returns what was stored.
    /// `lock` is the lock `load` returned in `request` mode.
    ///
    /// # Errors
    /// [`StoreError::Deleted`] if the session no longer exists (it is not resurrected),
    /// [`StoreError::LockTimeout`], I/O or backend failures, [`StoreError::TooLarge`].
    fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        lock: Option<SessionLock>,
    ) -> Result<Record, StoreError>;

    /// Moves the session to a new key: the newest copy with `changes` applied is created
    /// under a fresh key, then the old one is removed. Returns the new key and its record.
    ///
    /// # Errors
    /// As [`save`](SessionStore::save).
    fn cycle(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        lock: Option<SessionLock>,
    ) -> Result<(SessionKey, Record), StoreError>;

    /// Removes a session. Removing a missing session is not an error.
    ///
    /// # Errors
    /// [`StoreError::LockTimeout`], I/O or backend failures.
    fn delete(&self, key: &SessionKey, lock: Option<SessionLock>) -> Result<(), StoreError>;

    /// Whether a session is stored under `key` (expired or not).
    ///
    /// # Errors
    /// I/O or backend failures other than "not found".
    fn exists(&self, key: &SessionKey) -> Result<bool, StoreError>;

    /// The store's lock preflight, if its locks can be held elsewhere. Default: none (the
    /// load takes what it needs).
    fn preflight(&self) -> Option<&dyn LockPreflight> {
        None
    }

    /// The store's expired-session deletion, if it does not expire sessions by itself.
    /// Default: none.
    fn expired_deletion(&self) -> Option<&dyn ExpiredDeletion> {
        None
    }

    /// Whether a load may wait for something outside this process: a database's lock or a
    /// busy file, a network round trip, a connection from a pool. A server then loads the
    /// session before the handler, on a thread that may wait (the session's `preload`),
    /// never on its one thread. Default: `true` (a store that says nothing is taken to
    /// wait). [`FileStore`](crate::FileStore) and [`MemoryStore`](crate::MemoryStore):
    /// `false` (a local file read, memory; a lock held elsewhere is waited for by the
    /// [`LockPreflight`], off the thread already).
    fn loads_wait(&self) -> bool {
        true
    }

    /// Whether a save, create, cycle or delete may wait for something outside this process
    /// (as [`loads_wait`](SessionStore::loads_wait), or an `fsync`): a server then applies
    /// the middleware's decisions after the handler on a thread that may wait. Default:
    /// `true`. [`FileStore`](crate::FileStore): only with `SESSION_FILE_FSYNC`.
    fn saves_wait(&self) -> bool {
        true
    }

    /// The key a session cookie's value names in this store, if it is a key of this store's
    /// kind. Default: [`SessionKey::parse`] (a UUID v4); stores of Django's format:
    /// [`SessionKey::parse_django`]. `None` means "no session".
    fn parse_key(&self, cookie_value: &str) -> Option<SessionKey> {
        SessionKey::parse(cookie_value)
    }

    /// The store, if it is Django's `signed_cookies` engine: the session is the cookie, and
    /// `SessionMiddleware` reads and writes it there. Default:
    /// `None`.
    fn signed_cookies(&self) -> Option<&SignedCookieStore> {
        None
    }

    /// The server has had no request for a while (about 100 ms): let go of what the store
    /// keeps open between requests ([`FileStore`](crate::FileStore): the last session file,
    /// open for writing), so that nothing it holds makes an operator's
    /// `mount -o remount,ro` fail as busy. Default: nothing.
    fn release_idle(&self) {}
}

/// Waiting for a session's lock before the handler runs, so that a server's one thread
/// never waits for another process: the server tries once on its thread and, if the lock
/// is held, waits on a blocking thread.
pub trait LockPreflight: Send + Sync {
    /// Waits at most `wait` (`Duration::ZERO`: tries once) until the session's lock is free.
    /// In `request` locking mode the lock is returned held ([`Acquired::Locked`]);
    /// otherwise it is let go at once, and a store may hand on something the load can use
    /// ([`Acquired::Candidate`]: a file store's open file) or nothing. `Ok(None)` too when there is no
    /// such session. What it returns is never read without checking, when
    /// [`load_acquired`](LockPreflight::load_acquired) runs, that it is still current.
    ///
    /// # Errors
    /// [`StoreError::LockTimeout`] when the lock stayed held for `wait`, and the failures of
    /// [`SessionStore::load`].
    fn acquire(&self, key: &SessionKey, wait: Duration) -> Result<Option<Acquired>, StoreError>;

    /// [`SessionStore::load`] with what `acquire` handed on: a load that sees every change
    /// made after the acquire, and keeps a held lock.
    ///
    /// # Errors
    /// As [`SessionStore::load`].
    fn load_acquired(
        &self,
        key: &SessionKey,
        acquired: Acquired,
    ) -> Result<Option<Loaded>, StoreError>;
}

/// Removing expired sessions (Django's `clearsessions`; tower-sessions' `ExpiredDeletion`),
/// whole or in slices between requests.
pub trait ExpiredDeletion: Send + Sync {
    /// Removes expired sessions (and a store's debris, such as leftovers of crashed
    /// writes), in one pass.
    ///
    /// # Errors
    /// The store cannot be listed.
    fn clear_expired(&self) -> Result<ClearReport, StoreError>;

    /// Goes on with an incremental pass for about `budget`; `Ok(true)` when the pass is
    /// complete. The default does a whole `clear_expired` in one step.
    ///
    /// # Errors
    /// The store cannot be listed.
    fn sweep_step(&self, sweep: &mut Sweep, budget: Duration) -> Result<bool, StoreError> {
        let _ = budget;
        *sweep.report_mut() = self.clear_expired()?;
        sweep.finish();
        Ok(true)
    }

    /// A whole pass, calling `progress` about every `every` with the pass so far (for
    /// `clearsessions`' progress line). The default runs `sweep_step` in slices of `every`.
    ///
    /// # Errors
    /// The store cannot be listed.
    fn clear_expired_with_progress(
        &self,
        every: Duration,
        progress: &mut dyn FnMut(&Sweep),
    ) -> Result<ClearReport, StoreError> {
        sweep::whole_pass(|sweep| self.sweep_step(sweep, every), progress)
    }
}

/// Opens the store the settings name (`SESSION_ENGINE`) with their locking mode and lock
/// timeout, ready to share between threads. A missing sessions directory, SQLite file or
/// table is created, as `runserver` needs. `SESSION_ENGINE=file` with
/// `SESSION_FORMAT=django` is a [`DjangoFileStore`](crate::DjangoFileStore) on
/// `SESSION_FILE_PATH`, its files prefixed with `SESSION_COOKIE_NAME`.
///
/// # Errors
/// [`StoreError::Unavailable`]: the sessions directory cannot be created or written,
/// `SESSION_FORMAT=django` without a `SECRET_KEY`, or
/// `redis` was asked of a build without the `redis` feature, the database's too;
/// [`StoreError::Backend`]: Redis or the database does not answer.
pub fn open(settings: &Settings) -> Result<Arc<dyn SessionStore>, StoreError> {
    open_as(settings, true)
}

/// [`open`], creating nothing: the sessions directory, the SQLite file and the session
/// table must exist (`clearsessions`: a mistyped path or URL is an error, not a new empty
/// store that a cron job would clean forever).
///
/// # Errors
/// As [`open`], and [`StoreError::Unavailable`] or [`StoreError::Io`] naming what is
/// missing.
pub fn open_existing(settings: &Settings) -> Result<Arc<dyn SessionStore>, StoreError> {
    open_as(settings, false)
}

fn open_as(settings: &Settings, create: bool) -> Result<Arc<dyn SessionStore>, StoreError> {
    let lock = LockConfig::from(settings);
    match settings.engine {
        Engine::File if settings.format == SessionFormat::Django => {
            let signer = settings.signer(&settings.signing_salt).ok_or_else(|| {
                StoreError::Unavailable(
                    "SESSION_FORMAT=django needs SECRET_KEY, which signs Django's session files"
                        .into(),
                )
            })?;
            let (dir, name, age) = (
                &settings.file_path,
                &settings.cookie_name,
                settings.cookie_age,
            );
            let store = if create {
                file::DjangoFileStore::open(dir, signer, name, age)?
            } else {
                file::DjangoFileStore::open_existing(dir, signer, name, age)?
            };
            Ok(Arc::new(
                store.with_lock_config(lock).with_fsync(settings.file_fsync),
            ))
        }
        Engine::File => {
            let store = if create {
                file::FileStore::open(&settings.file_path)?
            } else {
                file::FileStore::open_existing(&settings.file_path)?
            };
            Ok(Arc::new(
                store
                    .with_lock_config(lock)
                    .with_fsync(settings.file_fsync)
                    .with_in_place(settings.file_in_place),
            ))
        }
        Engine::Db => {
            let url = &settings.database_url;
            let store = if settings.format == SessionFormat::Django {
                // Settings::validate wants a SECRET_KEY in Django's format.
                let signer = settings.signer(&settings.signing_salt).ok_or_else(|| {
                    StoreError::Unavailable("SESSION_FORMAT=django needs SECRET_KEY".into())
                })?;
                let table = settings.session_table();
                if create {
                    db::DbStore::open_django(url, table, signer)?
                } else {
                    db::DbStore::open_existing_django(url, table, signer)?
                }
            } else if create {
                db::DbStore::open(url, &settings.db_table)?
            } else {
                db::DbStore::open_existing(url, &settings.db_table)?
            };
            Ok(Arc::new(store.with_lock_config(lock)))
        }
        #[cfg(all(feature = "redis", any(feature = "sqlite", feature = "postgres")))]
        Engine::CachedDb => {
            let db = if create {
                db::DbStore::open(&settings.database_url, &settings.db_table)?
            } else {
                db::DbStore::open_existing(&settings.database_url, &settings.db_table)?
            };
            Ok(Arc::new(
                cached_db::CachedDbStore::open(db.with_lock_config(lock), &settings.redis_url)?
                    .with_cache_ttl(settings.cache_ttl),
            ))
        }
        #[cfg(not(all(feature = "redis", any(feature = "sqlite", feature = "postgres"))))]
        Engine::CachedDb => Err(StoreError::Unavailable(
            "SESSION_ENGINE=cached_db needs filesession built with the redis feature".into(),
        )),
        Engine::SignedCookies => match &settings.secret_key {
            Some(secret) => Ok(Arc::new(SignedCookieStore::new(
                secret,
                &settings.secret_key_fallbacks,
                &settings.cookie_name,
                settings.cookie_age,
            ))),
            None => Err(StoreError::Unavailable(
                "SESSION_ENGINE=signed_cookies needs SECRET_KEY".into(),
            )),
        },
        #[cfg(feature = "redis")]
        Engine::Redis => Ok(Arc::new(
            redis::RedisStore::open(&settings.redis_url)?.with_lock_config(lock),
        )),
        #[cfg(not(feature = "redis"))]
        Engine::Redis => Err(StoreError::Unavailable(
            "SESSION_ENGINE=redis needs filesession built with the redis feature".into(),
        )),
    }
}
