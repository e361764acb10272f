//! Queue cases, Q1 durability: `queue::durability::*`.

use std::collections::HashSet;

use bytes::Bytes;
use courier_core::{Message, MessageId, Priority, QueueExt};

use super::{LIMIT, kinds, one, publish, publish_all, queue};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, plain_config, receive_n, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "queue::durability::round_trip_keeps_every_field",
            ["Q1"],
            round_trip
        ),
        case!(
            "queue::durability::binary_and_empty_payloads",
            ["Q1"],
            binary_payloads
        ),
        case!(
            "queue::durability::publish_returns_the_delivered_id",
            ["Q1"],
            ids_match
        ),
        case!(
            "queue::durability::visible_to_a_second_handle",
            ["Q1", "Q8"],
            second_handle
        ),
    ]
}

async fn round_trip(cx: Ctx) -> Outcome {
    let q = queue(&cx, "rt", plain_config())?;
    let m = Message::new("user_register", Bytes::from_static(b"{\"name\":\"ada\"}"))
        .with_priority(Priority::High)
        .with_header("trace-id", "abc-123")
        .with_header("odd key \u{e9}", "value with = and ; and \n newline")
        .with_max_attempts(7);
    let id = publish(&cx, &q, m.clone()).await?;
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(d.message.id, id, "id");
    ensure_eq!(d.message.kind, m.kind, "kind");
    ensure_eq!(d.message.payload, m.payload, "payload");
    ensure_eq!(d.message.priority, Priority::High, "priority");
    ensure_eq!(d.message.headers, m.headers, "headers");
    ensure_eq!(d.message.max_attempts, Some(7), "max_attempts");
    ensure_eq!(d.message.attempt, 1, "first delivery is attempt 1");
    ensure_eq!(d.lease.attempt, 1, "lease attempt");
    ensure_eq!(d.lease.id, id, "lease id");
    ensure!(
        d.message.created_at > 0,
        "created_at is set: {}",
        d.message.created_at
    );
    Ok(())
}

async fn binary_payloads(cx: Ctx) -> Outcome {
    let q = queue(&cx, "bin", plain_config())?;
    let bodies: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0xff, 0xfe, 0x00, 0xc7, 0x80],
        (0..=255u8).collect(),
        vec![b'x'; 64 * 1024],
    ];
    let ms: Vec<Message> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| Message::new(format!("b{i}"), b.clone()))
        .collect();
    publish_all(&cx, &q, ms).await?;
    let got = receive_n(cx.q(), &q, bodies.len(), LIMIT).await?;
    for (i, d) in got.iter().enumerate() {
        ensure_eq!(d.message.kind, format!("b{i}"), "order");
        ensure!(
            d.message.payload.as_ref() == bodies[i].as_slice(),
            "payload {i} changed ({} bytes back, {} sent)",
            d.message.payload.len(),
            bodies[i].len()
        );
    }
    Ok(())
}

async fn ids_match(cx: Ctx) -> Outcome {
    let q = queue(&cx, "ids", plain_config())?;
    let mut sent = Vec::new();
    for m in kinds(5, "m") {
        sent.push(publish(&cx, &q, m).await?);
    }
    let unique: HashSet<_> = sent.iter().collect();
    ensure_eq!(unique.len(), 5, "ids are unique");
    let got: Vec<MessageId> = receive_n(cx.q(), &q, 5, LIMIT)
        .await?
        .iter()
        .map(|d| d.message.id)
        .collect();
    ensure_eq!(got, sent, "delivered ids, in publish order");
    Ok(())
}

async fn second_handle(cx: Ctx) -> Outcome {
    let q = queue(&cx, "durable", plain_config())?;
    let id = publish(&cx, &q, Message::new("keep", "me")).await?;
    let other = within(LIMIT, "reopen", cx.factory.reopen(&cx.ns, &cx.backend)).await??;
    other.queue.configure(&q, plain_config())?;
    let s = within(LIMIT, "stats", other.queue.stats(&q)).await??;
    ensure_eq!(
        s.ready_total(),
        1,
        "the second handle sees the stored message"
    );
    ensure_eq!(s.published, 1, "published counter shared");
    let d = receive_n(&*other.queue, &q, 1, LIMIT).await?;
    ensure_eq!(
        d[0].message.id,
        id,
        "same message through the second handle"
    );
    within(LIMIT, "ack", other.queue.ack(&q, &d[0].lease)).await??;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.acked, 1, "ack through one handle counted for the other");
    ensure_eq!(s.stored(), 0, "nothing left");
    Ok(())
}
