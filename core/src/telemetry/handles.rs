//! Registered metric handles, cached per queue (or topic and group) and kind.
//!
//! Registering a handle builds its key and asks the recorder; incrementing a registered handle
//! is one dynamic call (none with no recorder). The hot paths look a handle up by `&str` under
//! a read lock and register only the first time a name is seen.

use std::collections::HashMap;
use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use parking_lot::RwLock;

use super::names;
use crate::message::Priority;

/// A map from a name to handles built on first use.
pub(crate) struct Cache<T> {
    map: RwLock<HashMap<Box<str>, Arc<T>>>,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            map: RwLock::new(HashMap::new()),
        }
    }
}

impl<T> Cache<T> {
    pub(crate) fn get(&self, name: &str, build: impl FnOnce() -> T) -> Arc<T> {
        if let Some(h) = self.map.read().get(name) {
            return h.clone();
        }
        self.map
            .write()
            .entry(name.into())
            .or_insert_with(|| Arc::new(build()))
            .clone()
    }
}

fn per_priority<H>(f: impl Fn(&'static str) -> H) -> [H; 4] {
    Priority::ALL.map(|p| f(p.as_str()))
}

/// Counters of one queue and one message kind.
pub(crate) struct KindCounters {
    pub(crate) published: [Counter; 4],
    pub(crate) delivered: [Counter; 4],
}

/// The handles of one queue.
pub(crate) struct QueueHandles {
    backend: &'static str,
    queue: Arc<str>,
    kinds: Cache<KindCounters>,
    pub(crate) deduplicated: Counter,
    pub(crate) publish_duration: Histogram,
    pub(crate) acked: Counter,
    pub(crate) retried: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) released: Counter,
    pub(crate) lease_lost: Counter,
}

impl QueueHandles {
    pub(crate) fn new(backend: &'static str, queue: &str) -> Self {
        let q: Arc<str> = queue.into();
        let c = |name: &'static str| counter!(name, "backend" => backend, "queue" => q.to_string());
        QueueHandles {
            deduplicated: c(names::DEDUPLICATED),
            publish_duration: histogram!(names::PUBLISH_DURATION, "backend" => backend, "queue" => q.to_string()),
            acked: c(names::ACKED),
            retried: c(names::RETRIED),
            dead_lettered: c(names::DEAD_LETTERED),
            released: c(names::RELEASED),
            lease_lost: c(names::LEASE_LOST),
            backend,
            queue: q,
            kinds: Cache::default(),
        }
    }

    pub(crate) fn kind(&self, kind: &str) -> Arc<KindCounters> {
        self.kinds.get(kind, || {
            let c = |name: &'static str, p: &'static str| {
                counter!(name, "backend" => self.backend, "queue" => self.queue.to_string(),
                    "priority" => p, "kind" => kind.to_string())
            };
            KindCounters {
                published: per_priority(|p| c(names::PUBLISHED, p)),
                delivered: per_priority(|p| c(names::DELIVERED, p)),
            }
        })
    }
}

/// The handles of one topic.
pub(crate) struct TopicHandles {
    backend: &'static str,
    topic: Arc<str>,
    emitted: Cache<Counter>,
    groups: Cache<GroupHandles>,
}

impl TopicHandles {
    pub(crate) fn new(backend: &'static str, topic: &str) -> Self {
        TopicHandles {
            backend,
            topic: topic.into(),
            emitted: Cache::default(),
            groups: Cache::default(),
        }
    }

    pub(crate) fn emitted(&self, kind: &str) -> Arc<Counter> {
        self.emitted.get(kind, || {
            counter!(names::EVENTS_EMITTED, "backend" => self.backend,
                "topic" => self.topic.to_string(), "kind" => kind.to_string())
        })
    }

    pub(crate) fn group(&self, group: &str) -> Arc<GroupHandles> {
        self.groups.get(group, || {
            let c = |name: &'static str| {
                counter!(name, "backend" => self.backend, "topic" => self.topic.to_string(),
                    "group" => group.to_string())
            };
            let handled = |outcome: &'static str| {
                counter!(names::EVENTS_HANDLED, "backend" => self.backend,
                    "topic" => self.topic.to_string(), "group" => group.to_string(),
                    "outcome" => outcome)
            };
            GroupHandles {
                delivered: c(names::EVENTS_DELIVERED),
                acked: handled("acked"),
                retried: handled("retried"),
                dead: handled("dead"),
                released: handled("released"),
                lease_lost: handled("lease_lost"),
            }
        })
    }
}

