//! The whole conformance suite on the memory backend through the handles a `Courier` gives
//! out: the instrumented wrappers that record metrics and spans (courier_core::telemetry)
//! must forward every primitive unchanged, so every rule holds through them too.

use async_trait::async_trait;
use courier_conformance::{Backend, BackendFactory};
use courier_core::{Courier, MessageId};
use courier_memory::MemoryBackend;

struct Instrumented;

#[async_trait]
impl BackendFactory for Instrumented {
    fn name(&self) -> &'static str {
        "instrumented"
    }

    async fn connect(&self, _ns: &str) -> courier_core::Result<Backend> {
        let raw = Backend::from_one(MemoryBackend::new());
        let courier = Courier::new(raw.queue, raw.pubsub, raw.events);
        Ok(Backend {
            queue: courier.queue().clone(),
            pubsub: courier.pubsub().clone(),
            events: courier.events().clone(),
        })
    }

    async fn reopen(&self, _ns: &str, backend: &Backend) -> courier_core::Result<Backend> {
        Ok(backend.clone())
    }

    async fn inject_undecodable(
        &self,
        _backend: &Backend,
        _queue: &str,
        _bytes: &[u8],
    ) -> courier_core::Result<Option<MessageId>> {
        // Memory keeps typed values, never encoded bytes: nothing in it can fail to decode.
        Ok(None)
    }
}

fn main() -> std::process::ExitCode {
    courier_conformance::run(Instrumented)
}
