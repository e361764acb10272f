//! EventBus cases, E7 listing: `events::listing::*`.
//!
//! `list_topics` names every topic an event was emitted to or a consumer group exists on;
//! `list_groups(topic)` names the groups created, reset or received from. Both sorted, each
//! once, by any handle sharing the backend; what was only configured or read is not listed.

use std::time::Duration;

use courier_core::{ErrorKind, EventBus, Message, Page, ReplayFrom};

use super::{bus, emit_one, short_lease};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, within};

const LIMIT: Duration = Duration::from_secs(10);

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "events::listing::topics_with_events_or_groups_listed",
            ["E7"],
            topics_listed
        ),
        case!(
            "events::listing::groups_created_reset_or_received_listed",
            ["E7", "E2", "E5"],
            groups_listed
        ),
        case!(
            "events::listing::another_handle_lists_the_same_topics_and_groups",
            ["E7", "E1"],
            another_handle
        ),
    ]
}

async fn topics(b: &dyn EventBus) -> Result<Vec<String>, crate::Failure> {
    Ok(within(LIMIT, "list_topics", b.list_topics()).await??)
}

async fn groups(b: &dyn EventBus, topic: &str) -> Result<Vec<String>, crate::Failure> {
    Ok(within(LIMIT, "list_groups", b.list_groups(topic)).await??)
}

async fn topics_listed(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    ensure_eq!(
        topics(b).await?,
        Vec::<String>::new(),
        "a fresh backend lists no topic"
    );
    let emitted = cx.name("t-emitted");
    let grouped = cx.name("t-grouped");
    let looked = cx.name("t-looked-at");
    // Not in sorted order on purpose.
    emit_one(b, &emitted, Message::new("e", "1")).await?;
    within(
        LIMIT,
        "create_group",
        b.create_group(&grouped, "g", ReplayFrom::Start),
    )
    .await??;
    // A queue is not a topic (Q13 lists it, E7 does not).
    let queue = cx.name("t-queue");
    within(
        LIMIT,
        "publish",
        cx.q().publish_batch(&queue, vec![Message::new("q", "1")]),
    )
    .await??;
    // Only configured and read: not listed.
    b.configure_group(&looked, "g", short_lease(1_000, 2))?;
    within(LIMIT, "group_stats", b.group_stats(&looked, "g")).await??;
    within(LIMIT, "topic_len", b.topic_len(&looked)).await??;
    within(
        LIMIT,
        "dead_letters",
        b.dead_letters(&looked, "g", Page::first(5)),
    )
    .await??;
    ensure_eq!(
        topics(b).await?,
        vec![emitted.clone(), grouped.clone()],
        "topics with an event or a group, sorted (not {looked}, only configured and read, nor the queue {queue})"
    );
    ensure_eq!(
        groups(b, &looked).await?,
        Vec::<String>::new(),
        "a group only configured and read is not listed"
    );
    Ok(())
}

async fn groups_listed(cx: Ctx) -> Outcome {
    let b = bus(&cx);
    let t = cx.name("t-groups");
    let id = emit_one(b, &t, Message::new("e", "1")).await?;
    within(
        LIMIT,
        "create_group",
        b.create_group(&t, "made", ReplayFrom::End),
    )
    .await??;
    within(
        LIMIT,
        "reset_group",
        b.reset_group(&t, "moved", ReplayFrom::Id(id)),
    )
    .await??;
    within(
        LIMIT,
        "receive",
        b.receive(&t, "reader", 1, Duration::from_millis(50)),
    )
    .await??;
    b.configure_group(&t, "configured", short_lease(1_000, 2))?;
    within(LIMIT, "group_stats", b.group_stats(&t, "configured")).await??;
    // Created twice: listed once.
    let again = within(
        LIMIT,
        "create_group",
        b.create_group(&t, "made", ReplayFrom::Start),
    )
    .await??;
    ensure!(
        !again,
        "a second create_group of the same group creates nothing"
    );
    ensure_eq!(
        groups(b, &t).await?,
        vec![
            "made".to_string(),
            "moved".to_string(),
            "reader".to_string()
        ],
        "the created, reset and received-from groups, sorted, each once (not the one only configured)"
    );
    ensure_eq!(
        groups(b, &cx.name("t-unknown")).await?,
        Vec::<String>::new(),
        "an unknown topic has no groups"
    );
    let bad = within(LIMIT, "list_groups", b.list_groups("no spaces")).await?;
    ensure!(
        matches!(&bad, Err(e) if e.kind() == ErrorKind::InvalidInput),
        "an invalid topic name is refused: {bad:?}"
    );
    Ok(())
}

async fn another_handle(cx: Ctx) -> Outcome {
    let other = within(LIMIT, "reopen", cx.factory.reopen(&cx.ns, &cx.backend)).await??;
    let first = bus(&cx);
    let second = &*other.events;
    let mine = cx.name("t-first");
    let theirs = cx.name("t-second");
    emit_one(first, &mine, Message::new("a", "1")).await?;
    within(
        LIMIT,
        "create_group",
        first.create_group(&mine, "g1", ReplayFrom::Start),
    )
    .await??;
    emit_one(second, &theirs, Message::new("b", "2")).await?;
    within(
        LIMIT,
        "create_group",
        second.create_group(&mine, "g2", ReplayFrom::Start),
    )
    .await??;
    let want = vec![mine.clone(), theirs.clone()];
    ensure_eq!(
        topics(first).await?,
        want,
        "the first handle lists both topics"
    );
    ensure_eq!(
        topics(second).await?,
        want,
        "the second handle lists both topics"
    );
    let want = vec!["g1".to_string(), "g2".to_string()];
    ensure_eq!(
        groups(first, &mine).await?,
        want,
        "the first handle lists both groups"
    );
    ensure_eq!(
        groups(second, &mine).await?,
        want,
        "the second handle lists both groups"
    );
    Ok(())
}
