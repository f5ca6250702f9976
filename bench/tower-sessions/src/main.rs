//! The benchmark's Rust peer: axum 0.8 + tower-sessions 0.15, the stack a Rust user would
//! pick instead of filesession, on ONE thread (a tokio current-thread runtime, like the
//! hyper hello ceiling), serving the routes `bench/run` drives filesession's `runserver`
//! with:
//!
//! | route | answer (filesession's demo app's) |
//! |---|---|
//! | `GET /setsession/` | sets `sname` and `semail`, answers `session is set` |
//! | `GET /getsession/` | `abc abc@gmail.com`, or 404 before `/setsession/` |
//! | `GET /api/session` | the session as JSON (`session_key`, `expires_at`, `expire_at_browser_close`, `data`); never creates one |
//! | `POST /api/session/incr/{name}` | adds 1 to an integer key (missing = 0), answers the session as JSON |
//!
//! `tower-sessions-peer ADDR memory` keeps the sessions in tower-sessions' `MemoryStore`;
//! `tower-sessions-peer ADDR file [DIR]` in `tower-sessions-file-store` 0.3's
//! `FileSessionStorage` (one JSON file a session, in DIR, `.sessions` by default). The
//! cookie is set as Django's and filesession's: `sessionid`, HttpOnly, SameSite=Lax, not
//! Secure (plain HTTP), two weeks from the last change.
//!
//! `TOWER_SESSIONS_THREADS=N` (N > 1) runs a multi-thread runtime with N workers instead
//! (what `#[tokio::main]` gives): not used by `bench/run`, there for `bench/lost-updates`.

use std::cell::RefCell;
use std::collections::HashMap;

use async_trait::async_trait;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tower_sessions::cookie::SameSite;
use tower_sessions::cookie::time::Duration;
use tower_sessions::session::{Id, Record};
use tower_sessions::{
    Expiry, MemoryStore, Session, SessionManagerLayer, SessionStore, session_store,
};
use tower_sessions_file_store::FileSessionStorage;

type Data = HashMap<String, Value>;

tokio::task_local! {
    /// A copy of the record the store loaded during `peek`'s future, if it loaded one.
    static LOADED: RefCell<Option<Record>>;
}

/// The store, passing every call through, and copying the record a load returns into
/// `LOADED` while a handler runs under `peek`. tower-sessions has no public way to list a
/// session's keys, and the API answers the whole session (as filesession, Django and PHP
/// do): this is the one extra cost (a copy of the dictionary), on the API routes only.
#[derive(Debug, Clone)]
struct Peek<S>(S);

#[async_trait]
impl<S: SessionStore> SessionStore for Peek<S> {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        self.0.create(record).await
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.0.save(record).await
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let record = self.0.load(id).await?;
        if let Some(record) = &record {
            let _ = LOADED.try_with(|slot| *slot.borrow_mut() = Some(record.clone()));
        }
        Ok(record)
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.0.delete(id).await
    }
}

/// Runs `f`, and gives back with its output the record the store loaded meanwhile (`None`
/// if it loaded none: no cookie, or no such session).
async fn peek<T>(f: impl Future<Output = T>) -> (T, Option<Record>) {
    LOADED
        .scope(RefCell::new(None), async move {
            let out = f.await;
            (out, LOADED.with(|slot| slot.borrow_mut().take()))
        })
        .await
}

/// The API's answer, filesession's shape.
#[derive(Serialize)]
struct Described<'d> {
    session_key: Option<String>,
    expires_at: Option<String>,
    expire_at_browser_close: bool,
    data: &'d Data,
}

fn described(session_key: Option<Id>, expires_at: Option<OffsetDateTime>, data: &Data) -> Response {
    Json(Described {
        session_key: session_key.map(|id| id.to_string()),
        // Milliseconds, as filesession writes it.
        expires_at: expires_at
            .and_then(|t| t.replace_millisecond(t.millisecond()).ok())
            .and_then(|t| t.format(&Rfc3339).ok()),
        expire_at_browser_close: false,
        data,
    })
    .into_response()
}

fn store_error(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("session store: {e}\n"),
    )
        .into_response()
}

