//! The tower layer under axum, over real sockets (ureq): SessionMiddleware's cookie rules,
//! the lost-update probe in both locking modes, fresh reads after a logout, a store that
//! fails, a locked session that holds up no other, a handler that panics, a handle kept
//! after its response.

mod common;

/// Without `--features axum` this suite is not compiled: say so where a plain `cargo test`
/// shows it (`.ci/run` runs it with the feature).
#[cfg(not(feature = "axum"))]
#[test]
fn the_axum_suite_is_not_compiled_without_its_feature() {
    common::skip(
        "tower layer under axum",
        "not compiled (cargo test --features axum --test axum_layer)",
        "FILESESSION_AXUM_TEST",
    );
}

#[cfg(feature = "axum")]
mod through_the_layer {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex as StdMutex};
    use std::time::Duration;

    use axum::Router;
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use filesession::tower::{SessionError, SessionHandle, SessionLayer, json_after_save};
    use filesession::{Session, Settings};
    use tokio::sync::{Notify, oneshot};

    use crate::common::{agent, cookie_value, set_cookies};

    /// What a test's routes share: the handle a handler kept past its response, and the gate
    /// `/hold` waits at.
    #[derive(Clone, Default)]
    struct Shared {
        kept: Arc<StdMutex<Option<SessionHandle>>>,
        gate: Arc<Notify>,
        holding: Arc<Notify>,
    }

    fn describe(session: &Session, body: &mut Vec<u8>) -> serde_json::Result<()> {
        serde_json::to_writer(
            body,
            &serde_json::json!({
                "session_key": session.session_key().map(|k| k.to_string()),
                "data": session.data(),
            }),
        )
    }

    async fn setsession(session: SessionHandle) -> &'static str {
        session.insert("sname", "abc").await.unwrap();
        session.insert("semail", "abc@gmail.com").await.unwrap();
        "session is set"
    }

    async fn getsession(session: SessionHandle) -> Response {
        match (
            session.get("sname").await.unwrap(),
            session.get("semail").await.unwrap(),
        ) {
            (Some(n), Some(e)) => {
                format!("{} {}", n.as_str().unwrap(), e.as_str().unwrap()).into_response()
            }
            _ => (StatusCode::NOT_FOUND, "No session data yet").into_response(),
        }
    }

    async fn api_get(session: SessionHandle) -> Response {
        session.len().await.unwrap();
        json_after_save(StatusCode::OK, describe)
    }

    async fn incr(session: SessionHandle, Path(name): Path<String>) -> Response {
        let n = session.get_as::<i64>(&name).await.unwrap().unwrap_or(0);
        session.insert(name.as_str(), n + 1).await.unwrap();
        json_after_save(StatusCode::OK, describe)
    }

    async fn flush(session: SessionHandle) -> Response {
        session.flush().await.unwrap();
        json_after_save(StatusCode::OK, describe)
    }

    async fn cycle(session: SessionHandle) -> Response {
        session.cycle_key().await.unwrap();
        json_after_save(StatusCode::OK, describe)
    }

    async fn panics(session: SessionHandle) -> &'static str {
        session.insert("never", 1).await.unwrap();
        panic!("a handler that panics");
    }

    /// Sets a key, then keeps its handle for after the response.
    async fn keep(State(shared): State<Shared>, session: SessionHandle) -> &'static str {
        session.insert("kept", 1).await.unwrap();
        *shared.kept.lock().unwrap() = Some(session);
        "kept"
    }

    /// A handler that never touches its session.
    async fn plain() -> &'static str {
        "plain"
    }

    /// Sets a key, then waits for the gate before answering.
    async fn slow_set(State(shared): State<Shared>, session: SessionHandle) -> &'static str {
        session.insert("slow", 1).await.unwrap();
        shared.holding.notify_one();
        shared.gate.notified().await;
        "set"
    }

    /// `set_expiry`: 0 = at browser close, N = N seconds.
    async fn expiry(session: SessionHandle, Path(seconds): Path<u64>) -> &'static str {
        let expiry = match seconds {
            0 => filesession::Expiry::BrowserClose,
            n => filesession::Expiry::Seconds(n),
        };
        session.insert("e", 1).await.unwrap();
        session.set_expiry(expiry).await.unwrap();
        "set"
    }

    /// Touches the session (taking its lock in `request` mode), then waits for the gate.
    async fn hold(State(shared): State<Shared>, session: SessionHandle) -> &'static str {
        session.insert("held", 1).await.unwrap();
        shared.holding.notify_one();
        shared.gate.notified().await;
        "released"
    }

    /// The test app on 127.0.0.1:<free port>, served on one runtime thread; its sessions in
    /// `dir`.
    fn serve(dir: &std::path::Path, env: &[(&str, &str)]) -> (SocketAddr, Shared) {
        serve_on(dir, env, 1)
    }

    /// [`serve`] on a runtime of `workers` threads (1: tokio's current-thread runtime).
    fn serve_on(
        dir: &std::path::Path,
        env: &[(&str, &str)],
        workers: usize,
    ) -> (SocketAddr, Shared) {
        serve_named(dir, env, workers, "axum-layer")
    }

    /// [`serve_on`], the runtime's threads (its blocking ones too) named `name`.
    fn serve_named(
        dir: &std::path::Path,
        env: &[(&str, &str)],
        workers: usize,
        name: &'static str,
    ) -> (SocketAddr, Shared) {
        let files = dir.join("sessions").display().to_string();
        let settings = Settings::from_values(|name| {
            env.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
                .or_else(|| (name == "SESSION_FILE_PATH").then(|| files.clone()))
        })
        .unwrap();
        let layer = SessionLayer::from_settings(settings).unwrap();
        let shared = Shared::default();
        let app = Router::new()
            .route("/setsession/", get(setsession))
            .route("/getsession/", get(getsession))
            .route("/api/session", get(api_get))
            .route("/api/session/incr/{name}", post(incr))
            .route("/api/session/flush", post(flush))
            .route("/api/session/cycle", post(cycle))
            .route("/panic", post(panics))
            .route("/keep", post(keep))
            .route("/hold", post(hold))
            .route("/slow-set", post(slow_set))
            .route("/plain", get(plain))
            .route("/expiry/{seconds}", post(expiry))
            .with_state(shared.clone())
            .layer(layer);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = match workers {
                1 => tokio::runtime::Builder::new_current_thread(),
                n => {
                    let mut builder = tokio::runtime::Builder::new_multi_thread();
                    builder.worker_threads(n);
                    builder
                }
            }
            .enable_all()
            .thread_name(name)
            .build()
            .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        (rx.recv().unwrap(), shared)
    }

    fn url(addr: SocketAddr, path: &str) -> String {
        format!("http://{addr}{path}")
    }

    fn json(r: ureq::http::Response<ureq::Body>) -> serde_json::Value {
        let mut r = r;
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    }

    /// A new session's cookie, as `runserver` sets it.
    fn new_session(addr: SocketAddr) -> String {
        let r = agent().get(url(addr, "/setsession/")).call().unwrap();
        assert_eq!(r.status(), 200);
        let cookies = set_cookies(&r);
        assert_eq!(cookies.len(), 1, "{cookies:?}");
        format!("sessionid={}", cookie_value(&cookies[0]))
    }

    #[test]
    fn the_cookie_rules_are_sessionmiddlewares() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, _) = serve(dir.path(), &[]);
        // A new session: the cookie with Django's attributes, Vary: Cookie, a file on disk.
        let r = agent().get(url(addr, "/setsession/")).call().unwrap();
        assert_eq!(r.status(), 200);
        let set = set_cookies(&r);
        assert_eq!(set.len(), 1);
        for part in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=1209600"] {
            assert!(set[0].contains(part), "{part} in {}", set[0]);
        }
        assert_eq!(r.headers().get("vary").unwrap(), "Cookie");
        let key = cookie_value(&set[0]);
        let file = dir.path().join("sessions").join(format!("{key}.json"));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(r#""sname": "abc""#), "{text}");
        let cookie = format!("sessionid={key}");
        // Read back; a read sets no cookie.
        let mut r = agent()
            .get(url(addr, "/getsession/"))
            .header("Cookie", &cookie)
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(set_cookies(&r).is_empty());
        assert_eq!(r.body_mut().read_to_string().unwrap(), "abc abc@gmail.com");
        // A read without a session creates none.
        let before = std::fs::read_dir(dir.path().join("sessions"))
            .unwrap()
            .count();
        let r = agent().get(url(addr, "/getsession/")).call().unwrap();
        assert_eq!(r.status(), 404);
        assert!(set_cookies(&r).is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("sessions"))
                .unwrap()
                .count(),
            before
        );
        // A malformed cookie and an unknown key are never adopted: a write gets a fresh key.
        for bad in [
            "sessionid=../../etc/passwd".to_owned(),
            format!("sessionid={}", uuid_like()),
        ] {
            let r = agent()
                .post(url(addr, "/api/session/incr/n"))
                .header("Cookie", &bad)
                .send_empty()
                .unwrap();
            assert_eq!(r.status(), 200);
            let set = set_cookies(&r);
            assert_eq!(set.len(), 1, "{set:?}");
            let fresh = cookie_value(&set[0]);
            assert_ne!(format!("sessionid={fresh}"), bad);
            assert_eq!(json(r)["data"]["n"], 1);
        }
        // A malformed cookie on a read is deleted.
        let r = agent()
            .get(url(addr, "/api/session"))
            .header("Cookie", "sessionid=not-a-key")
            .call()
            .unwrap();
        let set = set_cookies(&r);
        assert_eq!(set.len(), 1);
        assert!(
            set[0].starts_with("sessionid=;") && set[0].contains("Max-Age=0"),
            "{set:?}"
        );
        // cycle_key: a new key, the same data, the old file gone; the answer shows the new key.
        let r = agent()
            .post(url(addr, "/api/session/cycle"))
            .header("Cookie", &cookie)
            .send_empty()
            .unwrap();
        let new_key = cookie_value(&set_cookies(&r)[0]);
        assert_ne!(new_key, key);
        let body = json(r);
        assert_eq!(body["session_key"], new_key.as_str());
        assert_eq!(body["data"]["sname"], "abc");
        assert!(!file.exists());
        // flush: the cookie deleted, the file gone.
        let new_cookie = format!("sessionid={new_key}");
        let r = agent()
            .post(url(addr, "/api/session/flush"))
            .header("Cookie", &new_cookie)
            .send_empty()
            .unwrap();
        let set = set_cookies(&r);
        assert!(set[0].starts_with("sessionid=;"), "{set:?}");
        assert!(
            !dir.path()
                .join("sessions")
                .join(format!("{new_key}.json"))
                .exists()
        );
    }

    #[test]
    fn a_session_read_before_the_handler_counts_as_accessed_only_if_the_handler_touched_it() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, _) = serve(dir.path(), &[]);
        let cookie = new_session(addr);
        // Read before the handler (the eager load), never touched by it: as Django's lazy
        // session, no `Vary: Cookie` and no cookie set.
        let r = agent()
            .get(url(addr, "/plain"))
            .header("Cookie", &cookie)
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("vary").is_none(), "{:?}", r.headers());
        assert!(set_cookies(&r).is_empty());
        // Touched: `Vary: Cookie`.
        let r = agent()
            .get(url(addr, "/getsession/"))
            .header("Cookie", &cookie)
            .call()
            .unwrap();
        assert_eq!(r.headers().get("vary").unwrap(), "Cookie");
    }

    #[test]
    fn the_cookie_follows_the_sessions_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, _) = serve(dir.path(), &[]);
        let cookie_after = |path: &str| {
            let r = agent().post(url(addr, path)).send_empty().unwrap();
            assert_eq!(r.status(), 200);
            set_cookies(&r).remove(0)
        };
        // N seconds: Max-Age=N and an Expires date.
        let set = cookie_after("/expiry/60");
        assert!(
            set.contains("Max-Age=60") && set.contains("Expires="),
            "{set}"
        );
        // At browser close: neither, a session cookie.
        let set = cookie_after("/expiry/0");
        assert!(
            !set.contains("Max-Age") && !set.contains("Expires"),
            "{set}"
        );
    }

    /// A canonical key that names no session.
    fn uuid_like() -> String {
        "0b0b0b0b-1c1c-4d4d-8e8e-2f2f2f2f2f2f".to_owned()
    }

    /// 8 clients at once on the session of `cookie`, client `c` posting `each` times to
    /// `path(c)`, every answer 200.
    fn increments_at_once(
        addr: SocketAddr,
        cookie: &str,
        each: usize,
        path: impl Fn(usize) -> String,
    ) {
        let threads: Vec<_> = (0..8)
            .map(|c| {
                let (cookie, url) = (cookie.to_owned(), url(addr, &path(c)));
                std::thread::spawn(move || {
                    let agent = agent();
                    for _ in 0..each {
                        let r = agent
                            .post(&url)
                            .header("Cookie", &cookie)
                            .send_empty()
                            .unwrap();
                        assert_eq!(r.status(), 200);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    /// 8 clients share one session, each incrementing its own key 200 times at once.
    fn lost_update_probe(addr: SocketAddr) -> u64 {
        let cookie = new_session(addr);
        increments_at_once(addr, &cookie, 200, |c| format!("/api/session/incr/k{c}"));
        let r = agent()
            .get(url(addr, "/api/session"))
            .header("Cookie", &cookie)
            .call()
            .unwrap();
        let data = json(r)["data"].clone();
        (0..8)
            .map(|c| data[format!("k{c}")].as_u64().unwrap_or(0))
            .sum()
    }

    #[test]
    fn no_update_is_lost_in_merge_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, _) = serve(dir.path(), &[]);
        assert_eq!(lost_update_probe(addr), 1600);
    }

    #[test]
    fn no_update_is_lost_on_a_runtime_of_several_threads() {
        // Handlers of one session run at once on 4 workers: merge saves keep every change.
        for locking in ["merge", "request"] {
            let dir = tempfile::tempdir().unwrap();
            let (addr, _) = serve_on(dir.path(), &[("SESSION_LOCKING", locking)], 4);
            assert_eq!(lost_update_probe(addr), 1600, "{locking}");
        }
    }

    #[test]
    fn no_update_is_lost_in_request_mode_and_one_shared_counter_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, _) = serve(dir.path(), &[("SESSION_LOCKING", "request")]);
        assert_eq!(lost_update_probe(addr), 1600);
        let cookie = new_session(addr);
        increments_at_once(addr, &cookie, 50, |_| "/api/session/incr/n".to_owned());
        let r = agent()
            .get(url(addr, "/api/session"))
            .header("Cookie", &cookie)
            .call()
            .unwrap();
        assert_eq!(json(r)["data"]["n"], 400);
    }

    #[test]
    fn a_request_after_a_logout_never_sees_the_old_data() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, _) = serve(dir.path(), &[]);
        for _ in 0..20 {
            let cookie = new_session(addr);
            let r = agent()
                .post(url(addr, "/api/session/flush"))
                .header("Cookie", &cookie)
                .send_empty()
                .unwrap();
            assert_eq!(r.status(), 200);
            // Begun after the logout's answer: no data, whatever the old cookie says.
            let r = agent()
                .get(url(addr, "/getsession/"))
                .header("Cookie", &cookie)
                .call()
                .unwrap();
            assert_eq!(r.status(), 404);
        }
    }

    #[test]
    fn a_store_that_fails_answers_5xx_and_keeps_the_cookie() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, _) = serve(dir.path(), &[]);
        let cookie = new_session(addr);
        std::fs::remove_dir_all(dir.path().join("sessions")).unwrap();
        let r = agent()
            .post(url(addr, "/api/session/incr/n"))
            .header("Cookie", &cookie)
            .send_empty()
            .unwrap();
        assert_eq!(r.status(), 500);
        assert!(set_cookies(&r).is_empty(), "the cookie is kept");
        let body = json(r);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("directory was removed"),
            "{body}"
        );
    }

    #[test]
    fn a_request_waiting_for_a_locked_session_holds_up_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, shared) = serve(
            dir.path(),
            &[
                ("SESSION_LOCKING", "request"),
                ("SESSION_LOCK_TIMEOUT", "20"),
            ],
        );
        let locked = new_session(addr);
        let other = new_session(addr);
        // One request holds the session's lock, waiting at the gate (on the runtime thread).
        let holder = {
            let (url, cookie) = (url(addr, "/hold"), locked.clone());
            std::thread::spawn(move || {
                agent()
                    .post(&url)
                    .header("Cookie", &cookie)
                    .send_empty()
                    .unwrap()
                    .status()
            })
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), shared.holding.notified())
                .await
                .expect("the holder took the lock")
        });
        // A second request of that session waits for its lock (off the runtime thread)...
        let (done_tx, mut done_rx) = oneshot::channel();
        let waiter = {
            let (url, cookie) = (url(addr, "/api/session/incr/n"), locked.clone());
            std::thread::spawn(move || {
                let status = agent()
                    .post(&url)
                    .header("Cookie", &cookie)
                    .send_empty()
                    .unwrap()
                    .status();
                let _ = done_tx.send(());
                status
            })
        };
        // ...while another session is read and written, and the cookieless page answered.
        for _ in 0..5 {
            let r = agent()
                .post(url(addr, "/api/session/incr/m"))
                .header("Cookie", &other)
                .send_empty()
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(
                agent()
                    .get(url(addr, "/getsession/"))
                    .call()
                    .unwrap()
                    .status(),
                404
            );
        }
        assert!(
            done_rx.try_recv().is_err(),
            "the waiter still waits: the lock is held"
        );
        shared.gate.notify_one();
        assert_eq!(holder.join().unwrap(), 200);
        assert_eq!(waiter.join().unwrap(), 200);
    }

    #[test]
    fn a_handler_that_panics_answers_500_saves_nothing_and_lets_the_lock_go() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, _) = serve(
            dir.path(),
            &[
                ("SESSION_LOCKING", "request"),
                ("SESSION_LOCK_TIMEOUT", "20"),
            ],
        );
        let cookie = new_session(addr);
        let r = agent()
            .post(url(addr, "/panic"))
            .header("Cookie", &cookie)
            .send_empty()
            .unwrap();
        assert_eq!(r.status(), 500);
        assert!(set_cookies(&r).is_empty());
        // The lock was let go: the next request of the session is answered, not held 20 s
        // (the agent gives up after 10 s).
        let r = agent()
            .get(url(addr, "/api/session"))
            .header("Cookie", &cookie)
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(json(r)["data"].get("never").is_none(), "nothing saved");
    }

    #[test]
    fn a_client_that_goes_away_still_gets_its_save() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, shared) = serve(dir.path(), &[("SESSION_LOCKING", "request")]);
        let cookie = new_session(addr);
        // The client gives up while the handler waits at the gate, and closes its socket.
        let impatient: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(300)))
            .build()
            .into();
        let (url_, cookie_) = (url(addr, "/slow-set"), cookie.clone());
        let gave_up = std::thread::spawn(move || {
            impatient
                .post(&url_)
                .header("Cookie", &cookie_)
                .send_empty()
                .is_err()
        });
        assert!(
            gave_up.join().unwrap(),
            "the client gave up before the answer"
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), shared.holding.notified())
                .await
                .expect("the handler ran")
        });
        shared.gate.notify_one();
        // Its save happened (a guard of 10 s against a hang, not a speed goal), and its lock
        // was let go: the session answers.
        let started = std::time::Instant::now();
        loop {
            let r = agent()
                .get(url(addr, "/api/session"))
                .header("Cookie", &cookie)
                .call()
                .unwrap();
            assert_eq!(r.status(), 200);
            if json(r)["data"]["slow"] == 1 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the save of a request whose client went away never happened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_cookie_of_another_name_with_an_accent_does_not_hide_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, _) = serve(dir.path(), &[]);
        let cookie = new_session(addr);
        // Browsers send every cookie in one header; another site script's UTF-8 value
        // among them must not make the request sessionless (and its cookie replaced).
        let header = format!("pref=José; {cookie}");
        let r = agent()
            .get(url(addr, "/getsession/"))
            .header("Cookie", header.as_str())
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = agent()
            .post(url(addr, "/api/session/incr/n"))
            .header("Cookie", header.as_str())
            .send_empty()
            .unwrap();
        assert_eq!(r.status(), 200);
        let set = set_cookies(&r);
        assert_eq!(
            format!("sessionid={}", cookie_value(&set[0])),
            cookie,
            "the same session"
        );
    }

    /// Threads of this process named `name` now (`/proc/self/task/*/comm`).
    fn threads(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
            })
            .count()
    }

    #[test]
    fn requests_waiting_for_a_lock_take_at_most_max_lock_waits_threads() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let (addr, shared) = serve_named(
            dir.path(),
            &[
                ("SESSION_LOCKING", "request"),
                ("SESSION_LOCK_TIMEOUT", "20"),
            ],
            1,
            "lock-waits",
        );
        let cookie = new_session(addr);
        let holder = {
            let (url, cookie) = (url(addr, "/hold"), cookie.clone());
            std::thread::spawn(move || {
                agent()
                    .post(&url)
                    .header("Cookie", &cookie)
                    .send_empty()
                    .unwrap()
                    .status()
            })
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), shared.holding.notified())
                .await
                .expect("the holder took the lock")
        });
        let before = threads("lock-waits");
        // 60 requests of the locked session from this one thread, answers unread yet.
        let request = format!(
            "POST /api/session/incr/n HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let mut waiting: Vec<std::net::TcpStream> = (0..60)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.write_all(request.as_bytes()).unwrap();
                s
            })
            .collect();
        // Time for every one to reach its wait (a count is asserted, not a time).
        std::thread::sleep(Duration::from_millis(800));
        let grown = threads("lock-waits").saturating_sub(before);
        assert!(
            grown <= filesession::http::MAX_LOCK_WAITS + 2,
            "{grown} more threads for 60 waiters"
        );
        shared.gate.notify_one();
        assert_eq!(holder.join().unwrap(), 200);
        for s in &mut waiting {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
    }

    #[test]
    fn a_handle_kept_after_its_response_refuses_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, shared) = serve(dir.path(), &[]);
        let r = agent().post(url(addr, "/keep")).send_empty().unwrap();
        assert_eq!(r.status(), 200);
        let key = cookie_value(&set_cookies(&r)[0]);
        let kept = shared.kept.lock().unwrap().take().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let refused = runtime.block_on(kept.insert("late", 1));
        assert!(
            matches!(refused, Err(SessionError::Detached)),
            "{refused:?}"
        );
        let r = agent()
            .get(url(addr, "/api/session"))
            .header("Cookie", &format!("sessionid={key}"))
            .call()
            .unwrap();
        let data = json(r)["data"].clone();
        assert_eq!(data["kept"], 1);
        assert!(data.get("late").is_none());
    }

    /// Whether the store these settings name opens (`SKIPPED`, or a failure with
    /// `switch=require`, when not).
    #[cfg(any(feature = "redis", feature = "postgres"))]
    fn store_answers(env: &[(&str, &str)], test: &str, switch: &str) -> bool {
        let settings = Settings::from_values(|name| {
            env.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap();
        match filesession::store::open(&settings) {
            Ok(_) => true,
            Err(e) => {
                crate::common::skip(test, &e.to_string(), switch);
                false
            }
        }
    }

    /// Redis (`--features redis`, the server at `FILESESSION_REDIS_URL`, default
    /// `redis://127.0.0.1:6390/0`): loads, saves and locks over the network, off the runtime.
    #[cfg(feature = "redis")]
    #[test]
    fn no_update_is_lost_on_redis() {
        let url = std::env::var("FILESESSION_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6390/0".to_owned());
        for locking in ["merge", "request"] {
            let env = [
                ("SESSION_ENGINE", "redis"),
                ("SESSION_REDIS_URL", url.as_str()),
                ("SESSION_LOCKING", locking),
            ];
            if !store_answers(&env, "axum layer on redis", "FILESESSION_REDIS_TEST") {
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            let (addr, _) = serve(dir.path(), &env);
            assert_eq!(lost_update_probe(addr), 1600, "{locking}");
        }
    }

    /// PostgreSQL (`--features postgres`, the server at `FILESESSION_POSTGRES_URL`), in a
    /// table of this test's own, dropped after.
    #[cfg(feature = "postgres")]
    #[test]
    fn no_update_is_lost_on_postgresql() {
        let url = std::env::var("FILESESSION_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5439/postgres".to_owned());
        let table = format!("axum_{}", std::process::id());
        for locking in ["merge", "request"] {
            let env = [
                ("SESSION_ENGINE", "db"),
                ("DATABASE_URL", url.as_str()),
                ("SESSION_DB_TABLE", table.as_str()),
                ("SESSION_LOCKING", locking),
            ];
            if !store_answers(&env, "axum layer on postgres", "FILESESSION_POSTGRES_TEST") {
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            let (addr, _) = serve(dir.path(), &env);
            assert_eq!(lost_update_probe(addr), 1600, "{locking}");
        }
        if let Ok(mut pg) = crate::common::Pg::connect(&url) {
            let _ = pg.batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {table}_lock; \
                 DELETE FROM filesession_schema WHERE table_name = '{table}'"
            ));
        }
    }

    #[test]
    fn no_update_is_lost_on_sqlite_whose_loads_and_saves_wait_off_the_runtime() {
        for locking in ["merge", "request"] {
            let dir = tempfile::tempdir().unwrap();
            let db = format!("sqlite:///{}", dir.path().join("db.sqlite3").display());
            let (addr, _) = serve(
                dir.path(),
                &[
                    ("SESSION_ENGINE", "db"),
                    ("DATABASE_URL", db.as_str()),
                    ("SESSION_LOCKING", locking),
                ],
            );
            assert_eq!(lost_update_probe(addr), 1600, "{locking}");
        }
    }
}
