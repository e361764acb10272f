//! EventBus cases: rules E1–E6 of DESIGN §6 (durable events with consumer groups), and the
//! failure rules of §3 applied per group (E3).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_core::{
    Delivery, ErrorKind, EventBus, EventBusExt, GroupConsumer, GroupStats, HandlerError, Message,
    MessageId, Page, Priority, QueueConfig, ReplayFrom, Retention, RetryPolicy, Selection, Settle,
    WorkerHandle,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{
    Accounting, Case, Ctx, Failure, Outcome, case, ensure, ensure_eq, expect_kind, plain_config,
    within,
};

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!("events::emit::appends_to_the_log", ["E1"], emit_appends),
        case!(
            "events::emit::batch_ids_in_order",
            ["E1", "E4"],
            emit_batch_in_order
        ),
        case!("events::emit::fields_round_trip", ["E1"], emit_fields),
        case!(
            "events::groups::every_group_gets_every_event",
            ["E2"],
            every_group_every_event
        ),
        case!(
            "events::groups::competing_receivers_never_share_an_event",
            ["E2"],
            competing_receivers
        ),
        case!(
            "events::groups::group_that_was_down_gets_what_it_missed",
            ["E2"],
            group_was_down
        ),
        case!(
            "events::groups::new_group_starts_at_retained_start",
            ["E2", "E5"],
            new_group_starts_at_start
        ),
        case!(
            "events::groups::second_handle_shares_group_state",
            ["E2", "E3"],
            second_handle_shares
        ),
        case!(
            "events::groups::same_group_on_two_topics_is_independent",
            ["E2"],
            group_per_topic
        ),
        case!(
            "events::failure::expired_lease_redelivers_next_attempt",
            ["E3"],
            lease_expiry
        ),
        case!(
            "events::failure::retry_not_before_its_delay",
            ["E3"],
            retry_delay
        ),
        case!(
            "events::failure::max_attempts_then_group_dead_letter",
            ["E3"],
            max_attempts_dead
        ),
        case!(
            "events::failure::stale_token_is_lease_lost",
            ["E3"],
            stale_token
        ),
        case!(
            "events::failure::double_ack_is_lease_lost",
            ["E3"],
            double_ack
        ),
        case!(
            "events::failure::extend_pushes_the_deadline",
            ["E3"],
            extend
        ),
        case!(
            "events::failure::release_does_not_count_attempt",
            ["E3"],
            release
        ),
        case!(
            "events::failure::requeue_and_purge_group_dead_letters",
            ["E3"],
            requeue_purge
        ),
        case!(
            "events::failure::consumer_retries_with_group_backoff",
            ["E3"],
            consumer_backoff
        ),
        case!(
            "events::order::single_consumer_sees_emit_order",
            ["E4"],
            single_consumer_order
        ),
        case!(
            "events::order::singles_and_batches_interleaved",
            ["E4"],
            mixed_emit_order
        ),
        case!(
            "events::order::retried_batch_keeps_emit_order_whatever_the_priority",
            ["E3", "E4"],
            retried_batch_order
        ),
        case!("events::replay::reset_to_start", ["E5"], reset_start),
        case!("events::replay::reset_to_time", ["E5"], reset_time),
        case!("events::replay::reset_to_id", ["E5"], reset_id),
        case!("events::replay::reset_to_end", ["E5"], reset_end),
        case!(
            "events::replay::reset_drops_pending_keeps_dead",
            ["E5", "E3"],
            reset_keeps_dead
        ),
        case!(
            "events::retention::max_len_trims_oldest",
            ["E5"],
            retention_max_len
        ),
        case!(
            "events::retention::max_age_expires_old_events",
            ["E5"],
            retention_max_age
        ),
        case!(
            "events::retention::lagging_group_continues_at_oldest_retained",
            ["E5", "E2"],
            retention_lagging_group
        ),
        case!(
            "events::stats::lag_in_flight_and_dead",
            ["E2", "E3"],
            stats_lag
        ),
        case!(
            "events::local::typed_event_round_trip",
            ["E6"],
            typed_round_trip
        ),
        case!(
            "events::local::group_consumer_end_to_end",
            ["E6", "E2"],
            group_consumer_e2e
        ),
        case!(
            "events::local::undecodable_typed_event_dead_lettered",
            ["E6", "E3"],
            typed_undecodable
        ),
        case!(
            "events::local::memory_delivers_without_copying",
            ["E6"],
            memory_no_copy
        ),
        case!(
            "events::concurrency::competing_group_consumers_jepsen",
            ["E2", "E4"],
            competing_consumers_jepsen
        ),
        case!(
            "events::concurrency::concurrent_emitters_all_delivered",
            ["E1", "E4"],
            concurrent_emitters
        ),
        case!(
            "events::bad_input::invalid_names_rejected",
            ["E1"],
            invalid_names
        ),
        case!(
            "events::bad_input::oversize_batch_stores_nothing",
            ["E1"],
            oversize_batch
        ),
        case!(
            "events::bad_input::bad_group_config_rejected",
            ["E3"],
            bad_group_config
        ),
        case!(
            "events::bad_input::reset_to_unknown_id_not_found",
            ["E5"],
            reset_unknown_id
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Helpers (private to this file)
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
    QueueConfig {
        visibility_timeout: Duration::from_millis(visibility_ms),
        retry: RetryPolicy::exact(max_attempts, Duration::ZERO, 2.0, Duration::ZERO),
        ..QueueConfig::default()
    }
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

/// Wait (bounded) until the backend clock reads at least `at_ms`.
async fn clock_past(b: &dyn EventBus, at_ms: u64) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.clock().now_ms() < at_ms {
        ensure!(
            Instant::now() < deadline,
            "the backend clock did not reach {at_ms}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
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

// ---------------------------------------------------------------------------------------------
// E1 Durable emit
// ---------------------------------------------------------------------------------------------

async fn emit_appends(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    ensure_eq!(topic_len(b, &t).await?, 0, "a new topic is empty");
    let mut sent = Vec::new();
    for i in 1..=3u64 {
        let id = emit_one(b, &t, Message::new(format!("e{i}"), "x")).await?;
        ensure!(!id.is_nil(), "emit returned a nil id");
        sent.push(id);
        ensure_eq!(topic_len(b, &t).await?, i, "topic_len after {i} emits");
    }
    let g = cx.name("g");
    let got = recv_n(b, &t, &g, 3, cx.prompt()).await?;
    ensure_eq!(ids(&got), sent, "the group reads what was appended");
    ack_all(b, &t, &g, &got).await?;
    ensure_eq!(
        topic_len(b, &t).await?,
        3,
        "acking in a group does not remove events from the log"
    );
    // A nil id is assigned at emit.
    let mut m = Message::new("nil", "x");
    m.id = MessageId::nil();
    let id = emit_one(b, &t, m).await?;
    ensure!(!id.is_nil(), "a nil id is assigned at emit");
    let d = recv_one(b, &t, &g, cx.prompt()).await?;
    ensure_eq!(
        d.message.id,
        id,
        "the delivered event carries the assigned id"
    );
    Ok(())
}

async fn emit_batch_in_order(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let first = emit_n(b, &t, "a", 10).await?;
    let second = emit_n(b, &t, "b", 10).await?;
    ensure_eq!(topic_len(b, &t).await?, 20, "topic_len");
    let empty = within(cx.prompt(), "emit_batch", b.emit_batch(&t, Vec::new())).await??;
    ensure!(empty.is_empty(), "an empty batch returns no ids");
    ensure_eq!(
        topic_len(b, &t).await?,
        20,
        "an empty batch appends nothing"
    );
    let g = cx.name("g");
    let got = recv_n(b, &t, &g, 20, cx.prompt()).await?;
    let want: Vec<MessageId> = first.into_iter().chain(second).collect();
    ensure_eq!(ids(&got), want, "batches are appended in order");
    Ok(())
}

async fn emit_fields(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let payload: Vec<u8> = (0u8..=255).rev().collect();
    let m = Message::new("meeting.created", Bytes::from(payload.clone()))
        .with_priority(Priority::Critical)
        .with_header("correlation_id", "c-42")
        .with_header("source", "conformance");
    let id = m.id;
    let before = b.clock().now_ms();
    emit_one(b, &t, m).await?;
    let d = recv_one(b, &t, &cx.name("g"), cx.prompt()).await?;
    ensure_eq!(d.message.id, id, "id");
    ensure_eq!(d.message.kind, "meeting.created", "kind");
    ensure_eq!(d.message.payload.as_ref(), payload.as_slice(), "payload");
    ensure_eq!(d.message.priority, Priority::Critical, "priority");
    ensure_eq!(
        d.message.headers.get("correlation_id").map(String::as_str),
        Some("c-42"),
        "header"
    );
    ensure_eq!(d.message.headers.len(), 2, "headers");
    ensure_eq!(d.message.attempt, 1, "attempt of the first delivery");
    ensure_eq!(d.lease.attempt, 1, "lease attempt");
    ensure_eq!(d.lease.id, id, "lease id");
    ensure!(
        d.message.created_at + 1_000 >= before,
        "created_at {} set at emit (clock {before})",
        d.message.created_at
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// E2 Groups
// ---------------------------------------------------------------------------------------------

async fn every_group_every_event(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let sent = emit_n(b, &t, "e", 20).await?;
    let groups: Vec<String> = (0..3).map(|i| cx.name(&format!("g{i}"))).collect();
    // The first group reads and acks everything before the others read anything.
    for g in &groups {
        let got = recv_n(b, &t, g, 20, cx.prompt()).await?;
        ensure_eq!(ids(&got), sent, "group {g} got every event, in order");
        ack_all(b, &t, g, &got).await?;
        expect_none(b, &t, g, Duration::from_millis(100)).await?;
    }
    for g in &groups {
        let s = gstats(b, &t, g).await?;
        ensure_eq!(
            (s.lag, s.queue.in_flight, s.queue.acked),
            (0, 0, 20),
            "group {g} (lag, in_flight, acked)"
        );
    }
    Ok(())
}

async fn competing_receivers(cx: Ctx) -> Outcome {
    let t = cx.name("t");
    let g = cx.name("g");
    let n = 300usize;
    let b = cx.backend.events.clone();
    let mut acc = Accounting::default();
    for id in emit_n(&*b, &t, "e", n).await? {
        acc.sent(id);
    }
    let seen = Arc::new(Mutex::new(Vec::<(usize, MessageId)>::new()));
    let mut tasks = Vec::new();
    for r in 0..2usize {
        let b = b.clone();
        let (t, g, seen) = (t.clone(), g.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if seen.lock().len() >= n || Instant::now() >= deadline {
                    return Ok::<_, courier_core::Error>(());
                }
                let ds = b.receive(&t, &g, 3, Duration::from_millis(100)).await?;
                for d in &ds {
                    seen.lock().push((r, d.message.id));
                }
                if !ds.is_empty() {
                    // Simulated work while holding the leases, so the receivers overlap.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let ops = ds.iter().map(|d| Settle::Ack(d.lease)).collect();
                for res in b.settle(&t, &g, ops).await? {
                    res?;
                }
            }
        }));
    }
    for task in tasks {
        within(Duration::from_secs(30), "receiver task", task)
            .await?
            .map_err(|e| Failure(format!("receiver task failed: {e}")))??;
    }
    let seen = seen.lock().clone();
    for (_, id) in &seen {
        acc.seen(*id);
    }
    let (lost, unexpected, duplicated) = acc.report("events competing receivers");
    let per: Vec<usize> = (0..2)
        .map(|r| seen.iter().filter(|(w, _)| *w == r).count())
        .collect();
    println!("per receiver: {per:?}");
    ensure_eq!(
        (lost, unexpected, duplicated),
        (0, 0, 0),
        "(lost, unexpected, duplicated) with no lease expiring"
    );
    Ok(())
}

async fn group_was_down(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let other = cx.name("other");
    emit_n(b, &t, "first", 1).await?;
    let d = recv_one(b, &t, &g, cx.prompt()).await?;
    ack_all(b, &t, &g, std::slice::from_ref(&d)).await?;
    // The group is "down": events keep coming and another group keeps reading.
    let missed = emit_n(b, &t, "missed", 5).await?;
    let o = recv_n(b, &t, &other, 6, cx.prompt()).await?;
    ack_all(b, &t, &other, &o).await?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(s.lag, 5, "lag of the group that was down");
    let got = recv_n(b, &t, &g, 5, cx.prompt()).await?;
    ensure_eq!(ids(&got), missed, "the group gets exactly what it missed");
    ack_all(b, &t, &g, &got).await?;
    expect_none(b, &t, &g, Duration::from_millis(100)).await
}

async fn new_group_starts_at_start(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let early = emit_n(b, &t, "early", 5).await?;
    let g = cx.name("late");
    let got = recv_n(b, &t, &g, 5, cx.prompt()).await?;
    ensure_eq!(
        ids(&got),
        early,
        "a group created after the emits reads from the start of the retained log"
    );
    Ok(())
}

async fn second_handle_shares(cx: Ctx) -> Outcome {
    let a = bus(&cx);
    let other = within(
        Duration::from_secs(30),
        "reopen",
        cx.factory.reopen(&cx.ns, &cx.backend),
    )
    .await??;
    let b2: &dyn EventBus = &*other.events;
    let t = cx.name("t");
    let g = cx.name("g");
    let sent = emit_n(a, &t, "e", 6).await?;
    ensure_eq!(
        topic_len(b2, &t).await?,
        6,
        "the second handle sees the log"
    );
    let first = recv_n(a, &t, &g, 2, cx.prompt()).await?;
    ack_all(a, &t, &g, &first).await?;
    let held = recv_one(a, &t, &g, cx.prompt()).await?;
    // The second handle gets neither the acked nor the leased events.
    let rest = recv_n(b2, &t, &g, 3, cx.prompt()).await?;
    ensure_eq!(
        ids(&rest),
        sent[3..].to_vec(),
        "the second handle continues where the group is"
    );
    expect_none(b2, &t, &g, Duration::from_millis(200)).await?;
    let s = gstats(b2, &t, &g).await?;
    ensure_eq!(
        (s.queue.in_flight, s.lag),
        (4, 0),
        "(in_flight, lag) seen by the second handle"
    );
    // A lease taken on one handle can be settled on the other.
    ack_all(b2, &t, &g, std::slice::from_ref(&held)).await?;
    ack_all(a, &t, &g, &rest).await?;
    let s = gstats(a, &t, &g).await?;
    ensure_eq!(s.queue.in_flight, 0, "in_flight after every ack");
    Ok(())
}

async fn group_per_topic(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t1 = cx.name("t1");
    let t2 = cx.name("t2");
    let g = cx.name("g");
    let a = emit_n(b, &t1, "one", 3).await?;
    let c = emit_n(b, &t2, "two", 2).await?;
    let got1 = recv_n(b, &t1, &g, 3, cx.prompt()).await?;
    ensure_eq!(ids(&got1), a, "topic 1 for the group");
    ack_all(b, &t1, &g, &got1).await?;
    expect_none(b, &t1, &g, Duration::from_millis(100)).await?;
    let s2 = gstats(b, &t2, &g).await?;
    ensure_eq!(s2.lag, 2, "the same group on topic 2 is unaffected");
    let got2 = recv_n(b, &t2, &g, 2, cx.prompt()).await?;
    ensure_eq!(ids(&got2), c, "topic 2 for the group");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// E3 Failure rules
// ---------------------------------------------------------------------------------------------

async fn lease_expiry(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let vis = Duration::from_millis(300);
    b.configure_group(&t, &g, short_lease(300, 5))?;
    let id = emit_one(b, &t, Message::new("e", "x")).await?;
    let start = Instant::now();
    let d1 = recv_one(b, &t, &g, cx.prompt()).await?;
    ensure_eq!(
        (d1.message.id, d1.message.attempt),
        (id, 1),
        "first delivery"
    );
    let d2 = recv_one(b, &t, &g, vis + cx.prompt()).await?;
    let after = start.elapsed();
    ensure_eq!(d2.message.id, id, "the same event comes back");
    ensure_eq!(d2.message.attempt, 2, "with attempt + 1");
    ensure_eq!(d2.lease.attempt, 2, "lease attempt");
    ensure!(d2.lease.token != d1.lease.token, "a new lease token");
    ensure!(
        after + TOL >= vis,
        "redelivered after {after:?}, before the {vis:?} lease ended"
    );
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.queue.in_flight, s.queue.retried),
        (1, 1),
        "(in_flight, retried): an expired lease counts as a failed attempt"
    );
    Ok(())
}

async fn retry_delay(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    b.configure_group(&t, &g, plain_config())?;
    let id = emit_one(b, &t, Message::new("e", "x")).await?;
    let d1 = recv_one(b, &t, &g, cx.prompt()).await?;
    let delay = Duration::from_millis(300);
    let start = Instant::now();
    settle(
        b,
        &t,
        &g,
        Settle::Retry {
            lease: d1.lease,
            delay,
            error: "try later".into(),
        },
    )
    .await?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.queue.delayed, s.queue.in_flight, s.queue.retried),
        (1, 0, 1),
        "(delayed, in_flight, retried) right after the retry"
    );
    let d2 = recv_one(b, &t, &g, delay + cx.prompt()).await?;
    let after = start.elapsed();
    ensure_eq!((d2.message.id, d2.message.attempt), (id, 2), "redelivery");
    ensure!(
        after + TOL >= delay,
        "redelivered {after:?} after the retry, before its {delay:?} delay"
    );
    ensure!(
        after <= delay + cx.prompt(),
        "redelivered {after:?} after the retry: not prompt"
    );
    Ok(())
}

