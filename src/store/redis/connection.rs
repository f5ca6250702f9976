//! The connection to Redis, shared with the request locks (which release themselves on
//! drop), reconnected after a failure.

use super::*;

/// The connection, shared with the locks (which release themselves on drop).
pub(super) struct Shared {
    pub(super) client: redis::Client,
    /// The URL without its password, for messages.
    pub(super) url: String,
    pub(super) conn: Mutex<Option<Connection>>,
    /// The request locks held now, by lock key: their token and lease, renewed by the
    /// renewer thread while they are held.
    pub(super) held: Mutex<HashMap<String, (String, Duration)>>,
    /// Starts the renewer thread, once, at the first lock.
    pub(super) renewer: std::sync::Once,
}

/// Keeps the lease of a lock this process holds from running out while its request is still
/// at work (a slow handler): every third of the lease, each lock held is extended to a whole
/// lease again, if it still holds its token. The lease can then be short (the lock timeout
/// plus a second), which is how long a holder that dies blocks its session elsewhere.
pub(super) fn renew_while_held(shared: &Arc<Shared>, lock_key: &str, token: &str, lease: Duration) {
    crate::store::locked(&shared.held).insert(lock_key.to_owned(), (token.to_owned(), lease));
    shared.renewer.call_once(|| {
        let weak = Arc::downgrade(shared);
        let spawned = std::thread::Builder::new()
            .name("redis-lease-renewer".into())
            .spawn(move || renew_forever(&weak));
        if let Err(e) = spawned {
            log::warn!("cannot start the Redis lease renewer ({e}): leases run out by themselves");
        }
    });
}

/// The renewer thread's loop; it ends with the store.
fn renew_forever(shared: &std::sync::Weak<Shared>) {
    let mut pause = LEASE_RENEW_FIRST;
    loop {
        std::thread::sleep(pause);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let held: Vec<(String, String, Duration)> = crate::store::locked(&shared.held)
            .iter()
            .map(|(key, (token, lease))| (key.clone(), token.clone(), *lease))
            .collect();
        pause = held
            .iter()
            .map(|(_, _, lease)| *lease / 3)
            .min()
            .unwrap_or(LEASE_RENEW_FIRST)
            .max(Duration::from_millis(50));
        for (lock_key, token, lease) in held {
            let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
            let renewed = shared.run("renew a session lock", |conn| {
                redis::cmd("EVAL")
                    .arg(RENEW_SCRIPT)
                    .arg(1)
                    .arg(&lock_key)
                    .arg(&token)
                    .arg(lease_ms)
                    .query::<i64>(conn)
            });
            match renewed {
                Ok(1) => {}
                // Released meanwhile (then no longer in `held`), or lost: the save checks.
                Ok(_) => {
                    let mut held = crate::store::locked(&shared.held);
                    if held.get(&lock_key).is_some_and(|(t, _)| *t == token) {
                        held.remove(&lock_key);
                    }
                }
                Err(e) => log::warn!("{e}; the lease runs out by itself unless renewed later"),
            }
        }
    }
}

/// How long the renewer first sleeps, and between rounds when no lock is held.
const LEASE_RENEW_FIRST: Duration = Duration::from_millis(300);

impl Shared {
    pub(super) fn slot(&self) -> MutexGuard<'_, Option<Connection>> {
        crate::store::locked(&self.conn)
    }

    pub(super) fn connect(&self) -> RedisResult<Connection> {
        let conn = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        conn.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(conn)
    }

    /// Runs `f` on the connection, connecting if needed. A connection that fails with an I/O
    /// error is dropped; if it was an old one (Redis restarted, idle timeout), `f` is retried
    /// once on a new one: `f` must be safe to run twice.
    pub(super) fn run<T>(
        &self,
        what: &str,
        f: impl Fn(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        self.run_with(what, true, f)
    }

    /// [`run`](Shared::run) without the retry, for what must not run twice (a cycle: the
    /// first run may have moved the session already).
    pub(super) fn run_once<T>(
        &self,
        what: &str,
        f: impl Fn(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        self.run_with(what, false, f)
    }

    pub(super) fn run_with<T>(
        &self,
        what: &str,
        retry: bool,
        f: impl Fn(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut slot = self.slot();
        let reused = slot.is_some();
        let result = match slot.as_mut() {
            Some(conn) => f(conn),
            None => self.connect().and_then(|mut conn| {
                let r = f(&mut conn);
                *slot = Some(conn);
                r
            }),
        };
        match result {
            Ok(v) => Ok(v),
            Err(e) if broken(&e) => {
                *slot = None;
                if !reused || !retry {
                    return Err(self.unavailable(what, e));
                }
                let mut conn = self.connect().map_err(|e| self.unavailable(what, e))?;
                let r = f(&mut conn);
                match r {
                    Ok(v) => {
                        *slot = Some(conn);
                        Ok(v)
                    }
                    Err(e) => {
                        if !broken(&e) {
                            *slot = Some(conn);
                        }
                        Err(self.unavailable(what, e))
                    }
                }
            }
            Err(e) => Err(self.unavailable(what, e)),
        }
    }

    pub(super) fn unavailable(&self, what: &str, e: RedisError) -> StoreError {
        StoreError::Backend {
            action: format!("Redis at {}: cannot {what}", self.url),
            source: Box::new(e),
        }
    }
}

/// Whether the error leaves the connection unusable.
pub(super) fn broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// Releases a request lock: deletes `lock_key` only if it still holds `token` (a lease
/// that outlived its expiry may be someone else's by now).
pub(super) fn release(shared: &Shared, lock_key: &str, session: &SessionKey, token: &str) {
    {
        let mut held = crate::store::locked(&shared.held);
        if held.get(lock_key).is_some_and(|(t, _)| t == token) {
            held.remove(lock_key);
        }
    }
    let result = shared.run("release a session lock", |conn| {
        redis::cmd("EVAL")
            .arg(UNLOCK_SCRIPT)
            .arg(1)
            .arg(lock_key)
            .arg(token)
            .query::<i64>(conn)
    });
    if let Err(e) = result {
        log::warn!(
            "session {}: {e}; the lock expires by itself",
            session.short()
        );
    }
}
