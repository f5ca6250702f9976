//! The HTTP layer, the bottom one: hyper 1.x HTTP/1.1 on a tokio current-thread runtime,
//! whose one thread does all network I/O and runs the [`Service`] (the router, the session
//! middleware and every handler), one request at a time. It knows nothing of sessions.
//!
//! - [`serve`]: the accept loop and the bridge from hyper's requests to ours;
//! - [`Service`], [`Prepared`]: what the layer runs for each request;
//! - [`Request`], [`Response`], [`Method`]: our request and response types;
//! - [`Limits`]: every limit and deadline, each a named default;
//! - `deadlines`, `registry`: the idle, head and write deadlines, and the connection caps;
//! - `access_log`: Django runserver's access log.

mod access_log;
mod deadlines;
mod limits;
mod registry;
mod request;
mod response;
mod serve;
mod service;

pub use limits::{DEFAULT_MAX_BODY, Limits};
pub(crate) use request::decode_segment;
pub use request::{Method, Request};
pub use response::Response;
pub use serve::{
    MAX_BLOCKING_THREADS, MAX_FINISHES, MAX_LOCK_WAITS, RESERVED_DESCRIPTORS, connection_cap, serve,
};
pub use service::{Finish, Prepared, Ran, Service, Turn, Wait, Work};
