//! # courier-memory
//!
//! Courier's in-process backend and the reference model of the contract (DESIGN §3, §5, §6).
//! [`MemoryBackend`] implements [`Queue`], [`PubSub`] and [`EventBus`]; clones share one store.
//!
//! - Messages live as long as the process holding the backend (Q1): there is no persistence.
//! - Every queue and every consumer group is a small state machine under its own lock, so each
//!   call takes one lock once (publish, receive, settle are O(1) per message, O(log n) for the
//!   lease and delay heaps).
//! - **Delay tick:** timer driven. A waiting `receive` sleeps until the next due time (a delayed
//!   message, a retry backoff or a lease deadline) on a tokio timer, so delayed messages become
//!   deliverable within about a millisecond of being due. There is no polling.
//! - Time comes from a [`Clock`](courier_core::Clock): [`SystemClock`] by default; pass
//!   [`courier_core::TokioClock`] to the builder to run on tokio's (pausable) virtual time in
//!   tests.
//! - PubSub is in-process fan-out into bounded [`courier_core::SubscriptionBuffer`]s; the
//!   EventBus keeps each topic's log in memory (retention per topic, unbounded by default) and
//!   is a service's local event bus with no serialisation (E6).
//!
//! ```
//! use std::time::Duration;
//! use courier_core::{Message, Queue, QueueExt};
//! use courier_memory::MemoryBackend;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> courier_core::Result<()> {
//! let backend = MemoryBackend::new();
//! backend.publish("tasks", Message::new("hello", "world")).await?;
//! let d = backend.receive_one("tasks", Duration::from_secs(1)).await?.expect("a message");
//! assert_eq!(d.message.attempt, 1);
//! backend.ack("tasks", &d.lease).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod event_bus;
mod pubsub;
mod queue;
mod state;

/// The deterministic models behind the memory backend, for backends that replicate them
/// (RabbitMQ). Not a stable API.
#[doc(hidden)]
pub mod model {
    pub use crate::event_bus::{Group, Topic, View, fnv1a};
    pub use crate::state::{QueueState, millis};
}

use std::collections::HashMap;
use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use courier_core::backend::Kit;
use courier_core::clock::until;
use courier_core::{
    Delivery, EventBus, PubSub, Queue, QueueConfig, Result, SharedClock, SystemClock,
};
use parking_lot::RwLock;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The backend's short name, as reported by `backend_name()` and in errors.
pub const BACKEND_NAME: &str = "memory";

/// The in-process backend: [`Queue`], [`PubSub`] and [`EventBus`] over one shared store.
///
/// Cheap to clone; clones share everything. Dropping the last clone drops every message.
#[derive(Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

struct Inner {
    clock: SharedClock,
    default_config: QueueConfig,
    queues: RwLock<HashMap<String, Arc<queue::QueueShared>>>,
    topics: RwLock<HashMap<String, Arc<event_bus::TopicShared>>>,
    pubsub: Arc<RwLock<pubsub::Registry>>,
}

impl MemoryBackend {
    /// A new, empty store on the system clock with the default [`QueueConfig`].
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder to choose the clock and the default queue configuration.
    pub fn builder() -> MemoryBackendBuilder {
        MemoryBackendBuilder::default()
    }

    /// The clock used for delays, leases and timestamps.
    pub fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    /// The configuration of queues and consumer groups that were never configured.
    pub fn default_config(&self) -> QueueConfig {
        self.inner.default_config
    }

    /// The backend's short name, `"memory"`.
    pub fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    /// Names of the queues that exist (have been used), sorted.
    pub fn queue_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.queues.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// Names of the topics that exist (have been used), sorted.
    pub fn topic_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.topics.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// Milliseconds since the epoch from the backend clock.
    fn now(&self) -> u64 {
        self.inner.clock.now_ms()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("clock", &self.inner.clock)
            .field("queues", &self.inner.queues.read().len())
            .field("topics", &self.inner.topics.read().len())
            .finish_non_exhaustive()
    }
}

/// Builds a [`MemoryBackend`].
#[derive(Debug, Default, Clone)]
pub struct MemoryBackendBuilder {
    clock: Option<SharedClock>,
    default_config: Option<QueueConfig>,
}

