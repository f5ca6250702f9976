//! Django's session table (`SESSION_FORMAT=django`): its DDL as Django 5.2's migration
//! `sessions 0001` writes it (`manage.py sqlmigrate sessions 0001`), its index names as
//! Django's schema editor makes them, and the check of a table found in place.

use md5::{Digest, Md5};

use crate::store::StoreError;

/// The columns Django's `Session` model has, in its order.
pub(crate) const COLUMNS: [&str; 3] = ["session_key", "session_data", "expire_date"];

/// The longest identifier PostgreSQL keeps (Django's `max_name_length()`: 63); SQLite has
/// none, for which Django uses 200.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
const POSTGRES_MAX_NAME: usize = 63;
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
const SQLITE_MAX_NAME: usize = 200;

/// Django's `names_digest(*args, length=8)`: the first 8 hex digits of the MD5 of the
/// arguments' bytes, one after the other (`django/db/backends/utils.py`).
fn names_digest(args: &[&str]) -> String {
    let mut h = Md5::new();
    for arg in args {
        h.update(arg.as_bytes());
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    hex[..8].to_owned()
}

/// Django's `BaseDatabaseSchemaEditor._create_index_name(table, columns, suffix)`:
/// `<table>_<columns>_<digest><suffix>`, shortened as Django shortens it past `max_len`.
/// Names are ASCII (checked table names, Django's column names).
pub(crate) fn index_name(table: &str, columns: &[&str], suffix: &str, max_len: usize) -> String {
    let mut args = vec![table];
    args.extend_from_slice(columns);
    let mut hash_suffix = format!("{}{suffix}", names_digest(&args));
    let joined = columns.join("_");
    let name = format!("{table}_{joined}_{hash_suffix}");
    if name.len() <= max_len {
        return name;
    }
    // Python: `if len(hash_suffix_part) > max_length / 3` (a float division).
    if hash_suffix.len() * 3 > max_len {
        hash_suffix.truncate(max_len / 3);
    }
    let other = (max_len - hash_suffix.len()) / 2 - 1;
    let cut = |s: &str| s[..s.len().min(other)].to_owned();
    let name = format!("{}_{}_{hash_suffix}", cut(table), cut(&joined));
    if name.starts_with('_') || name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("D{}", &name[..name.len() - 1])
    } else {
        name
    }
}

/// The statements of `sessions 0001` on SQLite, as `sqlite_master` keeps them (no `;`).
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn sqlite_ddl(table: &str) -> [String; 2] {
    let index = index_name(table, &["expire_date"], "", SQLITE_MAX_NAME);
    [
        format!(
            "CREATE TABLE \"{table}\" (\"session_key\" varchar(40) NOT NULL PRIMARY KEY, \
             \"session_data\" text NOT NULL, \"expire_date\" datetime NOT NULL)"
        ),
        format!("CREATE INDEX \"{index}\" ON \"{table}\" (\"expire_date\")"),
    ]
}

/// The statements of `sessions 0001` on PostgreSQL: the table, the `_like` index Django adds
/// to a `varchar` primary key (`varchar_pattern_ops`), the `expire_date` index.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn postgres_ddl(table: &str) -> [String; 3] {
    let like = index_name(table, &["session_key"], "_like", POSTGRES_MAX_NAME);
    let index = index_name(table, &["expire_date"], "", POSTGRES_MAX_NAME);
    [
        format!(
            "CREATE TABLE \"{table}\" (\"session_key\" varchar(40) NOT NULL PRIMARY KEY, \
             \"session_data\" text NOT NULL, \"expire_date\" timestamp with time zone NOT NULL)"
        ),
        format!("CREATE INDEX \"{like}\" ON \"{table}\" (\"session_key\" varchar_pattern_ops)"),
        format!("CREATE INDEX \"{index}\" ON \"{table}\" (\"expire_date\")"),
    ]
}

