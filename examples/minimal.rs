//! Your own handlers in filesession's loop: a visit counter and a logout.
//!
//! ```sh
//! cargo run --example minimal            # http://127.0.0.1:8001/
//! curl -c jar -b jar http://127.0.0.1:8001/     # visit number 1, 2, 3...
//! curl -c jar -b jar -X POST http://127.0.0.1:8001/logout/
//! ```

use filesession::{
    App, Method, Request, Response, Router, Server, Session, SessionMiddleware, Settings, store,
};

/// Counts this browser's visits in its session.
fn visits(_: &Request, session: &mut Session) -> Response {
    let n = session.get_as::<u64>("visits").ok().flatten().unwrap_or(0) + 1;
    session.insert("visits", n);
    Response::text(200, format!("visit number {n}\n"))
}

/// Logs out: the session file goes, the cookie is deleted.
fn logout(_: &Request, session: &mut Session) -> Response {
    session.flush();
    Response::text(200, "bye\n")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::default(); // Django's defaults, sessions in ./sessions
    let store = store::open(&settings)?; // SESSION_ENGINE: the file store by default
    let router =
        Router::new()
            .route(Method::Get, "/", visits)
            .route(Method::Post, "/logout/", logout);
    let server = Server::bind(
        "127.0.0.1:8001",
        App::new(router, SessionMiddleware::new(store, settings)),
    )?;
    server.stop_handle().stop_on_signals()?;
    println!("Listening on http://{}/", server.local_addr()?);
    server.run()?;
    Ok(())
}
