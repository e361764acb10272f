//! The metrics Courier records: one scripted workload on memory, SQLite and Redis, read back
//! from a debugging recorder. The counters must equal the workload's numbers and carry the
//! same label keys on every backend; every series in `courier::telemetry::SERIES` must be
//! recorded, and nothing else.
//!
//! One recorder serves the whole binary (a process has one global recorder), so each test
//! reads only the series labelled with its own queue, topic and backend.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use courier::telemetry::{SERIES, names};
use courier::{
    Courier, EventBusExt, HandlerError, Message, Priority, QueueConfig, QueueExt, ReplayFrom,
    RetryPolicy, SubscribeOptions,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use support::{redis, unique};

const LIMIT: Duration = Duration::from_secs(60);

fn snapshotter() -> &'static Snapshotter {
    static S: OnceLock<Snapshotter> = OnceLock::new();
    S.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder this test binary installs");
        snapshotter
    })
}

/// One recorded value.
#[derive(Debug)]
struct Point {
    name: String,
    labels: BTreeMap<String, String>,
    /// A counter's count, a histogram's number of values, a gauge's value.
    value: i64,
}

impl Point {
    fn count(&self) -> i64 {
        self.value
    }
}

/// Everything recorded so far. A snapshot drains the recorder (counters and gauges are swapped
/// to zero, histograms emptied) and the tests run at once, so every snapshot is merged here:
/// counters and incremented gauges (handlers in flight) add up, histograms append, and gauges
/// the poller sets keep the largest value seen.
fn store() -> &'static Mutex<HashMap<CompositeKey, DebugValue>> {
    static S: OnceLock<Mutex<HashMap<CompositeKey, DebugValue>>> = OnceLock::new();
    S.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Every point whose labels include all of `with`.
