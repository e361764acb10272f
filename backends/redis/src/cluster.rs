//! Redis Cluster: the `redis+cluster://` URL, the shared connection (one node's
//! [`ConnectionManager`] or the cluster client's [`ClusterConnection`]) and the cluster's
//! topology as the blocking waits and listings need it.
//!
//! - Commands and scripts go through redis-rs' async cluster client: every key of a queue
//!   (or topic) shares one hash tag (see `keys.rs`), so each call has one slot and the client
//!   sends it to that slot's master, following `MOVED` / `ASK` and refreshing its slot map
//!   after a failover by itself.
//! - Blocking waits (`BLPOP`, `XREAD BLOCK`) cannot share the cluster client's multiplexed
//!   node connections (a blocked command would hold up every command behind it), so they run
//!   on connections of their own to the master of the wait key's slot, found in
//!   [`Topology`]: `CLUSTER SLOTS`, read at start and again whenever a wait is redirected
//!   (`MOVED`, as a node that lost its slots answers a blocked client) or finds its node gone.
//! - `SCAN` is per node, so a listing scans every master ([`Topology::masters`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use courier_core::{Error, Result};
use parking_lot::{Mutex, RwLock};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Client, Cmd, RedisResult, Value};

use crate::BACKEND_NAME;

/// The shared, multiplexed command connection: to one node, or to a cluster.
#[derive(Clone)]
pub(crate) enum Shared {
    /// One Redis server; reconnects by itself.
    Node(ConnectionManager),
    /// A Redis Cluster; routes by key and follows redirects by itself.
    Cluster(ClusterConnection),
}

impl Shared {
    /// Send `cmd` to the node at `addr` (`host:port`); on one node, to that node.
    pub(crate) async fn on_node(&mut self, addr: &str, cmd: Cmd) -> RedisResult<Value> {
        match self {
            Shared::Node(c) => cmd.query_async(c).await,
            Shared::Cluster(c) => {
                let (host, port) = split_addr(addr).ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "not a host:port node address",
                        addr.to_string(),
                    ))
                })?;
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.to_string(),
                    port,
                });
                c.route_command(cmd, routing).await
            }
        }
    }
}

impl ConnectionLike for Shared {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Shared::Node(c) => c.req_packed_command(cmd),
            Shared::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Shared::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Shared::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Shared::Node(c) => c.get_db(),
            Shared::Cluster(c) => c.get_db(),
        }
    }
}

/// A parsed `redis+cluster://` or `rediss+cluster://` URL: one plain node URL per seed node,
/// each with the same credentials and query.
#[derive(Debug, PartialEq)]
pub(crate) struct ClusterUrl {
    /// `redis://[user:pw@]host:port[?query]` per seed node.
    pub(crate) nodes: Vec<String>,
    /// `redis` or `rediss`.
    pub(crate) scheme: &'static str,
    /// `user:pw@`, or empty.
    userinfo: String,
    /// `?query`, or empty.
    query: String,
}

impl ClusterUrl {
    /// The plain URL of the node at `addr` (`host:port`), with the seeds' credentials.
    pub(crate) fn node_url(&self, addr: &str) -> String {
        format!("{}://{}{addr}{}", self.scheme, self.userinfo, self.query)
    }
}

/// Parse a cluster URL: `redis+cluster://[user:pw@]host1[:port],host2[:port],…[/][?query]`
/// (port 6379 by default). `None` when `url` is not a cluster URL. A database other than 0
/// is refused: a cluster has only database 0. `shown` is the URL with its password redacted,
/// for errors.
pub(crate) fn parse_url(url: &str, shown: &str) -> Result<Option<ClusterUrl>> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("redis+cluster") => ("redis", rest),
        Some((s, rest)) if s.eq_ignore_ascii_case("rediss+cluster") => ("rediss", rest),
        _ => return Ok(None),
    };
    let invalid = |why: &str| {
        Error::invalid(format!("invalid Redis Cluster URL {shown}: {why}"))
            .with_backend(BACKEND_NAME)
            .with_operation("connect")
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, format!("?{q}")),
        None => (tail, String::new()),
    };
    if !matches!(path, "" | "/" | "/0") {
        return Err(invalid("a cluster has only database 0"));
    }
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (format!("{}@", &authority[..at]), &authority[at + 1..]),
        None => (String::new(), authority),
    };
    let mut nodes = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() {
            return Err(invalid("expected host[:port],host[:port],…"));
        }
        let addr = match host.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => host.to_string(),
            Some(_) => return Err(invalid("a node's port is not a number")),
            None => format!("{host}:6379"),
        };
        nodes.push(format!("{scheme}://{userinfo}{addr}{query}"));
    }
    Ok(Some(ClusterUrl {
        nodes,
        scheme,
        userinfo,
        query,
    }))
}

