//! RedisStore: one Redis hash per session, changes applied by Lua scripts.
//!
//! Layout: the hash `<prefix><key>` holds one field per session key with the JSON text of
//! its value, and the field `__expiry` with the JSON of the [`Expiry`] rule. A session key
//! starting with `_` (Django's `_auth_user_id`, ...) is stored as `_:<key>`, so that no
//! session key can collide with `__expiry`. The absolute expiry is the hash's Redis TTL
//! (`PEXPIREAT`): Redis removes ended sessions by itself.
//!
//! Every write is one Lua script (run with `EVAL`), hence atomic: a save applies only what
//! its request changed on top of the newest copy, and never recreates a deleted session.
//!
//! Known race, accepted: when a save does not set the expiry rule itself, the rule used to
//! compute the new absolute expiry is read (`HGET __expiry`) just before the script runs.
//! A concurrent `set_expiry` landing between the two may leave the key with the TTL of the
//! old rule until the next save; the rule stored is always the newest one.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use redis::Connection;
use serde_json::Map;

use super::{
    Acquired, ChangeSet, Lease, Loaded, LockConfig, LockIssuer, LockPreflight, Record, SessionLock,
    SessionStore, StoreError,
};
use crate::config::Locking;
use crate::key::SessionKey;

// The cache of `cached_db`, which needs a database too.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod cache;
mod connection;
mod fields;
mod scripts;

use crate::store::holder;
use connection::{Shared, release};
use fields::{EXPIRY_FIELD, decode, epoch_ms, expiry_json, field_of};
use scripts::*;

/// How long connecting may take (the handshake included). The store is used off the
/// server's one thread, so a Redis some way off may take its time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may take before Redis counts as unavailable (503).
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a request lock's lease outlives the lock timeout. The holder renews it every
/// third of its length while it lives (`connection::Renewer`); a holder that dies without
/// releasing it blocks its session for at most the lease (lock timeout + this), or not at all
/// on the holder's own machine, where a waiter sees that it died (`store::holder`).
const LOCK_LEASE_MARGIN: Duration = Duration::from_secs(1);
/// Pause between attempts to take a request lock.
const LOCK_POLL: Duration = Duration::from_millis(3);
/// Attempts at a fresh key before giving up (a collision of 122 random bits never happens).
const KEY_ATTEMPTS: usize = 16;

