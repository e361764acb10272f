//! Pub/sub with patterns: live broadcast, at most once (P1–P8).
//!
//! Subscribers listen on channel patterns (`*` one token, `>` the rest); a publish reaches
//! every matching subscription and nobody else; with no subscriber it is dropped. A slow
//! subscriber's bounded buffer drops the oldest messages and counts them. A `Subscriber`
//! runs a handler over a subscription, with in-process retries.
//!
//! Run: `cargo run --example pubsub_patterns [URL]` (default `memory://`).

use std::time::Duration;

use courier::{HandlerError, Message, RetryPolicy, SubscribeOptions};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let courier = courier::connect(&url).await?;
    println!("pub/sub on {} ({url})", courier.backend_name());
    let ps = courier.pubsub();

    // Nobody listens yet: the message is dropped, not an error (P2).
    let n = tokio::time::timeout(
        WAIT,
        ps.publish("room.1.chat", Message::new("chat", "lost")),
    )
    .await??;
    println!("before any subscriber: delivered to {n}");

    let mut chats = tokio::time::timeout(
        WAIT,
        ps.subscribe("room.*.chat", SubscribeOptions::default()),
    )
    .await??;
    let mut room42 =
        tokio::time::timeout(WAIT, ps.subscribe("room.42.>", SubscribeOptions::default()))
            .await??;
    for (channel, body) in [
        ("room.42.chat", "hi from ann"),
        ("room.7.chat", "hi from bob"),
        ("room.42.ice.candidate", "candidate c1"),
        ("lobby.chat", "nobody matches"),
    ] {
        let n =
            tokio::time::timeout(WAIT, ps.publish(channel, Message::new("msg", body))).await??;
        println!("  publish {channel:<22} -> {n} subscription(s)");
    }
    for (name, sub, expected) in [
        ("room.*.chat", &mut chats, 2),
        ("room.42.>", &mut room42, 2),
    ] {
        let mut got = Vec::new();
        while let Some(m) = sub.next_timeout(Duration::from_millis(300)).await {
            got.push(String::from_utf8_lossy(&m.payload).into_owned());
            if got.len() == expected {
                break;
            }
        }
        println!("  {name:<12} got {got:?}");
        if got.len() != expected {
            return Err(format!("{name}: expected {expected} messages").into());
        }
    }

    // A slow subscriber with a buffer of 2 keeps the newest two and counts the rest (P7).
    let mut slow =
        tokio::time::timeout(WAIT, ps.subscribe("ticks", SubscribeOptions { buffer: 2 })).await??;
    for i in 0..5 {
        tokio::time::timeout(
            WAIT,
            ps.publish("ticks", Message::new("tick", format!("{i}"))),
        )
        .await??;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut kept = Vec::new();
    while let Some(m) = slow.try_next() {
        kept.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    println!("slow subscriber kept {kept:?}, dropped {}", slow.dropped());
    if slow.dropped() != 3 {
        return Err("expected 3 dropped ticks".into());
    }

    // A Subscriber: a handler over a pattern, retried in-process on failure (P8).
    let sub = courier
        .subscriber("alerts.>")
        .retry(RetryPolicy::exact(
            3,
            Duration::from_millis(10),
            2.0,
            Duration::from_millis(50),
        ))
        .handler(|m: Message| async move {
            if m.attempt < 2 {
                return Err(HandlerError::retry("pager busy"));
            }
            println!(
                "  alert {:?} handled on attempt {}",
                String::from_utf8_lossy(&m.payload),
                m.attempt
            );
            Ok(())
        })
        .start()
        .await?;
    tokio::time::timeout(
        WAIT,
        ps.publish("alerts.disk.full", Message::new("alert", "disk 97%")),
    )
    .await??;
    tokio::time::timeout(WAIT, async {
        while sub.stats().handled < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    println!("subscriber stats: {:?}", sub.stats());
    sub.stop().await;
    Ok(())
}
