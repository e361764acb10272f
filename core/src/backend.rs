//! The backend kit: what a backend needs and an application does not.
//!
//! A backend implements the primitive traits ([`Queue`](crate::Queue),
//! [`PubSub`](crate::PubSub), [`EventBus`](crate::EventBus)) and nothing else; the plumbing
//! every backend repeats lives here, once, so that a trait impl keeps only its atomic
//! primitives (`docs/backend-guide.md` walks through a backend in the order it is written):
//!
//! - [`Kit`]: the prologue of every primitive — name checks, the `receive` bound, the
//!   configuration check, the `LeaseLost` error, the publish / emit preparation loop
//!   (validate → assign id and due time → encode), each error tagged with the backend and the
//!   operation.
//! - [`ConfigStore`]: the per-queue and per-group configurations a backend handle keeps.
//! - [`expired_lease`] and [`LEASE_EXPIRED`]: the decision for a lease that ended without a
//!   settle (Q4/Q5), the same on every backend.
//! - Re-exports of the backend-facing parts of core: the wire format ([`wire`]), the
//!   subscription buffer a pub/sub backend fills ([`SubscriptionBuffer`]), the worker's
//!   [`Source`], [`ms_ceil`].
//!
//! Policy (retry or bury, the backoff delay) is decided by [`crate::RetryPolicy`]; nothing in
//! a backend restates it. A backend whose lease expiry runs server-side receives core's
//! precomputed decision table ([`crate::RetryPolicy`]'s bounds) as arguments instead.

use std::collections::HashMap;
use std::hash::Hash;

use parking_lot::RwLock;
use rand::Rng;

use crate::error::{Error, Result};
use crate::message::{Message, MessageId};
use crate::names::validate_name;
use crate::policy::{FailureAction, FailureMode, QueueConfig, RetryPolicy};
use crate::queue::Lease;

pub use crate::clock::ms_ceil;
pub use crate::pubsub::SubscriptionBuffer;
pub use crate::wire;
pub use crate::worker::{GroupSource, QueueSource, Source};

/// The error text stored with a message whose lease expired (its last error, or its dead
/// letter's reason when that was the last attempt). The same on every backend.
pub const LEASE_EXPIRED: &str = "lease expired";

/// The dead-letter reason of a message that expired before a consumer leased it
/// ([`crate::Message::expires_at`]). The same on every backend.
pub const EXPIRED: &str = "expired";

/// The decision for a delivery whose lease ended without ack, nack or release: an expired
/// lease counts as one failed attempt (Q4), retried after the policy's backoff or buried when
/// out of attempts (Q5, Q6). `attempt` is the number of the delivery that expired,
/// `max_override` the message's own `max_attempts`.
///
/// Every backend calls this (or, for a server-side script, receives
/// [`RetryPolicy::delay_bounds`] precomputed): the decision is never re-derived.
pub fn expired_lease<R: Rng + ?Sized>(
    policy: &RetryPolicy,
    attempt: u32,
    max_override: Option<u32>,
    rng: &mut R,
) -> FailureAction {
    policy.decide(attempt, max_override, FailureMode::Backoff, rng)
}

/// The dead-letter reason of a stored entry that cannot be decoded (Q10), from the decode
/// error. The same wording on every backend, so the same junk gives the same dead letter.
pub fn undecodable_reason(decode_error: &Error) -> String {
    format!("undecodable message: {}", decode_error.message())
}

/// Whether a next wake-up `after` comes earlier than `before` (a waiter may need to re-arm
/// its timer). `None` means "nothing scheduled".
pub fn earlier_wake(after: Option<u64>, before: Option<u64>) -> bool {
    match (after, before) {
        (Some(a), Some(b)) => a < b,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The checks and error wording every primitive of a backend starts with, tagged with the
/// backend's name. `Copy`: keep one in a `const` or a field.
///
/// ```
/// use courier_core::backend::Kit;
/// const KIT: Kit = Kit::new("example");
/// let err = KIT.check_name("queue", "a*b", "publish").unwrap_err();
/// assert_eq!(err.kind(), courier_core::ErrorKind::InvalidInput);
/// assert_eq!((err.backend(), err.operation()), ("example", "publish"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kit {
    backend: &'static str,
}

/// What a batch holds: the wording of its errors and of its names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    /// `publish_batch` on a queue: "queue" names, "message {i} of the batch", operation
    /// `publish`.
    Publish,
    /// `emit_batch` on a topic: "topic" names, "event {i} of the batch", operation `emit`.
    Emit,
}

