//! Several processes on one database file: this test binary re-runs itself as child
//! processes (selected by `COURIER_SQLITE_CHILD`), so the processes really are separate.
//!
//! - competing consumers in three processes never lease the same message;
//! - a consumer waiting in another process wakes promptly (`PRAGMA data_version` polling);
//! - a pub/sub subscriber in another process receives messages published after it subscribed;
//! - three processes publish and consume 30,000 messages with random nacks and abandoned
//!   leases: Jepsen-style accounting (lost 0, unexpected 0, duplicates printed) and a lease
//!   history in which no two leases of one message overlap in time.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use courier_core::{Message, PubSub, Queue, QueueConfig, QueueExt, SubscribeOptions};
use courier_sqlite::SqliteBackend;

const CHILD: &str = "COURIER_SQLITE_CHILD";
const DB: &str = "COURIER_SQLITE_DB";

fn temp_db() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "courier-sqlite-mp-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join("shared.db")
}

fn config() -> QueueConfig {
    QueueConfig::default().with_visibility_timeout(Duration::from_secs(30))
}

async fn open(path: &Path) -> SqliteBackend {
    SqliteBackend::builder()
        .path(path)
        .default_config(config())
        .poll_interval(Duration::from_millis(20))
        .build()
        .await
        .expect("open")
}

/// Run this test binary as a child doing `role` on `db`.
fn spawn(test: &str, role: &str, db: &Path) -> Child {
    let exe = std::env::current_exe().expect("current exe");
    Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, role)
        .env(DB, db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child")
}