/// Sessions in Redis (feature `redis`): one hash per session, whose TTL is the session's
/// expiry, so Redis removes ended sessions by itself. Saves apply only their request's
/// changes, atomically (Lua scripts), and never resurrect a deleted session; in
/// [`Locking::Request`] mode a Redis lock key (with a lease) is held from load to save.
///
/// ```no_run
/// use std::sync::Arc;
/// use filesession::{RedisStore, Session, SessionConfig};
///
/// let store = Arc::new(RedisStore::open("redis://127.0.0.1:6379/0")?);
/// let mut session = Session::new(store, None, SessionConfig::default());
/// session.insert("visits", 1);
/// session.save()?;
/// # Ok::<(), filesession::StoreError>(())
/// ```
pub struct RedisStore {
    shared: Arc<Shared>,
    prefix: String,
    lock_config: LockConfig,
    issuer: LockIssuer,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shared.url)
            .field("prefix", &self.prefix)
            .field("lock_config", &self.lock_config)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://[:password@]host[:port][/db]`) and checks it
    /// answers `PING`. Merge locking, the default lock timeout, prefix `filesession:`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] (the URL without its password, and Redis' own error) if the
    /// URL is invalid or Redis does not answer.
    pub fn open(url: &str) -> Result<RedisStore, StoreError> {
        let shared = Shared::connect_to(url, "")?;
        Ok(RedisStore {
            shared: Arc::new(shared),
            prefix: "filesession:".to_owned(),
            lock_config: LockConfig::default(),
            issuer: LockIssuer::new(),
        })
    }

    /// Sets the locking mode and the lock timeout (`SESSION_LOCKING`,
    /// `SESSION_LOCK_TIMEOUT`). Default: [`LockConfig::default`].
    pub fn with_lock_config(mut self, lock_config: LockConfig) -> Self {
        self.lock_config = lock_config;
        self
    }

    /// Sets the locking mode alone ([`with_lock_config`](RedisStore::with_lock_config)).
    pub fn with_locking(mut self, locking: Locking) -> Self {
        self.lock_config.locking = locking;
        self
    }

    /// Sets the lock timeout alone ([`with_lock_config`](RedisStore::with_lock_config)).
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_config.timeout = timeout;
        self
    }

    /// The prefix of every Redis key this store uses (default `filesession:`).
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    fn redis_key(&self, key: &SessionKey) -> String {
        format!("{}{key}", self.prefix)
    }

    fn lock_key(&self, key: &SessionKey) -> String {
        format!("{}lock:{key}", self.prefix)
    }

    /// Takes the request lock of `key` within the lock timeout.
    fn lock(&self, key: &SessionKey) -> Result<Lease, StoreError> {
        self.lock_within(key, self.lock_config.timeout)
    }

    /// [`lock`](RedisStore::lock) waiting at most `wait` (zero: one try).
    fn lock_within(&self, key: &SessionKey, wait: Duration) -> Result<Lease, StoreError> {
        let lock_key = self.lock_key(key);
        // Who holds it, in the token: a waiter on this machine takes the lock of a holder
        // that died at once (store::holder), instead of waiting out the lease.
        let token = holder::token(&uuid::Uuid::new_v4().to_string());
        let lease = self.lock_config.timeout + LOCK_LEASE_MARGIN;
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let start = Instant::now();
        let mut dead = String::new();
        loop {
            let taken = self.shared.run("take a session lock", |conn| {
                LOCK.key(&lock_key)
                    .arg(&token)
                    .arg(lease_ms)
                    .arg(&dead)
                    .invoke::<i64>(conn)
            })?;
            if taken == 1 {
                if !dead.is_empty() {
                    log::warn!(
                        "session {}: its lock's holder died; taken over",
                        key.short()
                    );
                }
                let shared = Arc::clone(&self.shared);
                connection::renew_while_held(&self.shared, &lock_key, &token, lease);
                return Ok(Lease::new(*key, token, move |session, token| {
                    release(&shared, &lock_key, session, token)
                }));
            }
            // Held: by a process of this machine that has died since? Then the next try
            // takes it over, if that holder still has it.
            let holder: Option<String> = self.shared.run("read a session lock", |conn| {
                redis::cmd("GET").arg(&lock_key).query(conn)
            })?;
            match holder {
                Some(old) if old != dead && holder::holder_died(&old) => dead = old,
                _ => LockConfig::pause_or_time_out(key, start, wait, LOCK_POLL)?,
            }
        }
    }

    /// In request mode, the lock for a write: the one given back if it is this session's,
    /// else a fresh one. In merge mode none (the scripts are atomic).
    fn lock_for_write(
        &self,
        key: &SessionKey,
        held: Option<SessionLock>,
    ) -> Result<Option<Lease>, StoreError> {
        if let Some(lease) = held.and_then(|lock| lock.take::<Lease>(self.issuer, key).ok()) {
            return Ok(Some(lease));
        }
        match self.lock_config.locking {
            Locking::Merge => Ok(None),
            Locking::Request => self.lock(key).map(Some),
        }
    }

    /// The live session under `key`; `None` if missing or corrupt.
    fn read(&self, key: &SessionKey) -> Result<Option<Record>, StoreError> {
        let redis_key = self.redis_key(key);
        let found = self.shared.run("load a session", |conn| {
            LOAD.key(&redis_key)
                .invoke::<Option<(i64, Vec<String>)>>(conn)
        })?;
        let Some((ttl, fields)) = found else {
            return Ok(None);
        };
        let Some((data, expiry)) = decode(&fields) else {
            log::warn!(
                "Redis key {}{} does not hold a usable session; treated as none",
                self.prefix,
                key.short()
            );
            return Ok(None);
        };
        let now = SystemTime::now();
        // No TTL (-1) means someone removed it by hand: the rule says when it ends.
        let expires_at = match u64::try_from(ttl) {
            Ok(ms) => now + Duration::from_millis(ms),
            Err(_) => expiry.date(now, Duration::ZERO),
        };
        Ok(Some(Record {
            data: data.into(),
            expiry,
            expires_at,
        }))
    }

    /// Runs the apply script on `keys` (one key: save; two: cycle old → new).
    /// `Ok(None)`: the new key was taken.
    fn apply(
        &self,
        old: &SessionKey,
        new: Option<&SessionKey>,
        changes: &ChangeSet,
        lease: Option<&Lease>,
    ) -> Result<Option<Record>, StoreError> {
        let old_key = self.redis_key(old);
        let rule = match changes.expiry() {
            Some(rule) => rule,
            None => {
                let stored = self.shared.run("read a session's expiry", |conn| {
                    redis::cmd("HGET")
                        .arg(&old_key)
                        .arg(EXPIRY_FIELD)
                        .query::<Option<String>>(conn)
                })?;
                stored
                    .and_then(|text| serde_json::from_str(&text).ok())
                    .unwrap_or_default()
            }
        };
        let now = SystemTime::now();
        let expires_at = rule.date(now, changes.cookie_age());
        let mut call = APPLY.prepare_invoke();
        call.key(self.lock_key(old)).key(&old_key);
        if let Some(new) = new {
            call.key(self.redis_key(new));
        }
        call.arg(lease.map_or("", Lease::token))
            .arg(if changes.cleared() { "1" } else { "0" })
            .arg(epoch_ms(expires_at))
            .arg(expiry_json(&rule))
            .arg(if changes.expiry().is_some() { "1" } else { "0" })
            .arg(changes.removals().len());
        for name in changes.removals() {
            call.arg(field_of(name));
        }
        for (name, value) in changes.writes() {
            call.arg(field_of(name)).arg(value.to_string());
        }
        let query = |conn: &mut Connection| call.invoke::<(i64, Vec<String>)>(conn);
        // A save is safe to run twice; a cycle is not (its first run may have moved the key).
        let (status, fields) = match new {
            None => self.shared.run("save a session", query)?,
            Some(_) => self.shared.run_once("move a session to a new key", query)?,
        };
        match status {
            0 => Err(StoreError::Deleted(*old)),
            1 => Ok(None),
            // The lease ran out and another request took the lock: nothing written.
            3 => Err(StoreError::LockTimeout {
                key: *old,
                waited: Duration::ZERO,
            }),
            _ => {
                let (data, expiry) = decode(&fields).unwrap_or_else(|| {
                    log::warn!(
                        "Redis key {}{} holds unreadable fields; they are ignored",
                        self.prefix,
                        old.short()
                    );
                    (Map::new(), rule)
                });
                Ok(Some(Record {
                    data: data.into(),
                    expiry,
                    expires_at,
                }))
            }
        }
    }
}

