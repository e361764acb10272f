//! Q4 / Q9 across a consumer crash on RabbitMQ: a worker in another process is SIGKILLed
//! mid-handler; its messages come back when their leases end, the expiry counted as the
//! attempt, and nothing is lost. The scenario is the suite's
//! (`courier_conformance::faults::consumer_crash`), shared with the other backends.
//!
//! Uses the shared broker (`COURIER_TEST_AMQP_URL`) under a unique prefix, and deletes its
//! stream afterwards; skipped loudly when unreachable unless `COURIER_REQUIRE_BACKENDS=1`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use courier_amqp::AmqpBackend;
use courier_conformance::faults::{self, Connect};
use courier_core::Queue;

const TEST: &str = "in_flight_messages_of_a_killed_consumer_come_back_after_their_lease";

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
async fn in_flight_messages_of_a_killed_consumer_come_back_after_their_lease() {
    let log: StreamLog = Arc::default();
    if std::env::var_os("COURIER_CRASH_CHILD_PREFIX").is_none() {
        let probe = open(url(), "courier-crash-probe".into(), log.clone()).await;
        if let Err(e) = probe {
            if faults::required() {
                panic!(
                    "{TEST}: RabbitMQ unreachable at its URL and COURIER_REQUIRE_BACKENDS=1: {e}"
                );
            }
            eprintln!("SKIPPED {TEST}: RabbitMQ unreachable: {e}");
            return;
        }
    }
    let l = log.clone();
    let connect: Connect = Arc::new(move |url: String, prefix: String| {
        let l = l.clone();
        Box::pin(async move { Ok(Arc::new(open(url, prefix, l).await?) as Arc<dyn Queue>) })
    });
    let prefix = faults::consumer_crash(TEST, url(), connect).await;
    if std::env::var_os("COURIER_CRASH_CHILD_PREFIX").is_none() {
        let names: Vec<String> = log.lock().drain().collect();
        if let Ok(b) = open(url(), prefix, Arc::default()).await {
            let _ = b.delete_streams(&names, false).await;
        }
    }
}
