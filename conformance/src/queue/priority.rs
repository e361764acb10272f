//! Queue cases, Q2 priority: `queue::priority::*`.

use std::time::Duration;

use courier_core::{FailureAction, Message, Priority, QueueExt, Settle};

use super::{LIMIT, kinds, one, publish, publish_all, queue, settle};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, plain_config, receive_n, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
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
            "queue::priority::retried_joins_the_back_of_its_level",
            ["Q2", "Q5"],
            retried_to_back
        ),
        case!(
            "queue::priority::released_returns_to_the_front_of_its_level",
            ["Q2", "Q4"],
            released_to_front
        ),
        case!(
            "queue::priority::default_is_normal",
            ["Q2"],
            default_is_normal
        ),
    ]
}

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

/// The kinds of `ds`, in delivery order.
fn order(ds: &[courier_core::Delivery]) -> Vec<&str> {
    ds.iter().map(|d| d.message.kind.as_str()).collect()
}

/// A retried message keeps its level and, once due, queues behind the messages already
/// waiting there (Q2), whether the retry came from a nack or from an expired lease.
async fn retried_to_back(cx: Ctx) -> Outcome {
    let q = queue(&cx, "rback", plain_config())?;
    let high = |k: &str| Message::new(k, "").with_priority(Priority::High);
    publish_all(
        &cx,
        &q,
        vec![high("h1"), high("h2"), high("h3"), Message::new("n1", "")],
    )
    .await?;
    let d = one(&cx, &q, LIMIT).await?;
    ensure_eq!(d.message.kind, "h1", "the oldest High first");
    let action = within(LIMIT, "nack", cx.q().nack(&q, &d, "boom")).await??;
    ensure_eq!(action, FailureAction::Retry(Duration::ZERO), "zero backoff");
    let got = receive_n(cx.q(), &q, 4, LIMIT).await?;
    ensure_eq!(
        order(&got),
        vec!["h2", "h3", "h1", "n1"],
        "the retried h1 behind h2 and h3, still ahead of Normal"
    );
    ensure_eq!(got[2].message.attempt, 2, "the retried message's attempt");
    Ok(())
}

/// A released message was never handled: it goes back to the front of its level, ahead of
/// the messages published after it (Q2), without counting an attempt (Q4).
async fn released_to_front(cx: Ctx) -> Outcome {
    let q = queue(&cx, "relfront", plain_config())?;
    let high = |k: &str| Message::new(k, "").with_priority(Priority::High);
    publish_all(
        &cx,
        &q,
        vec![Message::new("n1", ""), high("h1"), high("h2"), high("h3")],
    )
    .await?;
    let got = receive_n(cx.q(), &q, 2, LIMIT).await?;
    ensure_eq!(order(&got), vec!["h1", "h2"], "High first, oldest first");
    // Give back the second one first: each goes to the front, so h1 ends up first again.
    settle(&cx, &q, Settle::Release(got[1].lease)).await?;
    settle(&cx, &q, Settle::Release(got[0].lease)).await?;
    let again = receive_n(cx.q(), &q, 4, LIMIT).await?;
    ensure_eq!(
        order(&again),
        vec!["h1", "h2", "h3", "n1"],
        "released messages back at the front of High"
    );
    ensure_eq!(
        (again[0].message.attempt, again[1].message.attempt),
        (1, 1),
        "a release counts no attempt"
    );
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
