//! The one place where native Redis errors become [`courier_core::Error`]s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use courier_core::{Error, ErrorKind};
use parking_lot::Mutex;
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
    map_err_on(operation, e, "")
}

/// [`map_err`] for a call to one node of a cluster (`host:port`), which the message names so
/// an operator sees which node is in trouble; `""` names none.
pub(crate) fn map_err_on(operation: &'static str, e: RedisError, node: &str) -> Error {
    let (kind, message) = if connection_lost(&e) {
        (ErrorKind::Unavailable, "Redis is unreachable")
    } else if transient_server(&e) {
        (ErrorKind::Unavailable, "Redis cannot serve the request now")
    } else if e.kind() == redis::ErrorKind::AuthenticationFailed {
        (ErrorKind::Backend, "Redis refused the credentials")
    } else {
        (ErrorKind::Backend, "Redis returned an error")
    };
    let message = if node.is_empty() {
        message.to_string()
    } else {
        format!("{message} (node {node})")
    };
    Error::new(kind, message)
        .with_backend(BACKEND_NAME)
        .with_operation(operation)
        .with_source(e)
}

/// The connection is gone or never came up: I/O errors, refused or dropped connections,
/// timeouts, no connection to a cluster node.
fn connection_lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        // A cluster client with no connection to the slot's node (it is down, or a failover
        // is under way).
        || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
}

/// The server answered, but is in a state that passes (loading a dump, a busy script,
/// failover, cluster reconfiguration, out of memory under `noeviction`).
fn transient_server(e: &RedisError) -> bool {
    let kind = matches!(
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
    // UNBLOCKED: a blocked command ended because its master became a replica (failover).
    kind || matches!(
        code,
        "BUSY" | "OOM" | "LOADING" | "NOREPLICAS" | "UNBLOCKED"
    )
}

/// Whether one pool of connections (the shared command connection, the blocking-wait
/// connections, the pub/sub connection) is up, so that an outage is logged once: one WARN when
/// the connection is lost, one INFO with the outage's length when it is back, however many
/// calls failed in between.
///
/// The state is an epoch: even while connected, odd while lost. A call takes the epoch when it
/// starts ([`Health::begin`]) and reports its outcome against it, so that a reply to a request
/// sent before the loss was noticed cannot end the outage, and a failure of a request sent
/// during the outage cannot start a second one after it ended (concurrent calls on a
/// multiplexed connection finish in any order).
pub(crate) struct Health {
    pool: &'static str,
    /// The URL with its password redacted.
    url: String,
    epoch: AtomicU64,
    /// When the current outage was noticed (`Some` exactly while the epoch is odd).
    lost_at: Mutex<Option<Instant>>,
}

/// Whether a [`Health`] epoch is one of an outage (odd).
fn is_outage(epoch: u64) -> bool {
    epoch & 1 == 1
}

impl Health {
    pub(crate) fn new(pool: &'static str, url: &str) -> Self {
        Health {
            pool,
            url: url.to_string(),
            epoch: AtomicU64::new(0),
            lost_at: Mutex::new(None),
        }
    }

    /// The epoch to report a call's outcome against; take it before the call starts.
    pub(crate) fn begin(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Report the outcome of a call that started at `start`: a lost connection starts an
    /// outage, any answer from the server (even an error reply, except the passing states of
    /// [`map_err`]) ends one. `operation` names the call in the log line.
    pub(crate) fn observe<T>(
        &self,
        start: u64,
        operation: &'static str,
        outcome: &redis::RedisResult<T>,
    ) {
        match outcome {
            Ok(_) => self.up(start),
            Err(e) if connection_lost(e) => {
                if !is_outage(start) {
                    self.down(start, &map_err(operation, e.clone()));
                }
            }
            Err(e) if transient_server(e) => {}
            Err(_) => self.up(start),
        }
    }

    /// A call that started at `start` found the connection gone (`e` is what it returns).
    pub(crate) fn down(&self, start: u64, e: &Error) {
        if is_outage(start) {
            return; // started during an outage: nothing new
        }
        let mut lost_at = self.lost_at.lock();
        if self.epoch.load(Ordering::Acquire) != start {
            return; // another call reported it first, or the state moved on since
        }
        *lost_at = Some(Instant::now());
        self.epoch.store(start + 1, Ordering::Release);
        tracing::warn!(
            backend = BACKEND_NAME,
            pool = self.pool,
            url = %self.url,
            error = %format_args!("{e:#}"),
            "courier redis: connection lost"
        );
    }

    /// A call that started at `start` got an answer from the server.
    pub(crate) fn up(&self, start: u64) {
        if !is_outage(start) {
            return; // started while connected: nothing to end (the common, lock-free case)
        }
        let mut lost_at = self.lost_at.lock();
        if self.epoch.load(Ordering::Acquire) != start {
            return;
        }
        let outage_ms = lost_at.take().map_or(0, |t| {
            u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
        });
        self.epoch.store(start + 1, Ordering::Release);
        tracing::info!(
            backend = BACKEND_NAME,
            pool = self.pool,
            url = %self.url,
            outage_ms,
            "courier redis: connection restored"
        );
    }
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
    fn an_outage_is_one_transition_each_way() {
        let h = Health::new("commands", "redis://127.0.0.1:1");
        let refused = || {
            Err::<(), _>(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "refused",
            )))
        };
        let before = h.begin();
        assert_eq!(before, 0);
        h.observe(before, "publish", &Ok(()));
        assert_eq!(h.begin(), 0, "a success while connected changes nothing");
        // Two calls sent while connected fail: one outage.
        h.observe(before, "publish", &refused());
        h.observe(before, "publish", &refused());
        assert_eq!(h.begin(), 1);
        // A late reply to a request sent before the loss does not end it.
        h.observe(before, "publish", &Ok(()));
        assert_eq!(h.begin(), 1);
        // Calls during the outage fail without another transition; a server state that
        // passes neither starts nor ends one.
        let during = h.begin();
        h.observe(during, "publish", &refused());
        h.observe(
            during,
            "publish",
            &Err::<(), _>(RedisError::from((
                redis::ErrorKind::Server(ServerErrorKind::BusyLoading),
                "LOADING",
            ))),
        );
        assert_eq!(h.begin(), 1);
        // The first answer ends it; a late failure of a call sent during it does not start
        // another.
        h.observe(during, "publish", &Ok(()));
        assert_eq!(h.begin(), 2);
        h.observe(during, "publish", &refused());
        assert_eq!(h.begin(), 2);
        // An error reply is an answer: the connection works.
        let h2 = Health::new("waits", "redis://127.0.0.1:1");
        h2.observe(0, "receive", &refused());
        h2.observe(
            1,
            "receive",
            &Err::<(), _>(RedisError::from((redis::ErrorKind::Client, "bad script"))),
        );
        assert_eq!(h2.begin(), 2);
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
