//! The worker runtime (DESIGN §4), written once for every backend.
//!
//! A worker leases messages from a [`Source`] (a queue, or one topic of an event-bus group),
//! runs the handler bound to each message's kind with bounded concurrency and prefetch,
//! extends leases while handlers run, turns failures into retries or dead letters through the
//! queue's [`crate::RetryPolicy`], and stops gracefully.
//!
//! Handlers run as futures polled by the worker's own task (no spawn per message), so a fast
//! handler costs a few hundred nanoseconds of overhead. A handler doing heavy CPU work should
//! move it to `tokio::task::spawn_blocking`, or the worker can be built with
//! [`WorkerBuilder::spawn_handlers`].

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::event_bus::{EventBus, ReplayFrom};
use crate::handler::{BoxHandler, HandlerResult};
use crate::message::Message;
use crate::policy::{FailureAction, FailureMode, QueueConfig};
use crate::queue::{Delivery, Lease, Queue, Settle};
use crate::telemetry::handles::{HandlerOutcome, KindDurations, WorkerHandles};
use crate::telemetry::propagation;

pub mod adaptive;

use adaptive::{Decision, Limiter, Window};

/// Where a worker leases messages from: a queue, or a topic read by a consumer group.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// A short description for logs (`"queue tasks"`, `"topic t / group g"`).
    fn describe(&self) -> String;
    /// Check what the source reads (its queue, topic or group names) before a worker starts
    /// on it, so that bad input is refused at `start` instead of failing every receive.
    /// The default accepts everything.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] naming what is wrong.
    fn check(&self) -> Result<()> {
        Ok(())
    }
    /// What this source reads, as the labels of the worker's metrics and the fields of its
    /// spans ([`crate::telemetry`]). The default, `None`, records neither.
    fn labels(&self) -> Option<SourceLabels> {
        None
    }
    /// The failure rules in force.
    fn config(&self) -> QueueConfig;
    /// "Now" on the backend's clock (ms since the epoch), to judge lease deadlines.
    fn now_ms(&self) -> u64;
    /// Lease up to `max`, waiting up to `wait`.
    ///
    /// # Errors
    /// As [`Queue::receive`] ([`QueueSource`]) or [`EventBus::receive`] ([`GroupSource`]).
    ///
    /// # Cancel safety
    /// As [`Queue::receive`]: dropping the future never loses a message.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>>;
    /// Settle deliveries.
    ///
    /// # Errors
    /// As [`Queue::settle`] or [`EventBus::settle`]: an outer backend failure, or per operation
    /// [`crate::ErrorKind::LeaseLost`] when that lease is no longer held.
    ///
    /// # Cancel safety
    /// As [`Queue::settle`]: it may or may not have been applied; settling again is safe.
    async fn settle(&self, ops: Vec<Settle>) -> Result<Vec<Result<()>>>;
    /// Extend a lease.
    ///
    /// # Errors
    /// As [`Queue::extend`] or [`EventBus::extend`]: [`crate::ErrorKind::LeaseLost`] when the
    /// lease is no longer held, or a backend failure.
    ///
    /// # Cancel safety
    /// As [`Queue::extend`]: the deadline may or may not have moved.
    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<Lease>;
}

/// What a [`Source`] reads, naming the worker's metrics and spans.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceLabels {
    /// A queue.
    Queue {
        /// The backend's name.
        backend: &'static str,
        /// The queue.
        queue: String,
    },
    /// A topic read by a consumer group.
    Group {
        /// The backend's name.
        backend: &'static str,
        /// The topic.
        topic: String,
        /// The group.
        group: String,
    },
}

/// A named queue as a [`Source`].
pub struct QueueSource {
    queue: Arc<dyn Queue>,
    name: String,
}

impl QueueSource {
    /// Read `name` from `queue`.
    pub fn new(queue: Arc<dyn Queue>, name: impl Into<String>) -> Self {
        QueueSource {
            queue,
            name: name.into(),
        }
    }
}

#[async_trait]
impl Source for QueueSource {
    fn describe(&self) -> String {
        format!("queue {}", self.name)
    }
    fn check(&self) -> Result<()> {
        crate::names::validate_name("queue", &self.name).map_err(|e| {
            e.with_backend(self.queue.backend_name())
                .with_operation("start")
        })
    }
    fn labels(&self) -> Option<SourceLabels> {
        Some(SourceLabels::Queue {
            backend: self.queue.backend_name(),
            queue: self.name.clone(),
        })
    }
    fn config(&self) -> QueueConfig {
        self.queue.queue_config(&self.name)
    }
    fn now_ms(&self) -> u64 {
        self.queue.clock().now_ms()
    }
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.queue.receive(&self.name, max, wait).await
    }
    async fn settle(&self, ops: Vec<Settle>) -> Result<Vec<Result<()>>> {
        self.queue.settle(&self.name, ops).await
    }
    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<Lease> {
        self.queue.extend(&self.name, lease, visibility).await
    }
}

/// One topic read by one consumer group, as a [`Source`].
pub struct GroupSource {
    bus: Arc<dyn EventBus>,
    topic: String,
    group: String,
}

impl GroupSource {
    /// Read `topic` as `group`.
    pub fn new(bus: Arc<dyn EventBus>, topic: impl Into<String>, group: impl Into<String>) -> Self {
        GroupSource {
            bus,
            topic: topic.into(),
            group: group.into(),
        }
    }
}

#[async_trait]
impl Source for GroupSource {
    fn describe(&self) -> String {
        format!("topic {} / group {}", self.topic, self.group)
    }
    fn check(&self) -> Result<()> {
        crate::names::validate_name("topic", &self.topic)
            .and_then(|()| crate::names::validate_name("group", &self.group))
            .map_err(|e| {
                e.with_backend(self.bus.backend_name())
                    .with_operation("start")
            })
    }
    fn labels(&self) -> Option<SourceLabels> {
        Some(SourceLabels::Group {
            backend: self.bus.backend_name(),
            topic: self.topic.clone(),
            group: self.group.clone(),
        })
    }
    fn config(&self) -> QueueConfig {
        self.bus.group_config(&self.topic, &self.group)
    }
    fn now_ms(&self) -> u64 {
        self.bus.clock().now_ms()
    }
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.bus.receive(&self.topic, &self.group, max, wait).await
    }
    async fn settle(&self, ops: Vec<Settle>) -> Result<Vec<Result<()>>> {
        self.bus.settle(&self.topic, &self.group, ops).await
    }
    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<Lease> {
        self.bus
            .extend(&self.topic, &self.group, lease, visibility)
            .await
    }
}

/// Counters of a running worker (all handles and drivers of one worker share them).
#[derive(Debug, Default)]
pub struct WorkerCounters {
    received: AtomicU64,
    succeeded: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    panicked: AtomicU64,
    timed_out: AtomicU64,
    released: AtomicU64,
    lease_lost: AtomicU64,
    in_progress: AtomicU64,
    max_in_progress: AtomicU64,
    concurrency_limit: AtomicU64,
    limit_raised: AtomicU64,
    limit_lowered: AtomicU64,
}

/// A snapshot of [`WorkerCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Deliveries received.
    pub received: u64,
    /// Handlers that succeeded (and were acked).
    pub succeeded: u64,
    /// Failures scheduled for another attempt.
    pub retried: u64,
    /// Failures sent to dead letters (out of attempts, permanent, unknown kind).
    pub dead: u64,
    /// Handlers that panicked (also counted as retried or dead).
    pub panicked: u64,
    /// Handlers cancelled at their timeout (also counted as retried or dead).
    pub timed_out: u64,
    /// Deliveries given back unhandled at stop.
    pub released: u64,
    /// Settle or extend calls refused because the lease was gone.
    pub lease_lost: u64,
    /// Handlers running now.
    pub in_progress: u64,
    /// The most handlers seen running at once.
    pub max_in_progress: u64,
    /// Handlers allowed to run at once now: the fixed concurrency, or the current limit of an
    /// adaptive worker ([`WorkerBuilder::adaptive_concurrency`]). Summed over a group
    /// consumer's topics (one driver, and one limit, per topic).
    pub concurrency_limit: u64,
    /// Times an adaptive worker raised its limit (0 for a fixed one).
    pub limit_raised: u64,
    /// Times an adaptive worker lowered its limit (0 for a fixed one).
    pub limit_lowered: u64,
}

