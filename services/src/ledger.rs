//! The delivery ledger: every task run, event delivery, pub/sub relay and local-bus delivery
//! is recorded here, with who sent it, who got it and how it went. The demo prints it as a
//! timeline and checks it against the expectation table.
//!
//! In one process the services and the scenario share one ledger. Across processes each
//! service also emits its records to an audit topic (`--audit`), which the observer reads
//! back into its own ledger.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use courier::{Courier, EventBusExt, Message};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// How a message travelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// A task through a service queue (at least once, one consumer).
    Task,
    /// A domain event through the event bus to a consumer group (at least once, every group).
    Event,
    /// A live pub/sub relay (at most once).
    Signal,
    /// A service-internal event on its in-process bus.
    Local,
}

impl Channel {
    /// Lowercase name (`task`, `event`, `signal`, `local`).
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Task => "task",
            Channel::Event => "event",
            Channel::Signal => "signal",
            Channel::Local => "local",
        }
    }

    fn arrow(self) -> &'static str {
        match self {
            Channel::Task => "-task->",
            Channel::Event => "=event=>",
            Channel::Signal => "~relay~>",
            Channel::Local => ".local.>",
        }
    }
}

/// How a delivery ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "status", content = "error")]
pub enum Outcome {
    /// Handled.
    Ok,
    /// Failed; another attempt follows.
    Retry(String),
    /// Failed for the last time: the message is a dead letter now.
    Dead(String),
    /// Never (or no more) delivered: its expiry passed before a worker leased it (Q12). The
    /// queue reports it (stats `expired`, a dead letter with the reason "expired"); no handler
    /// ran, so the scenario records it from there.
    Expired(String),
}

/// One record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When it was handled, ms since the epoch.
    pub at_ms: u64,
    /// How it travelled.
    pub channel: Channel,
    /// Who sent it (`client`, a service name, `media/api`, …).
    pub from: String,
    /// Task kind, topic, or relay kind.
    pub name: String,
    /// Who handled it (a service, `client:bob`, `media/recorder`, `observer`).
    pub to: String,
    /// Delivery number (1-based).
    pub attempt: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// What the handler did, in a few words.
    pub note: String,
}

impl Entry {
    /// A record stamped now.
    pub fn now(
        channel: Channel,
        from: impl Into<String>,
        name: impl Into<String>,
        to: impl Into<String>,
        attempt: u32,
        outcome: Outcome,
        note: impl Into<String>,
    ) -> Entry {
        Entry {
            at_ms: now_ms(),
            channel,
            from: from.into(),
            name: name.into(),
            to: to.into(),
            attempt,
            outcome,
            note: note.into(),
        }
    }

    /// Whether the delivery succeeded.
    pub fn is_ok(&self) -> bool {
        self.outcome == Outcome::Ok
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Key of a count: channel, name, recipient.
pub type Key = (Channel, String, String);

struct Inner {
    origin_ms: u64,
    entries: Mutex<Vec<Entry>>,
    changed: watch::Sender<u64>,
    live: bool,
    retain: bool,
    audit: Mutex<Option<(Courier, String)>>,
}

/// The shared ledger. Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("entries", &self.inner.entries.lock().len())
            .finish_non_exhaustive()
    }
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new(false)
    }
}

impl Ledger {
    /// An empty ledger whose offsets count from now, keeping every record. With `live`, each
    /// record is also printed as it arrives.
    pub fn new(live: bool) -> Ledger {
        Ledger::build(live, true)
    }

    /// A ledger that prints each record as it arrives and keeps none (a long-running
    /// service's log: memory stays flat).
    pub fn printing() -> Ledger {
        Ledger::build(true, false)
    }

    fn build(live: bool, retain: bool) -> Ledger {
        Ledger {
            inner: Arc::new(Inner {
                origin_ms: now_ms(),
                entries: Mutex::new(Vec::new()),
                changed: watch::channel(0).0,
                live,
                retain,
                audit: Mutex::new(None),
            }),
        }
    }

    /// Also emit every record to `topic` on `courier` (for an observer in another process).
    pub fn audit_to(&self, courier: Courier, topic: String) {
        *self.inner.audit.lock() = Some((courier, topic));
    }

    /// When offsets start, ms since the epoch.
    pub fn origin_ms(&self) -> u64 {
        self.inner.origin_ms
    }

    /// Add a record (and emit it to the audit topic when auditing).
    pub async fn record(&self, entry: Entry) {
        let audit = self.inner.audit.lock().clone();
        if let Some((courier, topic)) = audit {
            let emitted = match Message::json("audit.delivery", &entry) {
                Ok(m) => courier.events().emit(&topic, m).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = emitted {
                eprintln!("meeting-system: cannot emit audit record: {e}");
            }
        }
        self.push(entry);
    }

    /// Add a record locally only.
    pub fn push(&self, entry: Entry) {
        if self.inner.live {
            println!("{}", self.format_entry(&entry));
        }
        if !self.inner.retain {
            return;
        }
        let n = {
            let mut entries = self.inner.entries.lock();
            entries.push(entry);
            entries.len() as u64
        };
        self.inner.changed.send_replace(n);
    }

    /// A copy of every record, in arrival order.
    pub fn entries(&self) -> Vec<Entry> {
        self.inner.entries.lock().clone()
    }

    /// Successful deliveries per (channel, name, recipient).
    pub fn counts(&self) -> BTreeMap<Key, usize> {
        let mut m = BTreeMap::new();
        for e in self.inner.entries.lock().iter().filter(|e| e.is_ok()) {
            *m.entry((e.channel, e.name.clone(), e.to.clone()))
                .or_insert(0) += 1;
        }
        m
    }

    /// Records matching `pred`.
    pub fn count_where(&self, pred: impl Fn(&Entry) -> bool) -> usize {
        self.inner.entries.lock().iter().filter(|e| pred(e)).count()
    }

    /// Wait until `cond` holds over the records, at most `timeout`. Returns whether it held.
    pub async fn wait_until(&self, timeout: Duration, cond: impl Fn(&[Entry]) -> bool) -> bool {
        let mut rx = self.inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if cond(&self.inner.entries.lock()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return cond(&self.inner.entries.lock()),
            }
        }
    }

    /// One line of the timeline.
    pub fn format_entry(&self, e: &Entry) -> String {
        let offset = e.at_ms as i64 - self.inner.origin_ms as i64;
        let outcome = match &e.outcome {
            Outcome::Ok => "ok".to_string(),
            Outcome::Retry(err) => format!("FAILED (will retry): {err}"),
            Outcome::Dead(err) => format!("FAILED -> DEAD LETTER: {err}"),
            Outcome::Expired(why) => format!("EXPIRED, not delivered: {why}"),
        };
        let attempt = if e.attempt > 1 {
            format!(" [attempt {}]", e.attempt)
        } else {
            String::new()
        };
        let note = if e.note.is_empty() {
            String::new()
        } else {
            format!(" | {}", e.note)
        };
        format!(
            "+{offset:>6} ms  {:<13} {:<8} {:<29} -> {:<16} {outcome}{attempt}{note}",
            e.from,
            e.channel.arrow(),
            e.name,
            e.to,
        )
    }

    /// The whole timeline, sorted by time.
    pub fn timeline(&self) -> String {
        let mut entries = self.entries();
        entries.sort_by_key(|e| e.at_ms);
        let mut out = String::new();
        for e in &entries {
            let _ = writeln!(out, "{}", self.format_entry(e));
        }
        out
    }
}
