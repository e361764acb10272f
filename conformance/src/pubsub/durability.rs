//! PubSub cases, P2 Not durable: `pubsub::durability::*`.

use courier_core::{Message, QueueExt};

use super::{QUIET, drain_quiet, kinds, next, publish, sub, until_kind};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "pubsub::durability::no_subscriber_message_is_dropped",
            ["P2"],
            no_subscriber_dropped
        ),
        case!(
            "pubsub::durability::earlier_message_not_delivered_through_another_handle",
            ["P2"],
            earlier_not_relayed
        ),
        case!(
            "pubsub::durability::gap_between_subscriptions_not_replayed",
            ["P2", "P5"],
            gap_not_replayed
        ),
    ]
}

async fn no_subscriber_dropped(cx: Ctx) -> Outcome {
    let ch = cx.name("nobody");
    for i in 0..5 {
        let n = publish(&cx, &ch, Message::new(format!("early{i}"), "x")).await?;
        ensure_eq!(n, 0, "publish with no subscriber reports no local receiver");
    }
    let mut s = sub(&cx, &ch).await?;
    publish(&cx, &ch, Message::new("late", "x")).await?;
    let first = next(&mut s, cx.prompt(), "the message published after subscribe").await?;
    ensure_eq!(
        first.kind,
        "late",
        "the first message a later subscriber sees (earlier ones must have been dropped)"
    );
    let extra = drain_quiet(&mut s, QUIET).await;
    ensure!(
        extra.is_empty(),
        "messages published with no subscriber were delivered later: {:?}",
        kinds(&extra)
    );
    Ok(())
}

async fn gap_not_replayed(cx: Ctx) -> Outcome {
    let ch = cx.name("gap");
    let mut a = sub(&cx, &ch).await?;
    publish(&cx, &ch, Message::new("before", "x")).await?;
    ensure_eq!(
        next(&mut a, cx.prompt(), "before").await?.kind,
        "before",
        "kind"
    );
    drop(a);
    for i in 0..5 {
        publish(&cx, &ch, Message::new(format!("gap{i}"), "x")).await?;
    }
    let mut b = sub(&cx, &ch).await?;
    publish(&cx, &ch, Message::new("after", "x")).await?;
    let got = until_kind(&mut b, "after", cx.prompt()).await?;
    ensure_eq!(
        kinds(&got),
        vec!["after".to_string()],
        "a new subscription sees nothing published while nobody subscribed"
    );
    Ok(())
}

/// A message published while nothing subscribed to its channel is dropped for good, also for
/// a subscription made a moment later through another handle (as another process would),
/// whose backend may still be catching up on earlier traffic; and making that subscription
/// costs the handle's existing subscription nothing.
async fn earlier_not_relayed(cx: Ctx) -> Outcome {
    use std::time::Duration;
    let other = crate::within(
        Duration::from_secs(30),
        "reopen",
        cx.factory.reopen(&cx.ns, &cx.backend),
    )
    .await??;
    let root = cx.name("pre");
    let subscribe = |ch: String| {
        let other = other.clone();
        async move {
            crate::within(
                Duration::from_secs(10),
                "subscribe on the second handle",
                other
                    .pubsub
                    .subscribe(&ch, courier_core::SubscribeOptions::default()),
            )
            .await?
            .map_err(crate::Failure::from)
        }
    };
    let keep = format!("{root}.keep");
    let mut kept = subscribe(keep.clone()).await?;
    let barrier = cx.name("barrier");
    for round in 0..3 {
        let ch = format!("{root}.r{round}");
        // For the subscription that already exists: making a new one must not skip it.
        publish(&cx, &keep, Message::new(format!("k{round}"), "x")).await?;
        publish(&cx, &ch, Message::new("before", "x")).await?;
        // Anything the first handle does after the publish is ordered after it: once this
        // returns, the earlier message has left the first handle.
        crate::within(
            Duration::from_secs(10),
            "barrier publish",
            cx.q().publish(&barrier, Message::new("barrier", "")),
        )
        .await??;
        let mut s = subscribe(ch.clone()).await?;
        publish(&cx, &ch, Message::new("after", "x")).await?;
        let got = next(&mut s, cx.prompt(), "the later subscription").await?;
        ensure_eq!(
            got.kind,
            "after",
            "round {round}: the first message after subscribe, not one from before"
        );
        let extra = drain_quiet(&mut s, QUIET).await;
        ensure!(
            extra.is_empty(),
            "round {round}: more arrived: {:?}",
            kinds(&extra)
        );
        let got = next(&mut kept, cx.prompt(), "the existing subscription").await?;
        ensure_eq!(
            got.kind,
            format!("k{round}"),
            "round {round}: the existing subscription still gets its message"
        );
    }
    Ok(())
}
