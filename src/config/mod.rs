//! Settings with Django's names and defaults, checked once at startup.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::signing::SecretKey;

// SESSION_FORMAT, and what Django's format and signed cookies need.
mod django;

pub use django::SessionFormat;

/// `SESSION_COOKIE_AGE` default: two weeks, in seconds, as Django.
pub const DEFAULT_COOKIE_AGE: Duration = Duration::from_secs(1_209_600);

/// How long a writer waits for a session's lock before giving up with
/// `StoreError::LockTimeout` (`SESSION_LOCK_TIMEOUT`). Default: 3 seconds.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(3);

/// The settings a session needs to answer expiry questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// `SESSION_COOKIE_AGE`: the lifetime of a session with the default expiry.
    /// Default: [`DEFAULT_COOKIE_AGE`] (1209600 s, two weeks), as Django.
    pub cookie_age: Duration,
    /// `SESSION_EXPIRE_AT_BROWSER_CLOSE`: whether sessions with the default expiry get a
    /// browser-session cookie. Default: `false`, as Django.
    pub expire_at_browser_close: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            cookie_age: DEFAULT_COOKIE_AGE,
            expire_at_browser_close: false,
        }
    }
}

/// How concurrent requests on one session are kept from losing each other's changes.
/// Setting `SESSION_LOCKING`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Locking {
    /// Default. A save locks the session for a few microseconds, re-reads the newest copy,
    /// applies only what this request changed, and writes. Requests never wait for each
    /// other's handlers; for one key the last save wins.
    #[default]
    Merge,
    /// The session's lock is held from its first access until the end of the request, as
    /// PHP does: requests of one session run one after the other, so a read-modify-write
    /// (a visit counter) is exact.
    Request,
}

impl Locking {
    /// Parses `merge` or `request`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "merge" => Some(Locking::Merge),
            "request" => Some(Locking::Request),
            _ => None,
        }
    }
}

/// The `SameSite` attribute of the session cookie (`SESSION_COOKIE_SAMESITE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// `SameSite=Strict`
    Strict,
    /// `SameSite=Lax`, Django's default.
    Lax,
    /// `SameSite=None`; the cookie then also gets `Secure`, which browsers require.
    None,
}

impl SameSite {
    /// Parses Django's values: `Strict`, `Lax`, `None`, or `false` (no attribute).
    /// Case-insensitive. `Ok(None)` means "omit the attribute".
    ///
    /// # Errors
    /// Any other value, with a message naming the setting.
    pub fn parse_setting(text: &str) -> Result<Option<SameSite>, String> {
        match text.to_ascii_lowercase().as_str() {
            "strict" => Ok(Some(SameSite::Strict)),
            "lax" => Ok(Some(SameSite::Lax)),
            "none" => Ok(Some(SameSite::None)),
            "false" => Ok(None),
            _ => Err(format!(
                "SESSION_COOKIE_SAMESITE must be Strict, Lax, None or false, not {text:?}"
            )),
        }
    }
}

