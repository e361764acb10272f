//! The adaptive concurrency rule (W): how a worker built with
//! [`WorkerBuilder::adaptive_concurrency`](crate::WorkerBuilder::adaptive_concurrency) moves its
//! limit between `min` and `max`.
//!
//! The rule is AIMD on handler latency, in the style of TCP Vegas and Netflix's
//! concurrency-limits: it looks at windows of completed handlers and compares each window's
//! mean latency with the best mean seen (the baseline, the handler's latency without
//! contention).
//!
//! - **Window.** A window closes after `max(limit, MIN_WINDOW)` completions (about one handler
//!   latency once the limit is above [`MIN_WINDOW`]). Its sample is the number of completions,
//!   the number of failures (an error, a panic or a timeout), the mean latency of the handlers
//!   that succeeded, whether the limit was reached (every slot busy) and whether work was
//!   waiting then (deliveries in the buffer, or a receive that came back full).
//! - **Errors rising → lower.** If the window's failure ratio exceeds the smoothed ratio of
//!   past windows (an exponential average with weight [`ERROR_SMOOTHING`]) by more than
//!   [`ERROR_RISE`], the limit is multiplied by [`BACKOFF`] (rounded down, never below `min`).
//!   A steady failure rate is absorbed into the average; a jump lowers the limit.
//! - **Latency rising → lower.** If the mean latency exceeds
//!   `baseline × LATENCY_TOLERANCE + LATENCY_FLOOR`, the limit is multiplied by [`BACKOFF`]
//!   (rounded down, never below `min`). Already at `min`, the handler got slower for a reason
//!   fewer handlers cannot fix: the baseline is re-learnt from this window instead.
//! - **Fast and busy → raise.** Otherwise the baseline becomes `min(baseline, mean)` and, if
//!   the limit was reached while work was waiting, the limit grows by one (never above `max`).
//! - Anything else holds the limit. The limit starts at `min`.
//!
//! With a tolerance of 2 the limit settles where contention has doubled a handler's latency,
//! which for a resource that slows down with load is near the concurrency of best throughput,
//! then saw-tooths between about 90 % and 100 % of it. The rule is a pure function of the
//! samples it is fed: the same samples give the same limits.

use crate::error::{Error, Result};

/// Completions a window needs at least, whatever the limit.
pub const MIN_WINDOW: u32 = 8;
/// The latency a window may reach, as a multiple of the baseline, before the limit is lowered.
pub const LATENCY_TOLERANCE: f64 = 2.0;
/// Latency added to the threshold, in microseconds (1 ms): below it, differences are noise of
/// the scheduler and the clock, not contention.
pub const LATENCY_FLOOR_US: f64 = 1_000.0;
/// The factor applied to the limit when it is lowered.
pub const BACKOFF: f64 = 0.9;
/// How far a window's failure ratio may exceed the smoothed ratio before the limit is lowered.
pub const ERROR_RISE: f64 = 0.1;
/// The weight of a new window in the smoothed failure ratio.
pub const ERROR_SMOOTHING: f64 = 0.1;

/// What a window of completed handlers saw.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Window {
    /// Handlers completed.
    pub(crate) completions: u32,
    /// Of those, failures (an error, a panic or a timeout).
    pub(crate) failures: u32,
    /// Mean latency of the handlers that succeeded, in microseconds (`None` if none did).
    pub(crate) mean_latency_us: Option<f64>,
    /// Every slot was busy at some point of the window.
    pub(crate) saturated: bool,
    /// Work was waiting while every slot was busy (or a receive came back full).
    pub(crate) backlog: bool,
}

/// What the rule decided for a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The limit stays.
    Hold,
    /// The limit grew to this.
    Raise(usize),
    /// The limit fell to this.
    Lower(usize),
}

/// The state of the rule: the limit, its bounds, the latency baseline and the smoothed
/// failure ratio.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Limiter {
    min: usize,
    max: usize,
    limit: usize,
    baseline_us: Option<f64>,
    error_ratio: f64,
}

