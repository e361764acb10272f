//! Queue cases, Q4 lease: `queue::lease::*`.

use std::time::{Duration, Instant};

use courier_core::{ErrorKind, Message, QueueExt, RetryPolicy, Settle};

use super::{LIMIT, config_with, kinds, one, publish, publish_all, queue, settle};
use crate::{
    Case, Ctx, Outcome, case, ensure, ensure_eq, expect_kind, expect_nothing, plain_config,
    receive_n, stats_until, summary, within,
};

pub(super) fn cases() -> Vec<Case> {
    vec![
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
            "queue::lease::late_settle_before_redelivery_is_lease_lost",
            ["Q4"],
            late_settle_before_redelivery
        ),
        case!(
            "queue::lease::expired_while_others_wait_is_redelivered",
            ["Q4"],
            expired_while_others_wait
        ),
        case!(
            "queue::lease::extended_one_of_a_batch_outlives_the_others",
            ["Q4"],
            extended_outlives_batch
        ),
        case!(
            "queue::lease::stale_lease_through_another_handle_is_lease_lost",
            ["Q4"],
            stale_through_other_handle
        ),
        case!(
            "queue::lease::large_receive_leases_each_message",
            ["Q4", "Q5"],
            large_receive
        ),
        case!(
            "queue::lease::late_settle_after_a_mass_expiry_is_lease_lost",
            ["Q4", "Q9"],
            mass_expiry
        ),
        case!(
            "queue::lease::extended_lease_still_expires",
            ["Q4"],
            extended_still_expires
        ),
        case!(
            "queue::lease::release_does_not_count_attempt",
            ["Q4", "Q5"],
            release_no_attempt
        ),
        case!(
            "queue::lease::settled_lease_cannot_extend_or_settle_again",
            ["Q4"],
            settled_is_final
        ),
        case!(
            "queue::lease::settle_batch_reports_each_result",
            ["Q4"],
            settle_batch_results
        ),
    ]
}

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
    ensure_eq!(
        dl.error,
        courier_core::backend::LEASE_EXPIRED,
        "the dead letter says the lease expired"
    );
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
        ensure_eq!(
            (lease.id, lease.token, lease.attempt),
            (d.lease.id, d.lease.token, d.lease.attempt),
            "extend keeps the lease's id, token and attempt"
        );
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

/// A lease ends at its deadline, not when someone next receives the message: an ack, nack,
/// bury, release or extend that arrives after the deadline fails with `LeaseLost` even while
/// the expired lease has not been reclaimed yet, and the expiry still counts as the attempt.
/// (`extend_after_expiry_is_lease_lost` covers the same after a redelivery.)
async fn late_settle_before_redelivery(cx: Ctx) -> Outcome {
    let vis = Duration::from_millis(250);
    let ops = ["ack", "retry", "bury", "release", "extend"];
    let mut held = Vec::new();
    for op in ops {
        let q = queue(
            &cx,
            &format!("late{op}"),
            config_with(
                RetryPolicy::exact(5, Duration::ZERO, 2.0, Duration::ZERO),
                vis,
            ),
        )?;
        publish(&cx, &q, Message::new(op, "")).await?;
        let d = one(&cx, &q, LIMIT).await?;
        held.push((op, q, d));
    }
    // The passing of time is what is under test: wait past every deadline (the last lease
    // was taken before now) without touching any of the queues.
    tokio::time::sleep(vis + Duration::from_millis(150)).await;
    for (op, q, d) in &held {
        let lease = d.lease;
        let error = "too late".to_string();
        let r = match *op {
            "ack" => settle(&cx, q, Settle::Ack(lease)).await,
            "retry" => {
                let delay = Duration::ZERO;
                settle(
                    &cx,
                    q,
                    Settle::Retry {
                        lease,
                        delay,
                        error,
                    },
                )
                .await
            }
            "bury" => settle(&cx, q, Settle::Bury { lease, error }).await,
            "release" => settle(&cx, q, Settle::Release(lease)).await,
            _ => within(
                LIMIT,
                "extend",
                cx.q().extend(q, &lease, Duration::from_secs(5)),
            )
            .await?
            .map(|_| ()),
        };
        ensure_eq!(
            r.map_err(|e| e.kind()),
            Err(ErrorKind::LeaseLost),
            "{op} after the lease deadline, before any redelivery"
        );
    }
    for (op, q, d) in &held {
        let again = one(&cx, q, cx.prompt()).await?;
        ensure_eq!(
            again.message.id,
            d.message.id,
            "the same message after a late {op}"
        );
        ensure_eq!(
            again.message.attempt,
            2,
            "after a late {op} the expiry counted as the failed attempt"
        );
        settle(&cx, q, Settle::Ack(again.lease)).await?;
        let s = within(LIMIT, "stats", cx.q().stats(q)).await??;
        ensure_eq!(
            (s.acked, s.retried, s.dead, s.in_flight),
            (1, 1, 0, 0),
            "counters after a late {op}: only the expiry and the final ack count"
        );
    }
    Ok(())
}

