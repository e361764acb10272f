//! Retries with exponential backoff, dead letters, and putting dead letters back (Q5, Q6).
//!
//! A handler fails while a (simulated) upstream is down. Each failure is retried after the
//! queue's backoff; after `max_attempts` deliveries the message goes to the dead letters with
//! its last error. The upstream comes back, an operator requeues the dead letters, and they
//! are handled.
//!
//! Run: `cargo run --example retry_dead_letters [URL]` (default `memory://`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use courier::{HandlerError, Message, QueueConfig, QueueExt, RetryPolicy, Selection};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let courier = courier::connect(&url).await?;
    println!(
        "retry and dead letters on {} ({url})",
        courier.backend_name()
    );
    let q = courier.queue();
    let queue = "examples.retry";

    // Three deliveries in all; 50 ms after the first failure, then 100 ms (no jitter, so the
    // timings printed below are predictable).
    let retry = RetryPolicy::exact(3, Duration::from_millis(50), 2.0, Duration::from_secs(1));
    q.configure(queue, QueueConfig::default().with_retry(retry))?;
    for (a, (low, high)) in retry.delay_bounds_table().iter().enumerate().take(2) {
        println!("  backoff after attempt {}: {low:?}..={high:?}", a + 1);
    }

    let upstream_up = Arc::new(AtomicBool::new(false));
    let up = upstream_up.clone();
    let started = Instant::now();
    let worker = courier
        .worker(queue)
        .handler("sync_contact", move |m: Message| {
            let up = up.clone();
            async move {
                let t = started.elapsed().as_millis();
                if !up.load(Ordering::SeqCst) {
                    println!("  t={t:>4} ms attempt {}: upstream down", m.attempt);
                    return Err(HandlerError::retry("upstream returned 503"));
                }
                println!("  t={t:>4} ms attempt {}: synced", m.attempt);
                Ok(())
            }
        })
        .start()?;

    tokio::time::timeout(WAIT, q.publish(queue, Message::new("sync_contact", "ann"))).await??;
    wait_until(|| async { Ok(q.stats(queue).await?.dead == 1) }).await?;

    let dead = tokio::time::timeout(WAIT, q.dead_letters_all(queue, 10)).await??;
    for d in &dead {
        println!(
            "dead letter {}: {} attempts, last error {:?}",
            d.message.kind, d.attempts, d.error
        );
    }
    if dead.len() != 1 || dead[0].attempts != 3 {
        return Err(format!("expected one dead letter after 3 attempts, got {dead:?}").into());
    }

    // The upstream is back: put the dead letters back in the queue (Q6). They start over with
    // a fresh attempt count.
    upstream_up.store(true, Ordering::SeqCst);
    let n = tokio::time::timeout(WAIT, q.requeue_dead(queue, Selection::All)).await??;
    println!("requeued {n} dead letter(s)");
    wait_until(|| async { Ok(q.stats(queue).await?.acked == 1) }).await?;
    worker.stop(Duration::from_secs(1)).await;

    let s = tokio::time::timeout(WAIT, q.stats(queue)).await??;
    println!(
        "stats: published={} retried={} dead_lettered={} acked={} dead={}",
        s.published, s.retried, s.dead_lettered, s.acked, s.dead
    );
    if (s.retried, s.dead_lettered, s.acked, s.dead) != (2, 1, 1, 0) {
        return Err("unexpected counters".into());
    }
    Ok(())
}

/// Poll `cond` every 10 ms until it holds, for at most [`WAIT`].
async fn wait_until<F, Fut>(cond: F) -> Result<(), Box<dyn std::error::Error>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = courier::Result<bool>>,
{
    tokio::time::timeout(WAIT, async {
        loop {
            if cond().await? {
                return Ok::<_, courier::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await??;
    Ok(())
}
