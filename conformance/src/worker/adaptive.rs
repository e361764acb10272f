//! Worker cases, adaptive concurrency: `worker::adaptive::*`. A worker built with
//! `adaptive_concurrency(min, max)` keeps its limit in `[min, max]` (never more handlers at
//! once than `max`), raises it while handlers are fast and work is waiting, lowers it when
//! handler latency or the failure ratio jumps, shows its decisions in `WorkerStats`, and
//! refuses bounds that leave no room at `start`.
//!
//! The cases watch the worker's stats with bounded waits. Handlers sleep only as simulated
//! work; the switch from fast to slow (or failing) handlers is flipped by the case once it has
//! seen the limit grow.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use courier_core::{ErrorKind, GroupConsumer, HandlerError, Message, Worker, WorkerHandle};

use super::{GRACE, publish_all, queue, stats, stop, wait_until};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, expect_kind, plain_config, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "worker::adaptive::limit_stays_within_bounds_under_a_flood",
            ["W"],
            within_bounds
        ),
        case!(
            "worker::adaptive::grows_above_min_when_fast_and_busy",
            ["W"],
            grows_when_fast
        ),
        case!(
            "worker::adaptive::shrinks_when_handler_latency_rises",
            ["W"],
            shrinks_on_latency
        ),
        case!(
            "worker::adaptive::shrinks_when_failures_jump",
            ["W"],
            shrinks_on_failures
        ),
        case!(
            "worker::adaptive::group_consumer_adapts_within_bounds",
            ["W", "E3"],
            group_consumer
        ),
        case!(
            "worker::adaptive::invalid_bounds_refused_at_start",
            ["W"],
            invalid_bounds
        ),
    ]
}

/// Handlers running now and the most seen at once, counted by the handlers themselves.
#[derive(Default)]
struct Load {
    running: AtomicU64,
    most: AtomicU64,
    done: AtomicU64,
}

impl Load {
    async fn work(&self, d: Duration) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(d).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.done.fetch_add(1, Ordering::SeqCst);
    }
}

fn messages(n: u64) -> Vec<Message> {
    (0..n)
        .map(|i| Message::new("work", format!("{i}")))
        .collect()
}

/// A bound for a run of `n` messages of `each` at concurrency at least `c`, with room for a
/// slow machine and a remote broker.
fn run_limit(cx: &Ctx, n: u64, each: Duration, c: u64) -> Duration {
    cx.prompt() + each * u32::try_from(n / c.max(1)).unwrap_or(u32::MAX) * 4
}

