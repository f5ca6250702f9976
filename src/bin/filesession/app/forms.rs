//! The page's forms: each POSTs (CSRF-checked), changes the session, and redirects (303) back
//! to `/` with a one-line message.

use std::collections::HashMap;

use serde_json::Value;

use super::csrf::{self, CSRF_FIELD};
use super::messages;
use super::page::{form_error, short};
use filesession::{Expiry, Request, Response, Session};

/// The form's fields after the CSRF check, or the answer to give instead.
fn form(request: &Request) -> Result<HashMap<String, String>, Response> {
    if request.content_type().as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(form_error(
            415,
            "Forms must be sent as application/x-www-form-urlencoded.",
        ));
    }
    let fields: HashMap<String, String> = url::form_urlencoded::parse(request.body())
        .into_owned()
        .collect();
    csrf::verify(request, fields.get(CSRF_FIELD).map(String::as_str))
        .map_err(super::page::forbidden)?;
    Ok(fields)
}

fn back_to_page() -> Response {
    Response::redirect(303, "/")
}

/// The `name` field, non-empty.
fn name(fields: &HashMap<String, String>) -> Result<&str, Response> {
    match fields.get("name").map(String::as_str) {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(form_error(400, "The form needs a key name.")),
    }
}

/// Runs `change` on a valid form; answers its error page otherwise.
fn with_form(
    request: &Request,
    session: &mut Session,
    change: impl FnOnce(&HashMap<String, String>, &mut Session) -> Result<String, Response>,
) -> Response {
    let fields = match form(request) {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    match change(&fields, session) {
        Ok(message) => {
            messages::add(session, message);
            back_to_page()
        }
        Err(response) => response,
    }
}

/// `POST /form/set`: `name`, `value` (JSON if it parses, else text).
pub(super) fn set(request: &Request, session: &mut Session) -> Response {
    with_form(request, session, |fields, session| {
        let name = name(fields)?;
        let raw = fields.get("value").map(String::as_str).unwrap_or_default();
        let value =
            serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.into()));
        let message = format!("Set {name} = {}.", short(&value));
        session.insert(name, value);
        Ok(message)
    })
}

/// `POST /form/delete`: `name`.
pub(super) fn delete(request: &Request, session: &mut Session) -> Response {
    with_form(request, session, |fields, session| {
        let name = name(fields)?;
        Ok(if session.remove(name) {
            format!("Deleted {name}.")
        } else {
            format!("There was no key {name}.")
        })
    })
}

/// `POST /form/incr`: `name`; adds 1 (missing = 0).
pub(super) fn incr(request: &Request, session: &mut Session) -> Response {
    with_form(request, session, |fields, session| {
        let name = name(fields)?;
        let next = match session.get(name) {
            None => Some(1),
            Some(v) => v.as_i64().and_then(|n| n.checked_add(1)),
        };
        match next {
            Some(n) => {
                session.insert(name, n);
                Ok(format!("{name} is now {n}."))
            }
            None => Err(form_error(
                400,
                &format!("{name} does not hold an integer."),
            )),
        }
    })
}

/// `POST /form/expiry`: `mode` = `seconds` (with `seconds`), `browser_close` or `default`.
pub(super) fn expiry(request: &Request, session: &mut Session) -> Response {
    with_form(request, session, |fields, session| {
        let mode = fields.get("mode").map(String::as_str).unwrap_or("seconds");
        let (expiry, message) = match mode {
            "browser_close" => (
                Expiry::BrowserClose,
                "The session now ends when the browser closes.".to_string(),
            ),
            "default" => (
                Expiry::Default,
                "The session now has the default expiry.".to_string(),
            ),
            _ => {
                let seconds = fields
                    .get("seconds")
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .filter(|&s| s > 0)
                    .ok_or_else(|| form_error(400, "Give a whole number of seconds above 0."))?;
                (
                    Expiry::Seconds(seconds),
                    format!("The session now expires {seconds} s after each save."),
                )
            }
        };
        session.set_expiry(expiry);
        session.mark_modified();
        Ok(message)
    })
}

/// `POST /form/cycle`: a new key, the same data.
pub(super) fn cycle(request: &Request, session: &mut Session) -> Response {
    with_form(request, session, |_, session| {
        session.cycle_key();
        Ok("The session has a new key; the old file is gone.".to_string())
    })
}

/// `POST /form/logout`: flush. The message goes in a cookie: there is no session left.
pub(super) fn logout(request: &Request, session: &mut Session) -> Response {
    if let Err(response) = form(request) {
        return response;
    }
    session.flush();
    back_to_page().with_header("Set-Cookie", &messages::logged_out_cookie())
}
