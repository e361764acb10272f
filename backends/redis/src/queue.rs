//! [`Queue`] for [`RedisBackend`]: each primitive is one script call (see `scripts/*.lua`).
//!
//! The parts shared with consumer groups (settle, extend, dead letters, reading claim replies)
//! live here too and take the keys and [`Mode`] of either.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use courier_core::backend::Batch;
use courier_core::clock::ms_ceil;
use courier_core::{
    DeadLetter, Delivery, Error, ErrorKind, EventBus, Lease, Message, MessageId, Page, Priority,
    Published, Queue, QueueConfig, QueueStats, RateLimit, Result, Retention, Selection, Settle,
    SharedClock, wire,
};
use redis::{Cmd, Value};
use tokio::time::Instant;

use crate::error::{KIT, bad_reply, map_err};
use crate::reply::{array, int, string, take_bytes, uint};
use crate::scripts::{Lua, Mode, common_args};
use crate::{BACKEND_NAME, RedisBackend, keys};

/// What `dead_move.lua` does with the dead letters it selects.
#[derive(Clone, Copy, Debug)]
pub(crate) enum DeadMove {
    /// Back to ready, at their own priority or at this one (Q8).
    Requeue(Option<Priority>),
    /// Delete them.
    Purge,
}

/// Messages per publish script call (larger batches take several calls).
const PUBLISH_CHUNK: usize = 1000;
/// Bytes per publish script call, roughly.
const PUBLISH_CHUNK_BYTES: usize = 8 << 20;
/// Operations per settle script call.
const SETTLE_CHUNK: usize = 2000;
/// Dead letters moved per script call (a call never blocks Redis for long).
const DEAD_CHUNK: usize = 1000;

/// The longest deduplication window sent to the scripts (about 34 years): now + window stays
/// an exact integer in Lua's doubles, written without an exponent.
const MAX_WINDOW_MS: u64 = 1 << 40;

/// Read publish_keyed.lua's reply for a chunk whose messages have `ids`: per message, 1 when
/// stored, else the 16-byte id of the message holding its key.
fn read_keyed_outcomes(ids: &[MessageId], reply: Value, out: &mut Vec<Published>) -> Result<()> {
    let items = array(reply).ok_or_else(|| bad_reply("publish", "not an array"))?;
    if items.len() != ids.len() {
        return Err(bad_reply("publish", "one outcome per message expected"));
    }
    for (id, mut item) in ids.iter().zip(items) {
        // An integer, never a bulk string: a holder's id could read as the number 1.
        if matches!(item, Value::Int(1)) {
            out.push(Published::Stored(*id));
            continue;
        }
        let holder = take_bytes(&mut item)
            .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
            .ok_or_else(|| bad_reply("publish", "an outcome is neither 1 nor a 16-byte id"))?;
        out.push(Published::Duplicate(MessageId::from_bytes(holder)));
    }
    Ok(())
}

/// Where a receive leases from.
#[derive(Clone, Debug)]
pub(crate) enum Origin {
    Queue(String),
    Group { topic: String, group: String },
}

impl Origin {
    pub(crate) fn mode(&self, retention: Retention) -> Mode<'_> {
        match self {
            Origin::Queue(_) => Mode::Queue,
            Origin::Group { group, .. } => Mode::Group { group, retention },
        }
    }
}

/// Held by a receive while its claim task runs; see [`RedisBackend::claim_detached`].
struct ClaimGuard {
    rx: Option<tokio::sync::oneshot::Receiver<Result<Claimed>>>,
    backend: RedisBackend,
    origin: Origin,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        // After close, the task either finds the channel closed (and releases by itself) or
        // has already sent, and the answer is taken here.
        rx.close();
        if let Ok(Ok(Claimed::Got { deliveries, .. })) = rx.try_recv()
            && !deliveries.is_empty()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let backend = self.backend.clone();
            let origin = self.origin.clone();
            handle.spawn(async move { backend.release_orphans(&origin, deliveries).await });
        }
    }
}

/// What a claim script answered.
pub(crate) enum Claimed {
    /// Deliveries, plus leases of stored entries that could not be decoded (to bury).
    Got {
        deliveries: Vec<Delivery>,
        undecodable: Vec<(Lease, String)>,
    },
    /// Nothing ready: the reply's remaining values (next due in ms or -1, then for groups the
    /// last ids of the log and the wake-up stream).
    Empty { next_due_ms: i64, rest: Vec<Value> },
}

