//! `SESSION_ENGINE=signed_cookies` through SessionMiddleware, in process: the session is the
//! cookie (Django's format, checked byte for byte against Django in
//! `tests/django_shared.rs`); here what needs no Django: a round trip, the cookie's age, a
//! tampered cookie, a flush, a cycle, the 4096-byte limit, `SECRET_KEY_FALLBACKS`.

use std::time::Duration;

use filesession::signing::{SIGNED_COOKIES_SALT, SecretKey, Signer};
use filesession::{
    App, Engine, Method, Request, Response, Router, Session, SessionMiddleware, Settings, store,
};

const KEY: &str = "signed-cookies-test-only-not-secret";

fn put(request: &Request, s: &mut Session) -> Response {
    let value = request
        .query_pairs()
        .into_iter()
        .find(|(k, _)| k == "v")
        .map(|(_, v)| v)
        .unwrap_or_default();
    s.insert("v", value.as_str());
    Response::text(200, "ok")
}

fn big(_: &Request, s: &mut Session) -> Response {
    // Random text that zlib cannot shrink below 4 KiB.
    let text: String = (0..200)
        .map(|_| filesession::SessionKey::generate().to_string())
        .collect();
    s.insert("big", text);
    Response::text(200, "ok")
}

fn get(_: &Request, s: &mut Session) -> Response {
    let v = s
        .get("v")
        .and_then(|v| v.as_str())
        .unwrap_or("-")
        .to_owned();
    Response::text(200, v)
}

fn flush(_: &Request, s: &mut Session) -> Response {
    s.flush();
    Response::text(200, "bye")
}

fn cycle(_: &Request, s: &mut Session) -> Response {
    s.cycle_key();
    Response::text(200, "cycled")
}

fn app(secret: &str, fallbacks: &[&str]) -> App {
    let settings = Settings {
        engine: Engine::SignedCookies,
        secret_key: Some(SecretKey::new(secret)),
        secret_key_fallbacks: fallbacks.iter().map(|k| SecretKey::new(*k)).collect(),
        cookie_age: Duration::from_secs(60),
        ..Settings::default()
    };
    settings.validate().expect("valid settings");
    let store = store::open(&settings).expect("the signed cookie store");
    let router = Router::new()
        .route(Method::Get, "/put", put)
        .route(Method::Get, "/big", big)
        .route(Method::Get, "/get", get)
        .route(Method::Get, "/flush", flush)
        .route(Method::Get, "/cycle", cycle);
    App::new(router, SessionMiddleware::new(store, settings))
}

fn request(path: &str, cookie: Option<&str>) -> Request {
    match cookie {
        Some(value) => Request::new(
            Method::Get,
            path,
            &[("Cookie", &format!("sessionid={value}"))],
            b"",
        ),
        None => Request::new(Method::Get, path, &[], b""),
    }
}

/// The value of the answer's `sessionid` cookie, if it sets one.
fn cookie_of(r: &Response) -> Option<String> {
    let header = r.header("set-cookie")?;
    let value = header.strip_prefix("sessionid=")?;
    Some(value[..value.find(';').unwrap_or(value.len())].to_owned())
}

fn body(r: &Response) -> String {
    String::from_utf8_lossy(r.body()).into_owned()
}

#[test]
fn the_session_travels_in_the_cookie_signed_as_django_signs_it() {
    let app = app(KEY, &[]);
    let r = app.handle(request("/put?v=Zo%C3%AB", None));
    assert_eq!(r.status(), 200);
    let cookie = cookie_of(&r).expect("a cookie");
    // Django's signed_cookies value: the payload Django's signer reads with this salt.
    let signer = Signer::new(KEY, &[], SIGNED_COOKIES_SALT);
    let data = signer
        .unsign_object(
            &cookie,
            Some(Duration::from_secs(60)),
            std::time::SystemTime::now(),
        )
        .expect("signed with SECRET_KEY and the cookies' salt");
    assert_eq!(data, serde_json::json!({"v": "Zoë"}));
    let header = r.header("set-cookie").unwrap_or_default();
    assert!(
        header.contains("HttpOnly") && header.contains("Max-Age=60"),
        "{header}"
    );
    let r = app.handle(request("/get", Some(&cookie)));
    assert_eq!((r.status(), body(&r)), (200, "Zoë".to_owned()));
    // Read only: no new cookie.
    assert_eq!(r.header("set-cookie"), None);
}