impl Limiter {
    /// A limiter between `min` and `max`, starting at `min`.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] when `min` is 0 or above `max`.
    pub(crate) fn new(min: usize, max: usize) -> Result<Self> {
        if min == 0 {
            return Err(Error::invalid(
                "adaptive concurrency needs a minimum of at least 1",
            ));
        }
        if min > max {
            return Err(Error::invalid(format!(
                "adaptive concurrency minimum {min} is above its maximum {max}"
            )));
        }
        Ok(Limiter {
            min,
            max,
            limit: min,
            baseline_us: None,
            error_ratio: 0.0,
        })
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The lowest limit allowed.
    pub(crate) fn min(&self) -> usize {
        self.min
    }

    /// The highest limit allowed.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// The baseline latency in microseconds, once a window has measured one.
    pub(crate) fn baseline_us(&self) -> Option<f64> {
        self.baseline_us
    }

    /// Completions the next window needs.
    pub(crate) fn window_size(&self) -> u32 {
        u32::try_from(self.limit)
            .unwrap_or(u32::MAX)
            .max(MIN_WINDOW)
    }

    fn lowered(&self) -> usize {
        // The product of a usize and 0.9 is below it and not negative: the cast only drops
        // the fraction.
        ((self.limit as f64 * BACKOFF).floor() as usize).max(self.min)
    }

    /// Apply the rule to one window.
    pub(crate) fn decide(&mut self, w: &Window) -> Decision {
        if w.completions == 0 {
            return Decision::Hold;
        }
        let ratio = f64::from(w.failures.min(w.completions)) / f64::from(w.completions);
        let errors_rose = ratio > self.error_ratio + ERROR_RISE;
        self.error_ratio += ERROR_SMOOTHING * (ratio - self.error_ratio);
        if errors_rose {
            return self.lower();
        }
        let Some(mean) = w.mean_latency_us else {
            return Decision::Hold;
        };
        let Some(baseline) = self.baseline_us else {
            self.baseline_us = Some(mean);
            return self.raise_if_busy(w);
        };
        if mean > baseline * LATENCY_TOLERANCE + LATENCY_FLOOR_US {
            if self.limit == self.min {
                self.baseline_us = Some(mean);
                return Decision::Hold;
            }
            return self.lower();
        }
        self.baseline_us = Some(baseline.min(mean));
        self.raise_if_busy(w)
    }

    fn lower(&mut self) -> Decision {
        let to = self.lowered();
        if to == self.limit {
            return Decision::Hold;
        }
        self.limit = to;
        Decision::Lower(to)
    }

    fn raise_if_busy(&mut self, w: &Window) -> Decision {
        if w.saturated && w.backlog && self.limit < self.max {
            self.limit += 1;
            Decision::Raise(self.limit)
        } else {
            Decision::Hold
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(latency_us: f64) -> Window {
        Window {
            completions: 10,
            failures: 0,
            mean_latency_us: Some(latency_us),
            saturated: true,
            backlog: true,
        }
    }

    #[test]
    fn invalid_bounds_are_refused() {
        let kind = |r: Result<Limiter>| r.err().map(|e| e.kind());
        assert_eq!(
            kind(Limiter::new(0, 4)),
            Some(crate::ErrorKind::InvalidInput)
        );
        assert_eq!(
            kind(Limiter::new(5, 4)),
            Some(crate::ErrorKind::InvalidInput)
        );
        assert_eq!(Limiter::new(3, 3).map(|l| l.limit()).ok(), Some(3));
    }

    #[test]
    fn starts_at_min_and_grows_by_one_while_fast_and_busy() {
        let mut l = Limiter::new(2, 5).expect("valid");
        assert_eq!(l.limit(), 2);
        assert_eq!(l.decide(&busy(5_000.0)), Decision::Raise(3));
        assert_eq!(l.decide(&busy(5_000.0)), Decision::Raise(4));
        assert_eq!(l.decide(&busy(5_000.0)), Decision::Raise(5));
        // Never above max.
        assert_eq!(l.decide(&busy(5_000.0)), Decision::Hold);
        assert_eq!(l.limit(), 5);
    }

    #[test]
    fn does_not_grow_without_waiting_work_or_without_full_slots() {
        let mut l = Limiter::new(1, 10).expect("valid");
        let idle = Window {
            backlog: false,
            ..busy(5_000.0)
        };
        assert_eq!(l.decide(&idle), Decision::Hold);
        let unsaturated = Window {
            saturated: false,
            ..busy(5_000.0)
        };
        assert_eq!(l.decide(&unsaturated), Decision::Hold);
        assert_eq!(l.limit(), 1);
        // An empty window decides nothing.
        assert_eq!(l.decide(&Window::default()), Decision::Hold);
    }

    #[test]
    fn latency_above_twice_the_baseline_plus_the_floor_lowers_by_ten_percent() {
        let mut l = Limiter::new(1, 100).expect("valid");
        for _ in 0..29 {
            l.decide(&busy(5_000.0));
        }
        assert_eq!(l.limit(), 30);
        assert_eq!(l.baseline_us(), Some(5_000.0));
        // The threshold is 2 x 5 ms + 1 ms = 11 ms: at it, hold the line and grow.
        assert_eq!(l.decide(&busy(11_000.0)), Decision::Raise(31));
        // Above it: 31 x 0.9 = 27.9, rounded down.
        assert_eq!(l.decide(&busy(11_001.0)), Decision::Lower(27));
        assert_eq!(l.decide(&busy(20_000.0)), Decision::Lower(24));
        // The baseline stays the best seen.
        assert_eq!(l.baseline_us(), Some(5_000.0));
        // A faster window lowers the baseline.
        l.decide(&busy(4_000.0));
        assert_eq!(l.baseline_us(), Some(4_000.0));
    }

    #[test]
    fn small_limits_still_fall_by_one_and_never_below_min() {
        let mut l = Limiter::new(3, 10).expect("valid");
        for _ in 0..4 {
            l.decide(&busy(1_000.0));
        }
        assert_eq!(l.limit(), 7);
        assert_eq!(l.decide(&busy(50_000.0)), Decision::Lower(6));
        assert_eq!(l.decide(&busy(50_000.0)), Decision::Lower(5));
        assert_eq!(l.decide(&busy(50_000.0)), Decision::Lower(4));
        assert_eq!(l.decide(&busy(50_000.0)), Decision::Lower(3));
        // At min: the baseline is re-learnt (the handler is slower now), the limit holds.
        assert_eq!(l.decide(&busy(50_000.0)), Decision::Hold);
        assert_eq!(l.limit(), 3);
        assert_eq!(l.baseline_us(), Some(50_000.0));
        // And from the new baseline it grows again.
        assert_eq!(l.decide(&busy(50_000.0)), Decision::Raise(4));
    }

    #[test]
    fn sub_millisecond_jitter_is_not_contention() {
        let mut l = Limiter::new(1, 8).expect("valid");
        l.decide(&busy(20.0));
        // 40 x the baseline, but under a millisecond: still grows.
        assert_eq!(l.decide(&busy(800.0)), Decision::Raise(3));
    }

    #[test]
    fn a_jump_in_failures_lowers_and_a_steady_rate_is_absorbed() {
        let mut l = Limiter::new(1, 64).expect("valid");
        for _ in 0..59 {
            l.decide(&busy(1_000.0));
        }
        assert_eq!(l.limit(), 60);
        let failing = Window {
            failures: 5,
            ..busy(1_000.0)
        };
        // 50 % failures against a smoothed 0 %: lower.
        assert_eq!(l.decide(&failing), Decision::Lower(54));
        // The same rate keeps lowering until the average is within ERROR_RISE of it
        // (0.5 x (1 - 0.9^n) >= 0.4 after n = 16 windows), then the limit grows again.
        let decisions: Vec<Decision> = (0..20).map(|_| l.decide(&failing)).collect();
        let lowered = decisions
            .iter()
            .take_while(|d| matches!(d, Decision::Lower(_)))
            .count();
        assert_eq!(lowered, 15, "{decisions:?}");
        assert!(matches!(decisions[15], Decision::Raise(_)), "{decisions:?}");
        // A window where every handler failed has no latency: the latency rule holds.
        let all_failed = Window {
            failures: 10,
            mean_latency_us: None,
            ..busy(0.0)
        };
        let mut l = Limiter::new(4, 8).expect("valid");
        l.error_ratio = 1.0;
        assert_eq!(l.decide(&all_failed), Decision::Hold);
    }

    #[test]
    fn windows_are_at_least_min_window_completions_and_grow_with_the_limit() {
        let mut l = Limiter::new(1, 100).expect("valid");
        assert_eq!(l.window_size(), MIN_WINDOW);
        for _ in 0..19 {
            l.decide(&busy(1_000.0));
        }
        assert_eq!(l.window_size(), 20);
    }

    #[test]
    fn the_same_samples_give_the_same_limits() {
        let samples: Vec<Window> = (0..200u32)
            .map(|i| Window {
                completions: 10,
                failures: i % 7 / 5,
                mean_latency_us: Some(5_000.0 * (1.0 + f64::from(i % 40) / 10.0)),
                saturated: i % 3 != 0,
                backlog: i % 5 != 0,
            })
            .collect();
        let run = || {
            let mut l = Limiter::new(1, 64).expect("valid");
            samples
                .iter()
                .map(|w| {
                    l.decide(w);
                    l.limit()
                })
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        assert!(a.iter().all(|&n| (1..=64).contains(&n)));
    }

    /// The rule against a simulated resource whose latency is `base x (1 + (c / knee)^2)` at
    /// concurrency `c`, saturated with work: it settles near the knee, where throughput
    /// `c / latency` is best.
    #[test]
    fn settles_near_the_best_throughput_of_a_contended_resource() {
        let (base, knee) = (5_000.0, 16.0);
        let latency = |c: usize| base * (1.0 + (c as f64 / knee).powi(2));
        let mut l = Limiter::new(1, 128).expect("valid");
        let mut seen = Vec::new();
        for _ in 0..500 {
            let c = l.limit();
            l.decide(&busy(latency(c)));
            seen.push(l.limit());
        }
        let tail = &seen[300..];
        let mean = tail.iter().sum::<usize>() as f64 / tail.len() as f64;
        let throughput = |c: f64| c / (base * (1.0 + (c / knee).powi(2)));
        let ratio = throughput(mean) / throughput(knee);
        assert!(ratio > 0.95, "mean limit {mean}, {ratio} of the best");
        assert!(tail.iter().all(|&c| (12..=20).contains(&c)), "{tail:?}");
    }
}
