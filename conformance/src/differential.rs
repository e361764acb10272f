//! The differential case: one seeded random workload (publish, batch publish, delays,
//! expiries, priorities, receive, ack, nack with backoff, permanent failure, release, lease expiry,
//! dead-letter requeue) driven through the memory backend (the reference model) and the
//! backend under test in lock step, comparing every delivery (id, attempt, order), every
//! retry decision, the stats after every step and the dead letters at the end.
//!
//! Time is part of the workload (delays and lease expiry), so the driver never compares in
//! the window where a timer may or may not have fired: before a receive it waits until every
//! timer near its due time is safely past it (`settle_timers`), which is waiting for time to
//! pass, the thing under test, not synchronisation.

use std::time::{Duration, Instant};

use courier_core::{
    Delivery, Message, MessageId, Page, Priority, Queue, QueueConfig, QueueExt, QueueStats,
    RetryPolicy, Selection, Settle,
};
use courier_memory::MemoryBackend;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{Case, Ctx, Failure, Outcome, case, ensure, ensure_eq, within};

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case!(
            "differential::queue::seed_1",
            ["Q2", "Q3", "Q4", "Q5", "Q6", "Q7", "Q8", "Q9", "Q12"],
            seed_1
        ),
        case!(
            "differential::queue::seed_2",
            ["Q2", "Q3", "Q4", "Q5", "Q6", "Q7", "Q8", "Q9", "Q12"],
            seed_2
        ),
    ]
}

async fn seed_1(cx: Ctx) -> Outcome {
    run(cx, 1).await
}

async fn seed_2(cx: Ctx) -> Outcome {
    run(cx, 2).await
}

const LIMIT: Duration = Duration::from_secs(10);
const DELAY: Duration = Duration::from_millis(250);
/// The time to live of expiring messages (Q12): longer than `DELAY`, so a delayed message
/// may expire too.
const TTL: Duration = Duration::from_millis(400);
/// Margin on either side of a timer's due time inside which the driver does not look.
const MARGIN: Duration = Duration::from_millis(80);
const STEPS: usize = 160;

fn config() -> QueueConfig {
    QueueConfig::default()
        .with_visibility_timeout(Duration::from_secs(30))
        .with_retry(RetryPolicy::exact(3, Duration::ZERO, 2.0, Duration::ZERO))
}

/// A lease both backends hold on the same message.
struct Pair {
    model: Delivery,
    real: Delivery,
}

struct Driver<'a> {
    model: &'a dyn Queue,
    real: &'a dyn Queue,
    q: String,
    held: Vec<Pair>,
    /// Timers running: (started, length). A delayed publish or a shortened lease.
    timers: Vec<(Instant, Duration)>,
    tick: Duration,
    log: Vec<String>,
}

