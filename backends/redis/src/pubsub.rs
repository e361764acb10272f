//! [`PubSub`] for [`RedisBackend`]: Redis `PUBLISH`, and one dedicated subscriber connection
//! per backend, owned by a background task.
//!
//! - Channels are prefixed (`<prefix>:ps:<channel>`): Redis pub/sub is not per database, so the
//!   prefix is what isolates applications.
//! - A literal channel is a `SUBSCRIBE`. A pattern becomes a `PSUBSCRIBE` with a coarser Redis
//!   glob (`*` and `>` both become `*`, which also matches across dots); every buffer then keeps
//!   only what its exact [`courier_core::Pattern`] matches (P4).
//! - Subscribe returns once Redis confirmed the subscription (P1). Subscribing, unsubscribing
//!   and delivering happen in one task, in order, so an unsubscribe can never overtake a later
//!   subscribe of the same channel.
//! - When the connection drops, the task reconnects with capped backoff and subscribes again to
//!   everything that still has a subscriber (P6). Messages published meanwhile are lost: pub/sub
//!   is at most once (P2). The loss is logged once (WARN) and the return once (INFO, with the
//!   outage's length), see [`Health`]; failed reconnect attempts in between only at debug.
//! - Messages land in core's bounded, drop-oldest [`SubscriptionBuffer`] (P7).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use courier_core::{
    Error, ErrorKind, Message, Pattern, PubSub, Result, SubscribeOptions, Subscription,
    SubscriptionBuffer, wire,
};
use futures::StreamExt;
use parking_lot::Mutex;
use redis::Client;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Health, KIT, map_err, timed_out};
use crate::{BACKEND_NAME, RedisBackend, keys};

/// What the subscriber connection is subscribed to (Redis-side names, prefixed).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Target {
    Channel(String),
    Pattern(String),
}

enum Command {
    Subscribe(Target, oneshot::Sender<Result<()>>),
    Unsubscribe(Target),
}

/// Where the subscriber connection goes.
pub(crate) enum Nodes {
    /// The one server.
    Server(Box<Client>),
    /// The master of the slot of the channels' hash tag (see [`keys::channels`]), where this
    /// backend's `PUBLISH`es go too (the cluster client routes them by the channel's tag).
    /// Redis Cluster's classic pub/sub reaches every node over the cluster bus, but a message
    /// crosses the bus after `PUBLISH` returned: a subscriber on another node that subscribed
    /// just after a publish could still get that message, against P2. One node for both sides
    /// keeps P2 and P3 as on one server; spreading would add no capacity, since the bus hands
    /// every message to every node anyway.
    Cluster {
        topology: Arc<crate::cluster::Topology>,
        shared: crate::cluster::Shared,
    },
}

/// The subscriptions of one backend and the task serving them.
pub(crate) struct Hub {
    nodes: Nodes,
    /// What every Redis channel name of this backend starts with (see [`keys::channels`]).
    channels: String,
    /// Bounds each connect of the subscriber connection (redis-rs sets none for it).
    connection_timeout: Duration,
    /// Whether the subscriber connection is up, for logging its outages once (pool `pubsub`).
    health: Health,
    registry: Mutex<HashMap<Target, Vec<Arc<SubscriptionBuffer>>>>,
    commands: Mutex<Option<mpsc::UnboundedSender<Command>>>,
}

impl Hub {
    pub(crate) fn new(
        nodes: Nodes,
        prefix: String,
        connection_timeout: Duration,
        health: Health,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            channels: keys::channels(&prefix, matches!(nodes, Nodes::Cluster { .. })),
            nodes,
            connection_timeout,
            health,
            registry: Mutex::new(HashMap::new()),
            commands: Mutex::new(None),
        })
    }

    /// The command channel of the task, starting the task on first use.
    fn sender(self: &Arc<Self>) -> mpsc::UnboundedSender<Command> {
        let mut slot = self.commands.lock();
        if let Some(tx) = slot.as_ref()
            && !tx.is_closed()
        {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(Arc::downgrade(self), rx));
        *slot = Some(tx.clone());
        tx
    }

    fn targets(&self) -> Vec<Target> {
        self.registry.lock().keys().cloned().collect()
    }

    /// The Redis channel of a pub/sub channel (or glob).
    pub(crate) fn channel(&self, channel: &str) -> String {
        format!("{}{channel}", self.channels)
    }

    /// Deliver one Redis message to the buffers registered under its channel or pattern.
    fn dispatch(&self, msg: &redis::Msg) {
        let full = msg.get_channel_name();
        let Some(channel) = full.strip_prefix(&self.channels) else {
            return;
        };
        let target = if msg.from_pattern() {
            match msg.get_pattern::<String>() {
                Ok(p) => Target::Pattern(p),
                Err(_) => return,
            }
        } else {
            Target::Channel(full.to_string())
        };
        let buffers = match self.registry.lock().get(&target) {
            Some(b) => b.clone(),
            None => return,
        };
        let message = match wire::decode(&Bytes::copy_from_slice(msg.get_payload_bytes())) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(channel, error = %format_args!("{e:#}"), "courier redis: dropping an undecodable pub/sub message");
                return;
            }
        };
        for b in &buffers {
            b.offer(channel, &message);
        }
    }
}

