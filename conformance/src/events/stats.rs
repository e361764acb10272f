//! EventBus cases, stats: `events::stats::*`.

use std::time::Duration;

use courier_core::Settle;

use super::{ack_all, bus, emit_n, gstats, kinds, recv_n, settle};
use crate::{Case, Ctx, Outcome, case, ensure_eq, plain_config};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "events::stats::lag_in_flight_and_dead",
            ["E2", "E3"],
            stats_lag
        ),
        case!(
            "events::stats::lag_falls_only_as_events_are_read",
            ["E2", "E3"],
            lag_only_as_read
        ),
        case!(
            "events::stats::ready_events_are_normal",
            ["E3", "E4"],
            ready_normal
        ),
    ]
}

async fn stats_lag(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    b.configure_group(&t, &g, plain_config())?;
    emit_n(b, &t, "e", 10).await?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.lag, s.queue.in_flight, s.queue.dead),
        (10, 0, 0),
        "(lag, in_flight, dead) of a group that has read nothing"
    );
    let ds = recv_n(b, &t, &g, 4, cx.prompt()).await?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.lag, s.queue.in_flight),
        (6, 4),
        "(lag, in_flight) after 4 received"
    );
    ack_all(b, &t, &g, &ds[..2]).await?;
    settle(
        b,
        &t,
        &g,
        Settle::Bury {
            lease: ds[2].lease,
            error: "x".into(),
        },
    )
    .await?;
    settle(
        b,
        &t,
        &g,
        Settle::Retry {
            lease: ds[3].lease,
            delay: Duration::from_secs(30),
            error: "x".into(),
        },
    )
    .await?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (
            s.lag,
            s.queue.in_flight,
            s.queue.delayed,
            s.queue.dead,
            s.queue.acked,
            s.queue.retried,
            s.queue.dead_lettered
        ),
        (6, 0, 1, 1, 2, 1, 1),
        "(lag, in_flight, delayed, dead, acked, retried, dead_lettered)"
    );
    let rest = recv_n(b, &t, &g, 6, cx.prompt()).await?;
    ensure_eq!(
        kinds(&rest),
        (4..10).map(|i| format!("e{i}")).collect::<Vec<_>>(),
        "the unread events"
    );
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.lag, s.queue.in_flight),
        (0, 6),
        "(lag, in_flight) at the head"
    );
    Ok(())
}

/// Groups ignore priority (E4): a group's ready events are counted at Normal, `ready[2]`
/// (E3), whatever priority they were emitted with.
async fn ready_normal(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    b.configure_group(&t, &g, plain_config())?;
    let critical =
        courier_core::Message::new("c", "").with_priority(courier_core::Priority::Critical);
    super::emit_one(b, &t, critical).await?;
    emit_n(b, &t, "e", 2).await?;
    let ds = recv_n(b, &t, &g, 3, cx.prompt()).await?;
    for d in &ds {
        let retry = Settle::Retry {
            lease: d.lease,
            delay: Duration::ZERO,
            error: "again".into(),
        };
        settle(b, &t, &g, retry).await?;
    }
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(s.queue.ready, [0, 0, 3, 0], "ready events, all at Normal");
    Ok(())
}

/// `lag` counts events not read yet: a receive served partly from retried (ready) events
/// reads only the rest from the log, and lag falls by that rest.
async fn lag_only_as_read(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    b.configure_group(&t, &g, plain_config())?;
    emit_n(b, &t, "e", 10).await?;
    let ds = recv_n(b, &t, &g, 2, cx.prompt()).await?;
    for d in &ds {
        let retry = Settle::Retry {
            lease: d.lease,
            delay: Duration::ZERO,
            error: "again".into(),
        };
        settle(b, &t, &g, retry).await?;
    }
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.lag, s.queue.ready_total(), s.queue.in_flight),
        (8, 2, 0),
        "(lag, ready, in flight) after 2 read and retried"
    );
    // Four wanted, two of them ready: only two more come from the log.
    let again = recv_n(b, &t, &g, 4, cx.prompt()).await?;
    let mut attempts: Vec<u32> = again.iter().map(|d| d.message.attempt).collect();
    attempts.sort();
    ensure_eq!(
        attempts,
        vec![1, 1, 2, 2],
        "the 2 retried events and 2 new ones"
    );
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.lag, s.queue.ready_total(), s.queue.in_flight),
        (6, 0, 4),
        "(lag, ready, in flight) after receiving the 2 retried and 2 new events"
    );
    ack_all(b, &t, &g, &again).await?;
    let rest = recv_n(b, &t, &g, 6, cx.prompt()).await?;
    ack_all(b, &t, &g, &rest).await?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(s.lag, 0, "lag once everything is read");
    Ok(())
}
