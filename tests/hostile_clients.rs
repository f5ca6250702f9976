//! Hostile clients, spoken to in literal HTTP bytes over raw TCP sockets: stalls,
//! trickles, oversized heads and bodies, hundreds of idle connections, invalid UTF-8,
//! request smuggling, CR/LF injection, forged session cookies and pipelining.
//!
//! Each test proves two things: the hostile client gets the answer the HTTP layer
//! promises (read from the raw socket), and meanwhile the single handler thread keeps
//! serving a normal client (`/setsession/` then `/getsession/` within 5 s) and the process
//! stays alive.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::TestServer;

/// How long the normal client may take while a hostile one is at work.
const NORMAL_CLIENT_BUDGET: Duration = Duration::from_secs(5);
/// Socket timeout when a 408 (10 s head or body deadline) is expected.
const TIMEOUT_408_WAIT: Duration = Duration::from_secs(12);
/// Socket timeout when an answer is expected right away.
const QUICK: Duration = Duration::from_secs(5);

/// A response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status_line: String,
    status: u16,
    /// Header lines as sent, without the CRLF.
    header_lines: Vec<String>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.header_lines.iter().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Opens a raw connection to the server.
fn connect(server: &TestServer) -> TcpStream {
    let stream = TcpStream::connect(server.addr).expect("connect to the server");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Opens a connection and writes `bytes` to it in one write.
fn send_raw(server: &TestServer, bytes: &[u8]) -> TcpStream {
    let mut stream = connect(server);
    stream.write_all(bytes).expect("write the request");
    stream
}

/// Reads one whole response (head, then a Content-Length body) with `timeout` per read.
fn read_response(reader: &mut BufReader<TcpStream>, timeout: Duration) -> io::Result<RawResponse> {
    reader.get_ref().set_read_timeout(Some(timeout))?;
    let mut line = Vec::new();
    let read_line = |reader: &mut BufReader<TcpStream>, line: &mut Vec<u8>| -> io::Result<String> {
        line.clear();
        let n = reader.read_until(b'\n', line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a whole response head",
            ));
        }
        let text = String::from_utf8_lossy(line);
        Ok(text.trim_end_matches(['\r', '\n']).to_owned())
    };
    let status_line = read_line(reader, &mut line)?;
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not an HTTP status line: {status_line:?}"),
            )
        })?;
    let mut header_lines = Vec::new();
    loop {
        let header = read_line(reader, &mut line)?;
        if header.is_empty() {
            break;
        }
        header_lines.push(header);
    }
    let mut response = RawResponse {
        status_line,
        status,
        header_lines,
        body: Vec::new(),
    };
    let length: usize = response
        .header("content-length")
        .map(|v| v.parse().expect("numeric Content-Length"))
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    response.body = body;
    Ok(response)
}

/// Reads one response on a fresh reader over `stream`.
fn read_one(stream: &TcpStream, timeout: Duration) -> RawResponse {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the socket"));
    read_response(&mut reader, timeout).expect("a response")
}

/// Whether the server closed the connection with nothing more to say (EOF or a reset)
/// within `timeout`. Panics if it sends more bytes.
fn closed_by_server(reader: &mut BufReader<TcpStream>, timeout: Duration) -> bool {
    reader.get_ref().set_read_timeout(Some(timeout)).unwrap();
    let mut rest = Vec::new();
    match reader.read_to_end(&mut rest) {
        Ok(_) => {
            assert!(
                rest.is_empty(),
                "unexpected bytes after the response: {:?}",
                String::from_utf8_lossy(&rest)
            );
            true
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
            assert!(
                rest.is_empty(),
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&rest)
            );
            true
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            assert!(
                rest.is_empty(),
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&rest)
            );
            false
        }
        Err(e) => panic!("reading after the response: {e}"),
    }
}

/// Sends `bytes` on a new connection; returns the one response and checks the server then
/// closes the connection.
fn exchange_and_close(server: &TestServer, bytes: &[u8]) -> RawResponse {
    let stream = send_raw(server, bytes);
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, QUICK).expect("a response");
    assert!(
        closed_by_server(&mut reader, QUICK),
        "the connection stays open after {}",
        response.status_line
    );
    response
}

