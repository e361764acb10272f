//! The backend's connection to RabbitMQ: one AMQP connection, re-opened on demand after a
//! loss, with one publisher-confirm channel shared by every append.
//!
//! Every user of the connection asks [`Conn::session`] for the current [`Session`]. When the
//! connection is gone, the next `session` call reconnects (bounded by the connection timeout)
//! and fails with a retryable `Unavailable` error while the broker stays away. An outage is
//! logged once: a WARN when a call first finds the broker unreachable, an INFO with
//! `outage_ms` when a connection is made again.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use courier_core::{Error, ErrorKind, Result};
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use parking_lot::Mutex;

use courier_core::backend::OutageLog;

use crate::{BACKEND_NAME, KIT};

/// The heartbeat asked for when the URL sets none (seconds), so that a silent network cut is
/// noticed within about two of them rather than RabbitMQ's default 60 s.
pub(crate) const HEARTBEAT_SECS: u16 = 10;

/// A live connection and its shared confirm channel.
#[derive(Clone)]
pub(crate) struct Session {
    /// Incremented on every new connection.
    pub(crate) generation: u64,
    pub(crate) connection: Arc<Connection>,
    /// Publisher confirms are on.
    pub(crate) publish: Channel,
    /// Streams declared on this connection.
    declared: Arc<Mutex<HashSet<String>>>,
    /// Every stream this handle declares, for tests that remove them afterwards.
    log: Option<StreamLog>,
}

/// A record of the streams handles declare (see `AmqpBackendBuilder::stream_log`).
pub(crate) type StreamLog = Arc<Mutex<HashSet<String>>>;

impl Session {
    fn usable(&self) -> bool {
        self.connection.status().connected() && self.publish.status().connected()
    }

    /// Declare the stream `name` (durable, `x-queue-type = stream`) once per connection.
    pub(crate) async fn declare_stream(&self, name: &str, operation: &'static str) -> Result<()> {
        if self.declared.lock().contains(name) {
            return Ok(());
        }
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        self.publish
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
            .map_err(|e| amqp_err(operation, format!("declaring stream {name:?}"), e))?;
        self.declared.lock().insert(name.to_owned());
        if let Some(log) = &self.log {
            log.lock().insert(name.to_owned());
        }
        Ok(())
    }
}

/// How long closing a connection or channel may take before it is given up (a connection the
/// server already closed may never answer).
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The backend's connection manager.
pub(crate) struct Conn {
    /// May hold a password: never printed.
    uri: String,
    /// Redacted, for errors and logs.
    url: String,
    timeout: Duration,
    current: tokio::sync::Mutex<Option<Session>>,
    generation: AtomicU64,
    health: OutageLog,
    log: Option<StreamLog>,
}

impl Conn {
    pub(crate) fn new(uri: String, url: String, timeout: Duration, log: Option<StreamLog>) -> Self {
        Conn {
            log,
            health: OutageLog::new(BACKEND_NAME, "queues", &url),
            uri,
            url,
            timeout,
            current: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }

    /// The current session, connecting first when there is none or it was lost.
    ///
    /// # Errors
    /// `Unavailable` (retryable) when RabbitMQ cannot be reached within the timeout;
    /// `InvalidInput` for a malformed URL; `Backend` when RabbitMQ refuses the login.
    pub(crate) async fn session(&self, operation: &'static str) -> Result<Session> {
        let mut current = self.current.lock().await;
        if let Some(s) = current.as_ref() {
            if s.usable() {
                return Ok(s.clone());
            }
            *current = None;
        }
        let opened = match tokio::time::timeout(self.timeout, self.open(operation)).await {
            Ok(r) => r,
            Err(_) => Err(KIT.tag(operation)(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "RabbitMQ at {} did not answer within {:?}",
                    self.url, self.timeout
                ),
            ))),
        };
        match opened {
            Ok(s) => {
                self.health.up();
                *current = Some(s.clone());
                Ok(s)
            }
            Err(e) => {
                self.health.down(&e);
                Err(e)
            }
        }
    }

    /// Forget the session of `generation` (a call found it broken); the next `session`
    /// reconnects.
    pub(crate) async fn invalidate(&self, generation: u64) {
        let stale = {
            let mut current = self.current.lock().await;
            if current.as_ref().is_some_and(|s| s.generation == generation) {
                current.take()
            } else {
                None
            }
        };
        // Outside the lock, and bounded: a connection the server already closed (a restart,
        // a connection exception) may never answer close-ok, and every call of this handle
        // waits on this lock for its session.
        if let Some(s) = stale {
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                s.connection.close(320, "courier: reconnecting".into()),
            )
            .await;
        }
    }

    /// Close the connection as a network cut would (tests of reconnection).
    pub(crate) async fn cut(&self) -> bool {
        let current = self.current.lock().await;
        match current.as_ref() {
            Some(s) => {
                let _ = tokio::time::timeout(
                    CLOSE_TIMEOUT,
                    s.connection.close(320, "courier: cut by a test".into()),
                )
                .await;
                true
            }
            None => false,
        }
    }

    async fn open(&self, operation: &'static str) -> Result<Session> {
        let uri = parse_uri(&self.uri, &self.url, operation)?;
        let properties = ConnectionProperties::default()
            .with_connection_name("courier queues and topics".into());
        let connection = Connection::connect_uri(uri, properties)
            .await
            .map_err(|e| map_err(operation, e))?;
        let publish = async {
            let publish = connection.create_channel().await?;
            publish
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok(publish)
        }
        .await
        .map_err(|e| map_err(operation, e))?;
        Ok(Session {
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            connection: Arc::new(connection),
            publish,
            declared: Arc::default(),
            log: self.log.clone(),
        })
    }

    /// Note a call's failure on a session: a connection-level error makes the next call
    /// reconnect.
    pub(crate) async fn failed(&self, session: &Session, e: &Error) {
        if e.is_retryable() {
            self.health.down(e);
            self.invalidate(session.generation).await;
        }
    }
}

