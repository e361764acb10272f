//! [`EventBus`] for [`MemoryBackend`]: per topic an in-memory log, and per consumer group a
//! cursor into it plus a [`QueueState`] for the group's leases, retries and dead letters.
//!
//! - A group is created by its first receive with its cursor at the start of the retained log,
//!   so events emitted before a group first reads are delivered to it while they are retained;
//!   `create_group` creates it elsewhere, `reset_group` moves it. Configuring a group or reading
//!   its stats or dead letters keeps its settings but does not place its cursor: until it is
//!   placed, the group counts as not created (as on every backend).
//! - A receive moves events from the log at the cursor into the group's ready list only as
//!   many as it can lease, so `lag` (events at or after the cursor) stays meaningful.
//! - Events are delivered in emit order (E4): a group ignores `priority`. An event emitted with
//!   a delay waits out its delay in each group before it is delivered.
//! - Retention (max length / max age) is applied on every emit and read; age is measured from
//!   the instant the backend appended the event. A group whose cursor falls behind the
//!   retained log continues at the oldest retained event.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use courier_core::{
    DeadLetter, Delivery, Error, EventBus, GroupStats, Lease, Message, MessageId, Page,
    QueueConfig, ReplayFrom, Result, Retention, Selection, Settle, SharedClock,
};
use parking_lot::Mutex;

use courier_core::backend::{Batch, earlier_wake};

use crate::state::{QueueState, millis};
use crate::{BACKEND_NAME, KIT, MemoryBackend, Poll, Wakeup};

/// One topic: its log, groups and waiting receivers (all groups share one wake-up).
#[derive(Debug)]
pub(crate) struct TopicShared {
    topic: Mutex<Topic>,
    wakeup: Wakeup,
}

#[derive(Debug)]
struct LogEntry {
    /// When the backend appended it (ms, never decreasing along the log).
    at: u64,
    message: Message,
}

/// One topic's model: its retained log and its consumer groups. Every method is a function
/// of its arguments (the caller passes the instant), so replicas that apply the same calls
/// stay identical (the RabbitMQ backend replicates topics this way).
#[derive(Debug)]
pub struct Topic {
    log: VecDeque<LogEntry>,
    /// Sequence number of `log[0]` (equals `next` when the log is empty).
    base: u64,
    /// Sequence number of the next event emitted.
    next: u64,
    last_at: u64,
    retention: Retention,
    groups: HashMap<String, Group>,
    default_config: QueueConfig,
    /// Seeds each group's jitter generator (mixed with the group's name) when set, so that
    /// replicas draw the same jitter; `None` draws from the OS.
    seed: Option<u64>,
}

/// One consumer group of a [`Topic`].
#[derive(Debug)]
pub struct Group {
    /// Next sequence number to take from the log (`base <= cursor <= next`).
    cursor: u64,
    /// Whether the group exists for `create_group`: it was read (receive), reset or created.
    /// Until then the cursor follows the start of the retained log.
    placed: bool,
    /// The group's leases, retries and dead letters.
    pub state: QueueState,
}

impl Topic {
    /// An empty topic; groups start with `default_config` until configured.
    pub fn new(default_config: QueueConfig) -> Self {
        Topic {
            log: VecDeque::new(),
            base: 0,
            next: 0,
            last_at: 0,
            retention: Retention::default(),
            groups: HashMap::new(),
            default_config,
            seed: None,
        }
    }

    /// An empty topic whose groups draw their jitter from generators seeded with `seed` and
    /// their names (see [`QueueState::seeded`]).
    pub fn seeded(default_config: QueueConfig, seed: u64) -> Self {
        let mut topic = Topic::new(default_config);
        topic.seed = Some(seed);
        topic
    }

    /// Apply retention at `now`; groups behind the new start move up to it.
    pub fn trim(&mut self, now: u64) {
        let before = self.base;
        if let Some(max_len) = self.retention.max_len {
            let max_len = usize::try_from(max_len).unwrap_or(usize::MAX);
            while self.log.len() > max_len {
                self.log.pop_front();
                self.base += 1;
            }
        }
        if let Some(max_age) = self.retention.max_age {
            let oldest = now.saturating_sub(millis(max_age));
            while self.log.front().is_some_and(|e| e.at < oldest) {
                self.log.pop_front();
                self.base += 1;
            }
        }
        if self.base != before {
            for g in self.groups.values_mut() {
                g.cursor = g.cursor.max(self.base);
            }
        }
    }

