//! A private `redis-server` for tests that kill, restart or reconfigure Redis (never the shared
//! one). Each test binary uses the parts it needs.
#![allow(dead_code)]

pub(crate) mod cluster;
pub(crate) mod logs;

/// The bound on every await of a test against the shared server.
pub(crate) const T: Duration = Duration::from_secs(10);

/// Await `f` for at most [`T`], naming it when it hangs.
pub(crate) async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {T:?}"))
}

/// The shared server's URL (`COURIER_TEST_REDIS_URL`, default the standard local port).
pub(crate) fn shared_url() -> String {
    std::env::var("COURIER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The shared server is unreachable: skip loudly, or fail under
/// `COURIER_REQUIRE_BACKENDS=1` (as CI sets).
/// Delete every key under `prefix` (its hash tag `{prefix:`) from the shared Redis: a test's
/// cleanup, best effort.
pub(crate) async fn delete_prefix(url: &str, prefix: &str) {
    use tokio::time::timeout;
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(Ok(mut conn)) = timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    else {
        return;
    };
    let keys: Vec<String> = timeout(
        Duration::from_secs(5),
        redis::cmd("KEYS")
            .arg(format!("{{{prefix}:*"))
            .query_async(&mut conn),
    )
    .await
    .ok()
    .and_then(|r| r.ok())
    .unwrap_or_default();
    if !keys.is_empty() {
        let _ = timeout(
            Duration::from_secs(5),
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<redis::Value>(&mut conn),
        )
        .await;
    }
}

pub(crate) fn unreachable(test: &str, why: &dyn std::fmt::Display) {
    if std::env::var("COURIER_REQUIRE_BACKENDS").as_deref() == Ok("1") {
        panic!("{test}: Redis unreachable and COURIER_REQUIRE_BACKENDS=1: {why}");
    }
    eprintln!("SKIPPED {test}: Redis unreachable: {why}");
}

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on a free port, with its own data directory.
pub(crate) struct PrivateRedis {
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Start a server with extra arguments (`--appendonly yes`, …) and wait until it listens.
    /// `None` when `redis-server` cannot be started (not installed).
    pub(crate) fn start(extra: &[&str]) -> Option<PrivateRedis> {
        let dir = std::env::temp_dir().join(format!(
            "courier-redis-private-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).ok()?;
        let mut s = PrivateRedis {
            port: free_port(),
            dir,
            args: extra.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        // A free port can be taken by another test's server before ours binds it: then ours
        // exits, and the port answers for the other one. Try a few ports, and only accept a
        // server that reports our own directory.
        for _ in 0..5 {
            s.spawn().ok()?;
            if s.wait_listening_blocking(Duration::from_secs(10)) && s.is_ours() {
                return Some(s);
            }
            s.kill9();
            s.port = free_port();
        }
        None
    }

    /// Whether the server on our port is ours: `INFO server` reports our child's process id.
    fn is_ours(&mut self) -> bool {
        use std::io::{Read, Write};
        let Some(pid) = self.pid() else {
            return false;
        };
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
        if c.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
            .is_err()
        {
            return false;
        }
        let want = format!("process_id:{pid}\r\n");
        let mut buf = vec![0u8; 8192];
        let mut got = Vec::new();
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if text.contains(&want) {
                return true;
            }
            if text.contains("process_id:") && text.contains("\r\nexecutable:") {
                return false;
            }
        }
        false
    }

    /// `redis://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id of the running server.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Start the server process (again) on the same port and directory; does not wait.
    pub(crate) fn spawn(&mut self) -> std::io::Result<()> {
        assert!(self.child.is_none(), "server already running");
        let dir = self.dir.to_string_lossy().into_owned();
        let port = self.port.to_string();
        let mut args: Vec<&str> = vec!["--port", &port, "--bind", "127.0.0.1", "--dir", &dir];
        args.extend(self.args.iter().map(String::as_str));
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL the server (no shutdown, no final save) and reap it.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Poll until the port accepts connections or `within` passes.
    pub(crate) fn wait_listening_blocking(&mut self, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                return false; // exited (bad arguments, port taken)
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// [`PrivateRedis::wait_listening_blocking`] without blocking a runtime thread.
    pub(crate) async fn wait_listening(&self, within: Duration) -> bool {
        let end = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < end {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(16_379)
}

/// Start a private server, or skip loudly (fail under `COURIER_REQUIRE_BACKENDS=1`).
pub(crate) fn start_or_skip(test: &str, extra: &[&str]) -> Option<PrivateRedis> {
    let s = PrivateRedis::start(extra);
    if s.is_none() {
        if std::env::var("COURIER_REQUIRE_BACKENDS").as_deref() == Ok("1") {
            panic!("{test}: cannot start redis-server and COURIER_REQUIRE_BACKENDS=1");
        }
        eprintln!("SKIPPED {test}: cannot start a private redis-server (is it installed?)");
    }
    s
}
