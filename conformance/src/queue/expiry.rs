//! Queue cases, Q12 message expiry: `queue::expiry::*`.
//!
//! A message not leased by its `expires_at` (by the backend's clock) is never delivered: the
//! lease that reaches it expires it instead (dead letters with the reason "expired", or
//! discarded), counted in `QueueStats::expired`. A message leased before its expiry finishes
//! normally; retries do not extend the expiry.

use std::time::Duration;

use courier_core::backend::EXPIRED;
use courier_core::{ErrorKind, Message, Priority, Published, QueueExt, RetryPolicy, Settle};

use super::{LIMIT, config_with, one, publish, publish_all, queue, settle};
use crate::{
    Case, Ctx, Outcome, case, clock_past, ensure, ensure_eq, expect_nothing, plain_config, within,
};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "queue::expiry::expired_before_lease_goes_to_dead_letters",
            ["Q12", "Q6", "Q8"],
            expired_to_dead_letters
        ),
        case!(
            "queue::expiry::never_leased_at_or_after_expiry_by_the_backend_clock",
            ["Q12"],
            never_after_expiry
        ),
        case!(
            "queue::expiry::leased_message_finishes_after_its_expiry",
            ["Q12", "Q4"],
            leased_finishes
        ),
        case!(
            "queue::expiry::retry_does_not_extend_expiry",
            ["Q12", "Q5"],
            retry_does_not_extend
        ),
        case!(
            "queue::expiry::expired_messages_do_not_count_against_max",
            ["Q12", "Q2"],
            skipped_not_counted
        ),
        case!(
            "queue::expiry::queue_ttl_applies_and_drop_discards",
            ["Q12", "Q8"],
            queue_ttl_and_drop
        ),
        case!(
            "queue::expiry::expired_message_frees_its_dedup_key",
            ["Q12", "Q11"],
            frees_dedup_key
        ),
        case!(
            "queue::expiry::bad_expiries_refused_at_publish",
            ["Q12", "Q10", "Q7"],
            bad_expiries_refused
        ),
    ]
}

async fn stats(cx: &Ctx, q: &str) -> Result<courier_core::QueueStats, crate::Failure> {
    Ok(within(LIMIT, "stats", cx.q().stats(q)).await??)
}

async fn expired_to_dead_letters(cx: Ctx) -> Outcome {
    let q = queue(&cx, "exdead", plain_config())?;
    let m = Message::new("stale", "offer").with_ttl(Duration::from_millis(150));
    let id = publish(&cx, &q, m).await?;
    let s = stats(&cx, &q).await?;
    ensure_eq!(
        (s.ready_total(), s.expired),
        (1, 0),
        "ready until its expiry is reached"
    );
    let dl_at = cx.q().clock().now_ms() + 150;
    clock_past(&cx, dl_at + 1).await?;
    expect_nothing(cx.q(), &q, Duration::from_millis(100)).await?;
    let s = stats(&cx, &q).await?;
    ensure_eq!(
        (
            s.ready_total(),
            s.in_flight,
            s.dead,
            s.expired,
            s.dead_lettered,
            s.published
        ),
        (0, 0, 1, 1, 0, 1),
        "(ready, in_flight, dead, expired, dead_lettered, published)"
    );
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, id)).await??;
    ensure_eq!(dl.error.as_str(), EXPIRED, "the reason");
    ensure_eq!(dl.attempts, 0, "never delivered");
    ensure_eq!(dl.message.payload.as_ref(), b"offer", "the message is kept");
    ensure!(
        dl.message.expires_at.is_some(),
        "the dead letter keeps its expiry"
    );
    Ok(())
}

