//! Session: Django's `SessionBase` — a dictionary with `accessed`/`modified` flags, lazy
//! loading, expiry, and a record of what this request changed.

use std::cell::{Cell, OnceCell};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::config::SessionConfig;
use crate::expiry::Expiry;
use crate::key::SessionKey;
use crate::store::{Acquired, ChangeSet, SessionLock, SessionStore, StoreError};

/// Django's test cookie key, set by [`Session::set_test_cookie`].
pub const TEST_COOKIE_NAME: &str = "testcookie";
/// Django's test cookie value.
pub const TEST_COOKIE_VALUE: &str = "worked";

/// What was found under the key, loaded on first access.
struct State {
    /// Shared with the store's copy until the first change (copy on write).
    data: Arc<Map<String, Value>>,
    expiry: Expiry,
    /// When the stored session ends; `None` when nothing is stored.
    expires_at: Option<SystemTime>,
    /// Whether the key named a live session (Django nulls an unknown key on load).
    found: bool,
    lock: Option<SessionLock>,
    error: Option<StoreError>,
    /// Whether the key named stored data that does not verify ([`StoreError::Unverified`]).
    unverified: bool,
}

impl State {
    fn empty() -> Self {
        State {
            data: Arc::default(),
            expiry: Expiry::Default,
            expires_at: None,
            found: false,
            lock: None,
            error: None,
            unverified: false,
        }
    }
}

