//! [`SessionHandle`]: the request's session for a handler behind the layer, and the axum
//! extractor that hands it over.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::expiry::Expiry;
use crate::key::SessionKey;
use crate::session::Session;

/// Why a [`SessionHandle`] refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionError {
    /// The request's response was already made: the session was saved (or not) then, and a
    /// change now would be lost, so it is refused.
    Detached,
    /// A value did not have the type asked for ([`SessionHandle::get_as`]), or could not be
    /// stored as JSON ([`SessionHandle::insert_as`]).
    Json(serde_json::Error),
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Detached => f.write_str(
                "the session handle outlived its request: its response was already made",
            ),
            SessionError::Json(e) => write!(f, "session value: {e}"),
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::Json(e) => Some(e),
            SessionError::Detached => None,
        }
    }
}

/// The request's session, for a handler behind [`SessionLayer`]: `Clone + Send + Sync`, each
/// clone the same session. The session was read before the handler ran, so no accessor
/// waits for the store; what is changed is saved after the handler, by the layer (merged
/// into the newest copy in `merge` locking, under the lock held since before the handler in
/// `request` locking). The accessors are those of [`Session`] (Django's `SessionBase`),
/// async; [`with_session`](SessionHandle::with_session) reaches the rest.
///
/// A clone kept after the response is detached: its accessors answer
/// [`SessionError::Detached`], never a change silently lost.
#[derive(Clone)]
pub struct SessionHandle(pub(super) Arc<Mutex<Option<Session>>>);

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let attached = crate::store::locked(&self.0).is_some();
        f.debug_struct("SessionHandle")
            .field("attached", &attached)
            .finish()
    }
}

impl SessionHandle {
    /// Runs `f` on the session (the whole sync API).
    ///
    /// # Errors
    /// [`SessionError::Detached`] after the response was made.
    pub fn with_session<R>(&self, f: impl FnOnce(&mut Session) -> R) -> Result<R, SessionError> {
        match crate::store::locked(&self.0).as_mut() {
            Some(session) => Ok(f(session)),
            None => Err(SessionError::Detached),
        }
    }

    /// The session, taken out: the layer's, once the handler has answered.
    pub(super) fn detach(&self) -> Option<Session> {
        crate::store::locked(&self.0).take()
    }

    /// The value of `key`, if set (Django's `session[key]`/`get`).
    ///
    /// # Errors
    /// [`SessionError::Detached`].
    pub async fn get(&self, key: &str) -> Result<Option<Value>, SessionError> {
        self.with_session(|s| s.get(key).cloned())
    }

    /// The value of `key` as a `T`, if set.
    ///
    /// # Errors
    /// [`SessionError::Json`] when it is not a `T`; [`SessionError::Detached`].
    pub async fn get_as<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        self.with_session(|s| s.get_as(key))?
            .map_err(SessionError::Json)
    }

    /// Whether `key` is set (Django's `key in session`).
    ///
    /// # Errors
    /// [`SessionError::Detached`].
    pub async fn contains(&self, key: &str) -> Result<bool, SessionError> {
        self.with_session(|s| s.contains(key))
    }

    /// Sets `key` (Django's `session[key] = value`).
    ///
    /// # Errors
    /// [`SessionError::Detached`].
    pub async fn insert(
        &self,
        key: impl Into<String>,
        value: impl Into<Value>,
    ) -> Result<(), SessionError> {
        self.with_session(|s| s.insert(key, value))
    }

    /// Sets `key` to `value` as JSON.
    ///
    /// # Errors
    /// [`SessionError::Json`] when `value` has no JSON form; [`SessionError::Detached`].
    pub async fn insert_as<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), SessionError> {
        self.with_session(|s| s.insert_as(key, value))?
            .map_err(SessionError::Json)
    }

    /// Removes `key`; whether it was set (Django's `del session[key]`).
    ///
    /// # Errors
    /// [`SessionError::Detached`].
    pub async fn remove(&self, key: &str) -> Result<bool, SessionError> {
        self.with_session(|s| s.remove(key))
    }

    /// Removes `key` and returns its value (Django's `pop`).
    ///
    /// # Errors
    /// [`SessionError::Detached`].
    pub async fn pop(&self, key: &str) -> Result<Option<Value>, SessionError> {
        self.with_session(|s| s.pop(key))
    }

    /// A copy of every key and value.
    ///
    /// # Errors
    /// [`SessionError::Detached`].
    pub async fn data(&self) -> Result<Map<String, Value>, SessionError> {
        self.with_session(|s| s.data().clone())
    }

    /// How many keys are set.
    ///
    /// # Errors
    /// [`SessionError::Detached`].
    pub async fn len(&self) -> Result<usize, SessionError> {
        self.with_session(|s| s.len())
    }

    /// Whether no key is set.
    ///
    /// # Errors
    /// [`SessionError::Detached`].
    pub async fn is_empty(&self) -> Result<bool, SessionError> {
        self.with_session(|s| s.is_empty())
    }

    /// Removes every key, keeping the session (Django's `clear`).
    ///
    /// # Errors
    /// [`SessionError::Detached`].
    pub async fn clear(&self) -> Result<(), SessionError> {
        self.with_session(Session::clear)
    }

    /// Logs out (Django's `flush`): the stored session is deleted when the response is
    /// made, and the cookie with it.
    ///
    /// # Errors
    /// [`SessionError::Detached`].
    pub async fn flush(&self) -> Result<(), SessionError> {
        self.with_session(Session::flush)
    }

    /// A new key for the session when the response is made, its data kept (Django's
    /// `cycle_key`, against session fixation).
    ///
    /// # Errors
    /// [`SessionError::Detached`].
    pub async fn cycle_key(&self) -> Result<(), SessionError> {
        self.with_session(Session::cycle_key)
    }

    /// Sets when the session ends (Django's `set_expiry`).
    ///
    /// # Errors
    /// [`SessionError::Detached`].
    pub async fn set_expiry(&self, expiry: Expiry) -> Result<(), SessionError> {
        self.with_session(|s| s.set_expiry(expiry))
    }

    /// Seconds until the session ends (Django's `get_expiry_age`).
    ///
    /// # Errors
    /// [`SessionError::Detached`].
    pub async fn expiry_age(&self) -> Result<i64, SessionError> {
        self.with_session(|s| s.expiry_age())
    }

    /// The session's key, if it has one (none before its first save, nor after a flush).
    ///
    /// # Errors
    /// [`SessionError::Detached`].
    pub async fn session_key(&self) -> Result<Option<SessionKey>, SessionError> {
        self.with_session(|s| s.session_key().copied())
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for SessionHandle {
    type Rejection = (http::StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<SessionHandle>().cloned().ok_or((
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "no session: the route is not behind filesession::tower::SessionLayer",
        ))
    }
}
