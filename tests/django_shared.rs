//! Sessions shared with a running Django site (`SESSION_FORMAT=django`, docs/django.md):
//! Django 5.2 (tests/django/sharedsite under `runserver`: JSON views over the session and
//! django.contrib.auth) and filesession on one store with the same `SECRET_KEY`, one
//! browser carrying the cookie between the two (same name, both on 127.0.0.1). For each
//! engine (db on SQLite, db on PostgreSQL with `--features postgres`, file,
//! signed_cookies), in [`scenarios`]:
//!
//! * (a) Django writes, filesession reads; (b) filesession writes non-ASCII text, a 20-digit
//!   integer and nested JSON, Django reads exactly those; (c) a session filesession creates
//!   is Django's;
//! * (d) Django's login is seen by filesession, filesession's logout logs out of Django
//!   (signed cookies: the cookie is deleted, a copy still replays on both sides);
//! * (e) key rotation with `SECRET_KEY_FALLBACKS`, both ways; without it, no session;
//! * (f) a changed byte in the row, file or cookie is no session on both sides, and
//!   filesession's next write is a new session;
//! * (g) an expiry set on either side ends the session on the other;
//! * (h, db and file) writers on both sides at once: ours never lose a key of Django's on
//!   db; on file, see [`scenarios::concurrent_writers`].
//!
//! Python: `FILESESSION_DJANGO_PYTHON`, else `tests/django/.venv/bin/python`, else
//! `bench/.venv/bin/python`, with Django 5.2 (and psycopg 3 for PostgreSQL). Without one
//! the tests print "SKIPPED: ..." and pass, unless `FILESESSION_DJANGO_TEST=require`;
//! PostgreSQL (`FILESESSION_POSTGRES_URL`, default the cluster of `.ci/run`) likewise with
//! `FILESESSION_POSTGRES_TEST=require`.
//!
//! ```sh
//! tests/django/.venv/bin/pip install "Django==5.2.*" "psycopg[binary]==3.2.*"
//! cargo test --test django_shared
//! cargo test --features postgres --test django_shared
//! ```

#![cfg(feature = "sqlite")]

mod common;
#[path = "django_shared/harness.rs"]
mod harness;
#[path = "django_shared/http.rs"]
mod http;
#[path = "django_shared/scenarios.rs"]
mod scenarios;

use harness::{Engine, OLD_KEY, Site};
use http::Browser;
use scenarios::Ctx;

type Scenario = (&'static str, fn(&Ctx));

/// Every scenario, and the engines each runs on.
fn scenarios_for(engine: Engine) -> Vec<Scenario> {
    let mut all: Vec<Scenario> = vec![
        (
            "a: Django writes, filesession reads",
            scenarios::django_writes_filesession_reads,
        ),
        (
            "b: filesession writes, Django reads exactly",
            scenarios::filesession_writes_django_reads,
        ),
        (
            "c: filesession creates, Django reads",
            scenarios::filesession_creates_django_reads,
        ),
        ("d: login and logout", scenarios::login_and_logout),
        ("e: key rotation", scenarios::key_rotation),
        ("f: tampering", scenarios::tampering),
        ("g: expiry", scenarios::expiry),
    ];
    if engine != Engine::SignedCookies {
        all.push((
            "h: writers on both sides at once",
            scenarios::concurrent_writers as fn(&Ctx),
        ));
    }
    if engine == Engine::SignedCookies {
        all.push((
            "g: SESSION_COOKIE_AGE",
            scenarios::signed_cookie_age as fn(&Ctx),
        ));
        all.push(("cookie over 4096 bytes", scenarios::cookie_too_large));
    }
    all
}

/// The text of a panic's payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic".into())
}

