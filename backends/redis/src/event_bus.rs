//! [`EventBus`] for [`RedisBackend`] on Redis Streams.
//!
//! - A topic is a stream (`{<prefix>:t:<topic>}:log`); each entry holds the event's id (`i`),
//!   its due time when emitted with a delay (`d`, server clock) and its wire bytes (`m`). Retention is applied exactly (`MAXLEN =`, `MINID =`) on every append and
//!   read; age is measured from the server time of the append (the entry id).
//! - A consumer group is a Redis consumer group on that stream, created by its first receive
//!   at the start of the retained log (or by `create_group` where asked, or by `reset_group`);
//!   configuring it or reading its stats does not create it. `XREADGROUP` moves its cursor;
//!   the entries it read stay in its pending entries list until the group is done with them
//!   (ack, dead letter).
//! - Leases, retries and dead letters of a group use the queue's scripts on the group's own
//!   keys: one FIFO ready list (events ignore priority, E4), the delayed set, the lease set
//!   with tokens. Lease expiry is found through the lease set rather than through the pending
//!   list's idle times, because a pending entry cannot carry the per-delivery token and the
//!   extendable deadline that fence a stale holder (E3: the same rules as a queue).
//! - `lag` is the number of log entries after the group's cursor.
//! - An idle receive blocks in `XREAD BLOCK` on the log and the group's wake-up stream, so an
//!   emit, a release or a reset wakes every waiting consumer of the topic at once.

use std::time::Duration;

use async_trait::async_trait;
use courier_core::clock::ms_ceil;
use courier_core::{
    DeadLetter, Delivery, Error, EventBus, GroupStats, Lease, Message, MessageId, Page,
    QueueConfig, ReplayFrom, Result, Retention, Selection, Settle, SharedClock, wire,
};
use tokio::time::Instant;

use crate::error::{KIT, map_err};
use courier_core::backend::Batch;

use crate::queue::{Claimed, Control, DeadMove, Origin, block_for, wait_end};
use crate::reply::{array, string, take_bytes};
use crate::scripts::{Mode, max_len_arg};
use crate::{BACKEND_NAME, RedisBackend, keys};

/// Events per emit script call.
const EMIT_CHUNK: usize = 1000;

impl RedisBackend {
    pub(crate) fn retention(&self, topic: &str) -> Retention {
        self.inner
            .retention
            .read()
            .get(topic)
            .copied()
            .unwrap_or_default()
    }

    fn check_group(&self, topic: &str, group: &str, operation: &'static str) -> Result<()> {
        KIT.check_group(topic, group, operation)
    }

    fn group_keys(&self, topic: &str, group: &str) -> Vec<String> {
        keys::group(&self.inner.prefix, topic, group)
    }

    /// Block until the log or the group's wake-up stream gets an entry after the given ids,
    /// or `block` passes. Without a log id (a paused group, E8: an emit cannot help it), on
    /// the wake-up stream only, which a resume appends to.
    async fn wait_group(
        &self,
        keys: &[String],
        last_log: Option<&str>,
        last_wake: &str,
        block: Duration,
    ) -> Result<()> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(ms_ceil(block + crate::wait::SERVER_SLACK))
            .arg("STREAMS");
        match last_log {
            Some(last_log) => cmd
                .arg(&keys[keys::GROUP_LOG])
                .arg(&keys[keys::GROUP_WAKE])
                .arg(last_log)
                .arg(last_wake),
            None => cmd.arg(&keys[keys::GROUP_WAKE]).arg(last_wake),
        };
        self.inner
            .waiters
            .run(
                "receive",
                &keys[keys::GROUP_WAKE],
                &cmd,
                block,
                self.conn("receive"),
            )
            .await?;
        Ok(())
    }

    /// The stream id of the retained event `id`, if any.
    async fn find_event(
        &self,
        log: &str,
        id: MessageId,
        operation: &'static str,
    ) -> Result<Option<String>> {
        let wanted = id.to_string();
        // UUIDv7 ids start with their creation time (ms): look around it first.
        let ms = (id.as_u128() >> 80) as u64;
        let window = 60_000;
        let near = (
            format!("{}-0", ms.saturating_sub(window)),
            format!("{}-18446744073709551615", ms.saturating_add(window)),
        );
        if let Some(sid) = self
            .scan_log(log, &near.0, &near.1, &wanted, operation)
            .await?
        {
            return Ok(Some(sid));
        }
        self.scan_log(log, "-", "+", &wanted, operation).await
    }

    async fn scan_log(
        &self,
        log: &str,
        start: &str,
        end: &str,
        wanted: &str,
        operation: &'static str,
    ) -> Result<Option<String>> {
        let mut conn = self.conn("reset_group");
        let mut from = start.to_string();
        loop {
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(log).arg(&from).arg(end).arg("COUNT").arg(500);
            let reply: redis::Value = crate::scripts::retry_refused(&mut conn, &cmd)
                .await
                .map_err(|e| map_err(operation, e))?;
            let entries = array(reply).unwrap_or_default();
            let n = entries.len();
            let mut last = None;
            for e in entries {
                let mut parts = array(e).unwrap_or_default().into_iter();
                let (Some(sid), Some(fields)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let sid = string(&sid).unwrap_or_default();
                let fields = array(fields).unwrap_or_default();
                let mut it = fields.iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    if string(k).as_deref() == Some("i") && string(v).as_deref() == Some(wanted) {
                        return Ok(Some(sid));
                    }
                }
                last = Some(sid);
            }
            match last {
                Some(sid) if n == 500 => from = format!("({sid}"),
                _ => return Ok(None),
            }
        }
    }
}

