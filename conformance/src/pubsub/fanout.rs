//! PubSub cases, P1 Fan-out: `pubsub::fanout::*`.

use std::time::Duration;

use bytes::Bytes;
use courier_core::{Message, Priority, QueueExt, SubscribeOptions};

use super::{drain_quiet, kinds, next, publish, sub};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "pubsub::fanout::every_subscriber_receives",
            ["P1"],
            every_subscriber_receives
        ),
        case!(
            "pubsub::fanout::active_when_subscribe_returns",
            ["P1"],
            active_when_subscribe_returns
        ),
        case!(
            "pubsub::fanout::exact_and_pattern_subscribers_both_receive",
            ["P1", "P4"],
            exact_and_pattern_both
        ),
        case!(
            "pubsub::fanout::fields_round_trip",
            ["P1"],
            fields_round_trip
        ),
        case!(
            "pubsub::fanout::second_handle_receives",
            ["P1"],
            second_handle_receives
        ),
    ]
}

async fn every_subscriber_receives(cx: Ctx) -> Outcome {
    let ch = cx.name("fan");
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(sub(&cx, &ch).await?);
    }
    let mut sent = Vec::new();
    for i in 0..5 {
        let m = Message::new(format!("m{i}"), format!("{i}"));
        sent.push(m.id);
        publish(&cx, &ch, m).await?;
    }
    for (k, s) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(next(s, cx.prompt(), &format!("subscriber {k}")).await?.id);
        }
        ensure_eq!(got, sent, "subscriber {k} got every message, in order");
        let extra = drain_quiet(s, Duration::from_millis(100)).await;
        ensure!(
            extra.is_empty(),
            "subscriber {k} got extra messages: {:?}",
            kinds(&extra)
        );
    }
    Ok(())
}

async fn active_when_subscribe_returns(cx: Ctx) -> Outcome {
    for i in 0..20 {
        let ch = cx.name(&format!("active{i}"));
        let mut s = sub(&cx, &ch).await?;
        // Published right after subscribe returned: must be delivered.
        let m = Message::new("first", "x");
        let id = m.id;
        publish(&cx, &ch, m).await?;
        let got = next(
            &mut s,
            cx.prompt(),
            &format!("round {i}: a message published right after subscribe returned"),
        )
        .await?;
        ensure_eq!(
            got.id,
            id,
            "round {i}: the message published after subscribe"
        );
    }
    Ok(())
}

async fn exact_and_pattern_both(cx: Ctx) -> Outcome {
    let root = cx.name("both");
    let ch = format!("{root}.x.y");
    let mut exact = sub(&cx, &ch).await?;
    let mut star = sub(&cx, &format!("{root}.x.*")).await?;
    let mut tail = sub(&cx, &format!("{root}.>")).await?;
    let m = Message::new("hello", "x");
    let id = m.id;
    let n = publish(&cx, &ch, m).await?;
    ensure_eq!(n, 3, "publish counts the three matching subscriptions");
    for (name, s) in [("exact", &mut exact), ("x.*", &mut star), (">", &mut tail)] {
        let got = next(s, cx.prompt(), name).await?;
        ensure_eq!(got.id, id, "the {name} subscription got the message");
        let extra = drain_quiet(s, Duration::from_millis(100)).await;
        ensure!(
            extra.is_empty(),
            "the {name} subscription got it more than once: {:?}",
            kinds(&extra)
        );
    }
    // The count is of matching subscriptions only (P1).
    for (channel, want) in [
        (format!("{root}.z"), 1),
        (format!("{root}.x.z"), 2),
        (format!("{root}x.y"), 0),
    ] {
        let n = publish(&cx, &channel, Message::new("count", "x")).await?;
        ensure_eq!(n, want, "subscriptions matching {channel}");
    }
    Ok(())
}

