//! EventBus cases: rules E1–E7 of DESIGN §6 (durable events with consumer groups), and the
//! failure rules of §3 applied per group (E3).
//!
//! One file per rule: the `events::<rule>::*` cases live in `events/<rule>.rs`; the helpers
//! they share are below.

use std::time::{Duration, Instant};

use courier_core::{
    Delivery, EventBus, EventBusExt, GroupStats, Message, MessageId, QueueConfig, ReplayFrom,
    RetryPolicy, Settle, WorkerHandle,
};

use crate::{Case, Ctx, Failure, Outcome, ensure, ensure_eq, within};

mod bad_input;
mod concurrency;
mod emit;
mod expiry;
mod failure;
mod groups;
mod listing;
mod local;
mod order;
mod pause;
mod read;
mod replay;
mod retention;
mod stats;

pub(crate) fn cases() -> Vec<Case> {
    let mut all = Vec::new();
    all.extend(emit::cases());
    all.extend(groups::cases());
    all.extend(listing::cases());
    all.extend(pause::cases());
    all.extend(failure::cases());
    all.extend(expiry::cases());
    all.extend(order::cases());
    all.extend(replay::cases());
    all.extend(read::cases());
    all.extend(retention::cases());
    all.extend(stats::cases());
    all.extend(local::cases());
    all.extend(concurrency::cases());
    all.extend(bad_input::cases());
    all
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the rule files
// ---------------------------------------------------------------------------------------------

const TOL: Duration = Duration::from_millis(5);

fn bus(cx: &Ctx) -> &dyn EventBus {
    &*cx.backend.events
}

fn ids(ds: &[Delivery]) -> Vec<MessageId> {
    ds.iter().map(|d| d.message.id).collect()
}

fn kinds(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(|d| d.message.kind.clone()).collect()
}

/// A group configuration with a short lease and exact, immediate retries.
fn short_lease(visibility_ms: u64, max_attempts: u32) -> QueueConfig {
    QueueConfig::default()
        .with_visibility_timeout(Duration::from_millis(visibility_ms))
        .with_retry(RetryPolicy::exact(
            max_attempts,
            Duration::ZERO,
            2.0,
            Duration::ZERO,
        ))
}

/// Emit `n` events of kinds `{prefix}{i}` in one batch.
async fn emit_n(
    b: &dyn EventBus,
    topic: &str,
    prefix: &str,
    n: usize,
) -> Result<Vec<MessageId>, Failure> {
    let events: Vec<Message> = (0..n)
        .map(|i| Message::new(format!("{prefix}{i}"), format!("{i}")))
        .collect();
    let want: Vec<MessageId> = events.iter().map(|m| m.id).collect();
    let got = within(
        Duration::from_secs(30),
        "emit_batch",
        b.emit_batch(topic, events),
    )
    .await??;
    ensure_eq!(got, want, "emit_batch returns the events' ids in order");
    Ok(got)
}

async fn emit_one(b: &dyn EventBus, topic: &str, m: Message) -> Result<MessageId, Failure> {
    Ok(within(Duration::from_secs(10), "emit", b.emit(topic, m)).await??)
}

/// Receive until `n` deliveries are collected for `group`, or fail at `limit`.
async fn recv_n(
    b: &dyn EventBus,
    topic: &str,
    group: &str,
    n: usize,
    limit: Duration,
) -> Result<Vec<Delivery>, Failure> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure(format!(
                "group {group} received {} of {n} from {topic} within {limit:?}: {:?}",
                got.len(),
                kinds(&got)
            )));
        }
        let wait = left.min(Duration::from_millis(500));
        let batch = within(
            left + Duration::from_secs(5),
            "receive",
            b.receive(topic, group, n - got.len(), wait),
        )
        .await??;
        got.extend(batch);
    }
    Ok(got)
}

/// One delivery, or a failure.
async fn recv_one(
    b: &dyn EventBus,
    topic: &str,
    group: &str,
    limit: Duration,
) -> Result<Delivery, Failure> {
    let mut v = recv_n(b, topic, group, 1, limit).await?;
    v.pop()
        .ok_or_else(|| Failure("receive returned nothing".into()))
}

/// Nothing is delivered to `group` during `wait`.
async fn expect_none(b: &dyn EventBus, topic: &str, group: &str, wait: Duration) -> Outcome {
    let got = within(
        wait + Duration::from_secs(5),
        "receive",
        b.receive(topic, group, 10, wait),
    )
    .await??;
    ensure!(
        got.is_empty(),
        "expected nothing for group {group} for {wait:?}, got {:?}",
        got.iter()
            .map(|d| (&d.message.kind, d.message.attempt))
            .collect::<Vec<_>>()
    );
    Ok(())
}

async fn ack_all(b: &dyn EventBus, topic: &str, group: &str, ds: &[Delivery]) -> Outcome {
    let ops = ds.iter().map(|d| Settle::Ack(d.lease)).collect();
    let rs = within(
        Duration::from_secs(10),
        "settle",
        b.settle(topic, group, ops),
    )
    .await??;
    ensure_eq!(rs.len(), ds.len(), "one settle result per operation");
    for (i, r) in rs.into_iter().enumerate() {
        r.map_err(|e| Failure(format!("ack {i} of {}: {e}", ds.len())))?;
    }
    Ok(())
}

async fn settle(b: &dyn EventBus, topic: &str, group: &str, op: Settle) -> Outcome {
    within(
        Duration::from_secs(10),
        "settle",
        b.settle_one(topic, group, op),
    )
    .await??;
    Ok(())
}

async fn gstats(b: &dyn EventBus, topic: &str, group: &str) -> Result<GroupStats, Failure> {
    Ok(within(
        Duration::from_secs(10),
        "group_stats",
        b.group_stats(topic, group),
    )
    .await??)
}

async fn gstats_until(
    b: &dyn EventBus,
    topic: &str,
    group: &str,
    limit: Duration,
    pred: impl Fn(&GroupStats) -> bool,
) -> Result<(GroupStats, bool), Failure> {
    let deadline = Instant::now() + limit;
    loop {
        let s = gstats(b, topic, group).await?;
        if pred(&s) {
            return Ok((s, true));
        }
        if Instant::now() >= deadline {
            return Ok((s, false));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn topic_len(b: &dyn EventBus, topic: &str) -> Result<u64, Failure> {
    Ok(within(Duration::from_secs(10), "topic_len", b.topic_len(topic)).await??)
}

async fn reset(b: &dyn EventBus, topic: &str, group: &str, from: ReplayFrom) -> Outcome {
    within(
        Duration::from_secs(10),
        "reset_group",
        b.reset_group(topic, group, from),
    )
    .await??;
    Ok(())
}

async fn stop_worker(h: WorkerHandle) -> Outcome {
    within(
        Duration::from_secs(15),
        "worker stop",
        h.stop(Duration::from_secs(2)),
    )
    .await?;
    Ok(())
}

/// Poll `f` until it holds, bounded.
async fn until(limit: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
