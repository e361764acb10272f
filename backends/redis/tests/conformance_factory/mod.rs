//! The conformance suite's factory for Redis: each case under its own key prefix, never
//! touching other keys.

use async_trait::async_trait;
use courier_conformance::{Backend, BackendFactory};
use courier_core::MessageId;
use courier_redis::RedisBackend;

pub(crate) struct Redis {
    pub(crate) name: &'static str,
    pub(crate) url: String,
    /// Run scripts as Redis Functions (the default) or as EVALSHA bodies.
    pub(crate) functions: bool,
}

impl Redis {
    async fn open(&self, ns: &str) -> courier_core::Result<RedisBackend> {
        RedisBackend::builder()
            .url(self.url.clone())
            .key_prefix(format!("courier-conformance:{ns}"))
            .redis_functions(self.functions)
            .build()
            .await
    }
}

#[async_trait]
impl BackendFactory for Redis {
    fn name(&self) -> &'static str {
        self.name
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

/// `COURIER_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`.
pub(crate) fn url() -> String {
    std::env::var("COURIER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}
