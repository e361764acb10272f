//! The instrumented handles [`crate::Courier`] hands out: each wraps a backend's handle,
//! forwards every call unchanged, and records what the call did (metrics), inside a span
//! (tracing) that publishes carry to their consumers (trace propagation).
//!
//! Recording here, once, is what makes every backend report the same series with the same
//! labels: a backend only implements the primitives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tracing::Instrument;

use super::handles::{Cache, PubSubHandles, QueueHandles, TopicHandles};
use super::propagation;
use crate::clock::SharedClock;
use crate::error::{ErrorKind, Result};
use crate::event_bus::{EventBus, GroupStats, ReplayFrom, Retention};
use crate::message::{Message, MessageId, Priority};
use crate::policy::{QueueConfig, RateLimit};
use crate::pubsub::{PubSub, SubscribeOptions, Subscription};
use crate::queue::{
    DeadLetter, Delivery, Lease, Page, Published, Queue, QueueStats, Selection, Settle,
};

/// The index of each settle operation's counter.
fn op_index(op: &Settle) -> u8 {
    match op {
        Settle::Ack(_) => 0,
        Settle::Retry { .. } => 1,
        Settle::Bury { .. } => 2,
        Settle::Release(_) => 3,
    }
}

/// The handles of each distinct kind in `messages`, and for each message the index of its
/// kind's handles.
fn kinds_of<'a, T>(
    messages: impl Iterator<Item = &'a Message>,
    lookup: impl Fn(&str) -> T,
) -> (Vec<T>, Vec<usize>) {
    let mut handles: Vec<T> = Vec::new();
    let mut names: Vec<&'a str> = Vec::new();
    let mut slots = Vec::new();
    for m in messages {
        let i = match names.iter().position(|k| *k == m.kind.as_str()) {
            Some(i) => i,
            None => {
                names.push(m.kind.as_str());
                handles.push(lookup(&m.kind));
                names.len() - 1
            }
        };
        slots.push(i);
    }
    (handles, slots)
}

/// A [`Queue`] that records what its backend does.
pub(crate) struct InstrumentedQueue {
    inner: Arc<dyn Queue>,
    queues: Cache<QueueHandles>,
}

impl InstrumentedQueue {
    pub(crate) fn new(inner: Arc<dyn Queue>) -> Self {
        InstrumentedQueue {
            inner,
            queues: Cache::default(),
        }
    }

    fn handles(&self, queue: &str) -> Arc<QueueHandles> {
        let backend = self.inner.backend_name();
        self.queues.get(queue, || QueueHandles::new(backend, queue))
    }

    fn count_settled(&self, queue: &str, ops: &[u8], results: &[Result<()>]) {
        let h = self.handles(queue);
        for (op, r) in ops.iter().zip(results) {
            match r {
                Ok(()) => match op {
                    0 => h.acked.increment(1),
                    1 => h.retried.increment(1),
                    2 => h.dead_lettered.increment(1),
                    _ => h.released.increment(1),
                },
                Err(e) if e.kind() == ErrorKind::LeaseLost => h.lease_lost.increment(1),
                Err(_) => {}
            }
        }
    }
}

#[async_trait]
impl Queue for InstrumentedQueue {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
    fn clock(&self) -> SharedClock {
        self.inner.clock()
    }
    fn configure(&self, queue: &str, config: QueueConfig) -> Result<()> {
        self.inner.configure(queue, config)
    }
    fn queue_config(&self, queue: &str) -> QueueConfig {
        self.inner.queue_config(queue)
    }

    async fn publish_batch(
        &self,
        queue: &str,
        mut messages: Vec<Message>,
    ) -> Result<Vec<Published>> {
        let span = tracing::info_span!(
            "courier.publish",
            backend = self.inner.backend_name(),
            queue,
            count = messages.len(),
            kind = tracing::field::Empty,
        );
        if let [only] = messages.as_slice() {
            span.record("kind", only.kind.as_str());
        }
        propagation::inject(&span, &mut messages);
        let h = self.handles(queue);
        let (kinds, slots) = kinds_of(messages.iter(), |k| h.kind(k));
        let priorities: Vec<Priority> = messages.iter().map(|m| m.priority).collect();
        let started = Instant::now();
        let outcome = self
            .inner
            .publish_batch(queue, messages)
            .instrument(span)
            .await;
        h.publish_duration.record(started.elapsed().as_secs_f64());
        if let Ok(published) = &outcome {
            for ((slot, p), o) in slots.iter().zip(&priorities).zip(published) {
                match o {
                    Published::Stored(_) => {
                        let k = &kinds[*slot];
                        k.published[p.index()].increment(1);
                    }
                    Published::Duplicate(_) => h.deduplicated.increment(1),
                }
            }
        }
        outcome
    }