type Connection = (PubSubSink, PubSubStream);

async fn subscribe_on(sink: &mut PubSubSink, target: &Target) -> redis::RedisResult<()> {
    match target {
        Target::Channel(c) => sink.subscribe(c).await,
        Target::Pattern(p) => sink.psubscribe(p).await,
    }
}

async fn unsubscribe_on(sink: &mut PubSubSink, target: &Target) -> redis::RedisResult<()> {
    match target {
        Target::Channel(c) => sink.unsubscribe(c).await,
        Target::Pattern(p) => sink.punsubscribe(p).await,
    }
}

/// Connect and subscribe to every target that has a subscriber; the outcome is reported to the
/// hub's [`Health`].
async fn connect(hub: &Hub) -> Result<(Connection, HashSet<Target>)> {
    let start = hub.health.begin();
    let client = match &hub.nodes {
        Nodes::Server(client) => (**client).clone(),
        Nodes::Cluster { topology, shared } => {
            let owner = topology.owner(&hub.channels, &mut shared.clone()).await;
            hub.health.observe(start, "subscribe", &owner);
            let addr = owner.map_err(|e| map_err("subscribe", e))?;
            topology.client(&addr)?
        }
    };
    let connected = connect_to(&client, hub).await;
    if connected.is_err()
        && let Nodes::Cluster { topology, shared } = &hub.nodes
    {
        // The master may be gone: the next attempt asks who serves the slot now.
        let _ = topology.refresh(&mut shared.clone(), false).await;
    }
    hub.health.observe(start, "subscribe", &connected);
    connected.map_err(|e| map_err("subscribe", e))
}

async fn connect_to(
    client: &Client,
    hub: &Hub,
) -> redis::RedisResult<(Connection, HashSet<Target>)> {
    async {
        let pubsub = tokio::time::timeout(hub.connection_timeout, client.get_async_pubsub())
            .await
            .unwrap_or_else(|_| Err(timed_out()))?;
        let (mut sink, stream) = pubsub.split();
        let mut active = HashSet::new();
        for t in hub.targets() {
            subscribe_on(&mut sink, &t).await?;
            active.insert(t);
        }
        Ok(((sink, stream), active))
    }
    .await
}

