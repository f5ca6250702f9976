//! `GET /`: the session as a person sees it.

use maud::{DOCTYPE, Markup, html};

use crate::expiry::format_rfc3339;
use crate::http::{Request, Response};
use crate::session::Session;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;\
padding:0 1rem;color:#222}table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;\
padding:.3rem .6rem;text-align:left;vertical-align:top}code{background:#f4f4f4;padding:0 .2rem}";

/// The page: links to the routes, and the session (key, file, expiry, data).
pub(super) fn index(_: &Request, session: &mut Session) -> Response {
    let _ = session.len(); // load first: an unknown cookie key then shows as no session
    let markup: Markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "filesession" }
                style { (STYLE) }
            }
            body {
                h1 { "filesession" }
                p { "Django's sessions in Rust: one JSON file per session." }
                ul {
                    li { a href="/setsession/" { "/setsession/" } " stores a name and an e-mail" }
                    li { a href="/getsession/" { "/getsession/" } " shows them" }
                    li { a href="/api/session" { "/api/session" } " the session as JSON" }
                }
                h2 { "Your session" }
                @match session.session_key() {
                    Some(key) => {
                        p { "Key: " code { (key) } }
                        p { "File: " code { "sessions/" (key.file_name()) } }
                        @if let Some(at) = session.expires_at() {
                            p { "Expires: " (format_rfc3339(at))
                                @if session.expire_at_browser_close() { " (and at browser close)" } }
                        }
                    }
                    None => p { "No session yet." }
                }
                @if !session.data().is_empty() {
                    table {
                        tr { th { "key" } th { "value (JSON)" } }
                        @for (key, value) in session.items() {
                            tr { td { code { (key) } } td { code { (value.to_string()) } } }
                        }
                    }
                }
            }
        }
    };
    Response::html(200, markup.into_string())
        .with_header("Cache-Control", "no-store")
        .with_header("X-Frame-Options", "DENY")
        .with_header("Referrer-Policy", "same-origin")
        .with_header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        )
}