/// The normal client: `/setsession/` then `/getsession/` with a cookie jar, within the
/// budget, and the process alive. Returns how long it took.
fn normal_client_is_served(server: &mut TestServer, during: &str) -> Duration {
    let started = Instant::now();
    let agent = common::agent();
    let mut set = agent
        .get(&server.url("/setsession/"))
        .call()
        .unwrap_or_else(|e| panic!("{during}: GET /setsession/ failed: {e}"));
    assert_eq!(set.status(), 200, "{during}: GET /setsession/");
    assert_eq!(
        set.body_mut().read_to_string().expect("body"),
        "session is set",
        "{during}"
    );
    let mut get = agent
        .get(&server.url("/getsession/"))
        .call()
        .unwrap_or_else(|e| panic!("{during}: GET /getsession/ failed: {e}"));
    assert_eq!(get.status(), 200, "{during}: GET /getsession/");
    assert_eq!(
        get.body_mut().read_to_string().expect("body"),
        "abc abc@gmail.com",
        "{during}"
    );
    let took = started.elapsed();
    assert!(
        took < NORMAL_CLIENT_BUDGET,
        "{during}: the normal client took {took:?}"
    );
    assert!(server.is_alive(), "{during}: the server died");
    eprintln!("[{during}] normal client served in {took:?}");
    took
}

/// The access-log lines naming `request_line` (e.g. `GET /setsession/ HTTP/1.1`).
fn log_lines_with(server: &TestServer, request_line: &str) -> usize {
    let needle = format!("\"{request_line}\"");
    server.log().lines().filter(|l| l.contains(&needle)).count()
}

/// Waits (up to 2 s) for the access log to name `request_line` `n` times, then a little
/// more to catch extra lines.
fn wait_for_log_count(server: &TestServer, request_line: &str, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    while log_lines_with(server, request_line) < n && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(200));
    log_lines_with(server, request_line)
}

// ---------------------------------------------------------------------------------------
// 1-3: slow clients
// ---------------------------------------------------------------------------------------

#[test]
fn stalled_headers_do_not_block_other_clients() {
    let mut server = TestServer::start(&[]);
    let stalled = send_raw(&server, b"GET / HTTP/1.1\r\nHost: localhost\r\n");
    let first_byte = Instant::now();

    normal_client_is_served(&mut server, "stalled headers");

    let mut reader = BufReader::new(stalled);
    let response = read_response(&mut reader, TIMEOUT_408_WAIT).expect("a 408");
    let waited = first_byte.elapsed();
    assert_eq!(response.status, 408, "{}", response.status_line);
    assert!(response.status_line.starts_with("HTTP/1.1 408"));
    assert!(
        waited >= Duration::from_secs(9) && waited <= Duration::from_secs(12),
        "the 408 came after {waited:?}, not after the 10 s head deadline"
    );
    assert!(closed_by_server(&mut reader, QUICK), "closed after the 408");
    eprintln!("[stalled headers] 408 after {waited:?}");
    assert!(server.is_alive());
}

/// The idle wait (5 s to a request's first byte) and the head deadline (10 s from that
/// byte) are two clocks: a head begun after 4 s of idling still has its whole 10 s, and a
/// connection that never sends a byte is closed after 5 s without an answer.
#[test]
fn idle_wait_and_head_deadline_are_separate_clocks() {
    let server = TestServer::start(&[]);
    let silent = connect(&server);
    let late = connect(&server);
    let connected = Instant::now();
    thread::sleep(Duration::from_secs(4));
    (&late)
        .write_all(b"GET /getsession/ HTTP/1.1\r\nHost: localhost\r\n")
        .expect("send half a head");
    let first_byte = Instant::now();

    // The silent one: closed at the idle deadline, no answer.
    let mut reader = BufReader::new(silent);
    let mut got = Vec::new();
    reader
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let read = reader.read_to_end(&mut got);
    let idle_for = connected.elapsed();
    assert!(read.is_ok(), "closed, not timed out: {read:?}");
    assert!(
        got.is_empty(),
        "no answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        idle_for >= Duration::from_millis(4500) && idle_for <= Duration::from_secs(8),
        "closed after {idle_for:?}, not at the 5 s idle deadline"
    );

    // The late one: still open after the idle deadline, 408 at 10 s after its first byte.
    let mut reader = BufReader::new(late);
    let response = read_response(&mut reader, TIMEOUT_408_WAIT).expect("a 408");
    let waited = first_byte.elapsed();
    assert_eq!(response.status, 408, "{}", response.status_line);
    assert!(
        waited >= Duration::from_secs(9) && waited <= Duration::from_secs(12),
        "the 408 came {waited:?} after the first byte, not at the 10 s head deadline"
    );
    assert!(closed_by_server(&mut reader, QUICK), "closed after the 408");
    eprintln!("[deadlines] idle close after {idle_for:?}; 408 {waited:?} after the first byte");
}

