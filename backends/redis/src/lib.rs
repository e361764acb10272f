//! # courier-redis
//!
//! Courier's Redis backend, the primary production transport. [`RedisBackend`] implements
//! [`Queue`], [`PubSub`] and [`EventBus`] over one Redis server (6.2 or later: `LPOP` with a count, `ZMSCORE`; 7 recommended).
//!
//! - **Queue**: every state change is one atomic Lua script (`src/scripts/*.lua`, run as a Redis
//!   Function where the server allows, else with `EVALSHA`; see [`RedisBackendBuilder::redis_functions`]) working on
//!   per-queue keys that share one hash tag (`{<prefix>:q:<queue>}`), so a queue lives in one
//!   Redis Cluster slot and all its keys are passed in `KEYS`. Scripts read the server's clock
//!   (`TIME`), never a client's. A message's stored entry is its wire bytes (the attempt count
//!   travels in the wire header). Four ready lists give strict priority; a sorted set holds
//!   delayed messages and retry backoffs; a hash holds the entries being handled under their
//!   lease tokens, with one deadline per claim batch (and one per extended lease) in another
//!   sorted set; tokens fence stale holders. Batches cost one script call and one variadic
//!   command per kind of change.
//! - **Waiting**: an idle `receive` blocks in Redis (`BLPOP` on the queue's wake-up list, or
//!   `XREAD BLOCK` for consumer groups) on a dedicated connection without a response timeout,
//!   until a publish wakes it or the next delayed message or lease deadline is due. It never
//!   spins. Due times are timed on the client and the wait ended with `CLIENT UNBLOCK`, because
//!   Redis ends blocked commands only at its `hz` resolution (up to 100 ms late).
//!   **Delay tick**: delayed messages and retries are delivered within about 10 ms of being
//!   due (measured; the conformance tolerance can be 25 ms).
//! - **Cancel safety**: the lease script runs on a task of its own; if a `receive` future is
//!   dropped meanwhile, what it leased is released at once (not counted as an attempt), so a
//!   stopping worker never leaves messages waiting for their leases to expire.
//! - **PubSub**: `SUBSCRIBE`/`PSUBSCRIBE` on one dedicated connection per backend; Courier's
//!   pattern grammar (`*` one token, `>` the rest) is subscribed as a coarser Redis glob and
//!   filtered exactly on the client. Subscriptions come back by themselves after a reconnect.
//! - **EventBus**: Redis Streams. Each topic is a stream (`XADD`, retention by exact `MAXLEN`
//!   or `MINID`); each consumer group is a Redis consumer group (`XREADGROUP`, created on first
//!   use at the start of the retained log), with the queue's lease, retry and dead-letter
//!   machinery beside it for the group.
//! - **Connection loss**: calls fail with [`ErrorKind::Unavailable`] (retryable) while Redis is
//!   away and work again as soon as it is back (a call whose connection was refused, so never
//!   sent, is tried once more). With `appendonly yes` and `appendfsync always`, a publish that
//!   returned `Ok` survives a crash of Redis (`tests/broker_restart.rs`). Each outage is logged
//!   once per pool of connections (`commands`, `waits`, `pubsub`): a WARN when a call finds
//!   the connection gone, an INFO with `outage_ms` when one gets an answer again.
//! - **Connect timeout**: [`RedisBackendBuilder::connection_timeout`] bounds all of `build`,
//!   even against a server that accepts connections and never answers.
//!
//! ```no_run
//! use std::time::Duration;
//! use courier_core::{Message, QueueExt};
//! use courier_redis::RedisBackend;
//!
//! # async fn run() -> courier_core::Result<()> {
//! let redis = RedisBackend::builder()
//!     .url("redis://127.0.0.1:6379")
//!     .key_prefix("myapp")
//!     .build()
//!     .await?;
//! redis.publish("tasks", Message::new("hello", "world")).await?;
//! if let Some(d) = redis.receive_one("tasks", Duration::from_secs(1)).await? {
//!     redis.ack("tasks", &d.lease).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! - **Deduplication keys** (Q11, [`courier_core::Message::with_dedup_key`]): a keyed publish
//!   checks and takes its key in the same script as the store (`publish_keyed.lua`; batches
//!   without keys keep the plain publish script). A queue keeps each key's holder in a hash and
//!   the keys' windows in a sorted set under its hash tag; ack, bury and an expired last lease
//!   free the key in the script that ends the holder's life.
//! - **Message expiry** (Q12, [`courier_core::Message::with_ttl`]): the claim script reads each
//!   popped entry's `expires_at` from its wire extension and, at or past it on the server's
//!   clock, dead-letters it as `"expired"` (or drops it: `drop_expired`) instead of leasing it,
//!   popping another in its place; a consumer group does the same for itself. Nothing sweeps
//!   expired messages before a claim reaches them.
//!
//! - **Flow control** (issue 18: Q14-Q16, E8): pause and rate limits are a control hash under
//!   the queue's (or group's) hash tag, so every handle and process sees them at its next
//!   claim. The claim script reads it with one `HMGET` (of a missing key, for an unpaused and
//!   unlimited queue: the only cost on the hot path) and counts the deliveries it leases in an
//!   epoch-aligned window key in the same atomic run, so processes share one budget exactly;
//!   one claim takes at most a quarter of a window. A spent window reports its end as the next
//!   due instant (receivers wake then), and `resume` / `set_rate_limit` push the wake-up a
//!   publish does. A paused group reads nothing from its log (its lag keeps counting) and
//!   waits on its wake stream only. `reprioritise` is one script that rewrites the stored
//!   priority byte of every ready, delayed and leased copy (linear in the queue's size: no id
//!   index is kept, so the hot paths pay for none).
//!
//! - **Redis Cluster** (`redis+cluster://host1:port,host2:port,…`, or `rediss+cluster://`):
//!   commands and scripts go through redis-rs' async cluster client, to the master of the
//!   queue's (or topic's) slot, following `MOVED` / `ASK` and failovers by themselves; every
//!   script touches the keys of one hash tag only. Blocking waits run on connections of their
//!   own to the slot's master and follow a failover (see `wait.rs` and `cluster.rs`); listings
//!   scan every master. Pub/sub of one key prefix uses one master (see `pubsub::Nodes`). The
//!   whole conformance suite runs on a 3-master cluster (`tests/conformance_cluster.rs`); what
//!   a failover costs is measured in `tests/cluster_failover.rs` and stated in the README
//!   ("Scaling out").
//!
//! Limits: ids are not deduplicated (publishing an id twice stores and delivers both messages;
//! deduplication is by key).
//!
//! Run Redis with `maxmemory-policy noeviction` (evicted keys are lost messages; the backend
//! warns at start-up otherwise) and with persistence (`appendonly yes`) for durability.
#![forbid(unsafe_code)]

