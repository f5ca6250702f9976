//! The demo's session routes on axum, behind filesession's tower layer: the seed's
//! `/setsession/` and `/getsession/`, and the JSON API (`GET`/`POST /api/session`,
//! `POST /api/session/incr/{name}`, `POST /api/session/flush`, `POST /api/session/cycle`,
//! `DELETE /api/session/{name}`), with `runserver`'s answers and cookies for these routes.
//! The rest of `runserver` is not here: `ALLOWED_HOSTS` and the origin check (Django's
//! other middlewares: put your stack's own in front), the page, cleanup of expired
//! sessions (`filesession clearsessions` from cron, or `SESSION_GC_INTERVAL` in
//! `runserver`), its header and connection limits.
//!
//! ```sh
//! cargo run --example axum --features axum -- 127.0.0.1:8000
//! curl -c jar -b jar http://127.0.0.1:8000/setsession/      # session is set
//! curl -c jar -b jar http://127.0.0.1:8000/getsession/      # abc abc@gmail.com
//! curl -c jar -b jar -X POST http://127.0.0.1:8000/api/session/incr/n
//! ```
//!
//! The `SESSION_*` settings come from the environment, with Django's names and defaults
//! (`SESSION_ENGINE`, `SESSION_FILE_PATH`, `SESSION_LOCKING`, `DATABASE_URL`, ...).

use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Map, Value, json};

use filesession::tower::{SessionHandle, SessionLayer, json_after_save};
use filesession::{Session, Settings, format_rfc3339};

/// Django's `setsession` view.
async fn setsession(session: SessionHandle) -> Response {
    let set = async {
        session.insert("sname", "abc").await?;
        session.insert("semail", "abc@gmail.com").await
    };
    match set.await {
        Ok(()) => text(StatusCode::OK, "session is set"),
        Err(e) => detached(e),
    }
}

/// Django's `getsession` view, with a 404 instead of Django's KeyError 500.
async fn getsession(session: SessionHandle) -> Response {
    let shown = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let found = session.with_session(|s| match (s.get("sname"), s.get("semail")) {
        (Some(name), Some(email)) => Some(format!("{} {}", shown(name), shown(email))),
        _ => None,
    });
    match found {
        Ok(Some(text_)) => text(StatusCode::OK, &text_),
        Ok(None) => text(
            StatusCode::NOT_FOUND,
            "No session data yet: visit /setsession/ first, then /getsession/ again.\n",
        ),
        Err(e) => detached(e),
    }
}

/// What the API answers after the save, as `runserver`'s demo does.
#[derive(Serialize)]
struct Described<'s> {
    session_key: Option<String>,
    expires_at: Option<String>,
    expire_at_browser_close: bool,
    data: &'s Map<String, Value>,
}

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

/// The session as it is once saved.
fn answer() -> Response {
    json_after_save(StatusCode::OK, describe)
}

/// `{"error": message}`, as the demo's API answers.
fn bad(status: StatusCode, message: &str) -> Response {
    let body = json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn text(status: StatusCode, body: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.to_owned(),
    )
        .into_response()
}

/// A handle used after its response: cannot happen in these handlers (each awaits its
/// session calls before answering), answered 500 if it did.
fn detached(e: filesession::tower::SessionError) -> Response {
    bad(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
}

/// `GET /api/session`: reading never creates a session.
async fn api_get(session: SessionHandle) -> Response {
    match session.len().await {
        Ok(_) => answer(),
        Err(e) => detached(e),
    }
}

/// `POST /api/session`: sets each key of the JSON object sent.
async fn api_set(session: SessionHandle, headers: HeaderMap, body: Bytes) -> Response {
    let json_sent = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if json_sent.as_deref() != Some("application/json") {
        return bad(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "The body must be application/json.",
        );
    }
    let map = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return bad(StatusCode::BAD_REQUEST, "The body must be a JSON object."),
        Err(e) => return bad(StatusCode::BAD_REQUEST, &format!("Malformed JSON: {e}.")),
    };
    match session.with_session(|s| s.update(map)) {
        Ok(()) => answer(),
        Err(e) => detached(e),
    }
}

/// `DELETE /api/session/{name}`.
async fn api_delete(session: SessionHandle, Path(name): Path<String>) -> Response {
    match session.remove(&name).await {
        Ok(true) => answer(),
        Ok(false) => bad(
            StatusCode::NOT_FOUND,
            &format!("No key {name:?} in the session."),
        ),
        Err(e) => detached(e),
    }
}

/// `POST /api/session/flush`: logs out.
async fn api_flush(session: SessionHandle) -> Response {
    match session.flush().await {
        Ok(()) => answer(),
        Err(e) => detached(e),
    }
}

/// `POST /api/session/cycle`: a new key, the same data.
async fn api_cycle(session: SessionHandle) -> Response {
    match session.cycle_key().await {
        Ok(()) => answer(),
        Err(e) => detached(e),
    }
}

/// `POST /api/session/incr/{name}`: a read-modify-write of one key, exact within one
/// request (the handle's session is the request's own; `request` locking makes it exact
/// across concurrent requests of the session).
async fn api_incr(session: SessionHandle, Path(name): Path<String>) -> Response {
    let incremented = session.with_session(|s| {
        let current = match s.get(&name) {
            None => 0,
            Some(value) => match value.as_i64() {
                Some(n) => n,
                None => return Err(format!("{name:?} does not hold an integer.")),
            },
        };
        let next = current
            .checked_add(1)
            .ok_or_else(|| format!("{name:?} is at the largest integer."))?;
        s.insert(name.as_str(), next);
        Ok(())
    });
    match incremented {
        Ok(Ok(())) => answer(),
        Ok(Err(message)) => bad(StatusCode::BAD_REQUEST, &message),
        Err(e) => detached(e),
    }
}

fn app(layer: SessionLayer, max_body: usize) -> Router {
    Router::new()
        .route("/setsession/", get(setsession))
        .route("/getsession/", get(getsession))
        .route("/api/session", get(api_get).post(api_set))
        .route("/api/session/flush", post(api_flush))
        .route("/api/session/cycle", post(api_cycle))
        .route("/api/session/incr/{name}", post(api_incr))
        .route("/api/session/{name}", axum::routing::delete(api_delete))
        // DATA_UPLOAD_MAX_MEMORY_SIZE, as runserver reads it (64 KiB by default).
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(layer)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8000".to_owned());
    let settings = Settings::from_values(|name| std::env::var(name).ok())?;
    let max_body = settings.max_body;
    let layer = SessionLayer::from_settings(settings)?;
    // One runtime thread, as runserver's: the layer waits for stores on blocking threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&address).await?;
        println!("Listening on http://{}/", listener.local_addr()?);
        axum::serve(listener, app(layer, max_body)).await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
