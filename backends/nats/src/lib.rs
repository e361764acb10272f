//! # courier-nats
//!
//! Courier's NATS JetStream backend (through `async-nats`). Queues and topics are the
//! reference model replicated through JetStream ([`courier_replicated`]); pub/sub is core
//! NATS. See the crate README for the design, the supported servers and the trade-offs.
#![forbid(unsafe_code)]

mod frag;
mod log;
mod pubsub;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use courier_core::backend::{Kit, OutageLog};
use courier_core::{
    Error, ErrorKind, EventBus, MessageId, PubSub, Queue, QueueConfig, Result, SharedClock,
    SystemClock, redact_url,
};
use courier_replicated::Replicated;

pub use crate::log::NatsLog;

/// The backend's short name, used in errors.
pub const BACKEND_NAME: &str = "nats";

/// The default prefix: the JetStream stream's name and the first token of every subject.
pub const DEFAULT_PREFIX: &str = "courier";

pub(crate) const KIT: Kit = Kit::new(BACKEND_NAME);

/// The oldest server this backend runs on (message headers, ordered consumers from a start
/// sequence and JetStream publish acks are older; 2.9 is what it is tested against).
pub const MIN_SERVER: (u64, u64) = (2, 9);

/// Whether the server version `version` (`2.9.10`, `v2.10.0-beta`) is at least
/// [`MIN_SERVER`]; `None` when it cannot be read.
fn version_ok(version: &str) -> Option<bool> {
    let mut parts = version.trim_start_matches('v').split(['.', '-']);
    let major: u64 = parts.next()?.parse().ok()?;
    let minor: u64 = parts.next()?.parse().ok()?;
    Some((major, minor) >= MIN_SERVER)
}

/// Courier over NATS: a [`courier_core::Queue`], [`courier_core::PubSub`] and
/// [`courier_core::EventBus`]. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct NatsBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The URL with its credentials replaced, for Debug and logs.
    url: String,
    prefix: String,
    clock: SharedClock,
    client: async_nats::Client,
    /// Queues and topics: the reference model replicated through JetStream.
    store: Replicated<NatsLog>,
    registry: pubsub::Registry,
}

impl NatsBackend {
    /// Connect with a `nats://` or `tls://` URL (credentials or a token in the URL) and
    /// default settings.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a malformed URL, [`ErrorKind::Unavailable`] when NATS
    /// cannot be reached, [`ErrorKind::Unsupported`] when the server has no JetStream.
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::builder().url(url).build().await
    }

    /// A builder with typed settings.
    pub fn builder() -> NatsBackendBuilder {
        NatsBackendBuilder::default()
    }

    /// `"nats"`.
    pub fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    /// The clock used for `created_at`, delays and lease deadlines.
    pub fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    /// The stream name and first subject token of everything this backend stores.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The configuration used for queues and groups that were not configured.
    pub fn default_config(&self) -> QueueConfig {
        self.inner.store.default_config()
    }

    /// The connection URL with its credentials redacted.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The queues and topics (what `Queue` and `EventBus` forward to).
    fn store(&self) -> &Replicated<NatsLog> {
        &self.inner.store
    }

    /// Check that JetStream answers (the prefix's stream exists or can be created).
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] when it does not.
    pub async fn ping(&self) -> Result<()> {
        self.inner.store.log().stream("ping").await.map(drop)
    }

    /// Store `bytes` in `queue` as one entry that does not decode, under a fresh id, as a
    /// corrupt or foreign writer would: for tests of Q10, not for applications.
    ///
    /// # Errors
    /// As any call: invalid name, NATS unavailable.
    #[doc(hidden)]
    pub async fn inject_raw(&self, queue: &str, bytes: &[u8]) -> Result<MessageId> {
        self.inner.store.inject_raw(queue, bytes).await
    }

    /// Test support for the conformance case of Q7's partial store (see
    /// `Replicated::batch_fault_switch`), not for applications.
    #[doc(hidden)]
    pub fn batch_fault_switch(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.inner.store.batch_fault_switch()
    }

    /// Delete this prefix's stream (every queue and topic under the prefix, for every
    /// process): for tests and benchmarks that clean up after themselves, not for
    /// applications.
    ///
    /// # Errors
    /// `Unavailable` when NATS cannot be reached.
    #[doc(hidden)]
    pub async fn delete_stream(&self) -> Result<()> {
        self.inner.store.log().delete().await
    }
}

impl fmt::Debug for NatsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBackend")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// Typed settings for [`NatsBackend`].
#[derive(Debug, Clone)]
pub struct NatsBackendBuilder {
    url: String,
    prefix: String,
    default_config: QueueConfig,
    connection_timeout: Duration,
    clock: Option<SharedClock>,
}

impl Default for NatsBackendBuilder {
    fn default() -> Self {
        NatsBackendBuilder {
            url: "nats://127.0.0.1:4222".to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            default_config: QueueConfig::default(),
            connection_timeout: Duration::from_secs(5),
            clock: None,
        }
    }
}

