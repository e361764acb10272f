//! [`PubSub`] for [`AmqpBackend`]: one topic exchange, one exclusive queue per subscription,
//! over one dedicated connection owned by a background task.
//!
//! - Every message goes to the durable topic exchange `<prefix>.pubsub` (declared on every
//!   connect) with the channel as its routing key; the prefix is what isolates applications
//!   sharing a vhost.
//! - Each subscription gets its own exclusive, auto-delete, server-named queue, bound with its
//!   pattern translated to AMQP (`*` stays `*`, a trailing `>` becomes `*.#`, a literal
//!   channel binds as itself), and consumed with `no_ack` (at most once). Every delivery is
//!   matched again against the subscription's own [`Pattern`], so the grammar is exactly the
//!   contract's (P4).
//! - Publishing waits for the broker's publisher confirm: once `publish` returns, the message
//!   has been routed, so a subscription made afterwards (by this or another handle) never
//!   receives it (P2), and one made before does (P1). `subscribe` returns once the queue is
//!   bound and its consumer started (P1).
//! - Subscribing, unsubscribing and (re)connecting happen in one task, in order. When the
//!   connection is lost (a consumer ends while its subscription lives, or a publish finds the
//!   connection closed), the task reconnects with capped exponential backoff (50 ms up to 5 s)
//!   and re-creates the exchange and every live subscription's queue, binding and consumer
//!   (P6). Messages published meanwhile are lost (P2); calls in between fail with a retryable
//!   [`ErrorKind::Unavailable`]. The outage is logged once (WARN) and its end once (INFO, with
//!   `outage_ms`), see [`Health`]; failed attempts in between only at debug.
//! - Dropping or unsubscribing a [`Subscription`] cancels its consumer, and the broker then
//!   deletes the auto-delete queue (P5).
//! - Messages land in core's bounded, drop-oldest [`SubscriptionBuffer`] (P7).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use courier_core::{
    Error, ErrorKind, Message, Pattern, PubSub, QueueConfig, Result, SubscribeOptions,
    Subscription, SubscriptionBuffer, wire,
};
use futures::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use courier_core::backend::OutageLog;

use crate::conn::{map_err, parse_uri};
use crate::{AmqpBackend, BACKEND_NAME, KIT};

/// The first reconnect delay after a loss or a failed attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest delay between two reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long one connect (TCP, AMQP handshake, channels, exchange) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The AMQP reply code `disrupt_pubsub` closes the connection with (CONNECTION_FORCED).
const CONNECTION_FORCED: u16 = 320;

/// Pub/sub over one dedicated connection of the backend.
pub(crate) struct PubSubHub {
    shared: Arc<Shared>,
}

/// What the hub, its task, its readers and its subscriptions' guards share.
struct Shared {
    /// The URL as given (it may hold a password: never print it).
    uri: String,
    /// The URL with its password redacted, for errors and logs.
    url: String,
    /// `<prefix>.pubsub`.
    exchange: String,
    /// Its `max_payload` bounds every publish.
    default_config: QueueConfig,
    /// Whether the connection is up, for logging its outages once.
    health: OutageLog,
    /// Every live subscription of this hub, by id (also those whose `subscribe` has not
    /// returned yet).
    registry: Mutex<HashMap<u64, Arc<Entry>>>,
    /// The id of the next subscription.
    next_id: AtomicU64,
    /// The generation of the last connection attempt (shared, so that a task restarted on
    /// another runtime never reuses one).
    generation: AtomicU64,
    /// The current connection, set and cleared only by the task (publishers read it).
    live: Mutex<Option<Arc<Live>>>,
    /// The task's command channel; the task starts on first use.
    commands: Mutex<Option<mpsc::UnboundedSender<Command>>>,
}

/// One subscription as the task sees it.
struct Entry {
    /// Its key in the registry.
    id: u64,
    /// The AMQP binding key translated from the pattern.
    binding_key: String,
    /// Where its messages go (closed when the subscription is dropped).
    buffer: Arc<SubscriptionBuffer>,
}

/// One open connection with its two channels.
struct Live {
    /// Counts connections, so that news about an old one is ignored.
    generation: u64,
    /// The connection itself.
    connection: Connection,
    /// Publishes, in confirm mode.
    publisher: Channel,
    /// Declares, binds and consumes the subscriptions' queues.
    subscriber: Channel,
}

