//! Queue cases: rules Q1–Q10 of DESIGN §3 and its precise choices.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_core::{
    ErrorKind, FailureAction, Message, MessageId, Page, Priority, QueueConfig, QueueExt,
    RetryPolicy, Selection, Settle,
};

use crate::{
    Accounting, Case, Ctx, Outcome, case, ensure, ensure_eq, expect_nothing, plain_config,
    receive_n, stats_until, summary, within,
};

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!(
            "queue::durability::round_trip_keeps_every_field",
            ["Q1"],
            round_trip
        ),
        case!(
            "queue::durability::binary_and_empty_payloads",
            ["Q1"],
            binary_payloads
        ),
        case!(
            "queue::durability::publish_returns_the_delivered_id",
            ["Q1"],
            ids_match
        ),
        case!(
            "queue::durability::visible_to_a_second_handle",
            ["Q1", "Q8"],
            second_handle
        ),
        case!("queue::priority::strict_order", ["Q2"], strict_order),
        case!(
            "queue::priority::fifo_within_level",
            ["Q2"],
            fifo_within_level
        ),
        case!(
            "queue::priority::low_never_before_critical",
            ["Q2"],
            low_never_before_critical
        ),
        case!(
            "queue::priority::one_receive_spans_levels_in_order",
            ["Q2"],
            receive_spans_levels
        ),
        case!(
            "queue::priority::retry_keeps_priority",
            ["Q2", "Q5"],
            retry_keeps_priority
        ),
        case!(
            "queue::priority::default_is_normal",
            ["Q2"],
            default_is_normal
        ),
        case!("queue::delay::not_before_due", ["Q3"], delay_not_before_due),
        case!(
            "queue::delay::promptly_after_due",
            ["Q3"],
            delay_promptly_after
        ),
        case!(
            "queue::delay::counted_as_delayed",
            ["Q3", "Q8"],
            delay_counted
        ),
        case!(
            "queue::delay::does_not_block_ready_messages",
            ["Q3"],
            delay_does_not_block
        ),
        case!("queue::delay::absolute_not_before", ["Q3"], delay_absolute),
        case!(
            "queue::delay::due_messages_keep_priority",
            ["Q3", "Q2"],
            delay_keeps_priority
        ),
        case!(
            "queue::lease::invisible_while_leased",
            ["Q4"],
            invisible_while_leased
        ),
        case!("queue::lease::ack_removes_for_good", ["Q4"], ack_removes),
        case!(
            "queue::lease::expired_lease_redelivers_next_attempt",
            ["Q4", "Q5"],
            expiry_redelivers
        ),
        case!(
            "queue::lease::expired_lease_counts_as_attempt",
            ["Q4", "Q6"],
            expiry_counts
        ),
        case!(
            "queue::lease::extend_pushes_deadline",
            ["Q4"],
            extend_pushes
        ),
        case!("queue::lease::double_ack_is_lease_lost", ["Q4"], double_ack),
        case!(
            "queue::lease::stale_token_changes_nothing",
            ["Q4", "Q9"],
            stale_token
        ),
        case!(
            "queue::lease::extend_after_expiry_is_lease_lost",
            ["Q4"],
            extend_after_expiry
        ),
        case!(
            "queue::lease::release_does_not_count_attempt",
            ["Q4", "Q5"],
            release_no_attempt
        ),
        case!(
            "queue::lease::settle_batch_reports_each_result",
            ["Q4"],
            settle_batch_results
        ),
        case!("queue::retry::nack_waits_for_backoff", ["Q5"], nack_backoff),
        case!(
            "queue::retry::backoff_grows_exponentially",
            ["Q5"],
            backoff_grows
        ),
        case!(
            "queue::retry::backoff_capped_by_max_delay",
            ["Q5"],
            backoff_capped
        ),
        case!(
            "queue::retry::explicit_delay_honoured",
            ["Q5"],
            explicit_delay
        ),
        case!(
            "queue::retry::max_attempts_counts_first_delivery",
            ["Q5", "Q6"],
            max_attempts_exact
        ),
        case!(
            "queue::retry::per_message_max_attempts",
            ["Q5"],
            per_message_max_attempts
        ),
        case!("queue::retry::jitter_stays_in_range", ["Q5"], jitter_range),
        case!(
            "queue::dead_letters::out_of_attempts_recorded",
            ["Q6"],
            dead_recorded
        ),
        case!(
            "queue::dead_letters::permanent_failure_skips_retries",
            ["Q6"],
            permanent_skips
        ),
        case!(
            "queue::dead_letters::listed_oldest_first_and_paged",
            ["Q6"],
            dead_paged
        ),
        case!("queue::dead_letters::fetched_by_id", ["Q6"], dead_by_id),
        case!(
            "queue::dead_letters::unknown_id_is_not_found",
            ["Q6"],
            dead_unknown
        ),
        case!(
            "queue::dead_letters::requeue_all_resets_attempts_keeps_id",
            ["Q6"],
            requeue_all
        ),
        case!("queue::dead_letters::requeue_some", ["Q6"], requeue_some),
        case!("queue::dead_letters::purge_some_and_all", ["Q6"], purge),
        case!(
            "queue::dead_letters::disabled_discards",
            ["Q6", "Q9"],
            dead_disabled
        ),
        case!("queue::batch::all_stored_in_order", ["Q7"], batch_in_order),
        case!(
            "queue::batch::invalid_member_stores_nothing",
            ["Q7", "Q10"],
            batch_invalid
        ),
        case!("queue::batch::empty_batch_is_a_no_op", ["Q7"], batch_empty),
        case!("queue::batch::large_batch", ["Q7"], batch_large),
        case!("queue::stats::ready_per_priority", ["Q8"], stats_ready),
        case!(
            "queue::stats::counters_follow_each_transition",
            ["Q8"],
            stats_counters
        ),
        case!(
            "queue::stats::unknown_queue_is_empty",
            ["Q8"],
            stats_unknown
        ),
        case!(
            "queue::conservation::every_message_in_exactly_one_state",
            ["Q9"],
            conservation
        ),
        case!(
            "queue::conservation::competing_consumers_jepsen",
            ["Q9", "Q4"],
            competing_consumers
        ),
        case!(
            "queue::conservation::publishers_and_consumers_jepsen",
            ["Q9", "Q7"],
            publishers_consumers
        ),
        case!(
            "queue::conservation::dropped_receive_loses_nothing",
            ["Q9"],
            dropped_receive
        ),
        case!(
            "queue::conservation::waiting_receive_wakes_on_publish",
            ["Q9"],
            waiting_receive_wakes
        ),
        case!("queue::bad_input::invalid_queue_names", ["Q10"], bad_names),
        case!("queue::bad_input::oversize_payload", ["Q10"], oversize),
        case!("queue::bad_input::bad_config", ["Q10"], bad_config),
        case!(
            "queue::bad_input::undecodable_entry_dead_lettered",
            ["Q10"],
            undecodable
        ),
    ]
}

const SHORT: Duration = Duration::from_millis(200);
const LIMIT: Duration = Duration::from_secs(10);

/// A queue with `config`, named for this case.
fn queue(cx: &Ctx, what: &str, config: QueueConfig) -> Result<String, crate::Failure> {
    let name = cx.name(what);
    cx.q().configure(&name, config)?;
    Ok(name)
}

fn config_with(retry: RetryPolicy, visibility: Duration) -> QueueConfig {
    QueueConfig {
        visibility_timeout: visibility,
        retry,
        ..QueueConfig::default()
    }
}

async fn publish(cx: &Ctx, q: &str, m: Message) -> Result<MessageId, crate::Failure> {
    Ok(within(LIMIT, "publish", cx.q().publish(q, m)).await??)
}