async fn never_after_expiry(cx: Ctx) -> Outcome {
    const N: u64 = 12;
    let q = queue(&cx, "exexact", plain_config())?;
    let lead = 300;
    let base = cx.q().clock().now_ms() + lead;
    // Expiries 7 ms apart; a consumer that takes one every 10 ms falls behind them.
    for k in 0..N {
        let m = Message::new(format!("e{k}"), "").with_expires_at(base + 7 * k);
        publish(&cx, &q, m).await?;
    }
    clock_past(&cx, base - 20).await?;
    let clock = cx.q().clock();
    let tick = (cx.tick.as_millis() as u64).max(1);
    let mut delivered = 0u64;
    let limit = std::time::Instant::now() + LIMIT;
    loop {
        // The lease happens after this instant; a lease's deadline cannot tell when it was
        // made (replicated backends pad it by the claim's round trip), so the check is on
        // the start of the receive: a message must not come from a receive that began (by
        // the backend's clock) at or after its expiry, within the clock's tick.
        let began = clock.now_ms();
        let got = within(LIMIT, "receive", cx.q().receive(&q, 1, Duration::ZERO)).await??;
        let Some(d) = got.into_iter().next() else {
            break;
        };
        let at = d.message.expires_at.unwrap_or(0);
        ensure!(
            began < at + tick,
            "{} delivered by a receive that began at {began} ms by the backend clock, at or \
             after its expiry {at} ms (tick {tick} ms)",
            d.message.kind
        );

        delivered += 1;
        settle(&cx, &q, Settle::Ack(d.lease)).await?;
        ensure!(
            std::time::Instant::now() < limit,
            "still receiving after {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = stats(&cx, &q).await?;
    ensure_eq!(
        (delivered + s.expired, s.dead, s.acked),
        (N, s.expired, delivered),
        "every message delivered or expired: (delivered + expired, dead, acked)"
    );
    println!(
        "expiries 7 ms apart, one lease every ~10 ms: {delivered} delivered, {} expired",
        s.expired
    );
    Ok(())
}

async fn leased_finishes(cx: Ctx) -> Outcome {
    let q = queue(&cx, "exleased", plain_config())?;
    let at = cx.q().clock().now_ms() + 200;
    publish(&cx, &q, Message::new("slow", "").with_expires_at(at)).await?;
    let d = one(&cx, &q, LIMIT).await?;
    clock_past(&cx, at + 20).await?;
    // Still held: extend and ack work after the expiry.
    let lease = within(
        LIMIT,
        "extend",
        cx.q().extend(&q, &d.lease, Duration::from_secs(30)),
    )
    .await??;
    settle(&cx, &q, Settle::Ack(lease)).await?;
    let s = stats(&cx, &q).await?;
    ensure_eq!(
        (s.acked, s.expired, s.dead),
        (1, 0, 0),
        "(acked, expired, dead)"
    );
    Ok(())
}

async fn retry_does_not_extend(cx: Ctx) -> Outcome {
    let q = queue(
        &cx,
        "exretry",
        config_with(
            RetryPolicy::exact(5, Duration::ZERO, 2.0, Duration::ZERO),
            Duration::from_secs(30),
        ),
    )?;
    let at = cx.q().clock().now_ms() + 300;
    let id = publish(&cx, &q, Message::new("flaky", "").with_expires_at(at)).await?;
    let d = one(&cx, &q, LIMIT).await?;
    // Retry after the expiry: the message is not delivered again.
    let retry = Settle::Retry {
        lease: d.lease,
        delay: Duration::from_millis(500),
        error: "try later".into(),
    };
    settle(&cx, &q, retry).await?;
    clock_past(&cx, at + 520).await?;
    expect_nothing(cx.q(), &q, Duration::from_millis(300)).await?;
    let s = stats(&cx, &q).await?;
    ensure_eq!(
        (s.retried, s.expired, s.dead, s.dead_lettered, s.delayed),
        (1, 1, 1, 0, 0),
        "(retried, expired, dead, dead_lettered, delayed)"
    );
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, id)).await??;
    ensure_eq!(
        (dl.error.as_str(), dl.attempts),
        (EXPIRED, 1),
        "(reason, the one delivery made)"
    );
    Ok(())
}

async fn skipped_not_counted(cx: Ctx) -> Outcome {
    let q = queue(&cx, "exmax", plain_config())?;
    let at = cx.q().clock().now_ms() + 100;
    publish_all(
        &cx,
        &q,
        vec![
            Message::new("stale1", "")
                .with_priority(Priority::Critical)
                .with_expires_at(at),
            Message::new("stale2", "")
                .with_priority(Priority::High)
                .with_expires_at(at),
            Message::new("b", ""),
            Message::new("c", ""),
            Message::new("d", ""),
        ],
    )
    .await?;
    clock_past(&cx, at + 1).await?;
    let got = within(LIMIT, "receive", cx.q().receive(&q, 2, LIMIT)).await??;
    let kinds: Vec<&str> = got.iter().map(|d| d.message.kind.as_str()).collect();
    ensure_eq!(
        kinds,
        vec!["b", "c"],
        "the two live messages after the expired ones, in one receive"
    );
    let s = stats(&cx, &q).await?;
    ensure_eq!(
        (s.expired, s.in_flight, s.ready_total(), s.dead),
        (2, 2, 1, 2),
        "(expired, in_flight, ready, dead)"
    );
    Ok(())
}