/// Every setting of the session machinery. `Settings::default()` is Django's defaults, with
/// `SESSION_FILE_PATH` = `./sessions`. Each field is one of Django's settings (the table
/// [`SETTINGS`](crate::SETTINGS) gives its environment variable, range and help); durations
/// are [`Duration`]s, sizes bytes.
///
/// ```
/// use std::time::Duration;
/// use filesession::{Locking, Settings};
///
/// // In code:
/// let settings = Settings {
///     cookie_age: Duration::from_secs(3600),  // SESSION_COOKIE_AGE=3600
///     locking: Locking::Request,              // SESSION_LOCKING=request
///     ..Settings::default()
/// };
/// assert_eq!(settings.cookie_name, "sessionid");
///
/// // From Django's names (what the binary does with its environment and flags),
/// // checked as at startup:
/// let from_env = Settings::from_values(|name| match name {
///     "SESSION_COOKIE_AGE" => Some("3600".to_string()),
///     "SESSION_LOCKING" => Some("request".to_string()),
///     _ => None,
/// })?;
/// assert_eq!(from_env, settings);
/// assert!(Settings::from_values(|name| (name == "SESSION_LOCKING").then(|| "php".into())).is_err());
/// # Ok::<(), filesession::SettingError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `SESSION_COOKIE_NAME`. Default: `sessionid`.
    pub cookie_name: String,
    /// `SESSION_COOKIE_AGE`, seconds. Default: 1209600 (two weeks).
    pub cookie_age: Duration,
    /// `SESSION_COOKIE_DOMAIN`. Default: none (a host-only cookie).
    pub cookie_domain: Option<String>,
    /// `SESSION_COOKIE_SECURE`. Default: `false`.
    pub cookie_secure: bool,
    /// `SESSION_COOKIE_PATH`. Default: `/`.
    pub cookie_path: String,
    /// `SESSION_COOKIE_HTTPONLY`. Default: `true`.
    pub cookie_httponly: bool,
    /// `SESSION_COOKIE_SAMESITE`. Default: `Lax`; `None` here omits the attribute.
    pub cookie_samesite: Option<SameSite>,
    /// `SESSION_SAVE_EVERY_REQUEST`. Default: `false`.
    pub save_every_request: bool,
    /// `SESSION_EXPIRE_AT_BROWSER_CLOSE`. Default: `false`.
    pub expire_at_browser_close: bool,
    /// `SESSION_FILE_PATH`. Default: `./sessions`.
    pub file_path: PathBuf,
    /// `SESSION_LOCKING`: `merge` or `request`. Default: `merge`.
    pub locking: Locking,
    /// `SESSION_FILE_FSYNC`. Default: `false`.
    pub file_fsync: bool,
    /// `SESSION_FILE_IN_PLACE`: small saves written over their file in place. Default:
    /// `true`; off while servers of a version without checks share the directory.
    pub file_in_place: bool,
    /// `SESSION_LOCK_TIMEOUT`, how long a request waits for a session's lock. Default: 3 s.
    pub lock_timeout: Duration,
    /// `DATA_UPLOAD_MAX_MEMORY_SIZE`, the largest request body in bytes. Default: 65536.
    pub max_body: usize,
    /// `SESSION_ENGINE`: where sessions live. Default: [`Engine::File`].
    pub engine: Engine,
    /// `DATABASE_URL`: the database of [`Engine::Db`], as dj-database-url reads it:
    /// `sqlite:///relative/path`, `sqlite:////absolute/path`, or
    /// `postgres://user:password@host:port/dbname`. Default: `sqlite:///db.sqlite3`
    /// (Django's `./db.sqlite3`).
    pub database_url: String,
    /// `SESSION_DB_TABLE`: the table of [`Engine::Db`], created if missing. Default:
    /// `filesession_session`; with `SESSION_FORMAT=django` the default stands for Django's
    /// `django_session` ([`Settings::session_table`]).
    pub db_table: String,
    /// `SESSION_REDIS_URL`: the Redis of [`Engine::Redis`], and the cache of
    /// [`Engine::CachedDb`]. Default: `redis://127.0.0.1:6379/0`.
    pub redis_url: String,
    /// `SESSION_CACHE_TTL`: how long a session stays in the cache of [`Engine::CachedDb`]
    /// at most (never past its end). Default: an hour.
    pub cache_ttl: Duration,
    /// `SESSION_GC_INTERVAL`: how often the server starts a cleanup pass (expired sessions,
    /// leftovers of crashed writes), done a few milliseconds at a time between requests.
    /// Default: `None`, off, as Django (which leaves it to `clearsessions` from cron).
    pub gc_interval: Option<Duration>,
    /// `ALLOWED_HOSTS`: the `Host` values served; another gets 400 (Django's rule: a
    /// pattern matches exactly, case-insensitively; a leading dot also matches every
    /// subdomain; `*` matches all). Default: `.localhost`, `127.0.0.1`, `[::1]`, what Django
    /// allows with `DEBUG` on and the list empty.
    pub allowed_hosts: Vec<String>,
    /// `CSRF_TRUSTED_ORIGINS`: origins besides the request's own allowed to send unsafe
    /// requests to the JSON API (`https://example.com`, or `https://*.example.com` for
    /// every subdomain), as Django's. Default: none.
    pub csrf_trusted_origins: Vec<String>,
    /// `SECURE_PROXY_SSL_HEADER`: the header, and its value, by which a TLS proxy in front
    /// says a request came over HTTPS (Django's setting, given as
    /// `HTTP_X_FORWARDED_PROTO,https` or `X-Forwarded-Proto,https`); such a request's own
    /// origin is `https://<host>` for the CSRF origin check, and without an `Origin` its
    /// `Referer` is checked, as Django's `request.is_secure()`. Kept as the header's name
    /// (`X-Forwarded-Proto`) and value. Default: none, every request is plain HTTP (set it
    /// only behind a proxy that always sets or strips that header).
    pub secure_proxy_ssl_header: Option<(String, String)>,
    /// `SESSION_WORKERS`: worker processes serving the port (`runserver --workers N`), 1 to
    /// 256. Default: 1, this process serves alone.
    pub workers: u16,
    /// `SESSION_FORMAT`: how sessions are kept. Default: [`SessionFormat::Filesession`].
    pub format: SessionFormat,
    /// `SECRET_KEY`: the Django project's, which signs Django's session data and signed
    /// cookies; needed by `SESSION_FORMAT=django` and `SESSION_ENGINE=signed_cookies`.
    /// Default: none. Never printed.
    pub secret_key: Option<SecretKey>,
    /// `SECRET_KEY_FALLBACKS`: older secrets still accepted when verifying (comma-separated),
    /// as Django's. Default: none. Never printed.
    pub secret_key_fallbacks: Vec<SecretKey>,
    /// `SESSION_SIGNING_SALT`: the salt of Django's session data, `"django.contrib.sessions."`
    /// and the session store class's name. Default: `django.contrib.sessions.SessionStore`
    /// ([`SESSION_SALT`](crate::signing::SESSION_SALT)); a Django project with its own
    /// `SessionStore` subclass has another.
    pub signing_salt: String,
}

