//! PubSub cases, P7 Slow subscribers: `pubsub::slow::*`.

use std::time::{Duration, Instant};

use courier_core::Message;

use super::{drain_quiet, kinds, next, publish, sub_with};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "pubsub::slow::overflow_drops_oldest_and_counts",
            ["P7"],
            overflow_drops_oldest
        ),
        case!(
            "pubsub::slow::slow_subscriber_does_not_affect_fast_one",
            ["P7"],
            slow_does_not_affect_fast
        ),
    ]
}

async fn overflow_drops_oldest(cx: Ctx) -> Outcome {
    let ch = cx.name("slow");
    let cap = 4usize;
    let n = 20usize;
    let mut s = sub_with(&cx, &ch, cap).await?;
    let mut ids = Vec::new();
    for i in 0..n {
        let m = Message::new(format!("{i}"), "x");
        ids.push(m.id);
        publish(&cx, &ch, m).await?;
    }
    // Delivery into the buffer may be asynchronous: wait (bounded) until every message has
    // either been dropped or is buffered.
    let want_dropped = (n - cap) as u64;
    let deadline = Instant::now() + cx.prompt();
    while s.dropped() < want_dropped && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ensure_eq!(
        s.dropped(),
        want_dropped,
        "dropped count once {n} messages met a buffer of {cap}"
    );
    let mut got = Vec::new();
    while let Some(m) = s.try_next() {
        got.push(m.id);
    }
    ensure_eq!(
        got,
        ids[n - cap..].to_vec(),
        "the buffer keeps the newest {cap}, oldest first (the oldest were dropped)"
    );
    // Nothing else is coming, and the count stays.
    let extra = drain_quiet(&mut s, Duration::from_millis(100)).await;
    ensure!(extra.is_empty(), "extra messages: {:?}", kinds(&extra));
    ensure_eq!(s.dropped(), want_dropped, "dropped count is stable");
    // The subscription keeps working after an overflow.
    publish(&cx, &ch, Message::new("later", "x")).await?;
    ensure_eq!(
        next(&mut s, cx.prompt(), "later").await?.kind,
        "later",
        "kind"
    );
    ensure_eq!(s.dropped(), want_dropped, "no drop when there is room");
    Ok(())
}

async fn slow_does_not_affect_fast(cx: Ctx) -> Outcome {
    let ch = cx.name("slowfast");
    let mut slow = sub_with(&cx, &ch, 2).await?;
    let mut fast = sub_with(&cx, &ch, 1024).await?;
    let n = 100usize;
    for i in 0..n {
        publish(&cx, &ch, Message::new(format!("{i}"), "x")).await?;
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + cx.prompt();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        got.push(next(&mut fast, left, "the fast subscriber").await?.kind);
    }
    let want: Vec<String> = (0..n).map(|i| format!("{i}")).collect();
    ensure_eq!(got, want, "the fast subscriber got everything in order");
    ensure_eq!(fast.dropped(), 0, "the fast subscriber dropped nothing");
    let deadline = Instant::now() + cx.prompt();
    while slow.dropped() < (n - 2) as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ensure_eq!(
        slow.dropped(),
        (n - 2) as u64,
        "the slow subscriber's drops"
    );
    let mut kept = Vec::new();
    while let Some(m) = slow.try_next() {
        kept.push(m.kind);
    }
    ensure_eq!(
        kept,
        vec![format!("{}", n - 2), format!("{}", n - 1)],
        "the slow subscriber kept the newest"
    );
    Ok(())
}