impl WorkerCounters {
    fn snapshot(&self) -> WorkerStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WorkerStats {
            received: l(&self.received),
            succeeded: l(&self.succeeded),
            retried: l(&self.retried),
            dead: l(&self.dead),
            panicked: l(&self.panicked),
            timed_out: l(&self.timed_out),
            released: l(&self.released),
            lease_lost: l(&self.lease_lost),
            in_progress: l(&self.in_progress),
            max_in_progress: l(&self.max_in_progress),
            concurrency_limit: l(&self.concurrency_limit),
            limit_raised: l(&self.limit_raised),
            limit_lowered: l(&self.limit_lowered),
        }
    }
}

/// What a stopped worker reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Final counters.
    pub stats: WorkerStats,
    /// Handlers still running when the grace period ended; their messages were released.
    pub abandoned: u64,
}

/// Builds a [`Worker`].
pub struct WorkerBuilder {
    sources: Vec<(Arc<dyn Source>, Option<BoxHandler>)>,
    handlers: HashMap<String, BoxHandler>,
    fallback: Option<BoxHandler>,
    concurrency: usize,
    adaptive: Option<(usize, usize)>,
    prefetch: Option<usize>,
    idle_wait: Duration,
    spawn_handlers: bool,
}

/// Entry point of the worker runtime: `Worker::builder(queue, "tasks")`.
pub struct Worker;

impl Worker {
    /// A worker for queue `queue_name`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt, Worker};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.queue().publish("mail", Message::new("welcome", "ann")).await?;
    /// let worker = Worker::builder(courier.queue().clone(), "mail")
    ///     .handler("welcome", |_m: Message| async { Ok(()) })
    ///     .start()?;
    /// # tokio::time::timeout(Duration::from_secs(5), async {
    /// #     while worker.stats().succeeded < 1 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("handled");
    /// let report = worker.stop(Duration::from_secs(1)).await;
    /// assert_eq!(report.stats.succeeded, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(queue: Arc<dyn Queue>, queue_name: &str) -> WorkerBuilder {
        WorkerBuilder::from_source(Arc::new(QueueSource::new(queue, queue_name)))
    }
}

