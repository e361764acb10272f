//! The message envelope (DESIGN §2): one shape for every abstraction and backend.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

/// A unique, time-ordered message id (UUIDv7: 48 bits of milliseconds, then randomness).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(uuid::Uuid);

impl MessageId {
    /// A fresh id; ids made later in the same process sort after earlier ones.
    pub fn new() -> Self {
        MessageId(uuid::Uuid::now_v7())
    }

    /// The nil id, used to mean "assign one at publish".
    pub const fn nil() -> Self {
        MessageId(uuid::Uuid::nil())
    }

    /// Whether this is the nil id.
    pub fn is_nil(&self) -> bool {
        self.0.is_nil()
    }

    /// The 16 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Build from 16 raw bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        MessageId(uuid::Uuid::from_bytes(bytes))
    }

    /// The id as a `u128` (big-endian value of the bytes).
    pub fn as_u128(&self) -> u128 {
        self.0.as_u128()
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.as_hyphenated(), f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0.as_hyphenated())
    }
}

impl FromStr for MessageId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        uuid::Uuid::parse_str(s)
            .map(MessageId)
            .map_err(|e| Error::invalid(format!("invalid message id {s:?}")).with_source(e))
    }
}

/// Delivery priority. Strict: a lower level is never delivered while a higher one is ready.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Priority {
    /// Delivered before everything else (signaling, control traffic).
    Critical = 0,
    /// User-facing actions.
    High = 1,
    /// The default.
    #[default]
    Normal = 2,
    /// Batch work that may wait.
    Low = 3,
}

impl Priority {
    /// All levels, highest first.
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    /// 0 for Critical … 3 for Low.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The level with this index (0 = Critical).
    pub fn from_index(i: usize) -> Option<Priority> {
        Self::ALL.get(i).copied()
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "critical" => Ok(Priority::Critical),
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            _ => Err(Error::invalid(format!(
                "unknown priority {s:?} (expected critical, high, normal or low)"
            ))),
        }
    }
}

/// Header map: ordered so the wire encoding is deterministic.
pub type Headers = BTreeMap<String, String>;

/// Standard header names.
pub mod headers {
    /// The service that published the message.
    pub const SOURCE: &str = "source";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state, vendor data that travels with `traceparent`.
    pub const TRACESTATE: &str = "tracestate";
    /// Correlation id tying a request to its effects.
    pub const CORRELATION_ID: &str = "correlation_id";
    /// This message's handler timeout in milliseconds (set by
    /// [`super::Message::with_handler_timeout`]); wins over the queue's `handler_timeout`.
    pub const HANDLER_TIMEOUT_MS: &str = "courier-handler-timeout-ms";
}

/// The envelope every backend stores and delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// Unique, time-ordered id; assigned at construction (nil means "assign at publish").
    pub id: MessageId,
    /// Routing key of the handler, e.g. `"speech_recognition"`.
    pub kind: String,
    /// Opaque bytes.
    pub payload: Bytes,
    /// Delivery priority; default [`Priority::Normal`].
    pub priority: Priority,
    /// String headers: `source`, `traceparent`, correlation id, user fields.
    pub headers: Headers,
    /// Publish time, milliseconds since the Unix epoch (set at publish when 0).
    pub created_at: u64,
    /// 1 on the first delivery, +1 on each redelivery. Set by the backend; 0 before delivery.
    pub attempt: u32,
    /// Per-message override of the queue's `max_attempts`.
    pub max_attempts: Option<u32>,
    /// Relative delay, resolved into [`Message::not_before`] at publish.
    pub delay: Option<Duration>,
    /// Not deliverable before this instant (ms since the epoch).
    pub not_before: Option<u64>,
    /// Deduplication key (Q11): while a message with the same key in the same queue is live
    /// (or within the queue's `dedup_window`), publishing this one stores nothing and reports
    /// the existing message as a duplicate ([`crate::Published::Duplicate`]).
    pub dedup_key: Option<String>,
    /// Relative time to live, resolved into [`Message::expires_at`] at publish.
    pub ttl: Option<Duration>,
    /// Not delivered from this instant on (ms since the epoch): a message not yet leased by
    /// then is expired instead (dead-lettered with the reason `"expired"`, or dropped when the
    /// queue says so) and counted in `QueueStats::expired`.
    pub expires_at: Option<u64>,
}