/// Lines the child printed with the `@@` marker (the test harness prints its own lines too).
fn child_lines(child: Child) -> Vec<String> {
    let out = child.wait_with_output().expect("child output");
    assert!(out.status.success(), "child failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(marked)
        .collect()
}

/// The text after the `@@` marker (the harness may print on the same line).
fn marked(line: &str) -> Option<String> {
    line.find("@@").map(|i| line[i + 2..].trim().to_owned())
}

/// Wait until a child prints `@ready`.
fn wait_ready(child: &mut Child) -> BufReader<std::process::ChildStdout> {
    let stdout = child.stdout.take().expect("stdout");
    let mut r = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).expect("read");
        assert!(n > 0, "child exited before it was ready");
        if marked(&line).as_deref() == Some("ready") {
            return r;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_in_three_processes() {
    let role = std::env::var(CHILD).ok();
    if role.as_deref() == Some("consume") {
        let db = PathBuf::from(std::env::var(DB).expect("db"));
        let b = open(&db).await;
        let q: &dyn Queue = &b;
        let mut idle = 0;
        while idle < 3 {
            let ds = q
                .receive("mp", 5, Duration::from_millis(200))
                .await
                .expect("receive");
            if ds.is_empty() {
                idle += 1;
                continue;
            }
            idle = 0;
            for d in ds {
                q.ack("mp", &d.lease)
                    .await
                    .expect("ack: the lease is ours alone");
                println!("@@{}", d.message.id);
            }
        }
        return;
    }
    if role.is_some() {
        return;
    }
    let db = temp_db();
    let b = open(&db).await;
    let q: &dyn Queue = &b;
    const N: usize = 600;
    let msgs: Vec<Message> = (0..N).map(|i| Message::new("k", format!("{i}"))).collect();
    let ids = courier_core::Published::ids(&q.publish_batch("mp", msgs).await.expect("publish"));
    let name = "competing_consumers_in_three_processes";
    let children = [spawn(name, "consume", &db), spawn(name, "consume", &db)];
    let mut mine = Vec::new();
    let mut idle = 0;
    while idle < 3 {
        let ds = q
            .receive("mp", 5, Duration::from_millis(200))
            .await
            .expect("receive");
        if ds.is_empty() {
            idle += 1;
            continue;
        }
        idle = 0;
        for d in ds {
            q.ack("mp", &d.lease).await.expect("ack");
            mine.push(d.message.id.to_string());
        }
    }
    let mut all = mine;
    for c in children {
        all.extend(child_lines(c));
    }
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(all.len(), N, "each message delivered once");
    assert_eq!(sorted.len(), N);
    let mut want: Vec<String> = ids.iter().map(ToString::to_string).collect();
    want.sort();
    assert_eq!(sorted, want);
    let s = q.stats("mp").await.expect("stats");
    assert_eq!((s.acked, s.stored()), (N as u64, 0));
    let _ = std::fs::remove_dir_all(db.parent().expect("dir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_consumer_in_another_process_wakes_promptly() {
    let role = std::env::var(CHILD).ok();
    if role.as_deref() == Some("wait") {
        let db = PathBuf::from(std::env::var(DB).expect("db"));
        let b = open(&db).await;
        let q: &dyn Queue = &b;
        println!("@@ready");
        std::io::stdout().flush().expect("flush");
        let d = q
            .receive_one("wake", Duration::from_secs(10))
            .await
            .expect("receive")
            .expect("woken with a message");
        let sent: u128 = String::from_utf8_lossy(&d.message.payload)
            .parse()
            .expect("timestamp");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_millis();
        println!("@@{}", now.saturating_sub(sent));
        q.ack("wake", &d.lease).await.expect("ack");
        return;
    }
    if role.is_some() {
        return;
    }
    let db = temp_db();
    let b = open(&db).await;
    let q: &dyn Queue = &b;
    let mut child = spawn(
        "waiting_consumer_in_another_process_wakes_promptly",
        "wait",
        &db,
    );
    let reader = wait_ready(&mut child);
    // Let the child reach its wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis();
    q.publish("wake", Message::new("k", now.to_string()))
        .await
        .expect("publish");
    let lines: Vec<String> = reader
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| marked(&l))
        .collect();
    assert!(child.wait().expect("wait").success());
    let latency: u64 = lines
        .first()
        .expect("latency line")
        .parse()
        .expect("number");
    assert!(latency < 1_000, "woke after {latency} ms");
    let _ = std::fs::remove_dir_all(db.parent().expect("dir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_reaches_a_subscriber_in_another_process() {
    let role = std::env::var(CHILD).ok();
    if role.as_deref() == Some("subscribe") {
        let db = PathBuf::from(std::env::var(DB).expect("db"));
        let b = open(&db).await;
        let mut sub = PubSub::subscribe(&b, "news.>", SubscribeOptions::default())
            .await
            .expect("subscribe");
        println!("@@ready");
        std::io::stdout().flush().expect("flush");
        for _ in 0..3 {
            match sub.next_timeout(Duration::from_secs(5)).await {
                Some(m) => println!("@@{}", m.kind),
                None => break,
            }
        }
        return;
    }
    if role.is_some() {
        return;
    }
    let db = temp_db();
    let b = open(&db).await;
    // Published before anyone subscribed: dropped (P2).
    PubSub::publish(&b, "news.early", Message::new("early", ""))
        .await
        .expect("publish");
    let mut child = spawn(
        "pubsub_reaches_a_subscriber_in_another_process",
        "subscribe",
        &db,
    );
    let reader = wait_ready(&mut child);
    let t = Instant::now();
    for k in ["one", "two", "three"] {
        PubSub::publish(&b, "news.today", Message::new(k, ""))
            .await
            .expect("publish");
    }
    let lines: Vec<String> = reader
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| marked(&l))
        .collect();
    assert!(child.wait().expect("wait").success());
    assert_eq!(lines, ["one", "two", "three"], "in order, nothing early");
    assert!(t.elapsed() < Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(db.parent().expect("dir"));
}

// ---------------------------------------------------------------------------------------
// Three processes publish and consume 30,000 messages with random nacks: Jepsen-style
// accounting and a lease history.

/// Messages published by each of the three processes.
const PER_PROCESS: usize = 10_000;
const PROCESSES: usize = 3;
const JEPSEN_QUEUE: &str = "jepsen";
/// A failed attempt is nacked with this probability.
const NACK_P: f64 = 0.15;
/// A delivery is abandoned (never settled: its lease must expire) with this probability.
const ABANDON_P: f64 = 0.001;
/// How long one child may run before it gives up (a hang fails the test, never stalls it).
const CHILD_BUDGET: Duration = Duration::from_secs(180);

fn jepsen_config() -> QueueConfig {
    // Short enough that abandoned leases come back quickly, long enough that a settle
    // normally arrives in time even on a loaded machine.
    QueueConfig::default()
        .with_visibility_timeout(Duration::from_secs(1))
        .with_retry(
            courier_core::RetryPolicy::default()
                .with_max_attempts(4)
                .with_base(Duration::from_millis(5))
                .with_factor(2.0)
                .with_max_delay(Duration::from_millis(40))
                .with_jitter(0.5),
        )
}

/// Await `f` for at most 10 s.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("finished within 10 s")
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_millis(),
    )
    .expect("ms")
}

/// How a lease ended, as its holder saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Acked,
    Retried,
    Buried,
    /// The settle came back `LeaseLost` (the lease had expired).
    Lost,
    /// Never settled: the lease had to expire.
    Abandoned,
}

impl Outcome {
    fn code(self) -> &'static str {
        match self {
            Outcome::Acked => "ack",
            Outcome::Retried => "retry",
            Outcome::Buried => "bury",
            Outcome::Lost => "lost",
            Outcome::Abandoned => "abandon",
        }
    }

    fn parse(s: &str) -> Outcome {
        match s {
            "ack" => Outcome::Acked,
            "retry" => Outcome::Retried,
            "bury" => Outcome::Buried,
            "lost" => Outcome::Lost,
            "abandon" => Outcome::Abandoned,
            other => panic!("unknown outcome {other}"),
        }
    }
}

/// One lease as recorded by the process that held it. `start` is taken after `receive`
/// returned and `end` before the settle was sent (or the lease deadline, if earlier): the
/// lease was certainly held during `[start, end)`, so two such intervals of one message that
/// overlap are two leases held at once.
#[derive(Clone, Debug)]
struct LeaseRecord {
    process: usize,
    id: String,
    token: u64,
    attempt: u32,
    start: u64,
    end: u64,
    deadline: u64,
    outcome: Outcome,
}

/// The child: publish `PER_PROCESS` messages in batches, interleaved with consuming, and keep
/// consuming until every message of every process is acked or dead. Writes `P <id>` for each
/// publish that returned `Ok` and `L …` for each lease to `<dir>/child-<n>.log`.
async fn jepsen_child(db: &Path, n: usize) {
    use courier_core::{FailureAction, FailureMode, Settle};
    use rand::Rng;
    let budget = Instant::now() + CHILD_BUDGET;
    let b = SqliteBackend::builder()
        .path(db)
        .default_config(jepsen_config())
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .expect("open");
    let q: &dyn Queue = &b;
    let config = q.queue_config(JEPSEN_QUEUE);
    let log_path = db.with_file_name(format!("child-{n}.log"));
    let mut log = std::io::BufWriter::new(std::fs::File::create(&log_path).expect("log"));
    let mut rng = rand::rng();
    let mut published = 0;
    loop {
        assert!(Instant::now() < budget, "child {n} ran out of time");
        if published < PER_PROCESS {
            let batch: Vec<Message> = (0..100)
                .map(|i| Message::new("k", format!("{n}-{}", published + i)))
                .collect();
            let ids = courier_core::Published::ids(
                &q.publish_batch(JEPSEN_QUEUE, batch).await.expect("publish"),
            );
            for id in &ids {
                writeln!(log, "P {id}").expect("log");
            }
            published += ids.len();
        }
        let ds = q
            .receive(JEPSEN_QUEUE, 10, Duration::from_millis(100))
            .await
            .expect("receive");
        let start = now_ms();
        if ds.is_empty() {
            let s = q.stats(JEPSEN_QUEUE).await.expect("stats");
            let pending = s.ready_total() + s.delayed + s.in_flight;
            let all_published =
                published == PER_PROCESS && s.published == (PER_PROCESS * PROCESSES) as u64;
            if all_published && pending == 0 {
                break;
            }
            continue;
        }
        // Sometimes hold the leases a little, as a handler would.
        if rng.random_bool(0.3) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..3))).await;
        }
        let mut ops = Vec::new();
        let mut pending = Vec::new();
        for d in ds {
            if rng.random_bool(ABANDON_P) {
                let l = d.lease;
                writeln!(
                    log,
                    "L {} {} {} {start} {} {} {}",
                    l.id,
                    l.token,
                    l.attempt,
                    l.deadline_ms,
                    l.deadline_ms,
                    Outcome::Abandoned.code()
                )
                .expect("log");
                continue;
            }
            let (op, outcome) = if rng.random_bool(NACK_P) {
                match config.retry.decide(
                    d.lease.attempt,
                    d.message.max_attempts,
                    FailureMode::Backoff,
                    &mut rng,
                ) {
                    FailureAction::Retry(delay) => (
                        Settle::Retry {
                            lease: d.lease,
                            delay,
                            error: "random nack".into(),
                        },
                        Outcome::Retried,
                    ),
                    FailureAction::Dead => (
                        Settle::Bury {
                            lease: d.lease,
                            error: "random nack".into(),
                        },
                        Outcome::Buried,
                    ),
                }
            } else {
                (Settle::Ack(d.lease), Outcome::Acked)
            };
            ops.push(op);
            pending.push((d.lease, outcome));
        }
        if ops.is_empty() {
            continue;
        }
        let settle_at = now_ms();
        let results = q.settle(JEPSEN_QUEUE, ops).await.expect("settle");
        for ((l, outcome), r) in pending.into_iter().zip(results) {
            let outcome = match r {
                Ok(()) => outcome,
                Err(e) if e.kind() == courier_core::ErrorKind::LeaseLost => Outcome::Lost,
                Err(e) => panic!("settle failed: {e}"),
            };
            writeln!(
                log,
                "L {} {} {} {start} {} {} {}",
                l.id,
                l.token,
                l.attempt,
                settle_at.min(l.deadline_ms),
                l.deadline_ms,
                outcome.code()
            )
            .expect("log");
        }
    }
    log.flush().expect("flush log");
    println!("@@done");
}