async fn max_attempts_dead(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let healthy = cx.name("healthy");
    let vis = Duration::from_millis(250);
    b.configure_group(&t, &g, short_lease(250, 2))?;
    b.configure_group(&t, &healthy, plain_config())?;
    let id = emit_one(b, &t, Message::new("e", "x")).await?;
    let d1 = recv_one(b, &t, &g, cx.prompt()).await?;
    ensure_eq!(d1.message.attempt, 1, "first attempt");
    let d2 = recv_one(b, &t, &g, vis + cx.prompt()).await?;
    ensure_eq!(
        (d2.message.id, d2.message.attempt),
        (id, 2),
        "second attempt"
    );
    // The second lease expires too: out of attempts, into this group's dead letters.
    let (s, ok) = gstats_until(b, &t, &g, vis + cx.prompt(), |s| s.queue.dead == 1).await?;
    ensure!(ok, "one dead letter after max_attempts: {s:?}");
    ensure_eq!(
        (s.queue.in_flight, s.queue.dead_lettered),
        (0, 1),
        "(in_flight, dead_lettered)"
    );
    expect_none(b, &t, &g, Duration::from_millis(150)).await?;
    let dl = within(
        cx.prompt(),
        "dead_letters",
        b.dead_letters(&t, &g, Page::first(10)),
    )
    .await??;
    ensure_eq!(dl.len(), 1, "dead letters of the group");
    ensure_eq!(dl[0].message.id, id, "dead letter id");
    ensure_eq!(dl[0].attempts, 2, "dead letter attempts");
    ensure!(!dl[0].error.is_empty(), "the dead letter has an error");
    ensure!(dl[0].failed_at > 0, "failed_at set");
    // Another group of the same topic is unaffected.
    let h = recv_one(b, &t, &healthy, cx.prompt()).await?;
    ensure_eq!((h.message.id, h.message.attempt), (id, 1), "other group");
    let hs = gstats(b, &t, &healthy).await?;
    ensure_eq!(hs.queue.dead, 0, "the other group has no dead letter");
    let hdl = within(
        cx.prompt(),
        "dead_letters",
        b.dead_letters(&t, &healthy, Page::first(10)),
    )
    .await??;
    ensure!(hdl.is_empty(), "dead letters are per group");
    ensure_eq!(topic_len(b, &t).await?, 1, "the log keeps the event");
    Ok(())
}

