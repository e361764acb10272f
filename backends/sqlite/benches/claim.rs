//! Claim cost must not grow with rows the claim never returns: receive + ack of one message on
//! a queue that also holds 100,000 delayed rows (or 100,000 dead letters) should cost about
//! the same as on an otherwise empty queue, because every statement on the hot path reads a
//! partial index of its own state (`courier_messages_ready`, `…_delayed`, `…_leases`).
//!
//! ```text
//! cargo bench -p courier-sqlite --bench claim
//! ```
//!
//! Each case is a separate queue in its own database file; the ready messages an iteration
//! consumes are published before the timed part. `delayed_10k` and `delayed_100k_elsewhere`
//! (the rows in another queue of the same file) tell a cost of the claim's queries apart from
//! the cost of a bigger file. Before criterion's own runs, the cases are also measured
//! round-robin and printed as ratios to the empty queue.

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use courier_core::{Message, Queue, QueueConfig, QueueExt, Settle};
use courier_sqlite::SqliteBackend;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const QUEUE: &str = "bench.claim";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "courier-sqlite-bench-claim-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

async fn open(path: &Path) -> SqliteBackend {
    SqliteBackend::builder()
        .path(path)
        .default_config(QueueConfig::default().with_visibility_timeout(Duration::from_secs(60)))
        .build()
        .await
        .expect("open")
}

fn msgs(n: usize) -> Vec<Message> {
    (0..n)
        .map(|_| Message::new("b", &b"0123456789abcdef"[..]))
        .collect()
}

/// What else the database holds besides the messages being claimed.
#[derive(Clone, Copy, Debug)]
enum Background {
    Nothing,
    /// This many delayed rows in the measured queue.
    Delayed(usize),
    /// This many delayed rows in another queue of the same file: the control that separates
    /// the cost of a bigger file (deeper B-trees, more pages) from the claim's own queries.
    DelayedElsewhere(usize),
    /// This many dead letters in the measured queue.
    Dead(usize),
}

async fn fill(b: &SqliteBackend, what: Background) {
    let delayed = |queue: &'static str, n: usize| async move {
        for _ in 0..n / 1_000 {
            let batch: Vec<Message> = msgs(1_000)
                .into_iter()
                .map(|m| m.with_delay(Duration::from_secs(24 * 3600)))
                .collect();
            b.publish_batch(queue, batch).await.expect("publish");
        }
    };
    let (want_delayed, want_dead) = match what {
        Background::Nothing => (0, 0),
        Background::Delayed(n) => {
            delayed(QUEUE, n).await;
            (n, 0)
        }
        Background::DelayedElsewhere(n) => {
            delayed("bench.elsewhere", n).await;
            (0, 0)
        }
        Background::Dead(n) => {
            for _ in 0..n / 1_000 {
                b.publish_batch(QUEUE, msgs(1_000)).await.expect("publish");
                let ds = b
                    .receive(QUEUE, 1_000, Duration::ZERO)
                    .await
                    .expect("receive");
                assert_eq!(ds.len(), 1_000);
                let ops = ds
                    .into_iter()
                    .map(|d| Settle::Bury {
                        lease: d.lease,
                        error: "bench".into(),
                    })
                    .collect();
                for r in b.settle(QUEUE, ops).await.expect("settle") {
                    r.expect("bury");
                }
            }
            (0, n)
        }
    };
    let s = b.stats(QUEUE).await.expect("stats");
    assert_eq!(
        (s.delayed, s.dead, s.ready_total()),
        (want_delayed as u64, want_dead as u64, 0)
    );
}

/// Publish `n` ready messages (untimed), then time `n` receive + ack.
async fn receive_ack(b: &SqliteBackend, n: usize) -> Duration {
    for chunk in msgs(n).chunks(1_000) {
        b.publish_batch(QUEUE, chunk.to_vec())
            .await
            .expect("publish");
    }
    let start = Instant::now();
    for _ in 0..n {
        let d = b
            .receive_one(QUEUE, Duration::ZERO)
            .await
            .expect("receive")
            .expect("a ready message");
        b.ack(QUEUE, &d.lease).await.expect("ack");
    }
    start.elapsed()
}

/// The cases measured round-robin: on a busy machine, load changes over seconds would
/// otherwise land on one case and not the others. Prints the median per operation of each
/// case and its ratio to the empty queue.
fn interleaved(rt: &tokio::runtime::Runtime, cases: &[(&str, SqliteBackend)]) {
    const ROUNDS: usize = 15;
    const OPS: usize = 200;
    let mut per_op: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    rt.block_on(async {
        for _ in 0..ROUNDS {
            for (i, (_, b)) in cases.iter().enumerate() {
                let t = receive_ack(b, OPS).await;
                per_op[i].push(t.as_secs_f64() * 1e6 / OPS as f64);
            }
        }
    });
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&mut per_op[0].clone());
    println!("interleaved receive + ack, median of {ROUNDS} rounds of {OPS}:");
    for ((name, _), v) in cases.iter().zip(&mut per_op) {
        let m = median(v);
        println!(
            "  {name:<36} {m:>8.1} µs/op  ratio to empty {:.2}",
            m / base
        );
    }
}

fn claim(c: &mut Criterion) {
    let rt = rt();
    let kinds = [
        ("receive_ack/empty", Background::Nothing),
        ("receive_ack/delayed_10k", Background::Delayed(10_000)),
        ("receive_ack/delayed_100k", Background::Delayed(100_000)),
        (
            "receive_ack/delayed_100k_elsewhere",
            Background::DelayedElsewhere(100_000),
        ),
        ("receive_ack/dead_100k", Background::Dead(100_000)),
    ];
    let dirs: Vec<PathBuf> = kinds.iter().map(|_| temp_dir()).collect();
    let cases: Vec<(&str, SqliteBackend)> = kinds
        .into_iter()
        .zip(&dirs)
        .map(|((name, what), dir)| {
            let b = rt.block_on(async {
                let b = open(&dir.join("claim.db")).await;
                fill(&b, what).await;
                b
            });
            (name, b)
        })
        .collect();
    interleaved(&rt, &cases);
    let mut g = c.benchmark_group("sqlite/claim");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));
    for (name, b) in &cases {
        g.bench_function(*name, |bench| {
            bench.to_async(&rt).iter_custom(|iters| {
                let b = b.clone();
                async move { receive_ack(&b, usize::try_from(iters).expect("iters")).await }
            })
        });
    }
    g.finish();
    drop(cases);
    for dir in dirs {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

criterion_group!(benches, claim);
criterion_main!(benches);
