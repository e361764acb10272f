//! A seeded random workload driven through the memory backend (the reference model) and the
//! Redis backend side by side, comparing what each delivers, in which order, with which attempt
//! numbers, the stats after every step, and the dead letters at the end. Only operations whose
//! outcome does not depend on timing are used (no delays, no lease expiry). Some messages carry
//! deduplication keys (Q11) from a small pool, so publish outcomes (stored or duplicate of
//! which holder) are compared too; half the queues have a window far longer than the test.

use std::collections::HashMap;
use std::time::Duration;

use courier_core::{
    Delivery, Message, MessageId, Page, Priority, Queue, QueueConfig, RetryPolicy, Selection,
    Settle,
};
use courier_memory::MemoryBackend;
use courier_redis::RedisBackend;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn url() -> String {
    std::env::var("COURIER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn config() -> QueueConfig {
    QueueConfig::default()
        .with_visibility_timeout(Duration::from_secs(60))
        .with_retry(RetryPolicy::exact(3, Duration::ZERO, 1.0, Duration::ZERO))
}

fn summary(ds: &[Delivery]) -> Vec<(MessageId, u32, String)> {
    ds.iter()
        .map(|d| (d.message.id, d.message.attempt, d.message.kind.clone()))
        .collect()
}

#[tokio::test]
async fn random_workload_matches_the_reference_model() {
    let prefix = format!("courier-test:diff-{:08x}", rand::random::<u32>());
    let redis = match RedisBackend::builder()
        .url(url())
        .key_prefix(&prefix)
        .default_config(config())
        .build()
        .await
    {
        Ok(b) => b,
        Err(e) => {
            if std::env::var("COURIER_REQUIRE_BACKENDS").as_deref() == Ok("1") {
                panic!("Redis unreachable: {e}");
            }
            eprintln!("SKIPPED: Redis unreachable: {e}");
            return;
        }
    };
    let memory = MemoryBackend::builder().default_config(config()).build();
    let (mq, rq): (&dyn Queue, &dyn Queue) = (&memory, &redis);
    let backends = [mq, rq];
    let mut deduplicated = 0;
    for seed in 0..4u64 {
        let q = format!("diff{seed}");
        if seed >= 2 {
            let windowed = config().with_dedup_window(Duration::from_secs(3600));
            for b in backends {
                b.configure(&q, windowed).expect("configure");
            }
        }
        let mut rng = SmallRng::seed_from_u64(seed);
        // Leases held by the model, in delivery order; the Redis ones by message id.
        let mut held: Vec<Delivery> = Vec::new();
        let mut redis_held: HashMap<(MessageId, u32), Delivery> = HashMap::new();
        let mut n = 0;
        for step in 0..300 {
            match rng.random_range(0..10) {
                0..=2 => {
                    let k = rng.random_range(1..6);
                    let msgs: Vec<Message> = (0..k)
                        .map(|_| {
                            n += 1;
                            let p =
                                Priority::from_index(rng.random_range(0..4)).unwrap_or_default();
                            let mut m = Message::new(format!("m{n}"), vec![n as u8]);
                            m = m.with_priority(p);
                            if rng.random_bool(0.1) {
                                m = m.with_max_attempts(1);
                            }
                            if rng.random_bool(0.4) {
                                m = m.with_dedup_key(format!("key{}", rng.random_range(0..5)));
                            }
                            m
                        })
                        .collect();
                    let a = mq.publish_batch(&q, msgs.clone()).await.expect("m");
                    let b = rq.publish_batch(&q, msgs).await.expect("r");
                    assert_eq!(a, b, "seed {seed} step {step}: publish");
                }
                3..=5 => {
                    let max = rng.random_range(1..5);
                    let a = mq.receive(&q, max, Duration::ZERO).await.expect("m");
                    let b = rq.receive(&q, max, Duration::ZERO).await.expect("r");
                    assert_eq!(summary(&a), summary(&b), "seed {seed} step {step}: receive");
                    for d in b {
                        redis_held.insert((d.message.id, d.message.attempt), d);
                    }
                    held.extend(a);
                }
                _ => {
                    if held.is_empty() {
                        continue;
                    }
                    let k = rng.random_range(1..=held.len().min(4));
                    let mut ops_m = Vec::new();
                    let mut ops_r = Vec::new();
                    for _ in 0..k {
                        let i = rng.random_range(0..held.len());
                        let d = held.remove(i);
                        let r = redis_held
                            .remove(&(d.message.id, d.message.attempt))
                            .expect("same deliveries");
                        let kind = rng.random_range(0..4);
                        let op = |l| match kind {
                            0 => Settle::Ack(l),
                            1 => Settle::Retry {
                                lease: l,
                                delay: Duration::ZERO,
                                error: "retry".into(),
                            },
                            2 => Settle::Bury {
                                lease: l,
                                error: format!("bury {step}"),
                            },
                            _ => Settle::Release(l),
                        };
                        ops_m.push(op(d.lease));
                        ops_r.push(op(r.lease));
                        // Sometimes settle the same lease twice: LeaseLost on both.
                        if rng.random_bool(0.1) {
                            ops_m.push(Settle::Ack(d.lease));
                            ops_r.push(Settle::Ack(r.lease));
                        }
                    }
                    let a = mq.settle(&q, ops_m).await.expect("m");
                    let b = rq.settle(&q, ops_r).await.expect("r");
                    let oks = |v: &Vec<courier_core::Result<()>>| -> Vec<bool> {
                        v.iter().map(|r| r.is_ok()).collect()
                    };
                    assert_eq!(oks(&a), oks(&b), "seed {seed} step {step}: settle");
                }
            }
            if step % 50 == 49 {
                let which = if rng.random_bool(0.5) {
                    Selection::All
                } else {
                    let dead = mq.dead_letters(&q, Page::first(100)).await.expect("m");
                    Selection::Ids(dead.iter().step_by(2).map(|d| d.message.id).collect())
                };
                let a = mq.requeue_dead(&q, which.clone()).await.expect("m");
                let b = rq.requeue_dead(&q, which).await.expect("r");
                assert_eq!(a, b, "seed {seed} step {step}: requeue");
            }
            let a = mq.stats(&q).await.expect("m");
            let b = rq.stats(&q).await.expect("r");
            assert_eq!(a, b, "seed {seed} step {step}: stats");
            if step == 299 {
                deduplicated += b.deduplicated;
            }
        }
        let dl = |v: Vec<courier_core::DeadLetter>| -> Vec<(MessageId, u32, String, String)> {
            v.into_iter()
                .map(|d| (d.message.id, d.attempts, d.error, d.message.kind))
                .collect()
        };
        let a = dl(mq.dead_letters(&q, Page::first(1000)).await.expect("m"));
        let b = dl(rq.dead_letters(&q, Page::first(1000)).await.expect("r"));
        assert_eq!(a, b, "seed {seed}: dead letters");
        let a = mq.purge_dead(&q, Selection::All).await.expect("m");
        let b = rq.purge_dead(&q, Selection::All).await.expect("r");
        assert_eq!(a, b);
    }
    assert!(deduplicated > 0, "the workload met taken keys");
    // Clean up.
    if let Ok(client) = redis::Client::open(url())
        && let Ok(mut conn) = client.get_connection()
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{{{prefix}:*"))
            .query(&mut conn)
            .unwrap_or_default();
        for k in keys {
            let _: redis::RedisResult<i64> = redis::cmd("UNLINK").arg(k).query(&mut conn);
        }
    }
}

#[tokio::test]
async fn random_event_workload_matches_the_reference_model() {
    use courier_core::{EventBus, ReplayFrom, Retention};
    let prefix = format!("courier-test:diffe-{:08x}", rand::random::<u32>());
    let redis = match RedisBackend::builder()
        .url(url())
        .key_prefix(&prefix)
        .default_config(config())
        .build()
        .await
    {
        Ok(b) => b,
        Err(e) => {
            if std::env::var("COURIER_REQUIRE_BACKENDS").as_deref() == Ok("1") {
                panic!("Redis unreachable: {e}");
            }
            eprintln!("SKIPPED: Redis unreachable: {e}");
            return;
        }
    };
    let memory = MemoryBackend::builder().default_config(config()).build();
    let (mb, rb): (&dyn EventBus, &dyn EventBus) = (&memory, &redis);
    for seed in 0..3u64 {
        let t = format!("topic{seed}");
        let mut rng = SmallRng::seed_from_u64(100 + seed);
        if seed == 2 {
            let r = Retention {
                max_len: Some(25),
                max_age: None,
            };
            mb.set_retention(&t, r).expect("m");
            rb.set_retention(&t, r).expect("r");
        }
        let groups = ["g1", "g2"];
        let mut held: HashMap<&str, Vec<(Delivery, Delivery)>> = HashMap::new();
        let mut emitted: Vec<MessageId> = Vec::new();
        let mut n = 0;
        for step in 0..300 {
            let g = groups[rng.random_range(0..2)];
            match rng.random_range(0..12) {
                0..=2 => {
                    let k = rng.random_range(1..5);
                    let msgs: Vec<Message> = (0..k)
                        .map(|_| {
                            n += 1;
                            let m = Message::new(format!("e{n}"), vec![n as u8]);
                            // Groups never deduplicate: a keyed event is an event like any.
                            if rng.random_bool(0.2) {
                                m.with_dedup_key("event-key")
                            } else {
                                m
                            }
                        })
                        .collect();
                    emitted.extend(msgs.iter().map(|m| m.id));
                    mb.emit_batch(&t, msgs.clone()).await.expect("m");
                    rb.emit_batch(&t, msgs).await.expect("r");
                }
                3..=6 => {
                    let max = rng.random_range(1..5);
                    let a = mb.receive(&t, g, max, Duration::ZERO).await.expect("m");
                    let b = rb.receive(&t, g, max, Duration::ZERO).await.expect("r");
                    assert_eq!(summary(&a), summary(&b), "seed {seed} step {step}: receive");
                    held.entry(g).or_default().extend(a.into_iter().zip(b));
                }
                7..=10 => {
                    let list = held.entry(g).or_default();
                    if list.is_empty() {
                        continue;
                    }
                    let k = rng.random_range(1..=list.len().min(3));
                    let (mut ops_m, mut ops_r) = (Vec::new(), Vec::new());
                    for _ in 0..k {
                        let i = rng.random_range(0..list.len());
                        let (d, r) = list.remove(i);
                        let kind = rng.random_range(0..4);
                        let op = |l| match kind {
                            0 => Settle::Ack(l),
                            1 => Settle::Retry {
                                lease: l,
                                delay: Duration::ZERO,
                                error: "retry".into(),
                            },
                            2 => Settle::Bury {
                                lease: l,
                                error: format!("bury {step}"),
                            },
                            _ => Settle::Release(l),
                        };
                        ops_m.push(op(d.lease));
                        ops_r.push(op(r.lease));
                    }
                    let a = mb.settle(&t, g, ops_m).await.expect("m");
                    let b = rb.settle(&t, g, ops_r).await.expect("r");
                    let oks = |v: &Vec<courier_core::Result<()>>| -> Vec<bool> {
                        v.iter().map(|r| r.is_ok()).collect()
                    };
                    assert_eq!(oks(&a), oks(&b), "seed {seed} step {step}: settle");
                }
                _ => {
                    let from = match rng.random_range(0..3) {
                        0 => ReplayFrom::Start,
                        1 => ReplayFrom::End,
                        _ => match emitted.get(rng.random_range(0..emitted.len().max(1))) {
                            Some(id) => ReplayFrom::Id(*id),
                            None => ReplayFrom::Start,
                        },
                    };
                    let a = mb.reset_group(&t, g, from).await;
                    let b = rb.reset_group(&t, g, from).await;
                    assert_eq!(
                        a.as_ref().map_err(|e| e.kind()),
                        b.as_ref().map_err(|e| e.kind()),
                        "seed {seed} step {step}: reset {from:?}"
                    );
                    held.remove(g);
                }
            }
            for g in groups {
                let a = mb.group_stats(&t, g).await.expect("m");
                let b = rb.group_stats(&t, g).await.expect("r");
                assert_eq!(a, b, "seed {seed} step {step}: stats of {g}");
            }
            assert_eq!(
                mb.topic_len(&t).await.expect("m"),
                rb.topic_len(&t).await.expect("r")
            );
        }
        for g in groups {
            let dl = |v: Vec<courier_core::DeadLetter>| -> Vec<(MessageId, u32, String)> {
                v.into_iter()
                    .map(|d| (d.message.id, d.attempts, d.error))
                    .collect()
            };
            let a = dl(mb.dead_letters(&t, g, Page::first(1000)).await.expect("m"));
            let b = dl(rb.dead_letters(&t, g, Page::first(1000)).await.expect("r"));
            assert_eq!(a, b, "seed {seed}: dead letters of {g}");
        }
    }
    if let Ok(client) = redis::Client::open(url())
        && let Ok(mut conn) = client.get_connection()
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{{{prefix}:*"))
            .query(&mut conn)
            .unwrap_or_default();
        for k in keys {
            let _: redis::RedisResult<i64> = redis::cmd("UNLINK").arg(k).query(&mut conn);
        }
    }
}
