//! The scenarios of tests/django_shared.rs, each on one engine's shared store: Django and
//! filesession with the same `SECRET_KEY`, one browser carrying the cookie between them.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::harness::{Django, Engine, NEW_KEY, OLD_KEY, Ours, Site};
use crate::http::{Browser, empty, without_expiry};

/// What both sides share in one scenario: the store, and a Django and a filesession on it
/// with `SECRET_KEY=OLD_KEY`.
pub struct Ctx<'a> {
    pub site: &'a Site,
    pub django: &'a Django,
    pub ours: &'a Ours,
}

/// Values a writer must hand over exactly: non-ASCII text (Django escapes it as
/// `\uXXXX`, surrogate pairs included), an integer over 2^64 (a float would show as
/// `1.2345678901234567e+19`), nested JSON in its key order.
pub const VALUES: &str = r#"{"name": "Zoë 😀", "big": 12345678901234567890, "nested": {"list": [1, {"b": null, "c": [true, 1.5, "x"]}], "empty": {}, "z": -7}}"#;

/// Each key of `expected` has, in `got`, the same JSON text (numbers as written, keys in
/// order).
fn assert_same_values(what: &str, got: &Value, expected: &str) {
    let expected: Value = serde_json::from_str(expected).expect("JSON");
    for (key, value) in expected.as_object().expect("an object") {
        assert_eq!(
            got.get(key).map(Value::to_string),
            Some(value.to_string()),
            "{what}: {key} (all: {got})"
        );
    }
}

/// (a) A session Django sets is read by filesession with the same cookie, values exact.
pub fn django_writes_filesession_reads(c: &Ctx) {
    let mut b = Browser::default();
    c.django.post(&mut b, "/set", Some(VALUES));
    let cookie = b.key();
    let reply = b.send(c.ours.addr(), "GET", "/api/session", None);
    assert_eq!(reply.status, 200, "{}", reply.show());
    assert!(
        reply.session_cookie().is_none(),
        "a read sets no cookie: {:?}",
        reply.headers
    );
    let data = reply.json()["data"].clone();
    assert_same_values("filesession reading Django's session", &data, VALUES);
    assert_eq!(without_expiry(&data).as_object().map(|m| m.len()), Some(3));
    assert_eq!(b.key(), cookie);
}