mod cluster;
mod error;
mod event_bus;
mod keys;
mod pubsub;
mod queue;
mod reply;
mod scripts;
mod wait;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use courier_core::backend::ConfigStore;
use courier_core::{
    Error, ErrorKind, EventBus, PubSub, Queue, QueueConfig, Result, Retention, SharedClock,
    SystemClock, redact_url,
};
use parking_lot::RwLock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::cluster::Shared;

use crate::error::{Health, KIT, map_err};

/// The backend's short name, used in errors.
pub const BACKEND_NAME: &str = "redis";

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "courier";

/// How often the cluster client tries a call again after a redirect or a lost node, 50 ms to
/// 1 s apart: enough to outlast a failover with a short `cluster-node-timeout`.
const CLUSTER_RETRIES: u32 = 6;

/// Courier over Redis: a [`Queue`], [`PubSub`] and [`EventBus`]. Cheap to clone; clones share
/// connections.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The URL with its password replaced (for Debug and logs).
    url: String,
    prefix: String,
    conn: Shared,
    /// On a cluster: which master serves which slot (for waits and listings).
    topology: Option<Arc<cluster::Topology>>,
    /// Whether `conn` is up, for logging its outages once (pool `commands`).
    health: Arc<Health>,
    waiters: wait::Waiters,
    scripts: scripts::Scripts,
    clock: SharedClock,
    configs: ConfigStore,
    retention: RwLock<HashMap<String, Retention>>,
    hub: Arc<pubsub::Hub>,
    /// Test support (see [`RedisBackend::fail_next_batch_after`]): 0, or 1 + the number of
    /// script calls the next `publish_batch` makes before it fails.
    batch_fault: Arc<std::sync::atomic::AtomicUsize>,
}

