//! The HTTP layer on hyper (issue 11), point by point over raw TCP: 100-continue in order
//! and only for HTTP/1.1, absolute-form, Host, HEAD, 1xx/204/304 framing, chunked bodies;
//! 5 000 idle connections under a soft limit of 1024 descriptors; clients that never read
//! their answers; a graceful stop that writes what was answered.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    RawConnection, RawResponse, TestServer, connect_from, open_descriptors, raise_own_limit,
    raw_request, read_raw_response, rss_kib,
};
use filesession::{
    App, MemoryStore, Method, Request, Response, Router, Server, Session, SessionMiddleware,
    Settings,
};

/// A session holding one value of `size` bytes; its key.
fn big_session(server: &TestServer, size: usize) -> String {
    let body = format!(r#"{{"big": "{}"}}"#, "x".repeat(size));
    let mut conn = RawConnection::open(server.addr);
    let r = conn
        .exchange(&raw_request("POST", "/api/session", None, Some(&body)))
        .expect("create the big session");
    assert_eq!(r.status, 200, "{}", r.show());
    r.session_cookie().expect("a session cookie")
}

/// Everything the server sends until it closes the connection (or `wait` passes).
fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(wait)).expect("timeout");
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    all
}

// ---- 100-continue ----

#[test]
fn continue_comes_after_the_answers_to_earlier_pipelined_requests() {
    let server = TestServer::start(&[("DATA_UPLOAD_MAX_MEMORY_SIZE", "2000000")]);
    let key = big_session(&server, 200_000);
    // 15 large answers owed, then a request that waits for 100 Continue before its body.
    let body = r#"{"after": 1}"#;
    let mut bytes = raw_request("GET", "/api/session", Some(&key), None).repeat(15);
    bytes.extend_from_slice(
        format!(
            "POST /api/session HTTP/1.1\r\nHost: localhost\r\nCookie: sessionid={key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Expect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream.write_all(&bytes).expect("send");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    for i in 0..15 {
        let r = read_raw_response(&mut reader).expect("an earlier answer");
        assert_eq!(
            r.status, 200,
            "answer {i} came before the 100: {}",
            r.status_line
        );
        assert!(r.body.len() > 200_000, "answer {i} whole");
    }
    let continue_ = read_raw_response(&mut reader).expect("the 100");
    assert_eq!(continue_.status, 100, "{}", continue_.show());
    assert_eq!(
        continue_.header("content-length"),
        None,
        "no Content-Length on 1xx"
    );
    stream.write_all(body.as_bytes()).expect("the body");
    let last = read_raw_response(&mut reader).expect("the final answer");
    assert_eq!(last.status, 200, "{}", last.show());
    assert_eq!(server.session_file(&key)["data"]["after"], 1);
}

#[test]
fn no_continue_for_http_1_0() {
    let server = TestServer::start(&[]);
    let body = r#"{"a": 1}"#;
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream
        .write_all(
            format!(
                "POST /api/session HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .expect("send the head");
    // An HTTP/1.0 client does not know 100: nothing comes until the body is sent.
    stream
        .set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    let mut first = [0u8; 64];
    match stream.read(&mut first) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!(
            "something came before the body: {other:?} {:?}",
            String::from_utf8_lossy(&first)
        ),
    }
    stream.write_all(body.as_bytes()).expect("the body");
    let all = read_until_closed(&mut stream, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.0 200 "), "{text}");
    assert!(!text.contains(" 100 "), "{text}");
}

// ---- request targets and Host (RFC 9112 §3.2) ----

#[test]
fn absolute_form_and_asterisk_form_targets_are_accepted() {
    let server = TestServer::start(&[]);
    let mut conn = RawConnection::open(server.addr);
    let r = conn
        .exchange(b"GET http://test/setsession/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("an answer");
    assert_eq!(r.status, 200, "{}", r.show());
    assert!(r.session_cookie().is_some_and(|k| !k.is_empty()));
    let r = conn
        .exchange(b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("an answer");
    assert!(
        matches!(r.status, 404 | 405),
        "OPTIONS * is a request like another: {}",
        r.show()
    );
}

#[test]
fn a_missing_duplicate_or_invalid_host_is_400() {
    let server = TestServer::start(&[]);
    for (what, head) in [
        ("no Host", "GET /setsession/ HTTP/1.1\r\n\r\n"),
        (
            "two Hosts",
            "GET /setsession/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ),
        (
            "Host: a b",
            "GET /setsession/ HTTP/1.1\r\nHost: a b\r\n\r\n",
        ),
    ] {
        let mut conn = RawConnection::open(server.addr);
        let r = conn.exchange(head.as_bytes()).expect("an answer");
        assert_eq!(r.status, 400, "{what}: {}", r.show());
        assert_eq!(r.session_cookie(), None, "{what}: no session");
    }
    assert!(server.session_files().is_empty(), "no request was served");
    // HTTP/1.0 needs no Host.
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream
        .write_all(b"GET /setsession/ HTTP/1.0\r\n\r\n")
        .expect("send");
    let all = read_until_closed(&mut stream, Duration::from_secs(5));
    assert!(
        all.starts_with(b"HTTP/1.0 200 "),
        "{}",
        String::from_utf8_lossy(&all)
    );
}

// ---- framing of answers ----

/// Answers a pipelined `HEAD` error then a `GET` with `Connection: close`, and returns
/// all the bytes the server sent.
fn head_then_get(addr: SocketAddr, head_target: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .write_all(
            format!(
                "HEAD {head_target} HTTP/1.1\r\nHost: localhost\r\n\r\n\
                 GET /getsession/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("send");
    String::from_utf8_lossy(&read_until_closed(&mut stream, Duration::from_secs(5))).into_owned()
}

#[test]
fn answers_to_head_have_no_body_errors_included() {
    let server = TestServer::start(&[]);
    for target in ["/nope/", "/api/session/x"] {
        let all = head_then_get(server.addr, target);
        // The HEAD answer's head, then at once the GET's answer: no body between them.
        let (first, rest) = all.split_once("\r\n\r\n").expect("a whole head");
        assert!(
            first.starts_with("HTTP/1.1 404 ") || first.starts_with("HTTP/1.1 405 "),
            "HEAD {target}: {first}"
        );
        assert!(
            rest.starts_with("HTTP/1.1 404 "),
            "HEAD {target}: a body followed: {rest:?}"
        );
    }
}

fn no_content(_: &Request, _: &mut Session) -> Response {
    Response::new(204).with_body(b"ignored".to_vec())
}

fn not_modified(_: &Request, _: &mut Session) -> Response {
    Response::new(304).with_body(b"ignored".to_vec())
}

fn hello(_: &Request, _: &mut Session) -> Response {
    Response::text(200, "hello")
}

/// A library server with handlers that answer 204 and 304 (with a body they set, which
/// must not be sent); its address, and how to stop it.
fn library_server() -> (SocketAddr, filesession::StopHandle, thread::JoinHandle<()>) {
    let router = Router::new()
        .route(Method::Get, "/no-content/", no_content)
        .route(Method::Get, "/not-modified/", not_modified)
        .route(Method::Get, "/hello/", hello);
    let middleware = SessionMiddleware::new(Arc::new(MemoryStore::new()), Settings::default());
    let server = Server::bind("127.0.0.1:0", App::new(router, middleware)).expect("bind");
    let addr = server.local_addr().expect("address");
    let stop = server.stop_handle();
    let running = thread::spawn(move || server.run().expect("run"));
    (addr, stop, running)
}

#[test]
fn no_content_length_and_no_body_on_204_and_304() {
    let (addr, stop, running) = library_server();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .write_all(
            b"GET /no-content/ HTTP/1.1\r\nHost: localhost\r\n\r\n\
              GET /not-modified/ HTTP/1.1\r\nHost: localhost\r\n\r\n\
              GET /hello/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .expect("send");
    let all = read_until_closed(&mut stream, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&all);
    let answers: Vec<&str> = text.split("HTTP/1.1 ").filter(|a| !a.is_empty()).collect();
    assert_eq!(answers.len(), 3, "{text}");
    for (answer, status) in answers[..2].iter().zip(["204 ", "304 "]) {
        assert!(answer.starts_with(status), "{answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("content-length"),
            "Content-Length on {status}: {answer}"
        );
        assert!(
            answer.ends_with("\r\n\r\n"),
            "a body after {status}: {answer:?}"
        );
    }
    assert!(
        answers[2].starts_with("200 ") && answers[2].ends_with("hello"),
        "{}",
        answers[2]
    );
    stop.stop();
    running.join().expect("stopped");
}

// ---- chunked request bodies (RFC 9112 §7.1) ----

#[test]
fn chunked_request_bodies_are_read_within_the_limit() {
    let server = TestServer::start(&[]);
    let mut conn = RawConnection::open(server.addr);
    let r = conn
        .exchange(
            b"POST /api/session HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n",
        )
        .expect("an answer");
    assert_eq!(r.status, 200, "{}", r.show());
    let key = r.session_cookie().expect("a session");
    assert_eq!(server.session_file(&key)["data"]["a"], 1);

    // 70 000 bytes in 1 000-byte chunks, over the 64 KiB limit: 413 while reading.
    let mut over =
        b"POST /api/session HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                     Transfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..70 {
        over.extend_from_slice(b"3e8\r\n");
        over.extend_from_slice(&[b' '; 1000]);
        over.extend_from_slice(b"\r\n");
    }
    over.extend_from_slice(b"0\r\n\r\n");
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    let _ = stream.write_all(&over); // the server may close before reading it all
    let all = read_until_closed(&mut stream, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert_eq!(
        server.session_files().len(),
        1,
        "nothing stored from the 413"
    );
}

// ---- many connections ----

/// Issue 11: 5 000 idle connections, then a new client served within 1 s, with the server
/// started under a soft limit of 1024 descriptors (it raises its own to the hard limit).
/// The idle ones come from 25 addresses, 200 each, under the per-address cap (256).
#[test]
fn five_thousand_idle_connections_then_a_new_client_is_served_within_a_second() {
    let hard = raise_own_limit();
    assert!(
        hard.is_none_or(|n| n >= 12_000),
        "this test needs a hard limit of open files of 12 000 or more (it is {hard:?}): \
         raise it (ulimit -Hn) to run it"
    );
    let hard = hard.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    let soft_1024 = format!("--nofile=1024:{hard}");
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start_wrapped(dir, &[], &["prlimit", &soft_1024, "--"]);
    assert!(
        !server.banner.contains("up to 1024 open files"),
        "the server raised its soft limit: {}",
        server.banner
    );
    let pid = server.child.id();
    let before = open_descriptors(pid);
    let started = Instant::now();
    let mut idle = Vec::with_capacity(5_000);
    for i in 0..5_000u32 {
        let from = [127, 0, 1, u8::try_from(1 + i / 200).expect("25 addresses")];
        idle.push(connect_from(from, server.addr));
    }
    let opened_in = started.elapsed();
    // The server holds them all (one descriptor each).
    let deadline = Instant::now() + Duration::from_secs(3);
    while open_descriptors(pid) < before + 5_000 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let held = open_descriptors(pid) - before;
    assert!(
        held >= 5_000,
        "the server holds {held} of the 5 000 connections (opened in {opened_in:?})"
    );

    let asked = Instant::now();
    let mut conn = RawConnection::open(server.addr);
    let r = conn
        .exchange(&raw_request("GET", "/setsession/", None, None))
        .expect("an answer");
    let served_in = asked.elapsed();
    assert_eq!(r.status, 200, "{}", r.show());
    assert!(
        served_in < Duration::from_secs(1),
        "a new client waited {served_in:?} beside 5 000 idle connections"
    );
    eprintln!(
        "[http_layer] 5 000 idle connections opened in {opened_in:?}, all held; a new client \
         served in {served_in:?}; server RSS {} KiB",
        rss_kib(pid)
    );
    drop(idle);
}

/// Issue 11: 20 clients each ask for 20 large answers at once and never read. hyper reads
/// a connection's next request only once the previous answer is written, so each holds at
/// most one answer in server memory; others are served meanwhile.
#[test]
fn clients_that_never_read_hold_at_most_one_answer_each() {
    const ANSWER: usize = 500_000;
    let server = TestServer::start(&[("DATA_UPLOAD_MAX_MEMORY_SIZE", "2000000")]);
    let key = big_session(&server, ANSWER);
    let pid = server.child.id();
    // Warm up: one answer read, so allocator pools exist before the baseline.
    let mut warm = RawConnection::open(server.addr);
    let r = warm
        .exchange(&raw_request("GET", "/api/session", Some(&key), None))
        .expect("an answer");
    assert!(r.body.len() > ANSWER);
    let baseline = rss_kib(pid);

    let one = raw_request("GET", "/api/session", Some(&key), None);
    let hogs: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).expect("connect");
            s.set_write_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let _ = s.write_all(&one.repeat(20));
            s
        })
        .collect();
    thread::sleep(Duration::from_secs(2));

    let asked = Instant::now();
    let mut other = RawConnection::open(server.addr);
    let r = other
        .exchange(&raw_request("GET", "/setsession/", None, None))
        .expect("an answer");
    let served_in = asked.elapsed();
    assert_eq!(r.status, 200);
    let grown = rss_kib(pid).saturating_sub(baseline);
    // All 400 answers would be 200 MB; one per client is 10 MB (plus copies in flight).
    assert!(
        grown < 60 * 1024,
        "server memory grew by {grown} KiB with 20 non-reading clients"
    );
    eprintln!(
        "[http_layer] 20 clients x 20 answers of {ANSWER} bytes never read: server RSS +{grown} \
         KiB; another client served in {served_in:?}"
    );
    drop(hogs);
}

// ---- graceful stop ----

/// SIGTERM while a large answer is still being written to a slow reader: the answer is
/// written whole, then the connection closes and the process exits 0.
#[test]
fn sigterm_finishes_writing_the_answers_already_produced() {
    const ANSWER: usize = 900_000;
    let mut server = TestServer::start(&[("DATA_UPLOAD_MAX_MEMORY_SIZE", "2000000")]);
    let key = big_session(&server, ANSWER);
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream
        .write_all(&raw_request("GET", "/api/session", Some(&key), None))
        .expect("send");
    thread::sleep(Duration::from_millis(300)); // answered; most of it waits in the server
    let pid = server.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    thread::sleep(Duration::from_millis(300));
    // Stopping: the listener is closed, so a new client is refused at once, not left
    // waiting in a queue no one accepts from.
    let tried = Instant::now();
    match TcpStream::connect(server.addr) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(mut late) => {
            let _ = late.write_all(&raw_request("GET", "/getsession/", None, None));
            let got = read_until_closed(&mut late, Duration::from_secs(3));
            assert!(
                got.is_empty(),
                "a stopping server answered a new connection"
            );
            assert!(
                tried.elapsed() < Duration::from_secs(2),
                "left waiting {:?}",
                tried.elapsed()
            );
        }
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut reader = BufReader::new(stream);
    let r: RawResponse = read_raw_response(&mut reader).expect("the whole answer");
    assert_eq!(r.status, 200);
    assert!(r.body.len() > ANSWER, "{} bytes", r.body.len());
    let mut rest = Vec::new();
    assert_eq!(
        reader.read_to_end(&mut rest).expect("closed"),
        0,
        "then closed"
    );
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = server.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(started.elapsed() < Duration::from_secs(12), "still running");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit}");
}

/// Waits for a session locked by another process run on at most
/// `filesession::http::MAX_BLOCKING_THREADS` (64) threads, and each wait's deadline is set
/// when its request is read: 300 requests for a session locked for longer than
/// `SESSION_LOCK_TIMEOUT` (1 s) are all answered 503 at about 1 s, none held for the 5
/// rounds of 64 waits a queued deadline would take.
#[test]
fn queued_lock_waits_keep_their_deadline() {
    let server = TestServer::start(&[
        ("SESSION_LOCKING", "request"),
        ("SESSION_LOCK_TIMEOUT", "1"),
    ]);
    let mut conn = RawConnection::open(server.addr);
    let created = conn
        .exchange(&raw_request("GET", "/setsession/", None, None))
        .expect("an answer");
    let key = created.session_cookie().expect("a session");
    let file = std::fs::File::open(server.sessions().join(format!("{key}.json"))).expect("open");
    fs2::FileExt::lock_exclusive(&file).expect("lock it, as another process would");

    let started = Instant::now();
    let request = raw_request("GET", "/getsession/", Some(&key), None);
    let waiting: Vec<TcpStream> = (0..300u32)
        .map(|i| {
            let mut s = connect_from(
                [127, 0, 3, u8::try_from(1 + i / 150).expect("2")],
                server.addr,
            );
            s.write_all(&request).expect("send");
            s
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for s in waiting {
        let mut reader = BufReader::new(s);
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let r = read_raw_response(&mut reader).expect("an answer");
        assert_eq!(r.status, 503, "{}", r.show());
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(2_500),
        "the last 503 came after {slowest:?}: waits queued past their deadline"
    );
    eprintln!("[http_layer] 300 waits for a locked session: all 503, the last after {slowest:?}");
    drop(file);
}
