//! The same seeded workload through the reference model (memory) and SQLite: what is
//! delivered, in which order, with which attempt numbers, and what ends in dead letters must
//! be identical. No timing is involved (zero backoff, long leases), so it is exact.

use std::time::Duration;

use courier_core::{
    EventBus, FailureMode, Message, Page, Priority, Queue, QueueConfig, QueueExt, RetryPolicy,
    Selection, Settle,
};
use courier_memory::MemoryBackend;
use courier_sqlite::SqliteBackend;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn config() -> QueueConfig {
    QueueConfig::default()
        .with_visibility_timeout(Duration::from_secs(600))
        .with_retry(RetryPolicy::exact(3, Duration::ZERO, 2.0, Duration::ZERO))
}

/// Run the workload on one backend and return a trace of everything observable.
async fn run(q: &dyn Queue, seed: u64) -> Vec<String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut trace = Vec::new();
    let mut held = Vec::new();
    let mut n = 0;
    for step in 0..400 {
        match rng.random_range(0..10) {
            0..=2 => {
                let batch = rng.random_range(1..4);
                let msgs: Vec<Message> = (0..batch)
                    .map(|_| {
                        n += 1;
                        let p = Priority::from_index(rng.random_range(0..4)).expect("p");
                        let mut m = Message::new(format!("m{n}"), "").with_priority(p);
                        if rng.random_range(0..8) == 0 {
                            m = m.with_max_attempts(1);
                        }
                        m
                    })
                    .collect();
                q.publish_batch("d", msgs).await.expect("publish");
            }
            3..=4 => {
                let max = rng.random_range(1..4);
                let ds = q.receive("d", max, Duration::ZERO).await.expect("receive");
                for d in ds {
                    trace.push(format!(
                        "{step} recv {} a{} l{}",
                        d.message.kind, d.message.attempt, d.lease.attempt
                    ));
                    held.push(d);
                }
            }
            _ if held.is_empty() => {}
            5 => {
                let d = held.remove(rng.random_range(0..held.len()));
                q.ack("d", &d.lease).await.expect("ack");
                let e = q.ack("d", &d.lease).await.expect_err("double ack");
                trace.push(format!("{step} ack {} {:?}", d.message.kind, e.kind()));
            }
            6 => {
                let d = held.remove(rng.random_range(0..held.len()));
                let a = q.nack("d", &d, "nope").await.expect("nack");
                trace.push(format!("{step} nack {} {a:?}", d.message.kind));
            }
            7 => {
                let d = held.remove(rng.random_range(0..held.len()));
                q.release("d", &d.lease).await.expect("release");
                trace.push(format!("{step} release {}", d.message.kind));
            }
            8 => {
                let d = held.remove(rng.random_range(0..held.len()));
                let a = q
                    .fail("d", &d, "perm", FailureMode::Permanent)
                    .await
                    .expect("fail");
                trace.push(format!("{step} bury {} {a:?}", d.message.kind));
            }
            _ => {
                if rng.random_range(0..4) == 0 {
                    let r = q.requeue_dead("d", Selection::All).await.expect("requeue");
                    trace.push(format!("{step} requeue {r}"));
                } else {
                    let ops: Vec<Settle> = held.drain(..).map(|d| Settle::Ack(d.lease)).collect();
                    let r = q.settle("d", ops).await.expect("settle");
                    trace.push(format!("{step} ack-all {}", r.len()));
                }
            }
        }
        if step % 50 == 0 {
            trace.push(format!(
                "{step} stats {:?}",
                q.stats("d").await.expect("stats")
            ));
        }
    }
    trace.push(format!("stats {:?}", q.stats("d").await.expect("stats")));
    for dl in q.dead_letters("d", Page::first(1000)).await.expect("dead") {
        trace.push(format!(
            "dead {} {} {} {}",
            dl.message.kind, dl.attempts, dl.message.attempt, dl.error
        ));
    }
    trace
}

#[tokio::test]
async fn queue_matches_the_reference_model() {
    for seed in 0..6 {
        let mem = MemoryBackend::builder().default_config(config()).build();
        let lite = SqliteBackend::builder()
            .in_memory()
            .default_config(config())
            .build()
            .await
            .expect("open");
        let a = run(&mem, seed).await;
        let b = run(&lite, seed).await;
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x, y, "seed {seed}: first difference at trace line {i}");
        }
        assert_eq!(a.len(), b.len(), "seed {seed}");
    }
}

async fn run_events(bus: &dyn EventBus, seed: u64) -> Vec<String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut trace = Vec::new();
    let mut held: Vec<(String, courier_core::Delivery)> = Vec::new();
    let mut n = 0;
    for step in 0..300 {
        let group = if rng.random_range(0..2) == 0 {
            "g1"
        } else {
            "g2"
        };
        match rng.random_range(0..8) {
            0..=2 => {
                n += 1;
                bus.emit_batch("t", vec![Message::new(format!("e{n}"), "")])
                    .await
                    .expect("emit");
            }
            3..=4 => {
                let ds = bus
                    .receive("t", group, rng.random_range(1..4), Duration::ZERO)
                    .await
                    .expect("receive");
                for d in ds {
                    trace.push(format!(
                        "{step} {group} recv {} a{}",
                        d.message.kind, d.message.attempt
                    ));
                    held.push((group.to_string(), d));
                }
            }
            _ if held.is_empty() => {}
            5 => {
                let (g, d) = held.remove(rng.random_range(0..held.len()));
                let r = bus
                    .settle("t", &g, vec![Settle::Ack(d.lease)])
                    .await
                    .expect("ack");
                trace.push(format!(
                    "{step} {g} ack {} {}",
                    d.message.kind,
                    r[0].is_ok()
                ));
            }
            6 => {
                let (g, d) = held.remove(rng.random_range(0..held.len()));
                let op = Settle::Retry {
                    lease: d.lease,
                    delay: Duration::ZERO,
                    error: "x".into(),
                };
                let r = bus.settle("t", &g, vec![op]).await.expect("retry");
                trace.push(format!(
                    "{step} {g} retry {} {}",
                    d.message.kind,
                    r[0].is_ok()
                ));
            }
            _ => {
                if rng.random_range(0..6) == 0 {
                    bus.reset_group("t", group, courier_core::ReplayFrom::Start)
                        .await
                        .expect("reset");
                    trace.push(format!("{step} {group} reset"));
                } else {
                    let (g, d) = held.remove(rng.random_range(0..held.len()));
                    let r = bus
                        .settle("t", &g, vec![Settle::Release(d.lease)])
                        .await
                        .expect("release");
                    trace.push(format!(
                        "{step} {g} release {} {}",
                        d.message.kind,
                        r[0].is_ok()
                    ));
                }
            }
        }
        if step % 40 == 0 {
            for g in ["g1", "g2"] {
                trace.push(format!(
                    "{step} {g} {:?}",
                    bus.group_stats("t", g).await.expect("stats")
                ));
            }
        }
    }
    trace
}

#[tokio::test]
async fn event_bus_matches_the_reference_model() {
    for seed in 0..4 {
        let mem = MemoryBackend::builder().default_config(config()).build();
        let lite = SqliteBackend::builder()
            .in_memory()
            .default_config(config())
            .build()
            .await
            .expect("open");
        let a = run_events(&mem, seed).await;
        let b = run_events(&lite, seed).await;
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x, y, "seed {seed}: first difference at trace line {i}");
        }
        assert_eq!(a.len(), b.len(), "seed {seed}");
    }
}
