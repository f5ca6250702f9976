//! The page in a real browser: headless Chromium (Debian's `chromium`) driven over WebDriver
//! (`chromium-driver`), with ureq as the WebDriver client, so this test adds nothing to the
//! build.
//!
//! Without chromium and chromedriver the test says it was skipped and passes; with
//! `FILESESSION_BROWSER_TEST=require` (set by `.ci/run`) a missing browser fails it.
//! Run it: `apt-get install chromium chromium-driver && cargo test --test browser`.
//! `FILESESSION_SCREENSHOT=docs/page.png` saves a screenshot of the page with a session.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C WebDriver element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver and one browser session, both ended on drop.
struct Browser {
    driver: Child,
    base: String,
    agent: ureq::Agent,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn value_of(mut response: ureq::http::Response<ureq::Body>, what: &str) -> Value {
    let status = response.status();
    let text = response.body_mut().read_to_string().unwrap();
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: WebDriver answered {status} {text}: {e}"));
    assert!(
        status.is_success(),
        "{what}: WebDriver answered {status} {body}"
    );
    body["value"].clone()
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let root = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Ok(r) = agent.get(format!("{root}/status")).call()
                && r.status().is_success()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-quic",
                    "--window-size=1200,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let mut browser = Browser {
            driver,
            base: String::new(),
            agent,
            _profile: profile,
        };
        let response = browser
            .agent
            .post(format!("{root}/session"))
            .send_json_value(&capabilities);
        let session = value_of(response, "new session");
        let id = session["sessionId"].as_str().expect("a session id");
        browser.base = format!("{root}/session/{id}");
        browser
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .agent
            .post(format!("{}{path}", self.base))
            .send_json_value(&body);
        value_of(r, path)
    }

    fn get(&self, path: &str) -> Value {
        let r = self
            .agent
            .get(format!("{}{path}", self.base))
            .call()
            .unwrap();
        value_of(r, path)
    }

    fn open(&self, url: &str) {
        self.post("/url", json!({ "url": url }));
    }

    fn reload(&self) {
        self.post("/refresh", json!({}));
    }

    fn find(&self, css: &str) -> String {
        let element = self.post("/element", json!({"using": "css selector", "value": css}));
        element[ELEMENT].as_str().expect("element id").to_owned()
    }

    fn exists(&self, css: &str) -> bool {
        let found = self.post("/elements", json!({"using": "css selector", "value": css}));
        found.as_array().is_some_and(|a| !a.is_empty())
    }

    fn text(&self, css: &str) -> String {
        let id = self.find(css);
        self.get(&format!("/element/{id}/text"))
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.post(&format!("/element/{id}/clear"), json!({}));
        self.post(&format!("/element/{id}/value"), json!({ "text": text }));
    }

    /// Clicks a form's submit button and waits for the answer's page to replace this one.
    fn click(&self, css: &str) {
        let old_page = self.find("html");
        let id = self.find(css);
        self.post(&format!("/element/{id}/click"), json!({}));
        let started = Instant::now();
        // The old page's root goes stale once the form's answer has replaced it...
        loop {
            let r = self
                .agent
                .get(format!("{}/element/{old_page}/name", self.base))
                .call()
                .unwrap();
            if !r.status().is_success() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{css}: no new page"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // ...and the new one is ready when its document says so.
        loop {
            let state = self.post(
                "/execute/sync",
                json!({"script": "return document.readyState", "args": []}),
            );
            if state == json!("complete") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{css}: page not ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn title(&self) -> String {
        self.get("/title").as_str().unwrap_or_default().to_owned()
    }

    fn screenshot(&self, path: &Path) {
        let png = decode_base64(self.get("/screenshot").as_str().unwrap());
        std::fs::write(path, png).unwrap();
    }
}

/// Minimal sending of JSON with ureq's default features off.
trait SendJson {
    fn send_json_value(self, body: &Value) -> ureq::http::Response<ureq::Body>;
}

impl SendJson for ureq::RequestBuilder<ureq::typestate::WithBody> {
    fn send_json_value(self, body: &Value) -> ureq::http::Response<ureq::Body> {
        self.header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap()
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !matches!(c, b'=' | b'\n' | b'\r'))
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &c)| {
            acc | (u32::from(value(c)) << (18 - 6 * i))
        });
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    out
}

fn browser_available() -> bool {
    Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists()
}

/// The rows of the data table: (key, value).
fn rows(browser: &Browser) -> Vec<(String, String)> {
    if !browser.exists("#data") {
        return Vec::new();
    }
    let text = browser.text("#data tbody");
    text.lines()
        .filter_map(|line| {
            let line = line.trim_end_matches("Delete").trim();
            let (k, v) = line.split_once(char::is_whitespace)?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

#[test]
fn a_person_sets_counts_deletes_and_logs_out_in_a_real_browser() {
    if !browser_available() {
        common::skip(
            "the browser test",
            &format!(
                "it needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium \
                 chromium-driver, then cargo test --test browser)"
            ),
            "FILESESSION_BROWSER_TEST",
        );
        return;
    }
    let server = TestServer::start(&[]);
    let browser = Browser::start();
    let page = server.url("/");

    // Viewing the page creates no session.
    browser.open(&page);
    assert_eq!(browser.title(), "filesession");
    assert!(browser.exists("#no-session"));
    assert!(
        server.session_files().is_empty(),
        "viewing must not create a session"
    );

    // Set a key through the form: it shows in the table, with a message shown once.
    browser.type_into("#set-name", "greeting");
    browser.type_into("#set-value", "<script>alert(1)</script>");
    browser.click("#set-submit");
    assert_eq!(
        rows(&browser),
        vec![("greeting".into(), "\"<script>alert(1)</script>\"".into())],
        "the value is shown as text, not run"
    );
    assert!(browser.text(".message").contains("Set greeting"));
    let key = browser.text("#session-key");
    assert_eq!(server.session_files(), vec![format!("{key}.json")]);
    assert_eq!(
        server.session_file(&key)["data"]["greeting"],
        json!("<script>alert(1)</script>")
    );

    // Reload: still there (the cookie persisted), and the message is gone.
    browser.reload();
    assert_eq!(browser.text("#session-key"), key);
    assert_eq!(rows(&browser).len(), 1);
    assert!(!browser.exists(".message"), "a message shows once");

    // A JSON value is stored as JSON.
    browser.type_into("#set-name", "cart");
    browser.type_into("#set-value", "[1, 2]");
    browser.click("#set-submit");
    assert_eq!(server.session_file(&key)["data"]["cart"], json!([1, 2]));

    // Count twice.
    browser.click("#incr-submit");
    browser.click("#incr-submit");
    assert!(browser.text(".message").contains("counter is now 2"));
    assert_eq!(server.session_file(&key)["data"]["counter"], json!(2));

    if let Ok(path) = std::env::var("FILESESSION_SCREENSHOT") {
        browser.screenshot(Path::new(&path));
    }

    // Delete the key.
    browser.type_into("#delete-name", "greeting");
    browser.click("#delete-submit");
    assert!(!rows(&browser).iter().any(|(k, _)| k == "greeting"));
    assert!(server.session_file(&key)["data"].get("greeting").is_none());

    // Log out: the file disappears, the page says so, and there is no session.
    browser.click("#logout-submit");
    assert!(browser.exists("#no-session"));
    assert!(browser.text(".message").contains("logged out"));
    assert!(
        server.session_files().is_empty(),
        "the session file is gone"
    );
    browser.reload();
    assert!(browser.exists("#no-session"));
    assert!(
        server.session_files().is_empty(),
        "no new session after logout"
    );
}