/// `host:port` split in two.
fn split_addr(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

/// The cluster slot of a key (CRC16 of its hash tag, or of the whole key without one).
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let close = key[open + 1..].iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &key[open + 1..open + 1 + close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % 16384
}

/// How long a topology read stays fresh enough to skip another after a failed wait.
const REFRESH_EVERY: Duration = Duration::from_millis(100);

/// Which master serves which slot, and a client for each master, for the waits and listings
/// that cannot go through the cluster client.
pub(crate) struct Topology {
    url: ClusterUrl,
    tls_root: Option<Vec<u8>>,
    /// Slot ranges `(first, last, "host:port")` of the masters, sorted by first slot.
    slots: RwLock<Vec<(u16, u16, String)>>,
    refreshed: Mutex<Option<Instant>>,
    clients: Mutex<HashMap<String, Client>>,
}

impl Topology {
    pub(crate) fn new(url: ClusterUrl, tls_root: Option<Vec<u8>>) -> Self {
        Topology {
            url,
            tls_root,
            slots: RwLock::new(Vec::new()),
            refreshed: Mutex::new(None),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The master serving `key`'s slot, reading the topology first if it is not known yet.
    pub(crate) async fn owner(&self, key: &str, shared: &mut Shared) -> RedisResult<String> {
        let slot = slot(key.as_bytes());
        if let Some(addr) = self.cached_owner(slot) {
            return Ok(addr);
        }
        self.refresh(shared, true).await?;
        self.cached_owner(slot).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                "no master serves the slot",
                slot.to_string(),
            ))
        })
    }

    fn cached_owner(&self, slot: u16) -> Option<String> {
        let slots = self.slots.read();
        let i = slots.partition_point(|(first, _, _)| *first <= slot);
        let (first, last, addr) = slots.get(i.checked_sub(1)?)?;
        (*first <= slot && slot <= *last).then(|| addr.clone())
    }

    /// A `MOVED` redirect: `slot` is now served by `addr`. The whole map is read again, as
    /// a failover or resharding moves more than one slot, and then `slot` is set to `addr`
    /// whatever the map said: the node that answered may not have heard of the change yet,
    /// and the redirect is the newer news.
    pub(crate) async fn moved(&self, slot: u16, addr: &str, shared: &mut Shared) {
        let _ = self.refresh(shared, true).await;
        self.pin(slot, addr);
    }

    /// Record that `slot` is served by `addr`, splitting the range that held it.
    fn pin(&self, slot: u16, addr: &str) {
        let mut slots = self.slots.write();
        let mut kept = Vec::with_capacity(slots.len() + 2);
        for (first, last, owner) in slots.drain(..) {
            if first <= slot && slot <= last {
                // Split the range around `slot`.
                if first < slot {
                    kept.push((first, slot - 1, owner.clone()));
                }
                if slot < last {
                    kept.push((slot + 1, last, owner));
                }
            } else {
                kept.push((first, last, owner));
            }
        }
        kept.push((slot, slot, addr.to_string()));
        kept.sort();
        *slots = kept;
    }

    /// Read `CLUSTER SLOTS` (from any node, through the cluster client). Unless `force`,
    /// skipped when the last read is less than [`REFRESH_EVERY`] old, so the waits that all
    /// find one node gone do not all ask at once.
    pub(crate) async fn refresh(&self, shared: &mut Shared, force: bool) -> RedisResult<()> {
        {
            let mut last = self.refreshed.lock();
            if !force && last.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        let reply = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Value>(shared)
            .await?;
        let mut slots = parse_slots(&reply).ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Parse, "unexpected CLUSTER SLOTS reply"))
        })?;
        slots.sort();
        *self.slots.write() = slots;
        Ok(())
    }

    /// Every master (`host:port`), reading the topology first if it is not known yet.
    pub(crate) async fn masters(&self, shared: &mut Shared) -> RedisResult<Vec<String>> {
        self.refresh(shared, false).await?;
        let mut masters: Vec<String> = self.slots.read().iter().map(|s| s.2.clone()).collect();
        masters.sort();
        masters.dedup();
        Ok(masters)
    }

    /// A client for the node at `addr`, with the seeds' credentials and TLS settings.
    pub(crate) fn client(&self, addr: &str) -> Result<Client> {
        if let Some(c) = self.clients.lock().get(addr) {
            return Ok(c.clone());
        }
        let url = self.url.node_url(addr);
        let shown = courier_core::redact_url(&url);
        let client = crate::open_client(&url, &shown, self.tls_root.clone())?;
        self.clients.lock().insert(addr.to_string(), client.clone());
        Ok(client)
    }
}

