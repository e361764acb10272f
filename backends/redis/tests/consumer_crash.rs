//! Q4 / Q9 across a consumer crash: a worker in another process (this test binary re-run as a
//! child, selected by `COURIER_REDIS_CRASH_CHILD`) leases messages and blocks in its handlers;
//! the parent SIGKILLs it while the handlers are in flight. Its messages must come back once
//! their leases end (1 s visibility timeout), with the expired lease counted as a failed
//! attempt, and be handled by the parent's own worker: nothing lost.
//!
//! While the child lives, its worker keeps extending the leases, so the parent must not get
//! those messages even after more than two visibility timeouts.
//!
//! Uses the shared Redis (`COURIER_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`) under a
//! unique key prefix; skipped loudly when unreachable unless `COURIER_REQUIRE_BACKENDS=1`.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use courier_core::{Message, MessageId, Queue, QueueConfig, RetryPolicy, Worker};
use courier_redis::RedisBackend;
use parking_lot::Mutex;
use tokio::time::{Instant, timeout};

const CHILD: &str = "COURIER_REDIS_CRASH_CHILD";
const PREFIX: &str = "COURIER_REDIS_CRASH_PREFIX";
const QUEUE: &str = "crash";
const N: usize = 12;
const CHILD_CONCURRENCY: usize = 4;
const VISIBILITY: Duration = Duration::from_secs(1);
const TEST: &str = "in_flight_messages_of_a_killed_consumer_come_back_after_their_lease";