/// A 400 as filesession's API answers it: `{"error": "..."}`.
fn bad(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// Django's `setsession` view.
async fn setsession(session: Session) -> Response {
    for (key, value) in [("sname", "abc"), ("semail", "abc@gmail.com")] {
        if let Err(e) = session.insert(key, value).await {
            return store_error(e);
        }
    }
    "session is set".into_response()
}

/// Django's `getsession` view, with filesession's 404.
async fn getsession(session: Session) -> Response {
    let text = |v: Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    match (
        session.get_value("sname").await,
        session.get_value("semail").await,
    ) {
        (Err(e), _) | (_, Err(e)) => store_error(e),
        (Ok(Some(name)), Ok(Some(email))) => {
            format!("{} {}", text(name), text(email)).into_response()
        }
        _ => (
            StatusCode::NOT_FOUND,
            "No session data yet: visit /setsession/ first, then /getsession/ again.\n",
        )
            .into_response(),
    }
}

/// `GET /api/session`: reading never creates a session.
async fn api_get(session: Session) -> Response {
    // Any read loads the record (if the cookie names one).
    let (read, loaded) = peek(session.get_value("")).await;
    if let Err(e) = read {
        return store_error(e);
    }
    match loaded {
        Some(record) => described(session.id(), Some(record.expiry_date), &record.data),
        None => described(None, None, &Data::new()),
    }
}

/// `POST /api/session/incr/{name}`: a read-modify-write of one key, answered with the
/// whole session as it will be saved (the save is tower-sessions' middleware's, after this).
async fn incr(session: Session, Path(name): Path<String>) -> Response {
    let (current, loaded) = peek(session.get_value(&name)).await;
    let current = match current {
        Err(e) => return store_error(e),
        Ok(None) => 0,
        Ok(Some(value)) => match value.as_i64() {
            Some(n) => n,
            None => return bad(format!("{name:?} does not hold an integer.")),
        },
    };
    let Some(next) = current.checked_add(1) else {
        return bad(format!("{name:?} is at the largest integer."));
    };
    if let Err(e) = session.insert(&name, next).await {
        return store_error(e);
    }
    let mut data = loaded.map(|record| record.data).unwrap_or_default();
    data.insert(name, next.into());
    described(session.id(), Some(session.expiry_date()), &data)
}

fn app<S: SessionStore + Clone>(store: S) -> Router {
    let sessions = SessionManagerLayer::new(Peek(store))
        .with_name("sessionid")
        .with_secure(false)
        .with_same_site(SameSite::Lax)
        .with_expiry(Expiry::OnInactivity(Duration::weeks(2)));
    Router::new()
        .route("/setsession/", get(setsession))
        .route("/getsession/", get(getsession))
        .route("/api/session", get(api_get))
        .route("/api/session/incr/{name}", post(incr))
        .layer(sessions)
}

fn fail(message: String) -> ! {
    eprintln!("tower-sessions-peer: {message}");
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8092".into());
    let kind = args.next().unwrap_or_else(|| "memory".into());
    let router = match kind.as_str() {
        "memory" => app(MemoryStore::default()),
        "file" => {
            let dir = args.next().unwrap_or_else(|| ".sessions".into());
            if let Err(e) = std::fs::create_dir_all(&dir) {
                fail(format!("cannot make {dir}: {e}"));
            }
            app(FileSessionStorage::new_in_folder(std::path::PathBuf::from(
                dir,
            )))
        }
        other => fail(format!("the store is `memory` or `file`, not {other:?}")),
    };
    let threads: usize = match std::env::var("TOWER_SESSIONS_THREADS") {
        Ok(n) => n
            .parse()
            .unwrap_or_else(|_| fail(format!("TOWER_SESSIONS_THREADS={n}: not a number"))),
        Err(_) => 1,
    };
    let mut builder = if threads > 1 {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = builder
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("cannot start the runtime: {e}")));
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .unwrap_or_else(|e| fail(format!("cannot listen on {addr}: {e}")));
        println!(
            "tower-sessions-peer ({kind}, {threads} runtime thread{}) listening on http://{addr}/",
            if threads > 1 { "s" } else { "" }
        );
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        if let Err(e) = axum::serve(listener, router).await {
            fail(format!("serve: {e}"));
        }
    });
}
