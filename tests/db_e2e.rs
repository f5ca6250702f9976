//! `SESSION_ENGINE=db` end to end: the seed flow on SQLite at `./db.sqlite3` with nothing
//! else set; two servers on one database (one SQLite file; one PostgreSQL), a session
//! created on one, changed and logged out on the other, concurrent writes through both all
//! kept, a `request`-mode counter exact; `clearsessions` on the table; PostgreSQL going
//! away under load (503, the cookie kept) and coming back.
//!
//! PostgreSQL needs `--features postgres` and a server at `FILESESSION_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5439/postgres`, the cluster `.ci/run` starts);
//! unreachable, those tests print `SKIPPED` and pass, unless
//! `FILESESSION_POSTGRES_TEST=require`, which `.ci/run` sets.
#![cfg(feature = "sqlite")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    TestServer, agent, cookie_value, request_counter_is_exact, set_cookies,
    two_servers_share_sessions,
};
use serde_json::{Value, json};

fn body_of(mut r: ureq::http::Response<ureq::Body>) -> String {
    r.body_mut().read_to_string().unwrap()
}

#[test]
fn the_db_engine_alone_serves_the_seed_flow_from_db_sqlite3() {
    let server = TestServer::start(&[("SESSION_ENGINE", "db")]);
    assert!(
        server
            .banner
            .contains("table filesession_session of sqlite:///db.sqlite3"),
        "{}",
        server.banner
    );
    let r = agent().get(server.url("/setsession/")).call().unwrap();
    assert_eq!(r.status(), 200);
    let cookies = set_cookies(&r);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert!(cookies[0].contains("HttpOnly") && cookies[0].contains("SameSite=Lax"));
    let key = cookie_value(&cookies[0]);
    assert_eq!(body_of(r), "session is set");
    let r = agent()
        .get(server.url("/getsession/"))
        .header("Cookie", format!("sessionid={key}"))
        .call()
        .unwrap();
    assert_eq!(body_of(r), "abc abc@gmail.com");

    // The row, as `sqlite3 db.sqlite3 'select ...'` shows it: the session file's document.
    let db = server.dir.path().join("db.sqlite3");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the database file is private");
    assert!(server.session_files().is_empty(), "no session files");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (data, expire): (String, i64) = conn
        .query_row(
            "SELECT session_data, expire_date FROM filesession_session WHERE session_key = ?1",
            [&key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let document: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        document["data"],
        json!({"sname": "abc", "semail": "abc@gmail.com"})
    );
    assert_eq!(document["format"], json!(1));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((expire - (now + 1_209_600)).abs() < 5, "{expire} vs {now}");
    assert!(
        data.contains("\n  \"data\": {\n"),
        "pretty JSON, as a file: {data}"
    );

    // clearsessions: an expired row goes, the live one stays, with Django's report line.
    conn.execute(
        "INSERT INTO filesession_session VALUES ('6f1c8f45-7a7b-4cb4-9d5b-1f2a3b4c5d6e', '{}', 1)",
        [],
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_filesession"))
        .arg("clearsessions")
        .current_dir(server.dir.path())
        .env("SESSION_ENGINE", "db")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("Removed 1 expired sessions") && text.contains("kept 1 sessions"),
        "{text}"
    );
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM filesession_session", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
}

#[test]
fn the_server_deletes_expired_rows_by_itself_with_session_gc_interval() {
    let server = TestServer::start(&[("SESSION_ENGINE", "db"), ("SESSION_GC_INTERVAL", "1")]);
    let r = agent().get(server.url("/setsession/")).call().unwrap();
    let live = cookie_value(&set_cookies(&r)[0]);
    let conn = rusqlite::Connection::open(server.dir.path().join("db.sqlite3")).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let ended = filesession::SessionKey::generate().to_string();
    conn.execute(
        "INSERT INTO filesession_session VALUES (?1, '{}', 1)",
        [&ended],
    )
    .unwrap();
    let count = |key: &str| -> i64 {
        conn.query_row(
            "SELECT count(*) FROM filesession_session WHERE session_key = ?1",
            [key],
            |r| r.get(0),
        )
        .unwrap()
    };
    let started = std::time::Instant::now();
    while count(&ended) == 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the expired row is still there"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(count(&live), 1, "the live session stays");
}

/// Two servers, each in a directory of its own, on one SQLite file.
fn sqlite_pair(locking: &str) -> (tempfile::TempDir, TestServer, TestServer) {
    let shared = tempfile::tempdir().unwrap();
    let url = format!("sqlite:///{}", shared.path().join("db.sqlite3").display());
    let env = [
        ("SESSION_ENGINE", "db"),
        ("DATABASE_URL", url.as_str()),
        ("SESSION_LOCKING", locking),
    ];
    let a = TestServer::start(&env);
    let b = TestServer::start(&env);
    (shared, a, b)
}

#[test]
fn two_servers_share_one_sqlite_file() {
    let (_db, a, b) = sqlite_pair("merge");
    two_servers_share_sessions(&a, &b);
}

#[test]
fn request_locking_keeps_a_counter_exact_across_servers_on_sqlite() {
    let (_db, a, b) = sqlite_pair("request");
    request_counter_is_exact(&a, &b);
}

/// Without `--features postgres` the PostgreSQL end-to-end tests are not compiled: say so.
#[cfg(not(feature = "postgres"))]
#[test]
fn postgres_end_to_end_is_not_compiled_without_its_feature() {
    common::skip(
        "postgres end-to-end",
        "not compiled (cargo test --features postgres --test db_e2e, with a server at \
         FILESESSION_POSTGRES_URL)",
        "FILESESSION_POSTGRES_TEST",
    );
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    /// PostgreSQL 5 ms away each way: 8 clients writing 8 sessions overlap their round trips
    /// (the store's pool, used off the server's one thread), and the cookieless page is
    /// served meanwhile.
    #[test]
    fn requests_to_a_distant_postgresql_overlap_and_hold_up_nothing_else() {
        let Some(table) = Table::new() else { return };
        let upstream: std::net::SocketAddr = url::Url::parse(&url())
            .ok()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port()?)))
            .and_then(|a| a.parse().ok())
            .expect("FILESESSION_POSTGRES_URL names a host and a port");
        let proxy = common::DelayProxy::start(upstream, Duration::from_millis(5));
        let mut through = url::Url::parse(&url()).unwrap();
        through.set_port(Some(proxy.addr.port())).unwrap();
        let server = TestServer::start(&[
            ("SESSION_ENGINE", "db"),
            ("DATABASE_URL", through.as_str()),
            ("SESSION_DB_TABLE", &table.0),
        ]);
        common::requests_overlap_through(&server, &proxy, "db_e2e/distant-postgresql");
    }

    fn url() -> String {
        std::env::var("FILESESSION_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5439/postgres".to_owned())
    }

    /// A table of this test's own, dropped when the test ends; `None` (and `SKIPPED`)
    /// when PostgreSQL is unreachable, unless required.
    struct Table(String);

    impl Table {
        fn new() -> Option<Table> {
            if let Err(e) = common::Pg::connect(&url()) {
                common::skip("postgres end-to-end", &e, "FILESESSION_POSTGRES_TEST");
                return None;
            }
            let name = format!("e2e_{}", uuid_like());
            Some(Table(name))
        }
    }

    impl Drop for Table {
        fn drop(&mut self) {
            if let Ok(mut c) = common::Pg::connect(&url()) {
                let _ = c.batch_execute(&format!(
                    "DROP TABLE IF EXISTS {t}; DELETE FROM filesession_schema WHERE table_name = '{t}'",
                    t = self.0
                ));
            }
        }
    }

    fn uuid_like() -> String {
        filesession::SessionKey::generate()
            .to_string()
            .replace('-', "")
    }

    fn pair(table: &Table, database_url: &str, locking: &str) -> (TestServer, TestServer) {
        let env = [
            ("SESSION_ENGINE", "db"),
            ("DATABASE_URL", database_url),
            ("SESSION_DB_TABLE", table.0.as_str()),
            ("SESSION_LOCKING", locking),
        ];
        (TestServer::start(&env), TestServer::start(&env))
    }

    #[test]
    fn two_servers_share_one_postgresql() {
        let Some(table) = Table::new() else { return };
        let (a, b) = pair(&table, &url(), "merge");
        two_servers_share_sessions(&a, &b);
        // The rows, as psql shows them.
        let mut c = common::Pg::connect(&url()).unwrap();
        let r = agent().get(a.url("/setsession/")).call().unwrap();
        let key = cookie_value(&set_cookies(&r)[0]);
        let row = c
            .query_one(
                &format!(
                    "SELECT session_data, expire_date > now() FROM {} WHERE session_key = $1",
                    table.0
                ),
                &[&key],
            )
            .unwrap();
        let document: Value = serde_json::from_str(row.get::<_, &str>(0)).unwrap();
        assert_eq!(document["data"]["sname"], json!("abc"));
        assert!(
            row.get::<_, bool>(1),
            "expire_date is a timestamptz in the future"
        );
    }

    #[test]
    fn request_locking_keeps_a_counter_exact_across_servers_on_postgresql() {
        let Some(table) = Table::new() else { return };
        let (a, b) = pair(&table, &url(), "request");
        request_counter_is_exact(&a, &b);
    }

    /// A TCP relay to PostgreSQL that can be cut (every connection closed, new ones
    /// refused) and restored: the database going away and coming back.
    struct Relay {
        port: u16,
        up: Arc<AtomicBool>,
        open: Arc<Mutex<Vec<TcpStream>>>,
    }

    impl Relay {
        fn start(target: std::net::SocketAddr) -> Relay {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let up = Arc::new(AtomicBool::new(true));
            let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
            let (up2, open2) = (up.clone(), open.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if !up2.load(Ordering::SeqCst) {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(target) else {
                        continue;
                    };
                    let mut open = open2.lock().unwrap();
                    for s in [&client, &server] {
                        if let Ok(s) = s.try_clone() {
                            open.push(s);
                        }
                    }
                    pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                    pipe(server, client);
                }
            });
            Relay { port, up, open }
        }

        fn cut(&self) {
            self.up.store(false, Ordering::SeqCst);
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }

        fn restore(&self) {
            self.up.store(true, Ordering::SeqCst);
        }
    }

    fn pipe(mut from: TcpStream, mut to: TcpStream) {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Both);
        });
    }

    #[test]
    fn postgresql_down_answers_503_keeps_the_cookie_and_service_resumes() {
        let Some(table) = Table::new() else { return };
        let target = {
            let parsed = url::Url::parse(&url()).unwrap();
            let host = parsed.host_str().unwrap().to_owned();
            let port = parsed.port().unwrap_or(5432);
            std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
                .unwrap()
                .next()
                .unwrap()
        };
        let relay = Relay::start(target);
        let mut relayed = url::Url::parse(&url()).unwrap();
        relayed.set_port(Some(relay.port)).unwrap();
        relayed.set_password(Some("not-printed")).unwrap();
        let env = [
            ("SESSION_ENGINE", "db"),
            ("DATABASE_URL", relayed.as_str()),
            ("SESSION_DB_TABLE", table.0.as_str()),
        ];
        let server = TestServer::start(&env);
        assert!(!server.banner.contains("not-printed"), "{}", server.banner);
        let r = agent().get(server.url("/setsession/")).call().unwrap();
        let cookie = format!("sessionid={}", cookie_value(&set_cookies(&r)[0]));
        relay.cut();
        for path in ["/setsession/", "/getsession/", "/api/session"] {
            let r = agent()
                .get(server.url(path))
                .header("Cookie", &cookie)
                .call()
                .unwrap();
            assert_eq!(r.status(), 503, "{path} with PostgreSQL away");
            assert!(set_cookies(&r).is_empty(), "{path}: {:?}", set_cookies(&r));
            assert_eq!(
                r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
                Some("1")
            );
        }
        relay.restore();
        let started = Instant::now();
        loop {
            let r = agent()
                .get(server.url("/getsession/"))
                .header("Cookie", &cookie)
                .call()
                .unwrap();
            if r.status() == 200 {
                assert_eq!(body_of(r), "abc abc@gmail.com", "the session survived");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no recovery: {}",
                r.status()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!server.log().contains("not-printed"), "{}", server.log());
    }

    /// A PostgreSQL cluster of this test's own (`initdb` into a temp dir, on a free loopback
    /// port), so that it can be crashed without touching the shared one the other tests use.
    /// As root (CI), every PostgreSQL command runs as the `postgres` user (PostgreSQL refuses
    /// root). Dropped, it is stopped at once: a failing test leaves no postgres running.
    struct Cluster {
        bin: std::path::PathBuf,
        dir: tempfile::TempDir,
        port: u16,
        as_postgres: bool,
    }

    impl Cluster {
        /// `initdb`, then start; `Err` (why) when no PostgreSQL is installed.
        fn start() -> Result<Cluster, String> {
            let bin = pg_bin()?;
            let as_postgres = rustix::process::geteuid().is_root();
            let dir = tempfile::tempdir().expect("temp dir");
            if as_postgres {
                let out = Command::new("chown")
                    .arg("postgres")
                    .arg(dir.path())
                    .output()
                    .expect("run chown");
                assert!(
                    out.status.success(),
                    "chown postgres {}: {}",
                    dir.path().display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
                    .expect("chmod 0700 the cluster's dir");
            }
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let cluster = Cluster {
                bin,
                dir,
                port,
                as_postgres,
            };
            let data = cluster.data();
            cluster.run("initdb", &["-D", &data, "-A", "trust", "-U", "postgres"]);
            cluster.up();
            Ok(cluster)
        }

        fn data(&self) -> String {
            self.dir
                .path()
                .to_str()
                .expect("a UTF-8 temp dir")
                .to_owned()
        }

        fn url(&self) -> String {
            format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
        }

        /// `<PGBIN>/<tool> <args>`, as the `postgres` user when this test runs as root.
        fn command(&self, tool: &str, args: &[&str]) -> Command {
            let program = self.bin.join(tool);
            let mut cmd = if self.as_postgres {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", "postgres", "--"]).arg(program);
                cmd
            } else {
                Command::new(program)
            };
            cmd.args(args).stdin(std::process::Stdio::null());
            cmd
        }

        /// Runs `tool` to its end; panics with its output and the server's log if it fails.
        fn run(&self, tool: &str, args: &[&str]) {
            let out = self
                .command(tool, args)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
            assert!(
                out.status.success(),
                "{tool} {args:?} failed ({}):\n{}{}\nserver log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
            );
        }

        /// Starts the cluster and waits until it accepts connections (after a crash: once
        /// its recovery from the WAL is done).
        fn up(&self) {
            let data = self.data();
            let options = format!("-p {} -k {data} -c listen_addresses=127.0.0.1", self.port);
            let log = format!("{data}/log");
            self.run(
                "pg_ctl",
                &["-D", &data, "-l", &log, "-w", "-o", &options, "start"],
            );
        }

        /// PostgreSQL's crash: `-m immediate` (every process quits at once, no checkpoint;
        /// the next start recovers from the WAL). `fsync` stays on: committed is durable.
        fn crash(&self) {
            self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            let data = self.data();
            let _ = self
                .command("pg_ctl", &["-D", &data, "-m", "immediate", "stop"])
                .output();
        }
    }

    /// The newest installed PostgreSQL's `bin` directory
    /// (`ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1`).
    fn pg_bin() -> Result<std::path::PathBuf, String> {
        let root = std::path::Path::new("/usr/lib/postgresql");
        let entries = std::fs::read_dir(root).map_err(|e| {
            format!(
                "no PostgreSQL installed ({}: {e}; apt-get install postgresql)",
                root.display()
            )
        })?;
        let version = |name: &str| -> Vec<u64> {
            name.split('.')
                .map(|part| part.parse().unwrap_or(0))
                .collect()
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| root.join(name).join("bin/pg_ctl").is_file())
            .max_by_key(|name| version(name))
            .map(|name| root.join(name).join("bin"))
            .ok_or_else(|| {
                format!(
                    "no PostgreSQL installed (no {}/*/bin/pg_ctl)",
                    root.display()
                )
            })
    }

    /// The twin of redis_e2e's `redis_killed_under_writes_loses_no_acknowledged_write`:
    /// PostgreSQL crashed (`pg_ctl -m immediate stop`, a cluster of this test's own) and
    /// restarted under writes by 4 clients: every write answered 200 is there afterwards
    /// (committed before the answer, and recovered from the WAL), the others answered 503
    /// with no cookie set, and service is back within 5 s of the restart (the pool drops the
    /// broken connections and makes new ones).
    #[test]
    fn postgres_killed_and_restarted_under_writes_loses_no_acknowledged_write() {
        let cluster = match Cluster::start() {
            Ok(cluster) => cluster,
            Err(why) => {
                common::skip("postgres end-to-end", &why, "FILESESSION_POSTGRES_TEST");
                return;
            }
        };
        let database_url = cluster.url();
        let server = TestServer::start(&[
            ("SESSION_ENGINE", "db"),
            ("DATABASE_URL", &database_url),
            ("SESSION_DB_TABLE", "e2e_killed"),
        ]);
        let writers = common::OutageWriters::start(&server);
        std::thread::sleep(Duration::from_millis(400));
        cluster.crash();
        std::thread::sleep(Duration::from_millis(400));
        let back = Instant::now();
        cluster.up(); // crash recovery, then accepting connections
        let restarted = back.elapsed();
        // Service back: the first 200 after PostgreSQL's return.
        let first_ok = common::OutageWriters::first_ok_after(&server, back);
        std::thread::sleep(Duration::from_millis(300));
        let common::OutageWrites {
            acked: acked_all,
            refused: refused_all,
            lost,
        } = writers.finish(&server);
        eprintln!(
            "db_e2e/postgres-killed-under-writes: {acked_all} writes answered 200, \
             {refused_all} 503 while PostgreSQL was down, {} lost; PostgreSQL restarted \
             (recovered) in {restarted:?}, service back {first_ok:?} after its restart began",
            lost.len()
        );
        assert!(refused_all > 0, "PostgreSQL was down for a while");
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
        assert!(first_ok < Duration::from_secs(5), "{first_ok:?}");
    }
}

/// A JSON POST to the API without a cookie: a new session, if it writes.
fn post_new(server: &TestServer, json: &str) -> ureq::http::Response<ureq::Body> {
    agent()
        .post(server.url("/api/session"))
        .header("Content-Type", "application/json")
        .send(json)
        .unwrap()
}

/// A new session holding `json`; its key.
fn new_session(server: &TestServer, json: &str) -> String {
    let r = post_new(server, json);
    assert_eq!(r.status(), 200);
    cookie_value(&set_cookies(&r)[0])
}

fn post_as(url: &str, key: &str, json: &str) -> ureq::http::Response<ureq::Body> {
    agent()
        .post(url)
        .header("Cookie", format!("sessionid={key}"))
        .header("Content-Type", "application/json")
        .send(json)
        .unwrap()
}

/// An operator removes or replaces `db.sqlite3` under a running server (issue 22: after an
/// `rm`, every read, write and new session answered 200 into the unlinked file, and a
/// restart lost them all). Now each is a 500 that says so, keeps the cookie and
/// acknowledges nothing, and the path is never opened again.
fn database_gone_under_the_server(what: &str, gone: impl FnOnce(&std::path::Path)) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite3");
    let server = TestServer::start_in(dir, &[("SESSION_ENGINE", "db")]);
    let key = new_session(&server, r#"{"n": 1}"#);
    gone(&db);
    let inode_now = std::fs::metadata(&db).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });

    // (status, Set-Cookie headers) of a read, a write, a new session and a logout.
    let mut answers = Vec::new();
    let r = agent()
        .get(server.url("/api/session"))
        .header("Cookie", format!("sessionid={key}"))
        .call()
        .unwrap();
    answers.push((r.status().as_u16(), set_cookies(&r).len()));
    let r = post_as(&server.url("/api/session"), &key, r#"{"after": true}"#);
    answers.push((r.status().as_u16(), set_cookies(&r).len()));
    let message = body_of(r);
    let r = post_new(&server, r#"{"new": true}"#);
    answers.push((r.status().as_u16(), set_cookies(&r).len()));
    let r = post_as(&server.url("/api/session/flush"), &key, "");
    answers.push((r.status().as_u16(), set_cookies(&r).len()));
    eprintln!(
        "db_e2e/{what}: (status, cookies set) of a read, a write, a new session, a logout: {answers:?}"
    );
    // 500 each, and no cookie set or deleted: the user keeps theirs.
    assert_eq!(answers, [(500, 0); 4], "read, write, new, logout");
    assert!(message.contains("removed or replaced"), "{message}");
    assert!(message.contains("Restart the server"), "{message}");
    let inode_after = std::fs::metadata(&db).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    assert_eq!(
        inode_after, inode_now,
        "the path is left as the operator left it"
    );
    assert!(
        server.log().contains("was removed or replaced"),
        "{}",
        server.log()
    );
}

#[test]
fn a_deleted_sqlite_database_answers_500_and_acknowledges_nothing() {
    database_gone_under_the_server("deleted", |db| std::fs::remove_file(db).unwrap());
}

#[test]
fn a_sqlite_database_replaced_under_the_server_answers_500_and_acknowledges_nothing() {
    database_gone_under_the_server("replaced", |db| {
        let copy = db.with_extension("restored");
        std::fs::copy(db, &copy).unwrap();
        std::fs::rename(&copy, db).unwrap();
    });
}

/// `clearsessions` creates nothing (issue 22: a mistyped `--session-file-path` made the
/// directory, parents included, and exited 0 forever): a missing directory, SQLite file or
/// table is exit 1, the path in the message.
#[test]
fn clearsessions_refuses_a_missing_database_or_table_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(common::binary());
        cmd.arg("clearsessions").current_dir(dir.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[
        ("SESSION_ENGINE", "db"),
        ("DATABASE_URL", "sqlite:///typo.sqlite3"),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("typo.sqlite3"), "{err}");
    assert!(
        !dir.path().join("typo.sqlite3").exists(),
        "no database made"
    );

    // A database of someone else's, without our table: nothing added to it.
    let other = dir.path().join("other.sqlite3");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let (code, err) = run(&[
        ("SESSION_ENGINE", "db"),
        ("DATABASE_URL", "sqlite:///other.sqlite3"),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("filesession_session"), "{err}");
    let tables: i64 = rusqlite::Connection::open(&other)
        .unwrap()
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 1, "nothing created in it");
}

/// A sqlite:// URL with options: refused, and its password printed nowhere (issue 22: a
/// file of that literal name was made, and the name printed in an error).
#[test]
fn a_sqlite_url_with_a_password_option_is_refused_and_never_printed() {
    for url in [
        "sqlite:///x.sqlite3?password=hunter2",
        "sqlite:///x.sqlite3?key=hunter2",
        "sqlite:///x.sqlite3#password=hunter2",
    ] {
        a_sqlite_url_with_options_is_refused(url);
    }
}

fn a_sqlite_url_with_options_is_refused(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(common::binary())
        .args(["runserver", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("SESSION_ENGINE", "db")
        .env("DATABASE_URL", url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A build that accepts the URL serves on: stopped after 5 s, and the test fails.
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("no ?options"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
    let made: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(made.is_empty(), "{made:?}");
}

/// Another process holds SQLite's write lock (an admin's `sqlite3` shell, a `VACUUM`): the
/// server's one thread never waits for it (issue 23: a cookieless `GET /` waited 7.5 s behind
/// a busy write). Told as an order: while the lock is held and a write to one session is
/// still waiting for it, a cookieless page and a read of another session are answered;
/// the write then answers 503 at the lock timeout, and succeeds once the lock is let go.
#[test]
fn a_database_locked_by_another_process_holds_up_no_other_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite3");
    let server = TestServer::start_in(
        dir,
        &[("SESSION_ENGINE", "db"), ("SESSION_LOCK_TIMEOUT", "2")],
    );
    let (writer_key, reader_key) = (
        new_session(&server, r#"{"w": 0}"#),
        new_session(&server, r#"{"r": 1}"#),
    );

    // Another process's write lock (this test process's own connection: SQLite's locks
    // are the process's).
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let locked = std::time::Instant::now();

    let write = {
        let url = server.url("/api/session");
        std::thread::spawn(move || {
            let r = post_as(&url, &writer_key, r#"{"w": 1}"#);
            (
                r.status().as_u16(),
                r.headers().get("retry-after").is_some(),
                std::time::Instant::now(),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(200)); // the write is waiting by now
    let page = agent().get(server.url("/")).call().unwrap();
    assert_eq!(page.status(), 200);
    let read = agent()
        .get(server.url("/api/session"))
        .header("Cookie", format!("sessionid={reader_key}"))
        .call()
        .unwrap();
    let answered = std::time::Instant::now();
    assert_eq!(read.status(), 200);
    let v: Value = serde_json::from_str(&body_of(read)).unwrap();
    assert_eq!(v["data"]["r"], json!(1));
    let write_waiting = !write.is_finished();
    let (status, retry_after, done) = write.join().unwrap();
    eprintln!(
        "db_e2e/locked: page and read answered {:?} into the lock, the write {status} after {:?}",
        answered - locked,
        done - locked
    );
    assert!(
        write_waiting,
        "the page and the read were answered while the write waited"
    );
    assert!(answered < done, "answered before the write gave up");
    assert_eq!(
        (status, retry_after),
        (503, true),
        "503 at the lock timeout"
    );
    conn.execute_batch("ROLLBACK").unwrap();
    let r = post_new(&server, r#"{"after": true}"#);
    assert_eq!(r.status(), 200, "writes go on once the lock is let go");
}

/// One server on SQLite, `merge` locking: the store is used off the server's one thread, so
/// requests overlap; those of one session still take turns, so a read-modify-write (the
/// visit counter) stays exact in one process, as it is on the file store.
#[test]
fn a_counter_in_one_process_on_sqlite_is_exact_in_merge_mode() {
    let server = TestServer::start(&[("SESSION_ENGINE", "db")]);
    let r = agent()
        .post(server.url("/api/session/incr/n"))
        .send_empty()
        .unwrap();
    let key = cookie_value(&set_cookies(&r)[0]);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..50 {
                    let r = post_as(&server.url("/api/session/incr/n"), &key, "");
                    assert_eq!(r.status(), 200);
                }
            });
        }
    });
    let r = agent()
        .get(server.url("/api/session"))
        .header("Cookie", format!("sessionid={key}"))
        .call()
        .unwrap();
    let v: Value = serde_json::from_str(&body_of(r)).unwrap();
    eprintln!("db_e2e/one-process-counter: n = {} of 401", v["data"]["n"]);
    assert_eq!(v["data"]["n"], json!(401));
}

/// `request` locking on SQLite: 40 requests wait, each for a session whose lock another
/// process holds: more than the lock waits' budget (16, once 32). A request for a free session is
/// answered meanwhile: its lock is taken at the first try, with no wait and no permit (issue
/// 23 review: every `request`-mode load took a lock-wait permit, so it queued behind them).
#[test]
fn requests_waiting_for_locked_sessions_hold_up_no_other_session() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite3");
    let server = TestServer::start_in(
        dir,
        &[
            ("SESSION_ENGINE", "db"),
            ("SESSION_LOCKING", "request"),
            ("SESSION_LOCK_TIMEOUT", "3"),
        ],
    );
    let locked: Vec<String> = (0..40)
        .map(|_| new_session(&server, r#"{"x": 1}"#))
        .collect();
    let free = new_session(&server, r#"{"x": 1}"#);
    // Another process holds their locks (this test's own store).
    let url = format!("sqlite:///{}", db.display());
    let store = filesession::DbStore::open(&url, "filesession_session")
        .unwrap()
        .with_locking(filesession::Locking::Request)
        .with_lock_timeout(Duration::from_secs(3));
    let held: Vec<_> = locked
        .iter()
        .map(|k| {
            filesession::SessionStore::load(&store, &filesession::SessionKey::parse(k).unwrap())
                .unwrap()
                .unwrap()
        })
        .collect();
    std::thread::scope(|scope| {
        let waiters: Vec<_> = locked
            .iter()
            .map(|key| {
                let url = server.url("/api/session");
                scope.spawn(move || {
                    agent()
                        .get(&url)
                        .header("Cookie", format!("sessionid={key}"))
                        .call()
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300)); // all 40 wait by now
        let r = agent()
            .get(server.url("/api/session"))
            .header("Cookie", format!("sessionid={free}"))
            .call()
            .unwrap();
        let answered_while_waiting = waiters.iter().all(|w| !w.is_finished());
        drop(held);
        let statuses: Vec<u16> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        eprintln!(
            "db_e2e/waiters: the free session {} while the 40 waited: {answered_while_waiting}; \
             the waiters then {statuses:?}",
            r.status()
        );
        assert_eq!(r.status(), 200, "the free session is served");
        assert!(
            answered_while_waiting,
            "and answered while the 40 still waited"
        );
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 503),
            "{statuses:?}"
        );
    });
}
