//! Message expiry (Q12) where Redis differs from the reference model: a claim expires at most
//! `EXPIRE_MAX` (1000) entries per script run, so a long run of expired messages cannot block
//! the server for long. A receive still crosses any run of them (one claim after another, each
//! reply saying "look again at once") and gets the live message behind it, for a queue and for
//! a consumer group. The conformance cases (`queue::expiry::*`, `events::expiry::*`) cover the
//! rule itself.

mod support;

use std::time::{Duration, Instant};

use courier_core::{EventBus, Message, Queue, QueueConfig, Selection};
use courier_redis::RedisBackend;

use support::{delete_prefix, shared_url as url, within as t};

/// Expired messages ahead of the live one: more than two claims' worth.
const RUN: usize = 2500;
const TTL: Duration = Duration::from_millis(300);

async fn backend(test: &str) -> Option<(RedisBackend, String)> {
    let prefix = format!(
        "courier-test-expiry:{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    match RedisBackend::builder()
        .url(url())
        .key_prefix(&prefix)
        .build()
        .await
    {
        Ok(b) => Some((b, prefix)),
        Err(e) => {
            support::unreachable(test, &e);
            None
        }
    }
}

fn expiring(k: usize) -> Vec<Message> {
    (0..k)
        .map(|i| Message::new("stale", format!("{i}")).with_ttl(TTL))
        .collect()
}

#[tokio::test]
async fn a_receive_crosses_a_long_run_of_expired_messages() {
    let Some((b, prefix)) = backend("a_receive_crosses_a_long_run_of_expired_messages").await
    else {
        return;
    };
    let qb: &dyn Queue = &b;
    let q = "run";
    qb.configure(q, QueueConfig::default()).expect("configure");
    for chunk in expiring(RUN).chunks(500) {
        t("publish", qb.publish_batch(q, chunk.to_vec()))
            .await
            .expect("publish");
    }
    t(
        "publish",
        qb.publish_batch(q, vec![Message::new("live", "")]),
    )
    .await
    .expect("publish");
    tokio::time::sleep(TTL + Duration::from_millis(50)).await;
    let started = Instant::now();
    let got = t("receive", qb.receive(q, 1, Duration::from_secs(5)))
        .await
        .expect("receive");
    let took = started.elapsed();
    eprintln!("a receive crossed {RUN} expired messages in {took:?}");
    assert_eq!(got.len(), 1, "the live message behind the run");
    assert_eq!(got[0].message.kind, "live");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let s = t("stats", qb.stats(q)).await.expect("stats");
    assert_eq!(
        (
            s.expired,
            s.dead,
            s.dead_lettered,
            s.ready_total(),
            s.in_flight
        ),
        (RUN as u64, RUN as u64, 0, 0, 1),
        "{s:?}"
    );
    // A requeued expired dead letter keeps its expiry: it expires again at the next receive.
    let dl = t(
        "dead_letters",
        qb.dead_letters(q, courier_core::Page::first(1)),
    )
    .await
    .expect("dead letters");
    assert_eq!((dl[0].error.as_str(), dl[0].attempts), ("expired", 0));
    let n = t(
        "requeue",
        qb.requeue_dead(q, Selection::Ids(vec![dl[0].message.id])),
    )
    .await
    .expect("requeue");
    assert_eq!(n, 1);
    let got = t("receive", qb.receive(q, 10, Duration::from_millis(100)))
        .await
        .expect("receive");
    assert!(got.is_empty(), "expired again, not delivered");
    let s = t("stats", qb.stats(q)).await.expect("stats");
    assert_eq!((s.expired, s.dead), (RUN as u64 + 1, RUN as u64), "{s:?}");
    delete_prefix(&url(), &prefix).await;
}

#[tokio::test]
async fn a_group_receive_crosses_a_long_run_of_expired_events() {
    let Some((b, prefix)) = backend("a_group_receive_crosses_a_long_run_of_expired_events").await
    else {
        return;
    };
    let eb: &dyn EventBus = &b;
    let (topic, group) = ("feed", "late");
    // Dropped, not kept: the group's dead letters stay empty.
    eb.configure_group(topic, group, QueueConfig::default().with_drop_expired(true))
        .expect("configure");
    for chunk in expiring(RUN).chunks(500) {
        t("emit", eb.emit_batch(topic, chunk.to_vec()))
            .await
            .expect("emit");
    }
    t("emit", eb.emit_batch(topic, vec![Message::new("live", "")]))
        .await
        .expect("emit");
    tokio::time::sleep(TTL + Duration::from_millis(50)).await;
    let started = Instant::now();
    let got = t(
        "receive",
        eb.receive(topic, group, 1, Duration::from_secs(5)),
    )
    .await
    .expect("receive");
    let took = started.elapsed();
    eprintln!("a group receive crossed {RUN} expired events in {took:?}");
    assert_eq!(got.len(), 1, "the live event behind the run");
    assert_eq!(got[0].message.kind, "live");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let s = t("group_stats", eb.group_stats(topic, group))
        .await
        .expect("stats");
    assert_eq!(
        (
            s.queue.expired,
            s.queue.dead,
            s.queue.dead_lettered,
            s.queue.in_flight,
            s.lag
        ),
        (RUN as u64, 0, 0, 1, 0),
        "{s:?}"
    );
    delete_prefix(&url(), &prefix).await;
}
