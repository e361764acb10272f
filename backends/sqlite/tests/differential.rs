//! The same seeded workload through the reference model (memory) and SQLite: what is
//! delivered, in which order, with which attempt numbers, and what ends in dead letters must
//! be identical. No timing is involved (zero backoff, long leases), so it is exact. The runs
//! with expiry (Q12) add message expiries and pauses on tokio's paused virtual time (both
//! backends on a `TokioClock`), so they are exact as well.

use std::sync::Arc;
use std::time::Duration;

use courier_core::{
    EventBus, FailureMode, Message, Page, Priority, Queue, QueueConfig, QueueExt, RetryPolicy,
    Selection, Settle, TokioClock,
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

/// Options of a workload.
#[derive(Clone, Copy)]
struct Workload {
    /// Give half of the messages an expiry of 1–60 ms (and a few a deduplication key), and
    /// let virtual time pass between steps.
    expiry: bool,
}

const PLAIN: Workload = Workload { expiry: false };
const EXPIRY: Workload = Workload { expiry: true };

/// With `w.expiry`: maybe an expiry and a key for a new message, and maybe a pause.
fn expiring(w: Workload, rng: &mut SmallRng, mut m: Message) -> Message {
    if w.expiry {
        if rng.random_range(0..2) == 0 {
            m = m.with_ttl(Duration::from_millis(rng.random_range(1..=60)));
        }
        if rng.random_range(0..6) == 0 {
            m = m.with_dedup_key(format!("k{}", rng.random_range(0..4)));
        }
    }
    m
}

async fn pause(w: Workload, rng: &mut SmallRng) {
    if w.expiry {
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..8))).await;
    }
}

/// Run the workload on one backend and return a trace of everything observable.
async fn run(q: &dyn Queue, seed: u64, w: Workload) -> Vec<String> {
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
                        expiring(w, &mut rng, m)
                    })
                    .collect();
                let r = q.publish_batch("d", msgs).await.expect("publish");
                if w.expiry {
                    let dup = r.iter().filter(|p| p.is_duplicate()).count();
                    trace.push(format!("{step} published {} dup {dup}", r.len()));
                }
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
        pause(w, &mut rng).await;
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
        let a = run(&mem, seed, PLAIN).await;
        let b = run(&lite, seed, PLAIN).await;
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x, y, "seed {seed}: first difference at trace line {i}");
        }
        assert_eq!(a.len(), b.len(), "seed {seed}");
    }
}

async fn run_events(bus: &dyn EventBus, seed: u64, w: Workload) -> Vec<String> {
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
                let e = expiring(w, &mut rng, Message::new(format!("e{n}"), ""));
                bus.emit_batch("t", vec![e]).await.expect("emit");
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
        pause(w, &mut rng).await;
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
        let a = run_events(&mem, seed, PLAIN).await;
        let b = run_events(&lite, seed, PLAIN).await;
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x, y, "seed {seed}: first difference at trace line {i}");
        }
        assert_eq!(a.len(), b.len(), "seed {seed}");
    }
}

/// Both backends on tokio's paused virtual time, so expiries fall at the same steps.
async fn on_virtual_time(config: QueueConfig) -> (MemoryBackend, SqliteBackend) {
    let mem = MemoryBackend::builder()
        .clock(Arc::new(TokioClock::new()))
        .default_config(config)
        .build();
    let lite = SqliteBackend::builder()
        .in_memory()
        .clock(Arc::new(TokioClock::new()))
        .default_config(config)
        .build()
        .await
        .expect("open");
    (mem, lite)
}

/// Expiry (Q12) on top of the same workload: expired messages skipped at the lease that
/// reaches them (dead letters with "expired", or discarded with `drop_expired`), keys freed,
/// retries not extending expiries, counters.
#[tokio::test(start_paused = true)]
async fn queue_with_expiry_matches_the_reference_model() {
    let mut expired = 0;
    for seed in 0..6 {
        let config = config().with_drop_expired(seed % 3 == 2);
        let (mem, lite) = on_virtual_time(config).await;
        let a = run(&mem, seed, EXPIRY).await;
        let b = run(&lite, seed, EXPIRY).await;
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x, y, "seed {seed}: first difference at trace line {i}");
        }
        assert_eq!(a.len(), b.len(), "seed {seed}");
        expired += q_stats(&lite).await.expired;
    }
    assert!(expired > 50, "the workload expires messages: {expired}");
}

async fn q_stats(q: &dyn Queue) -> courier_core::QueueStats {
    q.stats("d").await.expect("stats")
}

#[tokio::test(start_paused = true)]
async fn event_bus_with_expiry_matches_the_reference_model() {
    let mut expired = 0;
    for seed in 0..4 {
        let config = config().with_drop_expired(seed % 2 == 1);
        let (mem, lite) = on_virtual_time(config).await;
        let a = run_events(&mem, seed, EXPIRY).await;
        let b = run_events(&lite, seed, EXPIRY).await;
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x, y, "seed {seed}: first difference at trace line {i}");
        }
        assert_eq!(a.len(), b.len(), "seed {seed}");
        for g in ["g1", "g2"] {
            let bus: &dyn EventBus = &lite;
            expired += bus.group_stats("t", g).await.expect("stats").queue.expired;
        }
    }
    assert!(expired > 20, "the workload expires events: {expired}");
}
