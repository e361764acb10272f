//! Queue cases, Q5 retry: `queue::retry::*`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use courier_core::{FailureAction, Message, QueueExt, RetryPolicy};

use super::{LIMIT, SHORT, config_with, kinds, one, publish, publish_all, queue};
use crate::{
    Case, Ctx, Outcome, case, ensure, ensure_eq, expect_nothing, plain_config, receive_n, summary,
    within,
};

pub(super) fn cases() -> Vec<Case> {
    vec![
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
            "queue::retry::expired_lease_backoff_is_jittered",
            ["Q4", "Q5"],
            expiry_jitter
        ),
        case!(
            "queue::retry::expired_lease_waits_for_backoff",
            ["Q4", "Q5", "Q6"],
            expiry_backoff
        ),
    ]
}

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

/// An expired lease is a failed attempt like a nack (Q4): the message waits out the backoff
/// of the attempt that expired before it is ready again (Q5), and a message's own
/// `max_attempts` holds through expiries too, also when it is above the queue's (Q6).
async fn expiry_backoff(cx: Ctx) -> Outcome {
    let (base, vis) = (Duration::from_millis(250), Duration::from_millis(200));
    let q = queue(
        &cx,
        "expback",
        config_with(
            RetryPolicy::exact(2, base, 2.0, Duration::from_secs(5)),
            vis,
        ),
    )?;
    let id = publish(&cx, &q, Message::new("m", "").with_max_attempts(3)).await?;
    let mut d = one(&cx, &q, LIMIT).await?;
    let mut t = Instant::now();
    // Attempt 1 expires after `vis`, then waits `base`; attempt 2 waits `2 × base`.
    for (attempt, backoff) in [(2u32, base), (3, base * 2)] {
        d = one(&cx, &q, vis + backoff + cx.prompt()).await?;
        let took = t.elapsed();
        t = Instant::now();
        ensure_eq!(d.message.attempt, attempt, "attempt after an expiry");
        ensure!(
            took + Duration::from_millis(5) >= vis + backoff,
            "attempt {attempt} delivered {took:?} after the previous one; its lease ({vis:?}) \
             and backoff ({backoff:?}) end later"
        );
    }
    // The third lease expires too: out of the message's 3 attempts, it is dead.
    let (s, ok) = crate::stats_until(cx.q(), &q, vis + cx.prompt(), |s| s.dead == 1).await?;
    if !ok {
        // Backends that reclaim expired leases on receive: drive one.
        let got = within(LIMIT, "receive", cx.q().receive(&q, 1, cx.prompt())).await??;
        ensure!(
            got.is_empty(),
            "delivered a 4th time with max_attempts 3: {:?} ({s:?})",
            summary(&got)
        );
    }
    let dl = within(LIMIT, "dead_letter", cx.q().dead_letter(&q, id)).await??;
    ensure_eq!(dl.attempts, 3, "dead after the message's own 3 attempts");
    drop(d);
    Ok(())
}

/// Jitter spreads a delay both ways around the computed one, and the cap applies before the
/// jitter (Q5): with `base = max_delay = 400 ms` and jitter 0.5, delays fall in
/// [200, 600] ms and land on both sides of 400 ms (16 draws all on one side: p = 2^-15).
async fn jitter_range(cx: Ctx) -> Outcome {
    const N: usize = 16;
    let base = Duration::from_millis(400);
    let mut retry = RetryPolicy::exact(2, base, 2.0, base);
    retry.jitter = 0.5;
    let q = queue(&cx, "jitter", config_with(retry, Duration::from_secs(30)))?;
    publish_all(&cx, &q, kinds(N, "j")).await?;
    let ds = receive_n(cx.q(), &q, N, LIMIT).await?;
    let t0 = Instant::now();
    let mut delays = Vec::new();
    for d in &ds {
        let action = within(LIMIT, "nack", cx.q().nack(&q, d, "jitter")).await??;
        match action {
            FailureAction::Retry(delay) => {
                ensure!(
                    delay >= Duration::from_millis(200) && delay <= Duration::from_millis(600),
                    "delay {delay:?} outside base ± 50%"
                );
                delays.push(delay);
            }
            FailureAction::Dead => return Err(crate::Failure("dead on attempt 1 of 2".into())),
        }
    }
    ensure!(
        delays.iter().any(|d| *d < base) && delays.iter().any(|d| *d > base),
        "{N} jittered delays all on one side of {base:?} (the cap before the jitter, the \
         jitter both ways): {delays:?}"
    );
    let again = receive_n(cx.q(), &q, N, Duration::from_millis(600) + cx.prompt()).await?;
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

/// Milliseconds since the Unix epoch on this machine (lease deadlines are in the same unit).
fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// An expired lease is a failed attempt with the same jittered backoff as a nack (Q4, Q5):
/// with `base = max_delay = 400 ms` and jitter 0.5, each message comes back between 200 and
/// 600 ms after its lease ended (plus the tick), and the 16 of them land on both sides of
/// 400 ms (all on one side: p = 2^-15).
async fn expiry_jitter(cx: Ctx) -> Outcome {
    const N: usize = 16;
    let base = Duration::from_millis(400);
    let mut retry = RetryPolicy::exact(3, base, 2.0, base);
    retry.jitter = 0.5;
    let q = queue(
        &cx,
        "expjitter",
        config_with(retry, Duration::from_millis(100)),
    )?;
    let msgs = (0..N).map(|i| Message::new("m", format!("{i}"))).collect();
    publish_all(&cx, &q, msgs).await?;
    let first = receive_n(cx.q(), &q, N, LIMIT).await?;
    let deadline: HashMap<_, _> = first
        .iter()
        .map(|d| (d.message.id, d.lease.deadline_ms))
        .collect();
    // Let every lease expire, and note when each message comes back.
    let mut back: HashMap<courier_core::MessageId, u64> = HashMap::new();
    let end = Instant::now() + Duration::from_millis(700) + cx.prompt();
    while back.len() < N && Instant::now() < end {
        let got = within(
            LIMIT,
            "receive",
            cx.q().receive(&q, N, Duration::from_millis(200)),
        )
        .await??;
        let at = epoch_ms();
        for d in got {
            if back.contains_key(&d.message.id) {
                continue; // its ack below came after its 100 ms lease on a loaded machine
            }
            ensure_eq!(d.message.attempt, 2, "attempt after an expired lease");
            back.insert(d.message.id, at);
            // Done with it; an ack that arrives after the lease ended is LeaseLost, fine here.
            let _ = within(LIMIT, "ack", cx.q().ack(&q, &d.lease)).await?;
        }
    }
    ensure_eq!(back.len(), N, "every expired message came back");
    let slack = (cx.tick * 4).max(Duration::from_millis(250));
    let gaps: Vec<u64> = back
        .iter()
        .map(|(id, at)| at.saturating_sub(deadline[id]))
        .collect();
    for g in &gaps {
        ensure!(
            *g + 5 >= 200 && *g <= 600 + u64::try_from(slack.as_millis()).unwrap_or(u64::MAX),
            "a message came back {g} ms after its lease ended: outside 400 ms ± 50 % (+ {slack:?}): {gaps:?}"
        );
    }
    ensure!(
        gaps.iter().any(|g| *g < 400) && gaps.iter().any(|g| *g > 400),
        "{N} expired leases all backed off on one side of 400 ms: the expiry's backoff is not \
         jittered as the queue's policy says: {gaps:?}"
    );
    Ok(())
}