async fn publish_all(
    cx: &Ctx,
    q: &str,
    ms: Vec<Message>,
) -> Result<Vec<MessageId>, crate::Failure> {
    Ok(within(LIMIT, "publish_batch", cx.q().publish_batch(q, ms)).await??)
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

// ---------------------------------------------------------------- Q1 durability

async fn round_trip(cx: Ctx) -> Outcome {
    let q = queue(&cx, "rt", plain_config())?;
    let m = Message::new("user_register", Bytes::from_static(b"{\"name\":\"ada\"}"))
        .with_priority(Priority::High)
        .with_header("trace-id", "abc-123")
        .with_header("odd key \u{e9}", "value with = and ; and \n newline")
        .with_max_attempts(7);
    let id = publish(&cx, &q, m.clone()).await?;
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(d.message.id, id, "id");
    ensure_eq!(d.message.kind, m.kind, "kind");
    ensure_eq!(d.message.payload, m.payload, "payload");
    ensure_eq!(d.message.priority, Priority::High, "priority");
    ensure_eq!(d.message.headers, m.headers, "headers");
    ensure_eq!(d.message.max_attempts, Some(7), "max_attempts");
    ensure_eq!(d.message.attempt, 1, "first delivery is attempt 1");
    ensure_eq!(d.lease.attempt, 1, "lease attempt");
    ensure_eq!(d.lease.id, id, "lease id");
    ensure!(
        d.message.created_at > 0,
        "created_at is set: {}",
        d.message.created_at
    );
    Ok(())
}

async fn binary_payloads(cx: Ctx) -> Outcome {
    let q = queue(&cx, "bin", plain_config())?;
    let bodies: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0xff, 0xfe, 0x00, 0xc7, 0x80],
        (0..=255u8).collect(),
        vec![b'x'; 64 * 1024],
    ];
    let ms: Vec<Message> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| Message::new(format!("b{i}"), b.clone()))
        .collect();
    publish_all(&cx, &q, ms).await?;
    let got = receive_n(cx.q(), &q, bodies.len(), LIMIT).await?;
    for (i, d) in got.iter().enumerate() {
        ensure_eq!(d.message.kind, format!("b{i}"), "order");
        ensure!(
            d.message.payload.as_ref() == bodies[i].as_slice(),
            "payload {i} changed ({} bytes back, {} sent)",
            d.message.payload.len(),
            bodies[i].len()
        );
    }
    Ok(())
}

async fn ids_match(cx: Ctx) -> Outcome {
    let q = queue(&cx, "ids", plain_config())?;
    let mut sent = Vec::new();
    for m in kinds(5, "m") {
        sent.push(publish(&cx, &q, m).await?);
    }
    let unique: HashSet<_> = sent.iter().collect();
    ensure_eq!(unique.len(), 5, "ids are unique");
    let got: Vec<MessageId> = receive_n(cx.q(), &q, 5, LIMIT)
        .await?
        .iter()
        .map(|d| d.message.id)
        .collect();
    ensure_eq!(got, sent, "delivered ids, in publish order");
    Ok(())
}

async fn second_handle(cx: Ctx) -> Outcome {
    let q = queue(&cx, "durable", plain_config())?;
    let id = publish(&cx, &q, Message::new("keep", "me")).await?;
    let other = within(LIMIT, "reopen", cx.factory.reopen(&cx.ns, &cx.backend)).await??;
    other.queue.configure(&q, plain_config())?;
    let s = within(LIMIT, "stats", other.queue.stats(&q)).await??;
    ensure_eq!(
        s.ready_total(),
        1,
        "the second handle sees the stored message"
    );
    ensure_eq!(s.published, 1, "published counter shared");
    let d = receive_n(&*other.queue, &q, 1, LIMIT).await?;
    ensure_eq!(
        d[0].message.id,
        id,
        "same message through the second handle"
    );
    within(LIMIT, "ack", other.queue.ack(&q, &d[0].lease)).await??;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.acked, 1, "ack through one handle counted for the other");
    ensure_eq!(s.stored(), 0, "nothing left");
    Ok(())
}

// ---------------------------------------------------------------- Q2 priority

async fn strict_order(cx: Ctx) -> Outcome {
    let q = queue(&cx, "prio", plain_config())?;
    let ms = vec![
        Message::new("low", "").with_priority(Priority::Low),
        Message::new("normal", "").with_priority(Priority::Normal),
        Message::new("high", "").with_priority(Priority::High),
        Message::new("critical", "").with_priority(Priority::Critical),
    ];
    for m in ms {
        publish(&cx, &q, m).await?;
    }
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(one(&cx, &q, LIMIT).await?.message.kind);
    }
    ensure_eq!(
        order,
        vec!["critical", "high", "normal", "low"],
        "one at a time, highest first"
    );
    Ok(())
}

async fn fifo_within_level(cx: Ctx) -> Outcome {
    let q = queue(&cx, "fifo", plain_config())?;
    for m in kinds(30, "m") {
        publish(&cx, &q, m.with_priority(Priority::High)).await?;
    }
    let got = receive_n(cx.q(), &q, 30, LIMIT).await?;
    let want: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    ensure_eq!(
        got.iter()
            .map(|d| d.message.kind.clone())
            .collect::<Vec<_>>(),
        want,
        "publish order inside a level"
    );
    Ok(())
}

async fn low_never_before_critical(cx: Ctx) -> Outcome {
    let q = queue(&cx, "starve", plain_config())?;
    let mut ms = Vec::new();
    for i in 0..40 {
        let p = if i % 2 == 0 {
            Priority::Low
        } else {
            Priority::Critical
        };
        ms.push(Message::new(format!("{p}-{i}"), "").with_priority(p));
    }
    publish_all(&cx, &q, ms).await?;
    let mut seen_low = false;
    for _ in 0..40 {
        let d = one(&cx, &q, LIMIT).await?;
        if d.message.priority == Priority::Low {
            seen_low = true;
        } else {
            ensure!(
                !seen_low,
                "a Critical message ({}) came after a Low one",
                d.message.kind
            );
        }
        settle(&cx, &q, Settle::Ack(d.lease)).await?;
    }
    Ok(())
}

async fn receive_spans_levels(cx: Ctx) -> Outcome {
    let q = queue(&cx, "span", plain_config())?;
    let ms = vec![
        Message::new("n1", ""),
        Message::new("l1", "").with_priority(Priority::Low),
        Message::new("c1", "").with_priority(Priority::Critical),
        Message::new("h1", "").with_priority(Priority::High),
        Message::new("n2", ""),
        Message::new("c2", "").with_priority(Priority::Critical),
    ];
    publish_all(&cx, &q, ms).await?;
    let got = within(
        LIMIT,
        "receive",
        cx.q().receive(&q, 10, Duration::from_secs(2)),
    )
    .await??;
    // One call may return fewer than asked; whatever it returns is a prefix of the order.
    let want = ["c1", "c2", "h1", "n1", "n2", "l1"];
    ensure!(!got.is_empty(), "a receive with 6 ready returned nothing");
    let kinds: Vec<&str> = got.iter().map(|d| d.message.kind.as_str()).collect();
    ensure_eq!(
        kinds.as_slice(),
        &want[..kinds.len()],
        "one receive returns the priority order"
    );
    Ok(())
}

async fn retry_keeps_priority(cx: Ctx) -> Outcome {
    let q = queue(&cx, "rprio", plain_config())?;
    publish(
        &cx,
        &q,
        Message::new("crit", "").with_priority(Priority::Critical),
    )
    .await?;
    let d = one(&cx, &q, LIMIT).await?;
    publish_all(
        &cx,
        &q,
        vec![
            Message::new("high", "").with_priority(Priority::High),
            Message::new("normal", ""),
        ],
    )
    .await?;
    let action = within(LIMIT, "nack", cx.q().nack(&q, &d, "boom")).await??;
    ensure_eq!(
        action,
        FailureAction::Retry(Duration::ZERO),
        "zero backoff retry"
    );
    let next = one(&cx, &q, LIMIT).await?;
    ensure_eq!(
        next.message.kind,
        "crit",
        "the retried Critical message comes before High"
    );
    ensure_eq!(next.message.attempt, 2, "attempt");
    ensure_eq!(next.message.priority, Priority::Critical, "priority kept");
    Ok(())
}

