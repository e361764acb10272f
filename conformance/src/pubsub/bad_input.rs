//! PubSub cases, bad input: `pubsub::bad_input::*`.

use bytes::Bytes;
use courier_core::{ErrorKind, Message, SubscribeOptions};

use super::{kinds, next, publish, sub, until_kind};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, expect_kind, within};

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
        case!(
            "pubsub::bad_input::oversize_payload_rejected",
            ["P1", "Q10"],
            oversize_payload
        ),
        case!(
            "pubsub::bad_input::payload_of_max_payload_accepted",
            ["P1", "Q10"],
            payload_at_limit
        ),
    ]
}

/// The `max_payload` of the backend's default configuration (what a queue nobody configured
/// uses): the limit of every publish, emit and pub/sub publish.
fn default_max_payload(cx: &Ctx) -> usize {
    cx.q()
        .queue_config(&cx.name("never-configured"))
        .max_payload
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

async fn oversize_payload(cx: Ctx) -> Outcome {
    let max = default_max_payload(&cx);
    let ch = cx.name("big");
    let mut direct = sub(&cx, &ch).await?;
    let mut witness = sub(&cx, &format!("{}.>", cx.name("big-root"))).await?;
    let nested = format!("{}.x", cx.name("big-root"));
    for channel in [&ch, &nested] {
        let big = Message::new("big", Bytes::from(vec![7u8; max + 1]));
        let r = within(
            cx.prompt(),
            "publish",
            cx.backend.pubsub.publish(channel, big),
        )
        .await?;
        let e = match r {
            Ok(n) => {
                return Err(crate::Failure(format!(
                    "a pub/sub payload of max_payload + 1 = {} bytes was accepted (to {n} \
                     subscriptions)",
                    max + 1
                )));
            }
            Err(e) => e,
        };
        ensure_eq!(e.kind(), ErrorKind::PayloadTooLarge, "kind of {e}");
        ensure!(
            e.to_string().contains(&(max + 1).to_string()),
            "the error names the size: {e}"
        );
    }
    // A max_attempts override of 0 is refused as a queue publish refuses it.
    let r = within(
        cx.prompt(),
        "publish",
        cx.backend
            .pubsub
            .publish(&ch, Message::new("zero", "x").with_max_attempts(0)),
    )
    .await?;
    expect_kind(r, ErrorKind::InvalidInput, "a message with max_attempts 0")?;
    // Nothing of the refused publishes was delivered.
    publish(&cx, &ch, Message::new("ok", "x")).await?;
    publish(&cx, &nested, Message::new("ok", "x")).await?;
    for (s, what) in [(&mut direct, "the channel"), (&mut witness, "the pattern")] {
        let got = until_kind(s, "ok", cx.prompt()).await?;
        ensure_eq!(
            kinds(&got),
            vec!["ok".to_string()],
            "only the fitting message reached {what}"
        );
    }
    Ok(())
}

async fn payload_at_limit(cx: Ctx) -> Outcome {
    let max = default_max_payload(&cx);
    let ch = cx.name("limit");
    let mut s = sub(&cx, &ch).await?;
    let body = Bytes::from((0..max).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    publish(&cx, &ch, Message::new("limit", body.clone())).await?;
    let m = next(&mut s, cx.prompt(), "the max_payload message").await?;
    ensure_eq!(m.kind, "limit", "kind");
    ensure_eq!(m.payload.len(), max, "payload length");
    ensure!(m.payload == body, "the payload arrives intact");
    Ok(())
}
