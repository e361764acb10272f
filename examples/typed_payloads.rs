//! Typed payloads with serde: jobs and events as Rust types, travelling as JSON.
//!
//! Publish a struct with `publish_json` (or `Message::json`), handle it with a
//! `json_handler` that receives the decoded value; a payload that does not decode fails
//! permanently (no retry can fix it) and lands in the dead letters with the decode error.
//! Events implement `courier::Event` to name their topic, and a group consumer receives them
//! typed with `on_event`.
//!
//! Run: `cargo run --example typed_payloads [URL]` (default `memory://`).

use std::time::Duration;

use courier::{EventBusExt, Message, QueueExt};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(10);

/// A job: transcode a recording.
#[derive(Debug, Serialize, Deserialize)]
struct Transcode {
    recording: String,
    heights: Vec<u32>,
}

/// An event: a meeting was created.
#[derive(Debug, Serialize, Deserialize)]
struct MeetingCreated {
    id: String,
    host: String,
}

impl courier::Event for MeetingCreated {
    const TOPIC: &'static str = "examples.meeting.created";
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let courier = courier::connect(&url).await?;
    println!("typed payloads on {} ({url})", courier.backend_name());
    let q = courier.queue();
    let queue = "examples.typed";

    let job = Transcode {
        recording: "standup.mkv".into(),
        heights: vec![360, 720],
    };
    tokio::time::timeout(WAIT, q.publish_json(queue, "transcode", &job)).await??;
    // Something else under the same kind: a producer with an old schema.
    tokio::time::timeout(
        WAIT,
        q.publish(queue, Message::new("transcode", r#"{"file":"old.mkv"}"#)),
    )
    .await??;

    let worker = courier
        .worker(queue)
        .json_handler("transcode", |job: Transcode, m: Message| async move {
            println!(
                "  transcode {} to {:?} (attempt {})",
                job.recording, job.heights, m.attempt
            );
            Ok(())
        })
        .start()?;
    tokio::time::timeout(WAIT, async {
        while worker.stats().succeeded + worker.stats().dead < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    let report = worker.stop(Duration::from_secs(1)).await;
    println!(
        "worker: succeeded={} dead={}",
        report.stats.succeeded, report.stats.dead
    );
    for d in tokio::time::timeout(WAIT, q.dead_letters_all(queue, 10)).await?? {
        println!("  dead letter after {} attempt(s): {}", d.attempts, d.error);
    }
    if (
        report.stats.succeeded,
        report.stats.dead,
        report.stats.retried,
    ) != (1, 1, 0)
    {
        return Err("expected one handled and one dead at once".into());
    }

    // Typed events.
    let bus = courier.events();
    tokio::time::timeout(
        WAIT,
        bus.emit_typed(&MeetingCreated {
            id: "m-1".into(),
            host: "ann".into(),
        }),
    )
    .await??;
    let consumer = courier
        .group_consumer("examples-typed")
        .on_event(|e: MeetingCreated, _m: Message| async move {
            println!("  meeting {} created by {}", e.id, e.host);
            Ok(())
        })
        .start()
        .await?;
    tokio::time::timeout(WAIT, async {
        while consumer.stats().succeeded < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    consumer.stop(Duration::from_secs(1)).await;

    // Decoding by hand, e.g. when consuming without a worker.
    let m = Message::json("transcode", &job)?;
    let back: Transcode = m.decode()?;
    println!("round trip: {back:?}");
    Ok(())
}
