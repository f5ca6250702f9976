//! Shared by the end-to-end tests: start the real binary on a free port with a temp
//! sessions directory, and kill it from a Drop guard so a failing test leaves no orphan.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A test that cannot run here says so where a plain `cargo test` shows it, and passes:
/// `SKIPPED: <test>: <what is missing> (<switch>=require makes this a failure)`, written to
/// the process's stderr directly (libtest captures `eprintln!` of a passing test, and the
/// line would never be seen). With `<switch>=require` (`.ci/run` sets each) it fails instead.
pub fn skip(test: &str, missing: &str, switch: &str) {
    use std::io::Write;
    let required = std::env::var(switch).is_ok_and(|v| v == "require");
    assert!(
        !required,
        "{switch}=require but {test} cannot run: {missing}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {test}: {missing} ({switch}=require makes this a failure)"
    );
}

/// A Python with Django 5.2 for the tests against Django itself, or why there is none:
/// `FILESESSION_DJANGO_PYTHON`, else `tests/django/.venv` or `bench/.venv` (`.ci/run`
/// installs one and sets `FILESESSION_DJANGO_TEST=require`).
pub fn django_python() -> Result<PathBuf, String> {
    django_python_with(&[])
}

/// [`django_python`] that also imports `modules` (`psycopg` for PostgreSQL).
pub fn django_python_with(modules: &[&str]) -> Result<PathBuf, String> {
    let server = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = server.parent().unwrap_or(server);
    let candidates: Vec<PathBuf> = match std::env::var_os("FILESESSION_DJANGO_PYTHON") {
        Some(p) => vec![PathBuf::from(p)],
        None => vec![
            root.join("tests/django/.venv/bin/python"),
            root.join("bench/.venv/bin/python"),
        ],
    };
    let imports: String = modules.iter().map(|m| format!("import {m}; ")).collect();
    for python in &candidates {
        let out = Command::new(python)
            .args([
                "-c",
                &format!("{imports}import django; print(django.get_version())"),
            ])
            .output();
        if let Ok(out) = out
            && out.status.success()
            && String::from_utf8_lossy(&out.stdout).starts_with("5.2")
        {
            return Ok(python.clone());
        }
    }
    if modules.is_empty() {
        Err(format!("no Python with Django 5.2 among {candidates:?}"))
    } else {
        Err(format!(
            "no Python with Django 5.2 and {modules:?} among {candidates:?}"
        ))
    }
}

/// Runs `python -c <script> <args>...` with `input` as JSON on its stdin, and returns the
/// JSON it prints; panics with Django's stderr if it fails.
pub fn run_python_json(
    python: &Path,
    script: &str,
    args: &[&std::ffi::OsStr],
    input: &serde_json::Value,
) -> serde_json::Value {
    use std::io::Write;
    let mut child = Command::new(python)
        .args(["-c", script])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write to python");
    let out = child.wait_with_output().expect("python's answer");
    assert!(
        out.status.success(),
        "Django failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("Django's JSON")
}

/// The binary the end-to-end tests start: this build's, or the one `FILESESSION_BINARY`
/// names (an older build, to measure a fault's "before" figure with the same test).
pub fn binary() -> PathBuf {
    std::env::var_os("FILESESSION_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_filesession")),
        PathBuf::from,
    )
}

/// A running `filesession runserver` on 127.0.0.1:<free port>.
pub struct TestServer {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    /// Everything the server printed on stderr so far (the access log).
    pub stderr: Arc<Mutex<String>>,
    /// What it printed on stdout before its address: the banner.
    pub banner: String,
}

