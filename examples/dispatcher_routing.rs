//! The dispatcher: publish by kind, and let routes decide the queue (Q2, Q10).
//!
//! Producers name what the work is (`transcode`, `caption`, …), not where it goes. Routes map
//! kinds to queues (with an optional default priority per kind); a batch is split by queue;
//! an unrouted kind is refused before anything is sent, unless a default queue catches it.
//!
//! Run: `cargo run --example dispatcher_routing [URL]` (default `memory://`).

use std::time::Duration;

use courier::{ErrorKind, Message, Priority};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let courier = courier::connect(&url).await?;
    println!("dispatcher on {} ({url})", courier.backend_name());
    let d = courier.dispatcher();
    d.route("transcode", "examples.media")?;
    d.route("thumbnail", "examples.media")?;
    d.route("caption", "examples.ai")?;
    d.route_with_priority("page_oncall", "examples.alerts", Some(Priority::Critical))?;
    for (kind, queue) in d.routes() {
        println!("  route {kind:<12} -> {queue}");
    }

    // One batch, three queues: routed first, then one publish per queue.
    let out = tokio::time::timeout(
        WAIT,
        d.dispatch_batch(vec![
            Message::new("transcode", "a.mp4"),
            Message::new("caption", "a.mp4"),
            Message::new("thumbnail", "a.mp4"),
            Message::new("page_oncall", "disk full"),
        ]),
    )
    .await??;
    println!("dispatched {} messages", out.len());
    for queue in ["examples.media", "examples.ai", "examples.alerts"] {
        let s = tokio::time::timeout(WAIT, courier.queue().stats(queue)).await??;
        println!(
            "  {queue:<16} ready {} (critical {})",
            s.ready_total(),
            s.ready_at(Priority::Critical)
        );
    }

    // An unknown kind is refused and nothing of the batch is sent.
    let refused = tokio::time::timeout(
        WAIT,
        d.dispatch_batch(vec![
            Message::new("transcode", "b.mp4"),
            Message::new("translate", ""),
        ]),
    )
    .await?;
    match refused {
        Err(e) if e.kind() == ErrorKind::InvalidInput => println!("unrouted kind refused: {e}"),
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }
    let media = tokio::time::timeout(WAIT, courier.queue().stats("examples.media")).await??;
    if media.published != 2 {
        return Err("the refused batch must not publish anything".into());
    }

    // With a default queue, unknown kinds land there.
    d.set_default_queue("examples.misc")?;
    tokio::time::timeout(WAIT, d.dispatch(Message::new("translate", "hola"))).await??;
    println!("translate now goes to {:?}", d.queue_for("translate"));

    // A worker per queue handles its kinds.
    let media_worker = courier
        .worker("examples.media")
        .handler("transcode", |m: Message| async move {
            println!("  media: transcode {}", String::from_utf8_lossy(&m.payload));
            Ok(())
        })
        .handler("thumbnail", |m: Message| async move {
            println!("  media: thumbnail {}", String::from_utf8_lossy(&m.payload));
            Ok(())
        })
        .start()?;
    tokio::time::timeout(WAIT, async {
        while media_worker.stats().succeeded < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    media_worker.stop(Duration::from_secs(1)).await;
    Ok(())
}