impl RedisBackend {
    /// Connect with a `redis://` or `rediss://` URL and default settings.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a malformed URL, [`ErrorKind::Unsupported`] for
    /// `rediss://` without the `tls` feature, [`ErrorKind::Unavailable`] when Redis cannot be
    /// reached.
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::builder().url(url).build().await
    }

    /// A builder with typed settings.
    pub fn builder() -> RedisBackendBuilder {
        RedisBackendBuilder::default()
    }

    /// `"redis"`.
    pub fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    /// The clock used for `created_at` and relative delays (wall time; leases and due times
    /// are decided on the Redis server's clock).
    pub fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    /// The key prefix this backend works under.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The configuration used for queues and groups that were not configured.
    pub fn default_config(&self) -> QueueConfig {
        self.inner.configs.default_config()
    }

    /// The connection URL with its password redacted.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Check that Redis answers (`PING`).
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] when it does not.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn("ping");
        scripts::retry_refused::<_, redis::Value>(&mut conn, &redis::cmd("PING"))
            .await
            .map(|_| ())
            .map_err(|e| map_err("ping", e))
    }

    /// Test support for the conformance case of Q7's partial store (`Error::stored`), not for
    /// applications: storing `1 + calls` in the returned switch makes the next
    /// `publish_batch` of this handle fail after `calls` of its script calls (up to 1,000
    /// messages each) succeeded, as a connection lost between two calls would. The switch
    /// is shared, so a test can keep it without keeping the handle's connections.
    #[doc(hidden)]
    pub fn batch_fault_switch(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.inner.batch_fault.clone()
    }

    /// Store `bytes` as a new ready entry (Normal priority) that does not decode, as a corrupt
    /// or foreign writer would leave it, wrapped with a fresh id so its dead letter can be found
    /// (see `scripts/lib.lua`). For tests of Q10 (an undecodable entry goes to dead letters and
    /// the consumer keeps running); not for applications.
    ///
    /// # Errors
    /// As any call: invalid name, Redis unavailable.
    #[doc(hidden)]
    pub async fn inject_raw(&self, queue: &str, bytes: &[u8]) -> Result<courier_core::MessageId> {
        KIT.check_name("queue", queue, "inject_raw")?;
        let id = courier_core::MessageId::new();
        let k = keys::queue(&self.inner.prefix, queue);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .rpush(
                &k[keys::QUEUE_READY_NORMAL],
                queue::wrap_undecodable(id, bytes),
            )
            .hincr(&k[keys::QUEUE_COUNTERS], "published", 1)
            .lpush(&k[keys::QUEUE_WAKE], "1");
        let mut conn = self.conn("inject_raw");
        pipe.query_async::<redis::Value>(&mut conn)
            .await
            .map_err(|e| map_err("inject_raw", e))?;
        Ok(id)
    }

    /// Append `bytes` to a topic's log as an event body without encoding them (tests of Q10 on
    /// consumer groups); not for applications.
    ///
    /// # Errors
    /// As any call: invalid name, Redis unavailable.
    #[doc(hidden)]
    pub async fn inject_raw_event(
        &self,
        topic: &str,
        bytes: &[u8],
    ) -> Result<courier_core::MessageId> {
        KIT.check_name("topic", topic, "inject_raw")?;
        let id = courier_core::MessageId::new();
        let mut conn = self.conn("inject_raw");
        redis::cmd("XADD")
            .arg(keys::log(&self.inner.prefix, topic))
            .arg("*")
            .arg("i")
            .arg(id.to_string())
            .arg("m")
            .arg(bytes)
            .query_async::<redis::Value>(&mut conn)
            .await
            .map_err(|e| map_err("inject_raw", e))?;
        Ok(id)
    }

    /// Every key matching `pattern`, each once, by `SCAN` (never `KEYS`: a large database
    /// keeps serving while the listing pages through it, 1,000 keys a call). On a cluster,
    /// every master is scanned (`SCAN` sees one node's keys).
    pub(crate) async fn scan(&self, pattern: &str, operation: &'static str) -> Result<Vec<String>> {
        let mut conn = self.conn(operation);
        let nodes = match &self.inner.topology {
            None => vec![None],
            Some(t) => t
                .masters(&mut conn.conn)
                .await
                .map_err(|e| map_err(operation, e))?
                .into_iter()
                .map(Some)
                .collect(),
        };
        let mut found = Vec::new();
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000);
                let reply = match &node {
                    None => cmd.query_async::<redis::Value>(&mut conn).await,
                    Some(addr) => conn.on_node(addr, cmd).await,
                };
                let (next, keys): (u64, Vec<String>) = reply
                    .and_then(|v| redis::from_redis_value(v).map_err(Into::into))
                    .map_err(|e| crate::error::map_err(operation, e))?;
                found.extend(keys);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        // SCAN may return a key twice (when the table is resized during the iteration).
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// The shared connection, for a call of `operation`; its outcomes keep the `commands`
    /// pool's [`Health`].
    fn conn(&self, operation: &'static str) -> Conn {
        Conn {
            conn: self.inner.conn.clone(),
            health: self.inner.health.clone(),
            operation,
        }
    }
}