async fn default_is_normal(cx: Ctx) -> Outcome {
    let q = queue(&cx, "defp", plain_config())?;
    publish_all(
        &cx,
        &q,
        vec![
            Message::new("low", "").with_priority(Priority::Low),
            Message::new("plain", ""),
        ],
    )
    .await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        s.ready_at(Priority::Normal),
        1,
        "a message without priority is Normal"
    );
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(d.message.kind, "plain", "Normal before Low");
    ensure_eq!(d.message.priority, Priority::Normal, "priority");
    Ok(())
}

// ---------------------------------------------------------------- Q3 delay

async fn delay_not_before_due(cx: Ctx) -> Outcome {
    let q = queue(&cx, "delay", plain_config())?;
    let delay = Duration::from_millis(400);
    let t0 = Instant::now();
    publish(&cx, &q, Message::new("later", "").with_delay(delay)).await?;
    let d = one(&cx, &q, delay + cx.prompt()).await?;
    let took = t0.elapsed();
    ensure!(
        took + Duration::from_millis(5) >= delay,
        "delivered after {took:?}, before its {delay:?} delay"
    );
    ensure_eq!(d.message.attempt, 1, "attempt");
    Ok(())
}

async fn delay_promptly_after(cx: Ctx) -> Outcome {
    let q = queue(&cx, "prompt", plain_config())?;
    let delay = Duration::from_millis(300);
    // A consumer already waiting when the message falls due.
    let t0 = Instant::now();
    publish(&cx, &q, Message::new("later", "").with_delay(delay)).await?;
    let got = within(LIMIT, "receive", cx.q().receive(&q, 1, delay + cx.prompt())).await??;
    let took = t0.elapsed();
    ensure_eq!(got.len(), 1, "delivered within delay + {:?}", cx.prompt());
    ensure!(
        took + Duration::from_millis(5) >= delay,
        "too early: {took:?}"
    );
    println!(
        "delay {delay:?} delivered after {took:?} (tick {:?})",
        cx.tick
    );
    Ok(())
}

async fn delay_counted(cx: Ctx) -> Outcome {
    let q = queue(&cx, "dstats", plain_config())?;
    publish_all(
        &cx,
        &q,
        vec![
            Message::new("a", "").with_delay(Duration::from_secs(60)),
            Message::new("b", "").with_delay(Duration::from_secs(60)),
            Message::new("c", ""),
        ],
    )
    .await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.delayed, 2, "delayed");
    ensure_eq!(s.ready_total(), 1, "ready");
    ensure_eq!(s.stored(), 3, "stored");
    Ok(())
}

async fn delay_does_not_block(cx: Ctx) -> Outcome {
    let q = queue(&cx, "noblock", plain_config())?;
    publish(
        &cx,
        &q,
        Message::new("later", "").with_delay(Duration::from_secs(60)),
    )
    .await?;
    publish(&cx, &q, Message::new("now", "")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(
        d.message.kind,
        "now",
        "the ready message behind a delayed one is delivered"
    );
    expect_nothing(cx.q(), &q, SHORT).await
}

async fn delay_absolute(cx: Ctx) -> Outcome {
    let q = queue(&cx, "abs", plain_config())?;
    let now = cx.q().clock().now_ms();
    let at = now + 400;
    let t0 = Instant::now();
    publish(&cx, &q, Message::new("at", "").with_not_before(at)).await?;
    let d = one(&cx, &q, Duration::from_millis(400) + cx.prompt()).await?;
    let took = t0.elapsed();
    ensure!(
        took + Duration::from_millis(10) >= Duration::from_millis(400),
        "delivered {took:?} after publish, before its time"
    );
    ensure_eq!(d.message.kind, "at", "kind");
    Ok(())
}

async fn delay_keeps_priority(cx: Ctx) -> Outcome {
    let q = queue(&cx, "dprio", plain_config())?;
    let delay = Duration::from_millis(200);
    publish_all(
        &cx,
        &q,
        vec![
            Message::new("low", "")
                .with_priority(Priority::Low)
                .with_delay(delay),
            Message::new("crit", "")
                .with_priority(Priority::Critical)
                .with_delay(delay),
        ],
    )
    .await?;
    // Let both fall due (time passing is what is tested here), then one receive orders them.
    tokio::time::sleep(delay + cx.tick + Duration::from_millis(50)).await;
    let first = one(&cx, &q, cx.prompt()).await?;
    ensure_eq!(first.message.kind, "crit", "the due Critical message first");
    Ok(())
}

// ---------------------------------------------------------------- Q4 lease

async fn invisible_while_leased(cx: Ctx) -> Outcome {
    let q = queue(&cx, "inv", plain_config())?;
    publish(&cx, &q, Message::new("only", "")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    expect_nothing(cx.q(), &q, Duration::from_millis(300)).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.in_flight, 1, "in flight");
    ensure_eq!(s.ready_total(), 0, "ready");
    settle(&cx, &q, Settle::Ack(d.lease)).await?;
    Ok(())
}

async fn ack_removes(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "ack",
        config_with(
            RetryPolicy::exact(3, Duration::ZERO, 2.0, Duration::ZERO),
            Duration::from_millis(300),
        ),
    )?;
    publish(&cx, &q, Message::new("once", "")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    settle(&cx, &q, Settle::Ack(d.lease)).await?;
    // Past the (short) lease, an acked message must not come back.
    expect_nothing(cx.q(), &q, Duration::from_millis(300) + cx.tick * 3).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.acked, 1, "acked");
    ensure_eq!(s.stored(), 0, "nothing stored");
    Ok(())
}

async fn expiry_redelivers(cx: Ctx) -> Outcome {
    let vis = Duration::from_millis(300);
    let q = queue(
        &cx,
        "exp",
        config_with(
            RetryPolicy::exact(5, Duration::ZERO, 2.0, Duration::ZERO),
            vis,
        ),
    )?;
    let id = publish(&cx, &q, Message::new("slow", "")).await?;
    let t0 = Instant::now();
    let first = one(&cx, &q, LIMIT).await?;
    let again = one(&cx, &q, vis + cx.prompt()).await?;
    let took = t0.elapsed();
    ensure!(
        took + Duration::from_millis(5) >= vis,
        "redelivered after {took:?}, before the {vis:?} lease ended"
    );
    ensure_eq!(again.message.id, id, "same message");
    ensure_eq!(
        again.message.attempt,
        2,
        "an expired lease counts as an attempt"
    );
    ensure!(again.lease.token != first.lease.token, "a new lease token");
    let r = settle(&cx, &q, Settle::Ack(first.lease)).await;
    ensure_eq!(
        r.map_err(|e| e.kind()),
        Err(ErrorKind::LeaseLost),
        "the old lease cannot ack"
    );
    settle(&cx, &q, Settle::Ack(again.lease)).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.acked, 1, "acked once");
    ensure_eq!(s.retried, 1, "the expiry counted as a retry");
    Ok(())
}

async fn expiry_counts(cx: Ctx) -> Outcome {
    let vis = Duration::from_millis(250);
    let q = queue(
        &cx,
        "expdead",
        config_with(
            RetryPolicy::exact(2, Duration::ZERO, 2.0, Duration::ZERO),
            vis,
        ),
    )?;
    let id = publish(&cx, &q, Message::new("abandoned", "")).await?;
    let _first = one(&cx, &q, LIMIT).await?;
    let second = one(&cx, &q, vis + cx.prompt()).await?;
    ensure_eq!(second.message.attempt, 2, "attempt 2 after one expiry");
    // The second lease expires too: out of attempts, it must end in dead letters.
    let (s, ok) = stats_until(cx.q(), &q, vis + cx.prompt() * 2, |s| s.dead == 1).await?;
    if !ok {
        // Backends that reclaim expired leases on receive: drive one.
        let got = within(LIMIT, "receive", cx.q().receive(&q, 1, cx.prompt())).await??;
        ensure!(
            got.is_empty(),
            "delivered a 3rd time with max_attempts 2: {:?}",
            summary(&got)
        );
    }
    let (s2, ok) = stats_until(cx.q(), &q, cx.prompt(), |s| s.dead == 1).await?;
    ensure!(
        ok,
        "the message out of attempts by expiry is not dead: {s:?} / {s2:?}"
    );
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, id)).await??;
    ensure_eq!(dl.attempts, 2, "dead letter attempts");
    ensure!(!dl.error.is_empty(), "the dead letter says why");
    Ok(())
}

