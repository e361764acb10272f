//! Delayed, timed and recurring (interval and cron) messages (Q3, Q11).
//!
//! One-off delays are stored by the backend as delayed messages (they survive a restart on a
//! durable backend). Recurring schedules run in the process; every firing carries a
//! deduplication key, so two processes running the same schedule enqueue each firing once;
//! shown here with two schedulers in one process.
//!
//! Run: `cargo run --example delayed_scheduled [URL]` (default `memory://`).

use std::time::{Duration, Instant};

use std::collections::HashSet;

use courier::{Every, Message, QueueConfig, QueueExt};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let courier = courier::connect(&url).await?;
    println!(
        "delayed and scheduled on {} ({url})",
        courier.backend_name()
    );
    let q = courier.queue();
    let queue = "examples.later";
    // Keys stay taken for 10 s after acceptance: a firing is enqueued once even when another
    // process fires it after the first copy was already handled (Q11).
    q.configure(
        queue,
        QueueConfig::default().with_dedup_window(Duration::from_secs(10)),
    )?;
    courier.dispatcher().route("reminder", queue)?;
    courier.dispatcher().route("heartbeat", queue)?;
    courier.dispatcher().route("cron_tick", queue)?;

    // After a delay, and at an instant.
    let started = Instant::now();
    let scheduler = courier.scheduler();
    tokio::time::timeout(
        WAIT,
        scheduler.publish_after(
            Message::new("reminder", "in 200 ms"),
            Duration::from_millis(200),
        ),
    )
    .await??;
    let at = q.clock().now_ms() + 100;
    tokio::time::timeout(
        WAIT,
        scheduler.publish_at(Message::new("reminder", "at +100 ms"), at),
    )
    .await??;
    let s = tokio::time::timeout(WAIT, q.stats(queue)).await??;
    println!("delayed now: {} (ready: {})", s.delayed, s.ready_total());

    // Nothing is deliverable early; each arrives once due.
    for _ in 0..2 {
        let d = tokio::time::timeout(WAIT, q.receive_one(queue, WAIT))
            .await??
            .ok_or("a delayed message never became ready")?;
        println!(
            "  t={:>4} ms got {:?}",
            started.elapsed().as_millis(),
            String::from_utf8_lossy(&d.message.payload)
        );
        tokio::time::timeout(WAIT, q.ack(queue, &d.lease)).await??;
    }
    // Due times are whole milliseconds of the backend's clock (Q3): "in 200 ms" is due 200 ms
    // after the millisecond the publish read, which began up to 1 ms before this program's
    // clock reading just after it. So allow that 1 ms (CI saw t = 199 ms once).
    if started.elapsed() + Duration::from_millis(1) < Duration::from_millis(200) {
        return Err("a delayed message was delivered before its time".into());
    }

    // Recurring: every 100 ms, run by two "processes" (two schedulers) at once.
    let a = scheduler.recurring(
        "heartbeat",
        Every::Interval(Duration::from_millis(100)),
        || Message::new("heartbeat", ""),
    )?;
    let b = scheduler.recurring(
        "heartbeat",
        Every::Interval(Duration::from_millis(100)),
        || Message::new("heartbeat", ""),
    )?;
    // And a cron expression with a seconds field: every second.
    let cron = scheduler.recurring("cron-tick", Every::Cron("* * * * * *".into()), || {
        Message::new("cron_tick", "")
    })?;
    let mut heartbeats = 0;
    let mut ticks = 0;
    let mut firings = HashSet::new();
    tokio::time::timeout(WAIT, async {
        while heartbeats < 5 || ticks < 1 {
            if let Some(d) = q.receive_one(queue, Duration::from_millis(200)).await? {
                if !firings.insert(d.message.dedup_key.clone()) {
                    return Err(courier::Error::invalid("a firing was delivered twice"));
                }
                match d.message.kind.as_str() {
                    "heartbeat" => heartbeats += 1,
                    _ => ticks += 1,
                }
                q.ack(queue, &d.lease).await?;
            }
        }
        Ok::<_, courier::Error>(())
    })
    .await??;
    drop((a, b));
    cron.cancel();
    let s = tokio::time::timeout(WAIT, q.stats(queue)).await??;
    println!(
        "recurring: {heartbeats} heartbeats handled, {ticks} cron tick(s); {} duplicate firing(s) stored nothing",
        s.deduplicated
    );
    if s.deduplicated == 0 {
        return Err("two schedulers with one name should deduplicate firings".into());
    }
    Ok(())
}
