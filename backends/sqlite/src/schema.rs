//! The schema and its versioned migrations, applied on open (`PRAGMA user_version`).
//!
//! Migration `n` (1-based) is `MIGRATIONS[n - 1]`; a database at version `v` gets migrations
//! `v + 1 ..= LATEST`, all in one `BEGIN IMMEDIATE` transaction that re-reads the version
//! first, so two processes opening a new file at once migrate it exactly once. A database
//! from a newer Courier (version above [`LATEST`]) is refused with a clear message, and so is
//! a database of another application (`PRAGMA application_id`).

use std::path::Path;

use courier_core::{Error, ErrorKind, Result};
use rusqlite::{Connection, TransactionBehavior};

use crate::consts::BACKEND_NAME;
use crate::error::map_err;

/// The migrations, oldest first.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("schema/001_init.sql"),
    include_str!("schema/002_messages_check.sql"),
];

/// The schema version this build writes and reads.
pub const LATEST: u32 = MIGRATIONS.len() as u32;

/// `PRAGMA application_id` of a Courier database ("CRR1").
pub(crate) const APPLICATION_ID: i32 = 0x4352_5231;

/// The schema version recorded in the database.
pub(crate) fn version(conn: &Connection, path: &Path) -> Result<u32> {
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| map_err("open", path, e))?;
    Ok(u32::try_from(v).unwrap_or(u32::MAX))
}

fn newer(path: &Path, found: u32) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!(
            "SQLite database {} has Courier schema version {found}, newer than this build \
             supports ({LATEST}); upgrade Courier to open it",
            path.display()
        ),
    )
    .with_backend(BACKEND_NAME)
    .with_operation("open")
}

fn foreign(path: &Path, id: i32) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!(
            "SQLite database {} belongs to another application (application_id {id:#x}); \
             refusing to add Courier tables to it",
            path.display()
        ),
    )
    .with_backend(BACKEND_NAME)
    .with_operation("open")
}

/// For a read-only connection, which cannot migrate: the schema must be [`LATEST`].
pub(crate) fn check_current(conn: &Connection, path: &Path) -> Result<()> {
    let found = version(conn, path)?;
    if found > LATEST {
        return Err(newer(path, found));
    }
    if found < LATEST {
        let what = if found == 0 {
            "has no Courier schema yet".to_string()
        } else {
            format!("needs a schema migration from version {found} to {LATEST}")
        };
        return Err(Error::new(
            ErrorKind::Backend,
            format!(
                "SQLite database {} is opened read-only (mode=ro) but {what}, which needs \
                 writing; open it read-write once first",
                path.display()
            ),
        )
        .with_backend(BACKEND_NAME)
        .with_operation("open"));
    }
    Ok(())
}

/// Bring the database up to [`LATEST`], or refuse a newer or foreign one.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let found = version(conn, path)?;
    if found > LATEST {
        return Err(newer(path, found));
    }
    if found == LATEST {
        return Ok(());
    }
    let me = |e| map_err("open", path, e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(me)?;
    // Re-read under the write lock: another process may have migrated meanwhile.
    let current = version(&tx, path)?;
    if current > LATEST {
        return Err(newer(path, current));
    }
    if current == 0 {
        let app: i32 = tx
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(me)?;
        if app != 0 && app != APPLICATION_ID {
            return Err(foreign(path, app));
        }
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(me)?;
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let target = i as u32 + 1;
        tx.execute_batch(sql).map_err(|e| {
            let err = map_err("open", path, e);
            Error::new(
                err.kind(),
                format!(
                    "migration to schema version {target} failed: {}",
                    err.message()
                ),
            )
            .with_backend(BACKEND_NAME)
            .with_operation("open")
        })?;
        tx.pragma_update(None, "user_version", target).map_err(me)?;
        tracing::debug!(path = %path.display(), version = target, "courier sqlite: applied migration");
    }
    tx.commit().map_err(me)?;
    Ok(())
}