/// Runs every scenario of `engine` at once (each on its own sessions), on one Django and
/// one filesession, and fails with every failure listed.
fn run(engine: Engine) {
    let postgres = engine.setting() == "db" && engine != Engine::DbSqlite;
    let test = format!("sessions shared with Django ({engine:?})");
    let python = match harness::find_python(postgres) {
        Ok(p) => p,
        Err(why) => {
            common::skip(&test, &why, "FILESESSION_DJANGO_TEST");
            return;
        }
    };
    // PostgreSQL unreachable is a skip (FILESESSION_POSTGRES_TEST=require: a failure), as
    // in tests/conformance.rs; anything after that is a failure.
    #[cfg(feature = "postgres")]
    let pg = match postgres.then(harness::PgDatabase::create).transpose() {
        Ok(pg) => pg,
        Err(e) => {
            common::skip(&test, &e, "FILESESSION_POSTGRES_TEST");
            return;
        }
    };
    let site = Site::new(
        &python,
        engine,
        #[cfg(feature = "postgres")]
        pg,
    )
    .unwrap_or_else(|e| panic!("{test}: {e}"));
    let django = site
        .django(OLD_KEY, "", &[])
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    let ours = site.ours(OLD_KEY, "", &[]);
    let ctx = Ctx {
        site: &site,
        django: &django,
        ours: &ours,
    };
    let chosen = scenarios_for(engine);
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = chosen
            .iter()
            .map(|(name, scenario)| {
                let ctx = &ctx;
                (*name, s.spawn(move || scenario(ctx)))
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|(name, h)| {
                h.join()
                    .err()
                    .map(|p| format!("{engine:?} / {name}: {}", panic_text(&*p)))
            })
            .collect()
    });
    if !failures.is_empty() {
        let log = django.log();
        let tail = &log[log.len().saturating_sub(4000)..];
        panic!(
            "{} of {} scenarios failed:\n{}\n\nDjango's stderr (the end):\n{tail}\n\n\
             filesession's stderr (the end):\n{}",
            failures.len(),
            chosen.len(),
            failures.join("\n"),
            {
                let log = ours.0.log();
                log[log.len().saturating_sub(4000)..].to_owned()
            }
        );
    }
}

/// Spoils the stored session the browser names (one character of its signed payload: the
/// row's `session_data`, the file, or the cookie itself) and returns the spoiled text.
fn tamper(site: &Site, b: &mut Browser) -> String {
    let key = b.key();
    match site.engine {
        Engine::SignedCookies => {
            let spoiled = scenarios::spoil(&key);
            b.cookie = Some(spoiled.clone());
            spoiled
        }
        Engine::File => {
            let path = site.session_file(&key);
            let text = std::fs::read_to_string(&path).expect("the session file");
            let spoiled = scenarios::spoil(&text);
            std::fs::write(&path, &spoiled).expect("spoil the session file");
            spoiled
        }
        Engine::DbSqlite => {
            let conn = sqlite(site);
            let text: String = conn
                .query_row(
                    "SELECT session_data FROM django_session WHERE session_key = ?1",
                    [&key],
                    |row| row.get(0),
                )
                .expect("the session's row");
            let spoiled = scenarios::spoil(&text);
            conn.execute(
                "UPDATE django_session SET session_data = ?1 WHERE session_key = ?2",
                [&spoiled, &key],
            )
            .expect("spoil the row");
            spoiled
        }
        #[cfg(feature = "postgres")]
        Engine::DbPostgres => {
            let mut pg = site.postgres.as_ref().expect("a database").connect();
            let row = pg
                .query_one(
                    "SELECT session_data FROM django_session WHERE session_key = $1",
                    &[&key],
                )
                .expect("the session's row");
            let spoiled = scenarios::spoil(row.get(0));
            pg.query_one(
                "UPDATE django_session SET session_data = $1 WHERE session_key = $2 \
                 RETURNING 1",
                &[&spoiled, &key],
            )
            .expect("spoil the row");
            spoiled
        }
    }
}

/// What the store holds under `key` (None: nothing, or signed cookies).
fn stored(site: &Site, key: &str) -> Option<String> {
    match site.engine {
        Engine::SignedCookies => None,
        Engine::File => std::fs::read_to_string(site.session_file(key)).ok(),
        Engine::DbSqlite => sqlite(site)
            .query_row(
                "SELECT session_data FROM django_session WHERE session_key = ?1",
                [key],
                |row| row.get(0),
            )
            .ok(),
        #[cfg(feature = "postgres")]
        Engine::DbPostgres => site
            .postgres
            .as_ref()
            .expect("a database")
            .connect()
            .query_one(
                "SELECT session_data FROM django_session WHERE session_key = $1",
                &[&key],
            )
            .ok()
            .map(|row| row.get(0)),
    }
}

fn sqlite(site: &Site) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(site.dir.path().join("db.sqlite3")).expect("SQLite");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

#[test]
fn signed_cookies_are_shared_with_django() {
    run(Engine::SignedCookies);
}

#[test]
fn db_sessions_on_sqlite_are_shared_with_django() {
    run(Engine::DbSqlite);
}

#[test]
fn file_sessions_are_shared_with_django() {
    run(Engine::File);
}

#[cfg(feature = "postgres")]
#[test]
fn db_sessions_on_postgres_are_shared_with_django() {
    run(Engine::DbPostgres);
}

/// Without `--features postgres` the PostgreSQL case is not compiled: say so.
#[cfg(not(feature = "postgres"))]
#[test]
fn postgres_case_is_not_compiled_without_its_feature() {
    common::skip(
        "sessions shared with Django on PostgreSQL",
        "not compiled (cargo test --features postgres --test django_shared, with a server at \
         FILESESSION_POSTGRES_URL)",
        "FILESESSION_POSTGRES_TEST",
    );
}
