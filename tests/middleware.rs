//! SessionMiddleware's rules in process, with handlers of our own: what the demo app's
//! routes cannot show (5xx answers, a Vary already set, a panicking handler).

use std::sync::Arc;

use filesession::{
    App, ExpiredDeletion, FileStore, Method, Request, Response, Router, Session, SessionKey,
    SessionMiddleware, SessionStore, Settings,
};

fn write_then_500(_: &Request, s: &mut Session) -> Response {
    s.insert("lost", true);
    Response::text(500, "boom")
}

fn write_then_503(_: &Request, s: &mut Session) -> Response {
    s.insert("lost", true);
    Response::text(503, "busy")
}

fn write_then_499(_: &Request, s: &mut Session) -> Response {
    s.insert("kept", true);
    Response::text(499, "client closed")
}

fn flush_then_500(_: &Request, s: &mut Session) -> Response {
    s.flush();
    Response::text(500, "boom")
}

fn cycle_then_500(_: &Request, s: &mut Session) -> Response {
    s.cycle_key();
    Response::text(500, "boom")
}

fn write(_: &Request, s: &mut Session) -> Response {
    s.insert("a", 1);
    Response::text(200, "ok").with_header("Vary", "Accept-Encoding")
}

fn read_with_vary_star(_: &Request, s: &mut Session) -> Response {
    let _ = s.get("a");
    Response::text(200, "ok").with_header("Vary", "*")
}

fn untouched(_: &Request, _: &mut Session) -> Response {
    Response::text(200, "nothing")
}

fn clear(_: &Request, s: &mut Session) -> Response {
    s.clear();
    Response::text(200, "cleared")
}

/// Reads the session, then another request (simulated) logs the user out by deleting the
/// file named in `X-Delete`, then writes.
fn logout_elsewhere_then_write(request: &Request, s: &mut Session) -> Response {
    let _ = s.get("a");
    if let Some(path) = request.header("x-delete") {
        std::fs::remove_file(path).unwrap();
    }
    s.insert("b", 2);
    Response::text(200, "written")
}

/// Writes, then answers with a renderer that fails: JSON has no object with a key that is
/// not a string.
fn write_then_render_fails(_: &Request, s: &mut Session) -> Response {
    s.insert("kept", true);
    Response::json_after_save(200, |_, body| {
        serde_json::to_writer(body, &std::collections::BTreeMap::from([((1, 2), 3)]))
    })
}

/// Writes, sets a cookie of its own, then answers with a renderer that fails.
fn write_and_set_a_cookie_then_render_fails(_: &Request, s: &mut Session) -> Response {
    s.insert("kept", true);
    Response::json_after_save(200, |_, body| {
        serde_json::to_writer(body, &std::collections::BTreeMap::from([((1, 2), 3)]))
    })
    .with_header("Set-Cookie", "messages=; Max-Age=0")
}

/// Never touches the session; the renderer is the first to read it.
fn render_only(_: &Request, _: &mut Session) -> Response {
    Response::json_after_save(200, |s, body| serde_json::to_writer(body, s.data()))
}

fn panics(_: &Request, _: &mut Session) -> Response {
    panic!("a handler bug");
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<FileStore>,
    app: App,
}

fn fixture(settings: Settings) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileStore::open(dir.path()).unwrap());
    let router = Router::new()
        .route(Method::Get, "/500", write_then_500)
        .route(Method::Get, "/503", write_then_503)
        .route(Method::Get, "/499", write_then_499)
        .route(Method::Get, "/flush500", flush_then_500)
        .route(Method::Get, "/cycle500", cycle_then_500)
        .route(Method::Get, "/write", write)
        .route(Method::Get, "/star", read_with_vary_star)
        .route(Method::Get, "/untouched", untouched)
        .route(Method::Get, "/clear", clear)
        .route(Method::Get, "/panic", panics)
        .route(Method::Get, "/render-fails", write_then_render_fails)
        .route(
            Method::Get,
            "/cookie-render-fails",
            write_and_set_a_cookie_then_render_fails,
        )
        .route(Method::Get, "/render-only", render_only)
        .route(Method::Get, "/race", logout_elsewhere_then_write);
    let app = App::new(router, SessionMiddleware::new(store.clone(), settings));
    Fixture { dir, store, app }
}

