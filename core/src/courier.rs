//! [`Courier`]: the one handle a service holds (the seed system's queue manager).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::dispatcher::Dispatcher;
use crate::error::Result;
use crate::event_bus::{EventBus, Retention};
use crate::policy::QueueConfig;
use crate::pubsub::PubSub;
use crate::queue::Queue;
use crate::scheduler::Scheduler;
use crate::telemetry::instrument::{InstrumentedEvents, InstrumentedPubSub, InstrumentedQueue};

/// Configuration of a [`Courier`], from a file or the environment (see the facade crate).
///
/// ```toml
/// url = "sqlite://courier.db"
///
/// [queue_defaults]
/// visibility_timeout = 30000
/// retry = { max_attempts = 5, base = 1000, factor = 2.0, max_delay = 300000, jitter = 0.2 }
///
/// [queues.ai]
/// visibility_timeout = 120000
///
/// [routes]
/// speech_recognition = "ai"
/// ```
///
/// # Examples
///
/// Built in code (or loaded with `courier::load_config`), then applied with
/// `courier::connect_with`:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier::Result<()> {
/// use courier::{CourierConfig, QueueConfig};
/// use std::time::Duration;
///
/// let mut config = CourierConfig::default();
/// config.queues.insert("ai".into(), QueueConfig::default().with_visibility_timeout(Duration::from_secs(120)));
/// config.routes.insert("speech_recognition".into(), "ai".into());
/// let courier = courier::connect_with(&config).await?;
/// assert_eq!(courier.dispatcher().queue_for("speech_recognition").as_deref(), Some("ai"));
/// assert_eq!(courier.queue().queue_config("ai").visibility_timeout, Duration::from_secs(120));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CourierConfig {
    /// Backend URL (`memory://`, `sqlite://path`, `redis://host:port`, …).
    pub url: Option<String>,
    /// Configuration of every queue without its own entry.
    pub queue_defaults: Option<QueueConfig>,
    /// Per-queue configuration.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Kind → queue routes for the dispatcher.
    pub routes: BTreeMap<String, String>,
    /// Per-topic retention of the event bus.
    pub retention: BTreeMap<String, Retention>,
}

/// The handle a service holds: a backend's queue, pub/sub and event bus, plus the dispatcher
/// and scheduler built on them. Cheap to clone.
#[derive(Clone)]
pub struct Courier {
    queue: Arc<dyn Queue>,
    pubsub: Arc<dyn PubSub>,
    events: Arc<dyn EventBus>,
    dispatcher: Dispatcher,
    scheduler: Scheduler,
}

impl std::fmt::Debug for Courier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Courier")
            .field("backend", &self.queue.backend_name())
            .finish_non_exhaustive()
    }
}

impl Courier {
    /// Assemble from a backend's three handles.
    ///
    /// The handles the `Courier` gives out record metrics and spans for every call
    /// ([`crate::telemetry`]); pass the backend's own handles, not another `Courier`'s, or each
    /// call is counted twice.
    ///
    /// # Examples
    ///
    /// A backend's handle implements all three traits; `courier::connect` does this for you.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use std::sync::Arc;
    /// use courier::Courier;
    ///
    /// let backend = courier::memory::MemoryBackend::new();
    /// let courier = Courier::new(Arc::new(backend.clone()), Arc::new(backend.clone()), Arc::new(backend));
    /// assert_eq!(courier.backend_name(), "memory");
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(queue: Arc<dyn Queue>, pubsub: Arc<dyn PubSub>, events: Arc<dyn EventBus>) -> Self {
        // Every call through these handles is recorded once, here, whatever the backend
        // (crate::telemetry).
        let queue: Arc<dyn Queue> = Arc::new(InstrumentedQueue::new(queue));
        let pubsub: Arc<dyn PubSub> = Arc::new(InstrumentedPubSub::new(pubsub));
        let events: Arc<dyn EventBus> = Arc::new(InstrumentedEvents::new(events));
        let dispatcher = Dispatcher::new(queue.clone());
        let scheduler = Scheduler::new(dispatcher.clone(), queue.clock());
        Courier {
            queue,
            pubsub,
            events,
            dispatcher,
            scheduler,
        }
    }

