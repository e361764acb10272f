//! A model replicated through a RabbitMQ stream.
//!
//! Each queue and each topic is one durable stream. Every change is a [`Record`] appended to
//! it (with publisher confirms), and every handle that uses the queue or topic follows the
//! stream from its first record, applying each record to its own copy of the model at the
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
use courier_core::{Error, ErrorKind, Result, SharedClock};
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::Confirmation;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot, watch};

use crate::KIT;
use crate::conn::{Conn, amqp_err};
use crate::record::{self, Op, Record};

/// How long a call waits to see its own record in the log once the broker confirmed it.
const SEEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Records the follower reads ahead (stream consumers need a prefetch; acks are credit).
const PREFETCH: u16 = 2_000;

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
}

/// What a replica needs from its backend.
#[derive(Clone)]
pub(crate) struct Env {
    pub(crate) conn: Arc<Conn>,
    pub(crate) clock: SharedClock,
    /// `true` once the backend is dropped: followers stop.
    pub(crate) closed: watch::Receiver<bool>,
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
            }),
            changed: Notify::new(),
            following: AtomicBool::new(false),
            requests: AtomicU64::new(1),
        })
    }

    /// Read the model (as of the last applied record).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&M) -> R) -> R {
        f(&self.state.lock().model)
    }

    /// Propose `op` and wait for its answer.
    ///
    /// Cancel safety: if the future is dropped after the record was appended, the record still
    /// applies; what it took is given back by [`Model::orphan`].
    pub(crate) async fn call(
        self: &Arc<Self>,
        env: &Env,
        group: &str,
        op: Op,
        operation: &'static str,
    ) -> Result<M::Out> {
        self.follow(env);
        let request = self.requests.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.state.lock().pending.insert(request, tx);
        let _forget = Forget {
            replica: self,
            request,
        };
        let bytes = record::encode(self.origin, request, env.clock.now_ms(), group, &op)
            .map_err(KIT.tag(operation))?;
        append(env, &self.stream, bytes, operation).await?;
        match tokio::time::timeout(SEEN_TIMEOUT, rx).await {
            Ok(Ok(out)) => Ok(out),
            _ => Err(KIT.tag(operation)(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "the record was stored but not read back from stream {:?} within {SEEN_TIMEOUT:?}",
                    self.stream
                ),
            ))),
        }
    }

    /// Wait until something is ready for `group` (or may be: a due time passed); `false`
    /// when `until` comes first. Woken by every applied record; never claims anything.
    pub(crate) async fn wait_ready(
        &self,
        env: &Env,
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
    fn follow(self: &Arc<Self>, env: &Env) {
        if self.following.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let env = env.clone();
        let stream = self.stream.clone();
        tokio::spawn(async move { follower(weak, env, stream).await });
    }

    /// Apply one delivery of the stream, then append what undoes an answer nobody waits for.
    fn deliver(self: &Arc<Self>, env: &Env, offset: u64, bytes: Bytes) {
        if let Some((group, op)) = self.apply(offset, bytes) {
            let me = self.clone();
            let env = env.clone();
            tokio::spawn(async move {
                if let Err(e) = me.call(&env, &group, op, "release").await {
                    tracing::warn!(stream = %me.stream, error = %e, "courier amqp: could not release what a dropped call leased; it comes back when the lease ends");
                }
            });
        }
    }

    /// Apply the record at `offset` once (a follower that reconnects reads again from the
    /// start of a chunk, so offsets already applied are skipped), answer its proposer if it is
    /// this handle, and return the record that undoes an unwanted answer.
    fn apply(&self, offset: u64, bytes: Bytes) -> Option<(String, Op)> {
        let mut orphan = None;
        {
            let mut st = self.state.lock();
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
                    tracing::warn!(stream = %self.stream, offset, error = %e, "courier amqp: a stream entry is not a Courier record; it goes to dead letters");
                    st.model.apply_junk(bytes, e, offset, now);
                }
            }
        }
        self.changed.notify_waiters();
        orphan
    }
}

/// Drops a call's pending entry when the call ends (answered or not).
struct Forget<'a, M: Model> {
    replica: &'a Replica<M>,
    request: u64,
}

