//! Deduplication keys (Q11) on SQLite: a key has at most one holder per queue, decided in the
//! writer's transaction, so handles (and processes) sharing a file agree; the rule is the
//! reference model's (`courier-memory`'s `QueueState::accept`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_core::{
    Message, MessageId, Published, Queue, QueueConfig, QueueExt, RetryPolicy, Selection, Settle,
};
use courier_sqlite::SqliteBackend;

/// Every await of these tests is bounded: a hang fails the test instead of stalling it.
async fn t<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}

/// A fresh temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "courier-sqlite-dedup-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    fn file(&self) -> PathBuf {
        self.0.join("q.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config() -> QueueConfig {
    QueueConfig::default()
        .with_visibility_timeout(Duration::from_secs(30))
        .with_retry(RetryPolicy::exact(
            3,
            Duration::from_millis(50),
            2.0,
            Duration::from_secs(1),
        ))
}

async fn open(path: &Path) -> SqliteBackend {
    t(SqliteBackend::builder()
        .path(path)
        .default_config(config())
        .build())
    .await
    .expect("open")
}

fn keyed(kind: &str, key: &str) -> Message {
    Message::new(kind, "").with_dedup_key(key)
}

async fn publish(q: &dyn Queue, m: Message) -> Published {
    t(q.publish_unique("q", m)).await.expect("publish")
}

async fn stored(q: &dyn Queue, m: Message) -> MessageId {
    match publish(q, m).await {
        Published::Stored(id) => id,
        other => panic!("expected stored, got {other:?}"),
    }
}

async fn receive(q: &dyn Queue) -> courier_core::Delivery {
    t(q.receive_one("q", Duration::from_secs(5)))
        .await
        .expect("receive")
        .expect("a message")
}

#[tokio::test]
async fn a_live_key_refuses_a_second_message() {
    let dir = TempDir::new("live");
    let b = open(&dir.file()).await;
    let q: &dyn Queue = &b;
    let first = stored(q, keyed("a", "order-1")).await;
    assert_eq!(
        publish(q, keyed("b", "order-1")).await,
        Published::Duplicate(first)
    );
    // Other keys and messages without a key are not affected.
    stored(q, keyed("c", "order-2")).await;
    stored(q, Message::new("d", "")).await;
    let st = t(q.stats("q")).await.expect("stats");
    assert_eq!((st.published, st.deduplicated), (3, 1));
    // Leased, and waiting for a retry, the holder is still live.
    let d = receive(q).await;
    assert_eq!(d.message.id, first);
    assert_eq!(d.message.dedup_key.as_deref(), Some("order-1"));
    assert!(publish(q, keyed("e", "order-1")).await.is_duplicate());
    t(q.settle_one(
        "q",
        Settle::Retry {
            lease: d.lease,
            delay: Duration::from_secs(60),
            error: "later".into(),
        },
    ))
    .await
    .expect("retry");
    assert_eq!(
        publish(q, keyed("f", "order-1")).await,
        Published::Duplicate(first)
    );
    let st = t(q.stats("q")).await.expect("stats");
    assert_eq!((st.published, st.deduplicated, st.delayed), (3, 3, 1));
}

#[tokio::test]
async fn an_ack_frees_the_key_when_there_is_no_window() {
    let dir = TempDir::new("ack");
    let b = open(&dir.file()).await;
    let q: &dyn Queue = &b;
    let first = stored(q, keyed("a", "k")).await;
    let d = receive(q).await;
    // A release keeps it live.
    t(q.release("q", &d.lease)).await.expect("release");
    assert!(publish(q, keyed("b", "k")).await.is_duplicate());
    let d = receive(q).await;
    assert_eq!(d.message.id, first);
    t(q.ack("q", &d.lease)).await.expect("ack");
    let second = stored(q, keyed("c", "k")).await;
    assert_ne!(first, second);
    assert_eq!(
        publish(q, keyed("d", "k")).await,
        Published::Duplicate(second)
    );
}