impl WorkerBuilder {
    /// A worker over any [`Source`].
    ///
    /// # Examples
    ///
    /// [`Worker::builder`] is this over a [`QueueSource`]; a [`GroupSource`] reads a consumer group.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::backend::QueueSource;
    /// use courier::{Message, QueueExt, WorkerBuilder};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.queue().publish("mail", Message::new("welcome", "")).await?;
    /// let source = Arc::new(QueueSource::new(courier.queue().clone(), "mail"));
    /// let worker = WorkerBuilder::from_source(source).handler("welcome", |_m| async { Ok(()) }).start()?;
    /// # tokio::time::timeout(Duration::from_secs(5), async {
    /// #     while worker.stats().succeeded < 1 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("handled");
    /// assert_eq!(worker.stop(Duration::from_secs(1)).await.stats.succeeded, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_source(source: Arc<dyn Source>) -> Self {
        WorkerBuilder {
            sources: vec![(source, None)],
            handlers: HashMap::new(),
            fallback: None,
            concurrency: 8,
            adaptive: None,
            prefetch: None,
            idle_wait: Duration::from_secs(1),
            spawn_handlers: false,
        }
    }

    /// A worker over several sources, each with its own handler for every kind (used by
    /// [`GroupConsumer`]: one handler per topic). Drivers share counters and the stop signal.
    pub(crate) fn from_sources(sources: Vec<(Arc<dyn Source>, Option<BoxHandler>)>) -> Self {
        let mut b = Self::from_source(Arc::new(NoSource));
        b.sources = sources;
        b
    }

    /// Handlers running at once, at most (default 8, at least 1).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// for i in 0..6 {
    ///     courier.queue().publish("thumbs", Message::new("thumb", format!("{i}"))).await?;
    /// }
    /// let worker = courier
    ///     .worker("thumbs")
    ///     .concurrency(3)
    ///     .handler("thumb", |_m| async {
    ///         tokio::time::sleep(Duration::from_millis(20)).await;
    ///         Ok(())
    ///     })
    ///     .start()?;
    /// # tokio::time::timeout(Duration::from_secs(5), async {
    /// #     while worker.stats().succeeded < 6 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("handled");
    /// let report = worker.stop(Duration::from_secs(1)).await;
    /// assert!(report.stats.max_in_progress <= 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self.adaptive = None;
        self
    }

    /// Let the worker choose how many handlers run at once, between `min` and `max`, from how
    /// its handlers behave (instead of a fixed [`WorkerBuilder::concurrency`]; the last of the
    /// two calls wins). Fixed concurrency stays the default.
    ///
    /// The limit starts at `min`. It grows while handlers are fast and the source has work
    /// waiting, and shrinks when handler latency or the failure ratio rises. The rule is AIMD
    /// on latency ([`adaptive`] has it in full), over windows of `max(limit, 8)` completed
    /// handlers:
    ///
    /// - a window whose failure ratio (errors, panics, timeouts) is more than 0.1 above the
    ///   smoothed ratio of past windows (weight 0.1) multiplies the limit by 0.9;
    /// - a window whose mean latency (of the handlers that succeeded) is above
    ///   `2 × baseline + 1 ms` multiplies the limit by 0.9, where the baseline is the best
    ///   window mean seen (at `min` already, the baseline is re-learnt from the window
    ///   instead: the handler got slower for a reason fewer handlers cannot fix);
    /// - otherwise a window in which every slot was busy while deliveries were waiting adds 1.
    ///
    /// The limit never leaves `[min, max]`, rounds down when it falls, and falls by at least
    /// one. Without a `prefetch`, the worker leases up to the current limit ahead of free
    /// slots. [`WorkerStats::concurrency_limit`], [`WorkerStats::limit_raised`] and
    /// [`WorkerStats::limit_lowered`] show the decisions, as does the gauge
    /// `courier_worker_concurrency_limit` ([`crate::telemetry`]); each change is logged at
    /// debug level, with an info line at most every 5 s.
    ///
    /// # Errors
    /// Nothing here: [`WorkerBuilder::start`] refuses `min` 0 or `min > max` with
    /// [`crate::ErrorKind::InvalidInput`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{ErrorKind, Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let batch = (0..200).map(|i| Message::new("resize", format!("{i}"))).collect();
    /// courier.queue().publish_batch("images", batch).await?;
    /// let worker = courier
    ///     .worker("images")
    ///     .adaptive_concurrency(1, 16)
    ///     .handler("resize", |_m: Message| async {
    ///         tokio::time::sleep(Duration::from_millis(2)).await;
    ///         Ok(())
    ///     })
    ///     .start()?;
    /// # tokio::time::timeout(Duration::from_secs(30), async {
    /// #     while worker.stats().succeeded < 200 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("handled");
    /// let stats = worker.stop(Duration::from_secs(1)).await.stats;
    /// assert!((1..=16).contains(&stats.concurrency_limit));
    /// assert!(stats.max_in_progress <= 16);
    /// println!("limit {} (raised {}, lowered {})", stats.concurrency_limit, stats.limit_raised, stats.limit_lowered);
    ///
    /// // Bounds that leave no room are refused at start.
    /// let refused = courier.worker("images").adaptive_concurrency(4, 2)
    ///     .handler("resize", |_m: Message| async { Ok(()) })
    ///     .start();
    /// assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::InvalidInput));
    /// # Ok(())
    /// # }
    /// ```
    pub fn adaptive_concurrency(mut self, min: usize, max: usize) -> Self {
        self.adaptive = Some((min, max));
        self
    }

    /// Messages leased ahead of free handler slots (default: equal to `concurrency`).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// // One handler at a time, and nothing leased ahead of it: other workers get the rest.
    /// let worker = courier
    ///     .worker("heavy")
    ///     .concurrency(1)
    ///     .prefetch(0)
    ///     .handler("render", |_m: Message| async { Ok(()) })
    ///     .start()?;
    /// assert_eq!(worker.stats().received, 0);
    /// worker.stop(Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// How long one receive waits on the backend when idle (default 1 s). Waiting happens in
    /// the backend (blocking pop, notification), never by spinning.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let worker = courier
    ///     .worker("mail")
    ///     .idle_wait(Duration::from_millis(200))
    ///     .handler("welcome", |_m: Message| async { Ok(()) })
    ///     .start()?;
    /// let report = worker.stop(Duration::from_secs(1)).await;
    /// assert_eq!(report.stats.received, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn idle_wait(mut self, d: Duration) -> Self {
        self.idle_wait = d;
        self
    }

    /// Run each handler on its own tokio task (spreads CPU-heavy handlers across cores, at the
    /// cost of a spawn per message). Default `false`: handlers are polled by the worker task.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.queue().publish("cpu", Message::new("hash", "data")).await?;
    /// let worker = courier
    ///     .worker("cpu")
    ///     .spawn_handlers(true)
    ///     .handler("hash", |m: Message| async move {
    ///         let sum: u64 = m.payload.iter().map(|&b| u64::from(b)).sum();
    ///         assert!(sum > 0);
    ///         Ok(())
    ///     })
    ///     .start()?;
    /// # tokio::time::timeout(Duration::from_secs(5), async {
    /// #     while worker.stats().succeeded < 1 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("handled");
    /// assert_eq!(worker.stop(Duration::from_secs(1)).await.stats.succeeded, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn_handlers(mut self, yes: bool) -> Self {
        self.spawn_handlers = yes;
        self
    }

    /// Bind a handler to a message kind.
    ///
    /// # Examples
    ///
    /// A handler's error decides what happens next:
    /// [`HandlerError::retry`](crate::HandlerError::retry) retries with the queue's backoff,
    /// [`HandlerError::permanent`](crate::HandlerError::permanent) (or a decode error through
    /// `?`) dead-letters at once.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{HandlerError, Message, QueueConfig, QueueExt, RetryPolicy};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.configure("ai", QueueConfig::default().with_retry(RetryPolicy::exact(
    ///     5, Duration::from_millis(10), 2.0, Duration::from_millis(50))))?;
    /// q.publish("ai", Message::new("caption", "")).await?;
    /// q.publish("ai", Message::new("caption", "bad input")).await?;
    /// let worker = courier
    ///     .worker("ai")
    ///     .handler("caption", |m: Message| async move {
    ///         if m.payload.is_empty() && m.attempt < 2 {
    ///             return Err(HandlerError::retry("model warming up"));
    ///         }
    ///         if !m.payload.is_empty() {
    ///             return Err(HandlerError::permanent("cannot caption this"));
    ///         }
    ///         Ok(())
    ///     })
    ///     .start()?;
    /// # tokio::time::timeout(Duration::from_secs(5), async {
    /// #     while worker.stats().succeeded + worker.stats().dead < 2 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("settled");
    /// let report = worker.stop(Duration::from_secs(1)).await;
    /// assert_eq!((report.stats.succeeded, report.stats.retried, report.stats.dead), (1, 1, 1));
    /// # Ok(())
    /// # }
    /// ```
    pub fn handler<F, Fut>(mut self, kind: &str, f: F) -> Self
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
    {
        self.handlers
            .insert(kind.to_string(), crate::handler::boxed(f));
        self
    }

    /// Bind an already boxed handler to a kind.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt, handler};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.queue().publish("mail", Message::new("welcome", "")).await?;
    /// // One handler value shared by two kinds.
    /// let h = handler::boxed(|_m: Message| async { Ok(()) });
    /// let worker = courier.worker("mail").boxed_handler("welcome", h.clone()).boxed_handler("goodbye", h).start()?;
    /// # tokio::time::timeout(Duration::from_secs(5), async {
    /// #     while worker.stats().succeeded < 1 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("handled");
    /// assert_eq!(worker.stop(Duration::from_secs(1)).await.stats.succeeded, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn boxed_handler(mut self, kind: &str, h: BoxHandler) -> Self {
        self.handlers.insert(kind.to_string(), h);
        self
    }

    /// Bind a handler that decodes the JSON payload into `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Resize { file: String, width: u32 }
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.queue().publish_json("images", "resize", &Resize { file: "a.jpg".into(), width: 320 }).await?;
    /// // A payload that is not a `Resize` fails permanently: no retry can fix it.
    /// courier.queue().publish("images", Message::new("resize", "not json")).await?;
    /// let worker = courier
    ///     .worker("images")
    ///     .json_handler("resize", |job: Resize, _m: Message| async move {
    ///         assert_eq!((job.file.as_str(), job.width), ("a.jpg", 320));
    ///         Ok(())
    ///     })
    ///     .start()?;
    /// # tokio::time::timeout(Duration::from_secs(5), async {
    /// #     while worker.stats().succeeded + worker.stats().dead < 2 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("settled");
    /// let report = worker.stop(Duration::from_secs(1)).await;
    /// assert_eq!((report.stats.succeeded, report.stats.dead), (1, 1));
    /// # Ok(())
    /// # }
    /// ```
    pub fn json_handler<T, F, Fut>(self, kind: &str, f: F) -> Self
    where
        T: serde::de::DeserializeOwned + Send + 'static,
        F: Fn(T, Message) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
    {
        self.boxed_handler(kind, crate::handler::json(f))
    }

    /// A handler for every kind without its own handler. Without one, an unknown kind fails
    /// permanently with a reason naming the kind.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt, handler};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.queue().publish("misc", Message::new("something_new", "")).await?;
    /// let worker = courier
    ///     .worker("misc")
    ///     .fallback(handler::boxed(|m: Message| async move {
    ///         assert_eq!(m.kind, "something_new");
    ///         Ok(())
    ///     }))
    ///     .start()?;
    /// # tokio::time::timeout(Duration::from_secs(5), async {
    /// #     while worker.stats().succeeded < 1 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("handled");
    /// assert_eq!(worker.stop(Duration::from_secs(1)).await.stats.succeeded, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn fallback(mut self, h: BoxHandler) -> Self {
        self.fallback = Some(h);
        self
    }

    /// Start the worker on the current tokio runtime.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] (the kind a publish to that name returns) when the
    /// queue name is invalid ([`Source::check`]), when no handler is bound, or when the bounds
    /// of [`WorkerBuilder::adaptive_concurrency`] are invalid (`min` 0, or `min > max`).
    /// Nothing is started.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{ErrorKind, Message};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let worker = courier.worker("mail").handler("welcome", |_m: Message| async { Ok(()) }).start()?;
    /// assert!(!worker.is_finished());
    /// worker.stop(Duration::from_secs(1)).await;
    /// // No handler, or a bad queue name: refused, nothing started.
    /// assert_eq!(courier.worker("mail").start().err().map(|e| e.kind()), Some(ErrorKind::InvalidInput));
    /// assert!(courier.worker("bad name").handler("k", |_m: Message| async { Ok(()) }).start().is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(self) -> Result<WorkerHandle> {
        for (source, _) in &self.sources {
            source.check()?;
        }
        let per_source = self.sources.iter().all(|(_, h)| h.is_some());
        if self.handlers.is_empty() && self.fallback.is_none() && !per_source {
            return Err(Error::invalid("a worker needs at least one handler"));
        }
        let limiter = match self.adaptive {
            Some((min, max)) => Some(Limiter::new(min, max)?),
            None => None,
        };
        let first_limit = limiter.as_ref().map_or(self.concurrency, Limiter::limit);
        let (stop_tx, stop_rx) = watch::channel(None);
        let counters = Arc::new(WorkerCounters::default());
        counters
            .concurrency_limit
            .store((first_limit * self.sources.len()) as u64, Ordering::Relaxed);
        let by_kind = Arc::new(self.handlers);
        let tasks = self
            .sources
            .into_iter()
            .map(|(source, source_handler)| {
                let telemetry = source.labels().map(|labels| {
                    let handles = match &labels {
                        SourceLabels::Queue { backend, queue } => {
                            WorkerHandles::queue(backend, queue)
                        }
                        SourceLabels::Group {
                            backend,
                            topic,
                            group,
                        } => WorkerHandles::group(backend, topic, group),
                    };
                    Telemetry {
                        labels,
                        handles,
                        timed: crate::telemetry::recorder_installed(),
                    }
                });
                let driver = Driver {
                    telemetry,
                    source,
                    table: HandlerTable {
                        by_kind: by_kind.clone(),
                        fallback: source_handler.or_else(|| self.fallback.clone()),
                    },
                    counters: counters.clone(),
                    concurrency: self.concurrency,
                    limiter: limiter.clone(),
                    prefetch: self.prefetch,
                    idle_wait: self.idle_wait,
                    spawn_handlers: self.spawn_handlers,
                    stop: stop_rx.clone(),
                };
                tokio::spawn(driver.run())
            })
            .collect();
        Ok(WorkerHandle {
            stop_tx,
            tasks,
            counters,
        })
    }
}

struct NoSource;

