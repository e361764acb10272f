//! The whole conformance suite on SQLite: one database file per case, in a directory of
//! this run that is removed at the end.

use std::path::PathBuf;

use async_trait::async_trait;
use courier_conformance::{Backend, BackendFactory};
use courier_core::MessageId;
use courier_sqlite::SqliteBackend;

struct Sqlite {
    dir: PathBuf,
}

impl Sqlite {
    fn path(&self, ns: &str) -> PathBuf {
        self.dir.join(format!("{ns}.db"))
    }
}

#[async_trait]
impl BackendFactory for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn connect(&self, ns: &str) -> courier_core::Result<Backend> {
        let b = SqliteBackend::builder().path(self.path(ns)).build().await?;
        Ok(Backend::from_one(b))
    }

    async fn reopen(&self, ns: &str, _backend: &Backend) -> courier_core::Result<Backend> {
        // A second connection and writer on the same file, sharing nothing with the first
        // handle (wake-ups, subscriptions, relay identity), as another process would have.
        let b = SqliteBackend::builder()
            .path(self.path(ns))
            .as_separate_process()
            .build()
            .await?;
        Ok(Backend::from_one(b))
    }

    async fn inject_undecodable(
        &self,
        _backend: &Backend,
        queue: &str,
        bytes: &[u8],
    ) -> courier_core::Result<Option<MessageId>> {
        // Written through a separate handle: the injection hook lives on the concrete type.
        let path = self.dir.join(format!("{}.db", ns_of(queue)));
        let b = SqliteBackend::builder().path(path).build().await?;
        b.inject_raw(queue, bytes).await.map(Some)
    }
}

/// The case namespace is the part of a name before the first `-` (see `Ctx::name`).
fn ns_of(name: &str) -> &str {
    name.split('-').next().unwrap_or(name)
}

fn main() -> std::process::ExitCode {
    let dir =
        std::env::temp_dir().join(format!("courier-conformance-sqlite-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        return std::process::ExitCode::FAILURE;
    }
    let code = courier_conformance::run(Sqlite { dir: dir.clone() });
    let _ = std::fs::remove_dir_all(&dir);
    code
}
