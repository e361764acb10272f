//! The work queue (DESIGN §3): the small primitive trait a backend implements, and the
//! [`QueueExt`] helpers every backend gets for free.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::message::{Message, MessageId, Priority};
use crate::policy::{FailureAction, FailureMode, QueueConfig, RateLimit};

/// Proof of holding a delivery. Ack, nack and extend act only with a current lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The message.
    pub id: MessageId,
    /// Unique per delivery; a stale token gets [`crate::ErrorKind::LeaseLost`].
    pub token: u64,
    /// The delivery number this lease belongs to (1-based).
    pub attempt: u32,
    /// When the lease ends (ms since the epoch), as known when it was granted or extended.
    pub deadline_ms: u64,
}

/// A received message and its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The message, with `attempt` set to this delivery's number.
    pub message: Message,
    /// The lease to settle it with.
    pub lease: Lease,
}

/// How to settle a delivery. The policy (retry or bury, which delay) is decided by the caller
/// from [`QueueConfig`]; the backend only executes it atomically.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settle {
    /// Remove for good.
    Ack(Lease),
    /// A failed attempt: ready again after `delay`, remembering `error`.
    Retry {
        /// The delivery.
        lease: Lease,
        /// Backoff before it is ready again.
        delay: Duration,
        /// The failure, kept as the message's last error.
        error: String,
    },
    /// A final failure: move to dead letters (or discard when dead letters are off).
    Bury {
        /// The delivery.
        lease: Lease,
        /// The failure, stored with the dead letter.
        error: String,
    },
    /// Give the message back unhandled (graceful stop): ready at once, the attempt not counted.
    Release(Lease),
}

impl Settle {
    /// The lease this operation acts on.
    pub fn lease(&self) -> &Lease {
        match self {
            Settle::Ack(l) | Settle::Release(l) => l,
            Settle::Retry { lease, .. } | Settle::Bury { lease, .. } => lease,
        }
    }
}

/// What publish did with one message (Q11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "id", rename_all = "lowercase")]
pub enum Published {
    /// Stored under this id.
    Stored(MessageId),
    /// Not stored: a message with the same deduplication key holds it (live, or within the
    /// queue's `dedup_window`); this is that message's id.
    Duplicate(MessageId),
}

impl Published {
    /// The stored message's id, or for a duplicate the id of the message that holds the key.
    pub fn id(&self) -> MessageId {
        match self {
            Published::Stored(id) | Published::Duplicate(id) => *id,
        }
    }

    /// Whether nothing was stored because the key was taken.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Published::Duplicate(_))
    }

    /// The ids of a batch's outcomes, in batch order.
    pub fn ids(outcomes: &[Published]) -> Vec<MessageId> {
        outcomes.iter().map(Published::id).collect()
    }
}

/// A snapshot of a queue (Q8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueStats {
    /// Ready now, per priority (index 0 = Critical).
    pub ready: [u64; 4],
    /// Waiting for a delay or a retry backoff.
    pub delayed: u64,
    /// Leased to a consumer.
    pub in_flight: u64,
    /// In the dead-letter store.
    pub dead: u64,
    /// Messages accepted by publish (counter).
    pub published: u64,
    /// Messages acknowledged (counter).
    pub acked: u64,
    /// Failed attempts that were scheduled for another try (counter).
    pub retried: u64,
    /// Messages moved to dead letters or discarded after their last attempt (counter).
    pub dead_lettered: u64,
    /// Publishes that stored nothing because their deduplication key was taken (counter, Q11).
    #[serde(default)]
    pub deduplicated: u64,
    /// Messages that expired before a consumer leased them ([`crate::Message::expires_at`]):
    /// moved to dead letters with the reason `"expired"`, or discarded (counter). Not counted in
    /// `dead_lettered`.
    #[serde(default)]
    pub expired: u64,
    /// Whether the queue is paused (Q14): it accepts publishes and delivers nothing.
    #[serde(default)]
    pub paused: bool,
    /// The queue's rate limit, if any (Q15).
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

impl QueueStats {
    /// Ready messages over all priorities.
    pub fn ready_total(&self) -> u64 {
        self.ready.iter().sum()
    }

    /// Ready messages at one priority.
    pub fn ready_at(&self, p: Priority) -> u64 {
        self.ready[p.index()]
    }

    /// Messages stored in any state (ready, delayed, in flight, dead).
    pub fn stored(&self) -> u64 {
        self.ready_total() + self.delayed + self.in_flight + self.dead
    }
}

/// A message that ran out of attempts or failed permanently (Q6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message as last delivered (`attempt` = the last delivery's number).
    pub message: Message,
    /// The last error.
    pub error: String,
    /// How many deliveries were made.
    pub attempts: u32,
    /// When it was buried (ms since the epoch).
    pub failed_at: u64,
}

