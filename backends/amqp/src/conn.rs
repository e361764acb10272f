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
use std::time::{Duration, Instant};

use courier_core::{Error, ErrorKind, Result};
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use parking_lot::Mutex;

use crate::KIT;

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
}

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
        Ok(())
    }
}

/// The backend's connection manager.
pub(crate) struct Conn {
    /// May hold a password: never printed.
    uri: String,
    /// Redacted, for errors and logs.
    url: String,
    timeout: Duration,
    current: tokio::sync::Mutex<Option<Session>>,
    generation: AtomicU64,
    /// When the current outage was first noticed (`None` while connected).
    lost_at: Mutex<Option<Instant>>,
}

impl Conn {
    pub(crate) fn new(uri: String, url: String, timeout: Duration) -> Self {
        Conn {
            uri,
            url,
            timeout,
            current: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            lost_at: Mutex::new(None),
        }
    }

    /// The current session, connecting first when there is none or it was lost.
    ///
    /// # Errors
    /// `Unavailable` (retryable) when RabbitMQ cannot be reached within the timeout.
    pub(crate) async fn session(&self, operation: &'static str) -> Result<Session> {
        let mut current = self.current.lock().await;
        if let Some(s) = current.as_ref() {
            if s.usable() {
                return Ok(s.clone());
            }
            self.lost(operation, &"the connection was closed");
            *current = None;
        }
        match tokio::time::timeout(self.timeout, self.open()).await {
            Ok(Ok(s)) => {
                self.back();
                *current = Some(s.clone());
                Ok(s)
            }
            Ok(Err(e)) => {
                self.lost(operation, &e);
                Err(KIT.tag(operation)(
                    Error::new(
                        ErrorKind::Unavailable,
                        format!("RabbitMQ is unreachable at {}", self.url),
                    )
                    .with_source(e),
                ))
            }
            Err(_) => {
                self.lost(operation, &"timed out");
                Err(KIT.tag(operation)(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "RabbitMQ at {} did not answer within {:?}",
                        self.url, self.timeout
                    ),
                )))
            }
        }
    }

    /// Forget the session of `generation` (a call found it broken); the next `session`
    /// reconnects.
    pub(crate) async fn invalidate(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|s| s.generation == generation) {
            if let Some(s) = current.take() {
                let _ = s
                    .connection
                    .close(320, "courier: reconnecting".into())
                    .await;
            }
        }
    }

    /// Close the connection as a network cut would (tests of reconnection).
    pub(crate) async fn cut(&self) -> bool {
        let current = self.current.lock().await;
        match current.as_ref() {
            Some(s) => {
                let _ = s
                    .connection
                    .close(320, "courier: cut by a test".into())
                    .await;
                true
            }
            None => false,
        }
    }

    async fn open(&self) -> std::result::Result<Session, lapin::Error> {
        let connection = Connection::connect(&self.uri, ConnectionProperties::default()).await?;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Session {
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            connection: Arc::new(connection),
            publish,
            declared: Arc::default(),
        })
    }

    fn lost(&self, operation: &str, cause: &dyn std::fmt::Display) {
        let mut lost = self.lost_at.lock();
        if lost.is_none() {
            *lost = Some(Instant::now());
            tracing::warn!(url = %self.url, operation, error = %cause, "courier amqp: RabbitMQ connection lost");
        }
    }

    fn back(&self) {
        if let Some(at) = self.lost_at.lock().take() {
            let outage_ms = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
            tracing::info!(url = %self.url, outage_ms, "courier amqp: RabbitMQ connection back");
        }
    }

    /// Note a call's failure on a session: a connection-level error makes the next call
    /// reconnect.
    pub(crate) async fn failed(&self, session: &Session, operation: &'static str, e: &Error) {
        if e.is_retryable() {
            self.lost(operation, e);
            self.invalidate(session.generation).await;
        }
    }
}

/// A lapin error as a Courier error: connection and channel losses are `Unavailable`
/// (retryable), protocol refusals `Backend`.
pub(crate) fn amqp_err(operation: &'static str, what: String, e: lapin::Error) -> Error {
    let kind = if e.is_amqp_soft_error() {
        ErrorKind::Backend
    } else {
        ErrorKind::Unavailable
    };
    KIT.tag(operation)(Error::new(kind, format!("{what}: {e}")).with_source(e))
}
