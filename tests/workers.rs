//! `runserver --workers N`: N worker processes on one port under a supervisor that replaces
//! a dead one at once, and stops them all on SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, agent, cookie_value, set_cookies};

fn workers_of(server: &TestServer) -> Vec<u32> {
    let out = std::process::Command::new("pgrep")
        .args(["-P", &server.child.id().to_string()])
        .output()
        .expect("pgrep (procps)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn kill(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A request on a new connection (a pooled one could belong to a killed worker).
fn get_fresh(url: &str, cookie: &str) -> (u16, String) {
    let mut r = agent().get(url).header("Cookie", cookie).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

#[test]
fn workers_share_the_port_and_a_killed_one_is_replaced_within_a_second() {
    let server = TestServer::start(&[("SESSION_WORKERS", "2")]);
    let first = workers_of(&server);
    assert_eq!(first.len(), 2, "{first:?}");

    let r = agent().get(server.url("/setsession/")).call().unwrap();
    let cookie = format!("sessionid={}", cookie_value(&set_cookies(&r)[0]));
    for _ in 0..10 {
        assert_eq!(
            get_fresh(&server.url("/getsession/"), &cookie),
            (200, "abc abc@gmail.com".into())
        );
    }

    // Load from a client thread the whole time: a new connection per request.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, url, cookie) = (stop.clone(), server.url("/getsession/"), cookie.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match agent().get(&url).header("Cookie", &cookie).call() {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    kill(first[0], "-KILL");
    let killed = Instant::now();
    let replaced = loop {
        let now = workers_of(&server);
        if now.len() == 2 && !now.contains(&first[0]) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "not replaced: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        replaced < Duration::from_secs(1),
        "replaced after {replaced:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.join().unwrap();
    // Only requests caught on the killed worker's own connections can fail.
    assert!(ok > 50, "the load went on: {ok} served");
    assert!(
        failed <= 8,
        "{failed} requests failed under load ({ok} served)"
    );
    // Clients notice nothing: every new request is served.
    for _ in 0..20 {
        assert_eq!(
            get_fresh(&server.url("/getsession/"), &cookie),
            (200, "abc abc@gmail.com".into())
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log();
    assert!(
        log.contains(&format!("worker {} exited", first[0])),
        "the supervisor logs the death: {log}"
    );
    eprintln!(
        "workers: a worker SIGKILLed under load was replaced in {replaced:?}; \
         the load got {ok} answers and {failed} failures; 20 requests after it all 200"
    );
}

#[test]
fn sigterm_stops_the_supervisor_and_every_worker() {
    let mut server = TestServer::start(&[("SESSION_WORKERS", "3")]);
    let workers = workers_of(&server);
    assert_eq!(workers.len(), 3);
    assert_eq!(
        agent()
            .get(server.url("/setsession/"))
            .call()
            .unwrap()
            .status(),
        200
    );
    kill(server.child.id(), "-TERM");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    for pid in workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} is still running"
        );
    }
}

#[test]
fn a_bad_sessions_path_is_refused_before_any_worker_starts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "x").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_filesession"))
        .args(["runserver", "127.0.0.1:0", "--workers", "2"])
        .current_dir(dir.path())
        .env("SESSION_FILE_PATH", "file")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("session directory"));
}
