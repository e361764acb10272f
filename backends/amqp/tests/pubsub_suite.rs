//! The conformance suite's pub/sub cases on RabbitMQ (`COURIER_TEST_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). Queue and events come from the memory backend:
//! only [`courier_core::PubSub`] is under test here. Run with a `pubsub::` filter.
//!
//! Each case publishes under its own prefix (`courier-test-<ns>`, one durable exchange each);
//! the exchanges are deleted once the run is over.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use courier_amqp::AmqpBackend;
use courier_conformance::{Backend, BackendFactory};
use courier_core::{Error, ErrorKind, MessageId, redact_url};
use courier_memory::MemoryBackend;

/// `COURIER_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`.
fn url() -> String {
    std::env::var("COURIER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// Memory for queue and events, RabbitMQ for pub/sub.
struct AmqpPubSub {
    url: String,
    /// Every prefix a case used, for deleting its exchange at the end.
    prefixes: Mutex<Vec<String>>,
    /// Every pub/sub handle handed out, for `disrupt` (weak: a case's handles end with it).
    handles: Mutex<Vec<Weak<AmqpBackend>>>,
}

impl AmqpPubSub {
    fn prefix(ns: &str) -> String {
        format!("courier-test-{ns}")
    }

    async fn open(&self, ns: &str) -> courier_core::Result<Arc<AmqpBackend>> {
        let prefix = Self::prefix(ns);
        let b = Arc::new(
            AmqpBackend::builder()
                .url(self.url.clone())
                .prefix(prefix.clone())
                .build()
                .await?,
        );
        {
            let mut prefixes = self.prefixes.lock().unwrap_or_else(|p| p.into_inner());
            if !prefixes.contains(&prefix) {
                prefixes.push(prefix);
            }
        }
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles.retain(|h| h.strong_count() > 0);
        handles.push(Arc::downgrade(&b));
        Ok(b)
    }
}

/// One connection to the broker, closed again (the probe, the cleanup).
async fn broker(url: &str) -> Result<lapin::Connection, String> {
    let uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|_| format!("not an AMQP URL: {}", redact_url(url)))?;
    tokio::time::timeout(
        Duration::from_secs(5),
        lapin::Connection::connect_uri(uri, lapin::ConnectionProperties::default()),
    )
    .await
    .map_err(|_| format!("no connection to {} within 5 s", redact_url(url)))?
    .map_err(|e| format!("cannot connect to {}: {e}", redact_url(url)))
}

#[async_trait]
impl BackendFactory for AmqpPubSub {
    fn name(&self) -> &'static str {
        "amqp"
    }

    async fn probe(&self) -> Result<(), String> {
        let conn = broker(&self.url).await?;
        conn.close(200, "probe".into())
            .await
            .map_err(|e| format!("closing the probe connection: {e}"))
    }

    async fn connect(&self, ns: &str) -> courier_core::Result<Backend> {
        let memory = MemoryBackend::new();
        Ok(Backend {
            queue: Arc::new(memory.clone()),
            pubsub: self.open(ns).await?,
            events: Arc::new(memory),
        })
    }

    async fn reopen(&self, ns: &str, backend: &Backend) -> courier_core::Result<Backend> {
        // Another process: its own connection under the same prefix (the memory parts have
        // no other process, so they are shared).
        Ok(Backend {
            queue: backend.queue.clone(),
            pubsub: self.open(ns).await?,
            events: backend.events.clone(),
        })
    }

    async fn inject_undecodable(
        &self,
        _backend: &Backend,
        _queue: &str,
        _bytes: &[u8],
    ) -> courier_core::Result<Option<MessageId>> {
        // The queue is the memory backend's: it keeps typed values.
        Ok(None)
    }

    async fn disrupt(&self, backend: &Backend) -> courier_core::Result<bool> {
        // The handle whose allocation the case's `Arc<dyn PubSub>` points at.
        let target = Arc::as_ptr(&backend.pubsub).cast::<()>() as usize;
        let handle = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .find(|h| Arc::as_ptr(h).cast::<()>() as usize == target);
        match handle {
            Some(h) => h.disrupt_pubsub().await,
            None => Err(Error::new(
                ErrorKind::NotFound,
                "disrupt: not a pub/sub handle of this factory",
            )),
        }
    }
}

/// Delete the exchanges the run declared.
async fn cleanup(url: &str, prefixes: Vec<String>) -> Result<(), String> {
    if prefixes.is_empty() {
        return Ok(());
    }
    let conn = broker(url).await?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| format!("cleanup channel: {e}"))?;
    for prefix in &prefixes {
        channel
            .exchange_delete(
                format!("{prefix}.pubsub").into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await
            .map_err(|e| format!("deleting {prefix}.pubsub: {e}"))?;
    }
    conn.close(200, "cleanup".into())
        .await
        .map_err(|e| format!("closing the cleanup connection: {e}"))
}

fn main() -> std::process::ExitCode {
    let factory = Arc::new(AmqpPubSub {
        url: url(),
        prefixes: Mutex::new(Vec::new()),
        handles: Mutex::new(Vec::new()),
    });
    let code = courier_conformance::run(SharedFactory(factory.clone()));
    let prefixes = std::mem::take(&mut *factory.prefixes.lock().unwrap_or_else(|p| p.into_inner()));
    let cleaned = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(cleanup(&factory.url, prefixes)));
    if let Err(e) = cleaned {
        eprintln!("note: cleaning up the test exchanges failed: {e}");
    }
    code
}

/// The factory behind an `Arc`, so that `main` still reaches it after the run.
struct SharedFactory(Arc<AmqpPubSub>);

#[async_trait]
impl BackendFactory for SharedFactory {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    async fn probe(&self) -> Result<(), String> {
        self.0.probe().await
    }

    async fn connect(&self, ns: &str) -> courier_core::Result<Backend> {
        self.0.connect(ns).await
    }

    async fn reopen(&self, ns: &str, backend: &Backend) -> courier_core::Result<Backend> {
        self.0.reopen(ns, backend).await
    }

    async fn inject_undecodable(
        &self,
        backend: &Backend,
        queue: &str,
        bytes: &[u8],
    ) -> courier_core::Result<Option<MessageId>> {
        self.0.inject_undecodable(backend, queue, bytes).await
    }

    async fn disrupt(&self, backend: &Backend) -> courier_core::Result<bool> {
        self.0.disrupt(backend).await
    }
}