impl Batch {
    fn what(self) -> &'static str {
        match self {
            Batch::Publish => "queue",
            Batch::Emit => "topic",
        }
    }

    fn item(self) -> &'static str {
        match self {
            Batch::Publish => "message",
            Batch::Emit => "event",
        }
    }

    fn operation(self) -> &'static str {
        match self {
            Batch::Publish => "publish",
            Batch::Emit => "emit",
        }
    }
}

impl Kit {
    /// The kit of the backend named `backend` (`"memory"`, `"redis"`, …).
    pub const fn new(backend: &'static str) -> Self {
        Kit { backend }
    }

    /// The backend's name.
    pub const fn backend(self) -> &'static str {
        self.backend
    }

    /// Tag an error with this backend and `operation` (for `map_err`).
    pub fn tag(self, operation: &'static str) -> impl Fn(Error) -> Error + Copy {
        let backend = self.backend;
        move |e: Error| e.with_backend(backend).with_operation(operation)
    }

    /// Validate a queue, channel, topic or group name (`what` says which).
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`], tagged with `operation`.
    pub fn check_name(self, what: &str, name: &str, operation: &'static str) -> Result<()> {
        validate_name(what, name).map_err(self.tag(operation))
    }

    /// Validate a topic and a consumer group name.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`], tagged with `operation`.
    pub fn check_group(self, topic: &str, group: &str, operation: &'static str) -> Result<()> {
        self.check_name("topic", topic, operation)?;
        self.check_name("group", group, operation)
    }

    /// The prologue of `PubSub::publish` (P1, Q10): the channel name is valid and the message
    /// passes `config` — the backend's default configuration — as a queue publish or an emit
    /// would: a payload within its `max_payload`, a `max_attempts` override of at least 1. One
    /// limit for every abstraction.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] or [`crate::ErrorKind::PayloadTooLarge`], tagged
    /// `publish`. Nothing has been sent.
    pub fn check_publish(
        self,
        channel: &str,
        config: &QueueConfig,
        message: &Message,
    ) -> Result<()> {
        self.check_name("channel", channel, "publish")?;
        config.check_message(message).map_err(self.tag("publish"))
    }

    /// The `max` of a receive must be at least 1.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`], tagged `receive`.
    pub fn check_max(self, max: usize) -> Result<()> {
        if max == 0 {
            return Err(self.tag("receive")(Error::invalid(
                "receive max must be at least 1",
            )));
        }
        Ok(())
    }

    /// The prologue of `EventBus::read_events`: a valid topic name and a `max` of at least 1.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`], tagged `read_events`.
    pub fn check_read(self, topic: &str, max: usize) -> Result<()> {
        self.check_name("topic", topic, "read_events")?;
        if max == 0 {
            return Err(self.tag("read_events")(Error::invalid(
                "read_events max must be at least 1",
            )));
        }
        Ok(())
    }

    /// The prologue of `Queue::configure`: the name and the configuration are valid.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`], tagged `configure`.
    pub fn check_queue_config(self, queue: &str, config: &QueueConfig) -> Result<()> {
        self.check_name("queue", queue, "configure")?;
        config.validate().map_err(self.tag("configure"))
    }

    /// The prologue of `EventBus::configure_group`: the names and the configuration are valid.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`], tagged `configure_group`.
    pub fn check_group_config(self, topic: &str, group: &str, config: &QueueConfig) -> Result<()> {
        self.check_group(topic, group, "configure_group")?;
        config.validate().map_err(self.tag("configure_group"))
    }

    /// The error for an ack, nack, extend or release whose lease is no longer held (settled,
    /// expired or handed to another consumer). The same wording on every backend.
    pub fn lease_lost(self, operation: &'static str, lease: &Lease) -> Error {
        self.tag(operation)(Error::lease_lost(format!(
            "lease {} on message {} (attempt {}) is no longer held: settled, expired or redelivered",
            lease.token, lease.id, lease.attempt
        )))
    }

    /// The error for a variant of a growing operation enum ([`crate::Settle`],
    /// [`crate::Selection`], [`crate::ReplayFrom`] are `#[non_exhaustive]`) that this backend
    /// does not implement: a backend built against an older core refuses it instead of
    /// guessing. Nothing was changed.
    pub fn unsupported(self, operation: &'static str, what: impl std::fmt::Debug) -> Error {
        self.tag(operation)(Error::new(
            crate::ErrorKind::Unsupported,
            format!("{what:?} is not supported by the {} backend", self.backend),
        ))
    }

    /// Prepare a batch for storing, before anything is sent (Q7, Q10): check the name, check
    /// every message against `config` (payload size, `max_attempts` override), then give each
    /// its id and due time at `now` and hand it to `encode`, in order. Returns the ids and the
    /// encoded items, in batch order.
    ///
    /// # Errors
    /// The first invalid input or encoding failure, naming the message's index in the batch,
    /// tagged with the batch's operation (`publish` or `emit`). Nothing has been stored.
    pub fn prepare_batch<T>(
        self,
        batch: Batch,
        name: &str,
        config: &QueueConfig,
        messages: Vec<Message>,
        now: u64,
        mut encode: impl FnMut(Message) -> Result<T>,
    ) -> Result<(Vec<MessageId>, Vec<T>)> {
        let tag = self.tag(batch.operation());
        self.check_name(batch.what(), name, batch.operation())?;
        let indexed = |i: usize, e: Error| {
            tag(Error::new(
                e.kind(),
                format!("{} {i} of the batch: {}", batch.item(), e.message()),
            ))
        };
        for (i, m) in messages.iter().enumerate() {
            config.check_message(m).map_err(|e| indexed(i, e))?;
        }
        let mut ids = Vec::with_capacity(messages.len());
        let mut items = Vec::with_capacity(messages.len());
        for (i, mut m) in messages.into_iter().enumerate() {
            // A queue's default time to live; an event's expiry is its own (E-rules).
            if batch == Batch::Publish
                && m.ttl.is_none()
                && m.expires_at.is_none()
                && let Some(ttl) = config.message_ttl
            {
                m.ttl = Some(ttl);
            }
            m.prepare_for_publish(now);
            QueueConfig::check_expiry(&m, now).map_err(|e| indexed(i, e))?;
            ids.push(m.id);
            items.push(encode(m).map_err(|e| indexed(i, e))?);
        }
        Ok((ids, items))
    }
}

