//! EventBus cases, E8 pausing a consumer group: `events::pause::*`.

use std::time::Duration;

use courier_core::{EventBus, ReplayFrom, Settle};

use super::{ack_all, bus, emit_n, expect_none, gstats, recv_n, settle, short_lease};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, within};

const LIMIT: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(200);

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "events::pause::paused_group_receives_nothing_and_its_lag_grows",
            ["E8", "E2"],
            holds_and_lags
        ),
        case!(
            "events::pause::seen_by_another_handle",
            ["E8"],
            another_handle
        ),
        case!(
            "events::pause::pausing_an_unknown_group_neither_creates_nor_lists_it",
            ["E8", "E7"],
            unknown_group
        ),
        case!(
            "events::pause::leases_granted_before_stay_valid",
            ["E8", "E3"],
            leases_stay_valid
        ),
    ]
}

async fn pause(b: &dyn EventBus, topic: &str, group: &str) -> Outcome {
    within(LIMIT, "pause_group", b.pause_group(topic, group)).await??;
    Ok(())
}

async fn resume(b: &dyn EventBus, topic: &str, group: &str) -> Outcome {
    within(LIMIT, "resume_group", b.resume_group(topic, group)).await??;
    Ok(())
}

async fn create(b: &dyn EventBus, topic: &str, group: &str) -> Outcome {
    within(
        LIMIT,
        "create_group",
        b.create_group(topic, group, ReplayFrom::Start),
    )
    .await??;
    Ok(())
}

async fn holds_and_lags(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let (t, paused, other) = (cx.name("t"), cx.name("paused"), cx.name("other"));
    b.configure_group(&t, &paused, short_lease(30_000, 3))?;
    b.configure_group(&t, &other, short_lease(30_000, 3))?;
    create(b, &t, &paused).await?;
    create(b, &t, &other).await?;
    pause(b, &t, &paused).await?;
    emit_n(b, &t, "e", 3).await?;
    expect_none(b, &t, &paused, SHORT).await?;
    let s = gstats(b, &t, &paused).await?;
    ensure!(s.queue.paused, "group stats report the pause: {s:?}");
    ensure_eq!(s.lag, 3, "nothing left the log for the paused group");
    let got = recv_n(b, &t, &other, 3, LIMIT).await?;
    ack_all(b, &t, &other, &got).await?;
    resume(b, &t, &paused).await?;
    ensure!(!gstats(b, &t, &paused).await?.queue.paused, "resumed");
    let got = recv_n(b, &t, &paused, 3, LIMIT).await?;
    ensure_eq!(got.len(), 3, "all three after resume");
    Ok(())
}

async fn another_handle(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let (t, g) = (cx.name("t"), cx.name("g"));
    b.configure_group(&t, &g, short_lease(30_000, 3))?;
    create(b, &t, &g).await?;
    emit_n(b, &t, "e", 1).await?;
    let other = within(LIMIT, "reopen", cx.factory.reopen(&cx.ns, &cx.backend)).await??;
    other
        .events
        .configure_group(&t, &g, short_lease(30_000, 3))?;
    pause(b, &t, &g).await?;
    let deadline = std::time::Instant::now() + cx.prompt();
    while !gstats(&*other.events, &t, &g).await?.queue.paused {
        ensure!(
            std::time::Instant::now() < deadline,
            "the other handle did not see the pause within {:?}",
            cx.prompt()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    expect_none(&*other.events, &t, &g, SHORT).await?;
    resume(&*other.events, &t, &g).await?;
    let got = recv_n(b, &t, &g, 1, LIMIT).await?;
    ensure_eq!(got.len(), 1, "delivered after the other handle resumed");
    Ok(())
}

async fn unknown_group(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let (t, g) = (cx.name("t"), cx.name("g"));
    emit_n(b, &t, "e", 2).await?;
    pause(b, &t, &g).await?;
    let listed = within(LIMIT, "list_groups", b.list_groups(&t)).await??;
    ensure!(
        !listed.contains(&g),
        "pausing does not list the group: {listed:?}"
    );
    create(b, &t, &g).await?;
    ensure!(
        gstats(b, &t, &g).await?.queue.paused,
        "the group starts paused once created"
    );
    expect_none(b, &t, &g, SHORT).await?;
    resume(b, &t, &g).await?;
    recv_n(b, &t, &g, 2, LIMIT).await?;
    Ok(())
}

async fn leases_stay_valid(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let (t, g) = (cx.name("t"), cx.name("g"));
    b.configure_group(&t, &g, short_lease(30_000, 3))?;
    create(b, &t, &g).await?;
    emit_n(b, &t, "e", 2).await?;
    let got = recv_n(b, &t, &g, 2, LIMIT).await?;
    pause(b, &t, &g).await?;
    settle(b, &t, &g, Settle::Ack(got[0].lease)).await?;
    settle(
        b,
        &t,
        &g,
        Settle::Retry {
            lease: got[1].lease,
            delay: Duration::ZERO,
            error: "again".into(),
        },
    )
    .await?;
    expect_none(b, &t, &g, SHORT).await?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.queue.acked, s.queue.retried),
        (1, 1),
        "settled while paused"
    );
    resume(b, &t, &g).await?;
    let again = recv_n(b, &t, &g, 1, LIMIT).await?;
    ensure_eq!(
        (again[0].message.id, again[0].message.attempt),
        (got[1].message.id, 2),
        "the retried event, second attempt"
    );
    Ok(())
}
