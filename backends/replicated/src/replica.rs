//! A model replicated through a [`Log`].
//!
//! Each queue and each topic is one log. Every change is a [`Record`] appended to it (`Ok`
//! once the broker holds it durably), and every handle that uses the queue or topic follows
//! the log from its first record, applying each record to its own copy of the model at the
//! record's log time. The model is the memory backend's reference model, and every decision
//! in it is a function of the records (lease tokens come from stream offsets, jitter from a
//! seeded generator, time from the records' stamps), so every copy holds the same state.
//!
//! A call appends its record and waits until its own follower applies it: the answer (the
//! leased deliveries, the settle results, …) is what the model said at that point of the log,
//! the same answer every other copy computed. Reads append a `Sync` record first, so they see
//! everything appended before them by any process.
//!
//! Log time: a record applies at `max(previous log time, its stamp)`, so time never runs
//! backwards along the log whatever the proposers' clocks say.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use courier_core::backend::Kit;
use courier_core::{Error, ErrorKind, Result, SharedClock};
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot, watch};

use crate::Log;
use crate::record::{self, Op, Record};

/// The most a claim adds to its leases for the round trip (see [`Replica::lease_pad`]).
pub(crate) const MAX_LEASE_PAD: Duration = Duration::from_millis(250);

/// How long a call waits to see its own record in the log once the broker confirmed it.
const SEEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A follower that delivers nothing for this long while calls of this handle wait for their
/// records is restarted (see [`follower`]).
const STALL: Duration = Duration::from_secs(3);

/// A state machine that a stream replicates.
pub(crate) trait Model: Send + 'static {
    /// What applying a record answers its proposer.
    type Out: Send + 'static;

    /// Apply `record`, found at `offset`, at log time `now`.
    fn apply(&mut self, record: Record, offset: u64, now: u64) -> Self::Out;

    /// Apply bytes at `offset` that are not a record (a foreign or corrupt writer).
    fn apply_junk(&mut self, bytes: Bytes, error: Error, offset: u64, now: u64);

    /// An answer nobody waits for any more (the call was dropped): the record that undoes
    /// what it took (leases taken by a dropped receive are released at once).
    fn orphan(&self, group: &str, out: Self::Out) -> Option<Op>;

    /// Whether something is ready at `now`, and the next instant at which something may
    /// become ready by itself (a delay ends, a lease expires).
    fn readiness(&self, group: &str, now: u64) -> (bool, Option<u64>);
}

struct State<M: Model> {
    model: M,
    /// The offset of the next record to apply.
    next_offset: u64,
    /// Log time of the last applied record.
    clock: u64,
    pending: HashMap<u64, oneshot::Sender<M::Out>>,
    /// When the follower last delivered a record (or (re)started).
    progress: std::time::Instant,
}

/// One replicated model and the follower that keeps it up to date.
pub(crate) struct Replica<M: Model> {
    stream: String,
    origin: u64,
    state: Mutex<State<M>>,
    /// Woken after every applied record.
    changed: Notify,
    following: AtomicBool,
    requests: AtomicU64,
    /// Moving average of this handle's call round trips (append → own answer), in µs.
    round_trip_us: AtomicU64,
}

/// What a replica needs from its backend.
pub(crate) struct Env<L: Log> {
    pub(crate) log: Arc<L>,
    pub(crate) kit: Kit,
    pub(crate) clock: SharedClock,
    /// `true` once the backend is dropped: followers stop.
    pub(crate) closed: watch::Receiver<bool>,
}

impl<L: Log> Clone for Env<L> {
    fn clone(&self) -> Self {
        Env {
            log: self.log.clone(),
            kit: self.kit,
            clock: self.clock.clone(),
            closed: self.closed.clone(),
        }
    }
}

impl<M: Model> Replica<M> {
    pub(crate) fn new(stream: String, origin: u64, model: M) -> Arc<Self> {
        Arc::new(Replica {
            stream,
            origin,
            state: Mutex::new(State {
                model,
                next_offset: 0,
                clock: 0,
                pending: HashMap::new(),
                progress: std::time::Instant::now(),
            }),
            changed: Notify::new(),
            following: AtomicBool::new(false),
            requests: AtomicU64::new(1),
            round_trip_us: AtomicU64::new(0),
        })
    }

    /// Whether the follower looks stuck: calls wait for their records, and it has delivered
    /// nothing for [`STALL`].
    fn stalled(&self) -> bool {
        let st = self.state.lock();
        !st.pending.is_empty() && st.progress.elapsed() >= STALL
    }

