//! Q1 across broker crashes: a private `redis-server` with `appendonly yes` and
//! `appendfsync always` is SIGKILLed and restarted on the same port twice while 4 publishers
//! publish 20,000 messages and 4 workers (the core `Worker` runtime) consume them.
//!
//! The scenario and its Jepsen-style accounting (lost 0, unexpected 0, duplicates counted and
//! printed) are the suite's (`courier_conformance::faults::broker_restart`), shared with the
//! other backends.

mod support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use courier_conformance::faults::{self, Connect, PrivateBroker, Restart};
use courier_core::Queue;
use courier_redis::RedisBackend;

struct Server(support::PrivateRedis);

#[async_trait]
impl PrivateBroker for Server {
    fn url(&self) -> String {
        self.0.url()
    }

    fn pid(&self) -> Option<u32> {
        self.0.pid()
    }

    fn kill9(&mut self) {
        self.0.kill9();
    }

    async fn restart(&mut self) -> Result<(), String> {
        self.0
            .spawn()
            .map_err(|e| format!("restart redis-server: {e}"))?;
        if self.0.wait_listening(Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err("redis-server did not come back".into())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_survive_two_kill9_restarts() {
    let Some(server) = support::start_or_skip(
        "acknowledged_publishes_survive_two_kill9_restarts",
        &[
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ],
    ) else {
        return;
    };
    let connect: Connect = Arc::new(|url: String, prefix: String| {
        Box::pin(async move {
            let b = RedisBackend::builder()
                .url(url)
                .key_prefix(prefix)
                .build()
                .await?;
            Ok(Arc::new(b) as Arc<dyn Queue>)
        })
    });
    faults::broker_restart(&mut Server(server), connect, Restart::default()).await;
}
