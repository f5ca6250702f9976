//! What the HTTP layer runs for each request: the contract between the network I/O and the
//! one thread's work.

use std::time::Duration;

use super::request::Request;
use super::response::Response;

/// The work of the server's one thread, as the HTTP layer calls it: for each request,
/// [`prepare`](Service::prepare) then [`run`](Service::run), one request at a time, on the
/// thread that also does all network I/O. Neither may wait for anything but the CPU and
/// local files: a wait (such as a lock held by another process) is announced by `prepare`
/// as [`Prepared::Wait`] and done on a blocking thread.
pub trait Service: 'static {
    /// What `prepare` hands on to `run` (such as a lock taken for the request).
    type Ticket: Send + 'static;

    /// Called once the whole request (head and body) is read; never waits.
    fn prepare(&self, request: &Request) -> Prepared<Self::Ticket>;

    /// Answers the request. A panic is caught and answered 500.
    fn run(&self, request: Request, ticket: Self::Ticket) -> Response;

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

/// A wait for [`Prepared::Wait`]: runs on a blocking thread.
pub type Wait<T> = Box<dyn FnOnce(&Request) -> Result<T, Response> + Send>;

/// What [`Service::prepare`] decided.
pub enum Prepared<T> {
    /// Go on: [`Service::run`] with this ticket.
    Ready(T),
    /// A wait is needed: this runs on a blocking thread, off the one thread, and its
    /// result goes to [`Service::run`] (`Ok`) or is the answer (`Err`).
    Wait(Wait<T>),
    /// The answer, given at once without [`Service::run`] (such as 503: a lock timed out).
    Answer(Response),
}
