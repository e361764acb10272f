//! The schema and its versioned migrations, applied on open (`PRAGMA user_version`).
//!
//! Migration `n` (1-based) is `MIGRATIONS[n - 1]`; a database at version `v` gets migrations
//! `v + 1 ..= LATEST`, all in one `BEGIN IMMEDIATE` transaction that re-reads the version
//! first, so two processes opening a new file at once migrate it exactly once. A database
//! from a newer Courier (version above [`LATEST`]) is refused with a clear message.
//!
//! Courier marks its files with `PRAGMA application_id` ([`APPLICATION_ID`]). Before anything
//! in a file is changed (its journal mode included), [`inspect`] reads what it holds and
//! [`admit`] refuses a database that is not Courier's: another application id, tables of its
//! own (any name not starting with `courier_` or `sqlite_`), or a `user_version` without
//! Courier's tables. An empty database (or a new file) becomes Courier's. A foreign database
//! is opened only with the explicit permission of the builder (`allow_foreign_database`) or
//! the URL (`foreign=allow`), and is then never marked as Courier's.

use std::path::Path;

use courier_core::{Error, ErrorKind, Result};
use rusqlite::{Connection, TransactionBehavior};

use crate::consts::BACKEND_NAME;
use crate::error::map_err;

/// The migrations, oldest first.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("schema/001_init.sql"),
    include_str!("schema/002_messages_check.sql"),
    include_str!("schema/003_dedup.sql"),
    include_str!("schema/004_expiry.sql"),
    include_str!("schema/005_flow_control.sql"),
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

/// What a database holds, read before Courier changes anything in it.
#[derive(Debug)]
pub(crate) struct Found {
    /// `PRAGMA application_id`.
    app: i32,
    /// `PRAGMA user_version`.
    version: u32,
    /// Whether Courier's main table exists.
    courier_tables: bool,
    /// Names of the schema objects that are neither Courier's nor SQLite's own, sorted.
    foreign: Vec<String>,
}

impl Found {
    /// Courier's own file: marked with its application id, or unmarked with nothing but
    /// Courier's objects (and, if any version, Courier's tables).
    fn is_courier(&self) -> bool {
        self.app == APPLICATION_ID
            || (self.app == 0
                && self.foreign.is_empty()
                && (self.version == 0 || self.courier_tables))
    }
}

/// Read what the database holds: the first statement that reads the file, so a corrupt or
/// locked file fails here, before anything is written.
pub(crate) fn inspect(conn: &Connection, path: &Path) -> Result<Found> {
    let me = |e| map_err("open", path, e);
    let app: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(me)?;
    let version = version(conn, path)?;
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(me)?;
    let courier_tables = names.iter().any(|n| n == "courier_queues");
    let foreign = names
        .into_iter()
        .filter(|n| !n.starts_with("courier_"))
        .collect();
    Ok(Found {
        app,
        version,
        courier_tables,
        foreign,
    })
}

fn refused(message: String) -> Error {
    Error::invalid(message)
        .with_backend(BACKEND_NAME)
        .with_operation("open")
}

/// Refuse a database that is not Courier's unless `allow_foreign`; refuse one whose
/// `user_version` Courier cannot share even then.
pub(crate) fn admit(found: &Found, path: &Path, allow_foreign: bool) -> Result<()> {
    if found.is_courier() {
        return Ok(());
    }
    let db = path.display();
    if !allow_foreign {
        let what = if found.app != 0 && found.app != APPLICATION_ID {
            format!(
                "belongs to another application (application_id {:#x})",
                found.app
            )
        } else if !found.foreign.is_empty() {
            const SHOWN: usize = 5;
            let mut names = found.foreign[..found.foreign.len().min(SHOWN)].join(", ");
            if found.foreign.len() > SHOWN {
                names.push_str(&format!(" and {} more", found.foreign.len() - SHOWN));
            }
            format!(
                "is not a Courier database: it looks like another application's, with tables \
                 of its own ({names}) and no Courier application id"
            )
        } else {
            format!(
                "is not a Courier database: it looks like another application's, with a \
                 user_version of its own ({}) and no Courier tables",
                found.version
            )
        };
        return Err(refused(format!(
            "SQLite database {db} {what}; refusing to add Courier's tables to it or switch \
                 it to WAL. To share this file with its application on purpose, allow it \
                 explicitly: SqliteBackend::builder().allow_foreign_database(true) or the URL \
                 parameter ?foreign=allow"
        )));
    }
    if found.version != 0 && !found.courier_tables {
        return Err(refused(format!(
            "SQLite database {db} has a PRAGMA user_version of its own ({}) and no Courier \
                 tables; Courier records its schema version there, so it cannot share this \
                 file even with allow_foreign_database: use a separate file for Courier",
            found.version
        )));
    }
    Ok(())
}

/// For a read-only connection, which cannot migrate: the database must be admitted (see
/// [`admit`]) and its schema must be [`LATEST`].
pub(crate) fn check_current(conn: &Connection, path: &Path, allow_foreign: bool) -> Result<()> {
    admit(&inspect(conn, path)?, path, allow_foreign)?;
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

/// Bring the database up to [`LATEST`], or refuse a newer one; a foreign one is refused
/// again under the write lock (see [`admit`]; the caller checked it before its first write).
pub(crate) fn migrate(conn: &mut Connection, path: &Path, allow_foreign: bool) -> Result<()> {
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
        // Another process may have created tables since the caller looked.
        let found = inspect(&tx, path)?;
        admit(&found, path, allow_foreign)?;
        // An empty database becomes Courier's; a foreign one shared on purpose stays its
        // application's.
        if found.is_courier() {
            tx.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(me)?;
        }
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
