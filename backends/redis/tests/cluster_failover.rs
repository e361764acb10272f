//! A master failover on a private Redis Cluster (3 masters + 3 replicas started by
//! `scripts/redis-cluster.sh` in a directory of its own, `cluster-node-timeout` 1 s), while 4
//! publishers publish 20,000 messages over 16 queues and 4 workers (each a handle of its own
//! running the core `Worker` on every queue) consume them:
//!
//! 1. after a third of the publishes, handlers are held until messages wait in the master
//!    that will be killed, so the crash surely hits stored, unhandled messages;
//! 2. that master is SIGKILLed; its replica is elected (the test times the promotion as the
//!    surviving nodes report it);
//! 3. every worker must receive again from the failed-over queues within 5 s of the
//!    promotion;
//! 4. the old master is started again and must rejoin as a replica of the new one;
//! 5. everything is drained and accounted for, Jepsen style: `unexpected` (handled, never
//!    published) must be 0, duplicates are counted, and **lost** (publish acknowledged, never
//!    handled) is printed, not asserted 0: Redis replicates asynchronously, so a write the
//!    killed master acknowledged but had not yet sent to its replica is gone. What is
//!    asserted is where loss may happen: only on queues whose slot the killed master served.
//!
//! Two more tests, each on a private cluster of its own: a receive blocked when
//! `CLUSTER FAILOVER` moves its slot, and a queue whose slot migrates under load.

mod support;

use courier_conformance::faults::until;
use support::cluster::{first_seed, master_of, node};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use courier_core::{
    Message, MessageId, Queue, QueueConfig, QueueExt, RetryPolicy, Worker, WorkerHandle,
};
use courier_redis::RedisBackend;
use parking_lot::Mutex;
use tokio::time::{Instant, timeout};

const TOTAL: usize = 20_000;
const QUEUES: usize = 16;
const PUBLISHERS: usize = 4;
const WORKERS: usize = 4;
const BATCH: usize = 10;
const RESUME_WITHIN: Duration = Duration::from_secs(5);

/// A private cluster, stopped (and its directory removed) on drop.
struct Cluster {
    dir: PathBuf,
    url: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/redis-cluster.sh")
}

impl Cluster {
    /// `offset` keeps the port ranges of this binary's tests (which run at once) apart.
    fn up(test: &str, offset: u32) -> Option<Cluster> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            support::unreachable(test, &"redis-server is not installed");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("courier-{test}-{}", std::process::id()));
        // Ports away from the shared test cluster's (17000…), apart per process, and with
        // their bus ports (+10000) below Linux's ephemeral range (32768…).
        let base = 18_000 + (std::process::id() % 40) * 90 + offset;
        let out = Command::new("bash")
            .arg(script())
            .arg("up")
            .arg(&dir)
            .env("REDIS_CLUSTER_BASE_PORT", base.to_string())
            .env("REDIS_CLUSTER_NODE_TIMEOUT", "1000")
            .output()
            .expect("run scripts/redis-cluster.sh");
        assert!(
            out.status.success(),
            "redis-cluster.sh up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string();
        Some(Cluster { dir, url })
    }

    fn node_dir(&self, port: u16) -> PathBuf {
        self.dir.join(format!("node-{port}"))
    }

    fn kill9(&self, port: u16) {
        let pid = std::fs::read_to_string(self.node_dir(port).join("pid")).expect("pid file");
        let status = Command::new("kill")
            .arg("-9")
            .arg(pid.trim())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -9 {pid}");
    }

    fn start(&self, port: u16) {
        let status = Command::new("redis-server")
            .arg(self.node_dir(port).join("redis.conf"))
            .status()
            .expect("redis-server");
        assert!(status.success(), "restart node {port}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("down")
            .arg(&self.dir)
            .output();
    }
}