async fn extend_pushes(cx: Ctx) -> Outcome {
    let vis = Duration::from_millis(300);
    let q = queue(
        &cx,
        "ext",
        config_with(
            RetryPolicy::exact(5, Duration::ZERO, 2.0, Duration::ZERO),
            vis,
        ),
    )?;
    publish(&cx, &q, Message::new("long", "")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    let mut lease = d.lease;
    let t0 = Instant::now();
    // Keep the lease alive for 3 lease lengths by extending every third of it.
    while t0.elapsed() < vis * 3 {
        lease = within(LIMIT, "extend", cx.q().extend(&q, &lease, vis)).await??;
        let got = within(LIMIT, "receive", cx.q().receive(&q, 1, vis / 3)).await??;
        ensure!(
            got.is_empty(),
            "redelivered while its lease was being extended: {:?}",
            summary(&got)
        );
    }
    ensure!(
        lease.deadline_ms >= d.lease.deadline_ms,
        "the deadline moved forward"
    );
    settle(&cx, &q, Settle::Ack(lease)).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.acked, s.retried), (1, 0), "acked on the first attempt");
    Ok(())
}

async fn double_ack(cx: Ctx) -> Outcome {
    let q = queue(&cx, "dack", plain_config())?;
    publish_all(&cx, &q, kinds(2, "m")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    settle(&cx, &q, Settle::Ack(d.lease)).await?;
    let r = settle(&cx, &q, Settle::Ack(d.lease)).await;
    ensure_eq!(
        r.map_err(|e| e.kind()),
        Err(ErrorKind::LeaseLost),
        "second ack"
    );
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.acked, 1, "acked counted once");
    ensure_eq!(s.ready_total(), 1, "the other message untouched");
    Ok(())
}

async fn stale_token(cx: Ctx) -> Outcome {
    let q = queue(&cx, "stale", plain_config())?;
    publish(&cx, &q, Message::new("m", "")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    let mut forged = d.lease;
    forged.token = forged.token.wrapping_add(7919);
    for op in [
        Settle::Ack(forged),
        Settle::Retry {
            lease: forged,
            delay: Duration::ZERO,
            error: "x".into(),
        },
        Settle::Bury {
            lease: forged,
            error: "x".into(),
        },
        Settle::Release(forged),
    ] {
        let r = settle(&cx, &q, op.clone()).await;
        ensure_eq!(
            r.map_err(|e| e.kind()),
            Err(ErrorKind::LeaseLost),
            "{op:?} with a wrong token"
        );
    }
    let r = within(
        LIMIT,
        "extend",
        cx.q().extend(&q, &forged, Duration::from_secs(5)),
    )
    .await?;
    ensure_eq!(
        r.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::LeaseLost),
        "extend with a wrong token"
    );
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.in_flight, s.acked, s.retried, s.dead),
        (1, 0, 0, 0),
        "nothing changed"
    );
    settle(&cx, &q, Settle::Ack(d.lease)).await?;
    Ok(())
}

async fn extend_after_expiry(cx: Ctx) -> Outcome {
    let vis = Duration::from_millis(250);
    let q = queue(
        &cx,
        "extexp",
        config_with(
            RetryPolicy::exact(5, Duration::ZERO, 2.0, Duration::ZERO),
            vis,
        ),
    )?;
    publish(&cx, &q, Message::new("m", "")).await?;
    let first = one(&cx, &q, LIMIT).await?;
    let second = one(&cx, &q, vis + cx.prompt()).await?;
    ensure_eq!(second.message.attempt, 2, "redelivered after expiry");
    let r = within(
        LIMIT,
        "extend",
        cx.q().extend(&q, &first.lease, Duration::from_secs(5)),
    )
    .await?;
    ensure_eq!(
        r.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::LeaseLost),
        "extending the expired lease"
    );
    let r = settle(
        &cx,
        &q,
        Settle::Retry {
            lease: first.lease,
            delay: Duration::ZERO,
            error: "late".into(),
        },
    )
    .await;
    ensure_eq!(
        r.map_err(|e| e.kind()),
        Err(ErrorKind::LeaseLost),
        "nacking the expired lease"
    );
    settle(&cx, &q, Settle::Ack(second.lease)).await?;
    Ok(())
}

async fn release_no_attempt(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "rel",
        config_with(
            RetryPolicy::exact(1, Duration::ZERO, 2.0, Duration::ZERO),
            Duration::from_secs(30),
        ),
    )?;
    publish(&cx, &q, Message::new("m", "")).await?;
    for round in 0..3 {
        let d = one(&cx, &q, LIMIT).await?;
        ensure_eq!(d.message.attempt, 1, "attempt after {round} releases");
        settle(&cx, &q, Settle::Release(d.lease)).await?;
    }
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.ready_total(), s.dead, s.retried),
        (1, 0, 0),
        "releases are not failures"
    );
    Ok(())
}

async fn settle_batch_results(cx: Ctx) -> Outcome {
    let q = queue(&cx, "sbatch", plain_config())?;
    publish_all(&cx, &q, kinds(3, "m")).await?;
    let ds = receive_n(cx.q(), &q, 3, LIMIT).await?;
    let ops = vec![
        Settle::Ack(ds[0].lease),
        Settle::Ack(ds[0].lease),
        Settle::Retry {
            lease: ds[1].lease,
            delay: Duration::ZERO,
            error: "e".into(),
        },
        Settle::Ack(ds[2].lease),
    ];
    let rs = within(LIMIT, "settle", cx.q().settle(&q, ops)).await??;
    let kinds: Vec<Option<ErrorKind>> = rs
        .iter()
        .map(|r| r.as_ref().err().map(|e| e.kind()))
        .collect();
    ensure_eq!(
        kinds,
        vec![None, Some(ErrorKind::LeaseLost), None, None],
        "one result per op, in order"
    );
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.acked, s.retried, s.ready_total()),
        (2, 1, 1),
        "stats after the batch"
    );
    Ok(())
}

// ---------------------------------------------------------------- Q5 retry

async fn nack_backoff(cx: Ctx) -> Outcome {
    let base = Duration::from_millis(300);
    let q = queue(
        &cx,
        "backoff",
        config_with(
            RetryPolicy::exact(3, base, 2.0, Duration::from_secs(5)),
            Duration::from_secs(30),
        ),
    )?;
    publish(&cx, &q, Message::new("m", "")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    let t0 = Instant::now();
    let action = within(LIMIT, "nack", cx.q().nack(&q, &d, "first failure")).await??;
    ensure_eq!(
        action,
        FailureAction::Retry(base),
        "backoff for attempt 1 is base"
    );
    let again = one(&cx, &q, base + cx.prompt()).await?;
    let took = t0.elapsed();
    ensure!(
        took + Duration::from_millis(5) >= base,
        "retried after {took:?}, before the {base:?} backoff"
    );
    ensure_eq!(again.message.attempt, 2, "attempt");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.retried, 1, "retried counter");
    Ok(())
}

async fn backoff_grows(cx: Ctx) -> Outcome {
    let base = Duration::from_millis(100);
    let q = queue(
        &cx,
        "grow",
        config_with(
            RetryPolicy::exact(4, base, 3.0, Duration::from_secs(5)),
            Duration::from_secs(30),
        ),
    )?;
    publish(&cx, &q, Message::new("m", "")).await?;
    let mut d = one(&cx, &q, LIMIT).await?;
    for (attempt, want) in [(1u32, 100u64), (2, 300), (3, 900)] {
        ensure_eq!(d.message.attempt, attempt, "attempt");
        let t0 = Instant::now();
        let action = within(LIMIT, "nack", cx.q().nack(&q, &d, "again")).await??;
        ensure_eq!(
            action,
            FailureAction::Retry(Duration::from_millis(want)),
            "backoff after attempt {attempt}"
        );
        d = one(&cx, &q, Duration::from_millis(want) + cx.prompt()).await?;
        let took = t0.elapsed();
        ensure!(
            took + Duration::from_millis(5) >= Duration::from_millis(want),
            "attempt {} after {took:?} < {want} ms",
            attempt + 1
        );
    }
    ensure_eq!(d.message.attempt, 4, "last attempt");
    Ok(())
}