/// The shared, multiplexed connection (a [`ConnectionManager`], which reconnects by itself)
/// with every request's outcome reported to the pool's [`Health`], so an outage is logged once
/// when a request finds the connection gone and once when a request gets an answer again.
#[derive(Clone)]
pub(crate) struct Conn {
    conn: Shared,
    health: Arc<Health>,
    operation: &'static str,
}

impl Conn {
    /// Send `cmd` to the node at `addr` (cluster) or to the one server; reported to the
    /// pool's [`Health`] like every other request.
    pub(crate) async fn on_node(
        &mut self,
        addr: &str,
        cmd: redis::Cmd,
    ) -> redis::RedisResult<redis::Value> {
        let start = self.health.begin();
        let outcome = self.conn.on_node(addr, cmd).await;
        self.health.observe(start, self.operation, &outcome);
        outcome
    }

    /// The connection without health reporting (topology reads).
    pub(crate) fn shared(&mut self) -> &mut Shared {
        &mut self.conn
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let start = self.health.begin();
            let outcome = self.conn.req_packed_command(cmd).await;
            self.health.observe(start, self.operation, &outcome);
            outcome
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let start = self.health.begin();
            let outcome = self.conn.req_packed_commands(pipeline, offset, count).await;
            self.health.observe(start, self.operation, &outcome);
            outcome
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.inner.url)
            .field("key_prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisBackend`]: `RedisBackend::builder().url(..).key_prefix(..).build().await`.
#[derive(Clone)]
pub struct RedisBackendBuilder {
    url: String,
    prefix: Option<String>,
    default_config: QueueConfig,
    response_timeout: Duration,
    connection_timeout: Duration,
    tls_root: Option<Vec<u8>>,
    functions: bool,
}

impl Default for RedisBackendBuilder {
    fn default() -> Self {
        RedisBackendBuilder {
            url: "redis://127.0.0.1:6379".to_string(),
            prefix: None,
            default_config: QueueConfig::default(),
            response_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(2),
            tls_root: None,
            functions: true,
        }
    }
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackendBuilder")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.prefix)
            .field("default_config", &self.default_config)
            .field("response_timeout", &self.response_timeout)
            .field("connection_timeout", &self.connection_timeout)
            .field("tls_root_certificate", &self.tls_root.is_some())
            .field("redis_functions", &self.functions)
            .finish()
    }
}

impl RedisBackendBuilder {
    /// The server: `redis://[user:password@]host[:port][/db][?key_prefix=name]` or
    /// `rediss://…` (TLS, with the `tls` feature, on by default); or a Redis Cluster:
    /// `redis+cluster://[user:password@]host1[:port],host2[:port],…[?key_prefix=name]` (or
    /// `rediss+cluster://`), any of its nodes as seeds (several, so a start-up with one node
    /// down still connects). Default `redis://127.0.0.1:6379`. A `key_prefix` query parameter sets the key prefix (unless
    /// [`RedisBackendBuilder::key_prefix`] is called); other parameters go to redis-rs.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Prefix of every key and channel (default `courier`): 1–100 bytes of
    /// `A–Z a–z 0–9 _ - . :`. Applications sharing one Redis isolate themselves with it.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The configuration of queues and groups that are not configured explicitly.
    pub fn default_config(mut self, config: QueueConfig) -> Self {
        self.default_config = config;
        self
    }

