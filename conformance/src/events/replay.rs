//! EventBus cases, E5 Replay and retention: `events::replay::*`.

use std::time::{Duration, Instant};

use courier_core::{
    ErrorKind, EventBus, EventBusExt, Message, MessageId, Page, ReplayFrom, Settle,
};

use super::{ack_all, bus, emit_n, emit_one, expect_none, gstats, ids, recv_n, reset, settle};
use crate::{
    Case, Ctx, Failure, Outcome, case, ensure, ensure_eq, expect_kind, plain_config, within,
};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!("events::replay::reset_to_start", ["E5"], reset_start),
        case!("events::replay::reset_to_time", ["E5"], reset_time),
        case!(
            "events::replay::reset_to_an_events_own_time_includes_it",
            ["E5"],
            reset_time_inclusive
        ),
        case!("events::replay::reset_to_id", ["E5"], reset_id),
        case!("events::replay::reset_to_end", ["E5"], reset_end),
        case!(
            "events::replay::reset_drops_pending_keeps_dead",
            ["E5", "E3"],
            reset_keeps_dead
        ),
        case!(
            "events::replay::create_group_places_only_a_new_group",
            ["E5", "E2"],
            create_group
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

/// `Time(ms)` is inclusive to the millisecond: every event appended at or after `ms` is
/// replayed, also one appended within that very millisecond. Each round reads the backend's
/// clock and emits at once, so the append lands in that millisecond or later, then waits for
/// the clock to pass the reply (earlier appends land before the next round's reading). A round
/// whose emit returned within the millisecond it read pins its event to exactly that
/// millisecond: rounds go on until three such rounds are seen (or 60 rounds), and each of those
/// is replayed.
async fn reset_time_inclusive(cx: Ctx) -> Outcome {
    const PINNED: usize = 3;
    const MAX_ROUNDS: usize = 60;
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let mut rounds = Vec::new();
    while rounds.len() < MAX_ROUNDS
        && rounds.iter().filter(|(_, _, pinned)| *pinned).count() < PINNED
    {
        let r = rounds.len();
        let at = b.clock().now_ms();
        let id = emit_one(b, &t, Message::new(format!("r{r}"), "x")).await?;
        let after = b.clock().now_ms();
        rounds.push((at, id, after == at));
        clock_past(b, after + 1).await?;
    }
    let n = rounds.len();
    let sent: Vec<MessageId> = rounds.iter().map(|(_, id, _)| *id).collect();
    let got = recv_n(b, &t, &g, n, cx.prompt()).await?;
    ack_all(b, &t, &g, &got).await?;
    let checked: Vec<usize> = (0..n).filter(|&r| r == 0 || rounds[r].2).collect();
    if checked.len() == 1 && !rounds[0].2 {
        println!("no emit returned within its millisecond in {n} rounds: checked round 0 only");
    }
    for r in checked {
        let at = rounds[r].0;
        reset(b, &t, &g, ReplayFrom::Time(at)).await?;
        let again = recv_n(b, &t, &g, n - r, cx.prompt()).await?;
        ensure_eq!(
            ids(&again),
            sent[r..].to_vec(),
            "reset to {at} ms, read just before event {r} of {n} was emitted"
        );
        ack_all(b, &t, &g, &again).await?;
        expect_none(b, &t, &g, Duration::from_millis(30)).await?;
    }
    Ok(())
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

async fn create(b: &dyn EventBus, t: &str, g: &str, from: ReplayFrom) -> Result<bool, Failure> {
    Ok(within(
        Duration::from_secs(10),
        "create_group",
        b.create_group(t, g, from),
    )
    .await??)
}

async fn create_group(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let old = emit_n(b, &t, "old", 2).await?;
    let t1 = b.clock().now_ms();
    clock_past(b, t1 + 30).await?;
    let at = b.clock().now_ms();
    clock_past(b, at + 30).await?;
    let new = emit_n(b, &t, "new", 2).await?;
    let all = [old.clone(), new.clone()].concat();
    let g = |what: &str| cx.name(what);

    // Each position places a new group; a second call finds it and changes nothing.
    for (name, from) in [
        ("start", ReplayFrom::Start),
        ("end", ReplayFrom::End),
        ("id", ReplayFrom::Id(old[1])),
        ("time", ReplayFrom::Time(at)),
    ] {
        ensure!(
            create(b, &t, &g(name), from).await?,
            "create_group({from:?}) of a new group returned false"
        );
        ensure!(
            !create(b, &t, &g(name), ReplayFrom::Start).await?,
            "a second create_group of {name} returned true"
        );
    }
    // An id that is not retained: NotFound, and nothing was created.
    let r = within(
        cx.prompt(),
        "create_group",
        b.create_group(&t, &g("gone"), ReplayFrom::Id(MessageId::new())),
    )
    .await?;
    expect_kind(r, ErrorKind::NotFound, "create_group at an id not retained")?;
    ensure!(
        create(b, &t, &g("gone"), ReplayFrom::End).await?,
        "a failed create_group created the group"
    );
    // Configuring a group or reading its stats and dead letters does not create it.
    b.configure_group(&t, &g("configured"), plain_config())?;
    gstats(b, &t, &g("configured")).await?;
    within(
        cx.prompt(),
        "dead_letters",
        b.dead_letters(&t, &g("configured"), Page::first(10)),
    )
    .await??;
    ensure!(
        create(b, &t, &g("configured"), ReplayFrom::End).await?,
        "a configured group that never read counted as existing"
    );
    // A group that read exists, wherever it is.
    let read = recv_n(b, &t, &g("read"), 4, cx.prompt()).await?;
    ack_all(b, &t, &g("read"), &read).await?;
    ensure!(
        !create(b, &t, &g("read"), ReplayFrom::Start).await?,
        "create_group of a group that read returned true"
    );
    expect_none(b, &t, &g("read"), Duration::from_millis(100)).await?;

    let late = emit_n(b, &t, "late", 1).await?;
    for (name, want) in [
        ("start", [all.clone(), late.clone()].concat()),
        ("end", late.clone()),
        ("id", [vec![old[1]], new.clone(), late.clone()].concat()),
        ("time", [new.clone(), late.clone()].concat()),
        ("gone", late.clone()),
        ("configured", late.clone()),
        ("read", late.clone()),
    ] {
        let got = recv_n(b, &t, &g(name), want.len(), cx.prompt()).await?;
        ensure_eq!(ids(&got), want, "what group {name} reads");
        ack_all(b, &t, &g(name), &got).await?;
        expect_none(b, &t, &g(name), Duration::from_millis(100)).await?;
    }
    Ok(())
}
