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
    fn backend_name(&self) -> &'static str;

    /// The clock the backend uses.
    fn clock(&self) -> SharedClock;

    /// Set the failure rules (lease, retry, dead letters) of one group on one topic.
    fn configure_group(&self, topic: &str, group: &str, config: QueueConfig) -> Result<()>;

    /// The failure rules in force for a group.
    fn group_config(&self, topic: &str, group: &str) -> QueueConfig;

    /// Set a topic's retention.
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
    async fn read_events(&self, topic: &str, from: ReplayFrom, max: usize) -> Result<Vec<Message>>;

    /// Events retained in the topic's log.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for an invalid topic name, or a backend failure.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    async fn topic_len(&self, topic: &str) -> Result<u64>;

    /// The group's dead letters, oldest first.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for an invalid name, or a backend failure. A page
    /// past the end is empty, not an error.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
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
    async fn list_groups(&self, topic: &str) -> Result<Vec<String>>;
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