impl Message {
    /// A message of `kind` carrying `payload`, with a fresh id and default priority.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, Priority};
    ///
    /// let m = Message::new("resize", "photo-17.jpg");
    /// assert_eq!(m.kind, "resize");
    /// assert_eq!(&m.payload[..], b"photo-17.jpg");
    /// assert_eq!(m.priority, Priority::Normal);
    /// assert!(!m.id.is_nil());
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(kind: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Message {
            id: MessageId::new(),
            kind: kind.into(),
            payload: payload.into(),
            priority: Priority::Normal,
            headers: Headers::new(),
            created_at: 0,
            attempt: 0,
            max_attempts: None,
            delay: None,
            not_before: None,
            dedup_key: None,
            ttl: None,
            expires_at: None,
        }
    }

    /// A message whose payload is `value` encoded as JSON.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] if `value` cannot be serialised.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    ///
    /// #[derive(serde::Serialize)]
    /// struct Resize { file: &'static str, width: u32 }
    ///
    /// let m = Message::json("resize", &Resize { file: "a.jpg", width: 320 })?;
    /// assert_eq!(&m.payload[..], br#"{"file":"a.jpg","width":320}"#);
    /// # Ok(())
    /// # }
    /// ```
    pub fn json<T: Serialize + ?Sized>(kind: impl Into<String>, value: &T) -> Result<Self> {
        let payload = serde_json::to_vec(value)
            .map_err(|e| Error::invalid("payload cannot be encoded as JSON").with_source(e))?;
        Ok(Message::new(kind, payload))
    }

