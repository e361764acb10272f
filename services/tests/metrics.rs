//! `meeting-system run --all --metrics-listen ADDR` serves Courier's series over HTTP.
//!
//! The test starts the built binary on a fresh SQLite file, sends the scenario's first phase
//! through the same file from this process (three users register: tasks for user, events
//! for meeting), and scrapes `/metrics` with a plain
//! HTTP/1.1 GET until the counters, the handler histogram and the depth gauge of the stats
//! poll are there. Every wait is bounded; the child is killed when the test ends, passing or
//! not. The refusal tests check the errors for a taken and a malformed address.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meeting_system::Settings;
use meeting_system::config::Overrides;
use meeting_system::ledger::Ledger;
use meeting_system::runtime::Platform;
use meeting_system::scenario::{Phase, Scenario};
use meeting_system::topology::ServiceKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const EXE: &str = env!("CARGO_BIN_EXE_meeting-system");
/// Bound of a whole test.
const TEST_LIMIT: Duration = Duration::from_secs(240);
/// Bound of the wait for the five services' READY lines.
const READY_WAIT: Duration = Duration::from_secs(60);
/// Bound of the wait for every series to show up in a scrape.
const SCRAPE_WAIT: Duration = Duration::from_secs(60);
/// Bound of one scrape.
const ONE_SCRAPE: Duration = Duration::from_secs(10);
/// Bound of the wait for a refused start to exit.
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// The series the test looks for: counters, the handler histogram's buckets, and a depth
/// gauge that only the stats poll sets.
const SERIES: [&str; 5] = [
    "courier_published_total",
    "courier_delivered_total",
    "courier_acked_total",
    "courier_handler_duration_seconds_bucket",
    "courier_queue_ready",
];

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Removes the SQLite file (and its journal files) when dropped.
struct TempDb(std::path::PathBuf);

impl TempDb {
    fn new(prefix: &str) -> TempDb {
        TempDb(std::env::temp_dir().join(format!("{}.db", unique(prefix))))
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.0.display())
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

/// A `meeting-system` process, its output collected line by line; killed when dropped.
struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(EXE)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn meeting-system");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::unbounded_channel();
        let out = child.stdout.take().expect("stdout piped");
        let err = child.stderr.take().expect("stderr piped");
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let (log, tx) = (log.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line.clone());
                    if let Ok(mut l) = log.lock() {
                        l.push(line);
                    }
                }
            });
        }
        Proc { child, log, lines }
    }

    fn output(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Wait (bounded) until `n` lines satisfying `pred` were printed. False when the output
    /// ended (the process exited) or the time ran out first.
    async fn wait_lines(
        &mut self,
        n: usize,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = 0;
        while seen < n {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if pred(&line) => seen += 1,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return false,
            }
        }
        true
    }

    /// Wait (bounded) for the process to exit by itself, with all its output read.
    async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        // The output ends when both streams close: the process is gone, or closing them.
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline.into(), self.lines.recv()).await {}
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now (the OS's pick for a listener bound then closed).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `GET /metrics` over a plain HTTP/1.1 connection: the body of a 200 answer.
async fn scrape(addr: SocketAddr) -> Result<String, String> {
    let get = async {
        let mut conn = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8(raw).map_err(|e| format!("not UTF-8: {e}"))?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no end of headers in {text:?}"))?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("answer {head:?}"));
        }
        Ok(body.to_string())
    };
    tokio::time::timeout(ONE_SCRAPE, get)
        .await
        .map_err(|_| format!("no answer from {addr} within {ONE_SCRAPE:?}"))?
}

