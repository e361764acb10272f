//! EventBus cases, E5 Replay and retention: `events::retention::*`.

use std::time::{Duration, Instant};

use courier_core::{ErrorKind, MessageId, ReplayFrom, Retention};

use super::{TOL, ack_all, bus, emit_n, expect_none, ids, recv_n, reset, topic_len};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, expect_kind, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "events::retention::max_len_trims_oldest",
            ["E5"],
            retention_max_len
        ),
        case!(
            "events::retention::trimmed_id_is_not_found",
            ["E5"],
            trimmed_id_not_found
        ),
        case!(
            "events::retention::lag_counts_only_retained_events",
            ["E5", "E3"],
            lag_retained
        ),
        case!(
            "events::retention::max_age_holds_without_emits",
            ["E5"],
            max_age_without_emits
        ),
        case!(
            "events::retention::max_age_expires_old_events",
            ["E5"],
            retention_max_age
        ),
        case!(
            "events::retention::lagging_group_continues_at_oldest_retained",
            ["E5", "E2"],
            retention_lagging_group
        ),
    ]
}

async fn retention_max_len(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    b.set_retention(
        &t,
        Retention {
            max_len: Some(5),
            max_age: None,
        },
    )?;
    let sent = emit_n(b, &t, "e", 12).await?;
    ensure_eq!(topic_len(b, &t).await?, 5, "topic_len with max_len 5");
    let g = cx.name("g");
    let got = recv_n(b, &t, &g, 5, cx.prompt()).await?;
    ensure_eq!(
        ids(&got),
        sent[7..].to_vec(),
        "a new group reads the 5 newest (oldest trimmed first)"
    );
    ack_all(b, &t, &g, &got).await?;
    expect_none(b, &t, &g, Duration::from_millis(100)).await?;
    reset(b, &t, &g, ReplayFrom::Start).await?;
    let again = recv_n(b, &t, &g, 5, cx.prompt()).await?;
    ensure_eq!(
        ids(&again),
        sent[7..].to_vec(),
        "replay from the start begins at the oldest retained event"
    );
    // Trimmed ids are gone from the log; emitting more keeps trimming.
    let more = emit_n(b, &t, "more", 3).await?;
    ensure_eq!(topic_len(b, &t).await?, 5, "still at most 5");
    let g2 = cx.name("g2");
    let got2 = recv_n(b, &t, &g2, 5, cx.prompt()).await?;
    let want: Vec<MessageId> = sent[10..].iter().copied().chain(more).collect();
    ensure_eq!(ids(&got2), want, "the newest 5 after more emits");
    Ok(())
}

/// `max_len` holds exactly, at once: right after `set_retention` shrinks a log and right
/// after each emit, an event beyond the newest `max_len` is not retained, so a reset to its
/// id is `NotFound` (E5).
async fn trimmed_id_not_found(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let sent = emit_n(b, &t, "e", 10).await?;
    let retention = |n| Retention {
        max_len: Some(n),
        max_age: None,
    };
    b.set_retention(&t, retention(4))?;
    // The first read after the shrink already sees 4 events: a new group gets those only.
    let first = cx.name("first");
    let got = recv_n(b, &t, &first, 4, cx.prompt()).await?;
    ensure_eq!(
        ids(&got),
        sent[6..].to_vec(),
        "a new group after max_len became 4"
    );
    ack_all(b, &t, &first, &got).await?;
    expect_none(b, &t, &first, Duration::from_millis(100)).await?;
    let reset_to = |id| {
        within(
            cx.prompt(),
            "reset_group",
            b.reset_group(&t, &g, ReplayFrom::Id(id)),
        )
    };
    expect_kind(
        reset_to(sent[5]).await?,
        ErrorKind::NotFound,
        "reset to the 6th of 10 events after max_len became 4",
    )?;
    reset(b, &t, &g, ReplayFrom::Id(sent[6])).await?;
    let more = emit_n(b, &t, "more", 2).await?;
    expect_kind(
        reset_to(sent[7]).await?,
        ErrorKind::NotFound,
        "reset to an event pushed out by later emits",
    )?;
    reset(b, &t, &g, ReplayFrom::Id(sent[8])).await?;
    let got = recv_n(b, &t, &g, 4, cx.prompt()).await?;
    let want: Vec<MessageId> = sent[8..].iter().copied().chain(more).collect();
    ensure_eq!(ids(&got), want, "the 4 retained events");
    Ok(())
}

