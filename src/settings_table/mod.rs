//! The one table of settings: each setting's Django name (also its environment variable),
//! its flag, default, help, and how it is read into [`Settings`] and written back out.
//! The command line, `--help`, the hand-off to worker processes, the README's table (a test
//! checks it) and [`Settings::from_values`] are all derived from [`SETTINGS`]; adding a
//! setting is one entry here and one field in [`Settings`].

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Locking;
use crate::config::{Engine, SameSite, SessionFormat, SettingError, Settings};
use crate::signing::SecretKey;

// How a value's text is read (yes/no, seconds, lists, the proxy header); this file: the
// table, and settings to and from text by it.
mod parse;

use parse::{boolean, list, proxy_ssl_header, seconds};

/// One setting, as [`SETTINGS`] lists it.
pub struct Setting {
    /// The Django name, which is also the environment variable (`SESSION_COOKIE_AGE`).
    pub name: &'static str,
    /// The long flag, without `--` (`session-cookie-age`); the name is an alias of it.
    pub flag: &'static str,
    /// The default, as text as it would be given; empty when unset by default.
    pub default: &'static str,
    /// One line of help for `--help`.
    pub help: &'static str,
    /// A yes/no setting: the flag alone means `true`.
    pub boolean: bool,
    set: fn(&mut Settings, &str) -> Result<(), String>,
    show: fn(&Settings) -> Option<String>,
}

impl Setting {
    /// Reads `text` into `settings`.
    ///
    /// # Errors
    /// The text is not a value of this setting; the message names the setting.
    pub fn set(&self, settings: &mut Settings, text: &str) -> Result<(), SettingError> {
        (self.set)(settings, text)
            .map_err(|why| SettingError(format!("{} cannot be {text:?}: {why}", self.name)))
    }

    /// This setting's value in `settings` as text that [`set`](Setting::set) reads back;
    /// `None` when unset (`SESSION_COOKIE_DOMAIN` without a domain).
    pub fn show(&self, settings: &Settings) -> Option<String> {
        (self.show)(settings)
    }
}

macro_rules! setting {
    ($name:literal, $flag:literal, $default:literal, $help:literal, bool,
     |$s:ident| $field:expr) => {
        Setting {
            name: $name,
            flag: $flag,
            default: $default,
            help: $help,
            boolean: true,
            set: |$s, text| {
                $field = boolean(text)?;
                Ok(())
            },
            show: |$s| Some($field.to_string()),
        }
    };
}