impl TestServer {
    /// Starts the server with these extra environment variables.
    pub fn start(env: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, env)
    }

    /// Starts the server with its sessions in `dir/sessions`.
    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> TestServer {
        Self::start_wrapped(dir, env, &[])
    }

    /// Starts the server through a wrapper command (`prlimit --nofile=64:64 --`,
    /// `setpriv --reuid=...`), with its sessions in `dir/sessions`.
    pub fn start_wrapped(
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> TestServer {
        Self::start_binary(&binary(), dir, env, wrapper)
    }

    /// [`start_wrapped`](TestServer::start_wrapped) with another copy of the binary (one
    /// that a user other than the test's may execute).
    pub fn start_binary(
        binary: &Path,
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> TestServer {
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        cmd.arg("runserver")
            .arg("127.0.0.1:0")
            .current_dir(dir.path())
            .env_remove("SESSION_COOKIE_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start filesession");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        let mut banner = String::new();
        for line in lines.by_ref() {
            let line = line.expect("read stdout");
            if let Some(rest) = line.strip_prefix("Starting development server at http://") {
                addr = Some(rest.trim_end_matches('/').parse().expect("address"));
                break;
            }
            banner.push_str(&line);
            banner.push('\n');
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let stderr_text = collect_stderr(&mut child);
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not start: {}", stderr_text.lock().unwrap());
        };
        TestServer {
            child,
            addr,
            dir,
            stderr: stderr_text,
            banner,
        }
    }

    /// Starts another server whose sessions are in `sessions` (an existing directory, e.g.
    /// another server's [`sessions`](TestServer::sessions)): two processes sharing one store.
    /// Its own working directory is a new temp dir.
    pub fn start_sharing(sessions: &Path, env: &[(&str, &str)]) -> TestServer {
        let path = sessions.to_str().expect("a UTF-8 sessions path").to_owned();
        let mut env = env.to_vec();
        env.retain(|(k, _)| *k != "SESSION_FILE_PATH");
        env.push(("SESSION_FILE_PATH", &path));
        Self::start_in(tempfile::tempdir().expect("temp dir"), &env)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn sessions(&self) -> PathBuf {
        self.dir.path().join("sessions")
    }

    /// The names of the session files (`<key>.json`), sorted.
    pub fn session_files(&self) -> Vec<String> {
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

    /// The parsed JSON of a session file.
    pub fn session_file(&self, key: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.sessions().join(format!("{key}.json")))
            .unwrap_or_else(|e| panic!("session file of {key}: {e}"));
        serde_json::from_str(&text).expect("session file is JSON")
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A ureq agent with a cookie jar that reads 4xx/5xx as values and does not follow
/// redirects.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// The values of every `Set-Cookie` header.
pub fn set_cookies(response: &ureq::http::Response<ureq::Body>) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .collect()
}

pub fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or_default().to_owned())
}

/// The session key in a `sessionid=<key>; ...` Set-Cookie value.
pub fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default()
}

pub fn exists(path: &Path) -> bool {
    path.exists()
}

/// One HTTP/1.1 request in literal bytes, kept alive: `Host`, an optional
/// `Cookie: sessionid=<key>`, and for a body `Content-Type: application/json` and
/// `Content-Length`.
pub fn raw_request(
    method: &str,
    path: &str,
    session_key: Option<&str>,
    json: Option<&str>,
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    if let Some(key) = session_key {
        head.push_str(&format!("Cookie: sessionid={key}\r\n"));
    }
    match json {
        Some(body) => {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        }
        None if method == "POST" => head.push_str("Content-Length: 0\r\n\r\n"),
        None => head.push_str("\r\n"),
    }
    head.into_bytes()
}

/// A response read off a raw socket: status, header lines, Content-Length body.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status_line: String,
    pub status: u16,
    /// Header lines as sent, without the CRLF.
    pub header_lines: Vec<String>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first header of this name (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_lines.iter().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Every header of this name, in order.
    pub fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.header_lines.iter().filter_map(move |line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the response shown if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status_line, self.body_text()))
    }

    /// The key a `Set-Cookie: sessionid=<key>` sets (`Some("")` for a deletion cookie).
    pub fn session_cookie(&self) -> Option<String> {
        self.headers("set-cookie")
            .find(|c| c.starts_with("sessionid="))
            .map(cookie_value)
    }

    /// Status line, headers and body, for failure messages.
    pub fn show(&self) -> String {
        format!(
            "{}\n{}\n\n{}",
            self.status_line,
            self.header_lines.join("\n"),
            self.body_text()
        )
    }
}

/// Reads one whole response (status line, headers, Content-Length body). The socket's read
/// timeout bounds each read.
pub fn read_raw_response<R: BufRead>(reader: &mut R) -> std::io::Result<RawResponse> {
    use std::io::{Error, ErrorKind};
    let read_line = |reader: &mut R| -> std::io::Result<String> {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Err(Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before a whole response head",
            ));
        }
        Ok(String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_owned())
    };
    let status_line = read_line(reader)?;
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidData,
                format!("not an HTTP status line: {status_line:?}"),
            )
        })?;
    let mut header_lines = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        header_lines.push(line);
    }
    let mut response = RawResponse {
        status_line,
        status,
        header_lines,
        body: Vec::new(),
    };
    let length: usize = match response.header("content-length") {
        Some(v) => v
            .parse()
            .map_err(|_| Error::new(ErrorKind::InvalidData, format!("Content-Length {v:?}")))?,
        None => 0,
    };
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    response.body = body;
    Ok(response)
}