    async fn receive(&self, queue: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deliveries = self.inner.receive(queue, max, wait).await?;
        if !deliveries.is_empty() {
            let h = self.handles(queue);
            let (kinds, slots) = kinds_of(deliveries.iter().map(|d| &d.message), |k| h.kind(k));
            for (d, slot) in deliveries.iter().zip(slots) {
                let k = &kinds[slot];
                k.delivered[d.message.priority.index()].increment(1);
            }
        }
        Ok(deliveries)
    }

    async fn settle(&self, queue: &str, ops: Vec<Settle>) -> Result<Vec<Result<()>>> {
        let kinds: Vec<u8> = ops.iter().map(op_index).collect();
        let results = self.inner.settle(queue, ops).await?;
        self.count_settled(queue, &kinds, &results);
        Ok(results)
    }

    async fn extend(&self, queue: &str, lease: &Lease, visibility: Duration) -> Result<Lease> {
        let r = self.inner.extend(queue, lease, visibility).await;
        if let Err(e) = &r
            && e.kind() == ErrorKind::LeaseLost
        {
            self.handles(queue).lease_lost.increment(1);
        }
        r
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        self.inner.stats(queue).await
    }
    async fn dead_letters(&self, queue: &str, page: Page) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters(queue, page).await
    }
    async fn dead_letter(&self, queue: &str, id: MessageId) -> Result<DeadLetter> {
        self.inner.dead_letter(queue, id).await
    }
    async fn requeue_dead(&self, queue: &str, which: Selection) -> Result<u64> {
        self.inner.requeue_dead(queue, which).await
    }
    async fn requeue_dead_at(
        &self,
        queue: &str,
        which: Selection,
        priority: Priority,
    ) -> Result<u64> {
        self.inner.requeue_dead_at(queue, which, priority).await
    }
    async fn purge_dead(&self, queue: &str, which: Selection) -> Result<u64> {
        self.inner.purge_dead(queue, which).await
    }
    async fn list_queues(&self) -> Result<Vec<String>> {
        self.inner.list_queues().await
    }
    async fn pause(&self, queue: &str) -> Result<()> {
        self.inner.pause(queue).await
    }
    async fn resume(&self, queue: &str) -> Result<()> {
        self.inner.resume(queue).await
    }
    async fn set_rate_limit(&self, queue: &str, limit: Option<RateLimit>) -> Result<()> {
        self.inner.set_rate_limit(queue, limit).await
    }
    async fn reprioritise(&self, queue: &str, id: MessageId, priority: Priority) -> Result<()> {
        self.inner.reprioritise(queue, id, priority).await
    }
}

/// A [`PubSub`] that records what its backend does.
pub(crate) struct InstrumentedPubSub {
    inner: Arc<dyn PubSub>,
    handles: Arc<PubSubHandles>,
}

impl InstrumentedPubSub {
    pub(crate) fn new(inner: Arc<dyn PubSub>) -> Self {
        let handles = Arc::new(PubSubHandles::new(inner.backend_name()));
        InstrumentedPubSub { inner, handles }
    }
}

#[async_trait]
impl PubSub for InstrumentedPubSub {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }

    async fn publish(&self, channel: &str, message: Message) -> Result<usize> {
        let span = tracing::info_span!(
            "courier.broadcast",
            backend = self.inner.backend_name(),
            channel,
            kind = message.kind.as_str(),
        );
        let mut messages = [message];
        propagation::inject(&span, &mut messages);
        let [message] = messages;
        let counter = self.handles.published(&message.kind);
        let r = self.inner.publish(channel, message).instrument(span).await;
        if r.is_ok() {
            counter.increment(1);
        }
        r
    }

    async fn subscribe(&self, pattern: &str, options: SubscribeOptions) -> Result<Subscription> {
        let sub = self.inner.subscribe(pattern, options).await?;
        Ok(sub.with_metrics(self.handles.clone()))
    }
}

/// An [`EventBus`] that records what its backend does.
pub(crate) struct InstrumentedEvents {
    inner: Arc<dyn EventBus>,
    topics: Cache<TopicHandles>,
}

impl InstrumentedEvents {
    pub(crate) fn new(inner: Arc<dyn EventBus>) -> Self {
        InstrumentedEvents {
            inner,
            topics: Cache::default(),
        }
    }