/// The queue and consumer-group configurations a backend handle holds (set by `configure`,
/// read by every primitive), with the backend's default for names never configured.
#[derive(Debug)]
pub struct ConfigStore {
    default: QueueConfig,
    queues: RwLock<HashMap<String, QueueConfig>>,
    groups: RwLock<HashMap<(String, String), QueueConfig>>,
}

impl ConfigStore {
    /// An empty store answering `default` for every name.
    pub fn new(default: QueueConfig) -> Self {
        ConfigStore {
            default,
            queues: RwLock::default(),
            groups: RwLock::default(),
        }
    }

    /// The configuration of names never configured.
    pub fn default_config(&self) -> QueueConfig {
        self.default
    }

    /// `Queue::configure`: check the name and the configuration, then keep it.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`], tagged with `kit`'s backend and `configure`.
    pub fn configure_queue(&self, kit: Kit, queue: &str, config: QueueConfig) -> Result<()> {
        kit.check_queue_config(queue, &config)?;
        self.queues.write().insert(queue.to_owned(), config);
        Ok(())
    }

    /// The configuration in force for `queue`.
    pub fn queue(&self, queue: &str) -> QueueConfig {
        lookup(&self.queues, queue).unwrap_or(self.default)
    }

    /// `EventBus::configure_group`: check the names and the configuration, then keep it.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`], tagged with `kit`'s backend and `configure_group`.
    pub fn configure_group(
        &self,
        kit: Kit,
        topic: &str,
        group: &str,
        config: QueueConfig,
    ) -> Result<()> {
        kit.check_group_config(topic, group, &config)?;
        self.groups
            .write()
            .insert((topic.to_owned(), group.to_owned()), config);
        Ok(())
    }