/// `CLUSTER SLOTS`: `[[first, last, [host, port, id, …], replica…], …]` → the masters'
/// ranges. `None` for a reply of another shape.
fn parse_slots(reply: &Value) -> Option<Vec<(u16, u16, String)>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let int = |v: &Value| match v {
            Value::Int(i) => u16::try_from(*i).ok(),
            _ => None,
        };
        let (first, last) = (int(fields.first()?)?, int(fields.get(1)?)?);
        let Value::Array(master) = fields.get(2)? else {
            return None;
        };
        let host = match master.first()? {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
            Value::SimpleString(s) => s.clone(),
            _ => return None,
        };
        let port = int(master.get(1)?)?;
        out.push((first, last, format!("{host}:{port}")));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_parse() {
        let u = parse_url(
            "redis+cluster://u:pw@a:7000,b,c:7002/?key_prefix=x",
            "shown",
        )
        .expect("valid")
        .expect("cluster");
        assert_eq!(
            u.nodes,
            [
                "redis://u:pw@a:7000?key_prefix=x",
                "redis://u:pw@b:6379?key_prefix=x",
                "redis://u:pw@c:7002?key_prefix=x"
            ]
        );
        assert_eq!(u.node_url("d:1"), "redis://u:pw@d:1?key_prefix=x");
        let tls = parse_url("rediss+cluster://h:1", "s")
            .expect("ok")
            .expect("c");
        assert_eq!(tls.nodes, ["rediss://h:1"]);
        assert_eq!(parse_url("redis://h:1", "s").expect("ok"), None);
        for bad in [
            "redis+cluster://a:1,,b:2",
            "redis+cluster://a:x",
            "redis+cluster://a:1/2",
            "redis+cluster://",
        ] {
            let e = parse_url(bad, "shown").expect_err(bad);
            assert_eq!(e.kind(), courier_core::ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn slots_follow_hash_tags() {
        // Values from the Redis Cluster specification's CRC16 and `CLUSTER KEYSLOT`.
        // CRC16/XMODEM of "123456789" is 0x31C3, below 16384.
        assert_eq!(slot(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn a_moved_slot_splits_its_range() {
        let url = parse_url("redis+cluster://a:1", "s")
            .expect("ok")
            .expect("c");
        let t = Topology::new(url, None);
        *t.slots.write() = vec![(0, 99, "a:1".into()), (100, 199, "b:2".into())];
        t.pin(50, "c:3");
        assert_eq!(t.cached_owner(49).as_deref(), Some("a:1"));
        assert_eq!(t.cached_owner(50).as_deref(), Some("c:3"));
        assert_eq!(t.cached_owner(51).as_deref(), Some("a:1"));
        assert_eq!(t.cached_owner(150).as_deref(), Some("b:2"));
        t.pin(0, "d:4");
        t.pin(199, "d:4");
        assert_eq!(t.cached_owner(0).as_deref(), Some("d:4"));
        assert_eq!(t.cached_owner(1).as_deref(), Some("a:1"));
        assert_eq!(t.cached_owner(199).as_deref(), Some("d:4"));
        assert_eq!(t.cached_owner(198).as_deref(), Some("b:2"));
        assert_eq!(t.cached_owner(200), None);
    }

    #[test]
    fn slot_replies_parse() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("127.0.0.1", 7001),
                node("127.0.0.1", 7004),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
            ]),
        ]);
        assert_eq!(
            parse_slots(&reply),
            Some(vec![
                (5461, 10922, "127.0.0.1:7001".to_string()),
                (0, 5460, "127.0.0.1:7000".to_string())
            ])
        );
        assert_eq!(parse_slots(&Value::Nil), None);
    }
}