async fn backoff_capped(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "cap",
        config_with(
            RetryPolicy::exact(
                5,
                Duration::from_millis(100),
                10.0,
                Duration::from_millis(250),
            ),
            Duration::from_secs(30),
        ),
    )?;
    publish(&cx, &q, Message::new("m", "")).await?;
    let mut d = one(&cx, &q, LIMIT).await?;
    let mut delays = Vec::new();
    for _ in 0..3 {
        let action = within(LIMIT, "nack", cx.q().nack(&q, &d, "again")).await??;
        delays.push(action);
        d = one(&cx, &q, Duration::from_millis(250) + cx.prompt()).await?;
    }
    let ms = |n| FailureAction::Retry(Duration::from_millis(n));
    ensure_eq!(
        delays,
        vec![ms(100), ms(250), ms(250)],
        "min(max_delay, base * factor^(attempt-1))"
    );
    Ok(())
}

async fn explicit_delay(cx: Ctx) -> Outcome {
    let q = queue(&cx, "explicit", plain_config())?;
    publish(&cx, &q, Message::new("m", "")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    let want = Duration::from_millis(400);
    let t0 = Instant::now();
    let action = within(
        LIMIT,
        "fail",
        cx.q().fail(
            &q,
            &d,
            "rate limited",
            courier_core::FailureMode::RetryAfter(want),
        ),
    )
    .await??;
    ensure_eq!(action, FailureAction::Retry(want), "the requested delay");
    let again = one(&cx, &q, want + cx.prompt()).await?;
    ensure!(
        t0.elapsed() + Duration::from_millis(5) >= want,
        "retried after {:?}",
        t0.elapsed()
    );
    ensure_eq!(again.message.attempt, 2, "attempt");
    Ok(())
}

async fn max_attempts_exact(cx: Ctx) -> Outcome {
    let q = queue(&cx, "maxatt", plain_config())?;
    let id = publish(&cx, &q, Message::new("doomed", "")).await?;
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let d = one(&cx, &q, LIMIT).await?;
        attempts.push(d.message.attempt);
        within(LIMIT, "nack", cx.q().nack(&q, &d, "always fails")).await??;
    }
    ensure_eq!(
        attempts,
        vec![1, 2, 3],
        "delivered exactly max_attempts = 3 times"
    );
    expect_nothing(cx.q(), &q, SHORT).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.dead, s.dead_lettered, s.retried),
        (1, 1, 2),
        "2 retries then dead"
    );
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, id)).await??;
    ensure_eq!(dl.attempts, 3, "attempts recorded");
    Ok(())
}

async fn per_message_max_attempts(cx: Ctx) -> Outcome {
    let q = queue(&cx, "permsg", plain_config())?;
    publish_all(
        &cx,
        &q,
        vec![
            Message::new("one_shot", "").with_max_attempts(1),
            Message::new("five", "").with_max_attempts(5),
        ],
    )
    .await?;
    let mut deliveries: HashMap<String, u32> = HashMap::new();
    for _ in 0..20 {
        let got = within(LIMIT, "receive", cx.q().receive(&q, 2, SHORT)).await??;
        if got.is_empty() {
            break;
        }
        for d in got {
            *deliveries.entry(d.message.kind.clone()).or_default() += 1;
            within(LIMIT, "nack", cx.q().nack(&q, &d, "fail")).await??;
        }
    }
    ensure_eq!(
        deliveries.get("one_shot").copied(),
        Some(1),
        "max_attempts 1"
    );
    ensure_eq!(
        deliveries.get("five").copied(),
        Some(5),
        "max_attempts 5 overrides the queue's 3"
    );
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.dead, 2, "both dead");
    Ok(())
}

async fn jitter_range(cx: Ctx) -> Outcome {
    let base = Duration::from_millis(400);
    let mut retry = RetryPolicy::exact(2, base, 2.0, Duration::from_secs(5));
    retry.jitter = 0.5;
    let q = queue(&cx, "jitter", config_with(retry, Duration::from_secs(30)))?;
    publish_all(&cx, &q, kinds(8, "j")).await?;
    let ds = receive_n(cx.q(), &q, 8, LIMIT).await?;
    let t0 = Instant::now();
    for d in &ds {
        let action = within(LIMIT, "nack", cx.q().nack(&q, d, "jitter")).await??;
        match action {
            FailureAction::Retry(delay) => ensure!(
                delay >= Duration::from_millis(200) && delay <= Duration::from_millis(600),
                "delay {delay:?} outside base ± 50%"
            ),
            FailureAction::Dead => return Err(crate::Failure("dead on attempt 1 of 2".into())),
        }
    }
    let again = receive_n(cx.q(), &q, 8, Duration::from_millis(600) + cx.prompt()).await?;
    ensure!(
        t0.elapsed() + Duration::from_millis(5) >= Duration::from_millis(200),
        "a retry came before the lowest jittered delay"
    );
    ensure!(
        again.iter().all(|d| d.message.attempt == 2),
        "attempts {:?}",
        summary(&again)
    );
    Ok(())
}

// ---------------------------------------------------------------- Q6 dead letters

/// Publish `n` messages and fail each permanently, in order; returns their ids.
async fn bury_n(cx: &Ctx, q: &str, n: usize) -> Result<Vec<MessageId>, crate::Failure> {
    let ids = publish_all(cx, q, kinds(n, "d")).await?;
    for (i, id) in ids.iter().enumerate() {
        let d = one(cx, q, LIMIT).await?;
        ensure_eq!(d.message.id, *id, "fifo");
        settle(
            cx,
            q,
            Settle::Bury {
                lease: d.lease,
                error: format!("error {i}"),
            },
        )
        .await?;
    }
    Ok(ids)
}

async fn dead_recorded(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "dead",
        config_with(
            RetryPolicy::exact(1, Duration::ZERO, 2.0, Duration::ZERO),
            Duration::from_secs(30),
        ),
    )?;
    let before = cx.q().clock().now_ms();
    let id = publish(
        &cx,
        &q,
        Message::new("bad", "payload").with_header("h", "v"),
    )
    .await?;
    let d = one(&cx, &q, LIMIT).await?;
    let action = within(LIMIT, "nack", cx.q().nack(&q, &d, "invalid input: no user")).await??;
    ensure_eq!(action, FailureAction::Dead, "out of attempts");
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, id)).await??;
    ensure_eq!(dl.error, "invalid input: no user", "last error");
    ensure_eq!(dl.attempts, 1, "attempts");
    ensure!(
        dl.failed_at + 5_000 >= before && dl.failed_at <= cx.q().clock().now_ms() + 5_000,
        "failed_at {} not near now {before}",
        dl.failed_at
    );
    ensure_eq!(
        dl.message.payload,
        Bytes::from_static(b"payload"),
        "payload kept"
    );
    ensure_eq!(dl.message.header("h"), Some("v"), "headers kept");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.dead, s.dead_lettered, s.in_flight), (1, 1, 0), "stats");
    Ok(())
}

async fn permanent_skips(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "perm",
        config_with(
            RetryPolicy::exact(10, Duration::ZERO, 2.0, Duration::ZERO),
            Duration::from_secs(30),
        ),
    )?;
    let id = publish(&cx, &q, Message::new("m", "")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    let action = within(
        LIMIT,
        "fail",
        cx.q()
            .fail(&q, &d, "malformed", courier_core::FailureMode::Permanent),
    )
    .await??;
    ensure_eq!(
        action,
        FailureAction::Dead,
        "permanent failures are not retried"
    );
    expect_nothing(cx.q(), &q, SHORT).await?;
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, id)).await??;
    ensure_eq!(
        (dl.attempts, dl.error.as_str()),
        (1, "malformed"),
        "dead letter"
    );
    Ok(())
}