/// A subscription's consumer on the current connection.
struct Attached {
    /// The consumer tag, for `basic.cancel`.
    tag: ShortString,
    /// Moves the consumer's deliveries into the subscription's buffer.
    reader: JoinHandle<()>,
}

/// What the task is asked to do.
enum Command {
    /// Hand out the current connection, connecting if there is none.
    Connect(&'static str, oneshot::Sender<Result<Arc<Live>>>),
    /// Create the queue, binding and consumer of a registered subscription.
    Subscribe(Arc<Entry>, oneshot::Sender<Result<()>>),
    /// Cancel the consumer of a subscription that was dropped.
    Unsubscribe(u64),
    /// Connection `generation` was found broken.
    Lost(u64, Error),
}

impl PubSubHub {
    /// A hub that connects on first use. `uri` may hold a password; `url` is redacted.
    pub(crate) fn new(
        uri: String,
        url: String,
        prefix: String,
        default_config: QueueConfig,
    ) -> Self {
        PubSubHub {
            shared: Arc::new(Shared {
                uri,
                health: OutageLog::new(BACKEND_NAME, "pubsub", &url),
                url,
                exchange: format!("{prefix}.pubsub"),
                default_config,
                registry: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                generation: AtomicU64::new(0),
                live: Mutex::new(None),
                commands: Mutex::new(None),
            }),
        }
    }

    /// Publish encoded bytes to `channel` and wait for the broker's confirm.
    async fn publish(&self, channel: &str, bytes: &[u8]) -> Result<()> {
        let shared = &self.shared;
        let exchange = short(&shared.exchange, "publish")?;
        let routing_key = short(channel, "publish")?;
        let current = shared.live.lock().clone();
        let live = match current {
            Some(live) => live,
            None => shared.connect("publish").await?,
        };
        let outcome = async {
            live.publisher
                .basic_publish(
                    exchange,
                    routing_key,
                    BasicPublishOptions::default(),
                    bytes,
                    BasicProperties::default(),
                )
                .await?
                .await
        }
        .await;
        match outcome {
            Ok(Confirmation::Nack(_)) => Err(Error::new(
                ErrorKind::Unavailable,
                "RabbitMQ did not accept the message (negative publisher confirm)",
            )
            .with_backend(BACKEND_NAME)
            .with_operation("publish")),
            Ok(_) => Ok(()),
            Err(e) => {
                let error = map_err("publish", e.clone());
                if error.kind() == ErrorKind::Unavailable {
                    shared.send(Command::Lost(live.generation, map_err("publish", e)));
                }
                Err(error)
            }
        }
    }

    /// How many open subscriptions of this hub match `channel` (P1's count).
    fn local_receivers(&self, channel: &str) -> usize {
        self.shared
            .registry
            .lock()
            .values()
            .filter(|e| !e.buffer.is_closed() && e.buffer.pattern().matches(channel))
            .count()
    }

    /// Register a subscription and wait until its consumer is active.
    async fn subscribe(&self, pattern: Pattern, options: SubscribeOptions) -> Result<Subscription> {
        let shared = &self.shared;
        let binding_key = binding_key(&pattern);
        let buffer = SubscriptionBuffer::new(pattern, options.buffer);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            id,
            binding_key,
            buffer: buffer.clone(),
        });
        shared.registry.lock().insert(id, entry.clone());
        // From here on the guard undoes the registration on any exit.
        let guard = Unsubscribe {
            hub: Arc::downgrade(shared),
            id,
            buffer: buffer.clone(),
        };
        let (tx, rx) = oneshot::channel();
        shared.send(Command::Subscribe(entry, tx));
        match rx.await {
            Ok(Ok(())) => Ok(Subscription::new(buffer, guard)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(task_stopped("subscribe")),
        }
    }
}