/// Read a claim reply: `{ now, deadline, next_due, batches, batch name, ..., entry, ... }`,
/// or `{ now, 0, next_due, ... }` when nothing was leased. The entries are numbered in order,
/// 1000 per batch; a delivery's token is its batch name followed by its 3-digit index
/// (see `scripts/lib.lua`).
pub(crate) fn read_claim(operation: &'static str, reply: Value) -> Result<Claimed> {
    let items = array(reply).ok_or_else(|| bad_reply(operation, "claim reply is not an array"))?;
    if items.len() < 3 {
        return Err(bad_reply(operation, "claim reply is too short"));
    }
    let deadline = uint(&items[1]).unwrap_or(0);
    let next_due_ms = int(&items[2]).unwrap_or(-1);
    if deadline == 0 {
        return Ok(Claimed::Empty {
            next_due_ms,
            rest: items.into_iter().skip(3).collect(),
        });
    }
    let batches = items
        .get(3)
        .and_then(uint)
        .ok_or_else(|| bad_reply(operation, "claim reply has no batch count"))?
        as usize;
    if items.len() < 4 + batches {
        return Err(bad_reply(operation, "claim reply is too short"));
    }
    let mut names = Vec::with_capacity(batches);
    for v in &items[4..4 + batches] {
        let name = uint(v).ok_or_else(|| bad_reply(operation, "batch name is not a number"))?;
        names.push(
            name.checked_mul(1000)
                .ok_or_else(|| bad_reply(operation, "batch name out of range"))?,
        );
    }
    let mut deliveries = Vec::with_capacity(items.len() - 4 - batches);
    let mut undecodable = Vec::new();
    for (k, mut entry) in items.into_iter().skip(4 + batches).enumerate() {
        let base = *names
            .get(k / 1000)
            .ok_or_else(|| bad_reply(operation, "more entries than the batches name"))?;
        let token = base + (k % 1000) as u64;
        let raw = Bytes::from(take_bytes(&mut entry).unwrap_or_default());
        let decoded = wire::decode(&raw).or_else(|e| undecodable_entry(&raw, e));
        match decoded {
            Ok(mut message) => {
                // A stored entry counts the deliveries made before this one.
                let attempt = message.attempt.saturating_add(1);
                message.attempt = attempt;
                let lease = Lease {
                    id: message.id,
                    token,
                    attempt,
                    deadline_ms: deadline,
                };
                deliveries.push(Delivery { message, lease });
            }
            Err((id, error)) => {
                // The one delivery of junk (see `scripts/lib.lua`): buried under `id`.
                let lease = Lease {
                    id,
                    token,
                    attempt: 1,
                    deadline_ms: deadline,
                };
                undecodable.push((lease, error));
            }
        }
    }
    Ok(Claimed::Got {
        deliveries,
        undecodable,
    })
}

/// The second byte of the wrapped form of junk (see [`wrap_undecodable`]).
const WRAPPED: u8 = 0xFF;

/// The bytes inside the wrapped form of junk, if `raw` is one.
fn wrapped_bytes(raw: &Bytes) -> Option<Bytes> {
    (raw.len() >= 18 && raw[0] == wire::MAGIC && raw[1] == WRAPPED).then(|| raw.slice(18..))
}

/// A stored entry that `wire::decode` refused with `error`: the message inside it after all
/// (a wrapped entry whose inner bytes decode, e.g. requeued after the readers were upgraded),
/// or junk to bury, with the id to file it under and the dead letter's reason.
///
/// The reason is the decode error of the bytes as they first came, also after a requeue: the
/// bytes inside a wrap are decoded, not the wrap (which would always read as "version 255").
/// The id is the one the entry carries if it can be trusted ([`carried_id`]), else a fresh one,
/// so no two dead letters share an id: junk has no id of its own (shorter than an id, or bytes
/// that merely sit where an id would be), and the same junk stored twice is two dead letters.
fn undecodable_entry(
    raw: &Bytes,
    error: Error,
) -> std::result::Result<Message, (MessageId, String)> {
    let error = match wrapped_bytes(raw) {
        Some(inner) => match wire::decode(&inner) {
            Ok(message) => return Ok(message),
            Err(e) => e,
        },
        None => error,
    };
    // Else a fresh id (`MessageId`'s default is `MessageId::new()`, never the nil id).
    let id = carried_id(raw).unwrap_or_default();
    Err((id, courier_core::backend::undecodable_reason(&error)))
}

/// The id an entry carries, if it can be trusted: the id field (bytes 2..18) of a version-1 or
/// version-2 header (0xC7 0x01 or 0x02: a Courier message, though what follows may be
/// damaged) or of the wrapped form (0xC7 0xFF: an id Courier gave the junk inside), unless it
/// is the nil id. The scripts apply the same rule (`has_id` in `scripts/lib.lua`).
fn carried_id(raw: &[u8]) -> Option<MessageId> {
    match raw {
        [wire::MAGIC, version, rest @ ..]
            if matches!(*version, wire::VERSION | wire::VERSION_KEYED | WRAPPED) =>
        {
            let id = MessageId::from_bytes(rest.get(..16)?.try_into().ok()?);
            (!id.is_nil()).then_some(id)
        }
        _ => None,
    }
}

/// A stored form of bytes that do not decode, with the id to file their dead letter under:
/// 0xC7 0xFF, the 16-byte id, then the bytes (see `scripts/lib.lua`).
pub(crate) fn wrap_undecodable(id: MessageId, bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(18 + bytes.len());
    v.extend_from_slice(&[wire::MAGIC, WRAPPED]);
    v.extend_from_slice(id.as_bytes());
    v.extend_from_slice(bytes);
    v
}

