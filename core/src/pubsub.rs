//! Ephemeral broadcast (DESIGN §5): the backend trait, and the bounded subscription buffer
//! every backend delivers into (P7 is implemented once, here).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::Result;
use crate::message::Message;
use crate::names::Pattern;
use crate::telemetry::handles::PubSubHandles;

/// Options for [`PubSub::subscribe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Messages buffered before the oldest is dropped (P7). Default 1024.
    pub buffer: usize,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions { buffer: 1024 }
    }
}

/// A broadcast backend.
#[async_trait]
pub trait PubSub: Send + Sync + 'static {
    /// The backend's short name.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// let courier = courier::connect("memory://").await?;
    /// assert_eq!(courier.pubsub().backend_name(), "memory");
    /// # Ok(())
    /// # }
    /// ```
    fn backend_name(&self) -> &'static str;

    /// Send `message` to every active subscription matching `channel` (P1). With no
    /// subscriber the message is dropped (P2). Returns how many local subscriptions received it
    /// where the backend can tell, else 0.
    ///
    /// The message is checked against the backend's default [`crate::QueueConfig`] first, as
    /// a queue publish and an emit are: one `max_payload` for every abstraction.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::PayloadTooLarge`] for a payload over the `max_payload` of the
    ///   backend's default configuration. Nothing is sent.
    /// - [`crate::ErrorKind::InvalidInput`] for an invalid channel name (patterns are not
    ///   channels), a `max_attempts` override of 0, or, where messages travel as bytes (SQLite
    ///   files, Redis), a message the wire format cannot carry. Nothing is sent.
    /// - Redis: [`crate::ErrorKind::Unavailable`] (retryable) or [`crate::ErrorKind::Backend`]
    ///   when `PUBLISH` fails. SQLite delivers to this process's subscriptions at once and
    ///   writes the copy for other processes in the background: a failure there is logged, not
    ///   returned. Memory fails only on invalid input.
    ///
    /// No subscriber is not an error (P2): the message is dropped and the count is 0.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have published the message. Nothing is left to clean
    /// up: pub/sub is at most once.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, SubscribeOptions};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let ps = courier.pubsub();
    /// // Nobody listening: dropped, not an error (P2).
    /// assert_eq!(ps.publish("room.1", Message::new("chat", "hi")).await?, 0);
    /// let _sub = ps.subscribe("room.*", SubscribeOptions::default()).await?;
    /// assert_eq!(ps.publish("room.1", Message::new("chat", "hi")).await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    async fn publish(&self, channel: &str, message: Message) -> Result<usize>;

    /// Subscribe to a channel or pattern (`*` one token, `>` the rest). Returns once the
    /// subscription is active: messages published after this returns are delivered.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::InvalidInput`] for a malformed pattern (see [`Pattern::parse`]).
    /// - Redis: [`crate::ErrorKind::Unavailable`] or [`crate::ErrorKind::Backend`] when Redis
    ///   does not confirm the subscription, [`crate::ErrorKind::Shutdown`] when the backend's
    ///   pub/sub task has stopped. SQLite (file database): a backend failure while reading
    ///   where other processes' messages start. Memory fails only on invalid input.
    ///
    /// # Cancel safety
    /// Dropping the future before it returns leaves no subscription: a registration already
    /// made is undone (on Redis, the channel is unsubscribed when no other subscription of the
    /// handle needs it).
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
    /// let ps = courier.pubsub();
    /// let mut one = ps.subscribe("room.*.signal", SubscribeOptions::default()).await?;
    /// let mut rest = ps.subscribe("room.42.>", SubscribeOptions::default()).await?;
    /// ps.publish("room.42.signal", Message::new("offer", "a")).await?;
    /// ps.publish("room.42.ice.candidate", Message::new("ice", "b")).await?;
    /// // `*` is one token, `>` the rest (P4).
    /// assert_eq!(one.next_timeout(Duration::from_secs(1)).await.map(|m| m.kind).as_deref(), Some("offer"));
    /// assert!(one.try_next().is_none());
    /// assert_eq!(rest.next_timeout(Duration::from_secs(1)).await.map(|m| m.kind).as_deref(), Some("offer"));
    /// assert_eq!(rest.next_timeout(Duration::from_secs(1)).await.map(|m| m.kind).as_deref(), Some("ice"));
    /// assert!(ps.subscribe("room.>.x", SubscribeOptions::default()).await.is_err(), "`>` only last");
    /// # Ok(())
    /// # }
    /// ```
    async fn subscribe(&self, pattern: &str, options: SubscribeOptions) -> Result<Subscription>;
}

