//! Flow control on the replicated model (issue 18), over an in-process log that counts the
//! records appended: receivers of a paused queue or group, or of a queue whose rate window is
//! spent, wait without appending claim after claim, and they are woken by a resume from
//! another handle (process) or by the next window's start, not by a poll.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use courier_core::backend::Kit;
use courier_core::{EventBus, Message, Queue, QueueConfig, RateLimit, ReplayFrom, SystemClock};
use courier_replicated::Replicated;

mod support;
use support::{Logs, MemLog};

/// Two handles ("processes") on one set of logs.
fn pair() -> (Arc<Logs>, Replicated<MemLog>, Replicated<MemLog>) {
    let logs = Arc::new(Logs::default());
    let open = || {
        Replicated::new(
            MemLog(logs.clone()),
            Kit::new("replicated"),
            Arc::new(SystemClock),
            QueueConfig::default(),
        )
    };
    let (a, b) = (open(), open());
    (logs, a, b)
}

/// The most records a receive that finds nothing to lease may append while it waits
/// 300 ms: its first claim, and one more for a wake-up it cannot use.
const IDLE_CLAIMS: u64 = 3;

const WAIT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_paused_queue_does_not_spin_and_resume_wakes_its_receiver() {
    let (logs, a, b) = pair();
    a.publish_batch("jobs", vec![Message::new("k", "1")])
        .await
        .expect("publish");
    a.pause("jobs").await.expect("pause");
    let before = logs.appends.load(Ordering::Relaxed);
    let got = Queue::receive(&b, "jobs", 10, WAIT).await.expect("receive");
    assert!(got.is_empty(), "a paused queue delivered");
    let claims = logs.appends.load(Ordering::Relaxed) - before;
    assert!(claims <= IDLE_CLAIMS, "{claims} records while paused");

    // A receiver of b waits; a resume by a resumes it at once.
    let waiting = tokio::spawn({
        let b = b.clone();
        async move {
            let started = Instant::now();
            let got = Queue::receive(&b, "jobs", 10, Duration::from_secs(10)).await;
            (got, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.resume("jobs").await.expect("resume");
    let (got, took) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the receiver returned")
        .expect("join");
    assert_eq!(got.expect("receive").len(), 1);
    assert!(took < Duration::from_secs(2), "woken after {took:?}");
}

#[tokio::test]
async fn a_spent_rate_window_does_not_spin_and_its_end_wakes_receivers() {
    let (logs, a, b) = pair();
    let msgs = (0..3).map(|i| Message::new("k", format!("{i}"))).collect();
    a.publish_batch("sms", msgs).await.expect("publish");
    // One an hour: the second receive has nothing it may take.
    a.set_rate_limit("sms", Some(RateLimit::new(1, Duration::from_secs(3600))))
        .await
        .expect("set_rate_limit");
    assert_eq!(
        Queue::receive(&b, "sms", 10, WAIT)
            .await
            .expect("receive")
            .len(),
        1
    );
    let before = logs.appends.load(Ordering::Relaxed);
    assert!(
        Queue::receive(&b, "sms", 10, WAIT)
            .await
            .expect("receive")
            .is_empty()
    );
    let claims = logs.appends.load(Ordering::Relaxed) - before;
    assert!(claims <= IDLE_CLAIMS, "{claims} records while throttled");

    // One per 400 ms: a receiver that found the window spent takes the next window's
    // delivery when it starts (at most one window later), not after its whole wait.
    a.set_rate_limit("sms", Some(RateLimit::new(1, Duration::from_millis(400))))
        .await
        .expect("set_rate_limit");
    let _ = Queue::receive(&a, "sms", 10, WAIT).await.expect("receive");
    let started = Instant::now();
    let got = Queue::receive(&b, "sms", 10, Duration::from_secs(10))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "the window's end woke it after {:?}",
        started.elapsed()
    );
    let st = a.stats("sms").await.expect("stats");
    assert_eq!(
        st.rate_limit,
        Some(RateLimit::new(1, Duration::from_millis(400)))
    );
}

#[tokio::test]
async fn a_paused_group_does_not_spin_and_resume_wakes_its_receiver() {
    let (logs, a, b) = pair();
    a.create_group("orders", "billing", ReplayFrom::Start)
        .await
        .expect("create_group");
    a.pause_group("orders", "billing")
        .await
        .expect("pause_group");
    a.emit_batch("orders", vec![Message::new("order", "1")])
        .await
        .expect("emit");
    // b's first receive registers the topic for this handle: not counted below.
    let got = EventBus::receive(&b, "orders", "billing", 10, Duration::ZERO)
        .await
        .expect("receive");
    assert!(got.is_empty(), "a paused group delivered");
    let before = logs.appends.load(Ordering::Relaxed);
    let got = EventBus::receive(&b, "orders", "billing", 10, WAIT)
        .await
        .expect("receive");
    assert!(got.is_empty(), "a paused group delivered");
    let claims = logs.appends.load(Ordering::Relaxed) - before;
    assert!(claims <= IDLE_CLAIMS, "{claims} records while paused");
    assert!(
        b.group_stats("orders", "billing")
            .await
            .expect("stats")
            .queue
            .paused
    );

    let waiting = tokio::spawn({
        let b = b.clone();
        async move {
            let started = Instant::now();
            let got = EventBus::receive(&b, "orders", "billing", 10, Duration::from_secs(10)).await;
            (got, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.resume_group("orders", "billing")
        .await
        .expect("resume_group");
    let (got, took) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the receiver returned")
        .expect("join");
    assert_eq!(got.expect("receive").len(), 1);
    assert!(took < Duration::from_secs(2), "woken after {took:?}");
}