/// A dead letter from `(id, bytes, "attempts|failed_at|priority|error")`. Junk (stored wrapped,
/// see `scripts/lib.lua`; or raw, by a Courier before that) is shown as a message of kind `""`
/// carrying the bytes as they were found as payload. The message's id is the dead letter's.
fn read_dead(id: Value, mut bytes: Value, info: Value) -> Option<DeadLetter> {
    let id: MessageId = string(&id)?.parse().ok()?;
    let raw = Bytes::from(take_bytes(&mut bytes).unwrap_or_default());
    let raw = wrapped_bytes(&raw).unwrap_or(raw);
    let info = string(&info).unwrap_or_default();
    let mut parts = info.splitn(4, '|');
    let attempts = parts.next().and_then(|a| a.parse().ok()).unwrap_or(0u32);
    let failed_at = parts.next().and_then(|a| a.parse().ok()).unwrap_or(0u64);
    let _priority = parts.next();
    let error = parts.next().unwrap_or("").to_string();
    let mut message = wire::decode(&raw).unwrap_or_else(|_| Message::new("", raw));
    message.id = id;
    message.attempt = attempts;
    Some(DeadLetter {
        message,
        error,
        attempts,
        failed_at,
    })
}

fn read_dead_list(operation: &'static str, reply: Value) -> Result<Vec<DeadLetter>> {
    let items = array(reply).ok_or_else(|| bad_reply(operation, "not an array"))?;
    let mut out = Vec::with_capacity(items.len() / 3);
    let mut it = items.into_iter();
    while let (Some(id), Some(bytes), Some(info)) = (it.next(), it.next(), it.next()) {
        if let Some(d) = read_dead(id, bytes, info) {
            out.push(d);
        }
    }
    Ok(out)
}

/// What `control.lua` stores (Q14, Q15, E8).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Control {
    Pause,
    Resume,
    /// Set the rate limit (already validated).
    Limit(RateLimit),
    /// Clear the rate limit.
    Unlimit,
}

/// The rate limit in a queue's stats reply (values 15-17 of stats.lua: max, the window in ms
/// and in ns; max 0 when there is none).
fn read_rate_limit(rest: &[Value]) -> Option<RateLimit> {
    let max = rest.first().and_then(uint).filter(|&m| m > 0)?;
    let max = u32::try_from(max).ok()?;
    let per = match rest.get(2).and_then(uint).filter(|&ns| ns > 0) {
        Some(ns) => Duration::from_nanos(ns),
        None => Duration::from_millis(rest.get(1).and_then(uint).filter(|&ms| ms > 0)?),
    };
    Some(RateLimit::new(max, per))
}

/// Read a stats reply (stats.lua, group_stats.lua): the gauges and counters every snapshot
/// has, and the values from the 12th on (deduplicated for a queue, lag for a group; expired,
/// the 13th of both, and paused, the 14th, are read here too).
fn read_stats(operation: &'static str, reply: Value) -> Result<(QueueStats, Vec<Value>)> {
    let items = array(reply).ok_or_else(|| bad_reply(operation, "not an array"))?;
    if items.len() < 11 {
        return Err(bad_reply(operation, "stats reply is too short"));
    }
    let n = |i: usize| uint(&items[i]).unwrap_or(0);
    let mut stats = QueueStats::default();
    stats.ready = [n(0), n(1), n(2), n(3)];
    stats.delayed = n(4);
    stats.in_flight = n(5);
    stats.dead = n(6);
    stats.published = n(7);
    stats.acked = n(8);
    stats.retried = n(9);
    stats.dead_lettered = n(10);
    // The 13th value of both stats scripts (their 12th differs: deduplicated or lag).
    stats.expired = items.get(12).and_then(uint).unwrap_or(0);
    // The 14th of both (Q14, E8).
    stats.paused = items.get(13).and_then(uint).unwrap_or(0) == 1;
    Ok((stats, items.into_iter().skip(11).collect()))
}

/// One operation of a settle call (see `scripts/settle.lua`): its letter, its lease, and its
/// extra arguments.
pub(crate) trait SettleOp {
    /// The operation's letter, or `Unsupported` for an operation this backend does not know.
    fn kind(&self) -> Result<char>;
    /// The lease it settles.
    fn lease(&self) -> &Lease;
    /// Append its extra arguments (after every operation's token).
    fn extras(&self, cmd: &mut Cmd);
}

impl SettleOp for Settle {
    fn kind(&self) -> Result<char> {
        match self {
            Settle::Ack(_) => Ok('a'),
            Settle::Retry { .. } => Ok('r'),
            Settle::Bury { .. } => Ok('b'),
            Settle::Release(_) => Ok('l'),
            other => Err(KIT.unsupported("settle", other)),
        }
    }

    fn lease(&self) -> &Lease {
        Settle::lease(self)
    }

    fn extras(&self, cmd: &mut Cmd) {
        match self {
            Settle::Retry { delay, .. } => {
                cmd.arg(ms_ceil(*delay));
            }
            Settle::Bury { error, .. } => {
                cmd.arg(error.as_str());
            }
            _ => {}
        }
    }
}

/// Bury a stored entry that could not be decoded ('u'): filed under its lease's id, which the
/// script wraps the bytes with (see `scripts/lib.lua`), with one attempt counted.
pub(crate) struct BuryUndecodable {
    lease: Lease,
    error: String,
}

impl SettleOp for BuryUndecodable {
    fn kind(&self) -> Result<char> {
        Ok('u')
    }

    fn lease(&self) -> &Lease {
        &self.lease
    }

    fn extras(&self, cmd: &mut Cmd) {
        cmd.arg(&self.lease.id.as_bytes()[..])
            .arg(self.error.as_str());
    }
}

