//! # courier-replicated
//!
//! Courier's queues and event bus over any broker that keeps a durable, ordered log: the
//! RabbitMQ backend (streams) and the NATS backend (JetStream) are this crate plus a [`Log`]
//! for their broker. Not for applications: use `courier-amqp` or `courier-nats`.
//!
//! - **Each queue and each topic is one log** (a RabbitMQ stream, JetStream subjects). Every
//!   change is a record appended to it: a publish, a claim (receive), a settle, an extend, a
//!   dead-letter operation, a retention change, a group reset or creation, a pause or resume,
//!   a rate limit, a reprioritise.
//! - **Every handle follows the logs it uses** from their first record and applies each
//!   record to its own copy of the **memory backend's reference model** (`QueueState`,
//!   `Topic`) at the record's log time.
//! - **Every decision in the model is a function of the records**: lease tokens come from the
//!   claim's offset in the log, expiry jitter from a generator seeded by the log's name, and
//!   time from the records' stamps (a record applies at the later of its stamp and the
//!   previous record's time). All copies hold the same state and compute the same answers.
//! - **A call appends its record and waits until its own follower applies it**; its answer is
//!   what the model said at that point of the log. Reads append a `sync` record first, so they
//!   see everything any process appended before them.
#![forbid(unsafe_code)]

mod events;
mod models;
mod queue;
mod record;
mod registry;
mod replica;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use courier_core::backend::{ConfigStore, Kit};
use courier_core::{QueueConfig, Result, SharedClock};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::models::{QueueModel, TopicModel};
use crate::replica::{Env, Replica};

/// A broker's durable, ordered log, split into named logs (one per queue, one per topic).
///
/// Names are `q.<queue>` and `t.<topic>` (Courier names: `A–Z a–z 0–9 _ - .`); the broker
/// maps them onto its own (a stream per name, a subject per name …). Offsets increase along
/// a log and are never reused.
#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// Append `record` to the log `name`; `Ok` once the broker holds it durably.
    ///
    /// # Errors
    /// `Unavailable` when the broker cannot be reached or did not confirm.
    async fn append(&self, name: &str, record: Bytes, operation: &'static str) -> Result<()>;

    /// Read the log `name` from offset `from` (inclusive; earlier offsets may be handed over
    /// too and are skipped), handing each record to `sink` with its offset, until the
    /// connection fails (`Err`, the caller starts again where it was) or `sink` returns
    /// `false` (`Ok`).
    ///
    /// # Errors
    /// `Unavailable` when the broker cannot be reached or the reader was lost.
    async fn follow(
        &self,
        name: &str,
        from: u64,
        sink: &mut (dyn FnMut(u64, Bytes) -> bool + Send),
    ) -> Result<()>;
}

/// Queues and an event bus replicated through a [`Log`]: implements
/// [`courier_core::Queue`] and [`courier_core::EventBus`]. Cheap to clone; clones share
/// everything.
pub struct Replicated<L: Log> {
    inner: Arc<Inner<L>>,
}

