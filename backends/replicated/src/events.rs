//! [`EventBus`] for [`AmqpBackend`]: each topic is a replicated [`TopicModel`] (its retained
//! log and its consumer groups) in the stream `<prefix>.t.<topic>`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use courier_core::backend::{Batch, Kit};
use courier_core::{
    DeadLetter, Delivery, Error, ErrorKind, EventBus, GroupStats, Lease, Message, MessageId, Page,
    QueueConfig, ReplayFrom, Result, Retention, Selection, Settle, SharedClock,
};

use crate::models::{Answer, MAX_CLAIM, TopicModel};
use crate::queue::encode_entry;
use crate::record::Op;
use crate::replica::Replica;
use crate::{Log, Replicated, registry};

fn unexpected(kit: Kit, operation: &'static str, answer: &Answer) -> Error {
    kit.tag(operation)(Error::new(
        ErrorKind::Backend,
        format!("unexpected answer from the replicated topic: {answer:?}"),
    ))
}

impl<L: Log> Replicated<L> {
    fn topic_replica(&self, topic: &str) -> Arc<Replica<TopicModel>> {
        if let Some(r) = self.inner.topics.read().get(topic) {
            return r.clone();
        }
        let stream = format!("t.{topic}");
        self.inner
            .topics
            .write()
            .entry(topic.to_owned())
            .or_insert_with(|| {
                let model = TopicModel::new(
                    topic.to_owned(),
                    &stream,
                    self.inner.configs.default_config(),
                );
                Replica::new(stream, self.inner.origin, model)
            })
            .clone()
    }

    /// Run `op` for `group` (validated) on the topic's replica, with this handle's config of
    /// the group.
    async fn group_call(
        &self,
        topic: &str,
        group: &str,
        op: impl FnOnce(QueueConfig) -> Op,
        operation: &'static str,
    ) -> Result<Answer> {
        self.inner.kit.check_group(topic, group, operation)?;
        let config = self.inner.configs.group(topic, group);
        self.topic_replica(topic)
            .call(&self.inner.env, group, op(config), operation)
            .await
    }
}