async fn dead_paged(cx: Ctx) -> Outcome {
    let q = queue(&cx, "paged", plain_config())?;
    let ids = bury_n(&cx, &q, 7).await?;
    let p1 = within(
        LIMIT,
        "dead_letters",
        cx.q().dead_letters(
            &q,
            Page {
                offset: 0,
                limit: 3,
            },
        ),
    )
    .await??;
    let p2 = within(
        LIMIT,
        "dead_letters",
        cx.q().dead_letters(
            &q,
            Page {
                offset: 3,
                limit: 3,
            },
        ),
    )
    .await??;
    let p3 = within(
        LIMIT,
        "dead_letters",
        cx.q().dead_letters(
            &q,
            Page {
                offset: 6,
                limit: 3,
            },
        ),
    )
    .await??;
    let p4 = within(
        LIMIT,
        "dead_letters",
        cx.q().dead_letters(
            &q,
            Page {
                offset: 9,
                limit: 3,
            },
        ),
    )
    .await??;
    let got: Vec<MessageId> = p1
        .iter()
        .chain(&p2)
        .chain(&p3)
        .map(|d| d.message.id)
        .collect();
    ensure_eq!(
        (p1.len(), p2.len(), p3.len(), p4.len()),
        (3, 3, 1, 0),
        "page sizes"
    );
    ensure_eq!(got, ids, "oldest first");
    ensure_eq!(p2[0].error, "error 3", "each keeps its error");
    Ok(())
}

async fn dead_by_id(cx: Ctx) -> Outcome {
    let q = queue(&cx, "byid", plain_config())?;
    let ids = bury_n(&cx, &q, 3).await?;
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, ids[1])).await??;
    ensure_eq!(
        (dl.message.id, dl.message.kind.as_str(), dl.error.as_str()),
        (ids[1], "d1", "error 1"),
        "fetched"
    );
    Ok(())
}

async fn dead_unknown(cx: Ctx) -> Outcome {
    let q = queue(&cx, "unknown", plain_config())?;
    bury_n(&cx, &q, 1).await?;
    let r = within(
        LIMIT,
        "dead_letter",
        cx.q().dead_letter(&q, MessageId::new()),
    )
    .await?;
    ensure_eq!(
        r.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::NotFound),
        "unknown id"
    );
    let live = publish(&cx, &q, Message::new("live", "")).await?;
    let r = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, live)).await?;
    ensure_eq!(
        r.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::NotFound),
        "a live message is not a dead letter"
    );
    Ok(())
}

async fn requeue_all(cx: Ctx) -> Outcome {
    let q = queue(&cx, "requeue", plain_config())?;
    let ids = bury_n(&cx, &q, 3).await?;
    let n = within(LIMIT, "requeue", cx.q().requeue_dead(&q, Selection::All)).await??;
    ensure_eq!(n, 3, "requeued");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.dead, s.ready_total()), (0, 3), "stats after requeue");
    let got = receive_n(cx.q(), &q, 3, LIMIT).await?;
    let mut got_ids: Vec<MessageId> = got.iter().map(|d| d.message.id).collect();
    got_ids.sort();
    let mut want = ids.clone();
    want.sort();
    ensure_eq!(got_ids, want, "ids kept");
    ensure!(
        got.iter().all(|d| d.message.attempt == 1),
        "attempts reset: {:?}",
        summary(&got)
    );
    Ok(())
}

async fn requeue_some(cx: Ctx) -> Outcome {
    let q = queue(&cx, "rsome", plain_config())?;
    let ids = bury_n(&cx, &q, 4).await?;
    let n = within(
        LIMIT,
        "requeue",
        cx.q()
            .requeue_dead(&q, Selection::Ids(vec![ids[0], ids[2], MessageId::new()])),
    )
    .await??;
    ensure_eq!(n, 2, "only existing dead letters count");
    let left: Vec<MessageId> = within(LIMIT, "list", cx.q().dead_letters(&q, Page::first(10)))
        .await??
        .iter()
        .map(|d| d.message.id)
        .collect();
    ensure_eq!(left, vec![ids[1], ids[3]], "the others stay dead, in order");
    let got = receive_n(cx.q(), &q, 2, LIMIT).await?;
    let mut got_ids: Vec<MessageId> = got.iter().map(|d| d.message.id).collect();
    got_ids.sort();
    let mut want = vec![ids[0], ids[2]];
    want.sort();
    ensure_eq!(got_ids, want, "requeued ones delivered");
    Ok(())
}

async fn purge(cx: Ctx) -> Outcome {
    let q = queue(&cx, "purge", plain_config())?;
    let ids = bury_n(&cx, &q, 4).await?;
    let n = within(
        LIMIT,
        "purge",
        cx.q().purge_dead(&q, Selection::Ids(vec![ids[1]])),
    )
    .await??;
    ensure_eq!(n, 1, "purged one");
    let r = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, ids[1])).await?;
    ensure_eq!(
        r.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::NotFound),
        "purged is gone"
    );
    let n = within(LIMIT, "purge", cx.q().purge_dead(&q, Selection::All)).await??;
    ensure_eq!(n, 3, "purged the rest");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.dead, s.stored()), (0, 0), "empty");
    expect_nothing(cx.q(), &q, SHORT).await
}

async fn dead_disabled(cx: Ctx) -> Outcome {
    let mut config = config_with(
        RetryPolicy::exact(1, Duration::ZERO, 2.0, Duration::ZERO),
        Duration::from_secs(30),
    );
    config.dead_letter = false;
    let q = queue(&cx, "nodlq", config)?;
    publish(&cx, &q, Message::new("m", "")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    within(LIMIT, "nack", cx.q().nack(&q, &d, "fail")).await??;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.dead, s.stored()), (0, 0), "discarded, not stored");
    ensure_eq!(s.dead_lettered, 1, "the final failure is still counted");
    let listed = within(LIMIT, "list", cx.q().dead_letters(&q, Page::first(10))).await??;
    ensure!(listed.is_empty(), "no dead letters kept");
    expect_nothing(cx.q(), &q, SHORT).await
}

// ---------------------------------------------------------------- Q7 batch

async fn batch_in_order(cx: Ctx) -> Outcome {
    let q = queue(&cx, "batch", plain_config())?;
    let ms = kinds(50, "b");
    let sent: Vec<MessageId> = ms.iter().map(|m| m.id).collect();
    let ids = publish_all(&cx, &q, ms).await?;
    ensure_eq!(ids, sent, "ids returned in batch order");
    let got = receive_n(cx.q(), &q, 50, LIMIT).await?;
    ensure_eq!(
        got.iter().map(|d| d.message.id).collect::<Vec<_>>(),
        sent,
        "delivered in batch order"
    );
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.published, 50, "published counter");
    Ok(())
}

async fn batch_invalid(cx: Ctx) -> Outcome {
    let mut config = plain_config();
    config.max_payload = 1024;
    let q = queue(&cx, "binv", config)?;
    let mut ms = kinds(5, "ok");
    ms.insert(3, Message::new("huge", vec![0u8; 4096]));
    let r = within(LIMIT, "publish_batch", cx.q().publish_batch(&q, ms)).await?;
    let e = match r {
        Ok(ids) => {
            return Err(crate::Failure(format!(
                "an oversize member was accepted ({} ids)",
                ids.len()
            )));
        }
        Err(e) => e,
    };
    ensure_eq!(e.kind(), ErrorKind::PayloadTooLarge, "error kind ({e})");
    ensure!(
        matches!(e.stored(), None | Some(0)),
        "validation failed after storing {:?}",
        e.stored()
    );
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.stored(), s.published), (0, 0), "no silent partial batch");
    Ok(())
}

