//! The connection to Redis, shared with the request locks (which release themselves on
//! drop), reconnected after a failure.

use super::*;

/// The connection, shared with the locks (which release themselves on drop).
pub(super) struct Shared {
    pub(super) client: redis::Client,
    /// The URL without its password, for messages.
    pub(super) url: String,
    pub(super) conn: Mutex<Option<Connection>>,
}

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