impl SessionStore for RedisStore {
    fn load(&self, key: &SessionKey) -> Result<Option<Loaded>, StoreError> {
        let lock = match self.lock_config.locking {
            Locking::Merge => None,
            Locking::Request => Some(SessionLock::new(self.issuer, *key, self.lock(key)?)),
        };
        Ok(self.read(key)?.map(|record| Loaded { record, lock }))
    }

    fn create(&self, record: &Record) -> Result<SessionKey, StoreError> {
        let mut args = vec![
            epoch_ms(record.expires_at).to_string(),
            EXPIRY_FIELD.to_owned(),
            expiry_json(&record.expiry),
        ];
        for (name, value) in record.data.iter() {
            args.push(field_of(name));
            args.push(value.to_string());
        }
        for _ in 0..KEY_ATTEMPTS {
            let key = SessionKey::generate();
            let redis_key = self.redis_key(&key);
            let created = self.shared.run("create a session", |conn| {
                CREATE.key(&redis_key).arg(&args).invoke::<i64>(conn)
            })?;
            if created == 1 {
                return Ok(key);
            }
        }
        Err(StoreError::Unavailable(format!(
            "Redis at {}: no free session key after {KEY_ATTEMPTS} attempts",
            self.shared.url
        )))
    }

    fn save(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        lock: Option<SessionLock>,
    ) -> Result<Record, StoreError> {
        let lease = self.lock_for_write(key, lock)?;
        match self.apply(key, None, changes, lease.as_ref())? {
            Some(record) => Ok(record),
            None => unreachable!("a save has no new key to collide with"),
        }
    }

