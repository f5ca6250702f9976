//! Many machines, simulated: servers with different sessions directories sharing one Redis
//! (`SESSION_ENGINE=redis`), and Redis stopped and restarted under them. Needs
//! `--features redis` and `redis-server` on the PATH; `.ci/run` runs it with
//! `FILESESSION_REDIS_TEST=require`, which turns a missing Redis into a failure.

mod common;

/// Without `--features redis` this suite is not compiled: say so where a plain `cargo test`
/// shows it (`.ci/run` runs it with the feature).
#[cfg(not(feature = "redis"))]
#[test]
fn the_redis_suite_is_not_compiled_without_its_feature() {
    common::skip(
        "redis end-to-end",
        "not compiled (cargo test --features redis --test redis_e2e, with redis-server \
         installed)",
        "FILESESSION_REDIS_TEST",
    );
}

#[cfg(feature = "redis")]
use std::net::TcpListener;
#[cfg(feature = "redis")]
use std::process::{Child, Command, Stdio};
#[cfg(feature = "redis")]
use std::time::{Duration, Instant};

#[cfg(feature = "redis")]
use common::{
    TestServer, agent, cookie_value, request_counter_is_exact, set_cookies,
    two_servers_share_sessions,
};
#[cfg(feature = "redis")]
use filesession::{
    ChangeSet, Locking, RedisStore, Session, SessionConfig, SessionStore, StoreError,
};

/// A redis-server of this test's own, on a free port, killed on drop.
#[cfg(feature = "redis")]
struct Redis {
    child: Child,
    port: u16,
}

#[cfg(feature = "redis")]
impl Redis {
    fn start_on(port: u16) -> Option<Redis> {
        Self::spawn(port, &["--save", "", "--appendonly", "no"])
    }

