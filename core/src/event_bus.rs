//! Durable events with consumer groups (DESIGN §6).
//!
//! A topic is an append-only log. Every consumer group reads every event of the topics it
//! reads; inside a group, each event is leased to one consumer and settled with the same
//! primitives, policy and dead-letter rules as a [`crate::Queue`] (E3).

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;
use crate::error::Result;
use crate::message::{Message, MessageId};
use crate::policy::QueueConfig;
use crate::queue::{DeadLetter, Delivery, Lease, Page, QueueStats, Selection, Settle};

/// Where a group (re)starts reading (E5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayFrom {
    /// The oldest retained event.
    Start,
    /// The first event emitted at or after this instant (ms since the epoch).
    Time(u64),
    /// This event and everything after it.
    Id(MessageId),
    /// Only events emitted from now on.
    End,
}

/// How much of a topic's log is kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Keep at most this many events (oldest trimmed first).
    pub max_len: Option<u64>,
    /// Keep events at most this old.
    #[serde(default, with = "opt_duration_ms")]
    pub max_age: Option<Duration>,
}

/// A group's view of a topic: the queue-like states plus how far behind it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStats {
    /// Ready / delayed / in flight / dead and counters, as for a queue (`ready[2]` holds
    /// ready events: events have no priority order).
    pub queue: QueueStats,
    /// Events in the log the group has not read yet.
    pub lag: u64,
}

