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
    pub fn new(queue: Arc<dyn Queue>, pubsub: Arc<dyn PubSub>, events: Arc<dyn EventBus>) -> Self {
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
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
    }

    /// Pub/sub.
    pub fn pubsub(&self) -> &Arc<dyn PubSub> {
        &self.pubsub
    }

    /// The event bus.
    pub fn events(&self) -> &Arc<dyn EventBus> {
        &self.events
    }

    /// The kind → queue dispatcher.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// A worker builder for `queue_name`.
    pub fn worker(&self, queue_name: &str) -> crate::WorkerBuilder {
        crate::Worker::builder(self.queue.clone(), queue_name)
    }

    /// A consumer-group builder on the event bus.
    pub fn group_consumer(&self, group: &str) -> crate::GroupConsumer {
        crate::GroupConsumer::builder(self.events.clone(), group)
    }

    /// A subscriber builder on pub/sub.
    pub fn subscriber(&self, pattern: &str) -> crate::Subscriber {
        crate::Subscriber::builder(self.pubsub.clone(), pattern)
    }
}
