//! The records of a replicated log: one AMQP message in a RabbitMQ stream is one record.
//!
//! A record is an operation proposed by one backend handle (its `origin`), numbered by that
//! handle (`request`, so the proposer can pick out its own answer) and stamped with the
//! proposer's clock (`ts`, ms). Every handle that follows the stream applies the same records
//! in the same order to the same model, so all of them hold the same state.
//!
//! Layout (big endian): `b"CR"`, version `1`, op code, origin `u64`, request `u64`, ts `u64`,
//! then the op's body. A message is its core wire encoding (`courier_core::wire`), behind its
//! id, so an entry that does not decode still has an id to be dead-lettered under.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use courier_core::{
    Error, Lease, Message, MessageId, Priority, QueueConfig, RateLimit, ReplayFrom, Result,
    Retention, RetryPolicy, Selection, Settle, wire,
};

const MAGIC: &[u8; 2] = b"CR";
const VERSION: u8 = 1;

/// One entry of a publish or emit: the message, or its id and the bytes that did not decode.
#[derive(Debug)]
pub(crate) enum Entry {
    Message(Message),
    /// A message already encoded by the proposer: its id and wire bytes.
    Encoded(MessageId, Bytes),
    Undecodable {
        id: MessageId,
        bytes: Bytes,
        error: Error,
    },
}

/// A record's operation.
#[derive(Debug)]
pub(crate) enum Op {
    /// Queue: store these messages (prepared: ids, `created_at`, `not_before` set), with the
    /// publisher's deduplication window in ms (0 = keys held while live, Q11).
    Publish(Vec<Entry>, u64),
    /// Queue or group: lease up to `max`.
    Claim { config: QueueConfig, max: u32 },
    /// Queue or group: settle these leases.
    Settle {
        config: QueueConfig,
        ops: Vec<Settle>,
    },
    /// Queue or group: extend a lease.
    Extend {
        config: QueueConfig,
        lease: Lease,
        visibility: Duration,
    },
    /// Queue or group: dead letters back to ready, at their own priority or at this one.
    RequeueDead {
        config: QueueConfig,
        which: Selection,
        priority: Option<Priority>,
    },
    /// Queue or group: delete dead letters.
    PurgeDead {
        config: QueueConfig,
        which: Selection,
    },
    /// Queue or group: nothing; its answer says the proposer has seen the log up to here.
    Sync { config: QueueConfig },
    /// Topic: append events.
    Emit(Vec<Entry>),
    /// Topic: set the retention.
    SetRetention(Retention),
    /// Topic: move a group (E5).
    ResetGroup {
        config: QueueConfig,
        from: ReplayFrom,
    },
    /// Topic: place a new group (E2).
    CreateGroup {
        config: QueueConfig,
        from: ReplayFrom,
    },
    /// Queue or group: pause (`true`) or resume (`false`) deliveries (Q14, E8).
    SetPaused(bool),
    /// Queue: set or clear the rate limit (Q15), already validated.
    SetRateLimit(Option<RateLimit>),
    /// Queue: move every stored copy of `id` to `priority` (Q16).
    Reprioritise { id: MessageId, priority: Priority },
}

/// A decoded record.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) origin: u64,
    pub(crate) request: u64,
    pub(crate) ts: u64,
    /// The consumer group a topic record is about (empty for queues and topic-wide records).
    pub(crate) group: String,
    pub(crate) op: Op,
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u32(s.len() as u32);
    b.put_slice(s.as_bytes());
}

fn put_config(b: &mut BytesMut, c: &QueueConfig) {
    b.put_u64(dur_ns(c.visibility_timeout));
    b.put_u32(c.retry.max_attempts);
    b.put_u64(dur_ns(c.retry.base));
    b.put_f64(c.retry.factor);
    b.put_u64(dur_ns(c.retry.max_delay));
    b.put_f64(c.retry.jitter);
    // Flags: bit 0 dead letters on, bit 1 expired messages dropped (only meaningful with
    // dead letters on, so an older reader, which takes any non-zero byte for "on", still
    // reads dead_letter right).
    b.put_u8(u8::from(c.dead_letter) | (u8::from(c.dead_letter && c.drop_expired) << 1));
    b.put_u64(c.max_payload as u64);
}

