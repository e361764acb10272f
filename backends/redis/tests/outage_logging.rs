//! Outages are logged once: while Redis is away, calls fail with `Unavailable` (many of them),
//! and the log gets exactly one WARN "connection lost" when a pool of connections loses Redis
//! and one INFO "connection restored" (with `outage_ms`) when it is back, per pool: `commands`
//! (the shared connection), `waits` (blocking receives) and `pubsub` (the subscriber
//! connection). On private `redis-server`s (restarted, or their clients killed by id); never
//! the shared one.
//!
//! Log lines are captured with a tiny `tracing::Subscriber` (no `tracing-subscriber`, which is
//! not in the dependency tree), installed process-wide; each test reads only the lines of its
//! own backend (by URL, which names its private server's port).

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use courier_core::{
    ErrorKind, Message, PubSub, Queue, QueueExt, SubscribeOptions, Subscription, redact_url,
};
use courier_redis::RedisBackend;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use support::logs::{Line, LogRecorder};

fn recorder() -> &'static LogRecorder {
    static R: OnceLock<LogRecorder> = OnceLock::new();
    R.get_or_init(|| {
        let r = LogRecorder::new(tracing::Level::INFO, "courier");
        tracing::subscriber::set_global_default(r.clone()).expect("the only global subscriber");
        r
    })
}

const POOLS: [&str; 3] = ["commands", "waits", "pubsub"];

/// The lines about connections lost or restored, of one backend (by its shown URL) and pool.
fn transitions(url: &str, pool: &str) -> Vec<Line> {
    recorder()
        .lines()
        .into_iter()
        .filter(|l| l.field("url") == url && l.field("pool") == pool)
        .filter(|l| {
            let m = l.field("message");
            m.contains("connection lost") || m.contains("connection restored")
        })
        .collect()
}

fn restored(url: &str, pool: &str) -> usize {
    transitions(url, pool)
        .iter()
        .filter(|l| l.level == tracing::Level::INFO)
        .count()
}

/// `[lost, restored]` the given number of times, as (level, what) pairs.
fn outages(n: usize) -> Vec<(tracing::Level, &'static str)> {
    (0..n)
        .flat_map(|_| {
            [
                (tracing::Level::WARN, "lost"),
                (tracing::Level::INFO, "restored"),
            ]
        })
        .collect()
}

fn shape(lines: &[Line]) -> Vec<(tracing::Level, &'static str)> {
    lines
        .iter()
        .map(|l| {
            let lost = l.field("message").contains("connection lost");
            (l.level, if lost { "lost" } else { "restored" })
        })
        .collect()
}

