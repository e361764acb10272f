//! Worker cases: the worker runtime of DESIGN §4 (rule `W`) — handlers by kind, failures,
//! lease extension, bounded concurrency and prefetch, graceful stop, idle waiting — and the
//! dispatcher and scheduler built on it.
//!
//! Handlers report through channels and atomics; the cases poll those (or queue stats) with
//! deadlines and never sleep in place of synchronisation. Sleeps that remain are either a
//! handler's simulated work or a window in which something must *not* happen.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use courier_core::{
    DeadLetter, Delivery, Dispatcher, ErrorKind, Every, HandlerError, HandlerResult, Lease,
    Message, MessageId, Page, Priority, Queue, QueueConfig, QueueExt, QueueStats, RetryPolicy,
    Scheduler, Selection, Settle, SharedClock, Worker, WorkerHandle, WorkerReport,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::{
    Accounting, Case, Ctx, Failure, Outcome, case, ensure, ensure_eq, expect_nothing, plain_config,
    receive_n, stats_until, summary, within,
};

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!("worker::handlers::routes_by_kind", ["W"], routes_by_kind),
        case!(
            "worker::handlers::json_handler_decodes",
            ["W", "Q6"],
            json_handler_decodes
        ),
        case!(
            "worker::handlers::message_fields_reach_handler",
            ["W", "Q1"],
            message_fields_reach_handler
        ),
        case!(
            "worker::failure::handler_error_retries_then_dead_letters",
            ["W", "Q5", "Q6"],
            error_retries_then_dead_letters
        ),
        case!(
            "worker::failure::message_max_attempts_override",
            ["W", "Q5"],
            max_attempts_override
        ),
        case!(
            "worker::failure::panic_counts_as_failure",
            ["W", "Q5", "Q6"],
            panic_counts_as_failure
        ),
        case!(
            "worker::failure::panic_before_future_counts_as_failure",
            ["W", "Q5"],
            panic_before_future
        ),
        case!(
            "worker::failure::permanent_error_dead_letters_at_once",
            ["W", "Q6"],
            permanent_error_dead_letters
        ),
        case!(
            "worker::failure::unknown_kind_fails_permanently",
            ["W", "Q6"],
            unknown_kind_fails_permanently
        ),
        case!(
            "worker::failure::retry_after_is_honoured",
            ["W", "Q5"],
            retry_after_is_honoured
        ),
        case!(
            "worker::failure::fallback_handles_unknown_kinds",
            ["W"],
            fallback_handles_unknown_kinds
        ),
        case!(
            "worker::failure::question_mark_picks_the_mode",
            ["W", "Q5"],
            question_mark_picks_the_mode
        ),
        case!(
            "worker::lease::extended_while_handler_runs",
            ["W", "Q4"],
            lease_extended_while_running
        ),
        case!(
            "worker::lease::prefetched_leases_extended",
            ["W", "Q4"],
            prefetched_leases_extended
        ),
        case!("worker::concurrency::bounded", ["W"], concurrency_bounded),
        case!(
            "worker::concurrency::bounded_with_spawned_handlers",
            ["W"],
            concurrency_bounded_spawned
        ),
        case!(
            "worker::concurrency::competing_workers_jepsen",
            ["W", "Q9"],
            competing_workers_jepsen
        ),
        case!(
            "worker::concurrency::prefetch_bounds_leases",
            ["W", "Q8"],
            prefetch_bounds_leases
        ),
        case!(
            "worker::stop::graceful_releases_unstarted",
            ["W", "Q4"],
            graceful_releases_unstarted
        ),
        case!(
            "worker::stop::waits_for_in_flight_within_grace",
            ["W"],
            waits_for_in_flight
        ),
        case!(
            "worker::stop::abandons_after_grace_and_releases",
            ["W", "Q4"],
            abandons_after_grace
        ),
        case!(
            "worker::stop::receive_in_flight_at_stop_not_stranded",
            ["W", "Q9"],
            stop_mid_receive
        ),
        case!(
            "worker::stop::no_receive_after_stop",
            ["W"],
            no_receive_after_stop
        ),
        case!(
            "worker::idle::wakes_promptly_on_publish",
            ["W"],
            wakes_promptly_on_publish
        ),
        case!("worker::idle::does_not_spin", ["W"], does_not_spin),
        case!(
            "worker::priority::worker_handles_critical_first",
            ["W", "Q2"],
            handles_critical_first
        ),
        case!(
            "worker::priority::critical_overtakes_while_busy",
            ["W", "Q2"],
            critical_overtakes_while_busy
        ),
        case!(
            "worker::dispatcher::routes_kind_to_owning_queue",
            ["W"],
            dispatcher_routes
        ),
        case!(
            "worker::dispatcher::batch_keeps_order_per_queue",
            ["W", "Q7"],
            dispatcher_batch
        ),
        case!(
            "worker::scheduler::publish_after_not_before",
            ["W", "Q3"],
            scheduler_publish_after
        ),
        case!(
            "worker::scheduler::publish_at_not_before",
            ["W", "Q3"],
            scheduler_publish_at
        ),
        case!(
            "worker::scheduler::recurring_interval_fires_repeatedly",
            ["W"],
            scheduler_recurring
        ),
        case!(
            "worker::delay::delayed_message_handled_not_before_due",
            ["W", "Q3"],
            delayed_not_before_due
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Helpers
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
    QueueConfig {
        visibility_timeout: visibility,
        retry,
        ..QueueConfig::default()
    }
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
    Ok(within(LIMIT, "publish_batch", cx.q().publish_batch(q, ms)).await??)
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
    async fn publish_batch(
        &self,
        queue: &str,
        messages: Vec<Message>,
    ) -> courier_core::Result<Vec<MessageId>> {
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

// ---------------------------------------------------------------------------------------------
// handlers
// ---------------------------------------------------------------------------------------------

async fn routes_by_kind(cx: Ctx) -> Outcome {
    let q = queue(&cx, "kinds", plain_config())?;
    let alpha: Log<Message> = log();
    let beta: Log<Message> = log();
    let (a, b) = (alpha.clone(), beta.clone());
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("alpha", move |m: Message| {
            let a = a.clone();
            async move {
                a.lock().push(m);
                Ok(())
            }
        })
        .handler("beta", move |m: Message| {
            let b = b.clone();
            async move {
                b.lock().push(m);
                Ok(())
            }
        })
        .start()?;
    let msgs: Vec<Message> = (0..8)
        .map(|i| Message::new(if i % 2 == 0 { "alpha" } else { "beta" }, format!("{i}")))
        .collect();
    let ids = publish_all(&cx, &q, msgs).await?;
    wait_until(cx.prompt(), "8 messages handled", || {
        alpha.lock().len() + beta.lock().len() >= 8
    })
    .await?;
    let report = stop(h, GRACE).await?;
    let alpha = alpha.lock().clone();
    let beta = beta.lock().clone();
    ensure!(
        alpha.iter().all(|m| m.kind == "alpha"),
        "the alpha handler got {:?}",
        alpha.iter().map(|m| &m.kind).collect::<Vec<_>>()
    );
    ensure!(
        beta.iter().all(|m| m.kind == "beta"),
        "the beta handler got {:?}",
        beta.iter().map(|m| &m.kind).collect::<Vec<_>>()
    );
    let want_a: HashSet<MessageId> = ids.iter().step_by(2).copied().collect();
    let want_b: HashSet<MessageId> = ids.iter().skip(1).step_by(2).copied().collect();
    ensure_eq!(
        alpha.iter().map(|m| m.id).collect::<HashSet<_>>(),
        want_a,
        "alpha ids"
    );
    ensure_eq!(
        beta.iter().map(|m| m.id).collect::<HashSet<_>>(),
        want_b,
        "beta ids"
    );
    ensure_eq!(alpha.len() + beta.len(), 8, "each handled once");
    ensure_eq!(report.stats.succeeded, 8, "worker succeeded");
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.acked, 8, "acked (stop returns after settling)");
    ensure_eq!(s.stored(), 0, "nothing left stored: {s:?}");
    Ok(())
}

async fn json_handler_decodes(cx: Ctx) -> Outcome {
    let q = queue(&cx, "json", plain_config())?;
    let jobs = vec![
        Job {
            n: 1,
            name: "transcode".into(),
            tags: vec!["hd".into(), "ünïcødé".into()],
        },
        Job {
            n: 2,
            name: "thumbnail".into(),
            tags: vec![],
        },
    ];
    let got: Log<(Job, MessageId)> = log();
    let calls = Arc::new(AtomicU64::new(0));
    let (g, c) = (got.clone(), calls.clone());
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .json_handler("job", move |job: Job, m: Message| {
            let (g, c) = (g.clone(), c.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                g.lock().push((job, m.id));
                Ok(())
            }
        })
        .start()?;
    let mut ids = Vec::new();
    for j in &jobs {
        ids.push(within(LIMIT, "publish_json", cx.q().publish_json(&q, "job", j)).await??);
    }
    let bad = publish(&cx, &q, Message::new("job", "{not json")).await?;
    queue_until(&cx, &q, cx.prompt(), "2 acked and 1 dead", |s| {
        s.acked == 2 && s.dead == 1
    })
    .await?;
    let report = stop(h, GRACE).await?;
    let got = got.lock().clone();
    ensure_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the typed handler runs only for decodable payloads"
    );
    let by_id: HashMap<MessageId, Job> = got.into_iter().map(|(j, id)| (id, j)).collect();
    for (id, job) in ids.iter().zip(&jobs) {
        ensure_eq!(by_id.get(id), Some(job), "decoded value of {id}");
    }
    let dl = dead(&cx, &q).await?;
    ensure_eq!(dl.len(), 1, "dead letters");
    ensure_eq!(
        dl[0].message.id,
        bad,
        "the undecodable message is the dead one"
    );
    ensure_eq!(dl[0].attempts, 1, "a decode failure is permanent: no retry");
    ensure!(
        dl[0].error.contains("job") && dl[0].error.to_lowercase().contains("json"),
        "the dead letter's error should name the kind and JSON: {:?}",
        dl[0].error
    );
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.retried, 0, "no retry for a decode failure");
    ensure_eq!(report.stats.dead, 1, "worker dead counter");
    Ok(())
}