impl NatsBackendBuilder {
    /// The server URL: `nats://user:pass@host:4222`, `nats://token@host:4222`, or `tls://…`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// The JetStream stream's name and every subject's first token (default `courier`): one
    /// token of `A–Z a–z 0–9 _ -`, so two applications with different prefixes share a server
    /// without seeing each other.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The configuration of queues and groups that are not configured.
    pub fn default_config(mut self, config: QueueConfig) -> Self {
        self.default_config = config;
        self
    }

    /// How long connecting and each JetStream request may take (default 5 s).
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
    /// [`ErrorKind::InvalidInput`] for a malformed URL, prefix or default configuration;
    /// [`ErrorKind::Unavailable`] when NATS cannot be reached within the connection timeout.
    pub async fn build(self) -> Result<NatsBackend> {
        let url = redact_url(&self.url);
        let tag = KIT.tag("connect");
        if !(self.url.starts_with("nats://") || self.url.starts_with("tls://")) {
            return Err(tag(Error::invalid(format!(
                "not a NATS URL (nats:// or tls://): {url}"
            ))));
        }
        KIT.check_name("prefix", &self.prefix, "connect")?;
        if self.prefix.contains('.') || self.prefix.len() > 32 {
            return Err(tag(Error::invalid(format!(
                "prefix {:?} must be one token of at most 32 bytes (it names a JetStream stream)",
                self.prefix
            ))));
        }
        self.default_config.validate().map_err(tag)?;
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let health = Arc::new(OutageLog::new(BACKEND_NAME, "nats", &url));
        let events = health.clone();
        let options = async_nats::ConnectOptions::new()
            .connection_timeout(self.connection_timeout)
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    match event {
                        async_nats::Event::Disconnected => events.down(&"disconnected"),
                        async_nats::Event::Connected => events.up(),
                        _ => {}
                    }
                }
            });
        let connect = options.connect(self.url.as_str());
        let client = match tokio::time::timeout(self.connection_timeout, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                // The client's error names the failure, not the URL's credentials.
                let kind = match e.kind() {
                    async_nats::ConnectErrorKind::ServerParse => ErrorKind::InvalidInput,
                    async_nats::ConnectErrorKind::Authentication
                    | async_nats::ConnectErrorKind::AuthorizationViolation => ErrorKind::Backend,
                    _ => ErrorKind::Unavailable,
                };
                return Err(tag(Error::new(
                    kind,
                    format!("cannot connect to NATS at {url}: {}", e.kind()),
                )));
            }
            Err(_) => {
                return Err(tag(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "NATS at {url} did not answer within {:?}",
                        self.connection_timeout
                    ),
                )));
            }
        };
        let info = client.server_info();
        if version_ok(&info.version) == Some(false) {
            return Err(tag(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "NATS server {} at {url} is too old: courier-nats needs {}.{} or later",
                    info.version, MIN_SERVER.0, MIN_SERVER.1
                ),
            )));
        }
        if !info.jetstream {
            return Err(tag(Error::new(
                ErrorKind::Unsupported,
                format!("NATS server at {url} has no JetStream (start it with -js)"),
            )));
        }
        let log = NatsLog::new(
            client.clone(),
            self.prefix.clone(),
            health,
            self.connection_timeout,
        );
        let store = Replicated::new(log, KIT, clock.clone(), self.default_config);
        Ok(NatsBackend {
            inner: Arc::new(Inner {
                url,
                prefix: self.prefix,
                clock,
                client,
                store,
                registry: pubsub::Registry::default(),
            }),
        })
    }
}

courier_replicated::forward_queue_and_event_bus!(NatsBackend, store);

// Compile-time proof that the backend serves every trait behind `Arc<dyn …>`.
fn _object_safe(b: NatsBackend) {
    let _: Arc<dyn Queue> = Arc::new(b.clone());
    let _: Arc<dyn PubSub> = Arc::new(b.clone());
    let _: Arc<dyn EventBus> = Arc::new(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_are_compared_by_major_and_minor() {
        assert_eq!(version_ok("2.9.10"), Some(true));
        assert_eq!(version_ok("v2.10.0-beta.1"), Some(true));
        assert_eq!(version_ok("2.8.4"), Some(false));
        assert_eq!(version_ok("1.12.0"), Some(false));
        assert_eq!(version_ok("nonsense"), None);
    }

    #[tokio::test]
    async fn bad_urls_and_prefixes_are_refused_before_connecting() {
        let e = NatsBackend::from_url("redis://h")
            .await
            .expect_err("scheme");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let e = NatsBackend::builder()
            .url("nats://user:secret@127.0.0.1:1")
            .prefix("a.b")
            .build()
            .await
            .expect_err("prefix with a dot");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_retryable_and_the_password_is_not_printed() {
        let e = NatsBackend::builder()
            .url("nats://user:secret@127.0.0.1:1")
            .connection_timeout(Duration::from_millis(500))
            .build()
            .await
            .expect_err("nothing listens on port 1");
        assert!(e.is_retryable(), "{e:?}");
        assert!(!format!("{e} {e:?}").contains("secret"), "{e:?}");
    }
}