    /// Make room for the group's state (cursor at the start of the retained log, not placed)
    /// unless it is there.
    pub fn ensure_group(&mut self, name: &str) {
        if !self.groups.contains_key(name) {
            let group = Group {
                cursor: self.base,
                placed: false,
                state: match self.seed {
                    Some(seed) => {
                        QueueState::seeded(self.default_config, false, seed ^ fnv1a(name))
                    }
                    None => QueueState::new(self.default_config, false),
                },
            };
            self.groups.insert(name.to_owned(), group);
        }
    }

    /// The view of a group that exists (see [`Topic::ensure_group`]); `None` otherwise.
    pub fn view(&mut self, group: &str) -> Option<View<'_>> {
        let Topic {
            log,
            base,
            next,
            groups,
            ..
        } = self;
        groups.get_mut(group).map(|g| View {
            log,
            base: *base,
            next: *next,
            group: g,
        })
    }

    /// A group brought up to `now`: retention applied, created if new, leases and delays
    /// processed.
    pub fn group_at(&mut self, group: &str, now: u64) -> View<'_> {
        self.trim(now);
        self.ensure_group(group);
        let Some(v) = self.view(group) else {
            unreachable!("ensure_group created the group")
        };
        v.group.state.tick(now);
        v
    }

    /// Append events (validated and prepared) at `now`; the log's instants never decrease.
    pub fn append(&mut self, events: Vec<Message>, now: u64) {
        let at = now.max(self.last_at);
        self.last_at = at;
        for message in events {
            self.log.push_back(LogEntry { at, message });
            self.next += 1;
        }
        self.trim(now);
    }

    /// Set the retention and apply it at `now`.
    pub fn set_retention(&mut self, retention: Retention, now: u64) {
        self.retention = retention;
        self.trim(now);
    }

    /// Events retained at `now`.
    pub fn retained(&mut self, now: u64) -> u64 {
        self.trim(now);
        self.log.len() as u64
    }

    /// Set a group's configuration (the group is made room for, not placed).
    pub fn configure_group(&mut self, group: &str, config: QueueConfig, now: u64) {
        self.trim(now);
        self.ensure_group(group);
        if let Some(g) = self.groups.get_mut(group) {
            g.state.config = config;
        }
    }

    /// Whether `group` has something to lease now (ready, or unread events in the log) and
    /// when something of it may come due by itself (a delay ends, a lease expires). A group
    /// with no state yet would start at the start of the retained log.
    pub fn readiness(&self, group: &str) -> (bool, Option<u64>) {
        match self.groups.get(group) {
            Some(g) => (
                g.state.ready_len() > 0 || g.cursor < self.next,
                g.state.next_wake(),
            ),
            None => (!self.log.is_empty(), None),
        }
    }

    /// Events retained (as of the last trim).
    pub fn len(&self) -> u64 {
        self.log.len() as u64
    }

    /// Whether no event is retained (as of the last trim).
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    /// A group's stats as of its last update; a group with no state counts the whole
    /// retained log as its lag.
    pub fn group_stats(&self, group: &str) -> GroupStats {
        match self.groups.get(group) {
            Some(g) => GroupStats {
                queue: g.state.stats(),
                lag: self.next - g.cursor,
            },
            None => GroupStats {
                queue: Default::default(),
                lag: self.next - self.base,
            },
        }
    }

    /// A group's dead letters, oldest first.
    pub fn dead_letters(&self, group: &str, page: Page) -> Vec<DeadLetter> {
        self.groups
            .get(group)
            .map(|g| g.state.dead_letters(page))
            .unwrap_or_default()
    }

    /// Up to `max` retained events from `from`, oldest first, as of the last trim (E5).
    ///
    /// # Errors
    /// `NotFound` for an id that is not retained.
    pub fn read(&self, from: ReplayFrom, max: usize, topic: &str) -> Result<Vec<Message>> {
        let start = match from {
            ReplayFrom::Start => 0,
            ReplayFrom::End => self.log.len(),
            ReplayFrom::Time(ms) => self.log.partition_point(|e| e.at < ms),
            ReplayFrom::Id(id) => match self.log.iter().position(|e| e.message.id == id) {
                Some(i) => i,
                None => {
                    return Err(KIT.tag("read_events")(Error::not_found(format!(
                        "event {id} is not retained in topic {topic:?}"
                    ))));
                }
            },
            other => return Err(KIT.unsupported("read_events", other)),
        };
        Ok(self
            .log
            .iter()
            .skip(start)
            .take(max)
            .map(|e| e.message.clone())
            .collect())
    }

    /// A group's configuration, if the group has state here.
    pub fn group_config(&self, group: &str) -> Option<QueueConfig> {
        self.groups.get(group).map(|g| g.state.config)
    }

    /// The groups that were placed (created, reset or received from), sorted (E7). A group
    /// only configured or looked at is not one of them.
    pub fn placed_groups(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, g)| g.placed)
            .map(|(name, _)| name.clone())
            .collect();
        v.sort();
        v
    }

    /// Whether the topic is listed (E7): an event was emitted to it or a group was placed.
    pub fn is_listed(&self) -> bool {
        self.next > 0 || self.groups.values().any(|g| g.placed)
    }
}

