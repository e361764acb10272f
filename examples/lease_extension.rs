//! A handler that runs longer than the queue's visibility timeout (Q4, W).
//!
//! The queue leases a message for 300 ms; the handler takes 1.2 s. The worker extends the
//! lease while the handler runs, so no other consumer gets the message and it is handled
//! once. Then the same thing by hand with `Queue::extend`, for code that consumes without a
//! worker.
//!
//! Run: `cargo run --example lease_extension [URL]` (default `memory://`).

use std::time::Duration;

use courier::{Message, QueueConfig, QueueExt};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let courier = courier::connect(&url).await?;
    println!("lease extension on {} ({url})", courier.backend_name());
    let q = courier.queue();
    let queue = "examples.lease";
    q.configure(
        queue,
        QueueConfig::default().with_visibility_timeout(Duration::from_millis(300)),
    )?;
    tokio::time::timeout(
        WAIT,
        q.publish(queue, Message::new("transcode", "movie.mp4")),
    )
    .await??;

    // Two workers compete for the queue; the handler outlives the lease four times over.
    let slow = |name: &'static str| {
        move |m: Message| async move {
            println!("  {name}: attempt {} started", m.attempt);
            tokio::time::sleep(Duration::from_millis(1200)).await;
            println!("  {name}: attempt {} done", m.attempt);
            Ok(())
        }
    };
    let w1 = courier
        .worker(queue)
        .handler("transcode", slow("worker 1"))
        .start()?;
    let w2 = courier
        .worker(queue)
        .handler("transcode", slow("worker 2"))
        .start()?;
    tokio::time::timeout(WAIT, async {
        while w1.stats().succeeded + w2.stats().succeeded < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    // Give a redelivery, if the lease had lapsed, time to show up.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (r1, r2) = (w1.stop(WAIT).await, w2.stop(WAIT).await);
    let received = r1.stats.received + r2.stats.received;
    println!("deliveries: {received} (one: the lease was extended while the handler ran)");
    if received != 1 {
        return Err(format!("expected one delivery, got {received}").into());
    }

    // By hand: receive, extend before the lease ends, then ack with the new lease.
    tokio::time::timeout(
        WAIT,
        q.publish(queue, Message::new("transcode", "trailer.mp4")),
    )
    .await??;
    let d = tokio::time::timeout(WAIT, q.receive_one(queue, WAIT))
        .await??
        .ok_or("nothing delivered")?;
    let mut lease = d.lease;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        lease = tokio::time::timeout(WAIT, q.extend(queue, &lease, Duration::from_millis(300)))
            .await??;
        println!("  extended: lease now ends at {} ms", lease.deadline_ms);
    }
    tokio::time::timeout(WAIT, q.ack(queue, &lease)).await??;
    let s = tokio::time::timeout(WAIT, q.stats(queue)).await??;
    println!("acked={} retried={}", s.acked, s.retried);
    if (s.acked, s.retried) != (2, 0) {
        return Err("unexpected counters".into());
    }
    Ok(())
}
