//! Flow control (Q14, Q15, Q16): pause a queue, limit its rate, move a message up the line.
//!
//! An upstream SMS gateway allows 5 messages a second. The queue's rate limit, stored in the
//! backend, holds every worker of every process to it. During an incident the operator pauses
//! the queue (publishes are still accepted) and, before resuming, moves one urgent message to
//! the front.
//!
//! Run: `cargo run --example flow_control [URL]` (default `memory://`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier::{Message, Priority, RateLimit};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let courier = courier::connect(&url).await?;
    println!("flow control on {} ({url})", courier.backend_name());
    let q = courier.queue();
    let queue = "examples.sms";

    // At most 5 deliveries in each 1-second window, counted by the backend across every
    // worker and process. Work beyond it waits; nothing fails.
    q.set_rate_limit(queue, Some(RateLimit::per_second(5)))
        .await?;

    // The incident: pause. Publishes are accepted, nothing is delivered.
    q.pause(queue).await?;
    let mut batch: Vec<Message> = (1..=10)
        .map(|i| Message::new("sms", format!("reminder {i}")))
        .collect();
    batch.push(Message::new("sms", "your login code is 4711"));
    let ids = q.publish_batch(queue, batch).await?;
    let urgent = ids[10].id();
    let s = q.stats(queue).await?;
    println!("paused: {}, ready: {}", s.paused, s.ready_total());

    // The login code cannot wait behind ten reminders: to the front of the line.
    q.reprioritise(queue, urgent, Priority::Critical).await?;

    let started = Instant::now();
    let sent: Arc<Mutex<Vec<(u128, String)>>> = Arc::default();
    let log = sent.clone();
    let worker = courier
        .worker(queue)
        .concurrency(4)
        .handler("sms", move |m: Message| {
            let log = log.clone();
            async move {
                let text = String::from_utf8_lossy(&m.payload).into_owned();
                log.lock()
                    .expect("not poisoned")
                    .push((started.elapsed().as_millis(), text));
                Ok(())
            }
        })
        .start()?;

    q.resume(queue).await?;
    tokio::time::timeout(WAIT, async {
        while sent.lock().expect("not poisoned").len() < 11 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    worker.stop(Duration::from_secs(1)).await;

    let sent = sent.lock().expect("not poisoned").clone();
    for (ms, text) in &sent {
        println!("  t={ms:>5} ms  {text}");
    }
    if sent[0].1 != "your login code is 4711" {
        return Err("the reprioritised message was not first".into());
    }
    // Eleven messages at five a second span three windows: more than one whole window.
    let last = sent.last().map_or(0, |(ms, _)| *ms);
    if last < 900 {
        return Err(format!("eleven messages at 5/s took only {last} ms").into());
    }
    Ok(())
}
