//! End to end: the real binary on a free port, driven with ureq, checked on the wire and on
//! disk. SessionMiddleware's rules, the demo routes, the JSON API and the settings.

mod common;

use std::time::{Duration, SystemTime};

use common::{TestServer, agent, cookie_value, header, set_cookies};
use serde_json::{Value, json};

type Resp = ureq::http::Response<ureq::Body>;

fn body(mut r: Resp) -> String {
    r.body_mut().read_to_string().unwrap()
}

fn get(agent: &ureq::Agent, url: &str) -> Resp {
    agent.get(url).call().unwrap()
}

fn get_with_cookie(url: &str, cookie: &str) -> Resp {
    agent().get(url).header("Cookie", cookie).call().unwrap()
}

fn post_json(agent: &ureq::Agent, url: &str, body: &str) -> Resp {
    agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap()
}

fn json_body(r: Resp) -> Value {
    serde_json::from_str(&body(r)).unwrap()
}

/// The one session cookie a response sets.
fn the_cookie(r: &Resp) -> String {
    let cookies = set_cookies(r);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    cookies[0].clone()
}

/// The README's sample file is what the server writes for `/setsession/` (issue 22: it
/// showed another key order and ending), line by line as `cat` shows it (trailing spaces,
/// the room to grow, are invisible), the check and the time aside.
#[test]
fn the_readme_s_sample_file_is_what_the_server_writes() {
    let readme = include_str!("../README.md");
    let start = readme.find("$ cat sessions/*.json\n").expect("the sample") + 22;
    let sample = &readme[start..start + readme[start..].find("```").expect("its end")];
    let server = TestServer::start(&[]);
    let r = get(&agent(), &server.url("/setsession/"));
    let key = cookie_value(&the_cookie(&r));
    let written = std::fs::read_to_string(server.sessions().join(format!("{key}.json"))).unwrap();
    // 32 hex digits of check, and an RFC 3339 time with milliseconds: the rest is exact.
    let masked = |text: &str| -> Vec<String> {
        text.lines()
            .map(|line| {
                let line = line.trim_end();
                if let Some(rest) = line.strip_prefix("  \"check\": \"") {
                    assert_eq!(rest.len(), 32 + 2, "{line}");
                    return "  \"check\": <32 hex>".to_owned();
                }
                if let Some(rest) = line.strip_prefix("  \"expires_at\": \"") {
                    assert_eq!(rest.len(), "2026-12-10T11:37:46.250Z\",".len(), "{line}");
                    return "  \"expires_at\": <time>".to_owned();
                }
                line.to_owned()
            })
            .collect()
    };
    assert_eq!(masked(&written), masked(sample), "the file:\n{written}");
    assert!(
        written.ends_with(" \n"),
        "room to grow: spaces, then a newline"
    );
}

