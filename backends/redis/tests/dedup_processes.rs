//! Q11 across processes: three copies of this test binary publish the same 10,000 keyed
//! messages to the shared Redis at once (under a unique key prefix); exactly 10,000 are stored
//! and handled. The scenario is the suite's (`courier_conformance::faults::keyed_publishers`),
//! shared with SQLite. Skipped loudly when Redis is unreachable unless
//! `COURIER_REQUIRE_BACKENDS=1`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use courier_conformance::faults::{self, Connect};
use courier_core::Queue;
use courier_redis::RedisBackend;
use tokio::time::timeout;

const TEST: &str = "three_processes_publish_the_same_10000_keys";

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
async fn three_processes_publish_the_same_10000_keys() {
    let child = std::env::var_os("COURIER_KEYED_CHILD").is_some();
    if !child && let Err(e) = connect(url(), "courier-keyed-probe".into()).await {
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
    let prefix = faults::keyed_publishers(TEST, url(), open).await;
    if !child {
        cleanup(&prefix).await;
    }
}

async fn cleanup(prefix: &str) {
    support::delete_prefix(&url(), prefix).await;
}
