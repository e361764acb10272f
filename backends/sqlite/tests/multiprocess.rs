//! Several processes on one database file: this test binary re-runs itself as child
//! processes (selected by `COURIER_SQLITE_CHILD`), so the processes really are separate.
//!
//! - competing consumers in three processes never lease the same message;
//! - a consumer waiting in another process wakes promptly (`PRAGMA data_version` polling);
//! - a pub/sub subscriber in another process receives messages published after it subscribed.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use courier_core::{Message, PubSub, Queue, QueueConfig, QueueExt, SubscribeOptions};
use courier_sqlite::SqliteBackend;

const CHILD: &str = "COURIER_SQLITE_CHILD";
const DB: &str = "COURIER_SQLITE_DB";

fn temp_db() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "courier-sqlite-mp-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join("shared.db")
}

fn config() -> QueueConfig {
    QueueConfig {
        visibility_timeout: Duration::from_secs(30),
        ..QueueConfig::default()
    }
}

async fn open(path: &Path) -> SqliteBackend {
    SqliteBackend::builder()
        .path(path)
        .default_config(config())
        .poll_interval(Duration::from_millis(20))
        .build()
        .await
        .expect("open")
}

/// Run this test binary as a child doing `role` on `db`.
fn spawn(test: &str, role: &str, db: &Path) -> Child {
    let exe = std::env::current_exe().expect("current exe");
    Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, role)
        .env(DB, db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child")
}

/// Lines the child printed with the `@@` marker (the test harness prints its own lines too).
fn child_lines(child: Child) -> Vec<String> {
    let out = child.wait_with_output().expect("child output");
    assert!(out.status.success(), "child failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(marked)
        .collect()
}

/// The text after the `@@` marker (the harness may print on the same line).
fn marked(line: &str) -> Option<String> {
    line.find("@@").map(|i| line[i + 2..].trim().to_owned())
}

/// Wait until a child prints `@ready`.
fn wait_ready(child: &mut Child) -> BufReader<std::process::ChildStdout> {
    let stdout = child.stdout.take().expect("stdout");
    let mut r = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).expect("read");
        assert!(n > 0, "child exited before it was ready");
        if marked(&line).as_deref() == Some("ready") {
            return r;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_in_three_processes() {
    let role = std::env::var(CHILD).ok();
    if role.as_deref() == Some("consume") {
        let db = PathBuf::from(std::env::var(DB).expect("db"));
        let b = open(&db).await;
        let q: &dyn Queue = &b;
        let mut idle = 0;
        while idle < 3 {
            let ds = q
                .receive("mp", 5, Duration::from_millis(200))
                .await
                .expect("receive");
            if ds.is_empty() {
                idle += 1;
                continue;
            }
            idle = 0;
            for d in ds {
                q.ack("mp", &d.lease)
                    .await
                    .expect("ack: the lease is ours alone");
                println!("@@{}", d.message.id);
            }
        }
        return;
    }
    if role.is_some() {
        return;
    }
    let db = temp_db();
    let b = open(&db).await;
    let q: &dyn Queue = &b;
    const N: usize = 600;
    let msgs: Vec<Message> = (0..N).map(|i| Message::new("k", format!("{i}"))).collect();
    let ids = q.publish_batch("mp", msgs).await.expect("publish");
    let name = "competing_consumers_in_three_processes";
    let children = [spawn(name, "consume", &db), spawn(name, "consume", &db)];
    let mut mine = Vec::new();
    let mut idle = 0;
    while idle < 3 {
        let ds = q
            .receive("mp", 5, Duration::from_millis(200))
            .await
            .expect("receive");
        if ds.is_empty() {
            idle += 1;
            continue;
        }
        idle = 0;
        for d in ds {
            q.ack("mp", &d.lease).await.expect("ack");
            mine.push(d.message.id.to_string());
        }
    }
    let mut all = mine;
    for c in children {
        all.extend(child_lines(c));
    }
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(all.len(), N, "each message delivered once");
    assert_eq!(sorted.len(), N);
    let mut want: Vec<String> = ids.iter().map(ToString::to_string).collect();
    want.sort();
    assert_eq!(sorted, want);
    let s = q.stats("mp").await.expect("stats");
    assert_eq!((s.acked, s.stored()), (N as u64, 0));
    let _ = std::fs::remove_dir_all(db.parent().expect("dir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_consumer_in_another_process_wakes_promptly() {
    let role = std::env::var(CHILD).ok();
    if role.as_deref() == Some("wait") {
        let db = PathBuf::from(std::env::var(DB).expect("db"));
        let b = open(&db).await;
        let q: &dyn Queue = &b;
        println!("@@ready");
        std::io::stdout().flush().expect("flush");
        let d = q
            .receive_one("wake", Duration::from_secs(10))
            .await
            .expect("receive")
            .expect("woken with a message");
        let sent: u128 = String::from_utf8_lossy(&d.message.payload)
            .parse()
            .expect("timestamp");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_millis();
        println!("@@{}", now.saturating_sub(sent));
        q.ack("wake", &d.lease).await.expect("ack");
        return;
    }
    if role.is_some() {
        return;
    }
    let db = temp_db();
    let b = open(&db).await;
    let q: &dyn Queue = &b;
    let mut child = spawn(
        "waiting_consumer_in_another_process_wakes_promptly",
        "wait",
        &db,
    );
    let reader = wait_ready(&mut child);
    // Let the child reach its wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis();
    q.publish("wake", Message::new("k", now.to_string()))
        .await
        .expect("publish");
    let lines: Vec<String> = reader
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| marked(&l))
        .collect();
    assert!(child.wait().expect("wait").success());
    let latency: u64 = lines
        .first()
        .expect("latency line")
        .parse()
        .expect("number");
    assert!(latency < 1_000, "woke after {latency} ms");
    let _ = std::fs::remove_dir_all(db.parent().expect("dir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_reaches_a_subscriber_in_another_process() {
    let role = std::env::var(CHILD).ok();
    if role.as_deref() == Some("subscribe") {
        let db = PathBuf::from(std::env::var(DB).expect("db"));
        let b = open(&db).await;
        let mut sub = PubSub::subscribe(&b, "news.>", SubscribeOptions::default())
            .await
            .expect("subscribe");
        println!("@@ready");
        std::io::stdout().flush().expect("flush");
        for _ in 0..3 {
            match sub.next_timeout(Duration::from_secs(5)).await {
                Some(m) => println!("@@{}", m.kind),
                None => break,
            }
        }
        return;
    }
    if role.is_some() {
        return;
    }
    let db = temp_db();
    let b = open(&db).await;
    // Published before anyone subscribed: dropped (P2).
    PubSub::publish(&b, "news.early", Message::new("early", ""))
        .await
        .expect("publish");
    let mut child = spawn(
        "pubsub_reaches_a_subscriber_in_another_process",
        "subscribe",
        &db,
    );
    let reader = wait_ready(&mut child);
    let t = Instant::now();
    for k in ["one", "two", "three"] {
        PubSub::publish(&b, "news.today", Message::new(k, ""))
            .await
            .expect("publish");
    }
    let lines: Vec<String> = reader
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| marked(&l))
        .collect();
    assert!(child.wait().expect("wait").success());
    assert_eq!(lines, ["one", "two", "three"], "in order, nothing early");
    assert!(t.elapsed() < Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(db.parent().expect("dir"));
}
