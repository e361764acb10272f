//! The throughput harness behind `cargo run -p courier-benches --bin throughput`.
//!
//! It measures, in one run and on one backend: publish rate, end-to-end rate through the
//! [`courier::Worker`] (publish → handler → ack), the rate of the backend's raw primitive on
//! the same payloads (the baseline), and the latency of one message into an idle queue with a
//! waiting worker.
//!
//! Raw baselines, with the same payloads, batch size and concurrency as the Courier phases:
//!
//! | backend | raw primitive |
//! |---|---|
//! | `memory://` | a bounded tokio mpsc channel |
//! | `sqlite://…` | `INSERT` batches and `DELETE … RETURNING` batches, one transaction per batch, on a fresh file next to the backend's (WAL, `synchronous=NORMAL`), one connection per producer and per consumer |
//! | `redis://…` | pipelined `LPUSH` and pipelined `BLPOP`+`LPOP` on one list, one connection per producer and per consumer |
//! | `amqp://…`, `amqps://…` | bare lapin on one durable classic queue: batches of persistent `basic_publish` on a confirm channel, each batch's confirms awaited (a nack fails the run), and `basic_consume` under `basic_qos(batch)` acking each delivery, one connection per producer and per consumer |
//! | `nats://…`, `tls://…` | bare async-nats JetStream on a stream of this run (file storage, work-queue retention): batches of `js.publish`, each batch's `PublishAck`s awaited, and a durable pull consumer (explicit ack) pulled in batches of the same size by each consumer, acking each message; the clock stops when the server has applied every ack (the stream is empty). One connection, as the backend has |
//!
//! A run cleans up after itself: Redis keys of its queues and raw list are deleted, SQLite files
//! it created are removed, a pre-existing SQLite file keeps only what it had before
//! (the publish phase's messages are drained), the raw RabbitMQ queue is deleted, and on NATS
//! the run's two JetStream streams are deleted (the Courier side runs under a prefix of its
//! own, `bench<run id>`, so no other user's queues are touched).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier::{Courier, Message, Queue, QueueConfig, QueueExt, Settle};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
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
    /// Give every published message a unique deduplication key (Q11): the cost of the key
    /// check, all messages stored.
    pub keys: bool,
    /// Give every published message this time to live (Q12; long enough that none expires):
    /// the cost of carrying and checking an expiry.
    pub ttl: Option<std::time::Duration>,
    /// Spread the publish and end-to-end phases over this many queues (one worker per
    /// queue, each with `concurrency` handlers; publishers send batch after batch to the next
    /// queue). The raw baseline uses as many lists, each with `concurrency` consumers.
    pub queues: usize,
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
    /// Queues the load was spread over.
    pub queues: usize,
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

/// A name unique to this run (queue names, the raw Redis key, temp files).
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", nanos, std::process::id())
}

