//! Deduplication keys on Redis (Q11), against the reference model's rules (courier-memory's
//! `QueueState::accept`): a key has at most one holder per queue, the last message stored with
//! it; a keyed publish stores nothing while the holder is live (ready, delayed, leased, waiting
//! for a retry) or within the publisher's window, and answers with the holder's id. Ack, bury
//! and an expired last lease free the key (at once, or when the window passes); a requeued
//! dead letter holds it again unless another message holds it. Each case runs twice: through
//! Redis Functions and through `EVALSHA` bodies. Each run works under its own key prefix on
//! the shared server.

mod support;

use std::time::{Duration, Instant};

use courier_core::{
    Message, MessageId, Priority, Published, Queue, QueueConfig, QueueExt, RetryPolicy, Selection,
    Settle,
};
use courier_redis::RedisBackend;

use support::{T, shared_url as url, within as t};

/// A plain configuration: long leases, up to 5 attempts, no backoff, no window.
fn config() -> QueueConfig {
    QueueConfig::default()
        .with_visibility_timeout(Duration::from_secs(30))
        .with_retry(RetryPolicy::exact(5, Duration::ZERO, 1.0, Duration::ZERO))
}

fn keyed(key: &str, payload: &str) -> Message {
    Message::new("k", payload.to_string()).with_dedup_key(key)
}

/// A fresh key prefix for one run.
fn fresh_prefix(test: &str, functions: bool) -> String {
    format!(
        "courier-test:dedup-{test}-{}-{}-{:08x}",
        if functions { "fn" } else { "eval" },
        std::process::id(),
        rand::random::<u32>()
    )
}

/// A backend under `prefix` (Redis Functions or `EVALSHA` only); `None` (skipped loudly) when
/// Redis cannot be reached.
async fn backend(
    test: &str,
    prefix: &str,
    config: QueueConfig,
    functions: bool,
) -> Option<RedisBackend> {
    let built = tokio::time::timeout(
        T,
        RedisBackend::builder()
            .url(url())
            .key_prefix(prefix)
            .default_config(config)
            .redis_functions(functions)
            .build(),
    )
    .await;
    match built {
        Ok(Ok(b)) => Some(b),
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_string(),
            };
            support::unreachable(test, &why);
            None
        }
    }
}

/// Deletes a run's keys when dropped.
struct Cleanup(String);

