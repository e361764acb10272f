//! The start-up guard: Redis evicting keys under memory pressure would lose messages, so
//! building a backend warns (once per process) when `maxmemory-policy` is not `noeviction`,
//! and stays quiet when the policy cannot be read (`CONFIG` disabled). Private servers only:
//! the shared one's configuration is never changed.

mod support;

use std::time::Duration;

use courier_redis::RedisBackend;
use tokio::time::timeout;

use support::logs::{Line, LogRecorder};

/// The WARN lines about the eviction policy.
fn about_eviction(warnings: &LogRecorder) -> Vec<String> {
    warnings
        .lines()
        .iter()
        .map(Line::text)
        .filter(|w| w.contains("maxmemory-policy"))
        .collect()
}

async fn build(server: &support::PrivateRedis) -> RedisBackend {
    timeout(
        Duration::from_secs(10),
        RedisBackend::from_url(&server.url()),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

// One test in this binary: the warning is once per process.
#[tokio::test(flavor = "current_thread")]
async fn warns_once_when_redis_may_evict_and_ignores_a_disabled_config() {
    let warnings = LogRecorder::new(tracing::Level::WARN, "");
    // A current-thread runtime: the build futures run on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(warnings.clone());
    let test = "warns_once_when_redis_may_evict_and_ignores_a_disabled_config";

    // noeviction (Redis' default): quiet.
    let Some(plain) = support::start_or_skip(test, &["--save", "", "--appendonly", "no"]) else {
        return;
    };
    build(&plain).await.ping().await.expect("ping");
    assert!(
        about_eviction(&warnings).is_empty(),
        "{:?}",
        warnings.lines()
    );

    // CONFIG disabled (renamed away, as managed services do): the policy cannot be read; the
    // backend works and says nothing at WARN level.
    let locked = support::start_or_skip(
        test,
        &[
            "--save",
            "",
            "--appendonly",
            "no",
            "--rename-command",
            "CONFIG",
            "",
        ],
    )
    .expect("a second private server");
    build(&locked).await.ping().await.expect("ping");
    assert!(warnings.lines().is_empty(), "{:?}", warnings.lines());

    // An evicting policy: one warning naming the policy, however many backends are built.
    let evicting = support::start_or_skip(
        test,
        &[
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "allkeys-lru",
        ],
    )
    .expect("a third private server");
    for _ in 0..3 {
        build(&evicting).await.ping().await.expect("ping");
    }
    let w = about_eviction(&warnings);
    assert_eq!(w.len(), 1, "warned once: {w:?}");
    assert!(w[0].contains("allkeys-lru"), "{w:?}");
}
