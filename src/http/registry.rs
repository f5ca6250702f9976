//! The open connections by client address: the global and per-address caps, and which
//! connection to close when a new one needs its place.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

use tokio::sync::Notify;

use super::limits::Limits;

/// One open connection, as the caps see it.
pub(super) struct Conn {
    id: u64,
    /// Inside a request: its head read, its answer not yet produced. Its reads are the
    /// body's (the idle and head deadlines do not apply).
    in_request: Cell<bool>,
    /// Its request is being answered (body read; a lock wait or the handler): never
    /// evicted. A connection still sending its head or body is the client's to finish, and
    /// may be closed to make room like an idle one.
    busy: Cell<bool>,
    /// Requests begun on it so far.
    requests: Cell<u64>,
    /// Notified to close it (it is idle and its place is needed).
    pub(super) evict: Notify,
}

impl Conn {
    /// Inside a request (see [`InRequest`]).
    pub(super) fn in_request(&self) -> bool {
        self.in_request.get()
    }

    /// How many requests have begun on it.
    pub(super) fn requests(&self) -> u64 {
        self.requests.get()
    }
}

/// Idle connections of the address holding the most are closed first (oldest first), so
/// that one address cannot starve the others.
#[derive(Default)]
pub(super) struct Registry {
    by_addr: HashMap<IpAddr, Vec<Rc<Conn>>>,
    total: usize,
    next_id: u64,
}

impl Registry {
    /// Makes room for a connection from `ip` within the caps (`max_connections`, the
    /// effective global cap, and `limits.max_connections_per_address`), closing an idle
    /// connection if needed; `None` when every connection in the way is busy (answer 503).
    pub(super) fn admit(
        &mut self,
        ip: IpAddr,
        limits: &Limits,
        max_connections: usize,
    ) -> Option<Rc<Conn>> {
        let here = self.by_addr.get(&ip).map_or(0, Vec::len);
        if here >= limits.max_connections_per_address.max(1) {
            self.evict_idle_of(ip)?;
        } else if self.total >= max_connections.max(1) {
            let busiest = self
                .by_addr
                .iter()
                .filter(|(_, conns)| conns.iter().any(|c| !c.busy.get()))
                .max_by_key(|(_, conns)| conns.len())
                .map(|(addr, _)| *addr)?;
            self.evict_idle_of(busiest)?;
        }
        self.next_id += 1;
        let conn = Rc::new(Conn {
            id: self.next_id,
            in_request: Cell::new(false),
            busy: Cell::new(false),
            requests: Cell::new(0),
            evict: Notify::new(),
        });
        self.by_addr.entry(ip).or_default().push(conn.clone());
        self.total += 1;
        Some(conn)
    }

    /// Closes the oldest idle connection of `ip`; `None` if it has none.
    fn evict_idle_of(&mut self, ip: IpAddr) -> Option<()> {
        let conns = self.by_addr.get(&ip)?;
        let victim = conns.iter().find(|c| !c.busy.get())?.clone();
        victim.evict.notify_one();
        self.remove(ip, victim.id);
        Some(())
    }

    /// Forgets a connection (closed, or evicted); nothing if already forgotten.
    fn remove(&mut self, ip: IpAddr, id: u64) {
        if let Some(conns) = self.by_addr.get_mut(&ip)
            && let Some(at) = conns.iter().position(|c| c.id == id)
        {
            conns.remove(at);
            self.total -= 1;
            if conns.is_empty() {
                self.by_addr.remove(&ip);
            }
        }
    }
}

/// A connection's place in the registry, given back when its task ends.
pub(super) struct Slot {
    pub(super) registry: Rc<RefCell<Registry>>,
    pub(super) ip: IpAddr,
    pub(super) conn: Rc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.borrow_mut().remove(self.ip, self.conn.id);
    }
}