/// Parse the URL for lapin, asking for a [`HEARTBEAT_SECS`] heartbeat unless it sets one.
/// The parser's own message may quote the URL (and its password), so it is not passed on.
pub(crate) fn parse_uri(uri: &str, url: &str, operation: &'static str) -> Result<AMQPUri> {
    let mut parsed: AMQPUri = uri
        .parse()
        .map_err(|_| KIT.tag(operation)(Error::invalid(format!("not a valid AMQP URL: {url}"))))?;
    parsed.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
    Ok(parsed)
}

/// Map a lapin error raised by `operation`.
///
/// A lost or closed connection or channel, a missed heartbeat, and the broker closing the
/// connection (CONNECTION_FORCED, a resource alarm, an internal error) are
/// [`ErrorKind::Unavailable`]: retrying after the reconnect may succeed. Everything else (a
/// refused login or vhost, a channel error on a bad argument, a malformed frame) is
/// [`ErrorKind::Backend`]. The lapin error is kept as the source; it never holds the password.
pub(crate) fn map_err(operation: &'static str, e: lapin::Error) -> Error {
    use lapin::ErrorKind as K;
    let (kind, message) = match e.kind() {
        K::IOError(_) | K::RuntimeShutdownError(_) | K::MissingHeartbeatError => {
            (ErrorKind::Unavailable, "RabbitMQ is unreachable")
        }
        K::InvalidConnectionState(_) | K::InvalidChannelState(..) | K::InvalidChannel(_) => (
            ErrorKind::Unavailable,
            "the connection to RabbitMQ is closed",
        ),
        K::ProtocolError(amqp) => match amqp.get_id() {
            // CONNECTION_FORCED, RESOURCE_LOCKED, RESOURCE_ERROR, INTERNAL_ERROR
            320 | 405 | 506 | 541 => (
                ErrorKind::Unavailable,
                "RabbitMQ closed the connection or channel",
            ),
            // A stream whose node is still starting after a restart: "home node … of durable
            // queue … is down or inaccessible". It comes back by itself.
            404 if amqp.get_message().as_str().contains("down or inaccessible") => (
                ErrorKind::Unavailable,
                "the stream is not available yet (its node is starting)",
            ),
            403 => (ErrorKind::Backend, "RabbitMQ refused access"),
            530 => (ErrorKind::Backend, "RabbitMQ does not allow this (vhost?)"),
            _ => (ErrorKind::Backend, "RabbitMQ returned an error"),
        },
        _ => (ErrorKind::Backend, "the AMQP client failed"),
    };
    Error::new(kind, message)
        .with_backend(BACKEND_NAME)
        .with_operation(operation)
        .with_source(e)
}

/// Whether RabbitMQ failed a publish because the stream it names was not started yet, when
/// another connection declared it a moment ago: it closes the connection either with
/// `RESOURCE_ERROR - Stream not found` or, in 3.10, with an `INTERNAL_ERROR` after the channel
/// crashed in the stream writer's `write` (seen in the log: `osiris_writer`, line 125, before
/// anything was written). Such a publish may be sent again. Should the broker have written it
/// after all, the record applies twice, which the replicated model tolerates: a second claim's
/// answer nobody waits for is released, a second settle is refused, and a second publish is an
/// at-least-once duplicate (Q1).
pub(crate) fn stream_not_started(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if (amqp.get_id() == 506 && amqp.get_message().as_str().contains("Stream not found"))
            || amqp.get_id() == 541)
}

/// [`map_err`] with what the call was doing.
pub(crate) fn amqp_err(operation: &'static str, what: String, e: lapin::Error) -> Error {
    let mapped = map_err(operation, e);
    let message = format!("{what}: {}", mapped.message());
    let kind = mapped.kind();
    Error::new(kind, message)
        .with_backend(BACKEND_NAME)
        .with_operation(operation)
        .with_source(mapped)
}