    /// How long a normal (non-blocking) command may take before it fails as
    /// [`ErrorKind::Unavailable`] (default 5 s). Blocking waits use their own connections
    /// and are not limited by this.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long connecting may take (default 2 s). It bounds the whole of
    /// [`RedisBackendBuilder::build`] (connect attempts, the retry of a refused connection,
    /// the start-up checks): against a server that accepts connections and never answers,
    /// `build` fails with [`ErrorKind::Unavailable`] once it has passed. Later connects (a
    /// reconnect, a new waiting or pub/sub connection) are each bounded by it as well.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// For `rediss://`: trust this root certificate (PEM) instead of the system's trust store
    /// (a private CA). Needs the `tls` feature; ignored for `redis://`.
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root = Some(pem.into());
        self
    }

    /// Whether scripts run as Redis Functions (`FUNCTION LOAD` once, then `FCALL`; the
    /// default) or as `EVALSHA` bodies. Functions need Redis 7 and cost the server much less
    /// per call; on a server without them (or where the user may not run `FUNCTION`) the
    /// backend switches to `EVALSHA` by itself. Set `false` to never try them.
    pub fn redis_functions(mut self, yes: bool) -> Self {
        self.functions = yes;
        self
    }

    /// The cluster client for a `redis+cluster://` URL: the builder's timeouts, and a few
    /// quick retries so a call that meets a failover waits for the new master (about 1-3 s
    /// with a short `cluster-node-timeout`) instead of failing at once.
    fn cluster_client(
        &self,
        url: &cluster::ClusterUrl,
        shown: &str,
    ) -> Result<redis::cluster::ClusterClient> {
        let builder = redis::cluster::ClusterClientBuilder::new(url.nodes.clone())
            .connection_timeout(self.connection_timeout)
            .response_timeout(self.response_timeout)
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(50)
            .max_retry_wait(1_000);
        let builder = if url.scheme == "rediss" {
            if !cfg!(feature = "tls") {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{shown}: rediss+cluster:// (TLS) needs courier-redis built with the \
                         `tls` feature"
                    ),
                )
                .with_backend(BACKEND_NAME)
                .with_operation("connect"));
            }
            #[cfg(feature = "tls")]
            tls::install_crypto_provider();
            match &self.tls_root {
                #[cfg(feature = "tls")]
                Some(root) => builder.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root.clone()),
                }),
                _ => builder,
            }
        } else {
            builder
        };
        builder.build().map_err(|e| {
            Error::invalid(format!(
                "invalid Redis Cluster URL {shown}: {}",
                e.category()
            ))
            .with_backend(BACKEND_NAME)
            .with_operation("connect")
        })
    }

    /// Connect.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a bad URL, prefix or configuration,
    /// [`ErrorKind::Unsupported`] for `rediss://` without the `tls` feature,
    /// [`ErrorKind::Unavailable`] when Redis cannot be reached.
    pub async fn build(self) -> Result<RedisBackend> {
        let (url, url_prefix) = split_prefix(&self.url);
        let prefix = self
            .prefix
            .clone()
            .or(url_prefix)
            .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        let shown = redact_url(&url);
        keys::validate_prefix(&prefix).map_err(KIT.tag("connect"))?;
        self.default_config.validate().map_err(KIT.tag("connect"))?;
        // One deadline for everything `build` waits on. redis-rs applies the connection
        // timeout to each attempt, and the retry (there for a server that is restarting and
        // refuses for a moment) would otherwise double it against a server that accepts but
        // never answers.
        let deadline = tokio::time::Instant::now() + self.connection_timeout;
        let connect_failed = |e: redis::RedisError| {
            let kind = map_err("connect", e.clone()).kind();
            Error::new(kind, format!("cannot connect to {shown}"))
                .with_backend(BACKEND_NAME)
                .with_operation("connect")
                .with_source(e)
        };
        let no_answer = || {
            Error::new(
                ErrorKind::Unavailable,
                format!(
                    "cannot connect to {shown}: no answer within the connection timeout ({:?})",
                    self.connection_timeout
                ),
            )
            .with_backend(BACKEND_NAME)
            .with_operation("connect")
        };
        let (conn, waits, subscribers, topology) = match cluster::parse_url(&url, &shown)? {
            Some(cluster_url) => {
                let client = self.cluster_client(&cluster_url, &shown)?;
                let conn =
                    match tokio::time::timeout_at(deadline, client.get_async_connection()).await {
                        Ok(Ok(conn)) => Shared::Cluster(conn),
                        Ok(Err(e)) => return Err(connect_failed(e)),
                        Err(_) => return Err(no_answer()),
                    };
                let topology = Arc::new(cluster::Topology::new(cluster_url, self.tls_root.clone()));
                let mut shared = conn.clone();
                match tokio::time::timeout_at(deadline, topology.refresh(&mut shared, true)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(connect_failed(e)),
                    Err(_) => return Err(no_answer()),
                }
                (
                    conn.clone(),
                    wait::Route::Cluster(topology.clone()),
                    pubsub::Nodes::Cluster {
                        topology: topology.clone(),
                        shared: conn,
                    },
                    Some(topology),
                )
            }
            None => {
                let client = open_client(&url, &shown, self.tls_root.clone())?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(self.response_timeout))
                    .set_connection_timeout(Some(self.connection_timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1));
                let connecting = ConnectionManager::new_with_config(client.clone(), config);
                let conn = match tokio::time::timeout_at(deadline, connecting).await {
                    Ok(Ok(conn)) => Shared::Node(conn),
                    Ok(Err(e)) => return Err(connect_failed(e)),
                    Err(_) => return Err(no_answer()),
                };
                (
                    conn,
                    wait::Route::Node(Box::new(client.clone())),
                    pubsub::Nodes::Server(Box::new(client)),
                    None,
                )
            }
        };
        check_eviction_policy(&conn, &shown, deadline).await;
        let hub = pubsub::Hub::new(
            subscribers,
            prefix.clone(),
            self.connection_timeout,
            Health::new("pubsub", &shown),
        );
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                health: Arc::new(Health::new("commands", &shown)),
                waiters: wait::Waiters::new(
                    waits,
                    self.connection_timeout,
                    Health::new("waits", &shown),
                ),
                url: shown,
                prefix,
                conn,
                topology,
                scripts: scripts::Scripts::new(self.functions),
                clock: Arc::new(SystemClock),
                configs: ConfigStore::new(self.default_config),
                retention: RwLock::new(HashMap::new()),
                hub,
                batch_fault: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            }),
        })
    }
}

