//! The queue state machine in SQL, shared by queues and consumer groups. It mirrors the
//! reference model (`courier-memory`'s `QueueState`) transition for transition:
//!
//! - every row is in exactly one state: ready (FIFO per priority level by `seq`), delayed
//!   (ordered by `(due, seq)`), leased (by token, with a deadline) or dead (ordered by
//!   `(failed_at, seq)`); acked rows are deleted (Q9);
//! - `tick` brings a queue up to `now` before every operation: expired leases count as failed
//!   attempts (retry with backoff or bury with "lease expired", decided by the core's
//!   [`RetryPolicy::decide`](courier_core::RetryPolicy::decide)), then due delayed rows move to
//!   the back of their level in `(due, seq)` order;
//! - a release goes to the *front* of its level (a decreasing `front_seq`) and does not count
//!   the attempt;
//! - settle and extend act only when the token matches, the id matches and the deadline is
//!   still in the future.
//!
//! All functions run on the writer thread inside its transaction.

use courier_core::clock::ms_ceil;
use courier_core::{
    DeadLetter, Delivery, FailureAction, Lease, Message, MessageId, Page, Priority, Published,
    QueueConfig, QueueStats, RateLimit, Result, Selection, Settle, wire,
};
use std::sync::LazyLock;
use std::time::Duration;

use courier_core::backend::{EXPIRED, LEASE_EXPIRED, expired_lease};
use rusqlite::{OptionalExtension, params};

use crate::error::KIT;
use crate::poll::Poll;
use crate::writer::Ctx;

/// Row states (the SQL below writes them as literals: 0 ready, 1 delayed, 2 leased, 3 dead).
const READY: i64 = 0;
const DELAYED: i64 = 1;

/// Most expired leases and due delayed rows processed by one tick (the rest in the next).
const TICK_BOUND: i64 = 10_000;

/// Most remembered lease row ids per writer (see `Ctx::leased`); beyond, the memory starts over.
const LEASED_HINTS: usize = 1 << 16;

/// The priority level of every consumer-group row (events keep emit order).
pub(crate) const GROUP_LEVEL: i64 = 2;