async fn stale_token(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    b.configure_group(&t, &g, short_lease(250, 5))?;
    emit_one(b, &t, Message::new("e", "x")).await?;
    let d1 = recv_one(b, &t, &g, cx.prompt()).await?;
    let d2 = recv_one(b, &t, &g, Duration::from_millis(250) + cx.prompt()).await?;
    ensure_eq!(d2.message.attempt, 2, "redelivered after the lease expired");
    let r = within(cx.prompt(), "ack", b.ack(&t, &g, &d1.lease)).await?;
    expect_kind(r, ErrorKind::LeaseLost, "ack with the expired lease")?;
    let r = within(
        cx.prompt(),
        "extend",
        b.extend(&t, &g, &d1.lease, Duration::from_secs(5)),
    )
    .await?;
    expect_kind(r, ErrorKind::LeaseLost, "extend with the expired lease")?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.queue.in_flight, s.queue.acked),
        (1, 0),
        "the stale ack changed nothing"
    );
    within(cx.prompt(), "ack", b.ack(&t, &g, &d2.lease)).await??;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.queue.in_flight, s.queue.acked),
        (0, 1),
        "the current lease acks"
    );
    Ok(())
}

async fn double_ack(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    emit_n(b, &t, "e", 2).await?;
    let ds = recv_n(b, &t, &g, 2, cx.prompt()).await?;
    within(cx.prompt(), "ack", b.ack(&t, &g, &ds[0].lease)).await??;
    let r = within(cx.prompt(), "ack", b.ack(&t, &g, &ds[0].lease)).await?;
    expect_kind(r, ErrorKind::LeaseLost, "second ack")?;
    let r = within(
        cx.prompt(),
        "settle",
        b.settle_one(
            &t,
            &g,
            Settle::Retry {
                lease: ds[0].lease,
                delay: Duration::ZERO,
                error: "x".into(),
            },
        ),
    )
    .await?;
    expect_kind(r, ErrorKind::LeaseLost, "retry after ack")?;
    let r = within(
        cx.prompt(),
        "settle",
        b.settle_one(
            &t,
            &g,
            Settle::Bury {
                lease: ds[0].lease,
                error: "x".into(),
            },
        ),
    )
    .await?;
    expect_kind(r, ErrorKind::LeaseLost, "bury after ack")?;
    // A batch reports each result: one stale, one current.
    let rs = within(
        cx.prompt(),
        "settle",
        b.settle(
            &t,
            &g,
            vec![Settle::Ack(ds[0].lease), Settle::Ack(ds[1].lease)],
        ),
    )
    .await??;
    ensure_eq!(rs.len(), 2, "results");
    ensure!(
        rs[0].as_ref().err().map(|e| e.kind()) == Some(ErrorKind::LeaseLost),
        "stale ack in a batch: {:?}",
        rs[0].as_ref().map_err(|e| e.to_string())
    );
    ensure!(
        rs[1].is_ok(),
        "current ack in a batch: {:?}",
        rs[1].as_ref().map_err(|e| e.to_string())
    );
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (
            s.queue.acked,
            s.queue.dead,
            s.queue.delayed,
            s.queue.in_flight
        ),
        (2, 0, 0, 0),
        "(acked, dead, delayed, in_flight): a double ack is never a second removal"
    );
    expect_none(b, &t, &g, Duration::from_millis(100)).await
}

