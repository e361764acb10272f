//! The whole conformance suite on the replicated model over an in-process log (no broker):
//! proves the replication itself (records, followers, answers) apart from any transport.
//! Each handle of a namespace has its own copy of the model, fed by the shared log, exactly
//! as processes on RabbitMQ or NATS are. Pub/sub is not replicated (the memory backend
//! serves it here).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use courier_conformance::{Backend, BackendFactory};
use courier_core::backend::Kit;
use courier_core::{MessageId, QueueConfig, SystemClock};
use courier_replicated::Replicated;

mod support;
use support::{Logs, MemLog};

struct Factory {
    namespaces: Mutex<HashMap<String, Arc<Logs>>>,
}

impl Factory {
    fn open(&self, ns: &str) -> Backend {
        let logs = self
            .namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(ns.to_owned())
            .or_default()
            .clone();
        let store = Replicated::new(
            MemLog(logs),
            Kit::new("replicated"),
            Arc::new(SystemClock),
            QueueConfig::default(),
        );
        Backend {
            queue: Arc::new(store.clone()),
            pubsub: Arc::new(courier_memory::MemoryBackend::new()),
            events: Arc::new(store),
        }
    }
}

#[async_trait]
impl BackendFactory for Factory {
    fn name(&self) -> &'static str {
        "replicated"
    }

    fn tick(&self) -> Duration {
        Duration::from_millis(25)
    }

    async fn connect(&self, ns: &str) -> courier_core::Result<Backend> {
        Ok(self.open(ns))
    }

    async fn reopen(&self, ns: &str, backend: &Backend) -> courier_core::Result<Backend> {
        // Another process: its own copy of the model on the same log; pub/sub is not
        // replicated, so the second handle shares the first one's.
        let mut other = self.open(ns);
        other.pubsub = backend.pubsub.clone();
        Ok(other)
    }

    async fn inject_undecodable(
        &self,
        backend: &Backend,
        queue: &str,
        bytes: &[u8],
    ) -> courier_core::Result<Option<MessageId>> {
        let _ = backend;
        let ns = queue.split('-').next().unwrap_or(queue);
        let store = Replicated::new(
            MemLog(
                self.namespaces
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(ns.to_owned())
                    .or_default()
                    .clone(),
            ),
            Kit::new("replicated"),
            Arc::new(SystemClock),
            QueueConfig::default(),
        );
        store.inject_raw(queue, bytes).await.map(Some)
    }

    async fn cleanup(&self, ns: &str) -> courier_core::Result<()> {
        self.namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(ns);
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    courier_conformance::run(Factory {
        namespaces: Mutex::default(),
    })
}
