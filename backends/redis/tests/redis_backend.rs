//! Redis-specific tests: behaviour the conformance suite cannot see (wake-up latency, the
//! wire format in Redis, connection loss on a private server, password redaction).
//! Each test works under its own key prefix on the shared server and removes its keys.

use std::time::{Duration, Instant};

use courier_core::{
    ErrorKind, EventBus, EventBusExt, Message, Priority, PubSub, Queue, QueueConfig, QueueExt,
    RetryPolicy, Selection, SubscribeOptions,
};
use courier_redis::RedisBackend;

fn url() -> String {
    std::env::var("COURIER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn prefix() -> String {
    format!(
        "courier-test:{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// A backend on the shared server, or `None` (skipped loudly) when it cannot be reached.
async fn backend(config: QueueConfig) -> Option<(RedisBackend, Cleanup)> {
    let p = prefix();
    match RedisBackend::builder()
        .url(url())
        .key_prefix(&p)
        .default_config(config)
        .build()
        .await
    {
        Ok(b) => Some((b, Cleanup(p))),
        Err(e) => {
            if std::env::var("COURIER_REQUIRE_BACKENDS").as_deref() == Ok("1") {
                panic!("Redis unreachable and COURIER_REQUIRE_BACKENDS=1: {e}");
            }
            eprintln!("SKIPPED: Redis unreachable: {e}");
            None
        }
    }
}

/// Deletes the test's keys when dropped.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(url()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let pattern = format!("{{{}:*", self.0);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query(&mut conn)
            .unwrap_or_default();
        for k in keys {
            let _: redis::RedisResult<i64> = redis::cmd("UNLINK").arg(k).query(&mut conn);
        }
    }
}

fn quick() -> QueueConfig {
    QueueConfig::default()
        .with_visibility_timeout(Duration::from_millis(300))
        .with_retry(RetryPolicy::exact(
            3,
            Duration::from_millis(50),
            2.0,
            Duration::from_millis(1000),
        ))
}

#[tokio::test]
async fn queue_round_trip_priorities_and_leases() {
    let Some((backend, _c)) = backend(quick()).await else {
        return;
    };
    let b: &dyn Queue = &backend;
    let q = "tasks";
    b.publish(q, Message::new("low", "1").with_priority(Priority::Low))
        .await
        .expect("publish");
    b.publish(q, Message::new("n1", "2"))
        .await
        .expect("publish");
    b.publish(q, Message::new("n2", "3"))
        .await
        .expect("publish");
    b.publish(
        q,
        Message::new("crit", "4").with_priority(Priority::Critical),
    )
    .await
    .expect("publish");
    let got = b.receive(q, 10, Duration::ZERO).await.expect("receive");
    let kinds: Vec<&str> = got.iter().map(|d| d.message.kind.as_str()).collect();
    assert_eq!(kinds, ["crit", "n1", "n2", "low"]);
    assert!(got.iter().all(|d| d.message.attempt == 1));
    let st = b.stats(q).await.expect("stats");
    assert_eq!((st.in_flight, st.published), (4, 4));
    b.ack(q, &got[0].lease).await.expect("ack");
    let again = b.ack(q, &got[0].lease).await.expect_err("double ack");
    assert_eq!(again.kind(), ErrorKind::LeaseLost);
    b.release(q, &got[1].lease).await.expect("release");
    let d = b
        .receive_one(q, Duration::ZERO)
        .await
        .expect("receive")
        .expect("released message");
    assert_eq!((d.message.kind.as_str(), d.message.attempt), ("n1", 1));
    // Lease expiry: n2 and low were never settled.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let stale = b.ack(q, &got[2].lease).await.expect_err("expired");
    assert_eq!(stale.kind(), ErrorKind::LeaseLost);
    let st = b.stats(q).await.expect("stats");
    assert_eq!(st.retried, 3, "{st:?}");
    let back = b
        .receive(q, 10, Duration::from_secs(2))
        .await
        .expect("receive");
    assert!(back.iter().all(|d| d.message.attempt == 2), "{back:?}");
}

#[tokio::test]
async fn idle_receive_wakes_on_publish_and_on_due_time() {
    let Some((backend, _c)) = backend(quick()).await else {
        return;
    };
    let b: &dyn Queue = &backend;
    let b2: std::sync::Arc<dyn Queue> = std::sync::Arc::new(backend.clone());
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        let d = b2.receive_one("w", Duration::from_secs(5)).await;
        (d, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    b.publish("w", Message::new("k", ""))
        .await
        .expect("publish");
    let (d, _) = waiter.await.expect("join");
    assert!(d.expect("receive").is_some());
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );

    // A delayed message wakes the waiter at its due time, not at the end of the wait.
    b.publish_in("w", Message::new("late", ""), Duration::from_millis(300))
        .await
        .expect("publish");
    let t = Instant::now();
    let d = b
        .receive_one("w", Duration::from_secs(5))
        .await
        .expect("receive")
        .expect("due");
    let took = t.elapsed();
    assert_eq!(d.message.kind, "late");
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(400),
        "{took:?}"
    );
}

