//! EventBus cases, E4 Order: `events::order::*`.

use std::time::{Duration, Instant};

use courier_core::{Message, Priority, Settle};

use super::{ack_all, bus, emit_n, emit_one, ids, recv_n};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "events::order::single_consumer_sees_emit_order",
            ["E4"],
            single_consumer_order
        ),
        case!(
            "events::order::singles_and_batches_interleaved",
            ["E4"],
            mixed_emit_order
        ),
        case!(
            "events::order::retried_batch_keeps_emit_order_whatever_the_priority",
            ["E3", "E4"],
            retried_batch_order
        ),
    ]
}

/// A batch retried at once comes back in emit order: a group has no priority order, on the
/// retry path either (a store that keeps one list per priority must not regroup events).
async fn retried_batch_order(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let mut sent = Vec::new();
    for i in 0..8 {
        let p = Priority::ALL[(i * 3) % 4];
        sent.push(emit_one(b, &t, Message::new(format!("{i}"), "x").with_priority(p)).await?);
    }
    let first = recv_n(b, &t, &g, sent.len(), cx.prompt()).await?;
    ensure_eq!(ids(&first), sent, "emit order");
    let ops = first
        .iter()
        .map(|d| Settle::Retry {
            lease: d.lease,
            delay: Duration::ZERO,
            error: "again".into(),
        })
        .collect();
    let rs = within(cx.prompt(), "settle", b.settle(&t, &g, ops)).await??;
    ensure!(
        rs.iter().all(Result::is_ok),
        "every retry held its lease: {rs:?}"
    );
    let again = recv_n(b, &t, &g, sent.len(), cx.prompt()).await?;
    ensure_eq!(ids(&again), sent, "emit order after the retry");
    ensure!(
        again.iter().all(|d| d.message.attempt == 2),
        "second attempts"
    );
    ack_all(b, &t, &g, &again).await
}

async fn single_consumer_order(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let mut sent = Vec::new();
    for i in 0..200 {
        // Priorities vary: a group ignores them and keeps emit order.
        let p = Priority::ALL[i % 4];
        sent.push(emit_one(b, &t, Message::new(format!("{i}"), "x").with_priority(p)).await?);
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + cx.prompt() * 3;
    while got.len() < sent.len() {
        ensure!(
            Instant::now() < deadline,
            "received {} of {} in time",
            got.len(),
            sent.len()
        );
        let ds = within(
            cx.prompt(),
            "receive",
            b.receive(&t, &g, 7, Duration::from_millis(200)),
        )
        .await??;
        ack_all(b, &t, &g, &ds).await?;
        got.extend(ids(&ds));
    }
    ensure!(
        got == sent,
        "events out of emit order; first difference at {:?}",
        got.iter().zip(&sent).position(|(a, b)| a != b)
    );
    Ok(())
}

async fn mixed_emit_order(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let mut sent = Vec::new();
    for round in 0..5 {
        sent.push(emit_one(b, &t, Message::new(format!("s{round}"), "x")).await?);
        sent.extend(emit_n(b, &t, &format!("b{round}-"), 4).await?);
    }
    let got = recv_n(b, &t, &g, sent.len(), cx.prompt()).await?;
    ensure_eq!(ids(&got), sent, "single and batch emits, in emit order");
    Ok(())
}
