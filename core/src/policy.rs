//! Retry, backoff and per-queue configuration: decided once, here, for every backend
//! (DESIGN §3 Q5/Q6, §7).

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Exponential backoff with bounded jitter and an attempt limit.
///
/// The delay after failed attempt `n` (1-based) is `d = min(max_delay, base * factor^(n-1))`,
/// then drawn uniformly from `[d * (1 - jitter), d * (1 + jitter)]`. With `jitter = 0` the
/// delay is exactly `d`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Deliveries in total, the first included. `3` means: delivered at most 3 times.
    pub max_attempts: u32,
    /// Delay after the first failed attempt.
    #[serde(with = "duration_ms")]
    pub base: Duration,
    /// Growth per attempt (≥ 1).
    pub factor: f64,
    /// Upper bound of the computed delay (before jitter).
    #[serde(with = "duration_ms")]
    pub max_delay: Duration,
    /// Fraction in `[0, 1]`: the delay varies uniformly within ± this fraction.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_secs(1),
            factor: 2.0,
            max_delay: Duration::from_secs(300),
            jitter: 0.2,
        }
    }
}

/// What to do with a failed delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureAction {
    /// Make it ready again after this delay.
    Retry(Duration),
    /// Move it to the dead-letter store (or discard it when dead letters are off).
    Dead,
}

/// How a failure asks to be treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureMode {
    /// Retry with the policy's backoff.
    #[default]
    Backoff,
    /// Retry after exactly this delay (still bounded by `max_attempts`).
    RetryAfter(Duration),
    /// Do not retry.
    Permanent,
}

impl RetryPolicy {
    /// A policy with no jitter (exact, for tests and deterministic systems).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::RetryPolicy;
    /// use std::time::Duration;
    ///
    /// let p = RetryPolicy::exact(4, Duration::from_millis(100), 2.0, Duration::from_millis(300));
    /// let delays: Vec<_> = (1..=4).map(|a| p.base_delay(a)).collect();
    /// assert_eq!(delays, [100, 200, 300, 300].map(Duration::from_millis));
    /// # Ok(())
    /// # }
    /// ```
    pub fn exact(max_attempts: u32, base: Duration, factor: f64, max_delay: Duration) -> Self {
        RetryPolicy {
            max_attempts,
            base,
            factor,
            max_delay,
            jitter: 0.0,
        }
    }