/// FNV-1a: a hash of a name that is the same in every process and build.
pub fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What a group operation sees: the retained log and the group.
pub struct View<'a> {
    log: &'a VecDeque<LogEntry>,
    base: u64,
    next: u64,
    /// The group.
    pub group: &'a mut Group,
}

impl View<'_> {
    /// Move events from the log into the group's ready list until `want` are ready.
    fn pull(&mut self, want: usize, now: u64) {
        while self.group.state.ready_len() < want && self.group.cursor < self.next {
            let idx = (self.group.cursor - self.base) as usize;
            let Some(e) = self.log.get(idx) else { break };
            self.group.state.publish(e.message.clone(), now);
            self.group.cursor += 1;
        }
    }

    fn lag(&self) -> u64 {
        self.next - self.group.cursor
    }

    /// Lease up to `max` events at `now` (placing the group if it was not): events are taken
    /// from the log at the cursor only as many as can be leased.
    pub fn receive(&mut self, max: usize, now: u64, out: &mut Vec<Delivery>) {
        self.group.placed = true;
        if self.group.state.is_paused() {
            // Nothing leaves the log while paused (E8): the lag keeps counting it.
            return;
        }
        self.pull(max, now);
        self.group.state.lease(now, max, out);
    }

    /// Move the group to `from`, dropping its pending, delayed and leased events (E5).
    ///
    /// # Errors
    /// `NotFound` for an id that is not retained.
    pub fn reset(&mut self, from: ReplayFrom, topic: &str) -> Result<()> {
        let cursor = self.position(from, topic, "reset_group")?;
        self.group.state.clear_pending();
        self.group.cursor = cursor;
        self.group.placed = true;
        Ok(())
    }

    /// Place a group that was not placed at `from`; `false` when it was.
    ///
    /// # Errors
    /// `NotFound` for an id that is not retained.
    pub fn create(&mut self, from: ReplayFrom, topic: &str) -> Result<bool> {
        if self.group.placed {
            return Ok(false);
        }
        self.group.cursor = self.position(from, topic, "create_group")?;
        self.group.placed = true;
        Ok(true)
    }

    /// The group's stats.
    pub fn stats(&self) -> GroupStats {
        GroupStats {
            queue: self.group.state.stats(),
            lag: self.lag(),
        }
    }

    /// The sequence number `from` designates (E5).
    fn position(&self, from: ReplayFrom, topic: &str, operation: &'static str) -> Result<u64> {
        Ok(match from {
            ReplayFrom::Start => self.base,
            ReplayFrom::End => self.next,
            ReplayFrom::Time(ms) => self.base + self.log.partition_point(|e| e.at < ms) as u64,
            ReplayFrom::Id(id) => match self.log.iter().position(|e| e.message.id == id) {
                Some(i) => self.base + i as u64,
                None => {
                    return Err(KIT.tag(operation)(Error::not_found(format!(
                        "event {id} is not retained in topic {topic:?}"
                    ))));
                }
            },
            other => return Err(KIT.unsupported(operation, other)),
        })
    }
}

