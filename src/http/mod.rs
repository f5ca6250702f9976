//! A small, defensive HTTP/1.1 layer: requests parsed by `httparse` on connection threads
//! with limits and deadlines, handed whole to the single handler thread.

mod conn;
pub(crate) mod hyper_io;
mod request;
mod response;

pub use conn::Limits;
pub(crate) use conn::{
    Job, Reply, flush_access_log, log_access, refuse_overload, request_line, serve_connection,
};
pub(crate) use request::decode_segment;
pub use request::{Method, Request};
pub use response::Response;
