//! The server's own cleanup of expired sessions (`SESSION_GC_INTERVAL`), scheduled in
//! slices between requests on the one thread; for a store whose deletes may wait (a
//! database: [`SessionStore::saves_wait`]), whole passes on a thread of their own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::{SessionStore, Sweep};

/// The server's own cleanup (`SESSION_GC_INTERVAL`): every interval a pass over the store,
/// done in slices of at most [`CLEANUP_SLICE`] on the handler thread, so that no request
/// waits more than that for it. Under load a slice runs at most every
/// [`CLEANUP_SPACING`]; when idle, back to back.
pub(crate) struct Cleanup {
    store: Arc<dyn SessionStore>,
    interval: Option<Duration>,
    next_pass: Instant,
    last_slice: Instant,
    sweep: Sweep,
    slices: u32,
    started: Instant,
    /// When the last request was answered: what the store keeps open between requests is
    /// let go [`RELEASE_IDLE_AFTER`] later.
    last_request: Instant,
    /// A pass running on a thread of its own (a store whose deletes may wait), if any.
    background: Option<std::thread::JoinHandle<()>>,
}

/// How long without a request before the store lets go of what it keeps open between
/// requests ([`SessionStore::release_idle`]): not at every idle call, which comes every
/// millisecond while a cleanup pass runs.
pub(crate) const RELEASE_IDLE_AFTER: Duration = Duration::from_millis(100);

/// The longest a cleanup slice runs.
pub(crate) const CLEANUP_SLICE: Duration = Duration::from_millis(2);
/// Under load, the least time between two cleanup slices (so at most ~10% of the time).
pub(crate) const CLEANUP_SPACING: Duration = Duration::from_millis(20);

impl Cleanup {
    pub(crate) fn new(store: Arc<dyn SessionStore>, interval: Option<Duration>) -> Self {
        let now = Instant::now();
        Cleanup {
            store,
            interval: interval.filter(|d| !d.is_zero()),
            next_pass: now,
            last_slice: now,
            sweep: Sweep::new(),
            slices: 0,
            started: now,
            last_request: now,
            background: None,
        }
    }

    /// How long the handler thread may wait for a request before calling `idle`.
    pub(crate) fn wait(&self) -> Duration {
        if self.sweep.in_progress() && !self.store.saves_wait() {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(100)
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.interval.is_some() && (self.sweep.in_progress() || now >= self.next_pass)
    }

    /// No request came: the store lets go of what it keeps open between requests, and a
    /// slice runs if a pass is due or under way.
    pub(crate) fn idle(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_request) >= RELEASE_IDLE_AFTER {
            self.store.release_idle();
        }
        if self.due(now) {
            self.slice(now);
        }
    }

    /// After a request: a slice only if the last one is a while ago.
    pub(crate) fn between_requests(&mut self) {
        let now = Instant::now();
        self.last_request = now;
        if self.due(now) && now.duration_since(self.last_slice) >= CLEANUP_SPACING {
            self.slice(now);
        }
    }

    fn slice(&mut self, now: Instant) {
        let Some(interval) = self.interval else {
            return;
        };
        if self.store.expired_deletion().is_none() {
            // The store expires sessions by itself (Redis): nothing to do, ever.
            self.interval = None;
            return;
        }
        if self.store.saves_wait() {
            // Its deletes may wait (a database busy, the network): never on the one thread.
            // A whole pass on a thread of its own, one at a time.
            if self.background.as_ref().is_some_and(|t| !t.is_finished()) {
                return;
            }
            self.next_pass = crate::expiry::later(now, interval);
            let store = self.store.clone();
            let spawned = std::thread::Builder::new()
                .name("session-cleanup".into())
                .spawn(move || {
                    if let Some(deletion) = store.expired_deletion() {
                        match deletion.clear_expired() {
                            Ok(r) => log::log!(
                                if r.expired + r.corrupt + r.leftovers > 0 {
                                    log::Level::Info
                                } else {
                                    log::Level::Debug
                                },
                                "session cleanup: removed {} expired, {} corrupt, {} leftovers; \
                                 kept {}",
                                r.expired,
                                r.corrupt,
                                r.leftovers,
                                r.kept
                            ),
                            Err(e) => log::warn!("session cleanup failed: {e}"),
                        }
                    }
                });
            match spawned {
                Ok(handle) => self.background = Some(handle),
                Err(e) => log::warn!("session cleanup not started: {e}"),
            }
            return;
        }
        if !self.sweep.in_progress() {
            self.slices = 0;
            self.started = now;
        }
        self.last_slice = now;
        self.slices += 1;
        let Some(deletion) = self.store.expired_deletion() else {
            // The store expires sessions by itself (Redis): nothing to do, ever.
            self.interval = None;
            return;
        };
        match deletion.sweep_step(&mut self.sweep, CLEANUP_SLICE) {
            Ok(false) => {}
            Ok(true) => {
                let r = self.sweep.report();
                let level = if r.expired + r.corrupt + r.leftovers > 0 {
                    log::Level::Info
                } else {
                    log::Level::Debug
                };
                log::log!(
                    level,
                    "session cleanup: removed {} expired, {} corrupt, {} leftovers; kept {}; \
                     {} entries in {} slices over {} ms",
                    r.expired,
                    r.corrupt,
                    r.leftovers,
                    r.kept,
                    self.sweep.scanned(),
                    self.slices,
                    self.started.elapsed().as_millis()
                );
                self.next_pass = crate::expiry::later(now, interval);
            }
            Err(e) => {
                log::warn!("session cleanup failed: {e}");
                self.next_pass = crate::expiry::later(now, interval);
            }
        }
    }
}