impl RedisBackend {
    async fn group_control(
        &self,
        topic: &str,
        group: &str,
        operation: &'static str,
        op: Control,
    ) -> Result<()> {
        self.check_group(topic, group, operation)?;
        let config = self.group_config(topic, group);
        let mode = Mode::Group {
            group,
            retention: self.retention(topic),
        };
        self.control_with(operation, &self.group_keys(topic, group), &config, mode, op)
            .await
    }

    /// The stream id of the last log entry strictly before `sid`, or `0` when there is none:
    /// a group whose last delivered id it is reads from `sid` on (as `group_reset.lua` places
    /// a reset group).
    async fn last_before(&self, log: &str, sid: &str, operation: &'static str) -> Result<String> {
        if sid == "0-0" {
            return Ok("0".into());
        }
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(log)
            .arg(format!("({sid}"))
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let mut conn = self.conn(operation);
        let reply: redis::Value = crate::scripts::retry_refused(&mut conn, &cmd)
            .await
            .map_err(|e| map_err(operation, e))?;
        let entry = array(reply).unwrap_or_default().into_iter().next();
        let id = entry
            .and_then(|e| array(e).unwrap_or_default().into_iter().next())
            .and_then(|v| string(&v));
        Ok(id.unwrap_or_else(|| "0".into()))
    }

    /// Whether the consumer group exists on the topic's log.
    async fn group_exists(&self, log: &str, group: &str, operation: &'static str) -> Result<bool> {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("CONSUMERS").arg(log).arg(group);
        let mut conn = self.conn(operation);
        match crate::scripts::retry_refused::<_, redis::Value>(&mut conn, &cmd).await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("NOGROUP") => Ok(false),
            // No log yet, so no group on it.
            Err(e) if e.to_string().contains("no such key") => Ok(false),
            Err(e) => Err(map_err(operation, e)),
        }
    }
}

#[async_trait]
impl EventBus for RedisBackend {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    fn configure_group(&self, topic: &str, group: &str, config: QueueConfig) -> Result<()> {
        self.inner
            .configs
            .configure_group(KIT, topic, group, config)
    }

    fn group_config(&self, topic: &str, group: &str) -> QueueConfig {
        self.inner.configs.group(topic, group)
    }

    fn set_retention(&self, topic: &str, retention: Retention) -> Result<()> {
        KIT.check_name("topic", topic, "set_retention")?;
        self.inner
            .retention
            .write()
            .insert(topic.to_string(), retention);
        Ok(())
    }

