//! Q1 across server crashes on NATS JetStream: a private `nats-server -js` (its own port and
//! store directory, never the shared server) is SIGKILLed and restarted twice while 4
//! publishers publish 20,000 messages and 4 workers consume them. The scenario and its
//! Jepsen-style accounting (lost 0, unexpected 0, duplicates counted) are the suite's
//! (`courier_conformance::faults::broker_restart`), shared with the other backends.
//!
//! The server runs with its default file store: a publish is acked once the server has
//! written it to its block file, not once that is fsynced (server 2.9 syncs on a timer and has
//! no `sync_interval` setting: its config parser rejects the field). A SIGKILL of the process
//! leaves the written data in the OS page cache, so acked publishes survive these kills
//! (lost 0); a crash of the machine could still lose the last ones.

#[path = "support/server.rs"]
mod server;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use courier_conformance::faults::{self, Connect, PrivateBroker, Restart};
use courier_core::Queue;
use courier_nats::NatsBackend;

/// The backend's connection and JetStream request timeout (its default).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

struct Server(server::PrivateNats);

#[async_trait]
impl PrivateBroker for Server {
    fn url(&self) -> String {
        self.0.url()
    }

    fn pid(&self) -> Option<u32> {
        self.0.pid()
    }

    fn kill9(&mut self) {
        self.0.kill9();
    }

    async fn restart(&mut self) -> Result<(), String> {
        self.0.restart().await?;
        eprintln!("nats-server back in {:?}", self.0.last_boot);
        Ok(())
    }
}

fn connect() -> Connect {
    Arc::new(|url: String, prefix: String| {
        Box::pin(async move {
            let b = NatsBackend::builder()
                .url(url)
                .prefix(prefix)
                .connection_timeout(REQUEST_TIMEOUT)
                .build()
                .await?;
            Ok(Arc::new(b) as Arc<dyn Queue>)
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_survive_two_kill9_restarts() {
    let Some(server) =
        server::start_or_skip("acknowledged_publishes_survive_two_kill9_restarts").await
    else {
        return;
    };
    // The server is back within ~25 ms, but a JetStream request written to the connection the
    // kill closed (a worker's receive, whose record's ack never comes) is only given up at
    // the client's request timeout: async-nats does not fail it on the disconnect. So a
    // worker receives again `REQUEST_TIMEOUT - downtime` (measured 4.5–4.6 s) after the
    // restart, plus one receive backoff: give it the request timeout and one more second.
    let settings = Restart {
        resume_within: REQUEST_TIMEOUT + Duration::from_secs(1),
        ..Restart::default()
    };
    faults::broker_restart(&mut Server(server), connect(), settings).await;
}