impl Shared {
    /// Send a command to the task, starting the task if it is not running.
    fn send(self: &Arc<Self>, command: Command) {
        let mut slot = self.commands.lock();
        if let Some(tx) = slot.as_ref()
            && !tx.is_closed()
        {
            // A send fails only once the task stopped; the command's reply then reports it.
            let _ = tx.send(command);
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(command);
        tokio::spawn(Task::new(Arc::downgrade(self)).run(rx));
        *slot = Some(tx);
    }

    /// The current connection, asking the task to connect when there is none.
    async fn connect(self: &Arc<Self>, operation: &'static str) -> Result<Arc<Live>> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Connect(operation, tx));
        rx.await.unwrap_or_else(|_| Err(task_stopped(operation)))
    }
}

/// The task that owns the connection: serves commands in order and reconnects.
struct Task {
    /// The hub it serves (the task ends when the hub is gone).
    hub: Weak<Shared>,
    /// The current connection, if any.
    live: Option<Arc<Live>>,
    /// The consumers on `live`, by subscription id.
    attached: HashMap<u64, Attached>,
    /// The delay before the next attempt after a failed one.
    backoff: Duration,
    /// When to try reconnecting (while subscriptions wait for a connection).
    next_attempt: Option<Instant>,
    /// Why the last attempt failed, while no attempt has succeeded since.
    last_failure: Option<String>,
}

impl Task {
    /// A task for `hub`, not connected yet.
    fn new(hub: Weak<Shared>) -> Self {
        Task {
            hub,
            live: None,
            attached: HashMap::new(),
            backoff: FIRST_BACKOFF,
            next_attempt: None,
            last_failure: None,
        }
    }

    /// Serve commands until the hub is gone, reconnecting while subscriptions wait.
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let wanted = self
                .hub
                .upgrade()
                .is_some_and(|h| !h.registry.lock().is_empty());
            let retry_at = (self.live.is_none() && wanted)
                .then(|| self.next_attempt.unwrap_or_else(Instant::now));
            let next = tokio::select! {
                command = commands.recv() => match command {
                    Some(c) => Some(c),
                    None => break, // the hub is gone
                },
                () = sleep_until(retry_at) => None,
            };
            match next {
                None => {
                    if let Err(e) = self.connect("subscribe").await {
                        tracing::debug!(
                            backend = BACKEND_NAME,
                            error = %format_args!("{e:#}"),
                            retry_in_ms = u64::try_from(self.backoff.as_millis()).unwrap_or(u64::MAX),
                            "courier amqp: pub/sub reconnect failed"
                        );
                    }
                }
                Some(Command::Connect(operation, reply)) => {
                    let _ = reply.send(self.ensure(operation).await);
                }
                Some(Command::Subscribe(entry, reply)) => {
                    let _ = reply.send(self.subscribe(&entry).await);
                }
                Some(Command::Unsubscribe(id)) => self.unsubscribe(id).await,
                Some(Command::Lost(generation, error)) => {
                    if self
                        .live
                        .as_ref()
                        .is_some_and(|l| l.generation == generation)
                    {
                        self.teardown(&error);
                    }
                }
            }
        }
        self.shutdown().await;
    }

    /// The current connection; without one, connect now unless the last attempt failed less
    /// than a backoff ago.
    async fn ensure(&mut self, operation: &'static str) -> Result<Arc<Live>> {
        if let Some(live) = &self.live {
            return Ok(live.clone());
        }
        if let (Some(at), Some(last)) = (self.next_attempt, &self.last_failure)
            && Instant::now() < at
        {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("RabbitMQ is unreachable (last attempt: {last}); reconnecting"),
            )
            .with_backend(BACKEND_NAME)
            .with_operation(operation));
        }
        self.connect(operation).await
    }

    /// One connection attempt, restoring every registered subscription.
    async fn connect(&mut self, operation: &'static str) -> Result<Arc<Live>> {
        let Some(hub) = self.hub.upgrade() else {
            return Err(task_stopped(operation));
        };
        let generation = hub.generation.fetch_add(1, Ordering::Relaxed) + 1;
        match open(&hub, generation, operation).await {
            Ok((live, attached)) => {
                hub.health.up();
                tracing::debug!(
                    backend = BACKEND_NAME,
                    subscriptions = attached.len(),
                    "courier amqp: pub/sub connected; subscriptions restored"
                );
                *hub.live.lock() = Some(live.clone());
                self.live = Some(live.clone());
                self.attached = attached;
                self.backoff = FIRST_BACKOFF;
                self.next_attempt = None;
                self.last_failure = None;
                Ok(live)
            }
            Err(e) => {
                hub.health.down(&e);
                let cause = std::error::Error::source(&e)
                    .map_or_else(|| e.message().to_string(), ToString::to_string);
                self.last_failure = Some(cause);
                self.next_attempt = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                Err(e)
            }
        }
    }

    /// Activate a registered subscription: connect if needed, then its queue and consumer.
    async fn subscribe(&mut self, entry: &Arc<Entry>) -> Result<()> {
        let Some(hub) = self.hub.upgrade() else {
            return Err(task_stopped("subscribe"));
        };
        if !hub.registry.lock().contains_key(&entry.id) {
            // The caller went away before this command was served.
            return Err(
                Error::new(ErrorKind::Shutdown, "the subscription was dropped")
                    .with_backend(BACKEND_NAME)
                    .with_operation("subscribe"),
            );
        }
        let live = self.ensure("subscribe").await?;
        if self.attached.contains_key(&entry.id) {
            return Ok(()); // the connect restored it already
        }
        match attach(&hub, &live, entry, "subscribe").await {
            Ok(a) => {
                self.attached.insert(entry.id, a);
                Ok(())
            }
            Err(e) => {
                // The subscriber channel may be closed now (a channel error closes it): start
                // over on a fresh connection.
                self.teardown(&e);
                Err(e)
            }
        }
    }

    /// Cancel a dropped subscription's consumer (the broker then deletes its queue).
    async fn unsubscribe(&mut self, id: u64) {
        let Some(a) = self.attached.remove(&id) else {
            return;
        };
        if let Some(live) = &self.live
            && let Err(e) = live
                .subscriber
                .basic_cancel(a.tag.clone(), BasicCancelOptions::default())
                .await
        {
            tracing::debug!(
                backend = BACKEND_NAME,
                error = %e,
                "courier amqp: cancelling a pub/sub consumer failed"
            );
        }
        a.reader.abort();
    }

    /// The current connection is broken: drop it and reconnect after the first backoff.
    fn teardown(&mut self, error: &Error) {
        if let Some(hub) = self.hub.upgrade() {
            hub.health.down(error);
            *hub.live.lock() = None;
        }
        for (_, a) in self.attached.drain() {
            a.reader.abort();
        }
        if let Some(live) = self.live.take() {
            tokio::spawn(close(live, 200, "courier: reconnecting"));
        }
        self.backoff = FIRST_BACKOFF;
        self.next_attempt = Some(Instant::now() + FIRST_BACKOFF);
        self.last_failure = None;
    }

    /// The hub is gone: stop the readers and close the connection.
    async fn shutdown(&mut self) {
        for (_, a) in self.attached.drain() {
            a.reader.abort();
        }
        if let Some(live) = self.live.take() {
            close(live, 200, "courier: pub/sub closed").await;
        }
    }
}

