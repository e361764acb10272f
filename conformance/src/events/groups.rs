//! EventBus cases, E2 Groups: `events::groups::*`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_core::{EventBus, GroupConsumer, Message, MessageId, ReplayFrom, Settle, WorkerHandle};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::{
    ack_all, bus, emit_n, expect_none, gstats, gstats_until, ids, recv_n, recv_one, settle,
    stop_worker, topic_len, until,
};
use crate::{
    Accounting, Case, Ctx, Failure, Outcome, case, ensure, ensure_eq, plain_config, within,
};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "events::groups::every_group_gets_every_event",
            ["E2"],
            every_group_every_event
        ),
        case!(
            "events::groups::competing_receivers_never_share_an_event",
            ["E2"],
            competing_receivers
        ),
        case!(
            "events::groups::group_that_was_down_gets_what_it_missed",
            ["E2"],
            group_was_down
        ),
        case!(
            "events::groups::new_group_starts_at_retained_start",
            ["E2", "E5"],
            new_group_starts_at_start
        ),
        case!(
            "events::groups::second_handle_shares_group_state",
            ["E2", "E3"],
            second_handle_shares
        ),
        case!(
            "events::groups::same_group_on_two_topics_is_independent",
            ["E2"],
            group_per_topic
        ),
        case!(
            "events::groups::start_from_end_sees_only_events_after_start",
            ["E2", "E5"],
            start_from_end
        ),
        case!(
            "events::groups::start_from_keeps_an_existing_group",
            ["E2", "E5"],
            start_from_existing
        ),
        case!(
            "events::groups::group_consumer_prefetch_bounds_leases",
            ["E2", "W"],
            consumer_prefetch
        ),
    ]
}

async fn every_group_every_event(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let sent = emit_n(b, &t, "e", 20).await?;
    let groups: Vec<String> = (0..3).map(|i| cx.name(&format!("g{i}"))).collect();
    // The first group reads and acks everything before the others read anything.
    for g in &groups {
        let got = recv_n(b, &t, g, 20, cx.prompt()).await?;
        ensure_eq!(ids(&got), sent, "group {g} got every event, in order");
        ack_all(b, &t, g, &got).await?;
        expect_none(b, &t, g, Duration::from_millis(100)).await?;
    }
    for g in &groups {
        let s = gstats(b, &t, g).await?;
        ensure_eq!(
            (s.lag, s.queue.in_flight, s.queue.acked),
            (0, 0, 20),
            "group {g} (lag, in_flight, acked)"
        );
    }
    Ok(())
}

async fn competing_receivers(cx: Ctx) -> Outcome {
    let t = cx.name("t");
    let g = cx.name("g");
    let n = 300usize;
    let b = cx.backend.events.clone();
    let mut acc = Accounting::default();
    for id in emit_n(&*b, &t, "e", n).await? {
        acc.sent(id);
    }
    let seen = Arc::new(Mutex::new(Vec::<(usize, MessageId)>::new()));
    let mut tasks = Vec::new();
    for r in 0..2usize {
        let b = b.clone();
        let (t, g, seen) = (t.clone(), g.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if seen.lock().len() >= n || Instant::now() >= deadline {
                    return Ok::<_, courier_core::Error>(());
                }
                let ds = b.receive(&t, &g, 3, Duration::from_millis(100)).await?;
                for d in &ds {
                    seen.lock().push((r, d.message.id));
                }
                if !ds.is_empty() {
                    // Simulated work while holding the leases, so the receivers overlap.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let ops = ds.iter().map(|d| Settle::Ack(d.lease)).collect();
                for res in b.settle(&t, &g, ops).await? {
                    res?;
                }
            }
        }));
    }
    for task in tasks {
        within(Duration::from_secs(30), "receiver task", task)
            .await?
            .map_err(|e| Failure(format!("receiver task failed: {e}")))??;
    }
    let seen = seen.lock().clone();
    for (_, id) in &seen {
        acc.seen(*id);
    }
    let (lost, unexpected, duplicated) = acc.report("events competing receivers");
    let per: Vec<usize> = (0..2)
        .map(|r| seen.iter().filter(|(w, _)| *w == r).count())
        .collect();
    println!("per receiver: {per:?}");
    ensure_eq!(
        (lost, unexpected, duplicated),
        (0, 0, 0),
        "(lost, unexpected, duplicated) with no lease expiring"
    );
    Ok(())
}