/// The operations that act on a queue or on a consumer group alike.
impl RedisBackend {
    async fn run(&self, operation: &'static str, script: &Lua, cmd: &Cmd) -> Result<Value> {
        let mut conn = self.conn(operation);
        script.run(&mut conn, cmd).await.map_err(|e| {
            let e = map_err(operation, e);
            tracing::debug!(script = script.name(), error = %format_args!("{e:#}"), "courier redis: script failed");
            e
        })
    }

    pub(crate) async fn claim_with(
        &self,
        script: &Lua,
        keys: &[String],
        config: &QueueConfig,
        mode: Mode<'_>,
        max: usize,
    ) -> Result<Claimed> {
        let mut cmd = script.call(keys);
        common_args(&mut cmd, config, mode);
        // n, then whether expired messages are kept as dead letters (Q12; see claim.lua).
        cmd.arg(max)
            .arg(if config.keeps_expired() { "1" } else { "0" });
        let reply = self.run("receive", script, &cmd).await?;
        read_claim("receive", reply)
    }

    /// One claim on a queue or group, run on a task of its own: if the caller's `receive`
    /// future is dropped while the script runs, the task releases what it leased (the attempt
    /// not counted, back at the front), so a cancelled receive never strands messages until
    /// their leases expire. Stored entries that cannot be decoded are buried here.
    pub(crate) async fn claim_detached(&self, origin: Origin, max: usize) -> Result<Claimed> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let task_origin = origin.clone();
        tokio::spawn(async move {
            let result = this.claim_origin(&task_origin, max).await;
            if let Err(Ok(Claimed::Got { deliveries, .. })) = tx.send(result) {
                this.release_orphans(&task_origin, deliveries).await;
            }
        });
        // If this future is dropped after the task answered but before the answer was taken,
        // the guard releases what the answer holds.
        let mut guard = ClaimGuard {
            rx: Some(rx),
            backend: self.clone(),
            origin,
        };
        let rx = guard
            .rx
            .as_mut()
            .ok_or_else(|| bad_reply("receive", "no claim channel"))?;
        let answer = rx.await;
        guard.rx = None;
        answer.map_err(|_| {
            Error::new(ErrorKind::Backend, "the claim task ended without an answer")
                .with_backend(BACKEND_NAME)
                .with_operation("receive")
        })?
    }

    /// Give back deliveries nobody will handle (a cancelled receive): released, so the attempt
    /// does not count and they are first in line again.
    async fn release_orphans(&self, origin: &Origin, deliveries: Vec<Delivery>) {
        if deliveries.is_empty() {
            return;
        }
        let ops = deliveries
            .into_iter()
            .map(|d| Settle::Release(d.lease))
            .collect();
        let (keys, config, retention) = self.origin_parts(origin);
        if let Err(e) = self
            .settle_with(&keys, &config, origin.mode(retention), ops)
            .await
        {
            tracing::warn!(error = %format_args!("{e:#}"), "courier redis: releasing the messages of a cancelled receive failed; their leases will expire");
        }
    }

    async fn claim_origin(&self, origin: &Origin, max: usize) -> Result<Claimed> {
        let (keys, config, retention) = self.origin_parts(origin);
        let mode = origin.mode(retention);
        let script = match origin {
            Origin::Queue(_) => &self.inner.scripts.claim,
            Origin::Group { .. } => &self.inner.scripts.group_claim,
        };
        match self.claim_with(script, &keys, &config, mode, max).await? {
            Claimed::Got {
                deliveries,
                undecodable,
            } => {
                if !undecodable.is_empty() {
                    self.bury_undecodable(&keys, &config, mode, undecodable)
                        .await;
                }
                Ok(Claimed::Got {
                    deliveries,
                    undecodable: Vec::new(),
                })
            }
            empty => Ok(empty),
        }
    }

    fn origin_parts(&self, origin: &Origin) -> (Vec<String>, QueueConfig, Retention) {
        match origin {
            Origin::Queue(q) => (
                self.queue_keys(q),
                self.queue_config(q),
                Retention::default(),
            ),
            Origin::Group { topic, group } => (
                keys::group(&self.inner.prefix, topic, group),
                EventBus::group_config(self, topic, group),
                self.retention(topic),
            ),
        }
    }

    /// Bury stored entries that could not be decoded (Q10): they go to dead letters with the
    /// decode error, each under its lease's id (see [`undecodable_entry`]), with one attempt,
    /// and the consumer keeps running.
    pub(crate) async fn bury_undecodable(
        &self,
        keys: &[String],
        config: &QueueConfig,
        mode: Mode<'_>,
        bad: Vec<(Lease, String)>,
    ) {
        for (lease, error) in &bad {
            tracing::warn!(id = %lease.id, error = %format_args!("{error:#}"), "courier redis: stored message cannot be decoded; moving it to dead letters");
        }
        let ops = bad
            .into_iter()
            .map(|(lease, error)| BuryUndecodable { lease, error })
            .collect();
        if let Err(e) = self.settle_with(keys, config, mode, ops).await {
            tracing::warn!(error = %format_args!("{e:#}"), "courier redis: burying undecodable messages failed; their leases will expire");
        }
    }

    pub(crate) async fn settle_with<T: SettleOp>(
        &self,
        keys: &[String],
        config: &QueueConfig,
        mode: Mode<'_>,
        ops: Vec<T>,
    ) -> Result<Vec<Result<()>>> {
        let script = &self.inner.scripts.settle;
        // One letter per operation (settle.lua); an operation this backend does not know
        // refuses the whole call before anything is sent.
        let kinds = ops
            .iter()
            .map(SettleOp::kind)
            .collect::<Result<Vec<char>>>()?;
        let mut out = Vec::with_capacity(ops.len());
        for (chunk, kinds) in ops.chunks(SETTLE_CHUNK).zip(kinds.chunks(SETTLE_CHUNK)) {
            let mut cmd = script.call(keys);
            common_args(&mut cmd, config, mode);
            // Layout: see settle.lua (kinds as one string, the members, then the extras).
            cmd.arg(chunk.len()).arg(kinds.iter().collect::<String>());
            for op in chunk {
                cmd.arg(op.lease().token);
            }
            for op in chunk {
                op.extras(&mut cmd);
            }
            let reply = self.run("settle", script, &cmd).await?;
            // All acks, all held: the count alone (see settle.lua).
            if let Value::Int(n) = reply {
                if usize::try_from(n).ok() != Some(chunk.len()) {
                    return Err(bad_reply("settle", "count differs from the batch"));
                }
                out.extend(chunk.iter().map(|_| Ok(())));
                continue;
            }
            let items = array(reply).ok_or_else(|| bad_reply("settle", "not an array"))?;
            if items.len() != chunk.len() {
                return Err(bad_reply("settle", "one result per operation expected"));
            }
            for (op, r) in chunk.iter().zip(items) {
                out.push(if int(&r) == Some(1) {
                    Ok(())
                } else {
                    Err(KIT.lease_lost("settle", op.lease()))
                });
            }
        }
        Ok(out)
    }

    pub(crate) async fn extend_with(
        &self,
        keys: &[String],
        config: &QueueConfig,
        mode: Mode<'_>,
        lease: &Lease,
        visibility: Duration,
    ) -> Result<Lease> {
        let script = &self.inner.scripts.extend;
        let mut cmd = script.call(keys);
        common_args(&mut cmd, config, mode);
        cmd.arg(lease.token).arg(ms_ceil(visibility));
        let reply = self.run("extend", script, &cmd).await?;
        let items = array(reply).ok_or_else(|| bad_reply("extend", "not an array"))?;
        if items.first().and_then(int) != Some(1) || items.len() < 2 {
            return Err(KIT.lease_lost("extend", lease));
        }
        Ok(Lease {
            deadline_ms: uint(&items[1]).unwrap_or(lease.deadline_ms),
            ..*lease
        })
    }

    pub(crate) async fn stats_with(
        &self,
        script: &Lua,
        keys: &[String],
        config: &QueueConfig,
        mode: Mode<'_>,
    ) -> Result<(QueueStats, Vec<Value>)> {
        let mut cmd = script.call(keys);
        common_args(&mut cmd, config, mode);
        let reply = self.run("stats", script, &cmd).await?;
        read_stats("stats", reply)
    }

    pub(crate) async fn dead_page_with(
        &self,
        keys: &[String],
        config: &QueueConfig,
        mode: Mode<'_>,
        page: Page,
    ) -> Result<Vec<DeadLetter>> {
        if page.limit == 0 {
            return Ok(Vec::new());
        }
        let script = &self.inner.scripts.dead_read;
        let mut cmd = script.call(keys);
        common_args(&mut cmd, config, mode);
        let cap = 1u64 << 40;
        cmd.arg("page")
            .arg((page.offset as u64).min(cap))
            .arg((page.limit as u64).min(cap));
        let reply = self.run("dead_letters", script, &cmd).await?;
        read_dead_list("dead_letters", reply)
    }

    pub(crate) async fn dead_get_with(
        &self,
        keys: &[String],
        config: &QueueConfig,
        mode: Mode<'_>,
        id: MessageId,
    ) -> Result<Option<DeadLetter>> {
        let script = &self.inner.scripts.dead_read;
        let mut cmd = script.call(keys);
        common_args(&mut cmd, config, mode);
        cmd.arg("id").arg(id.to_string());
        let reply = self.run("dead_letter", script, &cmd).await?;
        Ok(read_dead_list("dead_letter", reply)?.into_iter().next())
    }

    /// Requeue (`requeue = true`) or purge dead letters, in bounded script calls.
    pub(crate) async fn dead_move_with(
        &self,
        keys: &[String],
        config: &QueueConfig,
        mode: Mode<'_>,
        how: DeadMove,
        which: Selection,
    ) -> Result<u64> {
        let (operation, action) = match how {
            DeadMove::Requeue(None) => ("requeue_dead", "requeue".to_string()),
            // The script sets each entry's priority byte and puts it in that level's list.
            DeadMove::Requeue(Some(p)) => ("requeue_dead_at", format!("requeue:{}", p.index())),
            DeadMove::Purge => ("purge_dead", "purge".to_string()),
        };
        let script = &self.inner.scripts.dead_move;
        let mut total = 0u64;
        match which {
            Selection::All => loop {
                let mut cmd = script.call(keys);
                common_args(&mut cmd, config, mode);
                cmd.arg(&action).arg("all").arg(DEAD_CHUNK);
                let reply = self.run(operation, script, &cmd).await?;
                let n = uint(&reply).unwrap_or(0);
                total += n;
                if n < DEAD_CHUNK as u64 {
                    break;
                }
            },
            Selection::Ids(ids) => {
                for chunk in ids.chunks(DEAD_CHUNK) {
                    let mut cmd = script.call(keys);
                    common_args(&mut cmd, config, mode);
                    cmd.arg(&action).arg("ids");
                    for id in chunk {
                        cmd.arg(id.to_string());
                    }
                    let reply = self.run(operation, script, &cmd).await?;
                    total += uint(&reply).unwrap_or(0);
                }
            }
            other => return Err(KIT.unsupported(operation, other)),
        }
        Ok(total)
    }

    /// Store a pause, resume or rate limit in a queue's or group's control hash
    /// (`control.lua`); a resume or limit change wakes the waiting consumers.
    pub(crate) async fn control_with(
        &self,
        operation: &'static str,
        keys: &[String],
        config: &QueueConfig,
        mode: Mode<'_>,
        op: Control,
    ) -> Result<()> {
        let script = &self.inner.scripts.control;
        let mut cmd = script.call(keys);
        common_args(&mut cmd, config, mode);
        match op {
            Control::Pause => cmd.arg("pause"),
            Control::Resume => cmd.arg("resume"),
            Control::Limit(l) => cmd
                .arg("limit")
                .arg(l.max)
                .arg(l.per_ms())
                .arg(u64::try_from(l.per.as_nanos()).unwrap_or(u64::MAX)),
            Control::Unlimit => cmd.arg("unlimit"),
        };
        self.run(operation, script, &cmd).await?;
        Ok(())
    }

    /// Block until the queue's wake-up list gets a token or `block` passes.
    async fn wait_queue(&self, wake_key: &str, block: Duration) -> Result<()> {
        let secs = (block + crate::wait::SERVER_SLACK).as_secs_f64();
        let mut cmd = redis::cmd("BLPOP");
        cmd.arg(wake_key).arg(format!("{secs:.3}"));
        self.inner
            .waiters
            .run("receive", wake_key, &cmd, block, self.conn("receive"))
            .await?;
        Ok(())
    }

    fn check_queue(&self, queue: &str, operation: &'static str) -> Result<()> {
        KIT.check_name("queue", queue, operation)
    }

    fn queue_keys(&self, queue: &str) -> Vec<String> {
        keys::queue(&self.inner.prefix, queue)
    }
}

