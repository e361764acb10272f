//! EventBus cases, E2 Groups: `events::groups::*`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_core::{EventBus, MessageId, Settle};
use parking_lot::Mutex;

use super::{ack_all, bus, emit_n, expect_none, gstats, ids, recv_n, recv_one, topic_len};
use crate::{Accounting, Case, Ctx, Failure, Outcome, case, ensure_eq, within};

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
