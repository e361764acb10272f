//! The conformance suite's factory for NATS: each case under its own prefix (its own
//! JetStream stream and subjects), deleted after the case; nothing else on the server is
//! touched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use courier_conformance::{Backend, BackendFactory};
use courier_core::MessageId;
use courier_nats::NatsBackend;

pub(crate) struct Nats {
    pub(crate) name: &'static str,
    pub(crate) url: String,
    /// Per namespace, the handle `connect` gave the case: its batch fault switch and the
    /// address of its queue service (to recognise the `Backend` the suite passes back).
    pub(crate) handles: Mutex<HashMap<String, Handle>>,
}

pub(crate) struct Handle {
    switch: Arc<AtomicUsize>,
    backend: NatsBackend,
    queue: usize,
}

/// The address of a service, to compare identities.
fn address<T: ?Sized>(a: &Arc<T>) -> usize {
    Arc::as_ptr(a).cast::<()>() as usize
}

impl Nats {
    async fn open(&self, ns: &str) -> courier_core::Result<NatsBackend> {
        NatsBackend::builder()
            .url(self.url.clone())
            .prefix(format!("cc-{ns}"))
            .connection_timeout(Duration::from_secs(10))
            .build()
            .await
    }
}

#[async_trait]
impl BackendFactory for Nats {
    fn name(&self) -> &'static str {
        self.name
    }

    fn tick(&self) -> Duration {
        Duration::from_millis(25)
    }

    async fn probe(&self) -> Result<(), String> {
        let b = self.open("probe").await.map_err(|e| e.to_string())?;
        b.ping().await.map_err(|e| e.to_string())?;
        b.delete_stream().await.map_err(|e| e.to_string())
    }

    async fn connect(&self, ns: &str) -> courier_core::Result<Backend> {
        let b = self.open(ns).await?;
        let backend = Backend::from_one(b.clone());
        let handle = Handle {
            switch: b.batch_fault_switch(),
            backend: b,
            queue: address(&backend.queue),
        };
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ns.to_string(), handle);
        Ok(backend)
    }

    async fn fail_batch_after(
        &self,
        ns: &str,
        _backend: &Backend,
        calls: usize,
    ) -> courier_core::Result<bool> {
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        let Some(Handle { switch, .. }) = handles.get(ns) else {
            return Ok(false);
        };
        switch.store(calls.saturating_add(1), Ordering::Relaxed);
        Ok(true)
    }

    async fn reopen(&self, ns: &str, _backend: &Backend) -> courier_core::Result<Backend> {
        // A new connection and new followers under the same prefix, as another process.
        Ok(Backend::from_one(self.open(ns).await?))
    }

    /// Make the handle's client reconnect (its subscriptions must come back).
    async fn disrupt(&self, backend: &Backend) -> courier_core::Result<bool> {
        let target = address(&backend.queue);
        let found = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|h| h.queue == target)
            .map(|h| h.backend.clone());
        match found {
            Some(b) => b.disrupt().await,
            None => Ok(false),
        }
    }

    /// Delete the case's stream (every queue and topic of the namespace).
    async fn cleanup(&self, ns: &str) -> courier_core::Result<()> {
        let handle = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(ns);
        match handle {
            Some(h) => h.backend.delete_stream().await,
            None => self.open(ns).await?.delete_stream().await,
        }
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

/// `COURIER_TEST_NATS_URL`, default `nats://127.0.0.1:4222`.
pub(crate) fn url() -> String {
    std::env::var("COURIER_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_string())
}