    /// This policy with `max_attempts` deliveries in total (the first included).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{QueueConfig, RetryPolicy};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.queue().configure("ai", QueueConfig::default().with_retry(RetryPolicy::default().with_max_attempts(3)))?;
    /// assert_eq!(courier.queue().queue_config("ai").retry.max_attempts, 3);
    /// // 0 attempts is refused.
    /// assert!(RetryPolicy::default().with_max_attempts(0).validate().is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// This policy with `base` as the delay after the first failed attempt.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::RetryPolicy;
    /// use std::time::Duration;
    ///
    /// let p = RetryPolicy::default().with_base(Duration::from_millis(250)).with_jitter(0.0);
    /// assert_eq!(p.base_delay(1), Duration::from_millis(250));
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// This policy with `factor` as the growth per attempt.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::RetryPolicy;
    /// use std::time::Duration;
    ///
    /// let p = RetryPolicy::default().with_base(Duration::from_secs(1)).with_factor(3.0);
    /// assert_eq!(p.base_delay(3), Duration::from_secs(9));
    /// assert!(RetryPolicy::default().with_factor(0.5).validate().is_err(), "delays may not shrink");
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// This policy with `max_delay` as the bound of the computed delay.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::RetryPolicy;
    /// use std::time::Duration;
    ///
    /// let p = RetryPolicy::default().with_base(Duration::from_secs(1)).with_max_delay(Duration::from_secs(5));
    /// assert_eq!(p.base_delay(10), Duration::from_secs(5));
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// This policy with `jitter` (a fraction in `[0, 1]`) around each delay.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::RetryPolicy;
    /// use std::time::Duration;
    ///
    /// let p = RetryPolicy::default().with_base(Duration::from_secs(10)).with_jitter(0.1);
    /// assert_eq!(p.delay_bounds(1), (Duration::from_secs(9), Duration::from_secs(11)));
    /// assert!(RetryPolicy::default().with_jitter(1.5).validate().is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Check the policy.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] when `max_attempts` is 0, `factor < 1` or not finite,
    /// or `jitter` is outside `[0, 1]`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{ErrorKind, RetryPolicy};
    ///
    /// assert!(RetryPolicy::default().validate().is_ok());
    /// let e = RetryPolicy::default().with_max_attempts(0).validate().unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::InvalidInput);
    /// # Ok(())
    /// # }
    /// ```
    pub fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(Error::invalid(
                "retry.max_attempts must be at least 1 (it counts the first delivery)",
            ));
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(Error::invalid(format!(
                "retry.factor must be a finite number >= 1, got {}",
                self.factor
            )));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::invalid(format!(
                "retry.jitter must be within [0, 1], got {}",
                self.jitter
            )));
        }
        if self.base > self.max_delay {
            return Err(Error::invalid(format!(
                "retry.base ({:?}) exceeds retry.max_delay ({:?})",
                self.base, self.max_delay
            )));
        }
        Ok(())
    }

    /// The delay before jitter after failed attempt `attempt` (1-based).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::RetryPolicy;
    /// use std::time::Duration;
    ///
    /// let p = RetryPolicy::exact(5, Duration::from_secs(1), 2.0, Duration::from_secs(60));
    /// assert_eq!(p.base_delay(1), Duration::from_secs(1));
    /// assert_eq!(p.base_delay(4), Duration::from_secs(8));
    /// # Ok(())
    /// # }
    /// ```
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(1_000) as i32;
        let secs = self.base.as_secs_f64() * self.factor.powi(exp);
        let max = self.max_delay.as_secs_f64();
        if !secs.is_finite() || secs >= max {
            self.max_delay
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The delay after failed attempt `attempt`, with jitter drawn from `rng`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::RetryPolicy;
    ///
    /// let p = RetryPolicy::default();
    /// let (low, high) = p.delay_bounds(2);
    /// let d = p.delay(2, &mut rand::rng());
    /// assert!(low <= d && d <= high);
    /// # Ok(())
    /// # }
    /// ```
    pub fn delay<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let d = self.base_delay(attempt);
        if self.jitter <= 0.0 || d.is_zero() {
            return d;
        }
        let spread = rng.random_range(-self.jitter..=self.jitter);
        Duration::from_secs_f64((d.as_secs_f64() * (1.0 + spread)).max(0.0))
    }

    /// The jitter range of the delay after attempt `attempt`: `(low, high)`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::RetryPolicy;
    /// use std::time::Duration;
    ///
    /// let p = RetryPolicy::exact(5, Duration::from_secs(2), 2.0, Duration::from_secs(60));
    /// assert_eq!(p.delay_bounds(1), (Duration::from_secs(2), Duration::from_secs(2)), "no jitter");
    /// let (low, high) = p.with_jitter(0.5).delay_bounds(1);
    /// assert_eq!((low, high), (Duration::from_secs(1), Duration::from_secs(3)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn delay_bounds(&self, attempt: u32) -> (Duration, Duration) {
        let d = self.base_delay(attempt).as_secs_f64();
        (
            Duration::from_secs_f64(d * (1.0 - self.jitter)),
            Duration::from_secs_f64(d * (1.0 + self.jitter)),
        )
    }

    /// The jitter range of every delay this policy can produce, precomputed for code that
    /// cannot call [`RetryPolicy::delay_bounds`] itself (a server-side script).
    ///
    /// Entry `i` is `delay_bounds(i + 1)`. The table stops at the first attempt `n` from which
    /// [`RetryPolicy::base_delay`] no longer changes (it reached `max_delay`, or `factor == 1`),
    /// and at 1001 at most (`base_delay` caps the exponent at 1000, so attempt 1001 and every
    /// later one have the same delay). It is never empty.
    ///
    /// Contract: for every attempt `a`, `delay_bounds(a) == table[min(max(a, 1), len) - 1]`,
    /// that is, beyond the table the last entry applies. This holds exactly, by construction:
    /// `n` is found by comparing the computed delays themselves, not by predicting when the
    /// formula saturates, so float rounding cannot break it.
    ///
    /// A script then only picks a value uniformly within the entry's `(low, high)`; the formula
    /// stays here, in one place.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::RetryPolicy;
    /// use std::time::Duration;
    ///
    /// let p = RetryPolicy::exact(9, Duration::from_secs(1), 2.0, Duration::from_secs(4));
    /// let t = p.delay_bounds_table();
    /// // 1 s, 2 s, 4 s, then the cap: beyond the table the last entry applies.
    /// assert_eq!(t.len(), 3);
    /// assert_eq!(t[2], p.delay_bounds(50));
    /// # Ok(())
    /// # }
    /// ```
    pub fn delay_bounds_table(&self) -> Vec<(Duration, Duration)> {
        /// `base_delay` is the same for every attempt from this one on.
        const LAST: u32 = 1_001;
        let delays: Vec<Duration> = (1..=LAST).map(|a| self.base_delay(a)).collect();
        let last = delays[delays.len() - 1];
        // The first attempt from which the delay stays `last` up to LAST (and so for ever).
        let n = delays.iter().rposition(|d| *d != last).map_or(1, |i| i + 2);
        (1..=n as u32).map(|a| self.delay_bounds(a)).collect()
    }

    /// The effective attempt limit for a message with an optional override.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::RetryPolicy;
    ///
    /// let p = RetryPolicy::default().with_max_attempts(5);
    /// assert_eq!(p.limit(None), 5);
    /// assert_eq!(p.limit(Some(2)), 2, "a message's own max_attempts wins");
    /// # Ok(())
    /// # }
    /// ```
    pub fn limit(&self, message_override: Option<u32>) -> u32 {
        message_override.unwrap_or(self.max_attempts).max(1)
    }

    /// Decide what happens after delivery number `attempt` failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{FailureAction, FailureMode, RetryPolicy};
    /// use std::time::Duration;
    ///
    /// let p = RetryPolicy::exact(3, Duration::from_secs(1), 2.0, Duration::from_secs(60));
    /// let rng = &mut rand::rng();
    /// assert_eq!(p.decide(1, None, FailureMode::Backoff, rng), FailureAction::Retry(Duration::from_secs(1)));
    /// assert_eq!(p.decide(3, None, FailureMode::Backoff, rng), FailureAction::Dead, "out of attempts");
    /// assert_eq!(p.decide(1, None, FailureMode::Permanent, rng), FailureAction::Dead);
    /// # Ok(())
    /// # }
    /// ```
    pub fn decide<R: Rng + ?Sized>(
        &self,
        attempt: u32,
        message_override: Option<u32>,
        mode: FailureMode,
        rng: &mut R,
    ) -> FailureAction {
        if mode == FailureMode::Permanent || attempt >= self.limit(message_override) {
            return FailureAction::Dead;
        }
        match mode {
            FailureMode::RetryAfter(d) => FailureAction::Retry(d),
            _ => FailureAction::Retry(self.delay(attempt, rng)),
        }
    }
}

