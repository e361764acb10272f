//! Metrics: install a recorder, connect, do some work, and read what Courier recorded.
//!
//! Courier records through the `metrics` facade; the application picks the exporter. Here it
//! is the Prometheus exporter's recorder, rendered to text instead of served over HTTP (a
//! service would use `PrometheusBuilder::with_http_listener` and let Prometheus scrape it).
//! Ten jobs are published, nine succeed and one fails for good; the counters, the handler
//! durations and the depth gauges of the stats poller then show exactly that.
//!
//! Run: `cargo run --example metrics [URL]` (default `memory://`).

use std::time::Duration;

use courier::{HandlerError, Message};
use metrics_exporter_prometheus::PrometheusBuilder;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());

    // Install the recorder first: Courier registers its handles the first time it uses a
    // queue's name, and handles registered before a recorder exists stay no-ops.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    courier::telemetry::describe();

    let courier = courier::connect(&url).await?;
    println!("metrics on {} ({url})", courier.backend_name());
    // Depth (ready per priority, delayed, in flight, dead) comes from a periodic stats poll,
    // which one process per deployment switches on.
    let poller = courier::telemetry::spawn_stats_poller(courier.clone(), Duration::from_millis(50));

    let q = courier.queue();
    let queue = "examples.metrics";
    let worker = courier
        .worker(queue)
        .handler("resize", |m: Message| async move {
            if m.payload.as_ref() == &b"corrupt.png"[..] {
                return Err(HandlerError::permanent("not an image"));
            }
            Ok(())
        })
        .start()?;
    let mut jobs: Vec<Message> = (1..10)
        .map(|i| Message::new("resize", format!("photo-{i}.jpg")))
        .collect();
    jobs.push(Message::new("resize", "corrupt.png"));
    tokio::time::timeout(WAIT, q.publish_batch(queue, jobs)).await??;
    tokio::time::timeout(WAIT, async {
        loop {
            let s = q.stats(queue).await?;
            if s.acked + s.dead_lettered == 10 {
                return Ok::<_, courier::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await??;
    worker.stop(Duration::from_secs(1)).await;

    // What a scrape of /metrics would show, once the poller has seen the dead letter.
    let wanted = [
        "courier_published_total",
        "courier_acked_total",
        "courier_dead_lettered_total",
        "courier_handler_duration_seconds_count",
        "courier_queue_dead",
    ];
    let text = tokio::time::timeout(WAIT, async {
        loop {
            let text = prometheus.render();
            if value(&text, "courier_queue_dead", "") == Some(1.0) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    poller.abort();
    for line in text
        .lines()
        .filter(|l| wanted.iter().any(|w| l.starts_with(w)))
    {
        println!("  {line}");
    }

    let checks = [
        ("courier_published_total", "", 10.0),
        ("courier_acked_total", "", 9.0),
        ("courier_dead_lettered_total", "", 1.0),
        (
            "courier_handler_duration_seconds_count",
            "outcome=\"ok\"",
            9.0,
        ),
        (
            "courier_handler_duration_seconds_count",
            "outcome=\"dead\"",
            1.0,
        ),
    ];
    for (name, label, want) in checks {
        let got = value(&text, name, label);
        if got != Some(want) {
            return Err(format!("{name} {{{label}}}: expected {want}, got {got:?}").into());
        }
    }
    Ok(())
}

/// The sum of the samples of `name` whose labels include `label` (any, when empty).
fn value(text: &str, name: &str, label: &str) -> Option<f64> {
    let samples: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}
