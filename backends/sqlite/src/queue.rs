//! [`Queue`] for [`SqliteBackend`]: each operation is one job of the writer thread, run on the
//! queue's rows brought up to the current time (see [`crate::store`]).

use std::time::Duration;

use async_trait::async_trait;
use courier_core::backend::{Batch, earlier_wake};
use courier_core::{
    DeadLetter, Error, Lease, Message, MessageId, Page, Priority, Published, Queue, QueueConfig,
    QueueStats, RateLimit, Result, Selection, Settle, SharedClock,
};

use crate::backend::{SqliteBackend, claim};
use crate::consts::BACKEND_NAME;
use crate::error::KIT;
use crate::poll::Poll;
use crate::store::{self, NewRow, Q};
use crate::writer::Ctx;

/// The queue's row (created on first use), loaded.
pub(crate) fn open(ctx: &mut Ctx<'_>, queue: &str) -> Result<Q> {
    let key = store::queue_key(queue);
    let qid = store::qid(ctx, &key, "queue", "", queue, |_| Ok(0))?;
    store::load(ctx, qid)
}

/// Run `f` on a queue brought up to now, save it, and wake its waiters when something became
/// ready or the next due time moved earlier.
fn with_queue<T>(
    ctx: &mut Ctx<'_>,
    queue: &str,
    config: &QueueConfig,
    f: impl FnOnce(&mut Ctx<'_>, &mut Q, u64) -> Result<T>,
) -> Result<T> {
    let now = ctx.now();
    let mut q = open(ctx, queue)?;
    let wake_before = store::next_wake(ctx, &q)?;
    store::tick(ctx, &mut q, now, config)?;
    let r = f(ctx, &mut q, now)?;
    store::save(ctx, &mut q)?;
    if q.readied || earlier_wake(store::next_wake(ctx, &q)?, wake_before) {
        ctx.wake(store::queue_key(queue));
    }
    Ok(r)
}

impl SqliteBackend {
    /// Run `f` on the queue in the writer thread.
    async fn on_queue<T: Send + 'static>(
        &self,
        queue: &str,
        operation: &'static str,
        f: impl FnOnce(&mut Ctx<'_>, &mut Q, u64, &QueueConfig) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        KIT.check_name("queue", queue, operation)?;
        let config = self.queue_config_of(queue);
        let name = queue.to_owned();
        self.inner
            .writer
            .call(operation, move |ctx| {
                with_queue(ctx, &name, &config, |ctx, q, now| f(ctx, q, now, &config))
            })
            .await
    }

    /// Lease up to `max` (one attempt, no waiting). If the caller went away before the answer
    /// arrived, the leased messages are released at once (cancel safety).
    async fn claim_once(&self, queue: &str, max: usize, config: QueueConfig) -> Result<Poll> {
        let name = queue.to_owned();
        let orphan_name = name.clone();
        let writer = self.inner.writer.clone();
        let release = move |leases: Vec<Lease>| {
            writer.fire("release", move |ctx| {
                with_queue(ctx, &orphan_name, &config, |ctx, q, now| {
                    for l in &leases {
                        let _ = store::settle(ctx, q, now, &Settle::Release(*l), &config)?;
                    }
                    Ok(())
                })
            });
        };
        claim(
            &self.inner.writer,
            move |ctx| {
                with_queue(ctx, &name, &config, |ctx, q, now| {
                    store::poll(ctx, q, now, max, &config)
                })
            },
            release,
        )
        .await
    }
}

#[async_trait]
impl Queue for SqliteBackend {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    fn configure(&self, queue: &str, config: QueueConfig) -> Result<()> {
        self.inner.configs.configure_queue(KIT, queue, config)
    }

    fn queue_config(&self, queue: &str) -> QueueConfig {
        self.queue_config_of(queue)
    }

    async fn publish_batch(&self, queue: &str, messages: Vec<Message>) -> Result<Vec<Published>> {
        let config = self.queue_config_of(queue);
        let now = self.now();
        // The whole batch is checked (and encoded) before anything is stored (Q7, Q10).
        let (ids, rows) =
            KIT.prepare_batch(Batch::Publish, queue, &config, messages, now, |m| {
                NewRow::encode(&m, None)
            })?;
        if rows.is_empty() {
            return Ok(ids.into_iter().map(Published::Stored).collect());
        }
        if rows.iter().any(|r| r.key.is_some()) {
            // Deduplication (Q11): every key is checked and taken in the writer's transaction,
            // with the inserts, so racing publishers (of any process) store one message a key.
            let window = config.dedup_window_ms();
            return self
                .on_queue(queue, "publish", move |ctx, q, now, _| {
                    store::publish_keyed(ctx, q, now, &rows, window)
                })
                .await
                // The batch is one transaction: on failure nothing was stored.
                .map_err(|e| e.with_stored(0));
        }
        self.on_queue(queue, "publish", move |ctx, q, now, _| {
            store::publish_all(ctx, q, now, &rows)
        })
        .await
        // The batch is one transaction: on failure nothing was stored.
        .map_err(|e| e.with_stored(0))?;
        Ok(ids.into_iter().map(Published::Stored).collect())
    }

    async fn receive(
        &self,
        queue: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<courier_core::Delivery>> {
        KIT.check_name("queue", queue, "receive")?;
        KIT.check_max(max)?;
        let config = self.queue_config_of(queue);
        let key = store::queue_key(queue);
        self.wait_for(&key, wait, || self.claim_once(queue, max, config))
            .await
    }

    async fn settle(&self, queue: &str, ops: Vec<Settle>) -> Result<Vec<Result<()>>> {
        if ops.is_empty() {
            KIT.check_name("queue", queue, "settle")?;
            return Ok(Vec::new());
        }
        self.on_queue(queue, "settle", move |ctx, q, now, config| {
            let mut out = Vec::with_capacity(ops.len());
            for op in &ops {
                out.push(store::settle(ctx, q, now, op, config)?);
            }
            Ok(out)
        })
        .await
    }

    async fn extend(&self, queue: &str, lease: &Lease, visibility: Duration) -> Result<Lease> {
        let l = *lease;
        self.on_queue(queue, "extend", move |ctx, q, now, _| {
            store::extend(ctx, q, now, &l, visibility)
        })
        .await?
        .map_err(|_| KIT.lease_lost("extend", lease))
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        self.on_queue(queue, "stats", |ctx, q, _, _| store::stats(ctx, q))
            .await
    }

    async fn dead_letters(&self, queue: &str, page: Page) -> Result<Vec<DeadLetter>> {
        self.on_queue(queue, "dead_letters", move |ctx, q, _, _| {
            store::dead_letters(ctx, q, page)
        })
        .await
    }

    async fn dead_letter(&self, queue: &str, id: MessageId) -> Result<DeadLetter> {
        self.on_queue(queue, "dead_letter", move |ctx, q, _, _| {
            store::dead_letter(ctx, q, id)
        })
        .await?
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
        self.on_queue(queue, "requeue_dead_at", move |ctx, q, now, _| {
            store::requeue_dead_at(ctx, q, &which, now, Some(priority))
        })
        .await
    }

    async fn requeue_dead(&self, queue: &str, which: Selection) -> Result<u64> {
        self.on_queue(queue, "requeue_dead", move |ctx, q, now, _| {
            store::requeue_dead(ctx, q, &which, now)
        })
        .await
    }

    async fn purge_dead(&self, queue: &str, which: Selection) -> Result<u64> {
        self.on_queue(queue, "purge_dead", move |ctx, q, _, _| {
            store::purge_dead(ctx, q, &which)
        })
        .await
    }

    async fn pause(&self, queue: &str) -> Result<()> {
        // Creates the queue's row, which is not listed until something is published (Q13).
        self.on_queue(queue, "pause", |_, q, _, _| {
            q.set_paused(true);
            Ok(())
        })
        .await
    }

    async fn resume(&self, queue: &str) -> Result<()> {
        let key = store::queue_key(queue);
        // Waiting receivers of this process are woken after the commit; other processes see
        // the commit at their next poll.
        self.on_queue(queue, "resume", move |ctx, q, _, _| {
            q.set_paused(false);
            ctx.wake(key);
            Ok(())
        })
        .await
    }

    async fn set_rate_limit(&self, queue: &str, limit: Option<RateLimit>) -> Result<()> {
        if let Some(l) = &limit {
            l.validate().map_err(KIT.tag("set_rate_limit"))?;
        }
        let key = store::queue_key(queue);
        self.on_queue(queue, "set_rate_limit", move |ctx, q, _, _| {
            q.set_rate_limit(limit);
            // A raised or removed limit may let waiting receivers take work now.
            ctx.wake(key);
            Ok(())
        })
        .await
    }

    async fn reprioritise(&self, queue: &str, id: MessageId, priority: Priority) -> Result<()> {
        let found = self
            .on_queue(queue, "reprioritise", move |ctx, q, _, _| {
                store::reprioritise(ctx, q, id, priority)
            })
            .await?;
        if !found {
            return Err(KIT.tag("reprioritise")(Error::not_found(format!(
                "no queued message {id} in queue {queue:?}"
            ))));
        }
        Ok(())
    }

    async fn list_queues(&self) -> Result<Vec<String>> {
        // A queue's row is made by any call on it; `published` tells those published to.
        self.inner
            .writer
            .call("list_queues", |ctx| {
                store::names(
                    ctx,
                    "list queues",
                    "SELECT name FROM courier_queues WHERE kind = 'queue' AND published > 0 \
                     ORDER BY name",
                    None,
                )
            })
            .await
    }
}
