//! Q4 / Q9 across a consumer crash: a worker in another process (this test binary re-run as a
//! child) leases messages and blocks in its handlers; the parent SIGKILLs it while the handlers
//! are in flight. Its messages must come back once their leases end (1 s visibility timeout),
//! with the expired lease counted as a failed attempt, and be handled by the parent's own
//! worker: nothing lost. The scenario is the suite's
//! (`courier_conformance::faults::consumer_crash`), shared with the other backends.
//!
//! Uses the shared Redis (`COURIER_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`) under a
//! unique key prefix; skipped loudly when unreachable unless `COURIER_REQUIRE_BACKENDS=1`.

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

/// Delete the test's keys (the queue's counters and the like) from the shared Redis.
async fn cleanup(prefix: &str) {
    let Ok(client) = redis::Client::open(url()) else {
        return;
    };
    let Ok(Ok(mut conn)) = timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    else {
        return;
    };
    let keys: Vec<String> = timeout(
        Duration::from_secs(5),
        redis::cmd("KEYS")
            .arg(format!("{{{prefix}:*"))
            .query_async(&mut conn),
    )
    .await
    .ok()
    .and_then(|r| r.ok())
    .unwrap_or_default();
    if !keys.is_empty() {
        let _ = timeout(
            Duration::from_secs(5),
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<redis::Value>(&mut conn),
        )
        .await;
    }
}
