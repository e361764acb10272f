//! Error mapping: every `rusqlite` error becomes a [`courier_core::Error`] in [`map_err`], the
//! one place that decides kinds and wording.

use std::path::Path;

use courier_core::{Error, ErrorKind};
use rusqlite::ffi::ErrorCode;

use courier_core::backend::Kit;

use crate::consts::BACKEND_NAME;

/// Map a SQLite failure during `operation` on the database at `path` to a Courier error.
///
/// - busy / locked → [`ErrorKind::Unavailable`] (retryable: another connection holds the lock
///   longer than the busy timeout);
/// - corrupt / not a database → [`ErrorKind::Backend`] naming the file;
/// - read-only → [`ErrorKind::Backend`] naming the file;
/// - cannot open (missing directory, no permission) → [`ErrorKind::Backend`] naming the file
///   and, when that is the cause, the missing directory;
/// - disk full → [`ErrorKind::Unavailable`];
/// - anything else → [`ErrorKind::Backend`] with SQLite's message.
///
/// The source error is attached in every case.
pub(crate) fn map_err(operation: &'static str, path: &Path, err: rusqlite::Error) -> Error {
    let db = path.display();
    let (kind, message) = match &err {
        rusqlite::Error::SqliteFailure(e, _) => match e.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => (
                ErrorKind::Unavailable,
                format!(
                    "SQLite database {db} is locked by another connection (busy timeout expired)"
                ),
            ),
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => (
                ErrorKind::Backend,
                format!("file {db} is corrupt or is not a SQLite database"),
            ),
            ErrorCode::ReadOnly => (
                ErrorKind::Backend,
                format!(
                    "SQLite database {db} is read-only (check the permissions of the file and \
                     of its directory, which must be writable for the WAL)"
                ),
            ),
            ErrorCode::CannotOpen => {
                let missing_dir = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty() && !p.is_dir());
                match missing_dir {
                    Some(dir) => (
                        ErrorKind::Backend,
                        format!(
                            "cannot open SQLite database {db}: directory {} does not exist",
                            dir.display()
                        ),
                    ),
                    None => (
                        ErrorKind::Backend,
                        format!("cannot open SQLite database {db} (missing or not accessible)"),
                    ),
                }
            }
            ErrorCode::PermissionDenied => (
                ErrorKind::Backend,
                format!("permission denied on SQLite database {db}"),
            ),
            ErrorCode::DiskFull => (
                ErrorKind::Unavailable,
                format!("disk full while writing SQLite database {db}"),
            ),
            _ => (ErrorKind::Backend, format!("SQLite error on database {db}")),
        },
        _ => (ErrorKind::Backend, format!("SQLite error on database {db}")),
    };
    Error::new(kind, message)
        .with_backend(BACKEND_NAME)
        .with_operation(operation)
        .with_source(err)
}

/// A read-only database, detected at open, reported exactly as a write would report it.
pub(crate) fn read_only(path: &Path) -> Error {
    map_err(
        "open",
        path,
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
            Some("the database file is opened read-only".into()),
        ),
    )
}

/// The shared backend prologue (name checks, error tags, lease-lost wording).
pub(crate) const KIT: Kit = Kit::new(BACKEND_NAME);

/// The writer thread is gone (the backend is shutting down or a job panicked).
pub(crate) fn writer_gone(operation: &'static str) -> Error {
    Error::new(
        ErrorKind::Shutdown,
        "the SQLite writer thread has stopped (backend dropped or failed)",
    )
    .with_backend(BACKEND_NAME)
    .with_operation(operation)
}

/// A copy of an error for the other jobs of a failed group commit (errors are not `Clone`).
pub(crate) fn copy(e: &Error, operation: &'static str) -> Error {
    let mut c = Error::new(e.kind(), e.message().to_string())
        .with_backend(BACKEND_NAME)
        .with_operation(operation);
    if let Some(src) = std::error::Error::source(e) {
        c = c.with_source(src.to_string());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn busy_and_locked_are_retryable() {
        let p = Path::new("/tmp/x.db");
        for code in [rusqlite::ffi::SQLITE_BUSY, rusqlite::ffi::SQLITE_LOCKED] {
            let e = map_err("publish", p, failure(code));
            assert_eq!(e.kind(), ErrorKind::Unavailable);
            assert!(e.is_retryable());
            assert!(e.message().contains("/tmp/x.db"), "{e}");
        }
    }

    #[test]
    fn corrupt_and_read_only_name_the_path() {
        let p = Path::new("/data/q.db");
        for code in [
            rusqlite::ffi::SQLITE_CORRUPT,
            rusqlite::ffi::SQLITE_NOTADB,
            rusqlite::ffi::SQLITE_READONLY,
        ] {
            let e = map_err("open", p, failure(code));
            assert_eq!(e.kind(), ErrorKind::Backend);
            assert!(!e.is_retryable());
            assert!(e.message().contains("/data/q.db"), "{e}");
        }
        assert!(read_only(p).message().contains("read-only"));
    }

    #[test]
    fn missing_directory_is_named() {
        let p = Path::new("/nonexistent-courier-dir/sub/q.db");
        let e = map_err("open", p, failure(rusqlite::ffi::SQLITE_CANTOPEN));
        assert!(
            e.message().contains("/nonexistent-courier-dir/sub")
                && e.message().contains("does not exist"),
            "{e}"
        );
    }
}
