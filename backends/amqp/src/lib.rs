//! # courier-amqp
//!
//! Courier's RabbitMQ backend (AMQP 0.9.1 through `lapin`). See the crate README for the
//! design, the supported servers and the trade-offs.
#![forbid(unsafe_code)]

mod pubsub;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use courier_core::backend::{ConfigStore, Kit};
use courier_core::{Error, QueueConfig, Result, SharedClock, SystemClock, redact_url};

/// The backend's short name, used in errors.
pub const BACKEND_NAME: &str = "amqp";

/// The default prefix of every stream and exchange this backend declares.
pub const DEFAULT_PREFIX: &str = "courier";

pub(crate) const KIT: Kit = Kit::new(BACKEND_NAME);

/// Courier over RabbitMQ: a [`courier_core::Queue`], [`courier_core::PubSub`] and
/// [`courier_core::EventBus`]. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct AmqpBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The URL as given (it may hold a password: never print it).
    uri: String,
    /// The URL with its password replaced, for Debug and logs.
    url: String,
    prefix: String,
    clock: SharedClock,
    configs: ConfigStore,
    pubsub: pubsub::PubSubHub,
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
        self.inner.configs.default_config()
    }

    /// The connection URL with its password redacted.
    pub fn url(&self) -> &str {
        &self.inner.url
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
}

impl Default for AmqpBackendBuilder {
    fn default() -> Self {
        AmqpBackendBuilder {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            default_config: QueueConfig::default(),
            connection_timeout: Duration::from_secs(10),
            clock: None,
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
        KIT.check_queue_config("(default)", &self.default_config)?;
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let pubsub = pubsub::PubSubHub::new(
            self.url.clone(),
            url.clone(),
            self.prefix.clone(),
            self.default_config,
        );
        Ok(AmqpBackend {
            inner: Arc::new(Inner {
                uri: self.url,
                url,
                prefix: self.prefix,
                clock,
                configs: ConfigStore::new(self.default_config),
                pubsub,
            }),
        })
    }
}
