//! The session table's name and layout, as both databases check them: a table name is a
//! plain SQL identifier, and a table is used only if filesession made it, in a layout
//! version this one reads.

use crate::store::StoreError;

/// The layout of the table this version writes.
const SCHEMA_VERSION: i64 = 1;

/// A table name written into SQL: a plain identifier only.
pub(super) fn check_table_name(table: &str) -> Result<(), StoreError> {
    let mut chars = table.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && table.len() <= 50;
    if plain {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!(
            "SESSION_DB_TABLE must be a plain SQL name (lowercase letters, digits, _; at \
             most 50), not {table:?}"
        )))
    }
}

/// Why a table could not be used: made by someone else (`create`: it exists without our
/// version row), or missing (without `create`: `clearsessions` makes nothing).
pub(crate) fn missing_or_foreign(shown: &str, table: &str, create: bool) -> String {
    if create {
        format!(
            "{shown}: table {table} exists and was not made by filesession; choose another \
             SESSION_DB_TABLE (Django's django_session is read and written with \
             SESSION_FORMAT=django)"
        )
    } else {
        format!(
            "{shown}: no session table {table} made by filesession there; check DATABASE_URL \
             and SESSION_DB_TABLE (nothing was created)"
        )
    }
}

/// The version check shared by both databases: `found` is what `filesession_schema` holds
/// for the table.
pub(crate) fn check_schema(found: i64, table: &str, shown: &str) -> Result<(), StoreError> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "{shown}: table {table} has layout version {found}, made by a newer filesession \
             (this one writes version {SCHEMA_VERSION}); use another SESSION_DB_TABLE"
        )));
    }
    Ok(())
}

/// `SCHEMA_VERSION`, for the databases' schema statements.
pub(crate) const fn schema_version() -> i64 {
    SCHEMA_VERSION
}