fn dur_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn put_lease(b: &mut BytesMut, l: &Lease) {
    b.put_slice(l.id.as_bytes());
    b.put_u64(l.token);
    b.put_u32(l.attempt);
    b.put_u64(l.deadline_ms);
}

fn put_selection(b: &mut BytesMut, s: &Selection) -> Result<()> {
    match s {
        Selection::All => b.put_u8(0),
        Selection::Ids(ids) => {
            b.put_u8(1);
            b.put_u32(ids.len() as u32);
            for id in ids {
                b.put_slice(id.as_bytes());
            }
        }
        other => return Err(Error::invalid(format!("unsupported selection {other:?}"))),
    }
    Ok(())
}

fn put_from(b: &mut BytesMut, f: &ReplayFrom) -> Result<()> {
    match f {
        ReplayFrom::Start => b.put_u8(0),
        ReplayFrom::End => b.put_u8(1),
        ReplayFrom::Time(ms) => {
            b.put_u8(2);
            b.put_u64(*ms);
        }
        ReplayFrom::Id(id) => {
            b.put_u8(3);
            b.put_slice(id.as_bytes());
        }
        other => {
            return Err(Error::invalid(format!(
                "unsupported replay position {other:?}"
            )));
        }
    }
    Ok(())
}

/// Encode a message entry: its id, then its wire bytes.
fn put_message(b: &mut BytesMut, m: &Message) -> Result<()> {
    let bytes = wire::encode(m)?;
    b.put_slice(m.id.as_bytes());
    b.put_u32(bytes.len() as u32);
    b.put_slice(&bytes);
    Ok(())
}

/// Encode one entry whose bytes are given as they are (tests of Q10 store junk this way).
pub(crate) fn put_raw_entry(b: &mut BytesMut, id: MessageId, bytes: &[u8]) {
    b.put_slice(id.as_bytes());
    b.put_u32(bytes.len() as u32);
    b.put_slice(bytes);
}

/// The fixed header of a record.
pub(crate) fn header(code: u8, origin: u64, request: u64, ts: u64, group: &str) -> BytesMut {
    let mut b = BytesMut::with_capacity(64);
    b.put_slice(MAGIC);
    b.put_u8(VERSION);
    b.put_u8(code);
    b.put_u64(origin);
    b.put_u64(request);
    b.put_u64(ts);
    put_str(&mut b, group);
    b
}

/// Op codes.
pub(crate) mod code {
    pub(crate) const PUBLISH: u8 = 1;
    pub(crate) const CLAIM: u8 = 2;
    pub(crate) const SETTLE: u8 = 3;
    pub(crate) const EXTEND: u8 = 4;
    pub(crate) const REQUEUE_DEAD: u8 = 5;
    pub(crate) const PURGE_DEAD: u8 = 6;
    pub(crate) const SYNC: u8 = 7;
    pub(crate) const EMIT: u8 = 8;
    pub(crate) const SET_RETENTION: u8 = 9;
    pub(crate) const RESET_GROUP: u8 = 10;
    pub(crate) const CREATE_GROUP: u8 = 11;
    /// A publish with a deduplication window: the window (u64 ms), then as `PUBLISH`. A
    /// publish without one is written as `PUBLISH`, as before windows existed.
    pub(crate) const PUBLISH_WINDOW: u8 = 12;
    /// A requeue at a priority (Q8): as `REQUEUE_DEAD`, then the priority (u8, 0..3). A
    /// requeue that keeps each message's priority is written as `REQUEUE_DEAD`, as before.
    pub(crate) const REQUEUE_DEAD_AT: u8 = 13;
    /// Pause a queue, or the group named in the header (Q14, E8): no body.
    pub(crate) const PAUSE: u8 = 14;
    /// Resume a queue, or the group named in the header: no body.
    pub(crate) const RESUME: u8 = 15;
    /// Set a queue's rate limit (Q15): `0` (none), or `1`, `max` (u32) and the window
    /// (u64 ns).
    pub(crate) const SET_RATE_LIMIT: u8 = 16;
    /// Move a message to a priority (Q16): its id, then the priority (u8, 0..3).
    pub(crate) const REPRIORITISE: u8 = 17;
}