/// Take the `key_prefix` (or `prefix`) query parameter out of a URL.
fn split_prefix(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let mut prefix = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("key_prefix" | "prefix", v)) => prefix = Some(v.to_string()),
            _ => kept.push(pair),
        }
    }
    let mut out = base.to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    (out, prefix)
}

pub(crate) fn open_client(
    url: &str,
    shown: &str,
    tls_root: Option<Vec<u8>>,
) -> Result<redis::Client> {
    let invalid = |e: redis::RedisError| {
        // The redis-rs error may quote the URL: it is not kept as the source.
        Error::invalid(format!("invalid Redis URL {shown}: {}", e.category()))
            .with_backend(BACKEND_NAME)
            .with_operation("connect")
    };
    let scheme = url.split("://").next().unwrap_or("");
    match scheme {
        "redis" | "redis+unix" | "unix" => {}
        "rediss" => {
            if !cfg!(feature = "tls") {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{shown}: rediss:// (TLS) needs courier-redis built with the `tls` feature"
                    ),
                )
                .with_backend(BACKEND_NAME)
                .with_operation("connect"));
            }
            #[cfg(feature = "tls")]
            {
                tls::install_crypto_provider();
                if let Some(root) = tls_root {
                    let certs = redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    };
                    return redis::Client::build_with_tls(url, certs).map_err(invalid);
                }
            }
        }
        _ => {
            return Err(Error::invalid(format!(
                "{shown} is not a Redis URL (expected redis:// or rediss://)"
            ))
            .with_backend(BACKEND_NAME)
            .with_operation("connect"));
        }
    }
    let _ = &tls_root;
    redis::Client::open(url).map_err(invalid)
}

