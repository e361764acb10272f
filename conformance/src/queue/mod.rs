//! Queue cases: rules Q1–Q13 of DESIGN §3 and its precise choices.
//!
//! One file per rule: the `queue::<rule>::*` cases live in `queue/<rule>.rs`; the helpers
//! they share are below.

use std::time::Duration;

use courier_core::{ErrorKind, Message, MessageId, QueueConfig, QueueExt, RetryPolicy, Settle};

use crate::{Case, Ctx, receive_n, within};

mod bad_input;
mod batch;
mod conservation;
mod dead_letters;
mod dedup;
mod delay;
mod durability;
mod expiry;
mod lease;
mod listing;
mod pause;
mod priority;
mod rate;
mod reprioritise;
mod retry;
mod stats;

pub(crate) fn cases() -> Vec<Case> {
    let mut all = Vec::new();
    all.extend(durability::cases());
    all.extend(priority::cases());
    all.extend(delay::cases());
    all.extend(lease::cases());
    all.extend(retry::cases());
    all.extend(dead_letters::cases());
    all.extend(dedup::cases());
    all.extend(expiry::cases());
    all.extend(listing::cases());
    all.extend(pause::cases());
    all.extend(rate::cases());
    all.extend(reprioritise::cases());
    all.extend(batch::cases());
    all.extend(stats::cases());
    all.extend(conservation::cases());
    all.extend(bad_input::cases());
    all
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the rule files
// ---------------------------------------------------------------------------------------------

const SHORT: Duration = Duration::from_millis(200);

const LIMIT: Duration = Duration::from_secs(10);

/// A queue with `config`, named for this case.
fn queue(cx: &Ctx, what: &str, config: QueueConfig) -> Result<String, crate::Failure> {
    let name = cx.name(what);
    cx.q().configure(&name, config)?;
    Ok(name)
}

fn config_with(retry: RetryPolicy, visibility: Duration) -> QueueConfig {
    QueueConfig::default()
        .with_visibility_timeout(visibility)
        .with_retry(retry)
}

async fn publish(cx: &Ctx, q: &str, m: Message) -> Result<MessageId, crate::Failure> {
    Ok(within(LIMIT, "publish", cx.q().publish(q, m)).await??)
}

async fn publish_all(
    cx: &Ctx,
    q: &str,
    ms: Vec<Message>,
) -> Result<Vec<MessageId>, crate::Failure> {
    let out = within(LIMIT, "publish_batch", cx.q().publish_batch(q, ms)).await??;
    Ok(courier_core::Published::ids(&out))
}

async fn one(cx: &Ctx, q: &str, limit: Duration) -> Result<courier_core::Delivery, crate::Failure> {
    let mut got = receive_n(cx.q(), q, 1, limit).await?;
    got.pop()
        .ok_or_else(|| crate::Failure("receive_n returned nothing".into()))
}

async fn settle(cx: &Ctx, q: &str, op: Settle) -> courier_core::Result<()> {
    match tokio::time::timeout(LIMIT, cx.q().settle_one(q, op)).await {
        Ok(r) => r,
        Err(_) => Err(courier_core::Error::new(
            ErrorKind::Unavailable,
            "settle timed out",
        )),
    }
}

fn kinds(n: usize, prefix: &str) -> Vec<Message> {
    (0..n)
        .map(|i| Message::new(format!("{prefix}{i}"), vec![i as u8]))
        .collect()
}
