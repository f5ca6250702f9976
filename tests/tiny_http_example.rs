//! `examples/tiny_http.rs` end to end: the example binary on a free port with a temp
//! sessions directory, driven by ureq with a cookie jar.
//!
//! Cargo builds examples for `cargo test` but not for `cargo test --test tiny_http_example`,
//! so the binary is built here (`cargo build --example tiny_http`) when it is missing or
//! older than its sources.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// The running example, killed when dropped.
struct Example {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    stderr: Arc<Mutex<String>>,
}

impl Example {
    /// Starts the example on 127.0.0.1:0 with its sessions in `<temp dir>/sessions`.
    fn start() -> Example {
        let binary = example_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(binary)
            .arg("127.0.0.1:0")
            .current_dir(dir.path())
            .env("SESSION_FILE_PATH", dir.path().join("sessions"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the tiny_http example");
        let stderr = common::collect_stderr(&mut child);
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = lines.by_ref().map_while(Result::ok).find_map(|line| {
            line.strip_prefix("Listening on http://")
                .and_then(|rest| rest.trim_end_matches('/').parse::<SocketAddr>().ok())
        });
        std::thread::spawn(move || for _ in lines {});
        let mut example = Example {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            stderr,
        };
        match addr {
            Some(addr) => example.addr = addr,
            None => panic!(
                "the example printed no \"Listening on\" line; stderr: {}",
                example.log()
            ),
        }
        example
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn sessions(&self) -> PathBuf {
        self.dir.path().join("sessions")
    }

    /// The session files (`<key>.json`), sorted.
    fn session_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.sessions())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".json"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `<target>/<profile>/examples/tiny_http`, next to this test's own `deps/` directory,
/// built first if it is missing or older than the example or the library's sources.
fn example_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("the test's own path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("<target>/<profile>/deps/<test>");
            let binary = profile_dir
                .join("examples")
                .join(format!("tiny_http{}", std::env::consts::EXE_SUFFIX));
            let manifest = repo_root();
            let built_at = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
            let sources = [
                manifest.join("examples/tiny_http.rs"),
                manifest.join("Cargo.toml"),
                manifest.join("src"),
            ];
            let newest_source = sources.iter().filter_map(|p| newest_mtime(p)).max();
            let stale = match (built_at, newest_source) {
                (None, _) => true,
                (Some(built), Some(source)) => built < source,
                (Some(_), None) => false,
            };
            if stale {
                build_example(manifest, profile_dir);
            }
            assert!(binary.exists(), "no example binary at {}", binary.display());
            binary
        })
        .clone()
}

/// The newest modification time of a file, or of any file under a directory.
fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| newest_mtime(&entry.path()))
        .max()
}

/// `cargo build --example tiny_http` into the target directory and profile of this test.
fn build_example(manifest: &Path, profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--example")
        .arg("tiny_http")
        .arg("--manifest-path")
        .arg(manifest.join("Cargo.toml"));
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(profile) => {
            cmd.arg("--profile").arg(profile);
        }
    }
    let out = cmd.output().expect("run cargo build --example tiny_http");
    assert!(
        out.status.success(),
        "cargo build --example tiny_http failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A ureq agent with a cookie jar that reads 4xx/5xx as values and does not follow
/// redirects (as tests/common's).
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn get(agent: &ureq::Agent, url: &str) -> (u16, Vec<String>, String) {
    let mut response = agent.get(url).call().expect("GET");
    let cookies = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .collect();
    let body = response.body_mut().read_to_string().expect("body");
    (response.status().as_u16(), cookies, body)
}

#[test]
fn getsession_before_setsession_is_404_and_writes_no_session() {
    let example = Example::start();
    let (status, cookies, body) = get(&agent(), &example.url("/getsession/"));
    assert_eq!(status, 404, "{body}");
    assert_eq!(body, "visit /setsession/ first");
    assert!(cookies.is_empty(), "{cookies:?}");
    assert!(example.session_files().is_empty());
}

#[test]
fn setsession_sets_an_httponly_lax_cookie_and_one_file_that_getsession_reads_back() {
    let example = Example::start();
    let agent = agent();

    let (status, cookies, body) = get(&agent, &example.url("/setsession/"));
    assert_eq!((status, body.as_str()), (200, "session is set"));
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let cookie = &cookies[0];
    assert!(cookie.starts_with("sessionid="), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Lax"), "{cookie}");
    let key = cookie
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default();
    assert!(filesession::SessionKey::parse(&key).is_some(), "{key}");

    assert_eq!(example.session_files(), vec![format!("{key}.json")]);
    let text = std::fs::read_to_string(example.sessions().join(format!("{key}.json")))
        .expect("the session file");
    let file: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(file["data"]["sname"], "abc");
    assert_eq!(file["data"]["semail"], "abc@gmail.com");

    let (status, cookies, body) = get(&agent, &example.url("/getsession/"));
    assert_eq!((status, body.as_str()), (200, "abc abc@gmail.com"));
    assert!(
        cookies.is_empty(),
        "an unchanged session sets no cookie: {cookies:?}"
    );
    assert_eq!(example.session_files().len(), 1);
}

#[test]
fn a_body_over_the_limit_is_refused_with_413_quickly_and_the_loop_goes_on() {
    let example = Example::start();
    let agent = agent();
    let body = vec![b'x'; 10_000_000];
    let started = Instant::now();
    let mut response = agent
        .post(example.url("/setsession/"))
        .header("Content-Type", "application/octet-stream")
        .send(&body[..])
        .expect("POST");
    let elapsed = started.elapsed();
    assert_eq!(response.status().as_u16(), 413);
    let text = response.body_mut().read_to_string().expect("body");
    assert!(text.contains("65536"), "{text}");
    assert!(elapsed < Duration::from_secs(5), "413 after {elapsed:?}");
    assert!(example.session_files().is_empty());

    let (status, _, body) = get(&agent, &example.url("/setsession/"));
    assert_eq!((status, body.as_str()), (200, "session is set"));
    assert!(
        example.log().contains("\"POST /setsession/\" 413"),
        "{}",
        example.log()
    );
}

#[test]
fn an_unknown_path_is_404() {
    let example = Example::start();
    let (status, cookies, body) = get(&agent(), &example.url("/no/such/page/"));
    assert_eq!(status, 404, "{body}");
    assert!(cookies.is_empty(), "{cookies:?}");
    assert!(example.session_files().is_empty());
}

/// The repository's root: the library's package (this test belongs to the server package,
/// in `server/`).
fn repo_root() -> &'static Path {
    let server = Path::new(env!("CARGO_MANIFEST_DIR"));
    server.parent().unwrap_or(server)
}
