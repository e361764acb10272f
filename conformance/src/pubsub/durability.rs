//! PubSub cases, P2 Not durable: `pubsub::durability::*`.

use courier_core::Message;

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