async fn group_was_down(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let other = cx.name("other");
    emit_n(b, &t, "first", 1).await?;
    let d = recv_one(b, &t, &g, cx.prompt()).await?;
    ack_all(b, &t, &g, std::slice::from_ref(&d)).await?;
    // The group is "down": events keep coming and another group keeps reading.
    let missed = emit_n(b, &t, "missed", 5).await?;
    let o = recv_n(b, &t, &other, 6, cx.prompt()).await?;
    ack_all(b, &t, &other, &o).await?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(s.lag, 5, "lag of the group that was down");
    let got = recv_n(b, &t, &g, 5, cx.prompt()).await?;
    ensure_eq!(ids(&got), missed, "the group gets exactly what it missed");
    ack_all(b, &t, &g, &got).await?;
    expect_none(b, &t, &g, Duration::from_millis(100)).await
}

async fn new_group_starts_at_start(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let early = emit_n(b, &t, "early", 5).await?;
    let g = cx.name("late");
    let got = recv_n(b, &t, &g, 5, cx.prompt()).await?;
    ensure_eq!(
        ids(&got),
        early,
        "a group created after the emits reads from the start of the retained log"
    );
    Ok(())
}

async fn second_handle_shares(cx: Ctx) -> Outcome {
    let a = bus(&cx);
    let other = within(
        Duration::from_secs(30),
        "reopen",
        cx.factory.reopen(&cx.ns, &cx.backend),
    )
    .await??;
    let b2: &dyn EventBus = &*other.events;
    let t = cx.name("t");
    let g = cx.name("g");
    let sent = emit_n(a, &t, "e", 6).await?;
    ensure_eq!(
        topic_len(b2, &t).await?,
        6,
        "the second handle sees the log"
    );
    let first = recv_n(a, &t, &g, 2, cx.prompt()).await?;
    ack_all(a, &t, &g, &first).await?;
    let held = recv_one(a, &t, &g, cx.prompt()).await?;
    // The second handle gets neither the acked nor the leased events.
    let rest = recv_n(b2, &t, &g, 3, cx.prompt()).await?;
    ensure_eq!(
        ids(&rest),
        sent[3..].to_vec(),
        "the second handle continues where the group is"
    );
    expect_none(b2, &t, &g, Duration::from_millis(200)).await?;
    let s = gstats(b2, &t, &g).await?;
    ensure_eq!(
        (s.queue.in_flight, s.lag),
        (4, 0),
        "(in_flight, lag) seen by the second handle"
    );
    // A lease taken on one handle can be settled on the other.
    ack_all(b2, &t, &g, std::slice::from_ref(&held)).await?;
    ack_all(a, &t, &g, &rest).await?;
    let s = gstats(a, &t, &g).await?;
    ensure_eq!(s.queue.in_flight, 0, "in_flight after every ack");
    Ok(())
}

async fn group_per_topic(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t1 = cx.name("t1");
    let t2 = cx.name("t2");
    let g = cx.name("g");
    let a = emit_n(b, &t1, "one", 3).await?;
    let c = emit_n(b, &t2, "two", 2).await?;
    let got1 = recv_n(b, &t1, &g, 3, cx.prompt()).await?;
    ensure_eq!(ids(&got1), a, "topic 1 for the group");
    ack_all(b, &t1, &g, &got1).await?;
    expect_none(b, &t1, &g, Duration::from_millis(100)).await?;
    let s2 = gstats(b, &t2, &g).await?;
    ensure_eq!(s2.lag, 2, "the same group on topic 2 is unaffected");
    let got2 = recv_n(b, &t2, &g, 2, cx.prompt()).await?;
    ensure_eq!(ids(&got2), c, "topic 2 for the group");
    Ok(())
}

/// A one-topic consumer recording the ids it handles, one at a time, in order.
async fn recording_consumer(
    cx: &Ctx,
    topic: &str,
    group: &str,
    from: ReplayFrom,
) -> Result<(WorkerHandle, Arc<Mutex<Vec<MessageId>>>), Failure> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let h = within(
        cx.prompt(),
        "group consumer start",
        GroupConsumer::builder(cx.backend.events.clone(), group)
            .on(topic, move |m: Message| {
                let s = s.clone();
                async move {
                    s.lock().push(m.id);
                    Ok(())
                }
            })
            .concurrency(1)
            .idle_wait(Duration::from_millis(100))
            .start_from(from)
            .start(),
    )
    .await??;
    Ok((h, seen))
}