async fn message_fields_reach_handler(cx: Ctx) -> Outcome {
    let q = queue(&cx, "fields", plain_config())?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("meeting.created", move |m: Message| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(m);
                Ok(())
            }
        })
        .start()?;
    let payload = Bytes::from_static(b"\x00\x01\xffbinary payload");
    let id = publish(
        &cx,
        &q,
        Message::new("meeting.created", payload.clone())
            .with_priority(Priority::High)
            .with_header("source", "meeting")
            .with_header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
    )
    .await?;
    let m = next(&mut rx, cx.prompt(), "the handler").await?;
    let report = stop(h, GRACE).await?;
    ensure_eq!(m.id, id, "id");
    ensure_eq!(m.kind, "meeting.created", "kind");
    ensure_eq!(m.payload, payload, "payload");
    ensure_eq!(m.priority, Priority::High, "priority");
    ensure_eq!(m.header("source"), Some("meeting"), "source header");
    ensure_eq!(
        m.header("traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        "traceparent header"
    );
    ensure_eq!(m.attempt, 1, "attempt of the first delivery");
    ensure!(m.created_at > 0, "created_at set at publish");
    ensure_eq!(report.stats.succeeded, 1, "succeeded");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// failure
// ---------------------------------------------------------------------------------------------

async fn error_retries_then_dead_letters(cx: Ctx) -> Outcome {
    let base = Duration::from_millis(100);
    let q = queue(
        &cx,
        "fail",
        cfg(
            RetryPolicy::exact(3, base, 2.0, Duration::from_secs(5)),
            Duration::from_secs(30),
        ),
    )?;
    let calls: Log<(u32, Instant)> = log();
    let c = calls.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("fails", move |m: Message| {
            let c = c.clone();
            async move {
                c.lock().push((m.attempt, Instant::now()));
                Err(HandlerError::retry(format!(
                    "boom on attempt {}",
                    m.attempt
                )))
            }
        })
        .start()?;
    let id = publish(&cx, &q, Message::new("fails", "x")).await?;
    queue_until(&cx, &q, base * 3 + cx.prompt(), "dead-lettered", |s| {
        s.dead == 1
    })
    .await?;
    let report = stop(h, GRACE).await?;
    let calls = calls.lock().clone();
    ensure_eq!(
        calls.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "attempts seen by the handler (max_attempts 3 = exactly 3 calls)"
    );
    let gap1 = calls[1].1 - calls[0].1;
    let gap2 = calls[2].1 - calls[1].1;
    ensure!(
        gap1 + SLACK >= base,
        "second attempt {gap1:?} after the first, before the {base:?} backoff"
    );
    ensure!(
        gap2 + SLACK >= base * 2,
        "third attempt {gap2:?} after the second, before the {:?} backoff",
        base * 2
    );
    let dl = dead(&cx, &q).await?;
    ensure_eq!(dl.len(), 1, "dead letters");
    ensure_eq!(dl[0].message.id, id, "dead letter id");
    ensure_eq!(dl[0].attempts, 3, "dead letter attempts");
    ensure_eq!(
        dl[0].error,
        "boom on attempt 3",
        "dead letter keeps the last error"
    );
    ensure!(dl[0].failed_at > 0, "failed_at set");
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.retried, 2, "queue retried counter");
    ensure_eq!(s.dead_lettered, 1, "queue dead_lettered counter");
    ensure_eq!(report.stats.retried, 2, "worker retried");
    ensure_eq!(report.stats.dead, 1, "worker dead");
    ensure_eq!(report.stats.succeeded, 0, "worker succeeded");
    Ok(())
}

async fn max_attempts_override(cx: Ctx) -> Outcome {
    // The queue allows 3 attempts with immediate retries; the messages say otherwise.
    let q = queue(&cx, "override", plain_config())?;
    let calls: Log<(MessageId, u32)> = log();
    let c = calls.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("fails", move |m: Message| {
            let c = c.clone();
            async move {
                c.lock().push((m.id, m.attempt));
                Err(HandlerError::retry("still failing"))
            }
        })
        .start()?;
    let once = publish(&cx, &q, Message::new("fails", "").with_max_attempts(1)).await?;
    let five = publish(&cx, &q, Message::new("fails", "").with_max_attempts(5)).await?;
    queue_until(&cx, &q, cx.prompt(), "both dead-lettered", |s| s.dead == 2).await?;
    let report = stop(h, GRACE).await?;
    let calls = calls.lock().clone();
    let of = |id: MessageId| {
        calls
            .iter()
            .filter(|c| c.0 == id)
            .map(|c| c.1)
            .collect::<Vec<_>>()
    };
    ensure_eq!(of(once), vec![1], "max_attempts 1: one call");
    ensure_eq!(of(five), vec![1, 2, 3, 4, 5], "max_attempts 5: five calls");
    let dl = dead(&cx, &q).await?;
    let attempts: HashMap<MessageId, u32> = dl.iter().map(|d| (d.message.id, d.attempts)).collect();
    ensure_eq!(
        attempts.get(&once),
        Some(&1),
        "attempts of the max-1 message"
    );
    ensure_eq!(
        attempts.get(&five),
        Some(&5),
        "attempts of the max-5 message"
    );
    ensure_eq!(report.stats.retried, 4, "worker retried");
    Ok(())
}

