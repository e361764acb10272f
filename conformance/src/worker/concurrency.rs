//! Worker cases, concurrency: `worker::concurrency::*`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_core::{Message, MessageId, Worker};

use super::{
    GRACE, Log, gate, log, pass, publish_all, queue, queue_until, stats, stop, wait_until,
};
use crate::{Accounting, Case, Ctx, Outcome, case, ensure, ensure_eq, plain_config};

pub(super) fn cases() -> Vec<Case> {
    vec![
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
    ]
}

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
    if let Err(f) = wait_until(limit, "every message handled", || {
        seen.lock().len() >= total
    })
    .await
    {
        // Say where the rest are: ready, leased (in flight) or gone, and what each worker did.
        let handled = seen.lock().len();
        let queue = stats(&cx, &q).await;
        let per_worker: Vec<_> = workers.iter().map(|h| h.stats()).collect();
        return Err(crate::Failure(format!(
            "{}: {handled} of {total} handled; queue {queue:?}; workers {per_worker:?}",
            f.0
        )));
    }
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