/// A durable event log backend with consumer groups.
///
/// # Errors
/// Every async method can fail with [`crate::ErrorKind::InvalidInput`] for an invalid topic
/// or group name (checked before anything is sent), or with a backend failure:
/// [`crate::ErrorKind::Unavailable`] (retryable), [`crate::ErrorKind::Backend`] or
/// [`crate::ErrorKind::Shutdown`], as described on [`crate::Queue`]. The memory backend has no
/// backend failures. Each method lists what it adds.
///
/// # Cancel safety
/// As for [`crate::Queue`]: a receive never loses an event; an emit, settle, extend, reset,
/// requeue or purge may or may not have been applied. Each method gives the details.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// The backend's short name.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// let courier = courier::connect("memory://").await?;
    /// assert_eq!(courier.events().backend_name(), "memory");
    /// # Ok(())
    /// # }
    /// ```
    fn backend_name(&self) -> &'static str;

    /// The clock the backend uses.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message, ReplayFrom};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let bus = courier.events();
    /// bus.emit("audit", Message::new("login", "ann")).await?;
    /// // Replay from an instant on the backend's clock (E5).
    /// let now = bus.clock().now_ms();
    /// bus.reset_group("audit", "siem", ReplayFrom::Time(now + 1)).await?;
    /// assert_eq!(bus.group_stats("audit", "siem").await?.lag, 0);
    /// # Ok(())
    /// # }
    /// ```
    fn clock(&self) -> SharedClock;

    /// Set the failure rules (lease, retry, dead letters) of one group on one topic.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for an invalid topic or group name or an invalid
    /// configuration ([`QueueConfig::validate`]); nothing is changed.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{QueueConfig, RetryPolicy};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let bus = courier.events();
    /// // The group's leases, retries and dead letters work as a queue's (E3).
    /// bus.configure_group("meeting.created", "ai", QueueConfig::default().with_retry(RetryPolicy::default().with_max_attempts(2)))?;
    /// assert_eq!(bus.group_config("meeting.created", "ai").retry.max_attempts, 2);
    /// # Ok(())
    /// # }
    /// ```
    fn configure_group(&self, topic: &str, group: &str, config: QueueConfig) -> Result<()>;

    /// The failure rules in force for a group.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::QueueConfig;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// assert_eq!(courier.events().group_config("meeting.created", "ai"), QueueConfig::default());
    /// # Ok(())
    /// # }
    /// ```
    fn group_config(&self, topic: &str, group: &str) -> QueueConfig;

    /// Set a topic's retention.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for an invalid topic name. Where the setting is
    /// stored by the backend (SQLite), it is written in the background: a failure there is
    /// logged, not returned.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message, Retention};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let bus = courier.events();
    /// bus.set_retention("metrics", Retention { max_len: Some(2), max_age: None })?;
    /// for i in 0..5 {
    ///     bus.emit("metrics", Message::new("sample", format!("{i}"))).await?;
    /// }
    /// // The oldest are trimmed.
    /// assert!(bus.topic_len("metrics").await? <= 2);
    /// # Ok(())
    /// # }
    /// ```
    fn set_retention(&self, topic: &str, retention: Retention) -> Result<()>;

    /// Append events to a topic's log, in order (E1). Ids are assigned where nil.
    ///
    /// # Errors
    /// As [`crate::Queue::publish_batch`]:
    /// - [`crate::ErrorKind::InvalidInput`] (an invalid topic name, a `max_attempts` override
    ///   of 0, an event the wire format cannot carry) or [`crate::ErrorKind::PayloadTooLarge`]
    ///   (over the `max_payload` of the backend's default configuration): the whole batch is
    ///   rejected before anything is appended;
    /// - a backend failure part-way: [`crate::Error::stored`] tells how many leading events
    ///   were appended (SQLite: one transaction, so none; Redis: script calls of up to 1,000
    ///   events, and when the connection is lost during a call, that call's events may have
    ///   been appended too).
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have appended the events: all or nothing on memory
    /// and SQLite, possibly a leading part of a batch over 1,000 events on Redis.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let ids = courier
    ///     .events()
    ///     .emit_batch("meeting.created", vec![Message::new("meeting.created", "m1"), Message::new("meeting.created", "m2")])
    ///     .await?;
    /// assert_eq!(ids.len(), 2);
    /// assert_eq!(courier.events().topic_len("meeting.created").await?, 2);
    /// # Ok(())
    /// # }
    /// ```
    async fn emit_batch(&self, topic: &str, events: Vec<Message>) -> Result<Vec<MessageId>>;

    /// Lease up to `max` events for `group` (creating the group at the start of the retained
    /// log on first use, see [`EventBus::create_group`]), waiting up to `wait`.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::InvalidInput`]: an invalid topic or group name, or `max` is 0.
    /// - A backend failure (see [`EventBus`]).
    ///
    /// A timeout is not an error (the vector is empty). Neither is a stored event that cannot
    /// be decoded: it goes to the group's dead letters.
    ///
    /// # Cancel safety
    /// As [`crate::Queue::receive`]: dropping the future never loses an event. On the current
    /// backends, what a dropped receive had leased is given back at once, without counting the
    /// attempt.
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
    /// let bus = courier.events();
    /// bus.emit("meeting.created", Message::new("meeting.created", "m1")).await?;
    /// // Each group gets every event (E2).
    /// for group in ["media", "ai"] {
    ///     let ds = bus.receive("meeting.created", group, 10, Duration::from_secs(1)).await?;
    ///     assert_eq!(ds.len(), 1);
    ///     bus.ack("meeting.created", group, &ds[0].lease).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    async fn receive(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>>;

    /// Settle a group's deliveries (see [`crate::Queue::settle`]).
    ///
    /// # Errors
    /// As [`crate::Queue::settle`]: the outer error is [`crate::ErrorKind::InvalidInput`] for
    /// an invalid name, or a backend failure; each inner result is
    /// [`crate::ErrorKind::LeaseLost`] when that lease is no longer held (settled, expired,
    /// handed to another consumer, or dropped by [`EventBus::reset_group`]), and then that
    /// operation changed nothing.
    ///
    /// # Cancel safety
    /// As [`crate::Queue::settle`]: dropping the future may or may not have applied the
    /// operations; settling again is safe.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message, Settle};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let bus = courier.events();
    /// bus.emit("meeting.created", Message::new("meeting.created", "m1")).await?;
    /// let ds = bus.receive("meeting.created", "ai", 10, Duration::from_secs(1)).await?;
    /// let ops = ds.iter().map(|d| Settle::Ack(d.lease)).collect();
    /// let results = bus.settle("meeting.created", "ai", ops).await?;
    /// assert!(results.iter().all(|r| r.is_ok()));
    /// # Ok(())
    /// # }
    /// ```
    async fn settle(&self, topic: &str, group: &str, ops: Vec<Settle>) -> Result<Vec<Result<()>>>;

    /// Extend a lease (see [`crate::Queue::extend`]).
    ///
    /// # Errors
    /// [`crate::ErrorKind::LeaseLost`] when the lease is no longer held (nothing changed);
    /// [`crate::ErrorKind::InvalidInput`] for an invalid name; a backend failure.
    ///
    /// # Cancel safety
    /// As [`crate::Queue::extend`]: the deadline may or may not have moved; the lease held
    /// (same token) still settles the event while it lasts.
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
    /// let bus = courier.events();
    /// bus.emit("recording.ready", Message::new("recording.ready", "r1")).await?;
    /// let ds = bus.receive("recording.ready", "transcriber", 1, Duration::from_secs(1)).await?;
    /// let lease = bus.extend("recording.ready", "transcriber", &ds[0].lease, Duration::from_secs(600)).await?;
    /// bus.ack("recording.ready", "transcriber", &lease).await?;
    /// # Ok(())
    /// # }
    /// ```
    async fn extend(
        &self,
        topic: &str,
        group: &str,
        lease: &Lease,
        visibility: Duration,
    ) -> Result<Lease>;

    /// Reset where a group reads from (E5). Pending, delayed and leased events of the group are
    /// dropped; its dead letters are kept.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::NotFound`] for [`ReplayFrom::Id`] when that event is not retained
    ///   in the topic; nothing changed.
    /// - [`crate::ErrorKind::InvalidInput`] for an invalid name, or a backend failure.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have reset the group; a reset is applied whole or
    /// not at all.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message, ReplayFrom};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let bus = courier.events();
    /// let first = bus.emit("orders", Message::new("order", "o1")).await?;
    /// bus.emit("orders", Message::new("order", "o2")).await?;
    /// for d in bus.receive("orders", "search", 10, Duration::from_secs(1)).await? {
    ///     bus.ack("orders", "search", &d.lease).await?;
    /// }
    /// // The search index was lost: read everything again from the first event (E5).
    /// bus.reset_group("orders", "search", ReplayFrom::Id(first)).await?;
    /// assert_eq!(bus.group_stats("orders", "search").await?.lag, 2);
    /// # Ok(())
    /// # }
    /// ```
    async fn reset_group(&self, topic: &str, group: &str, from: ReplayFrom) -> Result<()>;

    /// Create `group` on `topic` reading from `from`, unless the group exists (E2, E5).
    /// Returns whether this call created it. An existing group is left exactly as it is: its
    /// position, pending and leased events and dead letters (use [`EventBus::reset_group`] to
    /// move it).
    ///
    /// A group exists once it has been read ([`EventBus::receive`] creates it at the start of
    /// the retained log), reset ([`EventBus::reset_group`]) or created here, by any handle or
    /// process. Configuring it ([`EventBus::configure_group`]), reading its stats or dead
    /// letters, settling or extending do not create it. This is how a consumer starts a new
    /// group "from now" ([`ReplayFrom::End`]) without moving a group that already exists
    /// (`GroupConsumer::start_from`).
    ///
    /// The default implementation refuses with [`crate::ErrorKind::Unsupported`]; every
    /// backend of this workspace implements it.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::NotFound`] for [`ReplayFrom::Id`] when the group does not exist
    ///   and that event is not retained in the topic; nothing was created.
    /// - [`crate::ErrorKind::InvalidInput`] for an invalid name,
    ///   [`crate::ErrorKind::Unsupported`] for a [`ReplayFrom`] variant the backend does not
    ///   know, or a backend failure.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have created the group. Calling again is safe: if
    /// the first call landed, the second returns `false` and changes nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message, ReplayFrom};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let bus = courier.events();
    /// bus.emit("orders", Message::new("order", "old")).await?;
    /// // A new group that skips the history; `true`: it was created now.
    /// assert!(bus.create_group("orders", "dashboard", ReplayFrom::End).await?);
    /// // Creating it again does not move it.
    /// assert!(!bus.create_group("orders", "dashboard", ReplayFrom::Start).await?);
    /// assert_eq!(bus.group_stats("orders", "dashboard").await?.lag, 0);
    /// # Ok(())
    /// # }
    /// ```
    async fn create_group(&self, topic: &str, group: &str, from: ReplayFrom) -> Result<bool> {
        let _ = (topic, group, from);
        Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            format!(
                "create_group is not supported by the {} backend",
                self.backend_name()
            ),
        )
        .with_backend(self.backend_name())
        .with_operation("create_group"))
    }

    /// The group's state.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for an invalid name, or a backend failure.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message, ReplayFrom};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let bus = courier.events();
    /// bus.create_group("orders", "billing", ReplayFrom::Start).await?;
    /// bus.emit("orders", Message::new("order", "o1")).await?;
    /// let s = bus.group_stats("orders", "billing").await?;
    /// // Not yet handled: counted as lag or as ready, depending on the backend.
    /// assert_eq!(s.lag + s.queue.ready_total(), 1);
    /// # Ok(())
    /// # }
    /// ```
    async fn group_stats(&self, topic: &str, group: &str) -> Result<GroupStats>;

    /// Up to `max` events of the topic's retained log from the position `from` (E5: where a
    /// reset would place a group; `End` gives none), oldest first, without a consumer group:
    /// nothing is leased, no group is created or moves. A tool that follows a topic (`courier
    /// events tail`) calls it again from the last event it got (`ReplayFrom::Id`, which
    /// includes that event). An event that does not decode (Q10) is skipped.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::NotFound`] for an event id that is not retained.
    /// - [`crate::ErrorKind::InvalidInput`] for an invalid topic name or `max` 0, or a
    ///   backend failure.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing (RabbitMQ and NATS append a sync record, which holds no
    /// state).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message, ReplayFrom};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let bus = courier.events();
    /// let first = bus.emit("meeting.events", Message::new("joined", "alice")).await?;
    /// bus.emit("meeting.events", Message::new("joined", "bob")).await?;
    /// // Look at the log as an operator would: no group is created, none moves.
    /// let all = bus.read_events("meeting.events", ReplayFrom::Start, 10).await?;
    /// let who: Vec<&[u8]> = all.iter().map(|m| m.payload.as_ref()).collect();
    /// assert_eq!(who, [b"alice".as_slice(), b"bob".as_slice()]);
    /// // Follow on from the last event seen (`Id` includes it).
    /// let from_first = bus.read_events("meeting.events", ReplayFrom::Id(first), 10).await?;
    /// assert_eq!(from_first.len(), 2);
    /// assert!(bus.list_groups("meeting.events").await?.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    async fn read_events(&self, topic: &str, from: ReplayFrom, max: usize) -> Result<Vec<Message>>;

    /// Events retained in the topic's log.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for an invalid topic name, or a backend failure.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let bus = courier.events();
    /// assert_eq!(bus.topic_len("orders").await?, 0);
    /// bus.emit("orders", Message::new("order", "o1")).await?;
    /// assert_eq!(bus.topic_len("orders").await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    async fn topic_len(&self, topic: &str) -> Result<u64>;

    /// The group's dead letters, oldest first.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for an invalid name, or a backend failure. A page
    /// past the end is empty, not an error.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message, Page, Settle};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let bus = courier.events();
    /// bus.emit("orders", Message::new("order", "corrupt")).await?;
    /// let d = bus.receive("orders", "billing", 1, Duration::from_secs(1)).await?.remove(0);
    /// bus.settle_one("orders", "billing", Settle::Bury { lease: d.lease, error: "bad total".into() }).await?;
    /// let dead = bus.dead_letters("orders", "billing", Page::first(10)).await?;
    /// assert_eq!(dead[0].error, "bad total");
    /// # Ok(())
    /// # }
    /// ```
    async fn dead_letters(&self, topic: &str, group: &str, page: Page) -> Result<Vec<DeadLetter>>;

    /// Requeue a group's dead letters for that group only. Returns how many.
    ///
    /// # Errors
    /// As [`crate::Queue::requeue_dead`]: [`crate::ErrorKind::InvalidInput`] for an invalid
    /// name, or a backend failure after which part of the selection may have been requeued.
    /// Unknown ids are ignored.
    ///
    /// # Cancel safety
    /// As [`crate::Queue::requeue_dead`]: it may or may not have been applied (on Redis,
    /// possibly in part); each dead letter is either requeued or still dead.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message, Selection, Settle};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let bus = courier.events();
    /// bus.emit("orders", Message::new("order", "o1")).await?;
    /// let d = bus.receive("orders", "billing", 1, Duration::from_secs(1)).await?.remove(0);
    /// bus.settle_one("orders", "billing", Settle::Bury { lease: d.lease, error: "db down".into() }).await?;
    /// assert_eq!(bus.requeue_dead("orders", "billing", Selection::All).await?, 1);
    /// let again = bus.receive("orders", "billing", 1, Duration::from_secs(1)).await?;
    /// assert_eq!(again.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    async fn requeue_dead(&self, topic: &str, group: &str, which: Selection) -> Result<u64>;

    /// Delete a group's dead letters. Returns how many.
    ///
    /// # Errors
    /// As [`crate::Queue::purge_dead`]: [`crate::ErrorKind::InvalidInput`] for an invalid
    /// name, or a backend failure after which part of the selection may have been deleted.
    ///
    /// # Cancel safety
    /// As [`crate::Queue::purge_dead`]: it may or may not have been applied (on Redis,
    /// possibly in part).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message, Selection, Settle};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let bus = courier.events();
    /// let id = bus.emit("orders", Message::new("order", "junk")).await?;
    /// let d = bus.receive("orders", "billing", 1, Duration::from_secs(1)).await?.remove(0);
    /// bus.settle_one("orders", "billing", Settle::Bury { lease: d.lease, error: "junk".into() }).await?;
    /// assert_eq!(bus.purge_dead("orders", "billing", Selection::Ids(vec![id])).await?, 1);
    /// assert_eq!(bus.group_stats("orders", "billing").await?.queue.dead, 0);
    /// # Ok(())
    /// # }
    /// ```
    async fn purge_dead(&self, topic: &str, group: &str, which: Selection) -> Result<u64>;

    /// The topics this backend stores (E7): every topic an event was ever emitted to or a
    /// consumer group exists on, by any process sharing the backend, sorted by name, each
    /// once. A topic whose events were all trimmed stays listed.
    ///
    /// # Errors
    /// A backend failure.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing (RabbitMQ and NATS append a sync record to their
    /// registry log, which holds no state).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.events().emit("orders", Message::new("order", "")).await?;
    /// courier.events().emit("audit", Message::new("login", "")).await?;
    /// assert_eq!(courier.events().list_topics().await?, ["audit", "orders"]);
    /// # Ok(())
    /// # }
    /// ```
    async fn list_topics(&self) -> Result<Vec<String>>;

    /// The consumer groups of `topic` (E7), sorted by name, each once: every group created
    /// by [`EventBus::create_group`], [`EventBus::reset_group`] or a first
    /// [`EventBus::receive`], by any process. An unknown topic has no groups (not an error).
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for an invalid topic name, or a backend failure.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing (RabbitMQ and NATS append a sync record to their
    /// registry log, which holds no state).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::ReplayFrom;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let bus = courier.events();
    /// bus.create_group("orders", "search", ReplayFrom::Start).await?;
    /// bus.create_group("orders", "billing", ReplayFrom::End).await?;
    /// assert_eq!(bus.list_groups("orders").await?, ["billing", "search"]);
    /// assert!(bus.list_groups("unknown").await?.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    async fn list_groups(&self, topic: &str) -> Result<Vec<String>>;

    /// Pause consumer group `group` of `topic` (E8), for every process: events are still
    /// appended, the group receives nothing (receives wait out their `wait` and return empty),
    /// leases already granted stay valid. Other groups of the topic are not affected. Group
    /// stats report `paused`. Pausing a group that does not exist yet is allowed; it starts
    /// paused when it is created.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for an invalid topic or group name, or a backend
    /// failure.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have paused the group; pausing again is safe.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message, ReplayFrom};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let bus = courier.events();
    /// bus.create_group("orders", "billing", ReplayFrom::Start).await?;
    /// bus.pause_group("orders", "billing").await?;
    /// bus.emit("orders", Message::new("order", "")).await?;
    /// assert!(bus.receive("orders", "billing", 10, Duration::from_millis(20)).await?.is_empty());
    /// assert!(bus.group_stats("orders", "billing").await?.queue.paused);
    /// bus.resume_group("orders", "billing").await?;
    /// assert_eq!(bus.receive("orders", "billing", 10, Duration::from_secs(1)).await?.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    async fn pause_group(&self, topic: &str, group: &str) -> Result<()>;

    /// Resume a paused consumer group (E8); its waiting receivers are woken at once.
    ///
    /// # Errors
    /// As [`EventBus::pause_group`].
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have resumed the group; resuming again is safe.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::ReplayFrom;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let bus = courier.events();
    /// bus.create_group("orders", "billing", ReplayFrom::Start).await?;
    /// bus.pause_group("orders", "billing").await?;
    /// bus.resume_group("orders", "billing").await?;
    /// assert!(!bus.group_stats("orders", "billing").await?.queue.paused);
    /// # Ok(())
    /// # }
    /// ```
    async fn resume_group(&self, topic: &str, group: &str) -> Result<()>;
}

