//! The conformance suite's factory for Redis: each case under its own key prefix, never
//! touching other keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use courier_conformance::{Backend, BackendFactory};
use courier_core::MessageId;
use courier_redis::RedisBackend;

pub(crate) struct Redis {
    pub(crate) name: &'static str,
    pub(crate) url: String,
    /// Run scripts as Redis Functions (the default) or as EVALSHA bodies.
    pub(crate) functions: bool,
    /// The batch fault switch of the handle each case got from `connect`, by namespace, for
    /// `fail_batch_after` (the switch only: the handles' connections close with the cases).
    pub(crate) handles: Mutex<HashMap<String, Arc<AtomicUsize>>>,
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
        if self.url.is_empty() {
            return Err(
                "COURIER_TEST_REDIS_CLUSTER_URL is not set (start a cluster with \
                 `scripts/redis-cluster.sh up`, which prints its URL)"
                    .to_string(),
            );
        }
        let b = self.open("probe").await.map_err(|e| e.to_string())?;
        b.ping().await.map_err(|e| e.to_string())
    }

    async fn connect(&self, ns: &str) -> courier_core::Result<Backend> {
        let b = self.open(ns).await?;
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ns.to_string(), b.batch_fault_switch());
        Ok(Backend::from_one(b))
    }

    async fn fail_batch_after(
        &self,
        ns: &str,
        _backend: &Backend,
        calls: usize,
    ) -> courier_core::Result<bool> {
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        let Some(switch) = handles.get(ns) else {
            return Ok(false);
        };
        switch.store(calls.saturating_add(1), Ordering::Relaxed);
        Ok(true)
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
#[allow(dead_code)] // each test binary uses one of the two URLs
pub(crate) fn url() -> String {
    std::env::var("COURIER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// `COURIER_TEST_REDIS_CLUSTER_URL`, or empty when it is not set (the probe then says so).
#[allow(dead_code)] // each test binary uses one of the two URLs
pub(crate) fn cluster_url() -> String {
    std::env::var("COURIER_TEST_REDIS_CLUSTER_URL").unwrap_or_default()
}
