//! Helpers the telemetry tests share: unique names and a Redis that may be absent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use courier::Courier;

/// A name no other test, process or run uses.
pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn require_backends() -> bool {
    std::env::var("COURIER_REQUIRE_BACKENDS").is_ok_and(|v| v == "1")
}

/// Redis (`COURIER_TEST_REDIS_URL`, default 127.0.0.1:6379) when reachable; otherwise a
/// loud skip naming `what`, which is a failure under `COURIER_REQUIRE_BACKENDS=1`.
pub(crate) async fn redis(what: &str) -> Option<Courier> {
    let url = std::env::var("COURIER_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let probe = async {
        let c = courier::connect(&url).await?;
        c.queue().stats("telemetry-probe").await?;
        Ok::<_, courier::Error>(c)
    };
    let why = match tokio::time::timeout(Duration::from_secs(10), probe).await {
        Ok(Ok(c)) => return Some(c),
        Ok(Err(e)) => format!("Redis at {} is unreachable: {e}", courier::redact_url(&url)),
        Err(_) => format!("Redis at {} gave no answer", courier::redact_url(&url)),
    };
    assert!(!require_backends(), "COURIER_REQUIRE_BACKENDS=1: {why}");
    eprintln!(
        "\n{}\nSKIPPED {what}: {why}\nSet COURIER_REQUIRE_BACKENDS=1 to make this a failure.\n{}\n",
        "=".repeat(88),
        "=".repeat(88)
    );
    None
}
