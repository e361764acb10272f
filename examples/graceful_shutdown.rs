//! Graceful shutdown: stop taking work, let running handlers finish, give the rest back (W).
//!
//! A worker runs four handlers at a time over a backlog. On Ctrl-C (or after 400 ms, so the
//! example ends by itself) it is stopped with a grace period: handlers that finish within it
//! are acked, the one that does not is abandoned, and every message not handled is released
//! at once (ready again, the attempt not counted), so the next worker takes it without
//! waiting for a lease to end.
//!
//! Run: `cargo run --example graceful_shutdown [URL]` (default `memory://`).

use std::time::Duration;

use courier::Message;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let courier = courier::connect(&url).await?;
    println!("graceful shutdown on {} ({url})", courier.backend_name());
    let q = courier.queue();
    let queue = "examples.shutdown";
    // "huge" first, so it is running when the stop comes.
    let mut batch = vec![Message::new("encode", "huge")];
    batch.extend((0..8).map(|i| Message::new("encode", format!("chunk-{i}"))));
    tokio::time::timeout(WAIT, q.publish_batch(queue, batch)).await??;

    let encode = |m: Message| async move {
        // "huge" takes far longer than any grace period.
        let ms = if &m.payload[..] == b"huge" {
            30_000
        } else {
            300
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    };
    let worker = courier
        .worker(queue)
        .concurrency(4)
        .handler("encode", encode)
        .start()?;

    // Run until Ctrl-C, or 400 ms (a deploy's SIGTERM in real life).
    tokio::select! {
        _ = tokio::signal::ctrl_c() => println!("Ctrl-C: stopping"),
        _ = tokio::time::sleep(Duration::from_millis(400)) => println!("time is up: stopping"),
    }
    println!(
        "  before stop: {:?} in progress",
        worker.stats().in_progress
    );
    let report = tokio::time::timeout(WAIT, worker.stop(Duration::from_millis(500))).await?;
    println!(
        "  stopped: succeeded={} released={} abandoned={}",
        report.stats.succeeded, report.stats.released, report.abandoned
    );
    let s = tokio::time::timeout(WAIT, q.stats(queue)).await??;
    println!(
        "  queue after stop: ready={} in_flight={} acked={}",
        s.ready_total(),
        s.in_flight,
        s.acked
    );
    if s.in_flight != 0 || s.ready_total() + s.acked != 9 || report.abandoned != 1 {
        return Err("every message should be either acked or ready again".into());
    }

    // The next worker (after a deploy) finishes the backlog at once: nothing waits for a lease.
    let next = courier
        .worker(queue)
        .concurrency(8)
        .handler("encode", |_m: Message| async { Ok(()) })
        .start()?;
    tokio::time::timeout(WAIT, async {
        while q.stats(queue).await.map_or(0, |s| s.acked) < 9 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    let report = next.stop(Duration::from_secs(1)).await;
    println!(
        "next worker handled the remaining {}",
        report.stats.succeeded
    );
    Ok(())
}