/// The subscriber task: serves commands in order, delivers messages, and reconnects.
async fn run(hub: Weak<Hub>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut conn: Option<Connection> = None;
    let mut active: HashSet<Target> = HashSet::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        let wanted = hub.upgrade().is_some_and(|h| !h.registry.lock().is_empty());
        let reconnect = conn.is_none() && wanted;
        let next = {
            let stream = conn.as_mut().map(|c| &mut c.1);
            tokio::select! {
                cmd = commands.recv() => Some(Ok(cmd)),
                msg = async {
                    match stream {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => Some(Err(msg)),
                _ = tokio::time::sleep(backoff), if reconnect => None,
            }
        };
        match next {
            // Time to try reconnecting.
            None => {
                let Some(h) = hub.upgrade() else { return };
                match connect(&h).await {
                    Ok((c, a)) => {
                        tracing::debug!(
                            subscriptions = a.len(),
                            "courier redis: pub/sub connection is back; subscriptions restored"
                        );
                        conn = Some(c);
                        active = a;
                        backoff = Duration::from_millis(50);
                    }
                    Err(e) => {
                        tracing::debug!(error = %format_args!("{e:#}"), "courier redis: pub/sub reconnect failed");
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
            Some(Ok(None)) => return, // the backend is gone
            Some(Ok(Some(Command::Subscribe(target, reply)))) => {
                let Some(h) = hub.upgrade() else { return };
                if conn.is_none() {
                    match connect(&h).await {
                        Ok((c, a)) => {
                            conn = Some(c);
                            active = a;
                            backoff = Duration::from_millis(50);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            continue;
                        }
                    }
                }
                if active.contains(&target) {
                    let _ = reply.send(Ok(()));
                    continue;
                }
                let Some((sink, _)) = conn.as_mut() else {
                    continue;
                };
                let start = h.health.begin();
                let subscribed = subscribe_on(sink, &target).await;
                h.health.observe(start, "subscribe", &subscribed);
                match subscribed {
                    Ok(()) => {
                        active.insert(target);
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let e = map_err("subscribe", e);
                        if e.is_retryable() {
                            conn = None;
                            active.clear();
                        }
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Some(Ok(Some(Command::Unsubscribe(target)))) => {
                let Some(h) = hub.upgrade() else { return };
                let still_wanted = h.registry.lock().contains_key(&target);
                if !still_wanted
                    && active.remove(&target)
                    && let Some((sink, _)) = conn.as_mut()
                    && let Err(e) = unsubscribe_on(sink, &target).await
                {
                    tracing::debug!(error = %format_args!("{e:#}"), "courier redis: unsubscribe failed");
                }
            }
            Some(Err(Some(msg))) => {
                if let Some(h) = hub.upgrade() {
                    h.dispatch(&msg);
                }
            }
            Some(Err(None)) => {
                // The server closed the connection (or it broke): messages published until it
                // is back are not delivered.
                if let Some(h) = hub.upgrade() {
                    let e = Error::new(
                        ErrorKind::Unavailable,
                        "the pub/sub connection was closed; reconnecting (messages published \
                         meanwhile are not delivered)",
                    )
                    .with_backend(BACKEND_NAME)
                    .with_operation("subscribe");
                    h.health.down(h.health.begin(), &e);
                }
                conn = None;
                active.clear();
                backoff = Duration::from_millis(50);
            }
        }
    }
}

/// Dropped with a [`Subscription`]: stops delivery and, for the last subscriber of a channel or
/// pattern, unsubscribes on Redis.
struct Unsubscribe {
    hub: Weak<Hub>,
    target: Target,
    buffer: Arc<SubscriptionBuffer>,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.buffer.close();
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let now_empty = {
            let mut reg = hub.registry.lock();
            match reg.get_mut(&self.target) {
                Some(v) => {
                    v.retain(|b| !Arc::ptr_eq(b, &self.buffer));
                    if v.is_empty() {
                        reg.remove(&self.target);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if now_empty && let Some(tx) = hub.commands.lock().as_ref() {
            let _ = tx.send(Command::Unsubscribe(self.target.clone()));
        }
    }
}

impl RedisBackend {
    fn target_of(&self, pattern: &Pattern) -> Target {
        if pattern.is_literal() {
            Target::Channel(self.inner.hub.channel(pattern.as_str()))
        } else {
            let glob: Vec<&str> = pattern
                .as_str()
                .split('.')
                .map(|t| if t == ">" { "*" } else { t })
                .collect();
            Target::Pattern(self.inner.hub.channel(&glob.join(".")))
        }
    }
}

#[async_trait]
impl PubSub for RedisBackend {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    /// Publishes with `PUBLISH`. Returns how many subscriptions of *this* backend handle match
    /// the channel (other processes' subscribers are not counted).
    async fn publish(&self, channel: &str, mut message: Message) -> Result<usize> {
        KIT.check_publish(channel, &self.inner.configs.default_config(), &message)?;
        message.prepare_for_publish(self.inner.clock.now_ms());
        let bytes = wire::encode(&message).map_err(KIT.tag("publish"))?;
        let mut conn = self.conn("publish");
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.inner.hub.channel(channel)).arg(&bytes[..]);
        crate::scripts::retry_refused::<_, redis::Value>(&mut conn, &cmd)
            .await
            .map_err(|e| map_err("publish", e))?;
        let local = self
            .inner
            .hub
            .registry
            .lock()
            .values()
            .flatten()
            .filter(|b| !b.is_closed() && b.pattern().matches(channel))
            .count();
        Ok(local)
    }

    async fn subscribe(&self, pattern: &str, options: SubscribeOptions) -> Result<Subscription> {
        let pattern = Pattern::parse(pattern).map_err(KIT.tag("subscribe"))?;
        let target = self.target_of(&pattern);
        let buffer = SubscriptionBuffer::new(pattern, options.buffer);
        let hub = &self.inner.hub;
        hub.registry
            .lock()
            .entry(target.clone())
            .or_default()
            .push(buffer.clone());
        // From here on the guard undoes the registration on any exit.
        let guard = Unsubscribe {
            hub: Arc::downgrade(hub),
            target: target.clone(),
            buffer: buffer.clone(),
        };
        let (tx, rx) = oneshot::channel();
        hub.sender()
            .send(Command::Subscribe(target, tx))
            .map_err(|_| {
                Error::new(ErrorKind::Shutdown, "the pub/sub task has stopped")
                    .with_backend(BACKEND_NAME)
                    .with_operation("subscribe")
            })?;
        match rx.await {
            Ok(Ok(())) => Ok(Subscription::new(buffer, guard)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(
                Error::new(ErrorKind::Unavailable, "the pub/sub task stopped")
                    .with_backend(BACKEND_NAME)
                    .with_operation("subscribe"),
            ),
        }
    }
}