/// An expired lease makes its message ready again at once, not only once the queue has run
/// dry: a receive after the deadline returns it together with the messages already waiting,
/// behind them (it became due after they were published).
async fn expired_while_others_wait(cx: Ctx) -> Outcome {
    let vis = Duration::from_millis(200);
    let q = queue(
        &cx,
        "expwait",
        config_with(
            RetryPolicy::exact(5, Duration::ZERO, 2.0, Duration::ZERO),
            vis,
        ),
    )?;
    publish(&cx, &q, Message::new("leased", "")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    publish_all(&cx, &q, kinds(2, "waiting")).await?;
    // The passing of time is what is under test: past the deadline, nothing touched.
    tokio::time::sleep(vis + Duration::from_millis(150)).await;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.ready_total(), s.in_flight),
        (3, 0),
        "(ready, in flight) after the deadline, with other messages waiting"
    );
    // All three are ready: one receive returns them all.
    let got = within(LIMIT, "receive", cx.q().receive(&q, 3, LIMIT)).await??;
    let kinds: Vec<(&str, u32)> = got
        .iter()
        .map(|d| (d.message.kind.as_str(), d.message.attempt))
        .collect();
    ensure_eq!(
        kinds,
        vec![("waiting0", 1), ("waiting1", 1), ("leased", 2)],
        "the expired message is ready again beside the waiting ones"
    );
    ensure_eq!(got[2].message.id, d.message.id, "the same message");
    Ok(())
}

/// Leases taken by one receive are each their own: after the first is extended and the
/// second's deadline has passed, the extended one can still be extended and acked, and only
/// the other comes back.
async fn extended_outlives_batch(cx: Ctx) -> Outcome {
    let vis = Duration::from_millis(250);
    let q = queue(
        &cx,
        "extbatch",
        config_with(
            RetryPolicy::exact(5, Duration::ZERO, 2.0, Duration::ZERO),
            vis,
        ),
    )?;
    publish_all(&cx, &q, kinds(2, "m")).await?;
    let ds = receive_n(cx.q(), &q, 2, LIMIT).await?;
    let lease = within(
        LIMIT,
        "extend",
        cx.q().extend(&q, &ds[0].lease, Duration::from_secs(10)),
    )
    .await??;
    // The passing of time is what is under test: past the receive's own deadline.
    tokio::time::sleep(vis + Duration::from_millis(150)).await;
    let lease = within(
        LIMIT,
        "extend",
        cx.q().extend(&q, &lease, Duration::from_secs(10)),
    )
    .await?
    .map_err(|e| crate::Failure(format!("extending the extended lease again: {e}")))?;
    let again = one(&cx, &q, cx.prompt()).await?;
    ensure_eq!(
        (again.message.kind.as_str(), again.message.attempt),
        ("m1", 2),
        "only the lease that was not extended expired"
    );
    settle(&cx, &q, Settle::Ack(lease))
        .await
        .map_err(|e| crate::Failure(format!("acking the extended lease: {e}")))?;
    settle(&cx, &q, Settle::Ack(again.lease)).await?;
    Ok(())
}

