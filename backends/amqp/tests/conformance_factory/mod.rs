//! The conformance suite's factory for RabbitMQ: each case under its own prefix (its own
//! streams and exchange), never touching other names on the broker.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use courier_amqp::{AmqpBackend, WeakAmqpBackend};
use courier_conformance::{Backend, BackendFactory};
use courier_core::MessageId;

pub(crate) struct Handle {
    switch: Arc<AtomicUsize>,
    weak: WeakAmqpBackend,
    queue: usize,
}

/// The address of a service, to compare identities.
fn address<T: ?Sized>(a: &Arc<T>) -> usize {
    Arc::as_ptr(a).cast::<()>() as usize
}

pub(crate) struct Amqp {
    pub(crate) name: &'static str,
    pub(crate) url: String,
    /// Per namespace, every stream its handles declared (removed by `cleanup`).
    pub(crate) streams: Mutex<HashMap<String, StreamLog>>,
    /// Per namespace, the handle each case got from `connect`: its batch fault switch, a
    /// weak reference (for `disrupt`; the handle's connections end with the case) and the
    /// address of its queue service (to recognise the `Backend` the suite passes back).
    pub(crate) handles: Mutex<HashMap<String, Handle>>,
}

type StreamLog = Arc<parking_lot::Mutex<HashSet<String>>>;

impl Amqp {
    async fn open(&self, ns: &str) -> courier_core::Result<AmqpBackend> {
        let log = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(ns.to_string())
            .or_default()
            .clone();
        AmqpBackend::builder()
            .url(self.url.clone())
            .prefix(format!("cc-{ns}"))
            .stream_log(log)
            .connection_timeout(Duration::from_secs(10))
            .build()
            .await
    }
}

/// The three services of one handle.
pub(crate) fn backend(b: AmqpBackend) -> Backend {
    Backend::from_one(b)
}

#[async_trait]
impl BackendFactory for Amqp {
    fn name(&self) -> &'static str {
        self.name
    }

    fn tick(&self) -> Duration {
        Duration::from_millis(25)
    }

    async fn probe(&self) -> Result<(), String> {
        let b = self.open("probe").await.map_err(|e| e.to_string())?;
        b.ping().await.map_err(|e| e.to_string())
    }

    async fn connect(&self, ns: &str) -> courier_core::Result<Backend> {
        let b = self.open(ns).await?;
        let handle = Handle {
            switch: b.batch_fault_switch(),
            weak: b.downgrade(),
            queue: 0,
        };
        let backend = backend(b);
        let handle = Handle {
            queue: address(&backend.queue),
            ..handle
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
        Ok(backend(self.open(ns).await?))
    }

    /// Cut both of the handle's connections (queues and topics; pub/sub).
    async fn disrupt(&self, backend: &Backend) -> courier_core::Result<bool> {
        // The suite hands back the Backend it got from `connect`: find its handle by its
        // queue service's address.
        let target = address(&backend.queue);
        let found = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|h| h.queue == target)
            .and_then(|h| h.weak.upgrade());
        let Some(b) = found else {
            return Ok(false);
        };
        let queues = b.disrupt_queues().await;
        let pubsub = b.disrupt_pubsub().await?;
        Ok(queues || pubsub)
    }

    /// Delete the case's streams and exchange: RabbitMQ keeps files open for every stream,
    /// and a suite run leaves hundreds of them otherwise.
    async fn cleanup(&self, ns: &str) -> courier_core::Result<()> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(ns);
        let log = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(ns);
        let names: Vec<String> = log.map(|l| l.lock().drain().collect()).unwrap_or_default();
        let b = self.open(ns).await?;
        b.delete_streams(&names, true).await?;
        // A task the case left running (a set_retention being recorded, the release of what
        // a dropped receive leased) may append once more and declare its stream again.
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.delete_streams(&names, false).await?;
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(ns);
        Ok(())
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

/// `COURIER_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`.
pub(crate) fn url() -> String {
    std::env::var("COURIER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}