fn points(with: &[(&str, &str)]) -> Vec<Point> {
    let mut store = store().lock().expect("store lock");
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let summed =
            [names::WORKER_IN_FLIGHT, names::EVENT_WORKER_IN_FLIGHT].contains(&key.key().name());
        match (store.get_mut(&key), value) {
            (Some(DebugValue::Counter(a)), DebugValue::Counter(b)) => *a += b,
            (Some(DebugValue::Histogram(a)), DebugValue::Histogram(b)) => a.extend(b),
            (Some(DebugValue::Gauge(a)), DebugValue::Gauge(b)) => {
                *a = if summed { *a + b } else { (*a).max(b) };
            }
            (_, value) => {
                store.insert(key, value);
            }
        }
    }
    store
        .iter()
        .map(|(key, value)| {
            let (_kind, key): (MetricKind, _) = key.clone().into_parts();
            let (name, labels) = key.into_parts();
            Point {
                name: name.as_str().to_string(),
                labels: labels
                    .into_iter()
                    .map(|l| (l.key().to_string(), l.value().to_string()))
                    .collect(),
                value: match value {
                    DebugValue::Counter(n) => *n as i64,
                    DebugValue::Histogram(v) => v.len() as i64,
                    DebugValue::Gauge(g) => g.into_inner() as i64,
                },
            }
        })
        .filter(|p| {
            with.iter()
                .all(|(k, v)| p.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The sum of `name` over points matching `with`.
fn total(ps: &[Point], name: &str, with: &[(&str, &str)]) -> i64 {
    ps.iter()
        .filter(|p| p.name == name)
        .filter(|p| {
            with.iter()
                .all(|(k, v)| p.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(Point::count)
        .sum()
}

/// Each series' label keys.
fn label_keys(ps: &[Point]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in ps {
        out.entry(p.name.clone())
            .or_default()
            .extend(p.labels.keys().cloned());
    }
    out
}

/// The workload's names.
struct Names {
    queue: String,
    topic: String,
    group: String,
    channel: String,
}

/// 100 messages: 88 succeed at once, 10 fail once then succeed, 2 fail for good. 20 events
/// handled by one group. 5 pub/sub messages received by one subscriber.
async fn workload(courier: &Courier, n: &Names) {
    let q = courier.queue();
    q.configure(
        &n.queue,
        QueueConfig::default().with_retry(
            RetryPolicy::default()
                .with_base(Duration::from_millis(1))
                .with_max_delay(Duration::from_millis(5))
                .with_jitter(0.0),
        ),
    )
    .expect("configure");
    let mut batch = Vec::new();
    for i in 0..100u32 {
        let kind = if i % 2 == 0 { "even" } else { "odd" };
        let priority = Priority::from_index(i as usize % 4).expect("four levels");
        batch.push(
            Message::new(kind, format!("{i}"))
                .with_priority(priority)
                .with_header("n", i.to_string()),
        );
    }
    tokio::time::timeout(LIMIT, q.publish_batch(&n.queue, batch))
        .await
        .expect("publish in time")
        .expect("publish");
    let handler = |m: Message| async move {
        let i: u32 = m.header("n").and_then(|s| s.parse().ok()).unwrap_or(0);
        match i {
            0 | 1 => Err(HandlerError::permanent("broken for good")),
            2..=11 if m.attempt == 1 => Err(HandlerError::retry("first attempt fails")),
            _ => Ok(()),
        }
    };
    let worker = courier
        .worker(&n.queue)
        .concurrency(4)
        .idle_wait(Duration::from_millis(50))
        .handler("even", handler)
        .handler("odd", handler)
        .start()
        .expect("worker");
    let settled = async {
        loop {
            let s = q.stats(&n.queue).await.expect("stats");
            if s.acked + s.dead_lettered == 100 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let s = tokio::time::timeout(LIMIT, settled)
        .await
        .expect("the workload settles in time");
    assert_eq!((s.acked, s.retried, s.dead_lettered), (98, 10, 2));
    tokio::time::timeout(LIMIT, worker.stop(Duration::from_secs(5)))
        .await
        .expect("worker stops in time");

    let bus = courier.events();
    bus.create_group(&n.topic, &n.group, ReplayFrom::Start)
        .await
        .expect("create group");
    for i in 0..20 {
        tokio::time::timeout(
            LIMIT,
            bus.emit(&n.topic, Message::new("ev", format!("{i}"))),
        )
        .await
        .expect("emit in time")
        .expect("emit");
    }
    let consumer = courier
        .group_consumer(&n.group)
        .idle_wait(Duration::from_millis(50))
        .on(&n.topic, |_m: Message| async { Ok(()) })
        .start()
        .await
        .expect("group consumer");
    let handled = async {
        loop {
            let g = bus
                .group_stats(&n.topic, &n.group)
                .await
                .expect("group stats");
            if g.queue.acked == 20 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(LIMIT, handled)
        .await
        .expect("events handled in time");
    tokio::time::timeout(LIMIT, consumer.stop(Duration::from_secs(5)))
        .await
        .expect("consumer stops in time");

    let ps = courier.pubsub();
    let mut sub = ps
        .subscribe(&n.channel, SubscribeOptions::default())
        .await
        .expect("subscribe");
    for i in 0..5 {
        ps.publish(&n.channel, Message::new("note", format!("{i}")))
            .await
            .expect("broadcast");
    }
    for _ in 0..5 {
        tokio::time::timeout(LIMIT, sub.next())
            .await
            .expect("broadcast arrives in time")
            .expect("subscription open");
    }
}

/// Run the workload and check its numbers; the label keys of every series it recorded.
async fn check(courier: Courier) -> BTreeMap<String, BTreeSet<String>> {
    snapshotter();
    let backend = courier.backend_name();
    // Install first (above), then register: the handles are created by this connect's first
    // use of each name.
    let n = Names {
        queue: unique("tm-q"),
        topic: unique("tm-t"),
        group: unique("tm-g"),
        channel: unique("tm-c"),
    };
    workload(&courier, &n).await;

    let q = [("backend", backend), ("queue", n.queue.as_str())];
    let ps = points(&q);
    assert_eq!(total(&ps, names::PUBLISHED, &[]), 100, "published");
    assert_eq!(
        total(
            &ps,
            names::PUBLISHED,
            &[("priority", "critical"), ("kind", "even")]
        ),
        25,
        "published, critical and even: i = 0, 4, 8, … 96"
    );
    assert_eq!(total(&ps, names::DELIVERED, &[]), 110, "delivered");
    assert_eq!(total(&ps, names::ACKED, &[]), 98, "acked");
    assert_eq!(total(&ps, names::RETRIED, &[]), 10, "retried");
    assert_eq!(total(&ps, names::DEAD_LETTERED, &[]), 2, "dead-lettered");
    assert_eq!(total(&ps, names::RELEASED, &[]), 0, "released");
    assert_eq!(total(&ps, names::LEASE_LOST, &[]), 0, "lease lost");
    assert_eq!(total(&ps, names::DEDUPLICATED, &[]), 0, "deduplicated");
    assert_eq!(
        total(&ps, names::PUBLISH_DURATION, &[]),
        1,
        "one publish call"
    );
    assert_eq!(
        total(&ps, names::QUEUE_WAIT, &[]),
        100,
        "one wait per first delivery"
    );
    assert_eq!(
        total(&ps, names::HANDLER_DURATION, &[("outcome", "ok")]),
        98,
        "handlers that succeeded"
    );
    assert_eq!(
        total(&ps, names::HANDLER_DURATION, &[("outcome", "retried")]),
        10
    );
    assert_eq!(
        total(&ps, names::HANDLER_DURATION, &[("outcome", "dead")]),
        2
    );
    assert_eq!(
        total(&ps, names::WORKER_IN_FLIGHT, &[]),
        0,
        "no handler left running"
    );
    assert_eq!(
        total(&ps, names::WORKER_CONCURRENCY_LIMIT, &[]),
        4,
        "the worker's fixed concurrency"
    );

    let t = [("backend", backend), ("topic", n.topic.as_str())];
    let es = points(&t);
    assert_eq!(total(&es, names::EVENTS_EMITTED, &[("kind", "ev")]), 20);
    assert_eq!(
        total(&es, names::EVENTS_DELIVERED, &[("group", &n.group)]),
        20
    );
    assert_eq!(
        total(&es, names::EVENTS_HANDLED, &[("outcome", "acked")]),
        20
    );
    assert_eq!(
        total(&es, names::EVENT_HANDLER_DURATION, &[("outcome", "ok")]),
        20
    );
    assert_eq!(
        total(&es, names::EVENT_WORKER_CONCURRENCY_LIMIT, &[]),
        8,
        "the group consumer's default concurrency"
    );

    let p = points(&[("backend", backend), ("kind", "note")]);
    assert!(total(&p, names::PUBSUB_PUBLISHED, &[]) >= 5, "broadcasts");
    assert!(
        total(&p, names::PUBSUB_RECEIVED, &[]) >= 5,
        "broadcasts received"
    );

    let mut keys = label_keys(&ps);
    keys.extend(label_keys(&es));
    keys.extend(label_keys(&p));
    keys
}

/// The label keys every backend must share.
fn expected_keys() -> BTreeMap<String, BTreeSet<String>> {
    let set = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<BTreeSet<_>>();
    let q = set(&["backend", "queue"]);
    let qpk = set(&["backend", "queue", "priority", "kind"]);
    let g = set(&["backend", "topic", "group"]);
    [
        (names::PUBLISHED, qpk.clone()),
        (names::DELIVERED, qpk),
        (names::DEDUPLICATED, q.clone()),
        (names::PUBLISH_DURATION, q.clone()),
        (names::ACKED, q.clone()),
        (names::RETRIED, q.clone()),
        (names::DEAD_LETTERED, q.clone()),
        (names::RELEASED, q.clone()),
        (names::LEASE_LOST, q.clone()),
        (names::WORKER_IN_FLIGHT, q.clone()),
        (names::WORKER_CONCURRENCY_LIMIT, q),
        (names::QUEUE_WAIT, set(&["backend", "queue", "priority"])),
        (
            names::HANDLER_DURATION,
            set(&["backend", "queue", "kind", "outcome"]),
        ),
        (names::EVENTS_EMITTED, set(&["backend", "topic", "kind"])),
        (names::EVENTS_DELIVERED, g.clone()),
        (
            names::EVENTS_HANDLED,
            set(&["backend", "topic", "group", "outcome"]),
        ),
        (
            names::EVENT_HANDLER_DURATION,
            set(&["backend", "topic", "group", "kind", "outcome"]),
        ),
        (names::EVENT_WORKER_IN_FLIGHT, g.clone()),
        (names::EVENT_WORKER_CONCURRENCY_LIMIT, g),
        (names::PUBSUB_PUBLISHED, set(&["backend", "kind"])),
        (names::PUBSUB_RECEIVED, set(&["backend", "kind"])),
    ]
    .into_iter()
    .map(|(n, k)| (n.to_string(), k))
    .collect()
}

fn temp_db(name: &str) -> (tempdir::Dir, String) {
    let dir = tempdir::Dir::new(name);
    let url = format!("sqlite://{}", dir.path.join("courier.db").display());
    (dir, url)
}

/// A directory removed on drop (no dependency for one test helper).
mod tempdir {
    pub(crate) struct Dir {
        pub(crate) path: std::path::PathBuf,
    }
    impl Dir {
        pub(crate) fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(super::unique(name));
            std::fs::create_dir_all(&path).expect("temp dir");
            Dir { path }
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_counts_the_workload_with_the_shared_labels() {
    snapshotter();
    let courier = courier::connect("memory://").await.expect("memory");
    assert_eq!(check(courier).await, expected_keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_counts_the_workload_with_the_shared_labels() {
    snapshotter();
    let (_dir, url) = temp_db("tm-sqlite");
    let courier = courier::connect(&url).await.expect("sqlite");
    assert_eq!(check(courier).await, expected_keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_counts_the_workload_with_the_shared_labels() {
    snapshotter();
    let Some(courier) = redis("redis_counts_the_workload_with_the_shared_labels").await else {
        return;
    };
    assert_eq!(check(courier).await, expected_keys());
}

/// The stats poller sets the depth gauges; with the workload's series, every name in
/// `SERIES` is recorded, and no other `courier_` name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_in_the_list_is_recorded_and_no_other() {
    snapshotter();
    let (_dir, url) = temp_db("tm-series");
    let courier = courier::connect(&url).await.expect("sqlite");
    let _keys = check(courier.clone()).await;
    // Some depth to report: one ready message, one dead letter, a lagging group.
    let queue = unique("tm-depth");
    let q = courier.queue();
    q.publish(&queue, Message::new("k", ""))
        .await
        .expect("publish");
    q.publish(&queue, Message::new("k", ""))
        .await
        .expect("publish");
    let d = q
        .receive_one(&queue, Duration::from_secs(5))
        .await
        .expect("receive")
        .expect("a delivery");
    q.fail(&queue, &d, "no", courier::FailureMode::Permanent)
        .await
        .expect("bury");
    let poller = courier::telemetry::spawn_stats_poller(courier.clone(), Duration::from_millis(20));
    let polled = async {
        loop {
            let ps = points(&[("queue", queue.as_str())]);
            if total(&ps, names::QUEUE_DEAD, &[]) == 1
                && total(&ps, names::QUEUE_READY, &[("priority", "normal")]) == 1
            {
                return ps;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let ps = tokio::time::timeout(LIMIT, polled)
        .await
        .expect("the poller sets the gauges in time");
    poller.abort();
    assert_eq!(total(&ps, names::QUEUE_DELAYED, &[]), 0);
    assert_eq!(total(&ps, names::QUEUE_IN_FLIGHT, &[]), 0);
    let gauges = label_keys(&ps);
    assert_eq!(
        gauges.get(names::QUEUE_READY).cloned().unwrap_or_default(),
        ["backend", "priority", "queue"]
            .map(String::from)
            .into_iter()
            .collect()
    );

    let recorded: BTreeSet<String> = points(&[])
        .into_iter()
        .map(|p| p.name)
        .filter(|n| n.starts_with("courier_"))
        .collect();
    let listed: BTreeSet<String> = SERIES.iter().map(|s| s.to_string()).collect();
    let unlisted: Vec<_> = recorded.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "recorded but not in SERIES: {unlisted:?}"
    );
    let missing: Vec<_> = listed.difference(&recorded).collect();
    assert!(
        missing.is_empty(),
        "in SERIES but never recorded: {missing:?}"
    );
}