#[test]
fn a_tampered_or_foreign_cookie_is_no_session_and_is_deleted() {
    let app = app(KEY, &[]);
    let cookie = cookie_of(&app.handle(request("/put?v=x", None))).expect("a cookie");
    let mut tampered = cookie.clone().into_bytes();
    tampered[2] ^= 1;
    let tampered = String::from_utf8(tampered).expect("ASCII");
    let other = cookie_of(&self::app("another-key", &[]).handle(request("/put?v=x", None)))
        .expect("a cookie");
    for bad in [tampered.as_str(), other.as_str(), "garbage", "a:b:c", ""] {
        let r = app.handle(request("/get", Some(bad)));
        assert_eq!((r.status(), body(&r)), (200, "-".to_owned()), "{bad}");
        let header = r.header("set-cookie").unwrap_or_default();
        assert!(header.starts_with("sessionid=;"), "{bad}: {header}");
        // Never adopted: a write makes a session of its own, without the bad one's data.
        let r = app.handle(request("/put?v=new", Some(bad)));
        let fresh = cookie_of(&r).expect("a new cookie");
        assert_ne!(fresh, bad);
    }
}

#[test]
fn a_fallback_key_verifies_and_the_next_write_signs_with_the_new_key() {
    let old = cookie_of(&app("old-key", &[]).handle(request("/put?v=kept", None))).expect("cookie");
    let rotated = app(KEY, &["old-key"]);
    let r = rotated.handle(request("/get", Some(&old)));
    assert_eq!(body(&r), "kept");
    assert_eq!(
        body(&app(KEY, &[]).handle(request("/get", Some(&old)))),
        "-"
    );
    let new = cookie_of(&rotated.handle(request("/put?v=again", Some(&old)))).expect("cookie");
    assert_eq!(
        body(&app(KEY, &[]).handle(request("/get", Some(&new)))),
        "again"
    );
}

#[test]
fn a_flush_deletes_the_cookie_but_cannot_revoke_a_copy() {
    let app = app(KEY, &[]);
    let cookie = cookie_of(&app.handle(request("/put?v=in", None))).expect("a cookie");
    let r = app.handle(request("/flush", Some(&cookie)));
    assert!(
        r.header("set-cookie")
            .unwrap_or_default()
            .starts_with("sessionid=;"),
        "the logout deletes the browser's cookie"
    );
    // The documented limit (as Django's): nothing on the server to revoke.
    assert_eq!(body(&app.handle(request("/get", Some(&cookie)))), "in");
}

#[test]
fn a_cycle_keeps_the_data() {
    let app = app(KEY, &[]);
    let cookie = cookie_of(&app.handle(request("/put?v=in", None))).expect("a cookie");
    let cycled = cookie_of(&app.handle(request("/cycle", Some(&cookie)))).expect("a cookie");
    assert_eq!(body(&app.handle(request("/get", Some(&cycled)))), "in");
}

#[test]
fn a_session_too_big_for_a_cookie_is_a_500_with_the_reason_and_no_cookie() {
    let app = app(KEY, &[]);
    let r = app.handle(request("/big", None));
    assert_eq!(r.status(), 500);
    assert_eq!(r.header("set-cookie"), None);
    let text = body(&r);
    assert!(
        text.contains("4096 bytes") && text.contains("cookie"),
        "{text}"
    );
}

#[test]
fn a_cookie_older_than_the_cookie_age_is_no_session() {
    let signer = Signer::new(KEY, &[], SIGNED_COOKIES_SALT);
    let signed_at = std::time::SystemTime::now() - Duration::from_secs(61);
    let old = signer.sign_object(&serde_json::json!({"v": "old"}), true, signed_at);
    let fresh = signer.sign_object(
        &serde_json::json!({"v": "fresh"}),
        true,
        std::time::SystemTime::now(),
    );
    let app = app(KEY, &[]);
    assert_eq!(body(&app.handle(request("/get", Some(&old)))), "-");
    assert_eq!(body(&app.handle(request("/get", Some(&fresh)))), "fresh");
}

#[test]
fn signed_cookies_needs_a_secret_key() {
    let settings = Settings {
        engine: Engine::SignedCookies,
        ..Settings::default()
    };
    let e = settings.validate().expect_err("refused");
    assert!(e.to_string().contains("SECRET_KEY"), "{e}");
}
