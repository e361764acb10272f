//! Q4 / Q9 across a consumer crash on NATS JetStream: a worker in another process is SIGKILLed
//! mid-handler; its messages come back when their leases end, the expiry counted as the
//! attempt, and nothing is lost. The scenario is the suite's
//! (`courier_conformance::faults::consumer_crash`), shared with the other backends.
//!
//! Uses the shared server (`COURIER_TEST_NATS_URL`, default `nats://127.0.0.1:4222`) under a
//! unique prefix, and deletes its stream afterwards; skipped loudly when unreachable unless
//! `COURIER_REQUIRE_BACKENDS=1`.

use std::sync::Arc;
use std::time::Duration;

use courier_conformance::faults::{self, Connect};
use courier_core::Queue;
use courier_nats::NatsBackend;

const TEST: &str = "in_flight_messages_of_a_killed_consumer_come_back_after_their_lease";

fn url() -> String {
    std::env::var("COURIER_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

async fn open(url: String, prefix: String) -> courier_core::Result<NatsBackend> {
    NatsBackend::builder()
        .url(url)
        .prefix(prefix)
        .connection_timeout(Duration::from_secs(5))
        .build()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_messages_of_a_killed_consumer_come_back_after_their_lease() {
    if std::env::var_os("COURIER_CRASH_CHILD_PREFIX").is_none() {
        // Connecting does not touch JetStream: `ping` also checks that it answers.
        let probe = match open(url(), "courier-crash-probe".into()).await {
            Ok(b) => b.ping().await.and(b.delete_stream().await),
            Err(e) => Err(e),
        };
        if let Err(e) = probe {
            if faults::required() {
                panic!(
                    "{TEST}: NATS unreachable at {} and COURIER_REQUIRE_BACKENDS=1: {e}",
                    url()
                );
            }
            eprintln!("SKIPPED {TEST}: NATS unreachable at {}: {e}", url());
            return;
        }
    }
    let connect: Connect = Arc::new(|url: String, prefix: String| {
        Box::pin(async move { Ok(Arc::new(open(url, prefix).await?) as Arc<dyn Queue>) })
    });
    let prefix = faults::consumer_crash(TEST, url(), connect).await;
    if std::env::var_os("COURIER_CRASH_CHILD_PREFIX").is_none()
        && let Ok(b) = open(url(), prefix).await
    {
        let _ = b.delete_stream().await;
    }
}