async fn fields_round_trip(cx: Ctx) -> Outcome {
    let ch = cx.name("fields");
    let mut s = sub(&cx, &ch).await?;
    let payload: Vec<u8> = (0u8..=255).chain([0, 0, 255]).collect();
    let m = Message::new("meeting.created", Bytes::from(payload.clone()))
        .with_priority(Priority::High)
        .with_header("source", "conformance")
        .with_header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .with_header("unicode", "äöü — ✓");
    let id = m.id;
    publish(&cx, &ch, m).await?;
    let got = next(&mut s, cx.prompt(), "the message").await?;
    ensure_eq!(got.id, id, "id");
    ensure_eq!(got.kind, "meeting.created", "kind");
    ensure_eq!(got.payload.as_ref(), payload.as_slice(), "binary payload");
    ensure_eq!(got.priority, Priority::High, "priority");
    ensure_eq!(
        got.headers.get("source").map(String::as_str),
        Some("conformance"),
        "header source"
    );
    ensure_eq!(
        got.headers.get("unicode").map(String::as_str),
        Some("äöü — ✓"),
        "header unicode"
    );
    ensure_eq!(got.headers.len(), 3, "headers count");
    ensure!(got.created_at > 0, "created_at set at publish, got 0");
    // An empty payload too.
    publish(&cx, &ch, Message::new("empty", Bytes::new())).await?;
    let got = next(&mut s, cx.prompt(), "the empty message").await?;
    ensure_eq!(got.kind, "empty", "kind");
    ensure!(got.payload.is_empty(), "empty payload stays empty");
    Ok(())
}

async fn second_handle_receives(cx: Ctx) -> Outcome {
    let other = within(
        Duration::from_secs(30),
        "reopen",
        cx.factory.reopen(&cx.ns, &cx.backend),
    )
    .await??;
    let ch = cx.name("cross");
    let opts = SubscribeOptions::default();
    let mut s = within(
        cx.prompt() + Duration::from_secs(5),
        "subscribe on the second handle",
        other.pubsub.subscribe(&ch, opts),
    )
    .await??;
    let mut local = sub(&cx, &ch).await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        let m = Message::new(format!("m{i}"), "x");
        ids.push(m.id);
        publish(&cx, &ch, m).await?;
    }
    for (who, s) in [("second handle", &mut s), ("first handle", &mut local)] {
        let mut got = Vec::new();
        for _ in 0..ids.len() {
            got.push(next(s, cx.prompt(), who).await?.id);
        }
        ensure_eq!(
            got,
            ids,
            "the {who}'s subscription got every message in order"
        );
    }
    // Once each: however a backend carries messages between handles, nothing arrives twice,
    // also once the second handle has written something the first one notices.
    within(
        Duration::from_secs(10),
        "a write through the second handle",
        other
            .queue
            .publish(&cx.name("nudge"), Message::new("nudge", "")),
    )
    .await??;
    for (who, s) in [("second handle", &mut s), ("first handle", &mut local)] {
        let extra = drain_quiet(s, super::QUIET).await;
        ensure!(
            extra.is_empty(),
            "the {who}'s subscription got messages twice: {:?}",
            kinds(&extra)
        );
    }
    // A subscription made later on the second handle gets none of the earlier messages, and
    // making it does not cost the older subscription on that handle anything.
    let mut late = within(
        cx.prompt() + Duration::from_secs(5),
        "a second subscription on the second handle",
        other.pubsub.subscribe(&ch, SubscribeOptions::default()),
    )
    .await??;
    let m = Message::new("after", "x");
    let after = m.id;
    publish(&cx, &ch, m).await?;
    for (who, s) in [("later subscription", &mut late), ("second handle", &mut s)] {
        let got = next(s, cx.prompt(), who).await?;
        ensure_eq!(
            got.id,
            after,
            "the {who} gets the next message, and only it"
        );
        let extra = drain_quiet(s, super::QUIET).await;
        ensure!(extra.is_empty(), "the {who} got more: {:?}", kinds(&extra));
    }
    Ok(())
}