/// How long to block before looking again: until the end of the wait, or the next due time.
pub(crate) fn block_for(end: Instant, next_due_ms: i64) -> Option<Duration> {
    let now = Instant::now();
    if now >= end {
        return None;
    }
    let mut block = end - now;
    if next_due_ms >= 0 {
        // +1 ms: the script compares "due <= now" on whole server milliseconds.
        block = block.min(Duration::from_millis(next_due_ms as u64 + 1));
    }
    Some(block.max(Duration::from_millis(1)))
}

/// The end of a wait of `wait` from now (saturating far in the future).
pub(crate) fn wait_end(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(60 * 60 * 24 * 365 * 30))
}

#[async_trait]
impl Queue for RedisBackend {
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
        self.inner.configs.queue(queue)
    }

    async fn publish_batch(&self, queue: &str, messages: Vec<Message>) -> Result<Vec<Published>> {
        let config = self.queue_config(queue);
        let now = self.inner.clock.now_ms();
        // The whole batch is checked and encoded before anything is sent (Q7, Q10).
        let mut keyed = false;
        let (ids, encoded) =
            KIT.prepare_batch(Batch::Publish, queue, &config, messages, now, |m| {
                keyed |= m.dedup_key.is_some();
                let delay = m.not_before.map_or(0, |at| at.saturating_sub(now));
                Ok((m.priority.index(), delay, wire::encode(&m)?))
            })?;
        let keys = self.queue_keys(queue);
        // Batches without a deduplication key (Q11) take publish.lua, which does no
        // per-message work; the others publish_keyed.lua, which decides each message. Decided
        // by the key, not by wire version 2: a message with only an expiry (Q12) is version 2
        // too, and needs nothing of publish_keyed.lua (claims read its expiry).
        let script = if keyed {
            &self.inner.scripts.publish_keyed
        } else {
            &self.inner.scripts.publish
        };
        let window = config.dedup_window_ms().min(MAX_WINDOW_MS);
        let mut outcomes = Vec::with_capacity(ids.len());
        let mut stored = 0usize;
        let mut rest = &encoded[..];
        // Test support: the call that fails instead of running (see `batch_fault_switch`).
        let fault = self
            .inner
            .batch_fault
            .swap(0, std::sync::atomic::Ordering::Relaxed)
            .checked_sub(1);
        let mut call = 0usize;
        while !rest.is_empty() {
            let mut n = 0;
            let mut size = 0;
            while n < rest.len() && n < PUBLISH_CHUNK && (n == 0 || size < PUBLISH_CHUNK_BYTES) {
                size += rest[n].2.len();
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n);
            let mut cmd = script.call(&keys);
            common_args(&mut cmd, &config, Mode::Queue);
            if keyed {
                // Layout: see publish_keyed.lua (the window, then each message in batch order).
                cmd.arg(chunk.len()).arg(window);
                for (level, delay, bytes) in chunk {
                    cmd.arg(*level).arg(*delay).arg(&bytes[..]);
                }
            } else {
                // Layout: see publish.lua (ready-now messages grouped by priority, then delayed).
                cmd.arg(chunk.len());
                for level in 0..4 {
                    let ready = chunk.iter().filter(|m| m.0 == level && m.1 == 0).count();
                    cmd.arg(ready);
                }
                for level in 0..4 {
                    for (_, _, bytes) in chunk.iter().filter(|m| m.0 == level && m.1 == 0) {
                        cmd.arg(&bytes[..]);
                    }
                }
                for (_, delay, bytes) in chunk.iter().filter(|m| m.1 > 0) {
                    cmd.arg(&bytes[..]).arg(*delay);
                }
            }
            let result = if fault == Some(call) {
                Err(KIT.tag("publish")(Error::new(
                    ErrorKind::Unavailable,
                    "injected fault: the connection was lost during the call",
                )))
            } else {
                self.run("publish", script, &cmd).await
            };
            call += 1;
            let reply = match result {
                Ok(reply) => reply,
                // Leading chunks are stored (or found to be duplicates); the failed one may or
                // may not be.
                Err(e) => return Err(e.with_stored(stored)),
            };
            let chunk_ids = &ids[stored..stored + chunk.len()];
            if keyed {
                // The chunk was applied even when its reply cannot be read.
                read_keyed_outcomes(chunk_ids, reply, &mut outcomes)
                    .map_err(|e| e.with_stored(stored + chunk.len()))?;
            } else {
                outcomes.extend(chunk_ids.iter().copied().map(Published::Stored));
            }
            stored += chunk.len();
            rest = tail;
        }
        Ok(outcomes)
    }

    async fn receive(&self, queue: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.check_queue(queue, "receive")?;
        KIT.check_max(max)?;
        let wake_key = self.queue_keys(queue).swap_remove(keys::QUEUE_WAKE);
        let origin = Origin::Queue(queue.to_string());
        let end = wait_end(wait);
        loop {
            match self.claim_detached(origin.clone(), max).await? {
                Claimed::Got { deliveries, .. } => {
                    // Empty only when every claimed entry was undecodable (now buried): look
                    // again at once.
                    if !deliveries.is_empty() || Instant::now() >= end {
                        return Ok(deliveries);
                    }
                }
                Claimed::Empty { next_due_ms, .. } => {
                    let Some(block) = block_for(end, next_due_ms) else {
                        return Ok(Vec::new());
                    };
                    self.wait_queue(&wake_key, block).await?;
                }
            }
        }
    }

    async fn settle(&self, queue: &str, ops: Vec<Settle>) -> Result<Vec<Result<()>>> {
        self.check_queue(queue, "settle")?;
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let config = self.queue_config(queue);
        self.settle_with(&self.queue_keys(queue), &config, Mode::Queue, ops)
            .await
    }

    async fn extend(&self, queue: &str, lease: &Lease, visibility: Duration) -> Result<Lease> {
        self.check_queue(queue, "extend")?;
        let config = self.queue_config(queue);
        self.extend_with(
            &self.queue_keys(queue),
            &config,
            Mode::Queue,
            lease,
            visibility,
        )
        .await
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats> {
        self.check_queue(queue, "stats")?;
        let config = self.queue_config(queue);
        let script = &self.inner.scripts.stats;
        let (mut stats, rest) = self
            .stats_with(script, &self.queue_keys(queue), &config, Mode::Queue)
            .await?;
        // stats.lua's 12th value (a group's is its lag), then from the 15th the rate limit.
        stats.deduplicated = rest.first().and_then(uint).unwrap_or(0);
        stats.rate_limit = read_rate_limit(rest.get(3..).unwrap_or_default());
        Ok(stats)
    }

    async fn dead_letters(&self, queue: &str, page: Page) -> Result<Vec<DeadLetter>> {
        self.check_queue(queue, "dead_letters")?;
        let config = self.queue_config(queue);
        self.dead_page_with(&self.queue_keys(queue), &config, Mode::Queue, page)
            .await
    }

    async fn dead_letter(&self, queue: &str, id: MessageId) -> Result<DeadLetter> {
        self.check_queue(queue, "dead_letter")?;
        let config = self.queue_config(queue);
        self.dead_get_with(&self.queue_keys(queue), &config, Mode::Queue, id)
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
        self.check_queue(queue, "requeue_dead_at")?;
        let config = self.queue_config(queue);
        let how = DeadMove::Requeue(Some(priority));
        self.dead_move_with(&self.queue_keys(queue), &config, Mode::Queue, how, which)
            .await
    }

    async fn requeue_dead(&self, queue: &str, which: Selection) -> Result<u64> {
        self.check_queue(queue, "requeue_dead")?;
        let config = self.queue_config(queue);
        self.dead_move_with(
            &self.queue_keys(queue),
            &config,
            Mode::Queue,
            DeadMove::Requeue(None),
            which,
        )
        .await
    }

    async fn purge_dead(&self, queue: &str, which: Selection) -> Result<u64> {
        self.check_queue(queue, "purge_dead")?;
        let config = self.queue_config(queue);
        self.dead_move_with(
            &self.queue_keys(queue),
            &config,
            Mode::Queue,
            DeadMove::Purge,
            which,
        )
        .await
    }

    async fn pause(&self, queue: &str) -> Result<()> {
        self.check_queue(queue, "pause")?;
        let config = self.queue_config(queue);
        self.control_with(
            "pause",
            &self.queue_keys(queue),
            &config,
            Mode::Queue,
            Control::Pause,
        )
        .await
    }

    async fn resume(&self, queue: &str) -> Result<()> {
        self.check_queue(queue, "resume")?;
        let config = self.queue_config(queue);
        self.control_with(
            "resume",
            &self.queue_keys(queue),
            &config,
            Mode::Queue,
            Control::Resume,
        )
        .await
    }

    async fn set_rate_limit(&self, queue: &str, limit: Option<RateLimit>) -> Result<()> {
        self.check_queue(queue, "set_rate_limit")?;
        // Checked before anything is stored.
        if let Some(l) = &limit {
            l.validate().map_err(KIT.tag("set_rate_limit"))?;
        }
        let config = self.queue_config(queue);
        let op = limit.map_or(Control::Unlimit, Control::Limit);
        self.control_with(
            "set_rate_limit",
            &self.queue_keys(queue),
            &config,
            Mode::Queue,
            op,
        )
        .await
    }

    async fn reprioritise(&self, queue: &str, id: MessageId, priority: Priority) -> Result<()> {
        const OP: &str = "reprioritise";
        self.check_queue(queue, OP)?;
        let config = self.queue_config(queue);
        let script = &self.inner.scripts.reprioritise;
        let mut cmd = script.call(&self.queue_keys(queue));
        common_args(&mut cmd, &config, Mode::Queue);
        cmd.arg(&id.as_bytes()[..]).arg(priority.index());
        let reply = self.run(OP, script, &cmd).await?;
        let moved = uint(&reply).ok_or_else(|| bad_reply(OP, "not a count"))?;
        if moved == 0 {
            return Err(KIT.tag(OP)(Error::not_found(format!(
                "no ready, delayed or leased message {id} in queue {queue:?}"
            ))));
        }
        Ok(())
    }

    async fn list_queues(&self) -> Result<Vec<String>> {
        let prefix = &self.inner.prefix;
        let keys = self.scan(&keys::queue_scan(prefix), "list_queues").await?;
        let mut names: Vec<String> = keys
            .iter()
            .filter_map(|k| keys::queue_of(prefix, k).map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn junk(raw: &[u8]) -> (MessageId, String) {
        let raw = Bytes::copy_from_slice(raw);
        let e = wire::decode(&raw).expect_err("junk");
        undecodable_entry(&raw, e).expect_err("still junk")
    }

    #[test]
    fn only_a_header_or_a_wrap_carries_an_id() {
        let id = MessageId::new();
        let with = |first: &[u8], tail: &[u8]| [first, id.as_bytes(), tail].concat();
        assert_eq!(carried_id(&with(&[0xC7, 0x01], b"")), Some(id));
        assert_eq!(carried_id(&with(&[0xC7, 0xFF], b"junk")), Some(id));
        assert_eq!(carried_id(&with(&[0xC7, 0x02], b"")), Some(id), "keyed");
        assert_eq!(
            carried_id(&with(&[0xC7, 0x03], b"")),
            None,
            "unknown layout"
        );
        assert_eq!(carried_id(&with(&[0x00, 0x01], b"")), None, "not Courier's");
        assert_eq!(
            carried_id(&[0xC7, 0x01, 1, 2, 3]),
            None,
            "shorter than an id"
        );
        assert_eq!(
            carried_id(&[[0xC7, 0x01].as_slice(), &[0; 20]].concat()),
            None,
            "nil"
        );
    }

    #[test]
    fn junk_without_an_id_gets_a_fresh_one_each_time() {
        let (a, reason) = junk(&[0xAB; 16]);
        let (b, _) = junk(&[0xAB; 16]);
        assert!(a != b && !a.is_nil() && !b.is_nil());
        assert!(
            reason.starts_with("undecodable message: not a Courier message"),
            "{reason}"
        );
    }

    #[test]
    fn a_wrap_reports_the_error_of_the_bytes_inside() {
        let id = MessageId::new();
        let (got, reason) = junk(&wrap_undecodable(id, b"\x00junk"));
        assert_eq!(got, id);
        assert_eq!(reason, junk(b"\x00junk").1);
        let (got, reason) = junk(&wrap_undecodable(id, b""));
        assert_eq!(got, id);
        assert!(reason.contains("truncated message"), "{reason}");
    }

    #[test]
    fn a_wrapped_message_that_decodes_is_that_message() {
        let mut m = Message::new("k", "p");
        m.id = MessageId::new();
        let raw = Bytes::from(wrap_undecodable(
            MessageId::new(),
            &wire::encode(&m).expect("encode"),
        ));
        let e = wire::decode(&raw).expect_err("a wrap is not a message");
        assert_eq!(undecodable_entry(&raw, e).expect("decodes"), m);
    }
}
