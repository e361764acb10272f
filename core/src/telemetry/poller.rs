//! Queue depth and group lag as gauges, from a periodic stats poll.

use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram, gauge};
use tokio::task::JoinHandle;

use super::names;
use crate::courier::Courier;
use crate::error::Result;
use crate::message::Priority;

/// Register the unit and help text of every series with the installed recorder (an exporter
/// shows them as `# HELP` lines). Call it once, after installing the recorder.
///
/// # Examples
///
/// ```
/// courier::telemetry::describe(); // a no-op without a recorder
/// ```
pub fn describe() {
    use names::*;
    let counters: &[(&'static str, &'static str)] = &[
        (PUBLISHED, "Messages stored by a publish."),
        (
            DEDUPLICATED,
            "Publishes refused because the deduplication key was taken.",
        ),
        (DELIVERED, "Deliveries leased by a receive."),
        (ACKED, "Deliveries acknowledged."),
        (RETRIED, "Failed attempts scheduled for another try."),
        (
            DEAD_LETTERED,
            "Deliveries moved to dead letters after their last attempt.",
        ),
        (RELEASED, "Deliveries given back unhandled."),
        (
            LEASE_LOST,
            "Settles and extensions refused: the lease had expired.",
        ),
        (PUBSUB_PUBLISHED, "Pub/sub messages published."),
        (
            PUBSUB_RECEIVED,
            "Pub/sub messages received by a subscription.",
        ),
        (
            PUBSUB_DROPPED,
            "Pub/sub messages dropped by a full subscription buffer.",
        ),
        (EVENTS_EMITTED, "Events appended to a topic."),
        (EVENTS_DELIVERED, "Events leased to a consumer group."),
        (
            EVENTS_HANDLED,
            "Events settled by a consumer group, by outcome.",
        ),
    ];
    for (name, help) in counters {
        describe_counter!(*name, Unit::Count, *help);
    }
    let histograms: &[(&'static str, &'static str)] = &[
        (PUBLISH_DURATION, "Time one publish call took."),
        (
            QUEUE_WAIT,
            "From a first delivery's due time to its handler's start.",
        ),
        (
            HANDLER_DURATION,
            "How long a queue handler ran, by outcome.",
        ),
        (
            EVENT_HANDLER_DURATION,
            "How long an event handler ran, by outcome.",
        ),
    ];
    for (name, help) in histograms {
        describe_histogram!(*name, Unit::Seconds, *help);
    }
    let gauges: &[(&'static str, &'static str)] = &[
        (
            WORKER_IN_FLIGHT,
            "Queue handlers running now in this process.",
        ),
        (
            EVENT_WORKER_IN_FLIGHT,
            "Event handlers running now in this process.",
        ),
        (
            WORKER_CONCURRENCY_LIMIT,
            "Queue handlers a worker allows at once (fixed or adaptive).",
        ),
        (
            EVENT_WORKER_CONCURRENCY_LIMIT,
            "Event handlers a group consumer allows at once per topic (fixed or adaptive).",
        ),
        (QUEUE_READY, "Ready messages, per priority."),
        (
            QUEUE_DELAYED,
            "Messages waiting for a delay or a retry backoff.",
        ),
        (QUEUE_IN_FLIGHT, "Messages leased to a consumer."),
        (QUEUE_DEAD, "Dead letters stored."),
        (GROUP_LAG, "Events a consumer group has not yet received."),
        (GROUP_DEAD, "A consumer group's dead letters."),
    ];
    for (name, help) in gauges {
        describe_gauge!(*name, Unit::Count, *help);
    }
}

/// Poll every queue's stats and every consumer group's stats each `every`, and set the depth
/// gauges ([`names::QUEUE_READY`] per priority, [`names::QUEUE_DELAYED`],
/// [`names::QUEUE_IN_FLIGHT`], [`names::QUEUE_DEAD`], [`names::GROUP_LAG`],
/// [`names::GROUP_DEAD`]). Queues and topics are the ones the backend lists (Q13, E7), so one
/// poller per deployment is enough. A failed poll is logged once, with its recovery; the
/// poller keeps going until the task is aborted.
///
/// Needs a Tokio runtime.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier::Result<()> {
/// use std::time::Duration;
///
/// let courier = courier::connect("memory://").await?;
/// let poller = courier::telemetry::spawn_stats_poller(courier.clone(), Duration::from_secs(5));
/// poller.abort();
/// # Ok(())
/// # }
/// ```
pub fn spawn_stats_poller(courier: Courier, every: Duration) -> JoinHandle<()> {
    let every = every.max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            match poll_once(&courier).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(
                        backend = courier.backend_name(),
                        "courier stats poller: polling works again"
                    );
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(backend = courier.backend_name(), error = %format_args!("{e:#}"), "courier stats poller: poll failed; gauges keep their last values");
                }
                Err(_) => {}
            }
        }
    })
}

/// One poll: every listed queue and group.
pub(crate) async fn poll_once(courier: &Courier) -> Result<()> {
    let backend = courier.backend_name();
    for queue in courier.queue().list_queues().await? {
        let s = courier.queue().stats(&queue).await?;
        for p in Priority::ALL {
            gauge!(names::QUEUE_READY, "backend" => backend, "queue" => queue.clone(),
                "priority" => p.as_str())
            .set(s.ready[p.index()] as f64);
        }
        let labels = [("backend", backend.to_string()), ("queue", queue.clone())];
        gauge!(names::QUEUE_DELAYED, &labels).set(s.delayed as f64);
        gauge!(names::QUEUE_IN_FLIGHT, &labels).set(s.in_flight as f64);
        gauge!(names::QUEUE_DEAD, &labels).set(s.dead as f64);
    }
    for topic in courier.events().list_topics().await? {
        for group in courier.events().list_groups(&topic).await? {
            let s = courier.events().group_stats(&topic, &group).await?;
            let labels = [
                ("backend", backend.to_string()),
                ("topic", topic.clone()),
                ("group", group),
            ];
            gauge!(names::GROUP_LAG, &labels).set(s.lag as f64);
            gauge!(names::GROUP_DEAD, &labels).set(s.queue.dead as f64);
        }
    }
    Ok(())
}
