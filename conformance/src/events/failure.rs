//! EventBus cases, E3 Failure rules: `events::failure::*`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_core::{
    ErrorKind, EventBusExt, GroupConsumer, HandlerError, Message, MessageId, Page, RetryPolicy,
    Selection, Settle,
};
use parking_lot::Mutex;

use super::{
    TOL, ack_all, bus, emit_n, emit_one, expect_none, gstats, gstats_until, recv_n, recv_one,
    settle, short_lease, stop_worker, topic_len,
};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, expect_kind, plain_config, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "events::failure::expired_lease_redelivers_next_attempt",
            ["E3"],
            lease_expiry
        ),
        case!(
            "events::failure::retry_not_before_its_delay",
            ["E3"],
            retry_delay
        ),
        case!(
            "events::failure::max_attempts_then_group_dead_letter",
            ["E3"],
            max_attempts_dead
        ),
        case!(
            "events::failure::stale_token_is_lease_lost",
            ["E3"],
            stale_token
        ),
        case!(
            "events::failure::double_ack_is_lease_lost",
            ["E3"],
            double_ack
        ),
        case!(
            "events::failure::extend_pushes_the_deadline",
            ["E3"],
            extend
        ),
        case!(
            "events::failure::release_does_not_count_attempt",
            ["E3"],
            release
        ),
        case!(
            "events::failure::requeue_and_purge_group_dead_letters",
            ["E3"],
            requeue_purge
        ),
        case!(
            "events::failure::consumer_retries_with_group_backoff",
            ["E3"],
            consumer_backoff
        ),
        case!(
            "events::failure::hung_consumer_handler_times_out",
            ["E3", "W"],
            consumer_timeout
        ),
    ]
}

/// A group's `handler_timeout` cancels a handler that never returns; each run is a failed
/// attempt of the group, then a group dead letter with the timeout reason.
async fn consumer_timeout(cx: Ctx) -> Outcome {
    let b = cx.backend.events.clone();
    let t = cx.name("t");
    let g = cx.name("g");
    let limit = Duration::from_millis(250);
    b.configure_group(
        &t,
        &g,
        plain_config()
            .with_retry(RetryPolicy::exact(2, Duration::ZERO, 1.0, Duration::ZERO))
            .with_handler_timeout(limit),
    )?;
    let h = GroupConsumer::builder(b.clone(), &g)
        .on(&t, |_m: Message| async {
            std::future::pending::<()>().await;
            Ok(())
        })
        .idle_wait(Duration::from_millis(100))
        .start()
        .await?;
    let id = emit_one(&*b, &t, Message::new("e", "x")).await?;
    let (s, ok) = gstats_until(&*b, &t, &g, limit * 2 + cx.prompt(), |s| s.queue.dead == 1).await?;
    stop_worker(h).await?;
    ensure!(ok, "dead-lettered after 2 timed-out attempts: {s:?}");
    let dl = within(
        cx.prompt(),
        "dead_letters",
        b.dead_letters(&t, &g, Page::first(10)),
    )
    .await??;
    ensure_eq!(dl.len(), 1, "dead letters");
    ensure_eq!((dl[0].message.id, dl[0].attempts), (id, 2), "dead letter");
    ensure_eq!(dl[0].error, "handler timed out after 250ms", "the reason");
    Ok(())
}

async fn lease_expiry(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let vis = Duration::from_millis(300);
    b.configure_group(&t, &g, short_lease(300, 5))?;
    let id = emit_one(b, &t, Message::new("e", "x")).await?;
    let start = Instant::now();
    let d1 = recv_one(b, &t, &g, cx.prompt()).await?;
    ensure_eq!(
        (d1.message.id, d1.message.attempt),
        (id, 1),
        "first delivery"
    );
    let d2 = recv_one(b, &t, &g, vis + cx.prompt()).await?;
    let after = start.elapsed();
    ensure_eq!(d2.message.id, id, "the same event comes back");
    ensure_eq!(d2.message.attempt, 2, "with attempt + 1");
    ensure_eq!(d2.lease.attempt, 2, "lease attempt");
    ensure!(d2.lease.token != d1.lease.token, "a new lease token");
    ensure!(
        after + TOL >= vis,
        "redelivered after {after:?}, before the {vis:?} lease ended"
    );
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.queue.in_flight, s.queue.retried),
        (1, 1),
        "(in_flight, retried): an expired lease counts as a failed attempt"
    );
    Ok(())
}

