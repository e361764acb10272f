//! Worker cases, idle: `worker::idle::*`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use courier_core::{Message, Worker};
use tokio::sync::mpsc;

use super::{Counting, GRACE, next, publish, queue, stop};
use crate::{Case, Ctx, Outcome, case, ensure, plain_config};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "worker::idle::wakes_promptly_on_publish",
            ["W"],
            wakes_promptly_on_publish
        ),
        case!("worker::idle::does_not_spin", ["W"], does_not_spin),
    ]
}

async fn wakes_promptly_on_publish(cx: Ctx) -> Outcome {
    let q = queue(&cx, "wake", plain_config())?;
    let idle_wait = Duration::from_secs(8).max(cx.prompt() * 4);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = Worker::builder(cx.backend.queue.clone(), &q)
        .idle_wait(idle_wait)
        .handler("ping", move |_m: Message| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Instant::now());
                Ok(())
            }
        })
        .start()?;
    let mut latencies = Vec::new();
    for _ in 0..3 {
        // Let the worker sink into its long idle receive.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = Instant::now();
        publish(&cx, &q, Message::new("ping", "")).await?;
        let at = next(&mut rx, cx.prompt(), "the handler").await?;
        latencies.push(at.saturating_duration_since(t0));
    }
    println!("idle_wait {idle_wait:?}: publish-to-handler latencies {latencies:?}");
    for l in &latencies {
        ensure!(
            *l < cx.prompt() && *l < idle_wait / 4,
            "latency {l:?} with idle_wait {idle_wait:?}: the worker did not wake on publish"
        );
    }
    // Stop does not wait for the pending idle receive either.
    let t0 = Instant::now();
    stop(h, GRACE).await?;
    let took = t0.elapsed();
    ensure!(
        took < cx.prompt(),
        "stop of an idle worker took {took:?} (idle_wait {idle_wait:?})"
    );
    Ok(())
}

async fn does_not_spin(cx: Ctx) -> Outcome {
    let q = queue(&cx, "spin", plain_config())?;
    let counting = Counting::new(cx.backend.queue.clone());
    let idle_wait = Duration::from_millis(250);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = Worker::builder(counting.clone(), &q)
        .idle_wait(idle_wait)
        .handler("m", move |_m: Message| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(());
                Ok(())
            }
        })
        .start()?;
    let window = Duration::from_secs(1);
    let t0 = Instant::now();
    tokio::time::sleep(window).await; // the idle period being measured
    let calls = counting.receives.load(Ordering::Relaxed);
    let took = t0.elapsed();
    let allowed = (took.as_millis() / idle_wait.as_millis()) as u64 + 3;
    println!("idle for {took:?} with idle_wait {idle_wait:?}: {calls} receive calls");
    ensure!(calls >= 1, "the idle worker never called receive");
    ensure!(
        calls <= allowed,
        "{calls} receive calls in {took:?} with idle_wait {idle_wait:?} (at most {allowed}): the worker spins"
    );
    // Still alive.
    publish(&cx, &q, Message::new("m", "")).await?;
    next(&mut rx, cx.prompt(), "the handler").await?;
    stop(h, GRACE).await?;
    Ok(())
}