/// The handles of one consumer group.
pub(crate) struct GroupHandles {
    pub(crate) delivered: Counter,
    pub(crate) acked: Counter,
    pub(crate) retried: Counter,
    pub(crate) dead: Counter,
    pub(crate) released: Counter,
    pub(crate) lease_lost: Counter,
}

/// Pub/sub counters of one backend, per kind.
pub(crate) struct PubSubHandles {
    backend: &'static str,
    published: Cache<Counter>,
    received: Cache<Counter>,
    pub(crate) dropped: Counter,
}

impl PubSubHandles {
    pub(crate) fn new(backend: &'static str) -> Self {
        PubSubHandles {
            backend,
            published: Cache::default(),
            received: Cache::default(),
            dropped: counter!(names::PUBSUB_DROPPED, "backend" => backend),
        }
    }

    pub(crate) fn published(&self, kind: &str) -> Arc<Counter> {
        self.published.get(kind, || {
            counter!(names::PUBSUB_PUBLISHED, "backend" => self.backend, "kind" => kind.to_string())
        })
    }

    pub(crate) fn received(&self, kind: &str) -> Arc<Counter> {
        self.received.get(kind, || {
            counter!(names::PUBSUB_RECEIVED, "backend" => self.backend, "kind" => kind.to_string())
        })
    }
}

/// What a worker records: for a queue, or for one topic and group.
pub(crate) struct WorkerHandles {
    labels: Vec<(&'static str, String)>,
    event: bool,
    pub(crate) in_flight: Gauge,
    /// The worker's concurrency limit (fixed, or the adaptive limit now).
    pub(crate) concurrency_limit: Gauge,
    /// Queue wait per priority (queues only).
    pub(crate) wait: Option<[Histogram; 4]>,
    durations: Cache<KindDurations>,
}

/// The handler-duration histograms of one kind, indexed by [`HandlerOutcome`].
pub(crate) struct KindDurations {
    pub(crate) kind: Box<str>,
    pub(crate) by_outcome: [Histogram; 3],
}

/// A handler's outcome, as the `outcome` label of the handler duration.
#[derive(Clone, Copy)]
pub(crate) enum HandlerOutcome {
    Ok = 0,
    Retried = 1,
    Dead = 2,
}

impl WorkerHandles {
    pub(crate) fn queue(backend: &'static str, queue: &str) -> Self {
        let wait = per_priority(|p| {
            histogram!(names::QUEUE_WAIT, "backend" => backend, "queue" => queue.to_string(),
                "priority" => p)
        });
        WorkerHandles {
            labels: vec![
                ("backend", backend.to_string()),
                ("queue", queue.to_string()),
            ],
            event: false,
            in_flight: gauge!(names::WORKER_IN_FLIGHT, "backend" => backend, "queue" => queue.to_string()),
            concurrency_limit: gauge!(names::WORKER_CONCURRENCY_LIMIT, "backend" => backend,
                "queue" => queue.to_string()),
            wait: Some(wait),
            durations: Cache::default(),
        }
    }

    pub(crate) fn group(backend: &'static str, topic: &str, group: &str) -> Self {
        WorkerHandles {
            labels: vec![
                ("backend", backend.to_string()),
                ("topic", topic.to_string()),
                ("group", group.to_string()),
            ],
            event: true,
            in_flight: gauge!(names::EVENT_WORKER_IN_FLIGHT, "backend" => backend,
                "topic" => topic.to_string(), "group" => group.to_string()),
            concurrency_limit: gauge!(names::EVENT_WORKER_CONCURRENCY_LIMIT, "backend" => backend,
                "topic" => topic.to_string(), "group" => group.to_string()),
            wait: None,
            durations: Cache::default(),
        }
    }

    /// The handler-duration histograms of one kind.
    pub(crate) fn durations(&self, kind: &str) -> Arc<KindDurations> {
        self.durations.get(kind, || {
            let name = if self.event {
                names::EVENT_HANDLER_DURATION
            } else {
                names::HANDLER_DURATION
            };
            let by_outcome = ["ok", "retried", "dead"].map(|outcome| {
                let mut labels: Vec<metrics::Label> = self
                    .labels
                    .iter()
                    .map(|(k, v)| metrics::Label::new(*k, v.clone()))
                    .collect();
                labels.push(metrics::Label::new("kind", kind.to_string()));
                labels.push(metrics::Label::new("outcome", outcome));
                histogram!(name, labels)
            });
            KindDurations {
                kind: kind.into(),
                by_outcome,
            }
        })
    }
}