async fn start_from_end(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    emit_n(b, &t, "old", 5).await?;
    // Configuring the group and looking at it does not create it: it is still new.
    b.configure_group(&t, &g, plain_config())?;
    ensure_eq!(
        gstats(b, &t, &g).await?.lag,
        5,
        "lag of a group that has not read yet"
    );
    let (h, seen) = recording_consumer(&cx, &t, &g, ReplayFrom::End).await?;
    // Emitted once start returned: all of these, and none of the old ones.
    let new = emit_n(b, &t, "new", 3).await?;
    let done = until(cx.prompt(), || seen.lock().len() >= 3).await;
    let (s, acked) = gstats_until(b, &t, &g, cx.prompt(), |s| s.queue.acked >= 3).await?;
    // Nothing more comes (an old event would arrive within this window).
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_worker(h).await?;
    ensure!(done && acked, "handled {:?}; stats {s:?}", seen.lock());
    ensure_eq!(
        seen.lock().clone(),
        new,
        "a new group started from the end sees only the events emitted after start"
    );
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.lag, s.queue.in_flight, s.queue.acked),
        (0, 0, 3),
        "(lag, in_flight, acked) of the group started from the end"
    );
    Ok(())
}

async fn start_from_existing(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let first = emit_n(b, &t, "first", 3).await?;
    // The group exists: it read the three, acked two and gave the third back.
    let got = recv_n(b, &t, &g, 3, cx.prompt()).await?;
    ack_all(b, &t, &g, &got[..2]).await?;
    settle(b, &t, &g, Settle::Release(got[2].lease)).await?;
    // While no consumer runs, more events come.
    let missed = emit_n(b, &t, "missed", 2).await?;
    let (h, seen) = recording_consumer(&cx, &t, &g, ReplayFrom::End).await?;
    let done = until(cx.prompt(), || seen.lock().len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_worker(h).await?;
    ensure!(done, "handled {:?}", seen.lock());
    let want = [vec![first[2]], missed].concat();
    ensure_eq!(
        seen.lock().clone(),
        want,
        "an existing group keeps its position and pending event: start_from changes nothing"
    );
    // The primitive says so too, and changes nothing either.
    let created = within(
        cx.prompt(),
        "create_group",
        b.create_group(&t, &g, ReplayFrom::Start),
    )
    .await??;
    ensure!(!created, "create_group on an existing group returned true");
    expect_none(b, &t, &g, Duration::from_millis(150)).await
}

async fn consumer_prefetch(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    b.configure_group(&t, &g, plain_config())?;
    // Default prefetch would lease concurrency * 2 = 4; prefetch(1) bounds it at 3.
    let (concurrency, prefetch) = (2u64, 1u64);
    let bound = concurrency + prefetch;
    let (open, gate) = watch::channel(false);
    let h = within(
        cx.prompt(),
        "group consumer start",
        GroupConsumer::builder(cx.backend.events.clone(), &g)
            .on(&t, move |_m: Message| {
                let mut g = gate.clone();
                async move {
                    let _ = g.wait_for(|open| *open).await;
                    Ok(())
                }
            })
            .concurrency(concurrency as usize)
            .prefetch(prefetch as usize)
            .idle_wait(Duration::from_millis(100))
            .start(),
    )
    .await??;
    emit_n(b, &t, "e", 10).await?;
    let (s, ok) = gstats_until(b, &t, &g, cx.prompt(), |s| s.queue.in_flight >= bound).await?;
    ensure!(ok, "concurrency + prefetch = {bound} leased: {s:?}");
    ensure_eq!(s.queue.in_flight, bound, "leased at once");
    let window = Instant::now() + Duration::from_millis(300);
    while Instant::now() < window {
        let s = gstats(b, &t, &g).await?;
        ensure!(
            s.queue.in_flight <= bound,
            "{} leased with concurrency {concurrency} + prefetch {prefetch}",
            s.queue.in_flight
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = open.send(true);
    let deadline = Instant::now() + cx.prompt();
    loop {
        let s = gstats(b, &t, &g).await?;
        ensure!(
            s.queue.in_flight <= bound,
            "{} leased while draining (bound {bound})",
            s.queue.in_flight
        );
        if s.queue.acked == 10 {
            break;
        }
        ensure!(Instant::now() < deadline, "not drained in time: {s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop_worker(h).await
}