impl Driver<'_> {
    fn fail(&self, what: String) -> Failure {
        let tail: Vec<&String> = self.log.iter().rev().take(12).collect();
        Failure(format!("{what}\nlast steps (newest first): {tail:#?}"))
    }

    /// Wait until no timer is inside its uncertain window, then forget the ones that fired.
    async fn settle_timers(&mut self) {
        loop {
            let now = Instant::now();
            let mut wait_until = None;
            for (start, len) in &self.timers {
                let lo = *start + len.saturating_sub(MARGIN);
                let hi = *start + *len + self.tick + MARGIN;
                if now >= lo && now < hi {
                    wait_until = Some(wait_until.map_or(hi, |w: Instant| w.max(hi)));
                }
            }
            match wait_until {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => break,
            }
        }
        let now = Instant::now();
        let tick = self.tick;
        self.timers
            .retain(|(start, len)| now < *start + *len + tick + MARGIN);
    }

    /// Wait until every timer has fired.
    async fn fire_all_timers(&mut self) {
        let tick = self.tick;
        if let Some(t) = self
            .timers
            .iter()
            .map(|(start, len)| *start + *len + tick + MARGIN)
            .max()
        {
            tokio::time::sleep_until(t.into()).await;
        }
        self.timers.clear();
    }

    async fn compare_stats(&self, step: usize) -> Outcome {
        let m = within(LIMIT, "model stats", self.model.stats(&self.q)).await??;
        let r = within(LIMIT, "stats", self.real.stats(&self.q)).await??;
        // Whether a due message counts as delayed or ready until a receive promotes it is
        // not part of the contract; the sum is.
        let view = |s: &QueueStats| {
            (
                s.ready_total() + s.delayed,
                s.in_flight,
                s.dead,
                s.published,
                s.acked,
                s.retried,
                s.deduplicated,
                s.dead_lettered,
                s.expired,
            )
        };
        if view(&m) != view(&r) {
            return Err(self.fail(format!(
                "step {step}: stats differ\n model {m:?}\n  real {r:?}\n(ready+delayed, in flight, dead, published, acked, retried, deduplicated, dead_lettered, expired)"
            )));
        }
        Ok(())
    }

    async fn receive(&mut self, step: usize, k: usize) -> Outcome {
        self.settle_timers().await;
        let m = within(
            LIMIT,
            "model receive",
            self.model.receive(&self.q, k, Duration::ZERO),
        )
        .await??;
        // The real backend may need a moment for a promotion the model did synchronously;
        // take exactly as many as the model got, with a bounded wait.
        let mut r: Vec<Delivery> = Vec::new();
        let deadline = Instant::now() + LIMIT;
        while r.len() < m.len() && Instant::now() < deadline {
            let wait = if r.is_empty() && m.is_empty() {
                Duration::ZERO
            } else {
                Duration::from_millis(200)
            };
            let got = within(
                LIMIT,
                "receive",
                self.real.receive(&self.q, m.len() - r.len(), wait),
            )
            .await??;
            r.extend(got);
        }
        if m.is_empty() {
            let extra = within(
                LIMIT,
                "receive",
                self.real.receive(&self.q, k, Duration::ZERO),
            )
            .await??;
            r.extend(extra);
        }
        let key = |ds: &[Delivery]| -> Vec<(MessageId, String, u32, Priority)> {
            ds.iter()
                .map(|d| {
                    (
                        d.message.id,
                        d.message.kind.clone(),
                        d.message.attempt,
                        d.message.priority,
                    )
                })
                .collect()
        };
        self.log.push(format!(
            "step {step}: receive {k} -> {:?}",
            key(&m)
                .iter()
                .map(|x| (x.1.clone(), x.2))
                .collect::<Vec<_>>()
        ));
        if key(&m) != key(&r) {
            return Err(self.fail(format!(
                "step {step}: deliveries differ\n model {:?}\n  real {:?}",
                key(&m),
                key(&r)
            )));
        }
        for (model, real) in m.into_iter().zip(r) {
            self.held.push(Pair { model, real });
        }
        Ok(())
    }

    async fn settle_both(
        &mut self,
        step: usize,
        pair: &Pair,
        op: fn(&Delivery) -> Settle,
    ) -> Outcome {
        let a = within(
            LIMIT,
            "model settle",
            self.model.settle_one(&self.q, op(&pair.model)),
        )
        .await?;
        let b = within(
            LIMIT,
            "settle",
            self.real.settle_one(&self.q, op(&pair.real)),
        )
        .await?;
        let kind = |r: &courier_core::Result<()>| r.as_ref().err().map(|e| e.kind());
        if kind(&a) != kind(&b) {
            return Err(self.fail(format!(
                "step {step}: settle results differ: model {a:?}, real {b:?}"
            )));
        }
        Ok(())
    }
}

