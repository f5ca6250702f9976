//! One-line messages shown once on the next page, kept in the session as Django's messages
//! framework does. After a logout there is no session to keep them in, so that one message
//! travels as a fixed code in a short-lived `flash` cookie instead.

use serde_json::Value;

use filesession::{Request, Session};

/// The session key the messages live under (Django's session storage uses `_messages`).
pub(crate) const MESSAGES_KEY: &str = "_messages";
const FLASH_COOKIE: &str = "flash";
const LOGGED_OUT: &str = "logged_out";

/// Queues a message for the next page.
pub(crate) fn add(session: &mut Session, text: impl Into<String>) {
    let mut list = match session.pop(MESSAGES_KEY) {
        Some(Value::Array(list)) => list,
        _ => Vec::new(),
    };
    list.push(Value::String(text.into()));
    session.insert(MESSAGES_KEY, Value::Array(list));
}

/// The `Set-Cookie` that carries the logout message.
pub(crate) fn logged_out_cookie() -> String {
    format!("{FLASH_COOKIE}={LOGGED_OUT}; Max-Age=60; Path=/; HttpOnly; SameSite=Lax")
}

/// Takes the queued messages (removing them, so each shows once), and the `Set-Cookie`
/// that clears a flash cookie if one came.
pub(crate) fn take(request: &Request, session: &mut Session) -> (Vec<String>, Option<String>) {
    let mut shown = Vec::new();
    let mut clear = None;
    if let Some(code) = request.cookie(FLASH_COOKIE) {
        // Only a known code turns into text: a forged cookie cannot put words on the page.
        if code == LOGGED_OUT {
            shown.push("You are logged out: the session file is gone.".to_string());
        }
        clear = Some(format!(
            "{FLASH_COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax"
        ));
    }
    if session.contains(MESSAGES_KEY)
        && let Some(Value::Array(list)) = session.pop(MESSAGES_KEY)
    {
        shown.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
    }
    (shown, clear)
}