/// The sample lines (not `# HELP`/`# TYPE`) of `series`.
fn samples<'a>(body: &'a str, series: &str) -> Vec<&'a str> {
    body.lines()
        .filter(|l| {
            l.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

/// The sum of the values of `series` samples whose labels contain `label`.
fn total(body: &str, series: &str, label: &str) -> f64 {
    samples(body, series)
        .iter()
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_with_metrics_listen_serves_courier_series_while_traffic_flows() {
    tokio::time::timeout(TEST_LIMIT, serves_courier_series())
        .await
        .expect("the metrics test finished in time");
}

async fn serves_courier_series() {
    let db = TempDb::new("meeting-system-metrics");
    let url = db.url();
    let namespace = unique("metrics");
    // Another process may take the port between our look and the child's bind: try anew.
    let mut started = None;
    for _ in 0..3 {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let listen = addr.to_string();
        let mut proc = Proc::spawn(&[
            "run",
            "--all",
            "--metrics-listen",
            &listen,
            "--stats-every",
            "0.2",
            "--backend",
            &url,
            "--namespace",
            &namespace,
            "--poll-interval-ms",
            "100",
        ]);
        if proc
            .wait_lines(ServiceKind::ALL.len(), READY_WAIT, |l| {
                l.starts_with("READY ")
            })
            .await
        {
            started = Some((proc, addr));
            break;
        }
        let out = proc.output();
        assert!(
            out.contains("Address already in use"),
            "the services did not report READY within {READY_WAIT:?}; output:\n{out}"
        );
    }
    let (proc, addr) = started.expect("a free port within 3 tries");
    assert!(
        proc.output()
            .contains(&format!("metrics on http://{addr}/metrics")),
        "{}",
        proc.output()
    );

    // Traffic through the same file: the scenario's first phase (three registrations for
    // user, and their events to meeting's group), until user's queue has acked them.
    let mut settings = Settings::default();
    settings.apply_overrides(&Overrides {
        backend: Some(url.clone()),
        namespace: Some(namespace.clone()),
        ..Overrides::default()
    });
    settings.validate().expect("valid settings");
    let platform = Platform::connect(&settings, Ledger::new(false))
        .await
        .expect("the test opens the services' SQLite file");
    let mut scenario = Scenario::new(
        platform.courier().clone(),
        platform.names().clone(),
        Ledger::new(false),
        3,
        Duration::from_secs(20),
        None,
    );
    scenario.send(Phase::Register).await.expect("phase sent");
    let user_queue = platform.names().queue(ServiceKind::User);
    let deadline = Instant::now() + SCRAPE_WAIT;
    loop {
        let st = platform
            .courier()
            .queue()
            .stats(&user_queue)
            .await
            .expect("stats of the user queue");
        if st.acked >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "user did not handle the registrations within {SCRAPE_WAIT:?}: {st:?}\n{}",
            proc.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Scrape until every series is there (the counters as soon as handlers ran, the gauge
    // at the next stats poll).
    let user_label = format!("queue=\"{user_queue}\"");
    let deadline = Instant::now() + SCRAPE_WAIT;
    let mut last;
    loop {
        match scrape(addr).await {
            Ok(body) => {
                let missing: Vec<&str> = SERIES
                    .iter()
                    .copied()
                    .filter(|s| samples(&body, s).is_empty())
                    .collect();
                // The child's worker took and acked the three registrations.
                let delivered = total(&body, "courier_delivered_total", &user_label);
                let acked = total(&body, "courier_acked_total", &user_label);
                if missing.is_empty() && delivered >= 3.0 && acked >= 3.0 {
                    last = body;
                    break;
                }
                last = format!(
                    "missing {missing:?}; user queue delivered {delivered}, acked {acked}\n{body}"
                );
            }
            Err(e) => last = e,
        }
        assert!(
            Instant::now() < deadline,
            "not every series within {SCRAPE_WAIT:?}: {last}\n--- service output:\n{}",
            proc.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The histogram has the buckets set for `_seconds` series: 0.5 ms up to 30 s.
    let buckets = samples(&last, "courier_handler_duration_seconds_bucket");
    for le in ["le=\"0.0005\"", "le=\"30\"", "le=\"+Inf\""] {
        assert!(
            buckets.iter().any(|l| l.contains(le)),
            "no bucket {le}: {buckets:#?}"
        );
    }
    scenario.close().await;
    drop(proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_on_a_taken_address_is_refused_with_the_reason() {
    tokio::time::timeout(TEST_LIMIT, async {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = taken.local_addr().expect("bound address").to_string();
        let mut proc = Proc::spawn(&[
            "run",
            "--all",
            "--backend",
            "memory://",
            "--metrics-listen",
            &addr,
        ]);
        let status = proc.wait_exit(EXIT_WAIT).await;
        let out = proc.output();
        assert_eq!(status.and_then(|s| s.code()), Some(1), "{out}");
        assert!(
            out.contains(&format!("cannot serve metrics on {addr}"))
                && out.contains("Address already in use"),
            "{out}"
        );
        assert!(!out.contains("READY"), "{out}");
        drop(taken);
    })
    .await
    .expect("the refusal finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_without_a_port_is_a_usage_error() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut proc = Proc::spawn(&[
            "run",
            "--all",
            "--backend",
            "memory://",
            "--metrics-listen",
            "127.0.0.1",
        ]);
        let status = proc.wait_exit(EXIT_WAIT).await;
        let out = proc.output();
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{out}");
        assert!(
            out.contains("has no port") && out.contains("IP:PORT"),
            "{out}"
        );
    })
    .await
    .expect("the refusal finished in time");
}
