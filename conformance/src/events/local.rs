//! EventBus cases, E6 Local bus and typed events: `events::local::*`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier_core::{EventBusExt, GroupConsumer, Message, Page};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{bus, emit_one, gstats_until, recv_one, stop_worker, topic_len, until};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "events::local::typed_event_round_trip",
            ["E6"],
            typed_round_trip
        ),
        case!(
            "events::local::group_consumer_end_to_end",
            ["E6", "E2"],
            group_consumer_e2e
        ),
        case!(
            "events::local::undecodable_typed_event_dead_lettered",
            ["E6", "E3"],
            typed_undecodable
        ),
        case!(
            "events::local::memory_delivers_without_copying",
            ["E6"],
            memory_no_copy
        ),
    ]
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order: u64,
    customer: String,
    lines: Vec<(String, u32)>,
    note: Option<String>,
}

impl courier_core::Event for OrderPlaced {
    const TOPIC: &'static str = "conformance.order_placed";
}

fn order(i: u64) -> OrderPlaced {
    OrderPlaced {
        order: i,
        customer: format!("customer-{i} ✓"),
        lines: vec![("widget".into(), 2), ("gadget".into(), i as u32)],
        note: i.is_multiple_of(2).then(|| "gift".to_string()),
    }
}

async fn typed_round_trip(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let topic = <OrderPlaced as courier_core::Event>::TOPIC;
    let ev = order(7);
    let id = within(cx.prompt(), "emit_typed", b.emit_typed(&ev)).await??;
    ensure_eq!(
        topic_len(b, topic).await?,
        1,
        "the typed event went to its topic"
    );
    let d = recv_one(b, topic, &cx.name("g"), cx.prompt()).await?;
    ensure_eq!(d.message.id, id, "id");
    ensure_eq!(d.message.kind, topic, "a typed event's kind is its topic");
    let back: OrderPlaced = d.message.decode()?;
    ensure_eq!(back, ev, "decoded event");
    Ok(())
}

async fn group_consumer_e2e(cx: Ctx) -> Outcome {
    let b = cx.backend.events.clone();
    let topic = <OrderPlaced as courier_core::Event>::TOPIC;
    let g = cx.name("g");
    let got = Arc::new(Mutex::new(Vec::<(u64, u32)>::new()));
    let c = got.clone();
    let h = GroupConsumer::builder(b.clone(), &g)
        .on_event::<OrderPlaced, _, _>(move |ev, m| {
            let c = c.clone();
            async move {
                c.lock().push((ev.order, m.attempt));
                Ok(())
            }
        })
        .concurrency(1)
        .idle_wait(Duration::from_millis(100))
        .start()
        .await?;
    let n = 20u64;
    for i in 0..n {
        within(cx.prompt(), "emit_typed", b.emit_typed(&order(i))).await??;
    }
    let done = until(cx.prompt() * 2, || got.lock().len() >= n as usize).await;
    let (s, ok) = gstats_until(&*b, topic, &g, cx.prompt(), |s| s.queue.acked >= n).await?;
    stop_worker(h).await?;
    ensure!(done, "handled {} of {n}", got.lock().len());
    ensure!(ok, "acked every event: {s:?}");
    let seen = got.lock().clone();
    ensure_eq!(
        seen,
        (0..n).map(|i| (i, 1)).collect::<Vec<_>>(),
        "one consumer handled every typed event once, in emit order"
    );
    ensure_eq!(
        (s.lag, s.queue.in_flight, s.queue.dead, s.queue.acked),
        (0, 0, 0, n),
        "(lag, in_flight, dead, acked)"
    );
    Ok(())
}

async fn typed_undecodable(cx: Ctx) -> Outcome {
    let b = cx.backend.events.clone();
    let topic = <OrderPlaced as courier_core::Event>::TOPIC;
    let g = cx.name("g");
    let got = Arc::new(Mutex::new(Vec::<u64>::new()));
    let c = got.clone();
    let h = GroupConsumer::builder(b.clone(), &g)
        .on_event::<OrderPlaced, _, _>(move |ev, _m| {
            let c = c.clone();
            async move {
                c.lock().push(ev.order);
                Ok(())
            }
        })
        .idle_wait(Duration::from_millis(100))
        .start()
        .await?;
    let bad = emit_one(&*b, topic, Message::new(topic, "{\"not\": \"an order\"}")).await?;
    within(cx.prompt(), "emit_typed", b.emit_typed(&order(1))).await??;
    let done = until(cx.prompt(), || !got.lock().is_empty()).await;
    let (s, ok) = gstats_until(&*b, topic, &g, cx.prompt(), |s| s.queue.dead == 1).await?;
    stop_worker(h).await?;
    ensure!(done, "the consumer kept running and handled the good event");
    ensure!(
        ok,
        "the undecodable event went to the group's dead letters: {s:?}"
    );
    let dl = within(
        cx.prompt(),
        "dead_letters",
        b.dead_letters(topic, &g, Page::first(10)),
    )
    .await??;
    ensure_eq!(dl.len(), 1, "dead letters");
    ensure_eq!(dl[0].message.id, bad, "the undecodable event");
    ensure_eq!(dl[0].attempts, 1, "a decode failure is permanent");
    ensure!(
        !dl[0].error.is_empty(),
        "the dead letter names the decode error"
    );
    ensure_eq!(
        got.lock().clone(),
        vec![1],
        "only the good event was handled"
    );
    Ok(())
}

/// E6: the memory backend is the in-process bus, with no serialisation on the hot path: the
/// payload a group receives is the very buffer that was emitted (other backends encode by
/// necessity; for them the case only checks the bytes).
async fn memory_no_copy(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let payload = Bytes::from(vec![42u8; 64 * 1024]);
    let ptr = payload.as_ptr() as usize;
    emit_one(b, &t, Message::new("big", payload.clone())).await?;
    let groups = [cx.name("g1"), cx.name("g2")];
    for g in &groups {
        let d = recv_one(b, &t, g, cx.prompt()).await?;
        ensure_eq!(d.message.payload, payload, "payload bytes for group {g}");
        if b.backend_name() == "memory" {
            ensure!(
                d.message.payload.as_ptr() as usize == ptr,
                "the memory bus copied (or encoded) the payload on its way to group {g}"
            );
        }
    }
    if b.backend_name() != "memory" {
        println!(
            "note: {} is not the local bus; only the bytes were checked",
            b.backend_name()
        );
    }
    Ok(())
}