#[test]
fn stalled_body_does_not_block_other_clients() {
    let mut server = TestServer::start(&[]);
    let mut stalled = send_raw(
        &server,
        b"POST /api/session HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 5000\r\n\r\n",
    );
    let head_sent = Instant::now();
    stalled.write_all(b"{\"a\":\"bbbb").expect("10 body bytes");

    normal_client_is_served(&mut server, "stalled body");

    let mut reader = BufReader::new(stalled);
    let response = read_response(&mut reader, TIMEOUT_408_WAIT).expect("a 408");
    let waited = head_sent.elapsed();
    assert_eq!(response.status, 408, "{}", response.status_line);
    assert!(
        waited >= Duration::from_secs(9) && waited <= Duration::from_secs(12),
        "the 408 came after {waited:?}, not after the 10 s body deadline"
    );
    assert!(closed_by_server(&mut reader, QUICK), "closed after the 408");
    eprintln!("[stalled body] 408 after {waited:?}");
    assert!(server.is_alive());
    assert!(
        !server.log().contains("\"POST /api/session HTTP/1.1\" 200"),
        "the partial body was handled"
    );
}

#[test]
fn body_trickled_one_byte_at_a_time_does_not_block_other_clients() {
    let mut server = TestServer::start(&[]);
    // A valid 200-byte JSON object, sent one byte every 100 ms (20 s in all: longer than
    // the 10 s body deadline).
    let mut body = b"{\"k\":\"".to_vec();
    body.resize(198, b'x');
    body.extend_from_slice(b"\"}");
    assert_eq!(body.len(), 200);
    let stream = send_raw(
        &server,
        b"POST /api/session HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 200\r\nConnection: close\r\n\r\n",
    );
    let started = Instant::now();
    let mut writer = stream.try_clone().expect("clone");
    let trickle = thread::spawn(move || {
        let mut sent = 0;
        for byte in body {
            if writer.write_all(&[byte]).is_err() {
                break; // the server answered and closed
            }
            sent += 1;
            thread::sleep(Duration::from_millis(100));
        }
        sent
    });

    thread::sleep(Duration::from_millis(500)); // well into the trickle
    normal_client_is_served(&mut server, "trickled body");
    thread::sleep(Duration::from_secs(2));
    normal_client_is_served(&mut server, "trickled body, 2.5 s in");

    let response = read_one(&stream, TIMEOUT_408_WAIT);
    let waited = started.elapsed();
    eprintln!("[trickled body] {} after {waited:?}", response.status_line);
    match response.status {
        200 => assert!(
            waited <= Duration::from_secs(11),
            "answered 200 after {waited:?}"
        ),
        408 => assert!(
            waited >= Duration::from_secs(9) && waited <= Duration::from_secs(12),
            "408 after {waited:?}"
        ),
        other => panic!("the trickling client got {other}: {response:?}"),
    }
    let _ = stream.shutdown(Shutdown::Both);
    let sent = trickle.join().expect("the trickle thread");
    eprintln!("[trickled body] {sent} of 200 bytes sent before the answer");
    assert!(server.is_alive());
    normal_client_is_served(&mut server, "after the trickle");
}

// ---------------------------------------------------------------------------------------
// 4, 5, 12: oversized requests
// ---------------------------------------------------------------------------------------