fn payload(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

fn bench_config() -> QueueConfig {
    QueueConfig::default().with_visibility_timeout(Duration::from_secs(60))
}

fn backend_err(msg: impl Into<String>) -> courier::Error {
    courier::Error::new(courier::ErrorKind::Backend, msg.into())
}

/// How many messages publisher / consumer `t` of `p.concurrency` moves.
fn share(p: &Params, t: usize) -> usize {
    let per = p.messages.div_ceil(p.concurrency);
    per.min(p.messages.saturating_sub(t * per))
}

/// Publish `messages` in batches from `concurrency` tasks; returns elapsed time.
async fn publish_all(
    queue: Arc<dyn Queue>,
    names: &[String],
    p: &Params,
    body: &Bytes,
) -> courier::Result<Duration> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..p.concurrency {
        let q = queue.clone();
        let names = names.to_vec();
        let body = body.clone();
        let n = share(p, t);
        let batch = p.batch.max(1);
        let keys = p.keys;
        let ttl = p.ttl;
        tasks.push(tokio::spawn(async move {
            let mut left = n;
            let mut b = t;
            while left > 0 {
                let k = left.min(batch);
                // Batch after batch to the next queue.
                let name = &names[b % names.len()];
                b += 1;
                let msgs: Vec<Message> = (0..k)
                    .map(|i| {
                        let mut m = Message::new("b", body.clone());
                        if let Some(ttl) = ttl {
                            m = m.with_ttl(ttl);
                        }
                        if keys {
                            m.with_dedup_key(format!("{name}-{t}-{}", left - i))
                        } else {
                            m
                        }
                    })
                    .collect();
                q.publish_batch(name, msgs).await?;
                left -= k;
            }
            Ok::<_, courier::Error>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| backend_err(e.to_string()))??;
    }
    Ok(start.elapsed())
}

/// The backend a run talks to, and what the run must clean up afterwards.
enum Target {
    Memory,
    Sqlite {
        /// The backend's database file (`None`: in memory).
        file: Option<PathBuf>,
        /// Whether this run created `file` (and so removes it).
        created: bool,
    },
    Redis {
        /// The URL without Courier's `key_prefix` parameter, for the raw client (a
        /// `redis+cluster://` URL for a cluster).
        raw_url: String,
        /// The backend's key prefix.
        prefix: String,
    },
    Amqp {
        /// The broker URL, for the raw client.
        url: String,
    },
    Nats {
        /// The server URL, for the raw client and the cleanup.
        url: String,
        /// The backend's prefix: this run's own (its stream is deleted by the cleanup).
        prefix: String,
    },
}

/// Open the backend named by `p.backend`. `sqlite://` without a path gets a temp file.
async fn open(p: &Params, id: &str) -> courier::Result<(Courier, Target)> {
    let url = p.backend.as_str();
    if url.starts_with("sqlite:") {
        let file = match url {
            "sqlite::memory:" | "sqlite://:memory:" => None,
            "sqlite://" | "sqlite:" => {
                Some(std::env::temp_dir().join(format!("courier-bench-{id}.db")))
            }
            _ => match courier::sqlite::parse_url(url)? {
                courier::sqlite::SqliteLocation::File(f) => Some(f),
                courier::sqlite::SqliteLocation::Memory => None,
            },
        };
        let created = file.as_ref().is_some_and(|f| !f.exists());
        let backend = match &file {
            Some(f) => courier::sqlite::SqliteBackend::builder().path(f.clone()),
            None => courier::sqlite::SqliteBackend::builder().in_memory(),
        }
        .build()
        .await?;
        let c = Courier::new(
            Arc::new(backend.clone()),
            Arc::new(backend.clone()),
            Arc::new(backend),
        );
        return Ok((c, Target::Sqlite { file, created }));
    }
    if url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("redis+cluster://")
        || url.starts_with("rediss+cluster://")
    {
        let backend = courier::redis::RedisBackend::from_url(url).await?;
        backend.ping().await?;
        let prefix = backend.key_prefix().to_string();
        let c = Courier::new(
            Arc::new(backend.clone()),
            Arc::new(backend.clone()),
            Arc::new(backend),
        );
        return Ok((
            c,
            Target::Redis {
                raw_url: strip_key_prefix(url),
                prefix,
            },
        ));
    }
    if url.starts_with("amqp://") || url.starts_with("amqps://") {
        let backend = courier::amqp::AmqpBackend::from_url(url).await?;
        let c = Courier::new(
            Arc::new(backend.clone()),
            Arc::new(backend.clone()),
            Arc::new(backend),
        );
        return Ok((
            c,
            Target::Amqp {
                url: url.to_string(),
            },
        ));
    }
    if url.starts_with("nats://") || url.starts_with("tls://") {
        // A prefix of this run's own: the cleanup deletes the prefix's stream, which under the
        // default prefix would hold every other user's queues too.
        let prefix = format!("bench{id}");
        let backend = courier::nats::NatsBackend::builder()
            .url(url)
            .prefix(prefix.clone())
            .build()
            .await?;
        backend.ping().await?;
        let c = Courier::new(
            Arc::new(backend.clone()),
            Arc::new(backend.clone()),
            Arc::new(backend),
        );
        return Ok((
            c,
            Target::Nats {
                url: url.to_string(),
                prefix,
            },
        ));
    }
    Ok((courier::connect(url).await?, Target::Memory))
}

/// `url` without the `key_prefix` / `prefix` query parameters (Courier's, not redis-rs's).
fn strip_key_prefix(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| {
            let k = kv.split('=').next().unwrap_or("");
            !kv.is_empty() && k != "key_prefix" && k != "prefix"
        })
        .collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// Run every phase, then clean up (also when a phase failed).
///
/// # Errors
/// Any backend error, or a phase that does not finish in time.
pub async fn run(p: &Params) -> courier::Result<Report> {
    let id = run_id();
    let (courier, target) = open(p, &id).await?;
    let names = Names {
        publish: format!("bench.{id}.publish"),
        e2e: format!("bench.{id}.e2e"),
        latency: format!("bench.{id}.latency"),
    };
    let result = phases(&courier, &target, &names, &id, p).await;
    let cleaned = cleanup(courier, &target, &names, &id, p.queues).await;
    let report = result?;
    cleaned?;
    Ok(report)
}

/// The `n` queues a phase named `base` spreads over (`base` itself for one).
fn spread(base: &str, n: usize) -> Vec<String> {
    if n <= 1 {
        vec![base.to_string()]
    } else {
        (0..n).map(|i| format!("{base}.{i}")).collect()
    }
}

/// The queues of one run.
struct Names {
    publish: String,
    e2e: String,
    latency: String,
}

async fn phases(
    courier: &Courier,
    target: &Target,
    names: &Names,
    id: &str,
    p: &Params,
) -> courier::Result<Report> {
    let body = payload(p.payload);

    // Publish alone.
    let publish_queues = spread(&names.publish, p.queues);
    for q in &publish_queues {
        courier.queue().configure(q, bench_config())?;
    }
    let publish_elapsed = publish_all(courier.queue().clone(), &publish_queues, p, &body).await?;

    // End to end through the worker.
    let e2e_elapsed = e2e(courier, &names.e2e, p, &body).await?;

    // The raw primitive on the same payloads.
    let (raw_primitive, raw_elapsed) = match target {
        Target::Memory => raw_memory(p, &body).await?,
        Target::Sqlite { file, .. } => raw_sqlite(p, &body, file.as_deref(), id).await?,
        Target::Redis { raw_url, .. } => raw_redis(p, &body, raw_url, id).await?,
        Target::Amqp { url } => raw_amqp(p, &body, url, id).await?,
        Target::Nats { url, .. } => raw_nats(p, &body, url, id).await?,
    };

    // Idle latency.
    let mut lat = idle_latency(courier, &names.latency, p).await?;
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
        queues: p.queues,
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

/// Leave nothing behind: Redis keys of this run's queues, SQLite files this run created, the
/// publish phase's messages in a SQLite file that was there before, this run's RabbitMQ streams
/// and the raw RabbitMQ queue, this run's NATS stream (its own prefix) and the raw NATS stream.
async fn cleanup(
    courier: Courier,
    target: &Target,
    names: &Names,
    id: &str,
    spread_over: usize,
) -> courier::Result<()> {
    match target {
        Target::Memory => Ok(()),
        Target::Sqlite { file, created } => {
            if *created || file.is_none() {
                drop(courier);
                if let Some(f) = file {
                    remove_db_files(f);
                }
                return Ok(());
            }
            // A file that was there before: take out what this run put in.
            let mut queues = spread(&names.publish, spread_over);
            queues.extend(spread(&names.e2e, spread_over));
            queues.push(names.latency.clone());
            for q in &queues {
                drain(&courier, q).await?;
            }
            drop(courier);
            // Give the space back: without this the file keeps the run's high-water mark
            // (about 250 bytes a message) as free pages, and the WAL its last size.
            if let Some(f) = file.clone() {
                let compacted = tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open(&f)?;
                    conn.busy_timeout(Duration::from_secs(10))?;
                    conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
                })
                .await;
                if !matches!(compacted, Ok(Ok(()))) {
                    eprintln!(
                        "throughput: could not compact the database file after the run \
                         (busy?): {compacted:?}"
                    );
                }
            }
            Ok(())
        }
        Target::Redis { raw_url, prefix } => {
            drop(courier);
            // Every key of a queue starts with its hash tag `{<prefix>:q:<queue>}`. SCAN sees
            // one node's keys, so on a cluster every master is scanned; keys are unlinked one
            // by one (a cluster refuses a multi-key UNLINK across slots).
            let pattern = format!("{{{prefix}:q:bench.{id}.*");
            for node in RawRedis::open(raw_url)?.masters().await? {
                let mut conn = node
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(redis_err)?;
                let mut cursor: u64 = 0;
                loop {
                    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await
                        .map_err(redis_err)?;
                    if !keys.is_empty() {
                        let mut pipe = redis::pipe();
                        for k in &keys {
                            pipe.cmd("UNLINK").arg(k).ignore();
                        }
                        pipe.query_async::<()>(&mut conn).await.map_err(redis_err)?;
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            Ok(())
        }
        Target::Amqp { url } => {
            drop(courier);
            // This run's queues are streams `courier.q.<queue>` (the default prefix).
            let backend = courier::amqp::AmqpBackend::from_url(url).await?;
            let mut queues = spread(&names.publish, spread_over);
            queues.extend(spread(&names.e2e, spread_over));
            queues.push(names.latency.clone());
            let streams: Vec<String> = queues
                .iter()
                .map(|q| format!("{}.q.{q}", backend.prefix()))
                .collect();
            backend.delete_streams(&streams, false).await?;
            delete_raw_amqp_queue(url, id).await
        }
        Target::Nats { url, prefix } => {
            drop(courier);
            // Every queue of this run is in the stream named after the run's prefix.
            let deleted = async {
                courier::nats::NatsBackend::builder()
                    .url(url.as_str())
                    .prefix(prefix.as_str())
                    .build()
                    .await?
                    .delete_stream()
                    .await
            }
            .await;
            let raw = delete_raw_nats_stream(url, id).await;
            deleted?;
            raw
        }
    }
}

/// Receive and ack everything in `queue` (untimed; cleanup only).
async fn drain(courier: &Courier, queue: &str) -> courier::Result<()> {
    loop {
        let got = courier.queue().receive(queue, 1000, Duration::ZERO).await?;
        if got.is_empty() {
            return Ok(());
        }
        let ops = got.iter().map(|d| Settle::Ack(d.lease)).collect();
        for r in courier.queue().settle(queue, ops).await? {
            r?;
        }
    }
}

/// Remove a SQLite database and its WAL and shared-memory files (best effort).
fn remove_db_files(file: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}

async fn e2e(courier: &Courier, q: &str, p: &Params, body: &Bytes) -> courier::Result<Duration> {
    let queues = spread(q, p.queues);
    let handled = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let target = p.messages as u64;
    let mut workers = Vec::new();
    for q in &queues {
        courier.queue().configure(q, bench_config())?;
        let (h, d) = (handled.clone(), done.clone());
        workers.push(
            courier
                .worker(q)
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
                .start()?,
        );
    }
    let stop_all = |workers: Vec<courier::WorkerHandle>| async move {
        for w in workers {
            w.stop(Duration::from_secs(5)).await;
        }
    };
    let start = Instant::now();
    let notified = done.notified();
    publish_all(courier.queue().clone(), &queues, p, body).await?;
    let limit = Duration::from_secs(600);
    if tokio::time::timeout(limit, notified).await.is_err() {
        stop_all(workers).await;
        return Err(backend_err(format!(
            "end-to-end phase handled {} of {} in {limit:?}",
            handled.load(Ordering::Relaxed),
            p.messages
        )));
    }
    // Acks are settled by the workers right after the handler; wait until the queues agree.
    let report_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut acked = 0;
        for q in &queues {
            acked += courier.queue().stats(q).await?.acked;
        }
        if acked >= target {
            break;
        }
        if Instant::now() > report_deadline {
            stop_all(workers).await;
            return Err(backend_err(format!(
                "acks not settled: {acked} of {target}"
            )));
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = start.elapsed();
    stop_all(workers).await;
    Ok(elapsed)
}

/// Memory's raw primitive: a bounded tokio mpsc channel, `concurrency` senders, one receiver.
async fn raw_memory(p: &Params, body: &Bytes) -> courier::Result<(String, Duration)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(p.batch.max(1) * 4);
    let start = Instant::now();
    for t in 0..p.concurrency {
        let tx = tx.clone();
        let body = body.clone();
        let n = share(p, t);
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
        return Err(backend_err(format!(
            "raw channel moved {got} of {}",
            p.messages
        )));
    }
    Ok(("tokio::sync::mpsc (bounded)".into(), start.elapsed()))
}

fn redis_err(e: redis::RedisError) -> courier::Error {
    courier::Error::new(courier::ErrorKind::Backend, format!("raw redis: {e}"))
}

/// Redis's raw primitive: `concurrency` producers each pipelining `batch` `LPUSH`es per round
/// trip, and `concurrency` consumers each pipelining one `BLPOP` (so an empty list is waited on,
/// not spun on) and `batch - 1` `LPOP`s, on one list, each on its own connection. The clock
/// stops when the last message has been popped.
/// The raw Redis client of a run: one server, or a cluster.
enum RawRedis {
    Node(Box<redis::Client>),
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        /// The seed nodes' plain URLs.
        seeds: Vec<String>,
    },
}

/// A raw connection: to one server, or a cluster connection (routed by key).
enum RawConn {
    Node(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for RawConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RawConn::Node(c) => c.req_packed_command(cmd),
            RawConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RawConn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            RawConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RawConn::Node(c) => c.get_db(),
            RawConn::Cluster(c) => c.get_db(),
        }
    }
}

impl RawRedis {
    /// `redis://…` or `redis+cluster://[userinfo@]h1:p1,h2:p2[?query]`.
    fn open(url: &str) -> courier::Result<RawRedis> {
        let cluster = url
            .strip_prefix("redis+cluster://")
            .map(|rest| ("redis", rest))
            .or_else(|| url.strip_prefix("rediss+cluster://").map(|r| ("rediss", r)));
        let Some((scheme, rest)) = cluster else {
            return Ok(RawRedis::Node(Box::new(
                redis::Client::open(url).map_err(redis_err)?,
            )));
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, _) = rest.split_at(end);
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let seeds: Vec<String> = hosts
            .split(',')
            .map(|h| format!("{scheme}://{userinfo}{h}"))
            .collect();
        let client =
            Box::new(redis::cluster::ClusterClient::new(seeds.clone()).map_err(redis_err)?);
        Ok(RawRedis::Cluster { client, seeds })
    }

    async fn conn(&self) -> courier::Result<RawConn> {
        match self {
            RawRedis::Node(c) => Ok(RawConn::Node(
                c.get_multiplexed_async_connection()
                    .await
                    .map_err(redis_err)?,
            )),
            RawRedis::Cluster { client, .. } => Ok(RawConn::Cluster(
                client.get_async_connection().await.map_err(redis_err)?,
            )),
        }
    }

    /// A client per master (the one server, or every master of the cluster).
    async fn masters(&self) -> courier::Result<Vec<redis::Client>> {
        let seeds = match self {
            RawRedis::Node(c) => return Ok(vec![(**c).clone()]),
            RawRedis::Cluster { seeds, .. } => seeds,
        };
        let seed = redis::Client::open(seeds[0].as_str()).map_err(redis_err)?;
        let mut conn = seed
            .get_multiplexed_async_connection()
            .await
            .map_err(redis_err)?;
        let slots: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        let mut addrs = std::collections::BTreeSet::new();
        if let redis::Value::Array(ranges) = slots {
            for r in ranges {
                if let redis::Value::Array(f) = r
                    && let Some(redis::Value::Array(m)) = f.get(2)
                    && let (Some(redis::Value::BulkString(h)), Some(redis::Value::Int(port))) =
                        (m.first(), m.get(1))
                {
                    addrs.insert(format!("{}:{port}", String::from_utf8_lossy(h)));
                }
            }
        }
        let scheme = seeds[0].split("://").next().unwrap_or("redis");
        let userinfo = seeds[0]
            .split("://")
            .nth(1)
            .and_then(|r| r.rfind('@').map(|at| &r[..=at]))
            .unwrap_or("");
        addrs
            .into_iter()
            .map(|a| redis::Client::open(format!("{scheme}://{userinfo}{a}")).map_err(redis_err))
            .collect()
    }
}

async fn raw_redis(
    p: &Params,
    body: &Bytes,
    url: &str,
    id: &str,
) -> courier::Result<(String, Duration)> {
    let client = RawRedis::open(url)?;
    // One list per queue of the Courier phases, each a hash tag of its own (its own slot on a
    // cluster).
    let lists: Vec<String> = (0..p.queues.max(1))
        .map(|i| format!("{{courier-bench:raw:{id}:{i}}}"))
        .collect();
    let mut producers = Vec::new();
    let mut consumers = Vec::new();
    for _ in 0..p.concurrency {
        producers.push(client.conn().await?);
    }
    for key in &lists {
        for _ in 0..p.concurrency {
            consumers.push((key.clone(), client.conn().await?));
        }
    }
    let batch = p.batch.max(1);
    let total = p.messages as u64;
    let popped = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(parking_lot::Mutex::new(None::<Instant>));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (t, mut conn) in producers.into_iter().enumerate() {
        let (lists, body) = (lists.clone(), body.clone());
        let n = share(p, t);
        tasks.push(tokio::spawn(async move {
            let mut left = n;
            let mut b = t;
            while left > 0 {
                let k = left.min(batch);
                let key = &lists[b % lists.len()];
                b += 1;
                let mut pipe = redis::pipe();
                for _ in 0..k {
                    pipe.cmd("LPUSH").arg(key).arg(body.as_ref()).ignore();
                }
                pipe.query_async::<()>(&mut conn).await?;
                left -= k;
            }
            Ok::<_, redis::RedisError>(())
        }));
    }
    for (key, mut conn) in consumers {
        let (popped, finished) = (popped.clone(), finished.clone());
        tasks.push(tokio::spawn(async move {
            while popped.load(Ordering::Relaxed) < total {
                let mut pipe = redis::pipe();
                // Redis ends the BLPOP after 0.1 s on an empty list, well inside redis-rs's
                // response timeout, so a consumer notices when the others have finished.
                pipe.cmd("BLPOP").arg(&key).arg(0.1);
                for _ in 1..batch {
                    pipe.cmd("LPOP").arg(&key);
                }
                let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
                let got = replies
                    .iter()
                    .filter(|v| !matches!(v, redis::Value::Nil))
                    .count() as u64;
                if got > 0 && popped.fetch_add(got, Ordering::Relaxed) + got == total {
                    *finished.lock() = Some(Instant::now());
                }
            }
            Ok::<_, redis::RedisError>(())
        }));
    }
    let mut failure = None;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(600), t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => failure = Some(redis_err(e)),
            Ok(Err(e)) => failure = Some(backend_err(e.to_string())),
            Err(_) => failure = Some(backend_err("raw redis phase timed out")),
        }
    }
    let end = *finished.lock();
    // Delete the lists whatever happened.
    if let Ok(mut conn) = client.conn().await {
        for key in &lists {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(key).query_async(&mut conn).await;
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let end = end.ok_or_else(|| {
        backend_err(format!(
            "raw redis moved {} of {total}",
            popped.load(Ordering::Relaxed)
        ))
    })?;
    Ok((
        format!(
            "redis pipelined LPUSH x{batch} / BLPOP+LPOP x{batch} on {} list(s)",
            lists.len()
        ),
        end.duration_since(start),
    ))
}

fn amqp_err(e: lapin::Error) -> courier::Error {
    courier::Error::new(courier::ErrorKind::Backend, format!("raw amqp: {e}"))
}

/// The raw AMQP baseline's queue in run `id`.
fn raw_amqp_queue(id: &str) -> String {
    format!("courier-bench.raw.{id}")
}

/// One connection to the broker with one channel on it.
async fn amqp_channel(url: &str) -> courier::Result<(lapin::Connection, lapin::Channel)> {
    let props =
        lapin::ConnectionProperties::default().with_connection_name("courier-bench-raw".into());
    let conn = lapin::Connection::connect(url, props)
        .await
        .map_err(amqp_err)?;
    let channel = conn.create_channel().await.map_err(amqp_err)?;
    Ok((conn, channel))
}

/// Close a connection (best effort: the run's figures do not depend on it).
async fn amqp_close(conn: &lapin::Connection) {
    let _ = conn.close(200, "done".into()).await;
}

/// Delete run `id`'s raw queue (`queue.delete` of a queue that is not there is not an error).
async fn delete_raw_amqp_queue(url: &str, id: &str) -> courier::Result<()> {
    let (conn, channel) = amqp_channel(url).await?;
    let deleted = channel
        .queue_delete(raw_amqp_queue(id).into(), QueueDeleteOptions::default())
        .await
        .map_err(amqp_err);
    amqp_close(&conn).await;
    deleted.map(|_| ())
}

/// RabbitMQ's raw primitive, through bare lapin on one durable classic queue of this run:
/// `concurrency` producers, each on its own connection with a confirm channel, publishing
/// `batch` persistent messages then awaiting the batch's confirms (a nack fails the run), and
/// `concurrency` consumers, each on its own connection, consuming under `basic_qos(batch)` and
/// acking each delivery. The clock stops when the last message has been acked. The queue is
/// deleted by [`cleanup`].
async fn raw_amqp(
    p: &Params,
    body: &Bytes,
    url: &str,
    id: &str,
) -> courier::Result<(String, Duration)> {
    let queue = raw_amqp_queue(id);
    let batch = p.batch.max(1);
    let prefetch = u16::try_from(batch).unwrap_or(u16::MAX);
    let mut conns = Vec::new();
    let result = async {
        let (conn, channel) = amqp_channel(url).await?;
        conns.push(conn);
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("classic".into()),
        );
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
            .map_err(amqp_err)?;
        let mut producers = Vec::new();
        let mut consumers = Vec::new();
        for t in 0..p.concurrency {
            let (conn, channel) = amqp_channel(url).await?;
            conns.push(conn);
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(amqp_err)?;
            producers.push(channel);
            let (conn, channel) = amqp_channel(url).await?;
            conns.push(conn);
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await
                .map_err(amqp_err)?;
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    format!("courier-bench-raw-{t}").into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(amqp_err)?;
            consumers.push(consumer);
        }
        let total = p.messages as u64;
        let acked = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(parking_lot::Mutex::new(None::<Instant>));
        // Set when a task fails, so the consumers stop waiting for what will not come.
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (t, channel) in producers.into_iter().enumerate() {
            let (queue, body, failed) = (queue.clone(), body.clone(), failed.clone());
            let n = share(p, t);
            tasks.push(tokio::spawn(async move {
                let r = async {
                    let properties = lapin::BasicProperties::default().with_delivery_mode(2);
                    let mut left = n;
                    while left > 0 {
                        let k = left.min(batch);
                        let mut confirms = Vec::with_capacity(k);
                        for _ in 0..k {
                            confirms.push(
                                channel
                                    .basic_publish(
                                        "".into(),
                                        queue.as_str().into(),
                                        BasicPublishOptions::default(),
                                        &body,
                                        properties.clone(),
                                    )
                                    .await
                                    .map_err(amqp_err)?,
                            );
                        }
                        for confirm in confirms {
                            let confirmation = confirm.await.map_err(amqp_err)?;
                            if !confirmation.is_ack() {
                                return Err(backend_err(format!(
                                    "raw amqp: publish not confirmed: {confirmation:?}"
                                )));
                            }
                        }
                        left -= k;
                    }
                    Ok(())
                }
                .await;
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                r
            }));
        }
        for mut consumer in consumers {
            let (acked, finished, failed) = (acked.clone(), finished.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                let r = async {
                    while acked.load(Ordering::Relaxed) < total && !failed.load(Ordering::Relaxed) {
                        // Wake up now and then to notice that the others have finished.
                        let next =
                            tokio::time::timeout(Duration::from_millis(100), consumer.next()).await;
                        let delivery = match next {
                            Err(_) => continue,
                            Ok(None) => return Err(backend_err("raw amqp: consumer cancelled")),
                            Ok(Some(d)) => d.map_err(amqp_err)?,
                        };
                        delivery
                            .ack(BasicAckOptions::default())
                            .await
                            .map_err(amqp_err)?;
                        if acked.fetch_add(1, Ordering::Relaxed) + 1 == total {
                            *finished.lock() = Some(Instant::now());
                        }
                    }
                    Ok(())
                }
                .await;
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                r
            }));
        }
        let mut failure = None;
        for t in tasks {
            match tokio::time::timeout(Duration::from_secs(600), t).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => failure = Some(e),
                Ok(Err(e)) => failure = Some(backend_err(e.to_string())),
                Err(_) => {
                    failed.store(true, Ordering::Relaxed);
                    failure = Some(backend_err("raw amqp phase timed out"));
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let end = (*finished.lock()).ok_or_else(|| {
            backend_err(format!(
                "raw amqp moved {} of {total}",
                acked.load(Ordering::Relaxed)
            ))
        })?;
        Ok(end.duration_since(start))
    }
    .await;
    for conn in &conns {
        amqp_close(conn).await;
    }
    Ok((
        format!(
            "amqp confirm-batch x{batch} / consume prefetch {prefetch}, ack each \
             (durable classic queue, persistent)"
        ),
        result?,
    ))
}

fn nats_err(e: impl std::fmt::Display) -> courier::Error {
    courier::Error::new(courier::ErrorKind::Backend, format!("raw nats: {e}"))
}

/// The raw NATS baseline's stream in run `id` (its subject is `<stream>.raw`).
fn raw_nats_stream(id: &str) -> String {
    format!("courier-bench-raw-{id}")
}

/// One connection to the server for the raw client (the error names the failure, not the
/// URL, which may hold credentials).
async fn nats_connect(url: &str) -> courier::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| nats_err(format!("cannot connect: {}", e.kind())))
}