    fn handles(&self, topic: &str) -> Arc<TopicHandles> {
        let backend = self.inner.backend_name();
        self.topics.get(topic, || TopicHandles::new(backend, topic))
    }
}

#[async_trait]
impl EventBus for InstrumentedEvents {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
    fn clock(&self) -> SharedClock {
        self.inner.clock()
    }
    fn configure_group(&self, topic: &str, group: &str, config: QueueConfig) -> Result<()> {
        self.inner.configure_group(topic, group, config)
    }
    fn group_config(&self, topic: &str, group: &str) -> QueueConfig {
        self.inner.group_config(topic, group)
    }
    fn set_retention(&self, topic: &str, retention: Retention) -> Result<()> {
        self.inner.set_retention(topic, retention)
    }

    async fn emit_batch(&self, topic: &str, mut events: Vec<Message>) -> Result<Vec<MessageId>> {
        let span = tracing::info_span!(
            "courier.emit",
            backend = self.inner.backend_name(),
            topic,
            count = events.len(),
            kind = tracing::field::Empty,
        );
        if let [only] = events.as_slice() {
            span.record("kind", only.kind.as_str());
        }
        propagation::inject(&span, &mut events);
        let h = self.handles(topic);
        let (kinds, slots) = kinds_of(events.iter(), |k| h.emitted(k));
        let r = self.inner.emit_batch(topic, events).instrument(span).await;
        if r.is_ok() {
            for slot in slots {
                kinds[slot].increment(1);
            }
        }
        r
    }

    async fn receive(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>> {
        let deliveries = self.inner.receive(topic, group, max, wait).await?;
        if !deliveries.is_empty() {
            self.handles(topic)
                .group(group)
                .delivered
                .increment(deliveries.len() as u64);
        }
        Ok(deliveries)
    }

    async fn settle(&self, topic: &str, group: &str, ops: Vec<Settle>) -> Result<Vec<Result<()>>> {
        let kinds: Vec<u8> = ops.iter().map(op_index).collect();
        let results = self.inner.settle(topic, group, ops).await?;
        let g = self.handles(topic).group(group);
        for (op, r) in kinds.iter().zip(&results) {
            match r {
                Ok(()) => match op {
                    0 => g.acked.increment(1),
                    1 => g.retried.increment(1),
                    2 => g.dead.increment(1),
                    _ => g.released.increment(1),
                },
                Err(e) if e.kind() == ErrorKind::LeaseLost => g.lease_lost.increment(1),
                Err(_) => {}
            }
        }
        Ok(results)
    }

    async fn extend(
        &self,
        topic: &str,
        group: &str,
        lease: &Lease,
        visibility: Duration,
    ) -> Result<Lease> {
        let r = self.inner.extend(topic, group, lease, visibility).await;
        if let Err(e) = &r
            && e.kind() == ErrorKind::LeaseLost
        {
            self.handles(topic).group(group).lease_lost.increment(1);
        }
        r
    }

    async fn reset_group(&self, topic: &str, group: &str, from: ReplayFrom) -> Result<()> {
        self.inner.reset_group(topic, group, from).await
    }
    async fn create_group(&self, topic: &str, group: &str, from: ReplayFrom) -> Result<bool> {
        self.inner.create_group(topic, group, from).await
    }
    async fn group_stats(&self, topic: &str, group: &str) -> Result<GroupStats> {
        self.inner.group_stats(topic, group).await
    }
    async fn read_events(&self, topic: &str, from: ReplayFrom, max: usize) -> Result<Vec<Message>> {
        self.inner.read_events(topic, from, max).await
    }
    async fn topic_len(&self, topic: &str) -> Result<u64> {
        self.inner.topic_len(topic).await
    }
    async fn dead_letters(&self, topic: &str, group: &str, page: Page) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters(topic, group, page).await
    }
    async fn requeue_dead(&self, topic: &str, group: &str, which: Selection) -> Result<u64> {
        self.inner.requeue_dead(topic, group, which).await
    }
    async fn purge_dead(&self, topic: &str, group: &str, which: Selection) -> Result<u64> {
        self.inner.purge_dead(topic, group, which).await
    }
    async fn list_topics(&self) -> Result<Vec<String>> {
        self.inner.list_topics().await
    }
    async fn list_groups(&self, topic: &str) -> Result<Vec<String>> {
        self.inner.list_groups(topic).await
    }
    async fn pause_group(&self, topic: &str, group: &str) -> Result<()> {
        self.inner.pause_group(topic, group).await
    }
    async fn resume_group(&self, topic: &str, group: &str) -> Result<()> {
        self.inner.resume_group(topic, group).await
    }
}
