//! The throughput harness behind `cargo run -p courier-benches --bin throughput`.
//!
//! It measures, in one run and on one backend: publish rate, end-to-end rate through the
//! [`courier::Worker`] (publish → handler → ack), the rate of the backend's raw primitive on
//! the same payloads (the baseline), and the latency of one message into an idle queue with a
//! waiting worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier::{Courier, Message, Queue, QueueConfig, QueueExt};
use serde::Serialize;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Params {
    /// Backend URL.
    pub backend: String,
    /// Messages per phase.
    pub messages: usize,
    /// Messages per publish batch.
    pub batch: usize,
    /// Publishers, and handlers running at once.
    pub concurrency: usize,
    /// Payload size in bytes.
    pub payload: usize,
    /// Messages the worker leases ahead of free handler slots.
    pub prefetch: usize,
    /// Idle-latency samples.
    pub latency_samples: usize,
}

/// One run's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Backend URL (password redacted).
    pub backend: String,
    /// Messages per phase.
    pub messages: usize,
    /// Batch size.
    pub batch: usize,
    /// Concurrency.
    pub concurrency: usize,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Worker prefetch.
    pub prefetch: usize,
    /// Messages published per second (publish phase alone).
    pub publish_per_s: f64,
    /// Messages published, handled and acked per second through the worker.
    pub e2e_per_s: f64,
    /// What the raw primitive was.
    pub raw_primitive: String,
    /// Messages moved per second by the raw primitive.
    pub raw_per_s: f64,
    /// `e2e_per_s / raw_per_s`.
    pub ratio_e2e_to_raw: f64,
    /// Idle latency (publish start → handler start), median, µs.
    pub idle_latency_p50_us: f64,
    /// Idle latency, 99th percentile, µs.
    pub idle_latency_p99_us: f64,
    /// Idle-latency samples.
    pub latency_samples: usize,
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("bench.{prefix}.{nanos:x}")
}

fn payload(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

fn bench_config() -> QueueConfig {
    QueueConfig {
        visibility_timeout: Duration::from_secs(60),
        ..QueueConfig::default()
    }
}

/// Publish `messages` in batches from `concurrency` tasks; returns elapsed time.
async fn publish_all(
    queue: Arc<dyn Queue>,
    name: &str,
    p: &Params,
    body: &Bytes,
) -> courier::Result<Duration> {
    let start = Instant::now();
    let per = p.messages.div_ceil(p.concurrency);
    let mut tasks = Vec::new();
    for t in 0..p.concurrency {
        let q = queue.clone();
        let name = name.to_string();
        let body = body.clone();
        let n = per.min(p.messages.saturating_sub(t * per));
        let batch = p.batch.max(1);
        tasks.push(tokio::spawn(async move {
            let mut left = n;
            while left > 0 {
                let k = left.min(batch);
                let msgs: Vec<Message> = (0..k).map(|_| Message::new("b", body.clone())).collect();
                q.publish_batch(&name, msgs).await?;
                left -= k;
            }
            Ok::<_, courier::Error>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| courier::Error::new(courier::ErrorKind::Backend, e.to_string()))??;
    }
    Ok(start.elapsed())
}

/// Run every phase.
///
/// # Errors
/// Any backend error, or a phase that does not finish in time.
pub async fn run(p: &Params) -> courier::Result<Report> {
    let courier = courier::connect(&p.backend).await?;
    let body = payload(p.payload);

    // Publish alone.
    let q_pub = unique("publish");
    courier.queue().configure(&q_pub, bench_config())?;
    let publish_elapsed = publish_all(courier.queue().clone(), &q_pub, p, &body).await?;

    // End to end through the worker.
    let e2e_elapsed = e2e(&courier, p, &body).await?;

    // The raw primitive on the same payloads.
    let (raw_primitive, raw_elapsed) = raw(p, &body).await?;

    // Idle latency.
    let mut lat = idle_latency(&courier, p).await?;
    lat.sort_unstable_by(f64::total_cmp);
    let pct = |q: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * q).round() as usize;
        lat[i.min(lat.len() - 1)]
    };

    let rate = |d: Duration| p.messages as f64 / d.as_secs_f64().max(1e-9);
    let e2e_per_s = rate(e2e_elapsed);
    let raw_per_s = rate(raw_elapsed);
    Ok(Report {
        backend: courier::redact_url(&p.backend),
        messages: p.messages,
        batch: p.batch,
        concurrency: p.concurrency,
        payload_bytes: p.payload,
        prefetch: p.prefetch,
        publish_per_s: rate(publish_elapsed),
        e2e_per_s,
        raw_primitive,
        raw_per_s,
        ratio_e2e_to_raw: e2e_per_s / raw_per_s,
        idle_latency_p50_us: pct(0.50),
        idle_latency_p99_us: pct(0.99),
        latency_samples: lat.len(),
    })
}

async fn e2e(courier: &Courier, p: &Params, body: &Bytes) -> courier::Result<Duration> {
    let q = unique("e2e");
    courier.queue().configure(&q, bench_config())?;
    let handled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let target = p.messages as u64;
    let (h, d) = (handled.clone(), done.clone());
    let worker = courier
        .worker(&q)
        .concurrency(p.concurrency)
        .prefetch(p.prefetch)
        .handler("b", move |_m: Message| {
            let (h, d) = (h.clone(), d.clone());
            async move {
                if h.fetch_add(1, Ordering::Relaxed) + 1 == target {
                    d.notify_one();
                }
                Ok(())
            }
        })
        .start()?;
    let start = Instant::now();
    let notified = done.notified();
    publish_all(courier.queue().clone(), &q, p, body).await?;
    let limit = Duration::from_secs(600);
    if tokio::time::timeout(limit, notified).await.is_err() {
        return Err(courier::Error::new(
            courier::ErrorKind::Backend,
            format!(
                "end-to-end phase handled {} of {} in {limit:?}",
                handled.load(Ordering::Relaxed),
                p.messages
            ),
        ));
    }
    // Acks are settled by the worker right after the handler; wait until the queue agrees.
    let report_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = courier.queue().stats(&q).await?;
        if s.acked >= target {
            break;
        }
        if Instant::now() > report_deadline {
            return Err(courier::Error::new(
                courier::ErrorKind::Backend,
                format!("acks not settled: {s:?}"),
            ));
        }
        tokio::task::yield_now().await;
    }
    let elapsed = start.elapsed();
    worker.stop(Duration::from_secs(5)).await;
    Ok(elapsed)
}

