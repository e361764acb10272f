//! A walk through Courier's three abstractions on the embedded default backend:
//! a work queue with priorities, retries and dead letters; pub/sub with patterns; and an
//! event bus with two consumer groups and a replay.
//!
//! Run: `cargo run --release --example quickstart` (or pass a backend URL as the argument).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use courier::{
    EventBusExt, GroupConsumer, HandlerError, Message, Priority, QueueConfig, QueueExt, ReplayFrom,
    RetryPolicy, SubscribeOptions,
};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let courier = courier::connect(&url).await?;
    println!("courier quickstart on {} ({url})\n", courier.backend_name());

    // ---------------------------------------------------------------- queue
    println!("== Queue: strict priority, retries with backoff, dead letters");
    let q = "quickstart.tasks";
    courier.queue().configure(
        q,
        QueueConfig::default()
            .with_visibility_timeout(Duration::from_secs(5))
            .with_retry(RetryPolicy::exact(
                3,
                Duration::from_millis(20),
                2.0,
                Duration::from_millis(200),
            )),
    )?;
    courier.dispatcher().route("transcode", q)?;
    courier.dispatcher().route("notify", q)?;
    courier.dispatcher().route("flaky", q)?;

    let batch = vec![
        Message::json("transcode", &"low-res preview")?.with_priority(Priority::Low),
        Message::json("notify", &"meeting starts")?.with_priority(Priority::Critical),
        Message::json("transcode", &"recording.mp4")?,
        Message::json("flaky", &"always fails")?.with_priority(Priority::High),
    ];
    courier.dispatcher().dispatch_batch(batch).await?;
    let s = courier.queue().stats(q).await?;
    println!(
        "published 4: ready critical={} high={} normal={} low={}",
        s.ready[0], s.ready[1], s.ready[2], s.ready[3]
    );

    let order = Arc::new(parking_order::Order::default());
    let flaky_calls = Arc::new(AtomicU32::new(0));
    let (o1, o2, f1) = (order.clone(), order.clone(), flaky_calls.clone());
    let worker = courier
        .worker(q)
        .concurrency(1)
        .handler("transcode", move |m: Message| {
            let o = o1.clone();
            async move {
                let what: String = m.decode()?;
                o.push(format!("transcode {what} (priority {})", m.priority));
                Ok(())
            }
        })
        .handler("notify", move |m: Message| {
            let o = o2.clone();
            async move {
                let what: String = m.decode()?;
                o.push(format!("notify {what} (priority {})", m.priority));
                Ok(())
            }
        })
        .handler("flaky", move |m: Message| {
            let f = f1.clone();
            async move {
                f.fetch_add(1, Ordering::Relaxed);
                Err(HandlerError::retry(format!(
                    "upstream unavailable (attempt {})",
                    m.attempt
                )))
            }
        })
        .start()?;

    let started = Instant::now();
    loop {
        let s = courier.queue().stats(q).await?;
        if s.acked == 3 && s.dead == 1 {
            break;
        }
        if started.elapsed() > WAIT {
            return Err(format!("queue did not settle in time: {s:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.stop(Duration::from_secs(1)).await;
    for line in order.take() {
        println!("  handled: {line}");
    }
    let dead = courier.queue().dead_letters_all(q, 10).await?;
    for d in &dead {
        println!(
            "  dead letter: {} after {} attempts, last error: {}",
            d.message.kind, d.attempts, d.error
        );
    }
    let s = courier.queue().stats(q).await?;
    println!(
        "stats: published={} acked={} retried={} dead_lettered={} dead={}\n",
        s.published, s.acked, s.retried, s.dead_lettered, s.dead
    );

    // ---------------------------------------------------------------- pub/sub
    println!("== PubSub: live broadcast with patterns");
    let mut all_meetings = courier
        .pubsub()
        .subscribe("room.*.signal", SubscribeOptions::default())
        .await?;
    let mut room42 = courier
        .pubsub()
        .subscribe("room.42.>", SubscribeOptions::default())
        .await?;
    for (channel, body) in [
        ("room.42.signal", "offer from ann"),
        ("room.7.signal", "answer from bob"),
        ("room.42.ice.candidate", "candidate from cy"),
    ] {
        let n = courier
            .pubsub()
            .publish(channel, Message::new("signal", body))
            .await?;
        println!("  {channel:<24} -> {n} subscriber(s)");
    }
    for (name, sub) in [
        ("room.*.signal", &mut all_meetings),
        ("room.42.>", &mut room42),
    ] {
        while let Some(m) = sub.next_timeout(Duration::from_millis(50)).await {
            println!("  {name:<14} got {:?}", String::from_utf8_lossy(&m.payload));
        }
    }
    println!();

    // ---------------------------------------------------------------- event bus
    println!("== EventBus: durable topic, two consumer groups, replay");
    let topic = "quickstart.meeting.created";
    for room in ["standup", "retro", "planning"] {
        courier
            .events()
            .emit(topic, Message::json(topic, &room)?)
            .await?;
    }
    for group in ["media", "ai"] {
        let seen = Arc::new(parking_order::Order::default());
        let s2 = seen.clone();
        let consumer = GroupConsumer::builder(courier.events().clone(), group)
            .concurrency(1)
            .on(topic, move |m: Message| {
                let s = s2.clone();
                async move {
                    let room: String = m.decode()?;
                    s.push(room);
                    Ok(())
                }
            })
            .start()
            .await?;
        wait_for(|| seen.len() >= 3).await?;
        consumer.stop(Duration::from_secs(1)).await;
        println!("  group {group:<6} got {:?}", seen.take());
    }
    courier
        .events()
        .reset_group(topic, "ai", ReplayFrom::Start)
        .await?;
    let stats = courier.events().group_stats(topic, "ai").await?;
    println!(
        "  after replay from start, group ai lags by {} event(s)",
        stats.lag
    );
    println!("\nquickstart finished");
    Ok(())
}

async fn wait_for(cond: impl Fn() -> bool) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > WAIT {
            return Err("timed out waiting for events".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

mod parking_order {
    use std::sync::Mutex;

    /// A tiny shared log of what handlers saw.
    #[derive(Default)]
    pub(crate) struct Order(Mutex<Vec<String>>);

    impl Order {
        pub(crate) fn push(&self, s: String) {
            if let Ok(mut v) = self.0.lock() {
                v.push(s);
            }
        }
        pub(crate) fn len(&self) -> usize {
            self.0.lock().map(|v| v.len()).unwrap_or(0)
        }
        pub(crate) fn take(&self) -> Vec<String> {
            self.0
                .lock()
                .map(|mut v| std::mem::take(&mut *v))
                .unwrap_or_default()
        }
    }
}