/// Per-queue configuration (DESIGN §3).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct QueueConfig {
    /// How long a received message stays invisible to others. Default 30 s.
    #[serde(with = "duration_ms")]
    pub visibility_timeout: Duration,
    /// Retry and backoff.
    pub retry: RetryPolicy,
    /// Keep messages that ran out of attempts in the dead-letter store (default `true`).
    /// When `false` they are discarded and counted as such.
    pub dead_letter: bool,
    /// Largest accepted payload in bytes. Default 1 MiB.
    pub max_payload: usize,
    /// How long a deduplication key stays taken after its message was accepted, even once
    /// the message is acked or dead (Q11). `None` (the default): only while the message is
    /// live (ready, delayed or in flight).
    #[serde(with = "opt_duration_ms")]
    pub dedup_window: Option<Duration>,
    /// How long a worker lets a handler run before it cancels it and counts a failed attempt
    /// ("handler timed out after …", then the retry policy as for any failure). `None` (the
    /// default): no limit, and the worker extends the lease for as long as the handler runs.
    /// A message may set its own ([`crate::Message::with_handler_timeout`]), which wins.
    #[serde(with = "opt_duration_ms")]
    pub handler_timeout: Option<Duration>,
    /// The time to live given at publish to a message that sets no expiry of its own
    /// ([`crate::Message::with_ttl`]). `None` (the default): messages do not expire.
    #[serde(with = "opt_duration_ms")]
    pub message_ttl: Option<Duration>,
    /// Discard expired messages instead of keeping them in dead letters (reason `"expired"`).
    /// Either way they are counted in `QueueStats::expired`. Default `false`; with
    /// `dead_letter` off, expired messages are discarded too.
    pub drop_expired: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            visibility_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            dead_letter: true,
            max_payload: 1024 * 1024,
            dedup_window: None,
            handler_timeout: None,
            message_ttl: None,
            drop_expired: false,
        }
    }
}

