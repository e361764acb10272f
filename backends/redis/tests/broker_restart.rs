//! Q1 across broker crashes: a private `redis-server` with `appendonly yes` and
//! `appendfsync always` is SIGKILLed and restarted on the same port twice while 4 publishers
//! publish 20,000 messages and 4 workers (the core `Worker` runtime) consume them.
//!
//! Accounting, Jepsen style: every id a publisher tried is *attempted*; an id whose publish
//! returned `Ok` is *ok*. A publish that failed may or may not have been stored, so it is
//! retried (same ids) while the error is retryable. Then:
//! - lost = ok ids never handled: must be 0 (an acknowledged publish survives a crash);
//! - unexpected = handled ids never attempted: must be 0;
//! - duplicates (at-least-once: an ack lost in the crash, a re-published batch) are counted
//!   and printed, not failed.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use courier_core::{Message, MessageId, Queue, QueueConfig, RetryPolicy, Worker};
use courier_redis::RedisBackend;
use parking_lot::Mutex;
use tokio::time::{Instant, timeout};

const QUEUE: &str = "restart";
const PUBLISHERS: usize = 4;
const WORKERS: usize = 4;
const TOTAL: usize = 20_000;
const BATCH: usize = 10;
/// How long the broker stays down after each kill (the fault's duration, not a wait for
/// anything).
const DOWNTIME: Duration = Duration::from_millis(500);
/// Every worker must receive again within this time after the broker is back (its receive
/// backoff is at most a few hundred ms into its schedule by then).
const RESUME_WITHIN: Duration = Duration::from_millis(2_500);
/// Everything must be over by then.
const OVERALL: Duration = Duration::from_secs(90);

#[derive(Default)]
struct Ledger {
    attempted: Mutex<HashSet<MessageId>>,
    ok: Mutex<HashSet<MessageId>>,
    handled: Mutex<HashMap<MessageId, u32>>,
    ok_count: AtomicUsize,
    publish_errors: AtomicUsize,
}

fn config() -> QueueConfig {
    QueueConfig::default()
        .with_visibility_timeout(Duration::from_secs(3))
        .with_retry(RetryPolicy::exact(
            50,
            Duration::from_millis(20),
            2.0,
            Duration::from_millis(200),
        ))
}