async fn extend(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    b.configure_group(&t, &g, short_lease(300, 5))?;
    emit_one(b, &t, Message::new("e", "x")).await?;
    let d = recv_one(b, &t, &g, cx.prompt()).await?;
    let start = Instant::now();
    let l2 = within(
        cx.prompt(),
        "extend",
        b.extend(&t, &g, &d.lease, Duration::from_millis(1500)),
    )
    .await??;
    ensure!(
        l2.deadline_ms > d.lease.deadline_ms,
        "extend moves the deadline ({} -> {})",
        d.lease.deadline_ms,
        l2.deadline_ms
    );
    ensure_eq!(l2.id, d.lease.id, "extended lease id");
    // Past the original 300 ms lease, the event must stay leased.
    expect_none(b, &t, &g, Duration::from_millis(600)).await?;
    ensure!(
        start.elapsed() < Duration::from_millis(1500),
        "the check ran too slowly to judge ({:?})",
        start.elapsed()
    );
    within(cx.prompt(), "ack", b.ack(&t, &g, &l2)).await??;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.queue.acked, s.queue.retried, s.queue.in_flight),
        (1, 0, 0),
        "(acked, retried, in_flight) after acking the extended lease"
    );
    Ok(())
}

async fn release(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let id = emit_one(b, &t, Message::new("e", "x")).await?;
    let d1 = recv_one(b, &t, &g, cx.prompt()).await?;
    settle(b, &t, &g, Settle::Release(d1.lease)).await?;
    let d2 = recv_one(b, &t, &g, cx.prompt()).await?;
    ensure_eq!(
        (d2.message.id, d2.message.attempt),
        (id, 1),
        "a released event is ready at once and the attempt is not counted"
    );
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(s.queue.retried, 0, "a release is not a retry");
    Ok(())
}

async fn requeue_purge(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let other = cx.name("other");
    let sent = emit_n(b, &t, "e", 3).await?;
    let ds = recv_n(b, &t, &g, 3, cx.prompt()).await?;
    for (i, d) in ds.iter().enumerate() {
        settle(
            b,
            &t,
            &g,
            Settle::Bury {
                lease: d.lease,
                error: format!("bad {i}"),
            },
        )
        .await?;
    }
    let dl = within(
        cx.prompt(),
        "dead_letters",
        b.dead_letters(&t, &g, Page::first(10)),
    )
    .await??;
    let dl_ids: Vec<MessageId> = dl.iter().map(|d| d.message.id).collect();
    ensure_eq!(dl_ids, sent, "dead letters oldest first");
    ensure_eq!(dl[1].error, "bad 1", "error kept");
    let page = within(
        cx.prompt(),
        "dead_letters",
        b.dead_letters(
            &t,
            &g,
            Page {
                offset: 1,
                limit: 1,
            },
        ),
    )
    .await??;
    ensure_eq!(
        page.iter().map(|d| d.message.id).collect::<Vec<_>>(),
        vec![sent[1]],
        "a page of dead letters"
    );
    // The other group is untouched by this group's dead letters and their requeue.
    let o = recv_n(b, &t, &other, 3, cx.prompt()).await?;
    ack_all(b, &t, &other, &o).await?;
    let n = within(
        cx.prompt(),
        "requeue_dead",
        b.requeue_dead(&t, &g, Selection::Ids(vec![sent[1], MessageId::new()])),
    )
    .await??;
    ensure_eq!(n, 1, "requeued (unknown ids not counted)");
    let d = recv_one(b, &t, &g, cx.prompt()).await?;
    ensure_eq!(
        (d.message.id, d.message.attempt),
        (sent[1], 1),
        "a requeued event keeps its id and starts at attempt 1"
    );
    ack_all(b, &t, &g, std::slice::from_ref(&d)).await?;
    expect_none(b, &t, &other, Duration::from_millis(100)).await?;
    let n = within(
        cx.prompt(),
        "purge_dead",
        b.purge_dead(&t, &g, Selection::Ids(vec![sent[0]])),
    )
    .await??;
    ensure_eq!(n, 1, "purged one");
    let n = within(
        cx.prompt(),
        "purge_dead",
        b.purge_dead(&t, &g, Selection::All),
    )
    .await??;
    ensure_eq!(n, 1, "purged the rest");
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(s.queue.dead, 0, "no dead letters left");
    ensure_eq!(topic_len(b, &t).await?, 3, "the log is untouched");
    Ok(())
}

