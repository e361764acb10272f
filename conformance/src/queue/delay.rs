//! Queue cases, Q3 delay: `queue::delay::*`.

use std::time::{Duration, Instant};

use courier_core::{Message, Priority};

use super::{LIMIT, SHORT, one, publish, publish_all, queue};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, expect_nothing, plain_config, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
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
            "queue::delay::due_together_keep_publish_order",
            ["Q3", "Q2"],
            due_together_in_order
        ),
        case!(
            "queue::delay::never_leased_before_due_by_the_backend_clock",
            ["Q3"],
            never_before_due_exactly
        ),
        case!(
            "queue::delay::due_messages_keep_priority",
            ["Q3", "Q2"],
            delay_keeps_priority
        ),
    ]
}

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
    // Promptly: the waiting receive wakes when the message falls due, not at the end of its
    // wait. The tolerance is a few ticks, and never under 250 ms for a loaded machine.
    let limit = delay + (cx.tick * 4).max(Duration::from_millis(250));
    ensure!(
        took <= limit,
        "delivered {took:?} after publish: a waiting receive must wake within the tick of the \
         due time (limit {limit:?}), not at the end of its wait"
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

/// Delayed messages join their level in due order, those due at the same moment in publish
/// order, behind the messages that were ready before they fell due (Q2).
async fn due_together_in_order(cx: Ctx) -> Outcome {
    let q = queue(&cx, "duetogether", plain_config())?;
    let delay = Duration::from_millis(300);
    let later = (0..5)
        .map(|i| Message::new(format!("d{i}"), "").with_delay(delay))
        .collect();
    publish_all(&cx, &q, later).await?;
    // Published later, due later and due earlier than the five.
    let ms = Duration::from_millis;
    publish(
        &cx,
        &q,
        Message::new("late", "").with_delay(delay + ms(150)),
    )
    .await?;
    publish(
        &cx,
        &q,
        Message::new("early", "").with_delay(delay - ms(150)),
    )
    .await?;
    publish(&cx, &q, Message::new("now", "")).await?;
    // The passing of time is what is under test: wait until all are due.
    tokio::time::sleep(delay + ms(350)).await;
    let got = crate::receive_n(cx.q(), &q, 8, LIMIT).await?;
    let kinds: Vec<&str> = got.iter().map(|d| d.message.kind.as_str()).collect();
    ensure_eq!(
        kinds,
        vec!["now", "early", "d0", "d1", "d2", "d3", "d4", "late"],
        "due order, publish order among those due together, behind what was ready"
    );
    Ok(())
}

/// Not before due, checked to the millisecond in the backend's own clock: a lease's deadline
/// is the lease time plus the visibility timeout, so the lease time of a delivery is never
/// earlier than the message's `not_before`. A consumer polls without waiting across the due
/// time, so an early promotion is seen.
async fn never_before_due_exactly(cx: Ctx) -> Outcome {
    const N: u64 = 12;
    let vis = Duration::from_secs(30);
    let q = queue(&cx, "exactdue", plain_config())?;
    let lead = 300;
    let base = cx.q().clock().now_ms() + lead;
    // Due times a few ms apart, each its own chance to be promoted a moment early.
    for k in 0..N {
        let m = Message::new(format!("at{k}"), "").with_not_before(base + 7 * k);
        publish(&cx, &q, m).await?;
    }
    // Sleep to just before the first due time, then poll until all are delivered.
    tokio::time::sleep(Duration::from_millis(lead - 40)).await;
    let deadline = Instant::now() + LIMIT;
    let mut seen = 0;
    while seen < N {
        let got = within(LIMIT, "receive", cx.q().receive(&q, 1, Duration::ZERO)).await??;
        for d in got {
            seen += 1;
            let at = d.message.not_before.unwrap_or(0);
            let leased_at = d.lease.deadline_ms - vis.as_millis() as u64;
            ensure!(
                leased_at >= at,
                "{} leased at {leased_at} ms, {} ms before its not_before {at}",
                d.message.kind,
                at - leased_at
            );
        }
        ensure!(
            Instant::now() < deadline,
            "{seen} of {N} delivered within {LIMIT:?}"
        );
        tokio::task::yield_now().await;
    }
    Ok(())
}
