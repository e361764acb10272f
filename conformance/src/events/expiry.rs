//! EventBus cases, Q12 expiry per event: `events::expiry::*`.
//!
//! An event emitted with an expiry is delivered to a group only if the group leases it before
//! the expiry; a group that reaches it later skips it (counted in its `expired`, kept in its
//! dead letters unless it drops expired events). The log keeps the event (retention is
//! unchanged), so other groups are unaffected.

use std::time::Duration;

use courier_core::backend::EXPIRED;
use courier_core::{Message, Page};

use super::{ack_all, bus, emit_one, expect_none, gstats, recv_n, topic_len};
use crate::{Case, Ctx, Outcome, case, clock_past, ensure_eq, plain_config, within};

const LIMIT: Duration = Duration::from_secs(10);

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "events::expiry::late_group_skips_an_expired_event",
            ["Q12", "E2"],
            late_group_skips
        ),
        case!(
            "events::expiry::group_dropping_expired_events_keeps_no_dead_letter",
            ["Q12", "E3"],
            group_drops
        ),
    ]
}

async fn late_group_skips(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let (early, late) = (cx.name("early"), cx.name("late"));
    b.configure_group(&t, &early, plain_config())?;
    b.configure_group(&t, &late, plain_config())?;
    let at = cx.backend.queue.clock().now_ms() + 200;
    let stale = Message::new("typing", "u1").with_expires_at(at);
    let stale_id = stale.id;
    emit_one(b, &t, stale).await?;
    emit_one(b, &t, Message::new("joined", "u2")).await?;
    // The early group reads both in time.
    let got = recv_n(b, &t, &early, 2, LIMIT).await?;
    ensure_eq!(
        got.iter()
            .map(|d| d.message.kind.as_str())
            .collect::<Vec<_>>(),
        vec!["typing", "joined"],
        "the early group"
    );
    ack_all(b, &t, &early, &got).await?;
    // The late group reaches the log after the expiry: only the live event.
    clock_past(&cx, at + 1).await?;
    let got = recv_n(b, &t, &late, 1, LIMIT).await?;
    ensure_eq!(got[0].message.kind.as_str(), "joined", "the late group");
    ack_all(b, &t, &late, &got).await?;
    expect_none(b, &t, &late, Duration::from_millis(100)).await?;
    let s = gstats(b, &t, &late).await?;
    ensure_eq!(
        (
            s.queue.expired,
            s.queue.dead,
            s.queue.acked,
            s.queue.dead_lettered
        ),
        (1, 1, 1, 0),
        "late group: (expired, dead, acked, dead_lettered)"
    );
    let dl = within(
        LIMIT,
        "dead_letters",
        b.dead_letters(&t, &late, Page::first(10)),
    )
    .await??;
    ensure_eq!(dl.len(), 1, "one dead letter");
    ensure_eq!(
        (dl[0].message.id, dl[0].error.as_str(), dl[0].attempts),
        (stale_id, EXPIRED, 0),
        "(id, reason, attempts)"
    );
    let s = gstats(b, &t, &early).await?;
    ensure_eq!((s.queue.expired, s.queue.acked), (0, 2), "early group");
    ensure_eq!(topic_len(b, &t).await?, 2, "the log keeps the event");
    Ok(())
}

async fn group_drops(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    b.configure_group(&t, &g, plain_config().with_drop_expired(true))?;
    let at = cx.backend.queue.clock().now_ms() + 100;
    b.emit_batch(
        &t,
        vec![
            Message::new("ice1", "").with_expires_at(at),
            Message::new("ice2", "").with_expires_at(at),
            Message::new("offer", "").with_ttl(Duration::from_secs(60)),
        ],
    )
    .await?;
    clock_past(&cx, at + 1).await?;
    let got = recv_n(b, &t, &g, 1, LIMIT).await?;
    ensure_eq!(got[0].message.kind.as_str(), "offer", "the live event");
    ack_all(b, &t, &g, &got).await?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.queue.expired, s.queue.dead, s.queue.acked),
        (2, 0, 1),
        "(expired, dead, acked)"
    );
    Ok(())
}
