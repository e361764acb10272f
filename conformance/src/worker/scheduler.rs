//! Worker cases, scheduler: `worker::scheduler::*`.

use std::time::{Duration, Instant};

use courier_core::{Dispatcher, Every, Message, Scheduler};

use super::{GRACE, LIMIT, SLACK, next, queue, stats, stop, timing_worker};
use crate::{Case, Ctx, Outcome, case, ensure, ensure_eq, plain_config, within};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "worker::scheduler::publish_after_not_before",
            ["W", "Q3"],
            scheduler_publish_after
        ),
        case!(
            "worker::scheduler::publish_at_not_before",
            ["W", "Q3"],
            scheduler_publish_at
        ),
        case!(
            "worker::scheduler::recurring_interval_fires_repeatedly",
            ["W"],
            scheduler_recurring
        ),
        case!(
            "worker::scheduler::two_processes_enqueue_each_firing_once",
            ["W", "Q11"],
            scheduler_twice
        ),
    ]
}

/// Two schedulers (one per handle, as two processes would run) with the same recurring
/// schedule: each firing is stored once, the other copy counted as a duplicate (Q11).
async fn scheduler_twice(cx: Ctx) -> Outcome {
    let config = plain_config().with_dedup_window(Duration::from_secs(600));
    let q = queue(&cx, "twice", config)?;
    let other = within(LIMIT, "reopen", cx.factory.reopen(&cx.ns, &cx.backend)).await??;
    other.queue.configure(&q, config)?;
    let every = Duration::from_millis(150);
    let mut schedules = Vec::new();
    for h in [cx.backend.queue.clone(), other.queue.clone()] {
        let d = Dispatcher::new(h.clone());
        d.route("beat", &q)?;
        let sched = Scheduler::new(d, h.clock());
        schedules
            .push(sched.recurring("beat", Every::Interval(every), || Message::new("beat", ""))?);
    }
    // Wait for a few firings of both (bounded), then stop both.
    let end = Instant::now() + every * 6 + cx.prompt();
    loop {
        let s = stats(&cx, &q).await?;
        if s.published >= 3 && s.deduplicated >= 3 {
            break;
        }
        ensure!(Instant::now() < end, "too few firings: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(schedules);
    tokio::time::sleep(every * 2).await;
    let s = stats(&cx, &q).await?;
    let ds = crate::receive_n(cx.q(), &q, s.ready_total() as usize, LIMIT).await?;
    let mut keys: Vec<String> = ds
        .iter()
        .map(|d| d.message.dedup_key.clone().unwrap_or_default())
        .collect();
    ensure!(
        keys.iter().all(|k| k.starts_with("courier-schedule:beat:")),
        "firing keys: {keys:?}"
    );
    let n = keys.len();
    keys.sort();
    keys.dedup();
    ensure_eq!(keys.len(), n, "each firing stored once");
    ensure!(
        s.deduplicated + 1 >= s.published,
        "the second scheduler's copies were duplicates: {s:?}"
    );
    Ok(())
}

async fn scheduler_publish_after(cx: Ctx) -> Outcome {
    let q = queue(&cx, "after", plain_config())?;
    let d = Dispatcher::new(cx.backend.queue.clone());
    d.route("reminder", &q)?;
    let sched = Scheduler::new(d, cx.q().clock());
    let (h, mut rx) = timing_worker(&cx, &q, "reminder")?;
    let delay = Duration::from_millis(400);
    let t0 = Instant::now();
    let id = within(
        LIMIT,
        "publish_after",
        sched.publish_after(Message::new("reminder", ""), delay),
    )
    .await??;
    let (m, at) = next(&mut rx, delay + cx.prompt(), "the scheduled message").await?;
    let took = at - t0;
    stop(h, GRACE).await?;
    ensure_eq!(m.id, id, "id");
    ensure!(
        took + SLACK >= delay,
        "handled after {took:?}, before the {delay:?} delay"
    );
    ensure!(
        took <= delay + cx.prompt(),
        "handled after {took:?}, not promptly after {delay:?}"
    );
    println!("publish_after {delay:?}: handled after {took:?}");
    Ok(())
}

async fn scheduler_publish_at(cx: Ctx) -> Outcome {
    let q = queue(&cx, "at", plain_config())?;
    let d = Dispatcher::new(cx.backend.queue.clone());
    d.route("reminder", &q)?;
    let clock = cx.q().clock();
    let sched = Scheduler::new(d, clock.clone());
    let (h, mut rx) = timing_worker(&cx, &q, "reminder")?;
    let delay = Duration::from_millis(400);
    let t0 = Instant::now();
    let at_ms = clock.now_ms() + delay.as_millis() as u64;
    let id = within(
        LIMIT,
        "publish_at",
        sched.publish_at(Message::new("reminder", ""), at_ms),
    )
    .await??;
    let (m, at) = next(&mut rx, delay + cx.prompt(), "the scheduled message").await?;
    let handled_ms = clock.now_ms();
    let took = at - t0;
    stop(h, GRACE).await?;
    ensure_eq!(m.id, id, "id");
    ensure!(
        handled_ms >= at_ms,
        "handled at {handled_ms} ms, before the scheduled {at_ms} ms"
    );
    // `now_ms` truncates to whole milliseconds: allow that and the usual slack.
    ensure!(
        took + SLACK >= delay,
        "handled after {took:?}, before the {delay:?} schedule"
    );
    ensure!(took <= delay + cx.prompt(), "handled after {took:?}");
    Ok(())
}

async fn scheduler_recurring(cx: Ctx) -> Outcome {
    let q = queue(&cx, "recurring", plain_config())?;
    let d = Dispatcher::new(cx.backend.queue.clone());
    d.route("tick", &q)?;
    let sched = Scheduler::new(d, cx.q().clock());
    ensure!(
        sched
            .recurring("zero", Every::Interval(Duration::ZERO), || Message::new(
                "tick", ""
            ))
            .is_err(),
        "a zero interval must be rejected"
    );
    ensure!(
        sched
            .recurring("bad", Every::Cron("not cron".into()), || Message::new(
                "tick", ""
            ))
            .is_err(),
        "an invalid cron expression must be rejected"
    );
    let (h, mut rx) = timing_worker(&cx, &q, "tick")?;
    let every = Duration::from_millis(200);
    let name = "heartbeat";
    let t0 = Instant::now();
    let schedule = sched.recurring(name, Every::Interval(every), || Message::new("tick", ""))?;
    ensure_eq!(schedule.name(), name, "schedule name");
    let mut fired = Vec::new();
    for i in 1..=3u32 {
        let (m, at) = next(&mut rx, every + cx.prompt(), "a recurring firing").await?;
        ensure_eq!(
            m.header(courier_core::scheduler::SCHEDULE_HEADER),
            Some(name),
            "schedule header"
        );
        let took = at - t0;
        ensure!(
            took + SLACK >= every * i,
            "firing {i} handled after {took:?}, before {:?}",
            every * i
        );
        fired.push(took);
    }
    println!("interval {every:?}: firings handled after {fired:?}");
    schedule.cancel();
    // Let a publish that was under way when cancelled land, then nothing more may come.
    tokio::time::sleep(every * 2).await;
    let p1 = stats(&cx, &q).await?.published;
    tokio::time::sleep(every * 3).await;
    let p2 = stats(&cx, &q).await?.published;
    ensure_eq!(p2, p1, "published after cancel");
    stop(h, GRACE).await?;
    Ok(())
}