async fn consumer_backoff(cx: Ctx) -> Outcome {
    let b = cx.backend.events.clone();
    let t = cx.name("t");
    let g = cx.name("g");
    let base = Duration::from_millis(80);
    b.configure_group(
        &t,
        &g,
        QueueConfig {
            retry: RetryPolicy::exact(3, base, 2.0, Duration::from_secs(5)),
            ..plain_config()
        },
    )?;
    let calls = Arc::new(Mutex::new(Vec::<(u32, Instant)>::new()));
    let c = calls.clone();
    let h = GroupConsumer::builder(b.clone(), &g)
        .on(&t, move |m: Message| {
            let c = c.clone();
            async move {
                c.lock().push((m.attempt, Instant::now()));
                Err(HandlerError::retry(format!("failing {}", m.attempt)))
            }
        })
        .idle_wait(Duration::from_millis(100))
        .concurrency(1)
        .start()?;
    let id = emit_one(&*b, &t, Message::new("e", "x")).await?;
    let (s, ok) = gstats_until(&*b, &t, &g, base * 3 + cx.prompt(), |s| s.queue.dead == 1).await?;
    stop_worker(h).await?;
    ensure!(ok, "dead-lettered after 3 attempts: {s:?}");
    let seen = calls.lock().clone();
    ensure_eq!(
        seen.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "attempts seen by the handler"
    );
    let gap1 = seen[1].1 - seen[0].1;
    let gap2 = seen[2].1 - seen[1].1;
    ensure!(
        gap1 + TOL >= base,
        "second attempt after {gap1:?} < {base:?}"
    );
    ensure!(
        gap2 + TOL >= base * 2,
        "third attempt after {gap2:?} < {:?}",
        base * 2
    );
    let dl = within(
        cx.prompt(),
        "dead_letters",
        b.dead_letters(&t, &g, Page::first(10)),
    )
    .await??;
    ensure_eq!(dl.len(), 1, "dead letters");
    ensure_eq!((dl[0].message.id, dl[0].attempts), (id, 3), "dead letter");
    ensure_eq!(dl[0].error, "failing 3", "the last error");
    ensure_eq!(
        (s.queue.retried, s.queue.dead_lettered),
        (2, 1),
        "(retried, dead_lettered)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// E4 Order
// ---------------------------------------------------------------------------------------------

/// A batch retried at once comes back in emit order: a group has no priority order, on the
/// retry path either (a store that keeps one list per priority must not regroup events).
async fn retried_batch_order(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let mut sent = Vec::new();
    for i in 0..8 {
        let p = Priority::ALL[(i * 3) % 4];
        sent.push(emit_one(b, &t, Message::new(format!("{i}"), "x").with_priority(p)).await?);
    }
    let first = recv_n(b, &t, &g, sent.len(), cx.prompt()).await?;
    ensure_eq!(ids(&first), sent, "emit order");
    let ops = first
        .iter()
        .map(|d| Settle::Retry {
            lease: d.lease,
            delay: Duration::ZERO,
            error: "again".into(),
        })
        .collect();
    let rs = within(cx.prompt(), "settle", b.settle(&t, &g, ops)).await??;
    ensure!(
        rs.iter().all(Result::is_ok),
        "every retry held its lease: {rs:?}"
    );
    let again = recv_n(b, &t, &g, sent.len(), cx.prompt()).await?;
    ensure_eq!(ids(&again), sent, "emit order after the retry");
    ensure!(
        again.iter().all(|d| d.message.attempt == 2),
        "second attempts"
    );
    ack_all(b, &t, &g, &again).await
}

async fn single_consumer_order(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let mut sent = Vec::new();
    for i in 0..200 {
        // Priorities vary: a group ignores them and keeps emit order.
        let p = Priority::ALL[i % 4];
        sent.push(emit_one(b, &t, Message::new(format!("{i}"), "x").with_priority(p)).await?);
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + cx.prompt() * 3;
    while got.len() < sent.len() {
        ensure!(
            Instant::now() < deadline,
            "received {} of {} in time",
            got.len(),
            sent.len()
        );
        let ds = within(
            cx.prompt(),
            "receive",
            b.receive(&t, &g, 7, Duration::from_millis(200)),
        )
        .await??;
        ack_all(b, &t, &g, &ds).await?;
        got.extend(ids(&ds));
    }
    ensure!(
        got == sent,
        "events out of emit order; first difference at {:?}",
        got.iter().zip(&sent).position(|(a, b)| a != b)
    );
    Ok(())
}

async fn mixed_emit_order(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let mut sent = Vec::new();
    for round in 0..5 {
        sent.push(emit_one(b, &t, Message::new(format!("s{round}"), "x")).await?);
        sent.extend(emit_n(b, &t, &format!("b{round}-"), 4).await?);
    }
    let got = recv_n(b, &t, &g, sent.len(), cx.prompt()).await?;
    ensure_eq!(ids(&got), sent, "single and batch emits, in emit order");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// E5 Replay and retention
// ---------------------------------------------------------------------------------------------

async fn reset_start(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let sent = emit_n(b, &t, "e", 10).await?;
    let got = recv_n(b, &t, &g, 10, cx.prompt()).await?;
    ack_all(b, &t, &g, &got).await?;
    expect_none(b, &t, &g, Duration::from_millis(100)).await?;
    reset(b, &t, &g, ReplayFrom::Start).await?;
    let again = recv_n(b, &t, &g, 10, cx.prompt()).await?;
    ensure_eq!(ids(&again), sent, "replayed from the start, in order");
    ack_all(b, &t, &g, &again).await?;
    expect_none(b, &t, &g, Duration::from_millis(100)).await?;
    // Another group is not reset.
    let o = cx.name("other");
    let og = recv_n(b, &t, &o, 10, cx.prompt()).await?;
    ack_all(b, &t, &o, &og).await?;
    reset(b, &t, &g, ReplayFrom::Start).await?;
    expect_none(b, &t, &o, Duration::from_millis(100)).await
}

async fn reset_time(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    emit_n(b, &t, "old", 5).await?;
    // A clear gap on each side of the instant, so clock granularity cannot blur it.
    let t1 = b.clock().now_ms();
    clock_past(b, t1 + 30).await?;
    let at = b.clock().now_ms();
    clock_past(b, at + 30).await?;
    let new = emit_n(b, &t, "new", 5).await?;
    let got = recv_n(b, &t, &g, 10, cx.prompt()).await?;
    ack_all(b, &t, &g, &got).await?;
    reset(b, &t, &g, ReplayFrom::Time(at)).await?;
    let again = recv_n(b, &t, &g, 5, cx.prompt()).await?;
    ensure_eq!(
        ids(&again),
        new,
        "replay from a time starts at the first event emitted at or after it"
    );
    ack_all(b, &t, &g, &again).await?;
    expect_none(b, &t, &g, Duration::from_millis(150)).await
}

async fn reset_id(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let sent = emit_n(b, &t, "e", 10).await?;
    let got = recv_n(b, &t, &g, 10, cx.prompt()).await?;
    ack_all(b, &t, &g, &got).await?;
    reset(b, &t, &g, ReplayFrom::Id(sent[4])).await?;
    let again = recv_n(b, &t, &g, 6, cx.prompt()).await?;
    ensure_eq!(
        ids(&again),
        sent[4..].to_vec(),
        "replay from an id includes that event and everything after it"
    );
    ack_all(b, &t, &g, &again).await?;
    expect_none(b, &t, &g, Duration::from_millis(150)).await?;
    // Backwards and forwards again: from the first id.
    reset(b, &t, &g, ReplayFrom::Id(sent[0])).await?;
    let all = recv_n(b, &t, &g, 10, cx.prompt()).await?;
    ensure_eq!(ids(&all), sent, "replay from the first id");
    Ok(())
}

async fn reset_end(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    emit_n(b, &t, "old", 5).await?;
    reset(b, &t, &g, ReplayFrom::End).await?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(s.lag, 0, "lag after reset to the end");
    expect_none(b, &t, &g, Duration::from_millis(200)).await?;
    let new = emit_n(b, &t, "new", 2).await?;
    let got = recv_n(b, &t, &g, 2, cx.prompt()).await?;
    ensure_eq!(ids(&got), new, "only events emitted after the reset");
    Ok(())
}

async fn reset_keeps_dead(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let sent = emit_n(b, &t, "e", 4).await?;
    let ds = recv_n(b, &t, &g, 3, cx.prompt()).await?;
    settle(
        b,
        &t,
        &g,
        Settle::Bury {
            lease: ds[0].lease,
            error: "dead".into(),
        },
    )
    .await?;
    settle(
        b,
        &t,
        &g,
        Settle::Retry {
            lease: ds[1].lease,
            delay: Duration::from_secs(30),
            error: "later".into(),
        },
    )
    .await?;
    // ds[2] stays leased, sent[3] is still unread.
    reset(b, &t, &g, ReplayFrom::End).await?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (
            s.queue.ready_total(),
            s.queue.delayed,
            s.queue.in_flight,
            s.queue.dead,
            s.lag
        ),
        (0, 0, 0, 1, 0),
        "(ready, delayed, in_flight, dead, lag) after reset: pending dropped, dead kept"
    );
    let r = within(cx.prompt(), "ack", b.ack(&t, &g, &ds[2].lease)).await?;
    expect_kind(
        r,
        ErrorKind::LeaseLost,
        "ack of a lease dropped by the reset",
    )?;
    expect_none(b, &t, &g, Duration::from_millis(150)).await?;
    let dl = within(
        cx.prompt(),
        "dead_letters",
        b.dead_letters(&t, &g, Page::first(10)),
    )
    .await??;
    ensure_eq!(
        dl.iter().map(|d| d.message.id).collect::<Vec<_>>(),
        vec![sent[0]],
        "dead letters kept across a reset"
    );
    Ok(())
}

async fn retention_max_len(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    b.set_retention(
        &t,
        Retention {
            max_len: Some(5),
            max_age: None,
        },
    )?;
    let sent = emit_n(b, &t, "e", 12).await?;
    ensure_eq!(topic_len(b, &t).await?, 5, "topic_len with max_len 5");
    let g = cx.name("g");
    let got = recv_n(b, &t, &g, 5, cx.prompt()).await?;
    ensure_eq!(
        ids(&got),
        sent[7..].to_vec(),
        "a new group reads the 5 newest (oldest trimmed first)"
    );
    ack_all(b, &t, &g, &got).await?;
    expect_none(b, &t, &g, Duration::from_millis(100)).await?;
    reset(b, &t, &g, ReplayFrom::Start).await?;
    let again = recv_n(b, &t, &g, 5, cx.prompt()).await?;
    ensure_eq!(
        ids(&again),
        sent[7..].to_vec(),
        "replay from the start begins at the oldest retained event"
    );
    // Trimmed ids are gone from the log; emitting more keeps trimming.
    let more = emit_n(b, &t, "more", 3).await?;
    ensure_eq!(topic_len(b, &t).await?, 5, "still at most 5");
    let g2 = cx.name("g2");
    let got2 = recv_n(b, &t, &g2, 5, cx.prompt()).await?;
    let want: Vec<MessageId> = sent[10..].iter().copied().chain(more).collect();
    ensure_eq!(ids(&got2), want, "the newest 5 after more emits");
    Ok(())
}

async fn retention_max_age(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let age = Duration::from_millis(400);
    b.set_retention(
        &t,
        Retention {
            max_len: None,
            max_age: Some(age),
        },
    )?;
    let start = Instant::now();
    emit_n(b, &t, "old", 3).await?;
    let n = topic_len(b, &t).await?;
    if start.elapsed() + Duration::from_millis(50) < age {
        ensure_eq!(n, 3, "young events are retained");
    }
    let deadline = Instant::now() + age + cx.prompt();
    let gone_at = loop {
        if topic_len(b, &t).await? == 0 {
            break start.elapsed();
        }
        ensure!(
            Instant::now() < deadline,
            "events older than {age:?} still retained after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ensure!(
        gone_at + TOL >= age,
        "events dropped after {gone_at:?}, before max_age {age:?}"
    );
    let new = emit_n(b, &t, "new", 2).await?;
    let g = cx.name("g");
    let got = recv_n(b, &t, &g, 2, cx.prompt()).await?;
    ensure_eq!(ids(&got), new, "a new group reads only retained events");
    expect_none(b, &t, &g, Duration::from_millis(100)).await
}

async fn retention_lagging_group(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let sent = emit_n(b, &t, "e", 10).await?;
    let first = recv_n(b, &t, &g, 2, cx.prompt()).await?;
    ensure_eq!(ids(&first), sent[..2].to_vec(), "first two");
    ack_all(b, &t, &g, &first).await?;
    b.set_retention(
        &t,
        Retention {
            max_len: Some(3),
            max_age: None,
        },
    )?;
    ensure_eq!(topic_len(b, &t).await?, 3, "trimmed to 3");
    let rest = recv_n(b, &t, &g, 3, cx.prompt()).await?;
    ensure_eq!(
        ids(&rest),
        sent[7..].to_vec(),
        "a group behind the retained log continues at the oldest retained event"
    );
    ack_all(b, &t, &g, &rest).await?;
    expect_none(b, &t, &g, Duration::from_millis(100)).await
}

// ---------------------------------------------------------------------------------------------
// Stats
// ---------------------------------------------------------------------------------------------

async fn stats_lag(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    b.configure_group(&t, &g, plain_config())?;
    emit_n(b, &t, "e", 10).await?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.lag, s.queue.in_flight, s.queue.dead),
        (10, 0, 0),
        "(lag, in_flight, dead) of a group that has read nothing"
    );
    let ds = recv_n(b, &t, &g, 4, cx.prompt()).await?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.lag, s.queue.in_flight),
        (6, 4),
        "(lag, in_flight) after 4 received"
    );
    ack_all(b, &t, &g, &ds[..2]).await?;
    settle(
        b,
        &t,
        &g,
        Settle::Bury {
            lease: ds[2].lease,
            error: "x".into(),
        },
    )
    .await?;
    settle(
        b,
        &t,
        &g,
        Settle::Retry {
            lease: ds[3].lease,
            delay: Duration::from_secs(30),
            error: "x".into(),
        },
    )
    .await?;
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (
            s.lag,
            s.queue.in_flight,
            s.queue.delayed,
            s.queue.dead,
            s.queue.acked,
            s.queue.retried,
            s.queue.dead_lettered
        ),
        (6, 0, 1, 1, 2, 1, 1),
        "(lag, in_flight, delayed, dead, acked, retried, dead_lettered)"
    );
    let rest = recv_n(b, &t, &g, 6, cx.prompt()).await?;
    ensure_eq!(
        kinds(&rest),
        (4..10).map(|i| format!("e{i}")).collect::<Vec<_>>(),
        "the unread events"
    );
    let s = gstats(b, &t, &g).await?;
    ensure_eq!(
        (s.lag, s.queue.in_flight),
        (0, 6),
        "(lag, in_flight) at the head"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// E6 Local bus and typed events
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order: u64,
    customer: String,
    lines: Vec<(String, u32)>,
    note: Option<String>,
}