/// A page of a listing, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// Entries to skip.
    pub offset: usize,
    /// Entries to return at most.
    pub limit: usize,
}

impl Page {
    /// The first `limit` entries.
    pub fn first(limit: usize) -> Self {
        Page { offset: 0, limit }
    }
}

/// Which dead letters an operation acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Selection {
    /// All of them.
    All,
    /// These ids (unknown ids are ignored and not counted).
    Ids(Vec<MessageId>),
}

/// A work queue backend: atomic primitives only. Policy lives in core ([`QueueExt`],
/// [`crate::Worker`]).
///
/// Queues come into existence on first use. Every method validates the queue name first.
///
/// # Errors
/// Every async method can fail with [`crate::ErrorKind::InvalidInput`] for an invalid queue
/// name (checked before anything is sent), or with a *backend failure*:
/// - [`crate::ErrorKind::Unavailable`] (retryable): the broker cannot be reached or cannot
///   serve now (Redis down or loading; a SQLite database locked beyond its busy timeout, a full
///   disk);
/// - [`crate::ErrorKind::Backend`]: an error retrying will not fix (a corrupt or read-only
///   SQLite file, a Redis script error or unexpected reply);
/// - [`crate::ErrorKind::Shutdown`]: the backend is shutting down (the SQLite writer thread
///   has stopped).
///
/// The memory backend has no backend failures. Each method lists what it adds.
///
/// # Cancel safety
/// Each method says what dropping its future leaves behind. In short: a receive never loses a
/// message; a publish, settle, extend, requeue or purge may or may not have been applied.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// The backend's short name (`"memory"`, `"redis"`, …).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// let courier = courier::connect("sqlite::memory:").await?;
    /// assert_eq!(courier.queue().backend_name(), "sqlite");
    /// # Ok(())
    /// # }
    /// ```
    fn backend_name(&self) -> &'static str;

    /// The clock the backend uses for delays and leases.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// // The backend's time, in ms since the epoch: the base of `with_not_before` and deadlines.
    /// let now = q.clock().now_ms();
    /// q.publish("mail", Message::new("reminder", "").with_not_before(now + 60_000)).await?;
    /// assert_eq!(q.stats("mail").await?.delayed, 1);
    /// # Ok(())
    /// # }
    /// ```
    fn clock(&self) -> SharedClock;

    /// Set a queue's configuration in this handle. Processes sharing a queue should use the
    /// same configuration.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for a bad name or configuration.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{QueueConfig, RetryPolicy};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.queue().configure(
    ///     "ai",
    ///     QueueConfig::default()
    ///         .with_visibility_timeout(Duration::from_secs(120))
    ///         .with_retry(RetryPolicy::default().with_max_attempts(3)),
    /// )?;
    /// assert!(courier.queue().configure("bad name", QueueConfig::default()).is_err());
    /// # Ok(())
    /// # }
    /// ```
    fn configure(&self, queue: &str, config: QueueConfig) -> Result<()>;

    /// The configuration in force for `queue` (the backend default if never configured).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::QueueConfig;
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// // A queue never configured has the defaults.
    /// assert_eq!(q.queue_config("fresh"), QueueConfig::default());
    /// q.configure("ai", QueueConfig::default().with_visibility_timeout(Duration::from_secs(120)))?;
    /// assert_eq!(q.queue_config("ai").visibility_timeout, Duration::from_secs(120));
    /// # Ok(())
    /// # }
    /// ```
    fn queue_config(&self, queue: &str) -> QueueConfig;

    /// Store messages (Q1, Q7). Ids are assigned where nil; delays resolve against the
    /// backend clock. All messages are validated before anything is stored.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::InvalidInput`]: an invalid queue name, a `max_attempts` override
    ///   of 0, or (on backends that store bytes) a kind or header the wire format cannot carry.
    ///   The whole batch is rejected before anything is sent.
    /// - [`crate::ErrorKind::PayloadTooLarge`]: a payload over the queue's `max_payload`. The
    ///   whole batch is rejected before anything is sent.
    /// - A backend failure (see [`Queue`]) part-way: [`Error::stored`] tells how many leading
    ///   messages were decided (Q7): stored, or found to be duplicates (Q11); publish the rest
    ///   again. SQLite stores a batch in one transaction (nothing stored).
    ///   Redis stores it in script calls of up to 1,000 messages, each all or nothing; when the
    ///   connection is lost during a call, that call's messages may have been stored too.
    ///
    /// An empty batch is not an error: nothing is stored and the result is empty.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have published. Memory and SQLite store a batch all
    /// or nothing (SQLite commits a submitted batch even when the future is dropped); Redis may
    /// have stored a leading part of a batch larger than one script call.
    ///
    /// # Deduplication (Q11)
    /// Each message is decided in batch order: one whose deduplication key is taken (by a
    /// stored message, or by an earlier message of the same batch) is not stored and comes back
    /// as [`Published::Duplicate`] with the holder's id; the others as [`Published::Stored`].
    /// The check and the store are one atomic step, so racing publishers of one key store
    /// exactly one message.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, Published};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let out = courier
    ///     .queue()
    ///     .publish_batch(
    ///         "thumbs",
    ///         vec![
    ///             Message::new("thumb", "a.jpg").with_dedup_key("a.jpg"),
    ///             Message::new("thumb", "b.jpg"),
    ///             Message::new("thumb", "a.jpg").with_dedup_key("a.jpg"),
    ///         ],
    ///     )
    ///     .await?;
    /// // One outcome per message, in order; the third is a duplicate of the first (Q7, Q11).
    /// assert!(matches!(out[0], Published::Stored(_)));
    /// assert_eq!(out[2], Published::Duplicate(out[0].id()));
    /// assert_eq!(courier.queue().stats("thumbs").await?.ready_total(), 2);
    /// # Ok(())
    /// # }
    /// ```
    async fn publish_batch(&self, queue: &str, messages: Vec<Message>) -> Result<Vec<Published>>;

    /// Lease up to `max` ready messages, highest priority first, FIFO within a priority (Q2),
    /// waiting up to `wait` for one to become ready. Returns an empty vector on timeout.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::InvalidInput`]: an invalid queue name, or `max` is 0.
    /// - A backend failure (see [`Queue`]).
    ///
    /// A timeout is not an error (the vector is empty). Neither is a stored entry that cannot
    /// be decoded: it goes to dead letters with the decode error and the receive goes on (Q10).
    ///
    /// # Cancel safety
    /// Dropping the future never loses a message: at worst a message is leased and comes back
    /// when its lease expires. The current backends do better: memory leases only in the step
    /// that returns the deliveries, and SQLite and Redis release at once what a dropped receive
    /// had leased, without counting the attempt.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// for i in 0..3 {
    ///     q.publish("thumbs", Message::new("thumb", format!("{i}"))).await?;
    /// }
    /// // Up to 10, waiting at most 1 s for the first one.
    /// let batch = q.receive("thumbs", 10, Duration::from_secs(1)).await?;
    /// assert_eq!(batch.len(), 3);
    /// assert!(batch.iter().all(|d| d.message.attempt == 1));
    /// // Leased: invisible to other consumers until settled or the lease ends (Q4).
    /// assert!(q.receive("thumbs", 10, Duration::ZERO).await?.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    async fn receive(&self, queue: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>>;

    /// Settle deliveries. The outer error is a backend failure; each inner result is one
    /// operation's outcome ([`crate::ErrorKind::LeaseLost`] when the lease is no longer held,
    /// and then nothing changed).
    ///
    /// # Errors
    /// The outer error is [`crate::ErrorKind::InvalidInput`] for an invalid queue name, or a
    /// backend failure (see [`Queue`]); after a backend failure, any of the operations may or
    /// may not have been applied (Redis applies them in script calls of up to 2,000). Each
    /// inner result is [`crate::ErrorKind::LeaseLost`] when that lease is no longer held
    /// (settled, expired or handed to another consumer); that operation changed nothing.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have applied the operations (on Redis, possibly a
    /// leading part of a large batch). Settling again is safe: an operation that already
    /// landed gets [`crate::ErrorKind::LeaseLost`] and changes nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt, Settle};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.publish("jobs", Message::new("a", "")).await?;
    /// q.publish("jobs", Message::new("b", "")).await?;
    /// let ds = q.receive("jobs", 2, Duration::from_secs(1)).await?;
    /// // Settle a batch in one call: ack one, release the other (one result per operation).
    /// let results = q
    ///     .settle("jobs", vec![Settle::Ack(ds[0].lease), Settle::Release(ds[1].lease)])
    ///     .await?;
    /// assert!(results.iter().all(|r| r.is_ok()));
    /// let s = q.stats("jobs").await?;
    /// assert_eq!((s.acked, s.ready_total()), (1, 1));
    /// # Ok(())
    /// # }
    /// ```
    async fn settle(&self, queue: &str, ops: Vec<Settle>) -> Result<Vec<Result<()>>>;

    /// Push a lease's deadline to `now + visibility`.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::LeaseLost`] when the lease is no longer held (settled, expired or
    ///   handed to another consumer); nothing changed.
    /// - [`crate::ErrorKind::InvalidInput`] for an invalid queue name, or a backend failure
    ///   (see [`Queue`]).
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have pushed the deadline. The token does not change,
    /// so the lease already held still settles the delivery while the lease lasts; only its
    /// `deadline_ms` may be out of date.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueConfig, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.configure("video", QueueConfig::default().with_visibility_timeout(Duration::from_millis(100)))?;
    /// q.publish("video", Message::new("transcode", "")).await?;
    /// let d = q.receive_one("video", Duration::from_secs(1)).await?.expect("a delivery");
    /// // Long work: keep the lease alive, then settle with the lease `extend` returned.
    /// let lease = q.extend("video", &d.lease, Duration::from_secs(30)).await?;
    /// assert!(lease.deadline_ms > d.lease.deadline_ms);
    /// tokio::time::sleep(Duration::from_millis(150)).await;
    /// assert!(q.receive_one("video", Duration::ZERO).await?.is_none(), "still ours");
    /// q.ack("video", &lease).await?;
    /// # Ok(())
    /// # }
    /// ```
    async fn extend(&self, queue: &str, lease: &Lease, visibility: Duration) -> Result<Lease>;

    /// A consistent snapshot of the queue's state and counters.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for an invalid queue name, or a backend failure (see
    /// [`Queue`]). An unknown queue is not an error: its stats are zeros.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads (like any call, it may first process expired leases and due
    /// messages, as the next call would).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, Priority, QueueExt};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.publish("jobs", Message::new("k", "").with_priority(Priority::High)).await?;
    /// q.publish("jobs", Message::new("k", "")).await?;
    /// let s = q.stats("jobs").await?;
    /// assert_eq!((s.ready_at(Priority::High), s.ready_at(Priority::Normal)), (1, 1));
    /// assert_eq!((s.published, s.in_flight, s.dead), (2, 0, 0));
    /// // An unknown queue is empty, not an error.
    /// assert_eq!(q.stats("nothing-here").await?.stored(), 0);
    /// # Ok(())
    /// # }
    /// ```
    async fn stats(&self, queue: &str) -> Result<QueueStats>;

    /// Dead letters, oldest first.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for an invalid queue name, or a backend failure (see
    /// [`Queue`]). A page past the end is empty, not an error.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{FailureMode, Message, Page, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// for i in 0..3 {
    ///     q.publish("jobs", Message::new("k", format!("{i}"))).await?;
    ///     let d = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("a delivery");
    ///     q.fail("jobs", &d, "bad input", FailureMode::Permanent).await?;
    /// }
    /// // Paged, oldest first.
    /// let page = q.dead_letters("jobs", Page { offset: 1, limit: 10 }).await?;
    /// assert_eq!(page.len(), 2);
    /// assert_eq!(&page[0].message.payload[..], b"1");
    /// assert_eq!(page[0].error, "bad input");
    /// # Ok(())
    /// # }
    /// ```
    async fn dead_letters(&self, queue: &str, page: Page) -> Result<Vec<DeadLetter>>;

    /// One dead letter by id.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::NotFound`] when there is no such dead letter.
    /// - [`crate::ErrorKind::InvalidInput`] for an invalid queue name, or a backend failure
    ///   (see [`Queue`]).
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{ErrorKind, FailureMode, Message, MessageId, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// let id = q.publish("jobs", Message::new("k", "payload")).await?;
    /// let d = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("a delivery");
    /// q.fail("jobs", &d, "bad input", FailureMode::Permanent).await?;
    /// let dead = q.dead_letter("jobs", id).await?;
    /// assert_eq!((dead.attempts, dead.error.as_str()), (1, "bad input"));
    /// let e = q.dead_letter("jobs", MessageId::new()).await.unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::NotFound);
    /// # Ok(())
    /// # }
    /// ```
    async fn dead_letter(&self, queue: &str, id: MessageId) -> Result<DeadLetter>;

    /// Move dead letters back to ready with attempts reset and ids kept. Returns how many.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for an invalid queue name, or a backend failure (see
    /// [`Queue`]), after which part of the selection may have been requeued. Unknown ids are
    /// ignored, not errors.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have requeued the selection (Redis moves dead
    /// letters in script calls of up to 1,000, so a part of it may have moved). Each dead
    /// letter is either requeued or still dead, never both and never lost.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{FailureMode, Message, QueueExt, Selection};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// let id = q.publish("jobs", Message::new("k", "")).await?;
    /// let d = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("a delivery");
    /// q.fail("jobs", &d, "upstream down", FailureMode::Permanent).await?;
    /// // The cause is fixed: put it back. Attempts start over, the id is kept (Q6).
    /// assert_eq!(q.requeue_dead("jobs", Selection::Ids(vec![id])).await?, 1);
    /// let again = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("requeued");
    /// assert_eq!((again.message.id, again.message.attempt), (id, 1));
    /// # Ok(())
    /// # }
    /// ```
    async fn requeue_dead(&self, queue: &str, which: Selection) -> Result<u64>;

    /// As [`Queue::requeue_dead`], and each requeued message gets `priority`: it goes to the
    /// back of that level's line and keeps that priority if it is retried later (Q8).
    ///
    /// # Errors
    /// As [`Queue::requeue_dead`].
    ///
    /// # Cancel safety
    /// As [`Queue::requeue_dead`]: each dead letter is either requeued at `priority` or still
    /// dead, never both and never lost.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{FailureMode, Message, Priority, QueueExt, Selection};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// let report = Message::new("report", "").with_priority(Priority::Low);
    /// let id = q.publish("jobs", report).await?;
    /// let d = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("a delivery");
    /// q.fail("jobs", &d, "upstream down", FailureMode::Permanent).await?;
    /// q.publish("jobs", Message::new("routine", "")).await?;
    /// // The customer is waiting: put it back ahead of the Normal backlog.
    /// let n = q.requeue_dead_at("jobs", Selection::Ids(vec![id]), Priority::High).await?;
    /// assert_eq!(n, 1);
    /// let next = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("requeued");
    /// assert_eq!((next.message.id, next.message.priority), (id, Priority::High));
    /// # Ok(())
    /// # }
    /// ```
    async fn requeue_dead_at(
        &self,
        queue: &str,
        which: Selection,
        priority: crate::Priority,
    ) -> Result<u64>;

    /// Delete dead letters. Returns how many.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for an invalid queue name, or a backend failure (see
    /// [`Queue`]), after which part of the selection may have been deleted. Unknown ids are
    /// ignored, not errors.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have deleted the selection (on Redis, possibly a
    /// part of it: it purges in script calls of up to 1,000).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{FailureMode, Message, QueueExt, Selection};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.publish("jobs", Message::new("k", "")).await?;
    /// let d = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("a delivery");
    /// q.fail("jobs", &d, "garbage", FailureMode::Permanent).await?;
    /// assert_eq!(q.purge_dead("jobs", Selection::All).await?, 1);
    /// assert_eq!(q.stats("jobs").await?.dead, 0);
    /// # Ok(())
    /// # }
    /// ```
    async fn purge_dead(&self, queue: &str, which: Selection) -> Result<u64>;

    /// The queues this backend stores (Q13): every queue a message was ever published to, by
    /// any process sharing the backend, sorted by name, each once. An emptied queue stays
    /// listed (its counters remain); a queue only configured, read or received from is not
    /// listed. A queue may also be listed after a publish to it that failed.
    ///
    /// # Errors
    /// A backend failure (see [`Queue`]).
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing (RabbitMQ and NATS append a sync record to their
    /// registry log, which holds no state).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.queue().publish("mail", Message::new("k", "")).await?;
    /// courier.queue().publish("ai", Message::new("k", "")).await?;
    /// // Sorted, each once (Q13).
    /// assert_eq!(courier.queue().list_queues().await?, ["ai", "mail"]);
    /// # Ok(())
    /// # }
    /// ```
    async fn list_queues(&self) -> Result<Vec<String>>;

    /// Pause `queue` (Q14), for every process: publishes are still accepted, receives deliver
    /// nothing (they wait out their `wait` and return empty), leases already granted stay
    /// valid (they may be acked, extended or expire as usual). Stats report `paused`. Pausing
    /// a paused queue, or one nothing was published to yet, is allowed.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for an invalid queue name, or a backend failure.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have paused the queue; pausing again is safe.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.pause("mail").await?;
    /// q.publish("mail", Message::new("send", "")).await?; // still accepted
    /// assert!(q.receive("mail", 10, Duration::from_millis(20)).await?.is_empty());
    /// assert!(q.stats("mail").await?.paused);
    /// q.resume("mail").await?;
    /// assert_eq!(q.receive("mail", 10, Duration::from_secs(1)).await?.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    async fn pause(&self, queue: &str) -> Result<()>;

    /// Resume a paused `queue` (Q14): receives deliver again, and receivers waiting on it are
    /// woken at once. Resuming a queue that is not paused is allowed.
    ///
    /// # Errors
    /// As [`Queue::pause`].
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have resumed the queue; resuming again is safe.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// let courier = courier::connect("memory://").await?;
    /// courier.queue().pause("mail").await?;
    /// courier.queue().resume("mail").await?;
    /// assert!(!courier.queue().stats("mail").await?.paused);
    /// # Ok(())
    /// # }
    /// ```
    async fn resume(&self, queue: &str) -> Result<()>;

    /// Set or clear `queue`'s rate limit (Q15), for every process: at most `limit.max`
    /// deliveries in each window of `limit.per`, counted by the backend across every worker
    /// and process. Deliveries beyond it wait for the next window (a receive returns what the
    /// window still allows, or waits); nothing fails. One receive takes at most
    /// [`RateLimit::grant_cap`] of a window. `None` removes the limit.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for an invalid queue name or limit
    /// ([`RateLimit::validate`]), or a backend failure.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have set the limit; setting it again is safe.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt, RateLimit};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.set_rate_limit("sms", Some(RateLimit::new(2, Duration::from_secs(3600)))).await?;
    /// for _ in 0..3 {
    ///     q.publish("sms", Message::new("send", "")).await?;
    /// }
    /// // Two this hour; the third waits for the next window.
    /// assert_eq!(q.receive("sms", 10, Duration::from_millis(20)).await?.len(), 1); // a quarter, at least one
    /// assert_eq!(q.receive("sms", 10, Duration::from_millis(20)).await?.len(), 1);
    /// assert!(q.receive("sms", 10, Duration::from_millis(20)).await?.is_empty());
    /// assert_eq!(q.stats("sms").await?.rate_limit, Some(RateLimit::new(2, Duration::from_secs(3600))));
    /// # Ok(())
    /// # }
    /// ```
    async fn set_rate_limit(&self, queue: &str, limit: Option<RateLimit>) -> Result<()>;

    /// Move a queued message to another priority (Q16), atomically. A ready message goes to
    /// the back of the new level's line; a delayed one keeps its due time and joins the back
    /// of the new level when due; a leased one keeps its lease, and the new priority applies
    /// if it is retried. Every stored copy of `id` moves.
    ///
    /// # Errors
    /// [`crate::ErrorKind::NotFound`] when no ready, delayed or leased message has `id` (a dead
    /// letter's priority is set when it is requeued: [`Queue::requeue_dead_at`]);
    /// [`crate::ErrorKind::InvalidInput`] for an invalid queue name; or a backend failure.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have moved the message; moving it again is safe
    /// (it goes to the back of the level again).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, Priority, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.publish("jobs", Message::new("report", "a")).await?;
    /// let urgent = q.publish("jobs", Message::new("report", "b")).await?;
    /// q.reprioritise("jobs", urgent, Priority::Critical).await?;
    /// let d = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("a delivery");
    /// assert_eq!((d.message.id, d.message.priority), (urgent, Priority::Critical));
    /// # Ok(())
    /// # }
    /// ```
    async fn reprioritise(&self, queue: &str, id: MessageId, priority: Priority) -> Result<()>;
}

/// Conveniences for every [`Queue`], including `dyn Queue`.
#[async_trait]
pub trait QueueExt: Queue {
    /// Publish one message.
    ///
    /// # Errors
    /// As [`Queue::publish_batch`] for a batch of one: [`crate::ErrorKind::InvalidInput`],
    /// [`crate::ErrorKind::PayloadTooLarge`] or a backend failure.
    /// [`crate::ErrorKind::Backend`] if the backend returns no id.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have published the message.
    ///
    /// For a message whose deduplication key is taken this is the id of the message holding
    /// the key (nothing is stored); [`QueueExt::publish_unique`] tells the two apart.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{ErrorKind, Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// let id = q.publish("mail", Message::new("welcome", "ann@example.com")).await?;
    /// let d = q.receive_one("mail", Duration::from_secs(1)).await?.expect("a delivery");
    /// assert_eq!(d.message.id, id);
    /// // Bad input is refused before anything is stored (Q10).
    /// let e = q.publish("not a name", Message::new("k", "")).await.unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::InvalidInput);
    /// # Ok(())
    /// # }
    /// ```
    async fn publish(&self, queue: &str, message: Message) -> Result<MessageId> {
        Ok(self.publish_unique(queue, message).await?.id())
    }

    /// Publish one message and say whether it was stored or was a duplicate of a message
    /// holding its deduplication key (Q11).
    ///
    /// # Errors
    /// As [`QueueExt::publish`].
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have published the message.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, Published, QueueExt};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// let m = || Message::new("charge", "o-17").with_dedup_key("charge:o-17");
    /// let first = q.publish_unique("billing", m()).await?;
    /// let again = q.publish_unique("billing", m()).await?;
    /// assert!(!first.is_duplicate());
    /// assert!(again.is_duplicate());
    /// assert_eq!(again.id(), first.id());
    /// # Ok(())
    /// # }
    /// ```
    async fn publish_unique(&self, queue: &str, message: Message) -> Result<Published> {
        let mut out = self.publish_batch(queue, vec![message]).await?;
        out.pop().ok_or_else(|| {
            Error::new(crate::ErrorKind::Backend, "publish returned no outcome")
                .with_backend(self.backend_name())
        })
    }

    /// Publish `value` as JSON under `kind`.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] when `value` cannot be encoded as JSON (nothing is
    /// sent); otherwise as [`QueueExt::publish`].
    ///
    /// # Cancel safety
    /// As [`QueueExt::publish`]: it may or may not have published.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::QueueExt;
    /// use std::time::Duration;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    /// struct Welcome { email: String }
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.publish_json("mail", "welcome", &Welcome { email: "ann@example.com".into() }).await?;
    /// let d = q.receive_one("mail", Duration::from_secs(1)).await?.expect("a delivery");
    /// assert_eq!(d.message.kind, "welcome");
    /// assert_eq!(d.message.decode::<Welcome>()?.email, "ann@example.com");
    /// # Ok(())
    /// # }
    /// ```
    async fn publish_json<T: Serialize + Sync + ?Sized>(
        &self,
        queue: &str,
        kind: &str,
        value: &T,
    ) -> Result<MessageId> {
        self.publish(queue, Message::json(kind, value)?).await
    }

    /// Publish a message that becomes deliverable after `delay`.
    ///
    /// # Errors
    /// As [`QueueExt::publish`].
    ///
    /// # Cancel safety
    /// As [`QueueExt::publish`]: it may or may not have published.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.publish_in("mail", Message::new("follow_up", ""), Duration::from_millis(300)).await?;
    /// assert!(q.receive_one("mail", Duration::ZERO).await?.is_none(), "not yet (Q3)");
    /// assert!(q.receive_one("mail", Duration::from_secs(2)).await?.is_some());
    /// # Ok(())
    /// # }
    /// ```
    async fn publish_in(
        &self,
        queue: &str,
        message: Message,
        delay: Duration,
    ) -> Result<MessageId> {
        self.publish(queue, message.with_delay(delay)).await
    }

    /// Receive at most one message, waiting up to `wait`.
    ///
    /// # Errors
    /// As [`Queue::receive`]. `Ok(None)` on timeout.
    ///
    /// # Cancel safety
    /// As [`Queue::receive`]: dropping the future never loses a message.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// // Nothing there: `None` once `wait` has passed.
    /// assert!(q.receive_one("mail", Duration::from_millis(10)).await?.is_none());
    /// q.publish("mail", Message::new("welcome", "")).await?;
    /// let d = q.receive_one("mail", Duration::from_secs(1)).await?.expect("a delivery");
    /// q.ack("mail", &d.lease).await?;
    /// # Ok(())
    /// # }
    /// ```
    async fn receive_one(&self, queue: &str, wait: Duration) -> Result<Option<Delivery>> {
        Ok(self.receive(queue, 1, wait).await?.pop())
    }

    /// Settle one operation.
    ///
    /// # Errors
    /// The operation's own outcome ([`crate::ErrorKind::LeaseLost`] when the lease is no longer
    /// held; nothing changed), or the outer errors of [`Queue::settle`].
    /// [`crate::ErrorKind::Backend`] if the backend returns no result.
    ///
    /// # Cancel safety
    /// As [`Queue::settle`]: it may or may not have been applied; settling again is safe.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt, Settle};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.publish("jobs", Message::new("k", "")).await?;
    /// let d = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("a delivery");
    /// // Retry in 10 ms, recording why; the policy decision is yours here (`nack` takes the queue's).
    /// q.settle_one("jobs", Settle::Retry { lease: d.lease, delay: Duration::from_millis(10), error: "busy".into() })
    ///     .await?;
    /// let again = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("retried");
    /// assert_eq!(again.message.attempt, 2);
    /// # Ok(())
    /// # }
    /// ```
    async fn settle_one(&self, queue: &str, op: Settle) -> Result<()> {
        self.settle(queue, vec![op])
            .await?
            .pop()
            .unwrap_or_else(|| {
                Err(
                    Error::new(crate::ErrorKind::Backend, "settle returned no result")
                        .with_backend(self.backend_name()),
                )
            })
    }

    /// Acknowledge: remove the message for good.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::LeaseLost`] when the lease is no longer held (a double ack
    ///   included); nothing changed.
    /// - [`crate::ErrorKind::InvalidInput`] for an invalid queue name, or a backend failure
    ///   (see [`Queue`]).
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have acked. Acking again is safe: if the first ack
    /// landed, the second gets [`crate::ErrorKind::LeaseLost`] and changes nothing (the same
    /// answer as for a lease that expired meanwhile).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.publish("mail", Message::new("welcome", "")).await?;
    /// let d = q.receive_one("mail", Duration::from_secs(1)).await?.expect("a delivery");
    /// q.ack("mail", &d.lease).await?;
    /// // A second ack with the same lease changes nothing and says so.
    /// assert!(q.ack("mail", &d.lease).await.unwrap_err().is_lease_lost());
    /// assert_eq!(q.stats("mail").await?.acked, 1);
    /// # Ok(())
    /// # }
    /// ```
    async fn ack(&self, queue: &str, lease: &Lease) -> Result<()> {
        self.settle_one(queue, Settle::Ack(*lease)).await
    }

    /// Report a failed attempt; the queue's retry policy decides between a retry after
    /// backoff and dead letters. Returns what was decided.
    ///
    /// The policy is this handle's configuration of `queue` ([`Queue::queue_config`]).
    ///
    /// # Errors
    /// As [`QueueExt::ack`]: [`crate::ErrorKind::LeaseLost`] when the lease is no longer held
    /// (nothing changed), [`crate::ErrorKind::InvalidInput`] for an invalid queue name, or a
    /// backend failure.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have applied the decision. Repeating it is safe: if
    /// the first call landed, the second gets [`crate::ErrorKind::LeaseLost`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{FailureAction, Message, QueueConfig, QueueExt, RetryPolicy};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// let retry = RetryPolicy::exact(2, Duration::from_millis(10), 2.0, Duration::from_secs(1));
    /// q.configure("jobs", QueueConfig::default().with_retry(retry))?;
    /// q.publish("jobs", Message::new("k", "")).await?;
    /// let d = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("a delivery");
    /// // The queue's policy decides (Q5): attempt 1 of 2 is retried after the backoff ...
    /// assert_eq!(q.nack("jobs", &d, "busy").await?, FailureAction::Retry(Duration::from_millis(10)));
    /// let d = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("retried");
    /// // ... and the last one goes to the dead letters (Q6).
    /// assert_eq!(q.nack("jobs", &d, "still busy").await?, FailureAction::Dead);
    /// assert_eq!(q.stats("jobs").await?.dead, 1);
    /// # Ok(())
    /// # }
    /// ```
    async fn nack(&self, queue: &str, delivery: &Delivery, error: &str) -> Result<FailureAction> {
        self.fail(queue, delivery, error, FailureMode::Backoff)
            .await
    }

    /// Report a failed attempt with an explicit mode (retry after a given delay, or permanent).
    ///
    /// # Errors
    /// As [`QueueExt::nack`].
    ///
    /// # Cancel safety
    /// As [`QueueExt::nack`]: it may or may not have been applied; repeating it is safe.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{FailureAction, FailureMode, Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.publish("jobs", Message::new("k", "")).await?;
    /// let d = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("a delivery");
    /// // The upstream said "retry in 50 ms": that delay, not the policy's backoff.
    /// let action = q.fail("jobs", &d, "429", FailureMode::RetryAfter(Duration::from_millis(50))).await?;
    /// assert_eq!(action, FailureAction::Retry(Duration::from_millis(50)));
    /// let d = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("retried");
    /// // No retry can fix this one.
    /// assert_eq!(q.fail("jobs", &d, "malformed", FailureMode::Permanent).await?, FailureAction::Dead);
    /// # Ok(())
    /// # }
    /// ```
    async fn fail(
        &self,
        queue: &str,
        delivery: &Delivery,
        error: &str,
        mode: FailureMode,
    ) -> Result<FailureAction> {
        let config = self.queue_config(queue);
        let action = config.retry.decide(
            delivery.lease.attempt,
            delivery.message.max_attempts,
            mode,
            &mut rand::rng(),
        );
        let op = match action {
            FailureAction::Retry(delay) => Settle::Retry {
                lease: delivery.lease,
                delay,
                error: error.to_string(),
            },
            FailureAction::Dead => Settle::Bury {
                lease: delivery.lease,
                error: error.to_string(),
            },
        };
        self.settle_one(queue, op).await?;
        Ok(action)
    }

    /// Give a delivery back without counting the attempt.
    ///
    /// # Errors
    /// As [`QueueExt::ack`]: [`crate::ErrorKind::LeaseLost`] when the lease is no longer held
    /// (nothing changed), [`crate::ErrorKind::InvalidInput`] for an invalid queue name, or a
    /// backend failure.
    ///
    /// # Cancel safety
    /// Dropping the future may or may not have released the delivery; if not, it comes back
    /// when its lease expires (counting the attempt). Releasing again is safe.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.publish("jobs", Message::new("k", "")).await?;
    /// let d = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("a delivery");
    /// // Shutting down: give it back unhandled; ready at once and the attempt not counted.
    /// q.release("jobs", &d.lease).await?;
    /// let again = q.receive_one("jobs", Duration::ZERO).await?.expect("ready again");
    /// assert_eq!(again.message.attempt, 1);
    /// # Ok(())
    /// # }
    /// ```
    async fn release(&self, queue: &str, lease: &Lease) -> Result<()> {
        self.settle_one(queue, Settle::Release(*lease)).await
    }

    /// All dead letters (oldest first), up to `limit`.
    ///
    /// # Errors
    /// As [`Queue::dead_letters`].
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{FailureMode, Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.publish("jobs", Message::new("k", "")).await?;
    /// let d = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("a delivery");
    /// q.fail("jobs", &d, "bad input", FailureMode::Permanent).await?;
    /// let dead = q.dead_letters_all("jobs", 100).await?;
    /// assert_eq!(dead.len(), 1);
    /// assert_eq!(dead[0].message.kind, "k");
    /// # Ok(())
    /// # }
    /// ```
    async fn dead_letters_all(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        self.dead_letters(queue, Page::first(limit)).await
    }
}

impl<Q: Queue + ?Sized> QueueExt for Q {}

// Compile-time proof that the trait stays dyn-compatible.
const _: Option<&dyn Queue> = None;
