//! Publishing later and on a schedule (DESIGN §4).
//!
//! One-off schedules (`publish_at`, `publish_after`) are stored by the backend as delayed
//! messages, so they survive the process. Recurring schedules (intervals, cron expressions)
//! run in this process: each firing publishes a fresh message carrying the deduplication key
//! `courier-schedule:<name>:<firing ms>` (Q11). Interval firings fall on multiples of the
//! interval since the epoch and cron firings on the expression's instants, so every process
//! running the same schedule computes the same firings and keys: while a firing's message is
//! live, the other processes' copies of that firing are duplicates and store nothing. For once
//! per firing even after the message was handled (a process whose clock is late, one that
//! fires after the first copy was acked), give the target queue a `dedup_window` of at least
//! the schedule's period.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use croner::Cron;
use tokio::task::JoinHandle;

use crate::clock::SharedClock;
use crate::dispatcher::Dispatcher;
use crate::error::{Error, Result};
use crate::message::{Message, MessageId};

/// Header set on messages published by a recurring schedule: the schedule's name.
pub const SCHEDULE_HEADER: &str = "courier-schedule";

/// Publishes messages at a time, after a delay, or on a recurring schedule, through a
/// [`Dispatcher`].
#[derive(Clone)]
pub struct Scheduler {
    dispatcher: Dispatcher,
    clock: SharedClock,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

/// When a recurring schedule fires.
#[derive(Clone, Debug)]
pub enum Every {
    /// At a fixed interval, first firing one interval from start.
    Interval(Duration),
    /// A cron expression (5 or 6 fields, seconds optional), in UTC.
    Cron(String),
}

/// A running recurring schedule; dropping it (or [`ScheduleHandle::cancel`]) stops it.
#[derive(Debug)]
pub struct ScheduleHandle {
    name: String,
    task: JoinHandle<()>,
}

impl ScheduleHandle {
    /// The schedule's name.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Every, Message};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.dispatcher().route("tick", "clock")?;
    /// let h = courier.scheduler().recurring("heartbeat", Every::Interval(Duration::from_secs(60)), || Message::new("tick", ""))?;
    /// assert_eq!(h.name(), "heartbeat");
    /// # Ok(())
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stop firing.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Every, Message};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.dispatcher().route("tick", "clock")?;
    /// let h = courier.scheduler().recurring("fast", Every::Interval(Duration::from_millis(20)), || Message::new("tick", ""))?;
    /// tokio::time::sleep(Duration::from_millis(100)).await;
    /// h.cancel();
    /// let fired = courier.queue().stats("clock").await?.published;
    /// assert!(fired >= 1);
    /// tokio::time::sleep(Duration::from_millis(100)).await;
    /// assert_eq!(courier.queue().stats("clock").await?.published, fired, "no firing after cancel");
    /// # Ok(())
    /// # }
    /// ```
    pub fn cancel(self) {}
}