    async fn emit_batch(&self, topic: &str, events: Vec<Message>) -> Result<Vec<MessageId>> {
        let config = self.inner.configs.default_config();
        let now = self.inner.clock.now_ms();
        // The whole batch is checked and encoded before anything is appended.
        let (ids, encoded) = KIT.prepare_batch(Batch::Emit, topic, &config, events, now, |m| {
            let delay = m.not_before.map_or(0, |at| at.saturating_sub(now));
            Ok((m.id, delay, wire::encode(&m)?))
        })?;
        let retention = self.retention(topic);
        let log = [keys::log(&self.inner.prefix, topic)];
        let script = &self.inner.scripts.emit;
        let mut stored = 0;
        for chunk in encoded.chunks(EMIT_CHUNK) {
            let mut cmd = script.call(&log);
            cmd.arg(max_len_arg(&retention))
                .arg(retention.max_age.map_or(0, ms_ceil))
                .arg(chunk.len());
            for (id, delay, bytes) in chunk {
                cmd.arg(id.to_string()).arg(*delay).arg(&bytes[..]);
            }
            let mut conn = self.conn("emit");
            if let Err(e) = script.run(&mut conn, &cmd).await {
                return Err(map_err("emit", e).with_stored(stored));
            }
            stored += chunk.len();
        }
        Ok(ids)
    }