#[test]
fn seed_flow_sets_and_gets_the_session_and_writes_the_file() {
    let server = TestServer::start(&[]);
    let a = agent();
    let r = get(&a, &server.url("/setsession/"));
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    let key = cookie_value(&the_cookie(&r));
    assert_eq!(body(r), "session is set");

    let r = get(&a, &server.url("/getsession/"));
    assert_eq!(r.status(), 200);
    assert!(set_cookies(&r).is_empty(), "a read sets no cookie");
    assert_eq!(header(&r, "vary").as_deref(), Some("Cookie"));
    assert_eq!(body(r), "abc abc@gmail.com");

    assert_eq!(server.session_files(), vec![format!("{key}.json")]);
    let file = server.session_file(&key);
    assert_eq!(
        file["data"],
        json!({"sname": "abc", "semail": "abc@gmail.com"})
    );
    assert_eq!(file["format"], json!(1));
    let path = server.sessions().join(format!("{key}.json"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(server.sessions())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
}

#[test]
fn session_cookie_has_djangos_attributes() {
    let server = TestServer::start(&[]);
    let r = get(&agent(), &server.url("/setsession/"));
    let cookie = the_cookie(&r);
    let key = cookie_value(&cookie);
    assert!(filesession::SessionKey::parse(&key).is_some(), "{cookie}");
    let attrs: Vec<&str> = cookie.split("; ").skip(1).collect();
    assert!(attrs.contains(&"HttpOnly"), "{cookie}");
    assert!(attrs.contains(&"SameSite=Lax"), "{cookie}");
    assert!(attrs.contains(&"Path=/"), "{cookie}");
    assert!(attrs.contains(&"Max-Age=1209600"), "{cookie}");
    assert!(
        !cookie.contains("Secure") && !cookie.contains("Domain"),
        "{cookie}"
    );
    let expires = attrs
        .iter()
        .find_map(|a| a.strip_prefix("Expires="))
        .expect("Expires");
    let expires = httpdate::parse_http_date(expires).unwrap();
    let in_two_weeks = SystemTime::now() + Duration::from_secs(1_209_600);
    let off = in_two_weeks
        .duration_since(expires)
        .unwrap_or_else(|e| e.duration());
    assert!(
        off < Duration::from_secs(5),
        "Expires is {off:?} off two weeks from now"
    );
    assert_eq!(header(&r, "vary").as_deref(), Some("Cookie"));
}

#[test]
fn getsession_without_a_session_is_a_404_pointing_to_setsession() {
    let server = TestServer::start(&[]);
    let r = get(&agent(), &server.url("/getsession/"));
    assert_eq!(r.status(), 404);
    assert!(set_cookies(&r).is_empty());
    assert!(body(r).contains("visit /setsession/ first"));
    assert!(server.session_files().is_empty());
}

#[test]
fn reading_without_a_cookie_creates_nothing_but_varies() {
    let server = TestServer::start(&[]);
    let r = get(&agent(), &server.url("/api/session"));
    assert_eq!(r.status(), 200);
    assert!(set_cookies(&r).is_empty());
    assert_eq!(header(&r, "vary").as_deref(), Some("Cookie"));
    assert_eq!(
        json_body(r),
        json!({"session_key": null, "expires_at": null, "expire_at_browser_close": false, "data": {}})
    );
    let r = get(&agent(), &server.url("/"));
    assert_eq!(r.status(), 200);
    assert!(set_cookies(&r).iter().all(|c| !c.starts_with("sessionid")));
    assert!(server.session_files().is_empty());
}

#[test]
fn unknown_key_is_deleted_on_read_and_never_adopted_on_write() {
    let server = TestServer::start(&[]);
    let stranger = filesession::SessionKey::generate().to_string();
    let r = get_with_cookie(
        &server.url("/getsession/"),
        &format!("sessionid={stranger}"),
    );
    assert_eq!(r.status(), 404);
    assert_eq!(
        set_cookies(&r),
        vec!["sessionid=; SameSite=Lax; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"]
    );
    assert_eq!(header(&r, "vary").as_deref(), Some("Cookie"));
    assert!(
        server.session_files().is_empty(),
        "load never creates a file"
    );

    let r = get_with_cookie(
        &server.url("/setsession/"),
        &format!("sessionid={stranger}"),
    );
    let key = cookie_value(&the_cookie(&r));
    assert_ne!(key, stranger);
    assert_eq!(server.session_files(), vec![format!("{key}.json")]);
}

#[test]
fn malformed_cookies_mean_no_session() {
    let server = TestServer::start(&[]);
    let good = filesession::SessionKey::generate().to_string();
    for cookie in [
        "sessionid=../../etc/passwd".to_string(),
        format!("sessionid={}", good.to_uppercase()),
        format!("sessionid={{{good}}}"),
        "sessionid=".to_string(),
        "sessionid".to_string(),
        "garbage;;;==;".to_string(),
        format!("sessionid={}", "a".repeat(5000)),
    ] {
        let r = get_with_cookie(&server.url("/setsession/"), &cookie);
        assert_eq!(r.status(), 200, "{cookie}");
        let key = cookie_value(&the_cookie(&r));
        assert!(
            filesession::SessionKey::parse(&key).is_some(),
            "{cookie} gave {key}"
        );
    }
    assert_eq!(server.session_files().len(), 7);
}

#[test]
fn a_rewrite_refreshes_the_cookie_with_the_same_key() {
    let server = TestServer::start(&[]);
    let a = agent();
    let first = cookie_value(&the_cookie(&get(&a, &server.url("/setsession/"))));
    let r = get(&a, &server.url("/setsession/"));
    assert_eq!(cookie_value(&the_cookie(&r)), first);
    assert_eq!(header(&r, "vary").as_deref(), Some("Cookie"));
    assert_eq!(server.session_files().len(), 1);
}

#[test]
fn flush_deletes_the_file_and_the_cookie() {
    let server = TestServer::start(&[]);
    let a = agent();
    let key = cookie_value(&the_cookie(&get(&a, &server.url("/setsession/"))));
    let r = a
        .post(server.url("/api/session/flush"))
        .send_empty()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        set_cookies(&r),
        vec!["sessionid=; SameSite=Lax; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"]
    );
    assert_eq!(header(&r, "vary").as_deref(), Some("Cookie"));
    assert_eq!(json_body(r)["session_key"], Value::Null);
    assert!(server.session_files().is_empty(), "{key} must be gone");
    let r = get(&a, &server.url("/getsession/"));
    assert_eq!(r.status(), 404, "the jar dropped the cookie");
}

#[test]
fn flush_without_a_cookie_sets_no_cookie_but_varies() {
    let server = TestServer::start(&[]);
    let r = agent()
        .post(server.url("/api/session/flush"))
        .send_empty()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(set_cookies(&r).is_empty());
    assert_eq!(header(&r, "vary").as_deref(), Some("Cookie"));
}

#[test]
fn cycle_gives_a_new_key_and_removes_the_old_file() {
    let server = TestServer::start(&[]);
    let a = agent();
    let old = cookie_value(&the_cookie(&get(&a, &server.url("/setsession/"))));
    let r = a
        .post(server.url("/api/session/cycle"))
        .send_empty()
        .unwrap();
    assert_eq!(r.status(), 200);
    let new = cookie_value(&the_cookie(&r));
    assert_ne!(new, old);
    let described = json_body(r);
    assert_eq!(
        described["session_key"],
        json!(new),
        "the answer shows the new key"
    );
    assert_eq!(server.session_files(), vec![format!("{new}.json")]);
    assert_eq!(
        body(get(&a, &server.url("/getsession/"))),
        "abc abc@gmail.com"
    );
}

#[test]
fn api_sets_reads_deletes_and_increments() {
    let server = TestServer::start(&[]);
    let a = agent();
    let r = post_json(
        &a,
        &server.url("/api/session"),
        r#"{"color": "blue", "n": 41, "tags": [1, 2]}"#,
    );
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/json")
    );
    let described = json_body(r);
    let key = described["session_key"].as_str().unwrap().to_owned();
    assert_eq!(
        described["data"],
        json!({"color": "blue", "n": 41, "tags": [1, 2]})
    );
    let expires = described["expires_at"].as_str().unwrap();
    assert!(filesession::parse_rfc3339(expires).is_some(), "{expires}");

    let r = a
        .post(server.url("/api/session/incr/n"))
        .send_empty()
        .unwrap();
    assert_eq!(json_body(r)["data"]["n"], json!(42));
    let r = a
        .post(server.url("/api/session/incr/visits"))
        .send_empty()
        .unwrap();
    assert_eq!(json_body(r)["data"]["visits"], json!(1));
    let r = a
        .post(server.url("/api/session/incr/color"))
        .send_empty()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(json_body(r)["error"].as_str().unwrap().contains("integer"));

    let r = a.delete(server.url("/api/session/color")).call().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json_body(r)["data"].get("color"), None);
    let r = a.delete(server.url("/api/session/color")).call().unwrap();
    assert_eq!(r.status(), 404);
    assert!(json_body(r)["error"].as_str().unwrap().contains("color"));

    // Percent-decoded key names (an encoded `/` is a `/`, as in Django: another path).
    post_json(&a, &server.url("/api/session"), r#"{"a b": 1}"#);
    let r = a.delete(server.url("/api/session/a%20b")).call().unwrap();
    assert_eq!(r.status(), 200, "percent-decoded key names");

    let file = server.session_file(&key);
    assert_eq!(file["data"], json!({"n": 42, "tags": [1, 2], "visits": 1}));
}

