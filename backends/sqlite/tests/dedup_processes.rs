//! Q11 across processes: three copies of this test binary publish the same 10,000 keyed
//! messages to one database file at once; exactly 10,000 are stored and handled. The scenario
//! is the suite's (`courier_conformance::faults::keyed_publishers`), shared with Redis.

use std::sync::Arc;
use std::time::Duration;

use courier_conformance::faults::{self, Connect};
use courier_core::Queue;
use courier_sqlite::SqliteBackend;

const TEST: &str = "three_processes_publish_the_same_10000_keys";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_publish_the_same_10000_keys() {
    // The parent picks the file; its children get it through the scenario's URL.
    let child = std::env::var_os("COURIER_KEYED_CHILD").is_some();
    let path = if child {
        String::new()
    } else {
        let dir = std::env::temp_dir().join(format!(
            "courier-sqlite-keyed-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join("keyed.db").to_string_lossy().into_owned()
    };
    let connect: Connect = Arc::new(|path: String, _prefix: String| {
        Box::pin(async move {
            let b = SqliteBackend::builder()
                .path(path)
                .poll_interval(Duration::from_millis(20))
                .build()
                .await?;
            Ok(Arc::new(b) as Arc<dyn Queue>)
        })
    });
    faults::keyed_publishers(TEST, path.clone(), connect).await;
    if !child && let Some(dir) = std::path::Path::new(&path).parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