impl courier_core::Event for OrderPlaced {
    const TOPIC: &'static str = "conformance.order_placed";
}

fn order(i: u64) -> OrderPlaced {
    OrderPlaced {
        order: i,
        customer: format!("customer-{i} ✓"),
        lines: vec![("widget".into(), 2), ("gadget".into(), i as u32)],
        note: i.is_multiple_of(2).then(|| "gift".to_string()),
    }
}

async fn typed_round_trip(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let topic = <OrderPlaced as courier_core::Event>::TOPIC;
    let ev = order(7);
    let id = within(cx.prompt(), "emit_typed", b.emit_typed(&ev)).await??;
    ensure_eq!(
        topic_len(b, topic).await?,
        1,
        "the typed event went to its topic"
    );
    let d = recv_one(b, topic, &cx.name("g"), cx.prompt()).await?;
    ensure_eq!(d.message.id, id, "id");
    ensure_eq!(d.message.kind, topic, "a typed event's kind is its topic");
    let back: OrderPlaced = d.message.decode()?;
    ensure_eq!(back, ev, "decoded event");
    Ok(())
}

async fn group_consumer_e2e(cx: Ctx) -> Outcome {
    let b = cx.backend.events.clone();
    let topic = <OrderPlaced as courier_core::Event>::TOPIC;
    let g = cx.name("g");
    let got = Arc::new(Mutex::new(Vec::<(u64, u32)>::new()));
    let c = got.clone();
    let h = GroupConsumer::builder(b.clone(), &g)
        .on_event::<OrderPlaced, _, _>(move |ev, m| {
            let c = c.clone();
            async move {
                c.lock().push((ev.order, m.attempt));
                Ok(())
            }
        })
        .concurrency(1)
        .idle_wait(Duration::from_millis(100))
        .start()?;
    let n = 20u64;
    for i in 0..n {
        within(cx.prompt(), "emit_typed", b.emit_typed(&order(i))).await??;
    }
    let done = until(cx.prompt() * 2, || got.lock().len() >= n as usize).await;
    let (s, ok) = gstats_until(&*b, topic, &g, cx.prompt(), |s| s.queue.acked >= n).await?;
    stop_worker(h).await?;
    ensure!(done, "handled {} of {n}", got.lock().len());
    ensure!(ok, "acked every event: {s:?}");
    let seen = got.lock().clone();
    ensure_eq!(
        seen,
        (0..n).map(|i| (i, 1)).collect::<Vec<_>>(),
        "one consumer handled every typed event once, in emit order"
    );
    ensure_eq!(
        (s.lag, s.queue.in_flight, s.queue.dead, s.queue.acked),
        (0, 0, 0, n),
        "(lag, in_flight, dead, acked)"
    );
    Ok(())
}