/// (b) What filesession writes, Django reads exactly; and Django's write on top keeps it.
pub fn filesession_writes_django_reads(c: &Ctx) {
    let mut b = Browser::default();
    c.django
        .post(&mut b, "/set", Some(r#"{"first": "django"}"#));
    c.ours.post(&mut b, "/api/session", Some(VALUES));
    let reply = b.send(c.django.addr, "GET", "/session", None);
    assert_eq!(reply.status, 200, "{}", reply.show());
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    assert!(
        text.contains("12345678901234567890") && text.contains(r"Zo\u00eb \ud83d\ude00"),
        "Django's own JSON of the values: {text}"
    );
    let data = reply.json()["session"].clone();
    assert_same_values("Django reading filesession's write", &data, VALUES);
    assert_same_values("Django's key kept", &data, r#"{"first": "django"}"#);
}

/// (c) A session filesession creates (no cookie before) is Django's session too.
pub fn filesession_creates_django_reads(c: &Ctx) {
    let mut b = Browser::default();
    let reply = c.ours.post(
        &mut b,
        "/api/session",
        Some(r#"{"created_by": "filesession"}"#),
    );
    let cookie = reply
        .session_cookie()
        .expect("a new session sets its cookie");
    if c.site.engine != Engine::SignedCookies {
        assert!(
            cookie.value.len() == 32
                && cookie
                    .value
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "Django's key form: {:?}",
            cookie.value
        );
    }
    let answer = c.django.session(&mut b);
    assert_eq!(
        without_expiry(&answer["session"]),
        json!({"created_by": "filesession"})
    );
    // Django writes to it in turn, and filesession sees both.
    c.django.post(&mut b, "/set", Some(r#"{"then": "django"}"#));
    assert_eq!(
        without_expiry(&c.ours.data(&mut b)),
        json!({"created_by": "filesession", "then": "django"})
    );
}

/// (d) Django's login is seen by filesession; filesession's logout logs out of Django (for
/// signed cookies: the browser's cookie is deleted, but a copy of it replays on both sides,
/// the documented limit of that engine).
pub fn login_and_logout(c: &Ctx) {
    let mut b = Browser::default();
    c.ours
        .post(&mut b, "/api/session", Some(r#"{"cart": [1, 2]}"#));
    let anonymous = b.key();
    let login = c.django.post(&mut b, "/login", None);
    let user = login.json()["user"].clone();
    assert!(user.is_u64(), "logged in: {}", login.show());
    assert_ne!(b.key(), anonymous, "login() cycles the key");
    let data = c.ours.data(&mut b);
    assert_eq!(data["_auth_user_id"], json!(user.to_string()), "{data}");
    assert_eq!(
        data["_auth_user_backend"],
        json!("django.contrib.auth.backends.ModelBackend")
    );
    let hash = data["_auth_user_hash"].as_str().unwrap_or_default();
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{data}"
    );
    assert_eq!(data["cart"], json!([1, 2]), "login keeps the data");
    assert_eq!(c.django.whoami(&mut b), user);

    // filesession writes to the logged-in session: Django still knows the user.
    c.ours
        .post(&mut b, "/api/session", Some(r#"{"after_login": true}"#));
    assert_eq!(c.django.whoami(&mut b), user);

    let copy = b.clone();
    let flush = c.ours.post(&mut b, "/api/session/flush", None);
    let deletion = flush
        .session_cookie()
        .expect("the logout deletes the cookie");
    assert!(deletion.deletes(), "{deletion:?}");
    assert_eq!(b.cookie, None);
    assert_eq!(
        c.django.whoami(&mut b),
        Value::Null,
        "the browser is logged out"
    );

    let mut replay = copy;
    if c.site.engine == Engine::SignedCookies {
        // Nothing on the server to revoke: the old cookie is still a login on both sides.
        assert_eq!(c.django.whoami(&mut replay.clone()), user);
        let data = c.ours.data(&mut replay);
        assert_eq!(data["_auth_user_id"], json!(user.to_string()), "{data}");
    } else {
        assert_eq!(c.django.whoami(&mut replay.clone()), Value::Null);
        assert_eq!(c.ours.data(&mut replay.clone()), empty());
        // And Django's logout is filesession's too.
        let mut b = Browser::default();
        c.django.post(&mut b, "/login", None);
        assert_eq!(
            c.ours.data(&mut b.clone())["_auth_user_id"],
            json!(user.to_string())
        );
        let copy = b.clone();
        c.django.post(&mut b, "/logout", None);
        assert_eq!(b.cookie, None, "Django's logout deletes the cookie");
        assert_eq!(c.ours.data(&mut copy.clone()), empty());
    }
}

/// (e) Key rotation: what one side signs with OLD, the other reads with NEW and
/// `SECRET_KEY_FALLBACKS=OLD`, both ways; without the fallback, no session.
pub fn key_rotation(c: &Ctx) {
    let site = c.site;
    let ours_rotated = site.ours(NEW_KEY, OLD_KEY, &[]);
    let ours_new = site.ours(NEW_KEY, "", &[]);
    let django_rotated = site.django(NEW_KEY, OLD_KEY, &[]).expect("Django");
    let django_new = site.django(NEW_KEY, "", &[]).expect("Django");

    // Django (OLD) signs; filesession (NEW, fallback OLD) reads.
    let mut b = Browser::default();
    c.django
        .post(&mut b, "/set", Some(r#"{"signed_by": "django old"}"#));
    assert_eq!(
        without_expiry(&ours_rotated.data(&mut b.clone())),
        json!({"signed_by": "django old"})
    );
    assert_eq!(ours_new.data(&mut b.clone()), empty(), "no fallback");

    // filesession (OLD) signs; Django (NEW, fallback OLD) reads.
    let mut b = Browser::default();
    c.ours.post(
        &mut b,
        "/api/session",
        Some(r#"{"signed_by": "filesession old"}"#),
    );
    assert_eq!(
        without_expiry(&django_rotated.data(&mut b.clone())),
        json!({"signed_by": "filesession old"})
    );
    assert_eq!(django_new.data(&mut b.clone()), empty(), "no fallback");

    // A write after the rotation signs with NEW: read by the rotated Django, not by the
    // one that has only OLD.
    ours_rotated.post(&mut b, "/api/session", Some(r#"{"rotated": true}"#));
    assert_eq!(
        without_expiry(&django_rotated.data(&mut b.clone())),
        json!({"signed_by": "filesession old", "rotated": true})
    );
    assert_eq!(c.django.data(&mut b.clone()), empty(), "signed with NEW");
}

/// Changes one character in the middle of a signed value's payload (never into the
/// signature's last character, whose low bits base64 may ignore).
pub fn spoil(signed: &str) -> String {
    let payload = signed.split(':').next().unwrap_or_default();
    let at = payload.len() / 2;
    let old = signed.as_bytes()[at];
    let new = if old == b'A' { 'B' } else { 'A' };
    let mut text = signed.to_owned();
    text.replace_range(at..=at, &new.to_string());
    text
}

/// (f) A changed byte in the stored session (the row, the file, the cookie) is no session
/// on both sides (200, empty), and filesession's next write is a new session.
pub fn tampering(c: &Ctx) {
    for writer in ["django", "filesession"] {
        let mut b = Browser::default();
        let values = r#"{"tamper": "me"}"#;
        if writer == "django" {
            c.django.post(&mut b, "/set", Some(values));
        } else {
            c.ours.post(&mut b, "/api/session", Some(values));
        }
        let key = b.key();
        let spoiled = crate::tamper(c.site, &mut b);
        let answer = c.django.session(&mut b.clone());
        assert_eq!(answer["session"], empty(), "{writer}: Django: {answer}");
        assert_eq!(
            c.ours.data(&mut b.clone()),
            empty(),
            "{writer}: filesession"
        );
        c.ours.post(&mut b, "/api/session", Some(r#"{"fresh": 1}"#));
        assert_ne!(b.key(), key, "{writer}: a new session, not the spoiled one");
        assert_eq!(
            without_expiry(&c.django.data(&mut b.clone())),
            json!({"fresh": 1}),
            "{writer}"
        );
        if let Some(stored) = crate::stored(c.site, &key) {
            assert_eq!(
                stored, spoiled,
                "{writer}: the spoiled session is left alone"
            );
        }
    }
}

/// Sleeps until `from + d`.
fn sleep_until(from: Instant, d: Duration) {
    if let Some(left) = d.checked_sub(from.elapsed()) {
        std::thread::sleep(left);
    }
}

/// How long past an expiry of 2 s to look again.
const PAST: Duration = Duration::from_millis(2_600);

/// A read this soon after an expiry of 2 s was set must still find the session (a signed
/// cookie's time is whole seconds: it may end up to 1 s early). A read that came back later
/// (a machine too busy) proves nothing either way, and is not asserted.
const STILL_LIVE: Duration = Duration::from_millis(900);

/// (g) Expiry set on one side is kept by the other. Django's file backend never expires a
/// session whose `_session_expiry` is an int (`get_expiry_age` returns the int as is), so
/// with the file engine an expiry Django must enforce is an absolute time; and Django's
/// signed_cookies engine ignores `_session_expiry` on load (the cookie's Max-Age does it in
/// the browser; Django checks only SESSION_COOKIE_AGE: see `signed_cookie_age`).
pub fn expiry(c: &Ctx) {
    let engine = c.site.engine;
    let set_expiry = |on_django: bool| -> String {
        if engine == Engine::File {
            let at = SystemTime::now() + Duration::from_secs(2);
            let text = filesession::format_rfc3339(at);
            if on_django {
                format!(r#"{{"at": "{}"}}"#, text.replace('Z', "+00:00"))
            } else {
                format!(r#"{{"at": "{text}"}}"#)
            }
        } else {
            r#"{"seconds": 2}"#.to_owned()
        }
    };
    std::thread::scope(|s| {
        let django_sets = s.spawn(|| {
            let mut b = Browser::default();
            c.django.post(&mut b, "/set", Some(r#"{"g": 1}"#));
            let set = Instant::now();
            let reply = c.django.post(&mut b, "/expiry", Some(&set_expiry(true)));
            let max_age = reply.session_cookie().and_then(|c| c.max_age);
            assert!(
                matches!(max_age, Some(1 | 2)),
                "Django's cookie: {max_age:?}"
            );
            let before = without_expiry(&c.ours.data(&mut b.clone()));
            if set.elapsed() < STILL_LIVE {
                assert_eq!(before, json!({"g": 1}));
            }
            sleep_until(set, PAST);
            assert_eq!(
                c.ours.data(&mut b.clone()),
                empty(),
                "expired for filesession"
            );
            if engine != Engine::SignedCookies {
                assert_eq!(c.django.data(&mut b.clone()), empty(), "expired for Django");
            }
        });
        let ours_sets = s.spawn(|| {
            let mut b = Browser::default();
            c.ours.post(&mut b, "/api/session", Some(r#"{"g": 2}"#));
            let set = Instant::now();
            let reply = c
                .ours
                .post(&mut b, "/api/session/expiry", Some(&set_expiry(false)));
            let max_age = reply.session_cookie().and_then(|c| c.max_age);
            assert!(
                matches!(max_age, Some(1 | 2)),
                "filesession's cookie: {max_age:?}"
            );
            let before = without_expiry(&c.django.data(&mut b.clone()));
            if set.elapsed() < STILL_LIVE {
                assert_eq!(before, json!({"g": 2}));
            }
            sleep_until(set, PAST);
            if engine != Engine::SignedCookies {
                assert_eq!(c.django.data(&mut b.clone()), empty(), "expired for Django");
            }
            assert_eq!(
                c.ours.data(&mut b.clone()),
                empty(),
                "expired for filesession"
            );
        });
        let quirk = (engine == Engine::File).then(|| {
            s.spawn(|| {
                // Django's quirk, as documented: an int expiry in a file never expires there
                // (filesession enforces it).
                let mut b = Browser::default();
                c.ours.post(&mut b, "/api/session", Some(r#"{"g": 3}"#));
                let set = Instant::now();
                c.ours
                    .post(&mut b, "/api/session/expiry", Some(r#"{"seconds": 2}"#));
                sleep_until(set, PAST);
                assert_eq!(
                    without_expiry(&c.django.data(&mut b.clone())),
                    json!({"g": 3}),
                    "Django's file backend keeps a session with an int expiry"
                );
                assert_eq!(
                    c.ours.data(&mut b.clone()),
                    empty(),
                    "expired for filesession"
                );
            })
        });
        for handle in [Some(django_sets), Some(ours_sets), quirk]
            .into_iter()
            .flatten()
        {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

/// (g, signed cookies) Both sides refuse a cookie signed more than SESSION_COOKIE_AGE ago,
/// whoever signed it.
pub fn signed_cookie_age(c: &Ctx) {
    let age = [("SESSION_COOKIE_AGE", "2")];
    let django = c.site.django(OLD_KEY, "", &age).expect("Django");
    let ours = c.site.ours(OLD_KEY, "", &age);
    let mut by_ours = Browser::default();
    let mut by_django = Browser::default();
    let first = Instant::now();
    ours.post(
        &mut by_ours,
        "/api/session",
        Some(r#"{"by": "filesession"}"#),
    );
    django.post(&mut by_django, "/set", Some(r#"{"by": "django"}"#));
    let last = Instant::now();
    let read_by_django = django.data(&mut by_ours.clone());
    let read_by_ours = ours.data(&mut by_django.clone());
    if first.elapsed() < STILL_LIVE {
        assert_eq!(read_by_django, json!({"by": "filesession"}));
        assert_eq!(read_by_ours, json!({"by": "django"}));
    }
    // Both signed before `last`, so more than 2 s old by then.
    sleep_until(last, PAST);
    assert_eq!(django.data(&mut by_ours.clone()), empty());
    assert_eq!(ours.data(&mut by_django.clone()), empty());
}

/// (signed cookies) A session too big for a cookie is a 500 with the reason, and the
/// browser keeps its cookie.
pub fn cookie_too_large(c: &Ctx) {
    let mut b = Browser::default();
    c.ours.post(&mut b, "/api/session", Some(r#"{"small": 1}"#));
    let before = b.key();
    // Random text that zlib cannot shrink to 4 KiB.
    let big: String = (0..200).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let reply = b.send(
        c.ours.addr(),
        "POST",
        "/api/session",
        Some(&format!(r#"{{"big": "{big}"}}"#)),
    );
    assert_eq!(reply.status, 500, "{}", reply.show());
    assert!(
        String::from_utf8_lossy(&reply.body).contains("over the 4096 bytes a browser keeps"),
        "{}",
        reply.show()
    );
    assert!(reply.session_cookie().is_none());
    assert_eq!(b.key(), before);
    assert_eq!(c.django.data(&mut b), json!({"small": 1}));
}

/// (db, file) Writers on both sides at once, on one session. Django's saves are blind
/// whole-session writes: a key of ours may be lost to one (not asserted). filesession's
/// saves merge into what is stored:
///
/// * db: under the row's lock, so none of Django's keys is ever lost;
/// * file: under the file's `flock`, and again when Django renamed a file in during the
///   write; but until that second write the published file lacks Django's change, and a
///   Django request that reads it then writes the session back without it. So a Django key
///   can be lost here (docs/django.md says so); what holds is that every request succeeds,
///   the first and the last of Django's keys are kept, and both sides read one session.
pub fn concurrent_writers(c: &Ctx) {
    const WRITES: usize = 30;
    let mut b = Browser::default();
    c.django.post(&mut b, "/set", Some(r#"{"start": 0}"#));
    std::thread::scope(|s| {
        let django = s.spawn(|| {
            let mut b = b.clone();
            for i in 0..WRITES {
                c.django
                    .post(&mut b, "/set", Some(&format!(r#"{{"d{i}": {i}}}"#)));
            }
        });
        let ours = s.spawn(|| {
            let mut b = b.clone();
            for i in 0..WRITES {
                c.ours
                    .post(&mut b, "/api/session", Some(&format!(r#"{{"o{i}": {i}}}"#)));
            }
        });
        for handle in [django, ours] {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    let data = c.django.data(&mut b);
    let lost: Vec<String> = (0..WRITES)
        .map(|i| format!("d{i}"))
        .filter(|k| data.get(k).is_none())
        .collect();
    eprintln!(
        "{:?}, writers on both sides at once: {} of Django's {WRITES} keys lost",
        c.site.engine,
        lost.len()
    );
    if c.site.engine == Engine::File {
        let last = format!("d{}", WRITES - 1);
        assert!(
            !lost.contains(&last),
            "Django's last key lost (all: {data})"
        );
    } else {
        assert!(
            lost.is_empty(),
            "Django's keys lost: {lost:?} (all: {data})"
        );
    }
    assert_eq!(data["start"], json!(0));
    assert_eq!(
        c.ours.data(&mut b),
        data,
        "both sides read the same session"
    );
}