/// Watch `h`'s limit until `cond` holds, checking on every look that it stays in
/// `[min, max]`; returns the highest limit seen.
async fn watch_limit(
    h: &WorkerHandle,
    (min, max): (u64, u64),
    limit: Duration,
    what: &str,
    cond: impl Fn(&courier_core::WorkerStats) -> bool,
) -> Result<u64, crate::Failure> {
    let deadline = Instant::now() + limit;
    let mut highest = 0;
    loop {
        let s = h.stats();
        ensure!(
            (min..=max).contains(&s.concurrency_limit),
            "concurrency_limit {} outside [{min}, {max}]: {s:?}",
            s.concurrency_limit
        );
        ensure!(
            s.in_progress <= max && s.max_in_progress <= max,
            "more than max {max} handlers at once: {s:?}"
        );
        highest = highest.max(s.concurrency_limit);
        if cond(&s) {
            return Ok(highest);
        }
        ensure!(
            Instant::now() < deadline,
            "{what} not reached within {limit:?}; last stats {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn within_bounds(cx: Ctx) -> Outcome {
    let q = queue(&cx, "flood", plain_config())?;
    let (min, max) = (2u64, 6u64);
    let total = 400u64;
    let each = Duration::from_millis(2);
    let load = Arc::new(Load::default());
    let l = load.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .adaptive_concurrency(min as usize, max as usize)
        .handler("work", move |_m: Message| {
            let l = l.clone();
            async move {
                l.work(each).await;
                Ok(())
            }
        })
        .start()?;
    let s = h.stats();
    ensure_eq!(s.concurrency_limit, min, "the limit starts at min");
    ensure_eq!((s.limit_raised, s.limit_lowered), (0, 0), "no decision yet");
    publish_all(&cx, &q, messages(total)).await?;
    let highest = watch_limit(
        &h,
        (min, max),
        run_limit(&cx, total, each, min),
        "every message handled",
        |s| s.succeeded >= total,
    )
    .await?;
    let report = stop(h, GRACE).await?;
    let s = report.stats;
    ensure!(
        (min..=max).contains(&s.concurrency_limit),
        "final limit {} outside [{min}, {max}]",
        s.concurrency_limit
    );
    let most = load.most.load(Ordering::SeqCst);
    ensure!(
        most <= max && s.max_in_progress <= max,
        "{most} handlers at once (WorkerStats.max_in_progress {}) with max {max}",
        s.max_in_progress
    );
    ensure!(
        s.limit_raised >= 1 && highest > min,
        "a flood of fast handlers never raised the limit above min {min}: {s:?}"
    );
    ensure_eq!(s.succeeded, total, "succeeded");
    ensure_eq!(s.in_progress, 0, "in_progress at the end");
    Ok(())
}

async fn grows_when_fast(cx: Ctx) -> Outcome {
    let q = queue(&cx, "grow", plain_config())?;
    let (min, max) = (1u64, 16u64);
    let total = 1_000u64;
    let each = Duration::from_millis(5);
    let load = Arc::new(Load::default());
    let l = load.clone();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .adaptive_concurrency(min as usize, max as usize)
        .handler("work", move |_m: Message| {
            let l = l.clone();
            async move {
                l.work(each).await;
                Ok(())
            }
        })
        .start()?;
    publish_all(&cx, &q, messages(total)).await?;
    // From 1, a window of 8 fast completions per step: 4 is reached within about 30 handler
    // runs on any backend that keeps the buffer fed.
    let target = 4u64;
    watch_limit(
        &h,
        (min, max),
        run_limit(&cx, total, each, min),
        "a limit of 4",
        |s| s.concurrency_limit >= target,
    )
    .await?;
    wait_until(cx.prompt(), "4 handlers running at once", || {
        load.most.load(Ordering::SeqCst) >= target
    })
    .await?;
    let report = stop(h, GRACE).await?;
    let s = report.stats;
    ensure!(
        s.limit_raised >= target - min,
        "raised {} times to get from {min} to {target}",
        s.limit_raised
    );
    ensure!(
        s.max_in_progress >= target && s.max_in_progress <= max,
        "max_in_progress {} (want {target}..={max})",
        s.max_in_progress
    );
    ensure_eq!(s.in_progress, 0, "in_progress at the end");
    Ok(())
}

/// Handlers that take `fast` until the case flips `slow`, then `slow_each` (or fail).
async fn shrinks(cx: Ctx, fail: bool) -> Outcome {
    let q = queue(
        &cx,
        if fail { "failing" } else { "slowing" },
        plain_config(),
    )?;
    let (min, max) = (1u64, 32u64);
    let total = 3_000u64;
    let fast = Duration::from_millis(3);
    let slow_each = Duration::from_millis(60);
    let load = Arc::new(Load::default());
    let slow = Arc::new(AtomicBool::new(false));
    let (l, sl) = (load.clone(), slow.clone());
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .adaptive_concurrency(min as usize, max as usize)
        .handler("work", move |_m: Message| {
            let (l, sl) = (l.clone(), sl.clone());
            async move {
                if !sl.load(Ordering::SeqCst) {
                    l.work(fast).await;
                    return Ok(());
                }
                if fail {
                    return Err(HandlerError::retry("downstream failing"));
                }
                l.work(slow_each).await;
                Ok(())
            }
        })
        .start()?;
    publish_all(&cx, &q, messages(total)).await?;
    let grown = 8u64;
    let peak = watch_limit(
        &h,
        (min, max),
        run_limit(&cx, total, fast, min),
        "a limit of 8 while handlers are fast",
        |s| s.concurrency_limit >= grown,
    )
    .await?;
    let before = h.stats();
    slow.store(true, Ordering::SeqCst);
    // Lowered at least twice (0.9 each) below the limit at the switch.
    let lowered_to = (before.concurrency_limit * 81 / 100).max(min);
    let what = if fail {
        "a lower limit after failures jumped"
    } else {
        "a lower limit after latency rose"
    };
    // A window is at most 32 completions of 60 ms at the limit's concurrency: a few windows
    // fit in seconds.
    watch_limit(&h, (min, max), cx.prompt() * 5, what, |s| {
        s.limit_lowered > before.limit_lowered && s.concurrency_limit <= lowered_to
    })
    .await?;
    let report = stop(h, GRACE).await?;
    let s = report.stats;
    ensure!(
        s.limit_lowered > before.limit_lowered,
        "lowered {} times before, {} after",
        before.limit_lowered,
        s.limit_lowered
    );
    ensure!(
        peak >= grown && s.max_in_progress <= max,
        "peak {peak}, max_in_progress {}",
        s.max_in_progress
    );
    Ok(())
}

async fn shrinks_on_latency(cx: Ctx) -> Outcome {
    shrinks(cx, false).await
}

async fn shrinks_on_failures(cx: Ctx) -> Outcome {
    shrinks(cx, true).await
}

async fn group_consumer(cx: Ctx) -> Outcome {
    let t = cx.name("t");
    let g = cx.name("g");
    cx.backend.events.configure_group(&t, &g, plain_config())?;
    let (min, max) = (1u64, 4u64);
    let total = 300u64;
    let each = Duration::from_millis(3);
    within(
        Duration::from_secs(30),
        "emit_batch",
        cx.backend.events.emit_batch(&t, messages(total)),
    )
    .await??;
    let load = Arc::new(Load::default());
    let l = load.clone();
    let h = within(
        cx.prompt(),
        "group consumer start",
        GroupConsumer::builder(cx.backend.events.clone(), &g)
            .adaptive_concurrency(min as usize, max as usize)
            .on(&t, move |_m: Message| {
                let l = l.clone();
                async move {
                    l.work(each).await;
                    Ok(())
                }
            })
            .start(),
    )
    .await??;
    let highest = watch_limit(
        &h,
        (min, max),
        run_limit(&cx, total, each, min),
        "every event handled",
        |s| s.succeeded >= total,
    )
    .await?;
    let report = stop(h, GRACE).await?;
    let s = report.stats;
    let most = load.most.load(Ordering::SeqCst);
    ensure!(
        most <= max && s.max_in_progress <= max,
        "{most} handlers at once with max {max}"
    );
    ensure!(
        s.limit_raised >= 1 && highest > min,
        "300 fast events never raised the limit: {s:?}"
    );
    ensure_eq!(s.succeeded, total, "succeeded");
    Ok(())
}

async fn invalid_bounds(cx: Ctx) -> Outcome {
    let q = queue(&cx, "bounds", plain_config())?;
    publish_all(&cx, &q, messages(1)).await?;
    for (min, max) in [(0usize, 4usize), (0, 0), (5, 4), (2, 1)] {
        let r = Worker::builder(cx.backend.queue.clone(), &q)
            .adaptive_concurrency(min, max)
            .handler("work", |_m: Message| async { Ok(()) })
            .start()
            .map(|_| "a running worker");
        expect_kind(
            r,
            ErrorKind::InvalidInput,
            &format!("adaptive_concurrency({min}, {max}).start()"),
        )?;
        let r = within(
            cx.prompt(),
            "group consumer start",
            GroupConsumer::builder(cx.backend.events.clone(), &cx.name("g"))
                .adaptive_concurrency(min, max)
                .on(&cx.name("t"), |_m: Message| async { Ok(()) })
                .start(),
        )
        .await?
        .map(|_| "a running consumer");
        expect_kind(
            r,
            ErrorKind::InvalidInput,
            &format!("group consumer adaptive_concurrency({min}, {max}).start()"),
        )?;
    }
    // Nothing was started: the message is still ready.
    let s = stats(&cx, &q).await?;
    ensure_eq!(
        (s.ready_total(), s.in_flight),
        (1, 0),
        "refused workers leased nothing"
    );
    // min == max is a fixed limit, and valid.
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .adaptive_concurrency(3, 3)
        .handler("work", |_m: Message| async { Ok(()) })
        .start()?;
    ensure_eq!(h.stats().concurrency_limit, 3, "limit of adaptive(3, 3)");
    wait_until(cx.prompt(), "the message handled", || {
        h.stats().succeeded >= 1
    })
    .await?;
    let report = stop(h, GRACE).await?;
    ensure_eq!(
        (report.stats.concurrency_limit, report.stats.limit_raised),
        (3, 0),
        "adaptive(3, 3) never moves"
    );
    Ok(())
}
