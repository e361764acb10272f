//! Queue cases, Q13 listing: `queue::listing::*`.
//!
//! `list_queues` names every queue a message was published to, by any handle sharing the
//! backend, sorted, each once; a queue only configured, read or received from is not listed,
//! and an emptied queue stays listed.

use std::time::Duration;

use courier_core::{Message, QueueExt, Selection, Settle};

use super::{LIMIT, one, publish, publish_all, queue, settle};
use crate::{Case, Ctx, Outcome, case, ensure_eq, plain_config, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "queue::listing::published_queues_listed_sorted_once",
            ["Q13"],
            published_listed
        ),
        case!(
            "queue::listing::emptied_queue_stays_listed",
            ["Q13", "Q8"],
            emptied_stays
        ),
        case!(
            "queue::listing::another_handle_lists_the_same_queues",
            ["Q13", "Q1"],
            another_handle
        ),
    ]
}

async fn listed(q: &dyn courier_core::Queue) -> Result<Vec<String>, crate::Failure> {
    Ok(within(LIMIT, "list_queues", q.list_queues()).await??)
}

async fn published_listed(cx: Ctx) -> Outcome {
    ensure_eq!(
        listed(cx.q()).await?,
        Vec::<String>::new(),
        "a fresh backend lists nothing"
    );
    // Created in an order that is not the sorted one.
    let b = queue(&cx, "list-b", plain_config())?;
    let a = queue(&cx, "list-a", plain_config())?;
    let c = queue(&cx, "list-c", plain_config())?;
    publish(&cx, &b, Message::new("one", "1")).await?;
    publish(&cx, &b, Message::new("two", "2")).await?;
    publish_all(
        &cx,
        &a,
        vec![Message::new("x", "x"), Message::new("y", "y")],
    )
    .await?;
    // A topic is not a queue (E7 lists it, Q13 does not).
    let topic = cx.name("list-topic");
    within(
        LIMIT,
        "emit",
        cx.backend
            .events
            .emit_batch(&topic, vec![Message::new("e", "1")]),
    )
    .await??;
    // Only configured (above), read and received from: not listed.
    within(LIMIT, "stats", cx.q().stats(&c)).await??;
    within(
        LIMIT,
        "dead_letters",
        cx.q().dead_letters(&c, courier_core::Page::first(10)),
    )
    .await??;
    let got = within(
        LIMIT,
        "receive",
        cx.q().receive(&c, 1, Duration::from_millis(50)),
    )
    .await??;
    ensure_eq!(got.len(), 0, "nothing was published to {c}");
    ensure_eq!(
        listed(cx.q()).await?,
        vec![a.clone(), b.clone()],
        "the published queues, sorted, each once (not {c}, only configured, read and received from, nor the topic {topic})"
    );
    Ok(())
}

async fn emptied_stays(cx: Ctx) -> Outcome {
    let acked = queue(&cx, "gone-acked", plain_config())?;
    let purged = queue(&cx, "gone-purged", plain_config())?;
    publish(&cx, &acked, Message::new("done", "1")).await?;
    let d = one(&cx, &acked, LIMIT).await?;
    settle(&cx, &acked, Settle::Ack(d.lease)).await?;
    publish(&cx, &purged, Message::new("doomed", "1")).await?;
    let d = one(&cx, &purged, LIMIT).await?;
    settle(
        &cx,
        &purged,
        Settle::Bury {
            lease: d.lease,
            error: "poison".into(),
        },
    )
    .await?;
    let n = within(
        LIMIT,
        "purge_dead",
        cx.q().purge_dead(&purged, Selection::All),
    )
    .await??;
    ensure_eq!(n, 1, "the one dead letter is purged");
    for q in [&acked, &purged] {
        let s = within(LIMIT, "stats", cx.q().stats(q)).await??;
        ensure_eq!(s.stored(), 0, "{q} holds nothing any more");
    }
    ensure_eq!(
        listed(cx.q()).await?,
        vec![acked.clone(), purged.clone()],
        "emptied queues stay listed (their counters remain)"
    );
    Ok(())
}

async fn another_handle(cx: Ctx) -> Outcome {
    let other = within(LIMIT, "reopen", cx.factory.reopen(&cx.ns, &cx.backend)).await??;
    let mine = queue(&cx, "by-first", plain_config())?;
    let theirs = cx.name("by-second");
    publish(&cx, &mine, Message::new("a", "1")).await?;
    within(
        LIMIT,
        "publish",
        other.queue.publish(&theirs, Message::new("b", "2")),
    )
    .await??;
    let want = vec![mine.clone(), theirs.clone()];
    ensure_eq!(listed(cx.q()).await?, want, "the first handle lists both");
    ensure_eq!(
        listed(&*other.queue).await?,
        want,
        "the second handle lists both"
    );
    Ok(())
}
