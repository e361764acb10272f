//! Helpers for the Redis Cluster tests: plain connections to one node and the cluster's
//! layout as `CLUSTER SLOTS` and `CLUSTER KEYSLOT` report it.

use std::time::Duration;

use tokio::time::timeout;

/// A plain connection to the node at `addr` (`host:port`).
pub(crate) async fn node(addr: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}"))?;
    timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))?
}

/// The first seed of a `redis+cluster://h:p,…` URL, as `host:port`.
pub(crate) fn first_seed(url: &str) -> String {
    url.trim_start_matches("redis+cluster://")
        .split([',', '/', '?'])
        .next()
        .expect("a seed")
        .to_string()
}

/// The masters' slot ranges `(first, last, "host:port")`, from `CLUSTER SLOTS` of `seed`.
pub(crate) async fn master_slots(seed: &str) -> Vec<(i64, i64, String)> {
    let mut c = node(seed).await.expect("connect");
    let slots: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut c)
        .await
        .expect("CLUSTER SLOTS");
    let redis::Value::Array(ranges) = slots else {
        panic!("CLUSTER SLOTS: {slots:?}")
    };
    let mut out = Vec::new();
    for r in ranges {
        let redis::Value::Array(f) = r else { continue };
        if let (redis::Value::Int(a), redis::Value::Int(b), redis::Value::Array(m)) =
            (&f[0], &f[1], &f[2])
            && let (redis::Value::BulkString(host), redis::Value::Int(port)) = (&m[0], &m[1])
        {
            out.push((*a, *b, format!("{}:{port}", String::from_utf8_lossy(host))));
        }
    }
    out
}

/// The slot of `key` and the master (`host:port`) serving it, asked of `seed`.
pub(crate) async fn master_of(seed: &str, key: &str) -> (i64, String) {
    let mut c = node(seed).await.expect("connect");
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut c)
        .await
        .expect("CLUSTER KEYSLOT");
    let addr = master_slots(seed)
        .await
        .into_iter()
        .find(|(a, b, _)| (*a..=*b).contains(&slot))
        .map(|(_, _, addr)| addr)
        .unwrap_or_else(|| panic!("no master serves slot {slot}"));
    (slot, addr)
}