impl MemoryBackendBuilder {
    /// Use this clock (default: [`SystemClock`]). With [`courier_core::TokioClock`] and
    /// `tokio::time::pause()`, delays and leases run on virtual time.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The configuration of queues and groups never configured (default:
    /// [`QueueConfig::default`]). It should pass [`QueueConfig::validate`]; see
    /// [`MemoryBackendBuilder::try_build`].
    pub fn default_config(mut self, config: QueueConfig) -> Self {
        self.default_config = Some(config);
        self
    }

    /// Build the backend: a new, empty store.
    pub fn build(self) -> MemoryBackend {
        MemoryBackend {
            inner: Arc::new(Inner {
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
                default_config: self.default_config.unwrap_or_default(),
                queues: RwLock::new(HashMap::new()),
                topics: RwLock::new(HashMap::new()),
                pubsub: Arc::new(RwLock::new(pubsub::Registry::default())),
            }),
        }
    }

    /// Build after checking the default configuration.
    ///
    /// # Errors
    /// [`courier_core::ErrorKind::InvalidInput`] when the default configuration is invalid.
    pub fn try_build(self) -> Result<MemoryBackend> {
        if let Some(c) = &self.default_config {
            c.validate().map_err(KIT.tag("configure"))?;
        }
        Ok(self.build())
    }
}

/// The shared backend prologue (name checks, error tags, lease-lost wording).
pub(crate) const KIT: Kit = Kit::new(BACKEND_NAME);

/// Wakes receivers waiting on a queue or topic. Waiters are counted so that a publish with
/// nobody waiting costs one atomic load.
#[derive(Debug, Default)]
struct Wakeup {
    notify: Notify,
    waiters: AtomicUsize,
}

impl Wakeup {
    /// Wake every waiting receiver (they re-check the state and re-arm their timers).
    ///
    /// Called after the state lock is released. No wake-up is lost: a waiter counts itself
    /// and enables its `Notified` before it checks the state under the lock, so either it sees
    /// the change or the change's lock section happens after its check and this call sees it.
    fn wake(&self) {
        if self.waiters.load(Ordering::Acquire) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// Counts a waiting receiver for as long as it lives (also when its future is dropped).
struct WaiterGuard<'a>(&'a AtomicUsize);

impl<'a> WaiterGuard<'a> {
    fn new(waiters: &'a AtomicUsize) -> Self {
        waiters.fetch_add(1, Ordering::AcqRel);
        WaiterGuard(waiters)
    }
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One look at the state by a receive.
enum Poll {
    /// Leased these (at least one).
    Got(Vec<Delivery>),
    /// Nothing ready at `now` (ms); the state may change by itself at `next_wake`.
    Empty { now: u64, next_wake: Option<u64> },
}

/// The waiting part of `receive`, shared by queues and consumer groups: try, and while
/// nothing is ready wait for a wake-up, the next due time or the end of `wait`.
///
/// Cancel safe: `attempt` leases synchronously under the lock and its result is returned
/// without another await, so dropping the future never loses a message.
async fn wait_for(
    wakeup: &Wakeup,
    wait: Duration,
    mut attempt: impl FnMut() -> Poll,
) -> Vec<Delivery> {
    let start = Instant::now();
    if let Poll::Got(v) = attempt() {
        return v;
    }
    if wait.is_zero() {
        return Vec::new();
    }
    let end = start
        .checked_add(wait)
        .unwrap_or_else(|| start + Duration::from_secs(60 * 60 * 24 * 365 * 30));
    let _counted = WaiterGuard::new(&wakeup.waiters);
    loop {
        let mut notified = pin!(wakeup.notify.notified());
        notified.as_mut().enable();
        let (now_ms, next_wake) = match attempt() {
            Poll::Got(v) => return v,
            Poll::Empty { now, next_wake } => (now, next_wake),
        };
        let instant = Instant::now();
        if instant >= end {
            return Vec::new();
        }
        let sleep_until = match next_wake {
            Some(at) => end.min(instant + until(now_ms, at)),
            None => end,
        };
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(sleep_until) => {}
        }
    }
}

// Compile-time proof that the backend serves every trait behind `Arc<dyn …>`.
fn _object_safe(b: MemoryBackend) {
    let _: Arc<dyn Queue> = Arc::new(b.clone());
    let _: Arc<dyn PubSub> = Arc::new(b.clone());
    let _: Arc<dyn EventBus> = Arc::new(b);
}
