//! The one place where native Redis errors become [`courier_core::Error`]s.

use courier_core::{Error, ErrorKind};
use redis::{RedisError, ServerErrorKind};

use courier_core::backend::Kit;

use crate::BACKEND_NAME;

/// Map a redis-rs error raised by `operation`.
///
/// Connection trouble (I/O errors, refused or dropped connections, timeouts) and server states
/// that pass (loading a dump, a busy script, failover, cluster reconfiguration, out of memory
/// under `noeviction`) are [`ErrorKind::Unavailable`]: retrying later may succeed. Everything
/// else (a script error, a wrong type) is [`ErrorKind::Backend`]. The redis-rs error is kept
/// as the source; it never carries the password of the URL.
pub(crate) fn map_err(operation: &'static str, e: RedisError) -> Error {
    let transient_server = matches!(
        e.kind(),
        redis::ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        )
    );
    let code = e.code().unwrap_or("");
    let transient_code = matches!(code, "BUSY" | "OOM" | "LOADING" | "NOREPLICAS");
    let (kind, message) = if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
    {
        (ErrorKind::Unavailable, "Redis is unreachable")
    } else if transient_server || transient_code {
        (ErrorKind::Unavailable, "Redis cannot serve the request now")
    } else if e.kind() == redis::ErrorKind::AuthenticationFailed {
        (ErrorKind::Backend, "Redis refused the credentials")
    } else {
        (ErrorKind::Backend, "Redis returned an error")
    };
    Error::new(kind, message)
        .with_backend(BACKEND_NAME)
        .with_operation(operation)
        .with_source(e)
}

/// A connect that did not finish within the connection timeout, as redis-rs reports its own
/// (an I/O timeout: [`map_err`] makes it [`ErrorKind::Unavailable`]).
pub(crate) fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no answer within the connection timeout",
    ))
}

/// An error for a reply that does not have the shape a script promises.
pub(crate) fn bad_reply(operation: &'static str, what: &str) -> Error {
    Error::new(
        ErrorKind::Backend,
        format!("unexpected reply from Redis: {what}"),
    )
    .with_backend(BACKEND_NAME)
    .with_operation(operation)
}

/// The shared backend prologue (name checks, error tags, lease-lost wording).
pub(crate) const KIT: Kit = Kit::new(BACKEND_NAME);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_retryable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = map_err("publish", RedisError::from(io));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.is_retryable());
        assert_eq!(e.backend(), "redis");
        assert_eq!(e.operation(), "publish");
    }

    #[test]
    fn script_errors_are_not_retryable() {
        let e = map_err(
            "claim",
            RedisError::from((redis::ErrorKind::Client, "bad script")),
        );
        assert_eq!(e.kind(), ErrorKind::Backend);
        assert!(!e.is_retryable());
    }
}
