//! The whole conformance suite on the memory backend, the reference model.

use async_trait::async_trait;
use courier_conformance::{Backend, BackendFactory};
use courier_core::MessageId;
use courier_memory::MemoryBackend;

struct Memory;

#[async_trait]
impl BackendFactory for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn connect(&self, _ns: &str) -> courier_core::Result<Backend> {
        Ok(Backend::from_one(MemoryBackend::new()))
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
    courier_conformance::run(Memory)
}