/// Every setting, in the order `--help` and the README list them.
pub static SETTINGS: &[Setting] = &[
    Setting {
        name: "SESSION_COOKIE_NAME",
        flag: "session-cookie-name",
        default: "sessionid",
        help: "The session cookie's name.",
        boolean: false,
        set: |s, t| {
            t.clone_into(&mut s.cookie_name);
            Ok(())
        },
        show: |s| Some(s.cookie_name.clone()),
    },
    Setting {
        name: "SESSION_COOKIE_AGE",
        flag: "session-cookie-age",
        default: "1209600",
        help: "Session lifetime in seconds (cookie Max-Age and server-side expiry).",
        boolean: false,
        set: |s, t| {
            s.cookie_age = Duration::from_secs(seconds(t)?);
            Ok(())
        },
        show: |s| Some(s.cookie_age.as_secs().to_string()),
    },
    Setting {
        name: "SESSION_COOKIE_DOMAIN",
        flag: "session-cookie-domain",
        default: "",
        help: "The cookie's Domain attribute; none means a host-only cookie.",
        boolean: false,
        set: |s, t| {
            s.cookie_domain = (!t.is_empty()).then(|| t.to_owned());
            Ok(())
        },
        show: |s| s.cookie_domain.clone(),
    },
    setting!(
        "SESSION_COOKIE_SECURE",
        "session-cookie-secure",
        "false",
        "Mark the cookie Secure (HTTPS only).",
        bool,
        |s| s.cookie_secure
    ),
    Setting {
        name: "SESSION_COOKIE_PATH",
        flag: "session-cookie-path",
        default: "/",
        help: "The cookie's Path attribute.",
        boolean: false,
        set: |s, t| {
            t.clone_into(&mut s.cookie_path);
            Ok(())
        },
        show: |s| Some(s.cookie_path.clone()),
    },
    setting!(
        "SESSION_COOKIE_HTTPONLY",
        "session-cookie-httponly",
        "true",
        "Mark the cookie HttpOnly (hidden from JavaScript).",
        bool,
        |s| s.cookie_httponly
    ),
    Setting {
        name: "SESSION_COOKIE_SAMESITE",
        flag: "session-cookie-samesite",
        default: "Lax",
        help: "The cookie's SameSite attribute: Strict, Lax, None, or false to omit it.",
        boolean: false,
        set: |s, t| {
            s.cookie_samesite = SameSite::parse_setting(t)?;
            Ok(())
        },
        show: |s| {
            Some(
                match s.cookie_samesite {
                    Some(SameSite::Strict) => "Strict",
                    Some(SameSite::Lax) => "Lax",
                    Some(SameSite::None) => "None",
                    None => "false",
                }
                .to_owned(),
            )
        },
    },
    setting!(
        "SESSION_SAVE_EVERY_REQUEST",
        "session-save-every-request",
        "false",
        "Save the session on every request, refreshing its expiry.",
        bool,
        |s| s.save_every_request
    ),
    setting!(
        "SESSION_EXPIRE_AT_BROWSER_CLOSE",
        "session-expire-at-browser-close",
        "false",
        "Give sessions with the default expiry a browser-session cookie.",
        bool,
        |s| s.expire_at_browser_close
    ),
    Setting {
        name: "SESSION_FILE_PATH",
        flag: "session-file-path",
        default: "sessions",
        help: "The sessions directory (created 0700 if missing).",
        boolean: false,
        set: |s, t| {
            s.file_path = PathBuf::from(t);
            Ok(())
        },
        show: |s| Some(s.file_path.display().to_string()),
    },
    Setting {
        name: "SESSION_LOCKING",
        flag: "session-locking",
        default: "merge",
        help: "merge: concurrent requests keep each other's changes; request: one request of a \
               session at a time (exact counters).",
        boolean: false,
        set: |s, t| {
            s.locking = Locking::parse(t).ok_or("use merge or request")?;
            Ok(())
        },
        show: |s| {
            Some(
                match s.locking {
                    Locking::Merge => "merge",
                    Locking::Request => "request",
                }
                .to_owned(),
            )
        },
    },
    setting!(
        "SESSION_FILE_FSYNC",
        "session-file-fsync",
        "false",
        "fsync every write (survives power loss; slower).",
        bool,
        |s| s.file_fsync
    ),
    setting!(
        "SESSION_FILE_IN_PLACE",
        "session-file-in-place",
        "true",
        "write small saves over their file in place (off while older servers share the directory).",
        bool,
        |s| s.file_in_place
    ),
    Setting {
        name: "SESSION_LOCK_TIMEOUT",
        flag: "session-lock-timeout",
        default: "3",
        help: "Seconds a request waits for a session's lock before answering 503.",
        boolean: false,
        set: |s, t| {
            s.lock_timeout = t
                .parse::<f64>()
                .ok()
                .and_then(|n| Duration::try_from_secs_f64(n).ok())
                .ok_or("use seconds from 0 to 3600")?;
            Ok(())
        },
        show: |s| Some(s.lock_timeout.as_secs_f64().to_string()),
    },
    Setting {
        name: "DATA_UPLOAD_MAX_MEMORY_SIZE",
        flag: "data-upload-max-memory-size",
        default: "65536",
        help: "The largest request body in bytes.",
        boolean: false,
        set: |s, t| {
            s.max_body = t.parse().map_err(|_| "use a number of bytes")?;
            Ok(())
        },
        show: |s| Some(s.max_body.to_string()),
    },
    Setting {
        name: "SESSION_GC_INTERVAL",
        flag: "session-gc-interval",
        default: "0",
        help: "Seconds between the server's own cleanup passes (expired sessions, leftovers \
               of crashed writes), done a few milliseconds at a time between requests; 0 = off.",
        boolean: false,
        set: |s, t| {
            let n = seconds(t)?;
            s.gc_interval = (n > 0).then(|| Duration::from_secs(n));
            Ok(())
        },
        show: |s| Some(s.gc_interval.map_or(0, |d| d.as_secs()).to_string()),
    },
    Setting {
        name: "SESSION_WORKERS",
        flag: "workers",
        default: "1",
        help: "Worker processes serving the port, each a single-threaded loop; a dead one is \
               replaced at once. 1 = this process serves alone.",
        boolean: false,
        set: |s, t| {
            s.workers = t
                .parse()
                .ok()
                .filter(|n| (1..=256).contains(n))
                .ok_or("use 1 to 256")?;
            Ok(())
        },
        show: |s| Some(s.workers.to_string()),
    },
    Setting {
        name: "SESSION_ENGINE",
        flag: "session-engine",
        default: "file",
        help: "Where sessions live: file (one JSON file each), db (a row each in DATABASE_URL), \
               cached_db (db with SESSION_REDIS_URL as a cache in front), redis (these two \
               need --features redis) or signed_cookies (the session in the cookie, signed \
               with SECRET_KEY).",
        boolean: false,
        set: |s, t| {
            s.engine = Engine::parse_setting(t)?;
            Ok(())
        },
        show: |s| {
            Some(
                match s.engine {
                    Engine::File => "file",
                    Engine::Redis => "redis",
                    Engine::Db => "db",
                    Engine::CachedDb => "cached_db",
                    Engine::SignedCookies => "signed_cookies",
                }
                .to_owned(),
            )
        },
    },
    Setting {
        name: "SESSION_FORMAT",
        flag: "session-format",
        default: "filesession",
        help: "filesession (JSON documents, UUID keys) or django (Django's own signed data, \
               table django_session and file layout, shared with a running Django site; \
               needs SECRET_KEY).",
        boolean: false,
        set: |s, t| {
            s.format = match t {
                "filesession" => SessionFormat::Filesession,
                "django" => SessionFormat::Django,
                _ => return Err("use filesession or django".into()),
            };
            Ok(())
        },
        show: |s| {
            Some(
                match s.format {
                    SessionFormat::Filesession => "filesession",
                    SessionFormat::Django => "django",
                }
                .to_owned(),
            )
        },
    },
    Setting {
        name: "SECRET_KEY",
        flag: "secret-key",
        default: "",
        help: "The Django project's SECRET_KEY, for SESSION_FORMAT=django and \
               signed_cookies; in the environment only (never printed).",
        boolean: false,
        set: |s, t| {
            s.secret_key = Some(SecretKey::new(t));
            Ok(())
        },
        show: |s| s.secret_key.as_ref().map(|k| k.expose().to_owned()),
    },
    Setting {
        name: "SECRET_KEY_FALLBACKS",
        flag: "secret-key-fallbacks",
        default: "",
        help: "Older secret keys still accepted when verifying, comma-separated (key \
               rotation, as Django's); in the environment only (never printed).",
        boolean: false,
        set: |s, t| {
            s.secret_key_fallbacks = t
                .split(',')
                .filter(|k| !k.is_empty())
                .map(SecretKey::new)
                .collect();
            Ok(())
        },
        show: |s| {
            let keys: Vec<&str> = s.secret_key_fallbacks.iter().map(|k| k.expose()).collect();
            (!keys.is_empty()).then(|| keys.join(","))
        },
    },
    Setting {
        name: "SESSION_SIGNING_SALT",
        flag: "session-signing-salt",
        default: crate::signing::SESSION_SALT,
        help: "The salt of Django's session data: django.contrib.sessions. and the name of \
               the project's SessionStore class.",
        boolean: false,
        set: |s, t| {
            t.clone_into(&mut s.signing_salt);
            Ok(())
        },
        show: |s| Some(s.signing_salt.clone()),
    },
    Setting {
        name: "DATABASE_URL",
        flag: "database-url",
        default: crate::config::DEFAULT_DATABASE_URL,
        help: "The database of SESSION_ENGINE=db: sqlite:///relative/path, \
               sqlite:////absolute/path or postgres://user:password@host:port/db \
               (needs --features postgres).",
        boolean: false,
        set: |s, t| {
            t.clone_into(&mut s.database_url);
            Ok(())
        },
        show: |s| Some(s.database_url.clone()),
    },
    Setting {
        name: "SESSION_DB_TABLE",
        flag: "session-db-table",
        default: crate::config::DEFAULT_DB_TABLE,
        help: "The table of SESSION_ENGINE=db, created if missing; with SESSION_FORMAT=django, \
               the default means Django's django_session.",
        boolean: false,
        set: |s, t| {
            t.clone_into(&mut s.db_table);
            Ok(())
        },
        show: |s| Some(s.db_table.clone()),
    },
    Setting {
        name: "SESSION_REDIS_URL",
        flag: "session-redis-url",
        default: crate::config::DEFAULT_REDIS_URL,
        help: "The Redis of SESSION_ENGINE=redis, and the cache of SESSION_ENGINE=cached_db.",
        boolean: false,
        set: |s, t| {
            t.clone_into(&mut s.redis_url);
            Ok(())
        },
        show: |s| Some(s.redis_url.clone()),
    },
    Setting {
        name: "SESSION_CACHE_TTL",
        flag: "session-cache-ttl",
        default: "3600",
        help: "SESSION_ENGINE=cached_db: how long a session stays in the cache at most, in \
               seconds (never past its end), 1 to 31536000.",
        boolean: false,
        set: |s, t| {
            let n = seconds(t)?;
            if !(1..=31_536_000).contains(&n) {
                return Err(format!("must be from 1 to 31536000 seconds, not {n}"));
            }
            s.cache_ttl = Duration::from_secs(n);
            Ok(())
        },
        show: |s| Some(s.cache_ttl.as_secs().to_string()),
    },
    Setting {
        name: "ALLOWED_HOSTS",
        flag: "allowed-hosts",
        default: ".localhost,127.0.0.1,[::1]",
        help: "Host names served, comma-separated (Django's ALLOWED_HOSTS): a leading dot \
               matches subdomains too, * matches all; another Host gets 400.",
        boolean: false,
        set: |s, t| {
            s.allowed_hosts = list(t);
            Ok(())
        },
        show: |s| Some(s.allowed_hosts.join(",")),
    },
    Setting {
        name: "CSRF_TRUSTED_ORIGINS",
        flag: "csrf-trusted-origins",
        default: "",
        help: "Origins allowed to send unsafe requests (forms, the JSON API) besides the \
               request's own, comma-separated (Django's CSRF_TRUSTED_ORIGINS): \
               https://example.com, https://*.example.com.",
        boolean: false,
        set: |s, t| {
            s.csrf_trusted_origins = list(t);
            Ok(())
        },
        show: |s| Some(s.csrf_trusted_origins.join(",")),
    },
    Setting {
        name: "SECURE_PROXY_SSL_HEADER",
        flag: "secure-proxy-ssl-header",
        default: "",
        help: "Behind a TLS proxy: the header and value that mark a request as HTTPS, as \
               Django's setting: HTTP_X_FORWARDED_PROTO,https (or X-Forwarded-Proto,https). \
               Only behind a proxy that sets or strips that header on every request.",
        boolean: false,
        set: |s, t| {
            s.secure_proxy_ssl_header = proxy_ssl_header(t)?;
            Ok(())
        },
        show: |s| {
            s.secure_proxy_ssl_header
                .as_ref()
                .map(|(name, value)| format!("{name},{value}"))
        },
    },
];

