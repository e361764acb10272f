//! EventBus cases, E5 reading the log without a group: `events::read::*`.
//!
//! `read_events(topic, from, max)` returns up to `max` retained events from where a reset to
//! `from` would place a group, oldest first, and changes nothing: no lease, no group created
//! or moved.

use std::time::Duration;

use courier_core::{ErrorKind, EventBus, Message, MessageId, ReplayFrom, Retention};

use super::{bus, emit_n, gstats, ids, recv_n};
use crate::{Case, Ctx, Failure, Outcome, case, clock_past, ensure, ensure_eq, within};

const LIMIT: Duration = Duration::from_secs(10);

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "events::read::from_each_position_oldest_first",
            ["E5", "E4"],
            from_each_position
        ),
        case!(
            "events::read::reading_moves_no_group",
            ["E5", "E2", "E7"],
            moves_no_group
        ),
        case!(
            "events::read::only_retained_events_are_read",
            ["E5"],
            only_retained
        ),
        case!(
            "events::read::bad_input_and_unknown_ids_refused",
            ["E5", "Q10"],
            bad_input
        ),
    ]
}

async fn read(
    b: &dyn EventBus,
    topic: &str,
    from: ReplayFrom,
    max: usize,
) -> Result<Vec<MessageId>, Failure> {
    let got = within(LIMIT, "read_events", b.read_events(topic, from, max)).await??;
    Ok(got.iter().map(|m| m.id).collect())
}

async fn from_each_position(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let first = emit_n(b, &t, "early", 3).await?;
    // A clear gap on each side of an instant, as in events::replay::reset_to_time.
    let t1 = b.clock().now_ms();
    clock_past(&cx, t1 + 30).await?;
    let at = b.clock().now_ms();
    clock_past(&cx, at + 30).await?;
    let later = emit_n(b, &t, "late", 3).await?;
    let all: Vec<MessageId> = first.iter().chain(&later).copied().collect();
    ensure_eq!(
        read(b, &t, ReplayFrom::Start, 100).await?,
        all,
        "everything, in emit order"
    );
    ensure_eq!(
        read(b, &t, ReplayFrom::Start, 2).await?,
        all[..2].to_vec(),
        "at most max"
    );
    ensure_eq!(
        read(b, &t, ReplayFrom::Id(all[2]), 100).await?,
        all[2..].to_vec(),
        "from an id, that event included"
    );
    ensure_eq!(
        read(b, &t, ReplayFrom::Time(at), 100).await?,
        later,
        "from an instant, the events appended at or after it"
    );
    ensure_eq!(
        read(b, &t, ReplayFrom::End, 100).await?,
        Vec::<MessageId>::new(),
        "End: none"
    );
    let got = within(
        LIMIT,
        "read_events",
        b.read_events(&t, ReplayFrom::Start, 1),
    )
    .await??;
    ensure_eq!(
        (got[0].kind.as_str(), got[0].payload.as_ref()),
        ("early0", b"0".as_slice()),
        "the events themselves come back"
    );
    Ok(())
}

async fn moves_no_group(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    within(
        LIMIT,
        "create_group",
        b.create_group(&t, &g, ReplayFrom::Start),
    )
    .await??;
    let sent = emit_n(b, &t, "e", 4).await?;
    for _ in 0..2 {
        ensure_eq!(
            read(b, &t, ReplayFrom::Start, 100).await?,
            sent,
            "read twice, same answer"
        );
    }
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.lag, s.queue.in_flight),
        (4, 0),
        "the group has not moved: {s:?}"
    );
    let groups = within(LIMIT, "list_groups", b.list_groups(&t)).await??;
    ensure_eq!(groups, vec![g.clone()], "reading created no group");
    let got = recv_n(b, &t, &g, 4, cx.prompt()).await?;
    ensure_eq!(ids(&got), sent, "the group still gets every event");
    Ok(())
}

async fn only_retained(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    b.set_retention(
        &t,
        Retention {
            max_len: Some(2),
            max_age: None,
        },
    )?;
    let sent = emit_n(b, &t, "e", 5).await?;
    ensure_eq!(
        read(b, &t, ReplayFrom::Start, 100).await?,
        sent[3..].to_vec(),
        "the two retained events"
    );
    let gone = within(
        LIMIT,
        "read_events",
        b.read_events(&t, ReplayFrom::Id(sent[0]), 10),
    )
    .await?;
    ensure!(
        matches!(&gone, Err(e) if e.kind() == ErrorKind::NotFound),
        "a trimmed event's id is not found: {gone:?}"
    );
    Ok(())
}

async fn bad_input(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    emit_n(b, &t, "e", 1).await?;
    for (what, r) in [
        (
            "max 0",
            within(
                LIMIT,
                "read_events",
                b.read_events(&t, ReplayFrom::Start, 0),
            )
            .await?,
        ),
        (
            "an invalid topic",
            within(
                LIMIT,
                "read_events",
                b.read_events("no spaces", ReplayFrom::Start, 1),
            )
            .await?,
        ),
    ] {
        ensure!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::InvalidInput),
            "{what} is refused: {r:?}"
        );
    }
    let unknown = Message::new("never", "").id;
    let r = within(
        LIMIT,
        "read_events",
        b.read_events(&t, ReplayFrom::Id(unknown), 1),
    )
    .await?;
    ensure!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::NotFound),
        "an id never emitted is not found: {r:?}"
    );
    ensure_eq!(
        read(b, &cx.name("t-unknown"), ReplayFrom::Start, 10).await?,
        Vec::<MessageId>::new(),
        "an unknown topic has no events"
    );
    Ok(())
}
