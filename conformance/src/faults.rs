//! Fault scenarios that need processes the suite cannot hold in one namespace: a broker
//! killed and restarted, a consumer process killed. Each external backend runs them from its
//! own test files (`tests/broker_restart.rs`, `tests/consumer_crash.rs`) with its own way of
//! connecting and of running a private broker; the scenario and its accounting are here once,
//! so every backend is held to the same lines.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use courier_core::{Message, MessageId, Queue, QueueConfig, RetryPolicy, Worker};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::{Instant, timeout};

/// Opens a handle on the backend under test: `(url, prefix)` → a queue whose names live under
/// `prefix` (a key prefix, a stream prefix …).
pub type Connect = Arc<
    dyn Fn(String, String) -> BoxFuture<'static, courier_core::Result<Arc<dyn Queue>>>
        + Send
        + Sync,
>;

/// A private broker process a test may kill and restart (never the shared one).
#[async_trait]
pub trait PrivateBroker: Send {
    /// The URL to connect to it.
    fn url(&self) -> String;
    /// The broker's process id (each restart makes a new process).
    fn pid(&self) -> Option<u32>;
    /// Kill the broker with SIGKILL: no shutdown, no flush.
    fn kill9(&mut self);
    /// Start it again on the same port and data, and wait until it serves clients.
    async fn restart(&mut self) -> Result<(), String>;
}

/// Whether a missing server fails the run (`COURIER_REQUIRE_BACKENDS=1`, as CI sets).
pub fn required() -> bool {
    std::env::var("COURIER_REQUIRE_BACKENDS").as_deref() == Ok("1")
}

/// Poll `cond` until it holds or `within` passes; on time out, the panic says what was awaited
/// and what `state` shows then (a CI log must explain a failure on its own).
pub async fn until(
    within: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
    state: impl Fn() -> String,
) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out after {within:?} waiting for {what}; state: {}",
            state()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn connect_in_time(connect: &Connect, url: &str, prefix: &str) -> Arc<dyn Queue> {
    timeout(
        Duration::from_secs(20),
        connect(url.to_owned(), prefix.to_owned()),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

// ------------------------------------------------------------------ broker restart (Q1, Q9)

/// The broker-restart scenario's settings.
#[derive(Clone, Copy, Debug)]
pub struct Restart {
    /// Messages published in all.
    pub total: usize,
    /// Publishers and workers (each with its own handle).
    pub publishers: usize,
    /// Workers, each with its own handle.
    pub workers: usize,
    /// Messages per `publish_batch`.
    pub batch: usize,
    /// How long the broker stays down after each kill.
    pub downtime: Duration,
    /// Every worker must receive again within this time after the broker is back.
    pub resume_within: Duration,
    /// Everything must be over by then.
    pub overall: Duration,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            total: 20_000,
            publishers: 4,
            workers: 4,
            batch: 10,
            downtime: Duration::from_millis(500),
            resume_within: Duration::from_millis(2_500),
            overall: Duration::from_secs(90),
        }
    }
}

const RESTART_QUEUE: &str = "restart";

#[derive(Default)]
struct Ledger {
    attempted: Mutex<HashSet<MessageId>>,
    ok: Mutex<HashSet<MessageId>>,
    handled: Mutex<HashMap<MessageId, u32>>,
    ok_count: AtomicUsize,
    publish_errors: AtomicUsize,
}

fn restart_config() -> QueueConfig {
    QueueConfig::default()
        .with_visibility_timeout(Duration::from_secs(3))
        .with_retry(RetryPolicy::exact(
            50,
            Duration::from_millis(20),
            2.0,
            Duration::from_millis(200),
        ))
}