impl QueueConfig {
    /// This configuration with `visibility_timeout` as the lease length.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{QueueConfig, QueueExt, Message};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.configure("ai", QueueConfig::default().with_visibility_timeout(Duration::from_millis(50)))?;
    /// q.publish("ai", Message::new("caption", "")).await?;
    /// let first = q.receive_one("ai", Duration::from_secs(1)).await?.expect("a delivery");
    /// // Not settled within the lease: delivered again, attempt 2 (Q4).
    /// let again = q.receive_one("ai", Duration::from_secs(2)).await?.expect("redelivered");
    /// assert_eq!((first.message.attempt, again.message.attempt), (1, 2));
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_visibility_timeout(mut self, visibility_timeout: Duration) -> Self {
        self.visibility_timeout = visibility_timeout;
        self
    }

    /// This configuration with `retry` as the retry policy.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{QueueConfig, RetryPolicy};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let retry = RetryPolicy::exact(3, Duration::from_millis(100), 2.0, Duration::from_secs(1));
    /// courier.queue().configure("ai", QueueConfig::default().with_retry(retry))?;
    /// assert_eq!(courier.queue().queue_config("ai").retry, retry);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// This configuration keeping (`true`) or discarding (`false`) messages out of attempts.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueConfig, QueueExt, RetryPolicy};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.configure("metrics", QueueConfig::default().with_dead_letter(false).with_retry(RetryPolicy::default().with_max_attempts(1)))?;
    /// q.publish("metrics", Message::new("sample", "")).await?;
    /// let d = q.receive_one("metrics", Duration::from_secs(1)).await?.expect("a delivery");
    /// q.nack("metrics", &d, "bad sample").await?;
    /// let s = q.stats("metrics").await?;
    /// assert_eq!((s.dead, s.dead_lettered), (0, 1), "discarded and counted");
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_dead_letter(mut self, dead_letter: bool) -> Self {
        self.dead_letter = dead_letter;
        self
    }