/// `lag` counts events a group can still read: a group placed at the start, and a group left
/// behind by trimming, both lag by the retained events only.
async fn lag_retained(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let (behind, fresh) = (cx.name("behind"), cx.name("fresh"));
    b.set_retention(
        &t,
        Retention {
            max_len: Some(4),
            max_age: None,
        },
    )?;
    within(
        cx.prompt(),
        "create_group",
        b.create_group(&t, &behind, ReplayFrom::Start),
    )
    .await??;
    emit_n(b, &t, "e", 10).await?;
    ensure_eq!(topic_len(b, &t).await?, 4, "retained");
    within(
        cx.prompt(),
        "create_group",
        b.create_group(&t, &fresh, ReplayFrom::Start),
    )
    .await??;
    for g in [&behind, &fresh] {
        let s = super::gstats(b, &t, g).await?;
        ensure_eq!(s.lag, 4, "lag of group {g} over a log trimmed to 4");
    }
    reset(b, &t, &fresh, ReplayFrom::Start).await?;
    let s = super::gstats(b, &t, &fresh).await?;
    ensure_eq!(s.lag, 4, "lag after a reset to the start");
    let got = recv_n(b, &t, &behind, 4, cx.prompt()).await?;
    ack_all(b, &t, &behind, &got).await?;
    let s = super::gstats(b, &t, &behind).await?;
    ensure_eq!(s.lag, 0, "lag once the retained events are read");
    Ok(())
}

/// Age is judged at every read, not only when something is emitted: once `max_age` has
/// passed, with no call on the topic in between, neither a new group nor one that read
/// earlier receives the expired events.
async fn max_age_without_emits(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let (early, late) = (cx.name("early"), cx.name("late"));
    let age = Duration::from_millis(300);
    b.set_retention(
        &t,
        Retention {
            max_len: None,
            max_age: Some(age),
        },
    )?;
    within(
        cx.prompt(),
        "create_group",
        b.create_group(&t, &early, ReplayFrom::Start),
    )
    .await??;
    emit_n(b, &t, "old", 3).await?;
    // The passing of time is what is under test: nothing touches the topic meanwhile.
    tokio::time::sleep(age + TOL + Duration::from_millis(100)).await;
    for g in [&early, &late] {
        expect_none(b, &t, g, Duration::from_millis(100)).await?;
    }
    Ok(())
}

async fn retention_max_age(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let age = Duration::from_millis(400);
    b.set_retention(
        &t,
        Retention {
            max_len: None,
            max_age: Some(age),
        },
    )?;
    let start = Instant::now();
    emit_n(b, &t, "old", 3).await?;
    let n = topic_len(b, &t).await?;
    if start.elapsed() + Duration::from_millis(50) < age {
        ensure_eq!(n, 3, "young events are retained");
    }
    let deadline = Instant::now() + age + cx.prompt();
    let gone_at = loop {
        if topic_len(b, &t).await? == 0 {
            break start.elapsed();
        }
        ensure!(
            Instant::now() < deadline,
            "events older than {age:?} still retained after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ensure!(
        gone_at + TOL >= age,
        "events dropped after {gone_at:?}, before max_age {age:?}"
    );
    let new = emit_n(b, &t, "new", 2).await?;
    let g = cx.name("g");
    let got = recv_n(b, &t, &g, 2, cx.prompt()).await?;
    ensure_eq!(ids(&got), new, "a new group reads only retained events");
    expect_none(b, &t, &g, Duration::from_millis(100)).await
}

async fn retention_lagging_group(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let sent = emit_n(b, &t, "e", 10).await?;
    let first = recv_n(b, &t, &g, 2, cx.prompt()).await?;
    ensure_eq!(ids(&first), sent[..2].to_vec(), "first two");
    ack_all(b, &t, &g, &first).await?;
    b.set_retention(
        &t,
        Retention {
            max_len: Some(3),
            max_age: None,
        },
    )?;
    ensure_eq!(topic_len(b, &t).await?, 3, "trimmed to 3");
    let rest = recv_n(b, &t, &g, 3, cx.prompt()).await?;
    ensure_eq!(
        ids(&rest),
        sent[7..].to_vec(),
        "a group behind the retained log continues at the oldest retained event"
    );
    ack_all(b, &t, &g, &rest).await?;
    expect_none(b, &t, &g, Duration::from_millis(100)).await
}
