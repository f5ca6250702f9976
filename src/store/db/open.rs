//! Opening a DbStore: the URL's database (SQLite or PostgreSQL, each behind its feature),
//! the table in filesession's layout or in Django's.

#[cfg(feature = "postgres")]
use super::postgres;
use super::row_format::{Layout, RowFormat};
use super::schema::check_table_name;
#[cfg(feature = "sqlite")]
use super::sqlite;
use super::{Database, DbStore};
use crate::config::redacted;
use crate::signing::Signer;
use crate::store::django::DjangoCodec;
use crate::store::{LockConfig, LockIssuer, StoreError};

impl DbStore {
    /// Opens the database at `url` (`DATABASE_URL`, as dj-database-url reads it):
    /// `sqlite:///relative/path`, `sqlite:////absolute/path` (a new file is made 0600), or
    /// `postgres://user:password@host:port/dbname` (feature `postgres`); creates `table`
    /// (and its index, lock and schema tables) if missing. Merge locking, the default lock
    /// timeout. A table of that name that filesession did not make (Django's
    /// `django_session`) is refused, never adopted: Django's table is opened by
    /// [`open_django`](DbStore::open_django). Keys are UUID v4s.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]: the URL's scheme is not one of these (or its feature is
    /// off), `table` is not a plain SQL identifier (`[a-z_][a-z0-9_]*`, at most 50
    /// characters), exists without being ours, or was made by a newer version; [`StoreError::Backend`]: the
    /// database cannot be opened or reached (the URL is shown without its password).
    pub fn open(url: &str, table: &str) -> Result<DbStore, StoreError> {
        Self::open_as(url, table, true, RowFormat::Filesession)
    }

    /// [`open`](DbStore::open) for a database and table that must exist already, as
    /// `clearsessions` opens them: nothing is created (a mistyped `DATABASE_URL` or
    /// `SESSION_DB_TABLE` is an error, not a new database).
    ///
    /// # Errors
    /// As [`open`](DbStore::open), and [`StoreError::Io`] (SQLite: the file is missing) or
    /// [`StoreError::Unavailable`] (the table is missing).
    pub fn open_existing(url: &str, table: &str) -> Result<DbStore, StoreError> {
        Self::open_as(url, table, false, RowFormat::Filesession)
    }

    /// Opens Django's session table `table` (`django_session`, or Django's
    /// `SESSION_DB_TABLE`) in the database at `url` (as [`open`](DbStore::open) reads it),
    /// to share sessions with a running Django site (`SESSION_FORMAT=django`): rows in
    /// Django's format, signed and verified by `signer` (Django's `SECRET_KEY`,
    /// `SECRET_KEY_FALLBACKS` and session salt), Django's keys. The table is used as it is
    /// and never altered; if it is missing it is created as Django's migration creates it
    /// (see the module's "Django's format"). Merge locking, the default lock timeout.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use filesession::{DbStore, Session, SessionConfig, SessionStore};
    /// use filesession::signing::{SESSION_SALT, Signer};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let url = format!("sqlite:///{}", dir.path().join("db.sqlite3").display());
    /// let signer = Signer::new("the Django project's SECRET_KEY", &[], SESSION_SALT);
    /// let store = Arc::new(DbStore::open_django(&url, "django_session", signer)?);
    /// let mut session = Session::new(store.clone(), None, SessionConfig::default());
    /// session.insert("_auth_user_id", "1");
    /// session.save()?;
    /// let cookie = session.session_key().expect("saved").to_string();
    /// assert_eq!(cookie.len(), 32); // a Django key
    /// let again = Session::new(store.clone(), store.parse_key(&cookie), SessionConfig::default());
    /// assert_eq!(again.get("_auth_user_id"), Some(&"1".into()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`StoreError::Unavailable`]: the URL's scheme is not one of these (or its feature is
    /// off), `table` is not a plain SQL identifier, exists without Django's three columns
    /// (`session_key`, `session_data`, `expire_date`), or was made by filesession for its own
    /// format; [`StoreError::Backend`]: the database cannot be opened or reached, or the
    /// table cannot be created (the URL is shown without its password).
    pub fn open_django(url: &str, table: &str, signer: Signer) -> Result<DbStore, StoreError> {
        Self::open_as(
            url,
            table,
            true,
            RowFormat::Django(DjangoCodec::new(signer)),
        )
    }

    /// [`open_django`](DbStore::open_django) for a database and table that must exist
    /// already, as `clearsessions` opens them: nothing is created.
    ///
    /// # Errors
    /// As [`open_django`](DbStore::open_django), and [`StoreError::Io`] (SQLite: the file
    /// is missing) or [`StoreError::Unavailable`] (the table is missing).
    pub fn open_existing_django(
        url: &str,
        table: &str,
        signer: Signer,
    ) -> Result<DbStore, StoreError> {
        Self::open_as(
            url,
            table,
            false,
            RowFormat::Django(DjangoCodec::new(signer)),
        )
    }

    fn open_as(
        url: &str,
        table: &str,
        create: bool,
        format: RowFormat,
    ) -> Result<DbStore, StoreError> {
        check_table_name(table)?;
        let shown = redacted(url);
        let layout = format.layout();
        let db: Box<dyn Database> = if let Some(path) = url.strip_prefix("sqlite://") {
            sqlite_open(path, table, &shown, create, layout)?
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            postgres_open(url, table, &shown, create, layout)?
        } else {
            return Err(StoreError::Unavailable(format!(
                "DATABASE_URL must start with sqlite:// or postgres://, not {shown:?}"
            )));
        };
        Ok(DbStore {
            db,
            format,
            shown,
            lock_config: LockConfig::default(),
            issuer: LockIssuer::new(),
        })
    }
}

#[cfg(feature = "sqlite")]
fn sqlite_open(
    path: &str,
    table: &str,
    shown: &str,
    create: bool,
    layout: Layout,
) -> Result<Box<dyn Database>, StoreError> {
    Ok(Box::new(sqlite::Sqlite::open(
        path, table, shown, create, layout,
    )?))
}

#[cfg(not(feature = "sqlite"))]
fn sqlite_open(
    _: &str,
    _: &str,
    _: &str,
    _: bool,
    _: Layout,
) -> Result<Box<dyn Database>, StoreError> {
    Err(StoreError::Unavailable(
        "a sqlite:// DATABASE_URL needs filesession built with the sqlite feature".into(),
    ))
}

#[cfg(feature = "postgres")]
fn postgres_open(
    url: &str,
    table: &str,
    shown: &str,
    create: bool,
    layout: Layout,
) -> Result<Box<dyn Database>, StoreError> {
    Ok(Box::new(postgres::Postgres::open(
        url, table, shown, create, layout,
    )?))
}

#[cfg(not(feature = "postgres"))]
fn postgres_open(
    _: &str,
    _: &str,
    _: &str,
    _: bool,
    _: Layout,
) -> Result<Box<dyn Database>, StoreError> {
    Err(StoreError::Unavailable(
        "a postgres:// DATABASE_URL needs filesession built with the postgres feature".into(),
    ))
}
