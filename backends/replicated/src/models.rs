//! The replicated models: a queue is the memory backend's `QueueState`, a topic its `Topic`
//! (log and consumer groups). Both are driven only by records, at log time, with lease tokens
//! taken from the record's stream offset, so every follower computes the same answers.

use bytes::Bytes;
use courier_core::backend::undecodable_reason;
use courier_core::{Delivery, Error, Lease, Message, MessageId, Published, Result, Settle};
use courier_memory::model::{QueueState, Topic, fnv1a};

use crate::record::{Entry, Op, Record};
use crate::replica::Model;

/// Lease tokens of the claim at stream offset `o` are `o << TOKEN_SHIFT` onwards: unique
/// within the stream, and the same on every follower.
const TOKEN_SHIFT: u32 = 20;

/// The most deliveries one claim may lease (the tokens of one offset).
pub(crate) const MAX_CLAIM: usize = (1 << TOKEN_SHIFT) - 1;

/// What applying a record answers.
#[derive(Debug)]
pub(crate) enum Answer {
    Done,
    Published(Vec<Published>),
    Leased(Vec<Delivery>),
    Settled(Vec<Result<()>>),
    Extended(Result<Lease>),
    Count(Result<u64>),
    Created(Result<bool>),
    Reset(Result<()>),
    /// Whether a reprioritise found a stored copy of the message.
    Found(bool),
}

/// The id of a stream entry that is not a record at all: unique per stream and offset, the
/// same on every follower.
fn junk_id(stream: &str, offset: u64) -> MessageId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&fnv1a(stream).to_be_bytes());
    b[8..].copy_from_slice(&offset.to_be_bytes());
    MessageId::from_bytes(b)
}

/// A dead letter's message for bytes that do not decode: the raw bytes under the entry's id.
fn junk_message(id: MessageId, bytes: Bytes) -> Message {
    Message::new("", bytes).with_id(id)
}

fn config_of(op: &Op) -> Option<courier_core::QueueConfig> {
    match op {
        Op::Claim { config, .. }
        | Op::Settle { config, .. }
        | Op::Extend { config, .. }
        | Op::RequeueDead { config, .. }
        | Op::PurgeDead { config, .. }
        | Op::Sync { config }
        | Op::ResetGroup { config, .. }
        | Op::CreateGroup { config, .. } => Some(*config),
        Op::Publish(..)
        | Op::Emit(_)
        | Op::SetRetention(_)
        | Op::SetPaused(_)
        | Op::SetRateLimit(_)
        | Op::Reprioritise { .. } => None,
    }
}

fn releases(out: Answer) -> Option<Vec<Settle>> {
    match out {
        Answer::Leased(ds) if !ds.is_empty() => {
            Some(ds.into_iter().map(|d| Settle::Release(d.lease)).collect())
        }
        _ => None,
    }
}

/// A work queue.
pub(crate) struct QueueModel {
    stream: String,
    pub(crate) state: QueueState,
    /// The last claim leased nothing although work was ready and the queue was not paused:
    /// the rate limit's window is spent (Q15). Until a claim leases again or the limit
    /// changes, ready work does not wake receivers; the window's end does (`next_wake`).
    /// Not part of the answers, only of when receivers try again.
    throttled: bool,
}

impl QueueModel {
    pub(crate) fn new(stream: String, config: courier_core::QueueConfig) -> Self {
        let seed = fnv1a(&stream);
        QueueModel {
            stream,
            state: QueueState::seeded(config, true, seed),
            throttled: false,
        }
    }
}

impl Model for QueueModel {
    type Out = Answer;

    fn apply(&mut self, record: Record, offset: u64, now: u64) -> Answer {
        if let Some(config) = config_of(&record.op) {
            self.state.config = config;
        }
        let st = &mut self.state;
        st.tick(now);
        match record.op {
            Op::Publish(entries, window) => {
                let mut out = Vec::with_capacity(entries.len());
                for e in entries {
                    match e {
                        Entry::Message(m) => out.push(st.accept(m, now, window)),
                        Entry::Undecodable { id, bytes, error } => {
                            st.bury_undecodable(
                                junk_message(id, bytes),
                                undecodable_reason(&error),
                                now,
                            );
                            out.push(Published::Stored(id));
                        }
                        Entry::Encoded(id, _) => out.push(Published::Stored(id)),
                    }
                }
                Answer::Published(out)
            }
            Op::Claim { max, .. } => {
                st.assign_tokens(offset << TOKEN_SHIFT);
                let mut out = Vec::new();
                // The rate window is counted at the claim's log time, so every replica
                // counts the same deliveries in the same window (Q15).
                st.lease(now, (max as usize).min(MAX_CLAIM), &mut out);
                self.throttled = out.is_empty() && st.ready_len() > 0 && !st.is_paused();
                Answer::Leased(out)
            }
            Op::SetPaused(paused) => {
                st.set_paused(paused);
                Answer::Done
            }
            Op::SetRateLimit(limit) => {
                st.set_rate_limit(limit);
                self.throttled = false;
                Answer::Done
            }
            Op::Reprioritise { id, priority } => Answer::Found(st.reprioritise(id, priority)),
            Op::Settle { ops, .. } => {
                Answer::Settled(ops.into_iter().map(|op| st.settle(op, now)).collect())
            }
            Op::Extend {
                lease, visibility, ..
            } => Answer::Extended(st.extend(&lease, visibility, now)),
            Op::RequeueDead {
                which, priority, ..
            } => Answer::Count(st.requeue_dead_at(&which, priority, now)),
            Op::PurgeDead { which, .. } => Answer::Count(st.purge_dead(&which)),
            Op::Sync { .. }
            | Op::Emit(_)
            | Op::SetRetention(_)
            | Op::ResetGroup { .. }
            | Op::CreateGroup { .. } => Answer::Done,
        }
    }