async fn batch_empty(cx: Ctx) -> Outcome {
    let q = queue(&cx, "bempty", plain_config())?;
    let ids = publish_all(&cx, &q, Vec::new()).await?;
    ensure!(ids.is_empty(), "ids {ids:?}");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.published, 0, "nothing published");
    Ok(())
}

async fn batch_large(cx: Ctx) -> Outcome {
    let q = queue(&cx, "blarge", plain_config())?;
    let ms: Vec<Message> = (0..2_000)
        .map(|i| {
            let p = Priority::from_index(i % 4).unwrap_or_default();
            Message::new("bulk", format!("{i}")).with_priority(p)
        })
        .collect();
    let ids = publish_all(&cx, &q, ms).await?;
    ensure_eq!(ids.len(), 2_000, "all stored");
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.ready, [500, 500, 500, 500], "ready per priority");
    let got = receive_n(cx.q(), &q, 2_000, Duration::from_secs(30)).await?;
    let mut last = 0;
    for d in &got {
        ensure!(
            d.message.priority.index() >= last,
            "priority went back up at {}",
            d.message.kind
        );
        last = d.message.priority.index();
    }
    Ok(())
}

// ---------------------------------------------------------------- Q8 stats

async fn stats_ready(cx: Ctx) -> Outcome {
    let q = queue(&cx, "sready", plain_config())?;
    let mut ms = Vec::new();
    for (p, n) in [
        (Priority::Critical, 1),
        (Priority::High, 2),
        (Priority::Normal, 3),
        (Priority::Low, 4),
    ] {
        for _ in 0..n {
            ms.push(Message::new("s", "").with_priority(p));
        }
    }
    publish_all(&cx, &q, ms).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        s.ready,
        [1, 2, 3, 4],
        "ready per priority (critical, high, normal, low)"
    );
    ensure_eq!(s.ready_total(), 10, "total");
    let _d = receive_n(cx.q(), &q, 2, LIMIT).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.ready, s.in_flight),
        ([0, 1, 3, 4], 2),
        "after leasing two"
    );
    Ok(())
}

async fn stats_counters(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "scount",
        config_with(
            RetryPolicy::exact(2, Duration::ZERO, 2.0, Duration::ZERO),
            Duration::from_secs(30),
        ),
    )?;
    publish_all(&cx, &q, kinds(3, "c")).await?;
    let ds = receive_n(cx.q(), &q, 3, LIMIT).await?;
    settle(&cx, &q, Settle::Ack(ds[0].lease)).await?;
    within(LIMIT, "nack", cx.q().nack(&q, &ds[1], "e")).await??;
    settle(
        &cx,
        &q,
        Settle::Bury {
            lease: ds[2].lease,
            error: "e".into(),
        },
    )
    .await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.published, s.acked, s.retried, s.dead_lettered),
        (3, 1, 1, 1),
        "counters"
    );
    ensure_eq!(
        (s.ready_total(), s.in_flight, s.dead, s.delayed),
        (1, 0, 1, 0),
        "states"
    );
    let n = within(LIMIT, "requeue", cx.q().requeue_dead(&q, Selection::All)).await??;
    ensure_eq!(n, 1, "requeued");
    let s2 = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s2.ready_total(), s2.dead, s2.published),
        (2, 0, 3),
        "requeue is not a publish"
    );
    Ok(())
}

async fn stats_unknown(cx: Ctx) -> Outcome {
    let name = cx.name("never-used");
    let s = within(LIMIT, "stats", cx.q().stats(&name)).await??;
    ensure_eq!(
        s,
        courier_core::QueueStats::default(),
        "a typo'd queue is simply empty"
    );
    expect_nothing(cx.q(), &name, Duration::from_millis(50)).await
}

// ---------------------------------------------------------------- Q9 conservation

async fn conservation(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "conserve",
        config_with(
            RetryPolicy::exact(2, Duration::ZERO, 2.0, Duration::ZERO),
            Duration::from_secs(30),
        ),
    )?;
    let mut ms = kinds(20, "c");
    for m in ms.iter_mut().take(4) {
        *m = m.clone().with_delay(Duration::from_secs(60));
    }
    publish_all(&cx, &q, ms).await?;
    let ds = receive_n(cx.q(), &q, 12, LIMIT).await?;
    for (i, d) in ds.iter().enumerate() {
        match i % 4 {
            0 => settle(&cx, &q, Settle::Ack(d.lease)).await?,
            1 => {
                within(LIMIT, "nack", cx.q().nack(&q, d, "e")).await??;
            }
            2 => {
                settle(
                    &cx,
                    &q,
                    Settle::Bury {
                        lease: d.lease,
                        error: "e".into(),
                    },
                )
                .await?
            }
            _ => {}
        }
    }
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    let accounted = s.ready_total() + s.delayed + s.in_flight + s.dead + s.acked;
    ensure_eq!(
        accounted,
        s.published,
        "ready + delayed + in flight + dead + acked = published ({s:?})"
    );
    ensure_eq!(
        (s.acked, s.dead, s.in_flight, s.delayed, s.ready_total()),
        (3, 3, 3, 4, 7),
        "each state"
    );
    Ok(())
}

/// Run `consumers` competing receive loops over `total` messages already published; returns
/// the accounting. Each consumer acks what it gets.
async fn consume_all(
    cx: &Ctx,
    q: &str,
    consumers: usize,
    acct: Arc<parking_lot::Mutex<Accounting>>,
    done: Arc<std::sync::atomic::AtomicUsize>,
    total: usize,
) -> Outcome {
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let queue = cx.backend.queue.clone();
        let q = q.to_string();
        let acct = acct.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(45);
            while done.load(std::sync::atomic::Ordering::SeqCst) < total
                && Instant::now() < deadline
            {
                let got = queue.receive(&q, 16, Duration::from_millis(100)).await?;
                if got.is_empty() {
                    continue;
                }
                let leases: Vec<Settle> = got.iter().map(|d| Settle::Ack(d.lease)).collect();
                {
                    let mut a = acct.lock();
                    for d in &got {
                        a.seen(d.message.id);
                    }
                }
                let rs = queue.settle(&q, leases).await?;
                for r in rs {
                    r?;
                }
                done.fetch_add(got.len(), std::sync::atomic::Ordering::SeqCst);
            }
            Ok::<(), courier_core::Error>(())
        }));
    }
    for t in tasks {
        within(Duration::from_secs(60), "consumer", t)
            .await?
            .map_err(|e| crate::Failure(format!("consumer task failed: {e}")))??;
    }
    Ok(())
}

async fn competing_consumers(cx: Ctx) -> Outcome {
    let q = queue(&cx, "compete", plain_config())?;
    let total = 2_000;
    let acct = Arc::new(parking_lot::Mutex::new(Accounting::default()));
    for chunk in 0..(total / 100) {
        let ms: Vec<Message> = (0..100)
            .map(|i| Message::new("j", format!("{chunk}-{i}")))
            .collect();
        for id in publish_all(&cx, &q, ms).await? {
            acct.lock().sent(id);
        }
    }
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    consume_all(&cx, &q, 4, acct.clone(), done, total).await?;
    let (lost, unexpected, duplicated) = acct
        .lock()
        .report(&format!("{} competing consumers", cx.factory.name()));
    ensure_eq!((lost, unexpected), (0, 0), "lost, unexpected");
    ensure_eq!(
        duplicated,
        0,
        "a clean ack never duplicates (leases are 30 s)"
    );
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.acked, s.stored()), (total as u64, 0), "all acked");
    Ok(())
}