async fn backend(url: &str, prefix: &str) -> RedisBackend {
    timeout(
        Duration::from_secs(10),
        RedisBackend::builder()
            .url(url)
            .key_prefix(prefix)
            .default_config(config())
            .build(),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

/// One publisher: `TOTAL / PUBLISHERS` messages in batches, each batch retried (same ids) while
/// the error is retryable.
async fn publish(q: RedisBackend, ledger: Arc<Ledger>, p: usize, deadline: Instant) -> usize {
    let mut retries = 0;
    let per = TOTAL / PUBLISHERS;
    for b in 0..per / BATCH {
        let mut batch: Vec<Message> = (0..BATCH)
            .map(|i| Message::new("job", format!("p{p}-b{b}-m{i}")))
            .collect();
        ledger.attempted.lock().extend(batch.iter().map(|m| m.id));
        loop {
            assert!(Instant::now() < deadline, "publisher {p}: out of time");
            let ids: Vec<MessageId> = batch.iter().map(|m| m.id).collect();
            match timeout(
                Duration::from_secs(10),
                q.publish_batch(QUEUE, batch.clone()),
            )
            .await
            {
                Ok(Ok(stored)) => {
                    assert_eq!(stored, ids);
                    ledger.ok.lock().extend(ids);
                    ledger.ok_count.fetch_add(BATCH, Ordering::Relaxed);
                    break;
                }
                Ok(Err(e)) if e.is_retryable() => {
                    retries += 1;
                    ledger.publish_errors.fetch_add(1, Ordering::Relaxed);
                    // Leading messages reported stored are ok; the rest is indeterminate.
                    let n = e.stored().unwrap_or(0).min(batch.len());
                    ledger.ok.lock().extend(ids[..n].iter().copied());
                    batch.drain(..n);
                }
                Ok(Err(e)) => panic!("publisher {p}: non-retryable error {e}"),
                // The dropped future may or may not have published: indeterminate, retry.
                Err(_) => retries += 1,
            }
            // Pace the retries while the broker is away.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    retries
}

/// Poll `cond` until it holds or `within` passes.
async fn until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Messages stored in Redis and not yet acked (ready, delayed, in flight).
async fn backlog(q: &RedisBackend) -> u64 {
    let s = timeout(Duration::from_secs(5), q.stats(QUEUE))
        .await
        .expect("stats in time")
        .expect("stats");
    s.ready.iter().sum::<u64>() + s.delayed + s.in_flight
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_survive_two_kill9_restarts() {
    let Some(mut server) = support::start_or_skip(
        "acknowledged_publishes_survive_two_kill9_restarts",
        &[
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ],
    ) else {
        return;
    };
    let started = Instant::now();
    let deadline = started + OVERALL;
    let url = server.url();
    let prefix = format!("courier-restart-{}", rand::random::<u32>());
    let ledger = Arc::new(Ledger::default());

    let publisher_backend = backend(&url, &prefix).await;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            tokio::spawn(publish(
                publisher_backend.clone(),
                ledger.clone(),
                p,
                deadline,
            ))
        })
        .collect();

    // Workers start behind the publishers, so the broker holds a backlog when it is killed.
    until(Duration::from_secs(30), "the first 2,000 publishes", || {
        ledger.ok_count.load(Ordering::Relaxed) >= 2_000
    })
    .await;
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let b = backend(&url, &prefix).await;
        let l = ledger.clone();
        let w = Worker::builder(Arc::new(b), QUEUE)
            .concurrency(8)
            .idle_wait(Duration::from_millis(500))
            .handler("job", move |m: Message| {
                *l.handled.lock().entry(m.id).or_insert(0) += 1;
                async { Ok(()) }
            })
            .start()
            .expect("worker");
        workers.push(w);
    }

    // Two crashes, each while publishers are still publishing and workers consuming.
    let mut pids = vec![server.pid()];
    let mut resumed_after = Vec::new();
    for (i, at) in [6_000usize, 12_000].into_iter().enumerate() {
        until(Duration::from_secs(30), "publishing progress", || {
            ledger.ok_count.load(Ordering::Relaxed) >= at
        })
        .await;
        let before = backlog(&publisher_backend).await;
        // Not vacuous: the crash hits messages that exist only in Redis.
        assert!(before > 0, "a backlog in Redis when it is killed");
        let handled = ledger.handled.lock().len();
        server.kill9();
        eprintln!(
            "kill -9 #{} at {:?}: ok {} handled {handled}; {before} stored, not yet acked",
            i + 1,
            started.elapsed(),
            ledger.ok_count.load(Ordering::Relaxed),
        );
        tokio::time::sleep(DOWNTIME).await;
        server.spawn().expect("restart redis-server");
        assert!(
            server.wait_listening(Duration::from_secs(10)).await,
            "redis-server did not come back"
        );
        pids.push(server.pid());
        // Every worker receives again soon after the broker is back.
        let up = Instant::now();
        let received: Vec<u64> = workers.iter().map(|w| w.stats().received).collect();
        until(
            Duration::from_secs(10),
            "every worker to receive again",
            || {
                workers
                    .iter()
                    .zip(&received)
                    .all(|(w, &n)| w.stats().received > n)
            },
        )
        .await;
        resumed_after.push(up.elapsed());
    }
    eprintln!("workers resumed {resumed_after:?} after each restart");
    assert_eq!(
        pids.iter().collect::<HashSet<_>>().len(),
        3,
        "three server processes"
    );

    let mut retries = 0;
    for p in publishers {
        retries += timeout(deadline - Instant::now(), p)
            .await
            .expect("publishers finish in time")
            .expect("publisher task");
    }
    let ok: HashSet<MessageId> = ledger.ok.lock().clone();
    assert_eq!(ok.len(), TOTAL, "every batch was eventually acknowledged");

    // Every acknowledged message handled, and the queue drained (everything acked).
    until(
        deadline - Instant::now(),
        "every acknowledged publish to be handled",
        || {
            let h = ledger.handled.lock();
            ok.iter().all(|id| h.contains_key(id))
        },
    )
    .await;
    let end = Instant::now() + Duration::from_secs(20);
    let stats = loop {
        let s = timeout(Duration::from_secs(5), publisher_backend.stats(QUEUE))
            .await
            .expect("stats in time")
            .expect("stats");
        if s.stored() == 0 || Instant::now() >= end {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut worker_stats = Vec::new();
    for w in workers {
        let r = timeout(Duration::from_secs(10), w.stop(Duration::from_secs(2)))
            .await
            .expect("worker stops in time");
        worker_stats.push(r.stats);
    }

    let attempted = ledger.attempted.lock().clone();
    let handled = ledger.handled.lock().clone();
    let lost: Vec<_> = ok.iter().filter(|id| !handled.contains_key(id)).collect();
    let unexpected: Vec<_> = handled
        .keys()
        .filter(|id| !attempted.contains(id))
        .collect();
    let duplicated = handled.values().filter(|&&n| n > 1).count();
    let extra_deliveries: u32 = handled.values().map(|n| n - 1).sum();
    let indeterminate_handled = handled.keys().filter(|id| !ok.contains(id)).count();
    println!(
        "{{:attempted {} :ok {} :handled {} :lost {} :unexpected {} :duplicated {} \
         :extra-deliveries {} :indeterminate-handled {} :publish-retries {} \
         :publish-errors {} :kills 2 :resumed-after-ms {:?} :elapsed-ms {}}}",
        attempted.len(),
        ok.len(),
        handled.len(),
        lost.len(),
        unexpected.len(),
        duplicated,
        extra_deliveries,
        indeterminate_handled,
        retries,
        ledger.publish_errors.load(Ordering::Relaxed),
        resumed_after
            .iter()
            .map(Duration::as_millis)
            .collect::<Vec<_>>(),
        started.elapsed().as_millis()
    );
    for (i, s) in worker_stats.iter().enumerate() {
        println!(
            "worker {i}: received {} succeeded {} retried {} dead {} lease_lost {}",
            s.received, s.succeeded, s.retried, s.dead, s.lease_lost
        );
    }
    println!("final stats: {stats:?}");

    assert!(lost.is_empty(), "lost acknowledged publishes: {lost:?}");
    assert!(unexpected.is_empty(), "never published: {unexpected:?}");
    assert!(
        ledger.publish_errors.load(Ordering::Relaxed) > 0,
        "the publishers should have seen the broker go away"
    );
    assert_eq!(stats.dead, 0, "nothing dead-lettered: {stats:?}");
    assert_eq!(
        stats.stored(),
        0,
        "queue drained, every message acked: {stats:?}"
    );
    for (i, d) in resumed_after.iter().enumerate() {
        assert!(
            *d < RESUME_WITHIN,
            "workers took {d:?} to receive again after restart {}",
            i + 1
        );
    }
    assert!(started.elapsed() < OVERALL);
}