impl<L: Log> Clone for Replicated<L> {
    fn clone(&self) -> Self {
        Replicated {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<L: Log> {
    kit: Kit,
    clock: SharedClock,
    configs: ConfigStore,
    env: Env<L>,
    /// Tells followers to stop when the last handle is dropped.
    closed: watch::Sender<bool>,
    /// This handle's id in the records it appends (random: unique among the processes).
    origin: u64,
    queues: RwLock<HashMap<String, Arc<Replica<QueueModel>>>>,
    topics: RwLock<HashMap<String, Arc<Replica<TopicModel>>>>,
    /// `set_retention` calls still being recorded, per topic.
    retention_tasks: Mutex<HashMap<String, tokio::task::JoinHandle<Result<()>>>>,
    /// Test support (see [`Replicated::batch_fault_switch`]).
    batch_fault: Arc<AtomicUsize>,
    /// The queues and topics this handle registered (see `registry`).
    registered: registry::Registered,
}

impl<L: Log> Drop for Inner<L> {
    fn drop(&mut self) {
        let _ = self.closed.send(true);
    }
}

impl<L: Log> Replicated<L> {
    /// Queues and topics over `log`, for the backend of `kit` (its name tags every error).
    pub fn new(log: L, kit: Kit, clock: SharedClock, default_config: QueueConfig) -> Self {
        let (closed, closed_rx) = watch::channel(false);
        let env = Env {
            log: Arc::new(log),
            kit,
            clock: clock.clone(),
            closed: closed_rx,
        };
        Replicated {
            inner: Arc::new(Inner {
                kit,
                clock,
                configs: ConfigStore::new(default_config),
                env,
                closed,
                origin: rand::random::<u64>() | 1,
                queues: RwLock::default(),
                topics: RwLock::default(),
                retention_tasks: Mutex::default(),
                batch_fault: Arc::default(),
                registered: registry::Registered::default(),
            }),
        }
    }

    /// The log this store appends to and follows.
    pub fn log(&self) -> &L {
        &self.inner.env.log
    }

    /// The configuration used for queues and groups that were not configured.
    pub fn default_config(&self) -> QueueConfig {
        self.inner.configs.default_config()
    }

    /// The clock used for `created_at`, delays and lease deadlines.
    pub fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    /// Test support for the conformance case of Q7's partial store (`Error::stored`), not for
    /// applications: storing `1 + records` makes the next `publish_batch` or `emit_batch`
    /// of this handle fail after `records` of its records (up to 1,000 messages each) were
    /// stored, as a connection lost between two records would.
    #[doc(hidden)]
    pub fn batch_fault_switch(&self) -> Arc<AtomicUsize> {
        self.inner.batch_fault.clone()
    }

    /// Register `name` in the registry before its first use by this handle (Q13, E7).
    async fn register(
        &self,
        kind: registry::Kind,
        name: &str,
        operation: &'static str,
    ) -> Result<()> {
        registry::register(
            &*self.inner.env.log,
            &self.inner.registered,
            kind,
            name,
            operation,
        )
        .await
    }

    /// The registered names of `kind` (Q13, E7).
    async fn registered(
        &self,
        kind: registry::Kind,
        operation: &'static str,
    ) -> Result<Vec<String>> {
        registry::list(&*self.inner.env.log, self.inner.kit, kind, operation).await
    }

    /// Whether the armed batch fault fires now (see [`Replicated::batch_fault_switch`]).
    fn take_batch_fault(&self) -> bool {
        let f = &self.inner.batch_fault;
        let mut cur = f.load(Ordering::Acquire);
        loop {
            let next = match cur {
                0 => return false,
                n => n - 1,
            };
            match f.compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return cur == 1,
                Err(seen) => cur = seen,
            }
        }
    }
}

/// Implement [`courier_core::Queue`] and [`courier_core::EventBus`] for a backend type by
/// forwarding every method to its [`Replicated`] store, reached with `$store` (a method of
/// the type returning `&Replicated<_>`). The crate using it depends on `async-trait`.
#[macro_export]
macro_rules! forward_queue_and_event_bus {
    ($ty:ty, $store:ident) => {
        #[async_trait::async_trait]
        impl courier_core::Queue for $ty {
            fn backend_name(&self) -> &'static str {
                courier_core::Queue::backend_name(self.$store())
            }
            fn clock(&self) -> courier_core::SharedClock {
                courier_core::Queue::clock(self.$store())
            }
            fn configure(
                &self,
                queue: &str,
                config: courier_core::QueueConfig,
            ) -> courier_core::Result<()> {
                self.$store().configure(queue, config)
            }
            fn queue_config(&self, queue: &str) -> courier_core::QueueConfig {
                self.$store().queue_config(queue)
            }
            /// As the store's: see `courier_replicated`.
            async fn publish_batch(
                &self,
                queue: &str,
                messages: Vec<courier_core::Message>,
            ) -> courier_core::Result<Vec<courier_core::Published>> {
                courier_core::Queue::publish_batch(self.$store(), queue, messages).await
            }
            /// Cancel safe: what a dropped receive leased is released at once (not counted).
            async fn receive(
                &self,
                queue: &str,
                max: usize,
                wait: std::time::Duration,
            ) -> courier_core::Result<Vec<courier_core::Delivery>> {
                courier_core::Queue::receive(self.$store(), queue, max, wait).await
            }
            async fn settle(
                &self,
                queue: &str,
                ops: Vec<courier_core::Settle>,
            ) -> courier_core::Result<Vec<courier_core::Result<()>>> {
                courier_core::Queue::settle(self.$store(), queue, ops).await
            }
            async fn extend(
                &self,
                queue: &str,
                lease: &courier_core::Lease,
                visibility: std::time::Duration,
            ) -> courier_core::Result<courier_core::Lease> {
                courier_core::Queue::extend(self.$store(), queue, lease, visibility).await
            }
            async fn stats(&self, queue: &str) -> courier_core::Result<courier_core::QueueStats> {
                courier_core::Queue::stats(self.$store(), queue).await
            }
            async fn dead_letters(
                &self,
                queue: &str,
                page: courier_core::Page,
            ) -> courier_core::Result<Vec<courier_core::DeadLetter>> {
                courier_core::Queue::dead_letters(self.$store(), queue, page).await
            }
            async fn dead_letter(
                &self,
                queue: &str,
                id: courier_core::MessageId,
            ) -> courier_core::Result<courier_core::DeadLetter> {
                courier_core::Queue::dead_letter(self.$store(), queue, id).await
            }
            async fn requeue_dead(
                &self,
                queue: &str,
                which: courier_core::Selection,
            ) -> courier_core::Result<u64> {
                courier_core::Queue::requeue_dead(self.$store(), queue, which).await
            }
            async fn requeue_dead_at(
                &self,
                queue: &str,
                which: courier_core::Selection,
                priority: courier_core::Priority,
            ) -> courier_core::Result<u64> {
                courier_core::Queue::requeue_dead_at(self.$store(), queue, which, priority).await
            }
            async fn purge_dead(
                &self,
                queue: &str,
                which: courier_core::Selection,
            ) -> courier_core::Result<u64> {
                courier_core::Queue::purge_dead(self.$store(), queue, which).await
            }
            async fn list_queues(&self) -> courier_core::Result<Vec<String>> {
                courier_core::Queue::list_queues(self.$store()).await
            }
            async fn pause(&self, queue: &str) -> courier_core::Result<()> {
                courier_core::Queue::pause(self.$store(), queue).await
            }
            async fn resume(&self, queue: &str) -> courier_core::Result<()> {
                courier_core::Queue::resume(self.$store(), queue).await
            }
            async fn set_rate_limit(
                &self,
                queue: &str,
                limit: Option<courier_core::RateLimit>,
            ) -> courier_core::Result<()> {
                courier_core::Queue::set_rate_limit(self.$store(), queue, limit).await
            }
            async fn reprioritise(
                &self,
                queue: &str,
                id: courier_core::MessageId,
                priority: courier_core::Priority,
            ) -> courier_core::Result<()> {
                courier_core::Queue::reprioritise(self.$store(), queue, id, priority).await
            }
        }

        #[async_trait::async_trait]
        impl courier_core::EventBus for $ty {
            fn backend_name(&self) -> &'static str {
                courier_core::EventBus::backend_name(self.$store())
            }
            fn clock(&self) -> courier_core::SharedClock {
                courier_core::EventBus::clock(self.$store())
            }
            fn configure_group(
                &self,
                topic: &str,
                group: &str,
                config: courier_core::QueueConfig,
            ) -> courier_core::Result<()> {
                self.$store().configure_group(topic, group, config)
            }
            fn group_config(&self, topic: &str, group: &str) -> courier_core::QueueConfig {
                self.$store().group_config(topic, group)
            }
            fn set_retention(
                &self,
                topic: &str,
                retention: courier_core::Retention,
            ) -> courier_core::Result<()> {
                self.$store().set_retention(topic, retention)
            }
            async fn emit_batch(
                &self,
                topic: &str,
                events: Vec<courier_core::Message>,
            ) -> courier_core::Result<Vec<courier_core::MessageId>> {
                courier_core::EventBus::emit_batch(self.$store(), topic, events).await
            }
            /// Cancel safe: what a dropped receive leased is released at once (not counted).
            async fn receive(
                &self,
                topic: &str,
                group: &str,
                max: usize,
                wait: std::time::Duration,
            ) -> courier_core::Result<Vec<courier_core::Delivery>> {
                courier_core::EventBus::receive(self.$store(), topic, group, max, wait).await
            }
            async fn settle(
                &self,
                topic: &str,
                group: &str,
                ops: Vec<courier_core::Settle>,
            ) -> courier_core::Result<Vec<courier_core::Result<()>>> {
                courier_core::EventBus::settle(self.$store(), topic, group, ops).await
            }
            async fn extend(
                &self,
                topic: &str,
                group: &str,
                lease: &courier_core::Lease,
                visibility: std::time::Duration,
            ) -> courier_core::Result<courier_core::Lease> {
                courier_core::EventBus::extend(self.$store(), topic, group, lease, visibility).await
            }
            async fn reset_group(
                &self,
                topic: &str,
                group: &str,
                from: courier_core::ReplayFrom,
            ) -> courier_core::Result<()> {
                courier_core::EventBus::reset_group(self.$store(), topic, group, from).await
            }
            async fn create_group(
                &self,
                topic: &str,
                group: &str,
                from: courier_core::ReplayFrom,
            ) -> courier_core::Result<bool> {
                courier_core::EventBus::create_group(self.$store(), topic, group, from).await
            }
            async fn group_stats(
                &self,
                topic: &str,
                group: &str,
            ) -> courier_core::Result<courier_core::GroupStats> {
                courier_core::EventBus::group_stats(self.$store(), topic, group).await
            }
            async fn topic_len(&self, topic: &str) -> courier_core::Result<u64> {
                courier_core::EventBus::topic_len(self.$store(), topic).await
            }
            async fn dead_letters(
                &self,
                topic: &str,
                group: &str,
                page: courier_core::Page,
            ) -> courier_core::Result<Vec<courier_core::DeadLetter>> {
                courier_core::EventBus::dead_letters(self.$store(), topic, group, page).await
            }
            async fn requeue_dead(
                &self,
                topic: &str,
                group: &str,
                which: courier_core::Selection,
            ) -> courier_core::Result<u64> {
                courier_core::EventBus::requeue_dead(self.$store(), topic, group, which).await
            }
            async fn purge_dead(
                &self,
                topic: &str,
                group: &str,
                which: courier_core::Selection,
            ) -> courier_core::Result<u64> {
                courier_core::EventBus::purge_dead(self.$store(), topic, group, which).await
            }
            async fn read_events(
                &self,
                topic: &str,
                from: courier_core::ReplayFrom,
                max: usize,
            ) -> courier_core::Result<Vec<courier_core::Message>> {
                courier_core::EventBus::read_events(self.$store(), topic, from, max).await
            }
            async fn list_topics(&self) -> courier_core::Result<Vec<String>> {
                courier_core::EventBus::list_topics(self.$store()).await
            }
            async fn list_groups(&self, topic: &str) -> courier_core::Result<Vec<String>> {
                courier_core::EventBus::list_groups(self.$store(), topic).await
            }
            async fn pause_group(&self, topic: &str, group: &str) -> courier_core::Result<()> {
                courier_core::EventBus::pause_group(self.$store(), topic, group).await
            }
            async fn resume_group(&self, topic: &str, group: &str) -> courier_core::Result<()> {
                courier_core::EventBus::resume_group(self.$store(), topic, group).await
            }
        }
    };
}