    /// Decode the payload from JSON.
    ///
    /// # Errors
    /// [`crate::ErrorKind::Decode`] naming the kind and the serde error.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{ErrorKind, Message};
    ///
    /// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    /// struct Resize { file: String, width: u32 }
    ///
    /// let m = Message::json("resize", &Resize { file: "a.jpg".into(), width: 320 })?;
    /// assert_eq!(m.decode::<Resize>()?, Resize { file: "a.jpg".into(), width: 320 });
    /// // A payload of another shape is a decode error (a handler's `?` makes it permanent).
    /// assert_eq!(m.decode::<u32>().unwrap_err().kind(), ErrorKind::Decode);
    /// # Ok(())
    /// # }
    /// ```
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.payload).map_err(|e| {
            Error::decode(format!(
                "payload of {:?} ({}) is not the expected JSON",
                self.kind, self.id
            ))
            .with_source(e)
        })
    }

    /// Set the priority.
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
    /// q.publish("jobs", Message::new("report", "later").with_priority(Priority::Low)).await?;
    /// q.publish("jobs", Message::new("page", "now").with_priority(Priority::Critical)).await?;
    /// // Strict priority (Q2): the critical message comes first although it was published last.
    /// let d = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("a delivery");
    /// assert_eq!(d.message.kind, "page");
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Add a header.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, headers};
    ///
    /// let m = Message::new("charge", "o-17").with_header(headers::CORRELATION_ID, "req-9");
    /// assert_eq!(m.header(headers::CORRELATION_ID), Some("req-9"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// Deliver no sooner than `delay` after publish.
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
    /// q.publish("mail", Message::new("reminder", "").with_delay(Duration::from_millis(300))).await?;
    /// assert_eq!(q.stats("mail").await?.delayed, 1);
    /// assert!(q.receive_one("mail", Duration::ZERO).await?.is_none());
    /// assert!(q.receive_one("mail", Duration::from_secs(2)).await?.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Deliver no sooner than `at_ms` (ms since the epoch).
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
    /// let in_an_hour = q.clock().now_ms() + 3_600_000;
    /// q.publish("mail", Message::new("reminder", "").with_not_before(in_an_hour)).await?;
    /// assert_eq!(q.stats("mail").await?.delayed, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_not_before(mut self, at_ms: u64) -> Self {
        self.not_before = Some(at_ms);
        self
    }

    /// Override the queue's `max_attempts` for this message.
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
    /// // One try only, whatever the queue's retry policy says.
    /// q.publish("jobs", Message::new("once", "").with_max_attempts(1)).await?;
    /// let d = q.receive_one("jobs", Duration::from_secs(1)).await?.expect("a delivery");
    /// q.nack("jobs", &d, "failed").await?;
    /// assert_eq!(q.stats("jobs").await?.dead, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }

    /// Give the message a deduplication key (Q11): 1–200 bytes, no control characters.
    ///
    /// While a message with the same key in the same queue is live (ready, delayed or in
    /// flight), and for the queue's `dedup_window` after it was accepted when one is set,
    /// publishing this message stores nothing and reports the existing message's id as
    /// [`crate::Published::Duplicate`]. Keys apply to queues only: events and pub/sub messages
    /// ignore them.
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
    /// let a = q.publish("billing", Message::new("charge", "o-17").with_dedup_key("charge:o-17")).await?;
    /// let b = q.publish("billing", Message::new("charge", "o-17").with_dedup_key("charge:o-17")).await?;
    /// assert_eq!(a, b, "the second publish is a duplicate of the first (Q11)");
    /// assert_eq!(q.stats("billing").await?.ready_total(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }

    /// Expire the message `ttl` after publish: if no consumer has leased it by then, it is
    /// never delivered (see [`Message::expires_at`]). Retries do not extend it: a message whose
    /// retry comes due after its expiry expires then. Whole milliseconds, rounded up; a `ttl`
    /// of zero is refused at publish, and so is a delay that ends at or after the expiry.
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
    /// q.publish("signaling", Message::new("ice", "c1").with_ttl(Duration::from_millis(20))).await?;
    /// tokio::time::sleep(Duration::from_millis(40)).await;
    /// // Expired before anyone leased it: never delivered (Q12).
    /// assert!(q.receive_one("signaling", Duration::ZERO).await?.is_none());
    /// assert_eq!(q.stats("signaling").await?.expired, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Expire the message at `at_ms` (ms since the epoch; see [`Message::with_ttl`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    ///
    /// let m = Message::new("offer", "").with_expires_at(1_000);
    /// assert!(!m.is_expired(999));
    /// assert!(m.is_expired(1_000));
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_expires_at(mut self, at_ms: u64) -> Self {
        self.expires_at = Some(at_ms);
        self
    }

    /// Whether the message has expired at `now_ms`: it has an expiry and `now_ms` reached it.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    ///
    /// let m = Message::new("offer", "").with_expires_at(5_000);
    /// assert!(!m.is_expired(4_999) && m.is_expired(5_000));
    /// assert!(!Message::new("offer", "").is_expired(u64::MAX), "no expiry, never expired");
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|at| now_ms >= at)
    }

    /// Let a worker run this message's handler for at most `timeout` (whole milliseconds, at
    /// least 1); it wins over the queue's `handler_timeout`. The limit travels as the header
    /// [`headers::HANDLER_TIMEOUT_MS`], so it holds on every backend and through requeues.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    /// use std::time::Duration;
    ///
    /// let m = Message::new("transcode", "big.mp4").with_handler_timeout(Duration::from_secs(600));
    /// assert_eq!(m.handler_timeout(), Some(Duration::from_secs(600)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_handler_timeout(self, timeout: Duration) -> Self {
        let ms = timeout.as_millis().clamp(1, u64::MAX as u128) as u64;
        self.with_header(headers::HANDLER_TIMEOUT_MS, ms.to_string())
    }

    /// The handler timeout this message carries ([`Message::with_handler_timeout`]), if any.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    /// use std::time::Duration;
    ///
    /// assert_eq!(Message::new("k", "").handler_timeout(), None);
    /// let m = Message::new("k", "").with_handler_timeout(Duration::from_millis(1500));
    /// assert_eq!(m.handler_timeout(), Some(Duration::from_millis(1500)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn handler_timeout(&self) -> Option<Duration> {
        self.header(headers::HANDLER_TIMEOUT_MS)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&ms| ms >= 1)
            .map(Duration::from_millis)
    }

    /// Use a specific id (to tie a message to a record of yours, or in tests).
    ///
    /// This only sets the id: Courier does **not** deduplicate by id. Publishing two messages
    /// with the same id to a queue stores both and delivers both, each with its own payload and
    /// lease, and so does emitting two events with the same id; this holds on every backend.
    /// For "at most one message per business key", use [`Message::with_dedup_key`] (Q11). Dead
    /// letters that share an id are all acted on by [`crate::Selection::Ids`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, MessageId, QueueExt};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let id: MessageId = "0190a0a0-0000-7000-8000-000000000017".parse()?;
    /// let stored = courier.queue().publish("jobs", Message::new("k", "").with_id(id)).await?;
    /// assert_eq!(stored, id);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_id(mut self, id: MessageId) -> Self {
        self.id = id;
        self
    }

    /// A header's value.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    ///
    /// let m = Message::new("k", "").with_header("tenant", "acme");
    /// assert_eq!(m.header("tenant"), Some("acme"));
    /// assert_eq!(m.header("missing"), None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.get(key).map(String::as_str)
    }

    /// Fill in what publish assigns: the id when nil, `created_at` when 0, and resolve the
    /// relative delay into `not_before` against `now_ms`. Backends call this once per message.
    ///
    /// # Examples
    ///
    /// A backend calls this; shown here to make the resolution of relative times visible.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    /// use std::time::Duration;
    ///
    /// let mut m = Message::new("k", "")
    ///     .with_delay(Duration::from_millis(500))
    ///     .with_ttl(Duration::from_secs(10));
    /// m.prepare_for_publish(1_000);
    /// assert_eq!((m.created_at, m.not_before, m.expires_at), (1_000, Some(1_500), Some(11_000)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn prepare_for_publish(&mut self, now_ms: u64) {
        if self.id.is_nil() {
            self.id = MessageId::new();
        }
        if self.created_at == 0 {
            self.created_at = now_ms;
        }
        if let Some(d) = self.delay.take() {
            let due = now_ms.saturating_add(d.as_millis().min(u64::MAX as u128) as u64);
            self.not_before = Some(self.not_before.map_or(due, |nb| nb.max(due)));
        }
        if let Some(t) = self.ttl.take() {
            let at = now_ms.saturating_add(crate::clock::ms_ceil(t).max(1));
            self.expires_at = Some(self.expires_at.map_or(at, |e| e.min(at)));
        }
        self.attempt = 0;
    }

    /// When the message becomes deliverable (ms), or `None` when ready at once.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::Message;
    ///
    /// assert_eq!(Message::new("k", "").due_at(), None);
    /// assert_eq!(Message::new("k", "").with_not_before(9_000).due_at(), Some(9_000));
    /// # Ok(())
    /// # }
    /// ```
    pub fn due_at(&self) -> Option<u64> {
        self.not_before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_time_ordered_and_unique() {
        let ids: Vec<MessageId> = (0..10_000).map(|_| MessageId::new()).collect();
        for w in ids.windows(2) {
            assert!(w[0] < w[1], "{} !< {}", w[0], w[1]);
        }
    }

    #[test]
    fn id_parses_back() {
        let id = MessageId::new();
        let parsed: MessageId = id.to_string().parse().expect("parse");
        assert_eq!(id, parsed);
        assert!("nope".parse::<MessageId>().is_err());
    }

    #[test]
    fn json_round_trip() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Task {
            user: String,
            n: u32,
        }
        let m = Message::json(
            "t",
            &Task {
                user: "ann".into(),
                n: 3,
            },
        )
        .expect("json");
        let back: Task = m.decode().expect("decode");
        assert_eq!(
            back,
            Task {
                user: "ann".into(),
                n: 3
            }
        );
        let err = Message::new("t", "not json").decode::<Task>().unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Decode);
    }

    #[test]
    fn priority_order_and_parse() {
        assert!(Priority::Critical < Priority::High);
        assert!(Priority::Normal < Priority::Low);
        assert_eq!("HIGH".parse::<Priority>().expect("p"), Priority::High);
        assert!("urgent".parse::<Priority>().is_err());
        assert_eq!(Priority::from_index(3), Some(Priority::Low));
    }

    #[test]
    fn publish_resolves_delay() {
        let mut m = Message::new("k", "").with_delay(Duration::from_millis(250));
        m.prepare_for_publish(1_000);
        assert_eq!(m.not_before, Some(1_250));
        assert_eq!(m.created_at, 1_000);
        assert!(m.delay.is_none());
    }
}