/// The largest `DATA_UPLOAD_MAX_MEMORY_SIZE`: 1 GiB (a session file holds at most 1 MiB).
pub const MAX_BODY_LIMIT: usize = 1 << 30;
/// The longest `SESSION_GC_INTERVAL`: a year.
pub const MAX_GC_INTERVAL: Duration = Duration::from_secs(365 * 86_400);
/// The longest `SESSION_LOCK_TIMEOUT`: an hour.
pub const MAX_LOCK_TIMEOUT: Duration = Duration::from_secs(3_600);

/// `ALLOWED_HOSTS` default.
pub const DEFAULT_ALLOWED_HOSTS: [&str; 3] = [".localhost", "127.0.0.1", "[::1]"];

/// A URL as it may be shown (banners, logs, errors): its password replaced by `***`, in
/// the user part and in the query options libpq reads it from (`?password=`,
/// `?sslpassword=`); an unparsable one is not shown at all, since it might hold one.
///
/// ```
/// use filesession::redacted;
/// assert_eq!(redacted("redis://:s3cret@cache:6379/0"), "redis://:***@cache:6379/0");
/// assert_eq!(redacted("postgres://app@db/app?password=s3cret&sslmode=disable"),
///            "postgres://app@db/app?password=***&sslmode=disable");
/// assert_eq!(redacted("not a url, maybe s3cret"), "<unparsable URL>");
/// ```
pub fn redacted(url: &str) -> String {
    const SECRET_OPTIONS: [&str; 2] = ["password", "sslpassword"];
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<unparsable URL>".to_owned();
    };
    let mut changed = false;
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
        changed = true;
    }
    let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    if pairs
        .iter()
        .any(|(k, _)| SECRET_OPTIONS.contains(&k.to_ascii_lowercase().as_str()))
    {
        let shown: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(k, v)| {
                if SECRET_OPTIONS.contains(&k.to_ascii_lowercase().as_str()) {
                    (k, "***".to_owned())
                } else {
                    (k, v)
                }
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(shown);
        changed = true;
    }
    if changed {
        parsed.to_string()
    } else {
        url.to_owned()
    }
}

/// `DATABASE_URL` default: SQLite at `./db.sqlite3`, Django's default database file.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:///db.sqlite3";

/// `SESSION_DB_TABLE` default.
pub const DEFAULT_DB_TABLE: &str = "filesession_session";

/// Django's session table, the `SESSION_DB_TABLE` of `SESSION_FORMAT=django`.
pub const DJANGO_DB_TABLE: &str = "django_session";

/// `SESSION_REDIS_URL` default.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// Where sessions live (`SESSION_ENGINE`, Django's setting name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// `file`: one JSON file per session in `SESSION_FILE_PATH`. The default.
    File,
    /// `redis`: one Redis hash per session at `SESSION_REDIS_URL`, expired by Redis
    /// itself; needs a build with the `redis` feature.
    Redis,
    /// `db`: one row per session in the database at `DATABASE_URL` (SQLite, or PostgreSQL
    /// with the `postgres` feature), Django's default engine.
    Db,
    /// `cached_db`: [`Engine::Db`] with a cache in the Redis at `SESSION_REDIS_URL` in
    /// front (Django's `cached_db`); needs the `redis` feature.
    CachedDb,
    /// `signed_cookies`: the whole session in the cookie, signed with `SECRET_KEY` as
    /// Django's `signed_cookies` engine does; nothing kept on the server, so nothing merged,
    /// locked or revoked (an old cookie replays after a logout, as in Django).
    SignedCookies,
}