#[tokio::test]
async fn dead_letters_requeue_and_purge() {
    let Some((backend, _c)) = backend(quick()).await else {
        return;
    };
    let b: &dyn Queue = &backend;
    let q = "dl";
    let id = b.publish(q, Message::new("k", "x")).await.expect("publish");
    for attempt in 1..=3 {
        let d = b
            .receive_one(q, Duration::from_secs(2))
            .await
            .expect("receive")
            .expect("message");
        assert_eq!(d.message.attempt, attempt);
        b.nack(q, &d, &format!("boom {attempt}"))
            .await
            .expect("nack");
    }
    let dead = b.dead_letter(q, id).await.expect("dead");
    assert_eq!((dead.attempts, dead.error.as_str()), (3, "boom 3"));
    assert_eq!(dead.message.payload.as_ref(), b"x");
    assert_eq!(b.stats(q).await.expect("stats").dead, 1);
    assert_eq!(
        b.requeue_dead(q, Selection::Ids(vec![id]))
            .await
            .expect("requeue"),
        1
    );
    let d = b
        .receive_one(q, Duration::ZERO)
        .await
        .expect("receive")
        .expect("requeued");
    assert_eq!((d.message.id, d.message.attempt), (id, 1));
    b.fail(q, &d, "final", courier_core::FailureMode::Permanent)
        .await
        .expect("bury");
    assert_eq!(b.purge_dead(q, Selection::All).await.expect("purge"), 1);
    let st = b.stats(q).await.expect("stats");
    assert_eq!(st.stored(), 0, "{st:?}");
}

#[tokio::test]
async fn big_batches_use_few_round_trips() {
    let Some((backend, _c)) = backend(QueueConfig::default()).await else {
        return;
    };
    let b: &dyn Queue = &backend;
    let n = 5000;
    let msgs: Vec<Message> = (0..n).map(|i| Message::new("k", format!("{i}"))).collect();
    b.publish_batch("big", msgs).await.expect("publish");
    let mut seen = 0;
    while seen < n {
        let got = b
            .receive("big", 1000, Duration::ZERO)
            .await
            .expect("receive");
        assert!(!got.is_empty());
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.message.payload, format!("{}", seen + i).into_bytes());
        }
        seen += got.len();
        let ops = got
            .into_iter()
            .map(|d| courier_core::Settle::Ack(d.lease))
            .collect();
        let res = b.settle("big", ops).await.expect("settle");
        assert!(res.iter().all(|r| r.is_ok()));
    }
    let st = b.stats("big").await.expect("stats");
    assert_eq!((st.acked, st.stored()), (n as u64, 0));
}