/// One request's session: Django's `request.session`.
///
/// It loads lazily: nothing is read until the first access to its data, and a key that names
/// no live session (unknown, expired, corrupt) is dropped then, never adopted: a write then
/// creates a session under a fresh random key. Reads set [`accessed`](Session::accessed),
/// writes set [`modified`](Session::modified), by Django's rules. [`save`](Session::save)
/// writes only what this request changed on top of the newest stored copy.
///
/// ```
/// use std::sync::Arc;
/// use filesession::{MemoryStore, Session, SessionConfig};
///
/// let store = Arc::new(MemoryStore::new());
/// let mut session = Session::new(store.clone(), None, SessionConfig::default());
/// session.insert("sname", "abc");
/// session.insert("semail", "abc@gmail.com");
/// assert!(session.modified());
/// session.save()?;
///
/// let key = session.session_key().copied();
/// let next = Session::new(store, key, SessionConfig::default());
/// assert_eq!(next.get_as::<String>("sname")?, Some("abc".to_string()));
/// assert!(next.contains("semail"));
/// assert!(next.accessed() && !next.modified());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Session {
    store: Arc<dyn SessionStore>,
    config: SessionConfig,
    key: Option<SessionKey>,
    state: OnceCell<State>,
    accessed: Cell<bool>,
    modified: bool,
    changes: ChangeSet,
    /// `cycle_key` was called: the next save moves the session to a new key.
    cycle: bool,
    /// `flush` was called on this stored session: the next save deletes it.
    flushed: Option<SessionKey>,
    /// What a lock preflight handed on before the handler ran (see
    /// [`Session::with_acquired`]), used by the load.
    acquired: Cell<Option<Acquired>>,
    /// What [`preload`](Session::preload) read from the store before the handler ran (off
    /// the server's one thread): the first access takes it instead of going to the store.
    preloaded: Cell<Option<State>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.key)
            .field("loaded", &self.state.get().is_some())
            .field("accessed", &self.accessed.get())
            .field("modified", &self.modified)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session for `key` (from the request's cookie, already parsed), not loaded yet.
    /// No I/O happens here.
    pub fn new(
        store: Arc<dyn SessionStore>,
        key: Option<SessionKey>,
        config: SessionConfig,
    ) -> Self {
        Session {
            store,
            config,
            key,
            state: OnceCell::new(),
            accessed: Cell::new(false),
            modified: false,
            changes: ChangeSet::new(config.cookie_age),
            cycle: false,
            flushed: None,
            acquired: Cell::new(None),
            preloaded: Cell::new(None),
        }
    }

    /// Gives the session what the store's lock preflight handed on for its key
    /// ([`LockPreflight::acquire`](crate::LockPreflight::acquire), run before the handler,
    /// perhaps on another thread), so that the load does not wait.
    pub fn with_acquired(self, acquired: Option<Acquired>) -> Self {
        self.acquired.set(acquired);
        self
    }

    /// Reads the session from the store now, if it was not read yet, without marking it
    /// accessed: the first access then takes what was read, as if it had loaded then. What a
    /// server does before the handler runs, on a thread that may wait, for a store whose
    /// loads may wait ([`SessionStore::loads_wait`]): the handler, on the server's one
    /// thread, then never waits for the store. A session that is never accessed stays as if
    /// never loaded (no `Vary: Cookie`, an unknown key not dropped), as Django's lazy load.
    /// A load error is kept for the first access, as a lazy load's.
    pub fn preload(&self) {
        if self.state.get().is_none() {
            let preloaded = self.preloaded.take();
            let state = preloaded.unwrap_or_else(|| self.load_from_store());
            self.preloaded.set(Some(state));
        }
    }

    fn load_state(&self) -> State {
        match self.preloaded.take() {
            Some(state) => state,
            None => self.load_from_store(),
        }
    }

    fn load_from_store(&self) -> State {
        let Some(key) = self.key else {
            return State::empty();
        };
        let loaded = match (self.acquired.take(), self.store.preflight()) {
            (Some(acquired), Some(preflight)) => preflight.load_acquired(&key, acquired),
            (unused, _) => {
                drop(unused); // before the load, which may take the same lock
                self.store.load(&key)
            }
        };
        match loaded {
            Ok(Some(loaded)) => State {
                data: loaded.record.data,
                expiry: loaded.record.expiry,
                expires_at: Some(loaded.record.expires_at),
                found: true,
                lock: loaded.lock,
                ..State::empty()
            },
            Ok(None) => State::empty(),
            // No session, as Django's decode of a bad signature; not an error.
            Err(StoreError::Unverified(_)) => State {
                unverified: true,
                ..State::empty()
            },
            Err(e) => State {
                error: Some(e),
                ..State::empty()
            },
        }
    }

    /// The loaded state; loads on first use and marks the session accessed.
    fn state(&self) -> &State {
        self.accessed.set(true);
        self.state.get_or_init(|| self.load_state())
    }

    fn state_mut(&mut self) -> &mut State {
        self.accessed.set(true);
        if self.state.get().is_none() {
            let loaded = self.load_state();
            self.state = OnceCell::from(loaded);
        }
        match self.state.get_mut() {
            Some(state) => state,
            None => unreachable!("the state was set just above"),
        }
    }

    /// The session's key: `None` for a new session, after [`flush`](Session::flush), and once
    /// a load found nothing under the cookie's key. Does not load (Django's `session_key`).
    /// After [`cycle_key`](Session::cycle_key) the new key appears once the session is saved.
    pub fn session_key(&self) -> Option<&SessionKey> {
        match self.state.get() {
            Some(state) if !state.found => None,
            _ => self.key.as_ref(),
        }
    }

    /// Whether the data was read or written during this request (Django's `accessed`).
    pub fn accessed(&self) -> bool {
        self.accessed.get()
    }

    /// Whether the data was changed during this request (Django's `modified`); the
    /// middleware saves a modified session.
    pub fn modified(&self) -> bool {
        self.modified
    }

    /// Marks the session modified so that it is saved, refreshing its expiry
    /// (Django's `request.session.modified = True`).
    pub fn mark_modified(&mut self) {
        self.modified = true;
    }

    /// Whether the key named data that does not verify ([`StoreError::Unverified`]): the
    /// session is empty and a write makes a new one, but the middleware leaves the cookie
    /// alone, as Django does. Does not load.
    pub fn unverified(&self) -> bool {
        self.state.get().is_some_and(|s| s.unverified)
    }

    /// The error met while loading, if any: in `request` locking mode a lock timeout. A
    /// session with a load error behaves as empty and refuses to save.
    pub fn load_error(&self) -> Option<&StoreError> {
        self.state.get().and_then(|s| s.error.as_ref())
    }

    /// The value under `key` (Django's `session.get(key)` / `session[key]`).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.state().data.get(key)
    }

    /// The value under `key`, or `default` (Django's `session.get(key, default)`).
    pub fn get_or(&self, key: &str, default: Value) -> Value {
        self.get(key).cloned().unwrap_or(default)
    }

    /// The value under `key` as a `T`.
    ///
    /// # Errors
    /// The stored value is not a `T`.
    pub fn get_as<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, serde_json::Error> {
        self.get(key).map(T::deserialize).transpose()
    }

    /// Whether `key` is in the session (Django's `key in session`).
    pub fn contains(&self, key: &str) -> bool {
        self.state().data.contains_key(key)
    }

    /// Sets `key` (Django's `session[key] = value`). Marks the session modified even when the
    /// value is unchanged.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        let (key, value) = (key.into(), value.into());
        self.changes.set(&key, value.clone());
        self.data_mut().insert(key, value);
        self.modified = true;
    }

    /// Sets `key` to any serializable value.
    ///
    /// # Errors
    /// `value` cannot be represented as JSON (a map with non-string keys, say); the session
    /// is then unchanged.
    pub fn insert_as<T: Serialize + ?Sized>(
        &mut self,
        key: impl Into<String>,
        value: &T,
    ) -> Result<(), serde_json::Error> {
        let value = serde_json::to_value(value)?;
        self.insert(key, value);
        Ok(())
    }

    /// Removes `key` (Django's `del session[key]`). Returns `false`, leaving the session
    /// unmodified, when it was absent (where Django raises `KeyError`).
    pub fn remove(&mut self, key: &str) -> bool {
        self.pop(key).is_some()
    }

    /// Removes `key` and returns its value (Django's `session.pop(key)`). Marks the session
    /// modified only if the key existed.
    pub fn pop(&mut self, key: &str) -> Option<Value> {
        if !self.contains(key) {
            return None;
        }
        let value = self.data_mut().remove(key)?;
        self.changes.remove(key);
        self.modified = true;
        Some(value)
    }

    /// Removes `key` and returns its value, or `default` (Django's `pop(key, default)`).
    pub fn pop_or(&mut self, key: &str, default: Value) -> Value {
        self.pop(key).unwrap_or(default)
    }

    /// The value under `key`, setting it to `default` first if absent (Django's
    /// `setdefault`). Modifies the session only when it sets.
    pub fn setdefault(&mut self, key: &str, default: Value) -> &Value {
        if !self.contains(key) {
            self.insert(key, default);
        }
        match self.state().data.get(key) {
            Some(value) => value,
            None => unreachable!("the key was inserted just above"),
        }
    }

    /// Sets every pair (Django's `update`). Marks the session modified, even for no pairs.
    pub fn update(&mut self, pairs: impl IntoIterator<Item = (String, Value)>) {
        self.state_mut();
        for (key, value) in pairs {
            self.insert(key, value);
        }
        self.modified = true;
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.state().data.keys()
    }

    /// The values, in key order.
    pub fn values(&self) -> impl Iterator<Item = &Value> {
        self.state().data.values()
    }

    /// The pairs, in key order.
    pub fn items(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.state().data.iter()
    }

    /// The whole dictionary.
    pub fn data(&self) -> &Map<String, Value> {
        &self.state().data
    }

    /// The dictionary to change: loaded first, and copied here if the store still shares it.
    fn data_mut(&mut self) -> &mut Map<String, Value> {
        Arc::make_mut(&mut self.state_mut().data)
    }

    /// The settings this session follows (`SESSION_COOKIE_AGE`,
    /// `SESSION_EXPIRE_AT_BROWSER_CLOSE`).
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// How many keys the session holds.
    pub fn len(&self) -> usize {
        self.state().data.len()
    }

    /// Django's `is_empty()`: `true` when there is no session key, no data and no expiry
    /// set. A session with a key is not empty, even with no data; a session never loaded is
    /// not loaded by this call. The middleware deletes the cookie of an empty session.
    pub fn is_empty(&self) -> bool {
        // Django keeps the expiry in the data (`_session_expiry`), so a session whose only
        // content is an expiry is not empty: `set_expiry(300)` alone stores the session.
        self.session_key().is_none()
            && self
                .state
                .get()
                .is_none_or(|s| s.data.is_empty() && s.expiry == Expiry::Default)
    }

    /// Removes every key but keeps the session and its key (Django's `clear()`); the next
    /// save stores an empty session. Unlike Django it loads first, so that an unknown key
    /// is dropped rather than answered with a 400 at save.
    pub fn clear(&mut self) {
        // A new empty map, not the shared one copied and emptied.
        self.state_mut().data = Arc::default();
        self.changes.clear();
        self.modified = true;
    }

    /// Logs out (Django's `flush()`): the data and the key are dropped and the stored session
    /// is deleted at [`save`](Session::save) (the middleware does that even for a 5xx, as
    /// Django). No new session is created unless something is set afterwards.
    pub fn flush(&mut self) {
        // Load first (clear does): a key that names no session is dropped, so nothing that
        // is not this session's file (corrupt, a symlink, ...) is ever deleted.
        self.clear();
        let was = self.session_key().copied();
        if let Some(old) = was {
            self.flushed = Some(old);
        }
        self.key = None;
        self.cycle = false;
        if let Some(state) = self.state.get_mut() {
            state.found = false;
            state.expires_at = None;
            state.expiry = Expiry::Default;
        }
        self.changes = ChangeSet::new(self.config.cookie_age);
        self.changes.clear();
    }

    /// Gives the session a new key at the next save, keeping its data (Django's
    /// `cycle_key()`, against session fixation). The new session is written before the old
    /// one is removed, and only when the response is saved: a failed response neither loses
    /// nor orphans the session.
    pub fn cycle_key(&mut self) {
        self.state_mut();
        self.cycle = self.session_key().is_some();
        self.modified = true;
    }

    /// The expiry rule (Django's `_session_expiry`).
    pub fn expiry(&self) -> Expiry {
        self.state().expiry
    }

    /// Sets the expiry rule (Django's `set_expiry`). Setting `Default` on a session that has
    /// the default already changes nothing, as Django's `set_expiry(None)`.
    pub fn set_expiry(&mut self, expiry: Expiry) {
        let state = self.state_mut();
        if expiry == Expiry::Default && state.expiry == Expiry::Default {
            return;
        }
        state.expiry = expiry;
        self.changes.set_expiry(expiry);
        self.modified = true;
    }

    /// Seconds until the session expires if saved now (Django's `get_expiry_age()`).
    #[doc(alias = "get_expiry_age")]
    pub fn expiry_age(&self) -> i64 {
        self.expiry().age(SystemTime::now(), self.config.cookie_age)
    }

    /// When the session expires if saved now (Django's `get_expiry_date()`).
    #[doc(alias = "get_expiry_date")]
    pub fn expiry_date(&self) -> SystemTime {
        self.expiry()
            .date(SystemTime::now(), self.config.cookie_age)
    }

    /// Whether the cookie should end with the browser session (Django's
    /// `get_expire_at_browser_close()`).
    #[doc(alias = "get_expire_at_browser_close")]
    pub fn expire_at_browser_close(&self) -> bool {
        self.expiry()
            .at_browser_close(self.config.expire_at_browser_close)
    }

    /// When the stored session ends, as written in its file; `None` when nothing is stored.
    pub fn expires_at(&self) -> Option<SystemTime> {
        let state = self.state();
        if self.session_key().is_some() {
            state.expires_at
        } else {
            None
        }
    }

    /// Sets the test cookie (Django's `set_test_cookie`): `testcookie = "worked"`.
    pub fn set_test_cookie(&mut self) {
        self.insert(TEST_COOKIE_NAME, TEST_COOKIE_VALUE);
    }

    /// Whether the test cookie set on an earlier request came back (Django's
    /// `test_cookie_worked`).
    pub fn test_cookie_worked(&self) -> bool {
        self.get(TEST_COOKIE_NAME).and_then(Value::as_str) == Some(TEST_COOKIE_VALUE)
    }

    /// Removes the test cookie (Django's `delete_test_cookie`); `false` if it was absent.
    pub fn delete_test_cookie(&mut self) -> bool {
        self.remove(TEST_COOKIE_NAME)
    }

    /// Writes the session: deletes it after [`flush`](Session::flush); stores what this
    /// request changed, creating the session under a fresh key if it has none (but never an
    /// empty one), and moving it after [`cycle_key`](Session::cycle_key). Releases the
    /// session's lock.
    ///
    /// Django's `save()`: the middleware calls it when the session was modified (or with
    /// `SESSION_SAVE_EVERY_REQUEST`).
    ///
    /// # Errors
    /// [`StoreError::Deleted`] if the session was deleted meanwhile (it is not resurrected),
    /// the load error if loading failed, and the store's errors. The data in memory is
    /// unchanged by a failed save.
    pub fn save(&mut self) -> Result<(), StoreError> {
        if let Some(error) = self.state.get_mut().and_then(|s| s.error.take()) {
            return Err(error);
        }
        let mut lock = self.take_lock();
        if let Some(old) = self.flushed.take()
            && let Err(e) = self.store.delete(&old, lock.take())
        {
            self.flushed = Some(old);
            return Err(e);
        }
        let key = self.session_key().copied();
        if key.is_none() && self.is_empty() {
            // Empty sessions are never created (Django, CVE-2015-5963); one holding only an
            // expiry is not empty (Django keeps it in the data).
            return Ok(());
        }
        let (key, record) = match key {
            None => {
                let record = self.changes.to_new_record(SystemTime::now());
                (self.store.create(&record)?, record)
            }
            Some(key) if self.cycle => self.store.cycle(&key, &self.changes, lock)?,
            Some(key) => (key, self.store.save(&key, &self.changes, lock)?),
        };
        self.key = Some(key);
        self.cycle = false;
        self.changes = ChangeSet::new(self.config.cookie_age);
        self.state = OnceCell::from(State {
            data: record.data,
            expiry: record.expiry,
            expires_at: Some(record.expires_at),
            found: true,
            ..State::empty()
        });
        Ok(())
    }

    /// Deletes the stored session now, without touching this request's data or key
    /// (Django's `delete()`); flush is what a logout wants.
    ///
    /// # Errors
    /// The store's errors.
    pub fn delete(&mut self) -> Result<(), StoreError> {
        let lock = self.take_lock();
        match self.session_key().copied() {
            Some(key) => self.store.delete(&key, lock),
            None => Ok(()),
        }
    }

    /// Whether this request holds the session's lock (`request` locking): dropping the
    /// session lets it go, which for a lock kept in a store is a call to that store.
    pub fn holds_lock(&self) -> bool {
        // `Cell`s without `Copy`: look by taking and putting back.
        let preloaded = self.preloaded.take();
        let acquired = self.acquired.take();
        let held = self.state.get().is_some_and(|s| s.lock.is_some())
            || preloaded.as_ref().is_some_and(|s| s.lock.is_some())
            || matches!(acquired, Some(Acquired::Locked(_)));
        self.preloaded.set(preloaded);
        self.acquired.set(acquired);
        held
    }

    /// The session's lock, if this request holds one: the load's, or, if the session was
    /// never loaded, the one its preflight took.
    fn take_lock(&mut self) -> Option<SessionLock> {
        let loaded = self.state.get_mut().and_then(|s| s.lock.take());
        let preloaded = || {
            self.preloaded
                .get_mut()
                .as_mut()
                .and_then(|s| s.lock.take())
        };
        loaded
            .or_else(preloaded)
            .or_else(|| match self.acquired.take() {
                Some(Acquired::Locked(lock)) => Some(lock),
                _ => None,
            })
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