async fn panic_counts_as_failure(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "panic",
        cfg(
            RetryPolicy::exact(2, Duration::ZERO, 2.0, Duration::ZERO),
            Duration::from_secs(30),
        ),
    )?;
    let calls: Log<(String, u32)> = log();
    let (c1, c2, c3) = (calls.clone(), calls.clone(), calls.clone());
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("flaky", move |m: Message| {
            let c = c1.clone();
            async move {
                c.lock().push((m.kind.clone(), m.attempt));
                if m.attempt == 1 {
                    panic!("flaky handler fails its first attempt");
                }
                Ok(())
            }
        })
        .handler("doomed", move |m: Message| {
            let c = c2.clone();
            async move {
                c.lock().push((m.kind.clone(), m.attempt));
                panic!("doomed handler always panics");
            }
        })
        .handler("later", move |m: Message| {
            let c = c3.clone();
            async move {
                c.lock().push((m.kind.clone(), m.attempt));
                Ok(())
            }
        })
        .start()?;
    let flaky = publish(&cx, &q, Message::new("flaky", "")).await?;
    let doomed = publish(&cx, &q, Message::new("doomed", "")).await?;
    queue_until(&cx, &q, cx.prompt(), "flaky acked, doomed dead", |s| {
        s.acked == 1 && s.dead == 1
    })
    .await?;
    // The worker survived the panics: it still handles new work.
    publish(&cx, &q, Message::new("later", "")).await?;
    queue_until(&cx, &q, cx.prompt(), "later message acked", |s| {
        s.acked == 2
    })
    .await?;
    let mid = h.stats();
    let report = stop(h, GRACE).await?;
    let calls = calls.lock().clone();
    let of = |k: &str| {
        calls
            .iter()
            .filter(|c| c.0 == k)
            .map(|c| c.1)
            .collect::<Vec<_>>()
    };
    ensure_eq!(
        of("flaky"),
        vec![1, 2],
        "flaky: panicked once, then succeeded"
    );
    ensure_eq!(of("doomed"), vec![1, 2], "doomed: both attempts used");
    ensure_eq!(of("later"), vec![1], "later message handled once");
    ensure_eq!(mid.panicked, 3, "WorkerStats.panicked");
    ensure_eq!(report.stats.retried, 2, "worker retried");
    ensure_eq!(report.stats.dead, 1, "worker dead");
    ensure_eq!(report.stats.succeeded, 2, "worker succeeded");
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, doomed)).await??;
    ensure_eq!(dl.attempts, 2, "dead letter attempts");
    ensure!(
        dl.error.contains("panic") && dl.error.contains("doomed handler always panics"),
        "dead letter error should say it panicked and carry the panic text: {:?}",
        dl.error
    );
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.retried, 2, "queue retried");
    ensure!(
        within(LIMIT, "dead_letter", cx.q().dead_letter(&q, flaky))
            .await?
            .is_err(),
        "the flaky message must not be dead"
    );
    Ok(())
}

fn sync_panicking(m: Message) -> futures::future::Ready<HandlerResult> {
    if m.attempt == 1 {
        panic!("handler panicked before returning its future");
    }
    futures::future::ready(Ok(()))
}

async fn panic_before_future(cx: Ctx) -> Outcome {
    let q = queue(&cx, "syncpanic", plain_config())?;
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("sync", sync_panicking)
        .start()?;
    publish(&cx, &q, Message::new("sync", "")).await?;
    queue_until(&cx, &q, cx.prompt(), "acked on the second attempt", |s| {
        s.acked == 1
    })
    .await?;
    let report = stop(h, GRACE).await?;
    ensure_eq!(report.stats.panicked, 1, "panicked");
    ensure_eq!(report.stats.retried, 1, "retried");
    ensure_eq!(report.stats.succeeded, 1, "succeeded");
    ensure_eq!(report.stats.in_progress, 0, "in_progress back to 0");
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.retried, 1, "queue retried");
    ensure_eq!(s.stored(), 0, "nothing left: {s:?}");
    Ok(())
}

async fn permanent_error_dead_letters(cx: Ctx) -> Outcome {
    let q = queue(&cx, "perm", plain_config())?;
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("bad", move |_m: Message| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                Err(HandlerError::permanent("invalid meeting id"))
            }
        })
        .start()?;
    let id = publish(&cx, &q, Message::new("bad", "")).await?;
    queue_until(&cx, &q, cx.prompt(), "dead-lettered", |s| s.dead == 1).await?;
    let report = stop(h, GRACE).await?;
    ensure_eq!(calls.load(Ordering::SeqCst), 1, "handler calls");
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, id)).await??;
    ensure_eq!(dl.attempts, 1, "attempts");
    ensure_eq!(dl.error, "invalid meeting id", "error");
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.retried, 0, "no retry");
    ensure_eq!(s.dead_lettered, 1, "dead_lettered");
    ensure_eq!(report.stats.retried, 0, "worker retried");
    ensure_eq!(report.stats.dead, 1, "worker dead");
    Ok(())
}

async fn unknown_kind_fails_permanently(cx: Ctx) -> Outcome {
    let q = queue(&cx, "unknown", plain_config())?;
    let seen: Log<String> = log();
    let s2 = seen.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("known", move |m: Message| {
            let s = s2.clone();
            async move {
                s.lock().push(m.kind);
                Ok(())
            }
        })
        .start()?;
    let mystery = publish(&cx, &q, Message::new("mystery.kind", "")).await?;
    publish(&cx, &q, Message::new("known", "")).await?;
    queue_until(&cx, &q, cx.prompt(), "1 acked, 1 dead", |s| {
        s.acked == 1 && s.dead == 1
    })
    .await?;
    let report = stop(h, GRACE).await?;
    ensure_eq!(
        seen.lock().clone(),
        vec!["known".to_string()],
        "handled kinds"
    );
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, mystery)).await??;
    ensure_eq!(dl.attempts, 1, "no retries for an unknown kind");
    ensure!(
        dl.error.contains("mystery.kind"),
        "the error should name the kind: {:?}",
        dl.error
    );
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.retried, 0, "queue retried");
    ensure_eq!(report.stats.dead, 1, "worker dead");
    Ok(())
}

async fn retry_after_is_honoured(cx: Ctx) -> Outcome {
    // The queue would retry at once; the handler asks for 400 ms.
    let q = queue(&cx, "retryafter", plain_config())?;
    let asked = Duration::from_millis(400);
    let calls: Log<(MessageId, u32, Instant)> = log();
    let c = calls.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("later", move |m: Message| {
            let c = c.clone();
            async move {
                c.lock().push((m.id, m.attempt, Instant::now()));
                if m.attempt == 1 {
                    Err(HandlerError::retry_after(asked, "come back later"))
                } else {
                    Ok(())
                }
            }
        })
        .start()?;
    let id = publish(&cx, &q, Message::new("later", "")).await?;
    // Still bounded by max_attempts: with one attempt allowed it is dead at once.
    let single = publish(&cx, &q, Message::new("later", "").with_max_attempts(1)).await?;
    queue_until(&cx, &q, asked + cx.prompt(), "acked and dead", |s| {
        s.acked == 1 && s.dead == 1
    })
    .await?;
    let report = stop(h, GRACE).await?;
    let calls = calls.lock().clone();
    let mine: Vec<_> = calls.iter().filter(|c| c.0 == id).collect();
    ensure_eq!(mine.len(), 2, "calls for the retried message");
    ensure_eq!((mine[0].1, mine[1].1), (1, 2), "attempts");
    let gap = mine[1].2 - mine[0].2;
    ensure!(
        gap + SLACK >= asked,
        "second attempt after {gap:?}, before the requested {asked:?}"
    );
    ensure!(
        gap <= asked + cx.prompt(),
        "second attempt after {gap:?}, long after the requested {asked:?}"
    );
    ensure_eq!(
        calls.iter().filter(|c| c.0 == single).count(),
        1,
        "retry_after does not extend max_attempts"
    );
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, single)).await??;
    ensure_eq!(dl.error, "come back later", "error");
    ensure_eq!(dl.attempts, 1, "attempts");
    ensure_eq!(report.stats.retried, 1, "worker retried");
    println!("retry_after {asked:?}: second attempt after {gap:?}");
    Ok(())
}