fn url() -> String {
    std::env::var("COURIER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn config() -> QueueConfig {
    QueueConfig::default()
        .with_visibility_timeout(VISIBILITY)
        .with_retry(RetryPolicy::exact(
            5,
            Duration::from_millis(50),
            1.0,
            Duration::from_millis(50),
        ))
}

async fn connect(prefix: &str) -> courier_core::Result<RedisBackend> {
    let build = RedisBackend::builder()
        .url(url())
        .key_prefix(prefix)
        .default_config(config())
        .build();
    match timeout(Duration::from_secs(10), build).await {
        Ok(r) => r,
        Err(_) => Err(courier_core::Error::new(
            courier_core::ErrorKind::Unavailable,
            "connect timed out",
        )),
    }
}

/// Per handled id: (attempt, when) of each delivery to the parent.
type Handled = HashMap<MessageId, Vec<(u32, Instant)>>;

/// Kills the child if the test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The text after the `@@` marker (the harness may print on the same line).
fn marked(line: &str) -> Option<String> {
    line.find("@@").map(|i| line[i + 2..].trim().to_owned())
}

/// The child: a worker whose handlers announce themselves and then block (far longer than the
/// test), so they are in flight when the parent kills this process.
async fn child() {
    let prefix = std::env::var(PREFIX).expect("prefix");
    let b = connect(&prefix).await.expect("child connects");
    let w = Worker::builder(Arc::new(b), QUEUE)
        .concurrency(CHILD_CONCURRENCY)
        .idle_wait(Duration::from_millis(200))
        .handler("job", |m: Message| async move {
            println!("@@started {} {}", m.id, m.attempt);
            let _ = std::io::stdout().flush();
            tokio::time::sleep(Duration::from_secs(120)).await;
            Ok(())
        })
        .start()
        .expect("worker");
    println!("@@ready");
    let _ = std::io::stdout().flush();
    // Bounded: if the parent never kills this process, it ends by itself.
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_messages_of_a_killed_consumer_come_back_after_their_lease() {
    match std::env::var(CHILD).as_deref() {
        Ok("consume") => return child().await,
        Ok(_) => return,
        Err(_) => {}
    }
    let prefix = format!("courier-crash-{}", rand::random::<u64>());
    let b = match connect(&prefix).await {
        Ok(b) => b,
        Err(e) => {
            if std::env::var("COURIER_REQUIRE_BACKENDS").as_deref() == Ok("1") {
                panic!(
                    "{TEST}: Redis unreachable at {} and COURIER_REQUIRE_BACKENDS=1: {e}",
                    url()
                );
            }
            eprintln!("SKIPPED {TEST}: Redis unreachable at {}: {e}", url());
            return;
        }
    };
    let q: Arc<dyn Queue> = Arc::new(b.clone());
    let msgs: Vec<Message> = (0..N)
        .map(|i| Message::new("job", format!("{i}")))
        .collect();
    let published = timeout(Duration::from_secs(5), q.publish_batch(QUEUE, msgs))
        .await
        .expect("publish in time")
        .expect("publish");

    // The child, its stdout read on a thread (pipes block) into a channel.
    let exe = std::env::current_exe().expect("current exe");
    let mut child = KillOnDrop(
        Command::new(exe)
            .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "consume")
            .env(PREFIX, &prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(m) = marked(&line)
                && tx.send(m).is_err()
            {
                break;
            }
        }
    });
    let mut in_flight: HashSet<MessageId> = HashSet::new();
    while in_flight.len() < CHILD_CONCURRENCY {
        let line = timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("the child's handlers start in time")
            .expect("child output");
        if let Some(rest) = line.strip_prefix("started ") {
            let id: MessageId = rest
                .split(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .expect("id");
            assert!(published.contains(&id));
            in_flight.insert(id);
        }
    }
    let started = Instant::now();
    // The child also holds prefetched deliveries (leased, not started).
    let leased_by_child = timeout(Duration::from_secs(5), q.stats(QUEUE))
        .await
        .expect("stats in time")
        .expect("stats")
        .in_flight;
    assert!(leased_by_child >= CHILD_CONCURRENCY as u64);

    // The parent's worker takes what the child did not lease.
    let handled: Arc<Mutex<Handled>> = Arc::default();
    let h = handled.clone();
    let worker = Worker::builder(q.clone(), QUEUE)
        .concurrency(8)
        .idle_wait(Duration::from_millis(500))
        .handler("job", move |m: Message| {
            h.lock()
                .entry(m.id)
                .or_default()
                .push((m.attempt, Instant::now()));
            async { Ok(()) }
        })
        .start()
        .expect("worker");
    let rest = N - leased_by_child as usize;
    let end = Instant::now() + Duration::from_secs(10);
    while handled.lock().len() < rest {
        assert!(
            Instant::now() < end,
            "the parent handles the unleased messages"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Observe for more than two visibility timeouts: the living child extends its leases, so
    // none of its messages reaches the parent.
    tokio::time::sleep((VISIBILITY * 5 / 2).saturating_sub(started.elapsed())).await;
    {
        let h = handled.lock();
        assert_eq!(
            h.len(),
            rest,
            "nothing the child holds was redelivered: {h:?}"
        );
        assert!(in_flight.iter().all(|id| !h.contains_key(id)));
    }

    let before_kill: HashSet<MessageId> = handled.lock().keys().copied().collect();
    // `Child::kill` sends SIGKILL on Unix: no destructor, no release, no graceful stop.
    child.0.kill().expect("SIGKILL the child");
    let status = child.0.wait().expect("reap the child");
    assert!(!status.success(), "the child was killed: {status:?}");
    let killed = Instant::now();

    // Everything comes back once the dead child's leases end, and the parent handles it.
    let end = killed + Duration::from_secs(10);
    while handled.lock().len() < N {
        assert!(
            Instant::now() < end,
            "the killed consumer's messages came back: {} of {N} handled",
            handled.lock().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let end = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let s = timeout(Duration::from_secs(5), q.stats(QUEUE))
            .await
            .expect("stats in time")
            .expect("stats");
        if s.stored() == 0 || Instant::now() >= end {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let report = timeout(Duration::from_secs(5), worker.stop(Duration::from_secs(1)))
        .await
        .expect("worker stops in time");

    let handled = handled.lock().clone();
    let lost: Vec<_> = published
        .iter()
        .filter(|id| !handled.contains_key(id))
        .collect();
    let duplicated = handled.values().filter(|v| v.len() > 1).count();
    let came_back: Vec<Duration> = in_flight
        .iter()
        .filter_map(|id| {
            handled
                .get(id)
                .map(|v| v[0].1.saturating_duration_since(killed))
        })
        .collect();
    println!(
        "{{:published {N} :leased-by-child {leased_by_child} :in-flight-at-kill {} :handled {} \
         :lost {} :duplicated {duplicated} :redelivered-after-kill-ms {:?}}}",
        in_flight.len(),
        handled.len(),
        lost.len(),
        came_back
            .iter()
            .map(Duration::as_millis)
            .collect::<Vec<_>>()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert_eq!(duplicated, 0, "each message handled once by the parent");
    for id in &in_flight {
        let (attempt, at) = handled[id][0];
        // The expired lease was a failed attempt (Q4, Q5).
        assert_eq!(attempt, 2, "{id}: attempt after the crash");
        assert!(at >= killed, "{id} redelivered while the child lived");
        assert!(
            at - killed <= VISIBILITY + Duration::from_secs(2),
            "{id} came back {:?} after the kill (lease {VISIBILITY:?})",
            at - killed
        );
    }
    // Every message the child held (in flight or prefetched) came back as attempt 2.
    let held: Vec<_> = published
        .iter()
        .filter(|id| !before_kill.contains(id))
        .collect();
    assert_eq!(held.len() as u64, leased_by_child);
    for id in held {
        assert_eq!(handled[id][0].0, 2, "{id}: attempt after the crash");
    }
    assert_eq!(stats.dead, 0, "{stats:?}");
    assert_eq!(stats.stored(), 0, "everything acked: {stats:?}");
    assert_eq!(stats.acked, N as u64, "{stats:?}");
    assert_eq!(report.stats.succeeded, N as u64);
    cleanup(&prefix).await;
}

/// Delete the test's keys (the queue's counters and the like) from the shared Redis.
async fn cleanup(prefix: &str) {
    let Ok(client) = redis::Client::open(url()) else {
        return;
    };
    let Ok(Ok(mut conn)) = timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    else {
        return;
    };
    let keys: Vec<String> = timeout(
        Duration::from_secs(5),
        redis::cmd("KEYS")
            .arg(format!("{{{prefix}:*"))
            .query_async(&mut conn),
    )
    .await
    .ok()
    .and_then(|r| r.ok())
    .unwrap_or_default();
    if !keys.is_empty() {
        let _ = timeout(
            Duration::from_secs(5),
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<redis::Value>(&mut conn),
        )
        .await;
    }
}