/// `CLUSTER NODES` of the node at `port`: `(id, port, flags, master id)` per node.
async fn cluster_nodes(port: u16) -> redis::RedisResult<Vec<(String, u16, String, String)>> {
    let mut c = node(&format!("127.0.0.1:{port}")).await?;
    let text: String = timeout(
        Duration::from_secs(5),
        redis::cmd("CLUSTER").arg("NODES").query_async(&mut c),
    )
    .await
    .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "timed out")))??;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let port = f
                .get(1)?
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            Some((
                f[0].to_string(),
                port,
                f.get(2)?.to_string(),
                f.get(3)?.to_string(),
            ))
        })
        .collect())
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("host:port")
}

fn queue_name(i: usize) -> String {
    format!("failover-{i}")
}

fn config() -> QueueConfig {
    QueueConfig::default()
        .with_visibility_timeout(Duration::from_secs(3))
        .with_retry(RetryPolicy::exact(
            50,
            Duration::from_millis(20),
            2.0,
            Duration::from_millis(200),
        ))
}

#[derive(Default)]
struct Ledger {
    attempted: Mutex<HashSet<MessageId>>,
    ok: Mutex<HashMap<MessageId, usize>>,
    handled: Mutex<HashMap<MessageId, u32>>,
    ok_count: AtomicUsize,
    publish_errors: AtomicUsize,
}

