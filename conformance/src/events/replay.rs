//! EventBus cases, E5 Replay and retention: `events::replay::*`.

use std::time::{Duration, Instant};

use courier_core::{ErrorKind, EventBus, EventBusExt, Page, ReplayFrom, Settle};

use super::{ack_all, bus, emit_n, expect_none, gstats, ids, recv_n, reset, settle};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, expect_kind, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!("events::replay::reset_to_start", ["E5"], reset_start),
        case!("events::replay::reset_to_time", ["E5"], reset_time),
        case!("events::replay::reset_to_id", ["E5"], reset_id),
        case!("events::replay::reset_to_end", ["E5"], reset_end),
        case!(
            "events::replay::reset_drops_pending_keeps_dead",
            ["E5", "E3"],
            reset_keeps_dead
        ),
    ]
}

/// Wait (bounded) until the backend clock reads at least `at_ms`.
async fn clock_past(b: &dyn EventBus, at_ms: u64) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.clock().now_ms() < at_ms {
        ensure!(
            Instant::now() < deadline,
            "the backend clock did not reach {at_ms}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

async fn reset_start(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let sent = emit_n(b, &t, "e", 10).await?;
    let got = recv_n(b, &t, &g, 10, cx.prompt()).await?;
    ack_all(b, &t, &g, &got).await?;
    expect_none(b, &t, &g, Duration::from_millis(100)).await?;
    reset(b, &t, &g, ReplayFrom::Start).await?;
    let again = recv_n(b, &t, &g, 10, cx.prompt()).await?;
    ensure_eq!(ids(&again), sent, "replayed from the start, in order");
    ack_all(b, &t, &g, &again).await?;
    expect_none(b, &t, &g, Duration::from_millis(100)).await?;
    // Another group is not reset.
    let o = cx.name("other");
    let og = recv_n(b, &t, &o, 10, cx.prompt()).await?;
    ack_all(b, &t, &o, &og).await?;
    reset(b, &t, &g, ReplayFrom::Start).await?;
    expect_none(b, &t, &o, Duration::from_millis(100)).await
}

async fn reset_time(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    emit_n(b, &t, "old", 5).await?;
    // A clear gap on each side of the instant, so clock granularity cannot blur it.
    let t1 = b.clock().now_ms();
    clock_past(b, t1 + 30).await?;
    let at = b.clock().now_ms();
    clock_past(b, at + 30).await?;
    let new = emit_n(b, &t, "new", 5).await?;
    let got = recv_n(b, &t, &g, 10, cx.prompt()).await?;
    ack_all(b, &t, &g, &got).await?;
    reset(b, &t, &g, ReplayFrom::Time(at)).await?;
    let again = recv_n(b, &t, &g, 5, cx.prompt()).await?;
    ensure_eq!(
        ids(&again),
        new,
        "replay from a time starts at the first event emitted at or after it"
    );
    ack_all(b, &t, &g, &again).await?;
    expect_none(b, &t, &g, Duration::from_millis(150)).await
}

async fn reset_id(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let sent = emit_n(b, &t, "e", 10).await?;
    let got = recv_n(b, &t, &g, 10, cx.prompt()).await?;
    ack_all(b, &t, &g, &got).await?;
    reset(b, &t, &g, ReplayFrom::Id(sent[4])).await?;
    let again = recv_n(b, &t, &g, 6, cx.prompt()).await?;
    ensure_eq!(
        ids(&again),
        sent[4..].to_vec(),
        "replay from an id includes that event and everything after it"
    );
    ack_all(b, &t, &g, &again).await?;
    expect_none(b, &t, &g, Duration::from_millis(150)).await?;
    // Backwards and forwards again: from the first id.
    reset(b, &t, &g, ReplayFrom::Id(sent[0])).await?;
    let all = recv_n(b, &t, &g, 10, cx.prompt()).await?;
    ensure_eq!(ids(&all), sent, "replay from the first id");
    Ok(())
}

async fn reset_end(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    emit_n(b, &t, "old", 5).await?;
    reset(b, &t, &g, ReplayFrom::End).await?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(s.lag, 0, "lag after reset to the end");
    expect_none(b, &t, &g, Duration::from_millis(200)).await?;
    let new = emit_n(b, &t, "new", 2).await?;
    let got = recv_n(b, &t, &g, 2, cx.prompt()).await?;
    ensure_eq!(ids(&got), new, "only events emitted after the reset");
    Ok(())
}

async fn reset_keeps_dead(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let sent = emit_n(b, &t, "e", 4).await?;
    let ds = recv_n(b, &t, &g, 3, cx.prompt()).await?;
    settle(
        b,
        &t,
        &g,
        Settle::Bury {
            lease: ds[0].lease,
            error: "dead".into(),
        },
    )
    .await?;
    settle(
        b,
        &t,
        &g,
        Settle::Retry {
            lease: ds[1].lease,
            delay: Duration::from_secs(30),
            error: "later".into(),
        },
    )
    .await?;
    // ds[2] stays leased, sent[3] is still unread.
    reset(b, &t, &g, ReplayFrom::End).await?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (
            s.queue.ready_total(),
            s.queue.delayed,
            s.queue.in_flight,
            s.queue.dead,
            s.lag
        ),
        (0, 0, 0, 1, 0),
        "(ready, delayed, in_flight, dead, lag) after reset: pending dropped, dead kept"
    );
    let r = within(cx.prompt(), "ack", b.ack(&t, &g, &ds[2].lease)).await?;
    expect_kind(
        r,
        ErrorKind::LeaseLost,
        "ack of a lease dropped by the reset",
    )?;
    expect_none(b, &t, &g, Duration::from_millis(150)).await?;
    let dl = within(
        cx.prompt(),
        "dead_letters",
        b.dead_letters(&t, &g, Page::first(10)),
    )
    .await??;
    ensure_eq!(
        dl.iter().map(|d| d.message.id).collect::<Vec<_>>(),
        vec![sent[0]],
        "dead letters kept across a reset"
    );
    Ok(())
}
