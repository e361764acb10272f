//! Queue cases, Q8 stats: `queue::stats::*`.

use std::time::Duration;

use courier_core::{Message, Priority, QueueExt, RetryPolicy, Selection, Settle};

use super::{LIMIT, config_with, kinds, one, publish, publish_all, queue, settle};
use crate::{Case, Ctx, Outcome, case, ensure_eq, expect_nothing, plain_config, receive_n, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!("queue::stats::ready_per_priority", ["Q8"], stats_ready),
        case!(
            "queue::stats::counters_follow_each_transition",
            ["Q8"],
            stats_counters
        ),
        case!(
            "queue::stats::current_without_other_calls",
            ["Q8", "Q3", "Q4"],
            stats_current
        ),
        case!(
            "queue::stats::unknown_queue_is_empty",
            ["Q8"],
            stats_unknown
        ),
    ]
}

async fn stats_ready(cx: Ctx) -> Outcome {
    let q = queue(&cx, "sready", plain_config())?;
    let mut ms = Vec::new();
    for (p, n) in [
        (Priority::Critical, 1),
        (Priority::High, 2),
        (Priority::Normal, 3),
        (Priority::Low, 4),
    ] {
        for _ in 0..n {
            ms.push(Message::new("s", "").with_priority(p));
        }
    }
    publish_all(&cx, &q, ms).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        s.ready,
        [1, 2, 3, 4],
        "ready per priority (critical, high, normal, low)"
    );
    ensure_eq!(s.ready_total(), 10, "total");
    let _d = receive_n(cx.q(), &q, 2, LIMIT).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.ready, s.in_flight),
        ([0, 1, 3, 4], 2),
        "after leasing two"
    );
    Ok(())
}

async fn stats_counters(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "scount",
        config_with(
            RetryPolicy::exact(2, Duration::ZERO, 2.0, Duration::ZERO),
            Duration::from_secs(30),
        ),
    )?;
    publish_all(&cx, &q, kinds(3, "c")).await?;
    let ds = receive_n(cx.q(), &q, 3, LIMIT).await?;
    settle(&cx, &q, Settle::Ack(ds[0].lease)).await?;
    within(LIMIT, "nack", cx.q().nack(&q, &ds[1], "e")).await??;
    settle(
        &cx,
        &q,
        Settle::Bury {
            lease: ds[2].lease,
            error: "e".into(),
        },
    )
    .await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.published, s.acked, s.retried, s.dead_lettered),
        (3, 1, 1, 1),
        "counters"
    );
    ensure_eq!(
        (s.ready_total(), s.in_flight, s.dead, s.delayed),
        (1, 0, 1, 0),
        "states"
    );
    let n = within(LIMIT, "requeue", cx.q().requeue_dead(&q, Selection::All)).await??;
    ensure_eq!(n, 1, "requeued");
    let s2 = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s2.ready_total(), s2.dead, s2.published),
        (2, 0, 3),
        "requeue is not a publish"
    );
    Ok(())
}

async fn stats_unknown(cx: Ctx) -> Outcome {
    let name = cx.name("never-used");
    let s = within(LIMIT, "stats", cx.q().stats(&name)).await??;
    ensure_eq!(
        s,
        courier_core::QueueStats::default(),
        "a typo'd queue is simply empty"
    );
    expect_nothing(cx.q(), &name, Duration::from_millis(50)).await
}

/// Stats are a snapshot of now, not of the last receive: once a delay has passed and a lease
/// has expired, `stats` alone shows both messages ready, nothing delayed or in flight, and
/// the expiry counted as a retry.
async fn stats_current(cx: Ctx) -> Outcome {
    let vis = Duration::from_millis(200);
    let q = queue(
        &cx,
        "snap",
        config_with(
            RetryPolicy::exact(5, Duration::ZERO, 2.0, Duration::ZERO),
            vis,
        ),
    )?;
    publish(&cx, &q, Message::new("leased", "")).await?;
    let _d = one(&cx, &q, LIMIT).await?;
    publish(&cx, &q, Message::new("later", "").with_delay(vis)).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.in_flight, s.delayed),
        (1, 1),
        "(in flight, delayed) at first"
    );
    // The passing of time is what is under test: no other call on the queue meanwhile.
    tokio::time::sleep(vis + Duration::from_millis(150)).await;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.ready_total(), s.delayed, s.in_flight, s.retried),
        (2, 0, 0, 1),
        "(ready, delayed, in flight, retried) once the delay and the lease ran out"
    );
    Ok(())
}
