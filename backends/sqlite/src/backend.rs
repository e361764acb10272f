//! The backend handle and what its trait implementations share: the state behind every
//! clone, the clock and configuration look-ups, and the waiting part of a receive. The public
//! face of the handle (constructors, accessors) lives in the crate root, the trait
//! implementations in `queue`, `pubsub` and `event_bus`.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use courier_core::backend::ConfigStore;
use courier_core::clock::until;
use courier_core::{Delivery, QueueConfig, Result, SharedClock};
use tokio::time::Instant;

use crate::error::writer_gone;
use crate::hub::Hub;
use crate::poll::Poll;
use crate::writer::{Ctx, Target, Writer};

/// The SQLite backend: [`Queue`](courier_core::Queue), [`PubSub`](courier_core::PubSub) and
/// [`EventBus`](courier_core::EventBus) over one database.
///
/// Cheap to clone; clones share one connection and writer thread. Dropping the last clone
/// stops the writer thread, which closes the database once its current group commit is done
/// (shortly after the drop, not during it).
#[derive(Clone)]
pub struct SqliteBackend {
    pub(crate) inner: Arc<Inner>,
}

/// What the clones of one handle share.
pub(crate) struct Inner {
    pub(crate) target: Target,
    /// The path shown in errors (`:memory:` for an in-memory database).
    pub(crate) path: PathBuf,
    pub(crate) clock: SharedClock,
    pub(crate) configs: ConfigStore,
    pub(crate) poll_interval: Duration,
    pub(crate) writer: Writer,
    pub(crate) hub: Arc<Hub>,
}

impl fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.inner.path)
            .field("clock", &self.inner.clock)
            .field("poll_interval", &self.inner.poll_interval)
            .finish_non_exhaustive()
    }
}

impl SqliteBackend {
    /// Milliseconds since the epoch from the backend clock.
    pub(crate) fn now(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// The configuration of a queue in this handle.
    pub(crate) fn queue_config_of(&self, queue: &str) -> QueueConfig {
        self.inner.configs.queue(queue)
    }

    /// The waiting part of `receive`, shared by queues and consumer groups: try, and while
    /// nothing is ready wait for a wake-up (this process), another process's commit, the next
    /// due time or the end of `wait`.
    pub(crate) async fn wait_for<F, Fut>(
        &self,
        key: &str,
        wait: Duration,
        mut attempt: F,
    ) -> Result<Vec<Delivery>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Poll>>,
    {
        let start = Instant::now();
        let end = start
            .checked_add(wait)
            .unwrap_or_else(|| start + Duration::from_secs(60 * 60 * 24 * 365 * 30));
        let waker = self.inner.hub.waker(key);
        loop {
            let mut local = pin!(waker.notified());
            local.as_mut().enable();
            let mut external = pin!(self.inner.hub.external.notified());
            external.as_mut().enable();
            let (now_ms, next_wake) = match attempt().await? {
                Poll::Got(v) => return Ok(v),
                Poll::Empty { now, next_wake } => (now, next_wake),
            };
            let instant = Instant::now();
            if wait.is_zero() || instant >= end {
                return Ok(Vec::new());
            }
            let sleep_until = match next_wake {
                Some(at) => end.min(instant + until(now_ms, at)),
                None => end,
            };
            tokio::select! {
                _ = local => {}
                _ = external => {}
                _ = tokio::time::sleep_until(sleep_until) => {}
            }
        }
    }
}

/// A submitted claim whose answer is awaited. If the caller goes away first (the receive
/// future is dropped), the leases of an answer nobody took are released at once, so a
/// cancelled receive neither loses a message nor makes it wait for its lease to expire.
struct PendingClaim<R: FnOnce(Vec<courier_core::Lease>)> {
    rx: tokio::sync::oneshot::Receiver<Result<Poll>>,
    release: Option<R>,
}

impl<R: FnOnce(Vec<courier_core::Lease>)> Drop for PendingClaim<R> {
    fn drop(&mut self) {
        let Some(release) = self.release.take() else {
            return;
        };
        // After close, the writer either finds the channel closed (and releases by itself)
        // or has already sent, and the answer is taken here.
        self.rx.close();
        if let Ok(Ok(Poll::Got(deliveries))) = self.rx.try_recv()
            && !deliveries.is_empty()
        {
            release(deliveries.iter().map(|d| d.lease).collect());
        }
    }
}

/// Run a claim job on the writer and await its answer, releasing orphaned leases (see
/// [`PendingClaim`]).
pub(crate) async fn claim<F, R>(writer: &Writer, job: F, release: R) -> Result<Poll>
where
    F: FnOnce(&mut Ctx<'_>) -> Result<Poll> + Send + 'static,
    R: FnOnce(Vec<courier_core::Lease>) + Clone + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let orphan = release.clone();
    let (signal, gate) = writer.gate();
    writer.submit("receive", job, move |r: Result<Poll>| {
        if let Err(Ok(Poll::Got(deliveries))) = tx.send(r)
            && !deliveries.is_empty()
        {
            orphan(deliveries.iter().map(|d| d.lease).collect());
        }
        drop(signal);
    });
    let mut pending = PendingClaim {
        rx,
        release: Some(release),
    };
    gate.wait().await;
    let r = (&mut pending.rx).await;
    pending.release = None;
    r.map_err(|_| writer_gone("receive"))?
}
