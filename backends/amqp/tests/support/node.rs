//! A private RabbitMQ node for tests that kill or restart the broker: never the shared one on
//! 5672, which other tests use at the same time.
//!
//! The node runs as the user running the tests (root on CI): `PrivateNode` runs RabbitMQ's own
//! start script (`/usr/lib/rabbitmq/bin/rabbitmq-server` on Debian, not the `/usr/sbin` wrapper
//! that `su`s to the `rabbitmq` user and redirects the output), with every file of the node in
//! its own temporary directory: config, env file (so `/etc/rabbitmq/rabbitmq-env.conf`, which pins
//! `NODENAME=rabbit@localhost`, is not read), data (mnesia, quorum and stream segments), logs, pid
//! file, an empty enabled-plugins file, and `HOME` (where Erlang creates the node's cookie). Ports
//! (AMQP and Erlang distribution) are picked free; the node name is unique, so it registers beside
//! the shared node in the machine's `epmd`.
//!
//! A test uses it as `mod node` (`#[path = "support/node.rs"] mod node;`) or from
//! `support/mod.rs`. `COURIER_KEEP_RABBITMQ_DIR=1` keeps the directory (logs, data) after the
//! test, for a look at a failure; `COURIER_RABBITMQ_SERVER` names another start script.
#![allow(dead_code)]

use std::fmt;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start or a restart may take before it is an error. Measured on the 2-core
/// development machine while other builds ran: a start 5.5–6.5 s (of which about 1.1 s primes
/// the stream coordinator), a restart 2.7–5 s, and a stream answers about 0.5 s after that.
pub(crate) const BOOT_WITHIN: Duration = Duration::from_secs(60);

/// The environment variable that marks every process of one node (its value is the node's
/// directory), so that a kill finds them all, wherever they were reparented.
const MARK: &str = "COURIER_PRIVATE_RABBITMQ";

/// Why a node could not be had.
#[derive(Debug)]
pub(crate) enum NodeError {
    /// No RabbitMQ server script on this machine: a test may skip.
    NotInstalled(String),
    /// Installed, but the node did not come up (or did not go down): a test must fail.
    Failed(String),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::NotInstalled(why) => write!(f, "rabbitmq-server is not installed: {why}"),
            NodeError::Failed(why) => write!(f, "private RabbitMQ node: {why}"),
        }
    }
}

impl std::error::Error for NodeError {}

/// The result of the node's operations.
pub(crate) type Result<T> = std::result::Result<T, NodeError>;

/// A RabbitMQ node of its own: started by [`PrivateNode::start`], SIGKILLed by
/// [`PrivateNode::kill9`], started again on the same ports and data by [`PrivateNode::restart`];
/// dropping it kills it and removes its directory.
pub(crate) struct PrivateNode {
    /// The AMQP port (`127.0.0.1` only).
    pub(crate) port: u16,
    /// The Erlang distribution port (`127.0.0.1` only).
    pub(crate) dist_port: u16,
    /// The Erlang node name (`courier-<pid>-<random>@localhost`).
    pub(crate) name: String,
    /// Everything of the node: config, data, logs, pid file, `HOME`.
    pub(crate) dir: PathBuf,
    /// How long the last start or restart took until the AMQP handshake worked.
    pub(crate) last_boot: Duration,
    script: PathBuf,
    /// RabbitMQ's start script, running in the foreground: it waits for the Erlang VM and exits
    /// when the VM does, which is how a failed boot is seen at once.
    server: Option<Child>,
    /// A `sh` holding a pipe from this process: when this process dies without dropping the
    /// node (SIGKILL, abort), the pipe closes and the watcher SIGKILLs the VM, so no node
    /// outlives its test.
    watcher: Option<Child>,
}

