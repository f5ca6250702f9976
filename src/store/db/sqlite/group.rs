//! Group commit, for a database in rollback-journal mode (Django's, `journal_mode=delete`,
//! `synchronous=FULL`): there each COMMIT costs a journal file made, written, synced (twice)
//! and removed, the directory synced and the database synced, about 1 ms on a fast disk,
//! and writes of one process are serialized on its writer. Saves that arrive while others
//! are being written share one transaction and one COMMIT instead, with Django's durability
//! unchanged (nothing is acknowledged before its COMMIT is on disk).
//!
//! * A save joins the group taking members (at most [`MAX_MEMBERS`]), else starts one.
//! * Members do their work in turn on the writer, each in its own `SAVEPOINT`: its read
//!   sees every earlier member's write, so a merge is exactly as if the saves ran one after
//!   another. The first to get the writer runs `BEGIN IMMEDIATE`; a member whose own work
//!   fails (or panics) is rolled back to its savepoint alone.
//! * The member that finishes last closes the group (later saves start the next) and
//!   commits, waiting in place while readers' SHARED locks make the COMMIT busy. Every
//!   member is answered only then: a failed COMMIT (rolled back) fails every member.
//! * Nothing else uses the writer while a group's transaction is open: other statements
//!   wait for it ([`Inner::run`](super::connections::Inner::run)), and reads go to the
//!   reader connections, which see committed data only.
//! * A member waits for its group's COMMIT at most the busy timeout plus [`GRACE`].

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::connections::{Inner, error, is_busy};
use crate::store::{StoreError, locked};

/// Most saves in one group.
const MAX_MEMBERS: usize = 32;
/// Pause before a busy `BEGIN IMMEDIATE` (another process writes) is tried again, the
/// writer let go meanwhile.
const BUSY_PAUSE: Duration = Duration::from_millis(1);
/// Pause before a COMMIT busy only with readers (their SHARED locks; our PENDING lock lets
/// no new one in) is tried again, in place.
const COMMIT_PAUSE: Duration = Duration::from_micros(100);
/// How much longer than the busy timeout a member waits for its group's COMMIT.
pub(super) const GRACE: Duration = Duration::from_secs(5);

/// The groups of one store's writer.
#[derive(Default)]
pub(super) struct Group {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    next: u64,
    /// The group taking members.
    open: Option<u64>,
    /// The group whose transaction is open on the writer.
    in_tx: Option<u64>,
    groups: HashMap<u64, Batch>,
}

#[derive(Default)]
struct Batch {
    joined: usize,
    worked: usize,
    left: usize,
    /// A savepoint could not be rolled back: the group is rolled back whole.
    broken: bool,
    outcome: Option<Result<(), Arc<rusqlite::Error>>>,
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, State> {
        locked(&self.state)
    }

    /// Whether a group's transaction is open on the writer.
    pub(super) fn in_a_group(&self) -> bool {
        self.lock().in_tx.is_some()
    }

    /// Waits (at most `d`) for a group's transaction to end, if one is open.
    pub(super) fn wait_a_little(&self, d: Duration) {
        let state = self.lock();
        if state.in_tx.is_some() {
            drop(self.changed.wait_timeout(state, d));
        }
    }

    /// Joins the group taking members, or starts one: its number.
    pub(super) fn join(&self) -> u64 {
        let mut st = self.lock();
        if let Some(id) = st.open
            && let Some(batch) = st.groups.get_mut(&id)
            && batch.joined < MAX_MEMBERS
        {
            batch.joined += 1;
            return id;
        }
        let id = st.next;
        st.next += 1;
        st.open = Some(id);
        st.groups.insert(
            id,
            Batch {
                joined: 1,
                ..Batch::default()
            },
        );
        id
    }

