//! [`EventBus`] for [`SqliteBackend`]: per topic an append-only log table, and per consumer
//! group a cursor into it plus delivery rows that follow the queue state machine
//! ([`crate::store`]) for leases, retries and dead letters.
//!
//! - A group is created by its first receive with its cursor at the start of the retained log,
//!   so events emitted before a group first reads are delivered to it while they are retained;
//!   `create_group` creates it elsewhere, `reset_group` moves it. Other operations (configure,
//!   stats, dead letters, settle, extend) do not create the row: they see a group that does
//!   not exist as empty ([`Q::absent`]).
//! - A receive materialises events from the log at the cursor into the group's ready rows
//!   only as many as it can lease, so `lag` (events at or after the cursor) stays meaningful.
//! - Events are delivered in emit order (E4): a group ignores `priority`. An event emitted with
//!   a delay waits out its delay in each group before it is delivered.
//! - Retention (max length / max age) is stored with the topic and applied on every emit and
//!   every group operation; age is measured from the instant the event was appended. A group
//!   whose cursor falls behind the retained log continues at the oldest retained event.

use std::time::Duration;

use async_trait::async_trait;
use courier_core::clock::ms_ceil;
use courier_core::{
    DeadLetter, Delivery, Error, EventBus, GroupStats, Lease, Message, MessageId, Page,
    QueueConfig, ReplayFrom, Result, Retention, Selection, Settle, SharedClock, wire,
};
use rusqlite::{OptionalExtension, params};

use courier_core::backend::{Batch, earlier_wake};

use crate::backend::{SqliteBackend, claim};
use crate::consts::BACKEND_NAME;
use crate::error::KIT;
use crate::poll::Poll;
use crate::store::{self, GROUP_LEVEL, NewRow, Q, i, u};
use crate::writer::Ctx;

/// An event to append: id, `not_before`, `max_attempts` override, encoded body.
pub(crate) struct EventRow {
    pub(crate) id: MessageId,
    pub(crate) due: Option<u64>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) body: Vec<u8>,
}

/// A topic's row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Topic {
    base: i64,
    next: i64,
    last_at: i64,
    max_len: Option<i64>,
    max_age_ms: Option<i64>,
}

/// The topic's row, created on first use.
fn load_topic(ctx: &Ctx<'_>, topic: &str) -> Result<Topic> {
    let read = |ctx: &Ctx<'_>| {
        ctx.conn
            .prepare_cached(
                "SELECT base, next, last_at, max_len, max_age_ms FROM courier_topics \
                 WHERE topic = ?1",
            )
            .and_then(|mut s| {
                s.query_row([topic], |r| {
                    Ok(Topic {
                        base: r.get(0)?,
                        next: r.get(1)?,
                        last_at: r.get(2)?,
                        max_len: r.get(3)?,
                        max_age_ms: r.get(4)?,
                    })
                })
                .optional()
            })
            .map_err(ctx.err("topic"))
    };
    if let Some(t) = read(ctx)? {
        return Ok(t);
    }
    ctx.conn
        .prepare_cached("INSERT INTO courier_topics (topic) VALUES (?1)")
        .and_then(|mut s| s.execute([topic]))
        .map_err(ctx.err("topic"))?;
    Ok(Topic {
        base: 0,
        next: 0,
        last_at: 0,
        max_len: None,
        max_age_ms: None,
    })
}

/// Apply retention at `now`; groups behind the new start move up to it.
fn trim(ctx: &Ctx<'_>, topic: &str, now: u64) -> Result<Topic> {
    let mut t = load_topic(ctx, topic)?;
    let mut base = t.base;
    if let Some(max_len) = t.max_len {
        base = base.max(t.next - max_len.max(0));
    }
    if let Some(age) = t.max_age_ms {
        let oldest = i(now).saturating_sub(age.max(0));
        let first: Option<i64> = ctx
            .conn
            .prepare_cached(
                "SELECT seq FROM courier_events WHERE topic = ?1 AND created_at >= ?2 \
                 ORDER BY created_at, seq LIMIT 1",
            )
            .and_then(|mut s| s.query_row(params![topic, oldest], |r| r.get(0)).optional())
            .map_err(ctx.err("retention"))?;
        base = base.max(first.unwrap_or(t.next));
    }
    let base = base.min(t.next);
    if base > t.base {
        ctx.conn
            .prepare_cached("DELETE FROM courier_events WHERE topic = ?1 AND seq < ?2")
            .and_then(|mut s| s.execute(params![topic, base]))
            .map_err(ctx.err("retention"))?;
        ctx.conn
            .prepare_cached(
                "UPDATE courier_queues SET cursor = max(cursor, ?2) \
                 WHERE kind = 'group' AND topic = ?1 AND cursor < ?2",
            )
            .and_then(|mut s| s.execute(params![topic, base]))
            .map_err(ctx.err("retention"))?;
        ctx.conn
            .prepare_cached("UPDATE courier_topics SET base = ?2 WHERE topic = ?1")
            .and_then(|mut s| s.execute(params![topic, base]))
            .map_err(ctx.err("retention"))?;
        t.base = base;
    }
    Ok(t)
}