/// A backend on a private server with every pool in use: a publisher calling every 10 ms (the
/// shared connection), a worker waiting on an empty queue (a blocking connection, retrying
/// after 10 ms on errors) and a subscription (the pub/sub connection).
struct Load {
    backend: RedisBackend,
    /// The URL as the backend shows it (password redacted).
    shown: String,
    sub: Subscription,
    stop: Arc<AtomicBool>,
    failed_publishes: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    async fn start(server: &support::PrivateRedis) -> Load {
        recorder();
        // The default user has no password, so Redis accepts any: the URL carries one that must
        // never show.
        let url = format!("redis://default:s3cr3t-pw@127.0.0.1:{}", server.port);
        let backend = timeout(
            Duration::from_secs(10),
            RedisBackend::builder()
                .url(&url)
                .key_prefix("outage-log")
                .connection_timeout(Duration::from_millis(500))
                .response_timeout(Duration::from_secs(2))
                .build(),
        )
        .await
        .expect("build in time")
        .expect("build");
        let sub = timeout(
            Duration::from_secs(10),
            backend.subscribe("news", SubscribeOptions::default()),
        )
        .await
        .expect("subscribe in time")
        .expect("subscribe");
        let stop = Arc::new(AtomicBool::new(false));
        let failed_publishes = Arc::new(AtomicUsize::new(0));
        let publisher = tokio::spawn({
            let (b, stop, failed) = (backend.clone(), stop.clone(), failed_publishes.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = timeout(
                        Duration::from_secs(5),
                        QueueExt::publish(&b, "work", Message::new("t", "x")),
                    )
                    .await
                    .expect("publish returns within its timeouts");
                    if let Err(e) = sent {
                        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e:#}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    sleep(Duration::from_millis(10)).await;
                }
            }
        });
        let waiter = tokio::spawn({
            let (b, stop) = (backend.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let got = timeout(
                        Duration::from_secs(10),
                        b.receive("idle", 1, Duration::from_secs(2)),
                    )
                    .await
                    .expect("receive returns within its wait");
                    if let Err(e) = got {
                        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e:#}");
                        sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
        Load {
            shown: redact_url(&url),
            backend,
            sub,
            stop,
            failed_publishes,
            tasks: vec![publisher, waiter],
        }
    }

    /// Wait until each of `pools` logged its `round`-th return.
    async fn await_restored(&self, pools: &[&str], round: usize) {
        let end = Instant::now() + Duration::from_secs(20);
        while pools.iter().any(|p| restored(&self.shown, p) < round) {
            assert!(
                Instant::now() < end,
                "round {round}: not every pool logged its return: {:#?}",
                pools
                    .iter()
                    .map(|p| (p, transitions(&self.shown, p)))
                    .collect::<Vec<_>>()
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Check that everything works again, stop the load, and return each pool's lines.
    async fn finish(mut self) -> BTreeMap<&'static str, Vec<Line>> {
        QueueExt::publish(&self.backend, "work", Message::new("t", "after"))
            .await
            .expect("publish after the outages");
        PubSub::publish(&self.backend, "news", Message::new("n", "back"))
            .await
            .expect("pub/sub publish");
        let got = self
            .sub
            .next_timeout(Duration::from_secs(5))
            .await
            .expect("the subscription works after the outages");
        assert_eq!(got.kind, "n");
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            // The worker may be in a 2 s wait.
            timeout(Duration::from_secs(10), t)
                .await
                .expect("the load stops")
                .expect("the load ran without panics");
        }
        // Nothing late (a stale transition) may follow the last return.
        sleep(Duration::from_millis(200)).await;
        let lines: BTreeMap<&'static str, Vec<Line>> = POOLS
            .iter()
            .map(|p| (*p, transitions(&self.shown, p)))
            .collect();
        for l in lines.values().flatten() {
            assert_eq!(l.field("backend"), "redis", "{l:?}");
            assert_eq!(l.field("url"), self.shown, "{l:?}");
            if l.level == tracing::Level::WARN {
                assert!(
                    l.field("error").contains("unavailable"),
                    "the lost line carries the error: {l:?}"
                );
            } else {
                let ms = l.field("outage_ms").parse::<u64>();
                assert!(ms.is_ok_and(|ms| ms < 20_000), "outage_ms: {l:?}");
            }
        }
        let everything = format!("{:?}", recorder().lines());
        assert!(
            !everything.contains("s3cr3t-pw"),
            "a password reached the log"
        );
        lines
    }
}

/// Redis is killed and comes back 400 ms later, three times: every pool was using its
/// connection, so each logs three outages, each once, though many calls failed in each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_outage_is_logged_once_per_pool() {
    let Some(mut server) =
        support::start_or_skip("outage_logging", &["--save", "", "--appendonly", "no"])
    else {
        return;
    };
    let load = Load::start(&server).await;
    const OUTAGES: usize = 3;
    for round in 1..=OUTAGES {
        // Let the publisher run and the worker settle into its wait.
        sleep(Duration::from_millis(300)).await;
        let failed_before = load.failed_publishes.load(Ordering::Relaxed);
        server.kill9();
        sleep(Duration::from_millis(400)).await;
        server.spawn().expect("restart the private server");
        assert!(
            server.wait_listening(Duration::from_secs(10)).await,
            "the private server is back"
        );
        load.await_restored(&POOLS, round).await;
        // Several calls failed in this outage (one line per outage, not per failed call).
        let failed = load.failed_publishes.load(Ordering::Relaxed) - failed_before;
        assert!(failed >= 3, "round {round}: only {failed} publishes failed");
    }
    let lines = load.finish().await;
    for (pool, lines) in &lines {
        assert_eq!(shape(lines), outages(OUTAGES), "pool {pool}: {lines:#?}");
    }
    // The commands pool was in use all along, so its outages span (nearly) the downtime.
    for l in lines["commands"]
        .iter()
        .filter(|l| l.level == tracing::Level::INFO)
    {
        let ms: u64 = l.field("outage_ms").parse().unwrap_or(0);
        assert!(ms >= 300, "outage_ms for a 400 ms outage: {l:?}");
    }
}

/// The server stays up but closes every connection of the backend (`CLIENT KILL ID` of each
/// client but the test's own), three times: short outages, still one line each way per pool.
/// A waiting connection that was idle in the pool is replaced at once without a failed call,
/// which is not an outage, so the `waits` pool logs at most one per kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_are_short_outages_logged_once() {
    let Some(server) =
        support::start_or_skip("outage_logging", &["--save", "", "--appendonly", "no"])
    else {
        return;
    };
    let load = Load::start(&server).await;
    let admin = redis::Client::open(server.url()).expect("admin client");
    let mut admin = timeout(
        Duration::from_secs(10),
        admin.get_multiplexed_async_connection(),
    )
    .await
    .expect("admin connects in time")
    .expect("admin connects");
    let me: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut admin)
        .await
        .expect("CLIENT ID");
    const KILLS: usize = 3;
    for round in 1..=KILLS {
        sleep(Duration::from_millis(300)).await;
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut admin)
            .await
            .expect("CLIENT LIST");
        let ids: Vec<i64> = list
            .lines()
            .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
            .filter(|id| *id != me)
            .collect();
        assert!(ids.len() >= 3, "the backend's connections: {list}");
        for id in ids {
            let _: redis::Value = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query_async(&mut admin)
                .await
                .expect("CLIENT KILL ID");
        }
        load.await_restored(&["commands", "pubsub"], round).await;
    }
    let lines = load.finish().await;
    assert_eq!(
        shape(&lines["commands"]),
        outages(KILLS),
        "{:#?}",
        lines["commands"]
    );
    assert_eq!(
        shape(&lines["pubsub"]),
        outages(KILLS),
        "{:#?}",
        lines["pubsub"]
    );
    let waits = shape(&lines["waits"]);
    assert!(
        waits.len() <= 2 * KILLS && waits == outages(waits.len() / 2),
        "{:#?}",
        lines["waits"]
    );
}