fn read_child_log(path: &Path, process: usize) -> (Vec<String>, Vec<LeaseRecord>) {
    let text = std::fs::read_to_string(path).expect("child log");
    let mut published = Vec::new();
    let mut leases = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "P" => published.push(f[1].to_owned()),
            "L" => leases.push(LeaseRecord {
                process,
                id: f[1].to_owned(),
                token: f[2].parse().expect("token"),
                attempt: f[3].parse().expect("attempt"),
                start: f[4].parse().expect("start"),
                end: f[5].parse().expect("end"),
                deadline: f[6].parse().expect("deadline"),
                outcome: Outcome::parse(f[7]),
            }),
            other => panic!("bad log line {other:?}"),
        }
    }
    (published, leases)
}

/// Wait for a child to exit successfully, killing it if it outlives `budget`.
fn wait_child(mut child: Child, budget: Duration) {
    let end = Instant::now() + budget;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert!(status.success(), "child failed: {status:?}");
            return;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child did not finish within {budget:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_publish_and_consume_30000_with_random_nacks() {
    use std::collections::{HashMap, HashSet};
    let name = "three_processes_publish_and_consume_30000_with_random_nacks";
    let role = std::env::var(CHILD).ok();
    if let Some(n) = role.as_deref().and_then(|r| r.strip_prefix("jepsen-")) {
        let db = PathBuf::from(std::env::var(DB).expect("db"));
        jepsen_child(&db, n.parse().expect("child number")).await;
        return;
    }
    if role.is_some() {
        return;
    }
    let t0 = Instant::now();
    let db = temp_db();
    // Create the file (and its schema) once, before the children race to open it.
    drop(within(open(&db)).await);
    let children: Vec<Child> = (0..PROCESSES)
        .map(|n| spawn(name, &format!("jepsen-{n}"), &db))
        .collect();
    let waits: Vec<_> = children
        .into_iter()
        .map(|c| std::thread::spawn(move || wait_child(c, CHILD_BUDGET + Duration::from_secs(10))))
        .collect();
    for w in waits {
        w.join().expect("child waiter");
    }
    let elapsed = t0.elapsed();

    let mut published: Vec<String> = Vec::new();
    let mut leases: Vec<LeaseRecord> = Vec::new();
    for n in 0..PROCESSES {
        let (p, l) = read_child_log(&db.with_file_name(format!("child-{n}.log")), n);
        published.extend(p);
        leases.extend(l);
    }
    let total = PER_PROCESS * PROCESSES;
    let published_set: HashSet<&str> = published.iter().map(String::as_str).collect();
    assert_eq!(published.len(), total, "publishes that returned Ok");
    assert_eq!(published_set.len(), total, "ids are unique");

    // Jepsen accounting: a published message ends acked (exactly once) or dead.
    let b = within(open(&db)).await;
    let q: &dyn Queue = &b;
    let dead = within(q.dead_letters_all(JEPSEN_QUEUE, total))
        .await
        .expect("dead_letters");
    let dead_ids: HashSet<String> = dead.iter().map(|d| d.message.id.to_string()).collect();
    let mut acks: HashMap<&str, usize> = HashMap::new();
    let mut deliveries: HashMap<&str, Vec<&LeaseRecord>> = HashMap::new();
    for l in &leases {
        deliveries.entry(l.id.as_str()).or_default().push(l);
        if l.outcome == Outcome::Acked {
            *acks.entry(l.id.as_str()).or_default() += 1;
        }
    }
    let lost: Vec<&str> = published_set
        .iter()
        .copied()
        .filter(|id| !acks.contains_key(id) && !dead_ids.contains(*id))
        .collect();
    let unexpected: Vec<&str> = deliveries
        .keys()
        .copied()
        .filter(|id| !published_set.contains(id))
        .collect();
    let acked_twice = acks.values().filter(|&&n| n > 1).count();
    let acked_and_dead = acks.keys().filter(|id| dead_ids.contains(**id)).count();
    // Delivered again although no failure was reported for an earlier delivery: the
    // at-least-once duplicates, which only an expired lease (abandoned, or settled too late)
    // may cause.
    let duplicated = deliveries
        .values()
        .filter(|ls| {
            ls.iter()
                .filter(|l| {
                    matches!(
                        l.outcome,
                        Outcome::Acked | Outcome::Lost | Outcome::Abandoned
                    )
                })
                .count()
                > 1
        })
        .count();
    let count = |o: Outcome| leases.iter().filter(|l| l.outcome == o).count();
    println!(
        "jepsen: {PROCESSES} processes, published {} deliveries {} acked {} retried {} buried {} \
         lease-lost {} abandoned {} dead {} | lost {} unexpected {} duplicated {} | {:.1?}",
        published.len(),
        leases.len(),
        count(Outcome::Acked),
        count(Outcome::Retried),
        count(Outcome::Buried),
        count(Outcome::Lost),
        count(Outcome::Abandoned),
        dead_ids.len(),
        lost.len(),
        unexpected.len(),
        duplicated,
        elapsed
    );
    assert!(lost.is_empty(), "lost: {:?}", &lost[..lost.len().min(10)]);
    assert!(
        unexpected.is_empty(),
        "unexpected: {:?}",
        &unexpected[..unexpected.len().min(10)]
    );
    assert_eq!(acked_twice, 0, "a clean ack happens once per message");
    assert_eq!(acked_and_dead, 0, "an acked message is never also dead");
    assert_eq!(
        count(Outcome::Buried) as u64 + expired_and_buried(&deliveries),
        dead_ids.len() as u64,
        "dead letters are the buries and the leases that expired at the last attempt"
    );

    // Q8/Q9 through stats: every published message is acked or dead, nothing else stored.
    let s = within(q.stats(JEPSEN_QUEUE)).await.expect("stats");
    assert_eq!(s.published, total as u64);
    assert_eq!(
        (s.ready_total(), s.delayed, s.in_flight, s.dead),
        (0, 0, 0, dead_ids.len() as u64)
    );
    assert_eq!(s.acked + s.dead, s.published, "conservation: {s:?}");
    assert_eq!(s.acked, count(Outcome::Acked) as u64);
    assert_eq!(
        s.retried,
        (count(Outcome::Retried) + count(Outcome::Lost) + count(Outcome::Abandoned)) as u64
            - expired_and_buried(&deliveries),
        "every failed attempt below the limit was retried: {s:?}"
    );

    // Lease history: per message, attempts 1..=n without gaps, distinct tokens, and no two
    // leases held at the same time.
    let mut overlaps = Vec::new();
    for (id, ls) in &mut deliveries {
        ls.sort_by_key(|l| l.attempt);
        let attempts: Vec<u32> = ls.iter().map(|l| l.attempt).collect();
        let want: Vec<u32> = (1..=ls.len() as u32).collect();
        assert_eq!(
            attempts, want,
            "attempts of {id}: every delivery counted once"
        );
        let tokens: HashSet<u64> = ls.iter().map(|l| l.token).collect();
        assert_eq!(tokens.len(), ls.len(), "tokens of {id} are distinct");
        for pair in ls.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(b.token > a.token, "tokens grow with attempts: {a:?} {b:?}");
        }
        overlaps.extend(overlapping(ls));
        // A redelivery after an expired lease starts no earlier than that lease's deadline.
        for pair in ls.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if matches!(a.outcome, Outcome::Abandoned | Outcome::Lost) {
                assert!(
                    b.start >= a.deadline,
                    "redelivered before expiry: {a:?} {b:?}"
                );
            }
        }
        // The last lease settled the message for good (acked or buried), unless it was
        // buried by expiry.
        let last = ls.last().expect("one lease at least");
        if dead_ids.contains(*id) {
            assert!(
                matches!(
                    last.outcome,
                    Outcome::Buried | Outcome::Abandoned | Outcome::Lost
                ),
                "{last:?}"
            );
        } else {
            assert_eq!(last.outcome, Outcome::Acked, "{last:?}");
        }
    }
    let processes: HashSet<usize> = leases.iter().map(|l| l.process).collect();
    println!(
        "lease history: {} leases of {} messages in {} processes, overlapping {}",
        leases.len(),
        deliveries.len(),
        processes.len(),
        overlaps.len()
    );
    assert!(overlaps.is_empty(), "overlapping leases: {overlaps:#?}");
    assert_eq!(processes.len(), PROCESSES, "every process consumed");
    drop(b);
    let _ = std::fs::remove_dir_all(db.parent().expect("dir"));
}

