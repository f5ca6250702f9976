//! What the HTTP layer runs for each request: the contract between the network I/O and the
//! one thread's work.
//!
//! # What may wait, and where
//!
//! The server's one thread does all network I/O and runs every [`Service::prepare`] and
//! [`Service::run`], one request at a time; they may spend CPU and read local files, never
//! wait for anything else. Whatever may wait goes to a blocking thread, announced by what
//! they return:
//!
//! | returned | runs on | budget | for |
//! |---|---|---|---|
//! | [`Prepared::Wait`] | a blocking thread, before `run` | at most [`MAX_LOCK_WAITS`](super::MAX_LOCK_WAITS) at once (more queue; the wait's deadline counts from `prepare`) | waiting for another request or process: a session's lock held elsewhere |
//! | [`Prepared::Work`] | a blocking thread, before `run` | the blocking pool ([`MAX_BLOCKING_THREADS`](super::MAX_BLOCKING_THREADS)) | reading from a store that may wait (a database, the network): the session loaded before the handler, and a first try at its lock, which hands on a [`Prepared::Wait`] if the lock is held |
//! | [`Ran::Finish`] | a blocking thread, after `run` | at most [`MAX_FINISHES`](super::MAX_FINISHES) at once | writing to such a store (which may wait for a database's lock): the save, the logout's delete, a cycle, and the answer built from them |
//!
//! So neither lock waiters nor writes waiting for a database can fill the pool: at least
//! `MAX_BLOCKING_THREADS - MAX_LOCK_WAITS - MAX_FINISHES` threads stay for reads. The answer is sent once the finish returns, so a
//! request that begins after another's answer sees what it wrote. Requests that must not
//! overlap (two of one session) say so ([`Service::turn`]) and take turns, waiting for
//! theirs off the thread (an async wait, at most [`Turn::wait`]).

use std::time::Duration;

use super::request::Request;
use super::response::Response;

/// The work of the server's one thread, as the HTTP layer calls it: for each request,
/// [`prepare`](Service::prepare) then [`run`](Service::run), one request at a time, on the
/// thread that also does all network I/O. Neither may wait for anything but the CPU and
/// local files: what may wait is returned as [`Prepared::Wait`], [`Prepared::Work`] or
/// [`Ran::Finish`] and run on a blocking thread (the module's table).
pub trait Service: 'static {
    /// What `prepare` hands on to `run` (such as a lock taken for the request, or the
    /// session read before the handler).
    type Ticket: Send + 'static;

    /// Requests that must be answered one at a time, in the order they came, though their
    /// work leaves the one thread (two requests of one session, whose store may wait, must
    /// not read the same copy and both write it back): those with the same [`Turn::key`]
    /// take turns, each waiting at most [`Turn::wait`] for its turn (then 503). Asked before
    /// [`prepare`](Service::prepare). Default: none (work on the one thread takes turns by
    /// itself).
    fn turn(&self, request: &Request) -> Option<Turn> {
        let _ = request;
        None
    }

    /// Called once the whole request (head and body) is read; never waits.
    fn prepare(&self, request: &Request) -> Prepared<Self::Ticket>;

    /// Answers the request, or hands what is left of it to a blocking thread
    /// ([`Ran::Finish`]). A panic is caught and answered 500.
    fn run(&self, request: Request, ticket: Self::Ticket) -> Ran;

    /// Background work done when no request came for [`idle_wait`](Service::idle_wait)
    /// (such as expired-session cleanup), and between requests by
    /// [`after_request`](Service::after_request). Must return within a few milliseconds.
    fn idle(&self) {}

    /// How long without a request before [`idle`](Service::idle) is called.
    fn idle_wait(&self) -> Duration {
        Duration::from_millis(100)
    }

    /// Called after each answer is produced (before it is written).
    fn after_request(&self) {}
}

/// Which requests take turns ([`Service::turn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// Requests with the same key are answered one at a time, in arrival order.
    pub key: u128,
    /// The longest a request waits for its turn: then it is answered 503.
    pub wait: Duration,
}

/// Work for a blocking thread before [`Service::run`]: its result goes to `run` (`Ok`) or is
/// the answer (`Err`).
pub type Wait<T> = Box<dyn FnOnce(&Request) -> Result<T, Response> + Send>;

/// Work for a blocking thread before [`Service::run`] ([`Prepared::Work`]): what comes of
/// it.
pub type Work<T> = Box<dyn FnOnce(&Request) -> Prepared<T> + Send>;

/// Work for a blocking thread after [`Service::run`]: the answer.
pub type Finish = Box<dyn FnOnce() -> Response + Send>;

/// What [`Service::prepare`] decided.
pub enum Prepared<T> {
    /// Go on: [`Service::run`] with this ticket.
    Ready(T),
    /// A wait for another request or process (a lock held elsewhere): runs on a blocking
    /// thread, at most [`MAX_LOCK_WAITS`](super::MAX_LOCK_WAITS) at once, and its result
    /// goes to [`Service::run`] (`Ok`) or is the answer (`Err`).
    Wait(Wait<T>),
    /// Store work that may wait for the store itself (a load from a database or over the
    /// network), not for another request: runs on a blocking thread, and what it returns
    /// is decided as `prepare`'s result was (it may be a [`Prepared::Wait`]: the lock was
    /// held).
    Work(Work<T>),
    /// The answer, given at once without [`Service::run`] (such as 503: a lock timed out).
    Answer(Response),
}

/// What [`Service::run`] did.
pub enum Ran {
    /// The answer.
    Answer(Response),
    /// What is left (a save to a store that may wait) runs on a blocking thread, and what
    /// it returns is the answer.
    Finish(Finish),
}
