//! Connection loss on a private `redis-server` (never the shared one): calls fail with a
//! retryable error while Redis is away and work again when it is back; pub/sub
//! subscriptions come back by themselves (P6).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use courier_core::{ErrorKind, Message, PubSub, Queue, QueueExt, SubscribeOptions};
use courier_redis::RedisBackend;

struct Server {
    port: u16,
    child: Option<Child>,
}

impl Server {
    /// Start a private server, or `None` when `redis-server` is not installed.
    fn start(port: u16) -> Option<Server> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let s = Server {
            port,
            child: Some(child),
        };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(16_379)
}

fn start_or_skip(port: u16) -> Option<Server> {
    let s = Server::start(port);
    if s.is_none() {
        if std::env::var("COURIER_REQUIRE_BACKENDS").as_deref() == Ok("1") {
            panic!("redis-server is not installed and COURIER_REQUIRE_BACKENDS=1");
        }
        eprintln!("SKIPPED: cannot start a private redis-server");
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_retryably_while_redis_is_away_and_recover() {
    let port = free_port();
    let Some(mut server) = start_or_skip(port) else {
        return;
    };
    let backend = RedisBackend::from_url(&format!("redis://127.0.0.1:{}", server.port))
        .await
        .expect("connect");
    let q: &dyn Queue = &backend;
    q.publish("t", Message::new("k", ""))
        .await
        .expect("publish");

    server.stop();
    let t = Instant::now();
    let err = q
        .publish("t", Message::new("k", ""))
        .await
        .expect_err("Redis is down");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let err = q
        .receive("t", 1, Duration::from_millis(200))
        .await
        .expect_err("Redis is down");
    assert!(err.is_retryable(), "{err}");

    let _server = Server::start(port).expect("restart");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match q.publish("t", Message::new("k", "again")).await {
            Ok(_) => break,
            Err(e) if e.is_retryable() && Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no recovery: {e}"),
        }
    }
    let d = q
        .receive_one("t", Duration::from_secs(2))
        .await
        .expect("receive")
        .expect("message after recovery");
    assert_eq!(d.message.payload.as_ref(), b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_come_back_after_a_restart() {
    let port = free_port();
    let Some(mut server) = start_or_skip(port) else {
        return;
    };
    let backend = RedisBackend::from_url(&format!("redis://127.0.0.1:{}", server.port))
        .await
        .expect("connect");
    let ps: &dyn PubSub = &backend;
    let mut sub = ps
        .subscribe("room.*", SubscribeOptions::default())
        .await
        .expect("subscribe");
    ps.publish("room.1", Message::new("before", ""))
        .await
        .expect("publish");
    assert_eq!(
        sub.next_timeout(Duration::from_secs(2))
            .await
            .map(|m| m.kind),
        Some("before".into())
    );

    server.stop();
    let _server = Server::start(port).expect("restart");
    // Publish until the resubscribed connection receives again.
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let _ = ps.publish("room.2", Message::new("after", "")).await;
        if let Some(m) = sub.next_timeout(Duration::from_millis(200)).await {
            assert_eq!(m.kind, "after");
            break;
        }
        assert!(Instant::now() < end, "subscription did not come back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_blocking_connections_are_replaced_after_a_restart() {
    let port = free_port();
    let Some(mut server) = start_or_skip(port) else {
        return;
    };
    let backend = RedisBackend::from_url(&format!("redis://127.0.0.1:{}", server.port))
        .await
        .expect("connect");
    // Eight receives waiting at once leave eight blocking connections in the idle pool.
    let waits: Vec<_> = (0..8)
        .map(|_| {
            let b = backend.clone();
            tokio::spawn(async move { b.receive("idle", 1, Duration::from_millis(200)).await })
        })
        .collect();
    for w in waits {
        let got = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("receive in time")
            .expect("task");
        assert!(got.expect("receive").is_empty());
    }

    server.stop();
    let _server = Server::start(port).expect("restart");
    let end = Instant::now() + Duration::from_secs(10);
    while backend.ping().await.is_err() {
        assert!(Instant::now() < end, "no recovery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The pooled connections all died with the old server: a wait must not fail on them.
    for _ in 0..3 {
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            backend.receive("idle", 1, Duration::from_millis(100)),
        )
        .await
        .expect("receive in time");
        assert!(got.expect("a wait after the restart works").is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_redis_is_back_works() {
    let port = free_port();
    let Some(mut server) = start_or_skip(port) else {
        return;
    };
    let backend = RedisBackend::from_url(&format!("redis://127.0.0.1:{}", server.port))
        .await
        .expect("connect");
    let q: &dyn Queue = &backend;
    q.publish("first", Message::new("k", ""))
        .await
        .expect("publish");
    server.stop();
    // Calls while Redis is away fail, and leave the connection's last reconnect attempt
    // refused.
    for _ in 0..2 {
        let err = tokio::time::timeout(
            Duration::from_secs(10),
            q.publish("first", Message::new("k", "")),
        )
        .await
        .expect("fails in time")
        .expect_err("Redis is down");
        assert!(err.is_retryable(), "{err}");
    }
    // The outage lasts a while (longer than a reconnect attempt takes to give up).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _server = Server::start(port).expect("restart");
    // Redis listens again: the very first call succeeds (no stale "connection refused").
    tokio::time::timeout(
        Duration::from_secs(10),
        q.publish("first", Message::new("k", "after")),
    )
    .await
    .expect("publish in time")
    .expect("the first publish after the restart");
    let d = tokio::time::timeout(
        Duration::from_secs(5),
        q.receive_one("first", Duration::from_secs(2)),
    )
    .await
    .expect("receive in time")
    .expect("receive")
    .expect("the message");
    assert_eq!(d.message.payload.as_ref(), b"after");
}
