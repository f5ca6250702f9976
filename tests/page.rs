//! The page at `/` over HTTP: CSRF, escaping, security headers, one-shot messages and every
//! form, against the real binary.

mod common;

use common::{TestServer, agent, cookie_value, header, set_cookies};
use serde_json::json;

type Resp = ureq::http::Response<ureq::Body>;

fn body(mut r: Resp) -> String {
    r.body_mut().read_to_string().unwrap()
}

fn form_body(fields: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

fn post_form(a: &ureq::Agent, url: &str, fields: &[(&str, &str)]) -> Resp {
    a.post(url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(form_body(fields))
        .unwrap()
}

/// Opens the page with a fresh agent; returns the agent and its CSRF token.
fn visit(server: &TestServer) -> (ureq::Agent, String) {
    let a = agent();
    let r = a.get(server.url("/")).call().unwrap();
    let csrf = set_cookies(&r)
        .into_iter()
        .find(|c| c.starts_with("csrftoken="))
        .expect("a csrftoken cookie");
    let token = cookie_value(&csrf);
    let html = body(r);
    assert!(
        html.contains(&format!("name=\"csrfmiddlewaretoken\" value=\"{token}\"")),
        "the forms carry the cookie's token"
    );
    (a, token)
}

/// The page's HTML, as the agent (and its cookies) sees it.
fn page(a: &ureq::Agent, server: &TestServer) -> String {
    body(a.get(server.url("/")).call().unwrap())
}

#[test]
fn viewing_the_page_sets_a_csrf_cookie_but_creates_no_session() {
    let server = TestServer::start(&[]);
    let r = agent().get(server.url("/")).call().unwrap();
    assert_eq!(r.status(), 200);
    let cookies = set_cookies(&r);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let token = cookie_value(&cookies[0]);
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(cookies[0].contains("SameSite=Lax") && cookies[0].contains("Path=/"));
    assert!(server.session_files().is_empty());
}

#[test]
fn html_answers_carry_the_security_headers() {
    let server = TestServer::start(&[]);
    let r = agent().get(server.url("/")).call().unwrap();
    let csp = header(&r, "content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains("script-src"), "no scripts at all: {csp}");
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("form-action 'self'"));
    assert_eq!(
        header(&r, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(header(&r, "x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(
        header(&r, "referrer-policy").as_deref(),
        Some("same-origin")
    );
    assert_eq!(header(&r, "cache-control").as_deref(), Some("no-store"));
    assert!(
        !body(r).contains("<script"),
        "the page works without JavaScript"
    );
}

#[test]
fn a_post_without_or_with_a_wrong_token_is_403_and_changes_nothing() {
    let server = TestServer::start(&[]);
    let (a, token) = visit(&server);
    let r = post_form(
        &a,
        &server.url("/form/set"),
        &[
            ("csrfmiddlewaretoken", &token),
            ("name", "x"),
            ("value", "1"),
        ],
    );
    assert_eq!(r.status(), 303);
    let files = server.session_files();
    assert_eq!(files.len(), 1);
    let key = files[0].trim_end_matches(".json").to_owned();
    let before = server.session_file(&key);

    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("name", "x"), ("value", "2")], "CSRF token missing."),
        (
            vec![
                (
                    "csrfmiddlewaretoken",
                    "0000000000000000000000000000000000000000000000000000000000000000",
                ),
                ("name", "x"),
                ("value", "2"),
            ],
            "CSRF token incorrect.",
        ),
        (
            vec![("csrfmiddlewaretoken", ""), ("name", "x"), ("value", "2")],
            "CSRF token incorrect.",
        ),
    ];
    for (fields, reason) in cases {
        for path in ["/form/set", "/form/logout", "/form/incr", "/form/cycle"] {
            let r = post_form(&a, &server.url(path), &fields);
            assert_eq!(r.status(), 403, "{path} {fields:?}");
            assert!(set_cookies(&r).iter().all(|c| !c.starts_with("sessionid")));
            let page = body(r);
            assert!(page.contains("CSRF verification failed. Request aborted."));
            assert!(page.contains(reason), "{reason}: {page}");
        }
    }
    // A POST from a client without the cookie at all (a cross-site form).
    let stranger = agent();
    let r = post_form(
        &stranger,
        &server.url("/form/set"),
        &[("csrfmiddlewaretoken", &token), ("name", "x")],
    );
    assert_eq!(r.status(), 403);
    assert!(body(r).contains("CSRF cookie not set."));
    assert_eq!(server.session_file(&key), before, "nothing changed");
    assert_eq!(server.session_files().len(), 1);
}

/// A valid token from a foreign origin (issue 22: `Origin: http://evil.example` or `null`
/// with a valid token got 303 and the change was made). Django 4.0+ checks `Origin`, when
/// present, before the token (`CsrfViewMiddleware._origin_verified`).
#[test]
fn a_form_with_a_valid_token_from_a_foreign_origin_is_403_and_changes_nothing() {
    let server = TestServer::start(&[("CSRF_TRUSTED_ORIGINS", "https://*.example.com")]);
    let (a, token) = visit(&server);
    let own = format!("http://{}", server.addr);
    let fields = [
        ("csrfmiddlewaretoken", token.as_str()),
        ("name", "x"),
        ("value", "1"),
    ];
    let send = |path: &str, origin: &str| {
        a.post(server.url(path))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Origin", origin)
            .send(form_body(&fields))
            .unwrap()
    };
    let r = send("/form/set", &own);
    assert_eq!(r.status(), 303, "its own origin");
    let key = server.session_files()[0]
        .trim_end_matches(".json")
        .to_owned();
    let before = std::fs::read(server.sessions().join(format!("{key}.json"))).unwrap();
    let r = send("/form/set", "https://app.example.com");
    assert_eq!(r.status(), 303, "a trusted origin");
    let after_trusted = std::fs::read(server.sessions().join(format!("{key}.json"))).unwrap();
    assert_ne!(after_trusted, before);

    let mut answers = Vec::new();
    for origin in [
        "http://evil.example",
        "null",
        "https://evil.example.com.evil",
    ] {
        for path in ["/form/set", "/form/logout", "/form/incr", "/form/cycle"] {
            let r = send(path, origin);
            let status = r.status().as_u16();
            let cookie = set_cookies(&r).iter().any(|c| c.starts_with("sessionid"));
            let text = body(r);
            answers.push((origin, path, status));
            if status != 403 {
                eprintln!("page/foreign-origin: {answers:?}");
            }
            assert_eq!(status, 403, "{origin} {path}: {text}");
            assert!(!cookie, "{origin} {path}: no session cookie");
            assert!(
                text.contains(&format!(
                    "Origin checking failed - {origin} does not match any trusted origins."
                )),
                "{text}"
            );
        }
    }
    eprintln!("page/foreign-origin: {answers:?}");
    let now = std::fs::read(server.sessions().join(format!("{key}.json"))).unwrap();
    assert_eq!(now, after_trusted, "nothing changed");
    assert_eq!(server.session_files().len(), 1);
}

#[test]
fn the_set_form_stores_json_as_json_and_the_rest_as_text() {
    let server = TestServer::start(&[]);
    let (a, token) = visit(&server);
    for (name, value) in [
        ("n", "42"),
        ("obj", r#"{"a": [1, true]}"#),
        ("word", "abc"),
        ("empty", ""),
    ] {
        let r = post_form(
            &a,
            &server.url("/form/set"),
            &[
                ("csrfmiddlewaretoken", &token),
                ("name", name),
                ("value", value),
            ],
        );
        assert_eq!(r.status(), 303);
        assert_eq!(header(&r, "location").as_deref(), Some("/"));
    }
    let key = server.session_files()[0]
        .trim_end_matches(".json")
        .to_owned();
    assert_eq!(
        server.session_file(&key)["data"],
        json!({"n": 42, "obj": {"a": [1, true]}, "word": "abc", "empty": "", "_messages": [
            "Set n = 42.", "Set obj = {\"a\":[1,true]}.", "Set word = abc.", "Set empty = ."
        ]})
    );
    let r = post_form(
        &a,
        &server.url("/form/set"),
        &[("csrfmiddlewaretoken", &token), ("value", "1")],
    );
    assert_eq!(r.status(), 400, "a name is required");
}

#[test]
fn every_key_and_value_is_escaped() {
    let server = TestServer::start(&[]);
    let (a, token) = visit(&server);
    let evil = "<script>alert(1)</script>";
    post_form(
        &a,
        &server.url("/form/set"),
        &[
            ("csrfmiddlewaretoken", &token),
            ("name", evil),
            ("value", evil),
        ],
    );
    post_form(
        &a,
        &server.url("/form/set"),
        &[
            ("csrfmiddlewaretoken", &token),
            ("name", "q\"><img src=x onerror=alert(1)>"),
            ("value", "'&\""),
        ],
    );
    let html = page(&a, &server);
    assert!(!html.contains("<script>"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("q&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"));
}

#[test]
fn a_message_is_shown_once() {
    let server = TestServer::start(&[]);
    let (a, token) = visit(&server);
    post_form(
        &a,
        &server.url("/form/incr"),
        &[("csrfmiddlewaretoken", &token), ("name", "counter")],
    );
    post_form(
        &a,
        &server.url("/form/incr"),
        &[("csrfmiddlewaretoken", &token), ("name", "counter")],
    );
    let first = page(&a, &server);
    assert!(first.contains("counter is now 1.") && first.contains("counter is now 2."));
    let second = page(&a, &server);
    assert!(!second.contains("counter is now"), "shown once");
    let key = server.session_files()[0]
        .trim_end_matches(".json")
        .to_owned();
    assert_eq!(server.session_file(&key)["data"], json!({"counter": 2}));
}

#[test]
fn delete_incr_expiry_and_cycle_forms_work() {
    let server = TestServer::start(&[]);
    let (a, token) = visit(&server);
    let t = ("csrfmiddlewaretoken", token.as_str());
    post_form(
        &a,
        &server.url("/form/set"),
        &[t, ("name", "k"), ("value", "v")],
    );
    let key = server.session_files()[0]
        .trim_end_matches(".json")
        .to_owned();

    let r = post_form(&a, &server.url("/form/incr"), &[t, ("name", "k")]);
    assert_eq!(r.status(), 400, "k is not an integer");
    let r = post_form(&a, &server.url("/form/delete"), &[t, ("name", "k")]);
    assert_eq!(r.status(), 303);
    assert!(server.session_file(&key)["data"].get("k").is_none());

    let r = post_form(
        &a,
        &server.url("/form/expiry"),
        &[t, ("mode", "seconds"), ("seconds", "60")],
    );
    assert!(set_cookies(&r)[0].contains("Max-Age=60"));
    assert_eq!(server.session_file(&key)["expiry"], json!({"seconds": 60}));
    let r = post_form(
        &a,
        &server.url("/form/expiry"),
        &[t, ("mode", "browser_close")],
    );
    assert!(!set_cookies(&r)[0].contains("Max-Age"));
    let r = post_form(&a, &server.url("/form/expiry"), &[t, ("mode", "default")]);
    assert!(set_cookies(&r)[0].contains("Max-Age=1209600"));
    let r = post_form(
        &a,
        &server.url("/form/expiry"),
        &[t, ("mode", "seconds"), ("seconds", "soon")],
    );
    assert_eq!(r.status(), 400);

    let r = post_form(&a, &server.url("/form/cycle"), &[t]);
    let new = cookie_value(&set_cookies(&r)[0]);
    assert_ne!(new, key);
    assert_eq!(server.session_files(), vec![format!("{new}.json")]);
}

#[test]
fn logout_removes_the_file_and_says_so_once_without_a_new_session() {
    let server = TestServer::start(&[]);
    let (a, token) = visit(&server);
    post_form(
        &a,
        &server.url("/form/set"),
        &[
            ("csrfmiddlewaretoken", &token),
            ("name", "k"),
            ("value", "v"),
        ],
    );
    assert_eq!(server.session_files().len(), 1);
    let r = post_form(
        &a,
        &server.url("/form/logout"),
        &[("csrfmiddlewaretoken", &token)],
    );
    assert_eq!(r.status(), 303);
    let cookies = set_cookies(&r);
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("sessionid=;") && c.contains("Max-Age=0"))
    );
    assert!(cookies.iter().any(|c| c.starts_with("flash=logged_out")));
    assert!(server.session_files().is_empty());
    let first = page(&a, &server);
    assert!(first.contains("You are logged out"));
    assert!(first.contains("id=\"no-session\""));
    assert!(
        !page(&a, &server).contains("You are logged out"),
        "shown once"
    );
    assert!(
        server.session_files().is_empty(),
        "no session was created to say it"
    );
}

#[test]
fn a_forged_flash_cookie_puts_no_words_on_the_page() {
    let server = TestServer::start(&[]);
    let r = agent()
        .get(server.url("/"))
        .header("Cookie", "flash=<b>you won</b>")
        .call()
        .unwrap();
    let html = body(r);
    assert!(!html.contains("you won"));
}

#[test]
fn forms_must_be_urlencoded() {
    let server = TestServer::start(&[]);
    let (a, token) = visit(&server);
    let r = a
        .post(server.url("/form/set"))
        .header("Content-Type", "application/json")
        .send(format!(
            r#"{{"csrfmiddlewaretoken": "{token}", "name": "x"}}"#
        ))
        .unwrap();
    assert_eq!(r.status(), 415);
    assert!(server.session_files().is_empty());
}

#[test]
fn a_large_session_is_shown_in_part_and_the_page_stays_small() {
    let server = TestServer::start(&[("DATA_UPLOAD_MAX_MEMORY_SIZE", "2000000")]);
    let a = agent();
    let mut data = serde_json::Map::new();
    for i in 0..1_000 {
        data.insert(format!("k{i}"), json!([0]));
    }
    data.insert("long".into(), json!("x".repeat(50_000)));
    let r = a
        .post(server.url("/api/session"))
        .header("Content-Type", "application/json")
        .send(serde_json::Value::Object(data).to_string())
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = page(&a, &server);
    let rows = html.matches("<code class=\"key\">").count();
    assert_eq!(rows, 200, "the first 200 keys");
    assert!(html.contains("and 801 more keys"), "the rest counted");
    assert!(html.contains("href=\"/api/session\""));
    assert!(
        html.len() < 150_000,
        "a 1 001-key session made a page of {} bytes",
        html.len()
    );
}

#[test]
fn the_expiry_labels_follow_the_settings() {
    let server = TestServer::start(&[("SESSION_COOKIE_AGE", "3600")]);
    assert!(page(&agent(), &server).contains("Default (1 hour)"));
    let server = TestServer::start(&[("SESSION_EXPIRE_AT_BROWSER_CLOSE", "true")]);
    assert!(page(&agent(), &server).contains("Default (at browser close)"));
    let server = TestServer::start(&[]);
    assert!(page(&agent(), &server).contains("Default (2 weeks)"));
}