/// The lease check is the same from any handle: after an expiry and a redelivery, the old
/// lease presented through a second handle (as another process would) is `LeaseLost` for
/// ack and extend, and the new holder's lease still works.
async fn stale_through_other_handle(cx: Ctx) -> Outcome {
    let vis = Duration::from_millis(200);
    let q = queue(
        &cx,
        "staleother",
        config_with(
            RetryPolicy::exact(5, Duration::ZERO, 2.0, Duration::ZERO),
            vis,
        ),
    )?;
    let other = within(LIMIT, "reopen", cx.factory.reopen(&cx.ns, &cx.backend)).await??;
    other.queue.configure(&q, cx.q().queue_config(&q))?;
    publish(&cx, &q, Message::new("m", "")).await?;
    let first = one(&cx, &q, LIMIT).await?;
    let second = one(&cx, &q, vis + cx.prompt()).await?;
    ensure_eq!(second.message.attempt, 2, "redelivered after the expiry");
    let r = within(
        LIMIT,
        "ack",
        other.queue.settle_one(&q, Settle::Ack(first.lease)),
    )
    .await?;
    ensure_eq!(
        r.map_err(|e| e.kind()),
        Err(ErrorKind::LeaseLost),
        "the old lease acked through another handle"
    );
    let r = within(
        LIMIT,
        "extend",
        other.queue.extend(&q, &first.lease, Duration::from_secs(5)),
    )
    .await?;
    ensure_eq!(
        r.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::LeaseLost),
        "the old lease extended through another handle"
    );
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.in_flight, s.acked),
        (1, 0),
        "the new holder still holds it"
    );
    settle(&cx, &q, Settle::Ack(second.lease)).await?;
    Ok(())
}

/// One receive of many messages leases each one properly: every lease is distinct and
/// settles, and every delivery counts as an attempt.
async fn large_receive(cx: Ctx) -> Outcome {
    const N: usize = 75;
    let q = queue(&cx, "largerecv", plain_config())?;
    publish_all(&cx, &q, kinds(N, "m")).await?;
    let ds = receive_n(cx.q(), &q, N, LIMIT).await?;
    let tokens: std::collections::HashSet<u64> = ds.iter().map(|d| d.lease.token).collect();
    ensure_eq!(tokens.len(), N, "distinct lease tokens");
    for d in &ds {
        within(LIMIT, "nack", cx.q().nack(&q, d, "again")).await??;
    }
    let again = receive_n(cx.q(), &q, N, LIMIT).await?;
    ensure!(
        again.iter().all(|d| d.message.attempt == 2),
        "attempt 2 for each: {:?}",
        summary(&again)
    );
    let ops = again.iter().map(|d| Settle::Ack(d.lease)).collect();
    let rs = within(LIMIT, "settle", cx.q().settle(&q, ops)).await??;
    ensure!(
        rs.iter().all(|r| r.is_ok()),
        "every lease of the receive acks: {rs:?}"
    );
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.acked, s.retried, s.stored()),
        (N as u64, N as u64, 0),
        "stats"
    );
    Ok(())
}