    /// Apply queue configurations, routes and retention from `config`.
    ///
    /// # Errors
    /// The first invalid name or configuration.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// let courier = courier::connect("memory://").await?;
    /// let config = courier::parse_config(
    ///     r#"
    ///     [queues.ai]
    ///     retry = { max_attempts = 2 }
    ///     [routes]
    ///     speech_recognition = "ai"
    ///     "#,
    /// )?;
    /// courier.apply(&config)?;
    /// assert_eq!(courier.queue().queue_config("ai").retry.max_attempts, 2);
    /// assert_eq!(courier.dispatcher().routes(), [("speech_recognition".to_string(), "ai".to_string())]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn apply(&self, config: &CourierConfig) -> Result<()> {
        if let Some(d) = &config.queue_defaults {
            d.validate()?;
            for q in config.routes.values() {
                if !config.queues.contains_key(q) {
                    self.queue.configure(q, *d)?;
                }
            }
        }
        for (name, qc) in &config.queues {
            self.queue.configure(name, *qc)?;
        }
        for (kind, q) in &config.routes {
            self.dispatcher.route(kind, q)?;
        }
        for (topic, r) in &config.retention {
            self.events.set_retention(topic, *r)?;
        }
        Ok(())
    }

    /// The backend's short name.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// let courier = courier::connect("memory://").await?;
    /// assert_eq!(courier.backend_name(), "memory");
    /// # Ok(())
    /// # }
    /// ```
    pub fn backend_name(&self) -> &'static str {
        self.queue.backend_name()
    }

    /// The work queue.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.queue().publish("mail", Message::new("welcome", "ann@example.com")).await?;
    /// let d = courier.queue().receive_one("mail", Duration::from_secs(1)).await?.expect("a delivery");
    /// courier.queue().ack("mail", &d.lease).await?;
    /// assert_eq!(courier.queue().stats("mail").await?.acked, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
    }

    /// Pub/sub.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, SubscribeOptions};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let mut sub = courier.pubsub().subscribe("room.*", SubscribeOptions::default()).await?;
    /// courier.pubsub().publish("room.42", Message::new("joined", "ann")).await?;
    /// let m = sub.next_timeout(Duration::from_secs(1)).await.expect("a message");
    /// assert_eq!(&m.payload[..], b"ann");
    /// # Ok(())
    /// # }
    /// ```
    pub fn pubsub(&self) -> &Arc<dyn PubSub> {
        &self.pubsub
    }

    /// The event bus.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.events().emit("meeting.created", Message::new("meeting.created", "m1")).await?;
    /// assert_eq!(courier.events().topic_len("meeting.created").await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn events(&self) -> &Arc<dyn EventBus> {
        &self.events
    }

    /// The kind → queue dispatcher.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// let courier = courier::connect("memory://").await?;
    /// courier.dispatcher().route("transcode", "media")?;
    /// courier.dispatcher().dispatch_json("transcode", &"recording.mp4").await?;
    /// assert_eq!(courier.queue().stats("media").await?.ready_total(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// The scheduler.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.dispatcher().route("reminder", "mail")?;
    /// courier.scheduler().publish_after(Message::new("reminder", "standup"), Duration::from_secs(60)).await?;
    /// assert_eq!(courier.queue().stats("mail").await?.delayed, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// A worker builder for `queue_name`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.queue().publish("mail", Message::new("welcome", "ann")).await?;
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// let worker = courier
    ///     .worker("mail")
    ///     .handler("welcome", move |m: Message| {
    ///         let tx = tx.clone();
    ///         async move {
    ///             let _ = tx.send(m.payload);
    ///             Ok(())
    ///         }
    ///     })
    ///     .start()?;
    /// let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    /// assert_eq!(got.ok().flatten().as_deref(), Some(&b"ann"[..]));
    /// worker.stop(Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn worker(&self, queue_name: &str) -> crate::WorkerBuilder {
        crate::Worker::builder(self.queue.clone(), queue_name)
    }

    /// A consumer-group builder on the event bus.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.events().emit("meeting.created", Message::new("meeting.created", "m1")).await?;
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// let consumer = courier
    ///     .group_consumer("media")
    ///     .on("meeting.created", move |m: Message| {
    ///         let tx = tx.clone();
    ///         async move {
    ///             let _ = tx.send(m.payload);
    ///             Ok(())
    ///         }
    ///     })
    ///     .start()
    ///     .await?;
    /// // A new group starts at the beginning of the retained log (E2): it sees m1.
    /// let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    /// assert_eq!(got.ok().flatten().as_deref(), Some(&b"m1"[..]));
    /// consumer.stop(Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn group_consumer(&self, group: &str) -> crate::GroupConsumer {
        crate::GroupConsumer::builder(self.events.clone(), group)
    }

    /// A subscriber builder on pub/sub.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// let sub = courier
    ///     .subscriber("room.>")
    ///     .handler(move |m: Message| {
    ///         let tx = tx.clone();
    ///         async move {
    ///             let _ = tx.send(m.kind);
    ///             Ok(())
    ///         }
    ///     })
    ///     .start()
    ///     .await?;
    /// courier.pubsub().publish("room.42.chat", Message::new("chat", "hi")).await?;
    /// let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    /// assert_eq!(got.ok().flatten().as_deref(), Some("chat"));
    /// sub.stop().await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscriber(&self, pattern: &str) -> crate::Subscriber {
        crate::Subscriber::builder(self.pubsub.clone(), pattern)
    }
}
