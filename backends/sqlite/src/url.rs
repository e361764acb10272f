//! SQLite URLs: `sqlite://path?params`, `sqlite:///abs/path?params`, `sqlite::memory:`.
//!
//! The grammar, in full (the scheme is case-insensitive, as URL schemes are):
//!
//! ```text
//! url    = scheme ":" ":memory:"                      a private in-memory database
//!        | scheme "://" ":memory:" [ "?" params ]
//!        | scheme "://" path [ "?" params ]           relative:  sqlite://data/q.db
//!                                                     absolute:  sqlite:///var/q.db
//! scheme = "sqlite"  (any case)
//! path   = percent-encoded bytes; "%20" is a space, "%3F" a "?", "%23" a "#", "%25" a "%"
//! params = param *( "&" param )
//! param  = "mode=" ( "ro" | "rw" | "rwc" )            default rwc
//!        | "busy_timeout=" milliseconds               default 5000
//!        | "foreign=" ( "allow" | "refuse" )          default refuse
//! ```
//!
//! Everything else is refused with [`ErrorKind::InvalidInput`](courier_core::ErrorKind):
//! an unknown or repeated parameter, a malformed value, an invalid percent-escape, a NUL
//! byte, a fragment (`#…`: write `%23`), and a user name or password (`sqlite://user@…`: a
//! SQLite file has no login; write `@` in a file name as `%40`). Errors never show a
//! parameter's value unless the parameter is known, and show the URL only through
//! [`courier_core::redact_url`].

use std::path::PathBuf;
use std::time::Duration;

use courier_core::{Error, Result, redact_url};

use crate::error::KIT;

/// How a database file is opened: the URL parameter `mode`, or
/// [`SqliteBackendBuilder::mode`](crate::SqliteBackendBuilder::mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OpenMode {
    /// `mode=ro`: open an existing file read-only, for inspection (`queue_names`,
    /// `topic_names`, reads that need no write). The file must exist and be at this build's
    /// schema version (a read-only handle cannot migrate it); anything that writes — publish,
    /// receive, ack, and reads that must first expire leases — fails with a read-only
    /// [`Backend`](courier_core::ErrorKind::Backend) error naming the file.
    ReadOnly,
    /// `mode=rw`: open an existing file read-write; a missing file is an error instead of
    /// being created.
    ReadWrite,
    /// `mode=rwc` (the default): open read-write, creating the file when missing (its
    /// directory must exist).
    #[default]
    ReadWriteCreate,
}

impl OpenMode {
    /// The URL spelling: `ro`, `rw` or `rwc`.
    pub fn as_str(self) -> &'static str {
        match self {
            OpenMode::ReadOnly => "ro",
            OpenMode::ReadWrite => "rw",
            OpenMode::ReadWriteCreate => "rwc",
        }
    }
}

/// Where a SQLite database lives, as parsed from a URL by [`parse_url`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqliteLocation {
    /// A database file.
    File(PathBuf),
    /// A private in-memory database.
    Memory,
}

/// A parsed SQLite URL: where the database lives and the settings its parameters gave
/// (`None`: the parameter was absent, the builder's setting stays).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteUrl {
    /// The file, or a private in-memory database.
    pub location: SqliteLocation,
    /// `mode=ro|rw|rwc`.
    pub mode: Option<OpenMode>,
    /// `busy_timeout=<ms>`.
    pub busy_timeout: Option<Duration>,
    /// `foreign=allow|refuse`: whether a database of another application may be shared.
    pub allow_foreign_database: Option<bool>,
}

/// The largest busy timeout SQLite accepts (milliseconds in a C `int`).
pub(crate) const MAX_BUSY_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// The URL parameters this backend understands, for error messages.
const PARAMS: &str = "mode, busy_timeout, foreign";

fn invalid(message: String) -> Error {
    KIT.tag("open")(Error::invalid(message))
}

