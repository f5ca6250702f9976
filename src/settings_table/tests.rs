//! The table's own checks: defaults, the hand-off to workers, README's table.

use super::*;

#[test]
fn every_default_reads_back_as_the_default_settings() {
    let from_defaults = Settings::from_values(|name| {
        SETTINGS
            .iter()
            .find(|s| s.name == name)
            .filter(|s| !s.default.is_empty())
            .map(|s| s.default.to_owned())
    })
    .expect("the defaults are valid");
    let defaults = Settings::default();
    assert_eq!(from_defaults.to_values(), defaults.to_values());
}

#[test]
fn settings_survive_the_hand_off_to_workers() {
    let mut changed = Settings::default();
    for setting in SETTINGS {
        let text = match setting.name {
            "SESSION_COOKIE_DOMAIN" => ".example.com",
            "SESSION_COOKIE_SAMESITE" => "None",
            "SESSION_LOCKING" => "request",
            "SESSION_ENGINE" => "file",
            "SESSION_LOCK_TIMEOUT" => "1.5",
            "SESSION_WORKERS" => "3",
            "ALLOWED_HOSTS" => "a.example,.b.example",
            "CSRF_TRUSTED_ORIGINS" => "https://*.example.com",
            "SECURE_PROXY_SSL_HEADER" => "HTTP_X_FORWARDED_PROTO,https",
            "SESSION_FILE_PATH" => "/tmp/x",
            "SESSION_REDIS_URL" => "redis://h:1/2",
            "DATABASE_URL" => "postgres://u:p@h:1/d",
            "SESSION_DB_TABLE" => "t",
            "SESSION_COOKIE_NAME" => "sid",
            "SESSION_COOKIE_PATH" => "/app",
            "SESSION_FORMAT" => "django",
            "SECRET_KEY" => "s3cret",
            "SECRET_KEY_FALLBACKS" => "old1,old2",
            "SESSION_SIGNING_SALT" => "django.contrib.sessions.MyStore",
            _ if setting.boolean => "yes",
            _ => "7",
        };
        setting.set(&mut changed, text).expect("a valid value");
    }
    let values = changed.to_values();
    let back = Settings::from_values(|name| {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    })
    .expect("valid");
    assert_eq!(back.to_values(), values);
    assert_eq!(back.workers, 3);
    assert!(back.cookie_secure && back.file_fsync);
    assert_eq!(back.secret_key_fallbacks.len(), 2);
    assert_eq!(back.session_table(), "t");
    assert_eq!(
        back.secure_proxy_ssl_header,
        Some(("X-FORWARDED-PROTO".into(), "https".into()))
    );
}

#[test]
fn a_bad_value_names_its_setting() {
    let e = Settings::from_values(|n| (n == "SESSION_COOKIE_SECURE").then(|| "maybe".into()))
        .expect_err("refused");
    assert!(e.0.contains("SESSION_COOKIE_SECURE"), "{e}");
    let e = Settings::from_values(|n| (n == "SESSION_GC_INTERVAL").then(|| "-1".into()))
        .expect_err("refused");
    assert!(e.0.contains("SESSION_GC_INTERVAL"), "{e}");
}

/// README's settings table is this table: one row per setting, in order, with its flag,
/// its name and its default.
#[test]
fn the_readme_table_lists_every_setting() {
    let readme = include_str!("../../README.md");
    let rows: Vec<Vec<&str>> = readme
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), SETTINGS.len(), "one README row per setting");
    for (row, setting) in rows.iter().zip(SETTINGS) {
        assert_eq!(row[1], format!("`--{}`", setting.flag), "{row:?}");
        assert_eq!(row[2], format!("`{}`", setting.name), "{row:?}");
        assert!(
            row[3].contains(setting.default),
            "README's default for {} is {:?}, the table's {:?}",
            setting.name,
            row[3],
            setting.default
        );
    }
}

#[test]
fn names_and_flags_are_unique() {
    for (i, a) in SETTINGS.iter().enumerate() {
        for b in &SETTINGS[i + 1..] {
            assert_ne!(a.name, b.name);
            assert_ne!(a.flag, b.flag);
        }
    }
}
