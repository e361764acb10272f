//! Q11 across processes: three copies of this test binary publish the same 10,000 keyed
//! messages to the shared NATS server at once (under a unique stream prefix); exactly 10,000
//! are stored and handled. The scenario is the suite's
//! (`courier_conformance::faults::keyed_publishers`), shared with the other backends.

use std::sync::Arc;
use std::time::Duration;

use courier_conformance::faults::{self, Connect};
use courier_core::Queue;
use courier_nats::NatsBackend;

const TEST: &str = "three_processes_publish_the_same_10000_keys";

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
async fn three_processes_publish_the_same_10000_keys() {
    let child = std::env::var_os("COURIER_KEYED_CHILD").is_some();
    if !child {
        // Connecting does not touch JetStream: `ping` also checks that it answers.
        let probe = match open(url(), "courier-keyed-probe".into()).await {
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
    let prefix = faults::keyed_publishers(TEST, url(), connect).await;
    if !child && let Ok(b) = open(url(), prefix).await {
        let _ = b.delete_stream().await;
    }
}