#[cfg(feature = "tls")]
mod tls {
    /// rustls needs a process-wide crypto provider; install ring's unless the application
    /// installed one.
    pub(crate) fn install_crypto_provider() {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    }
}

/// Warn once per process when Redis may evict keys: an evicted key is a lost message. The check
/// is advisory: when the server has not answered by `deadline` (the end of the connection
/// timeout), it is skipped rather than holding up `build`.
async fn check_eviction_policy(conn: &Shared, shown: &str, deadline: tokio::time::Instant) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let mut conn = conn.clone();
    let mut cmd = redis::cmd("CONFIG");
    cmd.arg("GET").arg("maxmemory-policy");
    let query = cmd.query_async::<Vec<String>>(&mut conn);
    let Ok(reply) = tokio::time::timeout_at(deadline, query).await else {
        tracing::debug!(url = %shown, "courier redis: no answer to CONFIG GET maxmemory-policy within the connection timeout; not checked");
        return;
    };
    match reply {
        Ok(v) => {
            if let Some(policy) = v.get(1)
                && policy != "noeviction"
                && !WARNED.swap(true, Ordering::Relaxed)
            {
                tracing::warn!(
                    url = %shown,
                    maxmemory_policy = %policy,
                    "courier redis: maxmemory-policy is not noeviction; Redis may evict queued \
                     messages under memory pressure (set `maxmemory-policy noeviction`)"
                );
            }
        }
        Err(e) => {
            tracing::debug!(url = %shown, error = %format_args!("{e:#}"), "courier redis: cannot read maxmemory-policy (CONFIG disabled?)");
        }
    }
}

// Compile-time proof that the backend serves every trait behind `Arc<dyn …>`.
const _: fn(RedisBackend) -> Arc<dyn Queue> = |b| Arc::new(b);
const _: fn(RedisBackend) -> Arc<dyn PubSub> = |b| Arc::new(b);
const _: fn(RedisBackend) -> Arc<dyn EventBus> = |b| Arc::new(b);

#[cfg(test)]
mod tests {
    use super::split_prefix;

    #[test]
    fn key_prefix_comes_from_the_url() {
        assert_eq!(
            split_prefix("redis://h:6379/2?key_prefix=app&protocol=resp3"),
            (
                "redis://h:6379/2?protocol=resp3".to_string(),
                Some("app".to_string())
            )
        );
        assert_eq!(
            split_prefix("redis://:pw@h/0?prefix=x"),
            ("redis://:pw@h/0".to_string(), Some("x".to_string()))
        );
        assert_eq!(split_prefix("redis://h"), ("redis://h".to_string(), None));
    }
}
