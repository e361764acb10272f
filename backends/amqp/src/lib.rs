//! # courier-amqp
//!
//! Courier's RabbitMQ backend (AMQP 0.9.1 through `lapin`). See the crate README for the
//! design, the supported servers and the trade-offs.
#![forbid(unsafe_code)]

mod conn;
mod log;
mod pubsub;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use courier_core::backend::Kit;
use courier_core::{
    Error, EventBus, MessageId, PubSub, Queue, QueueConfig, Result, SharedClock, SystemClock,
    redact_url,
};
use courier_replicated::Replicated;
use parking_lot::Mutex;

use crate::conn::Conn;
pub use crate::log::AmqpLog;

/// The backend's short name, used in errors.
pub const BACKEND_NAME: &str = "amqp";

/// The default prefix of every stream and exchange this backend declares.
pub const DEFAULT_PREFIX: &str = "courier";

pub(crate) const KIT: Kit = Kit::new(BACKEND_NAME);

/// The longest prefix: stream names are `<prefix>.q.<name>` with names of up to 200 bytes,
/// and RabbitMQ names are at most 255 bytes.
pub const MAX_PREFIX: usize = 50;

/// Courier over RabbitMQ: a [`courier_core::Queue`], [`courier_core::PubSub`] and
/// [`courier_core::EventBus`]. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct AmqpBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The URL with its password replaced, for Debug and logs.
    url: String,
    prefix: String,
    clock: SharedClock,
    /// Queues and topics: the reference model replicated through RabbitMQ streams.
    store: Replicated<AmqpLog>,
    pubsub: pubsub::PubSubHub,
    conn: Arc<Conn>,
}

