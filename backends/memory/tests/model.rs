//! Focused behaviour tests of the memory backend (the cross-backend suite lives in
//! `courier-conformance`). Timing tests run on tokio's paused, virtual clock.

use std::sync::Arc;
use std::time::Duration;

use courier_core::{
    ErrorKind, EventBus, EventBusExt, Message, MessageId, Page, Priority, PubSub, Queue,
    QueueConfig, QueueExt, ReplayFrom, RetryPolicy, Selection, Settle, SubscribeOptions,
    TokioClock,
};
use courier_memory::MemoryBackend;
use tokio::time::{Instant, timeout};

const T: Duration = Duration::from_secs(5);
const NO_WAIT: Duration = Duration::ZERO;

/// A backend on tokio's clock: with `start_paused` time is virtual.
fn backend() -> MemoryBackend {
    MemoryBackend::builder()
        .clock(Arc::new(TokioClock::new()))
        .default_config(
            QueueConfig::default()
                .with_visibility_timeout(Duration::from_millis(200))
                .with_retry(RetryPolicy::exact(
                    3,
                    Duration::from_millis(50),
                    2.0,
                    Duration::from_secs(1),
                )),
        )
        .build()
}

fn queue(b: &MemoryBackend) -> Arc<dyn Queue> {
    Arc::new(b.clone())
}

fn bus(b: &MemoryBackend) -> Arc<dyn EventBus> {
    Arc::new(b.clone())
}

async fn kinds(q: &dyn Queue, name: &str, max: usize) -> Vec<String> {
    let ds = timeout(T, q.receive(name, max, NO_WAIT))
        .await
        .expect("bounded")
        .expect("receive");
    ds.into_iter().map(|d| d.message.kind).collect()
}

#[tokio::test]
async fn strict_priority_then_fifo() {
    let q = queue(&backend());
    let batch = vec![
        Message::new("low", "").with_priority(Priority::Low),
        Message::new("n1", ""),
        Message::new("crit", "").with_priority(Priority::Critical),
        Message::new("n2", ""),
        Message::new("high", "").with_priority(Priority::High),
    ];
    let ids = courier_core::Published::ids(&q.publish_batch("q", batch).await.expect("publish"));
    assert_eq!(ids.len(), 5);
    let st = q.stats("q").await.expect("stats");
    assert_eq!(st.ready, [1, 1, 2, 1]);
    assert_eq!(st.published, 5);
    assert_eq!(kinds(&*q, "q", 2).await, ["crit", "high"]);
    assert_eq!(kinds(&*q, "q", 10).await, ["n1", "n2", "low"]);
}

#[tokio::test(start_paused = true)]
async fn delay_is_never_early_and_prompt() {
    let b = backend();
    let q = queue(&b);
    let t0 = Instant::now();
    q.publish_in("q", Message::new("later", ""), Duration::from_millis(300))
        .await
        .expect("publish");
    assert!(kinds(&*q, "q", 1).await.is_empty());
    assert_eq!(q.stats("q").await.expect("stats").delayed, 1);
    let d = timeout(T, q.receive_one("q", Duration::from_secs(2)))
        .await
        .expect("bounded")
        .expect("receive")
        .expect("delivered");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited <= Duration::from_millis(302),
        "{waited:?}"
    );
    assert_eq!(d.message.attempt, 1);
}