/// Close a connection if it is still open, ignoring failures (it is being abandoned).
async fn close(live: Arc<Live>, code: u16, text: &'static str) {
    if live.connection.status().connected() {
        let closing = live.connection.close(code, text.into());
        let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
    }
}

/// Sleep until `at`; forever without it.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Connect, declare the exchange, open the channels and restore every registered
/// subscription. On failure nothing is left open.
async fn open(
    hub: &Arc<Shared>,
    generation: u64,
    operation: &'static str,
) -> Result<(Arc<Live>, HashMap<u64, Attached>)> {
    let uri = parse_uri(&hub.uri, &hub.url, operation)?;
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("courier pub/sub ({})", hub.exchange).into());
    let connection =
        tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, properties))
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "no connection to RabbitMQ at {} within {CONNECT_TIMEOUT:?}",
                        hub.url
                    ),
                )
                .with_backend(BACKEND_NAME)
                .with_operation(operation)
            })?
            .map_err(|e| map_err(operation, e))?;
    let channels = async {
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        publisher
            .exchange_declare(
                hub.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let subscriber = connection.create_channel().await?;
        Ok::<_, lapin::Error>((publisher, subscriber))
    }
    .await;
    let (publisher, subscriber) = match channels {
        Ok(c) => c,
        Err(e) => {
            let _ = connection.close(200, "courier: setup failed".into()).await;
            return Err(map_err(operation, e));
        }
    };
    let live = Arc::new(Live {
        generation,
        connection,
        publisher,
        subscriber,
    });
    let entries: Vec<Arc<Entry>> = hub.registry.lock().values().cloned().collect();
    let mut attached = HashMap::new();
    for entry in entries {
        if entry.buffer.is_closed() {
            continue;
        }
        match attach(hub, &live, &entry, operation).await {
            Ok(a) => {
                attached.insert(entry.id, a);
            }
            Err(e) => {
                for (_, a) in attached.drain() {
                    a.reader.abort();
                }
                close(live, 200, "courier: setup failed").await;
                return Err(e);
            }
        }
    }
    Ok((live, attached))
}

