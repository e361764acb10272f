//! The handler-timeout scenarios of issue 19, on the embedded memory backend (the behaviour
//! is core's worker runtime, the same on every backend; `worker::timeout::*` in the
//! conformance suite runs shorter versions on each of them):
//!
//! - 10 handlers that never return, a 1 s timeout and 3 attempts: every message is in dead
//!   letters with the timeout reason within 3 × (1 s + backoff) + tolerance;
//! - a concurrency-2 worker with 10 such messages still handles 1,000 quick messages
//!   meanwhile: timed-out handlers give their slots back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier::{Message, Page, QueueConfig, RetryPolicy, Worker};

const TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF: Duration = Duration::from_millis(100);
/// Scheduling slack on a loaded 2-core machine.
const TOLERANCE: Duration = Duration::from_secs(1);

fn config() -> QueueConfig {
    QueueConfig::default()
        .with_retry(RetryPolicy::exact(3, BACKOFF, 1.0, BACKOFF))
        .with_handler_timeout(TIMEOUT)
}

async fn hang(_m: Message) -> courier::HandlerResult {
    std::future::pending::<()>().await;
    Ok(())
}

/// Poll `cond` every 10 ms for at most `limit`.
async fn until(limit: Duration, what: &str, cond: impl AsyncFn() -> bool) {
    let end = Instant::now() + limit;
    while !cond().await {
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_hung_handlers_are_dead_within_three_timeouts() {
    let courier = courier::connect("memory://").await.expect("connect");
    let q = courier.queue().clone();
    q.configure("hung", config()).expect("configure");
    let worker = Worker::builder(q.clone(), "hung")
        .concurrency(10)
        .handler("hang", hang)
        .start()
        .expect("worker");
    let started = Instant::now();
    q.publish_batch("hung", (0..10).map(|_| Message::new("hang", "")).collect())
        .await
        .expect("publish");
    let bound = (TIMEOUT + BACKOFF) * 3 + TOLERANCE;
    until(bound, "10 dead letters", async || {
        q.stats("hung").await.is_ok_and(|s| s.dead == 10)
    })
    .await;
    let took = started.elapsed();
    assert!(
        took >= TIMEOUT * 3,
        "dead after {took:?}, before 3 timeouts"
    );
    let dead = q.dead_letters("hung", Page::first(20)).await.expect("dead");
    assert_eq!(dead.len(), 10);
    for d in &dead {
        assert_eq!(d.attempts, 3);
        assert_eq!(d.error, "handler timed out after 1s");
    }
    let report = tokio::time::timeout(Duration::from_secs(10), worker.stop(Duration::from_secs(1)))
        .await
        .expect("stop in time");
    assert_eq!(report.stats.timed_out, 30);
    println!(
        "10 hung handlers, timeout {TIMEOUT:?}, 3 attempts: all dead after {took:?} (bound {bound:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_2_worker_serves_1000_quick_messages_while_handlers_hang() {
    let courier = courier::connect("memory://").await.expect("connect");
    let q = courier.queue().clone();
    q.configure("mixed", config()).expect("configure");
    let quick = Arc::new(AtomicU64::new(0));
    let qk = quick.clone();
    let worker = Worker::builder(q.clone(), "mixed")
        .concurrency(2)
        .handler("hang", hang)
        .handler("quick", move |_m: Message| {
            qk.fetch_add(1, Ordering::Relaxed);
            async { Ok(()) }
        })
        .start()
        .expect("worker");
    let started = Instant::now();
    // The hung messages first, so both slots are taken by handlers that never return.
    q.publish_batch("mixed", (0..10).map(|_| Message::new("hang", "")).collect())
        .await
        .expect("publish hung");
    q.publish_batch(
        "mixed",
        (0..1000)
            .map(|i| Message::new("quick", format!("{i}")))
            .collect(),
    )
    .await
    .expect("publish quick");
    // 10 messages × 3 attempts × 1 s on 2 slots: 15 s of hanging, plus backoffs.
    let bound = (TIMEOUT + BACKOFF) * 15 + TOLERANCE * 3;
    until(bound, "1,000 quick messages handled", async || {
        quick.load(Ordering::Relaxed) == 1000
    })
    .await;
    let quick_done = started.elapsed();
    until(bound, "10 hung messages dead", async || {
        q.stats("mixed").await.is_ok_and(|s| s.dead == 10)
    })
    .await;
    let hung_done = started.elapsed();
    // Throughout: the quick ones did not wait for the hung ones to run out of attempts.
    assert!(
        quick_done < hung_done,
        "quick messages done after {quick_done:?}, hung ones dead after {hung_done:?}"
    );
    let report = tokio::time::timeout(Duration::from_secs(10), worker.stop(Duration::from_secs(1)))
        .await
        .expect("stop in time");
    assert_eq!(report.stats.timed_out, 30);
    assert_eq!(report.stats.succeeded, 1000);
    assert!(report.stats.max_in_progress <= 2);
    assert_eq!(report.stats.in_progress, 0, "no slot leaked");
    println!(
        "concurrency 2: 1,000 quick messages done after {quick_done:?}; 10 hung dead after {hung_done:?}"
    );
}
