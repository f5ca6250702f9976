//! Fixes from the differential run against Django 5.2 (issue 12), one test each, over raw
//! HTTP against the real binary: the middleware around the router's own answers,
//! `set_expiry` alone, the deletion cookie of a prefixed name, numbers and key order kept as
//! sent, percent-decoded routing, the empty key.

mod common;

use common::{RawConnection, RawResponse, TestServer, raw_request};

fn exchange(server: &TestServer, request: &[u8]) -> RawResponse {
    RawConnection::open(server.addr)
        .exchange(request)
        .expect("an answer")
}

fn with_cookie(method: &str, path: &str, cookie: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nCookie: sessionid={cookie}\r\n\r\n")
        .into_bytes()
}

/// A new session; its key.
fn new_session(server: &TestServer) -> String {
    let r = exchange(server, &raw_request("GET", "/setsession/", None, None));
    assert_eq!(r.status, 200);
    r.session_cookie().expect("a session cookie")
}

#[test]
fn router_answers_go_through_the_session_middleware() {
    let server = TestServer::start(&[]);
    // A malformed cookie on a 404, a 405 and an APPEND_SLASH 301: deleted, Vary: Cookie.
    for (method, path, status) in [
        ("GET", "/nope/", 404),
        ("PUT", "/setsession/", 405),
        ("GET", "/setsession", 301),
    ] {
        let r = exchange(&server, &with_cookie(method, path, "not-a-key"));
        assert_eq!(r.status, status, "{method} {path}: {}", r.show());
        assert_eq!(
            r.session_cookie().as_deref(),
            Some(""),
            "{method} {path}: deleted"
        );
        assert_eq!(r.header("vary"), Some("Cookie"), "{method} {path}");
    }
    // A valid cookie on a 404: nothing to do (Django: not accessed, not saved).
    let key = new_session(&server);
    let r = exchange(&server, &with_cookie("GET", "/nope/", &key));
    assert_eq!((r.status, r.session_cookie()), (404, None), "{}", r.show());

    // SESSION_SAVE_EVERY_REQUEST: a 404 saves and renews the cookie, as Django.
    let server = TestServer::start(&[("SESSION_SAVE_EVERY_REQUEST", "true")]);
    let key = new_session(&server);
    let r = exchange(&server, &with_cookie("GET", "/nope/", &key));
    assert_eq!(r.status, 404);
    assert_eq!(
        r.session_cookie(),
        Some(key.clone()),
        "renewed: {}",
        r.show()
    );
    assert!(
        r.header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=1209600"))
    );
}