/// Declare a subscription's queue, bind it and start its consumer and reader.
async fn attach(
    hub: &Arc<Shared>,
    live: &Arc<Live>,
    entry: &Arc<Entry>,
    operation: &'static str,
) -> Result<Attached> {
    let exchange = short(&hub.exchange, operation)?;
    let key = short(&entry.binding_key, operation)?;
    let tag = short(
        &format!("courier-ps-{}-{}", entry.id, live.generation),
        operation,
    )?;
    let channel = &live.subscriber;
    let consumer = async {
        let queue = channel
            .queue_declare(
                ShortString::default(),
                QueueDeclareOptions::exclusive().auto_delete(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                exchange,
                key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .basic_consume(
                queue.name().clone(),
                tag.clone(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
    }
    .await
    .map_err(|e| map_err(operation, e))?;
    let reader = tokio::spawn(read(
        consumer,
        entry.clone(),
        Arc::downgrade(hub),
        live.generation,
    ));
    Ok(Attached { tag, reader })
}

/// Move a consumer's deliveries into its subscription's buffer. When the consumer ends while
/// the subscription is still wanted, the connection (or its channel) is gone: report it.
async fn read(mut consumer: Consumer, entry: Arc<Entry>, hub: Weak<Shared>, generation: u64) {
    let mut failure = None;
    while let Some(delivery) = consumer.next().await {
        match delivery {
            Ok(d) => deliver(&entry, d.routing_key.as_str(), d.data),
            Err(e) => failure = Some(e),
        }
    }
    if entry.buffer.is_closed() {
        return;
    }
    let Some(hub) = hub.upgrade() else {
        return;
    };
    if !hub.registry.lock().contains_key(&entry.id) {
        return;
    }
    let error = match failure {
        Some(e) => map_err("subscribe", e),
        None => Error::new(
            ErrorKind::Unavailable,
            "RabbitMQ ended a subscription's consumer (connection or channel closed)",
        )
        .with_backend(BACKEND_NAME)
        .with_operation("subscribe"),
    };
    hub.send(Command::Lost(generation, error));
}

/// Decode one delivery and buffer it when the subscription's pattern matches its channel.
fn deliver(entry: &Entry, channel: &str, data: Vec<u8>) {
    let buffer = &entry.buffer;
    if buffer.is_closed() || !buffer.pattern().matches(channel) {
        return;
    }
    match wire::decode(&Bytes::from(data)) {
        Ok(message) => buffer.push(message),
        Err(e) => tracing::debug!(
            backend = BACKEND_NAME,
            channel,
            error = %format_args!("{e:#}"),
            "courier amqp: dropping an undecodable pub/sub message"
        ),
    }
}

/// Dropped with a [`Subscription`]: stops delivery and cancels the subscription's consumer.
struct Unsubscribe {
    /// The hub, if still there.
    hub: Weak<Shared>,
    /// The subscription's id in the registry.
    id: u64,
    /// Its buffer, closed first.
    buffer: Arc<SubscriptionBuffer>,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.buffer.close();
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        hub.registry.lock().remove(&self.id);
        if let Some(tx) = hub.commands.lock().as_ref() {
            let _ = tx.send(Command::Unsubscribe(self.id));
        }
    }
}

/// The AMQP binding key of a pattern: `*` is one token in both grammars; Courier's trailing
/// `>` (one or more tokens) is `*.#` (one token, then zero or more).
fn binding_key(pattern: &Pattern) -> String {
    pattern
        .as_str()
        .split('.')
        .map(|t| if t == ">" { "*.#" } else { t })
        .collect::<Vec<_>>()
        .join(".")
}

/// An AMQP short string (at most 255 bytes).
fn short(s: &str, operation: &'static str) -> Result<ShortString> {
    ShortString::try_new(s)
        .map_err(|e| KIT.tag(operation)(Error::invalid(format!("AMQP name too long: {e}"))))
}

/// The error of a call whose reply channel closed: the task stopped (its runtime shut down).
fn task_stopped(operation: &'static str) -> Error {
    Error::new(ErrorKind::Unavailable, "the pub/sub task has stopped")
        .with_backend(BACKEND_NAME)
        .with_operation(operation)
}

#[async_trait]
impl PubSub for AmqpBackend {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    /// Publishes to the topic exchange and waits for the broker's confirm. Returns how many
    /// subscriptions of *this* backend handle match the channel (other processes'
    /// subscribers are not counted).
    async fn publish(&self, channel: &str, mut message: Message) -> Result<usize> {
        let hub = &self.inner.pubsub;
        KIT.check_publish(channel, &hub.shared.default_config, &message)?;
        message.prepare_for_publish(self.inner.clock.now_ms());
        let bytes = wire::encode(&message).map_err(KIT.tag("publish"))?;
        hub.publish(channel, &bytes).await?;
        Ok(hub.local_receivers(channel))
    }

    async fn subscribe(&self, pattern: &str, options: SubscribeOptions) -> Result<Subscription> {
        let pattern = Pattern::parse(pattern).map_err(KIT.tag("subscribe"))?;
        self.inner.pubsub.subscribe(pattern, options).await
    }
}

impl AmqpBackend {
    /// Close the pub/sub connection behind the hub's back, as a network cut would: the hub
    /// must notice the loss and restore its subscriptions by itself (P6). `Ok(false)` when no
    /// connection was open. For tests (the conformance suite's `disrupt`).
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`] or [`ErrorKind::Backend`] when the close fails.
    #[doc(hidden)]
    pub async fn disrupt_pubsub(&self) -> Result<bool> {
        let live = self.inner.pubsub.shared.live.lock().clone();
        let Some(live) = live else {
            return Ok(false);
        };
        if !live.connection.status().connected() {
            return Ok(false);
        }
        live.connection
            .close(
                CONNECTION_FORCED,
                "courier: disrupt_pubsub (simulated network cut)".into(),
            )
            .await
            .map_err(|e| map_err("disrupt", e))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::HEARTBEAT_SECS;

    /// The binding key of pattern `p`.
    fn key(p: &str) -> String {
        binding_key(&Pattern::parse(p).expect("pattern"))
    }

    #[test]
    fn patterns_translate_to_binding_keys() {
        assert_eq!(key("a.b"), "a.b");
        assert_eq!(key("a.*"), "a.*");
        assert_eq!(key("*.c"), "*.c");
        assert_eq!(key("a.>"), "a.*.#");
        assert_eq!(key(">"), "*.#");
        assert_eq!(key("a.*.c.>"), "a.*.c.*.#");
    }

    #[test]
    fn a_bad_url_does_not_leak_its_password() {
        let e = parse_uri("amqp://u:s3cret@[::1", "amqp://u:***@[::1", "connect")
            .expect_err("malformed");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(!format!("{e:#}").contains("s3cret"), "{e:#}");
    }

    #[test]
    fn the_url_keeps_its_host_and_gets_a_heartbeat() {
        let u = parse_uri("amqp://u:p@10.1.2.3:5673/%2f", "", "connect").expect("parses");
        assert_eq!(u.authority.host, "10.1.2.3");
        assert_eq!(u.authority.port, 5673);
        assert_eq!(u.vhost, "/");
        assert_eq!(u.query.heartbeat, Some(HEARTBEAT_SECS));
        let u = parse_uri("amqp://h/v?heartbeat=30", "", "connect").expect("parses");
        assert_eq!(u.query.heartbeat, Some(30));
    }

    #[test]
    fn connection_trouble_is_retryable() {
        let io = lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        let e = map_err("publish", io);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.is_retryable());
        assert_eq!((e.backend(), e.operation()), ("amqp", "publish"));
    }
}