/// Append events to a topic's log, in order, then apply retention. Wakes the topic's groups.
pub(crate) fn append(ctx: &mut Ctx<'_>, topic: &str, events: &[EventRow]) -> Result<()> {
    let now = ctx.now();
    let t = load_topic(ctx, topic)?;
    let at = i(now).max(t.last_at);
    let mut seq = t.next;
    {
        let mut stmt = ctx
            .conn
            .prepare_cached(
                "INSERT INTO courier_events (topic, seq, created_at, id, due, max_attempts, body) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(ctx.err("emit"))?;
        for e in events {
            stmt.execute(params![
                topic,
                seq,
                at,
                &e.id.as_bytes()[..],
                e.due.map(i),
                e.max_attempts,
                &e.body
            ])
            .map_err(ctx.err("emit"))?;
            seq += 1;
        }
    }
    ctx.conn
        .prepare_cached("UPDATE courier_topics SET next = ?2, last_at = ?3 WHERE topic = ?1")
        .and_then(|mut s| s.execute(params![topic, seq, at]))
        .map_err(ctx.err("emit"))?;
    trim(ctx, topic, now)?;
    if !events.is_empty() {
        ctx.wake(store::topic_key(topic));
    }
    Ok(())
}

/// The key of a group in the writer's caches.
fn group_key(topic: &str, group: &str) -> String {
    format!("g:{topic}\u{0}{group}")
}

/// Whether an operation creates the group's row when it does not exist.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    /// Receive and reset: create it (a receive at the start of the retained log).
    Create,
    /// Everything else: a group that does not exist is seen as empty and stays absent.
    Existing,
}

/// The group's row, loaded; created at the start of the retained log when `open` says so,
/// else [`Q::absent`] when there is none.
fn open_group(ctx: &mut Ctx<'_>, topic: &str, group: &str, t: &Topic, open: Open) -> Result<Q> {
    let key = group_key(topic, group);
    let base = t.base;
    let qid = match open {
        Open::Create => store::qid(ctx, &key, "group", topic, group, |_| Ok(base))?,
        Open::Existing => match store::find_qid(ctx, &key, "group", topic, group)? {
            Some(qid) => qid,
            None => {
                // Not created yet, but possibly paused already (E8).
                let mut q = Q::absent(base);
                q.paused = store::pending_pause(ctx, topic, group)?;
                return Ok(q);
            }
        },
    };
    store::load(ctx, qid)
}

/// The log position `from` designates (E5): the sequence number of the first event to read.
fn position(
    ctx: &Ctx<'_>,
    topic: &str,
    t: &Topic,
    from: ReplayFrom,
    operation: &'static str,
) -> Result<i64> {
    Ok(match from {
        ReplayFrom::Start => t.base,
        ReplayFrom::End => t.next,
        ReplayFrom::Time(ms) => ctx
            .conn
            .prepare_cached(
                "SELECT seq FROM courier_events WHERE topic = ?1 AND created_at >= ?2 \
                 ORDER BY created_at, seq LIMIT 1",
            )
            .and_then(|mut s| s.query_row(params![topic, i(ms)], |r| r.get(0)).optional())
            .map_err(ctx.err(operation))?
            .unwrap_or(t.next),
        ReplayFrom::Id(id) => ctx
            .conn
            .prepare_cached(
                "SELECT seq FROM courier_events WHERE topic = ?1 AND id = ?2 \
                 ORDER BY seq LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![topic, &id.as_bytes()[..]], |r| r.get(0))
                    .optional()
            })
            .map_err(ctx.err(operation))?
            .ok_or_else(|| {
                KIT.tag(operation)(Error::not_found(format!(
                    "event {id} is not retained in topic {topic:?}"
                )))
            })?,
        other => return Err(KIT.unsupported(operation, other)),
    })
}