async fn retry_delay(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    b.configure_group(&t, &g, plain_config())?;
    let id = emit_one(b, &t, Message::new("e", "x")).await?;
    let d1 = recv_one(b, &t, &g, cx.prompt()).await?;
    let delay = Duration::from_millis(300);
    let start = Instant::now();
    settle(
        b,
        &t,
        &g,
        Settle::Retry {
            lease: d1.lease,
            delay,
            error: "try later".into(),
        },
    )
    .await?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.queue.delayed, s.queue.in_flight, s.queue.retried),
        (1, 0, 1),
        "(delayed, in_flight, retried) right after the retry"
    );
    let d2 = recv_one(b, &t, &g, delay + cx.prompt()).await?;
    let after = start.elapsed();
    ensure_eq!((d2.message.id, d2.message.attempt), (id, 2), "redelivery");
    ensure!(
        after + TOL >= delay,
        "redelivered {after:?} after the retry, before its {delay:?} delay"
    );
    ensure!(
        after <= delay + cx.prompt(),
        "redelivered {after:?} after the retry: not prompt"
    );
    Ok(())
}

async fn max_attempts_dead(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let healthy = cx.name("healthy");
    let vis = Duration::from_millis(250);
    b.configure_group(&t, &g, short_lease(250, 2))?;
    b.configure_group(&t, &healthy, plain_config())?;
    let id = emit_one(b, &t, Message::new("e", "x")).await?;
    let d1 = recv_one(b, &t, &g, cx.prompt()).await?;
    ensure_eq!(d1.message.attempt, 1, "first attempt");
    let d2 = recv_one(b, &t, &g, vis + cx.prompt()).await?;
    ensure_eq!(
        (d2.message.id, d2.message.attempt),
        (id, 2),
        "second attempt"
    );
    // The second lease expires too: out of attempts, into this group's dead letters.
    let (s, ok) = gstats_until(b, &t, &g, vis + cx.prompt(), |s| s.queue.dead == 1).await?;
    ensure!(ok, "one dead letter after max_attempts: {s:?}");
    ensure_eq!(
        (s.queue.in_flight, s.queue.dead_lettered),
        (0, 1),
        "(in_flight, dead_lettered)"
    );
    expect_none(b, &t, &g, Duration::from_millis(150)).await?;
    let dl = within(
        cx.prompt(),
        "dead_letters",
        b.dead_letters(&t, &g, Page::first(10)),
    )
    .await??;
    ensure_eq!(dl.len(), 1, "dead letters of the group");
    ensure_eq!(dl[0].message.id, id, "dead letter id");
    ensure_eq!(dl[0].attempts, 2, "dead letter attempts");
    ensure!(!dl[0].error.is_empty(), "the dead letter has an error");
    ensure!(dl[0].failed_at > 0, "failed_at set");
    // Another group of the same topic is unaffected.
    let h = recv_one(b, &t, &healthy, cx.prompt()).await?;
    ensure_eq!((h.message.id, h.message.attempt), (id, 1), "other group");
    let hs = gstats(b, &t, &healthy).await?;
    ensure_eq!(hs.queue.dead, 0, "the other group has no dead letter");
    let hdl = within(
        cx.prompt(),
        "dead_letters",
        b.dead_letters(&t, &healthy, Page::first(10)),
    )
    .await??;
    ensure!(hdl.is_empty(), "dead letters are per group");
    ensure_eq!(topic_len(b, &t).await?, 1, "the log keeps the event");
    Ok(())
}

async fn stale_token(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    b.configure_group(&t, &g, short_lease(250, 5))?;
    emit_one(b, &t, Message::new("e", "x")).await?;
    let d1 = recv_one(b, &t, &g, cx.prompt()).await?;
    let d2 = recv_one(b, &t, &g, Duration::from_millis(250) + cx.prompt()).await?;
    ensure_eq!(d2.message.attempt, 2, "redelivered after the lease expired");
    let r = within(cx.prompt(), "ack", b.ack(&t, &g, &d1.lease)).await?;
    expect_kind(r, ErrorKind::LeaseLost, "ack with the expired lease")?;
    let r = within(
        cx.prompt(),
        "extend",
        b.extend(&t, &g, &d1.lease, Duration::from_secs(5)),
    )
    .await?;
    expect_kind(r, ErrorKind::LeaseLost, "extend with the expired lease")?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.queue.in_flight, s.queue.acked),
        (1, 0),
        "the stale ack changed nothing"
    );
    within(cx.prompt(), "ack", b.ack(&t, &g, &d2.lease)).await??;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.queue.in_flight, s.queue.acked),
        (0, 1),
        "the current lease acks"
    );
    Ok(())
}