/// Delete run `id`'s raw stream (one that is not there is not an error).
async fn delete_raw_nats_stream(url: &str, id: &str) -> courier::Result<()> {
    let client = nats_connect(url).await?;
    let js = async_nats::jetstream::new(client);
    match js.delete_stream(raw_nats_stream(id)).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("not found") => Ok(()),
        Err(e) => Err(nats_err(format!("deleting the raw stream: {e}"))),
    }
}

/// NATS's raw primitive, through bare async-nats JetStream on one stream of this run (file
/// storage, work-queue retention, subject `<stream>.raw`) and one connection, as the backend
/// has: `concurrency` producers each publishing `batch` messages (`js.publish`) then awaiting
/// the batch's `PublishAck`s, and `concurrency` consumers on one durable pull consumer
/// (explicit ack), each pulling batches of `batch` and acking each message. The clock stops
/// when the server has applied every ack: the acks are flushed and the stream is empty
/// (work-queue retention removes a message when it is acked), as the end-to-end phase waits
/// for the queue's stats to count every ack. The stream is deleted by [`cleanup`].
async fn raw_nats(
    p: &Params,
    body: &Bytes,
    url: &str,
    id: &str,
) -> courier::Result<(String, Duration)> {
    use async_nats::jetstream::{consumer, stream};
    let name = raw_nats_stream(id);
    let subject = format!("{name}.raw");
    let batch = p.batch.max(1);
    let client = nats_connect(url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .map_err(nats_err)?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("courier-bench-raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .map_err(nats_err)?;
    let mut feeds = Vec::new();
    for _ in 0..p.concurrency {
        feeds.push(
            consumer
                .stream()
                .max_messages_per_batch(batch)
                .messages()
                .await
                .map_err(nats_err)?,
        );
    }
    let total = p.messages as u64;
    let acked = Arc::new(AtomicU64::new(0));
    // Set when a task fails, so the consumers stop waiting for what will not come.
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..p.concurrency {
        let (js, subject, body, failed) =
            (js.clone(), subject.clone(), body.clone(), failed.clone());
        let n = share(p, t);
        tasks.push(tokio::spawn(async move {
            let r = async {
                let mut left = n;
                while left > 0 {
                    let k = left.min(batch);
                    let mut acks = Vec::with_capacity(k);
                    for _ in 0..k {
                        acks.push(
                            js.publish(subject.clone(), body.clone())
                                .await
                                .map_err(nats_err)?,
                        );
                    }
                    for ack in acks {
                        ack.await.map_err(nats_err)?;
                    }
                    left -= k;
                }
                Ok(())
            }
            .await;
            if r.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            r
        }));
    }
    for mut feed in feeds {
        let (acked, failed) = (acked.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let r = async {
                while acked.load(Ordering::Relaxed) < total && !failed.load(Ordering::Relaxed) {
                    // Wake up now and then to notice that the others have finished.
                    let next = tokio::time::timeout(Duration::from_millis(100), feed.next()).await;
                    let message = match next {
                        Err(_) => continue,
                        Ok(None) => return Err(nats_err("the pull consumer ended")),
                        Ok(Some(m)) => m.map_err(nats_err)?,
                    };
                    message.ack().await.map_err(nats_err)?;
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            .await;
            if r.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            r
        }));
    }
    let mut failure = None;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(600), t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => failure = Some(e),
            Ok(Err(e)) => failure = Some(backend_err(e.to_string())),
            Err(_) => {
                failed.store(true, Ordering::Relaxed);
                failure = Some(backend_err("raw nats phase timed out"));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    // Every ack is on the wire; wait until the server has applied them all.
    client.flush().await.map_err(nats_err)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = stream.get_info().await.map_err(nats_err)?.state.messages;
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(backend_err(format!(
                "raw nats: {left} of {total} messages still unacked after 60 s"
            )));
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = start.elapsed();
    Ok((
        format!(
            "nats jetstream publish x{batch}, PublishAcks awaited / durable pull consumer, \
             batches of {batch}, ack each (file storage, work-queue retention, one connection)"
        ),
        elapsed,
    ))
}

/// SQLite's raw primitive: a fresh file next to the backend's (WAL, `synchronous=NORMAL`),
/// `concurrency` producer connections each inserting `batch` rows per transaction and
/// `concurrency` consumer connections each deleting the `batch` oldest rows per transaction
/// (`DELETE … RETURNING` the payloads). The clock stops when the last row is deleted.
async fn raw_sqlite(
    p: &Params,
    body: &Bytes,
    backend_file: Option<&Path>,
    id: &str,
) -> courier::Result<(String, Duration)> {
    let dir = backend_file
        .and_then(Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| {
            if backend_file.is_some() {
                PathBuf::from(".")
            } else {
                std::env::temp_dir()
            }
        });
    let file = dir.join(format!("courier-bench-raw-{id}.db"));
    let p2 = p.clone();
    let body = body.to_vec();
    let f2 = file.clone();
    let result = tokio::task::spawn_blocking(move || raw_sqlite_blocking(&p2, &body, &f2))
        .await
        .map_err(|e| backend_err(e.to_string()));
    remove_db_files(&file);
    let elapsed = result?.map_err(|e| backend_err(format!("raw sqlite: {e}")))?;
    Ok((
        format!(
            "sqlite INSERT x{b} / DELETE..RETURNING x{b} per transaction (WAL, synchronous=NORMAL)",
            b = p.batch.max(1)
        ),
        elapsed,
    ))
}

fn sqlite_open(file: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(file)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

fn raw_sqlite_blocking(p: &Params, body: &[u8], file: &Path) -> rusqlite::Result<Duration> {
    {
        let conn = sqlite_open(file)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY, body BLOB NOT NULL)",
        )?;
    }
    let batch = p.batch.max(1);
    let total = p.messages as u64;
    let popped = AtomicU64::new(0);
    let finished = parking_lot::Mutex::new(None::<Instant>);
    let mut producers = Vec::new();
    let mut consumers = Vec::new();
    for _ in 0..p.concurrency {
        producers.push(sqlite_open(file)?);
        consumers.push(sqlite_open(file)?);
    }
    let start = Instant::now();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (t, mut conn) in producers.into_iter().enumerate() {
            let n = share(p, t);
            handles.push(s.spawn(move || -> rusqlite::Result<()> {
                let mut left = n;
                while left > 0 {
                    let k = left.min(batch);
                    let tx =
                        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    {
                        let mut ins = tx.prepare_cached("INSERT INTO q (body) VALUES (?1)")?;
                        for _ in 0..k {
                            ins.execute([body])?;
                        }
                    }
                    tx.commit()?;
                    left -= k;
                }
                Ok(())
            }));
        }
        for mut conn in consumers {
            let (popped, finished) = (&popped, &finished);
            handles.push(s.spawn(move || -> rusqlite::Result<()> {
                while popped.load(Ordering::Relaxed) < total {
                    let tx =
                        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    let got = {
                        let mut del = tx.prepare_cached(
                            "DELETE FROM q WHERE id IN (SELECT id FROM q ORDER BY id LIMIT ?1) \
                             RETURNING body",
                        )?;
                        let mut rows = del.query([batch as i64])?;
                        let mut got = 0u64;
                        while let Some(row) = rows.next()? {
                            let b: &[u8] = row.get_ref(0)?.as_blob()?;
                            got += u64::from(!b.is_empty());
                        }
                        got
                    };
                    tx.commit()?;
                    if got == 0 {
                        std::thread::sleep(Duration::from_micros(50));
                    } else if popped.fetch_add(got, Ordering::Relaxed) + got == total {
                        *finished.lock() = Some(Instant::now());
                    }
                }
                Ok(())
            }));
        }
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    // A failed producer would leave the consumers waiting forever.
                    popped.store(total, Ordering::Relaxed);
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    popped.store(total, Ordering::Relaxed);
                    first_err.get_or_insert(rusqlite::Error::InvalidQuery);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })?;
    let end = (*finished.lock()).unwrap_or_else(Instant::now);
    Ok(end.duration_since(start))
}

async fn idle_latency(courier: &Courier, q: &str, p: &Params) -> courier::Result<Vec<f64>> {
    courier.queue().configure(q, bench_config())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let worker = courier
        .worker(q)
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
        courier.queue().publish(q, Message::new("lat", "x")).await?;
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
         messages           {}  (batch {}, concurrency {}, prefetch {}, payload {} B, \
         queues {})\n\
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
        r.queues,
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
