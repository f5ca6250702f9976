//! Django runserver's access log, buffered: one write to stderr for many lines under load.

use std::io::{self, Write};
use std::sync::Mutex;
use std::time::SystemTime;

use super::request::Request;

/// Access-log lines waiting to be written.
static ACCESS_LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Lines are written out once this many bytes are waiting (and by [`flush`]).
const ACCESS_LOG_BUFFER: usize = 8 * 1024;

/// `GET /path HTTP/1.1`, for the access log (the target escaped: no control bytes reach
/// the terminal).
pub(crate) fn request_line(request: &Request) -> String {
    format!(
        "{} {} {}",
        request.method_token(),
        request.target().escape_debug(),
        request.http_version()
    )
}

/// Buffers Django runserver's access-log line:
/// `[26/Nov/2026 11:37:46] "GET /setsession/ HTTP/1.1" 200 14`.
pub(crate) fn log(line: &str, status: u16, body_len: usize) {
    let date = http_date(); // "Thu, 26 Nov 2026 11:37:46 GMT"
    let parts: Vec<&str> = date.split(' ').collect();
    let stamp = match parts.as_slice() {
        [_, day, month, year, time, _] => format!("{day}/{month}/{year} {time}"),
        _ => date.clone(),
    };
    let entry = format!("[{stamp}] \"{line}\" {status} {body_len}\n");
    let mut log = ACCESS_LOG.lock().unwrap_or_else(|p| p.into_inner());
    log.extend_from_slice(entry.as_bytes());
    if log.len() >= ACCESS_LOG_BUFFER {
        let _ = io::stderr().lock().write_all(&log);
        log.clear();
    }
}

/// Writes out the buffered lines.
pub(crate) fn flush() {
    let mut log = ACCESS_LOG.lock().unwrap_or_else(|p| p.into_inner());
    if !log.is_empty() {
        let _ = io::stderr().lock().write_all(&log);
        log.clear();
    }
}

/// The current time as an HTTP date, formatted once per second per thread.
fn http_date() -> String {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != second || cache.1.is_empty() {
            *cache = (second, httpdate::fmt_http_date(now));
        }
        cache.1.clone()
    })
}