    /// This configuration with `max_payload` as the largest accepted payload, in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{ErrorKind, Message, QueueConfig, QueueExt};
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.configure("small", QueueConfig::default().with_max_payload(4))?;
    /// let e = q.publish("small", Message::new("k", "too long")).await.unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::PayloadTooLarge);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_max_payload(mut self, max_payload: usize) -> Self {
        self.max_payload = max_payload;
        self
    }

    /// This configuration with `window` as the deduplication window (Q11): a key stays taken
    /// for `window` after its message was accepted, even once that message is acked or dead.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueConfig, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.configure("billing", QueueConfig::default().with_dedup_window(Duration::from_secs(600)))?;
    /// let first = q.publish("billing", Message::new("charge", "").with_dedup_key("o-17")).await?;
    /// let d = q.receive_one("billing", Duration::from_secs(1)).await?.expect("a delivery");
    /// q.ack("billing", &d.lease).await?;
    /// // Handled, but the key stays taken for the window (Q11).
    /// let again = q.publish("billing", Message::new("charge", "").with_dedup_key("o-17")).await?;
    /// assert_eq!(again, first);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = Some(window);
        self
    }

    /// This configuration with `timeout` as the longest a worker lets a handler run (see
    /// [`QueueConfig::handler_timeout`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::QueueConfig;
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// courier.queue().configure("ai", QueueConfig::default().with_handler_timeout(Duration::from_secs(30)))?;
    /// assert_eq!(courier.queue().queue_config("ai").handler_timeout, Some(Duration::from_secs(30)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = Some(timeout);
        self
    }

    /// This configuration giving messages without an expiry of their own `ttl` to live (see
    /// [`QueueConfig::message_ttl`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueConfig, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.configure("signaling", QueueConfig::default().with_message_ttl(Duration::from_millis(20)))?;
    /// q.publish("signaling", Message::new("ice", "")).await?;
    /// tokio::time::sleep(Duration::from_millis(40)).await;
    /// assert!(q.receive_one("signaling", Duration::ZERO).await?.is_none());
    /// assert_eq!(q.stats("signaling").await?.expired, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_message_ttl(mut self, ttl: Duration) -> Self {
        self.message_ttl = Some(ttl);
        self
    }

    /// This configuration discarding (`true`) or dead-lettering (`false`, the default) expired
    /// messages.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueConfig, QueueExt};
    /// use std::time::Duration;
    ///
    /// let courier = courier::connect("memory://").await?;
    /// let q = courier.queue();
    /// q.configure("signaling", QueueConfig::default().with_drop_expired(true))?;
    /// q.publish("signaling", Message::new("ice", "").with_ttl(Duration::from_millis(20))).await?;
    /// tokio::time::sleep(Duration::from_millis(40)).await;
    /// assert!(q.receive_one("signaling", Duration::ZERO).await?.is_none());
    /// let s = q.stats("signaling").await?;
    /// assert_eq!((s.expired, s.dead), (1, 0), "counted, not kept");
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_drop_expired(mut self, drop: bool) -> Self {
        self.drop_expired = drop;
        self
    }

    /// Whether an expired message goes to dead letters (else it is discarded).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::QueueConfig;
    ///
    /// assert!(QueueConfig::default().keeps_expired());
    /// assert!(!QueueConfig::default().with_drop_expired(true).keeps_expired());
    /// assert!(!QueueConfig::default().with_dead_letter(false).keeps_expired());
    /// # Ok(())
    /// # }
    /// ```
    pub fn keeps_expired(&self) -> bool {
        self.dead_letter && !self.drop_expired
    }

    /// The deduplication window in whole milliseconds (0 = none: keys are held while live).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::QueueConfig;
    /// use std::time::Duration;
    ///
    /// assert_eq!(QueueConfig::default().dedup_window_ms(), 0);
    /// assert_eq!(QueueConfig::default().with_dedup_window(Duration::from_secs(2)).dedup_window_ms(), 2_000);
    /// # Ok(())
    /// # }
    /// ```
    pub fn dedup_window_ms(&self) -> u64 {
        self.dedup_window
            .map_or(0, |w| w.as_millis().min(u64::MAX as u128) as u64)
    }

    /// Check the configuration.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for a zero visibility timeout, a zero `max_payload`,
    /// a deduplication window or handler timeout under 1 ms, or a bad retry policy.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::QueueConfig;
    /// use std::time::Duration;
    ///
    /// assert!(QueueConfig::default().validate().is_ok());
    /// assert!(QueueConfig::default().with_visibility_timeout(Duration::ZERO).validate().is_err());
    /// // `configure` validates too.
    /// let courier = courier::connect("memory://").await?;
    /// assert!(courier.queue().configure("q", QueueConfig::default().with_max_payload(0)).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn validate(&self) -> Result<()> {
        if self
            .handler_timeout
            .is_some_and(|t| t < Duration::from_millis(1))
        {
            return Err(Error::invalid(
                "handler_timeout must be at least 1 ms (leave it unset for no limit)",
            ));
        }
        if self
            .message_ttl
            .is_some_and(|t| t < Duration::from_millis(1))
        {
            return Err(Error::invalid(
                "message_ttl must be at least 1 ms (leave it unset for no expiry)",
            ));
        }
        if self
            .dedup_window
            .is_some_and(|w| w < Duration::from_millis(1))
        {
            return Err(Error::invalid(
                "dedup_window must be at least 1 ms (leave it unset to hold keys while live)",
            ));
        }
        if self.visibility_timeout < Duration::from_millis(1) {
            return Err(Error::invalid("visibility_timeout must be at least 1 ms"));
        }
        if self.max_payload == 0 {
            return Err(Error::invalid("max_payload must be at least 1 byte"));
        }
        self.retry.validate()
    }

    /// Check a message against this configuration before it is sent.
    ///
    /// # Errors
    /// [`crate::ErrorKind::PayloadTooLarge`] or [`crate::ErrorKind::InvalidInput`] (a
    /// `max_attempts` override of 0).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{ErrorKind, Message, QueueConfig};
    ///
    /// let c = QueueConfig::default().with_max_payload(3);
    /// assert!(c.check_message(&Message::new("k", "abc")).is_ok());
    /// assert_eq!(c.check_message(&Message::new("k", "abcd")).unwrap_err().kind(), ErrorKind::PayloadTooLarge);
    /// # Ok(())
    /// # }
    /// ```
    pub fn check_message(&self, msg: &crate::Message) -> Result<()> {
        if msg.payload.len() > self.max_payload {
            return Err(Error::new(
                crate::ErrorKind::PayloadTooLarge,
                format!(
                    "payload of {} bytes exceeds max_payload {} (kind {:?})",
                    msg.payload.len(),
                    self.max_payload,
                    msg.kind
                ),
            ));
        }
        if msg.max_attempts == Some(0) {
            return Err(Error::invalid("max_attempts override must be at least 1"));
        }
        if let Some(key) = &msg.dedup_key {
            crate::names::check_dedup_key(key)?;
        }
        if msg.ttl.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid("ttl must be at least 1 ms"));
        }
        if let Some(v) = msg.header(crate::message::headers::HANDLER_TIMEOUT_MS)
            && !v.parse::<u64>().is_ok_and(|ms| ms >= 1)
        {
            return Err(Error::invalid(format!(
                "header {} must be a whole number of milliseconds >= 1, not {v:?}",
                crate::message::headers::HANDLER_TIMEOUT_MS
            )));
        }
        Ok(())
    }

    /// Check a prepared message's expiry at publish time `now`: it is still ahead, and it
    /// comes after the message's delay ends (a message that could only expire is refused).
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] naming both instants.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// use courier::{Message, QueueConfig};
    ///
    /// let m = Message::new("k", "").with_expires_at(2_000);
    /// assert!(QueueConfig::check_expiry(&m, 1_000).is_ok());
    /// assert!(QueueConfig::check_expiry(&m, 2_000).is_err(), "already expired at publish");
    /// # Ok(())
    /// # }
    /// ```
    pub fn check_expiry(msg: &crate::Message, now: u64) -> Result<()> {
        let Some(at) = msg.expires_at else {
            return Ok(());
        };
        if at <= now {
            return Err(Error::invalid(format!(
                "message expires at {at} ms, not after the publish time {now} ms"
            )));
        }
        if let Some(due) = msg.not_before
            && due >= at
        {
            return Err(Error::invalid(format!(
                "message delay ends at {due} ms, at or after its expiry at {at} ms: it could \
                 never be delivered"
            )));
        }
        Ok(())
    }
}

