//! Q4 / Q9 across a consumer crash: a worker in another process (this test binary re-run as a
//! child) leases messages and blocks in its handlers; the parent SIGKILLs it while the handlers
//! are in flight. Its messages must come back once their leases end (1 s visibility timeout),
//! with the expired lease counted as a failed attempt, and be handled by the parent's own
//! worker: nothing lost. The scenario is the suite's
//! (`courier_conformance::faults::consumer_crash`), shared with the other backends.
//!
//! Uses the shared Redis (`COURIER_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`) under a
//! unique key prefix; skipped loudly when unreachable unless `COURIER_REQUIRE_BACKENDS=1`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use courier_conformance::faults::{self, Connect};
use courier_core::Queue;
use courier_redis::RedisBackend;
use tokio::time::timeout;

const TEST: &str = "in_flight_messages_of_a_killed_consumer_come_back_after_their_lease";

fn url() -> String {
    std::env::var("COURIER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn connect(url: String, prefix: String) -> courier_core::Result<RedisBackend> {
    let build = RedisBackend::builder().url(url).key_prefix(prefix).build();
    match timeout(Duration::from_secs(10), build).await {
        Ok(r) => r,
        Err(_) => Err(courier_core::Error::new(
            courier_core::ErrorKind::Unavailable,
            "connect timed out",
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_messages_of_a_killed_consumer_come_back_after_their_lease() {
    if std::env::var_os("COURIER_CRASH_CHILD_PREFIX").is_none()
        && let Err(e) = connect(url(), "courier-crash-probe".into()).await
    {
        if faults::required() {
            panic!(
                "{TEST}: Redis unreachable at {} and COURIER_REQUIRE_BACKENDS=1: {e}",
                url()
            );
        }
        eprintln!("SKIPPED {TEST}: Redis unreachable at {}: {e}", url());
        return;
    }
    let open: Connect = Arc::new(|url: String, prefix: String| {
        Box::pin(async move { Ok(Arc::new(connect(url, prefix).await?) as Arc<dyn Queue>) })
    });
    let prefix = faults::consumer_crash(TEST, url(), open).await;
    if std::env::var_os("COURIER_CRASH_CHILD_PREFIX").is_none() {
        cleanup(&prefix).await;
    }
}

async fn cleanup(prefix: &str) {
    support::delete_prefix(&url(), prefix).await;
}
