//! The demo app: Django's classic setsession/getsession example, a JSON API over the
//! session, and a page that shows it.

mod api;
mod csrf;
mod forms;
mod messages;
mod page;

use serde_json::Value;

use filesession::{Method, Request, Response, Router, Session};

/// The demo app's routes.
///
/// | route | what it does |
/// |---|---|
/// | `GET /` | an HTML page: the session as an escaped table, and forms to change it |
/// | `POST /form/{set,delete,incr,expiry,cycle,logout}` | the page's forms (CSRF-checked), 303 to `/` |
/// | `GET /setsession/` | sets `sname` and `semail`, answers `session is set` |
/// | `GET /getsession/` | answers `abc abc@gmail.com`, or 404 before `/setsession/` |
/// | `GET /api/session` | the session as JSON; never creates one |
/// | `POST /api/session` | sets each key of a JSON object |
/// | `DELETE /api/session/{name}` | removes one key; 404 if absent (`/api/session/`: the empty key) |
/// | `POST /api/session/flush` | logs out |
/// | `POST /api/session/cycle` | a new key, the same data |
/// | `POST /api/session/expiry` | `{"seconds": N}`: N > 0, 0 = browser close, null = default; `{"at": RFC 3339}` |
/// | `POST /api/session/incr/{name}` | adds 1 to an integer (missing = 0) |
pub fn demo_router() -> Router {
    Router::new()
        .route(Method::Get, "/", page::index)
        .route(Method::Post, "/form/set", forms::set)
        .route(Method::Post, "/form/delete", forms::delete)
        .route(Method::Post, "/form/incr", forms::incr)
        .route(Method::Post, "/form/expiry", forms::expiry)
        .route(Method::Post, "/form/cycle", forms::cycle)
        .route(Method::Post, "/form/logout", forms::logout)
        .route(Method::Get, "/setsession/", setsession)
        .route(Method::Get, "/getsession/", getsession)
        .route(Method::Get, "/api/session", api::get)
        .route(Method::Post, "/api/session", api::set)
        .route(Method::Delete, "/api/session/{name}", api::delete_key)
        // The empty key, which a route parameter cannot name (Django's neither).
        .route(Method::Delete, "/api/session/", api::delete_key)
        .route(Method::Post, "/api/session/flush", api::flush)
        .route(Method::Post, "/api/session/cycle", api::cycle)
        .route(Method::Post, "/api/session/expiry", api::expiry)
        .route(Method::Post, "/api/session/incr/{name}", api::incr)
}

/// Django's `setsession` view.
fn setsession(_: &Request, session: &mut Session) -> Response {
    session.insert("sname", "abc");
    session.insert("semail", "abc@gmail.com");
    Response::text(200, "session is set")
}

/// Django's `getsession` view, with a 404 instead of Django's KeyError 500.
fn getsession(_: &Request, session: &mut Session) -> Response {
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    match (session.get("sname"), session.get("semail")) {
        (Some(name), Some(email)) => Response::text(200, format!("{} {}", text(name), text(email))),
        _ => Response::text(
            404,
            "No session data yet: visit /setsession/ first, then /getsession/ again.\n",
        ),
    }
}
