//! PubSub cases, bad input: `pubsub::bad_input::*`.

use courier_core::{ErrorKind, Message, SubscribeOptions};

use super::{kinds, next, publish, sub, until_kind};
use crate::{Case, Ctx, Outcome, case, ensure_eq, expect_kind, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "pubsub::bad_input::invalid_channel_rejected",
            ["P4"],
            invalid_channel
        ),
        case!(
            "pubsub::bad_input::publish_to_pattern_rejected",
            ["P4"],
            publish_to_pattern
        ),
        case!(
            "pubsub::bad_input::malformed_pattern_rejected",
            ["P4"],
            malformed_pattern
        ),
    ]
}

fn bad_names() -> Vec<String> {
    vec![
        String::new(),
        ".a".into(),
        "a.".into(),
        "a..b".into(),
        "a b".into(),
        "a/b".into(),
        "ä".into(),
        "a\nb".into(),
        "x".repeat(201),
    ]
}

async fn invalid_channel(cx: Ctx) -> Outcome {
    for name in bad_names() {
        let r = within(
            cx.prompt(),
            "publish",
            cx.backend.pubsub.publish(&name, Message::new("k", "x")),
        )
        .await?;
        expect_kind(r, ErrorKind::InvalidInput, &format!("publish to {name:?}"))?;
        let r = within(
            cx.prompt(),
            "subscribe",
            cx.backend
                .pubsub
                .subscribe(&name, SubscribeOptions::default()),
        )
        .await?;
        expect_kind(
            r.map(|s| s.pattern().to_string()),
            ErrorKind::InvalidInput,
            &format!("subscribe to {name:?}"),
        )?;
    }
    // The longest valid name is accepted.
    let long = format!("{}{}", cx.name("l"), "x".repeat(200 - cx.name("l").len()));
    let mut s = sub(&cx, &long).await?;
    publish(&cx, &long, Message::new("long", "x")).await?;
    ensure_eq!(
        next(&mut s, cx.prompt(), "the 200-byte channel")
            .await?
            .kind,
        "long",
        "kind"
    );
    Ok(())
}

async fn publish_to_pattern(cx: Ctx) -> Outcome {
    let root = cx.name("pat");
    let mut witness = sub(&cx, &format!("{root}.>")).await?;
    for p in ["*", "a.*", "a.>", "*.b", ">"] {
        let ch = format!("{root}.{p}");
        let r = within(
            cx.prompt(),
            "publish",
            cx.backend.pubsub.publish(&ch, Message::new("k", "x")),
        )
        .await?;
        expect_kind(
            r,
            ErrorKind::InvalidInput,
            &format!("publish to pattern {ch:?}"),
        )?;
    }
    publish(&cx, &format!("{root}.ok"), Message::new("ok", "x")).await?;
    let got = until_kind(&mut witness, "ok", cx.prompt()).await?;
    ensure_eq!(
        kinds(&got),
        vec!["ok".to_string()],
        "nothing was sent for the rejected publishes"
    );
    Ok(())
}

async fn malformed_pattern(cx: Ctx) -> Outcome {
    let root = cx.name("bad");
    for p in [
        "a.>.b", "a.*b", "a.b>", "a.**", ">.a", "a..*", "a.*.", "a.>>",
    ] {
        let pat = format!("{root}.{p}");
        let r = within(
            cx.prompt(),
            "subscribe",
            cx.backend
                .pubsub
                .subscribe(&pat, SubscribeOptions::default()),
        )
        .await?;
        expect_kind(
            r.map(|s| s.pattern().to_string()),
            ErrorKind::InvalidInput,
            &format!("subscribe to malformed pattern {pat:?}"),
        )?;
    }
    Ok(())
}