#[tokio::test]
async fn a_window_holds_the_key_after_the_ack_until_it_passes() {
    let dir = TempDir::new("window");
    let b = open(&dir.file()).await;
    let window = Duration::from_millis(200);
    b.configure("q", config().with_dedup_window(window))
        .expect("configure");
    let q: &dyn Queue = &b;
    let started = Instant::now();
    let first = stored(q, keyed("a", "k")).await;
    let d = receive(q).await;
    t(q.ack("q", &d.lease)).await.expect("ack");
    // Gone, but within the window: still taken (unless this machine was so slow that the
    // window already passed).
    let again = publish(q, keyed("b", "k")).await;
    if started.elapsed() < window {
        assert_eq!(again, Published::Duplicate(first));
    }
    // Poll, bounded, until the window passed and a new message takes the key.
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        let before = Instant::now();
        match publish(q, keyed("c", "k")).await {
            Published::Stored(id) => break id,
            Published::Duplicate(id) => {
                assert_eq!(id, first);
                assert!(
                    before.duration_since(started) < window + Duration::from_secs(5),
                    "the key stayed taken long after its window"
                );
            }
        }
        assert!(Instant::now() < deadline, "the window never passed");
        t(tokio::time::sleep(Duration::from_millis(20))).await;
    };
    assert!(started.elapsed() >= window, "freed before the window ended");
    assert_ne!(second, first);
    assert_eq!(t(q.stats("q")).await.expect("stats").published, 2);
}

#[tokio::test]
async fn a_batch_is_decided_in_order() {
    let dir = TempDir::new("batch");
    let b = open(&dir.file()).await;
    let q: &dyn Queue = &b;
    let batch = vec![
        keyed("a", "k1"),
        keyed("b", "k2"),
        keyed("c", "k1"),
        Message::new("d", ""),
        keyed("e", "k2"),
        keyed("f", "k3"),
    ];
    let out = t(q.publish_batch("q", batch)).await.expect("publish");
    let ids: Vec<MessageId> = out.iter().map(Published::id).collect();
    assert_eq!(
        out,
        vec![
            Published::Stored(ids[0]),
            Published::Stored(ids[1]),
            Published::Duplicate(ids[0]),
            Published::Stored(ids[3]),
            Published::Duplicate(ids[1]),
            Published::Stored(ids[5]),
        ]
    );
    let st = t(q.stats("q")).await.expect("stats");
    assert_eq!((st.published, st.deduplicated), (4, 2));
    let ds = t(q.receive("q", 10, Duration::from_secs(1)))
        .await
        .expect("receive");
    let kinds: Vec<&str> = ds.iter().map(|d| d.message.kind.as_str()).collect();
    assert_eq!(kinds, ["a", "b", "d", "f"]);
}

#[tokio::test]
async fn a_dead_letter_frees_its_key_and_a_requeue_takes_it_back() {
    let dir = TempDir::new("dead");
    let b = open(&dir.file()).await;
    let q: &dyn Queue = &b;
    let first = stored(q, keyed("a", "k")).await;
    let d = receive(q).await;
    let bury = |lease| Settle::Bury {
        lease,
        error: "boom".into(),
    };
    t(q.settle_one("q", bury(d.lease))).await.expect("bury");
    // Nobody holds the key: the requeued message takes it again.
    assert_eq!(
        t(q.requeue_dead("q", Selection::Ids(vec![first])))
            .await
            .expect("requeue"),
        1
    );
    assert_eq!(
        publish(q, keyed("b", "k")).await,
        Published::Duplicate(first)
    );
    // Dead again: the key is free for a new message, which then holds it.
    let d = receive(q).await;
    assert_eq!(d.message.dedup_key.as_deref(), Some("k"));
    t(q.settle_one("q", bury(d.lease))).await.expect("bury");
    let second = stored(q, keyed("c", "k")).await;
    // Requeued while another message holds the key: it does not take it over.
    t(q.requeue_dead("q", Selection::All))
        .await
        .expect("requeue");
    assert_eq!(
        publish(q, keyed("d", "k")).await,
        Published::Duplicate(second)
    );
    let ds = t(q.receive("q", 10, Duration::from_secs(1)))
        .await
        .expect("receive");
    assert_eq!(ds.len(), 2);
    for d in &ds {
        assert_eq!(d.message.dedup_key.as_deref(), Some("k"));
        t(q.ack("q", &d.lease)).await.expect("ack");
    }
    let third = stored(q, keyed("e", "k")).await;
    assert!(third != first && third != second);
    let st = t(q.stats("q")).await.expect("stats");
    assert_eq!((st.published, st.deduplicated, st.dead_lettered), (3, 2, 2));
}

