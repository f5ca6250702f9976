//! The two servers of tests/django_shared.rs, Django (tests/django/sharedsite under
//! `runserver`) and filesession (`SESSION_FORMAT=django`), on one store; http.rs speaks to
//! them.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{self, TestServer};
use crate::http::send;

/// The throwaway keys of this test (never a real project's).
pub const OLD_KEY: &str = "django-shared-test-old-key-not-secret";
pub const NEW_KEY: &str = "django-shared-test-new-key-not-secret";
pub const COOKIE: &str = "sessionid";

/// The repository's root (this test belongs to the server package, in `server/`).
pub fn repo_root() -> &'static Path {
    let server = Path::new(env!("CARGO_MANIFEST_DIR"));
    server.parent().unwrap_or(server)
}

/// The Python to run Django with (`common::django_python`: `FILESESSION_DJANGO_PYTHON`,
/// `tests/django/.venv`, `bench/.venv`), which must import psycopg too for PostgreSQL; or
/// why there is none.
pub fn find_python(postgres: bool) -> Result<PathBuf, String> {
    let install = "python3 -m venv tests/django/.venv && tests/django/.venv/bin/pip install \
                   \"Django==5.2.*\" \"psycopg[binary]==3.2.*\"";
    let modules: &[&str] = if postgres { &["psycopg"] } else { &[] };
    common::django_python_with(modules).map_err(|e| format!("{e}; {install}"))
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
    /// opens it: filesession never creates Django's auth tables). For PostgreSQL, in
    /// `postgres`, a database of the test's own.
    pub fn new(
        python: &Path,
        engine: Engine,
        #[cfg(feature = "postgres")] postgres: Option<PgDatabase>,
    ) -> Result<Site, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let sessions = dir.path().join("sessions");
        std::fs::create_dir(&sessions).map_err(|e| e.to_string())?;
        let sqlite = format!("sqlite:///{}", dir.path().join("db.sqlite3").display());
        #[cfg(feature = "postgres")]
        assert_eq!(postgres.is_some(), engine == Engine::DbPostgres);
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
        common::Pg::connect(&admin)
            .and_then(|mut pg| pg.batch_execute(&format!("CREATE DATABASE {name}")))
            .map_err(|e| format!("PostgreSQL at {}: {e}", filesession::redacted(&admin)))?;
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