impl Settings {
    /// Settings from text values by Django name (from flags, the environment or a file);
    /// a name `value` gives nothing for keeps its default. Validated.
    ///
    /// ```
    /// use filesession::Settings;
    ///
    /// let settings = Settings::from_values(|name| match name {
    ///     "SESSION_COOKIE_AGE" => Some("3600".into()),
    ///     _ => None,
    /// })?;
    /// assert_eq!(settings.cookie_age.as_secs(), 3600);
    /// assert_eq!(settings.cookie_name, "sessionid");
    /// # Ok::<(), filesession::SettingError>(())
    /// ```
    ///
    /// # Errors
    /// A value that is not one of its setting's, or settings that cannot work together
    /// ([`Settings::validate`]); the message names the setting.
    pub fn from_values(
        mut value: impl FnMut(&str) -> Option<String>,
    ) -> Result<Settings, SettingError> {
        let mut settings = Settings::default();
        for setting in SETTINGS {
            if let Some(text) = value(setting.name) {
                setting.set(&mut settings, &text)?;
            }
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Every setting as `(name, value)` text pairs that [`from_values`](Settings::from_values)
    /// reads back (how the supervisor hands settings to its workers); unset ones are left out.
    pub fn to_values(&self) -> Vec<(&'static str, String)> {
        SETTINGS
            .iter()
            .filter_map(|s| s.show(self).map(|v| (s.name, v)))
            .collect()
    }
}

#[cfg(test)]
mod tests;