#[tokio::test]
async fn a_lease_that_expires_on_the_last_attempt_frees_the_key() {
    let dir = TempDir::new("expire");
    let b = open(&dir.file()).await;
    b.configure(
        "q",
        config()
            .with_visibility_timeout(Duration::from_millis(100))
            .with_dead_letter(false),
    )
    .expect("configure");
    let q: &dyn Queue = &b;
    let first = stored(q, keyed("a", "k").with_max_attempts(1)).await;
    let d = receive(q).await;
    assert_eq!(d.message.id, first);
    // Poll, bounded, until the lease expired and the message was discarded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        match publish(q, keyed("b", "k")).await {
            Published::Stored(id) => break id,
            Published::Duplicate(id) => assert_eq!(id, first),
        }
        assert!(Instant::now() < deadline, "the lease never expired");
        t(tokio::time::sleep(Duration::from_millis(20))).await;
    };
    assert_ne!(second, first);
    let st = t(q.stats("q")).await.expect("stats");
    assert_eq!((st.dead_lettered, st.dead), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_racing_handles_store_one_message_a_key() {
    let dir = TempDir::new("race");
    let path = dir.file();
    // One handle creates the schema first, so the racers only race on the key.
    drop(open(&path).await);
    for round in 0..5 {
        let mut handles = Vec::new();
        for _ in 0..8 {
            handles.push(
                t(SqliteBackend::builder()
                    .path(&path)
                    .default_config(config())
                    .as_separate_process()
                    .build())
                .await
                .expect("open"),
            );
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(handles.len()));
        let key = format!("race-{round}");
        let tasks: Vec<_> = handles
            .into_iter()
            .map(|b| {
                let barrier = barrier.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    let out = b.publish_unique("q", keyed("x", &key)).await;
                    drop(b);
                    out
                })
            })
            .collect();
        let mut outs = Vec::new();
        for task in tasks {
            outs.push(t(task).await.expect("join").expect("publish"));
        }
        let stored: Vec<MessageId> = outs
            .iter()
            .filter(|p| !p.is_duplicate())
            .map(Published::id)
            .collect();
        assert_eq!(stored.len(), 1, "round {round}: {outs:?}");
        assert!(
            outs.iter().all(|p| p.id() == stored[0]),
            "round {round}: every duplicate names the stored message: {outs:?}"
        );
    }
    let b = open(&path).await;
    let st = t(Queue::stats(&b, "q")).await.expect("stats");
    assert_eq!((st.published, st.deduplicated), (5, 35));
}

#[tokio::test]
async fn keys_survive_a_reopen() {
    let dir = TempDir::new("reopen");
    let path = dir.file();
    let first = {
        let b = open(&path).await;
        let q: &dyn Queue = &b;
        let first = stored(q, keyed("a", "k")).await;
        assert!(publish(q, keyed("b", "k")).await.is_duplicate());
        first
    };
    let b = open(&path).await;
    let q: &dyn Queue = &b;
    assert_eq!(
        publish(q, keyed("c", "k")).await,
        Published::Duplicate(first)
    );
    let st = t(q.stats("q")).await.expect("stats");
    assert_eq!((st.published, st.deduplicated), (1, 2));
    // The stored row kept its key: acking it after the reopen frees the key.
    let d = receive(q).await;
    assert_eq!(d.message.dedup_key.as_deref(), Some("k"));
    t(q.ack("q", &d.lease)).await.expect("ack");
    stored(q, keyed("d", "k")).await;
}