async fn publishers_consumers(cx: Ctx) -> Outcome {
    let q = queue(&cx, "pubcon", plain_config())?;
    let per = 500;
    let publishers = 3;
    let total = per * publishers;
    let acct = Arc::new(parking_lot::Mutex::new(Accounting::default()));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut pubs = Vec::new();
    for p in 0..publishers {
        let queue = cx.backend.queue.clone();
        let q = q.clone();
        let acct = acct.clone();
        pubs.push(tokio::spawn(async move {
            let mut i = 0;
            while i < per {
                let n = if i % 3 == 0 { 1 } else { 10.min(per - i) };
                let ms: Vec<Message> = (0..n)
                    .map(|k| Message::new("pc", format!("{p}-{}", i + k)))
                    .collect();
                let ids = queue.publish_batch(&q, ms).await?;
                let mut a = acct.lock();
                for id in ids {
                    a.sent(id);
                }
                i += n;
            }
            Ok::<(), courier_core::Error>(())
        }));
    }
    let consumers = consume_all(&cx, &q, 3, acct.clone(), done, total);
    let (c, _) = tokio::join!(consumers, async {
        for t in pubs.drain(..) {
            let _ = t.await;
        }
    });
    c?;
    let (lost, unexpected, duplicated) = acct
        .lock()
        .report(&format!("{} publishers and consumers", cx.factory.name()));
    ensure_eq!(
        (lost, unexpected, duplicated),
        (0, 0, 0),
        "lost, unexpected, duplicated"
    );
    Ok(())
}

async fn dropped_receive(cx: Ctx) -> Outcome {
    let vis = Duration::from_millis(300);
    let q = queue(
        &cx,
        "cancel",
        config_with(
            RetryPolicy::exact(5, Duration::ZERO, 2.0, Duration::ZERO),
            vis,
        ),
    )?;
    // A waiting receive dropped mid-wait, while a publish happens concurrently.
    let queue2 = cx.backend.queue.clone();
    let q2 = q.clone();
    let waiting = tokio::spawn(async move { queue2.receive(&q2, 1, Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let id = publish(&cx, &q, Message::new("m", "")).await?;
    waiting.abort();
    let _ = waiting.await;
    // Whether or not the aborted receive leased it, the message is delivered: at once, or
    // after the lease of the abandoned delivery ends.
    let d = one(&cx, &q, vis + cx.prompt()).await?;
    ensure_eq!(d.message.id, id, "the message survived a dropped receive");
    settle(&cx, &q, Settle::Ack(d.lease)).await?;
    Ok(())
}

async fn waiting_receive_wakes(cx: Ctx) -> Outcome {
    let q = queue(&cx, "wake", plain_config())?;
    let queue2 = cx.backend.queue.clone();
    let q2 = q.clone();
    let t0 = Instant::now();
    let waiting = tokio::spawn(async move { queue2.receive(&q2, 1, Duration::from_secs(8)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(&cx, &q, Message::new("wake", "")).await?;
    let got = within(LIMIT, "waiting receive", waiting)
        .await?
        .map_err(|e| crate::Failure(e.to_string()))??;
    let took = t0.elapsed();
    ensure_eq!(got.len(), 1, "the waiting receive got the message");
    ensure!(
        took < Duration::from_secs(4),
        "a waiting receive took {took:?}: it should wake on publish, not at the end of its 8 s wait"
    );
    Ok(())
}

// ---------------------------------------------------------------- Q10 bad input

async fn bad_names(cx: Ctx) -> Outcome {
    let long = "x".repeat(201);
    for bad in [
        "",
        ".lead",
        "trail.",
        "two..dots",
        "sp ace",
        "star*",
        "gt>",
        "sla/sh",
        long.as_str(),
        "uni\u{e9}",
    ] {
        let r = within(LIMIT, "publish", cx.q().publish(bad, Message::new("k", ""))).await?;
        ensure_eq!(
            r.map(|_| ()).map_err(|e| e.kind()),
            Err(ErrorKind::InvalidInput),
            "publish to {bad:?}"
        );
        let r = within(LIMIT, "receive", cx.q().receive(bad, 1, Duration::ZERO)).await?;
        ensure_eq!(
            r.map(|_| ()).map_err(|e| e.kind()),
            Err(ErrorKind::InvalidInput),
            "receive from {bad:?}"
        );
        let r = cx.q().configure(bad, plain_config());
        ensure_eq!(
            r.map_err(|e| e.kind()),
            Err(ErrorKind::InvalidInput),
            "configure {bad:?}"
        );
    }
    let ok = cx.name("Valid_name-1.with.tokens");
    publish(&cx, &ok, Message::new("k", "")).await?;
    Ok(())
}

async fn oversize(cx: Ctx) -> Outcome {
    let mut config = plain_config();
    config.max_payload = 2048;
    let q = queue(&cx, "big", config)?;
    let r = within(
        LIMIT,
        "publish",
        cx.q().publish(&q, Message::new("k", vec![1u8; 2049])),
    )
    .await?;
    let e = match r {
        Ok(_) => return Err(crate::Failure("an oversize payload was accepted".into())),
        Err(e) => e,
    };
    ensure_eq!(e.kind(), ErrorKind::PayloadTooLarge, "kind");
    ensure!(
        e.to_string().contains("2049") || e.to_string().contains("2048"),
        "the error names the sizes: {e}"
    );
    publish(&cx, &q, Message::new("k", vec![1u8; 2048])).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.published, 1, "only the fitting one stored");
    Ok(())
}

async fn bad_config(cx: Ctx) -> Outcome {
    let q = cx.name("badcfg");
    let mut configs = Vec::new();
    let mut c = plain_config();
    c.visibility_timeout = Duration::ZERO;
    configs.push(("zero visibility", c));
    let mut c = plain_config();
    c.retry.max_attempts = 0;
    configs.push(("zero attempts", c));
    let mut c = plain_config();
    c.retry.jitter = 1.5;
    configs.push(("jitter > 1", c));
    let mut c = plain_config();
    c.retry.factor = 0.5;
    configs.push(("factor < 1", c));
    let mut c = plain_config();
    c.retry.base = Duration::from_secs(10);
    c.retry.max_delay = Duration::from_secs(1);
    configs.push(("base > max_delay", c));
    for (what, c) in configs {
        let r = cx.q().configure(&q, c);
        ensure_eq!(
            r.map_err(|e| e.kind()),
            Err(ErrorKind::InvalidInput),
            "{what}"
        );
    }
    // The queue keeps working with its previous (default) configuration.
    publish(&cx, &q, Message::new("k", "")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    settle(&cx, &q, Settle::Ack(d.lease)).await?;
    Ok(())
}

async fn undecodable(cx: Ctx) -> Outcome {
    let q = queue(&cx, "corrupt", plain_config())?;
    publish(&cx, &q, Message::new("before", "")).await?;
    let injected = within(
        LIMIT,
        "inject",
        cx.factory
            .inject_undecodable(&cx.backend, &q, b"\x00not a courier message\xff"),
    )
    .await??;
    publish(&cx, &q, Message::new("after", "")).await?;
    let Some(bad) = injected else {
        println!(
            "{}: stores typed values, nothing can fail to decode; checking the queue still works",
            cx.factory.name()
        );
        let got = receive_n(cx.q(), &q, 2, LIMIT).await?;
        ensure_eq!(got.len(), 2, "both delivered");
        return Ok(());
    };
    // The consumer keeps running: both good messages arrive, the bad entry never does.
    let mut kinds = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while kinds.len() < 2 && Instant::now() < deadline {
        let got = within(
            LIMIT,
            "receive",
            cx.q().receive(&q, 10, Duration::from_millis(200)),
        )
        .await?;
        let got = got.map_err(|e| {
            crate::Failure(format!(
                "receive failed on an undecodable entry instead of dead-lettering it: {e}"
            ))
        })?;
        for d in got {
            ensure!(d.message.id != bad, "the undecodable entry was delivered");
            kinds.push(d.message.kind.clone());
            settle(&cx, &q, Settle::Ack(d.lease)).await?;
        }
    }
    ensure_eq!(
        kinds,
        vec!["before".to_string(), "after".to_string()],
        "good messages around the bad one"
    );
    let (s, ok) = stats_until(cx.q(), &q, LIMIT, |s| s.dead == 1).await?;
    ensure!(ok, "the undecodable entry is not in dead letters: {s:?}");
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, bad)).await??;
    ensure!(
        dl.error.to_lowercase().contains("decod"),
        "the dead letter carries the decode error: {:?}",
        dl.error
    );
    Ok(())
}
