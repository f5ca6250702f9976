//! The connections to Redis: a pool (r2d2) of plain connections with bounded connects and
//! I/O, shared with the request locks (which release themselves on drop). Every call runs
//! on a thread that may wait (a server calls the store only off its one thread), each on a
//! connection of its own, so that requests of different sessions overlap their round trips.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::{Connection, RedisError, RedisResult};

use super::scripts::{RENEW, UNLOCK};
use super::{CONNECT_TIMEOUT, IO_TIMEOUT};
use crate::config::redacted;
use crate::key::SessionKey;
use crate::store::StoreError;

/// The most connections one store opens.
pub(super) const MAX_CONNECTIONS: u32 = 16;
/// How long a caller waits for a connection (a free one, or a new one to connect) before
/// Redis counts as unavailable (503).
const CONNECTION_WAIT: Duration = Duration::from_secs(2);

/// Makes the pool's connections: connect within [`CONNECT_TIMEOUT`], each command within
/// [`IO_TIMEOUT`].
pub(super) struct Connector {
    pub(super) client: redis::Client,
}

/// A pooled connection, and whether a command on it failed in a way that leaves it unfit
/// (an I/O error, a timeout whose late reply could be read by the next caller): such a
/// connection is closed, never handed out again.
pub(super) struct Conn {
    inner: Connection,
    broken: bool,
}

impl r2d2::ManageConnection for Connector {
    type Connection = Conn;
    type Error = RedisError;

    fn connect(&self) -> RedisResult<Conn> {
        let conn = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        conn.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            inner: conn,
            broken: false,
        })
    }

    /// Not asked at each checkout (a round trip per call): a broken one shows when used.
    fn is_valid(&self, _: &mut Conn) -> RedisResult<()> {
        Ok(())
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken || !redis::ConnectionLike::is_open(&conn.inner)
    }
}

/// Keeps the pool's last connect error, so that a caller who got no connection is told
/// Redis's own error (refused, a timeout, a wrong password), not only that none came.
#[derive(Debug, Clone, Default)]
struct LastError(Arc<Mutex<Option<RedisError>>>);

impl r2d2::HandleError<RedisError> for LastError {
    fn handle_error(&self, error: RedisError) {
        *crate::store::locked(&self.0) = Some(error);
    }
}

/// The pool, shared with the locks (which release themselves on drop).
pub(super) struct Shared {
    pool: r2d2::Pool<Connector>,
    /// The pool's last connect error.
    last_error: LastError,
    /// The URL without its password, for messages.
    pub(super) url: String,
    /// The request locks held now, by lock key: their token and lease, renewed by the
    /// renewer thread while they are held.
    pub(super) held: Mutex<HashMap<String, (String, Duration)>>,
    /// Starts the renewer thread, once, at the first lock.
    pub(super) renewer: std::sync::Once,
}

impl Shared {
    /// The pool to the Redis at `url`, checked with `PING`; `what` names it in the errors
    /// ("Redis at <url, no password> <what> is unreachable").
    ///
    /// # Errors
    /// [`StoreError::Backend`] (Redis's own error kept): the URL is invalid or Redis does
    /// not answer; [`StoreError::Unavailable`]: the pool cannot be made.
    pub(super) fn connect_to(url: &str, what: &str) -> Result<Shared, StoreError> {
        let shown = redacted(url);
        let unreachable = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Backend {
            action: format!("Redis at {shown}{what} is unreachable"),
            source,
        };
        let client = redis::Client::open(url).map_err(|e| unreachable(Box::new(e)))?;
        let last_error = LastError::default();
        let pool = Shared::pool(client, &last_error).map_err(|e| {
            StoreError::Unavailable(format!("Redis at {shown}: cannot make its pool: {e}"))
        })?;
        let shared = Shared {
            pool,
            last_error,
            url: shown.clone(),
            held: Mutex::new(HashMap::new()),
            renewer: std::sync::Once::new(),
        };
        shared
            .run("answer PING", |conn| {
                redis::cmd("PING").query::<String>(conn)
            })
            .map_err(|e| match e {
                StoreError::Backend { source, .. } => unreachable(source),
                other => other,
            })?;
        Ok(shared)
    }

    /// A pool of at most [`MAX_CONNECTIONS`] for `client`, none opened yet.
    fn pool(
        client: redis::Client,
        last_error: &LastError,
    ) -> Result<r2d2::Pool<Connector>, String> {
        r2d2::Pool::builder()
            .max_size(MAX_CONNECTIONS)
            .min_idle(Some(0))
            .connection_timeout(CONNECTION_WAIT)
            .test_on_check_out(false)
            .error_handler(Box::new(last_error.clone()))
            .build(Connector { client })
            .map_err(|e| e.to_string())
    }

    /// A connection of the pool, within [`CONNECTION_WAIT`]; else Redis's own error (the
    /// last connect's), or the pool's.
    fn get(&self, what: &str) -> Result<r2d2::PooledConnection<Connector>, StoreError> {
        self.pool.get().map_err(|e| {
            let action = format!("Redis at {}: cannot {what}", self.url);
            match crate::store::locked(&self.last_error.0).take() {
                Some(redis) => StoreError::Backend {
                    action,
                    source: Box::new(redis),
                },
                None => StoreError::Backend {
                    action,
                    source: Box::new(e),
                },
            }
        })
    }

    /// Runs `f` on a connection. A connection that fails with an I/O error is dropped (the
    /// pool replaces it); `f` is retried once on another (Redis restarted, an idle
    /// timeout): `f` must be safe to run twice.
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
        let mut conn = self.get(what)?;
        match f(&mut conn.inner) {
            Ok(v) => Ok(v),
            Err(e) if broken(&e) => {
                conn.broken = true;
                drop(conn);
                if !retry {
                    return Err(self.unavailable(what, e));
                }
                let mut fresh = self.get(what)?;
                f(&mut fresh.inner).map_err(|e| {
                    fresh.broken |= broken(&e);
                    self.unavailable(what, e)
                })
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

/// Whether the error leaves the connection unusable (a timeout included: its reply may
/// still come, and must not be read as the next command's).
pub(super) fn broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_timeout()
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
                RENEW
                    .key(&lock_key)
                    .arg(&token)
                    .arg(lease_ms)
                    .invoke::<i64>(conn)
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
        UNLOCK.key(lock_key).arg(token).invoke::<i64>(conn)
    });
    if let Err(e) = result {
        log::warn!(
            "session {}: {e}; the lock expires by itself",
            session.short()
        );
    }
}