    /// Runs `work` on the writer in a savepoint of a group's transaction, and answers once
    /// the group's COMMIT is done (its error, or `work`'s own, if either failed).
    pub(super) fn save<T>(
        &self,
        inner: &Inner,
        what: &'static str,
        work: impl FnMut(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let id = self.join();
        self.member(id, inner, what, work)
    }

    /// [`save`](Group::save) as a member of the group `id` (joined).
    pub(super) fn member<T>(
        &self,
        id: u64,
        inner: &Inner,
        what: &'static str,
        mut work: impl FnMut(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let timeout = inner.busy_timeout();
        let start = Instant::now();
        let mut panic = None;
        let mut conn = locked(&inner.conn);
        // This member's own work, once the writer is in this group's transaction.
        let own: rusqlite::Result<T> = loop {
            let mut st = self.lock();
            match st.in_tx {
                // The transaction gone (SQLite rolls a transaction back whole on some
                // errors, a full disk say): nothing more is done in it (a SAVEPOINT would
                // begin, and its RELEASE commit, a transaction of this member alone), and
                // the group fails.
                Some(g) if g == id && conn.is_autocommit() => {
                    st.groups.entry(id).or_default().broken = true;
                    break Err(lost_transaction());
                }
                Some(g) if g == id => {}
                Some(_) => {
                    drop(conn);
                    drop(self.changed.wait_timeout(st, BUSY_PAUSE));
                    conn = locked(&inner.conn);
                    continue;
                }
                None => match conn.execute_batch("BEGIN IMMEDIATE") {
                    Ok(()) => st.in_tx = Some(id),
                    Err(e) if is_busy(&e) && start.elapsed() < timeout => {
                        drop((st, conn));
                        std::thread::sleep(BUSY_PAUSE);
                        conn = locked(&inner.conn);
                        continue;
                    }
                    Err(e) => break Err(e),
                },
            }
            drop(st);
            if let Err(e) = conn.execute_batch("SAVEPOINT member") {
                break Err(e);
            }
            let done = catch_unwind(AssertUnwindSafe(|| work(&conn)));
            let done = match done {
                Ok(Ok(value)) => match conn.execute_batch("RELEASE member") {
                    Ok(()) => break Ok(value),
                    Err(e) => Err(e),
                },
                Ok(Err(e)) => Err(e),
                Err(p) => {
                    panic = Some(p);
                    Err(rusqlite::Error::InvalidQuery)
                }
            };
            let undone = conn.execute_batch("ROLLBACK TO member; RELEASE member");
            if undone.is_err() {
                self.lock().groups.entry(id).or_default().broken = true;
            }
            match done {
                Err(e) if is_busy(&e) && panic.is_none() && start.elapsed() < timeout => {
                    drop(conn);
                    std::thread::sleep(BUSY_PAUSE);
                    conn = locked(&inner.conn);
                }
                other => break other,
            }
        };
        let mut st = self.lock();
        let batch = st.groups.entry(id).or_default();
        batch.worked += 1;
        let last = batch.worked == batch.joined;
        let broken = batch.broken;
        if last {
            // The closer: the group takes no more members, and is committed with the
            // writer still held.
            if st.open == Some(id) {
                st.open = None;
            }
            let ours = st.in_tx == Some(id);
            drop(st);
            let outcome = if ours {
                commit(&conn, broken, timeout).map_err(Arc::new)
            } else {
                Ok(())
            };
            st = self.lock();
            if ours {
                st.in_tx = None;
            }
            st.groups.entry(id).or_default().outcome = Some(outcome);
            self.changed.notify_all();
        }
        drop(conn);
        // Every member waits for the COMMIT (a member whose own work failed has nothing in
        // it), at most the busy timeout and the grace.
        let deadline = Instant::now() + timeout + GRACE;
        while own.is_ok() && st.groups.get(&id).is_some_and(|b| b.outcome.is_none()) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let outcome = st.groups.get(&id).and_then(|b| b.outcome.clone());
        if let Some(batch) = st.groups.get_mut(&id) {
            batch.left += 1;
            if batch.left >= batch.joined && batch.outcome.is_some() {
                st.groups.remove(&id);
            }
        }
        drop(st);
        if let Some(p) = panic {
            resume_unwind(p);
        }
        let value = own.map_err(|e| error(&inner.shown, &inner.path, what, e))?;
        inner.still_at_its_path()?;
        match outcome {
            Some(Ok(())) => Ok(value),
            Some(Err(e)) => Err(shared_error(inner, what, &e)),
            None => Err(StoreError::Backend {
                action: format!("{}: cannot {what}", inner.shown),
                source: "the COMMIT of its group did not finish in time".into(),
            }),
        }
    }
}

/// COMMITs the writer's transaction (ROLLBACK if `broken`), waiting in place while it is
/// busy (readers' SHARED locks), until `timeout`; rolled back if it cannot be committed.
fn commit(conn: &Connection, broken: bool, timeout: Duration) -> rusqlite::Result<()> {
    if broken {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        return Err(lost_transaction());
    }
    let start = Instant::now();
    loop {
        match conn.execute_batch("COMMIT") {
            Ok(()) => return Ok(()),
            Err(e) if is_busy(&e) && start.elapsed() < timeout => {
                std::thread::sleep(COMMIT_PAUSE);
            }
            Err(e) => {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                return Err(e);
            }
        }
    }
}

/// The error of a group rolled back whole: a member's savepoint could not be rolled back
/// alone, or SQLite rolled the transaction back.
fn lost_transaction() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
        Some("the transaction of a group of saves was rolled back whole".into()),
    )
}

/// The StoreError of a failed COMMIT, for each member of its group: a full disk is
/// `StorageFull` (507), as [`error`] makes it.
fn shared_error(inner: &Inner, what: &'static str, e: &Arc<rusqlite::Error>) -> StoreError {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return StoreError::io(
            what,
            &inner.path,
            std::io::Error::new(std::io::ErrorKind::StorageFull, e.to_string()),
        );
    }
    StoreError::Backend {
        action: format!("{}: cannot {what}", inner.shown),
        source: Box::new(Arc::clone(e)),
    }
}
