//! [`Queue`] for [`AmqpBackend`]: each queue is a replicated [`QueueModel`] in the stream
//! `<prefix>.q.<queue>`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use courier_core::backend::{Batch, Kit};
use courier_core::{
    DeadLetter, Delivery, Error, ErrorKind, Lease, Message, MessageId, Page, Priority, Published,
    Queue, QueueConfig, QueueStats, RateLimit, Result, Selection, Settle, SharedClock, wire,
};

use crate::models::{Answer, MAX_CLAIM, QueueModel};
use crate::record::{Entry, Op};
use crate::replica::{Model, Replica};
use crate::{Log, Replicated, registry};

/// The most bytes of messages one publish record holds; a larger batch takes several
/// records, each stored whole or not at all (Q7).
pub(crate) const RECORD_BYTES: usize = 8 * 1024 * 1024;

/// The most messages one publish record holds.
pub(crate) const RECORD_MESSAGES: usize = 1_000;

fn unexpected(kit: Kit, operation: &'static str, answer: &Answer) -> Error {
    kit.tag(operation)(Error::new(
        ErrorKind::Backend,
        format!("unexpected answer from the replicated queue: {answer:?}"),
    ))
}

/// Split encoded entries into records of at most [`RECORD_MESSAGES`] entries and about
/// [`RECORD_BYTES`] bytes, in order.
pub(crate) fn chunks(entries: Vec<(MessageId, bytes::Bytes)>) -> Vec<Vec<Entry>> {
    let mut out = Vec::new();
    let mut cur: Vec<Entry> = Vec::new();
    let mut size = 0;
    for (id, bytes) in entries {
        if !cur.is_empty() && (cur.len() >= RECORD_MESSAGES || size + bytes.len() > RECORD_BYTES) {
            out.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += bytes.len() + 20;
        cur.push(Entry::Encoded(id, bytes));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Encode a prepared message for a publish or emit record.
pub(crate) fn encode_entry(m: Message) -> Result<(MessageId, bytes::Bytes)> {
    Ok((m.id, wire::encode(&m)?))
}

impl<L: Log> Replicated<L> {
    /// A queue's dead letters back to ready, at their own priority or at `priority` (Q8).
    async fn requeue(
        &self,
        queue: &str,
        which: Selection,
        priority: Option<Priority>,
        operation: &'static str,
    ) -> Result<u64> {
        let config = self.inner.configs.queue(queue);
        let op = Op::RequeueDead {
            config,
            which,
            priority,
        };
        match self.queue_call(queue, op, operation).await? {
            Answer::Count(r) => r.map_err(self.inner.kit.tag(operation)),
            other => Err(unexpected(self.inner.kit, operation, &other)),
        }
    }

    fn queue_replica(&self, queue: &str) -> Arc<Replica<QueueModel>> {
        if let Some(r) = self.inner.queues.read().get(queue) {
            return r.clone();
        }
        let stream = format!("q.{queue}");
        self.inner
            .queues
            .write()
            .entry(queue.to_owned())
            .or_insert_with(|| {
                Replica::new(
                    stream.clone(),
                    self.inner.origin,
                    QueueModel::new(stream, self.inner.configs.default_config()),
                )
            })
            .clone()
    }

    /// Validate the name and run `op` on the queue's replica.
    async fn queue_call(&self, queue: &str, op: Op, operation: &'static str) -> Result<Answer> {
        self.inner.kit.check_name("queue", queue, operation)?;
        self.queue_replica(queue)
            .call(&self.inner.env, "", op, operation)
            .await
    }

    /// Record a change that answers nothing (pause, resume, a rate limit): it is applied
    /// by every process in log order; `Ok` once this handle's replica applied it too.
    async fn queue_change(&self, queue: &str, op: Op, operation: &'static str) -> Result<()> {
        match self.queue_call(queue, op, operation).await? {
            Answer::Done => Ok(()),
            other => Err(unexpected(self.inner.kit, operation, &other)),
        }
    }

    /// Bring the queue's replica up to date with the log (a `Sync` record).
    async fn queue_synced(&self, queue: &str, operation: &'static str) -> Result<()> {
        let config = self.inner.configs.queue(queue);
        self.queue_call(queue, Op::Sync { config }, operation)
            .await
            .map(drop)
    }

    /// Append a batch's prepared entries to a queue or topic stream, record by record
    /// (`make` builds each record's op): on a failure, the error says how many leading
    /// entries are stored (Q7).
    pub(crate) async fn append_entries<M: Model<Out = Answer>>(
        &self,
        replica: &Arc<Replica<M>>,
        entries: Vec<(MessageId, bytes::Bytes)>,
        make: impl Fn(Vec<Entry>) -> Op,
        operation: &'static str,
    ) -> Result<Vec<Published>> {
        let mut stored = 0;
        let mut outcomes = Vec::new();
        for chunk in chunks(entries) {
            let n = chunk.len();
            if self.take_batch_fault() {
                return Err(self.inner.kit.tag(operation)(Error::new(
                    ErrorKind::Unavailable,
                    "connection lost between two records of the batch (test fault)",
                ))
                .with_stored(stored));
            }
            let answer = replica
                .call(&self.inner.env, "", make(chunk), operation)
                .await
                .map_err(|e| e.with_stored(stored))?;
            // A publish answers each message's outcome (Q11); an emit answers `Done`.
            if let Answer::Published(out) = answer {
                outcomes.extend(out);
            }
            stored += n;
        }
        Ok(outcomes)
    }

    /// Store `bytes` in `queue` as one entry that does not decode, under a fresh id, as a
    /// corrupt or foreign writer would: for tests of Q10 (it goes to dead letters, and
    /// consumers keep running), not for applications.
    ///
    /// # Errors
    /// As any call: invalid name, RabbitMQ unavailable.
    #[doc(hidden)]
    pub async fn inject_raw(&self, queue: &str, bytes: &[u8]) -> Result<MessageId> {
        let id = MessageId::new();
        let entry = Entry::Encoded(id, bytes::Bytes::copy_from_slice(bytes));
        self.queue_call(queue, Op::Publish(vec![entry], 0), "inject_raw")
            .await?;
        Ok(id)
    }
}

#[async_trait]
impl<L: Log> Queue for Replicated<L> {
    fn backend_name(&self) -> &'static str {
        self.inner.kit.backend()
    }

    fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    fn configure(&self, queue: &str, config: QueueConfig) -> Result<()> {
        self.inner
            .configs
            .configure_queue(self.inner.kit, queue, config)
    }

    fn queue_config(&self, queue: &str) -> QueueConfig {
        self.inner.configs.queue(queue)
    }

    /// Cancel safety: dropped, the batch may or may not be stored (a leading part of it when
    /// it takes several records).
    async fn publish_batch(&self, queue: &str, messages: Vec<Message>) -> Result<Vec<Published>> {
        let now = self.inner.clock.now_ms();
        let config = self.inner.configs.queue(queue);
        let (_, entries) = self.inner.kit.prepare_batch(
            Batch::Publish,
            queue,
            &config,
            messages,
            now,
            encode_entry,
        )?;
        if !entries.is_empty() {
            self.register(registry::Kind::Queue, queue, "publish")
                .await?;
        }
        let replica = self.queue_replica(queue);
        // The key checks happen where the record is applied, in log order, so racing
        // publishers of one key store exactly one message on every replica (Q11).
        let window = config.dedup_window_ms();
        self.append_entries(&replica, entries, |e| Op::Publish(e, window), "publish")
            .await
    }

    /// Cancel safe: what a dropped receive leased is released at once (not counted).
    async fn receive(&self, queue: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.inner.kit.check_name("queue", queue, "receive")?;
        self.inner.kit.check_max(max)?;
        let replica = self.queue_replica(queue);
        let env = &self.inner.env;
        let until = tokio::time::Instant::now() + wait;
        let max = u32::try_from(max.min(MAX_CLAIM)).unwrap_or(u32::MAX);
        loop {
            let config = self.inner.configs.queue(queue);
            // The lease runs from when this receive returns: add the claim's round trip.
            let config =
                config.with_visibility_timeout(config.visibility_timeout + replica.lease_pad());
            match replica
                .call(env, "", Op::Claim { config, max }, "receive")
                .await?
            {
                Answer::Leased(got) if !got.is_empty() => return Ok(got),
                Answer::Leased(_) => {}
                other => return Err(unexpected(self.inner.kit, "receive", &other)),
            }
            if tokio::time::Instant::now() >= until {
                return Ok(Vec::new());
            }
            if !replica.wait_ready(env, "", until).await {
                return Ok(Vec::new());
            }
        }
    }

    async fn settle(&self, queue: &str, ops: Vec<Settle>) -> Result<Vec<Result<()>>> {
        if ops.is_empty() {
            self.inner.kit.check_name("queue", queue, "settle")?;
            return Ok(Vec::new());
        }
        let config = self.inner.configs.queue(queue);
        match self
            .queue_call(queue, Op::Settle { config, ops }, "settle")
            .await?
        {
            Answer::Settled(rs) => Ok(rs
                .into_iter()
                .map(|r| r.map_err(self.inner.kit.tag("settle")))
                .collect()),
            other => Err(unexpected(self.inner.kit, "settle", &other)),
        }
    }

    async fn extend(&self, queue: &str, lease: &Lease, visibility: Duration) -> Result<Lease> {
        let config = self.inner.configs.queue(queue);
        let op = Op::Extend {
            config,
            lease: *lease,
            visibility,
        };
        match self.queue_call(queue, op, "extend").await? {
            Answer::Extended(r) => r.map_err(self.inner.kit.tag("extend")),
            other => Err(unexpected(self.inner.kit, "extend", &other)),
        }
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        self.queue_synced(queue, "stats").await?;
        Ok(self.queue_replica(queue).read(|m| m.state.stats()))
    }

    async fn dead_letters(&self, queue: &str, page: Page) -> Result<Vec<DeadLetter>> {
        self.queue_synced(queue, "dead_letters").await?;
        Ok(self
            .queue_replica(queue)
            .read(|m| m.state.dead_letters(page)))
    }

    async fn dead_letter(&self, queue: &str, id: MessageId) -> Result<DeadLetter> {
        self.queue_synced(queue, "dead_letter").await?;
        self.queue_replica(queue)
            .read(|m| m.state.dead_letter(id))
            .ok_or_else(|| {
                self.inner.kit.tag("dead_letter")(Error::not_found(format!(
                    "no dead letter {id} in queue {queue:?}"
                )))
            })
    }

    async fn requeue_dead(&self, queue: &str, which: Selection) -> Result<u64> {
        self.requeue(queue, which, None, "requeue_dead").await
    }

    async fn requeue_dead_at(
        &self,
        queue: &str,
        which: Selection,
        priority: Priority,
    ) -> Result<u64> {
        self.requeue(queue, which, Some(priority), "requeue_dead_at")
            .await
    }

    async fn purge_dead(&self, queue: &str, which: Selection) -> Result<u64> {
        let config = self.inner.configs.queue(queue);
        match self
            .queue_call(queue, Op::PurgeDead { config, which }, "purge_dead")
            .await?
        {
            Answer::Count(r) => r.map_err(self.inner.kit.tag("purge_dead")),
            other => Err(unexpected(self.inner.kit, "purge_dead", &other)),
        }
    }

    async fn list_queues(&self) -> Result<Vec<String>> {
        self.registered(registry::Kind::Queue, "list_queues").await
    }

    /// A `PAUSE` record in the queue's log: every replica stops leasing from the point of
    /// the log where it applies. Does not register the queue (Q13 lists published queues).
    async fn pause(&self, queue: &str) -> Result<()> {
        self.queue_change(queue, Op::SetPaused(true), "pause").await
    }

    /// A `RESUME` record: applying it wakes the receivers waiting on the queue, in every
    /// process that follows the log.
    async fn resume(&self, queue: &str) -> Result<()> {
        self.queue_change(queue, Op::SetPaused(false), "resume")
            .await
    }

    /// A `SET_RATE_LIMIT` record, after the limit was validated (nothing invalid is stored).
    /// Deliveries are counted per window at the claims' log times, so every replica counts
    /// the same ones.
    async fn set_rate_limit(&self, queue: &str, limit: Option<RateLimit>) -> Result<()> {
        self.inner
            .kit
            .check_name("queue", queue, "set_rate_limit")?;
        if let Some(l) = &limit {
            l.validate().map_err(self.inner.kit.tag("set_rate_limit"))?;
        }
        self.queue_change(queue, Op::SetRateLimit(limit), "set_rate_limit")
            .await
    }

    /// A `REPRIORITISE` record: the model moves every stored copy at the point of the log
    /// where it applies (atomic with respect to every other call).
    async fn reprioritise(&self, queue: &str, id: MessageId, priority: Priority) -> Result<()> {
        let op = Op::Reprioritise { id, priority };
        match self.queue_call(queue, op, "reprioritise").await? {
            Answer::Found(true) => Ok(()),
            Answer::Found(false) => Err(self.inner.kit.tag("reprioritise")(Error::not_found(
                format!("no ready, delayed or leased message {id} in queue {queue:?}"),
            ))),
            other => Err(unexpected(self.inner.kit, "reprioritise", &other)),
        }
    }
}
