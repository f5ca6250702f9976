//! The connection caps (issue 11): one client address cannot starve the others.
//! Connections beyond the per-address cap (256) close that address's idle ones, oldest
//! first.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{RawConnection, TestServer, connect_from, raise_own_limit, raw_request};

/// Whether the server has closed `stream` (end of stream or reset), within `wait`.
fn closed_by_server(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an answer (e.g. a 503); read on to its end
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn served(server: &TestServer) -> Duration {
    let started = Instant::now();
    let mut conn = RawConnection::open(server.addr);
    let r = conn
        .exchange(&raw_request("GET", "/setsession/", None, None))
        .expect("an answer");
    assert_eq!(r.status, 200, "{}", r.show());
    started.elapsed()
}

#[test]
fn a_slowloris_from_one_address_does_not_starve_another() {
    raise_own_limit();
    let server = TestServer::start(&[]);
    // 1 500 connections from 127.0.0.2, each sending the first byte of a head and no more.
    let mut attackers: Vec<TcpStream> = (0..1500)
        .map(|_| {
            let mut s = connect_from([127, 0, 0, 2], server.addr);
            s.write_all(b"G").expect("first byte");
            s
        })
        .collect();
    // Clients from 127.0.0.1 are served at once.
    let mut waits = Vec::new();
    for _ in 0..5 {
        waits.push(served(&server));
    }
    let slowest = waits.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(1),
        "a client from another address waited {slowest:?}"
    );
    // The server kept at most 256 of the attacker's connections: the rest were closed.
    let closed = attackers
        .iter_mut()
        .map(|s| closed_by_server(s, Duration::from_millis(20)))
        .filter(|closed| *closed)
        .count();
    assert!(
        closed >= 1500 - 256,
        "only {closed} of 1500 connections from one address were closed"
    );
    let mut server = server;
    assert!(server.is_alive());
    eprintln!(
        "caps/slowloris: 1500 connections from 127.0.0.2 (1 byte each): {closed} closed by the \
         server; 5 clients from 127.0.0.1 served, slowest in {slowest:?}"
    );
}

#[test]
fn idle_connections_beyond_the_cap_make_room_for_a_new_one_from_the_same_address() {
    raise_own_limit();
    let server = TestServer::start(&[]);
    // 300 kept-alive connections from 127.0.0.1, each idle after one answer.
    let mut idle: Vec<RawConnection> = (0..300)
        .map(|_| {
            let mut conn = RawConnection::open(server.addr);
            let r = conn
                .exchange(&raw_request("GET", "/getsession/", None, None))
                .expect("an answer");
            assert_eq!(r.status, 404);
            conn
        })
        .collect();
    // A new client from the same address is served: the oldest idle ones made room.
    let wait = served(&server);
    assert!(wait < Duration::from_secs(1), "waited {wait:?}");
    // Beyond 256 from one address, the oldest idle ones were closed to make room.
    let oldest = idle.first_mut().expect("connections");
    assert!(
        oldest
            .exchange(&raw_request("GET", "/getsession/", None, None))
            .is_err(),
        "the oldest idle connection was closed to make room"
    );
    // The newest idle connections are still open and answer.
    let newest = idle.last_mut().expect("connections");
    let r = newest
        .exchange(&raw_request("GET", "/getsession/", None, None))
        .expect("the newest idle connection still answers");
    assert_eq!(r.status, 404);
    eprintln!(
        "caps/idle: 300 idle connections from one address: the oldest closed, the newest \
         still served, a new one served in {wait:?}"
    );
}

/// A connection still sending its body is the client's to finish, not a request being
/// answered: 300 POSTs from one address that announce a body and never send it are held to
/// the per-address cap by closing the oldest, and none of them gets a 503.
#[test]
fn connections_stalled_in_their_body_make_room_like_idle_ones() {
    raise_own_limit();
    let server = TestServer::start(&[]);
    let head =
        b"POST /api/session HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                 Content-Length: 100\r\n\r\n";
    let mut stalled: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = connect_from([127, 0, 0, 4], server.addr);
            s.write_all(head).expect("send the head");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let elapsed = served(&server);
    let mut closed = 0;
    let mut refused = 0;
    for s in &mut stalled {
        s.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => closed += 1,
            Ok(n) if buf[..n].starts_with(b"HTTP/1.1 503") => refused += 1,
            Ok(n) => panic!(
                "an answer to a request without its body: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => closed += 1,
            Err(_) => {} // still open (WouldBlock)
        }
    }
    assert_eq!(refused, 0, "no 503: the stalled bodies make room");
    assert!(
        closed >= 44,
        "only {closed} of 300 closed to hold the cap of 256"
    );
    eprintln!(
        "caps/stalled bodies: 300 POSTs without their body from one address: {closed} closed, \
         0 refused; another client served in {elapsed:?}"
    );
}