fn request(path: &str, key: Option<&SessionKey>) -> Request {
    match key {
        Some(key) => Request::new(
            Method::Get,
            path,
            &[("Cookie", &format!("sessionid={key}"))],
            b"",
        ),
        None => Request::new(Method::Get, path, &[], b""),
    }
}

/// A stored session holding `a = 1`.
fn stored(f: &Fixture) -> SessionKey {
    let r = f.app.handle(request("/write", None));
    let cookie = r.header("set-cookie").unwrap();
    SessionKey::parse(&cookie["sessionid=".len()..cookie.find(';').unwrap()]).unwrap()
}

fn data(f: &Fixture, key: &SessionKey) -> serde_json::Value {
    let s = Session::new(f.store.clone(), Some(*key), Default::default());
    serde_json::Value::Object(s.data().clone())
}

#[test]
fn no_save_and_no_cookie_on_any_5xx() {
    let f = fixture(Settings::default());
    let key = stored(&f);
    for path in ["/500", "/503"] {
        let r = f.app.handle(request(path, Some(&key)));
        assert_eq!(r.status(), path[1..].parse::<u16>().unwrap());
        assert_eq!(r.header("set-cookie"), None);
        assert_eq!(r.header("vary"), Some("Cookie"), "the session was accessed");
        assert_eq!(data(&f, &key), serde_json::json!({"a": 1}));
    }
    let r = f.app.handle(request("/499", Some(&key)));
    assert!(r.header("set-cookie").is_some(), "499 is saved, as Django");
    assert_eq!(data(&f, &key), serde_json::json!({"a": 1, "kept": true}));
}

#[test]
fn a_new_session_written_in_a_500_is_not_created() {
    let f = fixture(Settings::default());
    let r = f.app.handle(request("/500", None));
    assert_eq!(r.header("set-cookie"), None);
    assert_eq!(f.store.clear_expired().unwrap().kept, 0);
}

#[test]
fn flush_then_500_still_deletes_the_session_and_the_cookie() {
    let f = fixture(Settings::default());
    let key = stored(&f);
    let r = f.app.handle(request("/flush500", Some(&key)));
    assert_eq!(r.status(), 500);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert!(!f.store.exists(&key).unwrap());
}

#[test]
fn cycle_then_500_keeps_the_old_session_and_orphans_nothing() {
    let f = fixture(Settings::default());
    let key = stored(&f);
    let r = f.app.handle(request("/cycle500", Some(&key)));
    assert_eq!(r.header("set-cookie"), None);
    assert!(f.store.exists(&key).unwrap());
    assert_eq!(
        f.store.clear_expired().unwrap().kept,
        1,
        "no orphan was created"
    );
}

#[test]
fn vary_is_appended_to_an_existing_vary_and_left_alone_with_a_star() {
    let f = fixture(Settings::default());
    let r = f.app.handle(request("/write", None));
    assert_eq!(r.header("vary"), Some("Accept-Encoding, Cookie"));
    let key = stored(&f);
    let r = f.app.handle(request("/star", Some(&key)));
    assert_eq!(r.header("vary"), Some("*"));
}

#[test]
fn an_untouched_session_gets_no_headers_unless_saved_every_request() {
    let f = fixture(Settings::default());
    let key = stored(&f);
    let r = f.app.handle(request("/untouched", Some(&key)));
    assert_eq!(r.header("set-cookie"), None);
    assert_eq!(r.header("vary"), None);

    let f = fixture(Settings {
        save_every_request: true,
        ..Settings::default()
    });
    let key = stored(&f);
    let r = f.app.handle(request("/untouched", Some(&key)));
    assert!(r.header("set-cookie").unwrap().contains(&key.to_string()));
    assert_eq!(
        r.header("vary"),
        Some("Cookie"),
        "CVE-2026-35192: Vary with every Set-Cookie"
    );
    let r = f.app.handle(request("/untouched", None));
    assert_eq!(r.header("set-cookie"), None, "no empty session is created");
}