async fn double_ack(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    emit_n(b, &t, "e", 2).await?;
    let ds = recv_n(b, &t, &g, 2, cx.prompt()).await?;
    within(cx.prompt(), "ack", b.ack(&t, &g, &ds[0].lease)).await??;
    let r = within(cx.prompt(), "ack", b.ack(&t, &g, &ds[0].lease)).await?;
    expect_kind(r, ErrorKind::LeaseLost, "second ack")?;
    let r = within(
        cx.prompt(),
        "settle",
        b.settle_one(
            &t,
            &g,
            Settle::Retry {
                lease: ds[0].lease,
                delay: Duration::ZERO,
                error: "x".into(),
            },
        ),
    )
    .await?;
    expect_kind(r, ErrorKind::LeaseLost, "retry after ack")?;
    let r = within(
        cx.prompt(),
        "settle",
        b.settle_one(
            &t,
            &g,
            Settle::Bury {
                lease: ds[0].lease,
                error: "x".into(),
            },
        ),
    )
    .await?;
    expect_kind(r, ErrorKind::LeaseLost, "bury after ack")?;
    // A batch reports each result: one stale, one current.
    let rs = within(
        cx.prompt(),
        "settle",
        b.settle(
            &t,
            &g,
            vec![Settle::Ack(ds[0].lease), Settle::Ack(ds[1].lease)],
        ),
    )
    .await??;
    ensure_eq!(rs.len(), 2, "results");
    ensure!(
        rs[0].as_ref().err().map(|e| e.kind()) == Some(ErrorKind::LeaseLost),
        "stale ack in a batch: {:?}",
        rs[0].as_ref().map_err(|e| e.to_string())
    );
    ensure!(
        rs[1].is_ok(),
        "current ack in a batch: {:?}",
        rs[1].as_ref().map_err(|e| e.to_string())
    );
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (
            s.queue.acked,
            s.queue.dead,
            s.queue.delayed,
            s.queue.in_flight
        ),
        (2, 0, 0, 0),
        "(acked, dead, delayed, in_flight): a double ack is never a second removal"
    );
    expect_none(b, &t, &g, Duration::from_millis(100)).await
}

async fn extend(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    b.configure_group(&t, &g, short_lease(300, 5))?;
    emit_one(b, &t, Message::new("e", "x")).await?;
    let d = recv_one(b, &t, &g, cx.prompt()).await?;
    let start = Instant::now();
    let l2 = within(
        cx.prompt(),
        "extend",
        b.extend(&t, &g, &d.lease, Duration::from_millis(1500)),
    )
    .await??;
    ensure!(
        l2.deadline_ms > d.lease.deadline_ms,
        "extend moves the deadline ({} -> {})",
        d.lease.deadline_ms,
        l2.deadline_ms
    );
    ensure_eq!(l2.id, d.lease.id, "extended lease id");
    // Past the original 300 ms lease, the event must stay leased.
    expect_none(b, &t, &g, Duration::from_millis(600)).await?;
    ensure!(
        start.elapsed() < Duration::from_millis(1500),
        "the check ran too slowly to judge ({:?})",
        start.elapsed()
    );
    within(cx.prompt(), "ack", b.ack(&t, &g, &l2)).await??;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.queue.acked, s.queue.retried, s.queue.in_flight),
        (1, 0, 0),
        "(acked, retried, in_flight) after acking the extended lease"
    );
    Ok(())
}

async fn release(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let id = emit_one(b, &t, Message::new("e", "x")).await?;
    let d1 = recv_one(b, &t, &g, cx.prompt()).await?;
    settle(b, &t, &g, Settle::Release(d1.lease)).await?;
    let d2 = recv_one(b, &t, &g, cx.prompt()).await?;
    ensure_eq!(
        (d2.message.id, d2.message.attempt),
        (id, 1),
        "a released event is ready at once and the attempt is not counted"
    );
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(s.queue.retried, 0, "a release is not a retry");
    Ok(())
}

