//! Queue cases, Q14 pause and resume: `queue::pause::*`.

use std::time::{Duration, Instant};

use courier_core::{Message, Settle};

use super::{LIMIT, SHORT, one, publish, publish_all, queue, settle};
use crate::{
    Case, Ctx, Outcome, case, ensure, ensure_eq, expect_nothing, plain_config, receive_n,
    stats_until, within,
};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "queue::pause::paused_queue_accepts_publishes_and_delivers_nothing",
            ["Q14", "Q8"],
            accepts_and_holds
        ),
        case!(
            "queue::pause::leases_granted_before_stay_valid",
            ["Q14", "Q4"],
            leases_stay_valid
        ),
        case!(
            "queue::pause::seen_by_another_handle",
            ["Q14"],
            another_handle
        ),
        case!(
            "queue::pause::resume_wakes_a_waiting_receiver",
            ["Q14"],
            resume_wakes
        ),
        case!(
            "queue::pause::idempotent_and_allowed_before_any_publish",
            ["Q14", "Q13"],
            idempotent
        ),
        case!(
            "queue::pause::delayed_messages_come_due_but_wait",
            ["Q14", "Q3"],
            delayed_wait
        ),
    ]
}

async fn pause(cx: &Ctx, q: &str) -> Outcome {
    within(LIMIT, "pause", cx.q().pause(q)).await??;
    Ok(())
}

async fn resume(cx: &Ctx, q: &str) -> Outcome {
    within(LIMIT, "resume", cx.q().resume(q)).await??;
    Ok(())
}

async fn accepts_and_holds(cx: Ctx) -> Outcome {
    let q = queue(&cx, "hold", plain_config())?;
    pause(&cx, &q).await?;
    publish_all(&cx, &q, vec![Message::new("a", ""), Message::new("b", "")]).await?;
    expect_nothing(cx.q(), &q, SHORT).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure!(s.paused, "stats report the pause: {s:?}");
    ensure_eq!((s.ready_total(), s.in_flight), (2, 0), "both wait, ready");
    resume(&cx, &q).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure!(!s.paused, "stats report the resume: {s:?}");
    let got = receive_n(cx.q(), &q, 2, LIMIT).await?;
    ensure_eq!(got.len(), 2, "both delivered after resume");
    Ok(())
}

async fn leases_stay_valid(cx: Ctx) -> Outcome {
    let q = queue(&cx, "leases", plain_config())?;
    publish_all(&cx, &q, vec![Message::new("a", ""), Message::new("b", "")]).await?;
    let got = receive_n(cx.q(), &q, 2, LIMIT).await?;
    pause(&cx, &q).await?;
    settle(&cx, &q, Settle::Ack(got[0].lease)).await?;
    let extended = within(
        LIMIT,
        "extend",
        cx.q().extend(&q, &got[1].lease, Duration::from_secs(30)),
    )
    .await??;
    // A retry makes it ready again; still not delivered while paused.
    settle(
        &cx,
        &q,
        Settle::Retry {
            lease: extended,
            delay: Duration::ZERO,
            error: "again".into(),
        },
    )
    .await?;
    expect_nothing(cx.q(), &q, SHORT).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(
        (s.acked, s.retried, s.ready_total(), s.in_flight),
        (1, 1, 1, 0),
        "ack and retry applied while paused"
    );
    resume(&cx, &q).await?;
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(
        (d.message.id, d.message.attempt),
        (got[1].message.id, 2),
        "the retried message, second attempt"
    );
    Ok(())
}

async fn another_handle(cx: Ctx) -> Outcome {
    let q = queue(&cx, "shared", plain_config())?;
    publish(&cx, &q, Message::new("a", "")).await?;
    let other = within(LIMIT, "reopen", cx.factory.reopen(&cx.ns, &cx.backend)).await??;
    other.queue.configure(&q, plain_config())?;
    pause(&cx, &q).await?;
    // Every process sees the pause within one delay tick.
    let (s, held) = stats_until(&*other.queue, &q, cx.prompt(), |s| s.paused).await?;
    ensure!(held, "the other handle sees the pause: {s:?}");
    expect_nothing(&*other.queue, &q, SHORT).await?;
    within(LIMIT, "resume", other.queue.resume(&q)).await??;
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(
        d.message.kind.as_str(),
        "a",
        "delivered after the other handle resumed"
    );
    Ok(())
}

async fn resume_wakes(cx: Ctx) -> Outcome {
    let q = queue(&cx, "wake", plain_config())?;
    pause(&cx, &q).await?;
    publish(&cx, &q, Message::new("a", "")).await?;
    let backend = cx.backend.clone();
    let name = q.clone();
    let long = Duration::from_secs(20);
    let waiter = tokio::spawn(async move { backend.queue.receive(&name, 1, long).await });
    // The receiver is waiting on a paused queue with work ready: it must not return.
    tokio::time::sleep(SHORT).await;
    ensure!(
        !waiter.is_finished(),
        "a receive on a paused queue returned early"
    );
    let resumed = Instant::now();
    resume(&cx, &q).await?;
    let got = within(long + LIMIT, "the waiting receive", waiter)
        .await?
        .map_err(|e| crate::Failure(format!("receive task: {e}")))??;
    let after = resumed.elapsed();
    ensure_eq!(got.len(), 1, "the waiting receiver got the message");
    ensure!(
        after < cx.prompt(),
        "woken {after:?} after resume (its wait was {long:?})"
    );
    Ok(())
}

async fn idempotent(cx: Ctx) -> Outcome {
    let q = queue(&cx, "idem", plain_config())?;
    pause(&cx, &q).await?;
    pause(&cx, &q).await?;
    let listed = within(LIMIT, "list_queues", cx.q().list_queues()).await??;
    ensure!(
        !listed.contains(&q),
        "pausing does not list a queue nothing was published to"
    );
    resume(&cx, &q).await?;
    resume(&cx, &q).await?;
    publish(&cx, &q, Message::new("a", "")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(d.message.kind.as_str(), "a", "delivered: not paused");
    Ok(())
}

async fn delayed_wait(cx: Ctx) -> Outcome {
    let q = queue(&cx, "delayed", plain_config())?;
    pause(&cx, &q).await?;
    publish(
        &cx,
        &q,
        Message::new("later", "").with_delay(Duration::from_millis(100)),
    )
    .await?;
    let (s, due) = stats_until(cx.q(), &q, cx.prompt() + SHORT, |s| {
        s.delayed == 0 && s.ready_total() == 1
    })
    .await?;
    ensure!(due, "the delayed message came due while paused: {s:?}");
    expect_nothing(cx.q(), &q, SHORT).await?;
    resume(&cx, &q).await?;
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(d.message.kind.as_str(), "later", "delivered after resume");
    Ok(())
}