    fn cycle(
        &self,
        key: &SessionKey,
        changes: &ChangeSet,
        lock: Option<SessionLock>,
    ) -> Result<(SessionKey, Record), StoreError> {
        let lease = self.lock_for_write(key, lock)?;
        for _ in 0..KEY_ATTEMPTS {
            let new_key = SessionKey::generate();
            if let Some(record) = self.apply(key, Some(&new_key), changes, lease.as_ref())? {
                return Ok((new_key, record));
            }
        }
        Err(StoreError::Unavailable(format!(
            "Redis at {}: no free session key after {KEY_ATTEMPTS} attempts",
            self.shared.url
        )))
    }

    fn delete(&self, key: &SessionKey, lock: Option<SessionLock>) -> Result<(), StoreError> {
        let _lock = self.lock_for_write(key, lock)?;
        let redis_key = self.redis_key(key);
        self.shared.run("delete a session", |conn| {
            redis::cmd("DEL").arg(&redis_key).query::<i64>(conn)
        })?;
        Ok(())
    }

    fn exists(&self, key: &SessionKey) -> Result<bool, StoreError> {
        let redis_key = self.redis_key(key);
        self.shared.run("look a session up", |conn| {
            redis::cmd("EXISTS").arg(&redis_key).query::<bool>(conn)
        })
    }

    fn preflight(&self) -> Option<&dyn LockPreflight> {
        // In merge mode every write is one atomic script: nothing to wait for.
        (self.lock_config.locking == Locking::Request).then_some(self as &dyn LockPreflight)
    }
    // No expired_deletion: Redis removes ended sessions by itself (each hash's TTL).
}

impl LockPreflight for RedisStore {
    fn acquire(&self, key: &SessionKey, wait: Duration) -> Result<Option<Acquired>, StoreError> {
        if self.lock_config.locking == Locking::Merge {
            return Ok(None);
        }
        let lease = self.lock_within(key, wait)?;
        let exists = self.exists(key)?;
        Ok(exists.then(|| Acquired::Locked(SessionLock::new(self.issuer, *key, lease))))
    }

    fn load_acquired(
        &self,
        key: &SessionKey,
        acquired: Acquired,
    ) -> Result<Option<Loaded>, StoreError> {
        match acquired {
            Acquired::Locked(lock) if lock.is_for::<Lease>(self.issuer, key) => {
                Ok(self.read(key)?.map(|record| Loaded {
                    record,
                    lock: Some(lock),
                }))
            }
            // Not this session's lease: let it go and load afresh.
            other => {
                drop(other);
                self.load(key)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fields::name_of;
    use super::*;
    use crate::config::redacted;

    #[test]
    fn session_keys_never_collide_with_metadata() {
        for name in ["__expiry", "_expiry", "_auth_user_id", "_:x", "plain", ""] {
            let field = field_of(name);
            assert_ne!(field, EXPIRY_FIELD);
            assert_eq!(name_of(&field), Some(name));
        }
        assert_eq!(name_of(EXPIRY_FIELD), None);
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert!(!redacted("redis://:hunter2@localhost:6379/0").contains("hunter2"));
        assert_eq!(redacted("redis://localhost/0"), "redis://localhost/0");
    }
}