/// A consumer with a deep prefetch dies: more leases expire at once than a backend reclaims
/// in one step (SQLite 10,000 per queue, Redis 1,000 per call). A late ack, release, nack or
/// extend of the most recent of them is still `LeaseLost`, and every message comes back once.
async fn mass_expiry(cx: Ctx) -> Outcome {
    const N: usize = 10_100;
    // Long enough that publishing and receiving 2 × N fits inside it on a loaded machine.
    let vis = Duration::from_secs(8);
    let config = config_with(
        RetryPolicy::exact(5, Duration::ZERO, 2.0, Duration::ZERO),
        vis,
    );
    // Two queues: the first operation after the expiry is the one a bounded reclaim leaves
    // to the deadline check, so one queue starts with an ack and the other with an extend.
    let (qa, qe) = (
        queue(&cx, "massack", config)?,
        queue(&cx, "massext", config)?,
    );
    let t0 = Instant::now();
    let mut held = Vec::new();
    for q in [&qa, &qe] {
        for chunk in kinds(N, "m").chunks(1_000) {
            publish_all(&cx, q, chunk.to_vec()).await?;
        }
        held.push(receive_n(cx.q(), q, N, Duration::from_secs(30)).await?);
    }
    ensure!(
        t0.elapsed() < vis,
        "publishing and receiving 2 × {N} took {:?}, longer than the lease: the case cannot judge",
        t0.elapsed()
    );
    // The passing of time is what is under test: past every deadline, nothing touched.
    tokio::time::sleep(vis + Duration::from_millis(200)).await;
    let lost = |r, what: &str| {
        let what = format!("{what} of one of the latest leases after a mass expiry");
        expect_kind(r, ErrorKind::LeaseLost, &what)
    };
    let (a, e) = (&held[0][N - 2..], &held[1][N - 2..]);
    lost(settle(&cx, &qa, Settle::Ack(a[0].lease)).await, "ack")?;
    let r = within(LIMIT, "extend", cx.q().extend(&qe, &e[0].lease, vis)).await?;
    lost(r.map(|_| ()), "extend")?;
    let r = within(LIMIT, "nack", cx.q().nack(&qe, &e[1], "late")).await?;
    lost(r.map(|_| ()), "nack")?;
    lost(
        settle(&cx, &qa, Settle::Release(a[1].lease)).await,
        "release",
    )?;
    for q in [&qa, &qe] {
        let again = receive_n(cx.q(), q, N, Duration::from_secs(60)).await?;
        let ids: std::collections::HashSet<_> = again.iter().map(|d| d.message.id).collect();
        ensure_eq!(ids.len(), N, "every message back once");
        ensure!(
            again.iter().all(|d| d.message.attempt == 2),
            "each expiry counted once"
        );
    }
    Ok(())
}