/// Marks a connection inside a request for as long as it lives (from its head read to its
/// answer produced), and busy from [`answering`](InRequest::answering) on.
pub(super) struct InRequest(Rc<Conn>);

impl InRequest {
    pub(super) fn new(conn: Rc<Conn>) -> Self {
        conn.in_request.set(true);
        conn.requests.set(conn.requests.get() + 1);
        InRequest(conn)
    }

    /// The whole request is read: from now on it is being answered and is never evicted.
    pub(super) fn answering(&self) {
        self.0.busy.set(true);
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.in_request.set(false);
        self.0.busy.set(false);
    }
}

/// The address the per-address cap counts a client under: its IPv4 address, or its IPv6
/// /64 (one subscriber's usual allocation, so that one host cannot take a fresh address for
/// each connection); an IPv4-mapped IPv6 address counts as the IPv4 one.
pub(super) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_address: usize) -> Limits {
        Limits {
            max_connections_per_address: per_address,
            ..Limits::default()
        }
    }

    #[test]
    fn a_full_address_gives_up_its_oldest_idle_connection() {
        let mut registry = Registry::default();
        let ip: IpAddr = [127, 0, 0, 1].into();
        let first = registry.admit(ip, &limits(2), 100).expect("room");
        let second = registry.admit(ip, &limits(2), 100).expect("room");
        let busy = InRequest::new(first.clone());
        busy.answering();
        let third = registry
            .admit(ip, &limits(2), 100)
            .expect("the idle one makes room");
        assert_eq!(registry.total, 2);
        let ids: Vec<u64> = registry.by_addr[&ip].iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![first.id, third.id], "the idle second was closed");
        let _ = second;
        let busy_third = InRequest::new(third);
        busy_third.answering();
        assert!(
            registry.admit(ip, &limits(2), 100).is_none(),
            "all busy: refused"
        );
    }

    #[test]
    fn the_global_cap_closes_an_idle_connection_of_the_address_holding_the_most() {
        let mut registry = Registry::default();
        let crowd: IpAddr = [127, 0, 0, 2].into();
        let other: IpAddr = [127, 0, 0, 3].into();
        let _a = registry.admit(crowd, &limits(10), 3).expect("room");
        let _b = registry.admit(crowd, &limits(10), 3).expect("room");
        let _c = registry.admit(other, &limits(10), 3).expect("room");
        let _d = registry
            .admit(other, &limits(10), 3)
            .expect("the crowd gives one up");
        assert_eq!(registry.by_addr[&crowd].len(), 1);
        assert_eq!(registry.by_addr[&other].len(), 2);
        assert_eq!(registry.total, 3);
    }

    #[test]
    fn a_connection_still_sending_its_request_can_be_closed_to_make_room() {
        let mut registry = Registry::default();
        let ip: IpAddr = [127, 0, 0, 1].into();
        let sending = registry.admit(ip, &limits(1), 100).expect("room");
        let _reading_body = InRequest::new(sending.clone());
        assert!(
            registry.admit(ip, &limits(1), 100).is_some(),
            "the sender is closed"
        );
        assert!(registry.by_addr[&ip].iter().all(|c| c.id != sending.id));
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_address() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("v6");
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().expect("v6");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("v6");
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("mapped");
        assert_eq!(client_key(mapped), IpAddr::from([192, 0, 2, 7]));
        assert_eq!(
            client_key([10, 0, 0, 1].into()),
            IpAddr::from([10, 0, 0, 1])
        );
    }

    #[test]
    fn a_slot_gives_its_place_back_once() {
        let registry = Rc::new(RefCell::new(Registry::default()));
        let ip: IpAddr = [127, 0, 0, 1].into();
        let conn = registry
            .borrow_mut()
            .admit(ip, &limits(2), 10)
            .expect("room");
        drop(Slot {
            registry: registry.clone(),
            ip,
            conn,
        });
        assert_eq!(registry.borrow().total, 0);
        assert!(registry.borrow().by_addr.is_empty());
    }
}
