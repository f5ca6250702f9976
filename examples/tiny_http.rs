//! The project's original drawing, made real: a single-threaded tiny_http request loop
//! dispatching to hand-written handlers, with filesession's [`SessionMiddleware`] and file
//! store doing Django's session work around them.
//!
//! ```sh
//! cargo run --example tiny_http -- 127.0.0.1:8000     # the default address
//! curl -c jar -b jar http://127.0.0.1:8000/setsession/  # session is set
//! curl -c jar -b jar http://127.0.0.1:8000/getsession/  # abc abc@gmail.com
//! ```
//!
//! The first argument is the address to listen on (`127.0.0.1:8000` by default; port 0
//! picks a free port, printed in the `Listening on http://ADDR/` line); sessions are kept in
//! `SESSION_FILE_PATH` (`./sessions` by default). Every other setting is Django's default.
//!
//! **When to use this rather than `filesession runserver`:** when you already have a
//! tiny_http application and want Django's sessions in it, and it runs on a trusted network
//! or behind a reverse proxy that enforces timeouts and header and body limits. tiny_http
//! 0.12 has none of those, and this loop cannot add them: a request announcing
//! `Content-Length: 999999999999` gets its 413 (the body is never read here) and then aborts
//! the process, when tiny_http drains the unread body on drop; a client that stalls inside a
//! chunked body, or after announcing a large one, freezes this one thread and so every other
//! client; stalled headers hold a tiny_http thread each for ever; headers are unbounded.
//! `runserver` has its own defensive HTTP layer for exactly these reasons: see README.md,
//! "The HTTP layer, and why not tiny_http".

use std::io::{Cursor, Read};
use std::path::PathBuf;
use std::sync::Arc;

use filesession::{
    App, FileStore, Method, Request, Response, Router, Session, SessionMiddleware, Settings,
};

/// Django's `setsession` view.
fn setsession(_: &Request, session: &mut Session) -> Response {
    session.insert("sname", "abc");
    session.insert("semail", "abc@gmail.com");
    Response::text(200, "session is set")
}

/// Django's `getsession` view, with a 404 instead of Django's KeyError.
fn getsession(_: &Request, session: &mut Session) -> Response {
    match (
        session.get_as::<String>("sname"),
        session.get_as::<String>("semail"),
    ) {
        (Ok(Some(name)), Ok(Some(email))) => Response::text(200, format!("{name} {email}")),
        _ => Response::text(404, "visit /setsession/ first"),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8000".to_owned());
    let mut settings = Settings::default();
    if let Some(path) = std::env::var_os("SESSION_FILE_PATH") {
        settings.file_path = PathBuf::from(path);
    }
    let max_body = settings.max_body; // DATA_UPLOAD_MAX_MEMORY_SIZE
    let store = Arc::new(FileStore::open(&settings.file_path)?);
    let router = Router::new()
        .route(Method::Get, "/setsession/", setsession)
        .route(Method::Get, "/getsession/", getsession);
    let app = App::new(router, SessionMiddleware::new(store, settings));

    let server = tiny_http::Server::http(addr.as_str())
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    match server.server_addr().to_ip() {
        Some(bound) => println!("Listening on http://{bound}/"),
        None => println!("Listening on http://{addr}/"),
    }

    // The one handler thread. `App::handle` routes, loads the session, runs the handler and
    // saves; a handler that panics gets a 500. (`App::prepare` exists to wait for a
    // session's lock off the handler thread; with one thread there is no "off", so the
    // session simply takes its lock when it needs it.)
    for mut request in server.incoming_requests() {
        let line = format!("{} {}", request.method(), request.url());
        let response = match to_request(&mut request, max_body) {
            Ok(ours) => app.handle(ours),
            Err(refusal) => refusal,
        };
        eprintln!("\"{line}\" {} {}", response.status(), response.body().len());
        if let Err(e) = request.respond(to_tiny(&response)) {
            eprintln!("could not answer \"{line}\": {e}");
        }
    }
    Ok(())
}

/// tiny_http's request as filesession's, body included; `Err` is the answer to give instead.
/// A body over `max_body` is refused with 413: at once, unread, when its `Content-Length`
/// says so, else (a chunked body) after reading at most `max_body + 1` bytes.
fn to_request(request: &mut tiny_http::Request, max_body: usize) -> Result<Request, Response> {
    let header = |name: &'static str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.as_str().trim().to_owned())
    };
    let chunked = header("Transfer-Encoding").is_some();
    if let Some(length) = header("Content-Length") {
        if chunked {
            // tiny_http would decode the chunks and ignore the length; a proxy in front may
            // do the opposite (request smuggling), so neither is trusted.
            return Err(Response::text(
                400,
                "Content-Length and Transfer-Encoding together\n",
            ));
        }
        match length.parse::<u64>() {
            Ok(n) if n > max_body as u64 => return Err(too_large(max_body)),
            Ok(_) => {}
            Err(_) => return Err(Response::text(400, "invalid Content-Length\n")),
        }
    }
    let mut body = Vec::new();
    let limit = u64::try_from(max_body)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    if let Err(e) = request.as_reader().take(limit).read_to_end(&mut body) {
        eprintln!(
            "could not read the body of {} {}: {e}",
            request.method(),
            request.url()
        );
        return Err(Response::text(400, "could not read the request body\n"));
    }
    if body.len() > max_body {
        return Err(too_large(max_body));
    }
    let headers: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .map(|h| (h.field.as_str().as_str(), h.value.as_str()))
        .collect();
    Ok(Request::new(
        Method::parse(request.method().as_str()),
        request.url(),
        &headers,
        &body,
    ))
}

fn too_large(max_body: usize) -> Response {
    Response::text(
        413,
        format!("The request body is over the limit of {max_body} bytes.\n"),
    )
}

/// filesession's response as tiny_http's: status, every header (each `Set-Cookie` its own
/// line), body. A header tiny_http refuses (not ASCII) is logged and left out; tiny_http
/// itself drops `Connection`, `Transfer-Encoding`, `Upgrade` and `Trailer` and keeps one
/// `Content-Type` (filesession's responses set none of the four, and one `Content-Type`).
fn to_tiny(response: &Response) -> tiny_http::Response<Cursor<Vec<u8>>> {
    let mut headers = Vec::with_capacity(response.headers().len());
    for (name, value) in response.headers() {
        match tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            Ok(header) => headers.push(header),
            Err(()) => eprintln!("left out a response header tiny_http refuses: {name}: {value:?}"),
        }
    }
    let body = response.body().to_vec();
    let length = body.len();
    tiny_http::Response::new(
        tiny_http::StatusCode(response.status()),
        headers,
        Cursor::new(body),
        Some(length),
        None,
    )
}