/// A kept-alive connection to one server over raw TCP.
pub struct RawConnection {
    writer: std::net::TcpStream,
    reader: BufReader<std::net::TcpStream>,
}

impl RawConnection {
    pub fn open(addr: SocketAddr) -> RawConnection {
        let stream = std::net::TcpStream::connect(addr).expect("connect to the server");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .expect("write timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone the socket"));
        RawConnection {
            writer: stream,
            reader,
        }
    }

    /// Writes all `requests` in ONE write (pipelined), then reads as many responses.
    pub fn pipeline(&mut self, requests: &[Vec<u8>]) -> std::io::Result<Vec<RawResponse>> {
        use std::io::Write;
        self.writer.write_all(&requests.concat())?;
        (0..requests.len())
            .map(|_| read_raw_response(&mut self.reader))
            .collect()
    }

    /// One request, then its response.
    pub fn exchange(&mut self, request: &[u8]) -> std::io::Result<RawResponse> {
        use std::io::Write;
        self.writer.write_all(request)?;
        read_raw_response(&mut self.reader)
    }
}

/// A TCP connection to `server` from the loopback address `from` (such as 127.0.0.2), so
/// that the server sees another client address.
pub fn connect_from(from: [u8; 4], server: SocketAddr) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).expect("socket");
    bind(&fd, &SocketAddr::from((from, 0))).expect("bind the client address");
    connect(&fd, &server).expect("connect");
    TcpStream::from(fd)
}

/// Lets this test process hold as many sockets as its hard limit allows; returns that
/// limit (`None`: unlimited).
pub fn raise_own_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    getrlimit(Resource::Nofile).current
}

/// A process's resident memory in KiB (`VmRSS` of /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// How many file descriptors a process holds open.
pub fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/<pid>/fd")
        .count()
}

/// Collects a child's stderr on a thread of its own (so that it never blocks on a full
/// pipe), readable at any time.
pub fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let mut stderr = child.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// A PostgreSQL connection for tests to look at tables with (synchronous: a runtime of its
/// own, driven while a statement runs).
#[cfg(feature = "postgres")]
pub struct Pg {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

#[cfg(feature = "postgres")]
impl Pg {
    pub fn connect(url: &str) -> Result<Pg, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let client = runtime
            .block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                Ok::<_, tokio_postgres::Error>(client)
            })
            .map_err(|e| e.to_string())?;
        Ok(Pg { runtime, client })
    }

    pub fn batch_execute(&mut self, sql: &str) -> Result<(), String> {
        self.runtime
            .block_on(self.client.batch_execute(sql))
            .map_err(|e| e.to_string())
    }

    pub fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, String> {
        self.runtime
            .block_on(self.client.query_one(sql, params))
            .map_err(|e| e.to_string())
    }
}

fn json_body(mut r: ureq::http::Response<ureq::Body>) -> serde_json::Value {
    serde_json::from_str(&r.body_mut().read_to_string().expect("body")).expect("JSON")
}

