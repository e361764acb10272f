//! Worker cases, lease: `worker::lease::*`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use courier_core::{Message, MessageId, Worker};
use tokio::sync::mpsc;

use super::{
    Counting, GRACE, Log, cfg, log, next, publish, publish_all, queue, queue_until, stats, stop,
    wait_until,
};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, expect_nothing, plain_config};

pub(super) fn cases() -> Vec<Case> {
    vec![
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
    ]
}

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
