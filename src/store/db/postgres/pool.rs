//! PostgreSQL's connections: the I/O runtime that drives them, on a thread of its own, the
//! pool (deadpool-postgres) that makes and lends them within bounded waits, and the
//! connections lent to request locks.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, PoolError, RecyclingMethod, Runtime, Timeouts,
};
use tokio::runtime::Handle;
use tokio_postgres::{Client, Config, NoTls};

use crate::store::db::lost_lock;
use crate::store::{Lease, StoreError, locked};

/// How long connecting may take. Short: a server has one handler thread to keep moving.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a peer may leave data unacknowledged before the connection is dropped.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
/// Set at connect: statements and row-lock waits cancelled after 10 s; a transaction left
/// idle 30 s ended; the server probes a silent client after 5 s (every 1 s, 3 times).
const SESSION_SETUP: &str = "SET statement_timeout = 10000; SET lock_timeout = 10000; \
     SET idle_in_transaction_session_timeout = 30000; SET tcp_keepalives_idle = 5; \
     SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 3; SET TIME ZONE 'UTC'";
/// Connections one store opens at most (idle, in use, and holding request locks).
pub(super) const MAX_CONNECTIONS: usize = 16;
/// How long a caller waits for a free connection before 503 (a lock's waiter: at most
/// until its own deadline).
const CONNECTION_WAIT: Duration = Duration::from_secs(5);

/// The runtime that drives every connection's I/O, on a thread of its own, started once.
fn io_runtime() -> Result<&'static Handle, StoreError> {
    static HANDLE: OnceLock<Result<Handle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name("postgres-io".into())
                .spawn(move || runtime.block_on(std::future::pending::<()>()))
                .map_err(|e| e.to_string())?;
            Ok(handle)
        })
        .as_ref()
        .map_err(|e| {
            StoreError::Unavailable(format!("cannot start the PostgreSQL I/O thread: {e}"))
        })
}

/// Waits for `future` on this thread, in the I/O runtime's context.
pub(super) fn block_on<F: Future>(future: F) -> F::Output {
    // Without the runtime (it could not start) the pool's timers would panic: none is
    // made then, since `Postgres::open` fails first.
    let _context = io_runtime().ok().map(Handle::enter);
    futures_executor::block_on(future)
}

/// The pool, and the connections lent to request locks.
pub(super) struct Pool {
    pool: deadpool_postgres::Pool,
    /// Connections holding a request lock, by the lease's token: the holder's reads and
    /// writes go through it.
    pub(super) leased: Mutex<HashMap<String, Object>>,
    /// The database, as errors show it (`PostgreSQL at <url without password>`).
    pub(super) shown: String,
}

impl Pool {
    /// The pool of the database at `url` (`shown`: the URL without its password); no
    /// connection is made yet.
    pub(super) fn open(url: &str, shown: &str) -> Result<Pool, StoreError> {
        let mut config: Config = url.parse().map_err(|e| StoreError::Backend {
            action: format!("PostgreSQL at {shown}: cannot read DATABASE_URL"),
            source: Box::new(e),
        })?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_user_timeout(TCP_USER_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A connection that is closed is replaced; nothing else is asked of it.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let setup = deadpool_postgres::Hook::async_fn(
            |client: &mut deadpool_postgres::ClientWrapper, _| {
                Box::pin(async move {
                    client
                        .batch_execute(SESSION_SETUP)
                        .await
                        .map_err(deadpool_postgres::HookError::Backend)
                })
            },
        );
        let shown = format!("PostgreSQL at {shown}");
        let built = {
            let _context = io_runtime()?.enter();
            deadpool_postgres::Pool::builder(manager)
                .max_size(MAX_CONNECTIONS)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(CONNECTION_WAIT))
                .create_timeout(Some(CONNECT_TIMEOUT))
                .recycle_timeout(Some(CONNECT_TIMEOUT))
                .post_create(setup)
                .build()
        };
        Ok(Pool {
            pool: built.map_err(|e| StoreError::Unavailable(format!("{shown}: {e}")))?,
            leased: Mutex::new(HashMap::new()),
            shown,
        })
    }

