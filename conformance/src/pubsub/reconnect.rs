//! PubSub cases, P6 Reconnect: `pubsub::reconnect::*`.

use std::time::{Duration, Instant};

use courier_core::Message;

use super::{drain_quiet, kinds, next, publish, sub, until_kind};
use crate::{Case, Ctx, Failure, Outcome, case, ensure, ensure_eq, within};

pub(super) fn cases() -> Vec<Case> {
    vec![case!(
        "pubsub::reconnect::subscription_survives_disruption",
        ["P6"],
        reconnect
    )]
}

async fn reconnect(cx: Ctx) -> Outcome {
    let ch = cx.name("reconnect");
    let mut s = sub(&cx, &ch).await?;
    publish(&cx, &ch, Message::new("before", "x")).await?;
    ensure_eq!(
        next(&mut s, cx.prompt(), "before").await?.kind,
        "before",
        "kind"
    );
    let cut = within(
        Duration::from_secs(30),
        "disrupt",
        cx.factory.disrupt(&cx.backend),
    )
    .await??;
    if !cut {
        println!("note: the backend has no connection to cut; checking delivery only");
    }
    // At most once: messages published while the connection is down may be lost. Keep
    // publishing (bounded) until one arrives on the old subscription.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0u32;
    let mut errors = 0u32;
    let mut last = None;
    let first = loop {
        if Instant::now() >= deadline {
            return Err(Failure(format!(
                "the subscription did not come back within 20 s after disrupt (cut: {cut}; {i} publishes, {errors} failed, last error: {last:?})"
            )));
        }
        match within(
            Duration::from_secs(5),
            "publish",
            cx.backend
                .pubsub
                .publish(&ch, Message::new(format!("after{i}"), "x")),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                errors += 1;
                last = Some(e.to_string());
            }
            Err(f) => {
                errors += 1;
                last = Some(f.0);
            }
        }
        i += 1;
        if let Some(m) = s.next_timeout(Duration::from_millis(200)).await {
            break m;
        }
    };
    ensure!(
        first.kind.starts_with("after"),
        "after the reconnect the old subscription got {:?}",
        first.kind
    );
    // Drain the stragglers of the probing loop, then everything must arrive in order again.
    drain_quiet(&mut s, Duration::from_millis(200)).await;
    for k in 0..10 {
        publish(&cx, &ch, Message::new(format!("again{k}"), "x")).await?;
    }
    let got = until_kind(&mut s, "again9", cx.prompt()).await?;
    let want: Vec<String> = (0..10).map(|k| format!("again{k}")).collect();
    ensure_eq!(
        kinds(&got),
        want,
        "after the reconnect every message arrives, in order"
    );
    // A subscription made after the disruption works too.
    let mut fresh = sub(&cx, &ch).await?;
    publish(&cx, &ch, Message::new("fresh", "x")).await?;
    until_kind(&mut fresh, "fresh", cx.prompt()).await?;
    println!("reconnect: cut {cut}, {i} probe publishes ({errors} failed)");
    Ok(())
}
