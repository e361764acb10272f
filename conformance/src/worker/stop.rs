//! Worker cases, stop: `worker::stop::*`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_core::{Message, MessageId, QueueExt, Worker};
use tokio::sync::mpsc;

use super::{
    Counting, GRACE, LIMIT, Log, SLACK, gate, log, next, pass, publish, publish_all, queue,
    queue_until, stats, stop, wait_until,
};
use crate::{
    Case, Ctx, Failure, Outcome, case, ensure, ensure_eq, plain_config, receive_n, stats_until,
    summary, within,
};

pub(super) fn cases() -> Vec<Case> {
    vec![
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
    ]
}

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
