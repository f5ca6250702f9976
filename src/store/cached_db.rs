//! [`CachedDbStore`]: Django's `cached_db` engine (`SESSION_ENGINE=cached_db`): the
//! database ([`DbStore`]) is the truth, Redis a cache in front of it (feature `redis`).
//!
//! As Django 5.2's: reads look in the cache first and fall back to the database (whose copy
//! then goes in the cache); writes go to the database, and the cache follows. Unlike it,
//! with this project's contract: merge saves, no resurrection and `request` locking are the
//! database's, and reads are fresh: the cache never serves an older copy than the database
//! holds (`store::redis::cache` says how: a write counter and a count of writes under way,
//! checked by the script that fills the cache). Django logs a cache failure and carries
//! on, which can leave an older copy in the cache; here a write whose invalidation cannot
//! reach Redis writes nothing and answers 503, while reads go to the database while Redis
//! is down. In `request` locking, reads go to the database (under the lock).
//!
//! Cache entries are our own format (the document a session file holds), kept until the
//! session ends, at most `SESSION_CACHE_TTL`. `clearsessions` clears the database's expired
//! rows; the cache's entries expire by themselves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use super::redis::cache::{Cached, RedisCache};
use super::{
    ChangeSet, DbStore, ExpiredDeletion, Loaded, LockConfig, LockPreflight, Record, SessionLock,
    SessionStore, StoreError, format,
};
use crate::key::SessionKey;

/// How long an entry stays in the cache at most, unless set: an hour (and never past the
/// session's end).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(3600);

/// Sessions in a database with a Redis cache in front: Django's `cached_db`.
pub struct CachedDbStore {
    db: DbStore,
    cache: RedisCache,
    ttl: Duration,
    lock_config: LockConfig,
    /// Whether a cache failure was logged since the cache last answered (logged once).
    cache_down: AtomicBool,
}

impl std::fmt::Debug for CachedDbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedDbStore")
            .field("db", &self.db)
            .field("cache", &self.cache.url())
            .finish_non_exhaustive()
    }
}

impl CachedDbStore {
    /// The database store `db` with a cache at `redis_url` (keys under `filesession:`).
    ///
    /// # Errors
    /// [`StoreError::Backend`]: Redis does not answer (checked with `PING`).
    pub fn open(db: DbStore, redis_url: &str) -> Result<CachedDbStore, StoreError> {
        let lock_config = db.lock_config();
        let cache = RedisCache::open(redis_url, "filesession:", lock_config.timeout)?;
        Ok(CachedDbStore {
            lock_config,
            db,
            cache,
            ttl: DEFAULT_CACHE_TTL,
            cache_down: AtomicBool::new(false),
        })
    }

    /// How long an entry stays in the cache at most (`SESSION_CACHE_TTL`). Default:
    /// [`DEFAULT_CACHE_TTL`].
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The database and the cache, as they may be shown (no password).
    pub fn shown(&self) -> String {
        format!(
            "{} with a cache at Redis {}",
            self.db.database(),
            self.cache.url()
        )
    }

    /// Logs a cache failure once until the cache answers again.
    fn cache_failed(&self, e: &StoreError) {
        if !self.cache_down.swap(true, Ordering::Relaxed) {
            log::warn!("session cache: {e}; reads go to the database until it answers");
        }
    }

    fn cache_answered(&self) {
        if self.cache_down.swap(false, Ordering::Relaxed) {
            log::info!("session cache: answering again");
        }
    }

    /// A write of `key` between the cache's two steps (module docs).
    fn writing<T>(
        &self,
        key: &SessionKey,
        write: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Before the database: if the cache cannot be told, nothing is written.
        self.cache.write(key, true)?;
        let written = write();
        if let Err(e) = self.cache.write(key, false) {
            // The count of writes under way stays up until its TTL: reads go to the
            // database meanwhile, never to an older copy.
            self.cache_failed(&e);
        }
        written
    }
}

impl SessionStore for CachedDbStore {
    fn load(&self, key: &SessionKey) -> Result<Option<Loaded>, StoreError> {
        if self.lock_config.per_request() {
            return self.db.load(key);
        }
        let counter = match self.cache.read(key) {
            Ok(Cached::Hit(document)) => {
                self.cache_answered();
                if let Ok(record) = format::decode(document.as_bytes())
                    && !record.is_expired(SystemTime::now())
                {
                    return Ok(Some(Loaded { record, lock: None }));
                }
                // Unreadable or ended: the database says.
                None
            }
            Ok(Cached::Miss(counter)) => {
                self.cache_answered();
                counter
            }
            Err(e) => {
                self.cache_failed(&e);
                None
            }
        };
        let loaded = self.db.load(key)?;
        if let (Some(counter), Some(found)) = (counter, &loaded) {
            let until = found.record.expires_at.min(SystemTime::now() + self.ttl);
            let document = format::encode(&found.record);
            self.cache
                .fill(key, &counter, &String::from_utf8_lossy(&document), until);
        }
        Ok(loaded)
    }

    fn create(&self, record: &Record) -> Result<SessionKey, StoreError> {
        // A fresh key: nothing of it can be in the cache.
        self.db.create(record)
    }

    fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        lock: Option<SessionLock>,
    ) -> Result<Record, StoreError> {
        self.writing(key, || self.db.save(key, changes, lock))
    }

    fn cycle(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        lock: Option<SessionLock>,
    ) -> Result<(SessionKey, Record), StoreError> {
        self.writing(key, || self.db.cycle(key, changes, lock))
    }

    fn delete(&self, key: &SessionKey, lock: Option<SessionLock>) -> Result<(), StoreError> {
        self.writing(key, || self.db.delete(key, lock))
    }

    fn exists(&self, key: &SessionKey) -> Result<bool, StoreError> {
        self.db.exists(key)
    }

    fn preflight(&self) -> Option<&dyn LockPreflight> {
        self.db.preflight()
    }

    fn expired_deletion(&self) -> Option<&dyn ExpiredDeletion> {
        self.db.expired_deletion()
    }
}