#[test]
fn clearing_the_last_key_saves_an_empty_session_under_the_same_key() {
    let f = fixture(Settings::default());
    let key = stored(&f);
    let r = f.app.handle(request("/clear", Some(&key)));
    assert!(r.header("set-cookie").unwrap().contains(&key.to_string()));
    assert_eq!(data(&f, &key), serde_json::json!({}));
}

#[test]
fn a_panicking_handler_gets_a_500_and_the_app_goes_on() {
    let f = fixture(Settings::default());
    let r = f.app.handle(request("/panic", None));
    assert_eq!(r.status(), 500);
    assert_eq!(r.header("set-cookie"), None);
    let r = f.app.handle(request("/write", None));
    assert_eq!(r.status(), 200);
}

#[test]
fn the_last_of_several_session_cookies_counts() {
    let f = fixture(Settings::default());
    let key = stored(&f);
    let stranger = SessionKey::generate();
    let r = f.app.handle(Request::new(
        Method::Get,
        "/star",
        &[(
            "Cookie",
            &format!("sessionid={stranger}; other=1; sessionid={key}"),
        )],
        b"",
    ));
    assert_eq!(r.header("set-cookie"), None, "the real session was found");
}

#[test]
fn a_save_after_a_concurrent_logout_is_a_400_without_a_cookie() {
    let f = fixture(Settings::default());
    let key = stored(&f);
    let path = f.dir.path().join(key.file_name());
    let r = f.app.handle(Request::new(
        Method::Get,
        "/race",
        &[
            ("Cookie", &format!("sessionid={key}")),
            ("X-Delete", path.to_str().unwrap()),
        ],
        b"",
    ));
    assert_eq!(r.status(), 400);
    assert_eq!(r.header("set-cookie"), None);
    assert_eq!(
        String::from_utf8_lossy(r.body()),
        format!("{}\n", filesession::SESSION_INTERRUPTED)
    );
    assert!(!path.exists(), "the session was not resurrected");
    assert_eq!(f.store.clear_expired().unwrap().kept, 0);
}

#[test]
fn a_renderer_that_fails_after_the_save_answers_500_and_keeps_the_cookie() {
    let f = fixture(Settings::default());
    let r = f.app.handle(request("/render-fails", None));
    assert_eq!(r.status(), 500);
    assert_eq!(
        String::from_utf8_lossy(r.body()),
        "The session was saved, but the answer could not be rendered.\n"
    );
    // The session is saved: its cookie goes with the 500, as the 200 would have carried it.
    let cookie = r.header("set-cookie").unwrap();
    let key = SessionKey::parse(&cookie["sessionid=".len()..cookie.find(';').unwrap()]).unwrap();
    assert_eq!(data(&f, &key), serde_json::json!({"kept": true}));
    assert_eq!(r.header("vary"), Some("Cookie"));
}

#[test]
fn a_renderer_that_fails_keeps_only_the_session_cookie() {
    let f = fixture(Settings::default());
    let r = f.app.handle(request("/cookie-render-fails", None));
    assert_eq!(r.status(), 500);
    let cookies: Vec<&str> = r
        .headers()
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert!(cookies[0].starts_with("sessionid="), "{cookies:?}");
}