/// A queue's rate limit (Q15): at most `max` deliveries in each window of `per`, counted by
/// the backend across every worker and process. Windows are aligned to the epoch
/// (`[k·per, (k+1)·per)` in ms), so every process agrees on which window "now" is in.
///
/// One receive gets at most a quarter of a window's budget (at least one delivery,
/// [`RateLimit::grant_cap`]), so a consumer asking for a large batch cannot take a whole
/// window while others wait.
///
/// # Examples
///
/// ```
/// use courier::RateLimit;
/// use std::time::Duration;
///
/// let limit = RateLimit::per_second(200);
/// assert_eq!(limit, RateLimit::new(200, Duration::from_secs(1)));
/// assert_eq!(limit.grant_cap(), 50);
/// assert!(RateLimit::new(0, Duration::from_secs(1)).validate().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimit {
    /// Deliveries allowed per window (at least 1).
    pub max: u32,
    /// The window's length (1 ms to 1 day).
    #[serde(with = "duration_ms", rename = "per_ms")]
    pub per: Duration,
}

impl RateLimit {
    /// At most `max` deliveries per `per`.
    pub fn new(max: u32, per: Duration) -> Self {
        RateLimit { max, per }
    }

    /// At most `max` deliveries per second.
    pub fn per_second(max: u32) -> Self {
        RateLimit::new(max, Duration::from_secs(1))
    }

    /// The window's length in ms (at least 1).
    pub fn per_ms(&self) -> u64 {
        (self.per.as_millis() as u64).max(1)
    }

    /// The start (ms since the epoch) of the window `now` is in.
    pub fn window_start(&self, now: u64) -> u64 {
        now - now % self.per_ms()
    }

    /// The most one receive may take from a window: a quarter of `max`, rounded up.
    pub fn grant_cap(&self) -> u32 {
        self.max.div_ceil(4).max(1)
    }

    /// Check the bounds.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] when `max` is 0 or `per` is outside 1 ms ..= 1 day.
    pub fn validate(&self) -> Result<()> {
        if self.max == 0 {
            return Err(Error::invalid("rate limit: max must be at least 1"));
        }
        if self.per < Duration::from_millis(1) || self.per > Duration::from_secs(86_400) {
            return Err(Error::invalid(format!(
                "rate limit: the window must be between 1 ms and 1 day, got {:?}",
                self.per
            )));
        }
        Ok(())
    }
}