impl<M: Model> Drop for Forget<'_, M> {
    fn drop(&mut self) {
        self.replica.state.lock().pending.remove(&self.request);
    }
}

/// Append one record to `stream` and wait for the broker's confirm.
///
/// # Errors
/// `Unavailable` when the broker cannot be reached or the connection is lost before the
/// confirm; `Backend` when the broker refuses the record.
pub(crate) async fn append(
    env: &Env,
    stream: &str,
    bytes: Bytes,
    operation: &'static str,
) -> Result<()> {
    let session = env.conn.session(operation).await?;
    let r = async {
        session.declare_stream(stream, operation).await?;
        let confirm = session
            .publish
            .basic_publish(
                "".into(),
                stream.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &bytes,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .map_err(|e| amqp_err(operation, format!("appending to stream {stream:?}"), e))?
            .await
            .map_err(|e| amqp_err(operation, format!("confirm from stream {stream:?}"), e))?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(KIT.tag(operation)(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "RabbitMQ returned the record for stream {stream:?}: {}",
                    returned.reply_text
                ),
            ))),
            Confirmation::Nack(_) => Err(KIT.tag(operation)(Error::new(
                ErrorKind::Unavailable,
                format!("RabbitMQ did not store the record for stream {stream:?} (nack)"),
            ))),
            Confirmation::NotRequested => Ok(()),
        }
    }
    .await;
    if let Err(e) = &r {
        env.conn.failed(&session, e).await;
    }
    r
}

/// The `x-stream-offset` header RabbitMQ puts on each stream delivery.
fn offset_of(props: &BasicProperties) -> Option<u64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        _ => None,
    }
}

/// Follow `stream` for as long as the replica lives: consume from the next unapplied
/// offset, apply each record, and after a lost connection start again from there.
async fn follower<M: Model>(weak: Weak<Replica<M>>, env: Env, stream: String) {
    let mut closed = env.closed.clone();
    let mut backoff = Duration::from_millis(50);
    loop {
        if *closed.borrow() {
            return;
        }
        let Some(next) = weak.upgrade().map(|r| r.state.lock().next_offset) else {
            return;
        };
        let outcome = follow_once(&weak, &env, &stream, next, &mut closed).await;
        match outcome {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(stream = %stream, error = %e, "courier amqp: follower restarts");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = closed.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One consumer of the stream from `next`; `Ok` when the replica or backend is gone.
async fn follow_once<M: Model>(
    weak: &Weak<Replica<M>>,
    env: &Env,
    stream: &str,
    next: u64,
    closed: &mut watch::Receiver<bool>,
) -> Result<()> {
    let session = env.conn.session("follow").await?;
    session.declare_stream(stream, "follow").await?;
    let err = |what: &str| {
        let what = format!("{what} stream {stream:?}");
        move |e: lapin::Error| amqp_err("follow", what, e)
    };
    let channel = session
        .connection
        .create_channel()
        .await
        .map_err(err("opening a channel for"))?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(err("setting the prefetch of"))?;
    let mut args = FieldTable::default();
    let start = i64::try_from(next).unwrap_or(i64::MAX);
    args.insert("x-stream-offset".into(), AMQPValue::LongLongInt(start));
    let mut consumer = channel
        .basic_consume(
            stream.into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .map_err(err("consuming"))?;
    loop {
        let delivery = tokio::select! {
            d = consumer.next() => d,
            _ = closed.changed() => {
                let _ = channel.close(200, "courier: backend dropped".into()).await;
                return Ok(());
            }
        };
        let Some(delivery) = delivery else {
            env.conn.invalidate(session.generation).await;
            return Err(KIT.tag("follow")(Error::new(
                ErrorKind::Unavailable,
                format!("the consumer of stream {stream:?} ended"),
            )));
        };
        let delivery = delivery.map_err(err("reading"))?;
        let Some(replica) = weak.upgrade() else {
            let _ = channel.close(200, "courier: replica dropped".into()).await;
            return Ok(());
        };
        match offset_of(&delivery.properties) {
            Some(offset) => replica.deliver(env, offset, Bytes::from(delivery.data.clone())),
            None => {
                tracing::warn!(stream = %stream, "courier amqp: a stream delivery without x-stream-offset was skipped")
            }
        }
        drop(replica);
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(err("acknowledging"))?;
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
}