    /// The configuration in force for `group` on `topic`.
    pub fn group(&self, topic: &str, group: &str) -> QueueConfig {
        lookup(&self.groups, &(topic.to_owned(), group.to_owned())).unwrap_or(self.default)
    }
}

fn lookup<K, Q>(map: &RwLock<HashMap<K, QueueConfig>>, key: &Q) -> Option<QueueConfig>
where
    K: Eq + Hash + std::borrow::Borrow<Q>,
    Q: Eq + Hash + ?Sized,
{
    map.read().get(key).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::message::MessageId;
    use bytes::Bytes;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    use std::time::Duration;

    const KIT: Kit = Kit::new("test");

    #[test]
    fn errors_carry_backend_and_operation() {
        let e = KIT.check_max(0).expect_err("0 is rejected");
        assert_eq!(
            (e.kind(), e.backend(), e.operation()),
            (ErrorKind::InvalidInput, "test", "receive")
        );
        let lease = Lease {
            id: MessageId::new(),
            token: 7,
            attempt: 2,
            deadline_ms: 0,
        };
        let e = KIT.lease_lost("extend", &lease);
        assert_eq!((e.kind(), e.operation()), (ErrorKind::LeaseLost, "extend"));
        assert!(e.message().contains("lease 7 on message"), "{e}");
        let e = KIT
            .check_group_config("t", "g*", &QueueConfig::default())
            .expect_err("bad group");
        assert_eq!(e.operation(), "configure_group");
    }

    #[test]
    fn prepare_checks_everything_before_encoding_anything() {
        let config = QueueConfig {
            max_payload: 4,
            ..QueueConfig::default()
        };
        let ok = Message::new("k", Bytes::from_static(b"1234"));
        let big = Message::new("k", Bytes::from_static(b"12345"));
        let mut encoded = 0;
        let e = KIT
            .prepare_batch(Batch::Emit, "t", &config, vec![ok.clone(), big], 5, |m| {
                encoded += 1;
                Ok(m)
            })
            .expect_err("oversize");
        assert_eq!(
            encoded, 0,
            "nothing encoded before the whole batch is checked"
        );
        assert_eq!(
            (e.kind(), e.operation()),
            (ErrorKind::PayloadTooLarge, "emit")
        );
        assert!(e.message().starts_with("event 1 of the batch"), "{e}");

        let mut nil = ok.clone();
        nil.id = MessageId::nil();
        let (ids, items) = KIT
            .prepare_batch(Batch::Publish, "q", &config, vec![nil, ok.clone()], 5, Ok)
            .expect("valid batch");
        assert!(!ids[0].is_nil(), "a nil id is assigned");
        assert_eq!(ids[1], ok.id);
        assert_eq!(items[0].id, ids[0]);
        assert_eq!(items[1].created_at, 5);

        let e = KIT
            .prepare_batch(Batch::Publish, "q", &config, vec![ok], 5, |_| {
                Err::<(), _>(Error::invalid("cannot encode"))
            })
            .expect_err("encode failure");
        assert_eq!(e.message(), "message 0 of the batch: cannot encode");
    }

    #[test]
    fn publish_checks_name_and_limit() {
        let config = QueueConfig::default().with_max_payload(4);
        KIT.check_publish(
            "c",
            &config,
            &Message::new("k", Bytes::from_static(b"1234")),
        )
        .expect("exactly max_payload");
        let e = KIT
            .check_publish(
                "c",
                &config,
                &Message::new("k", Bytes::from_static(b"12345")),
            )
            .expect_err("oversize");
        assert_eq!(
            (e.kind(), e.backend(), e.operation()),
            (ErrorKind::PayloadTooLarge, "test", "publish")
        );
        let e = KIT
            .check_publish("a*b", &config, &Message::new("k", ""))
            .expect_err("bad channel");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let e = KIT
            .check_publish("c", &config, &Message::new("k", "").with_max_attempts(0))
            .expect_err("max_attempts 0");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn configs_default_and_override() {
        let store = ConfigStore::new(QueueConfig::default());
        let custom = QueueConfig {
            visibility_timeout: Duration::from_millis(200),
            ..QueueConfig::default()
        };
        store.configure_queue(KIT, "q", custom).expect("valid");
        assert_eq!(store.queue("q"), custom);
        assert_eq!(store.queue("other"), QueueConfig::default());
        store.configure_group(KIT, "t", "g", custom).expect("valid");
        assert_eq!(store.group("t", "g"), custom);
        assert_eq!(store.group("t", "h"), QueueConfig::default());
        assert!(store.configure_queue(KIT, "a*b", custom).is_err());
    }

    #[test]
    fn expired_lease_is_a_backoff_failure() {
        let p = RetryPolicy::exact(2, Duration::from_millis(10), 2.0, Duration::from_secs(1));
        let mut rng = SmallRng::seed_from_u64(0);
        assert_eq!(
            expired_lease(&p, 1, None, &mut rng),
            FailureAction::Retry(Duration::from_millis(10))
        );
        assert_eq!(expired_lease(&p, 2, None, &mut rng), FailureAction::Dead);
        assert_eq!(
            expired_lease(&p, 2, Some(3), &mut rng),
            FailureAction::Retry(Duration::from_millis(20))
        );
        assert!(earlier_wake(Some(1), Some(2)) && earlier_wake(Some(1), None));
        assert!(!earlier_wake(None, Some(1)) && !earlier_wake(Some(2), Some(2)));
    }
}

/// Logs a connection's outages once each: one WARN when the connection is found lost (or
/// cannot be opened), one INFO with the outage's length (`outage_ms`) when it is back, however
/// many calls and reconnect attempts failed in between. Report every failure with
/// [`OutageLog::down`] and every success with [`OutageLog::up`]; both are cheap.
#[derive(Debug)]
pub struct OutageLog {
    backend: &'static str,
    /// Which connection of the backend (`queues`, `pubsub` …).
    pool: &'static str,
    /// The URL with its password redacted.
    url: String,
    /// When the current outage was noticed.
    lost_at: parking_lot::Mutex<Option<std::time::Instant>>,
}

impl OutageLog {
    /// Connected (or not tried yet). `url` must be redacted already ([`crate::redact_url`]).
    pub fn new(backend: &'static str, pool: &'static str, url: &str) -> Self {
        OutageLog {
            backend,
            pool,
            url: url.to_string(),
            lost_at: parking_lot::Mutex::new(None),
        }
    }

    /// The connection was found lost, or could not be opened (`e` says why).
    pub fn down(&self, e: &dyn std::fmt::Display) {
        let mut lost_at = self.lost_at.lock();
        if lost_at.is_some() {
            return;
        }
        *lost_at = Some(std::time::Instant::now());
        tracing::warn!(
            backend = self.backend,
            pool = self.pool,
            url = %self.url,
            error = %e,
            "courier: connection lost"
        );
    }

    /// A connection is open (again).
    pub fn up(&self) {
        let Some(since) = self.lost_at.lock().take() else {
            return;
        };
        let outage_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            backend = self.backend,
            pool = self.pool,
            url = %self.url,
            outage_ms,
            "courier: connection restored"
        );
    }

    /// Whether an outage is going on.
    pub fn is_down(&self) -> bool {
        self.lost_at.lock().is_some()
    }
}
