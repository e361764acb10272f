//! The queue state machine shared by queues and event-bus consumer groups.
//!
//! Every message is, at every moment, in exactly one of: `ready` (per priority, FIFO),
//! `delayed` (a min-heap by due time), `in_flight` (leased, keyed by lease token) or `dead`
//! (ordered oldest first) — or it has been acked / discarded (Q9). All transitions happen in
//! methods of [`QueueState`], which the caller runs under one lock.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use courier_core::backend::{EXPIRED, LEASE_EXPIRED, expired_lease, ms_ceil};
use courier_core::{
    DeadLetter, Delivery, FailureAction, Lease, Message, MessageId, Page, Priority, Published,
    QueueConfig, QueueStats, RateLimit, Result, Selection, Settle,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::KIT;

/// Lease tokens, unique within the process (never 0).
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Reserve `n` consecutive lease tokens; returns the first.
fn reserve_tokens(n: u64) -> u64 {
    NEXT_TOKEN.fetch_add(n, Ordering::Relaxed)
}

/// Multiplicative hashing for `u64` keys (lease tokens are sequential, so the low bits of
/// `token * K` are evenly spread and the high bits well mixed).
#[derive(Default, Clone, Copy)]
pub(crate) struct TokenHasher(u64);

const HASH_K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for TokenHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(HASH_K);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(HASH_K);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type TokenMap<V> = HashMap<u64, V, BuildHasherDefault<TokenHasher>>;

/// Whole milliseconds of `d`, rounded up (a delay never ends early), saturating.
pub fn millis(d: Duration) -> u64 {
    ms_ceil(d)
}

/// A stored message and its delivery history.
///
/// Boxed ([`Entry`]) so moving it between ready lists, the delay heap and the in-flight map
/// moves a pointer, not the whole message: at a million messages a second those copies (and a
/// ready list re-growing under a backlog) cost more than the allocation.
#[derive(Debug)]
struct Stored {
    message: Message,
    /// Deliveries counted so far (releases are not counted).
    deliveries: u32,
    /// The last failure, if any (kept for inspection; dead letters carry their own error).
    last_error: Option<String>,
}

type Entry = Box<Stored>;

impl Stored {
    fn new(message: Message) -> Entry {
        Box::new(Stored {
            message,
            deliveries: 0,
            last_error: None,
        })
    }
}

/// A message waiting for its due time.
#[derive(Debug)]
struct Delayed {
    due: u64,
    seq: u64,
    entry: Entry,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    /// Reversed, so `BinaryHeap` pops the earliest `(due, seq)` first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// Who holds a deduplication key (Q11), and until when.
#[derive(Debug)]
struct KeyHold {
    /// The message accepted with the key (the last one accepted with it).
    owner: MessageId,
    /// Whether that message is live: ready, delayed or in flight.
    live: bool,
    /// The key stays taken until this instant (ms) even once the owner is gone; 0 = no window.
    hold_until: u64,
}

impl KeyHold {
    fn holds(&self, now: u64) -> bool {
        self.live || now < self.hold_until
    }
}

/// A leased message.
#[derive(Debug)]
struct InFlight {
    entry: Entry,
    deadline: u64,
}

/// The complete state of one queue (or one consumer group of a topic).
#[derive(Debug)]
pub struct QueueState {
    /// The configuration in force (lease length, retry policy, dead letters).
    pub config: QueueConfig,
    /// `false` for consumer groups: every entry uses the Normal level, so order is emit order.
    by_priority: bool,
    ready: [VecDeque<Entry>; 4],
    delayed: BinaryHeap<Delayed>,
    /// Keyed by lease token (unique per delivery), so even duplicate message ids are safe.
    in_flight: TokenMap<InFlight>,
    /// `(deadline, token)`, lazily deleted: an entry is stale unless `in_flight[token]` has
    /// that deadline. Rebuilt when it grows past `2 * in_flight + 1024`.
    leases: BinaryHeap<Reverse<(u64, u64)>>,
    /// Oldest first by `(failed_at, seq)`.
    dead: BTreeMap<(u64, u64), DeadLetter>,
    /// `(id, failed_at, seq)`: finds dead letters by id (duplicates included).
    dead_ids: BTreeSet<(MessageId, u64, u64)>,
    /// Tie-breaker for the delayed heap and dead letters (insertion order).
    seq: u64,
    published: u64,
    acked: u64,
    retried: u64,
    dead_lettered: u64,
    deduplicated: u64,
    expired: u64,
    /// Deduplication keys (Q11): key → holder. Only queues use keys.
    keys: HashMap<String, KeyHold>,
    /// `(hold_until, key)` of keys accepted with a window, to forget them once it passed.
    holds: BTreeSet<(u64, String)>,
    rng: SmallRng,
    /// The first token of the next lease batch when the caller assigns tokens
    /// ([`QueueState::assign_tokens`]); else tokens come from the process-wide counter.
    assigned: Option<u64>,
    /// Paused (Q14): nothing is leased.
    paused: bool,
    /// The rate limit (Q15) and the deliveries counted in its current window.
    rate: Option<RateLimit>,
    window_start: u64,
    window_count: u32,
}

impl QueueState {
    /// An empty state. `by_priority = false` puts everything in one FIFO (consumer groups).
    pub fn new(config: QueueConfig, by_priority: bool) -> Self {
        QueueState {
            config,
            by_priority,
            ready: Default::default(),
            delayed: BinaryHeap::new(),
            in_flight: TokenMap::default(),
            leases: BinaryHeap::new(),
            dead: BTreeMap::new(),
            dead_ids: BTreeSet::new(),
            seq: 0,
            published: 0,
            acked: 0,
            retried: 0,
            dead_lettered: 0,
            deduplicated: 0,
            expired: 0,
            keys: HashMap::new(),
            holds: BTreeSet::new(),
            rng: SmallRng::from_rng(&mut rand::rng()),
            assigned: None,
            paused: false,
            rate: None,
            window_start: 0,
            window_count: 0,
        }
    }

    /// A state whose every decision is a function of its inputs: the jitter of expired leases
    /// is drawn from a generator seeded with `seed`. Replicas that apply the same operations
    /// at the same instants, with the same assigned tokens, stay identical (the RabbitMQ
    /// backend replicates queues this way).
    pub fn seeded(config: QueueConfig, by_priority: bool, seed: u64) -> Self {
        let mut state = QueueState::new(config, by_priority);
        state.rng = SmallRng::seed_from_u64(seed);
        state
    }

    /// Make the next [`QueueState::lease`] number its deliveries `first`, `first + 1`, …
    /// instead of taking tokens from the process-wide counter.
    pub fn assign_tokens(&mut self, first: u64) {
        self.assigned = Some(first);
    }

    /// The first of `n` fresh lease tokens: the assigned ones, or the process-wide counter's.
    fn reserve_tokens(&mut self, n: u64) -> u64 {
        match self.assigned.take() {
            Some(first) => first,
            None => reserve_tokens(n),
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn level(&self, message: &Message) -> usize {
        if self.by_priority {
            message.priority.index()
        } else {
            Priority::Normal.index()
        }
    }

    /// Messages ready now, over all levels.
    pub fn ready_len(&self) -> usize {
        self.ready.iter().map(VecDeque::len).sum()
    }

    /// Store a message that was just published (already prepared): ready, or delayed until
    /// its `not_before`. Counts it as published (for a consumer group: taken from the log).
    pub fn publish(&mut self, message: Message, now: u64) {
        self.published += 1;
        self.enqueue(Stored::new(message), now);
    }

    /// Publish with deduplication (Q11): a message whose key is held (its holder is live, or
    /// `now` is within the holder's window) is not stored and the holder's id comes back as a
    /// duplicate; otherwise it is stored ([`QueueState::publish`]) and takes the key, held
    /// while it is live and, when `window_ms > 0`, until `now + window_ms`.
    pub fn accept(&mut self, message: Message, now: u64, window_ms: u64) -> Published {
        let id = message.id;
        if let Some(key) = &message.dedup_key {
            self.forget_holds(now);
            if let Some(h) = self.keys.get(key)
                && h.holds(now)
            {
                self.deduplicated += 1;
                return Published::Duplicate(h.owner);
            }
            let hold_until = if window_ms > 0 {
                now.saturating_add(window_ms)
            } else {
                0
            };
            if hold_until > 0 {
                self.holds.insert((hold_until, key.clone()));
            }
            self.keys.insert(
                key.clone(),
                KeyHold {
                    owner: id,
                    live: true,
                    hold_until,
                },
            );
        }
        self.publish(message, now);
        Published::Stored(id)
    }

    /// `message` stopped being live (acked, dead, discarded): its key is free at once, or at
    /// the end of its window.
    fn leave_key(&mut self, message: &Message, now: u64) {
        if self.keys.is_empty() {
            return;
        }
        let Some(key) = &message.dedup_key else {
            return;
        };
        if let Some(h) = self.keys.get_mut(key)
            && h.owner == message.id
        {
            if now < h.hold_until {
                h.live = false;
            } else {
                self.keys.remove(key);
            }
        }
    }

    /// A dead letter requeued with its key: it holds the key again, unless another message
    /// holds it now (then it is requeued without holding it).
    fn retake_key(&mut self, message: &Message, now: u64) {
        let Some(key) = &message.dedup_key else {
            return;
        };
        match self.keys.get_mut(key) {
            Some(h) if h.owner == message.id => h.live = true,
            Some(h) if h.holds(now) => {}
            _ => {
                self.keys.insert(
                    key.clone(),
                    KeyHold {
                        owner: message.id,
                        live: true,
                        hold_until: 0,
                    },
                );
            }
        }
    }

    /// Forget keys whose window passed and whose owner is no longer live.
    fn forget_holds(&mut self, now: u64) {
        while let Some((until, _)) = self.holds.first() {
            if *until > now {
                break;
            }
            let Some((until, key)) = self.holds.pop_first() else {
                break;
            };
            if let Some(h) = self.keys.get(&key)
                && h.hold_until == until
                && !h.live
            {
                self.keys.remove(&key);
            }
        }
    }

    fn enqueue(&mut self, entry: Entry, now: u64) {
        match entry.message.not_before {
            Some(due) if due > now => self.delay_until(entry, due),
            _ => self.push_back(entry),
        }
    }

    fn push_back(&mut self, entry: Entry) {
        let l = self.level(&entry.message);
        self.ready[l].push_back(entry);
    }

    fn delay_until(&mut self, entry: Entry, due: u64) {
        let seq = self.next_seq();
        self.delayed.push(Delayed { due, seq, entry });
    }

    /// Bring the state up to `now`: expired leases count as failed attempts (retry or dead
    /// letter per the retry policy), then due delayed messages move, in due order, to the back
    /// of their ready level.
    pub fn tick(&mut self, now: u64) {
        while let Some(&Reverse((deadline, token))) = self.leases.peek() {
            if deadline > now {
                break;
            }
            self.leases.pop();
            let current = matches!(self.in_flight.get(&token), Some(f) if f.deadline == deadline);
            if !current {
                continue; // stale: settled, or extended (a newer heap entry exists)
            }
            if let Some(f) = self.in_flight.remove(&token) {
                tracing::trace!(id = %f.entry.message.id, attempt = f.entry.deliveries, "courier memory: lease expired");
                self.fail(f.entry, now);
            }
        }
        while let Some(top) = self.delayed.peek() {
            if top.due > now {
                break;
            }
            if let Some(d) = self.delayed.pop() {
                self.push_back(d.entry);
            }
        }
        if !self.holds.is_empty() {
            self.forget_holds(now);
        }
    }

    /// An expired lease: one failed attempt, decided by the retry policy.
    fn fail(&mut self, mut entry: Entry, now: u64) {
        let action = expired_lease(
            &self.config.retry,
            entry.deliveries,
            entry.message.max_attempts,
            &mut self.rng,
        );
        match action {
            FailureAction::Retry(delay) => {
                self.retried += 1;
                entry.last_error = Some(LEASE_EXPIRED.to_string());
                self.delay_until(entry, now.saturating_add(millis(delay)));
            }
            FailureAction::Dead => self.bury(*entry, LEASE_EXPIRED.to_string(), now),
        }
    }

    /// The earliest instant (ms) at which `tick` may change something: a delayed message comes
    /// due or a lease ends. Possibly early (a stale lease entry), never late.
    pub fn next_wake(&self) -> Option<u64> {
        let d = self.delayed.peek().map(|d| d.due);
        let l = self.leases.peek().map(|Reverse((deadline, _))| *deadline);
        // Ready work held back by a spent rate-limit window becomes deliverable when the
        // next window starts.
        let r = self.rate.and_then(|r| {
            (!self.paused && self.window_count >= r.max && self.ready_len() > 0)
                .then(|| self.window_start + r.per_ms())
        });
        [d, l, r].into_iter().flatten().min()
    }

    /// Pause or resume (Q14, E8): a paused state leases nothing; everything else (ticks,
    /// settles, extensions, publishes) goes on.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Whether the state is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Set or clear the rate limit (Q15). The current window's count is kept, so changing
    /// the limit never grants a window more than the new limit allows.
    pub fn set_rate_limit(&mut self, limit: Option<RateLimit>) {
        self.rate = limit;
    }

    /// How many deliveries the rate limit allows a receive at `now`, at most `max`; starts a
    /// new window when `now` left the counted one.
    fn rate_allows(&mut self, now: u64, max: usize) -> usize {
        let Some(r) = self.rate else { return max };
        let w = r.window_start(now);
        if w != self.window_start {
            self.window_start = w;
            self.window_count = 0;
        }
        let left = r.max.saturating_sub(self.window_count).min(r.grant_cap());
        max.min(left as usize)
    }

    /// Move every stored copy of `id` to `priority` (Q16): a ready one to the back of the new
    /// level, a delayed one keeps its due time, a leased one keeps its lease (the priority
    /// applies if it is retried). Whether any was found.
    pub fn reprioritise(&mut self, id: MessageId, priority: Priority) -> bool {
        let mut found = false;
        let mut moved = Vec::new();
        for level in self.ready.iter_mut() {
            if level.iter().any(|e| e.message.id == id) {
                let (matching, rest): (VecDeque<Entry>, VecDeque<Entry>) = std::mem::take(level)
                    .into_iter()
                    .partition(|e| e.message.id == id);
                *level = rest;
                moved.extend(matching);
            }
        }
        for mut entry in moved {
            found = true;
            entry.message.priority = priority;
            self.push_back(entry);
        }
        if self.delayed.iter().any(|d| d.entry.message.id == id) {
            let mut all = std::mem::take(&mut self.delayed).into_vec();
            for d in all.iter_mut().filter(|d| d.entry.message.id == id) {
                d.entry.message.priority = priority;
                found = true;
            }
            self.delayed = all.into();
        }
        for f in self.in_flight.values_mut() {
            if f.entry.message.id == id {
                f.entry.message.priority = priority;
                found = true;
            }
        }
        found
    }

    /// Lease up to `max` ready messages, highest priority first, FIFO within a level, into
    /// `out`. A message met on the way whose expiry `now` reached is expired instead
    /// ([`QueueState::expire`]) and does not count towards `max`. The caller has run
    /// [`QueueState::tick`] for `now`.
    pub fn lease(&mut self, now: u64, max: usize, out: &mut Vec<Delivery>) {
        if self.paused || self.ready_len() == 0 {
            return;
        }
        let n = self.rate_allows(now, max).min(self.ready_len());
        if n == 0 {
            return;
        }
        let before = out.len();
        out.reserve(n);
        let deadline = now.saturating_add(millis(self.config.visibility_timeout));
        let mut token = self.reserve_tokens(n as u64);
        let mut left = n;
        for level in 0..self.ready.len() {
            while left > 0 {
                let Some(mut entry) = self.ready[level].pop_front() else {
                    break;
                };
                if entry.message.is_expired(now) {
                    self.expire(*entry, now);
                    continue;
                }
                left -= 1;
                entry.deliveries = entry.deliveries.saturating_add(1);
                entry.message.attempt = entry.deliveries;
                let lease = Lease {
                    id: entry.message.id,
                    token,
                    attempt: entry.deliveries,
                    deadline_ms: deadline,
                };
                out.push(Delivery {
                    message: entry.message.clone(),
                    lease,
                });
                self.leases.push(Reverse((deadline, token)));
                self.in_flight.insert(token, InFlight { entry, deadline });
                token += 1;
            }
        }
        if self.rate.is_some() {
            let leased = u32::try_from(out.len() - before).unwrap_or(u32::MAX);
            self.window_count = self.window_count.saturating_add(leased);
        }
        self.maybe_rebuild_leases();
    }

    fn maybe_rebuild_leases(&mut self) {
        if self.leases.len() > 2 * self.in_flight.len() + 1024 {
            let mut v = std::mem::take(&mut self.leases).into_vec();
            v.clear();
            v.extend(
                self.in_flight
                    .iter()
                    .map(|(t, f)| Reverse((f.deadline, *t))),
            );
            self.leases = BinaryHeap::from(v);
        }
    }

    /// Take the in-flight entry for `lease` if the lease is still held at `now`.
    fn take_leased(&mut self, lease: &Lease, now: u64) -> Result<InFlight> {
        match self.in_flight.entry(lease.token) {
            MapEntry::Occupied(o)
                if o.get().entry.message.id == lease.id && o.get().deadline > now =>
            {
                Ok(o.remove())
            }
            _ => Err(KIT.lease_lost("settle", lease)),
        }
    }

    /// Execute one settle operation. The caller has run [`QueueState::tick`] for `now`.
    ///
    /// # Errors
    /// `LeaseLost` when the lease is not held (then nothing changed).
    pub fn settle(&mut self, op: Settle, now: u64) -> Result<()> {
        match op {
            Settle::Ack(lease) => {
                let f = self.take_leased(&lease, now)?;
                self.leave_key(&f.entry.message, now);
                self.acked += 1;
            }
            Settle::Retry {
                lease,
                delay,
                error,
            } => {
                let mut entry = self.take_leased(&lease, now)?.entry;
                self.retried += 1;
                entry.last_error = Some(error);
                let d = millis(delay);
                if d == 0 {
                    self.push_back(entry);
                } else {
                    self.delay_until(entry, now.saturating_add(d));
                }
            }
            Settle::Bury { lease, error } => {
                let entry = self.take_leased(&lease, now)?.entry;
                self.bury(*entry, error, now);
            }
            Settle::Release(lease) => {
                let mut entry = self.take_leased(&lease, now)?.entry;
                entry.deliveries = entry.deliveries.saturating_sub(1);
                let l = self.level(&entry.message);
                self.ready[l].push_front(entry);
            }
            other => return Err(KIT.unsupported("settle", other)),
        }
        Ok(())
    }

    /// Push a held lease's deadline to `now + visibility`.
    ///
    /// # Errors
    /// `LeaseLost` when the lease is not held.
    pub fn extend(&mut self, lease: &Lease, visibility: Duration, now: u64) -> Result<Lease> {
        let deadline = now.saturating_add(millis(visibility));
        match self.in_flight.get_mut(&lease.token) {
            Some(f) if f.entry.message.id == lease.id && f.deadline > now => {
                f.deadline = deadline;
                let updated = Lease {
                    id: lease.id,
                    token: lease.token,
                    attempt: f.entry.deliveries,
                    deadline_ms: deadline,
                };
                self.leases.push(Reverse((deadline, lease.token)));
                self.maybe_rebuild_leases();
                Ok(updated)
            }
            _ => Err(KIT.lease_lost("extend", lease)),
        }
    }

    /// Store a published entry that cannot be decoded straight in dead letters, as failed on
    /// its one attempt with `error` (Q10): it is counted as published and dead-lettered, and
    /// never delivered.
    pub fn bury_undecodable(&mut self, message: Message, error: String, now: u64) {
        self.published += 1;
        let mut entry = Stored::new(message);
        entry.deliveries = 1;
        self.bury(*entry, error, now);
    }

    /// A message whose expiry passed before it was leased: counted as expired, then kept in
    /// dead letters with the reason [`EXPIRED`] and the deliveries made so far (none unless it
    /// failed before), or discarded when the queue drops expired messages.
    fn expire(&mut self, entry: Stored, now: u64) {
        tracing::trace!(id = %entry.message.id, "courier memory: message expired");
        self.leave_key(&entry.message, now);
        self.expired += 1;
        if self.config.keeps_expired() {
            self.store_dead(entry, EXPIRED.to_string(), now);
        }
    }

    /// Move to dead letters (or discard when dead letters are off); counted either way.
    ///
    /// A dead message does not hold its key (Q11): dead letters wait for an operator, and a
    /// key held by them would refuse every new attempt at that work indefinitely.
    fn bury(&mut self, entry: Stored, error: String, now: u64) {
        self.leave_key(&entry.message, now);
        self.dead_lettered += 1;
        if self.config.dead_letter {
            self.store_dead(entry, error, now);
        }
    }

    fn store_dead(&mut self, mut entry: Stored, error: String, now: u64) {
        entry.message.attempt = entry.deliveries;
        let seq = self.next_seq();
        self.dead_ids.insert((entry.message.id, now, seq));
        self.dead.insert(
            (now, seq),
            DeadLetter {
                message: entry.message,
                error,
                attempts: entry.deliveries,
                failed_at: now,
            },
        );
    }

    /// A consistent snapshot (the caller has run [`QueueState::tick`]).
    pub fn stats(&self) -> QueueStats {
        let mut st = QueueStats::default();
        st.ready = [0, 1, 2, 3].map(|l| self.ready[l].len() as u64);
        st.delayed = self.delayed.len() as u64;
        st.in_flight = self.in_flight.len() as u64;
        st.dead = self.dead.len() as u64;
        st.published = self.published;
        st.acked = self.acked;
        st.retried = self.retried;
        st.dead_lettered = self.dead_lettered;
        st.deduplicated = self.deduplicated;
        st.expired = self.expired;
        st.paused = self.paused;
        st.rate_limit = self.rate;
        st
    }

    /// Dead letters, oldest first.
    pub fn dead_letters(&self, page: Page) -> Vec<DeadLetter> {
        self.dead
            .values()
            .skip(page.offset)
            .take(page.limit)
            .cloned()
            .collect()
    }

    /// The oldest dead letter with this id.
    pub fn dead_letter(&self, id: MessageId) -> Option<DeadLetter> {
        self.dead_keys(id)
            .first()
            .and_then(|k| self.dead.get(k))
            .cloned()
    }

    fn dead_keys(&self, id: MessageId) -> Vec<(u64, u64)> {
        self.dead_ids
            .range((id, 0, 0)..=(id, u64::MAX, u64::MAX))
            .map(|&(_, at, seq)| (at, seq))
            .collect()
    }

    fn selected(&self, which: &Selection, operation: &'static str) -> Result<Vec<(u64, u64)>> {
        Ok(match which {
            Selection::All => self.dead.keys().copied().collect(),
            Selection::Ids(ids) => {
                let mut keys: Vec<(u64, u64)> =
                    ids.iter().flat_map(|id| self.dead_keys(*id)).collect();
                keys.sort_unstable();
                keys.dedup();
                keys
            }
            other => return Err(KIT.unsupported(operation, other)),
        })
    }

    fn take_dead(&mut self, key: (u64, u64)) -> Option<DeadLetter> {
        let d = self.dead.remove(&key)?;
        self.dead_ids.remove(&(d.message.id, key.0, key.1));
        Some(d)
    }

    /// Dead letters back to the back of their ready level, oldest first, attempts reset and ids
    /// and deduplication keys kept (a requeued message holds its key again unless another
    /// message holds it at `now`). Returns how many.
    pub fn requeue_dead(&mut self, which: &Selection, now: u64) -> Result<u64> {
        self.requeue_dead_at(which, None, now)
    }

    /// As [`QueueState::requeue_dead`], at `priority` when one is given (Q8): each message
    /// gets that priority and goes to the back of that level's line.
    ///
    /// # Errors
    /// As [`QueueState::requeue_dead`].
    pub fn requeue_dead_at(
        &mut self,
        which: &Selection,
        priority: Option<Priority>,
        now: u64,
    ) -> Result<u64> {
        let mut n = 0;
        for key in self.selected(which, "requeue_dead")? {
            if let Some(d) = self.take_dead(key) {
                let mut message = d.message;
                message.attempt = 0;
                if let Some(p) = priority {
                    message.priority = p;
                }
                self.retake_key(&message, now);
                self.push_back(Stored::new(message));
                n += 1;
            }
        }
        Ok(n)
    }

    /// Delete dead letters. Returns how many.
    pub fn purge_dead(&mut self, which: &Selection) -> Result<u64> {
        if matches!(which, Selection::All) {
            let n = self.dead.len() as u64;
            self.dead.clear();
            self.dead_ids.clear();
            return Ok(n);
        }
        let mut n = 0;
        for key in self.selected(which, "purge_dead")? {
            if self.take_dead(key).is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Drop everything ready, delayed and in flight (a consumer group reset). Dead letters and
    /// counters are kept; outstanding leases become lost.
    pub fn clear_pending(&mut self) {
        for level in &mut self.ready {
            level.clear();
        }
        self.delayed.clear();
        self.in_flight.clear();
        self.leases.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_core::RetryPolicy;

    fn config() -> QueueConfig {
        QueueConfig::default()
            .with_visibility_timeout(Duration::from_millis(100))
            .with_retry(RetryPolicy::exact(
                2,
                Duration::from_millis(10),
                2.0,
                Duration::from_secs(1),
            ))
    }

    fn msg(kind: &str) -> Message {
        let mut m = Message::new(kind, "");
        m.prepare_for_publish(1);
        m
    }

    #[test]
    fn lease_heap_stays_bounded() {
        let mut s = QueueState::new(config(), true);
        let mut out = Vec::new();
        // The clock stands still: acked leases are never popped by `tick`, only rebuilt away.
        for _ in 0..10_000 {
            s.publish(msg("k"), 5);
            s.tick(5);
            out.clear();
            s.lease(5, 1, &mut out);
            for d in out.drain(..) {
                s.settle(Settle::Ack(d.lease), 5).expect("ack");
            }
        }
        assert!(s.leases.len() <= 1024 + 1, "{}", s.leases.len());
        assert_eq!(s.stats().acked, 10_000);
    }

    #[test]
    fn expiry_retries_then_buries() {
        let mut s = QueueState::new(config(), true);
        s.publish(msg("k"), 0);
        let mut out = Vec::new();
        s.lease(0, 1, &mut out);
        assert_eq!(out[0].lease.attempt, 1);
        s.tick(100); // lease ends at 100: retry after 10 ms
        assert_eq!(s.stats().delayed, 1);
        assert_eq!(s.next_wake(), Some(110));
        s.tick(110);
        out.clear();
        s.lease(110, 1, &mut out);
        assert_eq!(out[0].message.attempt, 2);
        s.tick(210);
        let st = s.stats();
        assert_eq!((st.dead, st.retried, st.dead_lettered), (1, 1, 1));
        let d = s.dead_letters(Page::first(10));
        assert_eq!((d[0].error.as_str(), d[0].attempts), (LEASE_EXPIRED, 2));
    }
}
