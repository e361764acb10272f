//! The names of every series Courier records, and their label keys.
//!
//! Counters end in `_total`, histograms in `_seconds` (an exporter adds `_bucket`, `_sum` and
//! `_count`), gauges have neither. Label values are bounded: queue, topic and group names,
//! message kinds, the four priorities, the backend's name and a few fixed outcomes; never a
//! message id, a channel name or anything from a payload.

/// Messages stored by a publish (duplicates not counted). Labels: backend, queue, priority, kind.
pub const PUBLISHED: &str = "courier_published_total";
/// Publishes that stored nothing because the deduplication key was taken. Labels: backend, queue.
pub const DEDUPLICATED: &str = "courier_deduplicated_total";
/// Time one publish call took (a batch counts once). Labels: backend, queue.
pub const PUBLISH_DURATION: &str = "courier_publish_duration_seconds";
/// Deliveries leased by a receive. Labels: backend, queue, priority, kind.
pub const DELIVERED: &str = "courier_delivered_total";
/// Deliveries acknowledged. Labels: backend, queue.
pub const ACKED: &str = "courier_acked_total";
/// Failed attempts scheduled for another try. Labels: backend, queue.
pub const RETRIED: &str = "courier_retried_total";
/// Deliveries moved to dead letters (or discarded) after their last attempt. Labels: backend, queue.
pub const DEAD_LETTERED: &str = "courier_dead_lettered_total";
/// Deliveries given back unhandled (graceful stop). Labels: backend, queue.
pub const RELEASED: &str = "courier_released_total";
/// Settles and extensions refused because the lease had expired or been taken. Labels:
/// backend, queue.
pub const LEASE_LOST: &str = "courier_lease_lost_total";
/// From a first delivery's due time (published, or its delay over) to its handler's start.
/// Labels: backend, queue, priority.
pub const QUEUE_WAIT: &str = "courier_queue_wait_seconds";
/// How long a handler ran. Labels: backend, queue, kind, outcome (`ok`, `retried`, `dead`).
pub const HANDLER_DURATION: &str = "courier_handler_duration_seconds";
/// Handlers running now in the workers of this process. Labels: backend, queue.
pub const WORKER_IN_FLIGHT: &str = "courier_worker_in_flight";
/// Handlers a worker allows to run at once: its fixed concurrency, or the current limit of
/// an adaptive worker. Labels: backend, queue.
pub const WORKER_CONCURRENCY_LIMIT: &str = "courier_worker_concurrency_limit";

/// Ready messages, per priority (stats poll). Labels: backend, queue, priority.
pub const QUEUE_READY: &str = "courier_queue_ready";
/// Messages waiting for a delay or a retry backoff (stats poll). Labels: backend, queue.
pub const QUEUE_DELAYED: &str = "courier_queue_delayed";
/// Messages leased to a consumer (stats poll). Labels: backend, queue.
pub const QUEUE_IN_FLIGHT: &str = "courier_queue_in_flight";
/// Dead letters stored (stats poll). Labels: backend, queue.
pub const QUEUE_DEAD: &str = "courier_queue_dead";

/// Pub/sub messages published. Labels: backend, kind.
pub const PUBSUB_PUBLISHED: &str = "courier_pubsub_published_total";
/// Pub/sub messages a subscription received. Labels: backend, kind.
pub const PUBSUB_RECEIVED: &str = "courier_pubsub_received_total";
/// Pub/sub messages a full subscription buffer dropped (a lagging subscriber). Labels: backend.
pub const PUBSUB_DROPPED: &str = "courier_pubsub_dropped_total";

/// Events appended to a topic. Labels: backend, topic, kind.
pub const EVENTS_EMITTED: &str = "courier_events_emitted_total";
/// Events leased to a consumer group. Labels: backend, topic, group.
pub const EVENTS_DELIVERED: &str = "courier_events_delivered_total";
/// Events a consumer group settled. Labels: backend, topic, group, outcome (`acked`,
/// `retried`, `dead`, `released`, `lease_lost`).
pub const EVENTS_HANDLED: &str = "courier_events_handled_total";
/// How long an event handler ran. Labels: backend, topic, group, kind, outcome.
pub const EVENT_HANDLER_DURATION: &str = "courier_event_handler_duration_seconds";
/// Event handlers running now in this process. Labels: backend, topic, group.
pub const EVENT_WORKER_IN_FLIGHT: &str = "courier_event_worker_in_flight";
/// Event handlers a group consumer allows to run at once per topic: its fixed concurrency, or
/// the current adaptive limit. Labels: backend, topic, group.
pub const EVENT_WORKER_CONCURRENCY_LIMIT: &str = "courier_event_worker_concurrency_limit";
/// Events a group has not yet received (stats poll). Labels: backend, topic, group.
pub const GROUP_LAG: &str = "courier_group_lag";
/// A group's dead letters (stats poll). Labels: backend, topic, group.
pub const GROUP_DEAD: &str = "courier_group_dead";

/// Every series above, for exporters, dashboards and the tests that check them.
pub const SERIES: &[&str] = &[
    PUBLISHED,
    DEDUPLICATED,
    PUBLISH_DURATION,
    DELIVERED,
    ACKED,
    RETRIED,
    DEAD_LETTERED,
    RELEASED,
    LEASE_LOST,
    QUEUE_WAIT,
    HANDLER_DURATION,
    WORKER_IN_FLIGHT,
    WORKER_CONCURRENCY_LIMIT,
    QUEUE_READY,
    QUEUE_DELAYED,
    QUEUE_IN_FLIGHT,
    QUEUE_DEAD,
    PUBSUB_PUBLISHED,
    PUBSUB_RECEIVED,
    PUBSUB_DROPPED,
    EVENTS_EMITTED,
    EVENTS_DELIVERED,
    EVENTS_HANDLED,
    EVENT_HANDLER_DURATION,
    EVENT_WORKER_IN_FLIGHT,
    EVENT_WORKER_CONCURRENCY_LIMIT,
    GROUP_LAG,
    GROUP_DEAD,
];