    /// A Redis that keeps every acknowledged write (`appendfsync always`) in `dir`.
    fn start_durable(port: u16, dir: &std::path::Path) -> Option<Redis> {
        let dir = dir.to_str()?;
        Self::spawn(
            port,
            &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                dir,
            ],
        )
    }

    /// `redis-server` on `port` with `args`, once it accepts connections.
    fn spawn(port: u16, args: &[&str]) -> Option<Redis> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Redis { child, port };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(5) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(redis)
    }

    fn start() -> Option<Redis> {
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        Self::start_on(port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

#[cfg(feature = "redis")]
impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(feature = "redis")]
fn redis_or_skip() -> Option<Redis> {
    let redis = Redis::start();
    if redis.is_none() {
        common::skip(
            "redis end-to-end",
            "redis-server could not start (apt-get install redis-server)",
            "FILESESSION_REDIS_TEST",
        );
    }
    redis
}

#[cfg(feature = "redis")]
fn server_on(redis: &Redis) -> TestServer {
    TestServer::start(&[
        ("SESSION_ENGINE", "redis"),
        ("SESSION_REDIS_URL", &redis.url()),
    ])
}

#[cfg(feature = "redis")]
#[test]
fn a_session_travels_between_servers_that_share_redis() {
    let Some(redis) = redis_or_skip() else { return };
    let a = server_on(&redis);
    let b = server_on(&redis);
    two_servers_share_sessions(&a, &b);
    assert!(
        a.session_files().is_empty() && b.session_files().is_empty(),
        "no files: Redis"
    );
}

#[cfg(feature = "redis")]
#[test]
fn redis_down_answers_503_and_service_resumes_when_it_is_back() {
    let Some(redis) = redis_or_skip() else { return };
    let port = redis.port;
    let server = server_on(&redis);
    let r = agent().get(server.url("/setsession/")).call().unwrap();
    let cookie = format!("sessionid={}", cookie_value(&set_cookies(&r)[0]));
    // Load the whole time; every answer is 200 or 503, never a 500 or a hang.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, url) = (stop.clone(), server.url("/setsession/"));
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let status = agent().get(&url).call().unwrap().status().as_u16();
                *seen.entry(status).or_insert(0u32) += 1;
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    drop(redis); // Redis stops
    // A load that fails is an error, never "no session": 503, and the cookie is kept.
    for path in ["/setsession/", "/getsession/", "/api/session"] {
        let r = agent()
            .get(server.url(path))
            .header("Cookie", &cookie)
            .call()
            .unwrap();
        assert_eq!(r.status(), 503, "{path} with Redis down");
        assert!(set_cookies(&r).is_empty(), "{path}: {:?}", set_cookies(&r));
        assert_eq!(
            r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
            Some("1")
        );
    }
    // Redis is back (empty: its data was not persisted), and so is the service.
    let _redis = Redis::start_on(port).expect("restart redis");
    let started = Instant::now();
    loop {
        let r = agent().get(server.url("/setsession/")).call().unwrap();
        if r.status() == 200 {
            assert_eq!(set_cookies(&r).len(), 1);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no recovery: {}",
            r.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = load.join().unwrap();
    assert!(seen.keys().all(|s| *s == 200 || *s == 503), "{seen:?}");
    assert!(
        seen.get(&200).is_some_and(|n| *n > 10) && seen.contains_key(&503),
        "{seen:?}"
    );
    eprintln!("redis down and back under load: statuses {seen:?}");
}

#[cfg(feature = "redis")]
#[test]
fn clearsessions_says_redis_has_nothing_to_clear() {
    let out = Command::new(env!("CARGO_BIN_EXE_filesession"))
        .arg("clearsessions")
        .env("SESSION_ENGINE", "redis")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to clear"));
}

#[cfg(feature = "redis")]
#[test]
fn request_locking_keeps_a_counter_exact_across_servers() {
    let Some(redis) = redis_or_skip() else { return };
    let url = redis.url();
    let env = [
        ("SESSION_ENGINE", "redis"),
        ("SESSION_REDIS_URL", url.as_str()),
        ("SESSION_LOCKING", "request"),
    ];
    request_counter_is_exact(&TestServer::start(&env), &TestServer::start(&env));
}

#[cfg(feature = "redis")]
fn request_store(redis: &Redis, lock_timeout: Duration) -> std::sync::Arc<dyn SessionStore> {
    std::sync::Arc::new(
        RedisStore::open(&redis.url())
            .unwrap()
            .with_locking(Locking::Request)
            .with_lock_timeout(lock_timeout),
    )
}

/// A request lock's lease is short (the lock timeout plus a second: what a holder that dies
/// on another machine blocks its session for) and renewed while its holder lives, so a slow
/// request keeps it past the lease; a save whose lock was taken over anyway writes nothing.
#[cfg(feature = "redis")]
#[test]
fn a_redis_request_lock_is_renewed_while_held_and_a_lost_one_writes_nothing() {
    let Some(redis) = redis_or_skip() else { return };
    // Lease: 200 ms + 1 s.
    let store = request_store(&redis, Duration::from_millis(200));
    let mut s = Session::new(store.clone(), None, SessionConfig::default());
    s.insert("n", 1);
    s.save().unwrap();
    let key = *s.session_key().unwrap();
    let held = store.load(&key).unwrap().expect("there");
    std::thread::sleep(Duration::from_millis(2_500)); // two leases
    let other = request_store(&redis, Duration::from_millis(100));
    let err = other.load(&key).unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err}");

    // Taken over behind its back (as if renewals had failed): the save writes nothing.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("SET")
        .arg(format!("filesession:lock:{key}"))
        .arg("someone else")
        .query::<()>(&mut conn)
        .unwrap();
    let mut changes = ChangeSet::new(Duration::from_secs(60));
    changes.set("n", 2.into());
    let err = store.save(&key, &changes, held.lock).unwrap_err();
    assert!(matches!(err, StoreError::LockTimeout { .. }), "{err}");
    let n: Option<String> = redis::cmd("HGET")
        .arg(format!("filesession:{key}"))
        .arg("n")
        .query(&mut conn)
        .unwrap();
    assert_eq!(n.as_deref(), Some("1"), "nothing written");
}

/// The child of `a_holder_killed_mid_request_frees_its_redis_session_at_once`: takes the
/// session's request lock, says so, and waits to be killed.
#[cfg(feature = "redis")]
#[test]
#[ignore = "run as a child process by the test below"]
fn child_holds_a_redis_request_lock() {
    let (Ok(url), Ok(key)) = (
        std::env::var("FILESESSION_CHILD_REDIS"),
        std::env::var("FILESESSION_CHILD_KEY"),
    ) else {
        return;
    };
    let store = std::sync::Arc::new(
        RedisStore::open(&url)
            .unwrap()
            .with_locking(Locking::Request)
            .with_lock_timeout(Duration::from_secs(20)),
    );
    let key = filesession::SessionKey::parse(&key).unwrap();
    let loaded = store.load(&key).unwrap().expect("there");
    assert!(loaded.lock.is_some());
    println!("locked");
    std::thread::sleep(Duration::from_secs(60));
    drop(loaded);
}

/// kill -9 of a process holding a session's request lock frees it at once for the others on
/// the same machine (its token names the holder, which a waiter finds dead), though its
/// lease would run 21 s: the next request, waiting at most 3 s, gets the lock.
#[cfg(feature = "redis")]
#[test]
fn a_holder_killed_mid_request_frees_its_redis_session_at_once() {
    use std::io::BufRead;
    let Some(redis) = redis_or_skip() else { return };
    let store = request_store(&redis, Duration::from_secs(3));
    let mut s = Session::new(store.clone(), None, SessionConfig::default());
    s.insert("base", true);
    s.save().unwrap();
    let key = *s.session_key().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_holds_a_redis_request_lock"])
        .args(["--nocapture", "--test-threads=1"])
        .env("FILESESSION_CHILD_REDIS", redis.url())
        .env("FILESESSION_CHILD_KEY", key.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let locked = std::io::BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|line| line.ends_with("locked"));
    assert!(locked, "the child took the lock");
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    let loaded = store.load(&key);
    eprintln!(
        "redis_e2e/killed-holder: {:?} after {:?}",
        loaded.as_ref().map(|l| l.is_some()),
        killed.elapsed()
    );
    let loaded = loaded.expect("taken within the 3 s lock timeout, not after the 21 s lease");
    assert!(loaded.is_some_and(|l| l.lock.is_some()));
}

/// Redis 5 ms away each way (a proxy that delays every chunk): 8 clients writing 8 sessions
/// overlap their round trips (issue 23: one connection behind a mutex, on the server's one
/// thread, let one store request out at a time), and the cookieless page, which needs no
/// store, is served meanwhile.
#[cfg(feature = "redis")]
#[test]
fn requests_to_a_distant_redis_overlap_and_hold_up_nothing_else() {
    let Some(redis) = redis_or_skip() else { return };
    let upstream = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    let proxy = common::DelayProxy::start(upstream, Duration::from_millis(5));
    let server = TestServer::start(&[
        ("SESSION_ENGINE", "redis"),
        ("SESSION_REDIS_URL", &format!("redis://{}/0", proxy.addr)),
    ]);
    common::requests_overlap_through(&server, &proxy, "redis_e2e/distant");
}

/// `cached_db` (SQLite behind, this Redis in front) when its cache goes away: reads are
/// served from the database (fresh), writes answer 503 and keep the cookie (a write the
/// cache could not be told of could leave an older copy there), and once Redis is back
/// writes go on and every read shows the last write.
#[cfg(all(feature = "redis", feature = "sqlite"))]
#[test]
fn cached_db_serves_reads_from_the_database_while_its_cache_is_down() {
    let Some(redis) = redis_or_skip() else { return };
    let port = redis.port;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:///{}", dir.path().join("db.sqlite3").display());
    let server = TestServer::start_in(
        dir,
        &[
            ("SESSION_ENGINE", "cached_db"),
            ("DATABASE_URL", &db),
            ("SESSION_REDIS_URL", &redis.url()),
        ],
    );
    assert!(
        server.banner.contains("cached in Redis"),
        "{}",
        server.banner
    );
    let a = agent();
    let post = |json: &str| {
        a.post(server.url("/api/session"))
            .header("Content-Type", "application/json")
            .send(json)
            .unwrap()
    };
    let read = || -> serde_json::Value {
        let mut r = a.get(server.url("/api/session")).call().unwrap();
        assert_eq!(r.status(), 200);
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    };
    assert_eq!(post(r#"{"n": 1}"#).status(), 200);
    assert_eq!(read()["data"]["n"], 1, "read, and now cached");
    assert_eq!(post(r#"{"n": 2}"#).status(), 200);
    assert_eq!(read()["data"]["n"], 2, "the write dropped the cached copy");

    drop(redis);
    assert_eq!(
        read()["data"]["n"],
        2,
        "from the database while the cache is down"
    );
    let r = post(r#"{"n": 3}"#);
    assert_eq!(r.status(), 503, "a write the cache cannot be told of");
    assert!(set_cookies(&r).is_empty(), "the cookie is kept");
    assert_eq!(read()["data"]["n"], 2, "nothing was written");

    let _redis = Redis::start_on(port).expect("restart redis");
    let started = Instant::now();
    while post(r#"{"n": 4}"#).status() != 200 {
        assert!(started.elapsed() < Duration::from_secs(10), "no recovery");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(read()["data"]["n"], 4);
    assert_eq!(read()["data"]["n"], 4, "and from the cache");
}

/// The race the cache's write counter exists for, made to happen: server A's cache is
/// 150 ms away each way (a delaying proxy), so between A's read of the database and its
/// filling of the cache, server B writes the session. A's older copy must not land in the cache: B's
/// next read, from the cache, shows B's write.
#[cfg(all(feature = "redis", feature = "sqlite"))]
#[test]
fn cached_db_never_caches_a_copy_read_before_a_write() {
    cached_db_race(false);
}

/// The same race, with the cache's token for the session gone between the read and the
/// write (its TTL, a Redis restart, an eviction: here a DEL): a counter that starts again
/// from nothing could match the value the read noted; a random token never does.
#[cfg(all(feature = "redis", feature = "sqlite"))]
#[test]
fn cached_db_never_caches_a_copy_read_before_a_write_even_when_its_token_vanished() {
    cached_db_race(true);
}

#[cfg(all(feature = "redis", feature = "sqlite"))]
fn cached_db_race(vanish: bool) {
    let Some(redis) = redis_or_skip() else { return };
    let upstream = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    let proxy = common::DelayProxy::start(upstream, Duration::from_millis(150));
    let db_dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:///{}", db_dir.path().join("db.sqlite3").display());
    let start = |redis_url: &str| {
        TestServer::start(&[
            ("SESSION_ENGINE", "cached_db"),
            ("DATABASE_URL", &db),
            ("SESSION_REDIS_URL", redis_url),
        ])
    };
    let (a, b) = (
        start(&format!("redis://{}/0", proxy.addr)),
        start(&redis.url()),
    );
    let r = agent()
        .post(b.url("/api/session"))
        .header("Content-Type", "application/json")
        .send(r#"{"n": 1}"#)
        .unwrap();
    let cookie = format!("sessionid={}", cookie_value(&set_cookies(&r)[0]));
    let read = |server: &TestServer| -> serde_json::Value {
        let mut r = agent()
            .get(server.url("/api/session"))
            .header("Cookie", &cookie)
            .call()
            .unwrap();
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    };
    // Redis learns every script now (a script's first use takes more round trips), and
    // the cache is left empty: B reads (and fills), then writes (and empties).
    assert_eq!(read(&b)["data"]["n"], 1);
    assert_eq!(read(&a)["data"]["n"], 1);
    let r = agent()
        .post(b.url("/api/session"))
        .header("Content-Type", "application/json")
        .header("Cookie", &cookie)
        .send(r#"{"m": 1}"#)
        .unwrap();
    assert_eq!(r.status(), 200);
    std::thread::scope(|scope| {
        // A: the cache misses (its answer comes at ~300 ms), A reads n = 1 from the
        // database, and its fill reaches Redis at ~450 ms.
        let slow = scope.spawn(|| read(&a));
        std::thread::sleep(Duration::from_millis(375));
        if vanish {
            let mut conn = redis::Client::open(redis.url())
                .unwrap()
                .get_connection()
                .unwrap();
            let key = cookie.trim_start_matches("sessionid=");
            redis::cmd("DEL")
                .arg(format!("filesession:cache-gen:{key}"))
                .query::<i64>(&mut conn)
                .unwrap();
        }
        // B writes n = 2 meanwhile, through the cache at once.
        let r = agent()
            .post(b.url("/api/session"))
            .header("Content-Type", "application/json")
            .header("Cookie", &cookie)
            .send(r#"{"n": 2}"#)
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            slow.join().unwrap()["data"]["n"],
            1,
            "A read before the write"
        );
    });
    std::thread::sleep(Duration::from_millis(500)); // A's fill has reached Redis
    assert_eq!(read(&b)["data"]["n"], 2, "no older copy in the cache");
    assert_eq!(read(&b)["data"]["n"], 2);
}

/// Redis killed (SIGKILL) and restarted under writes, with `appendfsync always` (Redis's own
/// durability setting: without it Redis itself may lose the last writes): every write
/// answered 200 is there afterwards, the others answered 503 with no cookie, and service
/// is back at once.
#[cfg(feature = "redis")]
#[test]
fn redis_killed_under_writes_loses_no_acknowledged_write() {
    let Some(probe) = redis_or_skip() else { return };
    let port = probe.port;
    drop(probe);
    let dir = tempfile::tempdir().unwrap();
    let Some(redis) = Redis::start_durable(port, dir.path()) else {
        panic!("redis-server with appendonly could not start");
    };
    let server = server_on(&redis);
    let writers = common::OutageWriters::start(&server);
    std::thread::sleep(Duration::from_millis(400));
    drop(redis); // SIGKILL
    // Down longer than a request waits for a connection (2 s, then 503): a request that
    // finds Redis gone between two commands waits in the pool, and would otherwise be
    // answered 200 once Redis is back, so that no 503 would show the outage.
    std::thread::sleep(Duration::from_millis(2_500));
    let back = Instant::now();
    let _redis = Redis::start_durable(port, dir.path()).expect("restart redis");
    // Service back: the first 200 after Redis's return.
    let first_ok = common::OutageWriters::first_ok_after(&server, back);
    std::thread::sleep(Duration::from_millis(300));
    let common::OutageWrites {
        acked: acked_all,
        refused: refused_all,
        lost,
    } = writers.finish(&server);
    eprintln!(
        "redis_e2e/killed-under-writes: {acked_all} writes answered 200, {refused_all} 503 while \
         Redis was down, {} lost; service back {first_ok:?} after Redis's return",
        lost.len()
    );
    assert!(refused_all > 0, "Redis was down for a while");
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(first_ok < Duration::from_secs(5), "{first_ok:?}");
}
