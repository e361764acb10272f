//! Queues spread over a cluster's masters: 64 queues of one service, each with a message
//! published, land on every master of the shared test cluster
//! (`COURIER_TEST_REDIS_CLUSTER_URL`). Prints, per master, its slot ranges, how many of the
//! queues it serves, `CLUSTER COUNTKEYSINSLOT` summed over those queues' slots and its
//! `INFO keyspace` line. The listing (Q13), which scans every master, finds all 64.

mod support;

use support::cluster::{first_seed, master_of, master_slots, node};

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use courier_core::{Message, Queue, QueueExt};
use courier_redis::RedisBackend;

const QUEUES: usize = 64;

#[tokio::test]
async fn sixty_four_queues_use_every_master() {
    let Ok(url) = std::env::var("COURIER_TEST_REDIS_CLUSTER_URL") else {
        support::unreachable(
            "sixty_four_queues_use_every_master",
            &"COURIER_TEST_REDIS_CLUSTER_URL is not set (scripts/redis-cluster.sh up prints it)",
        );
        return;
    };
    let prefix = format!("courier-spread-{}", rand::random::<u32>());
    let backend = support::within(
        "connect",
        RedisBackend::builder()
            .url(url.as_str())
            .key_prefix(prefix.as_str())
            .build(),
    )
    .await
    .expect("connect");
    let names: Vec<String> = (0..QUEUES).map(|i| format!("service.q{i}")).collect();
    for q in &names {
        support::within("publish", backend.publish(q, Message::new("job", "x")))
            .await
            .expect("publish");
    }
    let seed = first_seed(&url);
    let mut masters: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for (a, b, addr) in master_slots(&seed).await {
        masters.entry(addr).or_default().push((a, b));
    }
    assert_eq!(
        masters.len(),
        3,
        "the test cluster has 3 masters: {masters:?}"
    );

    let mut per_master: BTreeMap<String, (usize, i64)> = BTreeMap::new();
    for q in &names {
        let (slot, addr) = master_of(&seed, &format!("{{{prefix}:q:{q}}}")).await;
        // COUNTKEYSINSLOT is answered by the slot's master only.
        let mut m = node(&addr).await.expect("connect");
        let keys: i64 = redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(slot)
            .query_async(&mut m)
            .await
            .expect("countkeysinslot");
        assert!(
            keys >= 1,
            "queue {q}'s slot {slot} holds its keys on {addr}"
        );
        let e = per_master.entry(addr.clone()).or_default();
        e.0 += 1;
        e.1 += keys;
    }
    for (addr, ranges) in &masters {
        let mut m = node(addr).await.expect("connect");
        let info: String = redis::cmd("INFO")
            .arg("keyspace")
            .query_async(&mut m)
            .await
            .expect("info");
        let db0 = info
            .lines()
            .find(|l| l.starts_with("db0:"))
            .unwrap_or("db0: none");
        let (queues, keys) = per_master.get(addr).copied().unwrap_or_default();
        println!(
            "master {addr} slots {ranges:?}: {queues} of {QUEUES} queues, {keys} keys in their \
             slots (COUNTKEYSINSLOT); INFO keyspace {db0}"
        );
    }
    assert_eq!(
        per_master.len(),
        3,
        "every master serves some of the {QUEUES} queues: {per_master:?}"
    );
    assert!(
        per_master.values().all(|&(q, _)| q >= QUEUES / 6),
        "the queues spread roughly evenly: {per_master:?}"
    );

    // Listing scans every master.
    let listed: HashSet<String> = support::within("list", backend.list_queues())
        .await
        .expect("list")
        .into_iter()
        .collect();
    let mine: HashSet<String> = names.iter().cloned().collect();
    assert_eq!(listed.intersection(&mine).count(), QUEUES, "all 64 listed");
    // Take the messages out again (the queues' counters stay, under this run's prefix).
    for q in &names {
        let d = support::within("receive", backend.receive_one(q, Duration::from_secs(1)))
            .await
            .expect("receive")
            .expect("the queue's message");
        support::within("ack", backend.ack(q, &d.lease))
            .await
            .expect("ack");
    }
}
