//! Time, abstracted so in-process backends can run on virtual time in tests.
//!
//! Backends read "now" from a [`Clock`] and wait with tokio timers. [`SystemClock`] is wall
//! time. [`TokioClock`] follows tokio's clock, so under `tokio::time::pause()` timers and "now"
//! advance together, virtually and instantly.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of "now" in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// Shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that follows `tokio::time::Instant`, anchored to wall time when created.
/// With `tokio::time::pause()` it is virtual: it only moves when tokio's clock moves.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin_ms: u64,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// Anchor a new clock at the current wall time and tokio instant.
    pub fn new() -> Self {
        TokioClock {
            origin_ms: SystemClock.now_ms(),
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.origin_ms + self.origin.elapsed().as_millis() as u64
    }
}

/// The duration from `now_ms` until `at_ms` (zero if past).
pub fn until(now_ms: u64, at_ms: u64) -> Duration {
    Duration::from_millis(at_ms.saturating_sub(now_ms))
}

/// A duration in whole milliseconds, rounded up so a wait never ends early.
pub fn ms_ceil(d: Duration) -> u64 {
    let ms = d.as_millis() as u64;
    if Duration::from_millis(ms) < d {
        ms + 1
    } else {
        ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_is_virtual_under_pause() {
        let c = TokioClock::new();
        let t0 = c.now_ms();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let t1 = c.now_ms();
        assert!((3_600_000..3_600_010).contains(&(t1 - t0)), "{}", t1 - t0);
    }

    #[test]
    fn ms_ceil_rounds_up() {
        assert_eq!(ms_ceil(Duration::from_micros(1500)), 2);
        assert_eq!(ms_ceil(Duration::from_millis(3)), 3);
        assert_eq!(until(10, 5), Duration::ZERO);
    }
}