const _: Option<&dyn PubSub> = None;

/// The receiving end a backend pushes into: bounded, drop-oldest, counted.
#[derive(Debug)]
pub struct SubscriptionBuffer {
    pattern: Pattern,
    capacity: usize,
    items: Mutex<VecDeque<Message>>,
    notify: Notify,
    dropped: AtomicU64,
    delivered: AtomicU64,
    closed: AtomicBool,
}

impl SubscriptionBuffer {
    /// A buffer for `pattern` holding at most `capacity` messages (at least 1).
    pub fn new(pattern: Pattern, capacity: usize) -> Arc<Self> {
        Arc::new(SubscriptionBuffer {
            pattern,
            capacity: capacity.max(1),
            items: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            dropped: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// The pattern this buffer was subscribed with.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// Push a message when the pattern matches `channel`. Drops the oldest when full.
    /// Returns whether the message was accepted (matched and the buffer is open).
    pub fn offer(&self, channel: &str, message: &Message) -> bool {
        if self.is_closed() || !self.pattern.matches(channel) {
            return false;
        }
        self.push(message.clone());
        true
    }

    /// Push a message (the caller has matched it). Drops the oldest when full.
    pub fn push(&self, message: Message) {
        {
            let mut items = self.items.lock();
            if items.len() >= self.capacity {
                items.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            items.push_back(message);
        }
        self.notify.notify_one();
    }

    /// Close: the subscription's `next` returns `None` once drained.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Whether closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Messages dropped because the subscriber was too slow.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn try_pop(&self) -> Option<Message> {
        let m = self.items.lock().pop_front();
        if m.is_some() {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
        m
    }
}

/// An active subscription. Dropping it (or [`Subscription::unsubscribe`]) stops delivery.
pub struct Subscription {
    buffer: Arc<SubscriptionBuffer>,
    _guard: Box<dyn Send + Sync>,
    metrics: Option<SubscriptionMetrics>,
}

/// What a subscription records (received per kind, drops), set by the instrumented pub/sub.
struct SubscriptionMetrics {
    handles: Arc<PubSubHandles>,
    dropped_seen: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.buffer.pattern.as_str())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl Subscription {
    /// Wrap a buffer; `guard` is dropped with the subscription (the backend's unsubscribe).
    ///
    /// # Examples
    ///
    /// For backend authors: a backend hands out its buffer wrapped in a `Subscription`, with a guard
    /// whose drop unsubscribes.
    ///
    /// ```
    /// use courier::backend::SubscriptionBuffer;
    /// use courier::{Message, Pattern, Subscription};
    ///
    /// let buffer = SubscriptionBuffer::new(Pattern::parse("room.*")?, 8);
    /// let mut sub = Subscription::new(buffer.clone(), ());
    /// assert!(buffer.offer("room.1", &Message::new("chat", "hi")));
    /// assert!(!buffer.offer("lobby", &Message::new("chat", "hi")), "does not match");
    /// assert_eq!(sub.try_next().map(|m| m.kind).as_deref(), Some("chat"));
    /// # Ok::<(), courier::Error>(())
    /// ```
    pub fn new(buffer: Arc<SubscriptionBuffer>, guard: impl Send + Sync + 'static) -> Self {
        Subscription {
            buffer,
            _guard: Box::new(guard),
            metrics: None,
        }
    }

    /// Record what this subscription receives and drops.
    pub(crate) fn with_metrics(mut self, handles: Arc<PubSubHandles>) -> Self {
        let dropped_seen = self.buffer.dropped();
        self.metrics = Some(SubscriptionMetrics {
            handles,
            dropped_seen,
        });
        self
    }

    fn record(buffer: &SubscriptionBuffer, metrics: &mut Option<SubscriptionMetrics>, m: &Message) {
        if let Some(metrics) = metrics {
            metrics.handles.received(&m.kind).increment(1);
            let dropped = buffer.dropped();
            if dropped > metrics.dropped_seen {
                metrics
                    .handles
                    .dropped
                    .increment(dropped - metrics.dropped_seen);
                metrics.dropped_seen = dropped;
            }
        }
    }

    /// The next message; `None` once the subscription is closed and drained.
    ///
    /// # Errors
    /// None: it returns an `Option`. Lost messages are not reported here: an overflow of the
    /// buffer is counted in [`Subscription::dropped`] (P7), and messages published while a
    /// connection was down are simply not delivered (P2, P6).
    ///
    /// # Cancel safety
    /// Cancel safe: a message is only taken from the buffer when it is returned.
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
    /// let mut sub = courier.pubsub().subscribe("chat", SubscribeOptions::default()).await?;
    /// courier.pubsub().publish("chat", Message::new("say", "hello")).await?;
    /// // Bound the wait yourself (or use `next_timeout`).
    /// let m = tokio::time::timeout(Duration::from_secs(1), sub.next()).await.ok().flatten();
    /// assert_eq!(m.map(|m| m.payload).as_deref(), Some(&b"hello"[..]));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            let notified = self.buffer.notify.notified();
            if let Some(m) = self.buffer.try_pop() {
                Self::record(&self.buffer, &mut self.metrics, &m);
                return Some(m);
            }
            if self.buffer.is_closed() {
                return None;
            }
            notified.await;
        }
    }

    /// The next message, waiting at most `wait`.
    ///
    /// # Errors
    /// None: `None` on timeout, or once the subscription is closed and drained.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Subscription::next`]: no message is taken unless it is returned.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::SubscribeOptions;
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let mut sub = courier.pubsub().subscribe("chat", SubscribeOptions::default()).await?;
    /// assert!(sub.next_timeout(Duration::from_millis(10)).await.is_none(), "nothing published");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn next_timeout(&mut self, wait: Duration) -> Option<Message> {
        tokio::time::timeout(wait, self.next()).await.ok().flatten()
    }

    /// A buffered message, without waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, SubscribeOptions};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let mut sub = courier.pubsub().subscribe("chat", SubscribeOptions::default()).await?;
    /// assert!(sub.try_next().is_none());
    /// courier.pubsub().publish("chat", Message::new("say", "hi")).await?;
    /// assert!(sub.try_next().is_some(), "memory delivers during publish");
    /// # Ok(())
    /// # }
    /// ```
    pub fn try_next(&mut self) -> Option<Message> {
        let m = self.buffer.try_pop()?;
        Self::record(&self.buffer, &mut self.metrics, &m);
        Some(m)
    }

    /// Messages dropped because this subscriber was too slow (P7).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, SubscribeOptions};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let mut sub = courier.pubsub().subscribe("ticks", SubscribeOptions { buffer: 2 }).await?;
    /// for i in 0..5 {
    ///     courier.pubsub().publish("ticks", Message::new("tick", format!("{i}"))).await?;
    /// }
    /// // A slow subscriber loses the oldest messages, and is told how many (P7).
    /// assert_eq!(sub.dropped(), 3);
    /// assert_eq!(sub.try_next().map(|m| m.payload).as_deref(), Some(&b"3"[..]));
    /// # Ok(())
    /// # }
    /// ```
    pub fn dropped(&self) -> u64 {
        self.buffer.dropped()
    }

    /// The pattern.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::SubscribeOptions;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let sub = courier.pubsub().subscribe("room.*", SubscribeOptions::default()).await?;
    /// assert_eq!(sub.pattern(), "room.*");
    /// # Ok(())
    /// # }
    /// ```
    pub fn pattern(&self) -> &str {
        self.buffer.pattern.as_str()
    }

    /// Stop delivery now.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, SubscribeOptions};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let sub = courier.pubsub().subscribe("chat", SubscribeOptions::default()).await?;
    /// sub.unsubscribe();
    /// assert_eq!(courier.pubsub().publish("chat", Message::new("say", "hi")).await?, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn unsubscribe(self) {
        self.buffer.close();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.buffer.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drops_oldest_when_full() {
        let buf = SubscriptionBuffer::new(Pattern::parse("a.*").expect("p"), 2);
        let mut sub = Subscription::new(buf.clone(), ());
        for i in 0..5 {
            assert!(buf.offer("a.b", &Message::new(format!("m{i}"), "")));
        }
        assert!(!buf.offer("x.b", &Message::new("no", "")));
        assert_eq!(sub.dropped(), 3);
        assert_eq!(sub.try_next().map(|m| m.kind), Some("m3".into()));
        assert_eq!(sub.try_next().map(|m| m.kind), Some("m4".into()));
        assert!(sub.try_next().is_none());
        buf.close();
        assert!(
            tokio::time::timeout(Duration::from_secs(1), sub.next())
                .await
                .expect("bounded")
                .is_none()
        );
    }
}