#[test]
fn huge_content_length_is_refused_at_once_without_reading_the_body() {
    let mut server = TestServer::start(&[]);
    let started = Instant::now();
    let stalled = send_raw(
        &server,
        b"POST /api/session HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 999999999999\r\n\r\n",
    );
    let mut reader = BufReader::new(stalled);
    let response = read_response(&mut reader, Duration::from_secs(2)).expect("an immediate 413");
    let took = started.elapsed();
    assert_eq!(response.status, 413, "{}", response.status_line);
    assert!(took < Duration::from_secs(2), "the 413 took {took:?}");
    eprintln!("[huge Content-Length] 413 after {took:?}");
    assert!(server.is_alive(), "tiny_http 0.12 aborted the process here");
    // The hostile socket is still open on our side.
    normal_client_is_served(&mut server, "huge Content-Length");
    assert!(closed_by_server(&mut reader, QUICK), "closed after the 413");
}

#[test]
fn body_over_the_limit_actually_sent_is_refused() {
    let mut server = TestServer::start(&[]);
    let mut request =
        b"POST /api/session HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 70000\r\n\r\n"
            .to_vec();
    let mut body = b"{\"k\":\"".to_vec();
    body.resize(69_998, b'x');
    body.extend_from_slice(b"\"}");
    request.extend_from_slice(&body);
    let stream = connect(&server);
    let mut writer = stream.try_clone().expect("clone");
    let sender = thread::spawn(move || writer.write_all(&request).is_ok());

    let response = read_one(&stream, QUICK);
    assert_eq!(response.status, 413, "{}", response.status_line);
    let _ = sender.join();
    assert!(server.is_alive());
    normal_client_is_served(&mut server, "70000-byte body");
    assert!(
        !server.log().contains("\"POST /api/session HTTP/1.1\" 200"),
        "the oversized body was handled"
    );
    assert_eq!(
        server.session_files().len(),
        1,
        "only the normal client's session"
    );
}

/// Writes `request` from another thread (the server may stop reading and reset the
/// connection part way) and reads the one response.
fn send_big_and_read(server: &TestServer, request: Vec<u8>) -> RawResponse {
    let stream = connect(server);
    let mut writer = stream.try_clone().expect("clone");
    let sender = thread::spawn(move || writer.write_all(&request).is_ok());
    let response = read_one(&stream, QUICK);
    let _ = stream.shutdown(Shutdown::Both);
    let _ = sender.join();
    response
}