impl Cleanup {
    fn key(&self, queue: &str, suffix: &str) -> String {
        format!("{{{}:q:{queue}}}:v2:{suffix}", self.0)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(url()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(T) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{{{}:*", self.0))
            .query(&mut conn)
            .unwrap_or_default();
        for k in keys {
            let _: redis::RedisResult<i64> = redis::cmd("UNLINK").arg(k).query(&mut conn);
        }
    }
}

/// One run: a backend under a fresh prefix and the guard that cleans it up.
async fn open(test: &str, config: QueueConfig, functions: bool) -> Option<(RedisBackend, Cleanup)> {
    let prefix = fresh_prefix(test, functions);
    let b = backend(test, &prefix, config, functions).await?;
    Some((b, Cleanup(prefix)))
}

async fn publish(q: &dyn Queue, queue: &str, m: Message) -> Published {
    t("publish", q.publish_unique(queue, m))
        .await
        .expect("publish")
}

async fn receive_one(q: &dyn Queue, queue: &str) -> courier_core::Delivery {
    t("receive", q.receive_one(queue, Duration::from_secs(5)))
        .await
        .expect("receive")
        .expect("a message is ready")
}

async fn stats(q: &dyn Queue, queue: &str) -> courier_core::QueueStats {
    t("stats", q.stats(queue)).await.expect("stats")
}

/// Publish `m` (a fresh copy each time) until it is stored, at most for `within`; how many
/// tries were duplicates of `holder` first.
async fn publish_until_stored(
    q: &dyn Queue,
    queue: &str,
    m: impl Fn() -> Message,
    holder: MessageId,
    within: Duration,
) -> (MessageId, u32) {
    let end = Instant::now() + within;
    let mut dups = 0;
    loop {
        match publish(q, queue, m()).await {
            Published::Stored(id) => return (id, dups),
            Published::Duplicate(h) => {
                assert_eq!(h, holder, "the duplicate names the holder");
                dups += 1;
            }
        }
        assert!(
            Instant::now() < end,
            "the key was still taken after {within:?}"
        );
        // Pacing between tries, not synchronisation: the loop ends on the outcome.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Run `case` through Redis Functions and through `EVALSHA` bodies.
macro_rules! both_paths {
    ($($name:ident => $case:ident;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $case(true).await;
                $case(false).await;
            }
        )*
    };
}

both_paths! {
    a_live_key_blocks_its_duplicates => live_key_blocks;
    an_ack_frees_the_key_without_a_window => ack_frees;
    a_window_holds_the_key_after_the_ack_until_it_passes => window_holds;
    a_batch_is_decided_in_order => batch_in_order;
    an_expired_last_lease_frees_the_key => expired_lease_frees;
    a_dead_letter_frees_its_key_and_a_requeue_retakes_it => dead_letter_and_requeue;
    racing_publishers_of_one_key_store_one_message => racing_publishers;
    a_keyed_message_is_delivered_like_any_other => keyed_behaves_as_unkeyed;
}

async fn live_key_blocks(functions: bool) {
    let Some((b, _c)) = open("live", config(), functions).await else {
        return;
    };
    let q: &dyn Queue = &b;
    let first = publish(q, "jobs", keyed("order-1", "a")).await;
    let Published::Stored(a) = first else {
        panic!("the first message is stored: {first:?}")
    };
    assert_eq!(
        publish(q, "jobs", keyed("order-1", "b")).await,
        Published::Duplicate(a)
    );
    // Another key, and no key, are not affected.
    assert!(
        !publish(q, "jobs", keyed("order-2", "c"))
            .await
            .is_duplicate()
    );
    assert!(
        !publish(q, "jobs", Message::new("k", "d"))
            .await
            .is_duplicate()
    );
    let st = stats(q, "jobs").await;
    assert_eq!((st.published, st.deduplicated, st.ready_total()), (3, 1, 3));
    // Leased: still live, still held.
    let d = receive_one(q, "jobs").await;
    assert_eq!(d.message.id, a);
    assert_eq!(d.message.dedup_key.as_deref(), Some("order-1"));
    assert_eq!(
        publish(q, "jobs", keyed("order-1", "e")).await,
        Published::Duplicate(a)
    );
    assert_eq!(stats(q, "jobs").await.deduplicated, 2);
    // Another queue has keys of its own.
    assert!(
        !publish(q, "other", keyed("order-1", "f"))
            .await
            .is_duplicate()
    );
}

async fn ack_frees(functions: bool) {
    let Some((b, c)) = open("ack", config(), functions).await else {
        return;
    };
    let q: &dyn Queue = &b;
    let a = publish(q, "jobs", keyed("k1", "a")).await.id();
    let d = receive_one(q, "jobs").await;
    assert_eq!(d.message.id, a);
    // All acks: the settle fast path.
    t("ack", q.ack("jobs", &d.lease)).await.expect("ack");
    let second = publish(q, "jobs", keyed("k1", "b")).await;
    assert!(
        matches!(second, Published::Stored(id) if id != a),
        "{second:?}"
    );
    // A mixed batch (ack and retry): the other path frees the key too.
    let other = publish(q, "jobs", keyed("k2", "c")).await.id();
    let got = t("receive", q.receive("jobs", 2, Duration::from_secs(5)))
        .await
        .expect("receive");
    assert_eq!(got.len(), 2);
    let (k1, k2) = if got[0].message.id == other {
        (&got[1], &got[0])
    } else {
        (&got[0], &got[1])
    };
    let res = t(
        "settle",
        q.settle(
            "jobs",
            vec![
                Settle::Ack(k2.lease),
                Settle::Retry {
                    lease: k1.lease,
                    delay: Duration::ZERO,
                    error: "again".into(),
                },
            ],
        ),
    )
    .await
    .expect("settle");
    assert!(res.iter().all(Result::is_ok));
    assert!(!publish(q, "jobs", keyed("k2", "d")).await.is_duplicate());
    // The retried one is live again: it still holds k1.
    assert_eq!(
        publish(q, "jobs", keyed("k1", "e")).await,
        Published::Duplicate(k1.message.id)
    );
    // Everything acked without a window: no holder record is left behind.
    loop {
        let got = t("receive", q.receive("jobs", 10, Duration::ZERO))
            .await
            .expect("receive");
        if got.is_empty() {
            break;
        }
        let ops = got.iter().map(|d| Settle::Ack(d.lease)).collect();
        t("ack", q.settle("jobs", ops)).await.expect("ack");
    }
    let mut raw = raw().await;
    let held = size(&mut raw, "EXISTS", c.key("jobs", "dedup")).await;
    assert_eq!(held, 0, "no key is held");
}

async fn raw() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url()).expect("client");
    t("raw connection", client.get_multiplexed_async_connection())
        .await
        .expect("raw connection")
}

async fn window_holds(functions: bool) {
    let window = Duration::from_millis(600);
    let Some((b, c)) = open("window", config().with_dedup_window(window), functions).await else {
        return;
    };
    let q: &dyn Queue = &b;
    let started = Instant::now();
    let a = publish(q, "jobs", keyed("k", "a")).await.id();
    let d = receive_one(q, "jobs").await;
    t("ack", q.ack("jobs", &d.lease)).await.expect("ack");
    let after_ack = publish(q, "jobs", keyed("k", "b")).await;
    // Only meaningful when the machine was quick enough to ack within the window.
    if started.elapsed() < window / 2 {
        assert_eq!(after_ack, Published::Duplicate(a), "held by the window");
    }
    let (b_id, _) =
        publish_until_stored(q, "jobs", || keyed("k", "c"), a, Duration::from_secs(10)).await;
    assert!(
        started.elapsed() >= window,
        "freed only once the window passed ({:?})",
        started.elapsed()
    );
    assert_ne!(b_id, a);
    // The new holder is live and has a window of its own.
    assert_eq!(
        publish(q, "jobs", keyed("k", "d")).await,
        Published::Duplicate(b_id)
    );

    // No unbounded growth: many keys acked within their window are forgotten by later keyed
    // publishes once the window passed.
    let msgs: Vec<Message> = (0..50).map(|i| keyed(&format!("many-{i}"), "m")).collect();
    let published = Instant::now();
    t("publish", q.publish_batch("many", msgs))
        .await
        .expect("publish");
    let got = t("receive", q.receive("many", 50, Duration::from_secs(5)))
        .await
        .expect("receive");
    assert_eq!(got.len(), 50);
    let ops = got.iter().map(|d| Settle::Ack(d.lease)).collect();
    t("ack", q.settle("many", ops)).await.expect("ack");
    let mut raw = raw().await;
    if published.elapsed() < window / 2 {
        // Acked within the window: every key stays taken (not live) until it passes.
        assert_eq!(size(&mut raw, "HLEN", c.key("many", "dedup")).await, 50);
        assert_eq!(size(&mut raw, "ZCARD", c.key("many", "holds")).await, 50);
    }
    // Keyed publishes, once the windows passed, forget them all.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        publish(q, "many", keyed("last", "x")).await;
        if size(&mut raw, "HLEN", c.key("many", "dedup")).await == 1 {
            break;
        }
        assert!(Instant::now() < end, "the passed windows were not purged");
        // Pacing between tries, not synchronisation: the loop ends on what Redis holds.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(size(&mut raw, "ZCARD", c.key("many", "holds")).await <= 1);
}

/// The size of a key (`cmd` is HLEN or ZCARD).
async fn size(raw: &mut redis::aio::MultiplexedConnection, cmd: &str, key: String) -> i64 {
    t(cmd, redis::cmd(cmd).arg(key).query_async(raw))
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

async fn batch_in_order(functions: bool) {
    let Some((b, _c)) = open("batch", config(), functions).await else {
        return;
    };
    let q: &dyn Queue = &b;
    let batch = vec![
        keyed("k1", "a"),
        keyed("k2", "b"),
        keyed("k1", "c"),
        Message::new("plain", "d"),
        keyed("k2", "e"),
        Message::new("plain", "f").with_priority(Priority::High),
    ];
    let ids: Vec<MessageId> = batch.iter().map(|m| m.id).collect();
    let out = t("publish", q.publish_batch("jobs", batch))
        .await
        .expect("publish");
    assert_eq!(
        out,
        vec![
            Published::Stored(ids[0]),
            Published::Stored(ids[1]),
            Published::Duplicate(ids[0]),
            Published::Stored(ids[3]),
            Published::Duplicate(ids[1]),
            Published::Stored(ids[5]),
        ]
    );
    // Against stored ones, and a new key twice in one batch.
    let batch = vec![keyed("k1", "g"), keyed("k3", "h"), keyed("k3", "i")];
    let h = batch[1].id;
    let out = t("publish", q.publish_batch("jobs", batch))
        .await
        .expect("publish");
    assert_eq!(
        out,
        vec![
            Published::Duplicate(ids[0]),
            Published::Stored(h),
            Published::Duplicate(h),
        ]
    );
    let st = stats(q, "jobs").await;
    assert_eq!((st.published, st.deduplicated, st.ready_total()), (5, 4, 5));
    // Stored in batch order (per priority), duplicates nowhere.
    let got = t("receive", q.receive("jobs", 10, Duration::from_secs(5)))
        .await
        .expect("receive");
    let payloads: Vec<Vec<u8>> = got.iter().map(|d| d.message.payload.to_vec()).collect();
    assert_eq!(
        payloads,
        ["f", "a", "b", "d", "h"].map(|p| p.as_bytes().to_vec())
    );
}

async fn expired_lease_frees(functions: bool) {
    let cfg = config()
        .with_visibility_timeout(Duration::from_millis(200))
        .with_retry(RetryPolicy::exact(1, Duration::ZERO, 1.0, Duration::ZERO));
    let Some((b, _c)) = open("expired", cfg, functions).await else {
        return;
    };
    let q: &dyn Queue = &b;
    let a = publish(q, "jobs", keyed("k", "a")).await.id();
    let d = receive_one(q, "jobs").await;
    assert_eq!(d.message.id, a);
    // Never settled: the lease expires on the last attempt, and the keyed publish that finds
    // it so buries it first (as the reference model does), then stores.
    let (b_id, _) =
        publish_until_stored(q, "jobs", || keyed("k", "b"), a, Duration::from_secs(10)).await;
    let st = stats(q, "jobs").await;
    assert_eq!((st.dead, st.dead_lettered, st.ready_total()), (1, 1, 1));
    let dead = t("dead letter", q.dead_letter("jobs", a))
        .await
        .expect("dead letter");
    assert_eq!(dead.error, "lease expired");
    assert_eq!(dead.attempts, 1);
    assert_eq!(dead.message.dedup_key.as_deref(), Some("k"));
    assert_eq!(
        publish(q, "jobs", keyed("k", "c")).await,
        Published::Duplicate(b_id)
    );
}

async fn dead_letter_and_requeue(functions: bool) {
    let Some((b, _c)) = open("dead", config(), functions).await else {
        return;
    };
    let q: &dyn Queue = &b;
    // Buried: the key is free, the dead letter keeps it.
    let a = publish(q, "jobs", keyed("k", "a")).await.id();
    let d = receive_one(q, "jobs").await;
    t(
        "bury",
        q.settle_one(
            "jobs",
            Settle::Bury {
                lease: d.lease,
                error: "bad".into(),
            },
        ),
    )
    .await
    .expect("bury");
    let dead = t("dead letter", q.dead_letter("jobs", a))
        .await
        .expect("dead letter");
    assert_eq!(dead.message.dedup_key.as_deref(), Some("k"));
    // Requeued while nobody holds the key: it holds it again.
    let n = t("requeue", q.requeue_dead("jobs", Selection::Ids(vec![a])))
        .await
        .expect("requeue");
    assert_eq!(n, 1);
    assert_eq!(
        publish(q, "jobs", keyed("k", "b")).await,
        Published::Duplicate(a)
    );
    let d = receive_one(q, "jobs").await;
    assert_eq!((d.message.id, d.message.attempt), (a, 1), "attempts reset");
    assert_eq!(d.message.dedup_key.as_deref(), Some("k"));

    // Buried again; another message takes the key; the requeued one does not hold it then.
    t(
        "bury",
        q.settle_one(
            "jobs",
            Settle::Bury {
                lease: d.lease,
                error: "bad".into(),
            },
        ),
    )
    .await
    .expect("bury");
    let c_id = match publish(q, "jobs", keyed("k", "c")).await {
        Published::Stored(id) => id,
        other => panic!("the dead letter does not hold its key: {other:?}"),
    };
    t("requeue", q.requeue_dead("jobs", Selection::All))
        .await
        .expect("requeue");
    assert_eq!(
        publish(q, "jobs", keyed("k", "d")).await,
        Published::Duplicate(c_id)
    );
    // c is first in line; acking it frees the key although a (requeued, live) carries it.
    let d = receive_one(q, "jobs").await;
    assert_eq!(d.message.id, c_id);
    t("ack", q.ack("jobs", &d.lease)).await.expect("ack");
    let e = publish(q, "jobs", keyed("k", "e")).await;
    assert!(matches!(e, Published::Stored(_)), "{e:?}");
    // Acking a, which holds nothing, leaves e's hold alone.
    let d = receive_one(q, "jobs").await;
    assert_eq!(d.message.id, a);
    t("ack", q.ack("jobs", &d.lease)).await.expect("ack");
    assert_eq!(
        publish(q, "jobs", keyed("k", "f")).await,
        Published::Duplicate(e.id())
    );

    // Discarded (dead letters off) frees the key as well.
    let Some((b2, _c2)) = open("discard", config().with_dead_letter(false), functions).await else {
        return;
    };
    let q: &dyn Queue = &b2;
    let a = publish(q, "jobs", keyed("k", "a")).await.id();
    let d = receive_one(q, "jobs").await;
    assert_eq!(d.message.id, a);
    t(
        "bury",
        q.settle_one(
            "jobs",
            Settle::Bury {
                lease: d.lease,
                error: "bad".into(),
            },
        ),
    )
    .await
    .expect("bury");
    assert!(!publish(q, "jobs", keyed("k", "b")).await.is_duplicate());
    assert_eq!(stats(q, "jobs").await.dead, 0);
}

async fn racing_publishers(functions: bool) {
    let prefix = fresh_prefix("race", functions);
    let _c = Cleanup(prefix.clone());
    let mut handles = Vec::new();
    for _ in 0..8 {
        let Some(b) = backend("race", &prefix, config(), functions).await else {
            return;
        };
        handles.push(b);
    }
    for round in 0..5 {
        let key = format!("race-{round}");
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(handles.len()));
        let tasks: Vec<_> = handles
            .iter()
            .cloned()
            .map(|b| {
                let barrier = barrier.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    let m = keyed(&key, "x");
                    let id = m.id;
                    (id, b.publish_unique("jobs", m).await)
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            let (id, out) = t("publisher", task).await.expect("task");
            outcomes.push((id, out.expect("publish")));
        }
        let stored: Vec<MessageId> = outcomes
            .iter()
            .filter_map(|(_, o)| match o {
                Published::Stored(id) => Some(*id),
                Published::Duplicate(_) => None,
            })
            .collect();
        assert_eq!(stored.len(), 1, "exactly one stored: {outcomes:?}");
        for (id, o) in &outcomes {
            if *id != stored[0] {
                assert_eq!(*o, Published::Duplicate(stored[0]));
            }
        }
    }
    let st = stats(&handles[0], "jobs").await;
    assert_eq!(
        (st.published, st.deduplicated, st.ready_total()),
        (5, 35, 5)
    );
}

async fn keyed_behaves_as_unkeyed(functions: bool) {
    // Leases long enough to settle within on a loaded machine, short enough to expire twice.
    let cfg = config().with_visibility_timeout(Duration::from_millis(500));
    let Some((b, _c)) = open("alike", cfg, functions).await else {
        return;
    };
    let q: &dyn Queue = &b;
    // Priority: a keyed Critical message overtakes an unkeyed Low one.
    publish(
        q,
        "prio",
        Message::new("k", "low").with_priority(Priority::Low),
    )
    .await;
    publish(
        q,
        "prio",
        keyed("p", "critical").with_priority(Priority::Critical),
    )
    .await;
    let d = receive_one(q, "prio").await;
    assert_eq!(&d.message.payload[..], b"critical");
    assert_eq!(d.message.priority, Priority::Critical);

    // Delay: delayed and still holding its key, delivered once due.
    let started = Instant::now();
    let delayed = publish(
        q,
        "delay",
        keyed("d", "later").with_delay(Duration::from_millis(300)),
    )
    .await
    .id();
    let st = stats(q, "delay").await;
    assert_eq!((st.delayed, st.ready_total()), (1, 0));
    assert_eq!(
        publish(q, "delay", keyed("d", "again")).await,
        Published::Duplicate(delayed)
    );
    let d = receive_one(q, "delay").await;
    assert_eq!(d.message.id, delayed);
    assert!(started.elapsed() >= Duration::from_millis(290));

    // Attempts: a retry counts, keeps the key held, and the per-message max_attempts applies
    // when the lease expires (the third delivery's expiry buries it).
    let a = publish(q, "tries", keyed("t", "x").with_max_attempts(3))
        .await
        .id();
    let d = receive_one(q, "tries").await;
    assert_eq!((d.message.attempt, d.lease.attempt), (1, 1));
    t(
        "retry",
        q.settle_one(
            "tries",
            Settle::Retry {
                lease: d.lease,
                delay: Duration::ZERO,
                error: "e".into(),
            },
        ),
    )
    .await
    .expect("retry");
    assert_eq!(
        publish(q, "tries", keyed("t", "y")).await,
        Published::Duplicate(a)
    );
    let d = receive_one(q, "tries").await;
    assert_eq!((d.message.id, d.message.attempt), (a, 2));
    assert_eq!(d.message.max_attempts, Some(3));
    assert_eq!(d.message.dedup_key.as_deref(), Some("t"));
    // Released: the attempt does not count, the key stays held.
    t("release", q.release("tries", &d.lease))
        .await
        .expect("release");
    assert_eq!(
        publish(q, "tries", keyed("t", "y")).await,
        Published::Duplicate(a)
    );
    let d = receive_one(q, "tries").await;
    assert_eq!(d.message.attempt, 2);
    // Lease expires (attempt 2 of 3): retried by the server, still held.
    let d = t("receive", q.receive_one("tries", Duration::from_secs(5)))
        .await
        .expect("receive")
        .expect("redelivered after the lease expired");
    assert_eq!((d.message.id, d.message.attempt), (a, 3));
    // And the last lease expires: dead, key free.
    let (_, _) =
        publish_until_stored(q, "tries", || keyed("t", "z"), a, Duration::from_secs(10)).await;
    let dead = t("dead letter", q.dead_letter("tries", a))
        .await
        .expect("dead letter");
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.message.dedup_key.as_deref(), Some("t"));
    let st = stats(q, "tries").await;
    assert_eq!((st.retried, st.dead_lettered), (2, 1));
}