    /// A connection, waiting at most `wait` for one to be free.
    pub(super) fn get_within(&self, wait: Duration) -> Result<Object, PoolWait> {
        let timeouts = Timeouts {
            wait: Some(wait),
            create: Some(CONNECT_TIMEOUT),
            recycle: Some(CONNECT_TIMEOUT),
        };
        block_on(self.pool.timeout_get(&timeouts)).map_err(|e| match e {
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => PoolWait::Busy,
            PoolError::Backend(e) => PoolWait::Failed(backend(&self.shown, "connect", e)),
            other => PoolWait::Failed(StoreError::Unavailable(format!(
                "{}: cannot connect: {other}",
                self.shown
            ))),
        })
    }

    /// A connection within [`CONNECTION_WAIT`].
    pub(super) fn get(&self) -> Result<Object, StoreError> {
        self.get_within(CONNECTION_WAIT).map_err(|e| match e {
            PoolWait::Busy => StoreError::Unavailable(format!(
                "{}: all {MAX_CONNECTIONS} connections busy for {} s",
                self.shown,
                CONNECTION_WAIT.as_secs()
            )),
            PoolWait::Failed(e) => e,
        })
    }

    /// Runs `f` on the connection `lease` holds, if it holds one; else on one of the pool.
    /// `retry`: if `f` fails on a pooled connection that turns out to be closed (the server
    /// restarted), `f` runs once more on a new one; only for what is safe to run twice.
    pub(super) fn run<T>(
        &self,
        what: &'static str,
        retry: bool,
        lease: Option<&Lease>,
        f: impl Fn(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        if let Some(lease) = lease
            && let Some(mut lent) = self.lent(lease)
        {
            let result = f(lent.client()).map_err(|e| {
                if lent.client().is_closed() {
                    // The lock's connection ended, and the lock with it.
                    lost_lock(lease.session())
                } else {
                    backend(&self.shown, what, e)
                }
            });
            lent.give_back();
            return result;
        }
        let client = self.get()?;
        match f(&client) {
            Ok(v) => Ok(v),
            Err(e) if retry && client.is_closed() => {
                drop(e);
                drop(Object::take(client));
                let fresh = self.get()?;
                f(&fresh).map_err(|e| backend(&self.shown, what, e))
            }
            Err(e) => Err(backend(&self.shown, what, e)),
        }
    }

    /// The connection a lease holds, taken out while it is used.
    pub(super) fn lent<'a>(&'a self, lease: &'a Lease) -> Option<Lent<'a>> {
        let client = locked(&self.leased).remove(lease.token())?;
        Some(Lent {
            pool: self,
            lease,
            client: Some(client),
        })
    }
}

/// A lease's connection, out of its lease while it is used. [`give_back`](Lent::give_back)
/// returns it; dropped without that (a panic in the middle), it is closed, which releases
/// the lock it holds, rather than go back to the pool still holding it.
pub(super) struct Lent<'a> {
    pool: &'a Pool,
    lease: &'a Lease,
    client: Option<Object>,
}

impl Lent<'_> {
    pub(super) fn client(&mut self) -> &mut Object {
        match self.client.as_mut() {
            Some(client) => client,
            None => unreachable!("a lent connection is there until given back"),
        }
    }

    pub(super) fn give_back(mut self) {
        if let Some(client) = self.client.take() {
            locked(&self.pool.leased).insert(self.lease.token().to_owned(), client);
        }
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

/// Why no connection came.
pub(super) enum PoolWait {
    /// Every connection stayed busy for the wait.
    Busy,
    /// Connecting failed.
    Failed(StoreError),
}

/// A PostgreSQL error as the store reports it: what could not be done, on which database.
pub(super) fn backend(shown: &str, what: &str, e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend {
        action: format!("{shown}: cannot {what}"),
        source: Box::new(e),
    }
}