#[test]
fn api_expiry_sets_seconds_browser_close_and_default() {
    let server = TestServer::start(&[]);
    let a = agent();
    get(&a, &server.url("/setsession/"));
    let r = post_json(&a, &server.url("/api/session/expiry"), r#"{"seconds": 60}"#);
    let cookie = the_cookie(&r);
    assert!(cookie.contains("Max-Age=60;"), "{cookie}");
    let key = cookie_value(&cookie);
    assert_eq!(server.session_file(&key)["expiry"], json!({"seconds": 60}));

    let r = post_json(&a, &server.url("/api/session/expiry"), r#"{"seconds": 0}"#);
    let cookie = the_cookie(&r);
    assert!(
        !cookie.contains("Max-Age") && !cookie.contains("Expires"),
        "{cookie}"
    );
    assert_eq!(json_body(r)["expire_at_browser_close"], json!(true));
    assert_eq!(server.session_file(&key)["expiry"], json!("browser_close"));

    let r = post_json(
        &a,
        &server.url("/api/session/expiry"),
        r#"{"seconds": null}"#,
    );
    assert!(the_cookie(&r).contains("Max-Age=1209600"));
    assert_eq!(server.session_file(&key)["expiry"], json!("default"));

    let r = post_json(
        &a,
        &server.url("/api/session/expiry"),
        r#"{"seconds": 18446744073709551615}"#,
    );
    assert_eq!(
        r.status(),
        200,
        "the largest expiry saturates instead of panicking"
    );
    assert_eq!(
        json_body(r)["expires_at"],
        json!("9999-12-31T23:59:59.999Z")
    );

    for bad in [
        r#"{"seconds": -1}"#,
        r#"{"seconds": 1.5}"#,
        r#"{"seconds": "10"}"#,
        r#"{}"#,
    ] {
        let r = post_json(&a, &server.url("/api/session/expiry"), bad);
        assert_eq!(r.status(), 400, "{bad}");
    }
}

#[test]
fn an_expired_session_is_no_session() {
    let server = TestServer::start(&[]);
    let a = agent();
    get(&a, &server.url("/setsession/"));
    let r = post_json(&a, &server.url("/api/session/expiry"), r#"{"seconds": 1}"#);
    let key = cookie_value(&the_cookie(&r));
    std::thread::sleep(Duration::from_millis(2100));
    let r = get_with_cookie(&server.url("/getsession/"), &format!("sessionid={key}"));
    assert_eq!(r.status(), 404, "the server enforces an expiry in seconds");
}

#[test]
fn api_errors_have_the_right_status_and_json_bodies() {
    let server = TestServer::start(&[]);
    let a = agent();
    let r = a
        .post(server.url("/api/session"))
        .header("Content-Type", "text/plain")
        .send("{}")
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/json")
    );
    assert!(json_body(r)["error"].is_string());
    let r = post_json(&a, &server.url("/api/session"), "{not json");
    assert_eq!(r.status(), 400);
    assert!(
        json_body(r)["error"]
            .as_str()
            .unwrap()
            .starts_with("Malformed JSON")
    );
    let r = post_json(&a, &server.url("/api/session"), "[1, 2]");
    assert_eq!(r.status(), 400);
    let big = format!(r#"{{"x": "{}"}}"#, "y".repeat(70_000));
    let r = post_json(&a, &server.url("/api/session"), &big);
    assert_eq!(r.status(), 413);
    assert!(json_body(r)["error"].is_string());
    let r = a.put(server.url("/api/session")).send_empty().unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(header(&r, "allow").as_deref(), Some("GET, POST, HEAD"));
    let r = get(&a, &server.url("/api/nope"));
    assert_eq!(r.status(), 404);
    assert!(json_body(r)["error"].is_string());
    let r = get(&a, &server.url("/nope/"));
    assert_eq!(r.status(), 404);
    assert!(
        header(&r, "content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(
        server.session_files().is_empty(),
        "no error created a session"
    );
}

#[test]
fn append_slash_redirects_with_the_query() {
    let server = TestServer::start(&[]);
    let r = get(&agent(), &server.url("/setsession?x=1&y=%20"));
    assert_eq!(r.status(), 301);
    assert_eq!(
        header(&r, "location").as_deref(),
        Some("/setsession/?x=1&y=%20")
    );
    let r = get(&agent(), &server.url("//setsession"));
    assert_eq!(r.status(), 404, "//setsession is not /setsession");
}

#[test]
fn head_is_answered_like_get_without_a_body() {
    let server = TestServer::start(&[]);
    let r = agent().head(server.url("/getsession/")).call().unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        header(&r, "content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 0
    );
}

#[test]
fn the_page_escapes_the_session_data() {
    let server = TestServer::start(&[]);
    let a = agent();
    post_json(
        &a,
        &server.url("/api/session"),
        r#"{"<b>key</b>": "<script>alert(1)</script>"}"#,
    );
    let r = get(&a, &server.url("/"));
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "cache-control").as_deref(), Some("no-store"));
    assert!(header(&r, "content-security-policy").is_some());
    let html = body(r);
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(html.contains("&lt;b&gt;key&lt;/b&gt;"), "{html}");
    assert!(html.contains("href=\"/setsession/\"") && html.contains("href=\"/getsession/\""));
}

#[test]
fn each_request_gets_one_access_log_line() {
    let server = TestServer::start(&[]);
    get(&agent(), &server.url("/setsession/"));
    get(&agent(), &server.url("/getsession/"));
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines[0].ends_with("] \"GET /setsession/ HTTP/1.1\" 200 14"),
        "{log}"
    );
    assert!(
        lines[1].ends_with("] \"GET /getsession/ HTTP/1.1\" 404 72"),
        "{log}"
    );
    // [26/Nov/2026 11:37:46]
    let stamp = &lines[0][1..21];
    assert_eq!(stamp.len(), 20);
    assert_eq!(&stamp[2..3], "/");
    assert_eq!(&stamp[6..7], "/");
    assert_eq!(&stamp[11..12], " ");
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = TestServer::start(&[]);
    get(&agent(), &server.url("/setsession/"));
    let pid = server.child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let started = std::time::Instant::now();
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit}");
    assert_eq!(server.session_files().len(), 1);
    let leftovers: Vec<_> = std::fs::read_dir(server.sessions())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

// ---- settings through their environment variables ----

#[test]
fn cookie_settings_come_from_the_environment() {
    let server = TestServer::start(&[
        ("SESSION_COOKIE_NAME", "sid"),
        ("SESSION_COOKIE_AGE", "60"),
        ("SESSION_COOKIE_DOMAIN", ".example.local"),
        ("SESSION_COOKIE_SECURE", "true"),
        ("SESSION_COOKIE_PATH", "/app/"),
        ("SESSION_COOKIE_HTTPONLY", "false"),
        ("SESSION_COOKIE_SAMESITE", "Strict"),
    ]);
    let r = get(&agent(), &server.url("/setsession/"));
    let cookie = the_cookie(&r);
    let attrs: Vec<&str> = cookie.split("; ").collect();
    assert!(attrs[0].starts_with("sid="), "{cookie}");
    for wanted in [
        "SameSite=Strict",
        "Secure",
        "Path=/app/",
        "Domain=example.local",
        "Max-Age=60",
    ] {
        assert!(attrs.contains(&wanted), "{wanted} missing in {cookie}");
    }
    assert!(!cookie.contains("HttpOnly"), "{cookie}");
    let key = cookie_value(&cookie);
    let file = server.session_file(&key);
    let expires = filesession::parse_rfc3339(file["expires_at"].as_str().unwrap()).unwrap();
    let left = expires.duration_since(SystemTime::now()).unwrap();
    // 60 s from the save, to the millisecond, rounded up: never less.
    assert!(
        left <= Duration::from_millis(60_001) && left > Duration::from_secs(55),
        "{left:?}"
    );
    let r = get_with_cookie(&server.url("/getsession/"), &format!("sid={key}"));
    assert_eq!(body(r), "abc abc@gmail.com");
}

#[test]
fn samesite_false_omits_the_attribute() {
    let server = TestServer::start(&[("SESSION_COOKIE_SAMESITE", "false")]);
    let cookie = the_cookie(&get(&agent(), &server.url("/setsession/")));
    assert!(!cookie.contains("SameSite"), "{cookie}");
}

#[test]
fn expire_at_browser_close_gives_a_session_cookie() {
    let server = TestServer::start(&[("SESSION_EXPIRE_AT_BROWSER_CLOSE", "true")]);
    let cookie = the_cookie(&get(&agent(), &server.url("/setsession/")));
    assert!(
        !cookie.contains("Max-Age") && !cookie.contains("Expires"),
        "{cookie}"
    );
    assert!(cookie.contains("HttpOnly"));
}

#[test]
fn save_every_request_renews_the_cookie_on_reads_but_creates_nothing_empty() {
    let server = TestServer::start(&[("SESSION_SAVE_EVERY_REQUEST", "1")]);
    let a = agent();
    let r = get(&a, &server.url("/api/session"));
    assert!(set_cookies(&r).is_empty(), "no empty session is created");
    assert!(server.session_files().is_empty());
    let key = cookie_value(&the_cookie(&get(&a, &server.url("/setsession/"))));
    let r = get(&a, &server.url("/getsession/"));
    assert_eq!(
        cookie_value(&the_cookie(&r)),
        key,
        "a read renews the cookie"
    );
    assert_eq!(header(&r, "vary").as_deref(), Some("Cookie"));
    // an unknown cookie is deleted, not turned into an empty file (Django's defect)
    let stranger = filesession::SessionKey::generate();
    let r = get_with_cookie(
        &server.url("/getsession/"),
        &format!("sessionid={stranger}"),
    );
    assert!(set_cookies(&r)[0].contains("Max-Age=0"));
    assert_eq!(server.session_files().len(), 1);
}

#[test]
fn session_file_path_comes_from_the_environment() {
    let server = TestServer::start(&[("SESSION_FILE_PATH", "elsewhere/deep")]);
    let key = cookie_value(&the_cookie(&get(&agent(), &server.url("/setsession/"))));
    assert!(
        server
            .dir
            .path()
            .join("elsewhere/deep")
            .join(format!("{key}.json"))
            .is_file()
    );
    assert!(server.session_files().is_empty());
}

#[test]
fn bad_settings_are_refused_at_startup_naming_the_setting() {
    for (name, value) in [
        ("SESSION_COOKIE_AGE", "two weeks"),
        ("SESSION_COOKIE_SECURE", "maybe"),
        ("SESSION_COOKIE_SAMESITE", "Sometimes"),
        ("SESSION_LOCKING", "optimistic"),
        ("SESSION_COOKIE_NAME", "bad name"),
        ("SESSION_COOKIE_PATH", "no-slash"),
        ("SESSION_LOCK_TIMEOUT", "-1"),
        // Numbers past their range are refused, never a panic (exit 101) later.
        ("SESSION_GC_INTERVAL", "18446744073709551615"),
        ("SESSION_COOKIE_AGE", "18446744073709551615"),
        ("DATA_UPLOAD_MAX_MEMORY_SIZE", "18446744073709551615"),
        ("SESSION_LOCK_TIMEOUT", "1e30"),
        ("SESSION_WORKERS", "99999"),
        ("ALLOWED_HOSTS", ","),
        ("CSRF_TRUSTED_ORIGINS", "example.com"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_filesession"))
            .args(["runserver", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env(name, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}={value} was accepted");
        assert_ne!(out.status.code(), Some(101), "{name}={value}: a panic");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name), "{name}={value}: {err}");
    }
}

/// Django's format and signed cookies need `SECRET_KEY`, from the environment only: never
/// from a flag (`ps` shows it), and never printed, not even in the refusal.
#[test]
fn a_secret_key_is_needed_from_the_environment_and_never_printed() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let dir = tempfile::tempdir().unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_filesession"));
        command.args(args).current_dir(dir.path());
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        assert!(!out.status.success(), "{args:?} {env:?} was accepted");
        assert_ne!(out.status.code(), Some(101), "{args:?}: a panic");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for env in [
        [("SESSION_FORMAT", "django"), ("SESSION_ENGINE", "file")],
        [
            ("SESSION_FORMAT", "filesession"),
            ("SESSION_ENGINE", "signed_cookies"),
        ],
    ] {
        let err = run(&["runserver", "127.0.0.1:0"], &env);
        assert!(err.contains("needs SECRET_KEY"), "{env:?}: {err}");
    }
    for flag in ["--secret-key", "--SECRET_KEY", "--secret-key-fallbacks"] {
        let err = run(
            &["runserver", flag, "s3cret-do-not-print", "127.0.0.1:0"],
            &[],
        );
        assert!(err.contains("command line"), "{flag}: {err}");
        assert!(!err.contains("s3cret-do-not-print"), "{flag}: {err}");
    }
    // A bad setting next to the secret: the refusal names the setting, never the secret.
    let err = run(
        &["runserver", "127.0.0.1:0"],
        &[
            ("SECRET_KEY", "s3cret-do-not-print"),
            ("SESSION_FORMAT", "django"),
            ("SESSION_COOKIE_AGE", "soon"),
        ],
    );
    assert!(err.contains("SESSION_COOKIE_AGE"), "{err}");
    assert!(!err.contains("s3cret-do-not-print"), "{err}");
}

#[test]
fn an_unwritable_sessions_path_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "x").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_filesession"))
        .args(["runserver", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("SESSION_FILE_PATH", "file")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("session directory") && err.contains("file"),
        "{err}"
    );
}