impl TopicShared {
    fn new(default_config: QueueConfig) -> Self {
        TopicShared {
            topic: Mutex::new(Topic::new(default_config)),
            wakeup: Wakeup::default(),
        }
    }

    /// Run `f` on one group brought up to `now` (retention applied, leases and delays
    /// processed), under the topic lock; wake waiters when something became ready or the next
    /// due time moved earlier.
    fn with_group<R>(&self, group: &str, now: u64, f: impl FnOnce(&mut View<'_>) -> R) -> R {
        let mut guard = self.topic.lock();
        guard.trim(now);
        guard.ensure_group(group);
        let Some(mut view) = guard.view(group) else {
            unreachable!("ensure_group created the group")
        };
        let ready_before = view.group.state.ready_len();
        let wake_before = view.group.state.next_wake();
        view.group.state.tick(now);
        let r = f(&mut view);
        let wake = view.group.state.ready_len() > ready_before
            || earlier_wake(view.group.state.next_wake(), wake_before);
        drop(guard);
        if wake {
            self.wakeup.wake();
        }
        r
    }
}

impl MemoryBackend {
    /// The topic, created on first use. The name has been validated.
    fn topic(&self, name: &str) -> Arc<TopicShared> {
        if let Some(t) = self.inner.topics.read().get(name) {
            return t.clone();
        }
        self.inner
            .topics
            .write()
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(TopicShared::new(self.inner.default_config)))
            .clone()
    }

    /// Validate both names, then run `f` on the group at the current time.
    fn on_group<R>(
        &self,
        topic: &str,
        group: &str,
        operation: &'static str,
        f: impl FnOnce(&mut View<'_>, u64) -> R,
    ) -> Result<R> {
        KIT.check_group(topic, group, operation)?;
        let t = self.topic(topic);
        let now = self.now();
        Ok(t.with_group(group, now, |v| f(v, now)))
    }
}

#[async_trait]
impl EventBus for MemoryBackend {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    fn configure_group(&self, topic: &str, group: &str, config: QueueConfig) -> Result<()> {
        KIT.check_group_config(topic, group, &config)?;
        let t = self.topic(topic);
        t.topic.lock().configure_group(group, config, self.now());
        Ok(())
    }

    fn group_config(&self, topic: &str, group: &str) -> QueueConfig {
        let t = self.inner.topics.read().get(topic).cloned();
        t.and_then(|t| t.topic.lock().group_config(group))
            .unwrap_or(self.inner.default_config)
    }

    fn set_retention(&self, topic: &str, retention: Retention) -> Result<()> {
        KIT.check_name("topic", topic, "set_retention")?;
        let t = self.topic(topic);
        t.topic.lock().set_retention(retention, self.now());
        Ok(())
    }