    fn apply_junk(&mut self, bytes: Bytes, error: Error, offset: u64, now: u64) {
        self.state.tick(now);
        let id = junk_id(&self.stream, offset);
        self.state
            .bury_undecodable(junk_message(id, bytes), undecodable_reason(&error), now);
    }

    fn orphan(&self, _group: &str, out: Answer) -> Option<Op> {
        let ops = releases(out)?;
        Some(Op::Settle {
            config: self.state.config,
            ops,
        })
    }

    /// A paused queue, or one whose rate window is spent, has nothing ready: its waiting
    /// receivers sleep until a record changes that (resume, a new limit) or until
    /// `next_wake` (a delay ends, a lease expires, the next rate window starts), instead of
    /// appending claim after empty claim.
    fn readiness(&self, _group: &str, _now: u64) -> (bool, Option<u64>) {
        let st = &self.state;
        let ready = st.ready_len() > 0 && !st.is_paused() && !self.throttled;
        (ready, st.next_wake())
    }
}

/// A topic: its log and its consumer groups.
pub(crate) struct TopicModel {
    /// The topic's name (for errors).
    name: String,
    pub(crate) topic: Topic,
}

impl TopicModel {
    pub(crate) fn new(name: String, stream: &str, config: courier_core::QueueConfig) -> Self {
        TopicModel {
            name,
            topic: Topic::seeded(config, fnv1a(stream)),
        }
    }
}

impl TopicModel {
    pub(crate) fn group_stats(&self, group: &str) -> courier_core::GroupStats {
        self.topic.group_stats(group)
    }

    pub(crate) fn dead_letters(
        &self,
        group: &str,
        page: courier_core::Page,
    ) -> Vec<courier_core::DeadLetter> {
        self.topic.dead_letters(group, page)
    }
}

impl Model for TopicModel {
    type Out = Answer;

    fn apply(&mut self, record: Record, offset: u64, now: u64) -> Answer {
        let group = record.group.as_str();
        if let Some(config) = config_of(&record.op)
            && !group.is_empty()
        {
            self.topic.configure_group(group, config, now);
        }
        match record.op {
            Op::Emit(entries) => {
                let mut events = Vec::with_capacity(entries.len());
                for e in entries {
                    match e {
                        Entry::Message(m) => events.push(m),
                        Entry::Undecodable { id, error, .. } => {
                            tracing::warn!(topic = %self.name, id = %id, error = %error, "courier: an event that does not decode was skipped");
                        }
                        Entry::Encoded(..) => {}
                    }
                }
                self.topic.append(events, now);
                Answer::Done
            }
            Op::SetRetention(r) => {
                self.topic.set_retention(r, now);
                Answer::Done
            }
            Op::Sync { .. } if group.is_empty() => {
                self.topic.trim(now);
                Answer::Done
            }
            // Queue-only records, and records about no group, change no group.
            Op::Publish(..) | Op::SetRateLimit(_) | Op::Reprioritise { .. } => Answer::Done,
            Op::SetPaused(_) if group.is_empty() => Answer::Done,
            op => {
                let mut v = self.topic.group_at(group, now);
                match op {
                    Op::Claim { max, .. } => {
                        v.group.state.assign_tokens(offset << TOKEN_SHIFT);
                        let mut out = Vec::new();
                        v.receive((max as usize).min(MAX_CLAIM), now, &mut out);
                        Answer::Leased(out)
                    }
                    Op::Settle { ops, .. } => Answer::Settled(
                        ops.into_iter()
                            .map(|op| v.group.state.settle(op, now))
                            .collect(),
                    ),
                    Op::Extend {
                        lease, visibility, ..
                    } => Answer::Extended(v.group.state.extend(&lease, visibility, now)),
                    Op::RequeueDead { which, .. } => {
                        Answer::Count(v.group.state.requeue_dead(&which, now))
                    }
                    Op::PurgeDead { which, .. } => Answer::Count(v.group.state.purge_dead(&which)),
                    Op::ResetGroup { from, .. } => Answer::Reset(v.reset(from, &self.name)),
                    Op::CreateGroup { from, .. } => Answer::Created(v.create(from, &self.name)),
                    Op::SetPaused(paused) => {
                        // Only the group's state: a group paused before it exists is not
                        // placed (E7), and starts paused when it is (E8).
                        v.group.state.set_paused(paused);
                        Answer::Done
                    }
                    _ => Answer::Done,
                }
            }
        }
    }

    fn apply_junk(&mut self, _bytes: Bytes, error: Error, offset: u64, _now: u64) {
        tracing::warn!(topic = %self.name, offset, error = %error, "courier: a topic entry that is not a record was skipped");
    }

    fn orphan(&self, group: &str, out: Answer) -> Option<Op> {
        let ops = releases(out)?;
        let config = self.topic.group_config(group)?;
        Some(Op::Settle { config, ops })
    }

    /// A paused group has nothing ready (nothing leaves the log for it, E8): its receivers
    /// sleep until a record resumes it, or a delay or lease of it comes due.
    fn readiness(&self, group: &str, _now: u64) -> (bool, Option<u64>) {
        let (ready, wake) = self.topic.readiness(group);
        let paused = ready && self.topic.group_stats(group).queue.paused;
        (ready && !paused, wake)
    }
}