impl SqliteUrl {
    /// Parse a SQLite URL (the grammar is in the [crate documentation](crate)).
    ///
    /// # Errors
    /// [`courier_core::ErrorKind::InvalidInput`] for another scheme, an empty path, an
    /// invalid percent-escape, a user name or password, a fragment, or an unknown, repeated
    /// or malformed parameter (named in the message).
    pub fn parse(url: &str) -> Result<SqliteUrl> {
        let shown = || redact_url(url);
        let rest = match url.split_once(':') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("sqlite") => rest,
            _ => {
                return Err(invalid(format!(
                    "not a SQLite URL: {} (expected sqlite://path/to/file.db or sqlite::memory:)",
                    shown()
                )));
            }
        };
        let mut parsed = SqliteUrl {
            location: SqliteLocation::Memory,
            mode: None,
            busy_timeout: None,
            allow_foreign_database: None,
        };
        if rest == ":memory:" {
            return Ok(parsed);
        }
        let Some(rest) = rest.strip_prefix("//") else {
            return Err(invalid(format!(
                "not a SQLite URL: {} (expected sqlite://path/to/file.db or sqlite::memory:)",
                shown()
            )));
        };
        if rest.contains('#') {
            return Err(invalid(format!(
                "SQLite URL {} has a fragment (#…); write a '#' in a file name as %23",
                shown()
            )));
        }
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        // What a URL parser would take for the authority (before the first '/'): a SQLite file
        // has no login, and a password must not end up in a file name or an error message.
        let authority = path.split('/').next().unwrap_or("");
        if authority.contains('@') {
            return Err(invalid(format!(
                "SQLite URL {} has a user name or password, which SQLite files do not take; \
                 write an '@' in a file name as %40",
                shown()
            )));
        }
        if let Some(query) = query {
            parsed.apply_query(query)?;
        }
        if path == ":memory:" {
            if parsed.mode == Some(OpenMode::ReadOnly) {
                return Err(invalid(
                    "SQLite URL parameter mode=ro: a private in-memory database cannot be \
                     read-only"
                        .to_string(),
                ));
            }
            return Ok(parsed);
        }
        if path.is_empty() {
            return Err(invalid(format!(
                "SQLite URL {} has an empty path (expected sqlite://path/to/file.db or \
                 sqlite::memory:)",
                shown()
            )));
        }
        let bytes = percent_decode(path).ok_or_else(|| {
            invalid(format!(
                "SQLite URL {} has an invalid percent-escape in its path ('%' must be \
                 followed by two hex digits; write a '%' as %25)",
                shown()
            ))
        })?;
        if bytes.contains(&0) {
            return Err(invalid(format!(
                "SQLite URL {} has a NUL byte (%00) in its path",
                shown()
            )));
        }
        parsed.location = SqliteLocation::File(path_from_bytes(bytes).ok_or_else(|| {
            invalid(format!(
                "SQLite URL {}: the decoded path is not valid UTF-8",
                shown()
            ))
        })?);
        Ok(parsed)
    }

    fn apply_query(&mut self, query: &str) -> Result<()> {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode_text(raw_name).ok_or_else(|| {
                invalid(
                    "SQLite URL has a parameter name with an invalid percent-escape".to_string(),
                )
            })?;
            let value = decode_text(raw_value).ok_or_else(|| {
                invalid(format!(
                    "SQLite URL parameter {name:?} has an invalid percent-escape in its value"
                ))
            })?;
            let known = matches!(name.as_str(), "mode" | "busy_timeout" | "foreign");
            if !known {
                // The value is not shown: an unknown parameter may carry anything.
                return Err(invalid(format!(
                    "unknown SQLite URL parameter {name:?} (supported: {PARAMS})"
                )));
            }
            let repeated = match name.as_str() {
                "mode" => self.mode.is_some(),
                "busy_timeout" => self.busy_timeout.is_some(),
                _ => self.allow_foreign_database.is_some(),
            };
            if repeated {
                return Err(invalid(format!(
                    "SQLite URL parameter {name:?} is given more than once"
                )));
            }
            match name.as_str() {
                "mode" => {
                    self.mode = Some(match value.as_str() {
                        "ro" => OpenMode::ReadOnly,
                        "rw" => OpenMode::ReadWrite,
                        "rwc" => OpenMode::ReadWriteCreate,
                        _ => {
                            return Err(invalid(format!(
                                "SQLite URL parameter mode={value:?} is not one of ro, rw, rwc"
                            )));
                        }
                    });
                }
                "busy_timeout" => {
                    let ms = value
                        .parse::<u64>()
                        .ok()
                        .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                        .map(Duration::from_millis)
                        .filter(|d| *d <= MAX_BUSY_TIMEOUT)
                        .ok_or_else(|| {
                            invalid(format!(
                                "SQLite URL parameter busy_timeout={value:?} is not a number \
                                 of milliseconds from 0 to {}",
                                MAX_BUSY_TIMEOUT.as_millis()
                            ))
                        })?;
                    self.busy_timeout = Some(ms);
                }
                _ => {
                    self.allow_foreign_database = Some(match value.as_str() {
                        "allow" => true,
                        "refuse" => false,
                        _ => {
                            return Err(invalid(format!(
                                "SQLite URL parameter foreign={value:?} is not one of allow, \
                                 refuse"
                            )));
                        }
                    });
                }
            }
        }
        Ok(())
    }
}

/// Parse a SQLite URL into where the database lives (the parameters are checked too; see
/// [`SqliteUrl::parse`] for them).
///
/// Accepted: `sqlite::memory:`, `sqlite://:memory:`, `sqlite://relative/path.db`,
/// `sqlite:///absolute/path.db`, each optionally followed by
/// `?mode=…&busy_timeout=…&foreign=…`; the scheme in any case; percent-escapes in the path are decoded.
///
/// # Errors
/// As [`SqliteUrl::parse`].
pub fn parse_url(url: &str) -> Result<SqliteLocation> {
    SqliteUrl::parse(url).map(|u| u.location)
}

/// Decode `%XX` escapes; `None` for a `%` not followed by two hex digits.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn decode_text(s: &str) -> Option<String> {
    String::from_utf8(percent_decode(s)?).ok()
}

#[cfg(unix)]
fn path_from_bytes(bytes: Vec<u8>) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

#[cfg(not(unix))]
fn path_from_bytes(bytes: Vec<u8>) -> Option<PathBuf> {
    String::from_utf8(bytes).ok().map(PathBuf::from)
}