/// Pairs of leases of one message held at the same time: `[start, end)` of each is a span in
/// which its holder certainly held it (see [`LeaseRecord`]).
fn overlapping(leases: &[&LeaseRecord]) -> Vec<String> {
    let mut found = Vec::new();
    // A lease whose receive returned after its deadline (a very slow machine) has an empty span.
    let held: Vec<&&LeaseRecord> = leases.iter().filter(|l| l.start < l.end).collect();
    for (i, a) in held.iter().enumerate() {
        assert!(a.end <= a.deadline, "{a:?}");
        for b in &held[i + 1..] {
            if a.start < b.end && b.start < a.end {
                found.push(format!("{a:?} / {b:?}"));
            }
        }
    }
    found
}

/// The checker itself: it flags a second lease granted while the first was still held, and
/// accepts a redelivery right after a settle or after the deadline.
#[test]
fn lease_history_check_flags_overlaps() {
    let lease = |token, start, end, deadline, outcome| LeaseRecord {
        process: 0,
        id: "m".into(),
        token,
        attempt: u32::try_from(token).expect("small"),
        start,
        end,
        deadline,
        outcome,
    };
    let a = lease(1, 100, 110, 1_100, Outcome::Retried);
    let after_settle = lease(2, 110, 120, 1_110, Outcome::Acked);
    let during = lease(2, 105, 120, 1_105, Outcome::Acked);
    assert!(overlapping(&[&a, &after_settle]).is_empty());
    assert_eq!(overlapping(&[&a, &during]).len(), 1);
    let expired = lease(1, 100, 1_100, 1_100, Outcome::Abandoned);
    let before_expiry = lease(2, 1_099, 1_200, 2_099, Outcome::Acked);
    let after_expiry = lease(2, 1_100, 1_200, 2_100, Outcome::Acked);
    assert_eq!(overlapping(&[&expired, &before_expiry]).len(), 1);
    assert!(overlapping(&[&expired, &after_expiry]).is_empty());
}

/// Expired leases (abandoned or settled too late) at the last attempt: buried, not retried.
fn expired_and_buried(deliveries: &std::collections::HashMap<&str, Vec<&LeaseRecord>>) -> u64 {
    let limit = jepsen_config().retry.max_attempts;
    deliveries
        .values()
        .flat_map(|ls| ls.iter())
        .filter(|l| matches!(l.outcome, Outcome::Abandoned | Outcome::Lost) && l.attempt >= limit)
        .count() as u64
}