/// The backend's raw primitive moving the same payloads with the same batching and
/// concurrency. Memory: a bounded tokio mpsc channel.
async fn raw(p: &Params, body: &Bytes) -> courier::Result<(String, Duration)> {
    let scheme = p.backend.split("://").next().unwrap_or("");
    match scheme {
        "memory" => {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(p.batch.max(1) * 4);
            let start = Instant::now();
            let per = p.messages.div_ceil(p.concurrency);
            for t in 0..p.concurrency {
                let tx = tx.clone();
                let body = body.clone();
                let n = per.min(p.messages.saturating_sub(t * per));
                tokio::spawn(async move {
                    for _ in 0..n {
                        if tx.send(body.clone()).await.is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let mut got = 0usize;
            while rx.recv().await.is_some() {
                got += 1;
            }
            if got != p.messages {
                return Err(courier::Error::new(
                    courier::ErrorKind::Backend,
                    format!("raw channel moved {got} of {}", p.messages),
                ));
            }
            Ok(("tokio::sync::mpsc (bounded)".into(), start.elapsed()))
        }
        other => Err(courier::Error::new(
            courier::ErrorKind::Unsupported,
            format!("no raw baseline for backend {other:?} yet"),
        )),
    }
}

async fn idle_latency(courier: &Courier, p: &Params) -> courier::Result<Vec<f64>> {
    let q = unique("latency");
    courier.queue().configure(&q, bench_config())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let worker = courier
        .worker(&q)
        .concurrency(1)
        .idle_wait(Duration::from_secs(5))
        .handler("lat", move |_m: Message| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Instant::now());
                Ok(())
            }
        })
        .start()?;
    // Let the worker reach its idle wait before the first sample.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut samples = Vec::with_capacity(p.latency_samples);
    for _ in 0..p.latency_samples {
        let t0 = Instant::now();
        courier
            .queue()
            .publish(&q, Message::new("lat", "x"))
            .await?;
        let t1 = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .ok()
            .flatten()
            .ok_or_else(|| {
                courier::Error::new(courier::ErrorKind::Backend, "idle message never handled")
            })?;
        samples.push(t1.duration_since(t0).as_secs_f64() * 1e6);
        // Give the worker time to settle and go back to waiting, as an idle queue would.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    worker.stop(Duration::from_secs(5)).await;
    Ok(samples)
}

/// A readable table of a report.
pub fn table(r: &Report) -> String {
    format!(
        "backend            {}\n\
         messages           {}  (batch {}, concurrency {}, prefetch {}, payload {} B)\n\
         publish            {:>12.0} msg/s\n\
         end to end         {:>12.0} msg/s  (publish -> handler -> ack, worker)\n\
         raw baseline       {:>12.0} msg/s  ({})\n\
         e2e / raw          {:>12.3}\n\
         idle latency p50   {:>12.1} us\n\
         idle latency p99   {:>12.1} us  ({} samples)\n",
        r.backend,
        r.messages,
        r.batch,
        r.concurrency,
        r.prefetch,
        r.payload_bytes,
        r.publish_per_s,
        r.e2e_per_s,
        r.raw_per_s,
        r.raw_primitive,
        r.ratio_e2e_to_raw,
        r.idle_latency_p50_us,
        r.idle_latency_p99_us,
        r.latency_samples
    )
}