    async fn emit_batch(&self, topic: &str, events: Vec<Message>) -> Result<Vec<MessageId>> {
        let now = self.now();
        // The whole batch is checked before anything is appended.
        let (ids, events) = KIT.prepare_batch(
            Batch::Emit,
            topic,
            &self.inner.default_config,
            events,
            now,
            Ok,
        )?;
        let t = self.topic(topic);
        t.topic.lock().append(events, now);
        if !ids.is_empty() {
            t.wakeup.wake();
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
        KIT.check_group(topic, group, "receive")?;
        KIT.check_max(max)?;
        let t = self.topic(topic);
        let got = crate::wait_for(&t.wakeup, wait, || {
            let now = self.now();
            t.with_group(group, now, |v| {
                let mut out = Vec::new();
                v.receive(max, now, &mut out);
                if out.is_empty() {
                    Poll::Empty {
                        now,
                        next_wake: v.group.state.next_wake(),
                    }
                } else {
                    Poll::Got(out)
                }
            })
        })
        .await;
        Ok(got)
    }

    async fn settle(&self, topic: &str, group: &str, ops: Vec<Settle>) -> Result<Vec<Result<()>>> {
        self.on_group(topic, group, "settle", |v, now| {
            ops.into_iter()
                .map(|op| v.group.state.settle(op, now).map_err(KIT.tag("settle")))
                .collect()
        })
    }

    async fn extend(
        &self,
        topic: &str,
        group: &str,
        lease: &Lease,
        visibility: Duration,
    ) -> Result<Lease> {
        self.on_group(topic, group, "extend", |v, now| {
            v.group.state.extend(lease, visibility, now)
        })?
        .map_err(KIT.tag("extend"))
    }

    async fn reset_group(&self, topic: &str, group: &str, from: ReplayFrom) -> Result<()> {
        self.on_group(topic, group, "reset_group", |v, _| v.reset(from, topic))??;
        // Waiters of this group may now have events to read.
        self.topic(topic).wakeup.wake();
        Ok(())
    }

    /// A group that was only configured or looked at (stats, dead letters) is created here
    /// too: nothing placed its cursor yet.
    async fn create_group(&self, topic: &str, group: &str, from: ReplayFrom) -> Result<bool> {
        self.on_group(topic, group, "create_group", |v, _| v.create(from, topic))?
    }

    async fn pause_group(&self, topic: &str, group: &str) -> Result<()> {
        self.on_group(topic, group, "pause_group", |v, _| {
            v.group.state.set_paused(true)
        })
    }

    async fn resume_group(&self, topic: &str, group: &str) -> Result<()> {
        self.on_group(topic, group, "resume_group", |v, _| {
            v.group.state.set_paused(false)
        })?;
        self.topic(topic).wakeup.wake();
        Ok(())
    }

    async fn group_stats(&self, topic: &str, group: &str) -> Result<GroupStats> {
        self.on_group(topic, group, "group_stats", |v, _| v.stats())
    }

    async fn read_events(&self, topic: &str, from: ReplayFrom, max: usize) -> Result<Vec<Message>> {
        KIT.check_read(topic, max)?;
        let t = self.inner.topics.read().get(topic).cloned();
        let Some(t) = t else {
            // An unknown topic has no events; an id cannot be retained in it.
            return Topic::new(self.inner.default_config).read(from, max, topic);
        };
        let mut guard = t.topic.lock();
        guard.trim(self.now());
        guard.read(from, max, topic)
    }

    async fn topic_len(&self, topic: &str) -> Result<u64> {
        KIT.check_name("topic", topic, "topic_len")?;
        let t = self.topic(topic);
        let len = t.topic.lock().retained(self.now());
        Ok(len)
    }

    async fn dead_letters(&self, topic: &str, group: &str, page: Page) -> Result<Vec<DeadLetter>> {
        self.on_group(topic, group, "dead_letters", |v, _| {
            v.group.state.dead_letters(page)
        })
    }

    async fn requeue_dead(&self, topic: &str, group: &str, which: Selection) -> Result<u64> {
        self.on_group(topic, group, "requeue_dead", |v, now| {
            v.group.state.requeue_dead(&which, now)
        })?
    }

    async fn purge_dead(&self, topic: &str, group: &str, which: Selection) -> Result<u64> {
        self.on_group(topic, group, "purge_dead", |v, _| {
            v.group.state.purge_dead(&which)
        })?
    }

    async fn list_topics(&self) -> Result<Vec<String>> {
        let topics: Vec<(String, Arc<TopicShared>)> = self
            .inner
            .topics
            .read()
            .iter()
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect();
        let mut v: Vec<String> = topics
            .into_iter()
            .filter(|(_, t)| t.topic.lock().is_listed())
            .map(|(name, _)| name)
            .collect();
        v.sort();
        Ok(v)
    }

    async fn list_groups(&self, topic: &str) -> Result<Vec<String>> {
        KIT.check_name("topic", topic, "list_groups")?;
        let t = self.inner.topics.read().get(topic).cloned();
        Ok(t.map(|t| t.topic.lock().placed_groups())
            .unwrap_or_default())
    }
}