#[test]
fn one_megabyte_header_line_is_refused_with_431() {
    let mut server = TestServer::start(&[]);
    let mut request = b"GET /setsession/ HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
    request.resize(request.len() + 1024 * 1024, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    let started = Instant::now();
    let response = send_big_and_read(&server, request);
    assert_eq!(response.status, 431, "{}", response.status_line);
    eprintln!("[1 MB header] 431 after {:?}", started.elapsed());
    assert!(server.is_alive());
    assert_eq!(
        server.session_files().len(),
        0,
        "the refused request was handled"
    );
    normal_client_is_served(&mut server, "1 MB header line");
}

#[test]
fn too_many_header_fields_are_refused_with_431() {
    let mut server = TestServer::start(&[]);
    // 10 000 small headers: also over the 32 KiB head limit.
    let mut many = b"GET /setsession/ HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    for i in 0..10_000 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let response = send_big_and_read(&server, many);
    assert_eq!(
        response.status, 431,
        "10 000 headers: {}",
        response.status_line
    );

    // 100 small headers: under 32 KiB, over the 64-field limit.
    let mut hundred = b"GET /setsession/ HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    for i in 0..100 {
        hundred.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    hundred.extend_from_slice(b"\r\n");
    assert!(hundred.len() < 32 * 1024);
    let response = exchange_and_close(&server, &hundred);
    assert_eq!(
        response.status, 431,
        "100 headers: {}",
        response.status_line
    );

    assert!(server.is_alive());
    assert_eq!(
        server.session_files().len(),
        0,
        "a refused request was handled"
    );
    normal_client_is_served(&mut server, "too many headers");
}

// ---------------------------------------------------------------------------------------
// 6: many idle keep-alive connections
// ---------------------------------------------------------------------------------------

#[test]
fn five_hundred_idle_keep_alive_connections_do_not_block_other_clients() {
    let mut server = TestServer::start(&[]);
    let started = Instant::now();
    let mut idle = Vec::with_capacity(500);
    for i in 0..500 {
        let mut stream = connect(&server);
        stream
            .write_all(b"GET /api/session HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        let mut reader = BufReader::new(stream);
        let response = read_response(&mut reader, QUICK)
            .unwrap_or_else(|e| panic!("connection {i}: no response: {e}"));
        assert_eq!(
            response.status, 200,
            "connection {i}: {}",
            response.status_line
        );
        assert_ne!(response.header("connection"), Some("close"), "kept alive");
        idle.push(reader);
    }
    let opened = started.elapsed();
    eprintln!("[500 idle] opened and used 500 connections in {opened:?}");

    normal_client_is_served(&mut server, "500 idle keep-alive connections");
    assert!(server.is_alive());

    // The idle connections are still usable (the last ones opened are well within the
    // 5 s idle timeout)...
    let last = idle.last_mut().expect("500 connections");
    if started.elapsed() < Duration::from_secs(4) {
        last.get_mut()
            .write_all(b"GET /api/session HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("reuse");
        let again = read_response(last, QUICK).expect("a second response");
        assert_eq!(again.status, 200);
    }
    // ...and the server closes them silently after the idle timeout.
    let first = idle.first_mut().expect("500 connections");
    assert!(
        closed_by_server(first, Duration::from_secs(8)),
        "an idle keep-alive connection was not closed after the 5 s idle timeout"
    );
    assert!(server.is_alive());
}

// ---------------------------------------------------------------------------------------
// 7: invalid UTF-8
// ---------------------------------------------------------------------------------------

#[test]
fn invalid_utf8_in_path_or_cookie_is_harmless() {
    let mut server = TestServer::start(&[]);

    let response = exchange_and_close(
        &server,
        b"GET /\xff\xfe HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert!(
        matches!(response.status, 400 | 404),
        "invalid UTF-8 path: {}",
        response.status_line
    );
    assert!(server.is_alive());

    let response = exchange_and_close(
        &server,
        b"GET /getsession/ HTTP/1.1\r\nHost: localhost\r\nCookie: sessionid=\xff\xfe\r\n\
          Connection: close\r\n\r\n",
    );
    assert_eq!(response.status, 404, "invalid UTF-8 cookie: {response:?}");
    assert!(server.is_alive());
    assert!(
        !server.log().contains("panicked"),
        "a panic was logged: {}",
        server.log()
    );
    assert_eq!(server.session_files(), Vec::<String>::new());
    let entries: Vec<_> = std::fs::read_dir(server.sessions())
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(entries.is_empty(), "files in sessions/: {entries:?}");

    normal_client_is_served(&mut server, "invalid UTF-8");
}

// ---------------------------------------------------------------------------------------
// 8: request smuggling
// ---------------------------------------------------------------------------------------

/// RFC 9112 §6.3: a request with both Content-Length and Transfer-Encoding may be refused
/// or read by its chunked framing, and either way the connection MUST be closed after the
/// answer. hyper reads it as chunked (this server's own framing answered 400 before issue
/// 11); what matters is that nothing after the chunked body is read as a second request.
#[test]
fn content_length_with_transfer_encoding_closes_the_connection_and_nothing_is_smuggled() {
    let mut server = TestServer::start(&[]);
    let smuggled = b"POST /api/session HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /setsession/ HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let stream = send_raw(&server, smuggled);
    let mut reader = BufReader::new(stream);
    let response = read_response(&mut reader, QUICK).expect("a response");
    // The empty chunked body, read as such, is not JSON: 415 (no Content-Type), or 400.
    assert!(
        matches!(response.status, 400 | 415),
        "{}",
        response.status_line
    );
    assert!(
        closed_by_server(&mut reader, QUICK),
        "a second response or an open connection after the answer"
    );
    // The smuggled GET was never handled.
    assert_eq!(
        wait_for_log_count(&server, "GET /setsession/ HTTP/1.1", 1),
        0
    );
    assert_eq!(
        server.session_files(),
        Vec::<String>::new(),
        "smuggled GET ran"
    );

    // Transfer-Encoding alone: a chunked body is read (RFC 9112 §6.1) within the limits.
    let response = exchange_and_close(
        &server,
        b"POST /api/session HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\n7\r\n{\"a\":1}\r\n0\r\n\r\n",
    );
    assert_eq!(response.status, 200, "{}", response.status_line);
    let files = server.session_files();
    assert_eq!(files.len(), 1, "the chunked body's session");
    let key = files[0].trim_end_matches(".json");
    assert_eq!(
        server.session_file(key)["data"],
        serde_json::json!({"a": 1})
    );
    assert!(server.is_alive());

    normal_client_is_served(&mut server, "CL/TE smuggling");
    // Exactly one /setsession/ was ever handled: the normal client's.
    assert_eq!(
        wait_for_log_count(&server, "GET /setsession/ HTTP/1.1", 1),
        1
    );
    assert_eq!(server.session_files().len(), 2);
}

// ---------------------------------------------------------------------------------------
// 9: CR/LF injection
// ---------------------------------------------------------------------------------------

fn assert_no_injected_cookie(response: &RawResponse, what: &str) {
    for line in &response.header_lines {
        let lower = line.to_ascii_lowercase();
        assert!(
            !(lower.starts_with("set-cookie:") && lower.contains("x=y")),
            "{what}: injected header line {line:?}"
        );
        assert!(
            !line.contains('\r'),
            "{what}: bare CR in header line {line:?}"
        );
    }
}

#[test]
fn cr_lf_in_the_path_cannot_inject_headers() {
    let mut server = TestServer::start(&[]);

    let response = exchange_and_close(&server, b"GET /a\rb HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(response.status, 400, "bare CR: {}", response.status_line);

    // Percent-encoded CR/LF on an APPEND_SLASH candidate.
    let response = exchange_and_close(
        &server,
        b"GET /setsession%0d%0aSet-Cookie:%20x=y HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(
        matches!(response.status, 301 | 404),
        "{}",
        response.status_line
    );
    assert_no_injected_cookie(&response, "encoded CR/LF in the path");

    // The same in the query of a real redirect: the Location keeps it encoded.
    let response = exchange_and_close(
        &server,
        b"GET /setsession?%0d%0aSet-Cookie:%20x=y HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(response.status, 301, "{}", response.status_line);
    assert_no_injected_cookie(&response, "encoded CR/LF in the query");
    let location = response.header("location").expect("a Location");
    assert!(
        location.starts_with("/setsession/?"),
        "Location: {location}"
    );

    // A raw CR LF in the middle of the request line.
    let response = exchange_and_close(
        &server,
        b"GET /setsession\r\nSet-Cookie: x=y HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(response.status, 400, "raw CRLF: {}", response.status_line);
    assert_no_injected_cookie(&response, "raw CR/LF in the request line");

    assert!(server.is_alive());
    assert_eq!(server.session_files(), Vec::<String>::new());
    normal_client_is_served(&mut server, "CR/LF injection");
}

// ---------------------------------------------------------------------------------------
// 10: forged session cookies
// ---------------------------------------------------------------------------------------

/// A canonical session key: a lowercase hyphenated UUID v4 (RFC 4122 variant).
fn is_canonical_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

/// `GET /setsession/` with `Cookie: sessionid=<cookie>`; returns the fresh key.
fn setsession_with_cookie(server: &TestServer, cookie: Option<&str>) -> String {
    let mut request = b"GET /setsession/ HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    if let Some(cookie) = cookie {
        request.extend_from_slice(format!("Cookie: sessionid={cookie}\r\n").as_bytes());
    }
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    let response = exchange_and_close(server, &request);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body_text(), "session is set");
    let cookies: Vec<&String> = response
        .header_lines
        .iter()
        .filter(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .collect();
    assert_eq!(cookies.len(), 1, "one Set-Cookie: {cookies:?}");
    let value = cookies[0].split_once(':').unwrap().1.trim();
    assert!(value.starts_with("sessionid="), "{value}");
    common::cookie_value(value)
}

fn all_entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn non_canonical_session_cookies_get_a_fresh_key_and_one_file() {
    let mut server = TestServer::start(&[]);
    let outside = server.sessions().join("../../etc/passwd");
    let outside_before = std::fs::metadata(&outside).and_then(|m| m.modified()).ok();

    // A real session, to forge its uppercase twin.
    let real = setsession_with_cookie(&server, None);
    assert!(is_canonical_key(&real), "{real}");
    assert_eq!(server.session_files(), vec![format!("{real}.json")]);

    let ten_kb = "a".repeat(10 * 1024);
    let forged = [
        "../../etc/passwd".to_owned(),
        real.to_uppercase(),
        "67E55044-10B1-426F-9247-BB680E5FE0C8".to_owned(),
        ten_kb,
    ];
    for cookie in &forged {
        let shown = &cookie[..cookie.len().min(40)];
        let before = server.session_files();
        let fresh = setsession_with_cookie(&server, Some(cookie));
        assert!(
            is_canonical_key(&fresh),
            "cookie {shown}: fresh key {fresh:?}"
        );
        assert_ne!(&fresh, cookie);
        assert_ne!(fresh, real, "cookie {shown} reached the real session");
        let after = server.session_files();
        let new: Vec<&String> = after.iter().filter(|n| !before.contains(n)).collect();
        assert_eq!(new, vec![&format!("{fresh}.json")], "cookie {shown}");
        assert_eq!(after.len(), before.len() + 1, "cookie {shown}: {after:?}");
    }
    // Only session files in sessions/, only sessions/ in the server's directory.
    let in_sessions = all_entries(&server.sessions());
    assert_eq!(
        in_sessions,
        server.session_files(),
        "stray files in sessions/"
    );
    assert_eq!(all_entries(server.dir.path()), vec!["sessions".to_owned()]);
    let outside_after = std::fs::metadata(&outside).and_then(|m| m.modified()).ok();
    assert_eq!(
        outside_before,
        outside_after,
        "{} was touched",
        outside.display()
    );

    assert!(server.is_alive());
    normal_client_is_served(&mut server, "forged cookies");
}

// ---------------------------------------------------------------------------------------
// 11: pipelining
// ---------------------------------------------------------------------------------------

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut server = TestServer::start(&[]);
    let stream = send_raw(
        &server,
        b"GET /setsession/ HTTP/1.1\r\nHost: localhost\r\n\r\n\
          GET /getsession/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let mut reader = BufReader::new(stream);
    let first = read_response(&mut reader, QUICK).expect("first response");
    let second = read_response(&mut reader, QUICK).expect("second response");
    assert_eq!(
        (first.status, first.body_text().as_str()),
        (200, "session is set")
    );
    // No cookie on the second request: no session.
    assert_eq!(second.status, 404, "{second:?}");
    assert!(
        closed_by_server(&mut reader, QUICK),
        "closed after Connection: close"
    );

    // A body then a request in one write: the body's end is found exactly.
    let stream = send_raw(
        &server,
        b"POST /api/session HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 7\r\n\r\n{\"a\":1}\
          GET /api/session HTTP/1.1\r\nHost: localhost\r\n\r\n\
          GET /nope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let mut reader = BufReader::new(stream);
    let post = read_response(&mut reader, QUICK).expect("POST response");
    let get = read_response(&mut reader, QUICK).expect("GET response");
    let nope = read_response(&mut reader, QUICK).expect("404 response");
    assert_eq!(post.status, 200, "{post:?}");
    let json: serde_json::Value = serde_json::from_slice(&post.body).expect("JSON");
    assert_eq!(json["data"]["a"], 1);
    assert_eq!(get.status, 200, "{get:?}");
    let json: serde_json::Value = serde_json::from_slice(&get.body).expect("JSON");
    assert_eq!(
        json["session_key"],
        serde_json::Value::Null,
        "no cookie sent"
    );
    assert_eq!(nope.status, 404, "{nope:?}");
    assert!(closed_by_server(&mut reader, QUICK));

    assert!(server.is_alive());
    normal_client_is_served(&mut server, "pipelining");
}

/// Header lines ended by bare LF and the head by CR LF (`...\nHost: localhost\n\r\n`) form a
/// complete head; it is answered at once, not after the head deadline.
#[test]
fn head_ending_in_lf_cr_lf_is_answered_at_once() {
    let server = TestServer::start(&[]);
    let started = Instant::now();
    let stream = send_raw(&server, b"GET /api/session HTTP/1.1\nHost: localhost\n\r\n");
    let response = read_one(&stream, TIMEOUT_408_WAIT);
    assert_eq!(response.status, 200, "{}", response.status_line);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
