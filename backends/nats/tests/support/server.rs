//! A private `nats-server` with JetStream for tests that kill and restart the server: never the
//! shared one on 4222, which other tests use at the same time. It listens on `127.0.0.1` on a
//! free port and keeps its JetStream store (`-sd`) and log in its own temporary directory.
//! `COURIER_NATS_SERVER` names another binary (default `nats-server` on the `PATH`, then
//! `/usr/sbin/nats-server`). A test that panics keeps the directory (log, store) for a look.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// How long a start or a restart may take until JetStream answers. Measured on the 2-core
/// development machine: well under a second (see `tests/server_restart.rs`).
pub(crate) const BOOT_WITHIN: Duration = Duration::from_secs(30);

/// A `nats-server -js` child process on a free port, with its own store directory.
pub(crate) struct PrivateNats {
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    /// How long the last start or restart took until JetStream answered.
    pub(crate) last_boot: Duration,
    /// The server name (unique), by which a client knows the server on the port is ours.
    name: String,
    bin: PathBuf,
    child: Option<Child>,
}

/// The server binary, if installed.
fn binary() -> Option<PathBuf> {
    if let Some(b) = std::env::var_os("COURIER_NATS_SERVER") {
        return Some(b.into());
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nats-server"));
    on_path
        .chain([PathBuf::from("/usr/sbin/nats-server")])
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl PrivateNats {
    /// Start a server and wait until JetStream answers. `Ok(None)` when `nats-server` is not
    /// installed; `Err` when it is and did not come up.
    pub(crate) async fn start() -> Result<Option<PrivateNats>, String> {
        let Some(bin) = binary() else {
            return Ok(None);
        };
        let tag = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        let dir = std::env::temp_dir().join(format!("courier-nats-{tag}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut s = PrivateNats {
            port: 0,
            dir,
            last_boot: Duration::ZERO,
            name: format!("courier-{tag}"),
            bin,
            child: None,
        };
        // A free port can be taken by another process before the server binds it: then the
        // server exits, or another one answers. Try a few ports.
        let mut last = String::new();
        for _ in 0..3 {
            s.port = free_port();
            match s.boot().await {
                Ok(()) => return Ok(Some(s)),
                Err(e) => last = e,
            }
            s.kill9();
        }
        Err(format!("three starts failed; the last: {last}"))
    }

    /// `nats://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL the server (no shutdown, no flush) and reap it.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the server again on the same port and store, and wait until JetStream answers.
    pub(crate) async fn restart(&mut self) -> Result<(), String> {
        self.boot().await
    }

    /// Spawn the server and wait (at most [`BOOT_WITHIN`]) until it is ours and JetStream
    /// answers on it.
    async fn boot(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "server already running");
        let started = Instant::now();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .map_err(|e| format!("open the log: {e}"))?;
        let child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-n", &self.name, "-js", "-sd"])
            .arg(self.dir.join("jetstream"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let end = started + BOOT_WITHIN;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!("nats-server exited: {status} (see its log)"));
            }
            match self.jetstream_answers().await {
                Ok(()) => break,
                Err(e) if Instant::now() >= end => {
                    return Err(format!("not up within {BOOT_WITHIN:?}: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        self.last_boot = started.elapsed();
        Ok(())
    }

    /// Connect (one attempt), check the server is ours, and ask JetStream for the account.
    async fn jetstream_answers(&self) -> Result<(), String> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(1))
            .connect(self.url())
            .await
            .map_err(|e| e.to_string())?;
        let name = client.server_info().server_name;
        if name != self.name {
            return Err(format!("another server ({name}) on port {}", self.port));
        }
        // A raw request: async-nats 0.51's `query_account` does not parse 2.9's answer.
        let request = client.request("$JS.API.INFO", "".into());
        let reply = tokio::time::timeout(Duration::from_secs(1), request)
            .await
            .map_err(|_| "JetStream did not answer".to_owned())?
            .map_err(|e| e.to_string())?;
        let reply = String::from_utf8_lossy(&reply.payload);
        if reply.contains("account_info_response") && !reply.contains("\"error\"") {
            Ok(())
        } else {
            Err(format!("JetStream answered {reply}"))
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "kept the private nats-server's directory {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Start a private server, or skip loudly when `nats-server` is not installed (fail under
/// `COURIER_REQUIRE_BACKENDS=1`, as CI sets). A server that is installed and does not come up
/// fails the test.
pub(crate) async fn start_or_skip(test: &str) -> Option<PrivateNats> {
    match PrivateNats::start().await {
        Ok(Some(s)) => Some(s),
        Ok(None) if std::env::var("COURIER_REQUIRE_BACKENDS").as_deref() == Ok("1") => {
            panic!("{test}: nats-server is not installed and COURIER_REQUIRE_BACKENDS=1")
        }
        Ok(None) => {
            eprintln!("SKIPPED {test}: nats-server is not installed");
            None
        }
        Err(e) => panic!("{test}: private nats-server: {e}"),
    }
}