#[tokio::test]
async fn waiting_receiver_is_woken_by_publish() {
    let b = MemoryBackend::new();
    let q = queue(&b);
    let q2 = q.clone();
    let waiter = tokio::spawn(async move { q2.receive("w", 10, Duration::from_secs(30)).await });
    tokio::task::yield_now().await;
    q.publish("w", Message::new("hi", ""))
        .await
        .expect("publish");
    let got = timeout(T, waiter)
        .await
        .expect("woken well before its wait ends")
        .expect("join")
        .expect("receive");
    assert_eq!(got.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn expired_lease_redelivers_with_next_attempt() {
    let q = queue(&backend());
    q.publish("q", Message::new("m", ""))
        .await
        .expect("publish");
    let first = q.receive_one("q", NO_WAIT).await.expect("r").expect("one");
    assert_eq!(first.lease.attempt, 1);
    // Lease 200 ms, then the expiry counts as a failed attempt: backoff 50 ms.
    let t0 = Instant::now();
    let second = timeout(T, q.receive_one("q", Duration::from_secs(2)))
        .await
        .expect("bounded")
        .expect("r")
        .expect("redelivered");
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert_eq!(second.message.id, first.message.id);
    assert_eq!(second.message.attempt, 2);
    assert_ne!(second.lease.token, first.lease.token);
    // The old lease is stale: LeaseLost, nothing changes.
    let e = q.ack("q", &first.lease).await.expect_err("stale");
    assert_eq!(e.kind(), ErrorKind::LeaseLost);
    assert_eq!(e.backend(), "memory");
    assert_eq!(q.stats("q").await.expect("s").in_flight, 1);
    q.ack("q", &second.lease).await.expect("ack");
    let st = q.stats("q").await.expect("s");
    assert_eq!((st.acked, st.retried, st.stored()), (1, 1, 0));
}

#[tokio::test]
async fn double_ack_is_lease_lost() {
    let q = queue(&backend());
    q.publish("q", Message::new("m", ""))
        .await
        .expect("publish");
    let d = q.receive_one("q", NO_WAIT).await.expect("r").expect("one");
    q.ack("q", &d.lease).await.expect("first ack");
    let e = q.ack("q", &d.lease).await.expect_err("second ack");
    assert!(e.is_lease_lost());
    let st = q.stats("q").await.expect("s");
    assert_eq!((st.acked, st.stored()), (1, 0));
    // A batch settle reports each operation separately.
    let res = q
        .settle("q", vec![Settle::Ack(d.lease), Settle::Release(d.lease)])
        .await
        .expect("settle");
    assert!(
        res.iter()
            .all(|r| r.as_ref().is_err_and(|e| e.is_lease_lost()))
    );
}

#[tokio::test(start_paused = true)]
async fn extend_keeps_the_lease() {
    let q = queue(&backend());
    q.publish("q", Message::new("m", ""))
        .await
        .expect("publish");
    let d = q.receive_one("q", NO_WAIT).await.expect("r").expect("one");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let l = q
        .extend("q", &d.lease, Duration::from_millis(500))
        .await
        .expect("extend");
    assert!(l.deadline_ms > d.lease.deadline_ms);
    assert_eq!(l.token, d.lease.token);
    // Past the original deadline nobody else gets it.
    let none = timeout(T, q.receive("q", 1, Duration::from_millis(300)))
        .await
        .expect("bounded")
        .expect("r");
    assert!(none.is_empty());
    q.ack("q", &d.lease)
        .await
        .expect("ack with the original lease value");
}

#[tokio::test]
async fn release_does_not_count_and_goes_first() {
    let q = queue(&backend());
    q.publish_batch("q", vec![Message::new("a", ""), Message::new("b", "")])
        .await
        .expect("publish");
    let a = q.receive_one("q", NO_WAIT).await.expect("r").expect("a");
    q.release("q", &a.lease).await.expect("release");
    let again = q
        .receive_one("q", NO_WAIT)
        .await
        .expect("r")
        .expect("a again");
    assert_eq!(again.message.kind, "a");
    assert_eq!(again.message.attempt, 1);
    let st = q.stats("q").await.expect("s");
    assert_eq!((st.retried, st.in_flight, st.ready_total()), (0, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn nack_retries_with_backoff_then_dead_letters() {
    let q = queue(&backend());
    let id = q
        .publish("q", Message::new("bad", ""))
        .await
        .expect("publish");
    let mut gaps = Vec::new();
    for attempt in 1..=3u32 {
        let t0 = Instant::now();
        let d = timeout(T, q.receive_one("q", Duration::from_secs(5)))
            .await
            .expect("bounded")
            .expect("r")
            .expect("delivered");
        gaps.push(t0.elapsed().as_millis());
        assert_eq!(d.message.attempt, attempt);
        q.nack("q", &d, &format!("boom {attempt}"))
            .await
            .expect("nack");
    }
    // Backoff 50 ms then 100 ms (exact policy), then dead after the 3rd delivery.
    assert!((50..=52).contains(&gaps[1]), "{gaps:?}");
    assert!((100..=102).contains(&gaps[2]), "{gaps:?}");
    let st = q.stats("q").await.expect("s");
    assert_eq!((st.dead, st.retried, st.dead_lettered), (1, 2, 1));
    let dl = q.dead_letter("q", id).await.expect("dead letter");
    assert_eq!((dl.attempts, dl.message.attempt), (3, 3));
    assert_eq!(dl.error, "boom 3");
    let missing = q
        .dead_letter("q", MessageId::new())
        .await
        .expect_err("none");
    assert_eq!(missing.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn requeue_resets_attempts_and_purge_counts() {
    let q = queue(&backend());
    let ids = courier_core::Published::ids(
        &q.publish_batch("q", vec![Message::new("a", ""), Message::new("b", "")])
            .await
            .expect("publish"),
    );
    for d in q.receive("q", 2, NO_WAIT).await.expect("r") {
        let op = Settle::Bury {
            lease: d.lease,
            error: "permanent".into(),
        };
        q.settle_one("q", op).await.expect("bury");
    }
    let listed = q.dead_letters("q", Page::first(10)).await.expect("list");
    let listed_ids: Vec<MessageId> = listed.iter().map(|d| d.message.id).collect();
    assert_eq!(listed_ids, ids, "oldest first");
    let page = q
        .dead_letters(
            "q",
            Page {
                offset: 1,
                limit: 5,
            },
        )
        .await
        .expect("page");
    assert_eq!(page.len(), 1);
    let n = q
        .requeue_dead("q", Selection::Ids(vec![ids[0], MessageId::new()]))
        .await
        .expect("requeue");
    assert_eq!(n, 1);
    let d = q
        .receive_one("q", NO_WAIT)
        .await
        .expect("r")
        .expect("requeued");
    assert_eq!((d.message.id, d.message.attempt), (ids[0], 1));
    assert_eq!(q.purge_dead("q", Selection::All).await.expect("purge"), 1);
    assert_eq!(q.stats("q").await.expect("s").dead, 0);
}

#[tokio::test]
async fn bad_input_is_rejected_before_anything_is_stored() {
    let b = backend();
    let q = queue(&b);
    let e = q
        .publish("bad name", Message::new("m", ""))
        .await
        .expect_err("name");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    q.configure("small", QueueConfig::default().with_max_payload(4))
        .expect("configure");
    assert_eq!(q.queue_config("small").max_payload, 4);
    let batch = vec![Message::new("ok", "1234"), Message::new("big", "12345")];
    let e = q
        .publish_batch("small", batch)
        .await
        .expect_err("too large");
    assert_eq!(e.kind(), ErrorKind::PayloadTooLarge);
    assert_eq!(e.stored(), None);
    assert_eq!(q.stats("small").await.expect("s").stored(), 0);
    let e = q.receive("small", 0, NO_WAIT).await.expect_err("max 0");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let bad = QueueConfig::default().with_visibility_timeout(Duration::ZERO);
    assert!(q.configure("small", bad).is_err());
}

#[tokio::test]
async fn dropped_receive_loses_nothing() {
    let q = queue(&backend());
    let fut = q.receive("q", 10, Duration::from_secs(30));
    drop(fut);
    let pending = {
        let q = q.clone();
        tokio::spawn(async move { q.receive("q", 10, Duration::from_secs(30)).await })
    };
    tokio::task::yield_now().await;
    pending.abort();
    let _ = pending.await;
    q.publish("q", Message::new("m", ""))
        .await
        .expect("publish");
    assert_eq!(kinds(&*q, "q", 10).await, ["m"]);
}

#[tokio::test]
async fn pubsub_patterns_and_unsubscribe() {
    let b = backend();
    let ps: Arc<dyn PubSub> = Arc::new(b.clone());
    let opts = SubscribeOptions::default();
    let mut exact = ps.subscribe("meeting.created", opts).await.expect("sub");
    let mut star = ps.subscribe("meeting.*", opts).await.expect("sub");
    let mut tail = ps.subscribe("meeting.>", opts).await.expect("sub");
    assert_eq!(
        ps.publish("meeting.created", Message::new("c", ""))
            .await
            .expect("p"),
        3
    );
    assert_eq!(
        ps.publish("meeting.a.b", Message::new("ab", ""))
            .await
            .expect("p"),
        1
    );
    assert_eq!(
        ps.publish("user.created", Message::new("u", ""))
            .await
            .expect("p"),
        0
    );
    for i in 0..5 {
        ps.publish("meeting.ended", Message::new(format!("e{i}"), ""))
            .await
            .expect("p");
    }
    let next = |s: &mut courier_core::Subscription| s.try_next().map(|m| m.kind);
    assert_eq!(next(&mut exact).as_deref(), Some("c"));
    assert_eq!(next(&mut exact), None);
    let star_got: Vec<String> = std::iter::from_fn(|| next(&mut star)).collect();
    assert_eq!(star_got, ["c", "e0", "e1", "e2", "e3", "e4"]);
    let m = timeout(T, tail.next())
        .await
        .expect("bounded")
        .expect("msg");
    assert_eq!(m.kind, "c");
    assert!(m.created_at > 0);
    drop(star);
    tail.unsubscribe();
    assert_eq!(
        ps.publish("meeting.created", Message::new("c2", ""))
            .await
            .expect("p"),
        1
    );
    assert!(
        ps.publish("bad..channel", Message::new("x", ""))
            .await
            .is_err()
    );
    assert!(ps.subscribe("a.>.b", opts).await.is_err());
}

#[tokio::test]
async fn every_group_gets_every_event_in_order() {
    let bus = bus(&backend());
    bus.emit("meeting.created", Message::new("early", ""))
        .await
        .expect("emit");
    let batch = (0..5).map(|i| Message::new(format!("e{i}"), "")).collect();
    bus.emit_batch("meeting.created", batch)
        .await
        .expect("emit");
    for group in ["billing", "audit"] {
        let ds = timeout(T, bus.receive("meeting.created", group, 100, NO_WAIT))
            .await
            .expect("bounded")
            .expect("receive");
        let got: Vec<String> = ds.iter().map(|d| d.message.kind.clone()).collect();
        assert_eq!(got, ["early", "e0", "e1", "e2", "e3", "e4"], "{group}");
        for d in &ds {
            bus.ack("meeting.created", group, &d.lease)
                .await
                .expect("ack");
        }
        let st = bus
            .group_stats("meeting.created", group)
            .await
            .expect("stats");
        assert_eq!((st.lag, st.queue.acked, st.queue.stored()), (0, 6, 0));
    }
    // Inside a group each event goes to one consumer.
    let a = bus
        .receive("meeting.created", "billing", 1, NO_WAIT)
        .await
        .expect("r");
    assert!(a.is_empty());
    assert_eq!(bus.topic_len("meeting.created").await.expect("len"), 6);
}

#[tokio::test(start_paused = true)]
async fn group_waits_for_emit_and_redelivers_expired() {
    let b = backend();
    let bus = bus(&b);
    let waiter = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.receive("t", "g", 10, Duration::from_secs(10)).await })
    };
    tokio::task::yield_now().await;
    let t0 = Instant::now();
    let id = bus.emit("t", Message::new("ev", "")).await.expect("emit");
    let got = timeout(T, waiter)
        .await
        .expect("bounded")
        .expect("join")
        .expect("r");
    assert!(t0.elapsed() < Duration::from_millis(5));
    assert_eq!(got[0].message.id, id);
    // Not acked: the lease (200 ms) expires, backoff 50 ms, then attempt 2.
    let again = timeout(T, bus.receive("t", "g", 10, Duration::from_secs(2)))
        .await
        .expect("bounded")
        .expect("r");
    assert_eq!((again[0].message.id, again[0].message.attempt), (id, 2));
}

#[tokio::test]
async fn reset_group_replays_and_retention_trims() {
    let bus = bus(&backend());
    let ids = bus
        .emit_batch(
            "t",
            (0..4).map(|i| Message::new(format!("e{i}"), "")).collect(),
        )
        .await
        .expect("emit");
    let take = |max| {
        let bus = bus.clone();
        async move {
            let ds = bus.receive("t", "g", max, NO_WAIT).await.expect("r");
            for d in &ds {
                bus.ack("t", "g", &d.lease).await.expect("ack");
            }
            ds.into_iter().map(|d| d.message.kind).collect::<Vec<_>>()
        }
    };
    assert_eq!(take(10).await.len(), 4);
    bus.reset_group("t", "g", ReplayFrom::Id(ids[2]))
        .await
        .expect("reset");
    assert_eq!(take(10).await, ["e2", "e3"]);
    bus.reset_group("t", "g", ReplayFrom::Start)
        .await
        .expect("reset");
    assert_eq!(bus.group_stats("t", "g").await.expect("s").lag, 4);
    assert_eq!(take(1).await, ["e0"]);
    bus.reset_group("t", "g", ReplayFrom::End)
        .await
        .expect("reset");
    assert!(take(10).await.is_empty());
    let e = bus
        .reset_group("t", "g", ReplayFrom::Id(MessageId::new()))
        .await
        .expect_err("unknown id");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // Retention: keep 2; a group behind the new start continues at the oldest retained event.
    bus.reset_group("t", "g", ReplayFrom::Start)
        .await
        .expect("reset");
    bus.set_retention(
        "t",
        courier_core::Retention {
            max_len: Some(2),
            max_age: None,
        },
    )
    .expect("retention");
    assert_eq!(bus.topic_len("t").await.expect("len"), 2);
    assert_eq!(take(10).await, ["e2", "e3"]);
}