/// Extending moves the deadline; it does not remove it: an extended lease that is then
/// abandoned expires at its new deadline, and the message comes back as the next attempt.
async fn extended_still_expires(cx: Ctx) -> Outcome {
    let vis = Duration::from_millis(200);
    let q = queue(
        &cx,
        "extexp2",
        config_with(
            RetryPolicy::exact(5, Duration::ZERO, 2.0, Duration::ZERO),
            vis,
        ),
    )?;
    publish(&cx, &q, Message::new("m", "")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    let t0 = Instant::now();
    let ext = Duration::from_millis(400);
    let lease = within(LIMIT, "extend", cx.q().extend(&q, &d.lease, ext)).await??;
    ensure!(
        lease.deadline_ms >= d.lease.deadline_ms,
        "the extended deadline is not earlier"
    );
    let again = one(&cx, &q, ext + cx.prompt()).await?;
    let took = t0.elapsed();
    ensure!(
        took + Duration::from_millis(5) >= ext,
        "redelivered {took:?} after an extend of {ext:?}"
    );
    ensure_eq!(again.message.attempt, 2, "the abandoned lease counted");
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

/// Once settled, a lease is gone for every operation: an extend or another settle of any
/// kind is `LeaseLost`, also while other messages of the same receive are still leased.
async fn settled_is_final(cx: Ctx) -> Outcome {
    let q = queue(&cx, "final", plain_config())?;
    publish_all(&cx, &q, kinds(4, "m")).await?;
    let ds = receive_n(cx.q(), &q, 4, LIMIT).await?;
    let error = || "e".to_string();
    let firsts = [
        Settle::Ack(ds[0].lease),
        Settle::Retry {
            lease: ds[1].lease,
            delay: Duration::from_secs(30),
            error: error(),
        },
        Settle::Bury {
            lease: ds[2].lease,
            error: error(),
        },
    ];
    for (i, op) in firsts.into_iter().enumerate() {
        settle(&cx, &q, op).await?;
        let lease = ds[i].lease;
        let r = within(
            LIMIT,
            "extend",
            cx.q().extend(&q, &lease, Duration::from_secs(5)),
        )
        .await?;
        ensure_eq!(
            r.map(|_| ()).map_err(|e| e.kind()),
            Err(ErrorKind::LeaseLost),
            "extend of settled delivery {i} while delivery 3 is still leased"
        );
        for again in [
            Settle::Ack(lease),
            Settle::Release(lease),
            Settle::Bury {
                lease,
                error: error(),
            },
        ] {
            let r = settle(&cx, &q, again.clone()).await;
            ensure_eq!(
                r.map_err(|e| e.kind()),
                Err(ErrorKind::LeaseLost),
                "{again:?} after delivery {i} was settled"
            );
        }
    }
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.acked, s.retried, s.dead, s.in_flight, s.delayed),
        (1, 1, 1, 1, 1),
        "each first settle counted once, nothing else"
    );
    // The batch-mate's lease is untouched.
    within(
        LIMIT,
        "extend",
        cx.q().extend(&q, &ds[3].lease, Duration::from_secs(5)),
    )
    .await??;
    Ok(())
}

/// A settle batch judges every op's token on its own, whatever the size of the messages (a
/// backend may take another path for large entries).
async fn settle_batch_results(cx: Ctx) -> Outcome {
    for size in [0usize, 4096] {
        settle_batch_of(&cx, size).await?;
    }
    Ok(())
}

async fn settle_batch_of(cx: &Ctx, size: usize) -> Outcome {
    let q = queue(cx, &format!("sbatch{size}"), plain_config())?;
    let ms = (0..5)
        .map(|i| Message::new(format!("m{i}"), vec![i as u8; size]))
        .collect();
    publish_all(cx, &q, ms).await?;
    let ds = receive_n(cx.q(), &q, 5, LIMIT).await?;
    let forge = |d: &courier_core::Delivery| {
        let mut l = d.lease;
        l.token = l.token.wrapping_add(7919);
        l
    };
    let lost = Some(ErrorKind::LeaseLost);
    // Acks only (a backend may take a lighter path when it needs no message bytes), then a
    // mix of kinds.
    let batches = [
        (
            vec![
                Settle::Ack(ds[0].lease),
                Settle::Ack(ds[0].lease),
                Settle::Ack(forge(&ds[1])),
                Settle::Ack(ds[1].lease),
            ],
            vec![None, lost, lost, None],
        ),
        (
            vec![
                Settle::Ack(ds[2].lease),
                Settle::Ack(ds[2].lease),
                Settle::Retry {
                    lease: ds[3].lease,
                    delay: Duration::ZERO,
                    error: "e".into(),
                },
                Settle::Ack(forge(&ds[4])),
                Settle::Ack(ds[4].lease),
            ],
            vec![None, lost, None, lost, None],
        ),
    ];
    for (ops, want) in batches {
        let rs = within(LIMIT, "settle", cx.q().settle(&q, ops)).await??;
        let kinds: Vec<Option<ErrorKind>> = rs
            .iter()
            .map(|r| r.as_ref().err().map(|e| e.kind()))
            .collect();
        ensure_eq!(
            kinds,
            want,
            "one result per op, in order ({size}-byte payloads)"
        );
    }
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.acked, s.retried, s.ready_total()),
        (4, 1, 1),
        "stats after the batches"
    );
    Ok(())
}
