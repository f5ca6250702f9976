//! The two servers of tests/django_shared.rs and the one browser between them: Django
//! (tests/django/sharedsite under `runserver`) and filesession (`SESSION_FORMAT=django`) on
//! one store, the raw HTTP they are spoken to with, and the cookie carried across.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{self, TestServer};

/// The throwaway keys of this test (never a real project's).
pub const OLD_KEY: &str = "django-shared-test-old-key-not-secret";
pub const NEW_KEY: &str = "django-shared-test-new-key-not-secret";
pub const COOKIE: &str = "sessionid";

/// The repository's root (this test belongs to the server package, in `server/`).
pub fn repo_root() -> &'static Path {
    let server = Path::new(env!("CARGO_MANIFEST_DIR"));
    server.parent().unwrap_or(server)
}

/// The Python to run Django with (`FILESESSION_DJANGO_PYTHON`, else
/// `tests/django/.venv/bin/python`, else `bench/.venv/bin/python`): the first that imports
/// Django 5.2, and psycopg when `postgres`; or why there is none.
pub fn find_python(postgres: bool) -> Result<PathBuf, String> {
    let root = repo_root();
    let candidates: Vec<(String, PathBuf)> = match std::env::var_os("FILESESSION_DJANGO_PYTHON") {
        Some(p) => vec![("FILESESSION_DJANGO_PYTHON".into(), PathBuf::from(p))],
        None => vec![
            (
                "tests/django/.venv".into(),
                root.join("tests/django/.venv/bin/python"),
            ),
            ("bench/.venv".into(), root.join("bench/.venv/bin/python")),
        ],
    };
    let probe = if postgres {
        "import django, psycopg; print(django.get_version())"
    } else {
        "import django; print(django.get_version())"
    };
    let mut tried = Vec::new();
    for (label, python) in candidates {
        match Command::new(&python).args(["-c", probe]).output() {
            Ok(out) if out.status.success() => {
                let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if version.starts_with("5.2") {
                    return Ok(python);
                }
                tried.push(format!(
                    "{} ({label}) has Django {version}, not 5.2",
                    python.display()
                ));
            }
            Ok(out) => tried.push(format!(
                "{} ({label}): {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => tried.push(format!("{} ({label}): {e}", python.display())),
        }
    }
    Err(format!(
        "no Python with Django 5.2{}: {}. Set FILESESSION_DJANGO_PYTHON, or: python3 -m venv \
         tests/django/.venv && tests/django/.venv/bin/pip install \"Django==5.2.*\" \
         \"psycopg[binary]==3.2.*\"",
        if postgres { " and psycopg" } else { "" },
        tried.join("; ")
    ))
}

/// Which of Django's session engines the two sides share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    DbSqlite,
    #[cfg(feature = "postgres")]
    DbPostgres,
    File,
    SignedCookies,
}

impl Engine {
    pub fn setting(self) -> &'static str {
        match self {
            Engine::DbSqlite => "db",
            #[cfg(feature = "postgres")]
            Engine::DbPostgres => "db",
            Engine::File => "file",
            Engine::SignedCookies => "signed_cookies",
        }
    }
}

/// The store both sides share: a temp dir holding the sessions directory and, but for
/// PostgreSQL, the SQLite database (Django's auth tables live there for every engine;
/// `SESSION_ENGINE=db` keeps `django_session` beside them).
pub struct Site {
    pub engine: Engine,
    pub python: PathBuf,
    pub dir: tempfile::TempDir,
    pub database_url: String,
    pub sessions: PathBuf,
    #[cfg(feature = "postgres")]
    pub postgres: Option<PgDatabase>,
}

impl Site {
    /// A new store with Django's tables, made by Django's own `migrate` (before filesession
    /// opens it: filesession never creates Django's auth tables).
    pub fn new(python: &Path, engine: Engine) -> Result<Site, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let sessions = dir.path().join("sessions");
        std::fs::create_dir(&sessions).map_err(|e| e.to_string())?;
        let sqlite = format!("sqlite:///{}", dir.path().join("db.sqlite3").display());
        #[cfg(feature = "postgres")]
        let postgres = match engine {
            Engine::DbPostgres => Some(PgDatabase::create()?),
            _ => None,
        };
        #[cfg(feature = "postgres")]
        let database_url = postgres.as_ref().map_or(sqlite, |pg| pg.url.clone());
        #[cfg(not(feature = "postgres"))]
        let database_url = sqlite;
        let site = Site {
            engine,
            python: python.to_owned(),
            dir,
            database_url,
            sessions,
            #[cfg(feature = "postgres")]
            postgres,
        };
        let out = site
            .django_command(&site.env(OLD_KEY, ""))
            .args(["migrate", "--no-input", "-v0"])
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("run migrate: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "Django's migrate failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(site)
    }

