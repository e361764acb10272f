//! The start-up guard: Redis evicting keys under memory pressure would lose messages, so
//! building a backend warns (once per process) when `maxmemory-policy` is not `noeviction`,
//! and stays quiet when the policy cannot be read (`CONFIG` disabled). Private servers only:
//! the shared one's configuration is never changed.

mod support;

use std::sync::Arc;
use std::time::Duration;

use courier_redis::RedisBackend;
use parking_lot::Mutex;
use tokio::time::timeout;

/// Records WARN events (their fields as text).
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

impl tracing::Subscriber for Warnings {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut f = Fields(String::new());
        event.record(&mut f);
        self.0.lock().push(f.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Warnings {
    fn about_eviction(&self) -> Vec<String> {
        self.0
            .lock()
            .iter()
            .filter(|w| w.contains("maxmemory-policy"))
            .cloned()
            .collect()
    }
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
    let warnings = Warnings::default();
    // A current-thread runtime: the build futures run on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(warnings.clone());
    let test = "warns_once_when_redis_may_evict_and_ignores_a_disabled_config";

    // noeviction (Redis' default): quiet.
    let Some(plain) = support::start_or_skip(test, &["--save", "", "--appendonly", "no"]) else {
        return;
    };
    build(&plain).await.ping().await.expect("ping");
    assert!(
        warnings.about_eviction().is_empty(),
        "{:?}",
        warnings.0.lock()
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
    assert!(warnings.0.lock().is_empty(), "{:?}", warnings.0.lock());

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
    let w = warnings.about_eviction();
    assert_eq!(w.len(), 1, "warned once: {w:?}");
    assert!(w[0].contains("allkeys-lru"), "{w:?}");
}
