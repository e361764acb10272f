//! The event bus: a durable topic read by two consumer groups, then a replay (E1–E7).
//!
//! Every group gets every event (E2); within a group, consumers compete. A group created
//! later still gets the retained history; `ReplayFrom::End` skips it. Resetting a group
//! replays the log from a chosen place (E5).
//!
//! Run: `cargo run --example event_bus_groups [URL]` (default `memory://`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier::{EventBusExt, Message, ReplayFrom};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let courier = courier::connect(&url).await?;
    println!("event bus on {} ({url})", courier.backend_name());
    let bus = courier.events();
    let topic = "examples.meeting.created";

    for room in ["standup", "retro", "planning"] {
        tokio::time::timeout(WAIT, bus.emit(topic, Message::new(topic, room))).await??;
    }
    println!(
        "emitted 3 events; the topic retains {}",
        tokio::time::timeout(WAIT, bus.topic_len(topic)).await??
    );

    // Two groups, each created now: both read the retained history (E2).
    for group in ["media", "ai"] {
        let seen = consume(&courier, group, topic, 3).await?;
        println!("  group {group:<9} got {seen:?}");
    }

    // A group that only wants new events.
    let late = Arc::new(Mutex::new(Vec::new()));
    let log = late.clone();
    let dashboard = courier
        .group_consumer("dashboard")
        .start_from(ReplayFrom::End)
        .on(topic, move |m: Message| {
            let log = log.clone();
            async move {
                if let Ok(mut v) = log.lock() {
                    v.push(String::from_utf8_lossy(&m.payload).into_owned());
                }
                Ok(())
            }
        })
        .start()
        .await?;
    tokio::time::timeout(WAIT, bus.emit(topic, Message::new(topic, "all-hands"))).await??;
    tokio::time::timeout(WAIT, async {
        while dashboard.stats().succeeded < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    dashboard.stop(Duration::from_secs(1)).await;
    println!(
        "  group dashboard (from End) got {:?}",
        late.lock().map(|v| v.clone()).unwrap_or_default()
    );

    // Replay: move group "ai" back to the start of the log, and it reads everything again.
    let before = tokio::time::timeout(WAIT, bus.group_stats(topic, "ai")).await??;
    tokio::time::timeout(WAIT, bus.reset_group(topic, "ai", ReplayFrom::Start)).await??;
    let after = tokio::time::timeout(WAIT, bus.group_stats(topic, "ai")).await??;
    println!("replay: group ai lag {} -> {}", before.lag, after.lag);
    let seen = consume(&courier, "ai", topic, 4).await?;
    println!("  group ai re-read {seen:?}");
    let media = tokio::time::timeout(WAIT, bus.group_stats(topic, "media")).await??;
    let waiting = media.lag + media.queue.ready_total();
    println!("  group media is not moved: {waiting} event(s) waiting for it (all-hands)");
    if waiting != 1 {
        return Err("group media should still have all-hands to read".into());
    }
    Ok(())
}

/// Run a consumer in `group` until it handled `n` events; return their payloads.
async fn consume(
    courier: &courier::Courier,
    group: &str,
    topic: &str,
    n: u64,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let consumer = courier
        .group_consumer(group)
        .concurrency(1)
        .on(topic, move |m: Message| {
            let log = log.clone();
            async move {
                if let Ok(mut v) = log.lock() {
                    v.push(String::from_utf8_lossy(&m.payload).into_owned());
                }
                Ok(())
            }
        })
        .start()
        .await?;
    tokio::time::timeout(WAIT, async {
        while consumer.stats().succeeded < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    consumer.stop(Duration::from_secs(1)).await;
    let v = seen.lock().map(|v| v.clone()).unwrap_or_default();
    Ok(v)
}
