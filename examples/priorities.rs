//! Strict priorities: a consumer always gets the most urgent ready message first (Q2).
//!
//! Publishes a backlog at four priorities, in the "wrong" order, then drains it with one
//! worker handling one message at a time and prints the order it handled them in.
//!
//! Run: `cargo run --example priorities [URL]` (default `memory://`, e.g.
//! `sqlite:///tmp/courier-priorities.db`). Exits 0 when the order is critical, high, normal,
//! low.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier::{Message, Priority};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let courier = courier::connect(&url).await?;
    println!("priorities on {} ({url})", courier.backend_name());
    let q = courier.queue();
    let queue = "examples.priorities";

    // A backlog, published least urgent first.
    let backlog = [
        ("weekly-report", Priority::Low),
        ("thumbnail", Priority::Normal),
        ("invoice", Priority::High),
        ("page-oncall", Priority::Critical),
        ("newsletter", Priority::Low),
        ("password-reset", Priority::High),
    ];
    let batch = backlog
        .iter()
        .map(|(kind, p)| Message::new(*kind, "").with_priority(*p))
        .collect();
    tokio::time::timeout(WAIT, q.publish_batch(queue, batch)).await??;
    let s = tokio::time::timeout(WAIT, q.stats(queue)).await??;
    println!(
        "ready: critical={} high={} normal={} low={}",
        s.ready_at(Priority::Critical),
        s.ready_at(Priority::High),
        s.ready_at(Priority::Normal),
        s.ready_at(Priority::Low)
    );

    // One handler at a time, nothing leased ahead: the order handled is the order delivered.
    let handled = Arc::new(Mutex::new(Vec::new()));
    let log = handled.clone();
    let mut worker = courier.worker(queue).concurrency(1).prefetch(0);
    for (kind, _) in backlog {
        let log = log.clone();
        worker = worker.handler(kind, move |m: Message| {
            let log = log.clone();
            async move {
                println!("  handled {:<15} priority {}", m.kind, m.priority);
                if let Ok(mut v) = log.lock() {
                    v.push(m.priority);
                }
                Ok(())
            }
        });
    }
    let worker = worker.start()?;
    tokio::time::timeout(WAIT, async {
        while worker.stats().succeeded < backlog.len() as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    worker.stop(Duration::from_secs(1)).await;

    let order = handled.lock().map(|v| v.clone()).unwrap_or_default();
    let mut sorted = order.clone();
    sorted.sort();
    if order != sorted {
        return Err(format!("handled out of priority order: {order:?}").into());
    }
    println!("priorities: every message handled most urgent first");
    Ok(())
}
