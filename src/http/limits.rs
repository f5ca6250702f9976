//! The HTTP layer's limits and deadlines, each a named default.

use std::time::Duration;

/// `DATA_UPLOAD_MAX_MEMORY_SIZE`'s default here: 64 KiB. (Django's is 2.5 MB; a session
/// API needs no more than this.)
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// Limits and deadlines of the HTTP layer. Every one is a defence against a client that
/// would otherwise hold a connection, the one thread or memory for ever. Sizes are bytes,
/// times [`Duration`]s; `Limits::default()` is what `runserver` uses.
///
/// ```
/// use std::time::Duration;
/// use filesession::Limits;
///
/// let limits = Limits {
///     idle_timeout: Duration::from_secs(30),  // behind a proxy that keeps connections
///     max_connections_per_address: 4096,      // ... and sends them all from one address
///     ..Limits::default()
/// };
/// assert_eq!(limits.max_head_bytes, 32 * 1024);
/// // Server::bind(addr, app)?.with_limits(limits).run()
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The largest request head (request line and headers), in bytes. Default: 32 KiB;
    /// more is 431.
    pub max_head_bytes: usize,
    /// The most header fields. Default: 64; more is 431.
    pub max_headers: usize,
    /// The largest body, in bytes (`DATA_UPLOAD_MAX_MEMORY_SIZE`). Default:
    /// [`DEFAULT_MAX_BODY`]; more is 413, from `Content-Length` before reading, or while
    /// reading a chunked body.
    pub max_body_bytes: usize,
    /// How long a connection may wait for the first byte of a request: after it is
    /// accepted, and between the requests of a kept-alive connection. Default: 5 s; then
    /// the connection is closed without an answer (RFC 9112 §9.8 lets a server close an
    /// idle connection at any time).
    pub idle_timeout: Duration,
    /// How long the whole head may take once its first byte arrived. Default: 10 s; then
    /// 408 and the connection is closed.
    pub head_timeout: Duration,
    /// How long the whole body may take once the head is read. Default: 10 s; then 408.
    pub body_timeout: Duration,
    /// How long an answer's write may make no progress (a client that does not read).
    /// Default: 10 s; then the connection is dropped. Also how long a stop waits for the
    /// answers already produced to be written.
    pub write_timeout: Duration,
    /// The most open connections. Default: 16 384 (lowered at start to what the open-files
    /// limit allows). A new connection beyond it closes an idle connection of the address
    /// holding the most; if none is idle it is answered 503 and closed.
    pub max_connections: usize,
    /// The most open connections from one client address: a new one beyond it closes that
    /// address's oldest idle connection (idle: not inside a handler, e.g. kept alive or
    /// still sending its head), or is answered 503 if none is idle. Default: 256.
    pub max_connections_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 32 * 1024,
            max_headers: 64,
            max_body_bytes: DEFAULT_MAX_BODY,
            idle_timeout: Duration::from_secs(5),
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: 16_384,
            max_connections_per_address: 256,
        }
    }
}
