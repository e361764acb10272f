//! What the CLI's integration tests share: unique names, temporary SQLite files, bounded
//! awaits, Redis when reachable (skipped loudly otherwise) and the stats comparison.
#![allow(dead_code)] // each test binary uses a part of it

use std::time::Duration;

use courier::{Courier, QueueStats};

/// The longest any await, child process or wait of these tests may take.
pub(crate) const LIMIT: Duration = Duration::from_secs(60);

/// A name no other test or run uses.
pub(crate) fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("cli-{}-{nanos}-{what}", std::process::id())
}

/// Removes the SQLite file (and its journal files) when dropped.
pub(crate) struct TempDb(String);

impl TempDb {
    pub(crate) fn new(what: &str) -> TempDb {
        let path = std::env::temp_dir().join(format!("{}.db", unique(what)));
        TempDb(path.display().to_string())
    }
    pub(crate) fn url(&self) -> String {
        format!("sqlite://{}", self.0)
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0));
        }
    }
}

/// `f`'s value, or a panic naming `what` when it fails or takes longer than [`LIMIT`].
pub(crate) async fn within<T>(
    what: &str,
    f: impl std::future::Future<Output = courier::Result<T>>,
) -> T {
    match tokio::time::timeout(LIMIT, f).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: no answer within {LIMIT:?}"),
    }
}

pub(crate) fn require_backends() -> bool {
    std::env::var("COURIER_REQUIRE_BACKENDS").is_ok_and(|v| v == "1")
}

/// Say loudly that `what` is skipped and why; a failure under `COURIER_REQUIRE_BACKENDS=1`.
pub(crate) fn skip_loudly(what: &str, why: &str) {
    assert!(!require_backends(), "COURIER_REQUIRE_BACKENDS=1: {why}");
    eprintln!("\n{}", "=".repeat(88));
    eprintln!("SKIPPED {what}: {why}");
    eprintln!("Set COURIER_REQUIRE_BACKENDS=1 to make this a failure.");
    eprintln!("{}\n", "=".repeat(88));
}

/// Redis, when reachable (`what` names the test that is skipped otherwise).
pub(crate) async fn redis(what: &str) -> Option<(Courier, String)> {
    let url = std::env::var("COURIER_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let probe = async {
        let c = courier::connect(&url).await?;
        c.queue().stats("cli-probe").await?;
        Ok::<_, courier::Error>(c)
    };
    let why = match tokio::time::timeout(Duration::from_secs(10), probe).await {
        Ok(Ok(c)) => return Some((c, url)),
        Ok(Err(e)) => format!("Redis at {} is unreachable: {e}", courier::redact_url(&url)),
        Err(_) => format!("Redis at {} gave no answer", courier::redact_url(&url)),
    };
    skip_loudly(what, &why);
    None
}

/// Assert that the JSON stats `v` (the CLI's and the dashboard's shape) are `s`.
pub(crate) fn assert_same_stats(v: &serde_json::Value, s: &QueueStats) {
    let got = (
        [
            v["ready"]["critical"].as_u64(),
            v["ready"]["high"].as_u64(),
            v["ready"]["normal"].as_u64(),
            v["ready"]["low"].as_u64(),
        ],
        v["delayed"].as_u64(),
        v["in_flight"].as_u64(),
        v["dead"].as_u64(),
        v["published"].as_u64(),
        v["acked"].as_u64(),
        v["retried"].as_u64(),
        v["dead_lettered"].as_u64(),
        v["deduplicated"].as_u64(),
        v["expired"].as_u64(),
    );
    let want = (
        s.ready.map(Some),
        Some(s.delayed),
        Some(s.in_flight),
        Some(s.dead),
        Some(s.published),
        Some(s.acked),
        Some(s.retried),
        Some(s.dead_lettered),
        Some(s.deduplicated),
        Some(s.expired),
    );
    assert_eq!(got, want, "the CLI's stats are the library's: {v}");
}