/// Four client threads at once, two through each server, each sending 25 requests to `path`
/// with `cookie`: `send(url, cookie, thread, i)` sends one and returns its status, which must
/// be 200.
fn four_clients_through(
    a: &TestServer,
    b: &TestServer,
    path: &str,
    cookie: &str,
    send: fn(&str, &str, usize, usize) -> u16,
) {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let url = if t % 2 == 0 { a.url(path) } else { b.url(path) };
            let cookie = cookie.to_owned();
            std::thread::spawn(move || {
                for i in 0..25 {
                    assert_eq!(send(&url, &cookie, t, i), 200, "client {t}, request {i}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Two servers on one store: the session travels, concurrent writes through both are all
/// kept, a logout through one is a logout everywhere.
pub fn two_servers_share_sessions(a: &TestServer, b: &TestServer) {
    let r = agent().get(a.url("/setsession/")).call().unwrap();
    let cookie = format!("sessionid={}", cookie_value(&set_cookies(&r)[0]));
    let r = agent()
        .get(b.url("/getsession/"))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(
        r.into_body().read_to_string().expect("body"),
        "abc abc@gmail.com"
    );
    let r = agent()
        .post(b.url("/api/session"))
        .header("Cookie", &cookie)
        .header("Content-Type", "application/json")
        .send(r#"{"via": "b"}"#)
        .unwrap();
    assert_eq!(json_body(r)["data"]["via"], serde_json::json!("b"));
    four_clients_through(a, b, "/api/session", &cookie, |url, cookie, t, i| {
        agent()
            .post(url)
            .header("Cookie", cookie)
            .header("Content-Type", "application/json")
            .send(format!(r#"{{"t{t}_{i}": {i}}}"#))
            .unwrap()
            .status()
            .as_u16()
    });
    let r = agent()
        .get(a.url("/api/session"))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    let data = json_body(r)["data"].clone();
    assert_eq!(data["via"], serde_json::json!("b"));
    for t in 0..4 {
        for i in 0..25 {
            assert_eq!(
                data[format!("t{t}_{i}")],
                serde_json::json!(i),
                "t{t}_{i} lost"
            );
        }
    }
    let r = agent()
        .post(a.url("/api/session/flush"))
        .header("Cookie", &cookie)
        .send_empty()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = agent()
        .get(b.url("/getsession/"))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(r.status(), 404, "logged out everywhere");
}

/// `request` locking: 4 clients through two servers add 1 each 25 times: exactly 100.
pub fn request_counter_is_exact(a: &TestServer, b: &TestServer) {
    let r = agent().get(a.url("/setsession/")).call().unwrap();
    let cookie = format!("sessionid={}", cookie_value(&set_cookies(&r)[0]));
    four_clients_through(a, b, "/api/session/incr/n", &cookie, |url, cookie, _, _| {
        agent()
            .post(url)
            .header("Cookie", cookie)
            .send_empty()
            .unwrap()
            .status()
            .as_u16()
    });
    let r = agent()
        .get(b.url("/api/session"))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(json_body(r)["data"]["n"], serde_json::json!(100));
}

/// A TCP proxy that delays every chunk it forwards, each way, and counts the store requests
/// in flight through it: a connection whose client has sent a chunk that the server has not
/// answered yet. What a store a network away looks like, to see requests overlap.
pub struct DelayProxy {
    pub addr: SocketAddr,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    most: Arc<std::sync::atomic::AtomicUsize>,
}

impl DelayProxy {
    /// Forwards 127.0.0.1:<free port> to `upstream`, `delay` each way.
    pub fn start(upstream: SocketAddr, delay: Duration) -> DelayProxy {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("its address");
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (flight, top) = (in_flight.clone(), most.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let awaiting = Arc::new(AtomicBool::new(false));
                let pump = |mut from: TcpStream, mut to: TcpStream, request: bool| {
                    let (flight, top, awaiting) = (flight.clone(), top.clone(), awaiting.clone());
                    std::thread::spawn(move || {
                        use std::io::Write;
                        let mut buf = [0u8; 65536];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if request && !awaiting.swap(true, Ordering::SeqCst) {
                                let now = flight.fetch_add(1, Ordering::SeqCst) + 1;
                                top.fetch_max(now, Ordering::SeqCst);
                            }
                            std::thread::sleep(delay);
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            if !request && awaiting.swap(false, Ordering::SeqCst) {
                                flight.fetch_sub(1, Ordering::SeqCst);
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        if awaiting.swap(false, Ordering::SeqCst) {
                            flight.fetch_sub(1, Ordering::SeqCst);
                        }
                    });
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                pump(client, server, true);
                pump(s2, c2, false);
            }
        });
        DelayProxy {
            addr,
            in_flight,
            most,
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most requests that were in flight at once.
    pub fn most_in_flight(&self) -> usize {
        self.most.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// `clients` clients on as many sessions of `server` write for `run`; meanwhile a
/// cookieless page is asked for again and again. Returns the writes done and the page's
/// latencies, sorted.
pub fn sessions_written_through(
    server: &TestServer,
    clients: usize,
    run: Duration,
) -> (usize, Vec<Duration>) {
    let deadline = std::time::Instant::now() + run;
    std::thread::scope(|scope| {
        let writers: Vec<_> = (0..clients)
            .map(|i| {
                scope.spawn(move || {
                    let a = agent();
                    let mut writes = 0;
                    while std::time::Instant::now() < deadline {
                        let r = a
                            .post(server.url("/api/session"))
                            .header("Content-Type", "application/json")
                            .send(format!(r#"{{"client": {i}, "n": {writes}}}"#))
                            .expect("a write");
                        assert_eq!(r.status(), 200, "client {i}");
                        writes += 1;
                    }
                    writes
                })
            })
            .collect();
        let mut pages = Vec::new();
        while std::time::Instant::now() < deadline {
            let asked = std::time::Instant::now();
            let r = agent().get(server.url("/")).call().expect("the page");
            pages.push(asked.elapsed());
            assert_eq!(r.status(), 200);
            std::thread::sleep(Duration::from_millis(20));
        }
        let writes = writers
            .into_iter()
            .map(|w| w.join().expect("a writer"))
            .sum();
        pages.sort();
        (writes, pages)
    })
}

/// 8 clients on 8 sessions of `server`, whose store is behind `proxy`, for 3 s, then one
/// client alone: prints the writes (and their ratio), the store requests in flight at most,
/// and the cookieless page's latency, as `<what>: ...`; asserts that the 8 clients' store
/// requests overlapped (at least 4 in flight at once).
pub fn requests_overlap_through(server: &TestServer, proxy: &DelayProxy, what: &str) {
    let run = Duration::from_secs(3);
    let (writes, pages) = sessions_written_through(server, 8, run);
    let most = proxy.most_in_flight();
    let (alone, _) = sessions_written_through(server, 1, run);
    eprintln!(
        "{what}: {writes} writes in 3 s by 8 clients ({:.1}x one client's {alone}); at most \
         {most} store requests in flight at once; the page (no store) p50 {:?}, max {:?}",
        writes as f64 / alone.max(1) as f64,
        pages[pages.len() / 2],
        pages.last().copied().unwrap_or_default()
    );
    assert!(most >= 4, "{what}: {most} store requests in flight at most");
    assert!(
        proxy.in_flight() <= 8,
        "{what}: {} in flight",
        proxy.in_flight()
    );
}

/// Writers under an outage of the store: 4 clients, each with a session of its own (its
/// agent's cookie), writing a new key per request until stopped, each answer 200 or 503
/// (a 503 sets no cookie; anything else fails the test with the server's log).
pub struct OutageWriters {
    stop: Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<std::thread::JoinHandle<(ureq::Agent, Vec<String>, usize)>>,
}

/// What [`OutageWriters::finish`] counted.
pub struct OutageWrites {
    /// Writes answered 200.
    pub acked: usize,
    /// Writes answered 503.
    pub refused: usize,
    /// Keys answered 200 that the session does not hold afterwards.
    pub lost: Vec<String>,
}

impl OutageWriters {
    pub fn start(server: &TestServer) -> OutageWriters {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..4)
            .map(|c| {
                let (stop, url, log) = (
                    stop.clone(),
                    server.url("/api/session"),
                    server.stderr.clone(),
                );
                std::thread::spawn(move || {
                    let a = agent();
                    let (mut acked, mut refused, mut n) = (Vec::new(), 0, 0);
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let mut r = a
                            .post(&url)
                            .header("Content-Type", "application/json")
                            .send(format!(r#"{{"w{c}-{n}": {n}}}"#))
                            .unwrap();
                        match r.status().as_u16() {
                            200 => acked.push(format!("w{c}-{n}")),
                            503 => {
                                assert!(set_cookies(&r).is_empty(), "a 503 keeps the cookie");
                                refused += 1;
                            }
                            other => panic!(
                                "client {c}: status {other}: {}\nserver log:\n{}",
                                r.body_mut().read_to_string().unwrap_or_default(),
                                log.lock().unwrap()
                            ),
                        }
                    }
                    (a, acked, refused)
                })
            })
            .collect();
        OutageWriters { stop, clients }
    }

    /// How long after `back` (the store's return) a write was first answered 200; fails
    /// the test after 10 s.
    pub fn first_ok_after(server: &TestServer, back: std::time::Instant) -> Duration {
        let probe = agent();
        loop {
            let r = probe
                .post(server.url("/api/session"))
                .header("Content-Type", "application/json")
                .send(r#"{"probe": 1}"#)
                .unwrap();
            if r.status() == 200 {
                return back.elapsed();
            }
            assert!(
                back.elapsed() < Duration::from_secs(10),
                "no recovery: {}\nserver log:\n{}",
                r.status(),
                server.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the writers and reads each one's session back.
    pub fn finish(self, server: &TestServer) -> OutageWrites {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut writes = OutageWrites {
            acked: 0,
            refused: 0,
            lost: Vec::new(),
        };
        for client in self.clients {
            let (a, acked, refused) = client.join().unwrap();
            writes.acked += acked.len();
            writes.refused += refused;
            let mut r = a.get(server.url("/api/session")).call().unwrap();
            assert_eq!(r.status(), 200, "reading the session back");
            let v: serde_json::Value =
                serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
            writes
                .lost
                .extend(acked.into_iter().filter(|k| v["data"].get(k).is_none()));
        }
        writes
    }
}