    /// Note that the follower (re)started or delivered a record.
    fn note_progress(&self) {
        self.state.lock().progress = std::time::Instant::now();
    }

    /// Read the model (as of the last applied record).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&M) -> R) -> R {
        f(&self.state.lock().model)
    }

    /// Propose `op` and wait for its answer.
    ///
    /// Cancel safety: if the future is dropped (or the append fails) after the record was
    /// appended, the record still applies, and what it took is given back by
    /// [`Model::orphan`]: by the follower when the answer finds nobody waiting, or by the
    /// call's guard when the answer arrived but the call ended without taking it.
    pub(crate) async fn call<L: Log>(
        self: &Arc<Self>,
        env: &Env<L>,
        group: &str,
        op: Op,
        operation: &'static str,
    ) -> Result<M::Out> {
        self.follow(env);
        let started = std::time::Instant::now();
        let request = self.requests.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.state.lock().pending.insert(request, tx);
        let mut forget = Forget {
            replica: self.clone(),
            env: env.clone(),
            group: group.to_owned(),
            request,
            answer: Some(rx),
        };
        let bytes = record::encode(self.origin, request, env.clock.now_ms(), group, &op)
            .map_err(env.kit.tag(operation))?;
        env.log.append(&self.stream, bytes, operation).await?;
        let answer = match forget.answer.as_mut() {
            Some(rx) => tokio::time::timeout(SEEN_TIMEOUT, rx)
                .await
                .ok()
                .and_then(|r| r.ok()),
            None => None,
        };
        match answer {
            Some(out) => {
                forget.answer = None;
                self.note_round_trip(started.elapsed());
                Ok(out)
            }
            None => Err(env.kit.tag(operation)(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "the record was stored but not read back from log {:?} within {SEEN_TIMEOUT:?}",
                    self.stream
                ),
            ))),
        }
    }

    /// Fold one call's round trip into the moving average (weight 1/8).
    fn note_round_trip(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let old = self.round_trip_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.round_trip_us.store(new, Ordering::Relaxed);
    }

    /// How long this handle's calls take to be answered, lately: a claim adds it to the
    /// lease, so a lease runs its visibility timeout from when the receive returns rather
    /// than from when the claim was proposed (at most [`MAX_LEASE_PAD`]).
    pub(crate) fn lease_pad(&self) -> Duration {
        Duration::from_micros(self.round_trip_us.load(Ordering::Relaxed)).min(MAX_LEASE_PAD)
    }

    /// Wait until something is ready for `group` (or may be: a due time passed); `false`
    /// when `until` comes first. Woken by every applied record; never claims anything.
    pub(crate) async fn wait_ready<L: Log>(
        &self,
        env: &Env<L>,
        group: &str,
        until: tokio::time::Instant,
    ) -> bool {
        loop {
            let mut notified = pin!(self.changed.notified());
            notified.as_mut().enable();
            let now = env.clock.now_ms();
            let (ready, wake) = self.read(|m| m.readiness(group, now));
            if ready || wake.is_some_and(|at| at <= now) {
                return true;
            }
            let instant = tokio::time::Instant::now();
            if instant >= until {
                return false;
            }
            let sleep_until = match wake {
                Some(at) => until.min(instant + Duration::from_millis(at - now)),
                None => until,
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(sleep_until) => {}
            }
        }
    }

    /// Start the follower once.
    fn follow<L: Log>(self: &Arc<Self>, env: &Env<L>) {
        if self.following.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let env = env.clone();
        let stream = self.stream.clone();
        tokio::spawn(async move { follower(weak, env, stream).await });
    }

    /// Apply one delivery of the stream, then append what undoes an answer nobody waits for.
    fn deliver<L: Log>(self: &Arc<Self>, env: &Env<L>, offset: u64, bytes: Bytes) {
        if let Some((group, op)) = self.apply(offset, bytes) {
            self.undo(env, group, op);
        }
    }

    /// Append `op`, the record that gives back what an unwanted answer took, in the
    /// background.
    fn undo<L: Log>(self: &Arc<Self>, env: &Env<L>, group: String, op: Op) {
        let me = self.clone();
        let env = env.clone();
        let release = async move {
            if let Err(e) = me.call(&env, &group, op, "release").await {
                tracing::warn!(stream = %me.stream, error = %e, "courier: could not release what a dropped call leased; it comes back when the lease ends");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(release);
            }
            Err(_) => {
                tracing::warn!(stream = %self.stream, "courier: a dropped call leased messages outside a runtime; they come back when their leases end")
            }
        }
    }

    /// Apply the record at `offset` once (a follower that reconnects reads again from the
    /// start of a chunk, so offsets already applied are skipped), answer its proposer if it is
    /// this handle, and return the record that undoes an unwanted answer.
    fn apply(&self, offset: u64, bytes: Bytes) -> Option<(String, Op)> {
        let mut orphan = None;
        {
            let mut st = self.state.lock();
            st.progress = std::time::Instant::now();
            if offset < st.next_offset {
                return None; // re-read after a reconnect
            }
            st.next_offset = offset + 1;
            match record::decode(bytes.clone()) {
                Ok(rec) => {
                    let now = st.clock.max(rec.ts);
                    st.clock = now;
                    let mine = rec.origin == self.origin;
                    let request = rec.request;
                    let group = if mine {
                        rec.group.clone()
                    } else {
                        String::new()
                    };
                    let out = st.model.apply(rec, offset, now);
                    if mine {
                        let unwanted = match st.pending.remove(&request) {
                            Some(tx) => tx.send(out).err(),
                            None => Some(out),
                        };
                        orphan = unwanted
                            .and_then(|out| st.model.orphan(&group, out))
                            .map(|op| (group, op));
                    }
                }
                Err(e) => {
                    let now = st.clock;
                    tracing::warn!(stream = %self.stream, offset, error = %e, "courier: a stream entry is not a Courier record; it goes to dead letters");
                    st.model.apply_junk(bytes, e, offset, now);
                }
            }
        }
        self.changed.notify_waiters();
        orphan
    }
}