    /// The settings both sides read, with these keys (`fallbacks` comma-separated).
    pub fn env(&self, secret_key: &str, fallbacks: &str) -> Vec<(&'static str, String)> {
        vec![
            ("SESSION_FORMAT", "django".into()),
            ("SESSION_ENGINE", self.engine.setting().into()),
            ("SECRET_KEY", secret_key.into()),
            ("SECRET_KEY_FALLBACKS", fallbacks.into()),
            ("DATABASE_URL", self.database_url.clone()),
            ("SESSION_FILE_PATH", self.sessions.display().to_string()),
            ("SESSION_COOKIE_NAME", COOKIE.into()),
        ]
    }

    /// `python manage.py ...` of sharedsite with `env` and nothing else of this process's
    /// session settings.
    fn django_command(&self, env: &[(&'static str, String)]) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg("manage.py")
            .current_dir(repo_root().join("tests/django"))
            .env("DJANGO_SETTINGS_MODULE", "sharedsite.settings")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for setting in filesession::SETTINGS {
            cmd.env_remove(setting.name);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Django's runserver on this store: `secret_key`, `fallbacks`, and `extra` settings.
    pub fn django(
        &self,
        secret_key: &str,
        fallbacks: &str,
        extra: &[(&'static str, &str)],
    ) -> Result<Django, String> {
        let mut env = self.env(secret_key, fallbacks);
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        Django::start(|| self.django_command(&env))
    }

    /// filesession on this store, the same way.
    pub fn ours(&self, secret_key: &str, fallbacks: &str, extra: &[(&'static str, &str)]) -> Ours {
        let mut env = self.env(secret_key, fallbacks);
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Ours(TestServer::start(&env))
    }

    /// Where the file engine keeps the session `key` (Django's layout).
    pub fn session_file(&self, key: &str) -> PathBuf {
        self.sessions.join(format!("{COOKIE}{key}"))
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL: a database of its own, dropped after
// ---------------------------------------------------------------------------------------

/// `FILESESSION_POSTGRES_URL`, or the throwaway cluster `.ci/run` starts.
#[cfg(feature = "postgres")]
pub fn postgres_url() -> String {
    std::env::var("FILESESSION_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5439/postgres".to_owned())
}

/// A database of this test's own on the server of [`postgres_url`] (Django's tables have
/// fixed names), dropped, with whatever is still connected to it, on drop.
#[cfg(feature = "postgres")]
pub struct PgDatabase {
    admin: String,
    name: String,
    pub url: String,
}

#[cfg(feature = "postgres")]
impl PgDatabase {
    pub fn create() -> Result<PgDatabase, String> {
        let admin = postgres_url();
        let name = format!(
            "filesession_django_shared_{}",
            uuid::Uuid::new_v4().simple()
        );
        let mut url = url::Url::parse(&admin).map_err(|e| format!("{admin}: {e}"))?;
        url.set_path(&format!("/{name}"));
        common::Pg::connect(&admin)?.batch_execute(&format!("CREATE DATABASE {name}"))?;
        Ok(PgDatabase {
            admin,
            name,
            url: url.to_string(),
        })
    }

    pub fn connect(&self) -> common::Pg {
        common::Pg::connect(&self.url).expect("connect to the test's database")
    }
}

#[cfg(feature = "postgres")]
impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut pg) = common::Pg::connect(&self.admin) {
            let _ = pg.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The servers
// ---------------------------------------------------------------------------------------

/// Django's runserver, killed on drop.
pub struct Django {
    child: Child,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Django {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Whether the server on `addr` is Django's runserver (its `Server` header names
/// WSGIServer); `None` while nothing answers.
fn answers_as_django(addr: SocketAddr) -> Option<bool> {
    let answer = send(addr, "GET", "/whoami", None, None).ok()?;
    Some(
        answer
            .header("server")
            .is_some_and(|s| s.starts_with("WSGIServer")),
    )
}

impl Django {
    /// Starts `command() runserver` on a free port and polls it until it answers (another
    /// server may take the port first: then another port, three times).
    fn start(command: impl Fn() -> Command) -> Result<Django, String> {
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = command();
            cmd.args(["runserver", "--noreload", "--skip-checks"])
                .arg(format!("127.0.0.1:{port}"))
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().map_err(|e| format!("start Django: {e}"))?;
            let stderr = common::collect_stderr(&mut child);
            let mut django = Django {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                stderr,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            last = String::new();
            while Instant::now() < deadline {
                match answers_as_django(django.addr) {
                    Some(true) => return Ok(django),
                    Some(false) => {
                        last = format!("{} was taken by another server", django.addr);
                        break;
                    }
                    None => {}
                }
                if let Ok(Some(status)) = django.child.try_wait() {
                    last = format!("Django exited ({status}): {}", django.log());
                    break;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
            if last.is_empty() {
                last = format!(
                    "Django did not answer on {} within 30 s: {}",
                    django.addr,
                    django.log()
                );
            }
        }
        Err(last)
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// filesession's runserver (common::TestServer), killed on drop.
pub struct Ours(pub TestServer);

// ---------------------------------------------------------------------------------------
// Raw HTTP and the browser
// ---------------------------------------------------------------------------------------

/// An answer: status, headers, body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `Set-Cookie` of the session cookie, if any.
    pub fn session_cookie(&self) -> Option<SetCookie> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| SetCookie::parse(v))
            .find(|c| c.name == COOKIE)
    }

    /// The body as JSON (numbers as written: serde_json's arbitrary_precision).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn show(&self) -> String {
        format!("{} {}", self.status, String::from_utf8_lossy(&self.body))
    }
}

/// A `Set-Cookie` header: name, value, `Max-Age`.
#[derive(Debug, Clone)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    pub max_age: Option<i64>,
}

impl SetCookie {
    fn parse(line: &str) -> SetCookie {
        let mut parts = line.split(';');
        let pair = parts.next().unwrap_or_default().trim();
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        let max_age = parts.find_map(|a| {
            let (n, v) = a.split_once('=')?;
            n.trim()
                .eq_ignore_ascii_case("max-age")
                .then(|| v.trim().parse().ok())?
        });
        SetCookie {
            name: name.trim().to_owned(),
            value: value.to_owned(),
            max_age,
        }
    }

    /// A deletion: `Max-Age=0` (both sides send it with an empty value).
    pub fn deletes(&self) -> bool {
        self.max_age == Some(0)
    }
}

/// One request on its own connection (`Connection: close`), read to the end.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    json: Option<&str>,
) -> Result<Reply, String> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(value) = cookie {
        head.push_str(&format!("Cookie: {COOKIE}={value}\r\n"));
    }
    match json {
        Some(body) => head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None if method == "POST" => head.push_str("Content-Length: 0\r\n\r\n"),
        None => head.push_str("\r\n"),
    }
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw)
        && raw.is_empty()
    {
        return Err(format!("read from {addr}: {e}"));
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no response head: {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// One browser: the session cookie it holds, sent to both servers (same name, both on
/// 127.0.0.1: a browser sends a host's cookies to every port), updated by every answer.
#[derive(Debug, Default, Clone)]
pub struct Browser {
    pub cookie: Option<String>,
}

impl Browser {
    /// Sends a request with the cookie held and keeps what the answer sets.
    pub fn send(
        &mut self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        json: Option<&str>,
    ) -> Reply {
        let reply = send(addr, method, path, self.cookie.as_deref(), json)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if let Some(c) = reply.session_cookie() {
            self.cookie = if c.deletes() { None } else { Some(c.value) };
        }
        reply
    }

    pub fn key(&self) -> String {
        self.cookie
            .clone()
            .expect("the browser holds a session cookie")
    }
}

// ---------------------------------------------------------------------------------------
// What each side answers
// ---------------------------------------------------------------------------------------

/// A 200 answer's JSON, or a panic naming the request and what came back.
fn ok(what: &str, reply: &Reply) -> Value {
    assert_eq!(reply.status, 200, "{what}: {}", reply.show());
    reply.json()
}

impl Django {
    /// `GET /session`: `{"session": {...}, "session_key", "user"}`.
    pub fn session(&self, b: &mut Browser) -> Value {
        ok(
            "Django GET /session",
            &b.send(self.addr, "GET", "/session", None),
        )
    }

    /// The session's data alone.
    pub fn data(&self, b: &mut Browser) -> Value {
        self.session(b)["session"].clone()
    }

    pub fn post(&self, b: &mut Browser, path: &str, json: Option<&str>) -> Reply {
        let reply = b.send(self.addr, "POST", path, json);
        assert_eq!(reply.status, 200, "Django POST {path}: {}", reply.show());
        reply
    }

    /// `GET /whoami`: the user's id, or `Value::Null` for anonymous.
    pub fn whoami(&self, b: &mut Browser) -> Value {
        ok(
            "Django GET /whoami",
            &b.send(self.addr, "GET", "/whoami", None),
        )["user"]
            .clone()
    }
}

impl Ours {
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// `GET /api/session`'s `data`.
    pub fn data(&self, b: &mut Browser) -> Value {
        ok(
            "filesession GET /api/session",
            &b.send(self.addr(), "GET", "/api/session", None),
        )["data"]
            .clone()
    }

    pub fn post(&self, b: &mut Browser, path: &str, json: Option<&str>) -> Reply {
        let reply = b.send(self.addr(), "POST", path, json);
        assert_eq!(
            reply.status,
            200,
            "filesession POST {path}: {}",
            reply.show()
        );
        reply
    }
}

/// The data without `_session_expiry` (where each side keeps the expiry rule may differ).
pub fn without_expiry(data: &Value) -> Value {
    let mut data = data.clone();
    if let Some(map) = data.as_object_mut() {
        map.shift_remove("_session_expiry");
    }
    data
}

/// `{}`.
pub fn empty() -> Value {
    Value::Object(serde_json::Map::new())
}