    async fn receive(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>> {
        self.check_group(topic, group, "receive")?;
        KIT.check_max(max)?;
        let keys = self.group_keys(topic, group);
        let origin = Origin::Group {
            topic: topic.to_string(),
            group: group.to_string(),
        };
        let end = wait_end(wait);
        loop {
            match self.claim_detached(origin.clone(), max).await? {
                Claimed::Got { deliveries, .. } => {
                    if !deliveries.is_empty() || Instant::now() >= end {
                        return Ok(deliveries);
                    }
                }
                Claimed::Empty { next_due_ms, rest } => {
                    let Some(block) = block_for(end, next_due_ms) else {
                        return Ok(Vec::new());
                    };
                    let last_log = rest.first().and_then(string).unwrap_or_else(|| "$".into());
                    let last_wake = rest.get(1).and_then(string).unwrap_or_else(|| "$".into());
                    // '' while the group is paused (group_claim.lua).
                    let last_log = Some(last_log.as_str()).filter(|l| !l.is_empty());
                    self.wait_group(&keys, last_log, &last_wake, block).await?;
                }
            }
        }
    }

    async fn settle(&self, topic: &str, group: &str, ops: Vec<Settle>) -> Result<Vec<Result<()>>> {
        self.check_group(topic, group, "settle")?;
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let config = self.group_config(topic, group);
        let mode = Mode::Group {
            group,
            retention: self.retention(topic),
        };
        self.settle_with(&self.group_keys(topic, group), &config, mode, ops)
            .await
    }

    async fn extend(
        &self,
        topic: &str,
        group: &str,
        lease: &Lease,
        visibility: Duration,
    ) -> Result<Lease> {
        self.check_group(topic, group, "extend")?;
        let config = self.group_config(topic, group);
        let mode = Mode::Group {
            group,
            retention: self.retention(topic),
        };
        self.extend_with(
            &self.group_keys(topic, group),
            &config,
            mode,
            lease,
            visibility,
        )
        .await
    }

    async fn reset_group(&self, topic: &str, group: &str, from: ReplayFrom) -> Result<()> {
        self.check_group(topic, group, "reset_group")?;
        let keys = self.group_keys(topic, group);
        let retention = self.retention(topic);
        if matches!(from, ReplayFrom::Id(_))
            && (retention.max_len.is_some() || retention.max_age.is_some())
        {
            // Apply the topic's retention first (the trim `topic_len` runs), so an event beyond
            // max_len or max_age is not found, even before the next emit or read trims it (E5).
            self.topic_len(topic).await?;
        }
        let (position, id) = match from {
            ReplayFrom::Start => ("start", String::new()),
            ReplayFrom::End => ("end", String::new()),
            ReplayFrom::Time(ms) => ("before", format!("{ms}-0")),
            ReplayFrom::Id(id) => match self
                .find_event(&keys[keys::GROUP_LOG], id, "reset_group")
                .await?
            {
                Some(sid) => ("before", sid),
                None => {
                    return Err(KIT.tag("reset_group")(Error::not_found(format!(
                        "event {id} is not retained in topic {topic:?}"
                    ))));
                }
            },
            other => return Err(KIT.unsupported("reset_group", other)),
        };
        let config = self.group_config(topic, group);
        let mode = Mode::Group {
            group,
            retention: self.retention(topic),
        };
        let script = &self.inner.scripts.group_reset;
        let mut cmd = script.call(&keys);
        crate::scripts::common_args(&mut cmd, &config, mode);
        cmd.arg(position).arg(id);
        let mut conn = self.conn("reset_group");
        script
            .run(&mut conn, &cmd)
            .await
            .map_err(|e| map_err("reset_group", e))?;
        Ok(())
    }

    /// One `XGROUP CREATE ... MKSTREAM`: Redis creates the group atomically or answers
    /// `BUSYGROUP` when it exists, whoever created it.
    async fn create_group(&self, topic: &str, group: &str, from: ReplayFrom) -> Result<bool> {
        const OP: &str = "create_group";
        self.check_group(topic, group, OP)?;
        let log = keys::log(&self.inner.prefix, topic);
        let last_delivered = match from {
            ReplayFrom::Start => "0".to_string(),
            ReplayFrom::End => "$".to_string(),
            ReplayFrom::Time(ms) => self.last_before(&log, &format!("{ms}-0"), OP).await?,
            ReplayFrom::Id(id) => match self.find_event(&log, id, OP).await? {
                Some(sid) => self.last_before(&log, &sid, OP).await?,
                None if self.group_exists(&log, group, OP).await? => return Ok(false),
                None => {
                    return Err(KIT.tag(OP)(Error::not_found(format!(
                        "event {id} is not retained in topic {topic:?}"
                    ))));
                }
            },
            other => return Err(KIT.unsupported(OP, other)),
        };
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&log)
            .arg(group)
            .arg(&last_delivered)
            .arg("MKSTREAM");
        let mut conn = self.conn("create_group");
        match crate::scripts::retry_refused::<_, redis::Value>(&mut conn, &cmd).await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
            Err(e) => Err(map_err(OP, e)),
        }
    }

    async fn group_stats(&self, topic: &str, group: &str) -> Result<GroupStats> {
        self.check_group(topic, group, "group_stats")?;
        let config = self.group_config(topic, group);
        let mode = Mode::Group {
            group,
            retention: self.retention(topic),
        };
        let script = &self.inner.scripts.group_stats;
        let (mut queue, rest) = self
            .stats_with(script, &self.group_keys(topic, group), &config, mode)
            .await?;
        // Events have no priority order: the reference model counts them at Normal.
        queue.ready = [0, 0, queue.ready[0], 0];
        // `paused` was read with the rest (group_stats.lua's 14th value); groups have no rate
        // limit.
        let lag = rest.first().and_then(crate::reply::uint).unwrap_or(0);
        Ok(GroupStats { queue, lag })
    }

    /// `XRANGE` on the topic's log after applying its retention (the `topic_len` script), so
    /// nothing past the retention is read.
    async fn read_events(&self, topic: &str, from: ReplayFrom, max: usize) -> Result<Vec<Message>> {
        const OP: &str = "read_events";
        KIT.check_read(topic, max)?;
        self.topic_len(topic).await?;
        let log = keys::log(&self.inner.prefix, topic);
        let start = match from {
            ReplayFrom::Start => "-".to_string(),
            ReplayFrom::End => return Ok(Vec::new()),
            ReplayFrom::Time(ms) => format!("{ms}-0"),
            ReplayFrom::Id(id) => self.find_event(&log, id, OP).await?.ok_or_else(|| {
                KIT.tag(OP)(Error::not_found(format!(
                    "event {id} is not retained in topic {topic:?}"
                )))
            })?,
            other => return Err(KIT.unsupported(OP, other)),
        };
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&log).arg(&start).arg("+").arg("COUNT").arg(max);
        let mut conn = self.conn(OP);
        let reply: redis::Value = crate::scripts::retry_refused(&mut conn, &cmd)
            .await
            .map_err(|e| map_err(OP, e))?;
        let mut events = Vec::new();
        for entry in array(reply).unwrap_or_default() {
            let Some(fields) = array(entry).unwrap_or_default().into_iter().nth(1) else {
                continue;
            };
            let mut fields = array(fields).unwrap_or_default();
            let at = (0..fields.len())
                .step_by(2)
                .find(|&i| string(&fields[i]).as_deref() == Some("m"));
            let Some(bytes) = at.and_then(|i| fields.get_mut(i + 1)).and_then(take_bytes) else {
                continue;
            };
            // An event that does not decode is skipped (the trait says so).
            if let Ok(m) = wire::decode(&bytes::Bytes::from(bytes)) {
                events.push(m);
            }
        }
        Ok(events)
    }

    async fn topic_len(&self, topic: &str) -> Result<u64> {
        KIT.check_name("topic", topic, "topic_len")?;
        let retention = self.retention(topic);
        let log = [keys::log(&self.inner.prefix, topic)];
        let script = &self.inner.scripts.topic_len;
        let mut cmd = script.call(&log);
        cmd.arg(retention.max_age.map_or(0, ms_ceil))
            .arg(max_len_arg(&retention));
        let mut conn = self.conn("topic_len");
        let reply = script
            .run(&mut conn, &cmd)
            .await
            .map_err(|e| map_err("topic_len", e))?;
        Ok(crate::reply::uint(&reply).unwrap_or(0))
    }

    async fn dead_letters(&self, topic: &str, group: &str, page: Page) -> Result<Vec<DeadLetter>> {
        self.check_group(topic, group, "dead_letters")?;
        let config = self.group_config(topic, group);
        let mode = Mode::Group {
            group,
            retention: self.retention(topic),
        };
        self.dead_page_with(&self.group_keys(topic, group), &config, mode, page)
            .await
    }

    async fn requeue_dead(&self, topic: &str, group: &str, which: Selection) -> Result<u64> {
        self.check_group(topic, group, "requeue_dead")?;
        let config = self.group_config(topic, group);
        let mode = Mode::Group {
            group,
            retention: self.retention(topic),
        };
        self.dead_move_with(
            &self.group_keys(topic, group),
            &config,
            mode,
            DeadMove::Requeue(None),
            which,
        )
        .await
    }

    async fn purge_dead(&self, topic: &str, group: &str, which: Selection) -> Result<u64> {
        self.check_group(topic, group, "purge_dead")?;
        let config = self.group_config(topic, group);
        let mode = Mode::Group {
            group,
            retention: self.retention(topic),
        };
        self.dead_move_with(
            &self.group_keys(topic, group),
            &config,
            mode,
            DeadMove::Purge,
            which,
        )
        .await
    }

    async fn list_topics(&self) -> Result<Vec<String>> {
        let prefix = &self.inner.prefix;
        let keys = self.scan(&keys::topic_scan(prefix), "list_topics").await?;
        let mut names: Vec<String> = keys
            .iter()
            .filter_map(|k| keys::topic_of(prefix, k).map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The pause lives in the group's control hash (not in the log's consumer group), so a
    /// group that does not exist yet can be paused without being created, starts paused when
    /// it is, and a reset (which recreates the consumer group) keeps it.
    async fn pause_group(&self, topic: &str, group: &str) -> Result<()> {
        self.group_control(topic, group, "pause_group", Control::Pause)
            .await
    }

    async fn resume_group(&self, topic: &str, group: &str) -> Result<()> {
        self.group_control(topic, group, "resume_group", Control::Resume)
            .await
    }

    /// The log's consumer groups (`XINFO GROUPS`): a group exists in Redis once it was placed.
    async fn list_groups(&self, topic: &str) -> Result<Vec<String>> {
        const OP: &str = "list_groups";
        KIT.check_name("topic", topic, OP)?;
        let log = keys::log(&self.inner.prefix, topic);
        let mut conn = self.conn(OP);
        let reply: redis::RedisResult<redis::streams::StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&log)
            .query_async(&mut conn)
            .await;
        let mut names: Vec<String> = match reply {
            Ok(r) => r.groups.into_iter().map(|g| g.name).collect(),
            // The topic has no log: no event, no group.
            Err(e) if e.to_string().contains("no such key") => Vec::new(),
            Err(e) => return Err(map_err(OP, e)),
        };
        names.sort();
        Ok(names)
    }
}