#[async_trait]
impl<L: Log> EventBus for Replicated<L> {
    fn backend_name(&self) -> &'static str {
        self.inner.kit.backend()
    }

    fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    fn configure_group(&self, topic: &str, group: &str, config: QueueConfig) -> Result<()> {
        self.inner
            .configs
            .configure_group(self.inner.kit, topic, group, config)
    }

    fn group_config(&self, topic: &str, group: &str) -> QueueConfig {
        self.inner.configs.group(topic, group)
    }

    /// Recorded in the topic's log (so every process applies it) by a task of its own; the
    /// next call of this handle on the topic waits for it, so it applies before them.
    fn set_retention(&self, topic: &str, retention: Retention) -> Result<()> {
        self.inner.kit.check_name("topic", topic, "set_retention")?;
        let replica = self.topic_replica(topic);
        let env = self.inner.env.clone();
        let task = tokio::spawn(async move {
            replica
                .call(&env, "", Op::SetRetention(retention), "set_retention")
                .await
                .map(drop)
        });
        self.inner
            .retention_tasks
            .lock()
            .insert(topic.to_owned(), task);
        Ok(())
    }

    async fn emit_batch(&self, topic: &str, events: Vec<Message>) -> Result<Vec<MessageId>> {
        let now = self.inner.clock.now_ms();
        let config = self.inner.configs.default_config();
        let (ids, entries) =
            self.inner
                .kit
                .prepare_batch(Batch::Emit, topic, &config, events, now, encode_entry)?;
        self.retention_applied(topic).await?;
        if !entries.is_empty() {
            self.register(registry::Kind::Topic, topic, "emit").await?;
        }
        let replica = self.topic_replica(topic);
        self.append_entries(&replica, entries, Op::Emit, "emit")
            .await?;
        Ok(ids)
    }

    /// Cancel safe: what a dropped receive leased is released at once (not counted).
    async fn receive(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>> {
        self.inner.kit.check_group(topic, group, "receive")?;
        self.inner.kit.check_max(max)?;
        self.retention_applied(topic).await?;
        self.register(registry::Kind::Topic, topic, "receive")
            .await?;
        let replica = self.topic_replica(topic);
        let env = &self.inner.env;
        let until = tokio::time::Instant::now() + wait;
        let max = u32::try_from(max.min(MAX_CLAIM)).unwrap_or(u32::MAX);
        loop {
            let config = self.inner.configs.group(topic, group);
            // The lease runs from when this receive returns: add the claim's round trip.
            let config =
                config.with_visibility_timeout(config.visibility_timeout + replica.lease_pad());
            match replica
                .call(env, group, Op::Claim { config, max }, "receive")
                .await?
            {
                Answer::Leased(got) if !got.is_empty() => return Ok(got),
                Answer::Leased(_) => {}
                other => return Err(unexpected(self.inner.kit, "receive", &other)),
            }
            if tokio::time::Instant::now() >= until {
                return Ok(Vec::new());
            }
            if !replica.wait_ready(env, group, until).await {
                return Ok(Vec::new());
            }
        }
    }

    async fn settle(&self, topic: &str, group: &str, ops: Vec<Settle>) -> Result<Vec<Result<()>>> {
        if ops.is_empty() {
            self.inner.kit.check_group(topic, group, "settle")?;
            return Ok(Vec::new());
        }
        match self
            .group_call(topic, group, |config| Op::Settle { config, ops }, "settle")
            .await?
        {
            Answer::Settled(rs) => Ok(rs
                .into_iter()
                .map(|r| r.map_err(self.inner.kit.tag("settle")))
                .collect()),
            other => Err(unexpected(self.inner.kit, "settle", &other)),
        }
    }

    async fn extend(
        &self,
        topic: &str,
        group: &str,
        lease: &Lease,
        visibility: Duration,
    ) -> Result<Lease> {
        let lease = *lease;
        let op = |config| Op::Extend {
            config,
            lease,
            visibility,
        };
        match self.group_call(topic, group, op, "extend").await? {
            Answer::Extended(r) => r.map_err(self.inner.kit.tag("extend")),
            other => Err(unexpected(self.inner.kit, "extend", &other)),
        }
    }

    async fn reset_group(&self, topic: &str, group: &str, from: ReplayFrom) -> Result<()> {
        self.inner.kit.check_group(topic, group, "reset_group")?;
        self.retention_applied(topic).await?;
        self.register(registry::Kind::Topic, topic, "reset_group")
            .await?;
        let op = |config| Op::ResetGroup { config, from };
        match self.group_call(topic, group, op, "reset_group").await? {
            Answer::Reset(r) => r.map_err(self.inner.kit.tag("reset_group")),
            other => Err(unexpected(self.inner.kit, "reset_group", &other)),
        }
    }

    async fn create_group(&self, topic: &str, group: &str, from: ReplayFrom) -> Result<bool> {
        self.inner.kit.check_group(topic, group, "create_group")?;
        self.retention_applied(topic).await?;
        self.register(registry::Kind::Topic, topic, "create_group")
            .await?;
        let op = |config| Op::CreateGroup { config, from };
        match self.group_call(topic, group, op, "create_group").await? {
            Answer::Created(r) => r.map_err(self.inner.kit.tag("create_group")),
            other => Err(unexpected(self.inner.kit, "create_group", &other)),
        }
    }

    async fn group_stats(&self, topic: &str, group: &str) -> Result<GroupStats> {
        self.retention_applied(topic).await?;
        self.group_call(topic, group, |config| Op::Sync { config }, "group_stats")
            .await?;
        Ok(self.topic_replica(topic).read(|m| m.group_stats(group)))
    }

    async fn read_events(&self, topic: &str, from: ReplayFrom, max: usize) -> Result<Vec<Message>> {
        self.inner.kit.check_read(topic, max)?;
        self.retention_applied(topic).await?;
        let config = self.inner.configs.default_config();
        self.topic_replica(topic)
            .call(&self.inner.env, "", Op::Sync { config }, "read_events")
            .await?;
        self.topic_replica(topic)
            .read(|m| m.topic.read(from, max, topic))
            .map_err(self.inner.kit.tag("read_events"))
    }

    async fn topic_len(&self, topic: &str) -> Result<u64> {
        self.inner.kit.check_name("topic", topic, "topic_len")?;
        self.retention_applied(topic).await?;
        let config = self.inner.configs.default_config();
        self.topic_replica(topic)
            .call(&self.inner.env, "", Op::Sync { config }, "topic_len")
            .await?;
        Ok(self.topic_replica(topic).read(|m| m.topic.len()))
    }

    async fn dead_letters(&self, topic: &str, group: &str, page: Page) -> Result<Vec<DeadLetter>> {
        self.retention_applied(topic).await?;
        self.group_call(topic, group, |config| Op::Sync { config }, "dead_letters")
            .await?;
        Ok(self
            .topic_replica(topic)
            .read(|m| m.dead_letters(group, page)))
    }

    async fn requeue_dead(&self, topic: &str, group: &str, which: Selection) -> Result<u64> {
        let op = |config| Op::RequeueDead {
            config,
            which,
            priority: None,
        };
        match self.group_call(topic, group, op, "requeue_dead").await? {
            Answer::Count(r) => r.map_err(self.inner.kit.tag("requeue_dead")),
            other => Err(unexpected(self.inner.kit, "requeue_dead", &other)),
        }
    }

    async fn purge_dead(&self, topic: &str, group: &str, which: Selection) -> Result<u64> {
        let op = |config| Op::PurgeDead { config, which };
        match self.group_call(topic, group, op, "purge_dead").await? {
            Answer::Count(r) => r.map_err(self.inner.kit.tag("purge_dead")),
            other => Err(unexpected(self.inner.kit, "purge_dead", &other)),
        }
    }

    async fn list_topics(&self) -> Result<Vec<String>> {
        self.registered(registry::Kind::Topic, "list_topics").await
    }

    /// A `PAUSE` record for the group in the topic's log. Neither registers the topic nor
    /// places the group (E7): a group paused before it exists starts paused when created.
    async fn pause_group(&self, topic: &str, group: &str) -> Result<()> {
        self.group_change(topic, group, true, "pause_group").await
    }

    /// A `RESUME` record: applying it wakes the group's waiting receivers in every process.
    async fn resume_group(&self, topic: &str, group: &str) -> Result<()> {
        self.group_change(topic, group, false, "resume_group").await
    }

    async fn list_groups(&self, topic: &str) -> Result<Vec<String>> {
        self.inner.kit.check_name("topic", topic, "list_groups")?;
        self.retention_applied(topic).await?;
        let config = self.inner.configs.default_config();
        self.topic_replica(topic)
            .call(&self.inner.env, "", Op::Sync { config }, "list_groups")
            .await?;
        Ok(self.topic_replica(topic).read(|m| m.topic.placed_groups()))
    }
}

impl<L: Log> Replicated<L> {
    /// Pause or resume a group (E8), after this handle's pending retention change.
    async fn group_change(
        &self,
        topic: &str,
        group: &str,
        paused: bool,
        operation: &'static str,
    ) -> Result<()> {
        self.inner.kit.check_group(topic, group, operation)?;
        self.retention_applied(topic).await?;
        match self
            .group_call(topic, group, |_| Op::SetPaused(paused), operation)
            .await?
        {
            Answer::Done => Ok(()),
            other => Err(unexpected(self.inner.kit, operation, &other)),
        }
    }

    /// Wait for this handle's last `set_retention` on `topic` to be in the log.
    async fn retention_applied(&self, topic: &str) -> Result<()> {
        let task = self.inner.retention_tasks.lock().remove(topic);
        match task {
            Some(task) => task.await.map_err(|e| {
                self.inner.kit.tag("set_retention")(Error::new(
                    ErrorKind::Backend,
                    format!("recording the retention of topic {topic:?} failed: {e}"),
                ))
            })?,
            None => Ok(()),
        }
    }
}