/// A `u64` (ms, counts) as an SQLite integer, saturating.
pub(crate) fn i(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

/// An SQLite integer as a `u64` (negative → 0).
pub(crate) fn u(x: i64) -> u64 {
    u64::try_from(x).unwrap_or(0)
}

fn u32_of(x: i64) -> u32 {
    u32::try_from(x.max(0)).unwrap_or(u32::MAX)
}

/// A message id from its stored bytes (a wrong length reads as nil).
pub(crate) fn id_of(bytes: &[u8]) -> MessageId {
    <[u8; 16]>::try_from(bytes)
        .map(MessageId::from_bytes)
        .unwrap_or_else(|_| MessageId::nil())
}

/// The key of a queue in caches and wake-ups.
pub(crate) fn queue_key(queue: &str) -> String {
    format!("q:{queue}")
}

/// The wake-up key of a topic (all its groups share it).
pub(crate) fn topic_key(topic: &str) -> String {
    format!("t:{topic}")
}

/// A queue's (or group's) row, loaded for one operation and saved when changed.
#[derive(Debug)]
pub(crate) struct Q {
    pub(crate) qid: i64,
    next_seq: i64,
    front_seq: i64,
    pub(crate) cursor: i64,
    published: i64,
    acked: i64,
    retried: i64,
    dead_lettered: i64,
    deduplicated: i64,
    /// Messages a claim reached at or after their expiry (Q12).
    expired: i64,
    /// Paused (Q14, E8): a claim leases nothing.
    pub(crate) paused: bool,
    /// The rate limit (Q15), and the deliveries counted in the window starting at
    /// `window_start` (by every process: the row is read and written in the claim's
    /// transaction).
    rate: Option<RateLimit>,
    window_start: i64,
    window_count: i64,
    dirty: bool,
    /// Something became ready during this operation.
    pub(crate) readied: bool,
}

impl Q {
    fn seq(&mut self) -> i64 {
        let s = self.next_seq;
        self.next_seq += 1;
        self.dirty = true;
        s
    }

    fn front(&mut self) -> i64 {
        self.front_seq -= 1;
        self.dirty = true;
        self.front_seq
    }

    /// A group that does not exist (yet), seen as empty with its cursor at `cursor`: every
    /// query on it matches no row (no row has qid [`ABSENT_QID`]), and saving it writes
    /// nothing. Operations that do not create a group (stats, dead letters, settle, extend)
    /// run on it.
    pub(crate) fn absent(cursor: i64) -> Q {
        Q {
            qid: ABSENT_QID,
            next_seq: 1,
            front_seq: 0,
            cursor,
            published: 0,
            acked: 0,
            retried: 0,
            dead_lettered: 0,
            deduplicated: 0,
            expired: 0,
            paused: false,
            rate: None,
            window_start: 0,
            window_count: 0,
            dirty: false,
            readied: false,
        }
    }

    /// Whether this is a group that does not exist ([`Q::absent`]).
    pub(crate) fn is_absent(&self) -> bool {
        self.qid == ABSENT_QID
    }

    /// Pause or resume (Q14, E8); saved with the row.
    pub(crate) fn set_paused(&mut self, paused: bool) {
        if paused != self.paused {
            self.paused = paused;
            self.dirty = true;
        }
    }

    /// Set or clear the rate limit (Q15); the current window's count is kept, so changing the
    /// limit never grants a window more than the new limit allows.
    pub(crate) fn set_rate_limit(&mut self, limit: Option<RateLimit>) {
        if limit != self.rate {
            self.rate = limit;
            self.dirty = true;
        }
    }

    /// How many deliveries the rate limit allows a claim at `now`, at most `max` (the memory
    /// model's `rate_allows`): starts a new window when `now` left the counted one, then
    /// grants what the window has left, at most [`RateLimit::grant_cap`].
    fn rate_allows(&mut self, now: u64, max: usize) -> usize {
        let Some(r) = self.rate else { return max };
        let w = i(r.window_start(now));
        if w != self.window_start {
            self.window_start = w;
            self.window_count = 0;
            self.dirty = true;
        }
        let left = (i64::from(r.max) - self.window_count).clamp(0, i64::from(r.grant_cap()));
        max.min(usize::try_from(left).unwrap_or(0))
    }

    /// Count `n` deliveries leased in the current window (with a rate limit only).
    fn count_leased(&mut self, n: usize) {
        if self.rate.is_some() && n > 0 {
            self.window_count = self
                .window_count
                .saturating_add(i64::try_from(n).unwrap_or(i64::MAX));
            self.dirty = true;
        }
    }

    /// When a spent rate-limit window ends, if ready work waits for it (checked only then).
    fn window_end(&self, ctx: &Ctx<'_>) -> Result<Option<u64>> {
        let Some(r) = self.rate else { return Ok(None) };
        if self.paused || self.window_count < i64::from(r.max) || !has_ready(ctx, self.qid)? {
            return Ok(None);
        }
        Ok(Some(u(self.window_start).saturating_add(r.per_ms())))
    }

    /// Move the group's cursor.
    pub(crate) fn set_cursor(&mut self, cursor: i64) {
        if cursor != self.cursor {
            self.cursor = cursor;
            self.dirty = true;
        }
    }
}

/// The qid of [`Q::absent`]: SQLite never gives a row a negative rowid of its own.
const ABSENT_QID: i64 = -1;

/// The row id of a queue or group if it exists (in any process), without creating it.
/// The names one listing query returns (Q13, E7), in its order. `what` names the listing in
/// errors.
pub(crate) fn names(
    ctx: &Ctx<'_>,
    what: &'static str,
    sql: &str,
    param: Option<&str>,
) -> Result<Vec<String>> {
    ctx.conn
        .prepare_cached(sql)
        .and_then(|mut s| {
            s.query_map(rusqlite::params_from_iter(param), |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .map_err(ctx.err(what))
}

pub(crate) fn find_qid(
    ctx: &mut Ctx<'_>,
    key: &str,
    kind: &str,
    topic: &str,
    name: &str,
) -> Result<Option<i64>> {
    if let Some(q) = ctx.qids.get(key) {
        return Ok(Some(*q));
    }
    let found: Option<i64> = ctx
        .conn
        .prepare_cached(
            "SELECT qid FROM courier_queues WHERE kind = ?1 AND topic = ?2 AND name = ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![kind, topic, name], |r| r.get(0))
                .optional()
        })
        .map_err(ctx.err("open queue"))?;
    if let Some(q) = found {
        ctx.qids.insert(key.to_owned(), q);
    }
    Ok(found)
}

/// The row id of a queue or group, created on first use. `cursor` is the initial cursor of a
/// new group.
pub(crate) fn qid(
    ctx: &mut Ctx<'_>,
    key: &str,
    kind: &str,
    topic: &str,
    name: &str,
    cursor: impl FnOnce(&mut Ctx<'_>) -> Result<i64>,
) -> Result<i64> {
    let q = match find_qid(ctx, key, kind, topic, name)? {
        Some(q) => q,
        None => {
            let c = cursor(ctx)?;
            // A group paused before it existed starts paused (E8).
            let paused = kind == "group" && take_pending_pause(ctx, topic, name)?;
            ctx.conn
                .prepare_cached(
                    "INSERT INTO courier_queues (kind, topic, name, next_seq, cursor, paused) \
                     VALUES (?1, ?2, ?3, 1, ?4, ?5)",
                )
                .and_then(|mut s| s.execute(params![kind, topic, name, c, paused]))
                .map_err(ctx.err("create queue"))?;
            ctx.conn.last_insert_rowid()
        }
    };
    ctx.qids.insert(key.to_owned(), q);
    Ok(q)
}

/// Whether group `name` of `topic`, which does not exist, was paused (E8).
pub(crate) fn pending_pause(ctx: &Ctx<'_>, topic: &str, name: &str) -> Result<bool> {
    ctx.conn
        .prepare_cached("SELECT 1 FROM courier_pending_pauses WHERE topic = ?1 AND name = ?2")
        .and_then(|mut s| s.exists(params![topic, name]))
        .map_err(ctx.err("pause"))
}

/// Pause (or resume) group `name` of `topic`, which does not exist: remembered until the group
/// is created, without creating (or listing) it.
pub(crate) fn set_pending_pause(
    ctx: &Ctx<'_>,
    topic: &str,
    name: &str,
    paused: bool,
) -> Result<()> {
    let sql = if paused {
        "INSERT OR IGNORE INTO courier_pending_pauses (topic, name) VALUES (?1, ?2)"
    } else {
        "DELETE FROM courier_pending_pauses WHERE topic = ?1 AND name = ?2"
    };
    ctx.conn
        .prepare_cached(sql)
        .and_then(|mut s| s.execute(params![topic, name]))
        .map_err(ctx.err("pause"))?;
    Ok(())
}

/// Whether a group being created was paused before; its pending pause is taken over.
fn take_pending_pause(ctx: &Ctx<'_>, topic: &str, name: &str) -> Result<bool> {
    let n = ctx
        .conn
        .prepare_cached("DELETE FROM courier_pending_pauses WHERE topic = ?1 AND name = ?2")
        .and_then(|mut s| s.execute(params![topic, name]))
        .map_err(ctx.err("create queue"))?;
    Ok(n > 0)
}

/// The rate limit stored as `(rate_max, rate_per_ns)` (both `NULL`: none).
fn rate_of(max: Option<i64>, per_ns: Option<i64>) -> Option<RateLimit> {
    let (max, per_ns) = (max?, per_ns?);
    Some(RateLimit::new(u32_of(max), Duration::from_nanos(u(per_ns))))
}

/// Load a queue row.
pub(crate) fn load(ctx: &Ctx<'_>, qid: i64) -> Result<Q> {
    ctx.conn
        .prepare_cached(
            "SELECT next_seq, front_seq, cursor, published, acked, retried, dead_lettered, \
             deduplicated, expired, paused, rate_max, rate_per_ns, window_start, window_count \
             FROM courier_queues WHERE qid = ?1",
        )
        .and_then(|mut s| {
            s.query_row([qid], |r| {
                Ok(Q {
                    qid,
                    next_seq: r.get(0)?,
                    front_seq: r.get(1)?,
                    cursor: r.get(2)?,
                    published: r.get(3)?,
                    acked: r.get(4)?,
                    retried: r.get(5)?,
                    dead_lettered: r.get(6)?,
                    deduplicated: r.get(7)?,
                    expired: r.get(8)?,
                    paused: r.get(9)?,
                    rate: rate_of(r.get(10)?, r.get(11)?),
                    window_start: r.get(12)?,
                    window_count: r.get(13)?,
                    dirty: false,
                    readied: false,
                })
            })
        })
        .map_err(ctx.err("load queue"))
}

/// Save a queue row when changed.
pub(crate) fn save(ctx: &Ctx<'_>, q: &mut Q) -> Result<()> {
    if !q.dirty {
        return Ok(());
    }
    ctx.conn
        .prepare_cached(
            "UPDATE courier_queues SET next_seq = ?2, front_seq = ?3, cursor = ?4, \
             published = ?5, acked = ?6, retried = ?7, dead_lettered = ?8, deduplicated = ?9, \
             expired = ?10, paused = ?11, rate_max = ?12, rate_per_ns = ?13, window_start = ?14, \
             window_count = ?15 WHERE qid = ?1",
        )
        .and_then(|mut s| {
            let rate_max = q.rate.map(|r| i64::from(r.max));
            let rate_per_ns = q
                .rate
                .map(|r| i64::try_from(r.per.as_nanos()).unwrap_or(i64::MAX));
            s.execute(params![
                q.qid,
                q.next_seq,
                q.front_seq,
                q.cursor,
                q.published,
                q.acked,
                q.retried,
                q.dead_lettered,
                q.deduplicated,
                q.expired,
                q.paused,
                rate_max,
                rate_per_ns,
                q.window_start,
                q.window_count
            ])
        })
        .map_err(ctx.err("save queue"))?;
    q.dirty = false;
    Ok(())
}

/// A message to store, already prepared (id, `created_at`, `not_before`) and encoded.
#[derive(Debug, Clone)]
pub(crate) struct NewRow {
    pub(crate) id: MessageId,
    pub(crate) level: i64,
    pub(crate) not_before: Option<u64>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) body: Vec<u8>,
    /// The deduplication key (Q11; queues only, `None` for consumer-group rows).
    pub(crate) key: Option<String>,
}

impl NewRow {
    /// Prepare and encode a message for `level` (`None`: its own priority).
    ///
    /// # Errors
    /// [`courier_core::ErrorKind::InvalidInput`] when the message cannot be encoded.
    pub(crate) fn encode(message: &Message, level: Option<i64>) -> Result<NewRow> {
        let body = wire::encode(message)?;
        Ok(NewRow {
            id: message.id,
            level: level.unwrap_or(message.priority.index() as i64),
            not_before: message.not_before,
            max_attempts: message.max_attempts,
            body: body.to_vec(),
            key: message.dedup_key.clone(),
        })
    }
}

/// Store a newly published message (counted as published): ready, or delayed until its
/// `not_before`.
pub(crate) fn publish(ctx: &Ctx<'_>, q: &mut Q, now: u64, row: &NewRow) -> Result<()> {
    publish_all(ctx, q, now, std::slice::from_ref(row))
}

/// Rows per multi-row `INSERT` of a publish batch: one statement execution opens the table and
/// its six index cursors once for all of them.
const INSERT_CHUNK: usize = 32;

/// The `INSERT` of `n` rows (8 parameters each).
fn insert_sql(n: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO courier_messages \
         (qid, id, priority, state, seq, due, deliveries, max_attempts, body) VALUES ",
    );
    for k in 0..n {
        let b = k * 8;
        if k > 0 {
            sql.push(',');
        }
        sql.push_str(&format!(
            "(?{}, ?{}, ?{}, ?{}, ?{}, ?{}, 0, ?{}, ?{})",
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5,
            b + 6,
            b + 7,
            b + 8
        ));
    }
    sql
}

/// Rows leased per `UPDATE` execution of a claim.
const LEASE_CHUNK: usize = 32;

/// The `UPDATE` that leases [`LEASE_CHUNK`] rows: `?1` the deadline, then (rid, token) pairs.
static LEASE_MANY: LazyLock<String> = LazyLock::new(|| {
    let mut cases = String::new();
    let mut rids = String::new();
    for k in 0..LEASE_CHUNK {
        let (rid, token) = (2 + 2 * k, 3 + 2 * k);
        cases.push_str(&format!(" WHEN ?{rid} THEN ?{token}"));
        if k > 0 {
            rids.push_str(", ");
        }
        rids.push_str(&format!("?{rid}"));
    }
    format!(
        "UPDATE courier_messages SET state = 2, deadline = ?1, deliveries = deliveries + 1, \
         token = CASE rid{cases} END WHERE rid IN ({rids})"
    )
});

/// `INSERT`s of [`INSERT_CHUNK`] rows and of one row.
static INSERT_MANY: LazyLock<String> = LazyLock::new(|| insert_sql(INSERT_CHUNK));
static INSERT_ONE: LazyLock<String> = LazyLock::new(|| insert_sql(1));

/// Store newly published messages in order: chunks of [`INSERT_CHUNK`] rows per statement,
/// the rest one by one (both statements prepared once and cached).
pub(crate) fn publish_all(ctx: &Ctx<'_>, q: &mut Q, now: u64, rows: &[NewRow]) -> Result<()> {
    let mut chunks = rows.chunks_exact(INSERT_CHUNK);
    for chunk in chunks.by_ref() {
        let mut stmt = ctx
            .conn
            .prepare_cached(&INSERT_MANY)
            .map_err(ctx.err("publish"))?;
        for (k, row) in chunk.iter().enumerate() {
            bind_row(&mut stmt, k * 8, q, now, row).map_err(ctx.err("publish"))?;
        }
        stmt.raw_execute().map_err(ctx.err("publish"))?;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut stmt = ctx
            .conn
            .prepare_cached(&INSERT_ONE)
            .map_err(ctx.err("publish"))?;
        for row in rest {
            bind_row(&mut stmt, 0, q, now, row).map_err(ctx.err("publish"))?;
            stmt.raw_execute().map_err(ctx.err("publish"))?;
        }
    }
    Ok(())
}

/// Count one published row and bind its 8 `INSERT` parameters after the first `at`.
fn bind_row(
    stmt: &mut rusqlite::Statement<'_>,
    at: usize,
    q: &mut Q,
    now: u64,
    row: &NewRow,
) -> rusqlite::Result<()> {
    q.published += 1;
    q.dirty = true;
    let (state, due) = match row.not_before {
        Some(due) if due > now => (DELAYED, Some(i(due))),
        _ => {
            q.readied = true;
            (READY, None)
        }
    };
    let seq = q.seq();
    stmt.raw_bind_parameter(at + 1, q.qid)?;
    stmt.raw_bind_parameter(at + 2, &row.id.as_bytes()[..])?;
    stmt.raw_bind_parameter(at + 3, row.level)?;
    stmt.raw_bind_parameter(at + 4, state)?;
    stmt.raw_bind_parameter(at + 5, seq)?;
    stmt.raw_bind_parameter(at + 6, due)?;
    stmt.raw_bind_parameter(at + 7, row.max_attempts)?;
    stmt.raw_bind_parameter(at + 8, &row.body[..])?;
    Ok(())
}

/// The `INSERT` of one row with its deduplication key (9 parameters: [`bind_row`]'s 8, then
/// the key), used by batches that carry keys.
const INSERT_KEYED: &str = "INSERT INTO courier_messages \
     (qid, id, priority, state, seq, due, deliveries, max_attempts, body, dedup_key) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9)";

/// Most key rows a purge removes at once (the rest in the next one).
const PURGE_BOUND: i64 = 256;

/// Store newly published messages in order with deduplication (Q11), deciding each in batch
/// order: a message whose key is held (its holder is live, or `now` is within the holder's
/// window) stores nothing and comes back as a duplicate of the holder; any other one is stored
/// and, with a key, becomes the key's holder, live, held until `now + window_ms` (0: no
/// window). The checks and the inserts run in the caller's write transaction, so they are one
/// step for every connection to the file.
pub(crate) fn publish_keyed(
    ctx: &Ctx<'_>,
    q: &mut Q,
    now: u64,
    rows: &[NewRow],
    window_ms: u64,
) -> Result<Vec<Published>> {
    purge_holds(ctx, q.qid, now)?;
    let hold_until = if window_ms > 0 {
        now.saturating_add(window_ms)
    } else {
        0
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(key) = &row.key {
            if let Some(owner) = holder(ctx, q.qid, key, now)? {
                q.deduplicated += 1;
                q.dirty = true;
                out.push(Published::Duplicate(owner));
                continue;
            }
            hold_key(ctx, q.qid, key, row.id, hold_until)?;
        }
        let mut stmt = ctx
            .conn
            .prepare_cached(INSERT_KEYED)
            .map_err(ctx.err("publish"))?;
        bind_row(&mut stmt, 0, q, now, row)
            .and_then(|()| stmt.raw_bind_parameter(9, row.key.as_deref()))
            .map_err(ctx.err("publish"))?;
        stmt.raw_execute().map_err(ctx.err("publish"))?;
        out.push(Published::Stored(row.id));
    }
    Ok(out)
}

/// The id of the message holding `key` at `now`, if any.
fn holder(ctx: &Ctx<'_>, qid: i64, key: &str, now: u64) -> Result<Option<MessageId>> {
    let row: Option<(Vec<u8>, bool, i64)> = ctx
        .conn
        .prepare_cached(
            "SELECT owner, live, hold_until FROM courier_dedup WHERE qid = ?1 AND key = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![qid, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(ctx.err("deduplicate"))?;
    Ok(row
        .and_then(|(owner, live, hold_until)| (live || now < u(hold_until)).then(|| id_of(&owner))))
}

/// Make `owner` the live holder of `key`, held until `hold_until` (0: while live).
fn hold_key(ctx: &Ctx<'_>, qid: i64, key: &str, owner: MessageId, hold_until: u64) -> Result<()> {
    ctx.conn
        .prepare_cached(
            "INSERT INTO courier_dedup (qid, key, owner, live, hold_until) \
             VALUES (?1, ?2, ?3, 1, ?4) ON CONFLICT (qid, key) DO UPDATE \
             SET owner = excluded.owner, live = 1, hold_until = excluded.hold_until",
        )
        .and_then(|mut s| s.execute(params![qid, key, &owner.as_bytes()[..], i(hold_until)]))
        .map_err(ctx.err("deduplicate"))?;
    Ok(())
}

/// The message `id` with `key` stopped being live (acked, buried, discarded): if it holds the
/// key, the key is free at once when its window passed (or it has none), else it stays taken,
/// not live, until the end of the window. Key rows whose window passed are purged meanwhile.
fn leave_key(ctx: &Ctx<'_>, qid: i64, id: &[u8], key: &str, now: u64) -> Result<()> {
    let freed = ctx
        .conn
        .prepare_cached(
            "DELETE FROM courier_dedup WHERE qid = ?1 AND key = ?2 AND owner = ?3 \
             AND hold_until <= ?4",
        )
        .and_then(|mut s| s.execute(params![qid, key, id, i(now)]))
        .map_err(ctx.err("release key"))?;
    if freed == 0 {
        ctx.conn
            .prepare_cached(
                "UPDATE courier_dedup SET live = 0 WHERE qid = ?1 AND key = ?2 AND owner = ?3 \
                 AND live = 1",
            )
            .and_then(|mut s| s.execute(params![qid, key, id]))
            .map_err(ctx.err("release key"))?;
    }
    purge_holds(ctx, qid, now)
}

/// A dead letter `id` requeued with `key`: it holds the key again if it is still the recorded
/// holder, or if nobody holds the key at `now` (then without a window); if another message
/// holds it, the requeued one does not.
fn retake_key(ctx: &Ctx<'_>, qid: i64, id: &[u8], key: &str, now: u64) -> Result<()> {
    let row: Option<(Vec<u8>, bool, i64)> = ctx
        .conn
        .prepare_cached(
            "SELECT owner, live, hold_until FROM courier_dedup WHERE qid = ?1 AND key = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![qid, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(ctx.err("requeue_dead"))?;
    match row {
        Some((owner, _, _)) if owner == id => {
            ctx.conn
                .prepare_cached("UPDATE courier_dedup SET live = 1 WHERE qid = ?1 AND key = ?2")
                .and_then(|mut s| s.execute(params![qid, key]))
                .map_err(ctx.err("requeue_dead"))?;
            Ok(())
        }
        Some((_, live, hold_until)) if live || now < u(hold_until) => Ok(()),
        _ => hold_key(ctx, qid, key, id_of(id), 0),
    }
}

/// Delete key rows that hold nothing any more (window passed, holder not live), at most
/// [`PURGE_BOUND`] per call, so the table does not grow with every key ever used.
fn purge_holds(ctx: &Ctx<'_>, qid: i64, now: u64) -> Result<()> {
    ctx.conn
        .prepare_cached(
            "DELETE FROM courier_dedup WHERE qid = ?1 AND live = 0 AND hold_until <= ?2 \
             AND key IN (SELECT key FROM courier_dedup INDEXED BY courier_dedup_expired \
             WHERE qid = ?1 AND live = 0 AND hold_until <= ?2 LIMIT ?3)",
        )
        .and_then(|mut s| s.execute(params![qid, i(now), PURGE_BOUND]))
        .map_err(ctx.err("purge keys"))?;
    Ok(())
}

/// What a row that stopped being live returns: its message id and key (SQL `RETURNING`).
type Left = (Vec<u8>, Option<String>);

/// After a row left live state: free its key, if it has one.
fn left(ctx: &Ctx<'_>, qid: i64, row: Option<Left>, now: u64) -> Result<()> {
    match row {
        Some((id, Some(key))) => leave_key(ctx, qid, &id, &key, now),
        _ => Ok(()),
    }
}

/// Bring the queue up to `now`: expired leases are failed attempts, then due delayed rows
/// move to the back of their level.
pub(crate) fn tick(ctx: &mut Ctx<'_>, q: &mut Q, now: u64, config: &QueueConfig) -> Result<()> {
    let expired: Vec<(i64, i64, Option<u32>)> = ctx
        .conn
        .prepare_cached(
            "SELECT rid, deliveries, max_attempts FROM courier_messages \
             WHERE qid = ?1 AND state = 2 AND deadline <= ?2 \
             ORDER BY deadline, token LIMIT ?3",
        )
        .and_then(|mut s| {
            s.query_map(params![q.qid, i(now), TICK_BOUND], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect()
        })
        .map_err(ctx.err("expire leases"))?;
    for (rid, deliveries, max_attempts) in expired {
        let action = expired_lease(
            &config.retry,
            u32_of(deliveries),
            max_attempts,
            &mut *ctx.rng,
        );
        match action {
            FailureAction::Retry(delay) => {
                q.retried += 1;
                let due = now.saturating_add(ms_ceil(delay));
                delay_row(ctx, q, rid, due, LEASE_EXPIRED)?;
            }
            FailureAction::Dead => bury(ctx, q, rid, LEASE_EXPIRED, now, config)?,
        }
    }
    let due: Vec<i64> = ctx
        .conn
        .prepare_cached(
            "SELECT rid FROM courier_messages WHERE qid = ?1 AND state = 1 AND due <= ?2 \
             ORDER BY due, seq LIMIT ?3",
        )
        .and_then(|mut s| {
            s.query_map(params![q.qid, i(now), TICK_BOUND], |r| r.get(0))?
                .collect()
        })
        .map_err(ctx.err("promote delayed"))?;
    for rid in due {
        let seq = q.seq();
        ctx.conn
            .prepare_cached(
                "UPDATE courier_messages SET state = 0, seq = ?2, due = NULL WHERE rid = ?1",
            )
            .and_then(|mut s| s.execute(params![rid, seq]))
            .map_err(ctx.err("promote delayed"))?;
        q.readied = true;
    }
    Ok(())
}

/// A failed attempt waits until `due` (the back of the delay order), remembering `error`.
fn delay_row(ctx: &Ctx<'_>, q: &mut Q, rid: i64, due: u64, error: &str) -> Result<()> {
    let seq = q.seq();
    ctx.conn
        .prepare_cached(
            "UPDATE courier_messages SET state = 1, due = ?2, seq = ?3, deadline = NULL, \
             token = NULL, last_error = ?4 WHERE rid = ?1",
        )
        .and_then(|mut s| s.execute(params![rid, i(due), seq, error]))
        .map_err(ctx.err("retry"))?;
    Ok(())
}

/// Move a row to dead letters (or delete it when dead letters are off); counted either way.
pub(crate) fn bury(
    ctx: &Ctx<'_>,
    q: &mut Q,
    rid: i64,
    error: &str,
    now: u64,
    config: &QueueConfig,
) -> Result<()> {
    q.dead_lettered += 1;
    q.dirty = true;
    retire(ctx, q, rid, error, now, config.dead_letter)
}

/// A ready row a claim reached at or after its expiry (Q12): to dead letters with the reason
/// [`EXPIRED`] and its deliveries unchanged, or deleted when the queue does not keep expired
/// messages; counted in `expired` (not `dead_lettered`) either way, and its key is freed as a
/// bury frees it.
fn expire(ctx: &Ctx<'_>, q: &mut Q, rid: i64, now: u64, config: &QueueConfig) -> Result<()> {
    q.expired += 1;
    q.dirty = true;
    retire(ctx, q, rid, EXPIRED, now, config.keeps_expired())
}

/// A row stops being live: dead with `error` when `keep`, else deleted. A dead (or discarded)
/// message does not hold its key (Q11).
fn retire(ctx: &Ctx<'_>, q: &mut Q, rid: i64, error: &str, now: u64, keep: bool) -> Result<()> {
    let gone = if !keep {
        remove_row(ctx, rid)?
    } else {
        let seq = q.seq();
        ctx.conn
            .prepare_cached(
                "UPDATE courier_messages SET state = 3, failed_at = ?2, seq = ?3, last_error = ?4, \
                 deadline = NULL, token = NULL, due = NULL WHERE rid = ?1 RETURNING id, dedup_key",
            )
            .and_then(|mut s| {
                s.query_row(params![rid, i(now), seq, error], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
            })
            .map_err(ctx.err("bury"))?
    };
    left(ctx, q.qid, gone, now)
}

/// Delete a row; returns its message id and key if it existed.
fn remove_row(ctx: &Ctx<'_>, rid: i64) -> Result<Option<Left>> {
    ctx.conn
        .prepare_cached("DELETE FROM courier_messages WHERE rid = ?1 RETURNING id, dedup_key")
        .and_then(|mut s| {
            s.query_row([rid], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(ctx.err("delete"))
}

fn delete_row(ctx: &Ctx<'_>, rid: i64) -> Result<()> {
    ctx.conn
        .prepare_cached("DELETE FROM courier_messages WHERE rid = ?1")
        .and_then(|mut s| s.execute([rid]))
        .map_err(ctx.err("delete"))?;
    Ok(())
}

/// The earliest instant (ms) at which the queue may change by itself: a delayed row comes due,
/// a lease ends, or (rate limit) the spent window ends while ready work waits for it.
pub(crate) fn next_wake(ctx: &Ctx<'_>, q: &Q) -> Result<Option<u64>> {
    let due = due_or_deadline(ctx, q.qid)?;
    Ok(match q.window_end(ctx)? {
        Some(w) => Some(due.map_or(w, |d| d.min(w))),
        None => due,
    })
}

/// Whether any row is ready.
fn has_ready(ctx: &Ctx<'_>, qid: i64) -> Result<bool> {
    ctx.conn
        .prepare_cached(
            "SELECT 1 FROM courier_messages INDEXED BY courier_messages_ready \
             WHERE qid = ?1 AND state = 0 LIMIT 1",
        )
        .and_then(|mut s| s.exists([qid]))
        .map_err(ctx.err("next wake"))
}

/// The earliest instant (ms) at which `tick` may change something: a delayed row comes due or
/// a lease ends.
fn due_or_deadline(ctx: &Ctx<'_>, qid: i64) -> Result<Option<u64>> {
    let (d, l): (Option<i64>, Option<i64>) = ctx
        .conn
        .prepare_cached(
            "SELECT (SELECT min(due) FROM courier_messages WHERE qid = ?1 AND state = 1), \
                    (SELECT min(deadline) FROM courier_messages WHERE qid = ?1 AND state = 2)",
        )
        .and_then(|mut s| s.query_row([qid], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(ctx.err("next wake"))?;
    Ok(match (d, l) {
        (Some(a), Some(b)) => Some(u(a.min(b))),
        (a, b) => a.or(b).map(u),
    })
}

/// How many rows are ready in `level`, counting at most `limit`.
pub(crate) fn ready_count(ctx: &Ctx<'_>, qid: i64, level: i64, limit: usize) -> Result<usize> {
    let n: i64 = ctx
        .conn
        .prepare_cached(
            "SELECT count(*) FROM (SELECT 1 FROM courier_messages \
             WHERE qid = ?1 AND state = 0 AND priority = ?2 LIMIT ?3)",
        )
        .and_then(|mut s| s.query_row(params![qid, level, limit as i64], |r| r.get(0)))
        .map_err(ctx.err("receive"))?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// A ready row looked at by a claim: row id, message id, deliveries so far, body.
type ReadyRow = (i64, Vec<u8>, i64, Vec<u8>);

/// What a claim remembers of each lease it made: token, row id, whether it has a key.
type Hint = (i64, i64, bool);

/// Lease up to `max` ready rows, highest level first, FIFO within a level. The caller ran
/// [`tick`] for `now`.
///
/// One walk of `courier_messages_ready` in `(priority, seq)` order with a `LIMIT` finds the
/// rows (strict priority, FIFO inside a level), and each body is decoded before anything is
/// leased:
///
/// - a body that cannot be decoded is buried with the decode error after one attempt (Q10);
/// - a message whose expiry `now` has reached is expired instead ([`expire`], Q12): never
///   leased, so "never delivered at or after `expires_at`" holds inside this transaction;
/// - the others get increasing tokens in that order (from `next_seq`) and are leased by their
///   primary key.
///
/// Rows taken out on the way do not count toward `max`: while fewer than `max` were leased and
/// the walk was cut short by its `LIMIT`, the next ready rows are looked at the same way. In the
/// usual case (nothing expired or broken) a claim is one `SELECT` and the lease `UPDATE`s, as it
/// was before expiry existed; the expiry check is a comparison on the decoded message.
pub(crate) fn claim(
    ctx: &mut Ctx<'_>,
    q: &mut Q,
    now: u64,
    max: usize,
    config: &QueueConfig,
) -> Result<Vec<Delivery>> {
    let deadline = now.saturating_add(ms_ceil(config.visibility_timeout));
    let mut out = Vec::new();
    let mut hints: Vec<Hint> = Vec::new();
    while out.len() < max {
        let want = max - out.len();
        let rows: Vec<ReadyRow> = ctx
            .conn
            .prepare_cached(
                "SELECT rid, id, deliveries, body FROM courier_messages INDEXED BY courier_messages_ready \
                 WHERE qid = ?1 AND state = 0 ORDER BY priority, seq LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(params![q.qid, i64::try_from(want).unwrap_or(i64::MAX)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
            })
            .map_err(ctx.err("receive"))?;
        let walked = rows.len();
        // The deliveries are built as the rows are looked at (each message moved once); the
        // rows are leased right after, in the same transaction.
        let mut to_lease: Vec<(i64, i64)> = Vec::with_capacity(walked);
        out.reserve(walked);
        hints.reserve(walked);
        for (rid, id, deliveries, body) in rows {
            match wire::decode(&bytes::Bytes::from(body)) {
                Ok(message) if message.is_expired(now) => {
                    tracing::debug!(id = %message.id, expires_at = ?message.expires_at, now, "courier sqlite: message expired before it was leased");
                    expire(ctx, q, rid, now, config)?;
                }
                Ok(mut message) => {
                    let token = q.seq();
                    let attempt = u32_of(deliveries.saturating_add(1));
                    message.attempt = attempt;
                    hints.push((token, rid, message.dedup_key.is_some()));
                    to_lease.push((rid, token));
                    out.push(Delivery {
                        message,
                        lease: Lease {
                            id: id_of(&id),
                            token: u(token),
                            attempt,
                            deadline_ms: deadline,
                        },
                    });
                }
                Err(e) => bury_undecodable(ctx, q, rid, &id, &e, now, config)?,
            }
        }
        lease_rows(ctx, deadline, &to_lease)?;
        if walked < want {
            // Nothing more is ready.
            break;
        }
    }
    if ctx.leased.len() + hints.len() > LEASED_HINTS {
        ctx.leased.clear();
    }
    for (token, rid, keyed) in hints {
        ctx.leased.insert((q.qid, token), (rid, keyed));
    }
    Ok(out)
}

/// Lease `(rid, token)` rows until `deadline`, counting the delivery: [`LEASE_CHUNK`] rows per
/// statement execution (one execution opens the table and index cursors once), the remainder
/// one by one.
fn lease_rows(ctx: &Ctx<'_>, deadline: u64, rows: &[(i64, i64)]) -> Result<()> {
    let mut chunks = rows.chunks_exact(LEASE_CHUNK);
    for chunk in chunks.by_ref() {
        let mut stmt = ctx
            .conn
            .prepare_cached(&LEASE_MANY)
            .map_err(ctx.err("receive"))?;
        stmt.raw_bind_parameter(1, i(deadline))
            .map_err(ctx.err("receive"))?;
        for (k, (rid, token)) in chunk.iter().enumerate() {
            stmt.raw_bind_parameter(2 + 2 * k, *rid)
                .and_then(|()| stmt.raw_bind_parameter(3 + 2 * k, *token))
                .map_err(ctx.err("receive"))?;
        }
        stmt.raw_execute().map_err(ctx.err("receive"))?;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut stmt = ctx
            .conn
            .prepare_cached(
                "UPDATE courier_messages SET state = 2, deadline = ?1, \
                 deliveries = deliveries + 1, token = ?3 WHERE rid = ?2",
            )
            .map_err(ctx.err("receive"))?;
        for (rid, token) in rest {
            stmt.execute(params![i(deadline), rid, token])
                .map_err(ctx.err("receive"))?;
        }
    }
    Ok(())
}

/// A ready row whose body does not decode: buried with the decode error, after the one
/// attempt it counts as (Q10), under an id of its own (see [`dead_letter_id`]).
fn bury_undecodable(
    ctx: &Ctx<'_>,
    q: &mut Q,
    rid: i64,
    stored_id: &[u8],
    decode_error: &courier_core::Error,
    now: u64,
    config: &QueueConfig,
) -> Result<()> {
    let error = courier_core::backend::undecodable_reason(decode_error);
    let id = dead_letter_id(ctx, rid, stored_id)?;
    tracing::warn!(id = %id, error = %format_args!("{error:#}"), "courier sqlite: stored message cannot be decoded; moving it to dead letters");
    ctx.conn
        .prepare_cached("UPDATE courier_messages SET deliveries = deliveries + 1 WHERE rid = ?1")
        .and_then(|mut s| s.execute([rid]))
        .map_err(ctx.err("receive"))?;
    bury(ctx, q, rid, &error, now, config)
}

/// The id a row that does not decode is buried under: its own, or a fresh one (stored in the
/// row) when it has none — an `id` that is not 16 bytes or is nil, as a foreign writer may
/// leave it. Every dead letter then has an id of its own, which `dead_letter` and a requeue by
/// id find exactly, as on every backend (the Redis backend applies the same rule to the id an
/// entry carries).
fn dead_letter_id(ctx: &Ctx<'_>, rid: i64, stored: &[u8]) -> Result<MessageId> {
    let id = id_of(stored);
    if !id.is_nil() {
        return Ok(id);
    }
    let fresh = MessageId::new();
    ctx.conn
        .prepare_cached("UPDATE courier_messages SET id = ?2 WHERE rid = ?1")
        .and_then(|mut s| s.execute(params![rid, &fresh.as_bytes()[..]]))
        .map_err(ctx.err("receive"))?;
    Ok(fresh)
}

/// One look by a receive: lease up to `max`, or say when to look again.
pub(crate) fn poll(
    ctx: &mut Ctx<'_>,
    q: &mut Q,
    now: u64,
    max: usize,
    config: &QueueConfig,
) -> Result<Poll> {
    // Flow control (Q14, Q15): a paused queue leases nothing; a rate limit grants what the
    // current window has left. Neither costs a statement here.
    let allowed = if q.paused { 0 } else { q.rate_allows(now, max) };
    let got = if allowed == 0 {
        Vec::new()
    } else {
        claim(ctx, q, now, allowed, config)?
    };
    // Expired messages were taken out on the way: only leases count.
    q.count_leased(got.len());
    if got.is_empty() {
        Ok(Poll::Empty {
            now,
            next_wake: next_wake(ctx, q)?,
        })
    } else {
        Ok(Poll::Got(got))
    }
}

/// The leased row for `lease` if the lease is still held at `now`: `(rid, deliveries)`.
fn held(ctx: &Ctx<'_>, q: &Q, lease: &Lease, now: u64) -> Result<Option<(i64, i64)>> {
    let Ok(token) = i64::try_from(lease.token) else {
        return Ok(None);
    };
    let row: Option<(i64, i64, Vec<u8>, i64)> = ctx
        .conn
        .prepare_cached(
            "SELECT rid, deliveries, id, deadline FROM courier_messages \
             INDEXED BY courier_messages_tokens WHERE qid = ?1 AND state = 2 AND token = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![q.qid, token], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
        })
        .map_err(ctx.err("settle"))?;
    Ok(row.and_then(|(rid, deliveries, id, deadline)| {
        (id_of(&id) == lease.id && u(deadline) > now).then_some((rid, deliveries))
    }))
}

/// Execute one settle operation. The caller ran [`tick`] for `now`.
///
/// # Errors
/// The outer error is a database failure; the inner one `LeaseLost` (then nothing changed).
pub(crate) fn settle(
    ctx: &mut Ctx<'_>,
    q: &mut Q,
    now: u64,
    op: &Settle,
    config: &QueueConfig,
) -> Result<Result<()>> {
    let lease = match op {
        Settle::Ack(lease) => lease,
        other => return settle_held(ctx, q, now, other, config),
    };
    {
        // The hot path: one statement checks the lease and removes the row. A row this writer
        // leased without a key is deleted as it always was; any other one returns its key.
        let token = i64::try_from(lease.token).ok();
        let hint = token.and_then(|t| ctx.leased.remove(&(q.qid, t)));
        let id = &lease.id.as_bytes()[..];
        let gone: Option<Option<String>> = match (token, hint) {
            (Some(token), Some((rid, false))) => {
                let n = ctx
                    .conn
                    .prepare_cached(
                        "DELETE FROM courier_messages WHERE rid = ?1 AND qid = ?2 AND state = 2 \
                         AND token = ?3 AND id = ?4 AND deadline > ?5",
                    )
                    .and_then(|mut s| s.execute(params![rid, q.qid, token, id, i(now)]))
                    .map_err(ctx.err("settle"))?;
                (n > 0).then_some(None)
            }
            (Some(token), Some((rid, true))) => ctx
                .conn
                .prepare_cached(
                    "DELETE FROM courier_messages WHERE rid = ?1 AND qid = ?2 AND state = 2 \
                     AND token = ?3 AND id = ?4 AND deadline > ?5 RETURNING dedup_key",
                )
                .and_then(|mut s| {
                    s.query_row(params![rid, q.qid, token, id, i(now)], |r| r.get(0))
                        .optional()
                })
                .map_err(ctx.err("settle"))?,
            (Some(token), None) => ctx
                .conn
                .prepare_cached(
                    "DELETE FROM courier_messages INDEXED BY courier_messages_tokens \
                     WHERE qid = ?1 AND state = 2 AND token = ?2 AND id = ?3 AND deadline > ?4 \
                     RETURNING dedup_key",
                )
                .and_then(|mut s| {
                    s.query_row(params![q.qid, token, id, i(now)], |r| r.get(0))
                        .optional()
                })
                .map_err(ctx.err("settle"))?,
            (None, _) => None,
        };
        let Some(key) = gone else {
            return Ok(Err(KIT.lease_lost("settle", lease)));
        };
        if let Some(key) = key {
            leave_key(ctx, q.qid, id, &key, now)?;
        }
        q.acked += 1;
        q.dirty = true;
        Ok(Ok(()))
    }
}

/// Retry, bury or release a delivery whose lease is still held.
fn settle_held(
    ctx: &Ctx<'_>,
    q: &mut Q,
    now: u64,
    op: &Settle,
    config: &QueueConfig,
) -> Result<Result<()>> {
    let Some((rid, deliveries)) = held(ctx, q, op.lease(), now)? else {
        return Ok(Err(KIT.lease_lost("settle", op.lease())));
    };
    match op {
        Settle::Ack(_) => {
            q.acked += 1;
            q.dirty = true;
            let gone = remove_row(ctx, rid)?;
            left(ctx, q.qid, gone, now)?;
        }
        Settle::Retry { delay, error, .. } => {
            q.retried += 1;
            let d = ms_ceil(*delay);
            if d == 0 {
                let seq = q.seq();
                ctx.conn
                    .prepare_cached(
                        "UPDATE courier_messages SET state = 0, seq = ?2, deadline = NULL, \
                         token = NULL, last_error = ?3 WHERE rid = ?1",
                    )
                    .and_then(|mut s| s.execute(params![rid, seq, error]))
                    .map_err(ctx.err("settle"))?;
                q.readied = true;
            } else {
                delay_row(ctx, q, rid, now.saturating_add(d), error)?;
            }
        }
        Settle::Bury { error, .. } => bury(ctx, q, rid, error, now, config)?,
        Settle::Release(_) => {
            let seq = q.front();
            ctx.conn
                .prepare_cached(
                    "UPDATE courier_messages SET state = 0, seq = ?2, deadline = NULL, \
                     token = NULL, deliveries = ?3 WHERE rid = ?1",
                )
                .and_then(|mut s| s.execute(params![rid, seq, (deliveries - 1).max(0)]))
                .map_err(ctx.err("settle"))?;
            q.readied = true;
        }
        // Only read so far: nothing changed.
        other => return Ok(Err(KIT.unsupported("settle", other))),
    }
    Ok(Ok(()))
}

/// Push a held lease's deadline to `now + visibility`.
pub(crate) fn extend(
    ctx: &Ctx<'_>,
    q: &Q,
    now: u64,
    lease: &Lease,
    visibility: std::time::Duration,
) -> Result<Result<Lease>> {
    let Some((rid, deliveries)) = held(ctx, q, lease, now)? else {
        return Ok(Err(KIT.lease_lost("extend", lease)));
    };
    let deadline = now.saturating_add(ms_ceil(visibility));
    ctx.conn
        .prepare_cached("UPDATE courier_messages SET deadline = ?2 WHERE rid = ?1")
        .and_then(|mut s| s.execute(params![rid, i(deadline)]))
        .map_err(ctx.err("extend"))?;
    Ok(Ok(Lease {
        id: lease.id,
        token: lease.token,
        attempt: u32_of(deliveries),
        deadline_ms: deadline,
    }))
}

/// A snapshot of the queue (the caller ran [`tick`]).
pub(crate) fn stats(ctx: &Ctx<'_>, q: &Q) -> Result<QueueStats> {
    let mut st = QueueStats::default();
    st.published = u(q.published);
    st.acked = u(q.acked);
    st.retried = u(q.retried);
    st.dead_lettered = u(q.dead_lettered);
    st.deduplicated = u(q.deduplicated);
    st.expired = u(q.expired);
    st.paused = q.paused;
    st.rate_limit = q.rate;
    for level in 0..4i64 {
        st.ready[level as usize] = count(
            ctx,
            "SELECT count(*) FROM courier_messages WHERE qid = ?1 AND state = 0 AND priority = ?2",
            params![q.qid, level],
        )?;
    }
    st.delayed = count(
        ctx,
        "SELECT count(*) FROM courier_messages WHERE qid = ?1 AND state = 1",
        params![q.qid],
    )?;
    st.in_flight = count(
        ctx,
        "SELECT count(*) FROM courier_messages WHERE qid = ?1 AND state = 2",
        params![q.qid],
    )?;
    st.dead = count(
        ctx,
        "SELECT count(*) FROM courier_messages WHERE qid = ?1 AND state = 3",
        params![q.qid],
    )?;
    Ok(st)
}

fn count(ctx: &Ctx<'_>, sql: &str, p: impl rusqlite::Params) -> Result<u64> {
    let n: i64 = ctx
        .conn
        .prepare_cached(sql)
        .and_then(|mut s| s.query_row(p, |r| r.get(0)))
        .map_err(ctx.err("stats"))?;
    Ok(u(n))
}

fn dead_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    let id: Vec<u8> = r.get(0)?;
    let body: Vec<u8> = r.get(1)?;
    let deliveries: i64 = r.get(2)?;
    let failed_at: i64 = r.get(3)?;
    let error: Option<String> = r.get(4)?;
    let id = id_of(&id);
    let body = bytes::Bytes::from(body);
    let mut message = match wire::decode(&body) {
        Ok(m) => m,
        Err(_) => {
            // A stored entry that cannot be decoded is shown with its raw bytes.
            let mut m = Message::new("", body);
            m.id = id;
            m
        }
    };
    let attempts = u32_of(deliveries);
    message.attempt = attempts;
    Ok(DeadLetter {
        message,
        error: error.unwrap_or_default(),
        attempts,
        failed_at: u(failed_at),
    })
}

/// Dead letters, oldest first.
pub(crate) fn dead_letters(ctx: &Ctx<'_>, q: &Q, page: Page) -> Result<Vec<DeadLetter>> {
    ctx.conn
        .prepare_cached(
            "SELECT id, body, deliveries, failed_at, last_error FROM courier_messages \
             WHERE qid = ?1 AND state = 3 ORDER BY failed_at, seq LIMIT ?2 OFFSET ?3",
        )
        .and_then(|mut s| {
            s.query_map(
                params![
                    q.qid,
                    i64::try_from(page.limit).unwrap_or(i64::MAX),
                    i64::try_from(page.offset).unwrap_or(i64::MAX)
                ],
                dead_from_row,
            )?
            .collect()
        })
        .map_err(ctx.err("dead_letters"))
}

/// The oldest dead letter with this id.
pub(crate) fn dead_letter(ctx: &Ctx<'_>, q: &Q, id: MessageId) -> Result<Option<DeadLetter>> {
    ctx.conn
        .prepare_cached(
            "SELECT id, body, deliveries, failed_at, last_error FROM courier_messages \
             INDEXED BY courier_messages_dead_id WHERE qid = ?1 AND state = 3 AND id = ?2 \
             ORDER BY failed_at, seq LIMIT 1",
        )
        .and_then(|mut s| {
            s.query_row(params![q.qid, &id.as_bytes()[..]], dead_from_row)
                .optional()
        })
        .map_err(ctx.err("dead_letter"))
}

/// Row ids of the selected dead letters, oldest first.
fn selected(ctx: &Ctx<'_>, q: &Q, which: &Selection) -> Result<Vec<i64>> {
    match which {
        Selection::All => ctx
            .conn
            .prepare_cached(
                "SELECT rid FROM courier_messages WHERE qid = ?1 AND state = 3 \
                 ORDER BY failed_at, seq",
            )
            .and_then(|mut s| s.query_map([q.qid], |r| r.get(0))?.collect())
            .map_err(ctx.err("dead_letters")),
        Selection::Ids(ids) => {
            let mut keys: Vec<(i64, i64, i64)> = Vec::new();
            let mut stmt = ctx
                .conn
                .prepare_cached(
                    "SELECT failed_at, seq, rid FROM courier_messages \
                     INDEXED BY courier_messages_dead_id WHERE qid = ?1 AND state = 3 AND id = ?2",
                )
                .map_err(ctx.err("dead_letters"))?;
            for id in ids {
                let rows: Vec<(i64, i64, i64)> = stmt
                    .query_map(params![q.qid, &id.as_bytes()[..]], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .and_then(|rows| rows.collect())
                    .map_err(ctx.err("dead_letters"))?;
                keys.extend(rows);
            }
            keys.sort_unstable();
            keys.dedup();
            Ok(keys.into_iter().map(|(_, _, rid)| rid).collect())
        }
        other => Err(KIT.unsupported("dead_letters", other)),
    }
}

/// Dead letters back to the back of their ready level, oldest first, attempts reset and ids
/// and deduplication keys kept (a requeued message holds its key again unless another message
/// holds it at `now`). Returns how many.
pub(crate) fn requeue_dead(ctx: &Ctx<'_>, q: &mut Q, which: &Selection, now: u64) -> Result<u64> {
    requeue_dead_at(ctx, q, which, now, None)
}

/// As [`requeue_dead`], at `priority` when one is given (Q8): the row's level and the
/// priority in its body both change, so the message is delivered, and retried, at it.
pub(crate) fn requeue_dead_at(
    ctx: &Ctx<'_>,
    q: &mut Q,
    which: &Selection,
    now: u64,
    priority: Option<Priority>,
) -> Result<u64> {
    let rids = selected(ctx, q, which)?;
    for rid in &rids {
        if let Some(p) = priority {
            set_priority(ctx, *rid, p, "requeue_dead_at")?;
        }
        let seq = q.seq();
        let row: Option<Left> = ctx
            .conn
            .prepare_cached(
                "UPDATE courier_messages SET state = 0, seq = ?2, deliveries = 0, \
                 last_error = NULL, failed_at = NULL WHERE rid = ?1 RETURNING id, dedup_key",
            )
            .and_then(|mut s| {
                s.query_row(params![rid, seq], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(ctx.err("requeue_dead"))?;
        if let Some((id, Some(key))) = row {
            retake_key(ctx, q.qid, &id, &key, now)?;
        }
        q.readied = true;
    }
    Ok(rids.len() as u64)
}

/// Give the row `rid` the priority `p`: its level, and the priority byte of its body (an
/// undecodable body is left as it is; its next delivery buries it again anyway).
fn set_priority(ctx: &Ctx<'_>, rid: i64, p: Priority, operation: &'static str) -> Result<()> {
    let body: Vec<u8> = ctx
        .conn
        .prepare_cached("SELECT body FROM courier_messages WHERE rid = ?1")
        .and_then(|mut s| s.query_row([rid], |r| r.get(0)))
        .map_err(ctx.err(operation))?;
    let body = wire::with_priority(&body, p).map_or(body, |b| b.to_vec());
    ctx.conn
        .prepare_cached("UPDATE courier_messages SET priority = ?2, body = ?3 WHERE rid = ?1")
        .and_then(|mut s| s.execute(params![rid, p.index() as i64, body]))
        .map_err(ctx.err(operation))?;
    Ok(())
}

/// Row ids of the ready, the delayed and the leased copies of message `id`, each found through
/// its state's partial index (so only the queue's rows in that state are looked at; no index
/// on live rows' ids is kept, which would cost every publish and claim). Ready copies come in
/// delivery order.
fn live_copies(ctx: &Ctx<'_>, qid: i64, id: MessageId) -> Result<[Vec<i64>; 3]> {
    let id = &id.as_bytes()[..];
    let mut out: [Vec<i64>; 3] = Default::default();
    for (k, sql) in [
        "SELECT rid FROM courier_messages INDEXED BY courier_messages_ready \
         WHERE qid = ?1 AND state = 0 AND id = ?2 ORDER BY priority, seq",
        "SELECT rid FROM courier_messages INDEXED BY courier_messages_delayed \
         WHERE qid = ?1 AND state = 1 AND id = ?2",
        "SELECT rid FROM courier_messages INDEXED BY courier_messages_leases \
         WHERE qid = ?1 AND state = 2 AND id = ?2",
    ]
    .into_iter()
    .enumerate()
    {
        out[k] = ctx
            .conn
            .prepare_cached(sql)
            .and_then(|mut s| s.query_map(params![qid, id], |r| r.get(0))?.collect())
            .map_err(ctx.err("reprioritise"))?;
    }
    Ok(out)
}

/// Move every stored copy of `id` to `priority` (Q16), as the reference model does: a ready
/// one to the back of the new level (also when the level is unchanged), a delayed one keeps
/// its due time, a leased one keeps its lease (the stored copy, delivered again if the
/// message is retried, has the new priority; the delivery in hand does not change). The row's
/// level and the priority in its body both change. Dead letters are not moved. Whether any
/// copy was found.
pub(crate) fn reprioritise(ctx: &Ctx<'_>, q: &mut Q, id: MessageId, p: Priority) -> Result<bool> {
    let [ready, delayed, leased] = live_copies(ctx, q.qid, id)?;
    for rid in &ready {
        set_priority(ctx, *rid, p, "reprioritise")?;
        let seq = q.seq();
        ctx.conn
            .prepare_cached("UPDATE courier_messages SET seq = ?2 WHERE rid = ?1")
            .and_then(|mut s| s.execute(params![rid, seq]))
            .map_err(ctx.err("reprioritise"))?;
    }
    for rid in delayed.iter().chain(&leased) {
        set_priority(ctx, *rid, p, "reprioritise")?;
    }
    Ok(!(ready.is_empty() && delayed.is_empty() && leased.is_empty()))
}

/// Delete dead letters. Returns how many.
pub(crate) fn purge_dead(ctx: &Ctx<'_>, q: &Q, which: &Selection) -> Result<u64> {
    if matches!(which, Selection::All) {
        let n = ctx
            .conn
            .prepare_cached("DELETE FROM courier_messages WHERE qid = ?1 AND state = 3")
            .and_then(|mut s| s.execute([q.qid]))
            .map_err(ctx.err("purge_dead"))?;
        return Ok(n as u64);
    }
    let rids = selected(ctx, q, which)?;
    for rid in &rids {
        delete_row(ctx, *rid)?;
    }
    Ok(rids.len() as u64)
}

/// Drop everything ready, delayed and leased (a consumer-group reset). Dead letters and
/// counters are kept; outstanding leases become lost.
pub(crate) fn clear_pending(ctx: &Ctx<'_>, q: &Q) -> Result<()> {
    for sql in [
        "DELETE FROM courier_messages WHERE qid = ?1 AND state = 0",
        "DELETE FROM courier_messages WHERE qid = ?1 AND state = 1",
        "DELETE FROM courier_messages WHERE qid = ?1 AND state = 2",
    ] {
        ctx.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([q.qid]))
            .map_err(ctx.err("reset_group"))?;
    }
    Ok(())
}

/// Insert a raw, unchecked body as a new ready row (tests of Q10).
pub(crate) fn inject_raw(ctx: &Ctx<'_>, q: &mut Q, level: i64, body: &[u8]) -> Result<MessageId> {
    let id = MessageId::new();
    publish(
        ctx,
        q,
        0,
        &NewRow {
            id,
            level,
            not_before: None,
            max_attempts: None,
            body: body.to_vec(),
            key: None,
        },
    )?;
    Ok(id)
}
