//! The whole conformance suite on Redis (`COURIER_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`): each case under its own key prefix, never touching other keys.

use async_trait::async_trait;
use courier_conformance::{Backend, BackendFactory};
use courier_core::MessageId;
use courier_redis::RedisBackend;

struct Redis {
    url: String,
}

impl Redis {
    async fn open(&self, ns: &str) -> courier_core::Result<RedisBackend> {
        RedisBackend::builder()
            .url(self.url.clone())
            .key_prefix(format!("courier-conformance:{ns}"))
            .build()
            .await
    }
}

#[async_trait]
impl BackendFactory for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn probe(&self) -> Result<(), String> {
        let b = self.open("probe").await.map_err(|e| e.to_string())?;
        b.ping().await.map_err(|e| e.to_string())
    }

    async fn connect(&self, ns: &str) -> courier_core::Result<Backend> {
        Ok(Backend::from_one(self.open(ns).await?))
    }

    async fn reopen(&self, ns: &str, _backend: &Backend) -> courier_core::Result<Backend> {
        // New connections under the same prefix, as another process would have.
        Ok(Backend::from_one(self.open(ns).await?))
    }

    async fn inject_undecodable(
        &self,
        _backend: &Backend,
        queue: &str,
        bytes: &[u8],
    ) -> courier_core::Result<Option<MessageId>> {
        let ns = queue.split('-').next().unwrap_or(queue);
        self.open(ns)
            .await?
            .inject_raw(queue, bytes)
            .await
            .map(Some)
    }
}

fn main() -> std::process::ExitCode {
    let url = std::env::var("COURIER_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    courier_conformance::run(Redis { url })
}