async fn queue_ttl_and_drop(cx: Ctx) -> Outcome {
    let config = plain_config()
        .with_message_ttl(Duration::from_millis(100))
        .with_drop_expired(true);
    let q = queue(&cx, "exttl", config)?;
    let t0 = cx.q().clock().now_ms();
    publish_all(
        &cx,
        &q,
        vec![
            Message::new("relay1", ""),
            Message::new("relay2", ""),
            Message::new("own", "").with_ttl(Duration::from_secs(60)),
        ],
    )
    .await?;
    clock_past(&cx, t0 + 150).await?;
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(
        d.message.kind.as_str(),
        "own",
        "a message's own ttl wins over the queue's"
    );
    let left = d.message.expires_at.unwrap_or(0).saturating_sub(t0);
    ensure!(
        (59_000..=61_000).contains(&left),
        "expires {left} ms after publish, not 60 s"
    );
    settle(&cx, &q, Settle::Ack(d.lease)).await?;
    let s = stats(&cx, &q).await?;
    ensure_eq!(
        (s.expired, s.dead, s.dead_lettered, s.acked, s.stored()),
        (2, 0, 0, 1, 0),
        "dropped: (expired, dead, dead_lettered, acked, stored)"
    );
    Ok(())
}

async fn frees_dedup_key(cx: Ctx) -> Outcome {
    let q = queue(&cx, "exkey", plain_config())?;
    let at = cx.q().clock().now_ms() + 100;
    let first = Message::new("k", "1")
        .with_dedup_key("room-7")
        .with_expires_at(at);
    let a = first.id;
    within(LIMIT, "publish_unique", cx.q().publish_unique(&q, first)).await??;
    let again = within(
        LIMIT,
        "publish_unique",
        cx.q()
            .publish_unique(&q, Message::new("k", "2").with_dedup_key("room-7")),
    )
    .await??;
    ensure_eq!(again, Published::Duplicate(a), "held while live");
    clock_past(&cx, at + 1).await?;
    expect_nothing(cx.q(), &q, Duration::from_millis(50)).await?;
    let fresh = Message::new("k", "3").with_dedup_key("room-7");
    let b = fresh.id;
    let got = within(LIMIT, "publish_unique", cx.q().publish_unique(&q, fresh)).await??;
    ensure_eq!(
        got,
        Published::Stored(b),
        "an expired message frees its key"
    );
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(d.message.id, b, "the new holder is delivered");
    Ok(())
}

async fn bad_expiries_refused(cx: Ctx) -> Outcome {
    let q = queue(&cx, "exbad", plain_config())?;
    let now = cx.q().clock().now_ms();
    let bad = [
        (
            "delay past expiry",
            Message::new("k", "")
                .with_delay(Duration::from_secs(10))
                .with_ttl(Duration::from_secs(5)),
        ),
        (
            "delay ending at the expiry",
            Message::new("k", "")
                .with_not_before(now + 5_000)
                .with_expires_at(now + 5_000),
        ),
        ("zero ttl", Message::new("k", "").with_ttl(Duration::ZERO)),
        (
            "expiry in the past",
            Message::new("k", "").with_expires_at(now.saturating_sub(1_000)),
        ),
    ];
    for (what, m) in bad {
        let Err(e) = within(LIMIT, "publish", cx.q().publish(&q, m)).await? else {
            return Err(crate::Failure(format!("{what}: accepted")));
        };
        ensure_eq!(e.kind(), ErrorKind::InvalidInput, "{what}: {e}");
    }
    // One bad message refuses its whole batch.
    let batch = vec![
        Message::new("ok", ""),
        Message::new("k", "")
            .with_delay(Duration::from_secs(10))
            .with_ttl(Duration::from_secs(5)),
    ];
    let Err(e) = within(LIMIT, "publish_batch", cx.q().publish_batch(&q, batch)).await? else {
        return Err(crate::Failure(
            "a batch with a delay past its expiry was accepted".into(),
        ));
    };
    ensure!(
        e.message().contains("message 1 of the batch"),
        "names the message: {e}"
    );
    let s = stats(&cx, &q).await?;
    ensure_eq!(s.published, 0, "nothing stored");
    // A delay that ends before the expiry is fine.
    publish(
        &cx,
        &q,
        Message::new("k", "")
            .with_delay(Duration::from_millis(50))
            .with_ttl(Duration::from_secs(60)),
    )
    .await?;
    Ok(())
}