impl PrivateNode {
    /// Start a node on free ports in a new temporary directory and wait (at most
    /// [`BOOT_WITHIN`]) until an AMQP client can connect to it as guest and open a channel.
    pub(crate) async fn start() -> Result<PrivateNode> {
        let script = server_script()?;
        remove_orphaned_dirs();
        let name = format!(
            "courier-{}-{:08x}@localhost",
            std::process::id(),
            rand::random::<u32>()
        );
        let dir = std::env::temp_dir().join(format!(
            "courier-rabbitmq-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut node = PrivateNode {
            port: 0,
            dist_port: 0,
            name,
            dir,
            last_boot: Duration::ZERO,
            script,
            server: None,
            watcher: None,
        };
        // A free port can be taken by another process before the node binds it: then the node
        // fails to boot (`eaddrinuse`) and exits. Start again on other ports, from a clean
        // directory.
        let mut last = String::new();
        let started = Instant::now();
        for _ in 0..3 {
            let _ = fs::remove_dir_all(&node.dir);
            fs::create_dir_all(node.dir.join("home"))
                .and_then(|()| fs::create_dir_all(node.dir.join("log")))
                .and_then(|()| fs::create_dir_all(node.dir.join("data")))
                .map_err(|e| NodeError::Failed(format!("create {}: {e}", node.dir.display())))?;
            (node.port, node.dist_port) = two_free_ports();
            node.write_files()?;
            match node.boot().await {
                Ok(()) => {
                    node.prime_stream_coordinator().await?;
                    node.last_boot = started.elapsed();
                    return Ok(node);
                }
                Err(NodeError::Failed(why)) => {
                    node.kill9();
                    last = why;
                }
                Err(e) => return Err(e),
            }
        }
        Err(NodeError::Failed(format!(
            "three starts failed; the last: {last}"
        )))
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub(crate) fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The Erlang VM's process id (from the node's pid file), while it runs.
    pub(crate) fn beam_pid(&self) -> Option<u32> {
        fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether the node's processes are running (started and not killed).
    pub(crate) fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// SIGKILL the node: the Erlang VM first (no shutdown, nothing flushed that was not already
    /// written), then every other process of the node (start script, `erl_child_setup`,
    /// `inet_gethost`, the disk monitor's shell, the watcher), and wait (bounded) until none is
    /// left. The shared `epmd` is left alone: the killed node's name leaves it when its
    /// connection closes. Does nothing when the node is not running.
    pub(crate) fn kill9(&mut self) {
        if self.server.is_none() && self.watcher.is_none() {
            return;
        }
        let end = Instant::now() + Duration::from_secs(10);
        if let Some(beam) = self.beam_pid().filter(|&p| is_ours(p, &self.dir)) {
            sigkill(&[beam]);
            // Let the start script reap the VM and exit (it waits for it), and reap the script:
            // killing the script first would leave the VM a zombie for the machine's init.
            if let Some(server) = self.server.as_mut() {
                while matches!(server.try_wait(), Ok(None)) && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        // No pid file yet (killed while booting): the VM is still in the script's group.
        if let Some(server) = self.server.as_mut()
            && matches!(server.try_wait(), Ok(None))
        {
            sigkill_group(server.id());
        }
        loop {
            let left = node_processes(&self.dir);
            if left.is_empty() {
                break;
            }
            if Instant::now() > end {
                let msg = format!(
                    "private RabbitMQ node {}: processes {left:?} survive SIGKILL",
                    self.name
                );
                // Not a second panic while a failed test unwinds through Drop.
                if std::thread::panicking() {
                    eprintln!("{msg}");
                    break;
                }
                panic!("{msg}");
            }
            sigkill(&left);
            std::thread::sleep(Duration::from_millis(20));
        }
        for mut c in [self.server.take(), self.watcher.take()]
            .into_iter()
            .flatten()
        {
            // Already dead where /proc exists; elsewhere this is the kill.
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_file(self.pid_file());
    }

    /// Start the node again, after [`PrivateNode::kill9`], on the same ports, name and data, and
    /// wait (at most [`BOOT_WITHIN`]) until the AMQP handshake works. Fails when a port was
    /// taken meanwhile (the URL cannot change under the test's clients). The streams come back
    /// a little later than the port ([`PrivateNode::wait_queue`]).
    pub(crate) async fn restart(&mut self) -> Result<()> {
        assert!(
            self.server.is_none(),
            "restart() of a running node: kill9() it first"
        );
        self.boot().await
    }

    /// Poll (a new connection each time: a failed declare closes the channel) until the
    /// durable queue or stream `queue` answers a passive declare, at most `within`; returns
    /// how long that took. After a restart the AMQP port opens before the queues are back: a
    /// stream answers `404 NOT_FOUND - home node '…' of durable queue '…' is down or
    /// inaccessible` for a while.
    pub(crate) async fn wait_queue(&self, queue: &str, within: Duration) -> Result<Duration> {
        let started = Instant::now();
        let step = Duration::from_secs(5);
        let mut last = String::new();
        while started.elapsed() < within {
            let attempt = async {
                let conn =
                    lapin::Connection::connect(&self.url(), lapin::ConnectionProperties::default())
                        .await?;
                let ch = conn.create_channel().await?;
                let declared = ch
                    .queue_declare(
                        queue.into(),
                        lapin::options::QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        lapin::types::FieldTable::default(),
                    )
                    .await;
                let _ = conn.close(200, "probe".into()).await;
                declared.map(|_| ())
            };
            match tokio::time::timeout(step, attempt).await {
                Ok(Ok(())) => return Ok(started.elapsed()),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(NodeError::Failed(format!(
            "queue {queue} not available within {within:?}: {last}"
        )))
    }

    /// Create the node's stream coordinator (by declaring and deleting a stream) and wait until
    /// its registration is on disk.
    ///
    /// RabbitMQ 3.10 (ra 2.2) registers a Ra server's name in the Ra system's `names.dets`,
    /// which DETS writes out only after a short idle time (about half a second). A node
    /// SIGKILLed before that restarts with "0 registered servers" in its `coordination` system:
    /// the coordinator never comes back, and every stream answers `404 NOT_FOUND - home node
    /// '…' of durable queue '…' is down or inaccessible` for good. The first stream on a fresh
    /// node creates the coordinator, so a test that declared its first stream and killed the
    /// node within a second would lose its streams. Streams declared after this are safe to
    /// kill at once: they live in the coordinator's Ra log, written before the declare returns.
    /// (Each quorum queue is a Ra server of its own, with the same window after its
    /// declaration; nothing here covers those.)
    async fn prime_stream_coordinator(&self) -> Result<()> {
        let step = Duration::from_secs(10);
        let probe = "courier-private-node-probe";
        let attempt = async {
            let conn =
                lapin::Connection::connect(&self.url(), lapin::ConnectionProperties::default())
                    .await?;
            let ch = conn.create_channel().await?;
            let mut args = lapin::types::FieldTable::default();
            args.insert(
                "x-queue-type".into(),
                lapin::types::AMQPValue::LongString("stream".into()),
            );
            let durable = lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            ch.queue_declare(probe.into(), durable, args).await?;
            ch.queue_delete(probe.into(), lapin::options::QueueDeleteOptions::default())
                .await?;
            let _ = conn.close(200, "primed".into()).await;
            Ok::<(), lapin::Error>(())
        };
        match tokio::time::timeout(step, attempt).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(NodeError::Failed(format!(
                    "declare a probe stream (is the stream_queue feature on?): {e}"
                )));
            }
            Err(_) => {
                return Err(NodeError::Failed(format!(
                    "declaring a probe stream took over {step:?}"
                )));
            }
        }
        // Wait until the coordinator's name is in the DETS file (its atom is stored as text).
        let names = self
            .dir
            .join("data")
            .join(&self.name)
            .join("coordination")
            .join(&self.name)
            .join("names.dets");
        let end = Instant::now() + step;
        while Instant::now() < end {
            if fs::read(&names).is_ok_and(|b| {
                b.windows(b"rabbit_stream_coordinator".len())
                    .any(|w| w == b"rabbit_stream_coordinator")
            }) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(NodeError::Failed(format!(
            "the stream coordinator's registration is not in {} after {step:?} (another \
             RabbitMQ version? see prime_stream_coordinator)",
            names.display()
        )))
    }

    /// Spawn the start script and the watcher, and wait until the node answers AMQP.
    async fn boot(&mut self) -> Result<()> {
        let started = Instant::now();
        self.spawn()?;
        self.wait_ready(BOOT_WITHIN).await?;
        self.last_boot = started.elapsed();
        Ok(())
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("rabbitmq.pid")
    }

    fn output_file(&self) -> PathBuf {
        self.dir.join("server.out")
    }

    /// The config file (the AMQP listener on loopback), the env file that replaces the
    /// system's, the empty plugins file.
    fn write_files(&self) -> Result<()> {
        let write = |name: &str, text: String| {
            fs::write(self.dir.join(name), text)
                .map_err(|e| NodeError::Failed(format!("write {name}: {e}")))
        };
        write(
            "rabbitmq.conf",
            format!(
                "listeners.tcp.local = 127.0.0.1:{}\n\
                 # Under parallel tests the shared machine's free disk can dip; the default \
                 50 MB alarm would block publishers.\n\
                 disk_free_limit.absolute = 1MB\n",
                self.port
            ),
        )?;
        write("rabbitmq-env.conf", "ERL_EPMD_ADDRESS=127.0.0.1\n".into())?;
        write("enabled_plugins", String::new())
    }

    fn spawn(&mut self) -> Result<()> {
        assert!(self.server.is_none(), "node already running");
        let _ = fs::remove_file(self.pid_file());
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.output_file())
            .map_err(|e| NodeError::Failed(format!("open server.out: {e}")))?;
        let err = out
            .try_clone()
            .map_err(|e| NodeError::Failed(format!("dup server.out: {e}")))?;
        let d = |p: &str| self.dir.join(p);
        let mut cmd = Command::new(&self.script);
        // Variables of another RabbitMQ setup in the test's environment must not leak in.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RABBITMQ_") {
                cmd.env_remove(k);
            }
        }
        // Its own process group: the VM stays in it (only `erl_child_setup` leaves, and it
        // exits with the VM), so the watcher can kill the node even before the pid file
        // exists; and a Ctrl-C at the terminal reaches the test, not the node.
        cmd.process_group(0)
            .current_dir(&self.dir)
            .env(MARK, &self.dir)
            .env("HOME", d("home"))
            .env("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d("data"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_PID_FILE", self.pid_file())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let server = cmd
            .spawn()
            .map_err(|e| NodeError::Failed(format!("spawn {}: {e}", self.script.display())))?;
        let server_pid = server.id().to_string();
        self.server = Some(server);
        // The watcher: reads its stdin (a pipe whose writing end only this process holds) until
        // end of file, which comes when this process exits in any way; then kills the start
        // script's process group (the script and the VM). In a group of its own, so that a
        // Ctrl-C for the test does not kill it first.
        let watcher = Command::new("sh")
            .arg("-c")
            .arg("read _ignored; kill -9 \"-$1\" 2>/dev/null; exit 0")
            .arg("courier-rabbitmq-watcher")
            .arg(server_pid)
            .process_group(0)
            .env(MARK, &self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match watcher {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                self.kill9();
                return Err(NodeError::Failed(format!("spawn the watcher sh: {e}")));
            }
        }
        Ok(())
    }

    /// Poll until the node's own VM listens on our port and an AMQP client gets a channel; an
    /// error as soon as the start script exits (failed boot), or after `within`.
    async fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let end = Instant::now() + within;
        let mut last = String::from("port not open yet");
        loop {
            if let Some(Ok(Some(status))) = self.server.as_mut().map(Child::try_wait) {
                return Err(NodeError::Failed(format!(
                    "rabbitmq-server exited ({status}) before it answered on port {}: {}",
                    self.port,
                    self.output_tail()
                )));
            }
            if Instant::now() > end {
                return Err(NodeError::Failed(format!(
                    "not ready within {within:?} ({last}): {}",
                    self.output_tail()
                )));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                match self.beam_pid() {
                    // The port may answer for another process that took it first; then our
                    // node fails to bind it and exits, which the check above reports.
                    Some(beam) if listens(beam, self.port) => match handshake(&self.url()).await {
                        Ok(()) => return Ok(()),
                        Err(e) => last = format!("AMQP handshake: {e}"),
                    },
                    _ => last = format!("port {} open, not (yet) by our node", self.port),
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the start script's output and of the node's log, for errors.
    fn output_tail(&self) -> String {
        let log = self.dir.join("log").join(format!("{}.log", self.name));
        format!(
            "\n--- {} (end) ---\n{}\n--- {} (end) ---\n{}",
            self.output_file().display(),
            tail(&self.output_file(), 3000),
            log.display(),
            tail(&log, 2000)
        )
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        self.kill9();
        if std::env::var("COURIER_KEEP_RABBITMQ_DIR").as_deref() == Ok("1") {
            eprintln!("kept the private node's directory {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A node, or `None` after printing why the test is skipped: `rabbitmq-server` is not
/// installed (a failure under `COURIER_REQUIRE_BACKENDS=1`, as CI sets). A node that is
/// installed but does not start is always a failure.
pub(crate) async fn start_or_skip(test: &str) -> Option<PrivateNode> {
    match PrivateNode::start().await {
        Ok(node) => Some(node),
        Err(e @ NodeError::NotInstalled(_)) => {
            if std::env::var("COURIER_REQUIRE_BACKENDS").as_deref() == Ok("1") {
                panic!("{test}: {e}, and COURIER_REQUIRE_BACKENDS=1");
            }
            eprintln!("SKIPPED {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// Remove the directories of nodes whose test process is gone (one killed by SIGKILL cannot
/// remove its own; the watcher killed its node).
fn remove_orphaned_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("courier-rabbitmq-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc/self").exists() && !alive(pid) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// RabbitMQ's own start script: `COURIER_RABBITMQ_SERVER`, else Debian's
/// `/usr/lib/rabbitmq/bin/rabbitmq-server`, else `rabbitmq-server` on `PATH` (a generic-unix
/// install, whose script is the real one).
fn server_script() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("COURIER_RABBITMQ_SERVER") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(NodeError::NotInstalled(format!(
                "COURIER_RABBITMQ_SERVER={} is not a file",
                p.display()
            )))
        };
    }
    let debian = Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if debian.exists() {
        return Ok(debian.to_path_buf());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("rabbitmq-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            NodeError::NotInstalled(format!(
                "neither {} nor rabbitmq-server on PATH",
                debian.display()
            ))
        })
}

/// Two distinct free loopback ports, both held until both are picked.
fn two_free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().expect("local addr").port();
    (port(&a), port(&b))
}

/// Connect as guest and open a channel, then close (every step bounded).
async fn handshake(url: &str) -> std::result::Result<(), String> {
    let step = Duration::from_secs(5);
    let conn = tokio::time::timeout(
        step,
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| format!("connect: {e}"))?;
    let channel = tokio::time::timeout(step, conn.create_channel()).await;
    let _ = tokio::time::timeout(step, conn.close(200, "ready".into())).await;
    match channel {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("open channel: {e}")),
        Err(_) => Err("open channel timed out".into()),
    }
}

/// SIGKILL these processes (by id; a vanished one is not an error).
fn sigkill(pids: &[u32]) {
    kill_args(pids.iter().map(u32::to_string));
}

/// SIGKILL the process group `pgid` (the start script's: the script and the VM).
fn sigkill_group(pgid: u32) {
    kill_args([format!("-{pgid}")]);
}

/// `kill -9 ARGS…` through `sh`'s builtin (no `kill` binary needed; dash's takes `-PGID`).
fn kill_args(args: impl IntoIterator<Item = String>) {
    let args: Vec<String> = args.into_iter().collect();
    if args.is_empty() {
        return;
    }
    let _ = Command::new("sh")
        .args(["-c", "kill -9 \"$@\"", "sh"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The live processes that carry the node's mark in their environment, except `epmd` (which
/// a node starts when none runs, and which other nodes share). Zombies have an empty
/// environment and do not count.
fn node_processes(dir: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && is_ours(pid, dir))
        .filter(|&pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).map_or(true, |c| c.trim() != "epmd")
        })
        .collect()
}

/// Whether process `pid` exists and is not a zombie (Linux; elsewhere: whether `kill -0`
/// reaches it).
pub(crate) fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) if Path::new("/proc/self").exists() => false,
        Err(_) => Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

/// Whether process `pid` carries the node's mark.
fn is_ours(pid: u32, dir: &Path) -> bool {
    let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
        // No /proc (not Linux): trust the pid file.
        return !Path::new("/proc/self").exists();
    };
    let want = format!("{MARK}={}", dir.display());
    env.split(|&b| b == 0).any(|kv| kv == want.as_bytes())
}

/// Whether process `pid` holds the listening TCP socket of `port` on 127.0.0.1 (Linux: the
/// socket's inode from /proc/net/tcp among the process's descriptors). True where /proc is
/// missing.
fn listens(pid: u32, port: u16) -> bool {
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return true;
    };
    let local = format!("0100007F:{port:04X}");
    let Some(inode) = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| f[9].to_string())
    }) else {
        return false;
    };
    let want = format!("socket:[{inode}]");
    fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))
    })
}

/// The last `max` bytes of a file, as text.
fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return "(missing)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
