//! PubSub cases: rules P1–P8 of DESIGN §5 (ephemeral broadcast, at most once).
//!
//! One file per rule: the `pubsub::<rule>::*` cases live in `pubsub/<rule>.rs`; the helpers
//! they share are below.

use std::time::{Duration, Instant};

use courier_core::{Message, SubscribeOptions, SubscriberHandle, Subscription};

use crate::{Case, Ctx, Failure, Outcome, within};

mod bad_input;
mod durability;
mod fanout;
mod handler;
mod isolation;
mod order;
mod patterns;
mod reconnect;
mod slow;

pub(crate) fn cases() -> Vec<Case> {
    let mut all = Vec::new();
    all.extend(fanout::cases());
    all.extend(durability::cases());
    all.extend(order::cases());
    all.extend(patterns::cases());
    all.extend(isolation::cases());
    all.extend(reconnect::cases());
    all.extend(slow::cases());
    all.extend(handler::cases());
    all.extend(bad_input::cases());
    all
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the rule files
// ---------------------------------------------------------------------------------------------

/// How long a subscription must stay quiet to conclude "nothing more is coming".
const QUIET: Duration = Duration::from_millis(250);

async fn sub_with(cx: &Ctx, pattern: &str, buffer: usize) -> Result<Subscription, Failure> {
    let opts = SubscribeOptions { buffer };
    Ok(within(
        cx.prompt() + Duration::from_secs(5),
        "subscribe",
        cx.backend.pubsub.subscribe(pattern, opts),
    )
    .await??)
}

async fn sub(cx: &Ctx, pattern: &str) -> Result<Subscription, Failure> {
    sub_with(cx, pattern, SubscribeOptions::default().buffer).await
}

async fn publish(cx: &Ctx, channel: &str, m: Message) -> Result<usize, Failure> {
    Ok(within(
        cx.prompt() + Duration::from_secs(5),
        "publish",
        cx.backend.pubsub.publish(channel, m),
    )
    .await??)
}

/// The next message, or a failure naming `what`.
async fn next(sub: &mut Subscription, limit: Duration, what: &str) -> Result<Message, Failure> {
    sub.next_timeout(limit)
        .await
        .ok_or_else(|| Failure(format!("no message within {limit:?} waiting for {what}")))
}

/// Receive until a message of kind `sentinel` arrives (included), or fail at `limit`.
async fn until_kind(
    sub: &mut Subscription,
    sentinel: &str,
    limit: Duration,
) -> Result<Vec<Message>, Failure> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = next(sub, left, &format!("sentinel {sentinel:?}"))
            .await
            .map_err(|f| Failure(format!("{} (got so far: {:?})", f.0, kinds(&got))))?;
        let done = m.kind == sentinel;
        got.push(m);
        if done {
            return Ok(got);
        }
    }
}

/// Everything that arrives until the subscription has been quiet for `quiet`.
async fn drain_quiet(sub: &mut Subscription, quiet: Duration) -> Vec<Message> {
    let mut got = Vec::new();
    while let Some(m) = sub.next_timeout(quiet).await {
        got.push(m);
        if got.len() > 100_000 {
            break;
        }
    }
    got
}

fn kinds(ms: &[Message]) -> Vec<String> {
    ms.iter().map(|m| m.kind.clone()).collect()
}

/// Wait until `pred(stats)` for a subscriber, bounded.
async fn subscriber_until(
    h: &SubscriberHandle,
    limit: Duration,
    pred: impl Fn(&courier_core::SubscriberStats) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if pred(&h.stats()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn stop(h: SubscriberHandle) -> Outcome {
    within(Duration::from_secs(10), "subscriber stop", h.stop()).await
}