/// A priority from its byte in a record.
fn priority_of(p: u8, what: &str) -> Result<Priority> {
    Priority::from_index(usize::from(p))
        .ok_or_else(|| Error::decode(format!("{what} record: priority byte {p}")))
}

/// Encode a record.
///
/// # Errors
/// `InvalidInput` for a message the wire format cannot hold (checked before, so not expected).
pub(crate) fn encode(origin: u64, request: u64, ts: u64, group: &str, op: &Op) -> Result<Bytes> {
    let code = match op {
        Op::Publish(_, 0) => code::PUBLISH,
        Op::Publish(..) => code::PUBLISH_WINDOW,
        Op::Claim { .. } => code::CLAIM,
        Op::Settle { .. } => code::SETTLE,
        Op::Extend { .. } => code::EXTEND,
        Op::RequeueDead { priority: None, .. } => code::REQUEUE_DEAD,
        Op::RequeueDead { .. } => code::REQUEUE_DEAD_AT,
        Op::PurgeDead { .. } => code::PURGE_DEAD,
        Op::Sync { .. } => code::SYNC,
        Op::Emit(_) => code::EMIT,
        Op::SetRetention(_) => code::SET_RETENTION,
        Op::ResetGroup { .. } => code::RESET_GROUP,
        Op::CreateGroup { .. } => code::CREATE_GROUP,
        Op::SetPaused(true) => code::PAUSE,
        Op::SetPaused(false) => code::RESUME,
        Op::SetRateLimit(_) => code::SET_RATE_LIMIT,
        Op::Reprioritise { .. } => code::REPRIORITISE,
    };
    let mut b = header(code, origin, request, ts, group);
    match op {
        Op::Publish(entries, _) | Op::Emit(entries) => {
            if let Op::Publish(_, window) = op
                && *window > 0
            {
                b.put_u64(*window);
            }
            b.put_u32(entries.len() as u32);
            for e in entries {
                match e {
                    Entry::Message(m) => put_message(&mut b, m)?,
                    Entry::Encoded(id, bytes) => put_raw_entry(&mut b, *id, bytes),
                    Entry::Undecodable { id, bytes, .. } => put_raw_entry(&mut b, *id, bytes),
                }
            }
        }
        Op::Claim { config, max } => {
            put_config(&mut b, config);
            b.put_u32(*max);
        }
        Op::Settle { config, ops } => {
            put_config(&mut b, config);
            b.put_u32(ops.len() as u32);
            for s in ops {
                match s {
                    Settle::Ack(l) => {
                        b.put_u8(0);
                        put_lease(&mut b, l);
                    }
                    Settle::Retry {
                        lease,
                        delay,
                        error,
                    } => {
                        b.put_u8(1);
                        put_lease(&mut b, lease);
                        b.put_u64(dur_ns(*delay));
                        put_str(&mut b, error);
                    }
                    Settle::Bury { lease, error } => {
                        b.put_u8(2);
                        put_lease(&mut b, lease);
                        put_str(&mut b, error);
                    }
                    Settle::Release(l) => {
                        b.put_u8(3);
                        put_lease(&mut b, l);
                    }
                    other => {
                        return Err(Error::invalid(format!("unsupported settle {other:?}")));
                    }
                }
            }
        }
        Op::Extend {
            config,
            lease,
            visibility,
        } => {
            put_config(&mut b, config);
            put_lease(&mut b, lease);
            b.put_u64(dur_ns(*visibility));
        }
        Op::RequeueDead {
            config,
            which,
            priority,
        } => {
            put_config(&mut b, config);
            put_selection(&mut b, which)?;
            if let Some(p) = priority {
                b.put_u8(p.index() as u8);
            }
        }
        Op::PurgeDead { config, which } => {
            put_config(&mut b, config);
            put_selection(&mut b, which)?;
        }
        Op::Sync { config } => put_config(&mut b, config),
        Op::SetRetention(r) => {
            b.put_u64(r.max_len.map_or(u64::MAX, |n| n.min(u64::MAX - 1)));
            b.put_u64(r.max_age.map_or(u64::MAX, |d| dur_ns(d).min(u64::MAX - 1)));
        }
        Op::ResetGroup { config, from } | Op::CreateGroup { config, from } => {
            put_config(&mut b, config);
            put_from(&mut b, from)?;
        }
        Op::SetPaused(_) => {}
        Op::SetRateLimit(None) => b.put_u8(0),
        Op::SetRateLimit(Some(l)) => {
            b.put_u8(1);
            b.put_u32(l.max);
            b.put_u64(dur_ns(l.per));
        }
        Op::Reprioritise { id, priority } => {
            b.put_slice(id.as_bytes());
            b.put_u8(priority.index() as u8);
        }
    }
    Ok(b.freeze())
}