/// One publisher: its share in batches of [`BATCH`], queue after queue; a batch is retried
/// (same ids) while the error is retryable.
async fn publish(q: Arc<dyn Queue>, ledger: Arc<Ledger>, p: usize, deadline: Instant) {
    let per = TOTAL / PUBLISHERS;
    for b in 0..per / BATCH {
        let queue = (p + b) % QUEUES;
        let mut batch: Vec<Message> = (0..BATCH)
            .map(|i| Message::new("job", format!("p{p}-b{b}-m{i}")))
            .collect();
        ledger.attempted.lock().extend(batch.iter().map(|m| m.id));
        loop {
            assert!(Instant::now() < deadline, "publisher {p}: out of time");
            let ids: Vec<MessageId> = batch.iter().map(|m| m.id).collect();
            match timeout(
                Duration::from_secs(10),
                q.publish_batch(&queue_name(queue), batch.clone()),
            )
            .await
            {
                Ok(Ok(_)) => {
                    ledger.ok_count.fetch_add(ids.len(), Ordering::Relaxed);
                    ledger.ok.lock().extend(ids.iter().map(|&id| (id, queue)));
                    break;
                }
                Ok(Err(e)) if e.is_retryable() => {
                    ledger.publish_errors.fetch_add(1, Ordering::Relaxed);
                    let n = e.stored().unwrap_or(0).min(batch.len());
                    ledger.ok_count.fetch_add(n, Ordering::Relaxed);
                    ledger
                        .ok
                        .lock()
                        .extend(ids[..n].iter().map(|&id| (id, queue)));
                    batch.drain(..n);
                    if batch.is_empty() {
                        break;
                    }
                }
                Ok(Err(e)) => panic!("publisher {p}: non-retryable error {e:#}"),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A worker on `queue` whose handlers record each delivery in the ledger, each waiting while
/// `gate` is shut.
fn gated_worker(
    b: Arc<dyn Queue>,
    queue: &str,
    ledger: Arc<Ledger>,
    gate: tokio::sync::watch::Receiver<bool>,
) -> WorkerHandle {
    Worker::builder(b, queue)
        .concurrency(4)
        .idle_wait(Duration::from_millis(500))
        .handler("job", move |m: Message| {
            let l = ledger.clone();
            let mut gate = gate.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                *l.handled.lock().entry(m.id).or_insert(0) += 1;
                Ok(())
            }
        })
        .start()
        .expect("worker")
}

async fn connect(url: &str, prefix: &str) -> Arc<dyn Queue> {
    let b = timeout(
        Duration::from_secs(20),
        RedisBackend::builder().url(url).key_prefix(prefix).build(),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    for q in 0..QUEUES {
        b.configure(&queue_name(q), config()).expect("configure");
    }
    Arc::new(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_resume_after_a_master_failover() {
    const TEST: &str = "cluster_failover";
    let Some(cluster) = Cluster::up(TEST, 0) else {
        return;
    };
    // What an operator would see: the warnings logged during the run (all tests of this
    // binary log into it; only this one counts them, and prints the figure).
    let logs = support::logs::LogRecorder::new(tracing::Level::WARN, "courier");
    let _ = tracing::subscriber::set_global_default(logs.clone());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(150);
    let prefix = format!("courier-failover-{}", rand::random::<u32>());
    let seed = first_seed(&cluster.url);

    // The master to kill: the one serving queue 0. Which queues it serves: loss may only
    // happen there.
    let mut owners = Vec::new();
    for q in 0..QUEUES {
        let (_, addr) = master_of(&seed, &format!("{{{prefix}:q:{}}}", queue_name(q))).await;
        owners.push(port_of(&addr));
    }
    let victim = owners[0];
    let victim_queues: HashSet<usize> = (0..QUEUES).filter(|&q| owners[q] == victim).collect();
    let masters: HashSet<u16> = owners.iter().copied().collect();
    eprintln!("queues per master: {:?}", {
        let mut m: HashMap<u16, usize> = HashMap::new();
        for o in &owners {
            *m.entry(*o).or_default() += 1;
        }
        m
    });
    let nodes = cluster_nodes(port_of(&seed)).await.expect("cluster nodes");
    let victim_id = nodes
        .iter()
        .find(|n| n.1 == victim)
        .map(|n| n.0.clone())
        .expect("victim id");
    let (replica_id, replica) = nodes
        .iter()
        .find(|n| n.3 == victim_id)
        .map(|n| (n.0.clone(), n.1))
        .expect("the victim's replica");
    let witness = *nodes
        .iter()
        .map(|n| &n.1)
        .find(|&&p| p != victim && p != replica)
        .expect("a third node");

    let ledger = Arc::new(Ledger::default());
    let publisher = connect(&cluster.url, &prefix).await;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| tokio::spawn(publish(publisher.clone(), ledger.clone(), p, deadline)))
        .collect();

    let (gate_tx, gate_rx) = tokio::sync::watch::channel(true);
    // workers[w][q]: worker w's runtime on queue q.
    let mut workers: Vec<Vec<WorkerHandle>> = Vec::new();
    for _ in 0..WORKERS {
        let b = connect(&cluster.url, &prefix).await;
        let mut per_queue = Vec::new();
        for q in 0..QUEUES {
            per_queue.push(gated_worker(
                b.clone(),
                &queue_name(q),
                ledger.clone(),
                gate_rx.clone(),
            ));
        }
        workers.push(per_queue);
    }
    let progress = |workers: &[Vec<WorkerHandle>]| {
        let received: Vec<u64> = workers
            .iter()
            .map(|w| w.iter().map(|h| h.stats().received).sum())
            .collect();
        format!(
            "ok {} of {TOTAL}, publish errors {}, handled {}, received per worker {received:?}",
            ledger.ok_count.load(Ordering::Relaxed),
            ledger.publish_errors.load(Ordering::Relaxed),
            ledger.handled.lock().len(),
        )
    };

    until(
        Duration::from_secs(60),
        "a third of the publishes",
        || ledger.ok_count.load(Ordering::Relaxed) >= TOTAL / 3,
        || progress(&workers),
    )
    .await;
    // Hold the handlers until messages wait in the victim's queues.
    gate_tx.send_replace(false);
    let ready_by = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ready = 0;
        for &q in &victim_queues {
            let st = timeout(Duration::from_secs(10), publisher.stats(&queue_name(q)))
                .await
                .expect("stats in time")
                .expect("stats");
            ready += st.ready_total();
        }
        if ready > 0 {
            break;
        }
        assert!(Instant::now() < ready_by, "nothing ready on the victim");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_at = Instant::now();
    cluster.kill9(victim);
    eprintln!(
        "kill -9 master :{victim} (queues {victim_queues:?}) at {:?}: {}",
        started.elapsed(),
        progress(&workers)
    );
    // The promotion, as a surviving node reports it.
    let promoted_at = loop {
        if let Ok(nodes) = cluster_nodes(witness).await
            && nodes
                .iter()
                .any(|n| n.0 == replica_id && n.2.contains("master"))
        {
            break Instant::now();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "replica :{replica} not promoted within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let before: Vec<u64> = workers
        .iter()
        .map(|w| victim_queues.iter().map(|&q| w[q].stats().received).sum())
        .collect();
    gate_tx.send_replace(true);
    eprintln!(
        "replica :{replica} promoted {:?} after the kill",
        promoted_at - killed_at
    );
    // Every worker receives again from the failed-over queues.
    let mut resumed = vec![None; WORKERS];
    until(
        Duration::from_secs(30),
        "every worker to receive again from the failed-over queues",
        || {
            for (w, per_queue) in workers.iter().enumerate() {
                let now: u64 = victim_queues
                    .iter()
                    .map(|&q| per_queue[q].stats().received)
                    .sum();
                if resumed[w].is_none() && now > before[w] {
                    resumed[w] = Some(promoted_at.elapsed());
                }
            }
            resumed.iter().all(Option::is_some)
        },
        || format!("received before {before:?}; {}", progress(&workers)),
    )
    .await;
    let resumed: Vec<Duration> = resumed.into_iter().flatten().collect();
    let slowest = resumed.iter().max().copied().unwrap_or_default();

    // The old master comes back and must rejoin as a replica of the new one.
    cluster.start(victim);
    let rejoin_by = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(nodes) = cluster_nodes(victim).await
            && nodes
                .iter()
                .any(|n| n.0 == victim_id && n.2.contains("slave") && n.3 == replica_id)
        {
            break;
        }
        assert!(
            Instant::now() < rejoin_by,
            "old master did not rejoin as a replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("old master :{victim} rejoined as a replica of :{replica}");

    for p in publishers {
        timeout(deadline - Instant::now(), p)
            .await
            .expect("publishers finish in time")
            .expect("publisher task");
    }
    // Drained: every queue empty of ready, delayed and in-flight messages.
    let drained_by = Instant::now() + Duration::from_secs(60);
    loop {
        let mut stored = 0;
        for q in 0..QUEUES {
            let st = timeout(Duration::from_secs(10), publisher.stats(&queue_name(q)))
                .await
                .expect("stats in time")
                .expect("stats");
            stored += st.ready_total() + st.delayed + st.in_flight;
        }
        if stored == 0 {
            break;
        }
        assert!(
            Instant::now() < drained_by,
            "{stored} messages still stored; {}",
            progress(&workers)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for per_queue in workers {
        for w in per_queue {
            timeout(Duration::from_secs(10), w.stop(Duration::from_secs(2)))
                .await
                .expect("worker stops in time");
        }
    }

    let attempted = ledger.attempted.lock().clone();
    let ok = ledger.ok.lock().clone();
    let handled = ledger.handled.lock().clone();
    let lost: Vec<(&MessageId, &usize)> = ok
        .iter()
        .filter(|(id, _)| !handled.contains_key(id))
        .collect();
    let unexpected = handled.keys().filter(|id| !attempted.contains(id)).count();
    let duplicated = handled.values().filter(|&&n| n > 1).count();
    let warnings = logs.lines();
    println!(
        "{{:attempted {} :ok {} :handled {} :lost {} :unexpected {unexpected} :duplicated {duplicated} \
         :warnings-logged {} \
         :publish-errors {} :masters {} :victim-queues {} :promoted-after-ms {} \
         :resumed-after-promotion-ms {:?} :elapsed-ms {}}}",
        attempted.len(),
        ok.len(),
        handled.len(),
        lost.len(),
        warnings.len(),
        ledger.publish_errors.load(Ordering::Relaxed),
        masters.len(),
        victim_queues.len(),
        (promoted_at - killed_at).as_millis(),
        resumed.iter().map(Duration::as_millis).collect::<Vec<_>>(),
        started.elapsed().as_millis(),
    );
    assert_eq!(ok.len(), TOTAL, "every batch was eventually acknowledged");
    assert_eq!(unexpected, 0, "handled messages that were never published");
    assert!(
        lost.iter().all(|(_, q)| victim_queues.contains(q)),
        "a message was lost on a queue the killed master did not serve"
    );
    assert!(
        slowest <= RESUME_WITHIN,
        "workers resumed {resumed:?} after the promotion (limit {RESUME_WITHIN:?})"
    );
}

/// `INFO` field `name` of the node at `port`.
async fn info_field(port: u16, section: &str, name: &str) -> Option<String> {
    let mut c = node(&format!("127.0.0.1:{port}")).await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut c)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
}

/// A receive blocked on a queue's master when a manual failover (`CLUSTER FAILOVER` on the
/// replica) moves the slot: the old master, now a replica, ends the blocked `BLPOP` with
/// `MOVED`, and the wait must carry on at the new master, so a message published there
/// afterwards is received at once, not when the receive's 20 s wait ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_receive_follows_its_slot_to_the_new_master() {
    const TEST: &str = "cluster_moved_wait";
    let Some(cluster) = Cluster::up(TEST, 30) else {
        return;
    };
    let prefix = format!("courier-moved-{}", rand::random::<u32>());
    let seed = first_seed(&cluster.url);
    let queue = "moved";
    let master = port_of(&master_of(&seed, &format!("{{{prefix}:q:{queue}}}")).await.1);
    let nodes = cluster_nodes(port_of(&seed)).await.expect("cluster nodes");
    let master_id = nodes
        .iter()
        .find(|n| n.1 == master)
        .expect("master")
        .0
        .clone();
    let replica = nodes
        .iter()
        .find(|n| n.3 == master_id)
        .map(|n| n.1)
        .expect("the master's replica");
    let backend = Arc::new(
        timeout(
            Duration::from_secs(10),
            RedisBackend::builder()
                .url(cluster.url.as_str())
                .key_prefix(prefix.as_str())
                .build(),
        )
        .await
        .expect("connect in time")
        .expect("connect"),
    );
    let b = backend.clone();
    let receiving = tokio::spawn(async move {
        let r = b.receive(queue, 1, Duration::from_secs(20)).await;
        (r, Instant::now())
    });
    // Blocked on the master.
    let blocked_by = Instant::now() + Duration::from_secs(10);
    while info_field(master, "clients", "blocked_clients")
        .await
        .as_deref()
        != Some("1")
    {
        assert!(
            Instant::now() < blocked_by,
            "the receive never blocked on :{master}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut r = node(&format!("127.0.0.1:{replica}"))
        .await
        .expect("replica");
    let _: String = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query_async(&mut r)
        .await
        .expect("CLUSTER FAILOVER");
    let promoted_by = Instant::now() + Duration::from_secs(10);
    while info_field(replica, "replication", "role").await.as_deref() != Some("master") {
        assert!(Instant::now() < promoted_by, ":{replica} not promoted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let published_at = Instant::now();
    let id = timeout(
        Duration::from_secs(10),
        backend.publish(queue, Message::new("job", "after the failover")),
    )
    .await
    .expect("publish in time")
    .expect("publish");
    let (got, at) = timeout(Duration::from_secs(30), receiving)
        .await
        .expect("the receive ends in time")
        .expect("receive task");
    let got = got.expect("receive");
    let waited = at.saturating_duration_since(published_at);
    println!(
        "blocked receive moved from :{master} to :{replica}; got the message {waited:?} after \
         its publish"
    );
    assert_eq!(got.len(), 1, "the message published at the new master");
    assert_eq!(got[0].message.id, id);
    assert!(
        waited < Duration::from_secs(3),
        "received {waited:?} after the publish: the wait did not follow the slot"
    );
}

/// A queue under load while its slot migrates to another master (`CLUSTER SETSLOT
/// IMPORTING / MIGRATING`, `MIGRATE` a few keys at a time, then `SETSLOT NODE`), as
/// `redis-cli --cluster reshard` does: calls meet `ASK` and `TRYAGAIN` meanwhile and `MOVED`
/// afterwards, and a blocked receive is redirected. Nothing may be lost (a migration moves
/// keys atomically; no failover is involved), nothing unexpected handled; duplicates are
/// counted. Afterwards the queue's keys are on the new master only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_keeps_working_while_its_slot_migrates() {
    const TEST: &str = "cluster_migration";
    const N: usize = 4_000;
    let Some(cluster) = Cluster::up(TEST, 60) else {
        return;
    };
    let prefix = format!("courier-migrate-{}", rand::random::<u32>());
    let seed = first_seed(&cluster.url);
    let queue = "migrating";
    let (slot, src) = master_of(&seed, &format!("{{{prefix}:q:{queue}}}")).await;
    let nodes = cluster_nodes(port_of(&seed)).await.expect("cluster nodes");
    let id_of = |port: u16| nodes.iter().find(|n| n.1 == port).expect("node").0.clone();
    let src_port = port_of(&src);
    let dst_port = nodes
        .iter()
        .find(|n| n.2.contains("master") && n.1 != src_port)
        .map(|n| n.1)
        .expect("another master");
    let masters: Vec<u16> = nodes
        .iter()
        .filter(|n| n.2.contains("master"))
        .map(|n| n.1)
        .collect();
    let (src_id, dst_id) = (id_of(src_port), id_of(dst_port));

    let ledger = Arc::new(Ledger::default());
    let b = connect(&cluster.url, &prefix).await;
    b.configure(queue, config()).expect("configure");
    // Handlers are held during the migration, so the slot holds ready and leased messages
    // (all of a queue's keys) while it moves.
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(true);
    let worker = gated_worker(b.clone(), queue, ledger.clone(), gate_rx);
    let publisher = {
        let (b, l) = (b.clone(), ledger.clone());
        tokio::spawn(async move {
            for batch_no in 0..N / BATCH {
                let batch: Vec<Message> = (0..BATCH)
                    .map(|i| Message::new("job", format!("b{batch_no}-m{i}")))
                    .collect();
                l.attempted.lock().extend(batch.iter().map(|m| m.id));
                loop {
                    match timeout(
                        Duration::from_secs(10),
                        b.publish_batch(queue, batch.clone()),
                    )
                    .await
                    {
                        Ok(Ok(_)) => {
                            l.ok_count.fetch_add(BATCH, Ordering::Relaxed);
                            l.ok.lock().extend(batch.iter().map(|m| (m.id, 0)));
                            break;
                        }
                        Ok(Err(e)) if e.is_retryable() => {
                            l.publish_errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => panic!("publish: non-retryable error {e:#}"),
                        Err(_) => {}
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // Spread the publishes over the migration.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    until(
        Duration::from_secs(30),
        "a quarter of the publishes",
        || ledger.ok_count.load(Ordering::Relaxed) >= N / 4,
        || format!("ok {}", ledger.ok_count.load(Ordering::Relaxed)),
    )
    .await;

    gate_tx.send_replace(false);
    let ready_by = Instant::now() + Duration::from_secs(30);
    loop {
        let st = timeout(Duration::from_secs(10), b.stats(queue))
            .await
            .expect("stats in time")
            .expect("stats");
        if st.ready_total() > 0 && st.in_flight > 0 {
            break;
        }
        assert!(
            Instant::now() < ready_by,
            "no ready and leased messages: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Migrate the slot, a few keys at a time.
    let migration_started = Instant::now();
    let mut s = node(&format!("127.0.0.1:{src_port}")).await.expect("src");
    let mut d = node(&format!("127.0.0.1:{dst_port}")).await.expect("dst");
    let setslot = |state: &str, id: &str| {
        let mut c = redis::cmd("CLUSTER");
        c.arg("SETSLOT").arg(slot).arg(state).arg(id);
        c
    };
    let _: () = setslot("IMPORTING", &src_id)
        .query_async(&mut d)
        .await
        .expect("importing");
    let _: () = setslot("MIGRATING", &dst_id)
        .query_async(&mut s)
        .await
        .expect("migrating");
    let mut moved_keys = 0;
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(3)
            .query_async(&mut s)
            .await
            .expect("getkeysinslot");
        if keys.is_empty() {
            break;
        }
        moved_keys += keys.len();
        let _: redis::Value = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(dst_port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query_async(&mut s)
            .await
            .expect("migrate");
        // Keep the slot half-moved for a while, so calls meet it.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let _: () = setslot("NODE", &dst_id)
        .query_async(&mut d)
        .await
        .expect("node on dst");
    let _: () = setslot("NODE", &dst_id)
        .query_async(&mut s)
        .await
        .expect("node on src");
    for m in masters.iter().filter(|&&m| m != src_port && m != dst_port) {
        let mut c = node(&format!("127.0.0.1:{m}")).await.expect("master");
        let _: () = setslot("NODE", &dst_id)
            .query_async(&mut c)
            .await
            .expect("node on the third master");
    }
    let migrated_in = migration_started.elapsed();
    gate_tx.send_replace(true);
    let ok_at_end_of_migration = ledger.ok_count.load(Ordering::Relaxed);

    timeout(Duration::from_secs(60), publisher)
        .await
        .expect("publisher finishes in time")
        .expect("publisher task");
    until(
        Duration::from_secs(60),
        "every acknowledged publish to be handled",
        || {
            let h = ledger.handled.lock();
            ledger.ok.lock().keys().all(|id| h.contains_key(id))
        },
        || format!("handled {}", ledger.handled.lock().len()),
    )
    .await;
    let stats = loop {
        let st = timeout(Duration::from_secs(10), b.stats(queue))
            .await
            .expect("stats in time")
            .expect("stats");
        if st.stored() == 0 {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let report = timeout(Duration::from_secs(10), worker.stop(Duration::from_secs(2)))
        .await
        .expect("worker stops in time");

    let src_keys: i64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query_async(&mut s)
        .await
        .expect("count on src");
    let dst_keys: i64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query_async(&mut d)
        .await
        .expect("count on dst");
    let attempted = ledger.attempted.lock().clone();
    let ok = ledger.ok.lock().clone();
    let handled = ledger.handled.lock().clone();
    let lost = ok.keys().filter(|id| !handled.contains_key(id)).count();
    let unexpected = handled.keys().filter(|id| !attempted.contains(id)).count();
    let duplicated = handled.values().filter(|&&n| n > 1).count();
    println!(
        "{{:attempted {} :ok {} :handled {} :lost {lost} :unexpected {unexpected} \
         :duplicated {duplicated} :publish-errors {} :slot {slot} :from {src_port} :to {dst_port} \
         :keys-migrated {moved_keys} :migration-ms {} :ok-during-migration {} \
         :lease-lost {} :keys-left-on-source {src_keys} :keys-on-target {dst_keys}}}",
        attempted.len(),
        ok.len(),
        handled.len(),
        ledger.publish_errors.load(Ordering::Relaxed),
        migrated_in.as_millis(),
        ok_at_end_of_migration,
        report.stats.lease_lost,
    );
    assert_eq!(ok.len(), N, "every batch acknowledged");
    assert_eq!(lost, 0, "a migration loses nothing");
    assert_eq!(unexpected, 0);
    assert!(moved_keys > 0, "the slot held keys to migrate");
    assert_eq!(src_keys, 0, "nothing left on the old master");
    assert!(dst_keys > 0, "the queue's keys are on the new master");
    assert_eq!(stats.stored(), 0);
}