async fn fallback_handles_unknown_kinds(cx: Ctx) -> Outcome {
    let q = queue(&cx, "fallback", plain_config())?;
    let known: Log<String> = log();
    let other: Log<String> = log();
    let (k, o) = (known.clone(), other.clone());
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("known", move |m: Message| {
            let k = k.clone();
            async move {
                k.lock().push(m.kind);
                Ok(())
            }
        })
        .fallback(courier_core::handler::boxed(move |m: Message| {
            let o = o.clone();
            async move {
                o.lock().push(m.kind);
                Ok(())
            }
        }))
        .start()?;
    publish_all(
        &cx,
        &q,
        vec![
            Message::new("known", ""),
            Message::new("other.one", ""),
            Message::new("other.two", ""),
        ],
    )
    .await?;
    queue_until(&cx, &q, cx.prompt(), "3 acked", |s| s.acked == 3).await?;
    let report = stop(h, GRACE).await?;
    ensure_eq!(
        known.lock().clone(),
        vec!["known".to_string()],
        "bound handler"
    );
    let mut o = other.lock().clone();
    o.sort();
    ensure_eq!(
        o,
        vec!["other.one".to_string(), "other.two".to_string()],
        "fallback"
    );
    ensure_eq!(report.stats.dead, 0, "nothing dead");
    ensure_eq!(stats(&cx, &q).await?.dead, 0, "queue dead");
    Ok(())
}

async fn question_mark_picks_the_mode(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "qmark",
        cfg(
            RetryPolicy::exact(2, Duration::ZERO, 2.0, Duration::ZERO),
            Duration::from_secs(30),
        ),
    )?;
    let calls: Log<String> = log();
    let (c1, c2) = (calls.clone(), calls.clone());
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("io", move |m: Message| {
            let c = c1.clone();
            async move {
                c.lock().push(m.kind);
                let r: Result<(), std::io::Error> = Err(std::io::Error::other("disk full"));
                r?;
                Ok(())
            }
        })
        .handler("decode", move |m: Message| {
            let c = c2.clone();
            async move {
                c.lock().push(m.kind.clone());
                let _job: Job = m.decode()?;
                Ok(())
            }
        })
        .start()?;
    let io = publish(&cx, &q, Message::new("io", "")).await?;
    let dec = publish(&cx, &q, Message::new("decode", "not json")).await?;
    queue_until(&cx, &q, cx.prompt(), "both dead", |s| s.dead == 2).await?;
    let report = stop(h, GRACE).await?;
    let calls = calls.lock().clone();
    ensure_eq!(
        calls.iter().filter(|k| *k == "io").count(),
        2,
        "an io error via `?` is retried (2 attempts)"
    );
    ensure_eq!(
        calls.iter().filter(|k| *k == "decode").count(),
        1,
        "a decode error via `?` is permanent"
    );
    let d_io = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, io)).await??;
    ensure_eq!(d_io.error, "disk full", "io error text");
    ensure_eq!(d_io.attempts, 2, "io attempts");
    let d_dec = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, dec)).await??;
    ensure_eq!(d_dec.attempts, 1, "decode attempts");
    ensure_eq!(report.stats.retried, 1, "worker retried");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// lease
// ---------------------------------------------------------------------------------------------

async fn lease_extended_while_running(cx: Ctx) -> Outcome {
    let vis = Duration::from_millis(300);
    let q = queue(&cx, "extend", cfg(plain_config().retry, vis))?;
    let counting = Counting::new(cx.backend.queue.clone());
    let work = Duration::from_millis(1200);
    let attempts: Log<u32> = log();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = attempts.clone();
    let h = Worker::builder(counting.clone(), &q)
        .handler("slow", move |m: Message| {
            let (a, tx) = (a.clone(), tx.clone());
            async move {
                a.lock().push(m.attempt);
                let _ = tx.send(());
                tokio::time::sleep(work).await; // the handler's work
                Ok(())
            }
        })
        .start()?;
    let id = publish(&cx, &q, Message::new("slow", "")).await?;
    next(&mut rx, cx.prompt(), "the handler to start").await?;
    // A competing consumer sees nothing while the worker holds (and extends) the lease: an
    // unextended 300 ms lease would have expired and been delivered here.
    expect_nothing(cx.q(), &q, Duration::from_millis(900)).await?;
    queue_until(&cx, &q, work + cx.prompt(), "acked", |s| s.acked == 1).await?;
    let report = stop(h, GRACE).await?;
    ensure_eq!(attempts.lock().clone(), vec![1], "handled once, attempt 1");
    ensure_eq!(report.stats.lease_lost, 0, "no LeaseLost");
    ensure_eq!(report.stats.succeeded, 1, "succeeded");
    let extends = counting.extends.load(Ordering::Relaxed);
    ensure!(extends >= 2, "expected repeated extends, saw {extends}");
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.retried, 0, "no failed attempt");
    ensure_eq!(s.stored(), 0, "nothing left: {s:?}");
    println!("lease {vis:?}, handler {work:?}: {extends} extends of {id}");
    Ok(())
}

async fn prefetched_leases_extended(cx: Ctx) -> Outcome {
    let vis = Duration::from_millis(300);
    let q = queue(&cx, "prefext", cfg(plain_config().retry, vis))?;
    let work = Duration::from_millis(400);
    let seen: Log<(MessageId, u32)> = log();
    let s2 = seen.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .concurrency(1)
        .prefetch(2)
        .handler("slow", move |m: Message| {
            let s = s2.clone();
            async move {
                s.lock().push((m.id, m.attempt));
                tokio::time::sleep(work).await; // the handler's work
                Ok(())
            }
        })
        .start()?;
    let ids = publish_all(
        &cx,
        &q,
        (0..3)
            .map(|i| Message::new("slow", format!("{i}")))
            .collect(),
    )
    .await?;
    wait_until(cx.prompt(), "the first handler to start", || {
        !seen.lock().is_empty()
    })
    .await?;
    // The last message waits ~800 ms in the prefetch buffer, well past its 300 ms lease.
    expect_nothing(cx.q(), &q, Duration::from_millis(700)).await?;
    queue_until(&cx, &q, work * 3 + cx.prompt(), "3 acked", |s| s.acked == 3).await?;
    let report = stop(h, GRACE).await?;
    let seen = seen.lock().clone();
    ensure_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        ids,
        "each handled once, in order"
    );
    ensure!(
        seen.iter().all(|s| s.1 == 1),
        "attempts {:?}: a buffered lease expired",
        seen
    );
    ensure_eq!(report.stats.lease_lost, 0, "lease_lost");
    ensure_eq!(stats(&cx, &q).await?.retried, 0, "queue retried");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// concurrency
// ---------------------------------------------------------------------------------------------

