//! Q11 across processes: three copies of this test binary publish the same 10,000 keyed
//! messages to the shared RabbitMQ at once (under a unique stream prefix); exactly 10,000 are
//! stored and handled. The scenario is the suite's
//! (`courier_conformance::faults::keyed_publishers`), shared with the other backends.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use courier_amqp::AmqpBackend;
use courier_conformance::faults::{self, Connect};
use courier_core::Queue;

const TEST: &str = "three_processes_publish_the_same_10000_keys";

fn url() -> String {
    std::env::var("COURIER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

type StreamLog = Arc<parking_lot::Mutex<HashSet<String>>>;

async fn open(url: String, prefix: String, log: StreamLog) -> courier_core::Result<AmqpBackend> {
    AmqpBackend::builder()
        .url(url)
        .prefix(prefix)
        .connection_timeout(Duration::from_secs(5))
        .stream_log(log)
        .build()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_publish_the_same_10000_keys() {
    let child = std::env::var_os("COURIER_KEYED_CHILD").is_some();
    let log: StreamLog = Arc::default();
    if !child && let Err(e) = open(url(), "courier-keyed-probe".into(), log.clone()).await {
        if faults::required() {
            panic!("{TEST}: RabbitMQ unreachable at its URL and COURIER_REQUIRE_BACKENDS=1: {e}");
        }
        eprintln!("SKIPPED {TEST}: RabbitMQ unreachable: {e}");
        return;
    }
    let l = log.clone();
    let connect: Connect = Arc::new(move |url: String, prefix: String| {
        let l = l.clone();
        Box::pin(async move { Ok(Arc::new(open(url, prefix, l).await?) as Arc<dyn Queue>) })
    });
    let prefix = faults::keyed_publishers(TEST, url(), connect).await;
    if !child {
        let names: Vec<String> = log.lock().drain().collect();
        if let Ok(b) = open(url(), prefix, Arc::default()).await {
            let _ = b.delete_streams(&names, false).await;
        }
    }
}