const _: Option<&dyn EventBus> = None;

/// Conveniences for every [`EventBus`].
#[async_trait]
pub trait EventBusExt: EventBus {
    /// Append one event.
    ///
    /// # Errors
    /// As [`EventBus::emit_batch`] for a batch of one. [`crate::ErrorKind::Backend`] if the
    /// backend returns no id.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have appended the event.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let id = courier.events().emit("meeting.created", Message::json("meeting.created", &"m1")?).await?;
    /// assert!(!id.is_nil());
    /// // Emitting with no group yet is fine: the log keeps it for groups created later (E1, E2).
    /// assert_eq!(courier.events().topic_len("meeting.created").await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    async fn emit(&self, topic: &str, event: Message) -> Result<MessageId> {
        let mut ids = self.emit_batch(topic, vec![event]).await?;
        ids.pop().ok_or_else(|| {
            crate::Error::new(crate::ErrorKind::Backend, "emit returned no id")
                .with_backend(self.backend_name())
        })
    }

    /// Append a typed event to its own topic.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] when the event cannot be encoded as JSON (nothing is
    /// sent); otherwise as [`EventBusExt::emit`].
    ///
    /// # Cancel safety
    /// As [`EventBusExt::emit`]: it may or may not have appended the event.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::EventBusExt;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct UserSignedUp { email: String }
    /// impl courier::Event for UserSignedUp {
    ///     const TOPIC: &'static str = "user.signed_up";
    /// }
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.events().emit_typed(&UserSignedUp { email: "ann@example.com".into() }).await?;
    /// assert_eq!(courier.events().topic_len("user.signed_up").await?, 1);
    /// # Ok(())
    /// # }
    /// ```
    async fn emit_typed<E: crate::Event + Sync>(&self, event: &E) -> Result<MessageId> {
        self.emit(E::TOPIC, Message::json(E::TOPIC, event)?).await
    }

    /// Settle one operation.
    ///
    /// # Errors
    /// The operation's own outcome ([`crate::ErrorKind::LeaseLost`] when the lease is no longer
    /// held; nothing changed), or the outer errors of [`EventBus::settle`].
    /// [`crate::ErrorKind::Backend`] if the backend returns no result.
    ///
    /// # Cancel safety
    /// As [`EventBus::settle`]: it may or may not have been applied; settling again is safe.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message, Settle};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let bus = courier.events();
    /// bus.emit("orders", Message::new("order", "o1")).await?;
    /// let d = bus.receive("orders", "billing", 1, Duration::from_secs(1)).await?.remove(0);
    /// bus.settle_one("orders", "billing", Settle::Retry { lease: d.lease, delay: Duration::ZERO, error: "busy".into() })
    ///     .await?;
    /// let again = bus.receive("orders", "billing", 1, Duration::from_secs(1)).await?;
    /// assert_eq!(again[0].message.attempt, 2);
    /// # Ok(())
    /// # }
    /// ```
    async fn settle_one(&self, topic: &str, group: &str, op: Settle) -> Result<()> {
        self.settle(topic, group, vec![op])
            .await?
            .pop()
            .unwrap_or_else(|| {
                Err(crate::Error::new(
                    crate::ErrorKind::Backend,
                    "settle returned no result",
                ))
            })
    }

    /// Acknowledge one event for a group.
    ///
    /// # Errors
    /// [`crate::ErrorKind::LeaseLost`] when the lease is no longer held (a double ack
    /// included; nothing changed), [`crate::ErrorKind::InvalidInput`] for an invalid name, or
    /// a backend failure.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have acked. Acking again is safe: if the first ack
    /// landed, the second gets [`crate::ErrorKind::LeaseLost`] and changes nothing.
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
    /// let bus = courier.events();
    /// bus.emit("orders", Message::new("order", "o1")).await?;
    /// let d = bus.receive("orders", "billing", 1, Duration::from_secs(1)).await?.remove(0);
    /// bus.ack("orders", "billing", &d.lease).await?;
    /// assert!(bus.ack("orders", "billing", &d.lease).await.unwrap_err().is_lease_lost());
    /// # Ok(())
    /// # }
    /// ```
    async fn ack(&self, topic: &str, group: &str, lease: &Lease) -> Result<()> {
        self.settle_one(topic, group, Settle::Ack(*lease)).await
    }
}

impl<B: EventBus + ?Sized> EventBusExt for B {}

mod opt_duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}