/// Serde helper: an optional `Duration` as whole milliseconds (absent or null = `None`).
pub mod opt_duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serialise as milliseconds, or null.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    /// Deserialise from milliseconds or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// Serde helper: a `Duration` as whole milliseconds.
pub mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serialise as milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    /// Deserialise from milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    /// Each builder sets its own field and nothing else (found by `cargo mutants` on this
    /// file: the conformance suite builds policies with `exact` only).
    #[test]
    fn builders_set_their_field() {
        let ms = Duration::from_millis;
        let p = RetryPolicy::default()
            .with_max_attempts(7)
            .with_base(ms(30))
            .with_factor(3.5)
            .with_max_delay(ms(9_000))
            .with_jitter(0.25);
        assert_eq!(
            (p.max_attempts, p.base, p.factor, p.max_delay, p.jitter),
            (7, ms(30), 3.5, ms(9_000), 0.25)
        );
        let c = QueueConfig::default()
            .with_visibility_timeout(ms(1_234))
            .with_retry(p)
            .with_dead_letter(false)
            .with_max_payload(77);
        assert_eq!(
            (c.visibility_timeout, c.retry, c.dead_letter, c.max_payload),
            (ms(1_234), p, false, 77)
        );
    }

    /// The limits are inclusive where the contract says "at least" / "at most".
    #[test]
    fn boundaries_are_accepted() {
        let ms = Duration::from_millis;
        let p = RetryPolicy::exact(1, ms(500), 1.0, ms(500));
        assert!(p.validate().is_ok(), "base == max_delay is valid");
        let c = QueueConfig::default().with_visibility_timeout(ms(1));
        assert!(c.validate().is_ok(), "a 1 ms visibility timeout is valid");
        assert!(c.with_max_payload(1).validate().is_ok(), "1 byte is valid");
    }

    /// The bounds are `d × (1 ∓ jitter)` of the capped delay.
    #[test]
    fn delay_bounds_are_the_jitter_range() {
        let p = RetryPolicy::exact(5, Duration::from_millis(400), 2.0, Duration::from_secs(1))
            .with_jitter(0.25);
        let ms = Duration::from_millis;
        assert_eq!(p.delay_bounds(1), (ms(300), ms(500)));
        assert_eq!(p.delay_bounds(2), (ms(600), ms(1_000)));
        // Capped at max_delay before the jitter.
        assert_eq!(p.delay_bounds(3), (ms(750), ms(1_250)));
    }

    fn exact() -> RetryPolicy {
        RetryPolicy::exact(
            5,
            Duration::from_millis(100),
            2.0,
            Duration::from_millis(1000),
        )
    }

    #[test]
    fn exact_delays_grow_and_cap() {
        let p = exact();
        let mut rng = SmallRng::seed_from_u64(1);
        let got: Vec<u64> = (1..=6)
            .map(|a| p.delay(a, &mut rng).as_millis() as u64)
            .collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn huge_attempts_do_not_overflow() {
        let p = exact();
        assert_eq!(p.base_delay(u32::MAX), Duration::from_millis(1000));
    }

    #[test]
    fn seeded_jitter_stays_in_bounds_and_varies() {
        let p = RetryPolicy {
            jitter: 0.25,
            ..exact()
        };
        let mut rng = SmallRng::seed_from_u64(42);
        for attempt in 1..=5 {
            let (lo, hi) = p.delay_bounds(attempt);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..500 {
                let d = p.delay(attempt, &mut rng);
                assert!(
                    d >= lo && d <= hi,
                    "attempt {attempt}: {d:?} not in {lo:?}..{hi:?}"
                );
                seen.insert(d.as_micros());
            }
            assert!(seen.len() > 50, "jitter should vary");
        }
        // the same seed gives the same sequence
        let a: Vec<_> = {
            let mut r = SmallRng::seed_from_u64(7);
            (1..5).map(|n| p.delay(n, &mut r)).collect()
        };
        let b: Vec<_> = {
            let mut r = SmallRng::seed_from_u64(7);
            (1..5).map(|n| p.delay(n, &mut r)).collect()
        };
        assert_eq!(a, b);
    }

    /// The table lookup (the last entry beyond the table) gives `delay_bounds` exactly.
    #[test]
    fn delay_bounds_table_matches_delay_bounds() {
        let ms = Duration::from_millis;
        let policies = [
            // (policy, expected table length)
            (RetryPolicy::default(), Some(10)),
            (exact(), Some(5)),
            (RetryPolicy::exact(5, ms(100), 1.0, ms(1000)), Some(1)),
            (RetryPolicy::exact(5, ms(1000), 3.0, ms(1000)), Some(1)),
            (
                RetryPolicy::exact(5, ms(1), 10.0, Duration::from_secs(300)),
                Some(7),
            ),
            (
                RetryPolicy {
                    jitter: 0.25,
                    ..RetryPolicy::exact(5, ms(33), 1.1, Duration::from_secs(300))
                },
                None,
            ),
            (
                RetryPolicy {
                    jitter: 1.0,
                    ..RetryPolicy::exact(5, Duration::from_micros(1500), 1.5, ms(7001))
                },
                None,
            ),
            // Never reaches max_delay within 1000 doublings of the exponent: capped.
            // Steps below 1 ns: the delay stalls for a while, then moves on again.
            (
                RetryPolicy::exact(5, ms(1), 1.000_000_1, Duration::from_secs(3600)),
                None,
            ),
            (
                RetryPolicy::exact(5, Duration::from_nanos(10), 1.001, Duration::from_secs(1)),
                None,
            ),
            (
                RetryPolicy::exact(5, ms(1), 1.01, Duration::from_secs(3600)),
                Some(1001),
            ),
            (
                RetryPolicy::exact(5, Duration::ZERO, 2.0, Duration::ZERO),
                Some(1),
            ),
        ];
        for (p, len) in policies {
            let table = p.delay_bounds_table();
            assert!(!table.is_empty(), "{p:?}");
            if let Some(len) = len {
                assert_eq!(table.len(), len, "{p:?}");
            }
            if p.base == Duration::from_nanos(10) {
                // A plateau inside the table: stopping at the first repeat would be wrong.
                assert!(
                    table[0] == table[1] && table.len() > 100,
                    "{p:?}: {}",
                    table.len()
                );
            }
            for (i, b) in table.iter().enumerate() {
                assert_eq!(*b, p.delay_bounds(i as u32 + 1), "{p:?} entry {i}");
            }
            let lookup = |a: u32| table[(a.max(1) as usize).min(table.len()) - 1];
            for a in (0..=2000).chain([10_000, u32::MAX]) {
                assert_eq!(lookup(a), p.delay_bounds(a), "{p:?} attempt {a}");
            }
        }
    }

    #[test]
    fn decide_counts_every_delivery() {
        let p = RetryPolicy::exact(3, Duration::from_millis(10), 2.0, Duration::from_secs(1));
        let mut rng = SmallRng::seed_from_u64(0);
        let m = FailureMode::Backoff;
        assert_eq!(
            p.decide(1, None, m, &mut rng),
            FailureAction::Retry(Duration::from_millis(10))
        );
        assert_eq!(
            p.decide(2, None, m, &mut rng),
            FailureAction::Retry(Duration::from_millis(20))
        );
        assert_eq!(p.decide(3, None, m, &mut rng), FailureAction::Dead);
        assert_eq!(p.decide(1, Some(1), m, &mut rng), FailureAction::Dead);
        assert_eq!(
            p.decide(1, None, FailureMode::Permanent, &mut rng),
            FailureAction::Dead
        );
        assert_eq!(
            p.decide(
                1,
                None,
                FailureMode::RetryAfter(Duration::from_secs(9)),
                &mut rng
            ),
            FailureAction::Retry(Duration::from_secs(9))
        );
        assert_eq!(
            p.decide(
                3,
                None,
                FailureMode::RetryAfter(Duration::from_secs(9)),
                &mut rng
            ),
            FailureAction::Dead
        );
    }

    #[test]
    fn validation_rejects_bad_config() {
        let mut c = QueueConfig::default();
        c.validate().expect("default is valid");
        c.retry.max_attempts = 0;
        assert!(c.validate().is_err());
        let mut c = QueueConfig::default();
        c.retry.jitter = 1.5;
        assert!(c.validate().is_err());
        let mut c = QueueConfig::default();
        c.retry.factor = 0.5;
        assert!(c.validate().is_err());
        let c = QueueConfig {
            visibility_timeout: Duration::ZERO,
            ..QueueConfig::default()
        };
        assert!(c.validate().is_err());
        let mut c = QueueConfig::default();
        c.retry.base = Duration::from_secs(10);
        c.retry.max_delay = Duration::from_secs(1);
        assert!(c.validate().is_err());
    }

    #[test]
    fn config_from_json_uses_defaults() {
        let c: QueueConfig =
            serde_json::from_str(r#"{"visibility_timeout": 200, "retry": {"max_attempts": 2}}"#)
                .expect("json");
        assert_eq!(c.visibility_timeout, Duration::from_millis(200));
        assert_eq!(c.retry.max_attempts, 2);
        assert_eq!(c.retry.base, Duration::from_secs(1));
        assert!(c.dead_letter);
    }
}
