//! Throughput smoke checks (run with `cargo test --release -p courier-sqlite --test
//! throughput -- --ignored --nocapture`). Targets: publish ≥ 5,000/s at batch 1, end to end
//! (publish, receive, ack) ≥ 50,000/s at batch 100.

use std::time::{Duration, Instant};

use courier_core::{Message, Queue, QueueExt, Settle};
use courier_sqlite::SqliteBackend;

fn temp_db(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "courier-sqlite-bench-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join("bench.db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement; run explicitly in release mode"]
async fn publish_batch_1() {
    let path = temp_db("pub1");
    let b = SqliteBackend::builder()
        .path(&path)
        .build()
        .await
        .expect("open");
    let payload = vec![7u8; 200];
    // Sequential, one at a time.
    let n = 5_000;
    let t = Instant::now();
    for _ in 0..n {
        b.publish("q", Message::new("k", payload.clone()))
            .await
            .expect("publish");
    }
    let seq = n as f64 / t.elapsed().as_secs_f64();
    // 32 concurrent publishers.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let b = b.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / 32 {
                b.publish("q", Message::new("k", payload.clone()))
                    .await
                    .expect("publish");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let conc = (n / 32 * 32) as f64 / t.elapsed().as_secs_f64();
    println!("publish batch 1: sequential {seq:.0}/s, 32 concurrent {conc:.0}/s");
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement; run explicitly in release mode"]
async fn end_to_end_batch_100() {
    let path = temp_db("e2e");
    let b = SqliteBackend::builder()
        .path(&path)
        .build()
        .await
        .expect("open");
    let payload = vec![7u8; 200];
    let total = 100_000;
    let t = Instant::now();
    let producer = {
        let b = b.clone();
        let payload = payload.clone();
        tokio::spawn(async move {
            for _ in 0..total / 100 {
                let batch: Vec<Message> = (0..100)
                    .map(|_| Message::new("k", payload.clone()))
                    .collect();
                b.publish_batch("q", batch).await.expect("publish");
            }
        })
    };
    let mut done = 0;
    while done < total {
        let ds = b
            .receive("q", 100, Duration::from_secs(5))
            .await
            .expect("receive");
        assert!(!ds.is_empty(), "stalled at {done}");
        done += ds.len();
        let ops: Vec<Settle> = ds.iter().map(|d| Settle::Ack(d.lease)).collect();
        for r in b.settle("q", ops).await.expect("settle") {
            r.expect("ack");
        }
    }
    producer.await.expect("producer");
    let rate = total as f64 / t.elapsed().as_secs_f64();
    println!("end to end batch 100: {rate:.0} msgs/s");
    let s = b.stats("q").await.expect("stats");
    assert_eq!(s.acked, total as u64);
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement; run explicitly in release mode"]
async fn phases_batch_100() {
    let path = temp_db("phases");
    let b = SqliteBackend::builder()
        .path(&path)
        .build()
        .await
        .expect("open");
    let payload = vec![7u8; 200];
    let rounds = 500;
    let t = Instant::now();
    for _ in 0..rounds {
        let batch: Vec<Message> = (0..100)
            .map(|_| Message::new("k", payload.clone()))
            .collect();
        b.publish_batch("q", batch).await.expect("publish");
    }
    let p = t.elapsed();
    let t = Instant::now();
    let mut all = Vec::new();
    for _ in 0..rounds {
        all.push(b.receive("q", 100, Duration::ZERO).await.expect("receive"));
    }
    let r = t.elapsed();
    let t = Instant::now();
    for ds in all {
        let ops: Vec<Settle> = ds.iter().map(|d| Settle::Ack(d.lease)).collect();
        b.settle("q", ops).await.expect("settle");
    }
    let s = t.elapsed();
    let per = |d: Duration| (rounds * 100) as f64 / d.as_secs_f64();
    println!(
        "phases: publish {:.0}/s, receive {:.0}/s, ack {:.0}/s",
        per(p),
        per(r),
        per(s)
    );
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement; run explicitly in release mode"]
async fn end_to_end_through_the_worker() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let path = temp_db("worker");
    let b = SqliteBackend::builder()
        .path(&path)
        .build()
        .await
        .expect("open");
    let q: Arc<dyn Queue> = Arc::new(b.clone());
    let total = 100_000u64;
    let handled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let (h, d) = (handled.clone(), done.clone());
    let worker = courier_core::Worker::builder(q.clone(), "w")
        .concurrency(1)
        .prefetch(400)
        .handler("k", move |_m: Message| {
            let (h, d) = (h.clone(), d.clone());
            async move {
                if h.fetch_add(1, Ordering::Relaxed) + 1 == total {
                    d.notify_one();
                }
                Ok(())
            }
        })
        .start()
        .expect("worker");
    let payload = vec![7u8; 100];
    let t = Instant::now();
    let notified = done.notified();
    for _ in 0..total / 100 {
        let batch: Vec<Message> = (0..100)
            .map(|_| Message::new("k", payload.clone()))
            .collect();
        q.publish_batch("w", batch).await.expect("publish");
    }
    tokio::time::timeout(Duration::from_secs(120), notified)
        .await
        .expect("all handled");
    loop {
        if q.stats("w").await.expect("stats").acked >= total {
            break;
        }
        tokio::task::yield_now().await;
    }
    let rate = total as f64 / t.elapsed().as_secs_f64();
    println!("end to end through the worker (batch 100, prefetch 400): {rate:.0} msgs/s");
    worker.stop(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
}