async fn bounded(cx: Ctx, spawn: bool) -> Outcome {
    let q = queue(&cx, "bounded", plain_config())?;
    let limit = 3u64;
    let total = 12u64;
    let running = Arc::new(AtomicU64::new(0));
    let max = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let (open, gate_rx) = gate();
    let (r, m, d) = (running.clone(), max.clone(), done.clone());
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .concurrency(limit as usize)
        .spawn_handlers(spawn)
        .handler("work", move |_m: Message| {
            let (r, m, d, g) = (r.clone(), m.clone(), d.clone(), gate_rx.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                pass(g).await;
                r.fetch_sub(1, Ordering::SeqCst);
                d.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .start()?;
    publish_all(
        &cx,
        &q,
        (0..total)
            .map(|i| Message::new("work", format!("{i}")))
            .collect(),
    )
    .await?;
    wait_until(cx.prompt(), "3 handlers running", || {
        running.load(Ordering::SeqCst) >= limit
    })
    .await?;
    // Hold them: no fourth handler may start.
    let window = Instant::now() + Duration::from_millis(300);
    while Instant::now() < window {
        let now = running.load(Ordering::SeqCst);
        ensure!(
            now <= limit,
            "{now} handlers running with concurrency {limit}"
        );
        ensure!(
            h.stats().in_progress <= limit,
            "WorkerStats.in_progress {} above {limit}",
            h.stats().in_progress
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = open.send(true);
    wait_until(cx.prompt(), "all handled", || {
        done.load(Ordering::SeqCst) >= total
    })
    .await?;
    let report = stop(h, GRACE).await?;
    ensure_eq!(max.load(Ordering::SeqCst), limit, "most handlers at once");
    ensure_eq!(
        report.stats.max_in_progress,
        limit,
        "WorkerStats.max_in_progress"
    );
    ensure_eq!(report.stats.succeeded, total, "succeeded");
    ensure_eq!(report.stats.in_progress, 0, "in_progress at the end");
    Ok(())
}

async fn concurrency_bounded(cx: Ctx) -> Outcome {
    bounded(cx, false).await
}

async fn concurrency_bounded_spawned(cx: Ctx) -> Outcome {
    bounded(cx, true).await
}

async fn competing_workers_jepsen(cx: Ctx) -> Outcome {
    let q = queue(&cx, "jepsen", plain_config())?;
    let total = 2_000usize;
    let seen: Log<(usize, MessageId)> = log();
    let mut workers = Vec::new();
    for w in 0..3usize {
        let s = seen.clone();
        let h = Worker::builder(cx.backend.queue.clone(), &q)
            .concurrency(4)
            .spawn_handlers(w == 2)
            .handler("job", move |m: Message| {
                let s = s.clone();
                async move {
                    s.lock().push((w, m.id));
                    if m.payload.first() == Some(&b'y') {
                        tokio::task::yield_now().await;
                    }
                    Ok(())
                }
            })
            .start()?;
        workers.push(h);
    }
    // Publish while the workers consume.
    let mut acc = Accounting::default();
    for chunk in 0..(total / 100) {
        let batch = (0..100)
            .map(|i| Message::new("job", if (chunk + i) % 3 == 0 { "y" } else { "n" }))
            .collect();
        for id in publish_all(&cx, &q, batch).await? {
            acc.sent(id);
        }
    }
    let limit = Duration::from_secs(20);
    wait_until(limit, "every message handled", || {
        seen.lock().len() >= total
    })
    .await?;
    queue_until(&cx, &q, cx.prompt(), "all acked", |s| {
        s.acked == total as u64
    })
    .await?;
    let mut per_worker = [0u64; 3];
    for h in workers {
        let r = stop(h, GRACE).await?;
        ensure_eq!(r.stats.lease_lost, 0, "lease_lost");
    }
    for (w, id) in seen.lock().iter() {
        per_worker[*w] += 1;
        acc.seen(*id);
    }
    println!("handled per worker: {per_worker:?}");
    let (lost, unexpected, duplicated) = acc.report("worker jepsen");
    ensure_eq!(lost, 0, "lost");
    ensure_eq!(unexpected, 0, "unexpected");
    // Leases are 30 s: no lease expired, so no duplicate is allowed (Q9).
    ensure_eq!(duplicated, 0, "duplicated without any expired lease");
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.stored(), 0, "nothing left: {s:?}");
    ensure_eq!(s.retried, 0, "retried");
    Ok(())
}

async fn prefetch_bounds_leases(cx: Ctx) -> Outcome {
    let q = queue(&cx, "prefetch", plain_config())?;
    let (concurrency, prefetch) = (1u64, 2u64);
    let bound = concurrency + prefetch;
    let (open, gate_rx) = gate();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .concurrency(concurrency as usize)
        .prefetch(prefetch as usize)
        .handler("work", move |_m: Message| {
            let g = gate_rx.clone();
            async move {
                pass(g).await;
                Ok(())
            }
        })
        .start()?;
    publish_all(
        &cx,
        &q,
        (0..10)
            .map(|i| Message::new("work", format!("{i}")))
            .collect(),
    )
    .await?;
    let s = queue_until(&cx, &q, cx.prompt(), "concurrency + prefetch leased", |s| {
        s.in_flight >= bound
    })
    .await?;
    ensure_eq!(s.in_flight, bound, "leased at once");
    let window = Instant::now() + Duration::from_millis(300);
    while Instant::now() < window {
        let s = stats(&cx, &q).await?;
        ensure!(
            s.in_flight <= bound,
            "{} leased with concurrency {concurrency} + prefetch {prefetch}",
            s.in_flight
        );
        ensure_eq!(s.ready_total(), 10 - s.in_flight, "ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = open.send(true);
    let deadline = Instant::now() + cx.prompt();
    loop {
        let s = stats(&cx, &q).await?;
        ensure!(
            s.in_flight <= bound,
            "{} leased while draining (bound {bound})",
            s.in_flight
        );
        if s.acked == 10 {
            break;
        }
        ensure!(Instant::now() < deadline, "not drained in time: {s:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let report = stop(h, GRACE).await?;
    ensure_eq!(report.stats.succeeded, 10, "succeeded");
    ensure_eq!(report.stats.received, 10, "received");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// stop
// ---------------------------------------------------------------------------------------------

async fn graceful_releases_unstarted(cx: Ctx) -> Outcome {
    // 30 s leases: only a release can make the buffered messages ready within this case.
    let q = queue(&cx, "release", plain_config())?;
    let (open, gate_rx) = gate();
    let handled: Log<MessageId> = log();
    let hd = handled.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .concurrency(1)
        .prefetch(3)
        .handler("work", move |m: Message| {
            let (hd, g) = (hd.clone(), gate_rx.clone());
            async move {
                hd.lock().push(m.id);
                pass(g).await;
                Ok(())
            }
        })
        .start()?;
    let ids = publish_all(
        &cx,
        &q,
        (0..4)
            .map(|i| Message::new("work", format!("{i}")))
            .collect(),
    )
    .await?;
    wait_until(cx.prompt(), "the first handler", || {
        !handled.lock().is_empty()
    })
    .await?;
    queue_until(&cx, &q, cx.prompt(), "1 running + 3 prefetched", |s| {
        s.in_flight == 4
    })
    .await?;
    let stopper = tokio::spawn(async move { h.stop(Duration::from_secs(10)).await });
    // Released at once, while the running handler is still inside its grace period.
    queue_until(&cx, &q, cx.prompt(), "3 released to ready", |s| {
        s.ready_total() == 3 && s.in_flight == 1
    })
    .await?;
    let _ = open.send(true);
    let report = within(Duration::from_secs(20), "worker stop", stopper)
        .await?
        .map_err(|e| Failure(format!("stop task failed: {e}")))?;
    ensure_eq!(report.stats.released, 3, "released");
    ensure_eq!(report.stats.succeeded, 1, "succeeded");
    ensure_eq!(report.abandoned, 0, "abandoned");
    let handled = handled.lock().clone();
    ensure_eq!(handled.len(), 1, "handlers started");
    let rest = receive_n(cx.q(), &q, 3, cx.prompt()).await?;
    ensure!(
        rest.iter().all(|d| d.message.attempt == 1),
        "released messages must not count an attempt: {:?}",
        summary(&rest)
    );
    let mut want: HashSet<MessageId> = ids.into_iter().collect();
    want.remove(&handled[0]);
    ensure_eq!(
        rest.iter().map(|d| d.message.id).collect::<HashSet<_>>(),
        want,
        "the unstarted messages"
    );
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.retried, 0, "a release is not a failed attempt");
    ensure_eq!(s.acked, 1, "acked");
    Ok(())
}

async fn waits_for_in_flight(cx: Ctx) -> Outcome {
    let q = queue(&cx, "grace", plain_config())?;
    let finished = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let f = finished.clone();
    let work = Duration::from_millis(300);
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("work", move |_m: Message| {
            let (f, tx) = (f.clone(), tx.clone());
            async move {
                let _ = tx.send(());
                tokio::time::sleep(work).await; // the handler's work
                f.store(true, Ordering::SeqCst);
                Ok(())
            }
        })
        .start()?;
    publish(&cx, &q, Message::new("work", "")).await?;
    next(&mut rx, cx.prompt(), "the handler to start").await?;
    let grace = Duration::from_secs(5);
    let t0 = Instant::now();
    let report = stop(h, grace).await?;
    let took = t0.elapsed();
    ensure!(
        finished.load(Ordering::SeqCst),
        "stop returned after {took:?} before the running handler finished"
    );
    ensure!(
        took < grace - Duration::from_secs(1),
        "stop took {took:?}: it should end when the handler ends, not wait out the {grace:?} grace"
    );
    ensure_eq!(report.abandoned, 0, "abandoned");
    ensure_eq!(report.stats.succeeded, 1, "succeeded");
    ensure_eq!(report.stats.released, 0, "released");
    // Settled before stop returned.
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.acked, 1, "acked when stop returns");
    ensure_eq!(s.stored(), 0, "nothing left: {s:?}");
    Ok(())
}

async fn abandons_after_grace(cx: Ctx) -> Outcome {
    let q = queue(&cx, "abandon", plain_config())?;
    let (_never_open, gate_rx) = gate();
    let finished = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let f = finished.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("stuck", move |_m: Message| {
            let (f, tx, g) = (f.clone(), tx.clone(), gate_rx.clone());
            async move {
                let _ = tx.send(());
                pass(g).await;
                f.store(true, Ordering::SeqCst);
                Ok(())
            }
        })
        .start()?;
    let id = publish(&cx, &q, Message::new("stuck", "")).await?;
    next(&mut rx, cx.prompt(), "the handler to start").await?;
    let grace = Duration::from_millis(300);
    let t0 = Instant::now();
    let report = stop(h, grace).await?;
    let took = t0.elapsed();
    ensure!(
        took + SLACK >= grace,
        "stop returned after {took:?}, before the {grace:?} grace"
    );
    ensure!(
        took <= grace + cx.prompt(),
        "stop took {took:?} with a {grace:?} grace"
    );
    ensure_eq!(report.abandoned, 1, "abandoned");
    ensure_eq!(report.stats.released, 1, "released");
    ensure_eq!(report.stats.succeeded, 0, "succeeded");
    ensure!(
        !finished.load(Ordering::SeqCst),
        "the abandoned handler ran to completion"
    );
    // Ready again at once (the lease is 30 s), and the attempt is not counted.
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.in_flight, 0, "in flight after stop: {s:?}");
    ensure_eq!(s.ready_total(), 1, "ready after stop: {s:?}");
    let d = within(
        LIMIT,
        "receive",
        cx.q().receive_one(&q, Duration::from_millis(500)),
    )
    .await??
    .ok_or_else(|| Failure("the abandoned message is not receivable at once".into()))?;
    ensure_eq!(d.message.id, id, "id");
    ensure_eq!(d.message.attempt, 1, "an abandoned attempt is not counted");
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.retried, 0, "retried");
    ensure_eq!(s.dead, 0, "dead");
    Ok(())
}

async fn stop_mid_receive(cx: Ctx) -> Outcome {
    // The worker stops while one of its receives has leased a message whose reply is still
    // in transit (a remote broker's reply, or a claim running on a writer thread). DESIGN §4:
    // stop releases everything at once, nothing waits for a lease to expire. So after stop
    // the message must be handled or ready again with attempt 1 — never left leased to a
    // receive the worker dropped (it would come back only after its 30 s lease, as a failed
    // attempt).
    let q = queue(&cx, "midrecv", plain_config())?;
    let reply = Duration::from_millis(300);
    let slow = Counting::with_reply_delay(cx.backend.queue.clone(), reply);
    let handled: Log<MessageId> = log();
    let hd = handled.clone();
    let h = Worker::builder(slow, &q)
        .idle_wait(Duration::from_secs(2))
        .handler("m", move |m: Message| {
            let hd = hd.clone();
            async move {
                hd.lock().push(m.id);
                Ok(())
            }
        })
        .start()?;
    let id = publish(&cx, &q, Message::new("m", "")).await?;
    // The worker's receive has leased it; its reply is in transit for `reply`.
    queue_until(&cx, &q, cx.prompt(), "the worker's receive to lease", |s| {
        s.in_flight == 1
    })
    .await?;
    let report = stop(h, GRACE).await?;
    // Released at once, or at the latest when the reply lands: well before the 30 s lease.
    let (s, ok) = stats_until(cx.q(), &q, cx.prompt(), |s| s.in_flight == 0).await?;
    ensure!(
        ok,
        "a message is still leased {:?} after stop: it will come back only when its lease \
         expires, as a failed attempt (the worker received {} and released {}: it dropped a \
         receive that had leased) {s:?}",
        cx.prompt(),
        report.stats.received,
        report.stats.released
    );
    if handled.lock().contains(&id) {
        ensure_eq!(s.acked, 1, "handled and acked");
    } else {
        let d = within(
            LIMIT,
            "receive",
            cx.q().receive_one(&q, Duration::from_millis(500)),
        )
        .await??
        .ok_or_else(|| Failure(format!("message {id} is neither handled nor ready: {s:?}")))?;
        ensure_eq!(d.message.id, id, "id");
        ensure_eq!(d.message.attempt, 1, "a release does not count an attempt");
    }
    ensure_eq!(s.retried, 0, "no failed attempt");
    Ok(())
}

async fn no_receive_after_stop(cx: Ctx) -> Outcome {
    let q = queue(&cx, "stopped", plain_config())?;
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("m", move |_m: Message| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .start()?;
    publish(&cx, &q, Message::new("m", "")).await?;
    queue_until(&cx, &q, cx.prompt(), "acked", |s| s.acked == 1).await?;
    let report = stop(h, GRACE).await?;
    ensure_eq!(report.stats.received, 1, "received");
    publish(&cx, &q, Message::new("m", "")).await?;
    // A window in which a stopped worker must not take anything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.ready_total(), 1, "still ready after stop: {s:?}");
    ensure_eq!(s.in_flight, 0, "in flight: {s:?}");
    ensure_eq!(calls.load(Ordering::SeqCst), 1, "handler calls");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// idle
// ---------------------------------------------------------------------------------------------

async fn wakes_promptly_on_publish(cx: Ctx) -> Outcome {
    let q = queue(&cx, "wake", plain_config())?;
    let idle_wait = Duration::from_secs(8).max(cx.prompt() * 4);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .idle_wait(idle_wait)
        .handler("ping", move |_m: Message| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Instant::now());
                Ok(())
            }
        })
        .start()?;
    let mut latencies = Vec::new();
    for _ in 0..3 {
        // Let the worker sink into its long idle receive.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = Instant::now();
        publish(&cx, &q, Message::new("ping", "")).await?;
        let at = next(&mut rx, cx.prompt(), "the handler").await?;
        latencies.push(at.saturating_duration_since(t0));
    }
    println!("idle_wait {idle_wait:?}: publish-to-handler latencies {latencies:?}");
    for l in &latencies {
        ensure!(
            *l < cx.prompt() && *l < idle_wait / 4,
            "latency {l:?} with idle_wait {idle_wait:?}: the worker did not wake on publish"
        );
    }
    // Stop does not wait for the pending idle receive either.
    let t0 = Instant::now();
    stop(h, GRACE).await?;
    let took = t0.elapsed();
    ensure!(
        took < cx.prompt(),
        "stop of an idle worker took {took:?} (idle_wait {idle_wait:?})"
    );
    Ok(())
}

async fn does_not_spin(cx: Ctx) -> Outcome {
    let q = queue(&cx, "spin", plain_config())?;
    let counting = Counting::new(cx.backend.queue.clone());
    let idle_wait = Duration::from_millis(250);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = Worker::builder(counting.clone(), &q)
        .idle_wait(idle_wait)
        .handler("m", move |_m: Message| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(());
                Ok(())
            }
        })
        .start()?;
    let window = Duration::from_secs(1);
    let t0 = Instant::now();
    tokio::time::sleep(window).await; // the idle period being measured
    let calls = counting.receives.load(Ordering::Relaxed);
    let took = t0.elapsed();
    let allowed = (took.as_millis() / idle_wait.as_millis()) as u64 + 3;
    println!("idle for {took:?} with idle_wait {idle_wait:?}: {calls} receive calls");
    ensure!(calls >= 1, "the idle worker never called receive");
    ensure!(
        calls <= allowed,
        "{calls} receive calls in {took:?} with idle_wait {idle_wait:?} (at most {allowed}): the worker spins"
    );
    // Still alive.
    publish(&cx, &q, Message::new("m", "")).await?;
    next(&mut rx, cx.prompt(), "the handler").await?;
    stop(h, GRACE).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// priority
// ---------------------------------------------------------------------------------------------

async fn handles_critical_first(cx: Ctx) -> Outcome {
    let q = queue(&cx, "prio", plain_config())?;
    let order: Vec<(&str, Priority)> = vec![
        ("low-1", Priority::Low),
        ("normal-1", Priority::Normal),
        ("high-1", Priority::High),
        ("critical-1", Priority::Critical),
        ("low-2", Priority::Low),
        ("critical-2", Priority::Critical),
        ("normal-2", Priority::Normal),
        ("high-2", Priority::High),
    ];
    publish_all(
        &cx,
        &q,
        order
            .iter()
            .map(|(label, p)| Message::new("task", label.to_string()).with_priority(*p))
            .collect(),
    )
    .await?;
    let seen: Log<String> = log();
    let s2 = seen.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .concurrency(1)
        .prefetch(1)
        .handler("task", move |m: Message| {
            let s = s2.clone();
            async move {
                s.lock()
                    .push(String::from_utf8_lossy(&m.payload).into_owned());
                Ok(())
            }
        })
        .start()?;
    wait_until(cx.prompt(), "8 handled", || seen.lock().len() >= 8).await?;
    stop(h, GRACE).await?;
    let want = [
        "critical-1",
        "critical-2",
        "high-1",
        "high-2",
        "normal-1",
        "normal-2",
        "low-1",
        "low-2",
    ];
    ensure_eq!(seen.lock().clone(), want.to_vec(), "handling order");
    Ok(())
}

async fn critical_overtakes_while_busy(cx: Ctx) -> Outcome {
    let q = queue(&cx, "overtake", plain_config())?;
    let (open, gate_rx) = gate();
    let seen: Log<String> = log();
    let s2 = seen.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .concurrency(1)
        .prefetch(0)
        .handler("task", move |m: Message| {
            let (s, g) = (s2.clone(), gate_rx.clone());
            async move {
                let label = String::from_utf8_lossy(&m.payload).into_owned();
                s.lock().push(label.clone());
                if label == "blocker" {
                    pass(g).await;
                }
                Ok(())
            }
        })
        .start()?;
    publish(&cx, &q, Message::new("task", "blocker")).await?;
    wait_until(cx.prompt(), "the blocker to start", || {
        !seen.lock().is_empty()
    })
    .await?;
    // With prefetch 0 nothing else is leased while the blocker runs.
    publish(
        &cx,
        &q,
        Message::new("task", "low").with_priority(Priority::Low),
    )
    .await?;
    publish(&cx, &q, Message::new("task", "normal")).await?;
    publish(
        &cx,
        &q,
        Message::new("task", "critical").with_priority(Priority::Critical),
    )
    .await?;
    let s = stats(&cx, &q).await?;
    ensure_eq!(
        s.in_flight,
        1,
        "prefetch 0 leases only the running message: {s:?}"
    );
    let _ = open.send(true);
    wait_until(cx.prompt(), "4 handled", || seen.lock().len() >= 4).await?;
    stop(h, GRACE).await?;
    ensure_eq!(
        seen.lock().clone(),
        vec!["blocker", "critical", "normal", "low"],
        "handling order"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// dispatcher
// ---------------------------------------------------------------------------------------------

async fn dispatcher_routes(cx: Ctx) -> Outcome {
    let media = queue(&cx, "media", plain_config())?;
    let ai = queue(&cx, "ai", plain_config())?;
    let fallback = queue(&cx, "default", plain_config())?;
    let d = Dispatcher::new(cx.backend.queue.clone());
    d.route("media.transcode", &media)?;
    d.route_with_priority("speech_recognition", &ai, Some(Priority::High))?;
    ensure_eq!(
        d.queue_for("media.transcode"),
        Some(media.clone()),
        "queue_for"
    );
    ensure_eq!(
        d.queue_for("nobody.owns"),
        None,
        "queue_for an unrouted kind"
    );
    let id_media = within(
        LIMIT,
        "dispatch",
        d.dispatch(Message::new("media.transcode", "m")),
    )
    .await??;
    let id_ai = within(
        LIMIT,
        "dispatch_json",
        d.dispatch_json(
            "speech_recognition",
            &Job {
                n: 7,
                name: "meeting-42".into(),
                tags: vec![],
            },
        ),
    )
    .await??;
    // An unknown kind without a default queue is an error, and nothing is published.
    let err = within(
        LIMIT,
        "dispatch",
        d.dispatch(Message::new("nobody.owns", "")),
    )
    .await?
    .err()
    .ok_or_else(|| Failure("dispatching an unrouted kind succeeded".into()))?;
    ensure_eq!(err.kind(), ErrorKind::InvalidInput, "error kind ({err})");
    ensure!(
        err.to_string().contains("nobody.owns"),
        "the error should name the kind: {err}"
    );
    ensure!(
        d.route("x", "not a valid name!").is_err(),
        "routing to an invalid queue name must fail"
    );
    let got = receive_n(cx.q(), &media, 1, cx.prompt()).await?;
    ensure_eq!(got[0].message.id, id_media, "media queue got its message");
    let got = receive_n(cx.q(), &ai, 1, cx.prompt()).await?;
    ensure_eq!(got[0].message.id, id_ai, "ai queue got its message");
    ensure_eq!(
        got[0].message.priority,
        Priority::High,
        "the route's priority applies to a default-priority message"
    );
    for (name, want) in [(&media, 1), (&ai, 1), (&fallback, 0)] {
        ensure_eq!(
            stats(&cx, name).await?.published,
            want,
            "published to {name}"
        );
    }
    // With a default queue, unrouted kinds go there.
    d.set_default_queue(&fallback)?;
    let id = within(
        LIMIT,
        "dispatch",
        d.dispatch(Message::new("nobody.owns", "")),
    )
    .await??;
    let got = receive_n(cx.q(), &fallback, 1, cx.prompt()).await?;
    ensure_eq!(
        got[0].message.id,
        id,
        "the default queue got the unrouted kind"
    );
    ensure_eq!(stats(&cx, &media).await?.published, 1, "media untouched");
    Ok(())
}

async fn dispatcher_batch(cx: Ctx) -> Outcome {
    let qa = queue(&cx, "batch-a", plain_config())?;
    let qb = queue(&cx, "batch-b", plain_config())?;
    let d = Dispatcher::new(cx.backend.queue.clone());
    d.route("a", &qa)?;
    d.route("b", &qb)?;
    let ids = within(
        LIMIT,
        "dispatch_batch",
        d.dispatch_batch(vec![
            Message::new("a", "a1"),
            Message::new("b", "b1"),
            Message::new("a", "a2"),
            Message::new("b", "b2"),
            Message::new("a", "a3"),
        ]),
    )
    .await??;
    ensure_eq!(ids.len(), 5, "ids returned");
    let payloads = |ds: &[Delivery]| {
        ds.iter()
            .map(|d| String::from_utf8_lossy(&d.message.payload).into_owned())
            .collect::<Vec<_>>()
    };
    let a = receive_n(cx.q(), &qa, 3, cx.prompt()).await?;
    ensure_eq!(payloads(&a), vec!["a1", "a2", "a3"], "queue a in order");
    let b = receive_n(cx.q(), &qb, 2, cx.prompt()).await?;
    ensure_eq!(payloads(&b), vec!["b1", "b2"], "queue b in order");
    // A batch with an unrouted kind fails before anything is published.
    let r = within(
        LIMIT,
        "dispatch_batch",
        d.dispatch_batch(vec![Message::new("a", "a4"), Message::new("zzz", "")]),
    )
    .await?;
    ensure!(r.is_err(), "a batch with an unrouted kind must fail");
    ensure_eq!(
        stats(&cx, &qa).await?.published,
        3,
        "nothing of the failed batch published"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// scheduler
// ---------------------------------------------------------------------------------------------

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

async fn scheduler_publish_after(cx: Ctx) -> Outcome {
    let q = queue(&cx, "after", plain_config())?;
    let d = Dispatcher::new(cx.backend.queue.clone());
    d.route("reminder", &q)?;
    let sched = Scheduler::new(d, cx.q().clock());
    let (h, mut rx) = timing_worker(&cx, &q, "reminder")?;
    let delay = Duration::from_millis(400);
    let t0 = Instant::now();
    let id = within(
        LIMIT,
        "publish_after",
        sched.publish_after(Message::new("reminder", ""), delay),
    )
    .await??;
    let (m, at) = next(&mut rx, delay + cx.prompt(), "the scheduled message").await?;
    let took = at - t0;
    stop(h, GRACE).await?;
    ensure_eq!(m.id, id, "id");
    ensure!(
        took + SLACK >= delay,
        "handled after {took:?}, before the {delay:?} delay"
    );
    ensure!(
        took <= delay + cx.prompt(),
        "handled after {took:?}, not promptly after {delay:?}"
    );
    println!("publish_after {delay:?}: handled after {took:?}");
    Ok(())
}

async fn scheduler_publish_at(cx: Ctx) -> Outcome {
    let q = queue(&cx, "at", plain_config())?;
    let d = Dispatcher::new(cx.backend.queue.clone());
    d.route("reminder", &q)?;
    let clock = cx.q().clock();
    let sched = Scheduler::new(d, clock.clone());
    let (h, mut rx) = timing_worker(&cx, &q, "reminder")?;
    let delay = Duration::from_millis(400);
    let t0 = Instant::now();
    let at_ms = clock.now_ms() + delay.as_millis() as u64;
    let id = within(
        LIMIT,
        "publish_at",
        sched.publish_at(Message::new("reminder", ""), at_ms),
    )
    .await??;
    let (m, at) = next(&mut rx, delay + cx.prompt(), "the scheduled message").await?;
    let handled_ms = clock.now_ms();
    let took = at - t0;
    stop(h, GRACE).await?;
    ensure_eq!(m.id, id, "id");
    ensure!(
        handled_ms >= at_ms,
        "handled at {handled_ms} ms, before the scheduled {at_ms} ms"
    );
    // `now_ms` truncates to whole milliseconds: allow that and the usual slack.
    ensure!(
        took + SLACK >= delay,
        "handled after {took:?}, before the {delay:?} schedule"
    );
    ensure!(took <= delay + cx.prompt(), "handled after {took:?}");
    Ok(())
}

async fn scheduler_recurring(cx: Ctx) -> Outcome {
    let q = queue(&cx, "recurring", plain_config())?;
    let d = Dispatcher::new(cx.backend.queue.clone());
    d.route("tick", &q)?;
    let sched = Scheduler::new(d, cx.q().clock());
    ensure!(
        sched
            .recurring("zero", Every::Interval(Duration::ZERO), || Message::new(
                "tick", ""
            ))
            .is_err(),
        "a zero interval must be rejected"
    );
    ensure!(
        sched
            .recurring("bad", Every::Cron("not cron".into()), || Message::new(
                "tick", ""
            ))
            .is_err(),
        "an invalid cron expression must be rejected"
    );
    let (h, mut rx) = timing_worker(&cx, &q, "tick")?;
    let every = Duration::from_millis(200);
    let name = "heartbeat";
    let t0 = Instant::now();
    let schedule = sched.recurring(name, Every::Interval(every), || Message::new("tick", ""))?;
    ensure_eq!(schedule.name(), name, "schedule name");
    let mut fired = Vec::new();
    for i in 1..=3u32 {
        let (m, at) = next(&mut rx, every + cx.prompt(), "a recurring firing").await?;
        ensure_eq!(
            m.header(courier_core::scheduler::SCHEDULE_HEADER),
            Some(name),
            "schedule header"
        );
        let took = at - t0;
        ensure!(
            took + SLACK >= every * i,
            "firing {i} handled after {took:?}, before {:?}",
            every * i
        );
        fired.push(took);
    }
    println!("interval {every:?}: firings handled after {fired:?}");
    schedule.cancel();
    // Let a publish that was under way when cancelled land, then nothing more may come.
    tokio::time::sleep(every * 2).await;
    let p1 = stats(&cx, &q).await?.published;
    tokio::time::sleep(every * 3).await;
    let p2 = stats(&cx, &q).await?.published;
    ensure_eq!(p2, p1, "published after cancel");
    stop(h, GRACE).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// delay
// ---------------------------------------------------------------------------------------------

async fn delayed_not_before_due(cx: Ctx) -> Outcome {
    let q = queue(&cx, "delayed", plain_config())?;
    let (h, mut rx) = timing_worker(&cx, &q, "job")?;
    let delay = Duration::from_millis(500);
    let t0 = Instant::now();
    let later = publish(&cx, &q, Message::new("job", "later").with_delay(delay)).await?;
    let now = publish(&cx, &q, Message::new("job", "now")).await?;
    let (first, _) = next(&mut rx, cx.prompt(), "the ready message").await?;
    ensure_eq!(first.id, now, "the ready message is handled first");
    let (second, at) = next(&mut rx, delay + cx.prompt(), "the delayed message").await?;
    let took = at - t0;
    stop(h, GRACE).await?;
    ensure_eq!(second.id, later, "the delayed message");
    ensure!(
        took + SLACK >= delay,
        "delayed message handled after {took:?}, before its {delay:?} delay"
    );
    ensure!(
        took <= delay + cx.prompt(),
        "delayed message handled after {took:?}, not promptly after {delay:?}"
    );
    ensure_eq!(second.attempt, 1, "attempt");
    println!(
        "delay {delay:?}: handled after {took:?} (tick {:?})",
        cx.tick
    );
    Ok(())
}