/// Ends a call, answered or not: drops its pending entry, and gives back what an answer
/// that arrived but was never taken holds (the call failed after its record applied, say
/// its append reported an error though the broker stored the record, or the call was dropped
/// between the answer and its poll). Without this, a receive's leases would be stranded until
/// they expire.
struct Forget<M: Model, L: Log> {
    replica: Arc<Replica<M>>,
    env: Env<L>,
    group: String,
    request: u64,
    /// `None` once the caller took the answer.
    answer: Option<oneshot::Receiver<M::Out>>,
}

impl<M: Model, L: Log> Drop for Forget<M, L> {
    fn drop(&mut self) {
        // Under the state lock: after this, the follower answers nobody for this request
        // (it undoes the answer itself); before it, its answer is in the channel.
        self.replica.state.lock().pending.remove(&self.request);
        let Some(mut rx) = self.answer.take() else {
            return;
        };
        let Ok(out) = rx.try_recv() else {
            return;
        };
        let undo = self.replica.read(|m| m.orphan(&self.group, out));
        if let Some(op) = undo {
            self.replica
                .undo(&self.env, std::mem::take(&mut self.group), op);
        }
    }
}

/// Follow the log `name` for as long as the replica lives: read from the next unapplied
/// offset, apply each record, and after a lost connection start again from there, with a
/// capped backoff (50 ms doubling to 5 s).
async fn follower<M: Model, L: Log>(weak: Weak<Replica<M>>, env: Env<L>, name: String) {
    let mut closed = env.closed.clone();
    let mut backoff = Duration::from_millis(50);
    loop {
        if *closed.borrow() {
            return;
        }
        let Some(next) = weak.upgrade().map(|r| {
            r.note_progress();
            r.state.lock().next_offset
        }) else {
            return;
        };
        let mut read = 0u64;
        let mut sink = |offset: u64, bytes: Bytes| -> bool {
            let Some(replica) = weak.upgrade() else {
                return false;
            };
            read += 1;
            replica.deliver(&env, offset, bytes);
            true
        };
        // A follow that neither delivers nor fails while calls wait for their records is
        // dropped and started again, rather than leaving every call of this handle to time
        // out. (Seen once in 7 RabbitMQ restart runs: one handle's calls got no answer for
        // 30 s after the node came back; a consumer registered on a stream while the node
        // was starting is the suspect, not proven.)
        let watchdog = async {
            loop {
                tokio::time::sleep(STALL / 3).await;
                match weak.upgrade() {
                    Some(r) if !r.stalled() => {}
                    _ => break,
                }
            }
        };
        let outcome = tokio::select! {
            r = env.log.follow(&name, next, &mut sink) => r,
            _ = closed.changed() => return,
            () = watchdog => {
                tracing::warn!(log = %name, stall_ms = STALL.as_millis() as u64, "courier: the follower delivered nothing while calls waited for their records; restarting it");
                Err(Error::new(ErrorKind::Unavailable, "follower stalled"))
            }
        };
        match outcome {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(log = %name, error = %e, "courier: follower restarts");
                if read > 0 {
                    backoff = Duration::from_millis(50);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = closed.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what it applies; its answer is the record's offset.
    #[derive(Default)]
    struct Counter {
        applied: Vec<u64>,
        junk: Vec<u64>,
        clock: Vec<u64>,
    }

    impl Model for Counter {
        type Out = u64;
        fn apply(&mut self, _record: Record, offset: u64, now: u64) -> u64 {
            self.applied.push(offset);
            self.clock.push(now);
            offset
        }
        fn apply_junk(&mut self, _bytes: Bytes, _error: Error, offset: u64, _now: u64) {
            self.junk.push(offset);
        }
        fn orphan(&self, _group: &str, _out: u64) -> Option<Op> {
            None
        }
        fn readiness(&self, _group: &str, _now: u64) -> (bool, Option<u64>) {
            (false, None)
        }
    }

    fn sync(origin: u64, request: u64, ts: u64) -> Bytes {
        let op = Op::Sync {
            config: courier_core::QueueConfig::default(),
        };
        record::encode(origin, request, ts, "", &op).expect("encode")
    }

    /// A follower that reconnects reads again from the start of a chunk: what it applied is
    /// not applied twice, and log time never runs backwards whatever the stamps say.
    #[test]
    fn each_offset_applies_once_at_monotone_log_time() {
        let r = Replica::new("s".into(), 7, Counter::default());
        for (offset, ts) in [(0, 100), (1, 90), (1, 90), (0, 100), (2, 120), (3, 110)] {
            r.apply(offset, sync(1, 0, ts));
        }
        r.apply(4, Bytes::from_static(b"junk"));
        r.apply(4, Bytes::from_static(b"junk"));
        r.read(|m| {
            assert_eq!(m.applied, vec![0, 1, 2, 3]);
            assert_eq!(m.clock, vec![100, 100, 120, 120]);
            assert_eq!(m.junk, vec![4]);
        });
    }

    /// A record of this handle answers the call that proposed it; other handles' records with
    /// the same request number do not.
    #[test]
    fn answers_go_to_the_proposer_only() {
        let r = Replica::new("s".into(), 7, Counter::default());
        let (tx, mut rx) = oneshot::channel();
        r.state.lock().pending.insert(5, tx);
        r.apply(0, sync(8, 5, 1));
        assert!(rx.try_recv().is_err(), "another origin's record answered");
        r.apply(1, sync(7, 5, 1));
        assert_eq!(rx.try_recv().expect("answered"), 1);
    }

    use crate::models::{Answer, QueueModel, TopicModel};
    use crate::record::Entry;
    use courier_core::{Message, Priority, QueueConfig, RateLimit};

    /// Append `op` (stamped `ts`) at `offset` as a call of this replica would, and return
    /// the answer it got.
    fn run<M: Model>(r: &Replica<M>, offset: u64, ts: u64, group: &str, op: Op) -> M::Out {
        let request = offset + 1;
        let (tx, mut rx) = oneshot::channel();
        r.state.lock().pending.insert(request, tx);
        let bytes = record::encode(r.origin, request, ts, group, &op).expect("encode");
        assert!(r.apply(offset, bytes).is_none(), "nothing orphaned");
        rx.try_recv().expect("the record answered its proposer")
    }

    fn claim(max: u32) -> Op {
        Op::Claim {
            config: QueueConfig::default(),
            max,
        }
    }

    fn leased(a: Answer) -> Vec<courier_core::Delivery> {
        match a {
            Answer::Leased(ds) => ds,
            other => panic!("not a claim's answer: {other:?}"),
        }
    }

    /// The flow-control records (issue 18) drive a queue's replicas alike: a paused queue
    /// leases nothing and says nothing is ready (no claim loop), a resume makes it ready,
    /// the rate window is counted at the claims' log times (not the followers' clocks) and
    /// a spent window wakes receivers at its end, and reprioritise answers whether it found
    /// the message.
    #[test]
    fn queue_replicas_apply_pause_rate_and_reprioritise_alike() {
        let messages: Vec<Message> = (0..4)
            .map(|i| Message::new("k", format!("m{i}")).with_priority(Priority::Low))
            .collect();
        let last = messages[3].id;
        let unknown = courier_core::MessageId::new();
        let ops = || {
            vec![
                (1_000, Op::SetPaused(true)),
                (
                    1_000,
                    Op::Publish(messages.iter().cloned().map(Entry::Message).collect(), 0),
                ),
                (1_001, claim(10)),
                (1_002, Op::SetPaused(false)),
                // 2 per second: one claim takes ceil(2/4) = 1.
                (1_003, Op::SetRateLimit(Some(RateLimit::per_second(2)))),
                (1_004, claim(10)),
                (1_005, claim(10)),
                (1_999, claim(10)),
                (2_000, claim(10)),
                (
                    2_001,
                    Op::Reprioritise {
                        id: last,
                        priority: Priority::Critical,
                    },
                ),
                (
                    2_002,
                    Op::Reprioritise {
                        id: unknown,
                        priority: Priority::High,
                    },
                ),
                (2_003, Op::SetRateLimit(None)),
                (2_004, claim(10)),
            ]
        };
        let model = || QueueModel::new("q.flow".into(), QueueConfig::default());
        let mut logs = Vec::new();
        for origin in [1, 3] {
            let replica = Replica::new("q.flow".into(), origin, model());
            let mut log = Vec::new();
            for (offset, (ts, op)) in ops().into_iter().enumerate() {
                let offset = offset as u64;
                let answer = run(&replica, offset, ts, "", op);
                let (ready, wake) = replica.read(|m| m.readiness("", ts));
                log.push(format!("{answer:?} {ready} {wake:?}"));
                match offset {
                    // Paused: nothing leased, nothing ready although 4 wait.
                    2 => {
                        assert!(leased(answer).is_empty());
                        assert!(!ready, "a paused queue with work is not ready");
                        assert!(replica.read(|m| m.state.stats().paused));
                    }
                    3 => assert!(ready, "resumed"),
                    5 | 6 => assert_eq!(leased(answer).len(), 1, "offset {offset}"),
                    // The window [1000, 2000) is spent: nothing, not ready, wake at 2000.
                    7 => {
                        assert!(leased(answer).is_empty());
                        assert_eq!((ready, wake), (false, Some(2_000)));
                    }
                    8 => assert_eq!(leased(answer).len(), 1, "a new window"),
                    9 => assert!(matches!(answer, Answer::Found(true))),
                    10 => assert!(matches!(answer, Answer::Found(false))),
                    12 => {
                        let got = leased(answer);
                        assert_eq!(got.len(), 1);
                        assert_eq!(
                            (got[0].message.id, got[0].message.priority),
                            (last, Priority::Critical)
                        );
                    }
                    _ => {}
                }
            }
            let st = replica.read(|m| m.state.stats());
            assert!(!st.paused);
            assert_eq!(st.rate_limit, None);
            logs.push(log);
        }
        // Both replicas computed the same answers (same tokens, same deliveries).
        assert_eq!(logs[0], logs[1]);
    }

    /// A group paused before it exists is not placed, starts paused (its lag counts the
    /// events, it is not ready), and a resume makes it ready; other groups are not affected.
    #[test]
    fn topic_replica_pauses_one_group() {
        let config = QueueConfig::default();
        let r = Replica::new(
            "t.flow".into(),
            1,
            TopicModel::new("flow".into(), "t.flow", config),
        );
        run(&r, 0, 1_000, "billing", Op::SetPaused(true));
        assert!(
            r.read(|m| m.topic.placed_groups().is_empty()),
            "pause places nothing"
        );
        run(
            &r,
            1,
            1_001,
            "",
            Op::Emit(vec![Entry::Message(Message::new("e", "1"))]),
        );
        assert!(leased(run(&r, 2, 1_002, "billing", claim(10))).is_empty());
        assert!(
            !r.read(|m| m.readiness("billing", 1_002)).0,
            "paused: not ready"
        );
        let stats = r.read(|m| m.group_stats("billing"));
        assert!(stats.queue.paused);
        assert_eq!(stats.lag, 1);
        assert!(
            r.read(|m| m.readiness("audit", 1_002)).0,
            "another group is ready"
        );
        assert_eq!(leased(run(&r, 3, 1_003, "audit", claim(10))).len(), 1);
        run(&r, 4, 1_004, "billing", Op::SetPaused(false));
        assert!(
            r.read(|m| m.readiness("billing", 1_004)).0,
            "resumed: ready"
        );
        assert_eq!(leased(run(&r, 5, 1_005, "billing", claim(10))).len(), 1);
    }
}