async fn typed_undecodable(cx: Ctx) -> Outcome {
    let b = cx.backend.events.clone();
    let topic = <OrderPlaced as courier_core::Event>::TOPIC;
    let g = cx.name("g");
    let got = Arc::new(Mutex::new(Vec::<u64>::new()));
    let c = got.clone();
    let h = GroupConsumer::builder(b.clone(), &g)
        .on_event::<OrderPlaced, _, _>(move |ev, _m| {
            let c = c.clone();
            async move {
                c.lock().push(ev.order);
                Ok(())
            }
        })
        .idle_wait(Duration::from_millis(100))
        .start()?;
    let bad = emit_one(&*b, topic, Message::new(topic, "{\"not\": \"an order\"}")).await?;
    within(cx.prompt(), "emit_typed", b.emit_typed(&order(1))).await??;
    let done = until(cx.prompt(), || !got.lock().is_empty()).await;
    let (s, ok) = gstats_until(&*b, topic, &g, cx.prompt(), |s| s.queue.dead == 1).await?;
    stop_worker(h).await?;
    ensure!(done, "the consumer kept running and handled the good event");
    ensure!(
        ok,
        "the undecodable event went to the group's dead letters: {s:?}"
    );
    let dl = within(
        cx.prompt(),
        "dead_letters",
        b.dead_letters(topic, &g, Page::first(10)),
    )
    .await??;
    ensure_eq!(dl.len(), 1, "dead letters");
    ensure_eq!(dl[0].message.id, bad, "the undecodable event");
    ensure_eq!(dl[0].attempts, 1, "a decode failure is permanent");
    ensure!(
        !dl[0].error.is_empty(),
        "the dead letter names the decode error"
    );
    ensure_eq!(
        got.lock().clone(),
        vec![1],
        "only the good event was handled"
    );
    Ok(())
}