/// Run `f` on a group brought up to now (retention applied, leases and delays processed),
/// save it, and wake the topic's waiters when something became ready or the next due time
/// moved earlier.
fn with_group<T>(
    ctx: &mut Ctx<'_>,
    topic: &str,
    group: &str,
    open: Open,
    config: &QueueConfig,
    f: impl FnOnce(&mut Ctx<'_>, &mut Q, &Topic, u64) -> Result<T>,
) -> Result<T> {
    let now = ctx.now();
    let t = trim(ctx, topic, now)?;
    let mut q = open_group(ctx, topic, group, &t, open)?;
    let wake_before = store::next_wake(ctx, &q)?;
    store::tick(ctx, &mut q, now, config)?;
    let r = f(ctx, &mut q, &t, now)?;
    store::save(ctx, &mut q)?;
    if q.readied || earlier_wake(store::next_wake(ctx, &q)?, wake_before) {
        ctx.wake(store::topic_key(topic));
    }
    Ok(r)
}

/// Most log rows read per query while materialising a group's rows.
const PULL_CHUNK: usize = 1_000;

/// A log row: sequence number, id, `not_before`, `max_attempts` override, body.
type LogRow = (i64, Vec<u8>, Option<i64>, Option<u32>, Vec<u8>);

/// Move events from the log at the cursor into the group's rows until `want` are ready.
fn pull(ctx: &Ctx<'_>, q: &mut Q, topic: &str, t: &Topic, want: usize, now: u64) -> Result<()> {
    let mut ready = store::ready_count(ctx, q.qid, GROUP_LEVEL, want)?;
    while ready < want && q.cursor < t.next {
        let chunk: Vec<LogRow> = ctx
            .conn
            .prepare_cached(
                "SELECT seq, id, due, max_attempts, body FROM courier_events \
                 WHERE topic = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
            )
            .and_then(|mut s| {
                s.query_map(
                    params![topic, q.cursor, (want - ready).min(PULL_CHUNK) as i64],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )?
                .collect()
            })
            .map_err(ctx.err("receive"))?;
        if chunk.is_empty() {
            q.set_cursor(t.next);
            break;
        }
        for (seq, id, due, max_attempts, body) in chunk {
            let row = NewRow {
                id: store::id_of(&id),
                level: GROUP_LEVEL,
                not_before: due.map(u),
                max_attempts,
                body,
                key: None,
            };
            let readied_before = q.readied;
            q.readied = false;
            store::publish(ctx, q, now, &row)?;
            if q.readied {
                ready += 1;
            }
            q.readied |= readied_before;
            q.set_cursor(seq + 1);
        }
    }
    Ok(())
}

impl SqliteBackend {
    /// The configuration of a group in this handle.
    fn group_config_of(&self, topic: &str, group: &str) -> QueueConfig {
        self.inner.configs.group(topic, group)
    }

    /// Run `f` on a group in the writer thread.
    async fn on_group<T: Send + 'static>(
        &self,
        topic: &str,
        group: &str,
        operation: &'static str,
        open: Open,
        f: impl FnOnce(&mut Ctx<'_>, &mut Q, &Topic, u64, &QueueConfig) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        KIT.check_group(topic, group, operation)?;
        let config = self.group_config_of(topic, group);
        let (t, g) = (topic.to_owned(), group.to_owned());
        self.inner
            .writer
            .call(operation, move |ctx| {
                with_group(ctx, &t, &g, open, &config, |ctx, q, tp, now| {
                    f(ctx, q, tp, now, &config)
                })
            })
            .await
    }

    /// Pause or resume a group (E8) for every process. A group that does not exist is not
    /// created (nor listed): its pause waits in `courier_pending_pauses` until it is. Resuming
    /// wakes this process's receivers of the topic after the commit.
    async fn set_group_paused(
        &self,
        topic: &str,
        group: &str,
        paused: bool,
        operation: &'static str,
    ) -> Result<()> {
        let (t, g) = (topic.to_owned(), group.to_owned());
        self.on_group(
            topic,
            group,
            operation,
            Open::Existing,
            move |ctx, q, _, _, _| {
                if q.is_absent() {
                    store::set_pending_pause(ctx, &t, &g, paused)?;
                } else {
                    q.set_paused(paused);
                }
                if !paused {
                    ctx.wake(store::topic_key(&t));
                }
                Ok(())
            },
        )
        .await
    }

    /// Lease up to `max` events for a group (one attempt, no waiting); orphaned leases of a
    /// caller that went away are released at once.
    async fn claim_group(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        config: QueueConfig,
    ) -> Result<Poll> {
        let (t, g) = (topic.to_owned(), group.to_owned());
        let (ot, og) = (t.clone(), g.clone());
        let writer = self.inner.writer.clone();
        let release = move |leases: Vec<Lease>| {
            writer.fire("release", move |ctx| {
                with_group(ctx, &ot, &og, Open::Existing, &config, |ctx, q, _, now| {
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
                with_group(ctx, &t, &g, Open::Create, &config, |ctx, q, tp, now| {
                    // Nothing leaves the log for a paused group (E8): its lag keeps counting.
                    if !q.paused {
                        pull(ctx, q, &t, tp, max, now)?;
                    }
                    store::poll(ctx, q, now, max, &config)
                })
            },
            release,
        )
        .await
    }
}

#[async_trait]
impl EventBus for SqliteBackend {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    fn configure_group(&self, topic: &str, group: &str, config: QueueConfig) -> Result<()> {
        // Kept in this handle; the group is not created (see `create_group`).
        self.inner
            .configs
            .configure_group(KIT, topic, group, config)
    }

    fn group_config(&self, topic: &str, group: &str) -> QueueConfig {
        self.group_config_of(topic, group)
    }

    fn set_retention(&self, topic: &str, retention: Retention) -> Result<()> {
        KIT.check_name("topic", topic, "set_retention")?;
        let t = topic.to_owned();
        let max_len = retention.max_len.map(i);
        let max_age = retention.max_age.map(|d| i(ms_ceil(d)));
        // Queued before any later call of this handle, so it is in force for them.
        self.inner.writer.fire("set_retention", move |ctx| {
            load_topic(ctx, &t)?;
            ctx.conn
                .prepare_cached(
                    "UPDATE courier_topics SET max_len = ?2, max_age_ms = ?3 WHERE topic = ?1",
                )
                .and_then(|mut s| s.execute(params![t, max_len, max_age]))
                .map_err(ctx.err("set_retention"))?;
            let now = ctx.now();
            trim(ctx, &t, now)?;
            Ok(())
        });
        Ok(())
    }

    async fn emit_batch(&self, topic: &str, events: Vec<Message>) -> Result<Vec<MessageId>> {
        let config = self.inner.configs.default_config();
        let now = self.now();
        // The whole batch is checked (and encoded) before anything is appended.
        let (ids, rows) = KIT.prepare_batch(Batch::Emit, topic, &config, events, now, |m| {
            Ok(EventRow {
                id: m.id,
                due: m.not_before,
                max_attempts: m.max_attempts,
                body: wire::encode(&m)?.to_vec(),
            })
        })?;
        if rows.is_empty() {
            return Ok(ids);
        }
        let t = topic.to_owned();
        self.inner
            .writer
            .call("emit", move |ctx| append(ctx, &t, &rows))
            .await
            .map_err(|e| e.with_stored(0))?;
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
        let config = self.group_config_of(topic, group);
        let key = store::topic_key(topic);
        self.wait_for(&key, wait, || self.claim_group(topic, group, max, config))
            .await
    }

    async fn settle(&self, topic: &str, group: &str, ops: Vec<Settle>) -> Result<Vec<Result<()>>> {
        if ops.is_empty() {
            KIT.check_group(topic, group, "settle")?;
            return Ok(Vec::new());
        }
        self.on_group(
            topic,
            group,
            "settle",
            Open::Existing,
            move |ctx, q, _, now, config| {
                let mut out = Vec::with_capacity(ops.len());
                for op in &ops {
                    out.push(store::settle(ctx, q, now, op, config)?);
                }
                Ok(out)
            },
        )
        .await
    }

    async fn extend(
        &self,
        topic: &str,
        group: &str,
        lease: &Lease,
        visibility: Duration,
    ) -> Result<Lease> {
        let l = *lease;
        self.on_group(
            topic,
            group,
            "extend",
            Open::Existing,
            move |ctx, q, _, now, _| store::extend(ctx, q, now, &l, visibility),
        )
        .await?
        .map_err(|_| KIT.lease_lost("extend", lease))
    }

    async fn reset_group(&self, topic: &str, group: &str, from: ReplayFrom) -> Result<()> {
        let name = topic.to_owned();
        self.on_group(
            topic,
            group,
            "reset_group",
            Open::Create,
            move |ctx, q, t, _, _| {
                let cursor = position(ctx, &name, t, from, "reset_group")?;
                store::clear_pending(ctx, q)?;
                q.set_cursor(cursor);
                // Waiters of this group may now have events to read.
                ctx.wake(store::topic_key(&name));
                Ok(())
            },
        )
        .await
    }

    async fn create_group(&self, topic: &str, group: &str, from: ReplayFrom) -> Result<bool> {
        KIT.check_group(topic, group, "create_group")?;
        let (t, g) = (topic.to_owned(), group.to_owned());
        // One writer transaction: the look-up and the insert cannot be split by another
        // handle or process.
        self.inner
            .writer
            .call("create_group", move |ctx| {
                let now = ctx.now();
                let tp = trim(ctx, &t, now)?;
                let key = group_key(&t, &g);
                if store::find_qid(ctx, &key, "group", &t, &g)?.is_some() {
                    return Ok(false);
                }
                let cursor = position(ctx, &t, &tp, from, "create_group")?;
                store::qid(ctx, &key, "group", &t, &g, |_| Ok(cursor))?;
                Ok(true)
            })
            .await
    }

    async fn group_stats(&self, topic: &str, group: &str) -> Result<GroupStats> {
        self.on_group(
            topic,
            group,
            "group_stats",
            Open::Existing,
            |ctx, q, t, _, _| {
                Ok(GroupStats {
                    queue: store::stats(ctx, q)?,
                    lag: u(t.next - q.cursor),
                })
            },
        )
        .await
    }

    async fn read_events(&self, topic: &str, from: ReplayFrom, max: usize) -> Result<Vec<Message>> {
        KIT.check_read(topic, max)?;
        let t = topic.to_owned();
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        self.inner
            .writer
            .call("read_events", move |ctx| {
                let now = ctx.now();
                let tp = trim(ctx, &t, now)?;
                let start = position(ctx, &t, &tp, from, "read_events")?.max(tp.base);
                let bodies: Vec<Vec<u8>> = ctx
                    .conn
                    .prepare_cached(
                        "SELECT body FROM courier_events WHERE topic = ?1 AND seq >= ?2 \
                         ORDER BY seq LIMIT ?3",
                    )
                    .and_then(|mut s| {
                        s.query_map(params![t, start, limit], |r| r.get(0))?
                            .collect::<rusqlite::Result<Vec<Vec<u8>>>>()
                    })
                    .map_err(ctx.err("read_events"))?;
                // An event that does not decode is skipped (the trait says so).
                Ok(bodies
                    .into_iter()
                    .filter_map(|b| wire::decode(&bytes::Bytes::from(b)).ok())
                    .collect())
            })
            .await
    }

    async fn topic_len(&self, topic: &str) -> Result<u64> {
        KIT.check_name("topic", topic, "topic_len")?;
        let t = topic.to_owned();
        self.inner
            .writer
            .call("topic_len", move |ctx| {
                let now = ctx.now();
                let tp = trim(ctx, &t, now)?;
                Ok(u(tp.next - tp.base))
            })
            .await
    }

    async fn dead_letters(&self, topic: &str, group: &str, page: Page) -> Result<Vec<DeadLetter>> {
        self.on_group(
            topic,
            group,
            "dead_letters",
            Open::Existing,
            move |ctx, q, _, _, _| store::dead_letters(ctx, q, page),
        )
        .await
    }

    async fn requeue_dead(&self, topic: &str, group: &str, which: Selection) -> Result<u64> {
        self.on_group(
            topic,
            group,
            "requeue_dead",
            Open::Existing,
            move |ctx, q, _, now, _| store::requeue_dead(ctx, q, &which, now),
        )
        .await
    }

    async fn purge_dead(&self, topic: &str, group: &str, which: Selection) -> Result<u64> {
        self.on_group(
            topic,
            group,
            "purge_dead",
            Open::Existing,
            move |ctx, q, _, _, _| store::purge_dead(ctx, q, &which),
        )
        .await
    }

    async fn pause_group(&self, topic: &str, group: &str) -> Result<()> {
        self.set_group_paused(topic, group, true, "pause_group")
            .await
    }

    async fn resume_group(&self, topic: &str, group: &str) -> Result<()> {
        self.set_group_paused(topic, group, false, "resume_group")
            .await
    }

    async fn list_topics(&self) -> Result<Vec<String>> {
        // A group's row exists once it was placed (`Open::Create`: receive, reset, create).
        self.inner
            .writer
            .call("list_topics", |ctx| {
                store::names(
                    ctx,
                    "list topics",
                    "SELECT topic FROM courier_topics WHERE next > 0 \
                     UNION SELECT topic FROM courier_queues WHERE kind = 'group' \
                     ORDER BY 1",
                    None,
                )
            })
            .await
    }

    async fn list_groups(&self, topic: &str) -> Result<Vec<String>> {
        KIT.check_name("topic", topic, "list_groups")?;
        let t = topic.to_owned();
        self.inner
            .writer
            .call("list_groups", move |ctx| {
                store::names(
                    ctx,
                    "list groups",
                    "SELECT name FROM courier_queues WHERE kind = 'group' AND topic = ?1 \
                     ORDER BY name",
                    Some(&t),
                )
            })
            .await
    }
}