/// A table found in place must have Django's three columns (more are left alone).
pub(crate) fn check_columns(found: &[String], table: &str, shown: &str) -> Result<(), StoreError> {
    let missing: Vec<&str> = COLUMNS
        .iter()
        .copied()
        .filter(|c| !found.iter().any(|f| f == c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(StoreError::Unavailable(format!(
        "{shown}: table {table} is not Django's session table: it has no column {} \
         (Django's has session_key, session_data and expire_date); check SESSION_DB_TABLE",
        missing.join(", ")
    )))
}

/// Why a table cannot be used in Django's format: filesession made it for its own format
/// (`ours`), or it is missing and nothing may be created (`clearsessions`).
pub(crate) fn unusable(shown: &str, table: &str, ours: bool) -> StoreError {
    StoreError::Unavailable(if ours {
        format!(
            "{shown}: table {table} holds filesession's own format (filesession made it); \
             SESSION_FORMAT=django needs Django's session table (django_session)"
        )
    } else {
        format!(
            "{shown}: no session table {table} there; check DATABASE_URL and \
             SESSION_DB_TABLE (nothing was created)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Django 5.2's own names (its schema editors' `_create_index_name`, run in the venv).
    #[test]
    fn index_names_are_djangos() {
        let cases: [(&str, usize, &str, &str); 8] = [
            (
                "django_session",
                SQLITE_MAX_NAME,
                "django_session_expire_date_a5c62663",
                "django_session_session_key_c0390e0f_like",
            ),
            (
                "django_session",
                POSTGRES_MAX_NAME,
                "django_session_expire_date_a5c62663",
                "django_session_session_key_c0390e0f_like",
            ),
            (
                "my_sessions",
                POSTGRES_MAX_NAME,
                "my_sessions_expire_date_8a6b8a8d",
                "my_sessions_session_key_769390aa_like",
            ),
            (
                &"x".repeat(50),
                POSTGRES_MAX_NAME,
                "xxxxxxxxxxxxxxxxxxxxxxxxxx_expire_date_7d9c9e6f",
                "xxxxxxxxxxxxxxxxxxxxxxxx_session_key_65eb78f3_like",
            ),
            (
                &"x".repeat(50),
                SQLITE_MAX_NAME,
                "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx_expire_date_7d9c9e6f",
                "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx_session_key_65eb78f3_like",
            ),
            (
                &format!("_{}", "y".repeat(49)),
                POSTGRES_MAX_NAME,
                "D_yyyyyyyyyyyyyyyyyyyyyyyyy_expire_date_3f4bfc3",
                "D_yyyyyyyyyyyyyyyyyyyyyyy_session_key_94960c03_lik",
            ),
            (
                &format!("_{}", "y".repeat(49)),
                SQLITE_MAX_NAME,
                "_yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy_expire_date_3f4bfc3c",
                "_yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy_session_key_94960c03_like",
            ),
            (
                "sessions_of_a_rather_long_name_here",
                POSTGRES_MAX_NAME,
                "sessions_of_a_rather_long_name_here_expire_date_91d7af61",
                "sessions_of_a_rather_long_name_here_session_key_fd2c39cd_like",
            ),
        ];
        for (table, max, expire, like) in cases {
            assert_eq!(index_name(table, &["expire_date"], "", max), expire);
            assert_eq!(index_name(table, &["session_key"], "_like", max), like);
        }
    }

    #[test]
    fn the_ddl_is_sqlmigrates() {
        assert_eq!(
            sqlite_ddl("django_session"),
            [
                "CREATE TABLE \"django_session\" (\"session_key\" varchar(40) NOT NULL PRIMARY \
                 KEY, \"session_data\" text NOT NULL, \"expire_date\" datetime NOT NULL)",
                "CREATE INDEX \"django_session_expire_date_a5c62663\" ON \"django_session\" \
                 (\"expire_date\")",
            ]
        );
        assert_eq!(
            postgres_ddl("django_session"),
            [
                "CREATE TABLE \"django_session\" (\"session_key\" varchar(40) NOT NULL PRIMARY \
                 KEY, \"session_data\" text NOT NULL, \"expire_date\" timestamp with time zone \
                 NOT NULL)",
                "CREATE INDEX \"django_session_session_key_c0390e0f_like\" ON \
                 \"django_session\" (\"session_key\" varchar_pattern_ops)",
                "CREATE INDEX \"django_session_expire_date_a5c62663\" ON \"django_session\" \
                 (\"expire_date\")",
            ]
        );
    }

    #[test]
    fn a_table_without_djangos_columns_is_named() {
        let found = ["session_key".to_owned(), "data".to_owned()];
        let err = check_columns(&found, "t", "SQLite at x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("table t is not Django's") && err.contains("session_data, expire_date"),
            "{err}"
        );
        let all: Vec<String> = COLUMNS.iter().map(|c| (*c).to_owned()).collect();
        assert!(check_columns(&all, "t", "x").is_ok());
    }
}
