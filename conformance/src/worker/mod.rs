//! Worker cases: the worker runtime of DESIGN §4 (rule `W`) — handlers by kind, failures,
//! lease extension, bounded (fixed or adaptive) concurrency and prefetch, graceful stop, idle waiting — and the
//! dispatcher and scheduler built on it.
//!
//! Handlers report through channels and atomics; the cases poll those (or queue stats) with
//! deadlines and never sleep in place of synchronisation. Sleeps that remain are either a
//! handler's simulated work or a window in which something must *not* happen.
//!
//! One file per rule: the `worker::<rule>::*` cases live in `worker/<rule>.rs`; the helpers
//! they share are below.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use courier_core::{
    DeadLetter, Delivery, Lease, Message, MessageId, Page, Queue, QueueConfig, QueueExt,
    QueueStats, RetryPolicy, Selection, Settle, SharedClock, Worker, WorkerHandle, WorkerReport,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::{Case, Ctx, Failure, Outcome, ensure, stats_until, within};

mod adaptive;
mod bad_input;
mod concurrency;
mod delay;
mod dispatcher;
mod failure;
mod handlers;
mod idle;
mod lease;
mod priority;
mod scheduler;
mod stop;
mod timeout;

pub(crate) fn cases() -> Vec<Case> {
    let mut all = Vec::new();
    all.extend(handlers::cases());
    all.extend(failure::cases());
    all.extend(timeout::cases());
    all.extend(lease::cases());
    all.extend(concurrency::cases());
    all.extend(adaptive::cases());
    all.extend(stop::cases());
    all.extend(idle::cases());
    all.extend(priority::cases());
    all.extend(dispatcher::cases());
    all.extend(scheduler::cases());
    all.extend(delay::cases());
    all.extend(bad_input::cases());
    all
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the rule files
// ---------------------------------------------------------------------------------------------

/// Bound of one backend call.
const LIMIT: Duration = Duration::from_secs(10);

/// A timing lower bound may be missed by this much (clock granularity).
const SLACK: Duration = Duration::from_millis(5);

/// Grace period used where the case does not test grace itself.
const GRACE: Duration = Duration::from_secs(5);

type Log<T> = Arc<Mutex<Vec<T>>>;

fn log<T>() -> Log<T> {
    Arc::new(Mutex::new(Vec::new()))
}

fn cfg(retry: RetryPolicy, visibility: Duration) -> QueueConfig {
    QueueConfig::default()
        .with_visibility_timeout(visibility)
        .with_retry(retry)
}

/// A fresh queue of this case, configured.
fn queue(cx: &Ctx, what: &str, config: QueueConfig) -> Result<String, Failure> {
    let name = cx.name(what);
    cx.q().configure(&name, config)?;
    Ok(name)
}

async fn publish(cx: &Ctx, q: &str, m: Message) -> Result<MessageId, Failure> {
    Ok(within(LIMIT, "publish", cx.q().publish(q, m)).await??)
}

async fn publish_all(cx: &Ctx, q: &str, ms: Vec<Message>) -> Result<Vec<MessageId>, Failure> {
    let out = within(LIMIT, "publish_batch", cx.q().publish_batch(q, ms)).await??;
    Ok(courier_core::Published::ids(&out))
}

async fn stats(cx: &Ctx, q: &str) -> Result<QueueStats, Failure> {
    Ok(within(LIMIT, "stats", cx.q().stats(q)).await??)
}

async fn dead(cx: &Ctx, q: &str) -> Result<Vec<DeadLetter>, Failure> {
    Ok(within(
        LIMIT,
        "dead_letters",
        cx.q().dead_letters(q, Page::first(100)),
    )
    .await??)
}

/// Poll queue stats until `pred` holds, failing after `limit` with the last stats.
async fn queue_until(
    cx: &Ctx,
    q: &str,
    limit: Duration,
    what: &str,
    pred: impl Fn(&QueueStats) -> bool,
) -> Result<QueueStats, Failure> {
    let (s, ok) = stats_until(cx.q(), q, limit, pred).await?;
    ensure!(ok, "{what} not reached within {limit:?}; last stats {s:?}");
    Ok(s)
}

/// Poll `cond` until it holds, failing after `limit`.
async fn wait_until(limit: Duration, what: &str, cond: impl Fn() -> bool) -> Outcome {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Failure(format!(
                "timed out after {limit:?} waiting for {what}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Stop a worker, bounded.
async fn stop(h: WorkerHandle, grace: Duration) -> Result<WorkerReport, Failure> {
    within(grace + LIMIT, "worker stop", h.stop(grace)).await
}

/// Receive one message of a channel fed by handlers, bounded.
async fn next<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    limit: Duration,
    what: &str,
) -> Result<T, Failure> {
    within(limit, what, rx.recv())
        .await?
        .ok_or_else(|| Failure(format!("handler channel closed waiting for {what}")))
}

/// A gate handlers wait on until the case opens it (or drops the sender).
fn gate() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

async fn pass(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|open| *open).await;
}

/// A [`Queue`] that counts the worker's receive and extend calls and delegates everything.
/// With a reply delay, a receive that leased messages hands them over only after that delay,
/// as a remote broker's reply in transit would (the trait allows a dropped receive to have
/// leased: DESIGN §3, cancel safety).
struct Counting {
    inner: Arc<dyn Queue>,
    receives: AtomicU64,
    extends: AtomicU64,
    reply_delay: Duration,
}

impl Counting {
    fn new(inner: Arc<dyn Queue>) -> Arc<Self> {
        Self::with_reply_delay(inner, Duration::ZERO)
    }

    fn with_reply_delay(inner: Arc<dyn Queue>, reply_delay: Duration) -> Arc<Self> {
        Arc::new(Counting {
            inner,
            receives: AtomicU64::new(0),
            extends: AtomicU64::new(0),
            reply_delay,
        })
    }
}

#[async_trait]
impl Queue for Counting {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
    fn clock(&self) -> SharedClock {
        self.inner.clock()
    }
    fn configure(&self, queue: &str, config: QueueConfig) -> courier_core::Result<()> {
        self.inner.configure(queue, config)
    }
    fn queue_config(&self, queue: &str) -> QueueConfig {
        self.inner.queue_config(queue)
    }
    async fn requeue_dead_at(
        &self,
        queue: &str,
        which: courier_core::Selection,
        priority: courier_core::Priority,
    ) -> courier_core::Result<u64> {
        self.inner.requeue_dead_at(queue, which, priority).await
    }
    async fn list_queues(&self) -> courier_core::Result<Vec<String>> {
        self.inner.list_queues().await
    }
    async fn pause(&self, queue: &str) -> courier_core::Result<()> {
        self.inner.pause(queue).await
    }
    async fn resume(&self, queue: &str) -> courier_core::Result<()> {
        self.inner.resume(queue).await
    }
    async fn set_rate_limit(
        &self,
        queue: &str,
        limit: Option<courier_core::RateLimit>,
    ) -> courier_core::Result<()> {
        self.inner.set_rate_limit(queue, limit).await
    }
    async fn reprioritise(
        &self,
        queue: &str,
        id: courier_core::MessageId,
        priority: courier_core::Priority,
    ) -> courier_core::Result<()> {
        self.inner.reprioritise(queue, id, priority).await
    }
    async fn publish_batch(
        &self,
        queue: &str,
        messages: Vec<Message>,
    ) -> courier_core::Result<Vec<courier_core::Published>> {
        self.inner.publish_batch(queue, messages).await
    }
    async fn receive(
        &self,
        queue: &str,
        max: usize,
        wait: Duration,
    ) -> courier_core::Result<Vec<Delivery>> {
        self.receives.fetch_add(1, Ordering::Relaxed);
        let got = self.inner.receive(queue, max, wait).await;
        if !self.reply_delay.is_zero() && matches!(&got, Ok(ds) if !ds.is_empty()) {
            tokio::time::sleep(self.reply_delay).await;
        }
        got
    }
    async fn settle(
        &self,
        queue: &str,
        ops: Vec<Settle>,
    ) -> courier_core::Result<Vec<courier_core::Result<()>>> {
        self.inner.settle(queue, ops).await
    }
    async fn extend(
        &self,
        queue: &str,
        lease: &Lease,
        visibility: Duration,
    ) -> courier_core::Result<Lease> {
        self.extends.fetch_add(1, Ordering::Relaxed);
        self.inner.extend(queue, lease, visibility).await
    }
    async fn stats(&self, queue: &str) -> courier_core::Result<QueueStats> {
        self.inner.stats(queue).await
    }
    async fn dead_letters(&self, queue: &str, page: Page) -> courier_core::Result<Vec<DeadLetter>> {
        self.inner.dead_letters(queue, page).await
    }
    async fn dead_letter(&self, queue: &str, id: MessageId) -> courier_core::Result<DeadLetter> {
        self.inner.dead_letter(queue, id).await
    }
    async fn requeue_dead(&self, queue: &str, which: Selection) -> courier_core::Result<u64> {
        self.inner.requeue_dead(queue, which).await
    }
    async fn purge_dead(&self, queue: &str, which: Selection) -> courier_core::Result<u64> {
        self.inner.purge_dead(queue, which).await
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Job {
    n: u32,
    name: String,
    tags: Vec<String>,
}

/// A worker on `q` reporting each handled message with its arrival time.
fn timing_worker(
    cx: &Ctx,
    q: &str,
    kind: &str,
) -> Result<(WorkerHandle, mpsc::UnboundedReceiver<(Message, Instant)>), Failure> {
    let (tx, rx) = mpsc::unbounded_channel();
    let h = Worker::builder(cx.backend.queue.clone(), q)
        .concurrency(2)
        .handler(kind, move |m: Message| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((m, Instant::now()));
                Ok(())
            }
        })
        .start()?;
    Ok((h, rx))
}