impl Engine {
    /// Parses `file`, `db`, `cached_db` or `redis` (also Django's
    /// `django.contrib.sessions.backends.file`, `...backends.db` and `...backends.cached_db`).
    ///
    /// # Errors
    /// Any other value, with a message naming the setting.
    pub fn parse_setting(text: &str) -> Result<Engine, String> {
        match text.rsplit('.').next().unwrap_or(text) {
            "file" => Ok(Engine::File),
            "redis" => Ok(Engine::Redis),
            "db" => Ok(Engine::Db),
            "cached_db" => Ok(Engine::CachedDb),
            "signed_cookies" => Ok(Engine::SignedCookies),
            _ => Err(format!(
                "SESSION_ENGINE must be file, db, cached_db, redis or signed_cookies, not {text:?}"
            )),
        }
    }
}

pub use crate::http::DEFAULT_MAX_BODY;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cookie_name: "sessionid".into(),
            cookie_age: DEFAULT_COOKIE_AGE,
            cookie_domain: None,
            cookie_secure: false,
            cookie_path: "/".into(),
            cookie_httponly: true,
            cookie_samesite: Some(SameSite::Lax),
            save_every_request: false,
            expire_at_browser_close: false,
            file_path: PathBuf::from("sessions"),
            locking: Locking::Merge,
            file_fsync: false,
            file_in_place: true,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
            gc_interval: None,
            engine: Engine::File,
            database_url: DEFAULT_DATABASE_URL.into(),
            db_table: DEFAULT_DB_TABLE.into(),
            redis_url: DEFAULT_REDIS_URL.into(),
            cache_ttl: Duration::from_secs(3600),
            allowed_hosts: DEFAULT_ALLOWED_HOSTS.map(String::from).to_vec(),
            csrf_trusted_origins: Vec::new(),
            secure_proxy_ssl_header: None,
            workers: 1,
            format: SessionFormat::Filesession,
            secret_key: None,
            secret_key_fallbacks: Vec::new(),
            signing_salt: crate::signing::SESSION_SALT.into(),
        }
    }
}

/// A setting with a value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError(pub String);

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingError {}

fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Characters a cookie attribute value may hold: visible ASCII but `;` and `,`.
fn is_attribute_value(text: &str) -> bool {
    text.bytes()
        .all(|b| (0x21..0x7f).contains(&b) && b != b';' && b != b',')
}

impl Settings {
    /// Checks that every setting can work.
    ///
    /// # Errors
    /// The first bad setting, named with its Django name.
    pub fn validate(&self) -> Result<(), SettingError> {
        let bad = |msg: String| Err(SettingError(msg));
        if !is_cookie_name(&self.cookie_name) {
            return bad(format!(
                "SESSION_COOKIE_NAME must be a cookie name (letters, digits and !#$%&'*+-.^_`|~), not {:?}",
                self.cookie_name
            ));
        }
        if !self.cookie_path.starts_with('/') || !is_attribute_value(&self.cookie_path) {
            return bad(format!(
                "SESSION_COOKIE_PATH must start with '/' and hold no spaces, ';' or ',', not {:?}",
                self.cookie_path
            ));
        }
        if let Some(domain) = &self.cookie_domain
            && (domain.is_empty() || !is_attribute_value(domain))
        {
            return bad(format!(
                "SESSION_COOKIE_DOMAIN must be a domain such as .example.com, not {domain:?}"
            ));
        }
        if self.cookie_age.as_secs() > i64::MAX as u64 / 2 {
            return bad(format!(
                "SESSION_COOKIE_AGE is too large: {} seconds",
                self.cookie_age.as_secs()
            ));
        }
        if self.engine == Engine::CachedDb && !cfg!(feature = "redis") {
            return bad(
                "SESSION_ENGINE=cached_db needs filesession built with the redis feature: \
                 cargo run --features redis"
                    .into(),
            );
        }
        if self.engine == Engine::Redis && !cfg!(feature = "redis") {
            return bad(
                "SESSION_ENGINE=redis needs filesession built with the redis feature: \
                 cargo run --features redis"
                    .into(),
            );
        }
        if self.max_body == 0 || self.max_body > MAX_BODY_LIMIT {
            return bad(format!(
                "DATA_UPLOAD_MAX_MEMORY_SIZE must be from 1 to {MAX_BODY_LIMIT} bytes, not {}",
                self.max_body
            ));
        }
        if let Some(interval) = self.gc_interval
            && interval > MAX_GC_INTERVAL
        {
            return bad(format!(
                "SESSION_GC_INTERVAL must be at most {} seconds (a year; 0 = off), not {}",
                MAX_GC_INTERVAL.as_secs(),
                interval.as_secs()
            ));
        }
        if self.lock_timeout > MAX_LOCK_TIMEOUT {
            return bad(format!(
                "SESSION_LOCK_TIMEOUT must be at most {} seconds, not {}",
                MAX_LOCK_TIMEOUT.as_secs(),
                self.lock_timeout.as_secs_f64()
            ));
        }
        self.validate_signing()?;
        if !(1..=256).contains(&self.workers) {
            return bad(format!(
                "SESSION_WORKERS must be from 1 to 256, not {}",
                self.workers
            ));
        }
        if self.allowed_hosts.is_empty() {
            return bad("ALLOWED_HOSTS is empty: no request would be served (* allows all)".into());
        }
        if let Some(origin) = self
            .csrf_trusted_origins
            .iter()
            .find(|o| !o.contains("://"))
        {
            return bad(format!(
                "CSRF_TRUSTED_ORIGINS entries need a scheme (https://{origin}), not {origin:?}"
            ));
        }
        Ok(())
    }

