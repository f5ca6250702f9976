//! The session table on PostgreSQL, made or checked once as a store opens, one opener at a
//! time (a transaction-level advisory lock): filesession's (versioned in
//! `filesession_schema`; a table without our version row is someone else's, never adopted)
//! or Django's (used as it is; made as Django's migration makes it only if missing).

use super::advisory_lock::class_of;
use super::pool::{Pool, block_on};
use crate::store::StoreError;
use crate::store::db::django_table;
use crate::store::db::row_format::Layout;
use crate::store::db::schema::{check_schema, missing_or_foreign, schema_version};

/// Makes (with `create`) or checks the table `table` of `layout`.
pub(super) fn open_table(
    pool: &Pool,
    table: &str,
    create: bool,
    layout: Layout,
) -> Result<(), StoreError> {
    match layout {
        Layout::Filesession => filesession_table(pool, table, create),
        Layout::Django => django_table(pool, table, create),
    }
}

/// The advisory lock every opener takes for its transaction.
fn schema_lock() -> i32 {
    class_of("filesession_schema")
}

fn filesession_table(pool: &Pool, table: &str, create: bool) -> Result<(), StoreError> {
    let schema_lock = schema_lock();
    let create_table = format!(
        "CREATE TABLE {table} (
             session_key varchar(36) PRIMARY KEY,
             session_data text NOT NULL,
             expire_date timestamptz NOT NULL);
         CREATE INDEX {table}_expire_date ON {table} (expire_date);"
    );
    // One creator at a time (an advisory lock for the transaction), and a table that
    // exists without our version row is someone else's: never adopted.
    let found: Option<i32> = pool.run("create the session table", false, None, |c| {
        block_on(async {
            c.batch_execute("BEGIN").await?;
            let done = async {
                c.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&schema_lock])
                    .await?;
                if !create {
                    let schema = c
                        .query_one("SELECT to_regclass('filesession_schema') IS NOT NULL", &[])
                        .await?
                        .try_get::<_, bool>(0)?;
                    if !schema {
                        return Ok(None);
                    }
                }
                c.batch_execute(
                    "SET LOCAL client_min_messages = warning;
                     CREATE TABLE IF NOT EXISTS filesession_schema (
                         table_name text PRIMARY KEY,
                         version integer NOT NULL)",
                )
                .await?;
                let known = c
                    .query_opt(
                        "SELECT version FROM filesession_schema WHERE table_name = $1",
                        &[&table],
                    )
                    .await?;
                if let Some(row) = known {
                    return Ok(Some(row.try_get::<_, i32>(0)?));
                }
                let exists = c
                    .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                    .await?
                    .try_get::<_, bool>(0)?;
                if exists || !create {
                    return Ok(None);
                }
                c.batch_execute(&create_table).await?;
                c.execute(
                    "INSERT INTO filesession_schema (table_name, version) VALUES ($1, $2)",
                    &[&table, &(schema_version() as i32)],
                )
                .await?;
                Ok(Some(schema_version() as i32))
            }
            .await;
            let end = if done.is_ok() { "COMMIT" } else { "ROLLBACK" };
            c.batch_execute(end).await?;
            done
        })
    })?;
    let Some(found) = found else {
        return Err(StoreError::Unavailable(missing_or_foreign(
            &pool.shown,
            table,
            create,
        )));
    };
    check_schema(i64::from(found), table, &pool.shown)
}

/// What a look at Django's table found.
enum DjangoTable {
    /// There (or just made), with these columns.
    Columns(Vec<String>),
    /// Missing, and nothing may be made.
    Missing,
    /// filesession's own layout.
    Ours,
}

/// Django's table: used as it is if there (with Django's three columns, and not one
/// filesession made for its own format); with `create`, made as Django's migration makes it
/// if missing. No `filesession_schema` row is written.
fn django_table(pool: &Pool, table: &str, create: bool) -> Result<(), StoreError> {
    let schema_lock = schema_lock();
    let found = pool.run("open the session table", false, None, |c| {
        block_on(async {
            c.batch_execute("BEGIN").await?;
            let done = async {
                c.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&schema_lock])
                    .await?;
                let schema = c
                    .query_one("SELECT to_regclass('filesession_schema') IS NOT NULL", &[])
                    .await?
                    .try_get::<_, bool>(0)?;
                if schema {
                    let ours = c
                        .query_one(
                            "SELECT count(*) > 0 FROM filesession_schema WHERE table_name = $1",
                            &[&table],
                        )
                        .await?
                        .try_get::<_, bool>(0)?;
                    if ours {
                        return Ok(DjangoTable::Ours);
                    }
                }
                let exists = c
                    .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                    .await?
                    .try_get::<_, bool>(0)?;
                if !exists {
                    if !create {
                        return Ok(DjangoTable::Missing);
                    }
                    for statement in django_table::postgres_ddl(table) {
                        c.batch_execute(&statement).await?;
                    }
                }
                let columns = c
                    .query(
                        "SELECT attname::text FROM pg_attribute \
                         WHERE attrelid = to_regclass($1)::oid AND attnum > 0 \
                         AND NOT attisdropped",
                        &[&table],
                    )
                    .await?
                    .iter()
                    .map(|r| r.try_get::<_, String>(0))
                    .collect::<Result<Vec<String>, _>>()?;
                Ok(DjangoTable::Columns(columns))
            }
            .await;
            let end = if done.is_ok() { "COMMIT" } else { "ROLLBACK" };
            c.batch_execute(end).await?;
            done
        })
    })?;
    match found {
        DjangoTable::Columns(columns) => django_table::check_columns(&columns, table, &pool.shown),
        DjangoTable::Missing => Err(django_table::unusable(&pool.shown, table, false)),
        DjangoTable::Ours => Err(django_table::unusable(&pool.shown, table, true)),
    }
}