async fn requeue_purge(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let other = cx.name("other");
    let sent = emit_n(b, &t, "e", 3).await?;
    let ds = recv_n(b, &t, &g, 3, cx.prompt()).await?;
    for (i, d) in ds.iter().enumerate() {
        settle(
            b,
            &t,
            &g,
            Settle::Bury {
                lease: d.lease,
                error: format!("bad {i}"),
            },
        )
        .await?;
    }
    let dl = within(
        cx.prompt(),
        "dead_letters",
        b.dead_letters(&t, &g, Page::first(10)),
    )
    .await??;
    let dl_ids: Vec<MessageId> = dl.iter().map(|d| d.message.id).collect();
    ensure_eq!(dl_ids, sent, "dead letters oldest first");
    ensure_eq!(dl[1].error, "bad 1", "error kept");
    let page = within(
        cx.prompt(),
        "dead_letters",
        b.dead_letters(
            &t,
            &g,
            Page {
                offset: 1,
                limit: 1,
            },
        ),
    )
    .await??;
    ensure_eq!(
        page.iter().map(|d| d.message.id).collect::<Vec<_>>(),
        vec![sent[1]],
        "a page of dead letters"
    );
    // The other group is untouched by this group's dead letters and their requeue.
    let o = recv_n(b, &t, &other, 3, cx.prompt()).await?;
    ack_all(b, &t, &other, &o).await?;
    let n = within(
        cx.prompt(),
        "requeue_dead",
        b.requeue_dead(&t, &g, Selection::Ids(vec![sent[1], MessageId::new()])),
    )
    .await??;
    ensure_eq!(n, 1, "requeued (unknown ids not counted)");
    let d = recv_one(b, &t, &g, cx.prompt()).await?;
    ensure_eq!(
        (d.message.id, d.message.attempt),
        (sent[1], 1),
        "a requeued event keeps its id and starts at attempt 1"
    );
    ack_all(b, &t, &g, std::slice::from_ref(&d)).await?;
    expect_none(b, &t, &other, Duration::from_millis(100)).await?;
    let n = within(
        cx.prompt(),
        "purge_dead",
        b.purge_dead(&t, &g, Selection::Ids(vec![sent[0]])),
    )
    .await??;
    ensure_eq!(n, 1, "purged one");
    let n = within(
        cx.prompt(),
        "purge_dead",
        b.purge_dead(&t, &g, Selection::All),
    )
    .await??;
    ensure_eq!(n, 1, "purged the rest");
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(s.queue.dead, 0, "no dead letters left");
    ensure_eq!(topic_len(b, &t).await?, 3, "the log is untouched");
    Ok(())
}

async fn consumer_backoff(cx: Ctx) -> Outcome {
    let b = cx.backend.events.clone();
    let t = cx.name("t");
    let g = cx.name("g");
    let base = Duration::from_millis(80);
    b.configure_group(
        &t,
        &g,
        plain_config().with_retry(RetryPolicy::exact(3, base, 2.0, Duration::from_secs(5))),
    )?;
    let calls = Arc::new(Mutex::new(Vec::<(u32, Instant)>::new()));
    let c = calls.clone();
    let h = GroupConsumer::builder(b.clone(), &g)
        .on(&t, move |m: Message| {
            let c = c.clone();
            async move {
                c.lock().push((m.attempt, Instant::now()));
                Err(HandlerError::retry(format!("failing {}", m.attempt)))
            }
        })
        .idle_wait(Duration::from_millis(100))
        .concurrency(1)
        .start()
        .await?;
    let id = emit_one(&*b, &t, Message::new("e", "x")).await?;
    let (s, ok) = gstats_until(&*b, &t, &g, base * 3 + cx.prompt(), |s| s.queue.dead == 1).await?;
    stop_worker(h).await?;
    ensure!(ok, "dead-lettered after 3 attempts: {s:?}");
    let seen = calls.lock().clone();
    ensure_eq!(
        seen.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "attempts seen by the handler"
    );
    let gap1 = seen[1].1 - seen[0].1;
    let gap2 = seen[2].1 - seen[1].1;
    ensure!(
        gap1 + TOL >= base,
        "second attempt after {gap1:?} < {base:?}"
    );
    ensure!(
        gap2 + TOL >= base * 2,
        "third attempt after {gap2:?} < {:?}",
        base * 2
    );
    let dl = within(
        cx.prompt(),
        "dead_letters",
        b.dead_letters(&t, &g, Page::first(10)),
    )
    .await??;
    ensure_eq!(dl.len(), 1, "dead letters");
    ensure_eq!((dl[0].message.id, dl[0].attempts), (id, 3), "dead letter");
    ensure_eq!(dl[0].error, "failing 3", "the last error");
    ensure_eq!(
        (s.queue.retried, s.queue.dead_lettered),
        (2, 1),
        "(retried, dead_lettered)"
    );
    Ok(())
}