/// A reader that fails with a decode error instead of panicking on short input.
struct Reader {
    b: Bytes,
}

impl Reader {
    fn need(&self, n: usize) -> Result<()> {
        if self.b.remaining() < n {
            return Err(Error::decode(format!(
                "record truncated: {n} more bytes needed, {} left",
                self.b.remaining()
            )));
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8> {
        self.need(1)?;
        Ok(self.b.get_u8())
    }
    fn u32(&mut self) -> Result<u32> {
        self.need(4)?;
        Ok(self.b.get_u32())
    }
    fn u64(&mut self) -> Result<u64> {
        self.need(8)?;
        Ok(self.b.get_u64())
    }
    fn f64(&mut self) -> Result<f64> {
        self.need(8)?;
        Ok(self.b.get_f64())
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes> {
        self.need(n)?;
        Ok(self.b.split_to(n))
    }
    fn id(&mut self) -> Result<MessageId> {
        let b = self.bytes(16)?;
        let mut a = [0u8; 16];
        a.copy_from_slice(&b);
        Ok(MessageId::from_bytes(a))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|e| Error::decode(format!("record string: {e}")))
    }
    fn config(&mut self) -> Result<QueueConfig> {
        let visibility = Duration::from_nanos(self.u64()?);
        let max_attempts = self.u32()?;
        let base = Duration::from_nanos(self.u64()?);
        let factor = self.f64()?;
        let max_delay = Duration::from_nanos(self.u64()?);
        let jitter = self.f64()?;
        let flags = self.u8()?;
        let dead_letter = flags & 1 != 0;
        let drop_expired = flags & 2 != 0;
        let max_payload = usize::try_from(self.u64()?).unwrap_or(usize::MAX);
        let retry = RetryPolicy::default()
            .with_max_attempts(max_attempts)
            .with_base(base)
            .with_factor(factor)
            .with_max_delay(max_delay)
            .with_jitter(jitter);
        Ok(QueueConfig::default()
            .with_visibility_timeout(visibility)
            .with_retry(retry)
            .with_dead_letter(dead_letter)
            .with_drop_expired(drop_expired)
            .with_max_payload(max_payload))
    }
    fn lease(&mut self) -> Result<Lease> {
        Ok(Lease {
            id: self.id()?,
            token: self.u64()?,
            attempt: self.u32()?,
            deadline_ms: self.u64()?,
        })
    }
    fn entries(&mut self) -> Result<Vec<Entry>> {
        let n = self.u32()? as usize;
        let mut out = Vec::with_capacity(n.min(100_000));
        for _ in 0..n {
            let id = self.id()?;
            let len = self.u32()? as usize;
            let bytes = self.bytes(len)?;
            out.push(match wire::decode(&bytes) {
                Ok(mut m) => {
                    m.id = id;
                    Entry::Message(m)
                }
                Err(error) => Entry::Undecodable { id, bytes, error },
            });
        }
        Ok(out)
    }
    fn selection(&mut self) -> Result<Selection> {
        Ok(match self.u8()? {
            0 => Selection::All,
            _ => {
                let n = self.u32()? as usize;
                let mut ids = Vec::with_capacity(n.min(100_000));
                for _ in 0..n {
                    ids.push(self.id()?);
                }
                Selection::Ids(ids)
            }
        })
    }
    fn from(&mut self) -> Result<ReplayFrom> {
        Ok(match self.u8()? {
            0 => ReplayFrom::Start,
            1 => ReplayFrom::End,
            2 => ReplayFrom::Time(self.u64()?),
            _ => ReplayFrom::Id(self.id()?),
        })
    }
}

fn opt(n: u64) -> Option<u64> {
    (n != u64::MAX).then_some(n)
}

/// Decode a record.
///
/// # Errors
/// `Decode` for bytes that are not a record of this version (a foreign or corrupt writer).
pub(crate) fn decode(bytes: Bytes) -> Result<Record> {
    let mut r = Reader { b: bytes };
    let magic = r.bytes(2)?;
    if magic.as_ref() != MAGIC {
        return Err(Error::decode("not a Courier record (bad magic)"));
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(Error::decode(format!(
            "Courier record version {version} (this build reads {VERSION})"
        )));
    }
    let code = r.u8()?;
    let origin = r.u64()?;
    let request = r.u64()?;
    let ts = r.u64()?;
    let group = r.string()?;
    let op = match code {
        code::PUBLISH => Op::Publish(r.entries()?, 0),
        code::PUBLISH_WINDOW => {
            let window = r.u64()?;
            Op::Publish(r.entries()?, window)
        }
        code::EMIT => Op::Emit(r.entries()?),
        code::CLAIM => Op::Claim {
            config: r.config()?,
            max: r.u32()?,
        },
        code::SETTLE => {
            let config = r.config()?;
            let n = r.u32()? as usize;
            let mut ops = Vec::with_capacity(n.min(100_000));
            for _ in 0..n {
                let kind = r.u8()?;
                let lease = r.lease()?;
                ops.push(match kind {
                    0 => Settle::Ack(lease),
                    1 => Settle::Retry {
                        lease,
                        delay: Duration::from_nanos(r.u64()?),
                        error: r.string()?,
                    },
                    2 => Settle::Bury {
                        lease,
                        error: r.string()?,
                    },
                    _ => Settle::Release(lease),
                });
            }
            Op::Settle { config, ops }
        }
        code::EXTEND => Op::Extend {
            config: r.config()?,
            lease: r.lease()?,
            visibility: Duration::from_nanos(r.u64()?),
        },
        code::REQUEUE_DEAD => Op::RequeueDead {
            config: r.config()?,
            which: r.selection()?,
            priority: None,
        },
        code::REQUEUE_DEAD_AT => {
            let (config, which) = (r.config()?, r.selection()?);
            let priority = priority_of(r.u8()?, "requeue")?;
            Op::RequeueDead {
                config,
                which,
                priority: Some(priority),
            }
        }
        code::PURGE_DEAD => Op::PurgeDead {
            config: r.config()?,
            which: r.selection()?,
        },
        code::SYNC => Op::Sync {
            config: r.config()?,
        },
        code::SET_RETENTION => Op::SetRetention(Retention {
            max_len: opt(r.u64()?),
            max_age: opt(r.u64()?).map(Duration::from_nanos),
        }),
        code::RESET_GROUP => Op::ResetGroup {
            config: r.config()?,
            from: r.from()?,
        },
        code::CREATE_GROUP => Op::CreateGroup {
            config: r.config()?,
            from: r.from()?,
        },
        code::PAUSE => Op::SetPaused(true),
        code::RESUME => Op::SetPaused(false),
        code::SET_RATE_LIMIT => Op::SetRateLimit(match r.u8()? {
            0 => None,
            _ => Some(RateLimit::new(r.u32()?, Duration::from_nanos(r.u64()?))),
        }),
        code::REPRIORITISE => Op::Reprioritise {
            id: r.id()?,
            priority: priority_of(r.u8()?, "reprioritise")?,
        },
        other => return Err(Error::decode(format!("unknown record op {other}"))),
    };
    Ok(Record {
        origin,
        request,
        ts,
        group,
        op,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let config = QueueConfig::default()
            .with_visibility_timeout(Duration::from_millis(250))
            .with_retry(RetryPolicy::exact(
                3,
                Duration::from_millis(50),
                2.0,
                Duration::from_secs(1),
            ))
            .with_dead_letter(false);
        let m = Message::new("k", "payload").with_priority(Priority::High);
        let lease = Lease {
            id: m.id,
            token: 7,
            attempt: 2,
            deadline_ms: 99,
        };
        let ops = vec![
            Op::Publish(vec![Entry::Message(m.clone())], 0),
            Op::Publish(
                vec![Entry::Message(m.clone().with_dedup_key("order-1"))],
                5_000,
            ),
            Op::Claim { config, max: 5 },
            Op::Claim {
                config: config.with_dead_letter(true).with_drop_expired(true),
                max: 1,
            },
            Op::Publish(vec![Entry::Message(m.clone().with_expires_at(123_456))], 0),
            Op::Settle {
                config,
                ops: vec![
                    Settle::Ack(lease),
                    Settle::Retry {
                        lease,
                        delay: Duration::from_millis(3),
                        error: "e".into(),
                    },
                ],
            },
            Op::SetRetention(Retention {
                max_len: Some(3),
                max_age: None,
            }),
            Op::ResetGroup {
                config,
                from: ReplayFrom::Time(12),
            },
            Op::RequeueDead {
                config,
                which: Selection::Ids(vec![m.id]),
                priority: None,
            },
            Op::RequeueDead {
                config,
                which: Selection::All,
                priority: Some(Priority::Low),
            },
            Op::SetPaused(true),
            Op::SetPaused(false),
            Op::SetRateLimit(None),
            Op::SetRateLimit(Some(RateLimit::per_second(200))),
            Op::SetRateLimit(Some(RateLimit::new(3, Duration::from_micros(1_500)))),
            Op::Reprioritise {
                id: m.id,
                priority: Priority::Critical,
            },
        ];
        for op in ops {
            let bytes = encode(1, 2, 3, "g", &op).expect("encode");
            let r = decode(bytes).expect("decode");
            assert_eq!(
                (r.origin, r.request, r.ts, r.group.as_str()),
                (1, 2, 3, "g")
            );
            assert_eq!(format!("{:?}", r.op), format!("{op:?}"));
        }
        assert!(decode(Bytes::from_static(b"\x00junk")).is_err());
    }

    /// The flow-control records (issue 18) have codes of their own after the older ones, so
    /// records written before them decode as before; a bad priority byte or a short body is
    /// a decode error, not a panic.
    #[test]
    fn flow_control_records_have_their_own_codes() {
        let codes = [
            (Op::SetPaused(true), code::PAUSE),
            (Op::SetPaused(false), code::RESUME),
            (Op::SetRateLimit(None), code::SET_RATE_LIMIT),
            (
                Op::Reprioritise {
                    id: MessageId::new(),
                    priority: Priority::Low,
                },
                code::REPRIORITISE,
            ),
        ];
        for (op, c) in codes {
            let bytes = encode(1, 2, 3, "", &op).expect("encode");
            assert_eq!(bytes[3], c, "{op:?}");
            assert!(c > code::REQUEUE_DEAD_AT);
        }
        let op = Op::Reprioritise {
            id: MessageId::new(),
            priority: Priority::High,
        };
        let bytes = encode(1, 2, 3, "", &op).expect("encode");
        let mut bad = bytes.to_vec();
        *bad.last_mut().expect("a priority byte") = 9;
        assert!(decode(Bytes::from(bad)).is_err());
        assert!(decode(bytes.slice(..bytes.len() - 1)).is_err());
        let bytes = encode(
            1,
            2,
            3,
            "",
            &Op::SetRateLimit(Some(RateLimit::per_second(5))),
        )
        .expect("encode");
        assert!(decode(bytes.slice(..bytes.len() - 3)).is_err());
    }
}