async fn run(cx: Ctx, seed: u64) -> Outcome {
    let reference = MemoryBackend::builder().default_config(config()).build();
    let q = cx.name(&format!("diff{seed}"));
    reference.configure(&q, config())?;
    cx.q().configure(&q, config())?;
    let mut d = Driver {
        model: &reference,
        real: cx.q(),
        q: q.clone(),
        held: Vec::new(),
        timers: Vec::new(),
        tick: cx.tick,
        log: Vec::new(),
    };
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut n = 0u32;
    let mut ops = [0usize; 10];
    for step in 0..STEPS {
        let op = rng.random_range(0..10);
        ops[op] += 1;
        match op {
            // Publish one or a batch, mixed priorities, some delayed, some with one attempt.
            0..=2 => {
                let k = if op == 0 { 1 } else { rng.random_range(2..6) };
                let mut batch = Vec::new();
                let mut delayed = false;
                let mut expiring = false;
                for _ in 0..k {
                    n += 1;
                    let p = Priority::from_index(rng.random_range(0..4)).unwrap_or_default();
                    let mut m =
                        Message::new(format!("m{n}"), n.to_be_bytes().to_vec()).with_priority(p);
                    if rng.random_bool(0.2) {
                        m = m.with_delay(DELAY);
                        delayed = true;
                    }
                    if rng.random_bool(0.1) {
                        m = m.with_max_attempts(1);
                    }
                    if rng.random_bool(0.15) {
                        m = m.with_ttl(TTL);
                        expiring = true;
                    }
                    // Keys from a small pool, so duplicates (Q11) happen against stored
                    // messages and inside batches, and keys free up on ack and burial.
                    if rng.random_bool(0.3) {
                        m = m.with_dedup_key(format!("key{}", rng.random_range(0..6)));
                    }
                    batch.push(m);
                }
                let batch_view: Vec<(String, Priority, bool, Option<String>)> = batch
                    .iter()
                    .map(|m| {
                        (
                            m.kind.clone(),
                            m.priority,
                            m.delay.is_some(),
                            m.dedup_key.clone(),
                        )
                    })
                    .collect();
                // A key's outcome depends on whether its holder is still live, and a lease in
                // its expiry window may have ended on one backend and not yet on the other:
                // keyed publishes wait until no timer is uncertain (Q11).
                if batch.iter().any(|m| m.dedup_key.is_some()) {
                    d.settle_timers().await;
                }
                // Fix created_at and due time once so both backends see the same message.
                let now = reference.clock().now_ms();
                for m in &mut batch {
                    m.prepare_for_publish(now);
                }
                let started = Instant::now();
                let a = within(
                    LIMIT,
                    "model publish",
                    reference.publish_batch(&q, batch.clone()),
                )
                .await??;
                let b = within(LIMIT, "publish", cx.q().publish_batch(&q, batch)).await??;
                ensure_eq!(a, b, "step {step}: publish outcomes (stored or duplicate)");
                if delayed {
                    d.timers.push((started, DELAY));
                }
                if expiring {
                    d.timers.push((started, TTL));
                }
                d.log.push(format!("step {step}: publish {batch_view:?}"));
            }
            3 | 4 => {
                let k = rng.random_range(1..5);
                d.receive(step, k).await?;
            }
            5 if !d.held.is_empty() => {
                let pair = d.held.remove(rng.random_range(0..d.held.len()));
                d.log.push(format!(
                    "step {step}: ack {} #{}",
                    pair.model.message.kind, pair.model.message.attempt
                ));
                d.settle_both(step, &pair, |x| Settle::Ack(x.lease)).await?;
            }
            6 if !d.held.is_empty() => {
                let pair = d.held.remove(rng.random_range(0..d.held.len()));
                let a = within(
                    LIMIT,
                    "model nack",
                    reference.nack(&q, &pair.model, "differential nack"),
                )
                .await??;
                let b = within(
                    LIMIT,
                    "nack",
                    cx.q().nack(&q, &pair.real, "differential nack"),
                )
                .await??;
                d.log.push(format!(
                    "step {step}: nack {} #{} -> {a:?}",
                    pair.model.message.kind, pair.model.message.attempt
                ));
                if a != b {
                    return Err(d.fail(format!(
                        "step {step}: nack decisions differ: {a:?} vs {b:?}"
                    )));
                }
            }
            7 if !d.held.is_empty() => {
                let pair = d.held.remove(rng.random_range(0..d.held.len()));
                d.log
                    .push(format!("step {step}: bury {}", pair.model.message.kind));
                d.settle_both(step, &pair, |x| Settle::Bury {
                    lease: x.lease,
                    error: "differential bury".into(),
                })
                .await?;
            }
            8 if !d.held.is_empty() => {
                let pair = d.held.remove(rng.random_range(0..d.held.len()));
                if rng.random_bool(0.5) {
                    d.log
                        .push(format!("step {step}: release {}", pair.model.message.kind));
                    d.settle_both(step, &pair, |x| Settle::Release(x.lease))
                        .await?;
                } else {
                    // Let the lease expire: shorten both, then never settle them.
                    let short = Duration::from_millis(30);
                    let started = Instant::now();
                    within(
                        LIMIT,
                        "model extend",
                        reference.extend(&q, &pair.model.lease, short),
                    )
                    .await??;
                    within(LIMIT, "extend", cx.q().extend(&q, &pair.real.lease, short)).await??;
                    d.timers.push((started, short));
                    d.log.push(format!(
                        "step {step}: expire {} #{}",
                        pair.model.message.kind, pair.model.message.attempt
                    ));
                }
            }
            9 if rng.random_bool(0.3) => {
                let a = within(
                    LIMIT,
                    "model requeue",
                    reference.requeue_dead(&q, Selection::All),
                )
                .await??;
                let b = within(LIMIT, "requeue", cx.q().requeue_dead(&q, Selection::All)).await??;
                d.log.push(format!("step {step}: requeue dead -> {a}"));
                ensure_eq!(a, b, "step {step}: requeued counts");
            }
            _ => continue,
        }
        if d.timers.is_empty() {
            d.compare_stats(step).await?;
        }
    }
    // Drain: every timer fires, everything held or ready fails until it is dead.
    for pair in std::mem::take(&mut d.held) {
        d.settle_both(STEPS, &pair, |x| Settle::Bury {
            lease: x.lease,
            error: "drained".into(),
        })
        .await?;
    }
    d.fire_all_timers().await;
    for round in 0..50 {
        d.receive(STEPS + round, 8).await?;
        if d.held.is_empty() {
            break;
        }
        for pair in std::mem::take(&mut d.held) {
            let a = within(
                LIMIT,
                "model nack",
                reference.nack(&q, &pair.model, "drain"),
            )
            .await??;
            let b = within(LIMIT, "nack", cx.q().nack(&q, &pair.real, "drain")).await??;
            ensure_eq!(a, b, "drain nack decision");
        }
    }
    d.compare_stats(STEPS + 50).await?;
    let m = within(
        LIMIT,
        "model dead",
        reference.dead_letters(&q, Page::first(10_000)),
    )
    .await??;
    let r = within(LIMIT, "dead", cx.q().dead_letters(&q, Page::first(10_000))).await??;
    let view = |ds: &[courier_core::DeadLetter]| -> Vec<(MessageId, String, u32, String)> {
        ds.iter()
            .map(|x| {
                (
                    x.message.id,
                    x.message.kind.clone(),
                    x.attempts,
                    x.error.clone(),
                )
            })
            .collect()
    };
    if view(&m) != view(&r) {
        return Err(d.fail(format!(
            "dead letters differ\n model {:?}\n  real {:?}",
            view(&m),
            view(&r)
        )));
    }
    let s = within(LIMIT, "stats", cx.q().stats(&q)).await??;
    ensure!(
        s.ready_total() + s.delayed + s.in_flight == 0,
        "drained: {s:?}"
    );
    println!(
        "differential seed {seed}: {n} messages, ops {ops:?}, {} dead letters, stats {s:?}",
        m.len()
    );
    Ok(())
}