/// One publisher: its share of the messages in batches, each batch retried (same ids) while
/// the error is retryable.
async fn publish(
    q: Arc<dyn Queue>,
    ledger: Arc<Ledger>,
    s: Restart,
    p: usize,
    deadline: Instant,
) -> usize {
    let mut retries = 0;
    let per = s.total / s.publishers;
    for b in 0..per / s.batch {
        let mut batch: Vec<Message> = (0..s.batch)
            .map(|i| Message::new("job", format!("p{p}-b{b}-m{i}")))
            .collect();
        ledger.attempted.lock().extend(batch.iter().map(|m| m.id));
        loop {
            assert!(Instant::now() < deadline, "publisher {p}: out of time");
            let ids: Vec<MessageId> = batch.iter().map(|m| m.id).collect();
            match timeout(
                Duration::from_secs(10),
                q.publish_batch(RESTART_QUEUE, batch.clone()),
            )
            .await
            {
                Ok(Ok(stored)) => {
                    assert_eq!(courier_core::Published::ids(&stored), ids);
                    ledger.ok_count.fetch_add(ids.len(), Ordering::Relaxed);
                    ledger.ok.lock().extend(ids);
                    break;
                }
                Ok(Err(e)) if e.is_retryable() => {
                    retries += 1;
                    ledger.publish_errors.fetch_add(1, Ordering::Relaxed);
                    // Leading messages reported stored are ok; the rest is indeterminate.
                    let n = e.stored().unwrap_or(0).min(batch.len());
                    ledger.ok.lock().extend(ids[..n].iter().copied());
                    ledger.ok_count.fetch_add(n, Ordering::Relaxed);
                    batch.drain(..n);
                    if batch.is_empty() {
                        break;
                    }
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

/// Q1 across broker crashes, Jepsen style: `publishers` publish `total` messages while
/// `workers` (the core `Worker` runtime) consume them, and the broker is SIGKILLed and
/// restarted twice. Every id a publisher tried is *attempted*; an id whose publish returned
/// `Ok` is *ok*; a failed publish is retried (same ids) while the error is retryable. Then
/// lost (ok, never handled) and unexpected (handled, never attempted) must be 0; duplicates
/// (at least once) are counted and printed. Prints one EDN-like line with the figures.
pub async fn broker_restart(broker: &mut dyn PrivateBroker, connect: Connect, s: Restart) {
    let started = Instant::now();
    let deadline = started + s.overall;
    let url = broker.url();
    let prefix = format!("courier-restart-{}", rand::random::<u32>());
    let ledger = Arc::new(Ledger::default());

    let publisher_backend = connect_in_time(&connect, &url, &prefix).await;
    publisher_backend
        .configure(RESTART_QUEUE, restart_config())
        .expect("configure");
    let publishers: Vec<_> = (0..s.publishers)
        .map(|p| {
            tokio::spawn(publish(
                publisher_backend.clone(),
                ledger.clone(),
                s,
                p,
                deadline,
            ))
        })
        .collect();

    // Workers start behind the publishers, so the broker holds a backlog when it is killed.
    let tenth = s.total / 10;
    let progress = |workers: &[courier_core::WorkerHandle]| {
        let finished = publishers.iter().filter(|p| p.is_finished()).count();
        let received: Vec<u64> = workers.iter().map(|w| w.stats().received).collect();
        format!(
            "ok {} of {}, publish errors {}, handled {}, publisher tasks ended {finished} \
             (a panicked one is printed above), received per worker {received:?}",
            ledger.ok_count.load(Ordering::Relaxed),
            s.total,
            ledger.publish_errors.load(Ordering::Relaxed),
            ledger.handled.lock().len(),
        )
    };
    until(
        Duration::from_secs(30),
        "the first tenth of the publishes",
        || ledger.ok_count.load(Ordering::Relaxed) >= tenth,
        || progress(&[]),
    )
    .await;
    // Handlers wait while the gate is shut: before each kill it is shut until messages are
    // ready in the broker, so the crash always hits messages that exist only there (workers
    // are faster than publishers and would otherwise often have drained the queue).
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(true);
    let mut workers = Vec::new();
    for _ in 0..s.workers {
        let b = connect_in_time(&connect, &url, &prefix).await;
        b.configure(RESTART_QUEUE, restart_config())
            .expect("configure");
        let l = ledger.clone();
        let gate = gate_rx.clone();
        let w = Worker::builder(b, RESTART_QUEUE)
            .concurrency(8)
            .idle_wait(Duration::from_millis(500))
            .handler("job", move |m: Message| {
                let l = l.clone();
                let mut gate = gate.clone();
                async move {
                    // Held while the gate is shut (the sender lives to the end of the run).
                    let _ = gate.wait_for(|open| *open).await;
                    *l.handled.lock().entry(m.id).or_insert(0) += 1;
                    Ok(())
                }
            })
            .start()
            .expect("worker");
        workers.push(w);
    }

    // Two crashes, each while publishers are still publishing and workers consuming.
    let mut pids = vec![broker.pid()];
    let mut resumed_after = Vec::new();
    for (i, at) in [3 * tenth, 6 * tenth].into_iter().enumerate() {
        until(
            Duration::from_secs(30),
            "publishing progress",
            || ledger.ok_count.load(Ordering::Relaxed) >= at,
            || progress(&workers),
        )
        .await;
        // Hold every handler until messages are ready in the broker (and until it is back),
        // so the crash surely hits messages that exist only there.
        gate_tx.send_replace(false);
        let ready_by = Instant::now() + Duration::from_secs(30);
        let before = loop {
            let st = timeout(
                Duration::from_secs(10),
                publisher_backend.stats(RESTART_QUEUE),
            )
            .await
            .expect("stats in time")
            .expect("stats");
            // Not vacuous: the crash hits messages that exist only in the broker.
            if st.ready_total() > 0 {
                break st.ready_total() + st.delayed + st.in_flight;
            }
            assert!(
                Instant::now() < ready_by,
                "no message ready in the broker before the kill: {st:?}; {}",
                progress(&workers)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let handled = ledger.handled.lock().len();
        broker.kill9();
        eprintln!(
            "kill -9 #{} at {:?}: ok {} handled {handled}; {before} stored, not yet acked",
            i + 1,
            started.elapsed(),
            ledger.ok_count.load(Ordering::Relaxed),
        );
        tokio::time::sleep(s.downtime).await;
        broker.restart().await.expect("restart the broker");
        gate_tx.send_replace(true);
        pids.push(broker.pid());
        // Every worker receives again soon after the broker is back.
        let up = Instant::now();
        let received: Vec<u64> = workers.iter().map(|w| w.stats().received).collect();
        until(
            Duration::from_secs(30),
            "every worker to receive again",
            || {
                workers
                    .iter()
                    .zip(&received)
                    .all(|(w, &n)| w.stats().received > n)
            },
            || {
                format!(
                    "received before the kill {received:?}; {}",
                    progress(&workers)
                )
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
    assert_eq!(ok.len(), s.total, "every batch was eventually acknowledged");

    // Every acknowledged message handled, and the queue drained (everything acked).
    until(
        deadline - Instant::now(),
        "every acknowledged publish to be handled",
        || {
            let h = ledger.handled.lock();
            ok.iter().all(|id| h.contains_key(id))
        },
        || {
            let h = ledger.handled.lock();
            let missing = ok.iter().filter(|id| !h.contains_key(id)).count();
            format!("{missing} acknowledged publishes not handled yet")
        },
    )
    .await;
    let end = Instant::now() + Duration::from_secs(20);
    let stats = loop {
        let st = timeout(
            Duration::from_secs(10),
            publisher_backend.stats(RESTART_QUEUE),
        )
        .await
        .expect("stats in time")
        .expect("stats");
        if st.stored() == 0 || Instant::now() >= end {
            break st;
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
    for (i, w) in worker_stats.iter().enumerate() {
        println!(
            "worker {i}: received {} succeeded {} retried {} dead {} lease_lost {}",
            w.received, w.succeeded, w.retried, w.dead, w.lease_lost
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
            *d < s.resume_within,
            "workers took {d:?} to receive again after restart {}",
            i + 1
        );
    }
    assert!(started.elapsed() < s.overall);
}

// ------------------------------------------------------------------ consumer crash (Q4, Q9)

const CRASH_QUEUE: &str = "crash";
const CRASH_N: usize = 12;
const CHILD_CONCURRENCY: usize = 4;
const VISIBILITY: Duration = Duration::from_secs(1);
/// Selects the child role of the test binary.
const CHILD_ENV: &str = "COURIER_CRASH_CHILD_PREFIX";

fn crash_config() -> QueueConfig {
    QueueConfig::default()
        .with_visibility_timeout(VISIBILITY)
        .with_retry(RetryPolicy::exact(
            5,
            Duration::from_millis(50),
            1.0,
            Duration::from_millis(50),
        ))
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
async fn crash_child(connect: Connect, url: String, prefix: String) {
    let q = connect_in_time(&connect, &url, &prefix).await;
    q.configure(CRASH_QUEUE, crash_config()).expect("configure");
    let w = Worker::builder(q, CRASH_QUEUE)
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

/// Q4 / Q9 across a consumer crash: a worker in another process (this test binary re-run as a
/// child, test `test` selected exactly) leases messages and blocks in its handlers; the parent
/// SIGKILLs it while the handlers are in flight. Its messages must come back once their leases
/// end (1 s visibility timeout), with the expired lease counted as a failed attempt, and be
/// handled by the parent's own worker: nothing lost. While the child lives, its worker keeps
/// extending the leases, so the parent must not get those messages even after more than two
/// visibility timeouts. Returns the prefix used, for the caller's clean-up.
///
/// Call it first thing in the test: in the child it runs the child's part instead.
pub async fn consumer_crash(test: &str, url: String, connect: Connect) -> String {
    if let Ok(prefix) = std::env::var(CHILD_ENV) {
        crash_child(connect, url, prefix.clone()).await;
        return prefix;
    }
    // 30 bytes: NATS takes a prefix of at most 32 (it names a JetStream stream).
    let prefix = format!("courier-crash-{:016x}", rand::random::<u64>());
    let q = connect_in_time(&connect, &url, &prefix).await;
    q.configure(CRASH_QUEUE, crash_config()).expect("configure");
    let msgs: Vec<Message> = (0..CRASH_N)
        .map(|i| Message::new("job", format!("{i}")))
        .collect();
    let published = courier_core::Published::ids(
        &timeout(Duration::from_secs(10), q.publish_batch(CRASH_QUEUE, msgs))
            .await
            .expect("publish in time")
            .expect("publish"),
    );

    // The child, its stdout read on a thread (pipes block) into a channel.
    let exe = std::env::current_exe().expect("current exe");
    let mut child = KillOnDrop(
        Command::new(exe)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &prefix)
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
        let line = timeout(Duration::from_secs(20), rx.recv())
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
    let leased_by_child = timeout(Duration::from_secs(10), q.stats(CRASH_QUEUE))
        .await
        .expect("stats in time")
        .expect("stats")
        .in_flight;
    assert!(leased_by_child >= CHILD_CONCURRENCY as u64);

    // The parent's worker takes what the child did not lease.
    let handled: Arc<Mutex<Handled>> = Arc::default();
    let h = handled.clone();
    let worker = Worker::builder(q.clone(), CRASH_QUEUE)
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
    let rest = CRASH_N - leased_by_child as usize;
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
    while handled.lock().len() < CRASH_N {
        assert!(
            Instant::now() < end,
            "the killed consumer's messages came back: {} of {CRASH_N} handled",
            handled.lock().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let end = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let s = timeout(Duration::from_secs(10), q.stats(CRASH_QUEUE))
            .await
            .expect("stats in time")
            .expect("stats");
        if s.stored() == 0 || Instant::now() >= end {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let report = timeout(Duration::from_secs(10), worker.stop(Duration::from_secs(1)))
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
        "{{:published {CRASH_N} :leased-by-child {leased_by_child} :in-flight-at-kill {} \
         :handled {} :lost {} :duplicated {duplicated} :redelivered-after-kill-ms {:?}}}",
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
    assert_eq!(stats.acked, CRASH_N as u64, "{stats:?}");
    assert_eq!(report.stats.succeeded, CRASH_N as u64);
    prefix
}

// ------------------------------------------------------------ keyed publishers (Q11, processes)

const KEYED_QUEUE: &str = "keyed";
/// Keys each process publishes (all processes publish the same keys).
pub const KEYED_N: usize = 10_000;
const KEYED_PROCESSES: usize = 3;
const KEYED_BATCH: usize = 100;
/// Selects the child role of the test binary: `<index>|<prefix>|<url>`.
const KEYED_ENV: &str = "COURIER_KEYED_CHILD";

/// Q11 across processes: `KEYED_PROCESSES` copies of this test binary each publish the same
/// [`KEYED_N`] keyed messages at once (batches of 100, each process starting at a different
/// third of the keys so they collide throughout), then this process handles what was stored.
/// Exactly [`KEYED_N`] messages are stored (one per key) and handled, every other publish is
/// reported as a duplicate of the stored one, and the stats agree. Prints one line of figures.
///
/// `test` is the calling test's name (the child runs it with `--exact`); `url` what `connect`
/// opens (a Redis URL, a SQLite file path). Returns the prefix used, for the caller's cleanup.
pub async fn keyed_publishers(test: &str, url: String, connect: Connect) -> String {
    if let Ok(role) = std::env::var(KEYED_ENV) {
        let mut parts = role.splitn(3, '|');
        let (Some(index), Some(prefix), Some(url)) = (parts.next(), parts.next(), parts.next())
        else {
            panic!("bad {KEYED_ENV} {role:?}");
        };
        let index: usize = index.parse().expect("child index");
        let q = connect_in_time(&connect, url, prefix).await;
        q.configure(KEYED_QUEUE, QueueConfig::default())
            .expect("configure");
        let (mut stored, mut dup) = (0usize, 0usize);
        let start = index * KEYED_N / KEYED_PROCESSES;
        let order: Vec<usize> = (0..KEYED_N).map(|i| (start + i) % KEYED_N).collect();
        for chunk in order.chunks(KEYED_BATCH) {
            let batch: Vec<Message> = chunk
                .iter()
                .map(|k| {
                    Message::new("keyed", format!("{index}")).with_dedup_key(format!("key-{k}"))
                })
                .collect();
            let out = timeout(Duration::from_secs(30), q.publish_batch(KEYED_QUEUE, batch))
                .await
                .expect("publish in time")
                .expect("publish");
            for p in out {
                if p.is_duplicate() {
                    dup += 1;
                } else {
                    stored += 1;
                }
            }
        }
        println!("@@keyed {index} stored {stored} duplicate {dup}");
        return prefix.to_string();
    }

    let prefix = format!("courier-keyed-{}", rand::random::<u32>());
    let q = connect_in_time(&connect, &url, &prefix).await;
    q.configure(KEYED_QUEUE, QueueConfig::default())
        .expect("configure");
    let exe = std::env::current_exe().expect("current exe");
    let started = Instant::now();
    let children: Vec<_> = (0..KEYED_PROCESSES)
        .map(|i| {
            let child = Command::new(&exe)
                .args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env(KEYED_ENV, format!("{i}|{prefix}|{url}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn child");
            KillOnDrop(child)
        })
        .collect();
    let mut stored = 0;
    let mut dup = 0;
    for mut c in children {
        let out = c.0.stdout.take().expect("child stdout");
        let lines: Vec<String> = BufReader::new(out).lines().map_while(|l| l.ok()).collect();
        let status = c.0.wait().expect("wait for the child");
        assert!(status.success(), "child failed: {status:?}");
        let line = lines
            .iter()
            .find_map(|l| l.split_once("@@keyed ").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("child printed no figures: {lines:?}"));
        let f: Vec<usize> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
        assert_eq!(f.len(), 3, "figures {line:?}");
        stored += f[1];
        dup += f[2];
    }
    let published_in = started.elapsed();
    assert_eq!(stored, KEYED_N, "one message stored per key");
    assert_eq!(
        dup,
        (KEYED_PROCESSES - 1) * KEYED_N,
        "every other publish a duplicate"
    );

    // Handle everything stored: each key exactly once.
    let mut keys: HashMap<String, usize> = HashMap::new();
    let end = Instant::now() + Duration::from_secs(60);
    while keys.values().sum::<usize>() < KEYED_N {
        assert!(
            Instant::now() < end,
            "handled only {} of {KEYED_N}",
            keys.len()
        );
        let got = timeout(
            Duration::from_secs(10),
            q.receive(KEYED_QUEUE, 500, Duration::from_millis(200)),
        )
        .await
        .expect("receive in time")
        .expect("receive");
        let mut acks = Vec::with_capacity(got.len());
        for d in got {
            *keys
                .entry(d.message.dedup_key.clone().expect("keyed"))
                .or_default() += 1;
            acks.push(courier_core::Settle::Ack(d.lease));
        }
        let done = timeout(Duration::from_secs(10), q.settle(KEYED_QUEUE, acks))
            .await
            .expect("settle in time")
            .expect("settle");
        assert!(done.iter().all(Result::is_ok), "acks: {done:?}");
    }
    assert_eq!(keys.len(), KEYED_N, "every key handled");
    assert!(keys.values().all(|&n| n == 1), "no key handled twice");
    let stats = timeout(Duration::from_secs(10), q.stats(KEYED_QUEUE))
        .await
        .expect("stats in time")
        .expect("stats");
    println!(
        "{{:processes {KEYED_PROCESSES} :keys {KEYED_N} :stored {stored} :duplicates {dup} \
         :handled {} :publish-ms {} :stats {stats:?}}}",
        keys.len(),
        published_in.as_millis()
    );
    assert_eq!(stats.published, KEYED_N as u64, "{stats:?}");
    assert_eq!(stats.deduplicated, dup as u64, "{stats:?}");
    assert_eq!(stats.acked, KEYED_N as u64, "{stats:?}");
    assert_eq!(stats.stored(), 0, "{stats:?}");
    prefix
}