#[test]
fn help_lists_every_setting() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_filesession"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let names = filesession::SETTINGS.iter().map(|s| s.name);
    for name in names.chain(["runserver", "clearsessions"]) {
        assert!(help.contains(name), "--help lacks {name}:\n{help}");
    }
}

#[test]
fn help_never_prints_the_environment_s_values() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_filesession"))
        .arg("--help")
        .env("DATABASE_URL", "postgres://app:hunter2@db/app")
        .env("SESSION_REDIS_URL", "redis://:hunter3@cache/0")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("DATABASE_URL"), "{help}");
    assert!(!help.contains("hunter"), "{help}");
}

/// `clearsessions` creates nothing (issue 22: a mistyped path made the directory, parents
/// included, and exited 0 with "Removed 0 expired sessions", so a cron job with a typo
/// succeeded forever). Django refuses a missing `SESSION_FILE_PATH` too.
#[test]
fn clearsessions_refuses_a_missing_directory_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::binary())
        .args([
            "clearsessions",
            "--session-file-path",
            "var/lib/typo/sessions",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "server_e2e/clearsessions-typo: exit {:?}, {}{err}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("var/lib/typo/sessions") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!dir.path().join("var").exists(), "nothing created");

    // A typo naming an existing shared directory (/var/tmp, mode 1777): cleaned of expired
    // sessions if it holds any, but its mode left alone and nothing written in it.
    use std::os::unix::fs::PermissionsExt;
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = std::process::Command::new(common::binary())
        .args(["clearsessions", "--session-file-path", "shared"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777, "its mode left alone");
    assert_eq!(
        std::fs::read_dir(&shared).unwrap().count(),
        0,
        "nothing written in it"
    );
}

#[test]
fn clearsessions_removes_expired_sessions_and_reports() {
    let server = TestServer::start(&[]);
    let a = agent();
    get(&a, &server.url("/setsession/"));
    let b = agent();
    get(&b, &server.url("/setsession/"));
    post_json(&b, &server.url("/api/session/expiry"), r#"{"seconds": 1}"#);
    std::thread::sleep(Duration::from_millis(2100));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_filesession"))
        .arg("clearsessions")
        .current_dir(server.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Removed 1 expired sessions"), "{text}");
    assert!(text.contains("kept 1 sessions"), "{text}");
    assert_eq!(server.session_files().len(), 1);
    assert_eq!(
        body(get(&a, &server.url("/getsession/"))),
        "abc abc@gmail.com"
    );
}

// ---- the store under contention ----

#[test]
fn a_lock_held_elsewhere_gives_503_and_other_sessions_are_served() {
    let server = TestServer::start(&[("SESSION_LOCK_TIMEOUT", "0.3")]);
    let a = agent();
    let key = cookie_value(&the_cookie(&get(&a, &server.url("/setsession/"))));
    let path = server.sessions().join(format!("{key}.json"));
    let before = std::fs::read(&path).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    fs2::FileExt::lock_exclusive(&file).unwrap();
    let r = a
        .post(server.url("/api/session/incr/n"))
        .send_empty()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after").as_deref(), Some("1"));
    assert!(set_cookies(&r).is_empty());
    assert!(json_body(r)["error"].as_str().unwrap().contains("busy"));
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing written");
    let other = get(&agent(), &server.url("/setsession/"));
    assert_eq!(other.status(), 200, "other sessions are served meanwhile");
    drop(file);
    let r = a
        .post(server.url("/api/session/incr/n"))
        .send_empty()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(server.session_file(&key)["data"]["n"], json!(1));
}

#[test]
fn request_locking_keeps_a_counter_exact_across_concurrent_clients() {
    let server = TestServer::start(&[("SESSION_LOCKING", "request")]);
    let a = agent();
    let key = cookie_value(&the_cookie(&get(&a, &server.url("/setsession/"))));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (a, url) = (a.clone(), server.url("/api/session/incr/n"));
            std::thread::spawn(move || {
                for _ in 0..25 {
                    let r = a.post(&url).send_empty().unwrap();
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(server.session_file(&key)["data"]["n"], json!(100));
}

#[test]
fn a_session_locked_elsewhere_does_not_delay_other_sessions() {
    for locking in ["merge", "request"] {
        let server = TestServer::start(&[
            ("SESSION_LOCK_TIMEOUT", "1.5"),
            ("SESSION_LOCKING", locking),
        ]);
        let a = agent();
        let key = cookie_value(&the_cookie(&get(&a, &server.url("/setsession/"))));
        let file = std::fs::File::open(server.sessions().join(format!("{key}.json"))).unwrap();
        fs2::FileExt::lock_exclusive(&file).unwrap();
        let (a2, url) = (a.clone(), server.url("/api/session/incr/n"));
        let started = std::time::Instant::now();
        let blocked = std::thread::spawn(move || a2.post(&url).send_empty().unwrap().status());
        std::thread::sleep(Duration::from_millis(200));
        // While that request waits for the lock, other sessions are served at once.
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let r = get(&agent(), &server.url("/setsession/"));
            assert_eq!(r.status(), 200);
            assert!(
                t.elapsed() < Duration::from_millis(500),
                "{locking}: another session waited {:?}",
                t.elapsed()
            );
        }
        assert_eq!(blocked.join().unwrap(), 503, "{locking}");
        assert!(started.elapsed() >= Duration::from_millis(1500));
        drop(file);
    }
}

#[test]
fn the_server_cleans_up_by_itself_when_asked() {
    let server = TestServer::start(&[("SESSION_GC_INTERVAL", "1")]);
    let live = agent();
    get(&live, &server.url("/setsession/"));
    let doomed = agent();
    get(&doomed, &server.url("/setsession/"));
    let r = post_json(
        &doomed,
        &server.url("/api/session/expiry"),
        r#"{"seconds": 1}"#,
    );
    let doomed_key = cookie_value(&the_cookie(&r));
    // The leftover of a write that crashed two minutes ago.
    let leftover = server
        .sessions()
        .join(format!(".{}.tmp", filesession::SessionKey::generate()));
    std::fs::write(&leftover, b"half a session").unwrap();
    let old = SystemTime::now() - Duration::from_secs(120);
    std::fs::File::options()
        .write(true)
        .open(&leftover)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let started = std::time::Instant::now();
    while server.session_files().len() > 1 || leftover.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "not cleaned: {:?}, leftover there: {}",
            server.session_files(),
            leftover.exists()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !server
            .session_files()
            .contains(&format!("{doomed_key}.json"))
    );
    assert_eq!(
        body(get(&live, &server.url("/getsession/"))),
        "abc abc@gmail.com"
    );
    assert!(
        server.log().contains("session cleanup: removed"),
        "{}",
        server.log()
    );
}

#[test]
fn clearsessions_fails_with_a_message_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "x").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_filesession"))
        .arg("clearsessions")
        .current_dir(dir.path())
        .env("SESSION_FILE_PATH", "file")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("session directory"));
}

#[cfg(not(feature = "redis"))]
#[test]
fn the_redis_engine_needs_the_redis_feature() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_filesession"))
        .args(["runserver", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("SESSION_ENGINE", "redis")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SESSION_ENGINE=redis") && err.contains("--features redis"),
        "{err}"
    );
}

#[test]
fn an_unknown_method_is_405_naming_the_method_as_sent() {
    let server = TestServer::start(&[]);
    let mut conn = common::RawConnection::open(server.addr);
    let r = conn
        .exchange(b"BREW /api/session HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 405, "{}", r.show());
    assert!(r.body_text().contains("Method BREW"), "{}", r.show());
    assert!(!r.body_text().contains("OTHER"), "{}", r.show());
    assert!(
        r.header("allow").is_some_and(|a| a.contains("GET")),
        "{}",
        r.show()
    );
}

#[test]
fn a_client_that_never_reads_its_answers_is_dropped_at_the_write_deadline() {
    use std::io::{Read, Write};
    let server = TestServer::start(&[("DATA_UPLOAD_MAX_MEMORY_SIZE", "2000000")]);
    let big = "x".repeat(900_000);
    let r = post_json(
        &agent(),
        &server.url("/api/session"),
        &format!(r#"{{"big": "{big}"}}"#),
    );
    assert_eq!(r.status(), 200);
    let key = cookie_value(&the_cookie(&r));
    // 30 answers of ~900 KB asked for at once and never read: far more than the socket
    // buffers of both ends hold, so the server's writes stall.
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    let one =
        format!("GET /api/session HTTP/1.1\r\nHost: localhost\r\nCookie: sessionid={key}\r\n\r\n");
    stream.write_all(one.repeat(30).as_bytes()).unwrap();
    // Others are served meanwhile.
    let r = get(&agent(), &server.url("/setsession/"));
    assert_eq!(r.status(), 200);
    // Past the 10 s write deadline the server has let go of the connection: draining it
    // now gives fewer than the 30 answers, then its end.
    std::thread::sleep(Duration::from_secs(12));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = vec![0; 1 << 16];
    let mut total = 0usize;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the connection is still open after the write deadline: {e}"),
        }
    }
    assert!(
        total < 30 * 900_000,
        "got all {total} bytes: the writes never stalled"
    );
    let r = get(&agent(), &server.url("/setsession/"));
    assert_eq!(r.status(), 200, "the server goes on");
}

/// A closed stdout (`filesession clearsessions | head -0`) is no reason to panic.
#[test]
fn clearsessions_with_its_output_closed_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sessions")).unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_filesession"))
        .arg("clearsessions")
        .current_dir(dir.path())
        .stdout(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
}