impl Drop for ScheduleHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The longest recurring schedule name, in bytes (it is part of each firing's key).
pub const MAX_SCHEDULE_NAME_LEN: usize = 150;

/// The deduplication key of one firing of a recurring schedule.
pub fn firing_key(name: &str, firing_ms: u64) -> String {
    format!("courier-schedule:{name}:{firing_ms}")
}

/// Parse a cron expression (5 or 6 fields; seconds optional).
///
/// # Errors
/// [`crate::ErrorKind::InvalidInput`] naming the expression and the parser's complaint.
pub(crate) fn parse_cron(expr: &str) -> Result<Cron> {
    Cron::new(expr)
        .with_seconds_optional()
        .parse()
        .map_err(|e| Error::invalid(format!("invalid cron expression {expr:?}: {e}")))
}

/// The next firing strictly after `after_ms` (ms since the epoch), in UTC.
///
/// # Errors
/// When the expression never fires again.
pub(crate) fn next_cron_ms(cron: &Cron, after_ms: u64) -> Result<u64> {
    let after = Utc
        .timestamp_millis_opt(after_ms as i64)
        .single()
        .ok_or_else(|| Error::invalid("time out of range"))?;
    let next = cron
        .find_next_occurrence(&after, false)
        .map_err(|e| Error::invalid(format!("cron expression has no next firing: {e}")))?;
    Ok(next.timestamp_millis().max(0) as u64)
}

impl Scheduler {
    /// A scheduler publishing through `dispatcher`, reading time from `clock`.
    ///
    /// # Examples
    ///
    /// A [`crate::Courier`] has one ([`crate::Courier::scheduler`]); this builds one over your own
    /// dispatcher.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, Scheduler};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let scheduler = Scheduler::new(courier.dispatcher().clone(), courier.queue().clock());
    /// courier.dispatcher().route("reminder", "mail")?;
    /// scheduler.publish_after(Message::new("reminder", ""), Duration::from_secs(5)).await?;
    /// assert_eq!(courier.queue().stats("mail").await?.delayed, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(dispatcher: Dispatcher, clock: SharedClock) -> Self {
        Scheduler { dispatcher, clock }
    }

    /// Publish `msg` so it becomes deliverable at `at_ms` (ms since the epoch).
    ///
    /// # Errors
    /// As [`Dispatcher::dispatch`]: [`crate::ErrorKind::InvalidInput`] when the kind has no
    /// route, or the queue's publish errors.
    ///
    /// # Cancel safety
    /// As [`Dispatcher::dispatch`]: dropping the future may or may not have published.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.dispatcher().route("reminder", "mail")?;
    /// let now = courier.queue().clock().now_ms();
    /// courier.scheduler().publish_at(Message::new("reminder", "standup"), now + 300).await?;
    /// // Not deliverable before its time (Q3) ...
    /// assert!(courier.queue().receive_one("mail", Duration::ZERO).await?.is_none());
    /// // ... and delivered after it.
    /// let d = courier.queue().receive_one("mail", Duration::from_secs(2)).await?;
    /// assert!(d.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_at(&self, msg: Message, at_ms: u64) -> Result<MessageId> {
        self.dispatcher.dispatch(msg.with_not_before(at_ms)).await
    }

    /// Publish `msg` so it becomes deliverable after `delay`.
    ///
    /// # Errors
    /// As [`Dispatcher::dispatch`]: [`crate::ErrorKind::InvalidInput`] when the kind has no
    /// route, or the queue's publish errors.
    ///
    /// # Cancel safety
    /// As [`Dispatcher::dispatch`]: dropping the future may or may not have published.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.dispatcher().route("follow_up", "mail")?;
    /// courier.scheduler().publish_after(Message::new("follow_up", "ann"), Duration::from_millis(300)).await?;
    /// assert_eq!(courier.queue().stats("mail").await?.delayed, 1);
    /// let d = courier.queue().receive_one("mail", Duration::from_secs(2)).await?.expect("due by now");
    /// assert_eq!(d.message.kind, "follow_up");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_after(&self, msg: Message, delay: Duration) -> Result<MessageId> {
        self.dispatcher.dispatch(msg.with_delay(delay)).await
    }

    /// Publish a message made by `make` every time `every` fires, until the handle is dropped.
    ///
    /// An interval schedule fires at the multiples of the interval since the Unix epoch, the
    /// first one at least one interval after the start. Each firing's message gets the
    /// deduplication key `courier-schedule:<name>:<firing ms>` unless `make` set one, so two
    /// processes running this schedule enqueue each firing once (see the module docs for the
    /// window this needs after the message is acked).
    ///
    /// # Errors
    /// An invalid cron expression, a zero interval, or a name longer than
    /// [`MAX_SCHEDULE_NAME_LEN`] bytes (it is part of the key).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Every, Message};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.dispatcher().route("report", "reports")?;
    /// // Every day at 06:00 UTC; the handle keeps it running.
    /// let daily = courier
    ///     .scheduler()
    ///     .recurring("daily-report", Every::Cron("0 6 * * *".into()), || Message::new("report", ""))?;
    /// assert_eq!(daily.name(), "daily-report");
    /// // A malformed expression is refused.
    /// assert!(courier.scheduler().recurring("bad", Every::Cron("every day".into()), || Message::new("report", "")).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn recurring<F>(&self, name: &str, every: Every, make: F) -> Result<ScheduleHandle>
    where
        F: Fn() -> Message + Send + Sync + 'static,
    {
        enum When {
            Interval(Duration),
            Cron(Box<Cron>),
        }
        if name.len() > MAX_SCHEDULE_NAME_LEN {
            return Err(Error::invalid(format!(
                "schedule name is {} bytes; the limit is {MAX_SCHEDULE_NAME_LEN} (it is part of \
                 each firing's deduplication key)",
                name.len()
            )));
        }
        let when = match every {
            Every::Interval(d) if d.is_zero() => {
                return Err(Error::invalid("a recurring interval must be > 0"));
            }
            Every::Interval(d) => When::Interval(d),
            Every::Cron(expr) => When::Cron(Box::new(parse_cron(&expr)?)),
        };
        let dispatcher = self.dispatcher.clone();
        let clock = self.clock.clone();
        let make = Arc::new(make);
        let sched_name = name.to_string();
        let task = tokio::spawn(async move {
            let mut next_ms = clock.now_ms();
            if let When::Interval(d) = &when {
                // The grid point one interval ahead, minus one step (the loop adds it).
                let step = (d.as_millis() as u64).max(1);
                next_ms = (next_ms / step + 1) * step;
            }
            loop {
                next_ms = match &when {
                    When::Interval(d) => next_ms + (d.as_millis() as u64).max(1),
                    When::Cron(c) => match next_cron_ms(c, next_ms.max(clock.now_ms())) {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::warn!(schedule = %sched_name, error = %format_args!("{e:#}"), "courier schedule ends");
                            return;
                        }
                    },
                };
                let wait = crate::clock::until(clock.now_ms(), next_ms);
                tokio::time::sleep(wait).await;
                let mut msg = make().with_header(SCHEDULE_HEADER, sched_name.clone());
                if msg.dedup_key.is_none() {
                    msg = msg.with_dedup_key(firing_key(&sched_name, next_ms));
                }
                if let Err(e) = dispatcher.dispatch(msg).await {
                    tracing::warn!(schedule = %sched_name, error = %format_args!("{e:#}"), "courier schedule: publish failed");
                }
            }
        });
        Ok(ScheduleHandle {
            name: name.to_string(),
            task,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_parses_and_steps() {
        let c = parse_cron("*/5 * * * * *").expect("6 fields");
        let t0 = 1_700_000_000_000u64; // a multiple of 5 s? 1_700_000_000 % 5 == 0
        assert_eq!(next_cron_ms(&c, t0).expect("next"), t0 + 5_000);
        let c = parse_cron("0 * * * *").expect("5 fields");
        let n = next_cron_ms(&c, t0).expect("next");
        assert_eq!(n % 3_600_000, 0);
        assert!(n > t0 && n - t0 <= 3_600_000);
        assert!(parse_cron("not cron").is_err());
    }

    #[test]
    fn firing_keys_fit_the_key_limit() {
        let longest = "n".repeat(MAX_SCHEDULE_NAME_LEN);
        let key = firing_key(&longest, u64::MAX);
        assert!(
            crate::names::check_dedup_key(&key).is_ok(),
            "{} bytes",
            key.len()
        );
    }
}