#[tokio::test]
async fn events_groups_and_replay() {
    let Some((backend, _c)) = backend(quick()).await else {
        return;
    };
    let b: &dyn EventBus = &backend;
    for i in 0..5 {
        b.emit("meeting.created", Message::new("e", format!("{i}")))
            .await
            .expect("emit");
    }
    for g in ["billing", "audit"] {
        let got = b
            .receive("meeting.created", g, 10, Duration::ZERO)
            .await
            .expect("receive");
        let payloads: Vec<_> = got.iter().map(|d| d.message.payload.clone()).collect();
        assert_eq!(payloads.len(), 5, "{g}");
        for d in &got {
            b.ack("meeting.created", g, &d.lease).await.expect("ack");
        }
    }
    let st = b
        .group_stats("meeting.created", "billing")
        .await
        .expect("stats");
    assert_eq!((st.lag, st.queue.acked, st.queue.in_flight), (0, 5, 0));
    b.reset_group(
        "meeting.created",
        "billing",
        courier_core::ReplayFrom::Start,
    )
    .await
    .expect("reset");
    let st = b
        .group_stats("meeting.created", "billing")
        .await
        .expect("stats");
    assert_eq!(st.lag, 5);
    // A waiting group consumer wakes on emit.
    let b2 = backend.clone();
    let waiter = tokio::spawn(async move {
        EventBus::receive(&b2, "meeting.created", "audit", 1, Duration::from_secs(5)).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    b.emit("meeting.created", Message::new("e", "new"))
        .await
        .expect("emit");
    let got = waiter.await.expect("join").expect("receive");
    assert_eq!(got.len(), 1);
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn pubsub_patterns_filter_exactly() {
    let Some((backend, _c)) = backend(QueueConfig::default()).await else {
        return;
    };
    let b: &dyn PubSub = &backend;
    let mut one = b
        .subscribe("a.*", SubscribeOptions::default())
        .await
        .expect("subscribe");
    let mut rest = b
        .subscribe("a.>", SubscribeOptions::default())
        .await
        .expect("subscribe");
    b.publish("a.b", Message::new("1", ""))
        .await
        .expect("publish");
    b.publish("a.b.c", Message::new("2", ""))
        .await
        .expect("publish");
    let wait = Duration::from_secs(2);
    assert_eq!(
        one.next_timeout(wait).await.map(|m| m.kind),
        Some("1".into())
    );
    assert_eq!(
        rest.next_timeout(wait).await.map(|m| m.kind),
        Some("1".into())
    );
    assert_eq!(
        rest.next_timeout(wait).await.map(|m| m.kind),
        Some("2".into())
    );
    assert!(one.next_timeout(Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn passwords_never_show() {
    let err = RedisBackend::from_url("redis://user:s3cret@127.0.0.1:1/0")
        .await
        .expect_err("nothing listens on port 1");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    let text = format!("{err} {err:?}");
    assert!(!text.contains("s3cret"), "{text}");
    let builder = RedisBackend::builder().url("redis://:s3cret@localhost");
    assert!(!format!("{builder:?}").contains("s3cret"));
    let bad = RedisBackend::from_url("http://:s3cret@localhost")
        .await
        .expect_err("not redis");
    assert_eq!(bad.kind(), ErrorKind::InvalidInput);
    assert!(!format!("{bad} {bad:?}").contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_runs_retries_dead_letters_and_stops_gracefully() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    let Some((backend, _c)) = backend(quick()).await else {
        return;
    };
    let q: Arc<dyn Queue> = Arc::new(backend.clone());
    let n = 200u32;
    let msgs: Vec<Message> = (0..n)
        .map(|i| {
            let kind = match i % 10 {
                0 => "flaky",
                1 => "doomed",
                2 => "unknown",
                _ => "ok",
            };
            Message::new(kind, format!("{i}"))
        })
        .collect();
    q.publish_batch("work", msgs).await.expect("publish");
    let flaky_seen = Arc::new(AtomicU32::new(0));
    let fs = flaky_seen.clone();
    let worker = courier_core::Worker::builder(q.clone(), "work")
        .concurrency(8)
        .idle_wait(Duration::from_millis(200))
        .handler("ok", |_m| async { Ok(()) })
        .handler("flaky", move |m| {
            let fs = fs.clone();
            async move {
                fs.fetch_add(1, Ordering::Relaxed);
                if m.attempt < 2 {
                    Err(courier_core::HandlerError::retry("first try fails"))
                } else {
                    Ok(())
                }
            }
        })
        .handler("doomed", |_m| async { panic!("always") })
        .start()
        .expect("start");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let st = q.stats("work").await.expect("stats");
        if st.acked + st.dead == u64::from(n) {
            break;
        }
        assert!(Instant::now() < end, "worker did not finish: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = worker.stop(Duration::from_secs(1)).await;
    let st = q.stats("work").await.expect("stats");
    // 20 flaky (2 deliveries each), 20 doomed (3 deliveries, then dead), 20 unknown (dead).
    assert_eq!((st.acked, st.dead, st.in_flight), (160, 40, 0), "{st:?}");
    assert_eq!(st.retried, 20 + 40, "{st:?}");
    assert_eq!(flaky_seen.load(Ordering::Relaxed), 40);
    assert_eq!(report.stats.panicked, 60);
    let dead = q
        .dead_letters("work", courier_core::Page::first(100))
        .await
        .expect("dead");
    assert!(dead.iter().any(|d| d.error.contains("no handler for kind")));
    assert!(
        dead.iter()
            .any(|d| d.error.contains("always") && d.attempts == 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_receive_strands_nothing() {
    let Some((backend, _c)) = backend(QueueConfig::default()).await else {
        return;
    };
    let q: &dyn Queue = &backend;
    let mut received = 0u64;
    for i in 0..200u64 {
        q.publish("cancel", Message::new("k", ""))
            .await
            .expect("publish");
        // Cancel at varying points: before, during and after the claim script.
        let cut = Duration::from_micros(i * 13 % 1500);
        if let Ok(got) =
            tokio::time::timeout(cut, q.receive("cancel", 1, Duration::from_secs(1))).await
        {
            for d in got.expect("receive") {
                q.ack("cancel", &d.lease).await.expect("ack");
                received += 1;
            }
        }
    }
    // Whatever a cancelled receive leased is released by its task right after.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let st = q.stats("cancel").await.expect("stats");
        if st.in_flight == 0 {
            assert_eq!(st.ready_total() + received, 200, "{st:?}");
            assert_eq!(st.retried, 0, "a release is not a failed attempt: {st:?}");
            break;
        }
        assert!(Instant::now() < end, "leases stranded: {st:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn undecodable_entries_go_to_dead_letters_and_consumers_go_on() {
    use courier_core::EventBus;
    let Some((backend, _c)) = backend(quick()).await else {
        return;
    };
    let q: &dyn Queue = &backend;
    let bad = backend
        .inject_raw("q10", b"\x00garbage")
        .await
        .expect("inject");
    q.publish("q10", Message::new("good", ""))
        .await
        .expect("publish");
    let got = q
        .receive("q10", 10, Duration::from_secs(1))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message.kind, "good");
    let dead = q.dead_letter("q10", bad).await.expect("dead letter");
    assert!(dead.error.contains("undecodable"), "{}", dead.error);
    assert_eq!(dead.message.payload.as_ref(), b"\x00garbage");

    let bus: &dyn EventBus = &backend;
    let bad = backend
        .inject_raw_event("t10", b"nope")
        .await
        .expect("inject");
    bus.emit_batch("t10", vec![Message::new("good", "")])
        .await
        .expect("emit");
    let got = bus
        .receive("t10", "g", 10, Duration::from_secs(1))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message.kind, "good");
    let dead = bus
        .dead_letters("t10", "g", courier_core::Page::first(10))
        .await
        .expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, bad);
    assert!(dead[0].error.contains("undecodable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_leases_follow_the_backoff_then_dead_letter() {
    let config = QueueConfig::default()
        .with_visibility_timeout(Duration::from_millis(200))
        .with_retry(RetryPolicy::exact(
            3,
            Duration::from_millis(100),
            2.0,
            Duration::from_secs(1),
        ));
    let Some((backend, _c)) = backend(config).await else {
        return;
    };
    let q: &dyn Queue = &backend;
    let id = q
        .publish("exp", Message::new("k", ""))
        .await
        .expect("publish");
    let t0 = Instant::now();
    let d1 = q
        .receive_one("exp", Duration::from_secs(2))
        .await
        .expect("receive")
        .expect("first");
    assert_eq!(d1.message.attempt, 1);
    // Lease 200 ms, then backoff 100 ms: due again ~300 ms after the first delivery.
    let d2 = q
        .receive_one("exp", Duration::from_secs(2))
        .await
        .expect("receive")
        .expect("second");
    let t2 = t0.elapsed();
    assert_eq!(d2.message.attempt, 2);
    assert!(
        t2 >= Duration::from_millis(295) && t2 < Duration::from_millis(380),
        "{t2:?}"
    );
    // Then lease 200 ms + backoff 200 ms.
    let d3 = q
        .receive_one("exp", Duration::from_secs(2))
        .await
        .expect("receive")
        .expect("third");
    let t3 = t0.elapsed() - t2;
    eprintln!("redelivered after {t2:?}, then after {t3:?} (expected 300 ms, 400 ms)");
    assert_eq!(d3.message.attempt, 3);
    assert!(
        t3 >= Duration::from_millis(395) && t3 < Duration::from_millis(480),
        "{t3:?}"
    );
    // The last lease expires: dead letter "lease expired", counted once per failure.
    assert!(
        q.receive_one("exp", Duration::from_millis(400))
            .await
            .expect("receive")
            .is_none()
    );
    let dead = q.dead_letter("exp", id).await.expect("dead");
    assert_eq!((dead.error.as_str(), dead.attempts), ("lease expired", 3));
    let st = q.stats("exp").await.expect("stats");
    assert_eq!(
        (st.retried, st.dead_lettered, st.stored()),
        (2, 1, 1),
        "{st:?}"
    );
}

#[tokio::test]
async fn replay_from_a_time_and_retention_by_age() {
    use courier_core::{EventBus, ReplayFrom, Retention};
    let Some((backend, _c)) = backend(quick()).await else {
        return;
    };
    let bus: &dyn EventBus = &backend;
    bus.emit_batch("r", vec![Message::new("old", "")])
        .await
        .expect("emit");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let t = backend.clock().now_ms();
    tokio::time::sleep(Duration::from_millis(30)).await;
    bus.emit_batch("r", vec![Message::new("new", "")])
        .await
        .expect("emit");
    bus.reset_group("r", "g", ReplayFrom::Time(t))
        .await
        .expect("reset");
    let got = bus
        .receive("r", "g", 10, Duration::ZERO)
        .await
        .expect("receive");
    let kinds: Vec<_> = got.iter().map(|d| d.message.kind.as_str()).collect();
    assert_eq!(kinds, ["new"]);
    bus.reset_group("r", "g", ReplayFrom::End)
        .await
        .expect("reset");
    assert_eq!(bus.group_stats("r", "g").await.expect("stats").lag, 0);
    // Retention by age applies on reads too, without new appends.
    bus.set_retention(
        "r",
        Retention {
            max_len: None,
            max_age: Some(Duration::from_millis(100)),
        },
    )
    .expect("retention");
    assert_eq!(bus.topic_len("r").await.expect("len"), 2);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(bus.topic_len("r").await.expect("len"), 0);
}

#[tokio::test]
async fn pubsub_isolation_unsubscribe_and_slow_subscribers() {
    let Some((a, _ca)) = backend(QueueConfig::default()).await else {
        return;
    };
    let Some((b, _cb)) = backend(QueueConfig::default()).await else {
        return;
    };
    let (pa, pb): (&dyn PubSub, &dyn PubSub) = (&a, &b);
    let mut in_a = pa
        .subscribe("room.>", SubscribeOptions { buffer: 2 })
        .await
        .expect("subscribe");
    let mut in_b = pb
        .subscribe("room.>", SubscribeOptions::default())
        .await
        .expect("subscribe");
    // Another key prefix is another namespace: nothing leaks.
    pb.publish("room.1", Message::new("b-only", ""))
        .await
        .expect("publish");
    assert_eq!(
        in_b.next_timeout(Duration::from_secs(2))
            .await
            .map(|m| m.kind),
        Some("b-only".into())
    );
    // A slow subscriber keeps the newest messages and counts the dropped ones.
    for i in 0..5 {
        pa.publish("room.x", Message::new(format!("m{i}"), ""))
            .await
            .expect("publish");
    }
    let end = Instant::now() + Duration::from_secs(2);
    while in_a.dropped() < 3 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(in_a.dropped(), 3);
    assert_eq!(in_a.try_next().map(|m| m.kind), Some("m3".into()));
    assert_eq!(in_a.try_next().map(|m| m.kind), Some("m4".into()));
    assert!(in_b.try_next().is_none());
    // After unsubscribe nothing arrives; the count of local subscribers drops to 0.
    in_a.unsubscribe();
    assert_eq!(
        pa.publish("room.x", Message::new("late", ""))
            .await
            .expect("publish"),
        0
    );
}

/// The keys under a test prefix whose names end with `suffix`.
fn keys_ending(prefix: &str, suffix: &str) -> Vec<String> {
    let Ok(client) = redis::Client::open(url()) else {
        return Vec::new();
    };
    let Ok(mut conn) = client.get_connection() else {
        return Vec::new();
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}:*"))
        .query(&mut conn)
        .unwrap_or_default();
    keys.into_iter().filter(|k| k.ends_with(suffix)).collect()
}

/// Flow control (issue 18) costs an unpaused, unlimited queue one read of a key that does not
/// exist: the control hash is there only while a pause or a limit is in force, and the window
/// count expires a few windows after the last lease it counted.
#[tokio::test]
async fn flow_control_keys_exist_only_while_in_force() {
    use courier_core::RateLimit;
    let Some((backend, c)) = backend(quick()).await else {
        return;
    };
    let b: &dyn Queue = &backend;
    b.publish("fc", Message::new("k", ""))
        .await
        .expect("publish");
    let d = b
        .receive_one("fc", Duration::from_secs(1))
        .await
        .expect("receive")
        .expect("one");
    b.ack("fc", &d.lease).await.expect("ack");
    assert!(keys_ending(&c.0, ":ctl").is_empty(), "no control hash");
    assert!(keys_ending(&c.0, ":rate").is_empty(), "no window count");

    b.pause("fc").await.expect("pause");
    assert_eq!(keys_ending(&c.0, ":ctl").len(), 1);
    b.resume("fc").await.expect("resume");
    assert!(keys_ending(&c.0, ":ctl").is_empty(), "resume removes it");

    let limit = RateLimit::new(10, Duration::from_millis(700));
    b.set_rate_limit("fc", Some(limit)).await.expect("limit");
    b.publish("fc", Message::new("k", ""))
        .await
        .expect("publish");
    let d = b
        .receive_one("fc", Duration::from_secs(1))
        .await
        .expect("receive")
        .expect("one");
    b.ack("fc", &d.lease).await.expect("ack");
    let rate = keys_ending(&c.0, ":rate");
    assert_eq!(rate.len(), 1, "the window count");
    let client = redis::Client::open(url()).expect("client");
    let mut conn = client.get_connection().expect("connection");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&rate[0])
        .query(&mut conn)
        .expect("pttl");
    assert!(
        ttl > 0 && ttl <= 3 * 700,
        "expires within 3 windows: {ttl} ms"
    );
    assert_eq!(b.stats("fc").await.expect("stats").rate_limit, Some(limit));
    b.set_rate_limit("fc", None).await.expect("clear");
    assert!(keys_ending(&c.0, ":ctl").is_empty(), "clearing removes it");
    assert!(
        !b.stats("fc").await.expect("stats").paused,
        "and stats say so"
    );
}

/// A spent rate-limit window holds receivers until the next window starts, and they wake at
/// that instant (a due time, timed like a delayed message's), not at the end of their wait.
#[tokio::test]
async fn a_spent_window_wakes_receivers_when_the_next_starts() {
    use courier_core::RateLimit;
    let Some((backend, _c)) = backend(QueueConfig::default()).await else {
        return;
    };
    let b: &dyn Queue = &backend;
    let limit = RateLimit::new(1, Duration::from_millis(400));
    b.set_rate_limit("win", Some(limit)).await.expect("limit");
    for i in 0..3 {
        b.publish("win", Message::new("k", i.to_string()))
            .await
            .expect("publish");
    }
    let visibility = 30_000; // QueueConfig::default()
    let mut last_window = None;
    for _ in 0..3 {
        let d = b
            .receive_one("win", Duration::from_secs(5))
            .await
            .expect("receive")
            .expect("one per window");
        // The server's time at the lease.
        let at = d.lease.deadline_ms - visibility;
        let w = limit.window_start(at);
        if let Some(prev) = last_window {
            assert!(w > prev, "one per window");
            // Leased within 40 ms of the window's start: woken at the boundary.
            assert!(at - w < 40, "leased {} ms into its window", at - w);
        }
        last_window = Some(w);
        b.ack("win", &d.lease).await.expect("ack");
    }
}