#[test]
fn set_expiry_alone_stores_the_session_and_sets_the_cookie() {
    let server = TestServer::start(&[]);
    let expiry = |seconds: &str| {
        raw_request(
            "POST",
            "/api/session/expiry",
            None,
            Some(&format!(r#"{{"seconds": {seconds}}}"#)),
        )
    };
    let r = exchange(&server, &expiry("300"));
    assert_eq!(r.status, 200, "{}", r.show());
    let key = r.session_cookie().expect("a session cookie");
    let cookie = r.header("set-cookie").expect("Set-Cookie");
    assert!(cookie.contains("Max-Age=300"), "{cookie}");
    assert_eq!(
        server.session_file(&key)["expiry"],
        serde_json::json!({"seconds": 300})
    );
    assert_eq!(server.session_file(&key)["data"], serde_json::json!({}));

    // 0: at browser close, a cookie without Max-Age or Expires.
    let r = exchange(&server, &expiry("0"));
    let cookie = r.header("set-cookie").expect("Set-Cookie");
    assert!(
        !cookie.contains("Max-Age") && !cookie.contains("Expires"),
        "{cookie}"
    );
    // null on a session without data: the default, nothing to store (Django's
    // set_expiry(None) on a session without an expiry changes nothing).
    let r = exchange(&server, &expiry("null"));
    assert_eq!((r.status, r.session_cookie()), (200, None), "{}", r.show());
    assert_eq!(server.session_files().len(), 2);
}

#[test]
fn the_deletion_cookie_of_a_prefixed_name_is_secure() {
    for name in ["__Secure-sid", "__Host-sid"] {
        let server = TestServer::start(&[
            ("SESSION_COOKIE_NAME", name),
            ("SESSION_COOKIE_SECURE", "true"),
        ]);
        let r = exchange(&server, &raw_request("GET", "/setsession/", None, None));
        let set = r.header("set-cookie").expect("Set-Cookie").to_owned();
        let key = set[name.len() + 1..set.find(';').expect(";")].to_owned();
        let logout = format!(
            "POST /api/session/flush HTTP/1.1\r\nHost: localhost\r\nCookie: {name}={key}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let r = exchange(&server, logout.as_bytes());
        let deletion = r.header("set-cookie").expect("a deletion cookie");
        assert!(deletion.starts_with(&format!("{name}=;")), "{deletion}");
        assert!(deletion.contains("Secure"), "{name}: {deletion}");
    }
    // A plain name keeps Django's deletion cookie, without Secure.
    let server = TestServer::start(&[]);
    let key = new_session(&server);
    let r = exchange(
        &server,
        format!(
            "POST /api/session/flush HTTP/1.1\r\nHost: localhost\r\nCookie: sessionid={key}\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    );
    assert!(!r.header("set-cookie").expect("deletion").contains("Secure"));
}

#[test]
fn numbers_and_key_order_are_kept_as_sent() {
    let server = TestServer::start(&[]);
    let sent = r#"{"z": 1, "big": 10000000000000000000001, "u": 18446744073709551616, "tiny": 1e-400, "neg": -0, "f": 1.50, "a": {"y": 2, "b": 1}}"#;
    let r = exchange(
        &server,
        &raw_request("POST", "/api/session", None, Some(sent)),
    );
    assert_eq!(r.status, 200, "{}", r.show());
    let key = r.session_cookie().expect("a session");
    let want = r#""data":{"z":1,"big":10000000000000000000001,"u":18446744073709551616,"tiny":1e-400,"neg":-0,"f":1.50,"a":{"y":2,"b":1}}"#;
    let read = exchange(&server, &with_cookie("GET", "/api/session", &key));
    assert!(read.body_text().contains(want), "{}", read.body_text());
    let file =
        std::fs::read_to_string(server.sessions().join(format!("{key}.json"))).expect("the file");
    let order: Vec<usize> = [
        "\"z\"", "\"big\"", "\"u\"", "\"tiny\"", "\"neg\"", "\"f\"", "\"a\"",
    ]
    .iter()
    .map(|k| file.find(k).expect("each key in the file"))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{file}");
    assert!(
        file.contains("10000000000000000000001") && file.contains("1e-400"),
        "{file}"
    );
}

#[test]
fn routes_match_the_percent_decoded_path() {
    let server = TestServer::start(&[]);
    let r = exchange(&server, &raw_request("GET", "/set%73ession/", None, None));
    assert_eq!(r.status, 200, "{}", r.show());
    let key = r.session_cookie().expect("a session");
    let r = exchange(
        &server,
        &raw_request("POST", "/api/session", Some(&key), Some(r#"{"a/b": 1}"#)),
    );
    assert_eq!(r.status, 200);
    // `a%2Fb` decodes to `a/b`: another path, which no route serves (Django: 404 too).
    let r = exchange(&server, &with_cookie("DELETE", "/api/session/a%2Fb", &key));
    assert_eq!(r.status, 404, "{}", r.show());
    assert_eq!(server.session_file(&key)["data"]["a/b"], 1, "not deleted");
    // The redirect of a decoded path reads back as that path.
    let r = exchange(&server, &raw_request("GET", "/set%73ession", None, None));
    assert_eq!(
        (r.status, r.header("location")),
        (301, Some("/setsession/"))
    );
}

#[test]
fn the_empty_key_can_be_set_and_deleted() {
    let server = TestServer::start(&[]);
    let r = exchange(
        &server,
        &raw_request("POST", "/api/session", None, Some(r#"{"": 1, "b": 2}"#)),
    );
    let key = r.session_cookie().expect("a session");
    assert_eq!(server.session_file(&key)["data"][""], 1);
    let r = exchange(&server, &with_cookie("DELETE", "/api/session/", &key));
    assert_eq!(r.status, 200, "{}", r.show());
    assert_eq!(
        server.session_file(&key)["data"],
        serde_json::json!({"b": 2})
    );
    let r = exchange(&server, &with_cookie("DELETE", "/api/session/", &key));
    assert_eq!(r.status, 404, "already gone: {}", r.show());
}

fn get_with_host(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

#[test]
fn a_host_not_in_allowed_hosts_is_400_and_nothing_is_stored() {
    let server = TestServer::start(&[]);
    for host in [
        "evil.example",
        "127.0.0.2",
        "localhost.evil.example",
        "[::2]:8000",
    ] {
        let r = exchange(&server, &get_with_host(host, "/setsession/"));
        assert_eq!(r.status, 400, "{host}: {}", r.show());
        assert!(r.body_text().contains("ALLOWED_HOSTS"), "{}", r.body_text());
        assert_eq!(r.session_cookie(), None);
    }
    assert!(server.session_files().is_empty());
    for host in [
        "localhost:8000",
        "app.localhost",
        "127.0.0.1:8000",
        "[::1]:8000",
    ] {
        let r = exchange(&server, &get_with_host(host, "/setsession/"));
        assert_eq!(r.status, 200, "{host}: {}", r.show());
    }

    let server = TestServer::start(&[("ALLOWED_HOSTS", ".example.com, 10.0.0.5")]);
    for (host, status) in [
        ("example.com", 200),
        ("a.b.example.com:8000", 200),
        ("10.0.0.5", 200),
        ("localhost", 400),
        ("badexample.com", 400),
    ] {
        let r = exchange(&server, &get_with_host(host, "/setsession/"));
        assert_eq!(r.status, status, "{host}: {}", r.show());
    }
    let server = TestServer::start(&[("ALLOWED_HOSTS", "*")]);
    let r = exchange(&server, &get_with_host("anything.example", "/setsession/"));
    assert_eq!(r.status, 200);
}

#[test]
fn unsafe_api_requests_from_another_origin_are_403_and_change_nothing() {
    let server = TestServer::start(&[("CSRF_TRUSTED_ORIGINS", "https://*.example.com")]);
    let key = new_session(&server);
    let flush = |extra: &str| {
        format!(
            "POST /api/session/flush HTTP/1.1\r\nHost: localhost:8000\r\n\
             Cookie: sessionid={key}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: 0\r\n{extra}\r\n"
        )
        .into_bytes()
    };
    for refused in [
        "Origin: http://evil.example\r\n",
        "Origin: null\r\n",
        "Origin: https://localhost:8000\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
        "Sec-Fetch-Site: same-site\r\n",
    ] {
        let r = exchange(&server, &flush(refused));
        assert_eq!(r.status, 403, "{refused}: {}", r.show());
        assert!(r.json()["error"].is_string(), "{}", r.show());
        assert_eq!(r.session_cookie(), None, "{refused}: logged out");
        assert_eq!(
            server.session_files().len(),
            1,
            "{refused}: the session is still there"
        );
    }
    // A page or script of the same origin, a trusted origin, or a script sending neither.
    for allowed in [
        "Origin: http://localhost:8000\r\nSec-Fetch-Site: same-origin\r\n",
        "Origin: https://app.example.com\r\nSec-Fetch-Site: cross-site\r\n",
        "",
    ] {
        let key = new_session(&server);
        let r = exchange(
            &server,
            &format!(
                "POST /api/session/flush HTTP/1.1\r\nHost: localhost:8000\r\n\
                 Cookie: sessionid={key}\r\nContent-Length: 0\r\n{allowed}\r\n"
            )
            .into_bytes(),
        );
        assert_eq!(r.status, 200, "{allowed:?}: {}", r.show());
        assert_eq!(r.session_cookie().as_deref(), Some(""), "logged out");
    }
    // Reads are not checked: a cross-site GET changes nothing.
    let r = exchange(
        &server,
        format!(
            "GET /api/session HTTP/1.1\r\nHost: localhost\r\nCookie: sessionid={key}\r\n\
             Origin: http://evil.example\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200);
}