#[async_trait]
impl Source for NoSource {
    fn describe(&self) -> String {
        "nothing".into()
    }
    fn config(&self) -> QueueConfig {
        QueueConfig::default()
    }
    fn now_ms(&self) -> u64 {
        0
    }
    async fn receive(&self, _: usize, _: Duration) -> Result<Vec<Delivery>> {
        Ok(Vec::new())
    }
    async fn settle(&self, ops: Vec<Settle>) -> Result<Vec<Result<()>>> {
        Ok(ops.iter().map(|_| Ok(())).collect())
    }
    async fn extend(&self, lease: &Lease, _: Duration) -> Result<Lease> {
        Ok(*lease)
    }
}

/// A running worker. Stop it with [`WorkerHandle::stop`]; dropping the handle stops it too
/// (with no grace period: running handlers are abandoned and their messages released).
pub struct WorkerHandle {
    stop_tx: watch::Sender<Option<Duration>>,
    tasks: Vec<JoinHandle<u64>>,
    counters: Arc<WorkerCounters>,
}

impl WorkerHandle {
    /// Current counters.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.queue().publish("mail", Message::new("welcome", "")).await?;
    /// let worker = courier.worker("mail").handler("welcome", |_m: Message| async { Ok(()) }).start()?;
    /// tokio::time::timeout(Duration::from_secs(5), async {
    ///     while worker.stats().succeeded < 1 {
    ///         tokio::time::sleep(Duration::from_millis(5)).await;
    ///     }
    /// })
    /// .await
    /// .expect("handled in time");
    /// assert_eq!(worker.stats().received, 1);
    /// # worker.stop(Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats(&self) -> WorkerStats {
        self.counters.snapshot()
    }

    /// Stop receiving, let running handlers finish within `grace`, release everything else at
    /// once (nothing waits for a lease to expire), and report.
    ///
    /// # Errors
    /// None: it always returns a report. Trouble while stopping is logged instead: a driver
    /// task that panicked (the shared counters are still reported), or settles and releases
    /// the backend could not take, even after retrying while it was unavailable (those
    /// messages come back when their leases end, counting an attempt).
    ///
    /// # Cancel safety
    /// Dropping the future does not cancel the stop. Dropped before its first poll, it is the
    /// same as dropping the handle: the worker stops with no grace period (running handlers are
    /// abandoned and their messages released). Dropped later, the worker goes on stopping in
    /// the background with the given grace; only the report is lost.
    ///
    /// # Examples
    ///
    /// Graceful shutdown: a handler still running after the grace period is abandoned and its
    /// message released for another worker (W).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.queue().publish("slow", Message::new("render", "")).await?;
    /// let worker = courier
    ///     .worker("slow")
    ///     .handler("render", |_m: Message| async {
    ///         tokio::time::sleep(Duration::from_secs(60)).await;
    ///         Ok(())
    ///     })
    ///     .start()?;
    /// # tokio::time::timeout(Duration::from_secs(5), async {
    /// #     while worker.stats().in_progress < 1 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("started");
    /// let report = worker.stop(Duration::from_millis(50)).await;
    /// assert_eq!(report.abandoned, 1);
    /// // Released at once: ready again, not waiting for the lease to end.
    /// assert_eq!(courier.queue().stats("slow").await?.ready_total(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn stop(mut self, grace: Duration) -> WorkerReport {
        let _ = self.stop_tx.send(Some(grace));
        let mut abandoned = 0;
        for t in std::mem::take(&mut self.tasks) {
            match t.await {
                Ok(n) => abandoned += n,
                Err(e) => {
                    tracing::error!(error = %format_args!("{e:#}"), "courier worker task failed")
                }
            }
        }
        WorkerReport {
            stats: self.counters.snapshot(),
            abandoned,
        }
    }

    /// Whether every driver task has ended.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let worker = courier.worker("mail").handler("welcome", |_m: Message| async { Ok(()) }).start()?;
    /// assert!(!worker.is_finished(), "running until stopped");
    /// worker.stop(Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_finished(&self) -> bool {
        self.tasks.iter().all(|t| t.is_finished())
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        if !self.tasks.is_empty() {
            let _ = self.stop_tx.send(Some(Duration::ZERO));
        }
    }
}

struct HandlerTable {
    by_kind: Arc<HashMap<String, BoxHandler>>,
    fallback: Option<BoxHandler>,
}

enum Outcome {
    Done(HandlerResult),
    Panicked(String),
    /// Cancelled at its timeout.
    TimedOut(Duration),
}

struct Finished {
    slot: usize,
    outcome: Outcome,
}

/// What a driver records for its source.
struct Telemetry {
    labels: SourceLabels,
    handles: WorkerHandles,
    /// Whether a metrics recorder was installed when the worker started: without one, the
    /// handler timings (two clock reads per message) would be thrown away.
    timed: bool,
}

/// What the driver loop keeps for its handler timings.
#[derive(Default)]
struct Clock {
    /// The start time of the next handler: when the previous one ended, or when this pass of
    /// the loop began. One clock read per handler instead of two.
    mark: Option<Instant>,
    /// The last kind's histograms: runs of messages share a kind, and comparing the name is
    /// cheaper than the handle cache's hash and lock.
    last: Option<Arc<KindDurations>>,
}

/// When a handler started, and where its duration goes.
struct Timing {
    started: Instant,
    durations: Arc<KindDurations>,
}

struct Driver {
    telemetry: Option<Telemetry>,
    source: Arc<dyn Source>,
    table: HandlerTable,
    counters: Arc<WorkerCounters>,
    /// The fixed concurrency, without a limiter.
    concurrency: usize,
    /// The adaptive limit's rule and state, when adaptive.
    limiter: Option<Limiter>,
    /// Leased ahead of free slots; `None`: as many as the current limit.
    prefetch: Option<usize>,
    idle_wait: Duration,
    spawn_handlers: bool,
    stop: watch::Receiver<Option<Duration>>,
}

/// A running handler's lease, its message's own attempt limit, and its timing.
type Running = (Lease, Option<u32>, Option<Timing>);

/// Leases of running handlers, indexed by slot (O(1) without hashing), and the adaptive
/// limit's measurements when there is one.
#[derive(Default)]
struct Slots {
    leases: Vec<Option<Running>>,
    free: Vec<usize>,
    adaptive: Option<Adaptive>,
}

impl Slots {
    fn insert(&mut self, lease: Lease, max_override: Option<u32>, timing: Option<Timing>) -> usize {
        let i = match self.free.pop() {
            Some(i) => {
                self.leases[i] = Some((lease, max_override, timing));
                i
            }
            None => {
                self.leases.push(Some((lease, max_override, timing)));
                self.leases.len() - 1
            }
        };
        if let Some(a) = &mut self.adaptive {
            a.started(i);
        }
        i
    }
    fn remove(&mut self, i: usize) -> Option<Running> {
        let v = self.leases.get_mut(i).and_then(Option::take);
        if v.is_some() {
            self.free.push(i);
        }
        v
    }
}

/// An adaptive limit: its rule ([`Limiter`]) and the window it is measuring.
struct Adaptive {
    limiter: Limiter,
    /// When the handler in each slot started.
    started: Vec<Option<Instant>>,
    completions: u32,
    failures: u32,
    succeeded: u32,
    /// Latency of the handlers that succeeded, summed, in microseconds.
    latency_us: f64,
    saturated: bool,
    backlog: bool,
    /// Decisions since this driver started, for the log.
    raised: u64,
    lowered: u64,
    /// When the last info line about the limit was logged.
    logged_at: Option<Instant>,
}

impl Adaptive {
    fn new(limiter: Limiter) -> Self {
        Adaptive {
            limiter,
            started: Vec::new(),
            completions: 0,
            failures: 0,
            succeeded: 0,
            latency_us: 0.0,
            saturated: false,
            backlog: false,
            raised: 0,
            lowered: 0,
            logged_at: None,
        }
    }

    fn started(&mut self, slot: usize) {
        if self.started.len() <= slot {
            self.started.resize(slot + 1, None);
        }
        self.started[slot] = Some(Instant::now());
    }

    /// A handler ended (`ok`: it succeeded).
    fn completed(&mut self, slot: usize, ok: bool) {
        let Some(started) = self.started.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.completions += 1;
        if ok {
            self.succeeded += 1;
            self.latency_us += started.elapsed().as_secs_f64() * 1e6;
        } else {
            self.failures += 1;
        }
    }

    /// The window, once it has its completions; the next one starts empty.
    fn take_window(&mut self) -> Option<Window> {
        if self.completions < self.limiter.window_size() {
            return None;
        }
        let w = Window {
            completions: self.completions,
            failures: self.failures,
            mean_latency_us: (self.succeeded > 0)
                .then(|| self.latency_us / f64::from(self.succeeded)),
            saturated: self.saturated,
            backlog: self.backlog,
        };
        self.completions = 0;
        self.failures = 0;
        self.succeeded = 0;
        self.latency_us = 0.0;
        self.saturated = false;
        self.backlog = false;
        Some(w)
    }
}

