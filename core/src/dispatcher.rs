//! Kind → queue routing (DESIGN §4): a publisher need not know which service handles a kind.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::message::{Message, MessageId, Priority};
use crate::names::validate_name;
use crate::queue::{Published, Queue, QueueExt};

#[derive(Clone, Debug)]
struct Route {
    queue: String,
    priority: Option<Priority>,
}

/// Routes messages to the queue that owns their kind.
#[derive(Clone)]
pub struct Dispatcher {
    queue: Arc<dyn Queue>,
    routes: Arc<RwLock<HashMap<String, Route>>>,
    default_queue: Arc<RwLock<Option<String>>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("routes", &self.routes.read().len())
            .finish()
    }
}

impl Dispatcher {
    /// A dispatcher publishing through `queue`.
    ///
    /// # Examples
    ///
    /// A [`crate::Courier`] has one ([`crate::Courier::dispatcher`]); build your own to route over
    /// another queue handle.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Dispatcher;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let dispatcher = Dispatcher::new(courier.queue().clone());
    /// dispatcher.route("invoice", "billing")?;
    /// dispatcher.dispatch_json("invoice", &42).await?;
    /// assert_eq!(courier.queue().stats("billing").await?.published, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(queue: Arc<dyn Queue>) -> Self {
        Dispatcher {
            queue,
            routes: Arc::default(),
            default_queue: Arc::default(),
        }
    }

    /// Route `kind` to `queue_name`.
    ///
    /// # Errors
    /// Invalid queue name.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// let courier = courier::connect("memory://").await?;
    /// let d = courier.dispatcher();
    /// d.route("speech_recognition", "ai")?;
    /// assert_eq!(d.queue_for("speech_recognition").as_deref(), Some("ai"));
    /// // Queue names are checked when the route is made.
    /// assert!(d.route("x", "not a queue name").is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn route(&self, kind: &str, queue_name: &str) -> Result<()> {
        self.route_with_priority(kind, queue_name, None)
    }

    /// Route `kind` to `queue_name`, giving messages that kept the default priority `priority`.
    ///
    /// # Errors
    /// Invalid queue name.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, Priority};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let d = courier.dispatcher();
    /// d.route_with_priority("page_oncall", "alerts", Some(Priority::Critical))?;
    /// d.dispatch(Message::new("page_oncall", "disk full")).await?;
    /// // A message that chose its own priority keeps it.
    /// d.dispatch(Message::new("page_oncall", "fyi").with_priority(Priority::Low)).await?;
    /// let s = courier.queue().stats("alerts").await?;
    /// assert_eq!((s.ready_at(Priority::Critical), s.ready_at(Priority::Low)), (1, 1));
    /// # Ok(())
    /// # }
    /// ```
    pub fn route_with_priority(
        &self,
        kind: &str,
        queue_name: &str,
        priority: Option<Priority>,
    ) -> Result<()> {
        validate_name("queue", queue_name)?;
        self.routes.write().insert(
            kind.to_string(),
            Route {
                queue: queue_name.to_string(),
                priority,
            },
        );
        Ok(())
    }

    /// Where kinds without a route go (none by default: they are rejected).
    ///
    /// # Errors
    /// Invalid queue name.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{ErrorKind, Message};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let d = courier.dispatcher();
    /// // Without a route or a default queue, a kind is refused and nothing is sent.
    /// let e = d.dispatch(Message::new("unknown", "")).await.unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::InvalidInput);
    /// d.set_default_queue("misc")?;
    /// d.dispatch(Message::new("unknown", "")).await?;
    /// assert_eq!(courier.queue().stats("misc").await?.published, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_default_queue(&self, queue_name: &str) -> Result<()> {
        validate_name("queue", queue_name)?;
        *self.default_queue.write() = Some(queue_name.to_string());
        Ok(())
    }

    /// The queue that owns `kind`, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// let courier = courier::connect("memory://").await?;
    /// let d = courier.dispatcher();
    /// d.route("transcode", "media")?;
    /// assert_eq!(d.queue_for("transcode").as_deref(), Some("media"));
    /// assert_eq!(d.queue_for("other"), None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn queue_for(&self, kind: &str) -> Option<String> {
        self.routes
            .read()
            .get(kind)
            .map(|r| r.queue.clone())
            .or_else(|| self.default_queue.read().clone())
    }

    /// All routes as (kind, queue).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// let courier = courier::connect("memory://").await?;
    /// let d = courier.dispatcher();
    /// d.route("transcode", "media")?;
    /// d.route("caption", "ai")?;
    /// // Sorted by kind.
    /// assert_eq!(
    ///     d.routes(),
    ///     [("caption".to_string(), "ai".to_string()), ("transcode".to_string(), "media".to_string())]
    /// );
    /// # Ok(())
    /// # }
    /// ```
    pub fn routes(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .routes
            .read()
            .iter()
            .map(|(k, r)| (k.clone(), r.queue.clone()))
            .collect();
        v.sort();
        v
    }

    fn resolve(&self, msg: &mut Message) -> Result<String> {
        let routes = self.routes.read();
        match routes.get(msg.kind.as_str()) {
            Some(r) => {
                if let Some(p) = r.priority
                    && msg.priority == Priority::Normal
                {
                    msg.priority = p;
                }
                Ok(r.queue.clone())
            }
            None => self.default_queue.read().clone().ok_or_else(|| {
                Error::invalid(format!(
                    "no route for kind {:?}: register it with Dispatcher::route",
                    msg.kind
                ))
            }),
        }
    }

    /// Publish to the queue that owns the message's kind.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::InvalidInput`] when the kind has no route and there is no default
    ///   queue; nothing is sent.
    /// - Otherwise the queue's publish errors (see [`crate::Queue::publish_batch`]):
    ///   [`crate::ErrorKind::InvalidInput`], [`crate::ErrorKind::PayloadTooLarge`] or a backend
    ///   failure.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have published the message.
    ///
    /// A message whose deduplication key is taken stores nothing and this returns the id of the
    /// message that holds the key; [`Dispatcher::dispatch_unique`] tells the two apart (Q11).
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
    /// courier.dispatcher().route("transcode", "media")?;
    /// let id = courier.dispatcher().dispatch(Message::new("transcode", "recording.mp4")).await?;
    /// let d = courier.queue().receive_one("media", Duration::from_secs(1)).await?.expect("a delivery");
    /// assert_eq!(d.message.id, id);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn dispatch(&self, msg: Message) -> Result<MessageId> {
        Ok(self.dispatch_unique(msg).await?.id())
    }

    /// As [`Dispatcher::dispatch`], saying whether the message was stored or was a duplicate
    /// of the message holding its deduplication key (Q11).
    ///
    /// # Errors
    /// As [`Dispatcher::dispatch`].
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have published the message.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, Published};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let d = courier.dispatcher();
    /// d.route("charge", "billing")?;
    /// let first = d.dispatch_unique(Message::new("charge", "o-17").with_dedup_key("charge:o-17")).await?;
    /// let again = d.dispatch_unique(Message::new("charge", "o-17").with_dedup_key("charge:o-17")).await?;
    /// assert!(matches!(first, Published::Stored(_)));
    /// assert_eq!(again, Published::Duplicate(first.id()));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn dispatch_unique(&self, mut msg: Message) -> Result<Published> {
        let q = self.resolve(&mut msg)?;
        // The routing decision as a span: its child `courier.publish` carries the trace on.
        let span = tracing::info_span!(
            "courier.dispatch",
            kind = msg.kind.as_str(),
            queue = q.as_str()
        );
        self.queue.publish_unique(&q, msg).instrument(span).await
    }

    /// Publish `value` as JSON under `kind` to the queue that owns it.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] when `value` cannot be encoded as JSON (nothing is
    /// sent); otherwise as [`Dispatcher::dispatch`].
    ///
    /// # Cancel safety
    /// As [`Dispatcher::dispatch`]: dropping the future may or may not have published.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::QueueExt;
    /// use std::time::Duration;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    /// struct Transcode { file: String, height: u32 }
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.dispatcher().route("transcode", "media")?;
    /// let job = Transcode { file: "a.mp4".into(), height: 720 };
    /// courier.dispatcher().dispatch_json("transcode", &job).await?;
    /// let d = courier.queue().receive_one("media", Duration::from_secs(1)).await?.expect("a delivery");
    /// assert_eq!(d.message.decode::<Transcode>()?, job);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn dispatch_json<T: serde::Serialize + ?Sized>(
        &self,
        kind: &str,
        value: &T,
    ) -> Result<MessageId> {
        self.dispatch(Message::json(kind, value)?).await
    }

    /// Publish many, grouped by queue (one batch per queue, order kept within a queue).
    ///
    /// # Errors
    /// - [`crate::ErrorKind::InvalidInput`] when a kind has no route (and there is no default
    ///   queue). Every message is routed before anything is sent, so nothing is published.
    /// - Otherwise the first failing queue's publish error (see [`crate::Queue::publish_batch`]).
    ///   The batches of the queues before it stay published (queues go in the order of their
    ///   first message), and [`Error::stored`] counts only the failing queue's batch.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have published: the batches of some queues may be
    /// published and the others not.
    ///
    /// The outcomes (stored or duplicate, Q11) come queue by queue, in the order above, and in
    /// batch order within a queue.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let d = courier.dispatcher();
    /// d.route("transcode", "media")?;
    /// d.route("caption", "ai")?;
    /// let out = d
    ///     .dispatch_batch(vec![
    ///         Message::new("transcode", "a.mp4"),
    ///         Message::new("caption", "a.mp4"),
    ///         Message::new("transcode", "b.mp4"),
    ///     ])
    ///     .await?;
    /// assert_eq!(out.len(), 3);
    /// assert_eq!(courier.queue().stats("media").await?.published, 2);
    /// assert_eq!(courier.queue().stats("ai").await?.published, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn dispatch_batch(&self, msgs: Vec<Message>) -> Result<Vec<Published>> {
        let mut groups: Vec<(String, Vec<Message>)> = Vec::new();
        for mut m in msgs {
            let q = self.resolve(&mut m)?;
            match groups.iter_mut().find(|(name, _)| *name == q) {
                Some((_, v)) => v.push(m),
                None => groups.push((q, vec![m])),
            }
        }
        let mut ids = Vec::new();
        for (q, batch) in groups {
            let span =
                tracing::info_span!("courier.dispatch", queue = q.as_str(), count = batch.len());
            ids.extend(self.queue.publish_batch(&q, batch).instrument(span).await?);
        }
        Ok(ids)
    }
}
