//! Worker cases, handler timeouts: `worker::timeout::*`.
//!
//! A handler that never returns is cancelled at its timeout and counted as a failed attempt
//! ("handler timed out after …"), which then follows the retry policy like any failure; its
//! concurrency slot is free again at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_core::{Message, QueueExt, RetryPolicy, Worker};

use super::{GRACE, cfg, dead, publish, publish_all, queue, queue_until, stop};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "worker::timeout::hung_handler_retried_then_dead_lettered",
            ["W", "Q5", "Q6"],
            hung_then_dead
        ),
        case!(
            "worker::timeout::slots_are_freed_for_other_work",
            ["W"],
            slots_freed
        ),
        case!(
            "worker::timeout::message_limit_wins_over_the_queue",
            ["W"],
            message_limit_wins
        ),
        case!(
            "worker::timeout::a_retry_after_a_timeout_can_succeed",
            ["W", "Q5"],
            retry_succeeds
        ),
    ]
}

/// A handler future that never completes; it counts its cancellations (drops).
fn hang(dropped: Arc<AtomicU64>) -> impl std::future::Future<Output = courier_core::HandlerResult> {
    struct OnDrop(Arc<AtomicU64>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let guard = OnDrop(dropped);
    async move {
        let _guard = guard;
        std::future::pending::<()>().await;
        Ok(())
    }
}

async fn hung_then_dead(cx: Ctx) -> Outcome {
    let limit = Duration::from_millis(300);
    let backoff = Duration::from_millis(50);
    let q = queue(
        &cx,
        "hung",
        cfg(
            RetryPolicy::exact(3, backoff, 1.0, backoff),
            Duration::from_secs(30),
        )
        .with_handler_timeout(limit),
    )?;
    let dropped = Arc::new(AtomicU64::new(0));
    let d = dropped.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .concurrency(4)
        .handler("hang", move |_m: Message| hang(d.clone()))
        .start()?;
    let started = Instant::now();
    publish_all(&cx, &q, (0..3).map(|_| Message::new("hang", "")).collect()).await?;
    // 3 attempts of `limit` each, with a backoff between them.
    let bound = (limit + backoff) * 3 + cx.prompt();
    let s = queue_until(&cx, &q, bound, "all three dead", |s| s.dead == 3).await?;
    let took = started.elapsed();
    ensure!(
        took >= limit * 3,
        "dead after {took:?}, before three timeouts of {limit:?}"
    );
    ensure_eq!(
        (s.retried, s.in_flight),
        (6, 0),
        "two retries each, none leased"
    );
    for dl in dead(&cx, &q).await? {
        ensure_eq!(dl.attempts, 3, "attempts of {}", dl.message.id);
        ensure!(
            dl.error.starts_with("handler timed out after 300ms"),
            "dead-letter error {:?}",
            dl.error
        );
    }
    let report = stop(h, GRACE).await?;
    ensure_eq!(report.stats.timed_out, 9, "timed-out runs");
    ensure_eq!(report.stats.dead, 3, "dead");
    ensure_eq!(
        dropped.load(Ordering::Relaxed),
        9,
        "every timed-out handler future was cancelled (dropped)"
    );
    ensure_eq!(report.abandoned, 0, "nothing left running at stop");
    Ok(())
}

async fn slots_freed(cx: Ctx) -> Outcome {
    let limit = Duration::from_millis(400);
    let q = queue(
        &cx,
        "slots",
        cfg(
            RetryPolicy::exact(2, Duration::ZERO, 1.0, Duration::ZERO),
            Duration::from_secs(30),
        )
        .with_handler_timeout(limit),
    )?;
    let dropped = Arc::new(AtomicU64::new(0));
    let d = dropped.clone();
    let quick = Arc::new(AtomicU64::new(0));
    let qk = quick.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .concurrency(2)
        .handler("hang", move |_m: Message| hang(d.clone()))
        .handler("quick", move |_m: Message| {
            qk.fetch_add(1, Ordering::Relaxed);
            async { Ok(()) }
        })
        .start()?;
    // Hung messages first, then quick ones: with 2 slots, the quick ones are handled only
    // because timed-out handlers give their slots back.
    publish_all(&cx, &q, (0..4).map(|_| Message::new("hang", "")).collect()).await?;
    publish_all(
        &cx,
        &q,
        (0..200)
            .map(|i| Message::new("quick", format!("{i}")))
            .collect(),
    )
    .await?;
    let bound = limit * 8 + cx.prompt();
    queue_until(&cx, &q, bound, "quick ones acked, hung ones dead", |s| {
        s.acked == 200 && s.dead == 4
    })
    .await?;
    ensure_eq!(quick.load(Ordering::Relaxed), 200, "quick handlers ran");
    let report = stop(h, GRACE).await?;
    ensure_eq!(report.stats.timed_out, 8, "two timed-out attempts each");
    ensure!(
        report.stats.max_in_progress <= 2,
        "concurrency held: {:?}",
        report.stats
    );
    ensure_eq!(report.stats.in_progress, 0, "no slot leaked");
    Ok(())
}

async fn message_limit_wins(cx: Ctx) -> Outcome {
    // The queue allows 60 s; one message allows 200 ms; another runs 300 ms under the
    // queue's limit and succeeds.
    let q = queue(
        &cx,
        "permsg",
        cfg(
            RetryPolicy::exact(1, Duration::ZERO, 1.0, Duration::ZERO),
            Duration::from_secs(30),
        )
        .with_handler_timeout(Duration::from_secs(60)),
    )?;
    let dropped = Arc::new(AtomicU64::new(0));
    let d = dropped.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .concurrency(2)
        .handler("hang", move |_m: Message| hang(d.clone()))
        .handler("slow", |_m: Message| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(())
        })
        .start()?;
    let hung = publish(
        &cx,
        &q,
        Message::new("hang", "").with_handler_timeout(Duration::from_millis(200)),
    )
    .await?;
    publish(&cx, &q, Message::new("slow", "")).await?;
    queue_until(
        &cx,
        &q,
        cx.prompt() + Duration::from_secs(1),
        "one dead, one acked",
        |s| s.dead == 1 && s.acked == 1,
    )
    .await?;
    let dls = dead(&cx, &q).await?;
    ensure_eq!(dls.len(), 1, "one dead letter");
    ensure_eq!(dls[0].message.id, hung, "the hung one");
    ensure!(
        dls[0].error.starts_with("handler timed out after 200ms"),
        "error {:?}",
        dls[0].error
    );
    // A malformed limit is refused at publish, before anything is stored.
    let bad = Message::new("slow", "")
        .with_header(courier_core::message::headers::HANDLER_TIMEOUT_MS, "soon");
    let r = crate::within(super::LIMIT, "publish", cx.q().publish(&q, bad)).await?;
    ensure!(
        r.as_ref()
            .is_err_and(|e| e.kind() == courier_core::ErrorKind::InvalidInput),
        "a non-numeric limit must be refused: {r:?}"
    );
    stop(h, GRACE).await?;
    Ok(())
}

async fn retry_succeeds(cx: Ctx) -> Outcome {
    let limit = Duration::from_millis(200);
    let q = queue(
        &cx,
        "retryok",
        cfg(
            RetryPolicy::exact(3, Duration::ZERO, 1.0, Duration::ZERO),
            Duration::from_secs(30),
        )
        .with_handler_timeout(limit),
    )?;
    let dropped = Arc::new(AtomicU64::new(0));
    let d = dropped.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .handler("once", move |m: Message| {
            let d = d.clone();
            async move {
                if m.attempt == 1 {
                    hang(d).await
                } else {
                    Ok(())
                }
            }
        })
        .start()?;
    publish(&cx, &q, Message::new("once", "")).await?;
    let s = queue_until(
        &cx,
        &q,
        limit + cx.prompt(),
        "acked on the second attempt",
        |s| s.acked == 1,
    )
    .await?;
    ensure_eq!((s.retried, s.dead), (1, 0), "one retry, nothing dead");
    let report = stop(h, GRACE).await?;
    ensure_eq!(
        (report.stats.timed_out, report.stats.succeeded),
        (1, 1),
        "counters"
    );
    Ok(())
}