    /// The part a `Session` needs.
    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            cookie_age: self.cookie_age,
            expire_at_browser_close: self.expire_at_browser_close,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_djangos() {
        let s = Settings::default();
        assert_eq!(s.cookie_name, "sessionid");
        assert_eq!(s.cookie_age, Duration::from_secs(1_209_600));
        assert_eq!(s.cookie_path, "/");
        assert!(s.cookie_httponly && !s.cookie_secure);
        assert_eq!(s.cookie_samesite, Some(SameSite::Lax));
        assert!(s.validate().is_ok());
    }

    #[test]
    fn bad_values_are_refused_with_the_setting_named() {
        let cases: Vec<(Settings, &str)> = vec![
            (
                Settings {
                    cookie_name: "a b".into(),
                    ..Settings::default()
                },
                "SESSION_COOKIE_NAME",
            ),
            (
                Settings {
                    cookie_name: "".into(),
                    ..Settings::default()
                },
                "SESSION_COOKIE_NAME",
            ),
            (
                Settings {
                    cookie_path: "x".into(),
                    ..Settings::default()
                },
                "SESSION_COOKIE_PATH",
            ),
            (
                Settings {
                    cookie_path: "/a;b".into(),
                    ..Settings::default()
                },
                "SESSION_COOKIE_PATH",
            ),
            (
                Settings {
                    cookie_domain: Some("ex ample.com".into()),
                    ..Settings::default()
                },
                "SESSION_COOKIE_DOMAIN",
            ),
            (
                Settings {
                    max_body: 0,
                    ..Settings::default()
                },
                "DATA_UPLOAD_MAX_MEMORY_SIZE",
            ),
        ];
        for (settings, name) in cases {
            let err = settings.validate().unwrap_err();
            assert!(err.0.starts_with(name), "{err}");
        }
        assert!(
            SameSite::parse_setting("sometimes")
                .unwrap_err()
                .contains("SESSION_COOKIE_SAMESITE")
        );
        assert_eq!(SameSite::parse_setting("false"), Ok(None));
        assert_eq!(
            SameSite::parse_setting("strict"),
            Ok(Some(SameSite::Strict))
        );
    }

    #[test]
    fn engines_take_our_names_and_djangos() {
        for (text, engine) in [
            ("file", Engine::File),
            ("django.contrib.sessions.backends.file", Engine::File),
            ("db", Engine::Db),
            ("django.contrib.sessions.backends.db", Engine::Db),
            ("redis", Engine::Redis),
            ("cached_db", Engine::CachedDb),
            (
                "django.contrib.sessions.backends.cached_db",
                Engine::CachedDb,
            ),
        ] {
            assert_eq!(Engine::parse_setting(text), Ok(engine), "{text}");
        }
        for text in [
            "signed_cookies",
            "django.contrib.sessions.backends.signed_cookies",
        ] {
            assert_eq!(
                Engine::parse_setting(text),
                Ok(Engine::SignedCookies),
                "{text}"
            );
        }
        // Django's cache engine keeps pickles: refused, naming the setting.
        for text in ["cache", "django.contrib.sessions.backends.cache", ""] {
            let err = Engine::parse_setting(text).unwrap_err();
            assert!(err.contains("SESSION_ENGINE"), "{err}");
        }
    }
}
