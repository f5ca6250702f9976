//! A connection's socket with the deadlines hyper does not keep itself: the idle wait for
//! a request's first byte, the head (408), and writes that make no progress.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::access_log;
use super::registry::Conn;
use super::response::Response;

/// Where a connection is between two requests, as its reads show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No byte of the next request yet: [`Deadlines::idle`] from `since`.
    Idle,
    /// Some of a head: [`Deadlines::head`] from its first byte.
    Head,
    /// Inside a request (its head read; the body, if any, is timed by the service's
    /// reader): no read deadline here.
    Busy,
}

/// The socket of one connection, as hyper reads and writes it, with three deadlines:
/// - **idle** ([`Limits::idle_timeout`](super::Limits::idle_timeout)): from the accept,
///   or from the last answer, to the first byte of a request; then the connection reads
///   as closed (hyper closes it quietly);
/// - **head** ([`Limits::head_timeout`](super::Limits::head_timeout)): from that first
///   byte to the whole head; then a 408 is written and the connection fails;
/// - **write** ([`Limits::write_timeout`](super::Limits::write_timeout)): a write that
///   finds the socket full starts the clock, any progress stops it; when it passes the
///   connection fails (a client that does not read holds its connection and one answer
///   for at most that long).
///
/// A request's phase comes from the connection's in-request flag, set from the moment hyper
/// hands the service a parsed head until its answer is produced.
pub(super) struct Deadlines {
    io: TokioIo<TcpStream>,
    conn: Rc<Conn>,
    idle: Duration,
    head: Duration,
    write: Duration,
    phase: Phase,
    /// [`Conn::requests`] when last looked at.
    requests_seen: u64,
    read_clock: Pin<Box<Sleep>>,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Deadlines {
    pub(super) fn new(
        stream: TcpStream,
        conn: Rc<Conn>,
        idle: Duration,
        head: Duration,
        write: Duration,
    ) -> Self {
        Deadlines {
            io: TokioIo::new(stream),
            conn,
            idle,
            head,
            write,
            phase: Phase::Idle,
            requests_seen: 0,
            read_clock: Box::pin(tokio::time::sleep(idle)),
            stalled: None,
        }
    }

    /// Follows the in-request flag and the request count: a request answered since the last
    /// look starts a new idle wait.
    fn update_phase(&mut self) {
        let requests = self.conn.requests();
        if self.conn.in_request() {
            self.phase = Phase::Busy;
            self.requests_seen = requests;
        } else if self.phase == Phase::Busy || requests != self.requests_seen {
            self.requests_seen = requests;
            self.start(Phase::Idle);
        }
    }

    fn start(&mut self, phase: Phase) {
        self.phase = phase;
        let wait = if phase == Phase::Head {
            self.head
        } else {
            self.idle
        };
        let deadline = Instant::now() + wait;
        self.read_clock.as_mut().reset(deadline);
    }

    /// The head deadline passed: a 408 for the client (best effort: what the socket takes
    /// at once), then the connection fails.
    fn head_timed_out(&mut self) -> io::Error {
        let response = Response::text(408, "Request head not received in time.\n");
        let head = format!(
            "HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            response.body().len()
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(response.body());
        let _ = self.io.inner().try_write(&bytes);
        access_log::log("-", 408, response.body().len());
        io::Error::new(io::ErrorKind::TimedOut, "request head not received in time")
    }

    /// After a write found the socket full: `Ready(Err)` once the deadline has passed.
    fn write_stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let write = self.write;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(write)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read its answer within the write deadline",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Progress (or an error) on a write stops the write clock; a write between requests
    /// (an answer going out) restarts the idle wait.
    fn wrote<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.write_stalled(cx),
            ready => {
                self.stalled = None;
                self.update_phase();
                if self.phase == Phase::Idle {
                    self.start(Phase::Idle);
                }
                ready
            }
        }
    }
}

impl hyper::rt::Read for Deadlines {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.update_phase();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                // Bytes (or the end, after which hyper closes the connection anyway).
                if this.phase == Phase::Idle {
                    this.start(Phase::Head);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.phase != Phase::Busy => {
                match this.read_clock.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) if this.phase == Phase::Idle => {
                        // Idle too long: read as closed; hyper closes without an answer.
                        Poll::Ready(Ok(()))
                    }
                    Poll::Ready(()) => Poll::Ready(Err(this.head_timed_out())),
                }
            }
            other => other,
        }
    }
}

impl hyper::rt::Write for Deadlines {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        hyper::rt::Write::is_write_vectored(&self.io)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_flush(cx);
        this.wrote(result, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
