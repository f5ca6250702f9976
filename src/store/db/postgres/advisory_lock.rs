//! PostgreSQL's request locks: a session-level advisory lock per session, keyed by the
//! table (its class) and the session (its object), taken on a connection of the pool that
//! stays with the lease until it is released.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use deadpool_postgres::Object;
use tokio_postgres::Client;

use super::Postgres;
use super::pool::{MAX_CONNECTIONS, PoolWait, backend, block_on};
use crate::key::SessionKey;
use crate::store::{Lease, StoreError, locked};

/// PostgreSQL's SQLSTATE for a lock not granted within `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";
/// Pause between two tries at a lock, for a waiter that holds no connection meanwhile.
const LOCK_POLL: Duration = Duration::from_millis(5);
/// PostgreSQL's SQLSTATE for a statement cancelled (`statement_timeout`).
const QUERY_CANCELED: &str = "57014";

/// A stable 32-bit number for `text` (FNV-1a), so every process locks the same class.
pub(super) fn class_of(text: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(hash.to_ne_bytes())
}

/// The advisory-lock object of a session: 32 of its key's random bits. Two sessions sharing
/// it only wait for each other; no lock is ever lost.
pub(super) fn object_of(key: &SessionKey) -> i32 {
    let bytes = key.as_bytes();
    i32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]])
}

/// How `pg_locks` shows an int4 advisory key (an `oid`, unsigned), as a bigint.
pub(super) fn as_oid(n: i32) -> i64 {
    i64::from(u32::from_ne_bytes(n.to_ne_bytes()))
}

impl Postgres {
    /// The request lock of `key` ([`Database::lock`](super::Database::lock)), waiting at
    /// most `wait`.
    pub(super) fn lock_session(
        &self,
        key: &SessionKey,
        wait: Duration,
    ) -> Result<Lease, StoreError> {
        // A session-level advisory lock lives as long as its connection: this connection
        // stays with the lease until it is released (then it goes back to the pool), and a
        // holder that dies releases it with its connection. The wait is the server's
        // (`pg_advisory_lock` under `lock_timeout`) for at most half the pool at once; the
        // others try again and again, holding no connection between tries, so that waiters
        // never take every connection from the requests of other sessions.
        let (class, object) = (self.lock_class, object_of(key));
        let start = Instant::now();
        let timed_out = || StoreError::LockTimeout {
            key: *key,
            waited: start.elapsed(),
        };
        let (client, pid) = loop {
            // A connection within the lock's own deadline: waiting for one is waiting for it.
            let left = wait.saturating_sub(start.elapsed());
            let client = match self.pool.get_within(left.max(Duration::from_millis(1))) {
                Ok(client) => client,
                Err(PoolWait::Busy) => return Err(timed_out()),
                Err(PoolWait::Failed(e)) => return Err(e),
            };
            let left = wait.saturating_sub(start.elapsed());
            let server_waits = !left.is_zero()
                && self.server_waiters.fetch_add(1, Ordering::SeqCst) < MAX_CONNECTIONS / 2;
            let taken = if server_waits {
                let taken = lock_waiting(&client, class, object, left);
                self.server_waiters.fetch_sub(1, Ordering::SeqCst);
                taken
            } else {
                if !left.is_zero() {
                    self.server_waiters.fetch_sub(1, Ordering::SeqCst);
                }
                lock_now(&client, class, object)
            };
            match taken {
                Ok(Some(pid)) => break (client, pid),
                // Not granted: the connection holds nothing, back to the pool.
                Ok(None) => drop(client),
                Err(e) => {
                    // Perhaps granted before the error (a COMMIT that failed): closing the
                    // connection releases whatever it holds.
                    drop(Object::take(client));
                    return Err(backend(&self.pool.shown, "take a session lock", e));
                }
            }
            let left = wait.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(timed_out());
            }
            std::thread::sleep(LOCK_POLL.min(left));
        };
        // The token is the backend's pid: the save checks in pg_locks that it still holds
        // the lock. The connection is lent to the lease until it is released.
        let token = pid.to_string();
        locked(&self.pool.leased).insert(token.clone(), client);
        let pool = Arc::clone(&self.pool);
        Ok(Lease::new(*key, token, move |key, token| {
            let Some(client) = locked(&pool.leased).remove(token) else {
                return;
            };
            let unlock =
                block_on(client.execute("SELECT pg_advisory_unlock($1, $2)", &[&class, &object]));
            if let Err(e) = unlock {
                // Closing the connection ends its session, which releases the lock.
                log::warn!(
                    "{}: cannot release the lock of session {}: {e}; closing its connection",
                    pool.shown,
                    key.short()
                );
                drop(Object::take(client));
            }
        }))
    }
}

/// `pg_try_advisory_lock`: the backend's pid if granted, `None` if held elsewhere.
fn lock_now(
    client: &Client,
    class: i32,
    object: i32,
) -> Result<Option<i32>, tokio_postgres::Error> {
    let row = block_on(client.query_one(
        "SELECT pg_try_advisory_lock($1, $2), pg_backend_pid()",
        &[&class, &object],
    ))?;
    Ok(row
        .try_get::<_, bool>(0)?
        .then_some(row.try_get::<_, i32>(1)?))
}

/// `pg_advisory_lock`, waited for by the server at most `left`: the backend's pid if
/// granted, `None` if not in time.
fn lock_waiting(
    client: &Client,
    class: i32,
    object: i32,
    left: Duration,
) -> Result<Option<i32>, tokio_postgres::Error> {
    let millis = left.as_millis().max(1);
    let taken = block_on(async {
        // SET LOCAL: the timeouts end with this transaction; the session-level lock taken in
        // it outlives it.
        client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = {millis}; SET LOCAL statement_timeout = {}",
                millis + 1_000
            ))
            .await?;
        let row = client
            .query_one(
                "SELECT pg_advisory_lock($1, $2), pg_backend_pid()",
                &[&class, &object],
            )
            .await;
        let end = if row.is_ok() { "COMMIT" } else { "ROLLBACK" };
        client.batch_execute(end).await?;
        row.and_then(|r| r.try_get::<_, i32>(1))
    });
    match taken {
        Ok(pid) => Ok(Some(pid)),
        Err(e)
            if e.code()
                .is_some_and(|c| c.code() == LOCK_NOT_AVAILABLE || c.code() == QUERY_CANCELED) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
