//! EventBus cases, E1 Durable emit: `events::emit::*`.

use bytes::Bytes;
use courier_core::{Message, MessageId, Priority};

use super::{ack_all, bus, emit_n, emit_one, ids, recv_n, recv_one, topic_len};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!("events::emit::appends_to_the_log", ["E1"], emit_appends),
        case!(
            "events::emit::batch_ids_in_order",
            ["E1", "E4"],
            emit_batch_in_order
        ),
        case!("events::emit::fields_round_trip", ["E1"], emit_fields),
        case!(
            "events::emit::delayed_event_waits_in_each_group",
            ["E1", "E2"],
            delayed_event
        ),
        case!(
            "events::emit::same_id_emitted_twice_is_two_events",
            ["E1"],
            same_id_twice
        ),
    ]
}

async fn emit_appends(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    ensure_eq!(topic_len(b, &t).await?, 0, "a new topic is empty");
    let mut sent = Vec::new();
    for i in 1..=3u64 {
        let id = emit_one(b, &t, Message::new(format!("e{i}"), "x")).await?;
        ensure!(!id.is_nil(), "emit returned a nil id");
        sent.push(id);
        ensure_eq!(topic_len(b, &t).await?, i, "topic_len after {i} emits");
    }
    let g = cx.name("g");
    let got = recv_n(b, &t, &g, 3, cx.prompt()).await?;
    ensure_eq!(ids(&got), sent, "the group reads what was appended");
    ack_all(b, &t, &g, &got).await?;
    ensure_eq!(
        topic_len(b, &t).await?,
        3,
        "acking in a group does not remove events from the log"
    );
    // A nil id is assigned at emit.
    let mut m = Message::new("nil", "x");
    m.id = MessageId::nil();
    let id = emit_one(b, &t, m).await?;
    ensure!(!id.is_nil(), "a nil id is assigned at emit");
    let d = recv_one(b, &t, &g, cx.prompt()).await?;
    ensure_eq!(
        d.message.id,
        id,
        "the delivered event carries the assigned id"
    );
    Ok(())
}

async fn emit_batch_in_order(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let first = emit_n(b, &t, "a", 10).await?;
    let second = emit_n(b, &t, "b", 10).await?;
    ensure_eq!(topic_len(b, &t).await?, 20, "topic_len");
    let empty = within(cx.prompt(), "emit_batch", b.emit_batch(&t, Vec::new())).await??;
    ensure!(empty.is_empty(), "an empty batch returns no ids");
    ensure_eq!(
        topic_len(b, &t).await?,
        20,
        "an empty batch appends nothing"
    );
    let g = cx.name("g");
    let got = recv_n(b, &t, &g, 20, cx.prompt()).await?;
    let want: Vec<MessageId> = first.into_iter().chain(second).collect();
    ensure_eq!(ids(&got), want, "batches are appended in order");
    Ok(())
}

async fn emit_fields(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let payload: Vec<u8> = (0u8..=255).rev().collect();
    let m = Message::new("meeting.created", Bytes::from(payload.clone()))
        .with_priority(Priority::Critical)
        .with_header("correlation_id", "c-42")
        .with_header("source", "conformance");
    let id = m.id;
    let before = b.clock().now_ms();
    emit_one(b, &t, m).await?;
    let d = recv_one(b, &t, &cx.name("g"), cx.prompt()).await?;
    ensure_eq!(d.message.id, id, "id");
    ensure_eq!(d.message.kind, "meeting.created", "kind");
    ensure_eq!(d.message.payload.as_ref(), payload.as_slice(), "payload");
    ensure_eq!(d.message.priority, Priority::Critical, "priority");
    ensure_eq!(
        d.message.headers.get("correlation_id").map(String::as_str),
        Some("c-42"),
        "header"
    );
    ensure_eq!(d.message.headers.len(), 2, "headers");
    ensure_eq!(d.message.attempt, 1, "attempt of the first delivery");
    ensure_eq!(d.lease.attempt, 1, "lease attempt");
    ensure_eq!(d.lease.id, id, "lease id");
    ensure!(
        d.message.created_at + 1_000 >= before,
        "created_at {} set at emit (clock {before})",
        d.message.created_at
    );
    Ok(())
}

/// No deduplication by id on the event bus either: an id emitted twice is two events, each
/// delivered to a group with its own payload.
async fn same_id_twice(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let id = MessageId::new();
    emit_one(b, &t, Message::new("dup", "first").with_id(id)).await?;
    emit_one(b, &t, Message::new("dup", "second").with_id(id)).await?;
    ensure_eq!(topic_len(b, &t).await?, 2, "both events are appended");
    let got = recv_n(b, &t, &g, 2, cx.prompt()).await?;
    ensure_eq!(ids(&got), vec![id, id], "both deliveries carry the id");
    ensure_eq!(
        got.iter()
            .map(|d| d.message.payload.clone())
            .collect::<Vec<_>>(),
        vec![Bytes::from_static(b"first"), Bytes::from_static(b"second")],
        "each event keeps its own payload, in emit order"
    );
    ack_all(b, &t, &g, &got).await?;
    let s = super::gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.queue.acked, s.queue.in_flight, s.lag),
        (2, 0, 0),
        "(acked, in_flight, lag)"
    );
    Ok(())
}

/// An event emitted with a delay is appended at once and waits out its delay in each group:
/// no group receives it before it is due, every group receives it after.
async fn delayed_event(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let (g1, g2) = (cx.name("g1"), cx.name("g2"));
    let delay = std::time::Duration::from_millis(400);
    let t0 = std::time::Instant::now();
    let id = emit_one(b, &t, Message::new("later", "x").with_delay(delay)).await?;
    ensure_eq!(topic_len(b, &t).await?, 1, "appended at once");
    for g in [&g1, &g2] {
        let d = recv_one(b, &t, g, delay + cx.prompt()).await?;
        let took = t0.elapsed();
        ensure_eq!(d.message.id, id, "the delayed event");
        ensure!(
            took + std::time::Duration::from_millis(5) >= delay,
            "group {g} received it {took:?} after the emit, before its {delay:?} delay"
        );
        ack_all(b, &t, g, &[d]).await?;
    }
    Ok(())
}
