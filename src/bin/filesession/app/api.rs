//! The JSON API over the session: `/api/session...`.

use serde::Serialize;
use serde_json::{Map, Value};

use filesession::format_rfc3339;
use filesession::{Expiry, Request, Response, Session};

/// What the API answers after the save: `{"session_key", "expires_at",
/// "expire_at_browser_close", "data"}`, borrowing the session's data.
#[derive(Serialize)]
struct Described<'s> {
    session_key: Option<String>,
    expires_at: Option<String>,
    expire_at_browser_close: bool,
    data: &'s Map<String, Value>,
}

/// The body of every API answer, written straight from the saved session (no copy of its
/// data: copying it into a `Value` first was a tenth of a W-update request, perf).
fn describe(session: &Session, body: &mut Vec<u8>) -> serde_json::Result<()> {
    serde_json::to_writer(
        body,
        &Described {
            session_key: session.session_key().map(|k| k.to_string()),
            expires_at: session.expires_at().map(format_rfc3339),
            expire_at_browser_close: session.expire_at_browser_close(),
            data: session.data(),
        },
    )
}

fn answer() -> Response {
    Response::json_after_save(200, describe)
}

fn bad(request: &Request, status: u16, message: &str) -> Response {
    Response::error(request.path(), status, message)
}

/// The body as a JSON object, or the error to answer.
fn json_object(request: &Request) -> Result<Map<String, Value>, Response> {
    if request.content_type().as_deref() != Some("application/json") {
        return Err(bad(request, 415, "The body must be application/json."));
    }
    match serde_json::from_slice::<Value>(request.body()) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad(request, 400, "The body must be a JSON object.")),
        Err(e) => Err(bad(request, 400, &format!("Malformed JSON: {e}."))),
    }
}

/// `GET /api/session`: reading never creates a session.
pub(super) fn get(_: &Request, session: &mut Session) -> Response {
    let _ = session.len();
    answer()
}

/// `POST /api/session`: sets each key of the object.
pub(super) fn set(request: &Request, session: &mut Session) -> Response {
    match json_object(request) {
        Ok(map) => {
            session.update(map);
            answer()
        }
        Err(response) => response,
    }
}

/// `DELETE /api/session/{name}`.
pub(super) fn delete_key(request: &Request, session: &mut Session) -> Response {
    let name = request.param("name").unwrap_or_default();
    if session.remove(name) {
        answer()
    } else {
        bad(request, 404, &format!("No key {name:?} in the session."))
    }
}

/// `POST /api/session/flush`: logs out.
pub(super) fn flush(_: &Request, session: &mut Session) -> Response {
    session.flush();
    answer()
}

/// `POST /api/session/cycle`: a new key, the same data.
pub(super) fn cycle(_: &Request, session: &mut Session) -> Response {
    session.cycle_key();
    answer()
}

/// `POST /api/session/expiry` with `{"seconds": N}`, or `{"at": "<RFC 3339, UTC>"}` (an
/// absolute end, Django's `set_expiry(datetime)`).
pub(super) fn expiry(request: &Request, session: &mut Session) -> Response {
    let map = match json_object(request) {
        Ok(map) => map,
        Err(response) => return response,
    };
    if let Some(at) = map.get("at") {
        return match at.as_str().and_then(filesession::parse_rfc3339) {
            Some(t) => {
                session.set_expiry(Expiry::At(t));
                answer()
            }
            None => bad(
                request,
                400,
                "\"at\" must be an RFC 3339 time in UTC (2030-01-02T03:04:05Z).",
            ),
        };
    }
    let expiry = match map.get("seconds") {
        Some(Value::Null) => Expiry::Default,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) => Expiry::BrowserClose,
            Some(secs) => Expiry::Seconds(secs),
            None => return bad(request, 400, "\"seconds\" must be a whole number >= 0."),
        },
        _ => {
            return bad(
                request,
                400,
                "Send {\"seconds\": N}: N > 0 seconds, 0 = at browser close, null = the default; \
                 or {\"at\": \"<RFC 3339 time>\"}.",
            );
        }
    };
    session.set_expiry(expiry);
    answer()
}

/// `POST /api/session/incr/{name}`: the visit counter. A read-modify-write of one key:
/// exact in one process (one request at a time); across `--workers` or servers sharing the
/// sessions, exact only with `SESSION_LOCKING=request`. With `merge`, two requests at once
/// may both read n and both write n + 1 (docs/operations.md, "Worker processes").
pub(super) fn incr(request: &Request, session: &mut Session) -> Response {
    let name = request.param("name").unwrap_or_default();
    let current = match session.get(name) {
        None => 0,
        Some(value) => match value.as_i64() {
            Some(n) => n,
            None => return bad(request, 400, &format!("{name:?} does not hold an integer.")),
        },
    };
    let Some(next) = current.checked_add(1) else {
        return bad(
            request,
            400,
            &format!("{name:?} is at the largest integer."),
        );
    };
    session.insert(name, next);
    answer()
}
