//! A call whose record the log stored and applied, but whose append reported a failure (a
//! broker's confirm lost on a dropped connection), must not keep what the record took: a
//! receive that fails that way gives its leases back at once, rather than stranding the
//! messages for a whole visibility timeout (CI saw a worker test wait 20 s for messages
//! leased by such a receive).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_core::backend::Kit;
use courier_core::{ErrorKind, Message, Queue, QueueConfig, SystemClock};
use courier_replicated::Replicated;
use support::{Logs, MemLog};

#[tokio::test]
async fn a_receive_whose_confirm_is_lost_gives_its_leases_back() {
    let logs = Arc::new(Logs::default());
    let q = Replicated::new(
        MemLog(logs.clone()),
        Kit::new("replicated"),
        Arc::new(SystemClock),
        QueueConfig::default(),
    );
    let bound = Duration::from_secs(5);
    let sent: Vec<Message> = (0..3).map(|i| Message::new("k", format!("{i}"))).collect();
    let mut ids: Vec<_> = sent.iter().map(|m| m.id).collect();
    tokio::time::timeout(bound, q.publish_batch("jobs", sent))
        .await
        .expect("publish bounded")
        .expect("publish");

    logs.lose_confirm_of("receive");
    let err = tokio::time::timeout(bound, Queue::receive(&q, "jobs", 10, Duration::ZERO))
        .await
        .expect("receive bounded")
        .expect_err("the append reported a failure");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");

    // The claim applied and leased all three for the default 30 s; they must be back well
    // before that (a release record is appended in the background).
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < 3 && started.elapsed() < bound {
        let ds = tokio::time::timeout(
            bound,
            Queue::receive(&q, "jobs", 10, Duration::from_millis(200)),
        )
        .await
        .expect("receive bounded")
        .expect("receive");
        got.extend(ds.into_iter().map(|d| d.message.id));
    }
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "the failed receive's messages within {bound:?}");
    let stats = tokio::time::timeout(bound, q.stats("jobs"))
        .await
        .expect("stats bounded")
        .expect("stats");
    assert_eq!(stats.in_flight, 3, "{stats:?}");
    assert_eq!(
        stats.retried, 0,
        "a given-back lease is not a failed attempt: {stats:?}"
    );
}
