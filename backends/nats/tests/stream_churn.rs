//! Streams created while others are deleted. NATS 2.9 removes an account's store directory
//! when its last stream is deleted; a stream created at that moment fails with "error creating
//! store for stream" (JetStream error 10049; the server logs `mkdir …/jetstream/$G/streams: no
//! such file or directory`). CI met it once: one conformance case's first publish failed
//! while another case's clean-up deleted its stream. Nothing about the request was wrong and
//! nothing was stored, so the backend creates the stream again; a publish must not fail.
//!
//! Runs on a private server (its own store directory, so the shared server's other streams do
//! not hide the race): two tasks each create (by a publish) and delete a stream of their own,
//! many times over.

#[path = "support/server.rs"]
mod server;

use std::time::Duration;

use courier_core::{Message, QueueExt};
use courier_nats::NatsBackend;

const ROUNDS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_created_while_the_last_one_is_deleted() {
    let nats = match server::PrivateNats::start().await {
        Ok(Some(s)) => s,
        Ok(None) => {
            let require = std::env::var("COURIER_REQUIRE_BACKENDS").as_deref() == Ok("1");
            assert!(
                !require,
                "nats-server is not installed (COURIER_REQUIRE_BACKENDS=1)"
            );
            eprintln!("SKIPPING stream churn: nats-server is not installed");
            return;
        }
        Err(e) => panic!("private nats-server: {e}"),
    };
    let url = nats.url();
    let churn = |task: usize| {
        let url = url.clone();
        async move {
            let mut failures = Vec::new();
            for round in 0..ROUNDS {
                let b = NatsBackend::builder()
                    .url(url.clone())
                    .prefix(format!("churn{task}r{round}"))
                    .build()
                    .await
                    .expect("connect");
                if let Err(e) = b.publish("jobs", Message::new("k", "x")).await {
                    failures.push(format!("round {round}: {e}"));
                }
                b.delete_stream().await.expect("delete");
            }
            failures
        }
    };
    let run = async { tokio::join!(churn(0), churn(1)) };
    let (a, b) = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("churn bounded");
    let failures: Vec<_> = a.into_iter().chain(b).collect();
    println!(
        "{} streams created and deleted by 2 tasks: {} publish failures",
        2 * ROUNDS,
        failures.len()
    );
    assert!(failures.is_empty(), "publishes failed: {failures:#?}");
}
