//! Queue cases, Q16 changing a queued message's priority: `queue::reprioritise::*`.

use std::time::Duration;

use courier_core::{ErrorKind, Message, MessageId, Priority, Settle};

use super::{LIMIT, SHORT, one, publish, publish_all, queue, settle};
use crate::{
    Case, Ctx, Outcome, case, ensure_eq, expect_kind, expect_nothing, plain_config, receive_n,
    stats_until, within,
};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "queue::reprioritise::ready_moves_to_the_back_of_the_new_level",
            ["Q16", "Q2"],
            ready_moves
        ),
        case!(
            "queue::reprioritise::same_level_goes_to_the_back",
            ["Q16", "Q2"],
            same_level
        ),
        case!(
            "queue::reprioritise::delayed_keeps_its_due_time",
            ["Q16", "Q3"],
            delayed_keeps_due
        ),
        case!(
            "queue::reprioritise::leased_keeps_its_lease_and_retries_at_the_new_level",
            ["Q16", "Q4", "Q5"],
            leased
        ),
        case!(
            "queue::reprioritise::unknown_dead_or_acked_is_not_found",
            ["Q16", "Q6"],
            not_found
        ),
    ]
}

async fn move_to(cx: &Ctx, q: &str, id: MessageId, p: Priority) -> Outcome {
    within(LIMIT, "reprioritise", cx.q().reprioritise(q, id, p)).await??;
    Ok(())
}

fn order(ds: &[courier_core::Delivery]) -> Vec<(&str, Priority)> {
    ds.iter()
        .map(|d| (d.message.kind.as_str(), d.message.priority))
        .collect()
}

async fn ready_moves(cx: Ctx) -> Outcome {
    let q = queue(&cx, "ready", plain_config())?;
    let ids = publish_all(
        &cx,
        &q,
        vec![
            Message::new("a", ""),
            Message::new("b", ""),
            Message::new("c", "").with_priority(Priority::High),
        ],
    )
    .await?;
    move_to(&cx, &q, ids[1], Priority::High).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.ready, [0, 2, 1, 0], "b counted at High");
    let got = receive_n(cx.q(), &q, 3, LIMIT).await?;
    ensure_eq!(
        order(&got),
        vec![
            ("c", Priority::High),
            ("b", Priority::High),
            ("a", Priority::Normal)
        ],
        "b behind c (which was already High), with its new priority"
    );
    Ok(())
}

async fn same_level(cx: Ctx) -> Outcome {
    let q = queue(&cx, "same", plain_config())?;
    let ids = publish_all(&cx, &q, vec![Message::new("a", ""), Message::new("b", "")]).await?;
    move_to(&cx, &q, ids[0], Priority::Normal).await?;
    let got = receive_n(cx.q(), &q, 2, LIMIT).await?;
    ensure_eq!(
        order(&got),
        vec![("b", Priority::Normal), ("a", Priority::Normal)],
        "a went to the back of its own level"
    );
    Ok(())
}

async fn delayed_keeps_due(cx: Ctx) -> Outcome {
    let q = queue(&cx, "delayed", plain_config())?;
    let id = publish(
        &cx,
        &q,
        Message::new("later", "")
            .with_priority(Priority::Low)
            .with_delay(Duration::from_secs(1)),
    )
    .await?;
    move_to(&cx, &q, id, Priority::Critical).await?;
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.delayed, s.ready_total()), (1, 0), "still delayed");
    expect_nothing(cx.q(), &q, SHORT).await?;
    publish(&cx, &q, Message::new("now", "")).await?;
    let (s, due) = stats_until(cx.q(), &q, LIMIT, |s| s.delayed == 0).await?;
    ensure_eq!((due, s.ready), (true, [1, 0, 1, 0]), "due, at Critical");
    let got = receive_n(cx.q(), &q, 2, LIMIT).await?;
    ensure_eq!(
        order(&got),
        vec![("later", Priority::Critical), ("now", Priority::Normal)],
        "the delayed message, now Critical, first"
    );
    Ok(())
}

async fn leased(cx: Ctx) -> Outcome {
    let q = queue(&cx, "leased", plain_config())?;
    let id = publish(&cx, &q, Message::new("a", "")).await?;
    let d = one(&cx, &q, LIMIT).await?;
    move_to(&cx, &q, id, Priority::High).await?;
    let extended = within(
        LIMIT,
        "extend",
        cx.q().extend(&q, &d.lease, Duration::from_secs(30)),
    )
    .await??;
    ensure_eq!(extended.token, d.lease.token, "the lease is the same");
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
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!(s.ready, [0, 1, 0, 0], "retried at High");
    let again = one(&cx, &q, LIMIT).await?;
    ensure_eq!(
        (
            again.message.id,
            again.message.priority,
            again.message.attempt
        ),
        (id, Priority::High, 2),
        "the retry carries the new priority"
    );
    Ok(())
}

async fn not_found(cx: Ctx) -> Outcome {
    let q = queue(&cx, "missing", plain_config())?;
    let ids = publish_all(
        &cx,
        &q,
        vec![Message::new("dead", ""), Message::new("done", "")],
    )
    .await?;
    for d in receive_n(cx.q(), &q, 2, LIMIT).await? {
        let op = if d.message.kind == "dead" {
            Settle::Bury {
                lease: d.lease,
                error: "bad".into(),
            }
        } else {
            Settle::Ack(d.lease)
        };
        settle(&cx, &q, op).await?;
    }
    let unknown = Message::new("x", "").id;
    for (id, what) in [
        (unknown, "an unknown id"),
        (ids[0], "a dead letter"),
        (ids[1], "an acked message"),
    ] {
        let r = within(
            LIMIT,
            "reprioritise",
            cx.q().reprioritise(&q, id, Priority::High),
        )
        .await?;
        expect_kind(r, ErrorKind::NotFound, what)?;
    }
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure_eq!((s.dead, s.ready_total()), (1, 0), "nothing moved");
    Ok(())
}