impl AmqpBackend {
    /// Connect with an `amqp://` or `amqps://` URL (vhost in the path, `%2f` for `/`) and
    /// default settings.
    ///
    /// # Errors
    /// [`courier_core::ErrorKind::InvalidInput`] for a malformed URL,
    /// [`courier_core::ErrorKind::Unavailable`] when RabbitMQ cannot be reached.
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::builder().url(url).build().await
    }

    /// A builder with typed settings.
    pub fn builder() -> AmqpBackendBuilder {
        AmqpBackendBuilder::default()
    }

    /// `"amqp"`.
    pub fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    /// The clock used for `created_at`, delays and lease deadlines.
    pub fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    /// The prefix of every stream and exchange this backend declares.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The configuration used for queues and groups that were not configured.
    pub fn default_config(&self) -> QueueConfig {
        self.inner.store.default_config()
    }

    /// The queues and topics (what `Queue` and `EventBus` forward to).
    fn store(&self) -> &Replicated<AmqpLog> {
        &self.inner.store
    }

    /// Store `bytes` in `queue` as one entry that does not decode, under a fresh id, as a
    /// corrupt or foreign writer would: for tests of Q10 (it goes to dead letters, and
    /// consumers keep running), not for applications.
    ///
    /// # Errors
    /// As any call: invalid name, RabbitMQ unavailable.
    #[doc(hidden)]
    pub async fn inject_raw(&self, queue: &str, bytes: &[u8]) -> Result<MessageId> {
        self.inner.store.inject_raw(queue, bytes).await
    }

    /// The connection URL with its password redacted.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Check that RabbitMQ answers (a connection is open or can be opened).
    ///
    /// # Errors
    /// [`courier_core::ErrorKind::Unavailable`] when it does not.
    pub async fn ping(&self) -> Result<()> {
        self.inner.conn.session("ping").await.map(drop)
    }

    /// Close this handle's connection as a network cut would: the next call reconnects and
    /// followers resume where they were. For tests of reconnection, not for applications.
    #[doc(hidden)]
    pub async fn disrupt_queues(&self) -> bool {
        self.inner.conn.cut().await
    }

    /// Delete these streams, and with `exchange` this prefix's pub/sub exchange: for tests and
    /// benchmarks that clean up after themselves (names from
    /// [`AmqpBackendBuilder::stream_log`]), not for applications. Deleting a stream deletes
    /// its queue or topic for every process.
    ///
    /// # Errors
    /// `Unavailable` when RabbitMQ cannot be reached.
    #[doc(hidden)]
    pub async fn delete_streams(&self, streams: &[String], exchange: bool) -> Result<()> {
        let session = self.inner.conn.session("delete_streams").await?;
        let channel = session
            .connection
            .create_channel()
            .await
            .map_err(|e| conn::map_err("delete_streams", e))?;
        for name in streams {
            channel
                .queue_delete(
                    name.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await
                .map_err(|e| conn::amqp_err("delete_streams", format!("deleting {name:?}"), e))?;
        }
        if !exchange {
            let _ = channel.close(200, "courier: done".into()).await;
            return Ok(());
        }
        let exchange = format!("{}.pubsub", self.inner.prefix);
        channel
            .exchange_delete(
                exchange.as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await
            .map_err(|e| conn::amqp_err("delete_streams", format!("deleting {exchange:?}"), e))?;
        let _ = channel.close(200, "courier: done".into()).await;
        Ok(())
    }

    /// A reference that does not keep the handle's connections open (tests that look a
    /// handle up later).
    #[doc(hidden)]
    pub fn downgrade(&self) -> WeakAmqpBackend {
        WeakAmqpBackend(Arc::downgrade(&self.inner))
    }

    /// Test support for the conformance case of Q7's partial store (`Error::stored`), not for
    /// applications: storing `1 + records` makes the next `publish_batch` or `emit_batch`
    /// of this handle fail after `records` of its records (up to 1,000 messages each) were
    /// stored, as a connection lost between two records would.
    #[doc(hidden)]
    pub fn batch_fault_switch(&self) -> Arc<AtomicUsize> {
        self.inner.store.batch_fault_switch()
    }
}

/// A handle that does not keep the backend alive (see [`AmqpBackend::downgrade`]).
#[doc(hidden)]
#[derive(Clone)]
pub struct WeakAmqpBackend(std::sync::Weak<Inner>);

impl WeakAmqpBackend {
    /// The backend, if a handle still holds it.
    pub fn upgrade(&self) -> Option<AmqpBackend> {
        self.0.upgrade().map(|inner| AmqpBackend { inner })
    }
}

impl fmt::Debug for AmqpBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpBackend")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// Typed settings for [`AmqpBackend`].
#[derive(Debug, Clone)]
pub struct AmqpBackendBuilder {
    url: String,
    prefix: String,
    default_config: QueueConfig,
    connection_timeout: Duration,
    clock: Option<SharedClock>,
    stream_log: Option<conn::StreamLog>,
}

impl Default for AmqpBackendBuilder {
    fn default() -> Self {
        AmqpBackendBuilder {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            default_config: QueueConfig::default(),
            connection_timeout: Duration::from_secs(10),
            clock: None,
            stream_log: None,
        }
    }
}

impl AmqpBackendBuilder {
    /// The broker URL: `amqp://user:pass@host:5672/vhost` (`%2f` is the default vhost `/`),
    /// or `amqps://` for TLS.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// The prefix of every stream and exchange (default `courier`): two applications with
    /// different prefixes share a vhost without seeing each other.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The configuration of queues and groups that are not configured.
    pub fn default_config(mut self, config: QueueConfig) -> Self {
        self.default_config = config;
        self
    }

    /// How long `build` may take to reach the broker (default 10 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// The clock (tests).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Record every stream the handle declares in `log`: for tests that remove their streams
    /// afterwards ([`AmqpBackend::delete_streams`]), not for applications.
    #[doc(hidden)]
    pub fn stream_log(mut self, log: Arc<Mutex<std::collections::HashSet<String>>>) -> Self {
        self.stream_log = Some(log);
        self
    }

    /// Connect.
    ///
    /// # Errors
    /// [`courier_core::ErrorKind::InvalidInput`] for a malformed URL, prefix or default
    /// configuration; [`courier_core::ErrorKind::Unavailable`] when RabbitMQ cannot be reached
    /// within the connection timeout.
    pub async fn build(self) -> Result<AmqpBackend> {
        let url = redact_url(&self.url);
        if !(self.url.starts_with("amqp://") || self.url.starts_with("amqps://")) {
            return Err(KIT.tag("connect")(Error::invalid(format!(
                "not an AMQP URL (amqp:// or amqps://): {url}"
            ))));
        }
        KIT.check_name("prefix", &self.prefix, "connect")?;
        if self.prefix.len() > MAX_PREFIX {
            return Err(KIT.tag("connect")(Error::invalid(format!(
                "prefix is {} bytes; at most {MAX_PREFIX} (RabbitMQ names are at most 255 bytes)",
                self.prefix.len()
            ))));
        }
        self.default_config.validate().map_err(KIT.tag("connect"))?;
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let pubsub = pubsub::PubSubHub::new(
            self.url.clone(),
            url.clone(),
            self.prefix.clone(),
            self.default_config,
        );
        let conn = Arc::new(Conn::new(
            self.url,
            url.clone(),
            self.connection_timeout,
            self.stream_log,
        ));
        conn.session("connect").await?;
        let log = AmqpLog {
            conn: conn.clone(),
            prefix: self.prefix.clone(),
        };
        let store = Replicated::new(log, KIT, clock.clone(), self.default_config);
        Ok(AmqpBackend {
            inner: Arc::new(Inner {
                url,
                prefix: self.prefix,
                clock,
                store,
                pubsub,
                conn,
            }),
        })
    }
}

courier_replicated::forward_queue_and_event_bus!(AmqpBackend, store);

// Compile-time proof that the backend serves every trait behind `Arc<dyn …>`.
fn _object_safe(b: AmqpBackend) {
    let _: Arc<dyn Queue> = Arc::new(b.clone());
    let _: Arc<dyn PubSub> = Arc::new(b.clone());
    let _: Arc<dyn EventBus> = Arc::new(b);
}