#[test]
fn a_renderer_that_reads_the_session_adds_vary_cookie() {
    let f = fixture(Settings::default());
    let key = stored(&f);
    let r = f.app.handle(request("/render-only", Some(&key)));
    assert_eq!(r.status(), 200);
    assert_eq!(String::from_utf8_lossy(r.body()), r#"{"a":1}"#);
    assert_eq!(
        r.header("vary"),
        Some("Cookie"),
        "the body depends on the cookie"
    );
}

#[test]
fn a_load_that_fails_in_the_renderer_is_the_store_failure_not_an_empty_session() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        FileStore::open(dir.path())
            .unwrap()
            .with_locking(filesession::Locking::Request)
            .with_lock_timeout(std::time::Duration::from_millis(100)),
    );
    let mut first = Session::new(store.clone(), None, Default::default());
    first.insert("a", 1);
    first.save().unwrap();
    let key = *first.session_key().unwrap();
    // Another request holds the session's lock for the whole of this one.
    let held = store.load(&key).unwrap().unwrap();
    assert!(held.lock.is_some());
    let settings = Settings {
        locking: filesession::Locking::Request,
        lock_timeout: std::time::Duration::from_millis(100),
        ..Settings::default()
    };
    let mw = SessionMiddleware::new(store.clone(), settings);
    let request = request("/render-only", Some(&key));
    let (session, had_cookie) = mw.session_for(&request);
    let response = Response::json_after_save(200, |s, body| serde_json::to_writer(body, s.data()));
    let r = mw.finish(session, had_cookie, "/render-only", response);
    assert_eq!(r.status(), 503, "{}", String::from_utf8_lossy(r.body()));
    assert_eq!(r.header("set-cookie"), None, "the cookie is kept as it is");
    assert_eq!(r.header("retry-after"), Some("1"));
}

/// `SESSION_FORMAT=django`: a cookie whose key names data that does not verify (signed with
/// another `SECRET_KEY`: Django's live session, seen through a mistyped or rotated key) is
/// no session, but the cookie is left alone, as Django leaves it; a write makes a new
/// session under a new key, never written into the data it cannot read. A key that names
/// nothing still gets its cookie deleted.
#[test]
fn a_django_cookie_naming_data_that_does_not_verify_is_kept() {
    use filesession::signing::{SESSION_SALT, Signer};
    let dir = tempfile::tempdir().unwrap();
    let open = |secret: &str| {
        filesession::DjangoFileStore::open(
            dir.path(),
            Signer::new(secret, &[], SESSION_SALT),
            "sessionid",
            std::time::Duration::from_secs(3600),
        )
        .unwrap()
    };
    // Django's session, signed with the site's real key.
    let djangos = open("the-real-key");
    let record = filesession::Record {
        data: serde_json::json!({"_auth_user_id": "1"})
            .as_object()
            .cloned()
            .unwrap()
            .into(),
        expiry: filesession::Expiry::Default,
        expires_at: std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    };
    let key = djangos.create(&record).unwrap();
    let file = dir.path().join(key.django_file_name("sessionid"));
    let before = std::fs::read(&file).unwrap();
    // filesession with a mistyped key.
    let store = Arc::new(open("a-mistyped-key"));
    let router = Router::new()
        .route(Method::Get, "/untouched", untouched)
        .route(Method::Get, "/star", read_with_vary_star)
        .route(Method::Get, "/write", write);
    let app = App::new(router, SessionMiddleware::new(store, Settings::default()));
    for path in ["/untouched", "/star"] {
        let r = app.handle(request(path, Some(&key)));
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            r.header("set-cookie"),
            None,
            "{path}: the cookie is left alone"
        );
    }
    let r = app.handle(request("/write", Some(&key)));
    let cookie = r.header("set-cookie").unwrap();
    assert!(
        cookie.starts_with("sessionid=") && !cookie.contains(&key.to_string()),
        "{cookie}"
    );
    assert!(!cookie.starts_with("sessionid=;"), "{cookie}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "Django's session left as it was"
    );
    // A Django key that names no file: deleted, as always.
    let missing = SessionKey::generate_django();
    let r = app.handle(request("/star", Some(&missing)));
    assert!(r.header("set-cookie").unwrap().starts_with("sessionid=;"));
}