/// E6: the memory backend is the in-process bus, with no serialisation on the hot path: the
/// payload a group receives is the very buffer that was emitted (other backends encode by
/// necessity; for them the case only checks the bytes).
async fn memory_no_copy(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let payload = Bytes::from(vec![42u8; 64 * 1024]);
    let ptr = payload.as_ptr() as usize;
    emit_one(b, &t, Message::new("big", payload.clone())).await?;
    let groups = [cx.name("g1"), cx.name("g2")];
    for g in &groups {
        let d = recv_one(b, &t, g, cx.prompt()).await?;
        ensure_eq!(d.message.payload, payload, "payload bytes for group {g}");
        if b.backend_name() == "memory" {
            ensure!(
                d.message.payload.as_ptr() as usize == ptr,
                "the memory bus copied (or encoded) the payload on its way to group {g}"
            );
        }
    }
    if b.backend_name() != "memory" {
        println!(
            "note: {} is not the local bus; only the bytes were checked",
            b.backend_name()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

async fn competing_consumers_jepsen(cx: Ctx) -> Outcome {
    let b = cx.backend.events.clone();
    let t = cx.name("t");
    let g = cx.name("workers");
    let solo = cx.name("solo");
    let n = 1000usize;
    let seen = Arc::new(Mutex::new(Vec::<(usize, MessageId)>::new()));
    let mut handles = Vec::new();
    for w in 0..3usize {
        let s = seen.clone();
        handles.push(
            GroupConsumer::builder(b.clone(), &g)
                .on(&t, move |m: Message| {
                    let s = s.clone();
                    async move {
                        s.lock().push((w, m.id));
                        // Simulated work, so the consumers overlap.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        Ok(())
                    }
                })
                .concurrency(4)
                .idle_wait(Duration::from_millis(100))
                .start()?,
        );
    }
    // A second group with a single, sequential consumer sees the same events in emit order.
    let solo_seen = Arc::new(Mutex::new(Vec::<MessageId>::new()));
    let ss = solo_seen.clone();
    let solo_h = GroupConsumer::builder(b.clone(), &solo)
        .on(&t, move |m: Message| {
            let ss = ss.clone();
            async move {
                ss.lock().push(m.id);
                Ok(())
            }
        })
        .concurrency(1)
        .idle_wait(Duration::from_millis(100))
        .start()?;
    let mut acc = Accounting::default();
    let mut sent = Vec::with_capacity(n);
    for batch in 0..10 {
        for id in emit_n(&*b, &t, &format!("b{batch}-"), n / 10).await? {
            acc.sent(id);
            sent.push(id);
        }
    }
    let limit = Duration::from_secs(30);
    let all_in = until(limit, || {
        let distinct: HashSet<MessageId> = seen.lock().iter().map(|(_, id)| *id).collect();
        distinct.len() >= n && solo_seen.lock().len() >= n
    })
    .await;
    // Let in-flight acks land before stopping.
    let (s, _) = gstats_until(&*b, &t, &g, cx.prompt(), |s| {
        s.lag == 0 && s.queue.in_flight == 0 && s.queue.ready_total() == 0
    })
    .await?;
    for h in handles {
        stop_worker(h).await?;
    }
    stop_worker(solo_h).await?;
    let seen = seen.lock().clone();
    for (_, id) in &seen {
        acc.seen(*id);
    }
    let (lost, unexpected, duplicated) = acc.report("events competing group consumers");
    let per: Vec<usize> = (0..3)
        .map(|w| seen.iter().filter(|(x, _)| *x == w).count())
        .collect();
    println!("per consumer: {per:?}; duplicates (only from expired leases): {duplicated}");
    ensure!(all_in, "not every event was handled within {limit:?}");
    ensure_eq!((lost, unexpected), (0, 0), "(lost, unexpected)");
    ensure_eq!(
        (s.lag, s.queue.in_flight, s.queue.dead),
        (0, 0, 0),
        "(lag, in_flight, dead) of the competing group"
    );
    let solo_seen = solo_seen.lock().clone();
    ensure!(
        solo_seen == sent,
        "the single-consumer group saw {} events, first difference from emit order at {:?}",
        solo_seen.len(),
        solo_seen.iter().zip(&sent).position(|(a, b)| a != b)
    );
    Ok(())
}

async fn concurrent_emitters(cx: Ctx) -> Outcome {
    let b = cx.backend.events.clone();
    let t = cx.name("t");
    let g = cx.name("g");
    let emitters = 4usize;
    let per = 150usize;
    let mut tasks = Vec::new();
    for e in 0..emitters {
        let b = b.clone();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(per);
            for i in 0..per {
                ids.push(b.emit(&t, Message::new(format!("{e}:{i}"), "x")).await?);
            }
            Ok::<_, courier_core::Error>(ids)
        }));
    }
    let mut acc = Accounting::default();
    for task in tasks {
        let ids = within(Duration::from_secs(30), "emitter task", task)
            .await?
            .map_err(|e| Failure(format!("emitter task failed: {e}")))??;
        for id in ids {
            acc.sent(id);
        }
    }
    ensure_eq!(
        topic_len(&*b, &t).await?,
        (emitters * per) as u64,
        "every emit appended"
    );
    let got = recv_n(&*b, &t, &g, emitters * per, cx.prompt() * 2).await?;
    let mut last: HashMap<usize, usize> = HashMap::new();
    for d in &got {
        acc.seen(d.message.id);
        let (e, i) = d
            .message
            .kind
            .split_once(':')
            .and_then(|(e, i)| Some((e.parse::<usize>().ok()?, i.parse::<usize>().ok()?)))
            .ok_or_else(|| Failure(format!("unexpected kind {:?}", d.message.kind)))?;
        let want = last.get(&e).map_or(0, |l| l + 1);
        ensure_eq!(i, want, "emitter {e}: its events in its emit order");
        last.insert(e, i);
    }
    let (lost, unexpected, duplicated) = acc.report("events concurrent emitters");
    ensure_eq!(
        (lost, unexpected, duplicated),
        (0, 0, 0),
        "(lost, unexpected, duplicated)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

async fn invalid_names(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let good_t = cx.name("t");
    let good_g = cx.name("g");
    let bad: Vec<String> = vec![
        String::new(),
        ".a".into(),
        "a.".into(),
        "a..b".into(),
        "a b".into(),
        "a/b".into(),
        "a.*".into(),
        "a.>".into(),
        "x".repeat(201),
    ];
    for name in &bad {
        let r = within(cx.prompt(), "emit", b.emit(name, Message::new("k", "x"))).await?;
        expect_kind(
            r,
            ErrorKind::InvalidInput,
            &format!("emit to topic {name:?}"),
        )?;
        let r = within(
            cx.prompt(),
            "receive",
            b.receive(name, &good_g, 1, Duration::ZERO),
        )
        .await?;
        expect_kind(
            r,
            ErrorKind::InvalidInput,
            &format!("receive from topic {name:?}"),
        )?;
        let r = within(
            cx.prompt(),
            "receive",
            b.receive(&good_t, name, 1, Duration::ZERO),
        )
        .await?;
        expect_kind(
            r,
            ErrorKind::InvalidInput,
            &format!("receive as group {name:?}"),
        )?;
        expect_kind(
            b.configure_group(&good_t, name, plain_config()),
            ErrorKind::InvalidInput,
            &format!("configure group {name:?}"),
        )?;
        let r = within(cx.prompt(), "topic_len", b.topic_len(name)).await?;
        expect_kind(
            r,
            ErrorKind::InvalidInput,
            &format!("topic_len of {name:?}"),
        )?;
    }
    ensure_eq!(topic_len(b, &good_t).await?, 0, "nothing was appended");
    Ok(())
}

async fn oversize_batch(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let max = b.group_config(&t, &cx.name("g")).max_payload;
    let big = Bytes::from(vec![7u8; max + 1]);
    let r = within(
        Duration::from_secs(30),
        "emit_batch",
        b.emit_batch(
            &t,
            vec![Message::new("ok", "x"), Message::new("big", big.clone())],
        ),
    )
    .await?;
    expect_kind(
        r,
        ErrorKind::PayloadTooLarge,
        "a batch with an oversize event",
    )?;
    let mut zero = Message::new("zero", "x");
    zero.max_attempts = Some(0);
    let r = within(Duration::from_secs(10), "emit", b.emit(&t, zero)).await?;
    expect_kind(r, ErrorKind::InvalidInput, "an event with max_attempts 0")?;
    ensure_eq!(
        topic_len(b, &t).await?,
        0,
        "nothing of a rejected batch was appended"
    );
    emit_n(b, &t, "fine", 1).await?;
    ensure_eq!(topic_len(b, &t).await?, 1, "a valid emit still works");
    Ok(())
}

async fn bad_group_config(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let mut c = plain_config();
    c.retry.max_attempts = 0;
    expect_kind(
        b.configure_group(&t, &g, c),
        ErrorKind::InvalidInput,
        "max_attempts 0",
    )?;
    let c = QueueConfig {
        visibility_timeout: Duration::ZERO,
        ..plain_config()
    };
    expect_kind(
        b.configure_group(&t, &g, c),
        ErrorKind::InvalidInput,
        "zero visibility timeout",
    )?;
    let mut c = plain_config();
    c.retry.jitter = 1.5;
    expect_kind(
        b.configure_group(&t, &g, c),
        ErrorKind::InvalidInput,
        "jitter 1.5",
    )?;
    // The rejected configurations did not replace the one in force.
    let good = short_lease(400, 4);
    b.configure_group(&t, &g, good)?;
    let mut c = good;
    c.retry.factor = 0.5;
    expect_kind(
        b.configure_group(&t, &g, c),
        ErrorKind::InvalidInput,
        "factor 0.5",
    )?;
    ensure_eq!(
        b.group_config(&t, &g),
        good,
        "the configuration in force after rejected ones"
    );
    Ok(())
}

async fn reset_unknown_id(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t");
    let g = cx.name("g");
    let sent = emit_n(b, &t, "e", 3).await?;
    let got = recv_n(b, &t, &g, 1, cx.prompt()).await?;
    ack_all(b, &t, &g, &got).await?;
    let r = within(
        cx.prompt(),
        "reset_group",
        b.reset_group(&t, &g, ReplayFrom::Id(MessageId::new())),
    )
    .await?;
    expect_kind(
        r,
        ErrorKind::NotFound,
        "reset to an id that is not in the log",
    )?;
    // The failed reset changed nothing: the group continues where it was.
    let rest = recv_n(b, &t, &g, 2, cx.prompt()).await?;
    ensure_eq!(
        ids(&rest),
        sent[1..].to_vec(),
        "the group continues where it was"
    );
    Ok(())
}