/// How often, at most, a driver logs its adaptive limit at info level.
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(5);

fn outcome_of(r: std::thread::Result<HandlerResult>) -> Outcome {
    match r {
        Ok(r) => Outcome::Done(r),
        Err(p) => Outcome::Panicked(panic_text(p.as_ref())),
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

impl Driver {
    /// The driver loop. Returns how many handlers were abandoned at stop.
    async fn run(mut self) -> u64 {
        let mut config = self.source.config();
        let mut rng = SmallRng::from_rng(&mut rand::rng());
        let mut buffer: VecDeque<Delivery> = VecDeque::new();
        let mut slots = Slots {
            adaptive: self.limiter.take().map(Adaptive::new),
            ..Slots::default()
        };
        let mut clock = Clock::default();
        let mut running: FuturesUnordered<BoxFuture<'static, Finished>> = FuturesUnordered::new();
        let mut pending: Vec<Settle> = Vec::new();
        // Settles in flight: the next receive does not wait for the last batch's acks, so the
        // backend works on one while the worker handles the other.
        let mut settling: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
        let mut recv: Option<BoxFuture<'static, Result<Vec<Delivery>>>> = None;
        // How many the receive in flight asked for: a full answer means more is waiting.
        let mut recv_room = 0usize;
        let mut recv_errors: u32 = 0;
        let mut retry_receive_at: Option<Instant> = None;
        let mut stop_deadline: Option<Instant> = None;
        let mut abandoned = 0u64;
        let mut tick = tokio::time::interval(extend_interval(&config));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        let adaptive = slots
            .adaptive
            .as_ref()
            .map(|a| format!("{}..={}", a.limiter.min(), a.limiter.max()));
        tracing::info!(
            backend = self.backend(),
            source = %self.source.describe(),
            concurrency = self.limit(&slots),
            adaptive = adaptive.as_deref().unwrap_or("no"),
            prefetch = self.prefetch.unwrap_or(self.limit(&slots)),
            "courier worker: started"
        );
        self.limit_gauge(self.limit(&slots));

        loop {
            // Start handlers while there is room.
            let mut now_ms = None;
            clock.mark = None;
            let limit = self.limit(&slots);
            while running.len() < limit {
                let Some(d) = buffer.pop_front() else { break };
                self.record_wait(&d, &mut now_ms);
                if let Some(done) = self.start(
                    d,
                    &mut slots,
                    &mut running,
                    &mut pending,
                    &config,
                    &mut clock,
                ) {
                    self.finish(
                        done,
                        &mut slots,
                        &mut pending,
                        &config,
                        &mut rng,
                        &mut clock,
                    );
                }
            }
            if let Some(a) = &mut slots.adaptive
                && running.len() >= limit
            {
                a.saturated = true;
                a.backlog |= !buffer.is_empty();
            }
            self.adapt(&mut slots);
            if !pending.is_empty() {
                while settling.len() >= MAX_SETTLING {
                    settling.next().await;
                }
                settling.push(self.flush(std::mem::take(&mut pending)));
            }
            let stopping = stop_deadline.is_some();
            if stopping && running.is_empty() {
                break;
            }
            let limit = self.limit(&slots);
            let prefetch = self.prefetch.unwrap_or(limit);
            let room = (limit + prefetch).saturating_sub(running.len() + buffer.len());
            let may_receive = retry_receive_at.is_none_or(|t| Instant::now() >= t);
            if !stopping && recv.is_none() && room > 0 && may_receive {
                retry_receive_at = None;
                let source = self.source.clone();
                let wait = if running.is_empty() && buffer.is_empty() {
                    self.idle_wait
                } else {
                    // Handlers are busy: take what is ready, but keep the wait short so the
                    // loop is not stuck behind a long poll while results come in.
                    self.idle_wait.min(Duration::from_millis(50))
                };
                recv_room = room;
                recv = Some(Box::pin(async move { source.receive(room, wait).await }));
            }
            let grace_end = stop_deadline.unwrap_or_else(far_future);
            let retry_at = retry_receive_at.unwrap_or_else(far_future);

            tokio::select! {
                biased;
                changed = self.stop.changed(), if !stopping => {
                    let grace = match changed {
                        Ok(()) => (*self.stop.borrow()).unwrap_or(Duration::ZERO),
                        Err(_) => Duration::ZERO,
                    };
                    stop_deadline = Some(Instant::now() + grace);
                    // A receive in progress may already have leased messages whose reply is
                    // still on its way: dropping it would strand them until their lease ends
                    // (and count a failed attempt). Let it finish on its own and give back
                    // whatever it brings, without making stop wait out an idle receive.
                    if let Some(pending_recv) = recv.take() {
                        let source = self.source.clone();
                        let counters = self.counters.clone();
                        tokio::spawn(async move {
                            if let Ok(ds) = pending_recv.await
                                && !ds.is_empty()
                            {
                                let n = ds.len() as u64;
                                counters.received.fetch_add(n, Ordering::Relaxed);
                                let ops = ds.into_iter().map(|d| Settle::Release(d.lease)).collect();
                                match source.settle(ops).await {
                                    Ok(_) => {
                                        counters.released.fetch_add(n, Ordering::Relaxed);
                                    }
                                    Err(e) => tracing::warn!(source = %source.describe(), error = %format_args!("{e:#}"), "courier worker: could not release messages received during stop; they come back when their leases end"),
                                }
                            }
                        });
                    }
                    for d in buffer.drain(..) {
                        pending.push(Settle::Release(d.lease));
                        self.counters.released.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(()) = settling.next(), if !settling.is_empty() => {}
                Some(done) = running.next(), if !running.is_empty() => {
                    clock.mark = None;
                    self.finish(done, &mut slots, &mut pending, &config, &mut rng, &mut clock);
                    while let Some(Some(done)) = running.next().now_or_never() {
                        self.finish(done, &mut slots, &mut pending, &config, &mut rng, &mut clock);
                    }
                    self.adapt(&mut slots);
                }
                res = async { recv.as_mut().expect("guarded by is_some").await }, if recv.is_some() => {
                    recv = None;
                    match res {
                        Ok(ds) => {
                            if recv_errors > 0 {
                                tracing::info!(backend = self.backend(), source = %self.source.describe(), "courier worker: receive works again");
                            }
                            recv_errors = 0;
                            if let Some(a) = &mut slots.adaptive {
                                a.backlog |= ds.len() >= recv_room;
                            }
                            self.counters.received.fetch_add(ds.len() as u64, Ordering::Relaxed);
                            buffer.extend(ds);
                        }
                        Err(e) => {
                            recv_errors += 1;
                            let backoff = receive_backoff(recv_errors);
                            if recv_errors == 1 || recv_errors.is_power_of_two() {
                                tracing::warn!(backend = self.backend(), source = %self.source.describe(), error = %format_args!("{e:#}"), failures = recv_errors, retry_in_ms = backoff.as_millis() as u64, "courier worker: receive failed");
                            }
                            retry_receive_at = Some(Instant::now() + backoff);
                        }
                    }
                }
                _ = tick.tick() => {
                    config = self.source.config();
                    self.extend_leases(&mut slots, &mut buffer, &config).await;
                }
                _ = tokio::time::sleep_until(retry_at), if retry_receive_at.is_some() && !stopping => {}
                _ = tokio::time::sleep_until(grace_end), if stopping => {
                    // Grace period over: abandon running handlers and release their messages.
                    drop(std::mem::take(&mut running));
                    for i in 0..slots.leases.len() {
                        if let Some((lease, _, _)) = slots.remove(i) {
                            pending.push(Settle::Release(lease));
                            self.counters.released.fetch_add(1, Ordering::Relaxed);
                            self.counters.in_progress.fetch_sub(1, Ordering::Relaxed);
                            self.in_flight_gauge(-1.0);
                            abandoned += 1;
                        }
                    }
                    break;
                }
            }
        }
        if !pending.is_empty() {
            settling.push(self.flush(pending));
        }
        // Every settle has landed before the worker reports it stopped.
        while settling.next().await.is_some() {}
        tracing::info!(
            backend = self.backend(),
            source = %self.source.describe(),
            abandoned,
            "courier worker: stopped"
        );
        abandoned
    }

    fn start(
        &self,
        d: Delivery,
        slots: &mut Slots,
        running: &mut FuturesUnordered<BoxFuture<'static, Finished>>,
        pending: &mut Vec<Settle>,
        config: &QueueConfig,
        clock: &mut Clock,
    ) -> Option<Finished> {
        let handler = self
            .table
            .by_kind
            .get(d.message.kind.as_str())
            .or(self.table.fallback.as_ref());
        let Some(handler) = handler else {
            let error = format!(
                "no handler for kind {:?} on {}",
                d.message.kind,
                self.source.describe()
            );
            self.log_dead(&d.message, d.lease.attempt, &error);
            pending.push(Settle::Bury {
                lease: d.lease,
                error,
            });
            self.counters.dead.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        // The message's own limit wins over the queue's.
        let limit = d.message.handler_timeout().or(config.handler_timeout);
        let timing = self.telemetry.as_ref().filter(|t| t.timed).map(|t| {
            let durations = match &clock.last {
                Some(last) if *last.kind == *d.message.kind => last.clone(),
                _ => {
                    let fresh = t.handles.durations(&d.message.kind);
                    clock.last = Some(fresh.clone());
                    fresh
                }
            };
            Timing {
                started: *clock.mark.get_or_insert_with(Instant::now),
                durations,
            }
        });
        let span = self.handle_span(&d);
        let slot = slots.insert(d.lease, d.message.max_attempts, timing);
        let now = self.counters.in_progress.fetch_add(1, Ordering::Relaxed) + 1;
        self.counters
            .max_in_progress
            .fetch_max(now, Ordering::Relaxed);
        self.in_flight_gauge(1.0);
        // A handler that panics before returning its future is a failed attempt too. The
        // handler runs in its span (when a subscriber wants it), so its own spans, and the
        // messages it publishes, belong to this message's trace.
        let call = || -> BoxFuture<'static, HandlerResult> {
            if span.is_disabled() {
                handler(d.message)
            } else {
                let fut = span.in_scope(|| handler(d.message));
                Box::pin(fut.instrument(span.clone()))
            }
        };
        let fut = match std::panic::catch_unwind(AssertUnwindSafe(call)) {
            Ok(fut) => AssertUnwindSafe(fut).catch_unwind(),
            Err(p) => {
                return Some(Finished {
                    slot,
                    outcome: Outcome::Panicked(panic_text(p.as_ref())),
                });
            }
        };
        if let Some(limit) = limit {
            // Cancelled at the limit: the future is dropped where it runs (in its task when
            // handlers are spawned), its slot freed and its lease no longer extended.
            let timed = async move {
                match tokio::time::timeout(limit, fut).await {
                    Ok(r) => outcome_of(r),
                    Err(_) => Outcome::TimedOut(limit),
                }
            };
            if self.spawn_handlers {
                let task = tokio::spawn(timed);
                running.push(Box::pin(async move {
                    let outcome = task
                        .await
                        .unwrap_or_else(|e| Outcome::Panicked(e.to_string()));
                    Finished { slot, outcome }
                }));
            } else {
                running.push(Box::pin(
                    timed.map(move |outcome| Finished { slot, outcome }),
                ));
            }
            return None;
        }
        if self.spawn_handlers {
            let task = tokio::spawn(fut);
            running.push(Box::pin(async move {
                let outcome = match task.await {
                    Ok(Ok(r)) => Outcome::Done(r),
                    Ok(Err(p)) => Outcome::Panicked(panic_text(p.as_ref())),
                    Err(e) => Outcome::Panicked(e.to_string()),
                };
                Finished { slot, outcome }
            }));
            return None;
        }
        // Fast path: most handlers finish on their first poll. Polling once here (with a no-op
        // waker) saves the FuturesUnordered round trip; a pending future is pushed and
        // FuturesUnordered polls it again with a real waker. The handler's future is already
        // boxed (so Unpin): polling it in place saves an allocation per message.
        let mut fut = fut;
        match (&mut fut).now_or_never() {
            Some(r) => Some(Finished {
                slot,
                outcome: outcome_of(r),
            }),
            None => {
                running.push(Box::pin(fut.map(move |r| Finished {
                    slot,
                    outcome: outcome_of(r),
                })));
                None
            }
        }
    }

    fn finish(
        &self,
        done: Finished,
        slots: &mut Slots,
        pending: &mut Vec<Settle>,
        config: &QueueConfig,
        rng: &mut SmallRng,
        clock: &mut Clock,
    ) {
        self.counters.in_progress.fetch_sub(1, Ordering::Relaxed);
        self.in_flight_gauge(-1.0);
        let Some((lease, max_override, timing)) = slots.remove(done.slot) else {
            return;
        };
        if let Some(a) = &mut slots.adaptive {
            a.completed(done.slot, matches!(done.outcome, Outcome::Done(Ok(()))));
        }
        let mut record = |outcome: HandlerOutcome| {
            if let Some(t) = &timing {
                let end = Instant::now();
                t.durations.by_outcome[outcome as usize]
                    .record(end.saturating_duration_since(t.started).as_secs_f64());
                // The next handler this pass starts begins about now.
                clock.mark = Some(end);
            }
        };
        let (error, mode) = match done.outcome {
            Outcome::Done(Ok(())) => {
                record(HandlerOutcome::Ok);
                self.counters.succeeded.fetch_add(1, Ordering::Relaxed);
                pending.push(Settle::Ack(lease));
                return;
            }
            Outcome::Done(Err(e)) => (e.message().to_string(), e.mode()),
            Outcome::Panicked(text) => {
                self.counters.panicked.fetch_add(1, Ordering::Relaxed);
                (format!("handler panicked: {text}"), FailureMode::Backoff)
            }
            Outcome::TimedOut(limit) => {
                self.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                (timed_out_error(limit), FailureMode::Backoff)
            }
        };
        match config.retry.decide(lease.attempt, max_override, mode, rng) {
            FailureAction::Retry(delay) => {
                record(HandlerOutcome::Retried);
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                pending.push(Settle::Retry {
                    lease,
                    delay,
                    error,
                });
            }
            FailureAction::Dead => {
                record(HandlerOutcome::Dead);
                self.counters.dead.fetch_add(1, Ordering::Relaxed);
                let kind = timing.as_ref().map_or("", |t| &*t.durations.kind);
                self.log_dead_lease(&lease, kind, &error);
                pending.push(Settle::Bury { lease, error });
            }
        }
    }

    /// Settle a batch of outcomes (a future the driver polls alongside its other work).
    fn flush(&self, ops: Vec<Settle>) -> BoxFuture<'static, ()> {
        let source = self.source.clone();
        let counters = self.counters.clone();
        let backend = self.backend();
        async move {
            let n = ops.len();
            // Settling is retried while the backend is unavailable: an unsettled message would
            // otherwise wait for its lease to expire and count a spurious failed attempt.
            let mut attempt = 0u32;
            let mut ops = Some(ops);
            while let Some(batch) = ops.take() {
                match source.settle(batch.clone()).await {
                    Ok(results) => {
                        for r in results {
                            if let Err(e) = r {
                                counters.lease_lost.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(backend, source = %source.describe(), error = %format_args!("{e:#}"), "courier worker: settle refused");
                            }
                        }
                    }
                    Err(e) if e.is_retryable() && attempt < 5 => {
                        attempt += 1;
                        tracing::warn!(backend, source = %source.describe(), error = %format_args!("{e:#}"), ops = n, "courier worker: settle failed, retrying");
                        tokio::time::sleep(receive_backoff(attempt)).await;
                        ops = Some(batch);
                    }
                    Err(e) => {
                        tracing::error!(backend, source = %source.describe(), error = %format_args!("{e:#}"), ops = n, "courier worker: settle failed; leases will expire and the messages come back");
                    }
                }
            }
        }
        .boxed()
    }

    async fn extend_leases(
        &self,
        slots: &mut Slots,
        buffer: &mut VecDeque<Delivery>,
        config: &QueueConfig,
    ) {
        let now = self.source.now_ms();
        let vis = config.visibility_timeout;
        let threshold = vis.as_millis() as u64 / 2;
        let needs = |l: &Lease| l.deadline_ms.saturating_sub(now) <= threshold;
        for entry in slots.leases.iter_mut() {
            let Some((lease, _, _)) = entry else { continue };
            if needs(lease) {
                match self.source.extend(lease, vis).await {
                    Ok(l) => *lease = l,
                    Err(e) => self.extend_failed(e),
                }
            }
        }
        for d in buffer.iter_mut() {
            if needs(&d.lease) {
                match self.source.extend(&d.lease, vis).await {
                    Ok(l) => d.lease = l,
                    Err(e) => self.extend_failed(e),
                }
            }
        }
    }

    /// The backend's name, for log fields.
    fn backend(&self) -> &'static str {
        match self.telemetry.as_ref().map(|t| &t.labels) {
            Some(SourceLabels::Queue { backend, .. } | SourceLabels::Group { backend, .. }) => {
                backend
            }
            None => "",
        }
    }

    /// Handlers allowed to run at once now.
    fn limit(&self, slots: &Slots) -> usize {
        slots
            .adaptive
            .as_ref()
            .map_or(self.concurrency, |a| a.limiter.limit())
    }

    /// Set the concurrency-limit gauge (no-op without telemetry or a recorder).
    fn limit_gauge(&self, limit: usize) {
        if let Some(t) = &self.telemetry {
            t.handles.concurrency_limit.set(limit as f64);
        }
    }

    /// Close the adaptive limit's window if it is complete, apply the rule, and show the
    /// decision (stats, gauge, log).
    fn adapt(&self, slots: &mut Slots) {
        let Some(a) = &mut slots.adaptive else { return };
        let Some(w) = a.take_window() else { return };
        let from = a.limiter.limit();
        let to = match a.limiter.decide(&w) {
            Decision::Hold => return,
            Decision::Raise(to) => {
                a.raised += 1;
                self.counters.limit_raised.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .concurrency_limit
                    .fetch_add(to.saturating_sub(from) as u64, Ordering::Relaxed);
                to
            }
            Decision::Lower(to) => {
                a.lowered += 1;
                self.counters.limit_lowered.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .concurrency_limit
                    .fetch_sub(from.saturating_sub(to) as u64, Ordering::Relaxed);
                to
            }
        };
        self.limit_gauge(to);
        let ms = |us: Option<f64>| us.map_or(-1.0, |us| us / 1e3);
        tracing::debug!(
            backend = self.backend(),
            source = %self.source.describe(),
            from,
            to,
            completions = w.completions,
            failures = w.failures,
            mean_latency_ms = ms(w.mean_latency_us),
            baseline_ms = ms(a.limiter.baseline_us()),
            "courier worker: concurrency limit changed"
        );
        let now = Instant::now();
        if a.logged_at
            .is_none_or(|t| now.saturating_duration_since(t) >= LIMIT_LOG_EVERY)
        {
            a.logged_at = Some(now);
            tracing::info!(
                backend = self.backend(),
                source = %self.source.describe(),
                limit = to,
                raised = a.raised,
                lowered = a.lowered,
                "courier worker: adaptive concurrency limit changed"
            );
        }
    }

    /// Adjust the in-flight gauge (no-op without telemetry or a recorder).
    fn in_flight_gauge(&self, delta: f64) {
        if let Some(t) = &self.telemetry {
            t.handles.in_flight.increment(delta);
        }
    }

    /// Record how long a first delivery waited, from its due time to now. Retries are not
    /// recorded: their wait includes the backoff the policy chose.
    fn record_wait(&self, d: &Delivery, now_ms: &mut Option<u64>) {
        let Some(wait) = self
            .telemetry
            .as_ref()
            .filter(|t| t.timed)
            .and_then(|t| t.handles.wait.as_ref())
        else {
            return;
        };
        if d.lease.attempt != 1 {
            return;
        }
        let now = *now_ms.get_or_insert_with(|| self.source.now_ms());
        let due = d.message.created_at.max(d.message.not_before.unwrap_or(0));
        let waited = now.saturating_sub(due) as f64 / 1000.0;
        wait[d.message.priority.index()].record(waited);
    }

    /// The span a handler runs in.
    fn handle_span(&self, d: &Delivery) -> tracing::Span {
        let span = match self.telemetry.as_ref().map(|t| &t.labels) {
            Some(SourceLabels::Queue { backend, queue }) => tracing::info_span!(
                "courier.handle",
                backend,
                queue = queue.as_str(),
                kind = d.message.kind.as_str(),
                id = %d.message.id,
                attempt = d.lease.attempt,
            ),
            Some(SourceLabels::Group {
                backend,
                topic,
                group,
            }) => tracing::info_span!(
                "courier.handle",
                backend,
                topic = topic.as_str(),
                group = group.as_str(),
                kind = d.message.kind.as_str(),
                id = %d.message.id,
                attempt = d.lease.attempt,
            ),
            None => tracing::info_span!(
                "courier.handle",
                source = %self.source.describe(),
                kind = d.message.kind.as_str(),
                id = %d.message.id,
                attempt = d.lease.attempt,
            ),
        };
        propagation::extract(&span, &d.message);
        span
    }

    /// One line per message moved to dead letters: a state change an operator acts on.
    fn log_dead(&self, m: &Message, attempt: u32, error: &str) {
        tracing::warn!(
            backend = self.backend(),
            source = %self.source.describe(),
            kind = m.kind.as_str(),
            id = %m.id,
            attempt,
            error,
            "courier worker: message dead-lettered"
        );
    }

    /// As [`Driver::log_dead`], when only the lease (and the kind, when known) is left.
    fn log_dead_lease(&self, lease: &Lease, kind: &str, error: &str) {
        tracing::warn!(
            backend = self.backend(),
            source = %self.source.describe(),
            kind,
            id = %lease.id,
            attempt = lease.attempt,
            error,
            "courier worker: message dead-lettered"
        );
    }

    fn extend_failed(&self, e: Error) {
        if e.is_lease_lost() {
            self.counters.lease_lost.fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(backend = self.backend(), source = %self.source.describe(), error = %format_args!("{e:#}"), "courier worker: lease extension failed");
    }
}

/// The error recorded for a handler cancelled at its timeout.
pub(crate) fn timed_out_error(limit: Duration) -> String {
    format!("handler timed out after {limit:?}")
}

fn extend_interval(config: &QueueConfig) -> Duration {
    (config.visibility_timeout / 4).max(Duration::from_millis(5))
}

/// Settle batches a worker keeps in flight at once (more outcomes wait for one to land).
const MAX_SETTLING: usize = 2;

fn receive_backoff(failures: u32) -> Duration {
    let ms = 50u64.saturating_mul(1u64 << failures.min(7)).min(5_000);
    Duration::from_millis(ms)
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// A consumer group reading one or more topics of an [`EventBus`], one handler per topic
/// (E2, E3): the worker runtime over [`GroupSource`]s.
///
/// A group that does not exist yet is created reading from the **start of the retained log**
/// (E2): it gets the retained history. [`GroupConsumer::start_from`] chooses another place
/// for a new group, e.g. [`ReplayFrom::End`] for "only events emitted from now on"; a group
/// that already exists always continues where it is.
pub struct GroupConsumer {
    bus: Arc<dyn EventBus>,
    group: String,
    topics: Vec<(String, BoxHandler)>,
    concurrency: usize,
    adaptive: Option<(usize, usize)>,
    prefetch: Option<usize>,
    idle_wait: Duration,
    start_from: Option<ReplayFrom>,
}

impl GroupConsumer {
    /// A consumer in `group`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, GroupConsumer, Message};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.events().emit("meeting.created", Message::new("meeting.created", "m1")).await?;
    /// let consumer = GroupConsumer::builder(courier.events().clone(), "ai")
    ///     .on("meeting.created", |_m: Message| async { Ok(()) })
    ///     .start()
    ///     .await?;
    /// # tokio::time::timeout(Duration::from_secs(5), async {
    /// #     while consumer.stats().succeeded < 1 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("handled");
    /// assert_eq!(consumer.stop(Duration::from_secs(1)).await.stats.succeeded, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(bus: Arc<dyn EventBus>, group: &str) -> Self {
        GroupConsumer {
            bus,
            group: group.to_string(),
            topics: Vec::new(),
            concurrency: 8,
            adaptive: None,
            prefetch: None,
            idle_wait: Duration::from_secs(1),
            start_from: None,
        }
    }

    /// Handle every event of `topic` with `f`.
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
    /// courier.events().emit("meeting.created", Message::new("meeting.created", "m1")).await?;
    /// courier.events().emit("meeting.ended", Message::new("meeting.ended", "m1")).await?;
    /// // One group, two topics, one handler each.
    /// let consumer = courier
    ///     .group_consumer("billing")
    ///     .on("meeting.created", |_m: Message| async { Ok(()) })
    ///     .on("meeting.ended", |_m: Message| async { Ok(()) })
    ///     .start()
    ///     .await?;
    /// # tokio::time::timeout(Duration::from_secs(5), async {
    /// #     while consumer.stats().succeeded < 2 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("handled");
    /// assert_eq!(consumer.stop(Duration::from_secs(1)).await.stats.succeeded, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn on<F, Fut>(mut self, topic: &str, f: F) -> Self
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
    {
        self.topics
            .push((topic.to_string(), crate::handler::boxed(f)));
        self
    }

    /// Handle every event of typed event `E`'s topic.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{EventBusExt, Message};
    /// use std::time::Duration;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct MeetingCreated { id: String }
    /// impl courier::Event for MeetingCreated {
    ///     const TOPIC: &'static str = "meeting.created";
    /// }
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.events().emit_typed(&MeetingCreated { id: "m1".into() }).await?;
    /// let consumer = courier
    ///     .group_consumer("media")
    ///     .on_event(|e: MeetingCreated, _m: Message| async move {
    ///         assert_eq!(e.id, "m1");
    ///         Ok(())
    ///     })
    ///     .start()
    ///     .await?;
    /// # tokio::time::timeout(Duration::from_secs(5), async {
    /// #     while consumer.stats().succeeded < 1 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("handled");
    /// consumer.stop(Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn on_event<E, F, Fut>(mut self, f: F) -> Self
    where
        E: crate::Event,
        F: Fn(E, Message) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
    {
        self.topics
            .push((E::TOPIC.to_string(), crate::handler::json(f)));
        self
    }

    /// Handlers running at once per topic (default 8).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// // Events of the topic handled one at a time, in log order.
    /// let consumer = courier
    ///     .group_consumer("audit")
    ///     .concurrency(1)
    ///     .on("meeting.created", |_m: Message| async { Ok(()) })
    ///     .start()
    ///     .await?;
    /// consumer.stop(Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self.adaptive = None;
        self
    }

    /// Let each topic's driver choose how many handlers run at once, between `min` and `max`,
    /// by the rule of [`WorkerBuilder::adaptive_concurrency`] (each topic has its own limit;
    /// [`WorkerStats::concurrency_limit`] is their sum). The last of this and
    /// [`GroupConsumer::concurrency`] wins; fixed concurrency stays the default. The gauge is
    /// `courier_event_worker_concurrency_limit`.
    ///
    /// # Errors
    /// Nothing here: [`GroupConsumer::start`] refuses `min` 0 or `min > max` with
    /// [`crate::ErrorKind::InvalidInput`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{ErrorKind, EventBusExt, Message};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// for i in 0..50 {
    ///     courier.events().emit("meeting.ended", Message::new("meeting.ended", format!("{i}"))).await?;
    /// }
    /// let consumer = courier
    ///     .group_consumer("transcripts")
    ///     .adaptive_concurrency(2, 32)
    ///     .on("meeting.ended", |_m: Message| async {
    ///         tokio::time::sleep(Duration::from_millis(1)).await;
    ///         Ok(())
    ///     })
    ///     .start()
    ///     .await?;
    /// # tokio::time::timeout(Duration::from_secs(30), async {
    /// #     while consumer.stats().succeeded < 50 { tokio::time::sleep(Duration::from_millis(5)).await }
    /// # }).await.expect("handled");
    /// let stats = consumer.stop(Duration::from_secs(1)).await.stats;
    /// assert!((2..=32).contains(&stats.concurrency_limit));
    ///
    /// // A minimum of 0 is refused at start.
    /// let refused = courier.group_consumer("transcripts").adaptive_concurrency(0, 8)
    ///     .on("meeting.ended", |_m: Message| async { Ok(()) })
    ///     .start()
    ///     .await;
    /// assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::InvalidInput));
    /// # Ok(())
    /// # }
    /// ```
    pub fn adaptive_concurrency(mut self, min: usize, max: usize) -> Self {
        self.adaptive = Some((min, max));
        self
    }

    /// Events leased ahead of free handler slots, per topic (default: equal to
    /// `concurrency`). At most `concurrency + prefetch` events of a topic are leased at once,
    /// as for [`WorkerBuilder::prefetch`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let consumer = courier
    ///     .group_consumer("audit")
    ///     .concurrency(4)
    ///     .prefetch(4)
    ///     .on("meeting.created", |_m: Message| async { Ok(()) })
    ///     .start()
    ///     .await?;
    /// assert_eq!(consumer.stats().received, 0);
    /// consumer.stop(Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// How long one receive waits when idle (default 1 s).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let consumer = courier
    ///     .group_consumer("audit")
    ///     .idle_wait(Duration::from_millis(100))
    ///     .on("meeting.created", |_m: Message| async { Ok(()) })
    ///     .start()
    ///     .await?;
    /// consumer.stop(Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn idle_wait(mut self, d: Duration) -> Self {
        self.idle_wait = d;
        self
    }

    /// Where the group starts reading each topic **if the group does not exist yet** (E2, E5).
    /// Default: the start of the retained log, so a new group gets the retained history.
    /// [`ReplayFrom::End`] makes a new group see only the events emitted after
    /// [`GroupConsumer::start`] returns; `Time` and `Id` are as for
    /// [`EventBus::reset_group`].
    ///
    /// It is applied by [`GroupConsumer::start`] through [`EventBus::create_group`]. A group
    /// that already exists on a topic (it was read, reset or created before, by any process)
    /// keeps its position and everything pending: restarting a consumer never skips or
    /// replays events. Configuring a group ([`EventBus::configure_group`]) does not create
    /// it. To move an existing group, use [`EventBus::reset_group`].
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
    /// bus.emit("meeting.created", Message::new("meeting.created", "old")).await?;
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// let consumer = courier
    ///     .group_consumer("dashboard")
    ///     .start_from(ReplayFrom::End)
    ///     .on("meeting.created", move |m: Message| {
    ///         let tx = tx.clone();
    ///         async move {
    ///             let _ = tx.send(m.payload);
    ///             Ok(())
    ///         }
    ///     })
    ///     .start()
    ///     .await?;
    /// bus.emit("meeting.created", Message::new("meeting.created", "new")).await?;
    /// // The new group skipped the history: its first event is "new".
    /// let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    /// assert_eq!(first.ok().flatten().as_deref(), Some(&b"new"[..]));
    /// consumer.stop(Duration::from_secs(1)).await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_from(mut self, from: ReplayFrom) -> Self {
        self.start_from = Some(from);
        self
    }

    /// Start one driver per topic. With [`GroupConsumer::start_from`], every topic's group is
    /// created first (where it does not exist), so this returns once the group reads from the
    /// chosen place.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::InvalidInput`] for an invalid group or topic name, no topic, or
    ///   invalid bounds of [`GroupConsumer::adaptive_concurrency`]. Nothing is started (and
    ///   no group is created).
    /// - With `start_from`: the errors of [`EventBus::create_group`] (`NotFound` for an event
    ///   id that is not retained, a backend failure). Nothing is started; the groups created
    ///   for the topics before the failing one stay created.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Dropping the future before it returns starts nothing; some groups may have been
    /// created (starting again is safe: an existing group is not moved).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let consumer = courier
    ///     .group_consumer("media")
    ///     .on("meeting.created", |_m: Message| async { Ok(()) })
    ///     .start()
    ///     .await?;
    /// consumer.stop(Duration::from_secs(1)).await;
    /// // A consumer with no topic is refused.
    /// assert!(courier.group_consumer("media").start().await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start(self) -> Result<WorkerHandle> {
        let mut sources = Vec::new();
        let mut topics: Vec<String> = Vec::new();
        for (topic, handler) in self.topics {
            let source: Arc<dyn Source> = Arc::new(GroupSource::new(
                self.bus.clone(),
                topic.clone(),
                self.group.clone(),
            ));
            source.check()?;
            sources.push((source, Some(handler)));
            if !topics.contains(&topic) {
                topics.push(topic);
            }
        }
        if sources.is_empty() {
            crate::names::validate_name("group", &self.group)?;
            return Err(Error::invalid("a group consumer needs at least one topic"));
        }
        if let Some((min, max)) = self.adaptive {
            Limiter::new(min, max)?;
        }
        if let Some(from) = self.start_from {
            for topic in &topics {
                self.bus.create_group(topic, &self.group, from).await?;
            }
        }
        let mut builder = WorkerBuilder::from_sources(sources)
            .concurrency(self.concurrency)
            .idle_wait(self.idle_wait);
        if let Some((min, max)) = self.adaptive {
            builder = builder.adaptive_concurrency(min, max);
        }
        if let Some(n) = self.prefetch {
            builder = builder.prefetch(n);
        }
        builder.start()
    }
}
