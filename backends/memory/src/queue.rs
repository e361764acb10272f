//! [`Queue`] for [`MemoryBackend`]: one [`QueueState`] per queue under a mutex.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use courier_core::backend::{Batch, earlier_wake};
use courier_core::{
    DeadLetter, Delivery, Error, Lease, Message, MessageId, Page, Priority, Published, Queue,
    QueueConfig, QueueStats, RateLimit, Result, Selection, Settle, SharedClock,
};
use parking_lot::Mutex;

use crate::state::QueueState;
use crate::{BACKEND_NAME, KIT, MemoryBackend, Poll, Wakeup};

/// One queue: its state and its waiting receivers.
#[derive(Debug)]
pub(crate) struct QueueShared {
    state: Mutex<QueueState>,
    wakeup: Wakeup,
}

impl QueueShared {
    fn new(config: QueueConfig) -> Self {
        QueueShared {
            state: Mutex::new(QueueState::new(config, true)),
            wakeup: Wakeup::default(),
        }
    }

    /// Run `f` on the state brought up to `now`, under one lock; wake waiters afterwards when
    /// something became ready or the next due time moved earlier.
    fn with_state<R>(&self, now: u64, f: impl FnOnce(&mut QueueState) -> R) -> R {
        let mut st = self.state.lock();
        let ready_before = st.ready_len();
        let wake_before = st.next_wake();
        st.tick(now);
        let r = f(&mut st);
        let wake = st.ready_len() > ready_before || earlier_wake(st.next_wake(), wake_before);
        drop(st);
        if wake {
            self.wakeup.wake();
        }
        r
    }
}

impl MemoryBackend {
    /// The queue, created on first use. The name has been validated.
    fn queue(&self, name: &str) -> Arc<QueueShared> {
        if let Some(q) = self.inner.queues.read().get(name) {
            return q.clone();
        }
        self.inner
            .queues
            .write()
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(QueueShared::new(self.inner.default_config)))
            .clone()
    }

    /// Validate the name, then run `f` on the queue's state at the current time.
    fn on_queue<R>(
        &self,
        queue: &str,
        operation: &'static str,
        f: impl FnOnce(&mut QueueState, u64) -> R,
    ) -> Result<R> {
        KIT.check_name("queue", queue, operation)?;
        let q = self.queue(queue);
        let now = self.now();
        Ok(q.with_state(now, |st| f(st, now)))
    }
}

#[async_trait]
impl Queue for MemoryBackend {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    fn configure(&self, queue: &str, config: QueueConfig) -> Result<()> {
        KIT.check_queue_config(queue, &config)?;
        self.queue(queue).state.lock().config = config;
        Ok(())
    }

    fn queue_config(&self, queue: &str) -> QueueConfig {
        let q = self.inner.queues.read().get(queue).cloned();
        match q {
            Some(q) => q.state.lock().config,
            None => self.inner.default_config,
        }
    }

    async fn publish_batch(&self, queue: &str, messages: Vec<Message>) -> Result<Vec<Published>> {
        let now = self.now();
        // The whole batch is checked before anything is stored (Q7, Q10).
        let config = self.queue_config(queue);
        let (_, messages) = KIT.prepare_batch(Batch::Publish, queue, &config, messages, now, Ok)?;
        // One lock for the batch: the key checks and the stores are one step (Q11).
        let window = config.dedup_window_ms();
        Ok(self.queue(queue).with_state(now, |st| {
            messages
                .into_iter()
                .map(|m| st.accept(m, now, window))
                .collect()
        }))
    }

    async fn receive(&self, queue: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        KIT.check_name("queue", queue, "receive")?;
        KIT.check_max(max)?;
        let q = self.queue(queue);
        let got = crate::wait_for(&q.wakeup, wait, || {
            let now = self.now();
            q.with_state(now, |st| {
                let mut out = Vec::new();
                st.lease(now, max, &mut out);
                if out.is_empty() {
                    Poll::Empty {
                        now,
                        next_wake: st.next_wake(),
                    }
                } else {
                    Poll::Got(out)
                }
            })
        })
        .await;
        Ok(got)
    }

    async fn settle(&self, queue: &str, ops: Vec<Settle>) -> Result<Vec<Result<()>>> {
        self.on_queue(queue, "settle", |st, now| {
            ops.into_iter()
                .map(|op| st.settle(op, now).map_err(KIT.tag("settle")))
                .collect()
        })
    }

    async fn extend(&self, queue: &str, lease: &Lease, visibility: Duration) -> Result<Lease> {
        self.on_queue(queue, "extend", |st, now| st.extend(lease, visibility, now))?
            .map_err(KIT.tag("extend"))
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        self.on_queue(queue, "stats", |st, _| st.stats())
    }

    async fn dead_letters(&self, queue: &str, page: Page) -> Result<Vec<DeadLetter>> {
        self.on_queue(queue, "dead_letters", |st, _| st.dead_letters(page))
    }

    async fn dead_letter(&self, queue: &str, id: MessageId) -> Result<DeadLetter> {
        self.on_queue(queue, "dead_letter", |st, _| st.dead_letter(id))?
            .ok_or_else(|| {
                KIT.tag("dead_letter")(Error::not_found(format!(
                    "no dead letter {id} in queue {queue:?}"
                )))
            })
    }

    async fn requeue_dead_at(
        &self,
        queue: &str,
        which: Selection,
        priority: Priority,
    ) -> Result<u64> {
        self.on_queue(queue, "requeue_dead_at", |st, now| {
            st.requeue_dead_at(&which, Some(priority), now)
        })?
    }

    async fn requeue_dead(&self, queue: &str, which: Selection) -> Result<u64> {
        self.on_queue(queue, "requeue_dead", |st, now| {
            st.requeue_dead(&which, now)
        })?
    }

    async fn purge_dead(&self, queue: &str, which: Selection) -> Result<u64> {
        self.on_queue(queue, "purge_dead", |st, _| st.purge_dead(&which))?
    }

    async fn pause(&self, queue: &str) -> Result<()> {
        self.on_queue(queue, "pause", |st, _| st.set_paused(true))
    }

    async fn resume(&self, queue: &str) -> Result<()> {
        self.on_queue(queue, "resume", |st, _| st.set_paused(false))?;
        self.queue(queue).wakeup.wake();
        Ok(())
    }

    async fn set_rate_limit(&self, queue: &str, limit: Option<RateLimit>) -> Result<()> {
        if let Some(l) = &limit {
            l.validate().map_err(KIT.tag("set_rate_limit"))?;
        }
        self.on_queue(queue, "set_rate_limit", |st, _| st.set_rate_limit(limit))?;
        // A raised or removed limit may let waiting receivers take work now.
        self.queue(queue).wakeup.wake();
        Ok(())
    }

    async fn reprioritise(&self, queue: &str, id: MessageId, priority: Priority) -> Result<()> {
        let found = self.on_queue(queue, "reprioritise", |st, _| st.reprioritise(id, priority))?;
        if !found {
            return Err(KIT.tag("reprioritise")(Error::not_found(format!(
                "no queued message {id} in queue {queue:?}"
            ))));
        }
        Ok(())
    }

    async fn list_queues(&self) -> Result<Vec<String>> {
        let queues: Vec<(String, Arc<QueueShared>)> = self
            .inner
            .queues
            .read()
            .iter()
            .map(|(name, q)| (name.clone(), q.clone()))
            .collect();
        let mut v: Vec<String> = queues
            .into_iter()
            .filter(|(_, q)| q.state.lock().stats().published > 0)
            .map(|(name, _)| name)
            .collect();
        v.sort();
        Ok(v)
    }
}
