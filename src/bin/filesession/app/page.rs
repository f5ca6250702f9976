//! `GET /`: the session as a person sees it, with forms to change it. Rendered with maud,
//! which escapes every interpolated value.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;

use super::csrf::{self, CSRF_FIELD};
use super::messages;
use filesession::format_rfc3339;
use filesession::{Request, Response, Session};

const STYLE: &str = r#"
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{background:#0c4b33;color:#fff;padding:1rem 2rem}
header h1{margin:0;font-size:1.4rem}
header p{margin:.2rem 0 0;opacity:.85}
main{max-width:62rem;margin:1.5rem auto;padding:0 1rem;display:grid;gap:1rem;grid-template-columns:1fr 1fr}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:1rem 1.2rem}
section.wide{grid-column:1/-1}
h2{font-size:1.05rem;margin:0 0 .6rem}
code{font:13px ui-monospace,Menlo,Consolas,monospace;background:#eef1f4;padding:.1rem .3rem;border-radius:4px;word-break:break-all}
table{border-collapse:collapse;width:100%;margin-top:.8rem}
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #eceff3;vertical-align:top}
th{font-size:.8rem;text-transform:uppercase;color:#667085}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1rem;margin:0}
dt{color:#667085}dd{margin:0}
form{margin:0}
form.row{display:flex;gap:.4rem;flex-wrap:wrap;align-items:center;margin:.4rem 0}
input[type=text],input[type=number]{padding:.35rem .5rem;border:1px solid #c5ccd6;border-radius:5px;font:inherit;min-width:0;flex:1}
button{padding:.35rem .8rem;border:1px solid #0c4b33;background:#0c4b33;color:#fff;border-radius:5px;font:inherit;cursor:pointer}
button.light{background:#fff;color:#0c4b33}
button.danger{background:#b42318;border-color:#b42318}
.message{grid-column:1/-1;background:#e7f6ec;border:1px solid #a6dcb7;border-radius:8px;padding:.6rem 1rem}
.muted{color:#667085}
nav a{color:#fff;margin-right:1rem}
"#;

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; \
form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// An HTML answer with the page's security headers. `no-store` because it shows session data.
fn html_page(status: u16, markup: Markup) -> Response {
    Response::html(status, markup.into_string())
        .with_header("Content-Security-Policy", CSP)
        .with_header("X-Frame-Options", "DENY")
        .with_header("Referrer-Policy", "same-origin")
        .with_header("Cache-Control", "no-store")
}

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "filesession" }
                    p { "Django's sessions in Rust: every session is a JSON file." }
                    nav {
                        a href="/" { "This page" }
                        a href="/setsession/" { "/setsession/" }
                        a href="/getsession/" { "/getsession/" }
                        a href="/api/session" { "/api/session" }
                    }
                }
                (body)
            }
        }
    }
}

/// A hidden CSRF field for a form.
fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(token); }
}

/// The most keys the page shows, each with its delete form; the rest are counted.
const PAGE_MAX_KEYS: usize = 200;
/// The most characters of a value the page shows; longer ones end in "…".
const PAGE_MAX_VALUE_CHARS: usize = 2_000;

/// `SESSION_COOKIE_AGE` in words: the largest unit it is a whole number of ("2 weeks",
/// "1 hour", "90 seconds").
fn human_duration(seconds: u64) -> String {
    let units = [
        (604_800, "week"),
        (86_400, "day"),
        (3_600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    let (size, name) = units
        .into_iter()
        .find(|(size, _)| seconds >= *size && seconds.is_multiple_of(*size))
        .unwrap_or((1, "second"));
    let n = seconds / size;
    format!("{n} {name}{}", if n == 1 { "" } else { "s" })
}

/// A value as the page shows it: its JSON, cut at [`PAGE_MAX_VALUE_CHARS`].
fn shown_value(value: &serde_json::Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(PAGE_MAX_VALUE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The page: the session (key, file, expiry, data) and forms to change it. A large session
/// is shown in part (the first [`PAGE_MAX_KEYS`] keys, values cut at
/// [`PAGE_MAX_VALUE_CHARS`]), so that the page stays small whatever the session holds.
pub(super) fn index(request: &Request, session: &mut Session) -> Response {
    let (token, csrf_cookie) = csrf::token_for_page(request);
    let (mut shown, flash_cookie) = messages::take(request, session);
    shown.retain(|m| !m.is_empty());
    let key = session.session_key().copied();
    let data: Vec<(String, String)> = session
        .items()
        .take(PAGE_MAX_KEYS)
        .map(|(k, v)| (k.clone(), shown_value(v)))
        .collect();
    let hidden = session.items().count().saturating_sub(PAGE_MAX_KEYS);
    let default_expiry = if session.config().expire_at_browser_close {
        "at browser close".to_owned()
    } else {
        human_duration(session.config().cookie_age.as_secs())
    };
    let body = html! {
        main {
            @for message in &shown {
                div.message role="status" { (message) }
            }
            section.wide #session {
                h2 { "Your session" }
                @match key {
                    Some(key) => {
                        dl {
                            dt { "Key (cookie " code { "sessionid" } ")" }
                            dd { code #session-key { (key) } }
                            dt { "File" }
                            dd { code #session-file { "sessions/" (key.file_name()) } }
                            dt { "Expires" }
                            dd #session-expiry {
                                @if let Some(at) = session.expires_at() { (format_rfc3339(at)) }
                                @if session.expire_at_browser_close() { " — and when the browser closes" }
                            }
                        }
                    }
                    None => p.muted #no-session { "No session yet: set a key below, or visit /setsession/." }
                }
                @if !data.is_empty() {
                    table #data {
                        thead { tr { th { "Key" } th { "Value (JSON)" } th {} } }
                        tbody {
                            @for (name, value) in &data {
                                tr {
                                    td { code.key { (name) } }
                                    td { code.value { (value) } }
                                    td {
                                        form method="post" action="/form/delete" {
                                            (csrf_field(&token))
                                            input type="hidden" name="name" value=(name);
                                            button.light type="submit" { "Delete" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if hidden > 0 {
                        p.muted #more-keys {
                            "… and " (hidden) " more keys: the whole session is at "
                            a href="/api/session" { "/api/session" } "."
                        }
                    }
                }
            }
            section {
                h2 { "Set a key" }
                form.row #set-form method="post" action="/form/set" {
                    (csrf_field(&token))
                    input #set-name type="text" name="name" placeholder="name" required;
                    input #set-value type="text" name="value" placeholder="value: JSON or text";
                    button #set-submit type="submit" { "Set" }
                }
                p.muted { "A value that parses as JSON is stored as that JSON, anything else as a string." }
                h2 { "Delete a key" }
                form.row #delete-form method="post" action="/form/delete" {
                    (csrf_field(&token))
                    input #delete-name type="text" name="name" placeholder="name" required;
                    button #delete-submit type="submit" { "Delete" }
                }
                h2 { "Count" }
                form.row #incr-form method="post" action="/form/incr" {
                    (csrf_field(&token))
                    input #incr-name type="text" name="name" value="counter" required;
                    button #incr-submit type="submit" { "+1" }
                }
            }
            section {
                h2 { "Expiry" }
                form.row #expiry-form method="post" action="/form/expiry" {
                    (csrf_field(&token))
                    input #expiry-seconds type="number" name="seconds" min="1" placeholder="seconds";
                    button name="mode" value="seconds" type="submit" { "In seconds" }
                    button.light name="mode" value="browser_close" type="submit" { "At browser close" }
                    button.light name="mode" value="default" type="submit" { "Default (" (default_expiry) ")" }
                }
                h2 { "Key and logout" }
                form.row #cycle-form method="post" action="/form/cycle" {
                    (csrf_field(&token))
                    button.light #cycle-submit type="submit" { "New key, same data" }
                }
                form.row #logout-form method="post" action="/form/logout" {
                    (csrf_field(&token))
                    button.danger #logout-submit type="submit" { "Log out (flush)" }
                }
            }
        }
    };
    let mut response = html_page(200, layout("filesession", body));
    for cookie in [csrf_cookie, flash_cookie].into_iter().flatten() {
        response.add_header("Set-Cookie", &cookie);
    }
    response
}

/// The 403 page of a failed CSRF check.
pub(super) fn forbidden(reason: &str) -> Response {
    let body = html! {
        main {
            section.wide #forbidden {
                h2 { "403 Forbidden" }
                p { "CSRF verification failed. Request aborted." }
                p.muted { "Reason: " (reason) }
                p { "Nothing was changed. " a href="/" { "Reload the page" } " and submit the form again." }
            }
        }
    };
    html_page(403, layout("403 Forbidden", body))
}

/// A form's error page (400, 415): what was wrong and the way back.
pub(super) fn form_error(status: u16, message: &str) -> Response {
    let body = html! {
        main {
            section.wide {
                h2 { "The form could not be used" }
                p #form-error { (message) }
                p { a href="/" { "Back to the page" } }
            }
        }
    };
    html_page(status, layout("Error", body))
}

/// Shows a JSON value as text for messages: strings without quotes.
pub(super) fn short(value: &Value) -> String {
    let text = value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned);
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn the_default_expiry_is_named_in_the_largest_whole_unit() {
        assert_eq!(human_duration(1_209_600), "2 weeks");
        assert_eq!(human_duration(3_600), "1 hour");
        assert_eq!(human_duration(86_400 * 3), "3 days");
        assert_eq!(human_duration(90), "90 seconds");
        assert_eq!(human_duration(120), "2 minutes");
        assert_eq!(human_duration(0), "0 seconds");
    }
}
