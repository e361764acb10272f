//! Criterion benches of the memory backend: publish, batch publish, receive + ack, and end to
//! end through the worker. Ratios to a raw tokio mpsc channel are printed by the `throughput`
//! binary; here each operation's cost is tracked over time.

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use courier::memory::MemoryBackend;
use courier::{Message, Queue, QueueExt, Settle, Worker};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn msgs(n: usize) -> Vec<Message> {
    (0..n)
        .map(|_| Message::new("b", &b"0123456789abcdef"[..]))
        .collect()
}

fn publish(c: &mut Criterion) {
    let rt = rt();
    let b = MemoryBackend::new();
    let mut g = c.benchmark_group("memory/publish");
    g.throughput(Throughput::Elements(1));
    g.bench_function("single", |bench| {
        bench.to_async(&rt).iter(|| async {
            b.publish("bench.single", Message::new("b", &b"x"[..]))
                .await
                .expect("publish")
        })
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("batch_100", |bench| {
        bench.to_async(&rt).iter_batched(
            || msgs(100),
            |m| async { b.publish_batch("bench.batch", m).await.expect("publish") },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn receive_ack(c: &mut Criterion) {
    let rt = rt();
    let b = MemoryBackend::new();
    let mut g = c.benchmark_group("memory/receive_ack");
    g.throughput(Throughput::Elements(100));
    g.bench_function("batch_100", |bench| {
        bench.to_async(&rt).iter_batched(
            || {
                let b = b.clone();
                rt.block_on(async move {
                    b.publish_batch("bench.recv", msgs(100))
                        .await
                        .expect("seed")
                });
            },
            |_| async {
                let ds = b
                    .receive("bench.recv", 100, Duration::ZERO)
                    .await
                    .expect("receive");
                let ops = ds.iter().map(|d| Settle::Ack(d.lease)).collect();
                b.settle("bench.recv", ops).await.expect("ack")
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn end_to_end(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("memory/end_to_end");
    const N: u64 = 10_000;
    g.throughput(Throughput::Elements(N));
    g.sample_size(20);
    g.bench_function("worker_10k_batch_100", |bench| {
        bench.to_async(&rt).iter(|| async {
            let b = MemoryBackend::new();
            let q: Arc<dyn Queue> = Arc::new(b.clone());
            let handled = Arc::new(AtomicU64::new(0));
            let done = Arc::new(tokio::sync::Notify::new());
            let (h, d) = (handled.clone(), done.clone());
            let w = Worker::builder(q.clone(), "bench.e2e")
                .concurrency(1)
                .prefetch(100)
                .handler("b", move |_m| {
                    let (h, d) = (h.clone(), d.clone());
                    async move {
                        if h.fetch_add(1, Ordering::Relaxed) + 1 == N {
                            d.notify_one();
                        }
                        Ok(())
                    }
                })
                .start()
                .expect("worker");
            let notified = done.notified();
            for _ in 0..(N / 100) {
                q.publish_batch("bench.e2e", msgs(100))
                    .await
                    .expect("publish");
            }
            tokio::time::timeout(Duration::from_secs(30), notified)
                .await
                .expect("all handled");
            w.stop(Duration::from_secs(1)).await;
        })
    });
    g.finish();
}

criterion_group!(benches, publish, receive_ack, end_to_end);
criterion_main!(benches);
