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
    /// As [`crate::Queue::publish_batch`].
    async fn emit_batch(&self, topic: &str, events: Vec<Message>) -> Result<Vec<MessageId>>;

    /// Lease up to `max` events for `group` (creating the group at the start of the retained
    /// log on first use), waiting up to `wait`.
    ///
    /// # Cancel safety
    /// As [`crate::Queue::receive`].
    async fn receive(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>>;

    /// Settle a group's deliveries (see [`crate::Queue::settle`]).
    async fn settle(&self, topic: &str, group: &str, ops: Vec<Settle>) -> Result<Vec<Result<()>>>;

    /// Extend a lease (see [`crate::Queue::extend`]).
    async fn extend(
        &self,
        topic: &str,
        group: &str,
        lease: &Lease,
        visibility: Duration,
    ) -> Result<Lease>;

    /// Reset where a group reads from (E5). Pending, delayed and leased events of the group are
    /// dropped; its dead letters are kept.
    async fn reset_group(&self, topic: &str, group: &str, from: ReplayFrom) -> Result<()>;

    /// The group's state.
    async fn group_stats(&self, topic: &str, group: &str) -> Result<GroupStats>;

    /// Events retained in the topic's log.
    async fn topic_len(&self, topic: &str) -> Result<u64>;

    /// The group's dead letters, oldest first.
    async fn dead_letters(&self, topic: &str, group: &str, page: Page) -> Result<Vec<DeadLetter>>;

    /// Requeue a group's dead letters for that group only. Returns how many.
    async fn requeue_dead(&self, topic: &str, group: &str, which: Selection) -> Result<u64>;

    /// Delete a group's dead letters. Returns how many.
    async fn purge_dead(&self, topic: &str, group: &str, which: Selection) -> Result<u64>;
}

const _: Option<&dyn EventBus> = None;

/// Conveniences for every [`EventBus`].
#[async_trait]
pub trait EventBusExt: EventBus {
    /// Append one event.
    async fn emit(&self, topic: &str, event: Message) -> Result<MessageId> {
        let mut ids = self.emit_batch(topic, vec![event]).await?;
        ids.pop().ok_or_else(|| {
            crate::Error::new(crate::ErrorKind::Backend, "emit returned no id")
                .with_backend(self.backend_name())
        })
    }

    /// Append a typed event to its own topic.
    async fn emit_typed<E: crate::Event + Sync>(&self, event: &E) -> Result<MessageId> {
        self.emit(E::TOPIC, Message::json(E::TOPIC, event)?).await
    }

    /// Settle one operation.
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
